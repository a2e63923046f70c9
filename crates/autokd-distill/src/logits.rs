//! The logits term: Hinton's KD (KL with temperature), DIST (Huang et al. 2022: Pearson
//! distance between class probabilities, inter-class per sample plus intra-class per class), and
//! L2 on the logits.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use serde::{Deserialize, Serialize};

use crate::distance::{binary_kl_logits, kl_logits, l2, pearson};
use crate::error::{Result, same_shape};

/// A logits distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogitsDistance {
    /// `T² · KL(softmax(t/T) ‖ softmax(s/T))`, averaged over the batch (Hinton et al.).
    Kl,
    /// DIST: `T² · (inter + intra)` with inter = mean over samples of `1 − corr` across classes,
    /// intra = mean over classes of `1 − corr` across the batch, on `softmax(·/T)` (β = γ = 1).
    Dist,
    /// `√Σ(s − t)²` per sample on the logits, averaged (temperature unused).
    L2,
}

impl LogitsDistance {
    /// Every logits distance.
    pub const ALL: [LogitsDistance; 3] =
        [LogitsDistance::Kl, LogitsDistance::Dist, LogitsDistance::L2];

    /// Name used in formulas.
    pub fn symbol(self) -> &'static str {
        match self {
            LogitsDistance::Kl => "KL",
            LogitsDistance::Dist => "DIST",
            LogitsDistance::L2 => "L2",
        }
    }

    /// Whether the temperature changes this distance.
    pub fn uses_temperature(self) -> bool {
        self != LogitsDistance::L2
    }

    /// The logits distance between student `s` and teacher `t`.
    ///
    /// # Shapes
    /// - `s`, `t`: `[B, K]` → `[1]`
    pub fn apply(self, s: Tensor<2>, t: Tensor<2>, temperature: f64) -> Result<Tensor<1>> {
        same_shape("logits distance", &s, &t)?;
        Ok(match self {
            LogitsDistance::Kl => kl_logits(s, t, temperature),
            LogitsDistance::Dist => {
                let ys = softmax(s.div_scalar(temperature), 1);
                let yt = softmax(t.div_scalar(temperature), 1);
                let inter = pearson(ys.clone(), yt.clone());
                let intra = pearson(ys.transpose(), yt.transpose());
                (inter + intra).mul_scalar(temperature * temperature)
            }
            LogitsDistance::L2 => l2(s, t),
        })
    }

    /// The distance for class scores that are independent sigmoids (a dense detector's
    /// anchors, `Prediction::Anchors`): KL becomes the sum over classes of the Bernoulli KL
    /// ([`binary_kl_logits`]), DIST correlates `σ(·/T)` instead of `softmax(·/T)` (inter: over
    /// the classes of each anchor; intra: over the anchors of each class), L2 is unchanged.
    ///
    /// # Shapes
    /// - `s`, `t`: `[R, K]` (a row per anchor) → `[1]`
    pub fn apply_sigmoid(self, s: Tensor<2>, t: Tensor<2>, temperature: f64) -> Result<Tensor<1>> {
        same_shape("logits distance", &s, &t)?;
        Ok(match self {
            LogitsDistance::Kl => binary_kl_logits(s, t, temperature),
            LogitsDistance::Dist => {
                let ys = sigmoid(s.div_scalar(temperature));
                let yt = sigmoid(t.div_scalar(temperature));
                let inter = pearson(ys.clone(), yt.clone());
                let intra = pearson(ys.transpose(), yt.transpose());
                (inter + intra).mul_scalar(temperature * temperature)
            }
            LogitsDistance::L2 => l2(s, t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{f64_rows, grad_check, rows};

    fn softmax64(v: &[f64], t: f64) -> Vec<f64> {
        let m = v.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = v.iter().map(|a| ((a - m) / t).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|a| a / z).collect()
    }

    fn corr(p: &[f64], q: &[f64]) -> f64 {
        let n = p.len() as f64;
        let (mp, mq) = (p.iter().sum::<f64>() / n, q.iter().sum::<f64>() / n);
        let cov: f64 = p.iter().zip(q).map(|(a, b)| (a - mp) * (b - mq)).sum();
        let sp = p.iter().map(|a| (a - mp).powi(2)).sum::<f64>().sqrt();
        let sq = q.iter().map(|b| (b - mq).powi(2)).sum::<f64>().sqrt();
        cov / (sp * sq)
    }

    #[test]
    fn dist_matches_its_f64_reference() {
        let device = Device::flex();
        let (s, t) = (f64_rows(4, 6, 1), f64_rows(4, 6, 2));
        let temp = 4.0;
        let (ps, pt): (Vec<_>, Vec<_>) = (
            s.iter().map(|r| softmax64(r, temp)).collect(),
            t.iter().map(|r| softmax64(r, temp)).collect(),
        );
        let inter = ps
            .iter()
            .zip(&pt)
            .map(|(a, b)| 1.0 - corr(a, b))
            .sum::<f64>()
            / 4.0;
        let col = |m: &Vec<Vec<f64>>, j: usize| m.iter().map(|r| r[j]).collect::<Vec<_>>();
        let intra = (0..6)
            .map(|j| 1.0 - corr(&col(&ps, j), &col(&pt, j)))
            .sum::<f64>()
            / 6.0;
        let want = temp * temp * (inter + intra);
        let got: f32 = LogitsDistance::Dist
            .apply(rows(&s, &device), rows(&t, &device), temp)
            .unwrap()
            .into_scalar();
        assert!(
            (f64::from(got) - want).abs() < 1e-4 * want.max(1.0),
            "{got} vs {want}"
        );
    }

    #[test]
    fn kd_by_hand() {
        // Student logits (0, 0), teacher (0, ln 3) at T = 1: p_t = (1/4, 3/4), p_s = (1/2, 1/2);
        // KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812.
        let device = Device::flex();
        let s = Tensor::<1>::from_floats([0.0, 0.0], &device).reshape([1, 2]);
        let t = Tensor::<1>::from_floats([0.0, 3f32.ln()], &device).reshape([1, 2]);
        let v: f32 = LogitsDistance::Kl.apply(s, t, 1.0).unwrap().into_scalar();
        assert!((v - 0.130_812).abs() < 1e-5, "{v}");
    }

    fn sigmoid64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// The sigmoid form against f64: KL as the sum over classes of Bernoulli KLs, averaged
    /// over rows, times T²; DIST on σ(·/T).
    #[test]
    fn sigmoid_forms_match_their_f64_references() {
        let device = Device::flex();
        let (s, t) = (f64_rows(5, 3, 3), f64_rows(5, 3, 4));
        let temp = 2.0;
        let bern = |p: f64, q: f64| p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        let kl = s
            .iter()
            .zip(&t)
            .map(|(rs, rt)| {
                rs.iter()
                    .zip(rt)
                    .map(|(a, b)| bern(sigmoid64(b / temp), sigmoid64(a / temp)))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 5.0
            * temp
            * temp;
        let sig = |m: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            m.iter()
                .map(|r| r.iter().map(|x| sigmoid64(x / temp)).collect())
                .collect()
        };
        let (ps, pt) = (sig(&s), sig(&t));
        let inter = ps
            .iter()
            .zip(&pt)
            .map(|(a, b)| 1.0 - corr(a, b))
            .sum::<f64>()
            / 5.0;
        let col = |m: &Vec<Vec<f64>>, j: usize| m.iter().map(|r| r[j]).collect::<Vec<_>>();
        let intra = (0..3)
            .map(|j| 1.0 - corr(&col(&ps, j), &col(&pt, j)))
            .sum::<f64>()
            / 3.0;
        let dist = temp * temp * (inter + intra);
        for (d, want) in [(LogitsDistance::Kl, kl), (LogitsDistance::Dist, dist)] {
            let got: f32 = d
                .apply_sigmoid(rows(&s, &device), rows(&t, &device), temp)
                .unwrap()
                .into_scalar();
            assert!(
                (f64::from(got) - want).abs() < 1e-4 * want.max(1.0),
                "{d:?}: {got} vs {want}"
            );
        }
        // By hand: one class, student 0 (σ = ½), teacher ln 3 (σ = ¾) at T = 1:
        // ¾ ln(3/2) + ¼ ln(1/2) = 0.130812 (the two-class softmax KD of `kd_by_hand`).
        let v: f32 = LogitsDistance::Kl
            .apply_sigmoid(
                Tensor::<1>::from_floats([0.0], &device).reshape([1, 1]),
                Tensor::<1>::from_floats([3f32.ln()], &device).reshape([1, 1]),
                1.0,
            )
            .unwrap()
            .into_scalar();
        assert!((v - 0.130_812).abs() < 1e-5, "{v}");
        // Finite at logits far in the tails (a focal head's background is near −5).
        let far = Tensor::<1>::from_floats([-60.0, 60.0], &device).reshape([1, 2]);
        let v: f32 = LogitsDistance::Kl
            .apply_sigmoid(far.clone(), far.neg(), 1.0)
            .unwrap()
            .into_scalar();
        assert!(v.is_finite() && (v - 120.0).abs() < 1e-2, "{v}");
    }

    #[test]
    fn zero_when_equal_and_gradients() {
        let device = Device::flex();
        let s = f64_rows(3, 5, 9);
        for d in LogitsDistance::ALL {
            let v: f32 = d
                .apply(rows(&s, &device), rows(&s, &device), 4.0)
                .unwrap()
                .into_scalar();
            assert!(v.abs() < 1e-5, "{d:?}: {v}");
            grad_check(&format!("{d:?}"), [3, 5], |s, t| {
                d.apply(s, t, 4.0).unwrap()
            });
            let v: f32 = d
                .apply_sigmoid(rows(&s, &device), rows(&s, &device), 4.0)
                .unwrap()
                .into_scalar();
            assert!(v.abs() < 1e-5, "{d:?} sigmoid: {v}");
            grad_check(&format!("{d:?} sigmoid"), [3, 5], |s, t| {
                d.apply_sigmoid(s, t, 4.0).unwrap()
            });
        }
    }
}
