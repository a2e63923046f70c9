//! Inter-spatial / relation transforms (supplementary §0.1.1, Eq. 1–4). Each turns a feature map
//! `[B, C, H, W]` into rows `[R, D]` that a [`Distance`](crate::Distance) compares.
//!
//! - sample-wise correlation (Eq. 1, SP): `G = Ã Ãᵀ / ‖Ã Ãᵀ‖₂` with `Ã ∈ R^{B×CHW}` → `[B, B]`.
//!   We implement the paper's normalization by the norm of the whole matrix (Frobenius); SP's
//!   code normalizes each row instead.
//! - sample-wise softmax (Eq. 2): `softmax(Ã / T)` over `CHW` → `[B, CHW]`, distributions.
//! - channel-wise correlation (Eq. 3, ICKD): per sample `G = F Fᵀ / ‖F Fᵀ‖₂` with `F ∈ R^{C×HW}`
//!   → `[B·C, C]`.
//! - channel-wise softmax (Eq. 4, CWD): `softmax(F / T)` over `HW` per channel → `[B·C, HW]`.
//! - sample-wise / channel-wise L2 normalization: `Ã / ‖Ã‖` per sample → `[B, CHW]`;
//!   `F / ‖F‖` per channel → `[B·C, HW]`.
//! - none: `[B, CHW]`.
//!
//! Three more, outside the paper's space, are the relations as the published code writes them,
//! for the named baselines: SP's similarity (`F.normalize(Ã Ãᵀ)`: each row of the `B × B` Gram
//! matrix scaled to unit norm), ICKD's inter-channel correlation (`F.normalize(F Fᵀ, dim=2)`:
//! each row of each sample's `C × C` Gram matrix scaled to unit norm) and PKD's normalization
//! (mmrazor's `PKDLoss.norm`: each channel's values over the batch and the positions, `[C,
//! B·H·W]`, less their mean, divided by their standard deviation (unbiased, as `torch.std`)
//! plus 10⁻⁶; half their MSE is `(n − 1)/n · (1 − r)` per channel, Pearson's r).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

/// Added to squared norms before the root (finite gradients at zero).
const NORM_EPS: f64 = 1e-12;

/// A relation transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The flattened feature per sample.
    None,
    /// Eq. 1: normalized `B × B` Gram matrix of the samples.
    SampleCorrelation,
    /// Eq. 2: softmax over each sample's `C·H·W` values with temperature.
    SampleSoftmax,
    /// Eq. 3: normalized `C × C` Gram matrix of the channels, per sample.
    ChannelCorrelation,
    /// Eq. 4: softmax over each channel's `H·W` values with temperature.
    ChannelSoftmax,
    /// Each sample's `C·H·W` vector scaled to unit L2 norm.
    SampleL2Norm,
    /// Each channel's `H·W` vector scaled to unit L2 norm.
    ChannelL2Norm,
    /// SP's code: the `B × B` Gram matrix of the samples, each row scaled to unit L2 norm.
    SampleCorrelationRowNorm,
    /// ICKD's code: each sample's `C × C` Gram matrix of the channels, each row scaled to unit
    /// L2 norm.
    ChannelCorrelationRowNorm,
    /// PKD's code: each channel over the batch and the positions, `[C, B·H·W]`, standardized
    /// (mean 0, divided by the unbiased standard deviation plus 10⁻⁶).
    ChannelStandardized,
}

impl Relation {
    /// Every relation.
    pub const ALL: [Relation; 7] = [
        Relation::None,
        Relation::SampleCorrelation,
        Relation::SampleSoftmax,
        Relation::ChannelCorrelation,
        Relation::ChannelSoftmax,
        Relation::SampleL2Norm,
        Relation::ChannelL2Norm,
    ];

    /// The relations only the published baselines use (not in the default search space; a
    /// space's `relation` list may still name them).
    pub const PUBLISHED: [Relation; 3] = [
        Relation::SampleCorrelationRowNorm,
        Relation::ChannelCorrelationRowNorm,
        Relation::ChannelStandardized,
    ];

    /// Name used in formulas.
    pub fn symbol(self) -> &'static str {
        match self {
            Relation::None => "",
            Relation::SampleCorrelation => "sample_corr",
            Relation::SampleSoftmax => "sample_softmax",
            Relation::ChannelCorrelation => "channel_corr",
            Relation::ChannelSoftmax => "channel_softmax",
            Relation::SampleL2Norm => "sample_l2norm",
            Relation::ChannelL2Norm => "channel_l2norm",
            Relation::SampleCorrelationRowNorm => "sample_corr_rownorm",
            Relation::ChannelCorrelationRowNorm => "channel_corr_rownorm",
            Relation::ChannelStandardized => "channel_standardized",
        }
    }

    /// Whether the output rows are probability distributions (a softmax with the temperature).
    pub fn is_distribution(self) -> bool {
        matches!(self, Relation::SampleSoftmax | Relation::ChannelSoftmax)
    }

    /// Whether the temperature changes this transform.
    pub fn uses_temperature(self) -> bool {
        self.is_distribution()
    }

    /// Applies the relation.
    ///
    /// # Shapes
    /// - `x`: `[B, C, H, W]` → rows `[R, D]` (see the module documentation)
    pub fn apply(self, x: Tensor<4>, temperature: f64) -> Tensor<2> {
        let [b, c, h, w] = x.dims();
        match self {
            Relation::None => x.reshape([b, c * h * w]),
            Relation::SampleCorrelation => {
                let a = x.reshape([b, c * h * w]); // [B, CHW]
                frobenius_normalized(a.clone().matmul(a.transpose())) // [B, B]
            }
            Relation::SampleSoftmax => {
                softmax(x.reshape([b, c * h * w]).div_scalar(temperature), 1)
            }
            Relation::ChannelCorrelation => {
                let f = x.reshape([b, c, h * w]); // [B, C, HW]
                let g = f.clone().matmul(f.swap_dims(1, 2)); // [B, C, C]
                let norm = g
                    .clone()
                    .powi_scalar(2)
                    .sum_dim(2)
                    .sum_dim(1)
                    .add_scalar(NORM_EPS)
                    .sqrt(); // [B, 1, 1]
                (g / norm).reshape([b * c, c])
            }
            Relation::ChannelSoftmax => {
                softmax(x.reshape([b * c, h * w]).div_scalar(temperature), 1)
            }
            Relation::SampleL2Norm => row_normalized(x.reshape([b, c * h * w])),
            Relation::ChannelL2Norm => row_normalized(x.reshape([b * c, h * w])),
            Relation::SampleCorrelationRowNorm => {
                let a = x.reshape([b, c * h * w]);
                row_normalized(a.clone().matmul(a.transpose())) // [B, B]
            }
            Relation::ChannelCorrelationRowNorm => {
                let f = x.reshape([b, c, h * w]);
                let g = f.clone().matmul(f.swap_dims(1, 2)); // [B, C, C]
                row_normalized(g.reshape([b * c, c]))
            }
            Relation::ChannelStandardized => {
                let n = b * h * w;
                let f = x.swap_dims(0, 1).reshape([c, n]); // [C, B·H·W]
                let centred = f.clone() - f.mean_dim(1);
                let var = centred
                    .clone()
                    .powi_scalar(2)
                    .sum_dim(1)
                    .div_scalar(n.saturating_sub(1).max(1) as f64);
                centred / var.sqrt().add_scalar(PKD_EPS)
            }
        }
    }
}

/// Added to PKD's standard deviation (mmrazor's `PKDLoss.norm`).
const PKD_EPS: f64 = 1e-6;

fn frobenius_normalized(g: Tensor<2>) -> Tensor<2> {
    let norm = g.clone().powi_scalar(2).sum().add_scalar(NORM_EPS).sqrt(); // [1]
    g / norm.unsqueeze::<2>()
}

fn row_normalized(a: Tensor<2>) -> Tensor<2> {
    let norm = a
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .add_scalar(NORM_EPS)
        .sqrt(); // [R, 1]
    a / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Distance;
    use crate::testing::{grad_check, tensor};

    fn values(t: Tensor<2>) -> (Vec<usize>, Vec<f64>) {
        let dims = t.dims().to_vec();
        (
            dims,
            t.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
        )
    }

    /// f64 reference: x as [B][C][HW].
    fn reference(rel: Relation, x: &[Vec<Vec<f64>>], temp: f64) -> Vec<Vec<f64>> {
        let flat: Vec<Vec<f64>> = x
            .iter()
            .map(|s| s.iter().flatten().copied().collect())
            .collect();
        let softmax = |v: &[f64]| {
            let m = v.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = v.iter().map(|a| ((a - m) / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|a| a / z).collect::<Vec<_>>()
        };
        let unit = |v: &[f64]| {
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.iter().map(|a| a / n).collect::<Vec<_>>()
        };
        let gram = |rows: &[Vec<f64>]| {
            let g: Vec<Vec<f64>> = rows
                .iter()
                .map(|a| {
                    rows.iter()
                        .map(|b| a.iter().zip(b).map(|(p, q)| p * q).sum())
                        .collect()
                })
                .collect();
            g
        };
        let frobenius = |g: Vec<Vec<f64>>| {
            let n = g.iter().flatten().map(|v: &f64| v * v).sum::<f64>().sqrt();
            g.into_iter()
                .map(|r| r.into_iter().map(|v| v / n).collect())
                .collect::<Vec<Vec<f64>>>()
        };
        let by_row = |g: Vec<Vec<f64>>| g.iter().map(|r| unit(r)).collect::<Vec<_>>();
        match rel {
            Relation::None => flat,
            Relation::SampleCorrelation => frobenius(gram(&flat)),
            Relation::SampleCorrelationRowNorm => by_row(gram(&flat)),
            Relation::ChannelCorrelationRowNorm => x.iter().flat_map(|s| by_row(gram(s))).collect(),
            Relation::SampleSoftmax => flat.iter().map(|v| softmax(v)).collect(),
            Relation::ChannelCorrelation => x.iter().flat_map(|s| frobenius(gram(s))).collect(),
            Relation::ChannelSoftmax => x
                .iter()
                .flat_map(|s| s.iter().map(|c| softmax(c)))
                .collect(),
            Relation::SampleL2Norm => flat.iter().map(|v| unit(v)).collect(),
            Relation::ChannelL2Norm => x.iter().flat_map(|s| s.iter().map(|c| unit(c))).collect(),
            Relation::ChannelStandardized => (0..x[0].len())
                .map(|c| {
                    let v: Vec<f64> = x.iter().flat_map(|s| s[c].iter().copied()).collect();
                    let n = v.len() as f64;
                    let mean = v.iter().sum::<f64>() / n;
                    let sd = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                    v.iter().map(|a| (a - mean) / (sd + 1e-6)).collect()
                })
                .collect(),
        }
    }

    #[test]
    fn each_relation_matches_its_f64_reference() {
        let device = Device::flex();
        let (b, c, h, w) = (3, 4, 2, 3);
        let x = tensor([b, c, h, w], 7, &device);
        let flat: Vec<f64> = x
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let nested: Vec<Vec<Vec<f64>>> = (0..b)
            .map(|i| {
                (0..c)
                    .map(|j| flat[(i * c + j) * h * w..(i * c + j + 1) * h * w].to_vec())
                    .collect()
            })
            .collect();
        for rel in Relation::ALL.into_iter().chain(Relation::PUBLISHED) {
            let (dims, got) = values(rel.apply(x.clone(), 4.0));
            let want = reference(rel, &nested, 4.0);
            assert_eq!(dims, vec![want.len(), want[0].len()], "{rel:?}");
            for (g, e) in got.iter().zip(want.iter().flatten()) {
                assert!((g - e).abs() < 1e-5, "{rel:?}: {g} vs {e}");
            }
        }
        // Shapes of Eq. 1 and Eq. 3 by hand: [B, B] and [B·C, C].
        assert_eq!(
            Relation::SampleCorrelation.apply(x.clone(), 1.0).dims(),
            [3, 3]
        );
        assert_eq!(Relation::ChannelCorrelation.apply(x, 1.0).dims(), [12, 4]);
    }

    #[test]
    fn eq2_and_eq4_with_kl() {
        // Eq. 4 (CWD): T²/C Σ_c KL(φ(Gᵗ_c/T) ‖ φ(Gˢ_c/T)), averaged over the batch too.
        let device = Device::flex();
        let (s, t) = (
            tensor([2, 3, 2, 2], 1, &device),
            tensor([2, 3, 2, 2], 2, &device),
        );
        let rel = Relation::ChannelSoftmax;
        let v: f32 = Distance::Kl
            .apply(
                rel.apply(s.clone(), 4.0),
                rel.apply(t.clone(), 4.0),
                4.0,
                true,
            )
            .unwrap()
            .into_scalar();
        // The same through the logits form of KL on the raw channel rows.
        let direct: f32 =
            crate::distance::kl_logits(s.reshape([6, 4]), t.reshape([6, 4]), 4.0).into_scalar();
        assert!((v - direct).abs() < 1e-5, "{v} vs {direct}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        for rel in Relation::ALL.into_iter().chain(Relation::PUBLISHED) {
            grad_check(&format!("{rel:?}"), [2, 3, 2, 2], |s, t| {
                Distance::L2
                    .apply(rel.apply(s, 4.0), rel.apply(t, 4.0), 4.0, false)
                    .unwrap()
            });
        }
    }
}
