//! The logits term: Hinton's KD (KL with temperature), DIST (Huang et al. 2022: Pearson
//! distance between class probabilities, inter-class per sample plus intra-class per class), and
//! L2 on the logits.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use crate::distance::{kl_logits, l2, pearson};
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
        }
    }
}
