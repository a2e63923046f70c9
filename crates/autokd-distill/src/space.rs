//! The search space as data: the options of every decision in one place, narrowed or widened by
//! a config file, and the map from one choice per level to a [`DistillerSpec`].
//!
//! Levels, in the tree order of the search (ARCHITECTURE §5): global transform, intra-spatial,
//! relation, distance, temperature, feature weight, logits distance, logits temperature, logits
//! weight. The default is the supplementary material's space.

use serde::{Deserialize, Serialize};

use autokd_models::TapInfo;

use crate::distance::Distance;
use crate::error::{DistillError, Result};
use crate::logits::LogitsDistance;
use crate::real::Real;
use crate::spec::{DistillerSpec, FeatureTerm, LogitsTerm, ResolvedTerm};
use crate::transform::{GlobalTransform, IntraSpatial, Relation};

/// The options of every decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SearchSpace {
    /// Global transforms.
    pub global: Vec<GlobalTransform>,
    /// Intra-spatial transforms.
    pub intra: Vec<IntraSpatial>,
    /// Relations.
    pub relation: Vec<Relation>,
    /// Feature distances.
    pub distance: Vec<Distance>,
    /// Feature temperatures.
    pub temperature: Vec<Real>,
    /// Feature weights.
    pub feature_weight: Vec<Real>,
    /// Logits distances.
    pub logits_distance: Vec<LogitsDistance>,
    /// Logits temperatures.
    pub logits_temperature: Vec<Real>,
    /// Logits weights.
    pub logits_weight: Vec<Real>,
    /// Student tap of the feature term (`None`: the last).
    pub student_tap: Option<String>,
    /// Teacher tap of the feature term (`None`: the last).
    pub teacher_tap: Option<String>,
}

/// The teacher taps of resolved terms, each once, in tap order.
pub fn teacher_indices(terms: &[ResolvedTerm]) -> Vec<usize> {
    let mut taps: Vec<usize> = terms.iter().map(|r| r.teacher_index).collect();
    taps.sort_unstable();
    taps.dedup();
    taps
}

fn reals(v: &[f64]) -> Vec<Real> {
    v.iter().copied().map(Real).collect()
}

impl Default for SearchSpace {
    fn default() -> Self {
        Self {
            global: GlobalTransform::ALL.to_vec(),
            intra: IntraSpatial::ALL.to_vec(),
            relation: Relation::ALL.to_vec(),
            distance: Distance::ALL.to_vec(),
            temperature: reals(&[1.0, 4.0, 8.0, 16.0]),
            feature_weight: reals(&[1.0, 5.0, 25.0, 50.0]),
            logits_distance: LogitsDistance::ALL.to_vec(),
            logits_temperature: reals(&[1.0, 4.0, 8.0, 16.0]),
            logits_weight: reals(&[0.1, 0.5, 1.0, 5.0]),
            student_tap: None,
            teacher_tap: None,
        }
    }
}

/// The space as a config file gives it: every field optional, defaulting to the paper's options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpaceConfig {
    /// Global transforms.
    pub global: Option<Vec<GlobalTransform>>,
    /// Intra-spatial transforms.
    pub intra: Option<Vec<IntraSpatial>>,
    /// Relations.
    pub relation: Option<Vec<Relation>>,
    /// Feature distances.
    pub distance: Option<Vec<Distance>>,
    /// Feature temperatures.
    pub temperature: Option<Vec<f64>>,
    /// Feature weights.
    pub feature_weight: Option<Vec<f64>>,
    /// Logits distances.
    pub logits_distance: Option<Vec<LogitsDistance>>,
    /// Logits temperatures.
    pub logits_temperature: Option<Vec<f64>>,
    /// Logits weights.
    pub logits_weight: Option<Vec<f64>>,
    /// Student tap of the feature term.
    pub student_tap: Option<String>,
    /// Teacher tap of the feature term.
    pub teacher_tap: Option<String>,
}

/// One level of the search tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Name (as in the config).
    pub name: &'static str,
    /// Number of options.
    pub options: usize,
}

fn non_empty<T>(field: &str, v: &[T]) -> Result<()> {
    if v.is_empty() {
        Err(DistillError::Spec(format!(
            "search space `{field}`: at least one option is needed"
        )))
    } else {
        Ok(())
    }
}

fn positive(field: &str, v: &[f64], allow_zero: bool) -> Result<()> {
    match v
        .iter()
        .find(|x| !x.is_finite() || **x < 0.0 || (!allow_zero && **x == 0.0))
    {
        Some(bad) => Err(DistillError::Spec(format!(
            "search space `{field}`: {bad} is not a valid value"
        ))),
        None => Ok(()),
    }
}

impl SearchSpaceConfig {
    /// The checked space: defaults filled in, every level non-empty, values in range.
    pub fn validate(&self) -> Result<SearchSpace> {
        let d = SearchSpace::default();
        let nums = |field: &str,
                    v: &Option<Vec<f64>>,
                    default: Vec<Real>,
                    zero: bool|
         -> Result<Vec<Real>> {
            match v {
                Some(v) => {
                    non_empty(field, v)?;
                    positive(field, v, zero)?;
                    Ok(reals(v))
                }
                None => Ok(default),
            }
        };
        let space = SearchSpace {
            global: self.global.clone().unwrap_or(d.global),
            intra: self.intra.clone().unwrap_or(d.intra),
            relation: self.relation.clone().unwrap_or(d.relation),
            distance: self.distance.clone().unwrap_or(d.distance),
            temperature: nums("temperature", &self.temperature, d.temperature, false)?,
            feature_weight: nums(
                "feature_weight",
                &self.feature_weight,
                d.feature_weight,
                true,
            )?,
            logits_distance: self.logits_distance.clone().unwrap_or(d.logits_distance),
            logits_temperature: nums(
                "logits_temperature",
                &self.logits_temperature,
                d.logits_temperature,
                false,
            )?,
            logits_weight: nums("logits_weight", &self.logits_weight, d.logits_weight, true)?,
            student_tap: self.student_tap.clone(),
            teacher_tap: self.teacher_tap.clone(),
        };
        non_empty("global", &space.global)?;
        non_empty("intra", &space.intra)?;
        non_empty("relation", &space.relation)?;
        non_empty("distance", &space.distance)?;
        non_empty("logits_distance", &space.logits_distance)?;
        Ok(space)
    }
}

impl SearchSpace {
    /// The levels of the search tree, in order.
    pub fn levels(&self) -> Vec<Level> {
        vec![
            Level {
                name: "global",
                options: self.global.len(),
            },
            Level {
                name: "intra",
                options: self.intra.len(),
            },
            Level {
                name: "relation",
                options: self.relation.len(),
            },
            Level {
                name: "distance",
                options: self.distance.len(),
            },
            Level {
                name: "temperature",
                options: self.temperature.len(),
            },
            Level {
                name: "feature_weight",
                options: self.feature_weight.len(),
            },
            Level {
                name: "logits_distance",
                options: self.logits_distance.len(),
            },
            Level {
                name: "logits_temperature",
                options: self.logits_temperature.len(),
            },
            Level {
                name: "logits_weight",
                options: self.logits_weight.len(),
            },
        ]
    }

    /// The space's feature terms resolved against the student's and the teacher's taps (every
    /// candidate reads the same taps); the error names a missing tap and lists the available
    /// ones.
    pub fn resolve_taps(
        &self,
        student_model: &str,
        student: &[TapInfo],
        teacher_model: &str,
        teacher: &[TapInfo],
    ) -> Result<Vec<ResolvedTerm>> {
        let zeros = vec![0; self.levels().len()];
        self.spec(&zeros)?
            .resolve(student_model, student, teacher_model, teacher)
    }

    /// Checks the space against both models' taps ([`SearchSpace::resolve_taps`]) and returns
    /// the teacher taps its candidates read, as indices of `teacher`: the only ones a teacher
    /// cache needs to hold.
    pub fn teacher_taps(
        &self,
        student_model: &str,
        student: &[TapInfo],
        teacher_model: &str,
        teacher: &[TapInfo],
    ) -> Result<Vec<usize>> {
        Ok(teacher_indices(&self.resolve_taps(
            student_model,
            student,
            teacher_model,
            teacher,
        )?))
    }

    /// Number of full distillers in the space.
    pub fn size(&self) -> u128 {
        self.levels().iter().map(|l| l.options as u128).product()
    }

    /// The feature term of the first six choices (global, intra, relation, distance, temperature,
    /// weight), at the space's taps.
    pub fn feature_term(&self, choices: &[usize]) -> Result<FeatureTerm> {
        let pick = |i: usize| {
            choices.get(i).copied().ok_or_else(|| {
                DistillError::Spec(format!("feature choices {choices:?}: level {i} is missing"))
            })
        };
        let get = |name: &str, n: usize, i: usize| {
            if i < n {
                Ok(i)
            } else {
                Err(DistillError::Spec(format!(
                    "choice {i} of `{name}` is out of its {n} options"
                )))
            }
        };
        Ok(FeatureTerm {
            student_tap: self.student_tap.clone(),
            teacher_tap: self.teacher_tap.clone(),
            global: self.global[get("global", self.global.len(), pick(0)?)?],
            intra: self.intra[get("intra", self.intra.len(), pick(1)?)?],
            relation: self.relation[get("relation", self.relation.len(), pick(2)?)?],
            distance: self.distance[get("distance", self.distance.len(), pick(3)?)?],
            temperature: self.temperature[get("temperature", self.temperature.len(), pick(4)?)?],
            weight: self.feature_weight
                [get("feature_weight", self.feature_weight.len(), pick(5)?)?],
        })
    }

    /// The distiller of one choice per level.
    pub fn spec(&self, choices: &[usize]) -> Result<DistillerSpec> {
        let levels = self.levels();
        if choices.len() != levels.len()
            || choices.iter().zip(&levels).any(|(&c, l)| c >= l.options)
        {
            return Err(DistillError::Spec(format!(
                "choices {choices:?} do not fit the levels {:?}",
                levels
                    .iter()
                    .map(|l| (l.name, l.options))
                    .collect::<Vec<_>>()
            )));
        }
        Ok(DistillerSpec {
            name: None,
            features: vec![self.feature_term(choices)?],
            logits: Some(LogitsTerm {
                distance: self.logits_distance[choices[6]],
                temperature: self.logits_temperature[choices[7]],
                weight: self.logits_weight[choices[8]],
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_space() {
        let s = SearchSpace::default();
        let sizes: Vec<usize> = s.levels().iter().map(|l| l.options).collect();
        assert_eq!(sizes, vec![5, 4, 7, 6, 4, 4, 3, 4, 4]);
        assert_eq!(s.size(), 5 * 4 * 7 * 6 * 4 * 4 * 3 * 4 * 4);
        let spec = s.spec(&[4, 3, 4, 5, 1, 2, 0, 1, 2]).unwrap();
        assert_eq!(
            spec.to_string(),
            "L = CE + 25·KL_T4(channel_softmax(local4(mask0.5(s.last))), channel_softmax(local4(mask0.5(t.last)))) + 1·KL_T4(logits)"
        );
        assert!(s.spec(&[5, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(s.spec(&[0; 8]).is_err());
    }

    #[test]
    fn teacher_taps_are_the_ones_candidates_read() {
        let info = |names: &[&str]| -> Vec<TapInfo> {
            names
                .iter()
                .map(|n| TapInfo {
                    name: (*n).into(),
                    channels: 8,
                    reduction: 1,
                    kind: autokd_models::TapKind::FeatureMap,
                })
                .collect()
        };
        let (s, t) = (
            info(&["stage1", "stage2"]),
            info(&["stage1", "stage2", "stage3"]),
        );
        // Default: the last taps.
        assert_eq!(
            SearchSpace::default()
                .teacher_taps("s", &s, "t", &t)
                .unwrap(),
            vec![2]
        );
        let space = SearchSpace {
            student_tap: Some("stage1".into()),
            teacher_tap: Some("stage2".into()),
            ..SearchSpace::default()
        };
        assert_eq!(space.teacher_taps("s", &s, "t", &t).unwrap(), vec![1]);
        let bad = SearchSpace {
            student_tap: Some("stage9".into()),
            ..SearchSpace::default()
        };
        let err = bad.teacher_taps("s", &s, "t", &t).unwrap_err().to_string();
        assert!(err.contains("stage9") && err.contains("stage1"), "{err}");
    }

    #[test]
    fn narrowed_and_widened_by_config() {
        let cfg: SearchSpaceConfig = toml::from_str(
            "relation = [\"channel_softmax\", \"sample_correlation\"]\ntemperature = [2.0, 4.0, 32.0]\nintra = [{ kind = \"local\", k = 8 }]\nstudent_tap = \"stage2\"\n",
        )
        .unwrap();
        let s = cfg.validate().unwrap();
        assert_eq!(s.relation.len(), 2);
        assert_eq!(s.temperature, vec![Real(2.0), Real(4.0), Real(32.0)]);
        assert_eq!(s.intra, vec![IntraSpatial::Local { k: 8 }]);
        assert_eq!(s.global.len(), 5);
        assert_eq!(
            s.spec(&[0; 9]).unwrap().features[0].student_tap.as_deref(),
            Some("stage2")
        );
        let bad: SearchSpaceConfig = toml::from_str("temperature = []").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("`temperature`: at least one option")
        );
        let bad: SearchSpaceConfig = toml::from_str("temperature = [0.0]").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("0 is not a valid value")
        );
        let err = toml::from_str::<SearchSpaceConfig>("temperatures = [1.0]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `temperatures`"), "{err}");
    }
}
