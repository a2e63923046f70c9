//! The `Distiller` module built from a [`DistillerSpec`]: it owns the learnable parts (1×1
//! connectors, MGD generation blocks), trained with the student, and turns one student pass and
//! one teacher pass (or cached teacher outputs) into the total loss and every named term.
//!
//! Per feature term: tokens `[B, N, C]` become maps `[B, C, √N, √N]` (or `[B, C, N, 1]`); a
//! connector (1×1 conv + BN) maps student channels to teacher channels when they differ; maps of
//! different spatial sizes are average-pooled to the smaller; then global transform, intra-spatial
//! transform, relation and distance, times the weight. The teacher side is never differentiated.

use autokd_models::{Feature, Intermediates, TapRequest};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::module::adaptive_avg_pool2d;

use crate::error::{DistillError, Result};
use crate::spec::{DistillerSpec, FeatureTerm, ResolvedTerm};
use crate::transform::{GlobalTransform, MaskGenerator, MaskRng};

/// 1×1 convolution + batch norm from student to teacher channels (FitNet's regressor).
#[derive(Module, Debug)]
pub struct Connector {
    conv: Conv2d,
    bn: BatchNorm,
}

impl Connector {
    /// A connector from `from` to `to` channels.
    pub fn new(from: usize, to: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([from, to], [1, 1])
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(to).init(device),
        }
    }

    /// # Shapes
    /// - `x`: `[B, C_s, H, W]` → `[B, C_t, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = autokd_models::common::conv2d(&self.conv, x);
        autokd_models::common::batch_norm(&self.bn, y)
    }
}

/// Every named loss term of one step and their weighted sum.
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// `CE + Σ weighted terms`.
    pub total: Tensor<1>,
    /// `("ce", …)`, then one entry per feature term (`feat0`, `feat1`, …) and `logits`, each
    /// already weighted.
    pub terms: Vec<(String, Tensor<1>)>,
}

/// The unweighted value of a feature term between aligned maps (after the connector and the
/// pooling to a common size): global transform, intra-spatial transform, relation, distance.
/// `generator` is required for the mask transform.
///
/// # Shapes
/// - `s`, `t`: `[B, C, H, W]` → `[1]`
pub fn term_value(
    term: &FeatureTerm,
    s: Tensor<4>,
    t: Tensor<4>,
    generator: Option<&MaskGenerator>,
) -> Result<Tensor<1>> {
    let temp = term.temperature.get();
    let (s, t) = term.global.apply(s, t, temp, generator)?;
    let (s, t) = (term.intra.apply(s), term.intra.apply(t));
    let (s, t) = (term.relation.apply(s, temp), term.relation.apply(t, temp));
    term.distance
        .apply(s, t, temp, term.relation.is_distribution())
}

/// A distiller ready to train with a student.
#[derive(Module, Debug)]
pub struct Distiller {
    connectors: Vec<Option<Connector>>,
    generators: Vec<Option<MaskGenerator>>,
    #[module(skip)]
    spec: DistillerSpec,
    #[module(skip)]
    terms: Vec<ResolvedTerm>,
}

/// The `[C, H, W]` map a feature of `dims` (`[B, C, H, W]`, or tokens `[B, N, C]`) becomes in a
/// feature term: tokens are laid out as a `√N × √N` map when `N` is a square, else `N × 1`.
pub fn map_shape(dims: &[usize]) -> [usize; 3] {
    match *dims {
        [_, c, h, w] => [c, h, w],
        [_, n, c] => {
            let side = (n as f64).sqrt().round() as usize;
            if side * side == n {
                [c, side, side]
            } else {
                [c, n, 1]
            }
        }
        _ => [dims.iter().product(), 1, 1],
    }
}

fn as_map(f: &Feature) -> Tensor<4> {
    match f {
        Feature::Map(t) => t.clone(),
        Feature::Tokens(t) => {
            let [b, n, c] = t.dims();
            let [_, h, w] = map_shape(&[b, n, c]);
            t.clone().swap_dims(1, 2).reshape([b, c, h, w])
        }
    }
}

impl Distiller {
    /// Builds the distiller for a student and a teacher from their taps. The masks of MGD terms
    /// come from streams seeded with 0 until [`Distiller::seed_masks`].
    pub fn new(
        spec: &DistillerSpec,
        student_model: &str,
        student: &[autokd_models::TapInfo],
        teacher_model: &str,
        teacher: &[autokd_models::TapInfo],
        device: &Device,
    ) -> Result<Self> {
        let terms = spec.resolve(student_model, student, teacher_model, teacher)?;
        let connectors = terms
            .iter()
            .map(|r| {
                (r.student.channels != r.teacher.channels)
                    .then(|| Connector::new(r.student.channels, r.teacher.channels, device))
            })
            .collect();
        let generators = terms
            .iter()
            .map(|r| {
                matches!(r.term.global, GlobalTransform::Mask { .. })
                    .then(|| MaskGenerator::new(r.teacher.channels, 0, device))
            })
            .collect();
        let distiller = Self {
            connectors,
            generators,
            spec: spec.clone(),
            terms,
        };
        distiller.seed_masks(0);
        Ok(distiller)
    }

    /// Restarts the mask streams of the MGD terms from `seed` (one stream per term, derived from
    /// it). The streams belong to this distiller and its clones, never to the device, so other
    /// threads' seeding or drawing cannot change them.
    pub fn seed_masks(&self, seed: u64) {
        for (i, g) in self.generators.iter().enumerate() {
            if let Some(g) = g {
                g.rng()
                    .reseed(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            }
        }
    }

    /// New mask streams forked from this distiller's, one per MGD term, for a replica that must
    /// draw its own masks (a data-parallel shard); give them to it with [`Distiller::set_masks`].
    pub fn fork_masks(&self) -> Vec<Option<MaskRng>> {
        self.generators
            .iter()
            .map(|g| g.as_ref().map(|g| g.rng().fork()))
            .collect()
    }

    /// Gives this distiller the mask streams of [`Distiller::fork_masks`].
    pub fn set_masks(&mut self, streams: Vec<Option<MaskRng>>) {
        for (g, s) in self.generators.iter_mut().zip(streams) {
            if let (Some(g), Some(s)) = (g, s) {
                g.set_rng(s);
            }
        }
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &DistillerSpec {
        &self.spec
    }

    /// The taps the student and the teacher must return, in the order [`Distiller::loss`]
    /// expects them (one per feature term; duplicates allowed).
    pub fn tap_requests(&self) -> (TapRequest, TapRequest) {
        let s: Vec<usize> = self.terms.iter().map(|r| r.student_index).collect();
        let t: Vec<usize> = self.terms.iter().map(|r| r.teacher_index).collect();
        (TapRequest::indices(&s), TapRequest::indices(&t))
    }

    /// The weighted value of feature term `i` between aligned student and teacher features.
    fn feature_term(&self, i: usize, s: &Feature, t: &Feature) -> Result<Tensor<1>> {
        let r = &self.terms[i];
        let term = &r.term;
        let mut s = as_map(s);
        let mut t = as_map(t).without_autodiff();
        if let Some(c) = &self.connectors[i] {
            s = c.forward(s);
        }
        let ([bs, cs, hs, ws], [bt, ct, ht, wt]) = (s.dims(), t.dims());
        if bs != bt || cs != ct {
            return Err(DistillError::ShapeMismatch {
                op: "feature term",
                student: vec![bs, cs, hs, ws],
                teacher: vec![bt, ct, ht, wt],
            });
        }
        let (h, w) = (hs.min(ht), ws.min(wt));
        if (hs, ws) != (h, w) {
            s = adaptive_avg_pool2d(s, [h, w]);
        }
        if (ht, wt) != (h, w) {
            t = adaptive_avg_pool2d(t, [h, w]);
        }
        Ok(term_value(term, s, t, self.generators[i].as_ref())?.mul_scalar(term.weight.get()))
    }

    /// The loss of one step. `student` and `teacher` hold the taps of [`Distiller::tap_requests`]
    /// in order; the teacher's outputs are constants. For a student with a distillation head
    /// (DeiT), the logits term trains that head and CE the class head.
    ///
    /// # Shapes
    /// - `targets`: `[B]` class indices
    pub fn loss(
        &self,
        student: &Intermediates,
        teacher: &Intermediates,
        targets: Tensor<1, Int>,
    ) -> Result<LossTerms> {
        let n = self.terms.len();
        if student.features.len() != n || teacher.features.len() != n {
            return Err(DistillError::Spec(format!(
                "{n} feature terms, but the student returned {} taps and the teacher {}",
                student.features.len(),
                teacher.features.len()
            )));
        }
        let device = student.logits.device();
        let ce = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(student.logits.clone(), targets);
        let mut terms = vec![("ce".to_string(), ce.clone())];
        let mut total = ce;
        for i in 0..n {
            let v = self.feature_term(i, &student.features[i], &teacher.features[i])?;
            total = total + v.clone();
            terms.push((format!("feat{i}"), v));
        }
        if let Some(l) = &self.spec.logits {
            let s = student
                .dist_logits
                .clone()
                .unwrap_or_else(|| student.logits.clone());
            let v = l
                .distance
                .apply(
                    s,
                    teacher.logits.clone().without_autodiff(),
                    l.temperature.get(),
                )?
                .mul_scalar(l.weight.get());
            total = total + v.clone();
            terms.push(("logits".to_string(), v));
        }
        Ok(LossTerms { total, terms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::SearchSpace;
    use crate::spec::BASELINES;
    use crate::testing::tensor;
    use autokd_models::{TapInfo, TapKind, trainable_params};

    fn info(name: &str, channels: usize) -> Vec<TapInfo> {
        vec![TapInfo {
            name: name.into(),
            channels,
            reduction: 1,
            kind: TapKind::FeatureMap,
        }]
    }

    fn outputs(feature: Feature, logits: Tensor<2>) -> Intermediates {
        Intermediates {
            features: vec![feature],
            embedding: logits.clone(),
            logits,
            dist_logits: None,
        }
    }

    fn finite(t: Tensor<1>) -> bool {
        t.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    }

    /// A seeded sample of 300 full distillers of the paper's space plus every baseline: each
    /// builds for a student (8 channels, 4×4, or DeiT-like tokens) and a teacher (16 channels,
    /// 8×8), gives a finite loss and finite gradients for the student's features and logits.
    #[test]
    fn every_sampled_distiller_builds_and_trains() {
        let ad = Device::flex().autodiff();
        let space = SearchSpace::default();
        let levels = space.levels();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut specs: Vec<DistillerSpec> = (0..300)
            .map(|_| {
                space
                    .spec(&levels.iter().map(|l| next(l.options)).collect::<Vec<_>>())
                    .unwrap()
            })
            .collect();
        specs.extend(
            BASELINES
                .iter()
                .map(|b| DistillerSpec::baseline(b).unwrap()),
        );
        for (k, spec) in specs.iter().enumerate() {
            let d = Distiller::new(
                spec,
                "student",
                &info("stage3", 8),
                "teacher",
                &info("stage3", 16),
                &ad,
            )
            .unwrap();
            let s_map = tensor([4, 8, 4, 4], k as u64, &ad).require_grad();
            let s_feat = if k % 2 == 0 {
                Feature::Map(s_map.clone())
            } else {
                Feature::Tokens(s_map.clone().reshape([4, 8, 16]).swap_dims(1, 2)) // [4, 16, 8]
            };
            let s_logits = tensor([4, 10], k as u64 + 1, &ad).require_grad();
            let t_out = outputs(
                Feature::Map(tensor([4, 16, 8, 8], 7, &Device::flex())),
                tensor([4, 10], 8, &Device::flex()),
            );
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3, 9, 3], [4]), &ad);
            let (mut s_out, mut t_out) = (outputs(s_feat, s_logits.clone()), t_out);
            if spec.features.is_empty() {
                s_out.features.clear();
                t_out.features.clear();
            }
            let loss = d.loss(&s_out, &t_out, targets).unwrap();
            assert_eq!(
                loss.terms.len(),
                1 + spec.features.len() + usize::from(spec.logits.is_some()),
                "{spec}"
            );
            assert!(finite(loss.total.clone()), "{spec}: loss not finite");
            let grads = loss.total.backward();
            let feature_grad = if spec.features.is_empty() {
                None
            } else {
                s_map.grad(&grads)
            };
            for g in [
                feature_grad,
                Some(s_logits.grad(&grads).unwrap().reshape([4, 10, 1, 1])),
            ]
            .into_iter()
            .flatten()
            {
                assert!(finite(g.reshape([-1])), "{spec}: gradient not finite");
            }
        }
    }

    /// Student = teacher (same channels and size, no connector): every term but CE vanishes,
    /// except with the mask, which changes the student on purpose.
    #[test]
    fn terms_vanish_when_student_equals_teacher() {
        let device = Device::flex();
        let space = SearchSpace::default();
        let levels = space.levels();
        let mut n = 0;
        for g in 0..levels[0].options {
            for r in 0..levels[2].options {
                for dist in 0..levels[3].options {
                    let spec = space
                        .spec(&[
                            g,
                            (g + r) % levels[1].options,
                            r,
                            dist,
                            1,
                            2,
                            dist % 3,
                            1,
                            2,
                        ])
                        .unwrap();
                    if matches!(spec.features[0].global, GlobalTransform::Mask { .. }) {
                        continue;
                    }
                    let d = Distiller::new(&spec, "a", &info("x", 8), "b", &info("x", 8), &device)
                        .unwrap();
                    let f = tensor([4, 8, 4, 4], 3, &device);
                    let logits = tensor([4, 10], 4, &device);
                    let targets = Tensor::<1, Int>::from_data(
                        TensorData::new(vec![1i64, 2, 3, 4], [4]),
                        &device,
                    );
                    let out = d
                        .loss(
                            &outputs(Feature::Map(f.clone()), logits.clone()),
                            &outputs(Feature::Map(f), logits),
                            targets,
                        )
                        .unwrap();
                    for (name, v) in &out.terms[1..] {
                        let v: f32 = v.clone().into_scalar();
                        assert!(v.abs() < 1e-4, "{spec}: {name} = {v}");
                    }
                    n += 1;
                }
            }
        }
        assert!(n >= 100, "{n}");
    }

    #[test]
    fn connector_and_generator_are_trainable_parameters() {
        let device = Device::flex();
        let mut spec = DistillerSpec::baseline("fitnet").unwrap();
        let d = Distiller::new(&spec, "s", &info("x", 8), "t", &info("x", 16), &device).unwrap();
        // 1×1 conv 8→16 without bias (128) + BN affine (32).
        assert_eq!(trainable_params(&d), 160);
        spec.features[0].global = GlobalTransform::Mask {
            ratio: crate::Real(0.5),
        };
        let d = Distiller::new(&spec, "s", &info("x", 16), "t", &info("x", 16), &device).unwrap();
        // Two 3×3 convs 16→16 with bias: 2·(2304 + 16).
        assert_eq!(trainable_params(&d), 4640);
        let (s, t) = d.tap_requests();
        assert_eq!((s.indices, t.indices), (vec![0], vec![0]));
    }

    #[test]
    fn mismatched_outputs_are_errors() {
        let device = Device::flex();
        let d = Distiller::new(
            &DistillerSpec::baseline("fitnet").unwrap(),
            "s",
            &info("x", 8),
            "t",
            &info("x", 8),
            &device,
        )
        .unwrap();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 2], [2]), &device);
        let s = outputs(
            Feature::Map(tensor([2, 8, 4, 4], 1, &device)),
            tensor([2, 10], 2, &device),
        );
        let t = Intermediates {
            features: vec![],
            ..outputs(
                Feature::Map(tensor([2, 8, 4, 4], 1, &device)),
                tensor([2, 10], 2, &device),
            )
        };
        assert!(
            d.loss(&s, &t, targets.clone())
                .unwrap_err()
                .to_string()
                .contains("1 feature terms")
        );
        let t = outputs(
            Feature::Map(tensor([2, 6, 4, 4], 1, &device)),
            tensor([2, 10], 2, &device),
        );
        let msg = d.loss(&s, &t, targets).unwrap_err().to_string();
        assert!(
            msg.contains("[2, 8, 4, 4]") && msg.contains("[2, 6, 4, 4]"),
            "{msg}"
        );
    }
}
