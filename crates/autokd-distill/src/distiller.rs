//! The `Distiller` module built from a [`DistillerSpec`]: it owns the learnable parts (1×1
//! connectors, MGD generation blocks), trained with the student, and turns one student pass and
//! one teacher pass (or cached teacher outputs) into its named terms. It knows no task: the
//! task's own loss (CE, focal, …) and its targets never reach it; the training step adds them.
//! A term on a tap group is the mean over its member pairs, each with its own connector and
//! generator. Ground truth that a term may weight by (foreground masks, as FGD and DetKDS do)
//! comes as a [`GroundTruth`]. The prediction term compares rows (a classifier's images, a
//! segmenter's pixels, a detector's anchors); for a detector's anchors
//! (`Prediction::Anchors`) each class is its own sigmoid ([`crate::LogitsDistance::apply_sigmoid`]).
//!
//! Per feature term: tokens `[B, N, C]` become maps `[B, C, √N, √N]` (or `[B, C, N, 1]`); a
//! connector (1×1 conv + BN) maps student channels to teacher channels when they differ (or
//! always, with a ReLU for FitNet's regressor, or never: [`ConnectorKind`]); maps of
//! different spatial sizes are average-pooled to the smaller; then global transform, intra-spatial
//! transform, relation and distance, times the weight. The teacher side is never differentiated.

use autokd_models::init::{self, ConvInit, ConvShape, InitRng};
use autokd_models::{Feature, Intermediates, TapRequest};
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::module::adaptive_avg_pool2d;

use crate::error::{DistillError, Result};
use crate::spec::{
    ConnectorKind, DistillerSpec, FeatureTerm, GroupReduction, Region, ResolvedTerm,
};
use crate::transform::{GlobalTransform, MaskGenerator, MaskRng};

/// 1×1 convolution + batch norm from student to teacher channels, with a ReLU after for
/// FitNet's regressor.
#[derive(Module, Debug)]
pub struct Connector {
    conv: Conv2d,
    bn: BatchNorm,
    #[module(skip)]
    relu: bool,
}

impl Connector {
    /// A connector from `from` to `to` channels, its convolution drawn from `rng` (PyTorch's
    /// default: uniform in `±1/√from`; no bias, which the batch norm after it would cancel),
    /// with a ReLU at the end when `relu`.
    pub fn new(from: usize, to: usize, relu: bool, rng: &mut InitRng, device: &Device) -> Self {
        let shape = ConvShape {
            in_ch: from,
            out_ch: to,
            kernel: 1,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: false,
        };
        Self {
            conv: init::conv2d(shape, ConvInit::TorchDefault, rng, device),
            bn: init::batch_norm(to, device),
            relu,
        }
    }

    /// # Shapes
    /// - `x`: `[B, C_s, H, W]` → `[B, C_t, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = autokd_models::common::conv2d(&self.conv, x);
        let y = autokd_models::common::batch_norm(&self.bn, y);
        if self.relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }
}

/// The distiller's terms of one step, each already weighted: one entry per feature term
/// (`feat0`, `feat1`, …), then `logits` (the prediction term).
#[derive(Debug, Clone, Default)]
pub struct LossTerms {
    /// Named terms, in spec order.
    pub terms: Vec<(String, Tensor<1>)>,
}

impl LossTerms {
    /// The sum of the terms in order (`None` without terms).
    pub fn sum(&self) -> Option<Tensor<1>> {
        self.terms
            .iter()
            .map(|(_, v)| v.clone())
            .reduce(|a, b| a + b)
    }
}

/// What the task tells the distiller about a batch, batch-aligned with the taps: where the
/// objects are (for terms restricted to a [`Region`]) and which prediction rows count.
/// Classification gives neither.
#[derive(Debug, Clone, Default)]
pub struct GroundTruth {
    /// Foreground weight per input pixel `[B, H, W]` (1 inside an object's box or mask, 0
    /// elsewhere), average-pooled to each term's map size (the share of each cell that is
    /// foreground).
    pub foreground: Option<Tensor<3>>,
    /// Which prediction rows count `[R]` (1 or 0: a segmenter's ignored pixels, a detector's
    /// ignored anchors); the prediction term is averaged over the counted rows only. `None`:
    /// every row.
    pub valid_rows: Option<Tensor<1>>,
}

impl GroundTruth {
    /// The region weight `[B, 1, h, w]` of `region` at a map of `h × w`, or `None` for the
    /// whole map.
    fn region_weight(
        &self,
        region: Region,
        b: usize,
        h: usize,
        w: usize,
    ) -> Result<Option<Tensor<4>>> {
        if region == Region::All {
            return Ok(None);
        }
        let Some(fg) = &self.foreground else {
            return Err(DistillError::Spec(format!(
                "a term on the {} reads the ground truth's foreground, which this task does not give",
                match region {
                    Region::Background => "background",
                    _ => "foreground",
                }
            )));
        };
        let [fb, fh, fw] = fg.dims();
        if fb != b {
            return Err(DistillError::Spec(format!(
                "the ground truth's foreground holds {fb} images, the batch {b}"
            )));
        }
        let share = adaptive_avg_pool2d(fg.clone().reshape([fb, 1, fh, fw]), [h, w]).detach();
        Ok(Some(match region {
            Region::Background => share.neg().add_scalar(1.0),
            _ => share,
        }))
    }

    /// Indices of the counted rows among `r`, or `None` when all count.
    fn counted_rows(&self, r: usize) -> Result<Option<Vec<i64>>> {
        let Some(mask) = &self.valid_rows else {
            return Ok(None);
        };
        let [n] = mask.dims();
        if n != r {
            return Err(DistillError::Spec(format!(
                "the ground truth marks {n} prediction rows, the predictions have {r}"
            )));
        }
        let values = mask
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| DistillError::Spec(format!("the valid-row mask: {e:?}")))?;
        Ok(Some(
            values
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.5)
                .map(|(i, _)| i as i64)
                .collect(),
        ))
    }
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
    /// One per tap pair, terms in order and members within a term in order (a spec without
    /// groups has one pair per term, so checkpoints name them `connectors.<term>`).
    connectors: Vec<Option<Connector>>,
    /// One per tap pair, like the connectors.
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
    /// Builds the distiller for a student and a teacher from their taps, its learnable parts
    /// (connectors, MGD generation blocks) drawn from `rng`. The masks of MGD terms come from
    /// streams seeded with 0 until [`Distiller::seed_masks`].
    pub fn new(
        spec: &DistillerSpec,
        student_model: &str,
        student: &[autokd_models::TapInfo],
        teacher_model: &str,
        teacher: &[autokd_models::TapInfo],
        rng: &mut InitRng,
        device: &Device,
    ) -> Result<Self> {
        let terms = spec.resolve(student_model, student, teacher_model, teacher)?;
        let pairs = || {
            terms
                .iter()
                .flat_map(|r| r.pairs.iter().map(move |p| (r, p)))
        };
        for (r, p) in pairs() {
            let (cs, ct) = (p.student.channels, p.teacher.channels);
            if cs != ct && !r.term.connector.builds(cs, ct) && !r.term.channel_free() {
                return Err(DistillError::Spec(format!(
                    "the term `{}` has no connector, but {student_model}'s {} has {cs} channels and {teacher_model}'s {} has {ct}; without a connector only spatial attention or a sample correlation compares different channel counts",
                    r.term, p.student.name, p.teacher.name
                )));
            }
        }
        let connectors = pairs()
            .map(|(r, p)| {
                let (cs, ct) = (p.student.channels, p.teacher.channels);
                r.term.connector.builds(cs, ct).then(|| {
                    let relu = r.term.connector == ConnectorKind::ConvBnRelu;
                    Connector::new(cs, ct, relu, rng, device)
                })
            })
            .collect();
        let generators = pairs()
            .map(|(r, p)| {
                matches!(r.term.global, GlobalTransform::Mask { .. })
                    .then(|| MaskGenerator::new(p.teacher.channels, 0, rng, device))
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

    /// The 1×1 convolution weights `[C_t, C_s]` of the connectors, in pair order (for tests
    /// against reference formulas).
    #[cfg(test)]
    pub(crate) fn connector_weights(&self) -> Vec<Tensor<2>> {
        self.connectors
            .iter()
            .flatten()
            .map(|c| {
                let [o, i, _, _] = c.conv.weight.val().dims();
                c.conv.weight.val().reshape([o, i])
            })
            .collect()
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &DistillerSpec {
        &self.spec
    }

    /// The taps the student and the teacher must return, in the order [`Distiller::loss`]
    /// expects them (one per tap pair: terms in order, group members in order; duplicates
    /// allowed).
    pub fn tap_requests(&self) -> (TapRequest, TapRequest) {
        let pairs = || self.terms.iter().flat_map(|r| &r.pairs);
        let s: Vec<usize> = pairs().map(|p| p.student_index).collect();
        let t: Vec<usize> = pairs().map(|p| p.teacher_index).collect();
        (TapRequest::indices(&s), TapRequest::indices(&t))
    }

    /// The unweighted value of `term` on tap pair `k` between aligned student and teacher
    /// features.
    fn pair_value(
        &self,
        term: &FeatureTerm,
        k: usize,
        s: &Feature,
        t: &Feature,
        truth: &GroundTruth,
    ) -> Result<Tensor<1>> {
        let mut s = as_map(s);
        let mut t = as_map(t).without_autodiff();
        if let Some(Some(c)) = self.connectors.get(k) {
            s = c.forward(s);
        }
        let ([bs, cs, hs, ws], [bt, ct, ht, wt]) = (s.dims(), t.dims());
        if bs != bt || (cs != ct && !term.channel_free()) {
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
        if let Some(m) = truth.region_weight(term.region, bs, h, w)? {
            let m = m.to_device(&s.device());
            s = s * m.clone();
            t = t * m.without_autodiff();
        }
        term_value(term, s, t, self.generators.get(k).and_then(Option::as_ref))
    }

    /// The distiller's terms of one step. `student` and `teacher` hold the taps of
    /// [`Distiller::tap_requests`] in order; the teacher's outputs are constants. For a student
    /// with a distillation head (DeiT), the prediction term trains that head (and the task's loss
    /// the class head). `truth` restricts region terms to the foreground or background and the
    /// prediction term to the rows that count.
    pub fn loss(
        &self,
        student: &Intermediates,
        teacher: &Intermediates,
        truth: &GroundTruth,
    ) -> Result<LossTerms> {
        let n: usize = self.terms.iter().map(|r| r.pairs.len()).sum();
        if student.features.len() != n || teacher.features.len() != n {
            return Err(DistillError::Spec(format!(
                "{n} tap pairs, but the student returned {} taps and the teacher {}",
                student.features.len(),
                teacher.features.len()
            )));
        }
        let mut terms = Vec::new();
        let mut k = 0;
        for (i, r) in self.terms.iter().enumerate() {
            let mut sum: Option<Tensor<1>> = None;
            for _ in &r.pairs {
                let v = self.pair_value(
                    &r.term,
                    k,
                    &student.features[k],
                    &teacher.features[k],
                    truth,
                )?;
                sum = Some(match sum {
                    Some(acc) => acc + v,
                    None => v,
                });
                k += 1;
            }
            let Some(mut v) = sum else { continue };
            if r.pairs.len() > 1 && r.term.group == GroupReduction::Mean {
                v = v.div_scalar(r.pairs.len() as f64);
            }
            terms.push((format!("feat{i}"), v.mul_scalar(r.term.weight.get())));
        }
        if let Some(l) = &self.spec.logits {
            let prediction = student.dist_logits.as_ref().unwrap_or(&student.logits);
            let sigmoid = prediction.is_sigmoid();
            let mut s = prediction.rows();
            let mut t = teacher.logits.rows().without_autodiff();
            if let Some(rows) = truth.counted_rows(s.dims()[0])? {
                if rows.is_empty() {
                    // No row counts in this batch: the term is zero (and sends no gradient).
                    terms.push(("logits".to_string(), s.sum().mul_scalar(0.0)));
                    return Ok(LossTerms { terms });
                }
                let n = rows.len();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &s.device());
                let t_device = t.device();
                s = s.select(0, idx.clone());
                t = t.select(0, idx.to_device(&t_device));
            }
            // A detector's anchors score each class by its own sigmoid.
            let v = if sigmoid {
                l.distance.apply_sigmoid(s, t, l.temperature.get())?
            } else {
                l.distance.apply(s, t, l.temperature.get())?
            };
            let v = v.mul_scalar(l.weight.get());
            terms.push(("logits".to_string(), v));
        }
        Ok(LossTerms { terms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distiller whose learnable parts are drawn from the stream of seed 0.
    fn build(
        spec: &DistillerSpec,
        student_model: &str,
        student: &[autokd_models::TapInfo],
        teacher_model: &str,
        teacher: &[autokd_models::TapInfo],
        device: &Device,
    ) -> Result<Distiller> {
        Distiller::new(
            spec,
            student_model,
            student,
            teacher_model,
            teacher,
            &mut InitRng::new(0),
            device,
        )
    }
    use crate::space::SearchSpace;
    use crate::spec::{BASELINES, Region};
    use crate::testing::tensor;
    use autokd_models::{Prediction, TapInfo, TapKind, trainable_params};

    /// The value of the first term of `d`'s loss.
    fn first_term(
        d: &Distiller,
        student: &Intermediates,
        teacher: &Intermediates,
        truth: &GroundTruth,
    ) -> f32 {
        d.loss(student, teacher, truth).unwrap().terms[0]
            .1
            .clone()
            .into_scalar()
    }

    /// An L2 term on the last taps, weight 1.
    fn l2_term() -> DistillerSpec {
        DistillerSpec {
            name: None,
            features: vec![FeatureTerm::plain(crate::Distance::L2, 1.0)],
            logits: None,
        }
    }

    fn info(name: &str, channels: usize) -> Vec<TapInfo> {
        vec![TapInfo {
            name: name.into(),
            channels,
            stride: 1,
            kind: TapKind::FeatureMap,
        }]
    }

    fn outputs(feature: Feature, logits: Tensor<2>) -> Intermediates {
        Intermediates {
            features: vec![feature],
            embedding: logits.clone(),
            logits: Prediction::Rows(logits),
            dist_logits: None,
            aux_logits: None,
            box_deltas: None,
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
        // The baselines on this test's one tap (FitNet's and AT's taps retargeted to it).
        specs.extend(BASELINES.iter().map(|b| {
            let mut spec = DistillerSpec::baseline(b).unwrap();
            for f in &mut spec.features {
                (f.student_tap, f.teacher_tap) = (None, None);
            }
            spec
        }));
        for (k, spec) in specs.iter().enumerate() {
            let d = build(
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
            let (mut s_out, mut t_out) = (outputs(s_feat, s_logits.clone()), t_out);
            if spec.features.is_empty() {
                s_out.features.clear();
                t_out.features.clear();
            }
            let loss = d.loss(&s_out, &t_out, &GroundTruth::default()).unwrap();
            assert_eq!(
                loss.terms.len(),
                spec.features.len() + usize::from(spec.logits.is_some()),
                "{spec}"
            );
            // The task's loss stands in as a plain CE term: the distiller adds none.
            let ce = burn::nn::loss::CrossEntropyLossConfig::new()
                .init(&ad)
                .forward(
                    s_logits.clone(),
                    Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3, 9, 3], [4]), &ad),
                );
            let total = loss.sum().map_or(ce.clone(), |d| ce + d);
            assert!(finite(total.clone()), "{spec}: loss not finite");
            let grads = total.backward();
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

    /// Student = teacher (same channels and size, no connector): every term vanishes, except
    /// with the mask, which changes the student on purpose.
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
                    let d = build(&spec, "a", &info("x", 8), "b", &info("x", 8), &device).unwrap();
                    let f = tensor([4, 8, 4, 4], 3, &device);
                    let logits = tensor([4, 10], 4, &device);
                    let out = d
                        .loss(
                            &outputs(Feature::Map(f.clone()), logits.clone()),
                            &outputs(Feature::Map(f), logits),
                            &GroundTruth::default(),
                        )
                        .unwrap();
                    assert_eq!(out.terms.len(), 2, "{spec}");
                    for (name, v) in &out.terms {
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
        let mut spec = l2_term();
        let d = build(&spec, "s", &info("x", 8), "t", &info("x", 16), &device).unwrap();
        // 1×1 conv 8→16 without bias (128) + BN affine (32).
        assert_eq!(trainable_params(&d), 160);
        spec.features[0].global = GlobalTransform::Mask {
            ratio: crate::Real(0.5),
        };
        let d = build(&spec, "s", &info("x", 16), "t", &info("x", 16), &device).unwrap();
        // Two 3×3 convs 16→16 with bias: 2·(2304 + 16).
        assert_eq!(trainable_params(&d), 4640);
        let (s, t) = d.tap_requests();
        assert_eq!((s.indices, t.indices), (vec![0], vec![0]));
    }

    #[test]
    fn mismatched_outputs_are_errors() {
        let device = Device::flex();
        let d = build(&l2_term(), "s", &info("x", 8), "t", &info("x", 8), &device).unwrap();
        let none = GroundTruth::default();
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
            d.loss(&s, &t, &none)
                .unwrap_err()
                .to_string()
                .contains("1 tap pairs")
        );
        let t = outputs(
            Feature::Map(tensor([2, 6, 4, 4], 1, &device)),
            tensor([2, 10], 2, &device),
        );
        let msg = d.loss(&s, &t, &none).unwrap_err().to_string();
        assert!(
            msg.contains("[2, 8, 4, 4]") && msg.contains("[2, 6, 4, 4]"),
            "{msg}"
        );
    }

    fn taps(names: &[(&str, usize)]) -> Vec<TapInfo> {
        names
            .iter()
            .map(|(n, c)| TapInfo {
                name: (*n).into(),
                channels: *c,
                stride: 1,
                kind: TapKind::FeatureMap,
            })
            .collect()
    }

    /// A term on a tap group is the mean of the term on each member pair, pinned against the
    /// members computed one at a time: L2 on `fpn.p3`, `fpn.p4` (the student's p4 needs a
    /// connector, the teacher's p3 is larger and is pooled).
    #[test]
    fn a_group_term_is_the_mean_over_its_members() {
        let device = Device::flex();
        let student = taps(&[("backbone.stage3", 4), ("fpn.p3", 8), ("fpn.p4", 8)]);
        let teacher = taps(&[("backbone.stage3", 8), ("fpn.p3", 8), ("fpn.p4", 8)]);
        let mut spec = l2_term();
        spec.features[0].student_tap = Some("fpn".into());
        spec.features[0].teacher_tap = Some("fpn".into());
        spec.features[0].weight = crate::Real(3.0);
        let d = build(&spec, "s", &student, "t", &teacher, &device).unwrap();
        let (s_req, t_req) = d.tap_requests();
        assert_eq!((s_req.indices, t_req.indices), (vec![1, 2], vec![1, 2]));
        let (s3, s4) = (
            tensor([2, 8, 4, 4], 1, &device),
            tensor([2, 8, 2, 2], 2, &device),
        );
        let (t3, t4) = (
            tensor([2, 8, 8, 8], 3, &device),
            tensor([2, 8, 2, 2], 4, &device),
        );
        let logits = tensor([2, 5], 5, &device);
        let with = |f: Vec<Tensor<4>>| Intermediates {
            features: f.into_iter().map(Feature::Map).collect(),
            ..outputs(
                Feature::Map(tensor([1, 1, 1, 1], 0, &device)),
                logits.clone(),
            )
        };
        let group = d
            .loss(
                &with(vec![s3.clone(), s4.clone()]),
                &with(vec![t3.clone(), t4.clone()]),
                &GroundTruth::default(),
            )
            .unwrap();
        assert_eq!(group.terms.len(), 1);
        let got: f32 = group.terms[0].1.clone().into_scalar();
        // f64 reference: L2 per sample (√Σ(s − t)²), averaged over the batch; the teacher's 8×8
        // p3 average-pooled 2×2 to 4×4.
        let v = |t: Tensor<4>| -> Vec<f64> {
            t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()
        };
        let l2 = |s: &[f64], t: &[f64], b: usize| -> f64 {
            let n = s.len() / b;
            (0..b)
                .map(|i| {
                    s[i * n..(i + 1) * n]
                        .iter()
                        .zip(&t[i * n..(i + 1) * n])
                        .map(|(a, c)| (a - c).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .sum::<f64>()
                / b as f64
        };
        let t3v = v(t3);
        let mut pooled = vec![0.0; 2 * 8 * 16];
        for (idx, p) in pooled.iter_mut().enumerate() {
            let (bc, y, x) = (idx / 16, (idx % 16) / 4, idx % 4);
            *p = (0..4)
                .map(|k| t3v[bc * 64 + (2 * y + k / 2) * 8 + 2 * x + k % 2])
                .sum::<f64>()
                / 4.0;
        }
        let want = 3.0 * (l2(&v(s3), &pooled, 2) + l2(&v(s4), &v(t4), 2)) / 2.0;
        assert!(
            (f64::from(got) - want).abs() < 1e-4 * want,
            "{got} vs {want}"
        );
        // Groups of different sizes are refused, naming the taps.
        spec.features[0].teacher_tap = Some("backbone".into());
        let err = build(&spec, "s", &student, "t", &teacher, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fpn.p3, fpn.p4") && err.contains("backbone.stage3"),
            "{err}"
        );
        // Short names find a unique tap, as configs written before hierarchical names do.
        spec.features[0].teacher_tap = Some("stage3".into());
        spec.features[0].student_tap = Some("p4".into());
        let d = build(&spec, "s", &student, "t", &teacher, &device).unwrap();
        let (s_req, t_req) = d.tap_requests();
        assert_eq!((s_req.indices, t_req.indices), (vec![2], vec![0]));
    }

    /// `cwd_logits` reads a dense model's prediction tap by name and computes CIRKD's channel
    /// CWD on it: `3 · T² / (N·C) · Σ_{n,c} KL(softmax_hw(t/T) ‖ softmax_hw(s/T))`, T = 4, pinned
    /// to an f64 reference on `[2, 3, 2, 2]` maps; `cwd` without a tap reads the last feature
    /// tap (`aspp`), never the prediction.
    #[test]
    fn cwd_on_the_prediction_map_matches_the_reference() {
        let device = Device::flex();
        let taps = |k| {
            vec![
                TapInfo {
                    name: "aspp".into(),
                    channels: 4,
                    stride: 8,
                    kind: TapKind::FeatureMap,
                },
                TapInfo {
                    name: autokd_models::PREDICTION_TAP.into(),
                    channels: k,
                    stride: 8,
                    kind: TapKind::FeatureMap,
                },
            ]
        };
        let spec = DistillerSpec::baseline("cwd_logits").unwrap();
        let d = build(&spec, "s", &taps(3), "t", &taps(3), &device).unwrap();
        let (s_req, t_req) = d.tap_requests();
        assert_eq!((s_req.indices, t_req.indices), (vec![1], vec![1]));
        let plain = build(
            &DistillerSpec::baseline("cwd").unwrap(),
            "s",
            &taps(3),
            "t",
            &taps(3),
            &device,
        )
        .unwrap();
        assert_eq!(plain.tap_requests().0.indices, vec![0]);
        let (s, t) = (
            tensor([2, 3, 2, 2], 11, &device),
            tensor([2, 3, 2, 2], 12, &device),
        );
        let got = first_term(
            &d,
            &outputs(Feature::Map(s.clone()), Tensor::zeros([2, 3], &device)),
            &outputs(Feature::Map(t.clone()), Tensor::zeros([2, 3], &device)),
            &GroundTruth::default(),
        );
        let v = |x: Tensor<4>| -> Vec<f64> {
            x.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        let (sv, tv) = (v(s), v(t));
        let softmax = |row: &[f64]| {
            let e: Vec<f64> = row.iter().map(|x| (x / 4.0).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<_>>()
        };
        let kl: f64 = (0..6)
            .map(|nc| {
                let (p, q) = (
                    softmax(&tv[nc * 4..nc * 4 + 4]),
                    softmax(&sv[nc * 4..nc * 4 + 4]),
                );
                p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum::<f64>()
            })
            .sum();
        let want = 3.0 * 16.0 * kl / 6.0;
        assert!(
            (f64::from(got) - want).abs() < 1e-5 * want.max(1e-3),
            "{got} vs {want}"
        );
    }

    /// A segmenter's prediction term counts only the pixels the ground truth keeps (ignored
    /// pixels, label 255): KD over a `[2, 3, 2, 4]` map's 16 pixel rows with 5 rows ignored is
    /// pinned to an f64 reference over the 11 others; DIST equals DIST on those rows given as
    /// rows; no counted row gives 0; a mask of another length is an error.
    #[test]
    fn the_prediction_term_counts_only_the_valid_rows() {
        let device = Device::flex();
        let (s, t) = (
            tensor([2, 3, 2, 4], 1, &device),
            tensor([2, 3, 2, 4], 2, &device),
        );
        let out = |p: Prediction| Intermediates {
            features: vec![],
            embedding: tensor([2, 1], 0, &device),
            logits: p,
            dist_logits: None,
            aux_logits: None,
            box_deltas: None,
        };
        let ignored = [1usize, 4, 6, 9, 15];
        let mask: Vec<f32> = (0..16)
            .map(|r| if ignored.contains(&r) { 0.0 } else { 1.0 })
            .collect();
        let truth = GroundTruth {
            valid_rows: Some(Tensor::from_data(TensorData::new(mask, [16]), &device)),
            ..GroundTruth::default()
        };
        // Pixel (b, y, x) is row b·8 + y·4 + x, its scores at [b, k, y, x].
        let rows64 = |m: &Tensor<4>| -> Vec<Vec<f64>> {
            let v = m.clone().into_data().try_to_vec::<f32>().unwrap();
            (0..16)
                .map(|r| {
                    let (b, p) = (r / 8, r % 8);
                    (0..3).map(|k| f64::from(v[b * 24 + k * 8 + p])).collect()
                })
                .collect()
        };
        let (sr, tr) = (rows64(&s), rows64(&t));
        let kd = build(
            &DistillerSpec::baseline("kd").unwrap(),
            "s",
            &[],
            "t",
            &[],
            &device,
        )
        .unwrap();
        let got: f32 = first_term(
            &kd,
            &out(Prediction::Map(s.clone())),
            &out(Prediction::Map(t.clone())),
            &truth,
        );
        let softmax = |v: &[f64]| {
            let e: Vec<f64> = v.iter().map(|x| (x / 4.0).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<_>>()
        };
        let kept: Vec<usize> = (0..16).filter(|r| !ignored.contains(r)).collect();
        let want = kept
            .iter()
            .map(|&r| {
                let (p, q) = (softmax(&sr[r]), softmax(&tr[r]));
                16.0 * q.iter().zip(&p).map(|(a, b)| a * (a / b).ln()).sum::<f64>()
            })
            .sum::<f64>()
            / kept.len() as f64;
        assert!(
            (f64::from(got) - want).abs() < 1e-5 * want.max(1.0),
            "{got} vs {want}"
        );
        // DIST (whose intra-class part spans the rows) on the kept rows, given as rows.
        let dist = build(
            &DistillerSpec::baseline("dist").unwrap(),
            "s",
            &[],
            "t",
            &[],
            &device,
        )
        .unwrap();
        let as_rows = |v: &[Vec<f64>]| {
            let flat: Vec<f32> = kept
                .iter()
                .flat_map(|&r| v[r].iter().map(|&x| x as f32))
                .collect();
            Tensor::<2>::from_data(TensorData::new(flat, [kept.len(), 3]), &device)
        };
        let masked: f32 = first_term(
            &dist,
            &out(Prediction::Map(s.clone())),
            &out(Prediction::Map(t.clone())),
            &truth,
        );
        let direct: f32 = first_term(
            &dist,
            &out(Prediction::Rows(as_rows(&sr))),
            &out(Prediction::Rows(as_rows(&tr))),
            &GroundTruth::default(),
        );
        assert!((masked - direct).abs() < 1e-6, "{masked} vs {direct}");
        let nothing = GroundTruth {
            valid_rows: Some(Tensor::zeros([16], &device)),
            ..GroundTruth::default()
        };
        let zero: f32 = first_term(
            &kd,
            &out(Prediction::Map(s.clone())),
            &out(Prediction::Map(t.clone())),
            &nothing,
        );
        assert_eq!(zero, 0.0);
        let wrong = GroundTruth {
            valid_rows: Some(Tensor::ones([15], &device)),
            ..GroundTruth::default()
        };
        let msg = kd
            .loss(&out(Prediction::Map(s)), &out(Prediction::Map(t)), &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("15 prediction rows") && msg.contains("16"),
            "{msg}"
        );
    }

    /// A term on the foreground compares the maps weighted by the share of each cell that the
    /// ground truth marks (the 8×8 input mask average-pooled to the 4×4 maps), the background
    /// by its complement: pinned to f64 references of `mean((m·(s − t))²)`; without a
    /// foreground the term is refused.
    #[test]
    fn region_terms_read_the_foreground() {
        let device = Device::flex().autodiff();
        let (s, t) = (
            tensor([2, 3, 4, 4], 5, &device),
            tensor([2, 3, 4, 4], 6, &device),
        );
        // Image 0: the left half is foreground; image 1: one pixel (2, 3), a quarter of cell
        // (1, 1).
        let mut fg = vec![0.0f32; 2 * 64];
        for y in 0..8 {
            for x in 0..4 {
                fg[y * 8 + x] = 1.0;
            }
        }
        fg[64 + 2 * 8 + 3] = 1.0;
        let share = |b: usize, y: usize, x: usize| -> f64 {
            (0..4)
                .map(|k| f64::from(fg[b * 64 + (2 * y + k / 2) * 8 + 2 * x + k % 2]))
                .sum::<f64>()
                / 4.0
        };
        let truth = GroundTruth {
            foreground: Some(Tensor::from_data(
                TensorData::new(fg.clone(), [2, 8, 8]),
                &device,
            )),
            ..GroundTruth::default()
        };
        let (sv, tv) = (
            s.clone()
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .unwrap(),
            t.clone()
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .unwrap(),
        );
        for region in [Region::Foreground, Region::Background] {
            let spec = DistillerSpec {
                name: None,
                features: vec![FeatureTerm {
                    region,
                    ..FeatureTerm::plain(crate::Distance::Mse, 2.0)
                }],
                logits: None,
            };
            let d = build(&spec, "s", &info("x", 3), "t", &info("x", 3), &device).unwrap();
            let got: f32 = first_term(
                &d,
                &outputs(Feature::Map(s.clone()), tensor([2, 5], 1, &device)),
                &outputs(Feature::Map(t.clone()), tensor([2, 5], 2, &device)),
                &truth,
            );
            let mut sum = 0.0;
            for i in 0..2 * 3 * 16 {
                let (b, y, x) = (i / 48, (i % 16) / 4, i % 4);
                let m = match region {
                    Region::Foreground => share(b, y, x),
                    _ => 1.0 - share(b, y, x),
                };
                sum += (m * (sv[i] - tv[i])).powi(2);
            }
            let want = 2.0 * sum / 96.0;
            assert!(
                (f64::from(got) - want).abs() < 1e-5 * want,
                "{region:?}: {got} vs {want}"
            );
            assert!(
                spec.to_string()
                    .contains(&format!("{}(s.last)", region.symbol())),
                "{spec}"
            );
            let msg = d
                .loss(
                    &outputs(Feature::Map(s.clone()), tensor([2, 5], 1, &device)),
                    &outputs(Feature::Map(t.clone()), tensor([2, 5], 2, &device)),
                    &GroundTruth::default(),
                )
                .unwrap_err()
                .to_string();
            assert!(msg.contains("does not give"), "{msg}");
        }
    }

    /// The prediction term compares rows: a segmenter's `[B, K, H, W]` map is the `[B·H·W, K]`
    /// rows of its pixels, so KD on the map equals KD on those rows given as rows.
    #[test]
    fn the_prediction_term_reads_maps_as_pixel_rows() {
        let device = Device::flex();
        let d = build(
            &DistillerSpec::baseline("kd").unwrap(),
            "s",
            &[],
            "t",
            &[],
            &device,
        )
        .unwrap();
        let (s, t) = (
            tensor([2, 3, 2, 4], 1, &device),
            tensor([2, 3, 2, 4], 2, &device),
        );
        let out = |p: Prediction| Intermediates {
            features: vec![],
            embedding: tensor([2, 1], 0, &device),
            logits: p,
            dist_logits: None,
            aux_logits: None,
            box_deltas: None,
        };
        let rows = |m: &Tensor<4>| {
            // Pixel (b, y, x) is row b·8 + y·4 + x: its 3 class scores.
            let v = m.clone().into_data().try_to_vec::<f32>().unwrap();
            let mut r = Vec::new();
            for b in 0..2 {
                for p in 0..8 {
                    for k in 0..3 {
                        r.push(v[b * 24 + k * 8 + p]);
                    }
                }
            }
            Tensor::<2>::from_data(TensorData::new(r, [16, 3]), &device)
        };
        let none = GroundTruth::default();
        let map = d
            .loss(
                &out(Prediction::Map(s.clone())),
                &out(Prediction::Map(t.clone())),
                &none,
            )
            .unwrap();
        let by_rows = d
            .loss(
                &out(Prediction::Rows(rows(&s))),
                &out(Prediction::Rows(rows(&t))),
                &none,
            )
            .unwrap();
        let (a, b): (f32, f32) = (
            map.terms[0].1.clone().into_scalar(),
            by_rows.terms[0].1.clone().into_scalar(),
        );
        assert!(a > 0.0 && (a - b).abs() < 1e-6 * a, "{a} vs {b}");
    }

    /// A detector's anchors `[B, ΣA, K]` are its `[B·ΣA, K]` rows with one sigmoid per class:
    /// the KD term (kd: T = 4, weight 1) is the Bernoulli KL of those rows, not the softmax KL.
    #[test]
    fn the_prediction_term_reads_anchors_with_sigmoids() {
        let device = Device::flex();
        let spec = DistillerSpec::baseline("kd").unwrap();
        let d = build(&spec, "s", &[], "t", &[], &device).unwrap();
        let (s, t) = (tensor([2, 5, 3], 1, &device), tensor([2, 5, 3], 2, &device));
        let out = |p: Prediction| Intermediates {
            features: vec![],
            embedding: tensor([2, 1], 0, &device),
            logits: p,
            dist_logits: None,
            aux_logits: None,
            box_deltas: Some(Tensor::zeros([2, 5, 4], &device)),
        };
        let v: f32 = d
            .loss(
                &out(Prediction::Anchors(s.clone())),
                &out(Prediction::Anchors(t.clone())),
                &GroundTruth::default(),
            )
            .unwrap()
            .terms[0]
            .1
            .clone()
            .into_scalar();
        let l = spec.logits.unwrap();
        let temperature = l.temperature.get();
        let rows = |x: Tensor<3>| x.reshape([10, 3]);
        let want: f32 = l
            .distance
            .apply_sigmoid(rows(s.clone()), rows(t.clone()), temperature)
            .unwrap()
            .into_scalar();
        let softmax: f32 = l
            .distance
            .apply(rows(s), rows(t), temperature)
            .unwrap()
            .into_scalar();
        assert!(v > 0.0 && (v - want).abs() < 1e-6 * v, "{v} vs {want}");
        assert!((v - softmax).abs() > 1e-3, "{v} vs softmax {softmax}");
    }
}
