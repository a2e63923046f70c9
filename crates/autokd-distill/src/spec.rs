//! `DistillerSpec`: the whole objective as a value. It round-trips through TOML and JSON, is
//! `Eq + Hash` (the search deduplicates on it), prints as a formula, and is validated against
//! the taps of the actual teacher and student.
//!
//! The student's loss is `task + Σ feature terms + prediction term`: the task's own loss (CE for
//! classification, pixel CE for segmentation, focal and box losses for detection) comes from the
//! task, never from the distiller, and the formula prints it as `task`. The prediction term (the
//! `logits` key) compares prediction rows `[R, K]`: `[B, K]` for a classifier, `[B·H·W, K]` for a
//! segmenter, `[ΣA, K]` for a dense detector.

use std::fmt;

use autokd_models::{TapInfo, TapRequest};
use serde::{Deserialize, Serialize};

use crate::distance::Distance;
use crate::error::{DistillError, Result};
use crate::logits::LogitsDistance;
use crate::real::Real;
use crate::transform::{GlobalTransform, IntraSpatial, Relation};

/// A feature term at one student tap / teacher tap pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureTerm {
    /// Student tap; `None` is the student's last tap. A group name (`fpn`, `backbone`) stands
    /// for all its taps: the term is averaged over the members, paired in order with the
    /// teacher's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_tap: Option<String>,
    /// Teacher tap (or group); `None` is the teacher's last tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_tap: Option<String>,
    /// Global transform.
    pub global: GlobalTransform,
    /// Intra-spatial transform.
    pub intra: IntraSpatial,
    /// Relation transform.
    pub relation: Relation,
    /// Distance.
    pub distance: Distance,
    /// Temperature (used where a softmax occurs).
    pub temperature: Real,
    /// Weight of the term.
    pub weight: Real,
    /// What maps the student's feature to the teacher's channels (default: a 1×1 conv + BN
    /// where the channels differ).
    #[serde(default, skip_serializing_if = "ConnectorKind::is_auto")]
    pub connector: ConnectorKind,
    /// How a term on a tap group combines its members (default: their mean).
    #[serde(default, skip_serializing_if = "GroupReduction::is_mean")]
    pub group: GroupReduction,
    /// Where on the maps the term looks (default: everywhere); the foreground comes from the
    /// task's ground truth.
    #[serde(default, skip_serializing_if = "Region::is_all")]
    pub region: Region,
}

/// The part of the feature maps a term compares: both maps are multiplied by the share of each
/// cell that the ground truth marks as foreground (or by its complement), after the connector
/// and the pooling to a common size. Two terms, one per region with their own weights, give
/// FGD's and DetKDS's foreground/background split (FGD also normalizes by the region's area
/// and adds attention weights; those are other terms of the space here).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// The whole map.
    #[default]
    All,
    /// Where the ground truth has objects (boxes or masks).
    Foreground,
    /// Elsewhere.
    Background,
}

impl Region {
    fn is_all(&self) -> bool {
        *self == Region::All
    }

    /// Name used in formulas (empty for the whole map).
    pub fn symbol(self) -> &'static str {
        match self {
            Region::All => "",
            Region::Foreground => "fg",
            Region::Background => "bg",
        }
    }
}

/// The learnable map from the student's feature to the teacher's channels, applied before
/// everything else in a feature term.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    /// A 1×1 convolution + batch norm where the channels differ, none where they agree (the
    /// search space's convention).
    #[default]
    Auto,
    /// None: the student's feature as it is. Only for terms whose value does not depend on the
    /// channel count (spatial attention, sample correlation), as AT and SP are published.
    None,
    /// Always a 1×1 convolution + batch norm (ICKD's `Embed`).
    ConvBn,
    /// Always a 1×1 convolution + batch norm + ReLU (FitNet's regressor, RepDistiller's
    /// `ConvReg` for maps of the same size).
    ConvBnRelu,
}

impl ConnectorKind {
    fn is_auto(&self) -> bool {
        *self == ConnectorKind::Auto
    }

    /// Whether a pair with `student` and `teacher` channels gets a connector.
    pub fn builds(self, student: usize, teacher: usize) -> bool {
        match self {
            ConnectorKind::Auto => student != teacher,
            ConnectorKind::None => false,
            ConnectorKind::ConvBn | ConnectorKind::ConvBnRelu => true,
        }
    }

    /// Name used in formulas (empty for the default and for none).
    pub fn symbol(self) -> &'static str {
        match self {
            ConnectorKind::Auto | ConnectorKind::None => "",
            ConnectorKind::ConvBn => "embed",
            ConnectorKind::ConvBnRelu => "regress",
        }
    }
}

/// How a feature term on a tap group combines the values of its member pairs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum GroupReduction {
    /// The mean over the members (the search space's convention: a group's weight does not
    /// grow with its size).
    #[default]
    Mean,
    /// The sum over the members (AT's published loss sums its stages).
    Sum,
}

impl GroupReduction {
    fn is_mean(&self) -> bool {
        *self == GroupReduction::Mean
    }
}

/// The prediction term (written `logits` in specs): a distance between the student's and the
/// teacher's prediction rows `[R, K]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogitsTerm {
    /// Distance between student and teacher logits.
    pub distance: LogitsDistance,
    /// Temperature.
    pub temperature: Real,
    /// Weight of the term.
    pub weight: Real,
}

/// A distiller: feature terms plus an optional prediction term, added to the task's loss.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DistillerSpec {
    /// A name for named recipes (`kd`, `cwd`, …); search results have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Feature terms.
    #[serde(default)]
    pub features: Vec<FeatureTerm>,
    /// Logits term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<LogitsTerm>,
}

/// The hand-designed recipes that search must beat, in autokd's conventions (ARCHITECTURE §4).
pub const BASELINES: [&str; 10] = [
    "vanilla",
    "kd",
    "at",
    "sp",
    "ickd",
    "cwd",
    "cwd_logits",
    "dist",
    "fitnet",
    "pkd",
];

impl FeatureTerm {
    /// A term on the last taps with no transform.
    pub fn plain(distance: Distance, weight: f64) -> Self {
        Self {
            student_tap: None,
            teacher_tap: None,
            global: GlobalTransform::None,
            intra: IntraSpatial::None,
            relation: Relation::None,
            distance,
            temperature: Real(1.0),
            weight: Real(weight),
            connector: ConnectorKind::Auto,
            group: GroupReduction::Mean,
            region: Region::All,
        }
    }

    /// Whether the term's value is defined for student and teacher features with different
    /// channel counts without a connector: spatial attention leaves one channel, and a sample
    /// correlation compares `B × B` matrices whatever the channels.
    pub fn channel_free(&self) -> bool {
        self.global == GlobalTransform::SpatialAttention
            || (self.global == GlobalTransform::None
                && matches!(
                    self.relation,
                    Relation::SampleCorrelation | Relation::SampleCorrelationRowNorm
                ))
    }

    /// Whether anything in the term applies a softmax, so that the temperature matters.
    pub fn uses_temperature(&self) -> bool {
        self.distance.uses_temperature()
            || self.relation.uses_temperature()
            || self.global.uses_temperature()
    }

    fn check(&self) -> Result<()> {
        positive("feature temperature", self.temperature)?;
        finite_non_negative("feature weight", self.weight)?;
        if let GlobalTransform::Mask { ratio } = self.global
            && !(0.0..1.0).contains(&ratio.get())
        {
            return Err(DistillError::Spec(format!(
                "mask ratio {ratio} must be in [0, 1)"
            )));
        }
        if let IntraSpatial::Local { k } = self.intra
            && k == 0
        {
            return Err(DistillError::Spec(
                "local patches: k must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

fn positive(what: &str, v: Real) -> Result<()> {
    if v.get().is_finite() && v.get() > 0.0 {
        Ok(())
    } else {
        Err(DistillError::Spec(format!(
            "{what} {v} must be a positive number"
        )))
    }
}

fn finite_non_negative(what: &str, v: Real) -> Result<()> {
    if v.get().is_finite() && v.get() >= 0.0 {
        Ok(())
    } else {
        Err(DistillError::Spec(format!(
            "{what} {v} must be a finite number ≥ 0"
        )))
    }
}

/// One student tap paired with one teacher tap.
#[derive(Debug, Clone, PartialEq)]
pub struct TapPair {
    /// Student tap.
    pub student: TapInfo,
    /// Teacher tap.
    pub teacher: TapInfo,
    /// Index of the student tap in `feature_info()`.
    pub student_index: usize,
    /// Index of the teacher tap in `feature_info()`.
    pub teacher_index: usize,
}

/// A feature term with its taps resolved to indices of the models' `feature_info()`: one pair,
/// or one per member of a tap group.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTerm {
    /// The term.
    pub term: FeatureTerm,
    /// The tap pairs it is averaged over (one unless the term names a group).
    pub pairs: Vec<TapPair>,
}

impl DistillerSpec {
    /// Whether the loss reads the teacher at all (anything but `L = task`).
    pub fn uses_teacher(&self) -> bool {
        !(self.features.is_empty() && self.logits.is_none())
    }

    /// A named baseline recipe (see [`BASELINES`]): each the published loss at its published
    /// weight, as its reference code computes it (RepDistiller's `distiller_zoo`, mdistiller,
    /// the ICKD and DIST authors' code), with the task's loss at weight 1:
    ///
    /// - `kd`: `T² · KL(softmax(t/T) ‖ softmax(s/T))`, T = 4, weight 1.
    /// - `dist`: `T² · (inter + intra)`, DIST's Pearson distances between class probabilities
    ///   across classes and across the batch, T = 4, β = γ = 1.
    /// - `at`: `Σ_stages mean((a_s − a_t)²)` with `a = normalize(mean_c(x²))`, weight 1000, on
    ///   every stage output (`stage*`), no connector.
    /// - `sp`: `Σ(G_s − G_t)² / B²` with `G = normalize_rows(Ã Ãᵀ)`, weight 3000, last stage,
    ///   no connector.
    /// - `ickd`: `Σ(G_s − G_t)² / (C·B)` with `G = normalize_rows(F Fᵀ)` per sample, weight
    ///   2.5, last stage, the student through a 1×1 conv + BN (`Embed`).
    /// - `fitnet`: `mean((r(s) − t)²)`, r a 1×1 conv + BN + ReLU (`ConvReg`), weight 100, on the
    ///   second stage (RepDistiller's `hint_layer = 2`).
    /// - `cwd`: `T² / C · Σ_c KL(softmax(t_c/T) ‖ softmax(s_c/T))` over each channel's `H·W`,
    ///   averaged over the batch, T = 4, weight 25, last stage.
    /// - `cwd_logits`: the same divergence on a dense model's prediction map
    ///   ([`autokd_models::PREDICTION_TAP`], `[B, K, H/8, W/8]` for DeepLabV3) at the weight
    ///   the CWD paper gives for segmentation logits: T = 4, weight 3 (CIRKD's `CriterionCWD`
    ///   with `norm_type = 'channel'`, `divergence = 'kl'`: the KL summed, divided by `N·C`,
    ///   times T², a 1×1 conv on the student where the class counts differ). Only for models
    ///   with that tap.
    ///
    /// Where the reference differs in a detail the spec cannot express it is documented in
    /// ARCHITECTURE §4 (maps of different sizes are average-pooled to the smaller first).
    pub fn baseline(name: &str) -> Result<Self> {
        let feature = |global, relation, distance, temperature: f64, weight: f64| FeatureTerm {
            global,
            relation,
            distance,
            temperature: Real(temperature),
            ..FeatureTerm::plain(distance, weight)
        };
        let (features, logits) = match name {
            "vanilla" => (vec![], None),
            "kd" => (
                vec![],
                Some(LogitsTerm {
                    distance: LogitsDistance::Kl,
                    temperature: Real(4.0),
                    weight: Real(1.0),
                }),
            ),
            "at" => (
                vec![FeatureTerm {
                    student_tap: Some("stage*".into()),
                    teacher_tap: Some("stage*".into()),
                    connector: ConnectorKind::None,
                    group: GroupReduction::Sum,
                    ..feature(
                        GlobalTransform::SpatialAttention,
                        Relation::None,
                        Distance::Mse,
                        1.0,
                        1000.0,
                    )
                }],
                None,
            ),
            "sp" => (
                vec![FeatureTerm {
                    connector: ConnectorKind::None,
                    ..feature(
                        GlobalTransform::None,
                        Relation::SampleCorrelationRowNorm,
                        Distance::Mse,
                        1.0,
                        3000.0,
                    )
                }],
                None,
            ),
            "ickd" => (
                vec![FeatureTerm {
                    connector: ConnectorKind::ConvBn,
                    ..feature(
                        GlobalTransform::None,
                        Relation::ChannelCorrelationRowNorm,
                        Distance::SquaredL2,
                        1.0,
                        2.5,
                    )
                }],
                None,
            ),
            "cwd" => (
                vec![feature(
                    GlobalTransform::None,
                    Relation::ChannelSoftmax,
                    Distance::Kl,
                    4.0,
                    25.0,
                )],
                None,
            ),
            "cwd_logits" => (
                vec![FeatureTerm {
                    student_tap: Some(autokd_models::PREDICTION_TAP.into()),
                    teacher_tap: Some(autokd_models::PREDICTION_TAP.into()),
                    ..feature(
                        GlobalTransform::None,
                        Relation::ChannelSoftmax,
                        Distance::Kl,
                        4.0,
                        3.0,
                    )
                }],
                None,
            ),
            "dist" => (
                vec![],
                Some(LogitsTerm {
                    distance: LogitsDistance::Dist,
                    temperature: Real(4.0),
                    weight: Real(1.0),
                }),
            ),
            // PKD (Cao et al. 2022; mmrazor's `PKDLoss` and its RetinaNet config): on each FPN
            // level, half the MSE between the standardized channels, weight 10, summed over the
            // levels; no connector where the FPNs share their width (a 1×1 conv + BN where
            // they do not, as our space's). Half of 10 is the weight here.
            "pkd" => (
                vec![FeatureTerm {
                    student_tap: Some("fpn".into()),
                    teacher_tap: Some("fpn".into()),
                    group: GroupReduction::Sum,
                    ..feature(
                        GlobalTransform::None,
                        Relation::ChannelStandardized,
                        Distance::Mse,
                        1.0,
                        5.0,
                    )
                }],
                None,
            ),
            "fitnet" => (
                vec![FeatureTerm {
                    student_tap: Some("stage2".into()),
                    teacher_tap: Some("stage2".into()),
                    connector: ConnectorKind::ConvBnRelu,
                    ..feature(
                        GlobalTransform::None,
                        Relation::None,
                        Distance::Mse,
                        1.0,
                        100.0,
                    )
                }],
                None,
            ),
            other => {
                return Err(DistillError::Spec(format!(
                    "unknown baseline `{other}`; expected one of: {}",
                    BASELINES.join(", ")
                )));
            }
        };
        Ok(Self {
            name: Some(name.to_string()),
            features,
            logits,
        })
    }

    /// Checks the hyperparameters.
    pub fn check(&self) -> Result<()> {
        for f in &self.features {
            f.check()?;
        }
        if let Some(l) = &self.logits {
            positive("logits temperature", l.temperature)?;
            finite_non_negative("logits weight", l.weight)?;
        }
        Ok(())
    }

    /// Checks the spec and resolves its taps against the models' taps; the error names the tap
    /// and lists the available ones.
    pub fn resolve(
        &self,
        student_model: &str,
        student: &[TapInfo],
        teacher_model: &str,
        teacher: &[TapInfo],
    ) -> Result<Vec<ResolvedTerm>> {
        self.check()?;
        let find = |model: &str, info: &[TapInfo], tap: &Option<String>| -> Result<Vec<usize>> {
            match tap {
                None => autokd_models::default_tap(info)
                    .map(|i| vec![i])
                    .ok_or_else(|| DistillError::Spec(format!("{model} has no taps"))),
                Some(name) => Ok(TapRequest::resolve(model, info, name)?),
            }
        };
        self.features
            .iter()
            .map(|term| {
                let s = find(student_model, student, &term.student_tap)?;
                let t = find(teacher_model, teacher, &term.teacher_tap)?;
                if s.len() != t.len() {
                    let names = |info: &[TapInfo], ix: &[usize]| {
                        ix.iter()
                            .map(|&i| info[i].name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(DistillError::Spec(format!(
                        "the feature term pairs {} student taps ({}) with {} teacher taps ({}); a group needs as many on both sides",
                        s.len(),
                        names(student, &s),
                        t.len(),
                        names(teacher, &t)
                    )));
                }
                Ok(ResolvedTerm {
                    term: term.clone(),
                    pairs: s
                        .into_iter()
                        .zip(t)
                        .map(|(si, ti)| TapPair {
                            student: student[si].clone(),
                            teacher: teacher[ti].clone(),
                            student_index: si,
                            teacher_index: ti,
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// Reads a spec from TOML; errors name the field.
    pub fn from_toml(text: &str) -> Result<Self> {
        let spec: Self =
            toml::from_str(text).map_err(|e| DistillError::Spec(format!("distiller TOML: {e}")))?;
        spec.check()?;
        Ok(spec)
    }

    /// Writes the spec as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| DistillError::Spec(format!("distiller TOML: {e}")))
    }
}

fn wrap(op: String, inner: String) -> String {
    if op.is_empty() {
        inner
    } else {
        format!("{op}({inner})")
    }
}

impl fmt::Display for FeatureTerm {
    /// `25·KL_T4(channel_softmax(s.stage3), channel_softmax(t.stage3))`; a student side through
    /// an always-on connector reads `embed(s.…)` or `regress(s.…)`, and a group summed over its
    /// members `Σ` before the distance.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |prefix: &str, tap: &Option<String>| {
            let x = format!("{prefix}.{}", tap.as_deref().unwrap_or("last"));
            let x = if prefix == "s" {
                wrap(self.connector.symbol().to_string(), x)
            } else {
                x
            };
            let x = wrap(self.region.symbol().to_string(), x);
            let x = wrap(self.global.symbol(), x);
            let x = wrap(self.intra.symbol(), x);
            wrap(self.relation.symbol().to_string(), x)
        };
        let t = if self.uses_temperature() {
            format!("_T{}", self.temperature)
        } else {
            String::new()
        };
        let sum = match self.group {
            GroupReduction::Mean => "",
            GroupReduction::Sum => "Σ",
        };
        write!(
            f,
            "{}·{sum}{}{t}({}, {})",
            self.weight,
            self.distance.symbol(),
            side("s", &self.student_tap),
            side("t", &self.teacher_tap)
        )
    }
}

impl fmt::Display for LogitsTerm {
    /// `1·KL_T4(logits)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = if self.distance.uses_temperature() {
            format!("_T{}", self.temperature)
        } else {
            String::new()
        };
        write!(f, "{}·{}{t}(logits)", self.weight, self.distance.symbol())
    }
}

impl fmt::Display for DistillerSpec {
    /// `L = CE + 25·KL_T4(channel_softmax(s.stage3), channel_softmax(t.stage3)) + 1·KL_T4(logits)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L = task")?;
        for term in &self.features {
            write!(f, " + {term}")?;
        }
        if let Some(l) = &self.logits {
            write!(f, " + {l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cwd_kd() -> DistillerSpec {
        DistillerSpec {
            name: None,
            features: vec![FeatureTerm {
                student_tap: Some("stage3".into()),
                teacher_tap: Some("stage3".into()),
                relation: Relation::ChannelSoftmax,
                temperature: Real(4.0),
                ..FeatureTerm::plain(Distance::Kl, 25.0)
            }],
            logits: Some(LogitsTerm {
                distance: LogitsDistance::Kl,
                temperature: Real(4.0),
                weight: Real(1.0),
            }),
        }
    }

    #[test]
    fn display_is_the_formula() {
        assert_eq!(
            cwd_kd().to_string(),
            "L = task + 25·KL_T4(channel_softmax(s.stage3), channel_softmax(t.stage3)) + 1·KL_T4(logits)"
        );
        let at = DistillerSpec::baseline("at").unwrap();
        assert_eq!(
            at.to_string(),
            "L = task + 1000·ΣMSE(spatial_att(s.stage*), spatial_att(t.stage*))"
        );
        let fitnet = DistillerSpec::baseline("fitnet").unwrap();
        assert_eq!(
            fitnet.to_string(),
            "L = task + 100·MSE(regress(s.stage2), t.stage2)"
        );
        let ickd = DistillerSpec::baseline("ickd").unwrap();
        assert_eq!(
            ickd.to_string(),
            "L = task + 2.5·L2²(channel_corr_rownorm(embed(s.last)), channel_corr_rownorm(t.last))"
        );
        assert_eq!(
            DistillerSpec::baseline("vanilla").unwrap().to_string(),
            "L = task"
        );
        let mut t = cwd_kd().features[0].clone();
        t.global = GlobalTransform::Mask { ratio: Real(0.5) };
        t.intra = IntraSpatial::Local { k: 2 };
        t.relation = Relation::SampleCorrelation;
        t.distance = Distance::Cosine;
        assert_eq!(
            t.to_string(),
            "25·Cos(sample_corr(local2(mask0.5(s.stage3))), sample_corr(local2(mask0.5(t.stage3))))"
        );
    }

    #[test]
    fn toml_and_json_round_trip() {
        for spec in BASELINES
            .iter()
            .map(|b| DistillerSpec::baseline(b).unwrap())
            .chain([cwd_kd()])
        {
            let text = spec.to_toml().unwrap();
            assert_eq!(DistillerSpec::from_toml(&text).unwrap(), spec, "{text}");
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<DistillerSpec>(&json).unwrap(), spec);
        }
        let mut masked = cwd_kd();
        masked.features[0].global = GlobalTransform::Mask { ratio: Real(0.65) };
        masked.features[0].intra = IntraSpatial::Local { k: 4 };
        let text = masked.to_toml().unwrap();
        assert_eq!(DistillerSpec::from_toml(&text).unwrap(), masked, "{text}");
    }

    #[test]
    fn bad_specs_are_named() {
        let msg = DistillerSpec::from_toml("[[features]]\nglobal = { kind = \"none\" }\nintra = { kind = \"none\" }\nrelation = \"none\"\ndistance = \"l3\"\ntemperature = 1.0\nweight = 1.0\n").unwrap_err().to_string();
        assert!(msg.contains("l3") && msg.contains("distance"), "{msg}");
        let msg = DistillerSpec::from_toml("feature = []\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown field `feature`"), "{msg}");
        let mut s = cwd_kd();
        s.features[0].temperature = Real(0.0);
        assert!(s.check().unwrap_err().to_string().contains("temperature 0"));
        assert!(
            DistillerSpec::baseline("crd")
                .unwrap_err()
                .to_string()
                .contains("unknown baseline `crd`")
        );
    }

    #[test]
    fn taps_resolve_against_the_models() {
        let info = |names: &[&str]| {
            names
                .iter()
                .map(|n| TapInfo {
                    name: n.to_string(),
                    channels: 8,
                    stride: 1,
                    kind: autokd_models::TapKind::FeatureMap,
                })
                .collect::<Vec<_>>()
        };
        let (s, t) = (
            info(&["stem", "stage1", "stage2", "stage3"]),
            info(&["stem", "stage1", "stage2", "stage3", "stage4"]),
        );
        let r = cwd_kd().resolve("resnet8", &s, "resnet110", &t).unwrap();
        assert_eq!(
            (r[0].pairs[0].student_index, r[0].pairs[0].teacher_index),
            (3, 3)
        );
        let r = DistillerSpec::baseline("sp")
            .unwrap()
            .resolve("a", &s, "b", &t)
            .unwrap();
        assert_eq!(
            (r[0].pairs[0].student_index, r[0].pairs[0].teacher_index),
            (3, 4)
        );
        // AT pairs every stage output, stem excluded; four teacher stages against three
        // student stages are refused.
        let at = DistillerSpec::baseline("at").unwrap();
        let r = at.resolve("a", &s, "b", &s).unwrap();
        let pairs: Vec<(usize, usize)> = r[0]
            .pairs
            .iter()
            .map(|p| (p.student_index, p.teacher_index))
            .collect();
        assert_eq!(pairs, vec![(1, 1), (2, 2), (3, 3)]);
        let msg = at.resolve("a", &s, "b", &t).unwrap_err().to_string();
        assert!(
            msg.contains("3 student taps") && msg.contains("4 teacher taps"),
            "{msg}"
        );
        let mut bad = cwd_kd();
        bad.features[0].student_tap = Some("stage9".into());
        let msg = bad
            .resolve("resnet8", &s, "resnet110", &t)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "tap `stage9` not found in resnet8; available: stem, stage1, stage2, stage3"
        );
    }

    #[test]
    fn specs_hash_and_compare() {
        use std::collections::HashSet;
        let set: HashSet<DistillerSpec> = BASELINES
            .iter()
            .map(|b| DistillerSpec::baseline(b).unwrap())
            .chain([cwd_kd(), cwd_kd()])
            .collect();
        assert_eq!(set.len(), BASELINES.len() + 1);
    }
}
