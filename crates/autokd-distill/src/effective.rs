//! Candidates that compute the same loss: the search must not pay twice for one.
//!
//! Many points of the space are the same objective. Exactly, by construction:
//! - the temperature of a feature term matters only where a softmax occurs (KL, a softmax
//!   relation, summed attention), and the logits temperature only for KL and DIST;
//! - a term of weight 0 is no term.
//!
//! And by the shapes the transforms produce, which depend on the tap's size: spatial attention
//! leaves one channel, so channel correlation of it is a constant (no gradient) and its channel
//! softmax / channel L2 normalization are the sample-wise ones; channel attention leaves a 1×1
//! map, so local patches repeat each sample and a spatial pyramid repeats each value; cosine and
//! Pearson ignore a per-row scale, so an L2-normalizing relation changes nothing under them;
//! and some pairs differ by a constant factor that a weight ratio of the grid absorbs.
//!
//! Rather than trust a list of such identities, [`Effective`] measures them: every feature term
//! of the space (weight 1) is applied, in f64, to two fixed pseudo-random student/teacher pairs at
//! the search's real (aligned) tap size (many channels, and few), and the gradient it sends into
//! the student's feature is its fingerprint. Two terms whose gradients are positive multiples of
//! one another are the same objective up to that factor and an additive constant (which training
//! never sees), so `(term, w)` and `(term', w')` coincide when their directions agree and
//! `w·‖g‖ = w'·‖g'‖`; a term with no gradient (norm below 10⁻⁹; a softmax over one value gives
//! exactly 0, an ε-regularized normalization of one value about 10⁻¹²) is no term at all.
//! Directions and effective weights are compared with a tolerance of 10⁻⁵: in f64 the float noise
//! is about 10⁻¹³, and some distinct terms come within 10⁻³ of each other (channel softmax with
//! and without a spatial pyramid on a 2×2 map under Pearson). Each candidate is mapped to the
//! smallest choice vector with the same objective, its representative; the search deduplicates on
//! representatives.

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::DType;

use crate::distiller::term_value;
use crate::error::{DistillError, Result};
use crate::space::SearchSpace;
use crate::spec::FeatureTerm;
use crate::transform::{GlobalTransform, MaskGenerator, MaskRng};

/// Samples in the fingerprint batch.
const BATCH: usize = 4;
/// Channels of the fingerprint maps at most (the identities depend on one channel or several,
/// not on how many).
const MAX_CHANNELS: usize = 16;
/// Gradient norm below which a term is taken to send no gradient.
const ZERO_NORM: f64 = 1e-9;
/// Distance between unit gradient directions under which two terms are the same.
const SAME_DIRECTION: f64 = 1e-5;
/// Relative difference of effective weights under which they are equal.
const SAME_WEIGHT: f64 = 1e-5;

/// The levels whose equivalences this module measures, by name in the table of levels
/// ([`crate::LEVELS`]): six of the feature term, three of the prediction term. A new level of
/// the table needs its rule here (how its options change the gradient), else [`Effective::new`]
/// refuses the space, naming the level.
const KNOWN: [&str; 9] = [
    "global",
    "intra",
    "relation",
    "distance",
    "temperature",
    "feature_weight",
    "logits_distance",
    "logits_temperature",
    "logits_weight",
];

/// The effective objective of every candidate of a space at one tap size.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Representative feature choices `(global, intra, relation, distance, T, weight)`, per
    /// feature choices.
    feature: HashMap<Vec<usize>, Vec<usize>>,
    /// Representative logits choices `(distance, T, weight)`, per logits choices.
    logits: HashMap<Vec<usize>, Vec<usize>>,
    feature_distinct: usize,
    logits_distinct: usize,
    /// Position in the choice vector of each level of [`KNOWN`].
    positions: [usize; 9],
    /// Length of a choice vector.
    levels: usize,
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    MaskRng::new(seed)
        .uniform(n)
        .into_iter()
        .map(|u| (2.0 * u - 1.0) as f32)
        .collect()
}

/// One fingerprint input: a student/teacher pair of pseudo-random maps with spikes, and a
/// generation block with fixed weights.
struct Probe {
    s: TensorData,
    t: Tensor<4>,
    generator: MaskGenerator,
    device: Device,
    numel: usize,
}

impl Probe {
    fn new(shape: [usize; 4], seed: u64, device: &Device) -> Self {
        let numel = shape.iter().product();
        // Uniform in ±1, one value in ten a spike of ±5: rows with a dominant entry.
        let spiky = |seed| -> Vec<f32> {
            let u = MaskRng::new(seed).uniform(2 * numel);
            (0..numel)
                .map(|k| {
                    let x = (2.0 * u[k] - 1.0) as f32;
                    if u[numel + k] < 0.1 {
                        5.0 * x.signum()
                    } else {
                        x
                    }
                })
                .collect()
        };
        Self {
            s: TensorData::new(spiky(10 * seed + 1), shape),
            t: Tensor::<4>::from_data(TensorData::new(spiky(10 * seed + 2), shape), device)
                .cast(DType::F64),
            generator: MaskGenerator::deterministic(shape[1], 10 * seed + 3, DType::F64, device),
            device: device.clone(),
            numel,
        }
    }

    /// The gradient the term (weight 1) sends into the student map; `None` when none flows.
    fn gradient(&self, term: &FeatureTerm) -> Result<Option<Vec<f64>>> {
        let s = Tensor::<4>::from_data(self.s.clone(), &self.device)
            .cast(DType::F64)
            .require_grad();
        self.generator.rng().reseed(4);
        let mask = matches!(term.global, GlobalTransform::Mask { .. });
        let v = term_value(
            term,
            s.clone(),
            self.t.clone(),
            mask.then_some(&self.generator),
        )?;
        let grads = v.backward();
        Ok(s.grad(&grads)
            .and_then(|x| x.into_data().convert::<f64>().try_to_vec::<f64>().ok()))
    }
}

impl Effective {
    /// Measures the space at aligned tap size `[C, H, W]` (the teacher's channels, the smaller
    /// spatial size of the two taps) on `device`.
    pub fn new(space: &SearchSpace, [c, h, w]: [usize; 3], device: &Device) -> Result<Self> {
        let levels = space.levels();
        if let Some(l) = levels.iter().find(|l| !KNOWN.contains(&l.name)) {
            return Err(DistillError::Spec(format!(
                "effective space: level `{}` has no rule in effective.rs",
                l.name
            )));
        }
        let mut positions = [0usize; 9];
        for (slot, name) in positions.iter_mut().zip(KNOWN) {
            *slot = levels.iter().position(|l| l.name == name).ok_or_else(|| {
                DistillError::Spec(format!("effective space: the space has no level `{name}`"))
            })?;
        }
        // Two probes: many channels and few (unit rows of few channels have large components,
        // which piecewise distances such as smooth L1 tell apart from their quadratic part).
        let ad = device.clone().autodiff();
        let probes: Vec<Probe> = [(BATCH, c.clamp(1, MAX_CHANNELS), 1), (3, c.clamp(1, 3), 2)]
            .into_iter()
            .map(|(b, c, seed)| Probe::new([b, c, h.max(1), w.max(1)], seed, &ad))
            .collect();
        let n: usize = probes.iter().map(|p| p.numel).sum();

        // One gradient per (global, intra, relation, distance, temperature); the temperature
        // is measured only where it is used.
        let mut grads: Vec<(Vec<usize>, Option<Vec<f64>>)> = Vec::new();
        for g in 0..space.global.len() {
            for i in 0..space.intra.len() {
                for r in 0..space.relation.len() {
                    for d in 0..space.distance.len() {
                        let mut first: Option<Option<Vec<f64>>> = None;
                        for temp in 0..space.temperature.len() {
                            let term = FeatureTerm {
                                weight: crate::Real(1.0),
                                ..space.feature_term(&[g, i, r, d, temp, 0])?
                            };
                            let grad = match (&first, term.uses_temperature()) {
                                (Some(f), false) => f.clone(),
                                _ => {
                                    let mut all = Vec::with_capacity(n);
                                    for probe in &probes {
                                        match probe.gradient(&term)? {
                                            Some(g) => all.extend(g),
                                            None => {
                                                all.extend(std::iter::repeat_n(0.0, probe.numel))
                                            }
                                        }
                                    }
                                    Some(all)
                                }
                            };
                            first.get_or_insert_with(|| grad.clone());
                            grads.push((vec![g, i, r, d, temp], grad));
                        }
                    }
                }
            }
        }

        // Unit directions, visited in the order of their projection on a fixed unit vector: two
        // directions within the tolerance have projections within it, so each joins the first
        // class representative found among the last few. A class is its representative's index.
        let probe = {
            let p: Vec<f64> = pseudo_random(n, 5).into_iter().map(f64::from).collect();
            let norm = p.iter().map(|x| x * x).sum::<f64>().sqrt();
            p.into_iter().map(|x| x / norm).collect::<Vec<f64>>()
        };
        let mut units: Vec<(usize, Vec<f64>, f64, f64)> = Vec::new(); // (index, unit, proj, norm)
        for (k, (_, grad)) in grads.iter().enumerate() {
            let Some(grad) = grad else { continue };
            let norm = grad.iter().map(|x| x * x).sum::<f64>().sqrt();
            if !norm.is_finite() || norm < ZERO_NORM {
                continue;
            }
            let unit: Vec<f64> = grad.iter().map(|x| x / norm).collect();
            let proj = unit.iter().zip(&probe).map(|(a, b)| a * b).sum();
            units.push((k, unit, proj, norm));
        }
        units.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
        // Per gradient: its class and norm (`None`: no gradient).
        let mut class_of: Vec<Option<(usize, f64)>> = vec![None; grads.len()];
        let mut reps: Vec<(usize, f64)> = Vec::new(); // (position in units, projection)
        for (pos, (k, unit, proj, norm)) in units.iter().enumerate() {
            let found = reps
                .iter()
                .enumerate()
                .rev()
                .take_while(|(_, (_, p))| proj - p <= SAME_DIRECTION)
                .find(|(_, (q, _))| {
                    let other = &units[*q].1;
                    unit.iter()
                        .zip(other)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f64>()
                        .sqrt()
                        <= SAME_DIRECTION
                })
                .map(|(class, _)| class);
            let class = found.unwrap_or_else(|| {
                reps.push((pos, *proj));
                reps.len() - 1
            });
            class_of[*k] = Some((class, *norm));
        }

        // Feature choices → representative: the smallest choices with the same class (`None`:
        // no term) and the same effective weight `w·‖g‖`.
        let mut effects: Vec<(Vec<usize>, Option<usize>, f64)> = Vec::new();
        for ((choices, _), class) in grads.iter().zip(&class_of) {
            for (wi, weight) in space.feature_weight.iter().enumerate() {
                let (class, weight) = match class {
                    Some((class, norm)) if weight.get() > 0.0 => {
                        (Some(*class), weight.get() * norm)
                    }
                    _ => (None, 0.0),
                };
                let mut full = choices.clone();
                full.push(wi);
                effects.push((full, class, weight));
            }
        }
        effects.sort_by(|a, b| a.0.cmp(&b.0));
        // Per class, the effective weights seen and their representatives.
        let mut representatives: HashMap<Option<usize>, Vec<(f64, Vec<usize>)>> = HashMap::new();
        let mut feature = HashMap::new();
        for (choices, class, weight) in effects {
            let same = |x: f64| (x - weight).abs() <= SAME_WEIGHT * x.abs().max(weight.abs());
            let seen = representatives.entry(class).or_default();
            let rep = match seen.iter().find(|(x, _)| same(*x)) {
                Some((_, rep)) => rep.clone(),
                None => {
                    seen.push((weight, choices.clone()));
                    choices.clone()
                }
            };
            feature.insert(choices, rep);
        }
        let feature_distinct = representatives.values().map(Vec::len).sum();

        // Logits: the temperature only for KL and DIST; a zero weight is no term.
        let mut logits = HashMap::new();
        let mut logits_reps: Vec<Vec<usize>> = Vec::new();
        for d in 0..space.logits_distance.len() {
            for temp in 0..space.logits_temperature.len() {
                for wi in 0..space.logits_weight.len() {
                    let rep = if space.logits_weight[wi].get() == 0.0 {
                        let zero = space
                            .logits_weight
                            .iter()
                            .position(|w| w.get() == 0.0)
                            .unwrap_or(wi);
                        vec![0, 0, zero]
                    } else if space.logits_distance[d].uses_temperature() {
                        vec![d, temp, wi]
                    } else {
                        vec![d, 0, wi]
                    };
                    if !logits_reps.contains(&rep) {
                        logits_reps.push(rep.clone());
                    }
                    logits.insert(vec![d, temp, wi], rep);
                }
            }
        }
        Ok(Self {
            feature,
            logits,
            feature_distinct,
            logits_distinct: logits_reps.len(),
            positions,
            levels: levels.len(),
        })
    }

    /// The representative of `choices`: the smallest choice vector with the same objective (the
    /// choices themselves when they fit no level).
    pub fn canonical(&self, choices: &[usize]) -> Vec<usize> {
        if choices.len() != self.levels {
            return choices.to_vec();
        }
        let known: Vec<usize> = self.positions.iter().map(|&p| choices[p]).collect();
        let (f, l) = known.split_at(6);
        match (self.feature.get(f), self.logits.get(l)) {
            (Some(f), Some(l)) => {
                let mut out = choices.to_vec();
                for (&p, &c) in self.positions.iter().zip(f.iter().chain(l)) {
                    out[p] = c;
                }
                out
            }
            _ => choices.to_vec(),
        }
    }

    /// Distinct objectives in the space.
    pub fn distinct(&self) -> u128 {
        self.feature_distinct as u128 * self.logits_distinct as u128
    }

    /// Distinct feature terms (counting "no feature term" once, if it occurs) and distinct
    /// logits terms.
    pub fn distinct_parts(&self) -> (usize, usize) {
        (self.feature_distinct, self.logits_distinct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Distance;
    use crate::testing::tensor;
    use crate::transform::{IntraSpatial, Relation};

    fn index<T: PartialEq>(v: &[T], x: T) -> usize {
        v.iter().position(|y| *y == x).unwrap()
    }

    /// The gradient a feature term (weight included) sends into the student map, on inputs
    /// other than the fingerprint's (5 samples, other values), through a fresh generator.
    fn gradient(term: &FeatureTerm, shape: [usize; 4]) -> Vec<f64> {
        let ad = Device::flex().autodiff();
        let s = tensor(shape, 21, &ad).require_grad();
        let t = tensor(shape, 22, &ad);
        let generator = MaskGenerator::deterministic(shape[1], 9, DType::F32, &ad);
        let mask = matches!(term.global, GlobalTransform::Mask { .. });
        let v = term_value(term, s.clone(), t, mask.then_some(&generator))
            .unwrap()
            .mul_scalar(term.weight.get());
        let g = v.backward();
        s.grad(&g)
            .map(|x| {
                x.into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f64::from)
                    .collect()
            })
            .unwrap_or_else(|| vec![0.0; shape.iter().product()])
    }

    /// Equal gradients, up to float noise; two gradients both under `floor` are both no gradient
    /// (rows of two values under Pearson, say, are ±1 whatever they hold).
    fn close(a: &[f64], b: &[f64], floor: f64) -> bool {
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        n(&d) <= 3e-4 * n(a).max(n(b)) || n(a).max(n(b)) < floor
    }

    /// Issue 12 item 6. The default space at the digits search's tap size (resnet8's and
    /// resnet20's last stage: 64 channels, 2×2) and at a CIFAR one (8×8): the identities that
    /// hold by reading the transforms are found, every merged pair checked on other inputs
    /// computes the same gradient, and the counts are pinned.
    #[test]
    fn equivalent_candidates_share_a_representative() {
        let space = SearchSpace::default();
        let device = Device::flex();
        for (shape, want) in [([64, 2, 2], 153_216u128), ([64, 8, 8], 223_020u128)] {
            let eff = Effective::new(&space, shape, &device).unwrap();
            let [_, h, w] = shape;
            let g = |x| index(&space.global, x);
            let i = |x| index(&space.intra, x);
            let r = |x| index(&space.relation, x);
            let d = |x| index(&space.distance, x);
            let (sa, ca) = (
                g(GlobalTransform::SpatialAttention),
                g(GlobalTransform::ChannelAttention),
            );
            let none = i(IntraSpatial::None);
            let canon =
                |f: [usize; 6]| eff.canonical(&[f[0], f[1], f[2], f[3], f[4], f[5], 0, 0, 0]);
            // Temperature without a softmax: one candidate.
            let l2 = d(Distance::L2);
            assert_eq!(canon([0, none, 0, l2, 0, 1]), canon([0, none, 0, l2, 3, 1]));
            // KL uses it.
            let kl = d(Distance::Kl);
            assert_ne!(canon([0, none, 0, kl, 0, 1]), canon([0, none, 0, kl, 3, 1]));
            // Channel correlation of spatial attention is a constant: every weight and distance
            // is the same (no) feature term.
            let cc = r(Relation::ChannelCorrelation);
            assert_eq!(
                canon([sa, none, cc, l2, 0, 0]),
                canon([sa, none, cc, kl, 2, 3])
            );
            // Under spatial attention, channel softmax is sample softmax.
            let (ss, cs) = (r(Relation::SampleSoftmax), r(Relation::ChannelSoftmax));
            assert_eq!(
                canon([sa, none, cs, kl, 1, 2]),
                canon([sa, none, ss, kl, 1, 2])
            );
            // Cosine ignores the per-sample L2 normalization.
            let cos = d(Distance::Cosine);
            let (rn, sn) = (r(Relation::None), r(Relation::SampleL2Norm));
            assert_eq!(
                canon([0, none, sn, cos, 0, 1]),
                canon([0, none, rn, cos, 0, 1])
            );
            // Local patches of channel attention repeat each sample.
            let local2 = i(IntraSpatial::Local { k: 2 });
            assert_eq!(
                canon([ca, local2, rn, l2, 0, 1]),
                canon([ca, none, rn, l2, 0, 1])
            );
            // Different weights of a real term differ.
            assert_ne!(
                canon([0, none, rn, l2, 0, 1]),
                canon([0, none, rn, l2, 0, 2])
            );

            // Every merge checked on other inputs (5 samples, other values, another generator):
            // same gradient. Every candidate is checked against its representative.
            let term = |f: &[usize]| space.feature_term(f).unwrap();
            let checks = [[5, 8, h, w], [5, 3, h, w]];
            let mut merged = 0;
            let mut keys: Vec<&Vec<usize>> = eff.feature.keys().collect();
            keys.sort();
            for (n, f) in keys.into_iter().enumerate() {
                let rep = &eff.feature[f];
                // A deterministic sample of a tenth of the merged candidates keeps this quick.
                if rep == f || n % 10 != 0 {
                    continue;
                }
                merged += 1;
                for check in checks {
                    let (a, b) = (gradient(&term(f), check), gradient(&term(rep), check));
                    let nn = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                    assert!(
                        close(
                            &a,
                            &b,
                            1e-6 * term(f).weight.get().max(term(rep).weight.get())
                        ),
                        "{f:?} and its representative {rep:?} differ at {check:?}: norms {} {}",
                        nn(&a),
                        nn(&b)
                    );
                }
            }
            assert!(merged > 100, "{merged}");
            // By hand, the temperature alone: of the 840 (global, intra, relation, distance)
            // combinations, 400 use no softmax (4 globals × 4 intra × 5 relations × 5
            // distances), so at most (400 + 440·4)·4 = 8,640 feature terms; logits 2·4·4 + 4 = 36.
            let (f, l) = eff.distinct_parts();
            assert_eq!(l, 36);
            assert!(f < 8640, "{f}");
            eprintln!(
                "{shape:?}: {} distinct objectives of {} ({f} feature terms × {l} logits terms)",
                eff.distinct(),
                space.size()
            );
            // Measured here (f64 fingerprints: float noise is far below the tolerances).
            assert_eq!(eff.distinct(), want, "{shape:?}");
        }
    }
}
