//! The search space as data: the options of every decision in one place, narrowed or widened by
//! a config file, and the map from one choice per level to a [`DistillerSpec`].
//!
//! The levels are one table ([`LEVELS`], declared by the `levels!` rows below), in the tree order
//! of the search (ARCHITECTURE §5): global transform, intra-spatial, relation, distance,
//! temperature, feature weight, prediction (logits) distance, temperature and weight. The default
//! is the supplementary material's space.

use serde::{Deserialize, Serialize};

use autokd_models::TapInfo;

use crate::distance::Distance;
use crate::error::{DistillError, Result};
use crate::logits::LogitsDistance;
use crate::real::Real;
use crate::spec::{
    ConnectorKind, DistillerSpec, FeatureTerm, GroupReduction, LogitsTerm, Region, ResolvedTerm,
};
use crate::transform::{GlobalTransform, IntraSpatial, Relation};

/// Which part of the distiller a level decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The feature term.
    Feature,
    /// The prediction (logits) term.
    Prediction,
}

/// The spec a choice vector builds, level by level.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The feature term (its taps are the space's).
    pub feature: FeatureTerm,
    /// The prediction term.
    pub logits: LogitsTerm,
}

/// One row of the table of levels: the level's name (its field in the space, the config and
/// `space.json`), the part it decides, how many options a space gives it and what a choice sets.
#[derive(Clone, Copy)]
pub struct LevelDef {
    /// Name.
    pub name: &'static str,
    /// The part of the distiller it decides.
    pub part: Part,
    /// Number of options in a space.
    pub options: fn(&SearchSpace) -> usize,
    /// Sets option `i` (checked against `options`) on the draft.
    pub set: fn(&SearchSpace, usize, &mut Draft),
}

impl std::fmt::Debug for LevelDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.name, self.part)
    }
}

/// Declares the levels once: each row gives the field (with its doc), the option type, the
/// default options, the part, the check of a config's options and what a choice sets. From it
/// come [`SearchSpace`], [`SearchSpaceConfig`], their defaults and validation, and [`LEVELS`],
/// so adding a level is one row here (and, for deduplication, its rule in `effective.rs`).
macro_rules! levels {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $default:expr, $part:ident, check $check:expr,
        set |$draft:ident, $value:ident| $set:expr;
    )*) => {
        /// The options of every decision (one field per level, in tree order), and the taps of
        /// the feature term.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct SearchSpace {
            $( $(#[doc = $doc])* pub $field: Vec<$ty>, )*
            /// Student tap (or tap group) of the feature term (`None`: the last tap).
            pub student_tap: Option<String>,
            /// Teacher tap (or tap group) of the feature term (`None`: the last tap).
            pub teacher_tap: Option<String>,
        }

        impl Default for SearchSpace {
            fn default() -> Self {
                Self {
                    $( $field: $default, )*
                    student_tap: None,
                    teacher_tap: None,
                }
            }
        }

        /// The space as a config file gives it: every field optional, defaulting to the paper's
        /// options.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SearchSpaceConfig {
            $( $(#[doc = $doc])* pub $field: Option<Vec<$ty>>, )*
            /// Student tap (or tap group) of the feature term.
            pub student_tap: Option<String>,
            /// Teacher tap (or tap group) of the feature term.
            pub teacher_tap: Option<String>,
        }

        impl SearchSpaceConfig {
            /// The checked space: defaults filled in, every level non-empty, values in range.
            pub fn validate(&self) -> Result<SearchSpace> {
                let d = SearchSpace::default();
                let space = SearchSpace {
                    $( $field: self.$field.clone().unwrap_or(d.$field), )*
                    student_tap: self.student_tap.clone(),
                    teacher_tap: self.teacher_tap.clone(),
                };
                $(
                    non_empty(stringify!($field), &space.$field)?;
                    let check: fn(&str, &[$ty]) -> Result<()> = $check;
                    check(stringify!($field), &space.$field)?;
                )*
                Ok(space)
            }
        }

        /// The table of levels, in the tree order of the search.
        pub const LEVELS: &[LevelDef] = &[$(
            LevelDef {
                name: stringify!($field),
                part: Part::$part,
                options: |s| s.$field.len(),
                set: |s, i, $draft| {
                    let $value = s.$field[i];
                    $set;
                },
            },
        )*];
    };
}

levels! {
    /// Global transforms.
    global: GlobalTransform = GlobalTransform::ALL.to_vec(), Feature, check |_, _| Ok(()),
        set |d, v| d.feature.global = v;
    /// Intra-spatial transforms.
    intra: IntraSpatial = IntraSpatial::ALL.to_vec(), Feature, check |_, _| Ok(()),
        set |d, v| d.feature.intra = v;
    /// Relations.
    relation: Relation = Relation::ALL.to_vec(), Feature, check |_, _| Ok(()),
        set |d, v| d.feature.relation = v;
    /// Feature distances.
    distance: Distance = Distance::ALL.to_vec(), Feature, check |_, _| Ok(()),
        set |d, v| d.feature.distance = v;
    /// Feature temperatures.
    temperature: Real = reals(&[1.0, 4.0, 8.0, 16.0]), Feature, check |f, v| positive(f, v, false),
        set |d, v| d.feature.temperature = v;
    /// Feature weights.
    feature_weight: Real = reals(&[1.0, 5.0, 25.0, 50.0]), Feature, check |f, v| positive(f, v, true),
        set |d, v| d.feature.weight = v;
    /// Prediction (logits) distances.
    logits_distance: LogitsDistance = LogitsDistance::ALL.to_vec(), Prediction, check |_, _| Ok(()),
        set |d, v| d.logits.distance = v;
    /// Prediction (logits) temperatures.
    logits_temperature: Real = reals(&[1.0, 4.0, 8.0, 16.0]), Prediction, check |f, v| positive(f, v, false),
        set |d, v| d.logits.temperature = v;
    /// Prediction (logits) weights.
    logits_weight: Real = reals(&[0.1, 0.5, 1.0, 5.0]), Prediction, check |f, v| positive(f, v, true),
        set |d, v| d.logits.weight = v;
}

/// The teacher taps of resolved terms, each once, in tap order.
pub fn teacher_indices(terms: &[ResolvedTerm]) -> Vec<usize> {
    let mut taps: Vec<usize> = terms
        .iter()
        .flat_map(|r| r.pairs.iter().map(|p| p.teacher_index))
        .collect();
    taps.sort_unstable();
    taps.dedup();
    taps
}

fn reals(v: &[f64]) -> Vec<Real> {
    v.iter().copied().map(Real).collect()
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

fn positive(field: &str, v: &[Real], allow_zero: bool) -> Result<()> {
    match v
        .iter()
        .map(|x| x.get())
        .find(|x| !x.is_finite() || *x < 0.0 || (!allow_zero && *x == 0.0))
    {
        Some(bad) => Err(DistillError::Spec(format!(
            "search space `{field}`: {bad} is not a valid value"
        ))),
        None => Ok(()),
    }
}

impl SearchSpace {
    /// The levels of the search tree, in order, with their numbers of options ([`LEVELS`]).
    pub fn levels(&self) -> Vec<Level> {
        LEVELS
            .iter()
            .map(|l| Level {
                name: l.name,
                options: (l.options)(self),
            })
            .collect()
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

    /// The draft every choice vector starts from: the space's taps, the first option of every
    /// level (each level then sets its own field).
    fn draft(&self) -> Draft {
        let first = |v: &[Real]| v.first().copied().unwrap_or(Real(1.0));
        Draft {
            feature: FeatureTerm {
                student_tap: self.student_tap.clone(),
                teacher_tap: self.teacher_tap.clone(),
                global: self
                    .global
                    .first()
                    .copied()
                    .unwrap_or(GlobalTransform::None),
                intra: self.intra.first().copied().unwrap_or(IntraSpatial::None),
                relation: self.relation.first().copied().unwrap_or(Relation::None),
                distance: self.distance.first().copied().unwrap_or(Distance::L2),
                temperature: first(&self.temperature),
                weight: first(&self.feature_weight),
                connector: ConnectorKind::Auto,
                group: GroupReduction::Mean,
                region: Region::All,
            },
            logits: LogitsTerm {
                distance: self
                    .logits_distance
                    .first()
                    .copied()
                    .unwrap_or(LogitsDistance::Kl),
                temperature: first(&self.logits_temperature),
                weight: first(&self.logits_weight),
            },
        }
    }

    /// Applies one choice per level of `levels` (rows of [`LEVELS`]) to the draft.
    fn apply(&self, levels: &[&LevelDef], choices: &[usize]) -> Result<Draft> {
        if choices.len() != levels.len() {
            return Err(DistillError::Spec(format!(
                "choices {choices:?} do not fit the levels {:?}",
                levels
                    .iter()
                    .map(|l| (l.name, (l.options)(self)))
                    .collect::<Vec<_>>()
            )));
        }
        let mut draft = self.draft();
        for (level, &i) in levels.iter().zip(choices) {
            let n = (level.options)(self);
            if i >= n {
                return Err(DistillError::Spec(format!(
                    "choice {i} of `{}` is out of its {n} options",
                    level.name
                )));
            }
            (level.set)(self, i, &mut draft);
        }
        Ok(draft)
    }

    /// The rows of [`LEVELS`] that decide `part`, in order.
    pub fn part_levels(part: Part) -> Vec<&'static LevelDef> {
        LEVELS.iter().filter(|l| l.part == part).collect()
    }

    /// The feature term of one choice per feature level ([`Part::Feature`], in order), at the
    /// space's taps.
    pub fn feature_term(&self, choices: &[usize]) -> Result<FeatureTerm> {
        Ok(self
            .apply(&Self::part_levels(Part::Feature), choices)?
            .feature)
    }

    /// The distiller of one choice per level.
    pub fn spec(&self, choices: &[usize]) -> Result<DistillerSpec> {
        let draft = self.apply(&LEVELS.iter().collect::<Vec<_>>(), choices)?;
        Ok(DistillerSpec {
            name: None,
            features: vec![draft.feature],
            logits: Some(draft.logits),
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
            "L = task + 25·KL_T4(channel_softmax(local4(mask0.5(s.last))), channel_softmax(local4(mask0.5(t.last)))) + 1·KL_T4(logits)"
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
                    stride: 1,
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
