//! The distances of the search space, between student rows `p` and teacher rows `q`
//! (`[R, D]`: `R` rows of `D` values each). Each is computed per row and averaged over rows.
//!
//! Definitions follow the supplementary material (§0.1.2): the L2 distance is the root of the
//! summed squares `√Σ(Pᵢ−Qᵢ)²` (a norm, not a mean), cosine `1 − cos(P, Q)`, Pearson
//! `1 − corr(P, Q)`, KL `Σ Pᵢ log(Pᵢ/Qᵢ)` with the teacher as `P`. L1 and smooth-L1 (β = 1) are
//! the corresponding norms of the row difference (summed over the row, like L2), so all three
//! "norm" distances scale alike. KL is scaled by `T²` as in Eq. 2 and Eq. 4; rows that are not
//! yet distributions are turned into `softmax(x / T)` first (ours, ARCHITECTURE §4).
//!
//! Two more distances are outside the paper's space and serve the published baselines, whose
//! reference code reduces squared differences in its own ways: MSE, the mean over every value
//! (`F.mse_loss`; AT, SP and FitNet), and L2², the per-row sum of squares averaged over rows
//! (ICKD's `Σ(G_s − G_t)² / (C·B)` over `B·C` rows).

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax, sigmoid, softmax};
use serde::{Deserialize, Serialize};

use crate::error::{Result, same_shape};

/// Keeps `√·` differentiable where student and teacher agree exactly.
const SQRT_EPS: f64 = 1e-12;
/// Added to squared norms before the root, so that zero rows (common after a ReLU) have a finite
/// gradient and normalize to zero.
const NORM_EPS: f64 = 1e-12;

/// A feature distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// `√Σ(p−q)²` per row.
    L2,
    /// `Σ|p−q|` per row.
    L1,
    /// `Σ huber₁(p−q)` per row.
    SmoothL1,
    /// `1 − cos(p, q)` per row.
    Cosine,
    /// `1 − corr(p, q)` per row.
    Pearson,
    /// `T² · Σ q log(q/p)` per row, on distributions.
    Kl,
    /// `mean (p−q)²` over every value (PyTorch's `F.mse_loss`); a published baseline's.
    Mse,
    /// `Σ(p−q)²` per row (the square of L2); a published baseline's.
    SquaredL2,
}

impl Distance {
    /// Every distance.
    pub const ALL: [Distance; 6] = [
        Distance::L2,
        Distance::L1,
        Distance::SmoothL1,
        Distance::Cosine,
        Distance::Pearson,
        Distance::Kl,
    ];

    /// The distances only the published baselines use (not in the default search space; a
    /// space's `distance` list may still name them).
    pub const PUBLISHED: [Distance; 2] = [Distance::Mse, Distance::SquaredL2];

    /// Short name used in formulas.
    pub fn symbol(self) -> &'static str {
        match self {
            Distance::L2 => "L2",
            Distance::L1 => "L1",
            Distance::SmoothL1 => "SmoothL1",
            Distance::Cosine => "Cos",
            Distance::Pearson => "Pearson",
            Distance::Kl => "KL",
            Distance::Mse => "MSE",
            Distance::SquaredL2 => "L2²",
        }
    }

    /// Whether the temperature changes this distance (only KL applies a softmax).
    pub fn uses_temperature(self) -> bool {
        self == Distance::Kl
    }

    /// The distance between student rows `s` and teacher rows `t`, averaged over rows.
    ///
    /// `distributions` says the rows are already `softmax(x/T)` (from a softmax relation); KL
    /// then uses them as they are, and otherwise applies `softmax(x/T)` first.
    ///
    /// # Shapes
    /// - `s`, `t`: `[R, D]` → `[1]`
    pub fn apply(
        self,
        s: Tensor<2>,
        t: Tensor<2>,
        temperature: f64,
        distributions: bool,
    ) -> Result<Tensor<1>> {
        same_shape("distance", &s, &t)?;
        Ok(match self {
            Distance::L2 => l2(s, t),
            Distance::L1 => l1(s, t),
            Distance::SmoothL1 => smooth_l1(s, t),
            Distance::Cosine => cosine(s, t),
            Distance::Pearson => pearson(s, t),
            Distance::Mse => (s - t).powi_scalar(2).mean(),
            Distance::SquaredL2 => (s - t).powi_scalar(2).sum_dim(1).mean(),
            Distance::Kl => {
                if distributions {
                    kl_probs(s, t).mul_scalar(temperature * temperature)
                } else {
                    kl_logits(s, t, temperature)
                }
            }
        })
    }
}

/// `mean_r √(Σᵢ (s−t)² + ε)`.
pub fn l2(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    (s - t)
        .powi_scalar(2)
        .sum_dim(1)
        .add_scalar(SQRT_EPS)
        .sqrt()
        .mean()
}

/// `mean_r Σᵢ |s−t|`.
pub fn l1(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    (s - t).abs().sum_dim(1).mean()
}

/// `mean_r Σᵢ huber(s−t)` with `huber(d) = d²/2` for `|d| < 1`, `|d| − 1/2` otherwise.
pub fn smooth_l1(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    let d = (s - t).abs();
    let quadratic = d.clone().clamp_max(1.0);
    // huber(d) = q·(d − q/2) with q = min(d, 1): d²/2 below 1, d − 1/2 above.
    let h = quadratic.clone() * (d - quadratic.div_scalar(2.0));
    h.sum_dim(1).mean()
}

/// `mean_r (1 − ŝ·t̂)` with `x̂ = x / √(‖x‖² + ε)`: PyTorch's `1 − F.cosine_similarity(s, t)`,
/// which scales each row by `1 / max(‖x‖, 10⁻⁸)` (the same for rows of norm ≫ 10⁻⁶). A zero row
/// has cosine similarity 0 with a non-zero one, so their distance is 1 (no agreement), as in
/// PyTorch. Two zero rows are identical and their distance is 0 (PyTorch gives 1): the term
/// `(1 − ‖ŝ‖²)(1 − ‖t̂‖²)`, 1 for two zero rows and about 10⁻¹²/‖x‖² otherwise, is subtracted.
pub fn cosine(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    let (su, tu) = (unit_rows(s), unit_rows(t));
    let both_zero = (su.clone().powi_scalar(2).sum_dim(1).neg().add_scalar(1.0))
        * (tu.clone().powi_scalar(2).sum_dim(1).neg().add_scalar(1.0)); // [R, 1]
    ((su * tu).sum_dim(1).neg().add_scalar(1.0) - both_zero).mean()
}

/// Rows scaled to unit L2 norm, `x / √(‖x‖² + ε)`.
pub fn unit_rows(x: Tensor<2>) -> Tensor<2> {
    let n = x
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .add_scalar(NORM_EPS)
        .sqrt(); // [R, 1]
    x / n
}

/// `mean_r (1 − corr(s, t))`: cosine of the row-centred vectors, as DIST's `pearson_correlation`
/// (`cosine_similarity(a − mean(a), b − mean(b))`): a constant row has correlation 0 with a
/// non-constant one, so their distance is 1; two constant rows are at distance 0 (see
/// [`cosine`]).
pub fn pearson(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    let sc = s.clone() - s.mean_dim(1);
    let tc = t.clone() - t.mean_dim(1);
    cosine(sc, tc)
}

/// `mean_r Σᵢ tᵢ (log tᵢ − log sᵢ)` on rows that are distributions (teacher `t` is `P`).
pub fn kl_probs(s: Tensor<2>, t: Tensor<2>) -> Tensor<1> {
    let tiny = 1e-12;
    let log_t = t.clone().clamp_min(tiny).log();
    let log_s = s.clamp_min(tiny).log();
    (t * (log_t - log_s)).sum_dim(1).mean()
}

/// Hinton's KD term on rows of scores: `T² · mean_r KL(softmax(t/T) ‖ softmax(s/T))`.
pub fn kl_logits(s: Tensor<2>, t: Tensor<2>, temperature: f64) -> Tensor<1> {
    let log_p_s = log_softmax(s.div_scalar(temperature), 1);
    let log_p_t = log_softmax(t.clone().div_scalar(temperature), 1);
    let p_t = softmax(t.div_scalar(temperature), 1);
    (p_t * (log_p_t - log_p_s))
        .sum_dim(1)
        .mean()
        .mul_scalar(temperature * temperature)
}

/// `T² · Σ_k KL(Bernoulli(σ(t_k/T)) ‖ Bernoulli(σ(s_k/T)))`, summed over the classes of a row
/// and averaged over the rows: Hinton's KD for classes that are independent sigmoids (a dense
/// detector's focal-loss head). Up to the teacher's entropy, which has no gradient, it is the
/// binary cross-entropy against the teacher's soft probabilities.
///
/// # Shapes
/// - `s`, `t`: `[R, K]` → `[1]`
pub fn binary_kl_logits(s: Tensor<2>, t: Tensor<2>, temperature: f64) -> Tensor<1> {
    let (s, t) = (s.div_scalar(temperature), t.div_scalar(temperature));
    let p_t = sigmoid(t.clone());
    let (log_p_t, log_q_t) = (log_sigmoid(t.clone()), log_sigmoid(t.neg()));
    let (log_p_s, log_q_s) = (log_sigmoid(s.clone()), log_sigmoid(s.neg()));
    let q_t = p_t.clone().neg().add_scalar(1.0);
    (p_t * (log_p_t - log_p_s) + q_t * (log_q_t - log_q_s))
        .sum_dim(1)
        .mean()
        .mul_scalar(temperature * temperature)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{f64_rows, grad_check, rows};

    /// Plain f64 references of each distance, per row then averaged.
    fn reference(d: Distance, s: &[Vec<f64>], t: &[Vec<f64>], temp: f64) -> f64 {
        let per_row = |p: &Vec<f64>, q: &Vec<f64>| -> f64 {
            let n = p.len() as f64;
            match d {
                Distance::L2 => p
                    .iter()
                    .zip(q)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt(),
                Distance::L1 => p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum(),
                Distance::SmoothL1 => p
                    .iter()
                    .zip(q)
                    .map(|(a, b)| {
                        let x = (a - b).abs();
                        if x < 1.0 { 0.5 * x * x } else { x - 0.5 }
                    })
                    .sum(),
                Distance::Mse => p.iter().zip(q).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n,
                Distance::SquaredL2 => p.iter().zip(q).map(|(a, b)| (a - b).powi(2)).sum(),
                Distance::Cosine => {
                    let dot: f64 = p.iter().zip(q).map(|(a, b)| a * b).sum();
                    let np = p.iter().map(|a| a * a).sum::<f64>().sqrt();
                    let nq = q.iter().map(|a| a * a).sum::<f64>().sqrt();
                    1.0 - dot / (np * nq)
                }
                Distance::Pearson => {
                    let mp = p.iter().sum::<f64>() / n;
                    let mq = q.iter().sum::<f64>() / n;
                    let cov: f64 = p.iter().zip(q).map(|(a, b)| (a - mp) * (b - mq)).sum();
                    let vp = p.iter().map(|a| (a - mp).powi(2)).sum::<f64>().sqrt();
                    let vq = q.iter().map(|b| (b - mq).powi(2)).sum::<f64>().sqrt();
                    1.0 - cov / (vp * vq)
                }
                Distance::Kl => {
                    let soft = |v: &Vec<f64>| {
                        let m = v.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = v.iter().map(|x| ((x - m) / temp).exp()).collect();
                        let z: f64 = e.iter().sum();
                        e.into_iter().map(|x| x / z).collect::<Vec<_>>()
                    };
                    let (ps, pt) = (soft(p), soft(q));
                    temp * temp
                        * pt.iter()
                            .zip(&ps)
                            .map(|(a, b)| a * (a / b).ln())
                            .sum::<f64>()
                }
            }
        };
        s.iter().zip(t).map(|(p, q)| per_row(p, q)).sum::<f64>() / s.len() as f64
    }

    #[test]
    fn each_distance_matches_its_f64_reference() {
        let device = Device::flex();
        let (s, t) = (f64_rows(3, 7, 1), f64_rows(3, 7, 2));
        for d in Distance::ALL.into_iter().chain(Distance::PUBLISHED) {
            for temp in [1.0, 4.0] {
                let got: f32 = d
                    .apply(rows(&s, &device), rows(&t, &device), temp, false)
                    .unwrap()
                    .into_scalar();
                let want = reference(d, &s, &t, temp);
                assert!(
                    (f64::from(got) - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{d:?} T={temp}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn zero_when_equal_and_shape_errors() {
        let device = Device::flex();
        let s = f64_rows(4, 5, 3);
        for d in Distance::ALL.into_iter().chain(Distance::PUBLISHED) {
            let v: f32 = d
                .apply(rows(&s, &device), rows(&s, &device), 4.0, false)
                .unwrap()
                .into_scalar();
            assert!(v.abs() < 1e-5, "{d:?}: {v}");
        }
        let err = Distance::L2
            .apply(
                rows(&s, &device),
                rows(&f64_rows(4, 6, 1), &device),
                1.0,
                false,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "distance: student shape [4, 5] and teacher shape [4, 6] differ"
        );
    }

    #[test]
    fn kl_on_distributions_is_scaled_by_t_squared() {
        let device = Device::flex();
        // By hand: p = (0.5, 0.5) student, q = (0.25, 0.75) teacher.
        // KL(q‖p) = 0.25 ln(0.5) + 0.75 ln(1.5) = 0.130812; ×T² with T = 4 → 2.092992.
        let s = Tensor::<1>::from_floats([0.5, 0.5], &device).reshape([1, 2]);
        let t = Tensor::<1>::from_floats([0.25, 0.75], &device).reshape([1, 2]);
        let v: f32 = Distance::Kl.apply(s, t, 4.0, true).unwrap().into_scalar();
        assert!((v - 2.092_992).abs() < 1e-5, "{v}");
    }

    /// Eq. 5–8: on L2-normalized rows, √(2·D_cos) equals the L2 distance. (The paper's Eq. 8
    /// writes √(2·(1 − D_cos)), which holds with cosine *similarity* in place of D_cos.)
    #[test]
    fn normalized_l2_equals_cosine_identity() {
        let device = Device::flex();
        let (s, t) = (
            rows(&f64_rows(5, 9, 4), &device),
            rows(&f64_rows(5, 9, 5), &device),
        );
        let unit = |x: Tensor<2>| x.clone() / x.powi_scalar(2).sum_dim(1).sqrt();
        for r in 0..5 {
            let (sr, tr) = (
                unit(s.clone()).narrow(0, r, 1),
                unit(t.clone()).narrow(0, r, 1),
            );
            let d_l2: f32 = l2(sr.clone(), tr.clone()).into_scalar();
            let d_cos: f32 = cosine(sr, tr).into_scalar();
            assert!(
                (d_l2 - (2.0 * d_cos).sqrt()).abs() < 1e-5,
                "{d_l2} vs {}",
                (2.0 * d_cos).sqrt()
            );
        }
    }

    /// Issue 12 item 9: one degenerate row. PyTorch: `1 - F.cosine_similarity(zeros(1,2),
    /// tensor([[1.,0.]]))` is 1; DIST's `1 - pearson_correlation` of `[[1,1,1]]` and `[[1,2,3]]`
    /// is 1 (the centred constant row is zero). Two degenerate rows agree: 0 (PyTorch: 1).
    #[test]
    fn one_degenerate_row_means_no_agreement() {
        let device = Device::flex();
        let r = |v: Vec<f64>| rows(&[v], &device);
        let d = |dist: Distance, a: Vec<f64>, b: Vec<f64>| -> f32 {
            dist.apply(r(a), r(b), 1.0, false).unwrap().into_scalar()
        };
        for (a, b) in [
            (vec![0.0, 0.0], vec![1.0, 0.0]),
            (vec![1.0, 0.0], vec![0.0, 0.0]),
        ] {
            let v = d(Distance::Cosine, a, b);
            assert!((v - 1.0).abs() < 1e-6, "{v}");
        }
        for (a, b) in [
            (vec![1.0, 1.0, 1.0], vec![1.0, 2.0, 3.0]),
            (vec![1.0, 2.0, 3.0], vec![1.0, 1.0, 1.0]),
        ] {
            let v = d(Distance::Pearson, a, b);
            assert!((v - 1.0).abs() < 1e-6, "{v}");
        }
        let v = d(Distance::Cosine, vec![0.0, 0.0], vec![0.0, 0.0]);
        assert!(v.abs() < 1e-6, "{v}");
        let v = d(Distance::Pearson, vec![2.0, 2.0], vec![5.0, 5.0]);
        assert!(v.abs() < 1e-6, "{v}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        for d in Distance::ALL.into_iter().chain(Distance::PUBLISHED) {
            grad_check(&format!("{d:?}"), [3, 5], |s, t| {
                d.apply(s, t, 4.0, false).unwrap()
            });
        }
        grad_check("kl_probs", [2, 4], |s, t| {
            let (s, t) = (softmax(s, 1), softmax(t, 1));
            Distance::Kl.apply(s, t, 2.0, true).unwrap()
        });
    }
}
