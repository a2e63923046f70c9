//! Global transforms (supplementary §0.1.1 "Attention & Mask Distillation"), applied to the
//! student and teacher maps before the spatial and relation transforms.
//!
//! - spatial attention (AT, Zagoruyko & Komodakis): `a = mean_c(x²)`, flattened and scaled to unit
//!   L2 norm per sample → `[B, 1, H, W]` (AT's `p = 2`).
//! - channel attention: `mean_{h,w}(x²)` per channel, unit L2 norm per sample → `[B, C, 1, 1]`.
//! - summed attention (FKD, Zhang & Ma): spatial weights `H·W·softmax(mean_c|x| / T)` and channel
//!   weights `C·softmax(mean_{h,w}|x| / T)` of teacher and student are summed, and both features
//!   are multiplied by the (detached) sums, so the distance focuses where either attends.
//! - mask (MGD): see [`MaskGenerator`](super::mask::MaskGenerator); only the student changes.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use super::mask::MaskGenerator;
use crate::error::{DistillError, Result, same_shape};
use crate::real::Real;

/// Added to squared norms before the root (finite gradients at zero).
const NORM_EPS: f64 = 1e-12;

/// A global transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum GlobalTransform {
    /// The feature as it is.
    None,
    /// AT: normalized channel-mean of squared activations.
    SpatialAttention,
    /// Normalized spatial mean of squared activations per channel.
    ChannelAttention,
    /// FKD: features weighted by teacher + student attention.
    SummedAttention,
    /// MGD: random spatial mask on the student, learnable generation block.
    Mask {
        /// Probability λ that a position is masked.
        ratio: Real,
    },
}

impl GlobalTransform {
    /// Every global transform, the mask at λ = 0.5.
    pub const ALL: [GlobalTransform; 5] = [
        GlobalTransform::None,
        GlobalTransform::SpatialAttention,
        GlobalTransform::ChannelAttention,
        GlobalTransform::SummedAttention,
        GlobalTransform::Mask { ratio: Real(0.5) },
    ];

    /// Name used in formulas.
    pub fn symbol(self) -> String {
        match self {
            GlobalTransform::None => String::new(),
            GlobalTransform::SpatialAttention => "spatial_att".into(),
            GlobalTransform::ChannelAttention => "channel_att".into(),
            GlobalTransform::SummedAttention => "summed_att".into(),
            GlobalTransform::Mask { ratio } => format!("mask{ratio}"),
        }
    }

    /// Whether the temperature changes this transform.
    pub fn uses_temperature(self) -> bool {
        self == GlobalTransform::SummedAttention
    }

    /// Applies the transform to a pair of maps of the same shape; `generator` is required for
    /// the mask.
    ///
    /// # Shapes
    /// - `s`, `t`: `[B, C, H, W]` → `[B, 1, H, W]` (spatial attention), `[B, C, 1, 1]` (channel
    ///   attention), `[B, C, H, W]` (others)
    pub fn apply(
        self,
        s: Tensor<4>,
        t: Tensor<4>,
        temperature: f64,
        generator: Option<&MaskGenerator>,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        // The feature as it is and spatial attention accept different channel counts (the
        // relation or distance after them checks what they need); the others pair channels.
        if !matches!(
            self,
            GlobalTransform::None | GlobalTransform::SpatialAttention
        ) {
            same_shape("global transform", &s, &t)?;
        }
        Ok(match self {
            GlobalTransform::None => (s, t),
            GlobalTransform::SpatialAttention => (spatial_attention(s), spatial_attention(t)),
            GlobalTransform::ChannelAttention => (channel_attention(s), channel_attention(t)),
            GlobalTransform::SummedAttention => {
                let [_, c, h, w] = s.dims();
                let spatial = (attention_weights_spatial(&s, temperature)
                    + attention_weights_spatial(&t, temperature))
                .mul_scalar((h * w) as f64)
                .detach(); // [B, 1, H, W]
                let channel = (attention_weights_channel(&s, temperature)
                    + attention_weights_channel(&t, temperature))
                .mul_scalar(c as f64)
                .detach(); // [B, C, 1, 1]
                (s * spatial.clone() * channel.clone(), t * spatial * channel)
            }
            GlobalTransform::Mask { ratio } => {
                let g = generator.ok_or_else(|| {
                    DistillError::Spec("the mask transform needs its generation block".into())
                })?;
                (g.forward(s, ratio.get()), t)
            }
        })
    }
}

/// AT: `mean_c(x²)` normalized to unit L2 norm over `H·W` per sample.
pub fn spatial_attention(x: Tensor<4>) -> Tensor<4> {
    let [b, _, h, w] = x.dims();
    let a = x.powi_scalar(2).mean_dim(1).reshape([b, h * w]); // [B, HW]
    let n = a
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .add_scalar(NORM_EPS)
        .sqrt();
    (a / n).reshape([b, 1, h, w])
}

/// `mean_{h,w}(x²)` normalized to unit L2 norm over `C` per sample.
pub fn channel_attention(x: Tensor<4>) -> Tensor<4> {
    let [b, c, _, _] = x.dims();
    let a = x.powi_scalar(2).mean_dims(&[2, 3]).reshape([b, c]); // [B, C]
    let n = a
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .add_scalar(NORM_EPS)
        .sqrt();
    (a / n).reshape([b, c, 1, 1])
}

/// `softmax(mean_c|x| / T)` over `H·W` → `[B, 1, H, W]`.
fn attention_weights_spatial(x: &Tensor<4>, temperature: f64) -> Tensor<4> {
    let [b, _, h, w] = x.dims();
    let a = x.clone().abs().mean_dim(1).reshape([b, h * w]);
    softmax(a.div_scalar(temperature), 1).reshape([b, 1, h, w])
}

/// `softmax(mean_{h,w}|x| / T)` over `C` → `[B, C, 1, 1]`.
fn attention_weights_channel(x: &Tensor<4>, temperature: f64) -> Tensor<4> {
    let [b, c, _, _] = x.dims();
    let a = x.clone().abs().mean_dims(&[2, 3]).reshape([b, c]);
    softmax(a.div_scalar(temperature), 1).reshape([b, c, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Distance;
    use crate::testing::{grad_check, tensor, vals};

    #[test]
    fn attention_by_hand() {
        let device = Device::flex();
        // One sample, 2 channels, 1×2: channel 0 = (1, 2), channel 1 = (3, 0).
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 0.0], &device).reshape([1, 2, 1, 2]);
        // Spatial: mean_c(x²) = ((1+9)/2, (4+0)/2) = (5, 2); /√29.
        let s = vals(spatial_attention(x.clone()));
        let n = 29f32.sqrt();
        assert!(
            (s[0] - 5.0 / n).abs() < 1e-6 && (s[1] - 2.0 / n).abs() < 1e-6,
            "{s:?}"
        );
        // Channel: mean_hw(x²) = ((1+4)/2, (9+0)/2) = (2.5, 4.5); /√26.5.
        let c = vals(channel_attention(x.clone()));
        let n = 26.5f32.sqrt();
        assert!(
            (c[0] - 2.5 / n).abs() < 1e-6 && (c[1] - 4.5 / n).abs() < 1e-6,
            "{c:?}"
        );
        // Summed attention with T = 1 and student = teacher: spatial weights 2·HW·softmax(2, 1),
        // channel weights 2·C·softmax(1.5, 1.5) = (2, 2).
        let (ws, _) = GlobalTransform::SummedAttention
            .apply(x.clone(), x, 1.0, None)
            .unwrap();
        let e = (1f32).exp();
        let sw = [2.0 * 2.0 * e / (e + 1.0), 2.0 * 2.0 / (e + 1.0)];
        let want = [1.0 * sw[0] * 2.0, 2.0 * sw[1] * 2.0, 3.0 * sw[0] * 2.0, 0.0];
        for (g, w) in vals(ws).iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn mask_needs_generator_and_keeps_shape() {
        let device = Device::flex();
        let x = tensor([2, 3, 4, 4], 1, &device);
        let m = GlobalTransform::Mask { ratio: Real(0.5) };
        assert!(
            m.apply(x.clone(), x.clone(), 1.0, None)
                .unwrap_err()
                .to_string()
                .contains("generation block")
        );
        let g = MaskGenerator::new(3, 0, &mut autokd_models::InitRng::new(0), &device);
        let (s, t) = m.apply(x.clone(), x.clone(), 1.0, Some(&g)).unwrap();
        assert_eq!(s.dims(), [2, 3, 4, 4]);
        assert_eq!(vals(t), vals(x));
        // λ = 1 masks everything: the generator sees zeros and returns its biases only.
        let (all, _) = GlobalTransform::Mask { ratio: Real(1.0) }
            .apply(
                tensor([1, 3, 4, 4], 2, &device),
                tensor([1, 3, 4, 4], 2, &device),
                1.0,
                Some(&g),
            )
            .unwrap();
        let zero = g.forward(Tensor::zeros([1, 3, 4, 4], &device), 0.0);
        assert_eq!(vals(all), vals(zero));
    }

    /// The generation block at λ = 0 (no position masked, so the function is deterministic).
    #[test]
    fn mask_generator_gradient() {
        let generator = MaskGenerator::new(
            3,
            0,
            &mut autokd_models::InitRng::new(0),
            &Device::flex().autodiff(),
        );
        // The finite differences run without autodiff, on the `valid()` copy of the same weights.
        grad_check("mask generator", [2, 3, 3, 3], |s, t| {
            let g = if s.is_autodiff() {
                generator.clone()
            } else {
                generator.clone().valid()
            };
            let (s, t) = GlobalTransform::Mask { ratio: Real(0.0) }
                .apply(s, t, 1.0, Some(&g))
                .unwrap();
            let [b, ..] = s.dims();
            Distance::L2
                .apply(
                    s.reshape([b as i32, -1]),
                    t.reshape([b as i32, -1]),
                    1.0,
                    false,
                )
                .unwrap()
        });
    }

    /// Summed attention is left out: its weights are detached by design, so its gradient is not
    /// the finite difference of the whole function.
    #[test]
    fn gradients_match_finite_differences() {
        for gt in [
            GlobalTransform::SpatialAttention,
            GlobalTransform::ChannelAttention,
        ] {
            grad_check(&format!("{gt:?}"), [2, 3, 2, 2], |s, t| {
                let (s, t) = gt.apply(s, t, 4.0, None).unwrap();
                let [b, ..] = s.dims();
                Distance::L2
                    .apply(
                        s.reshape([b as i32, -1]),
                        t.reshape([b as i32, -1]),
                        1.0,
                        false,
                    )
                    .unwrap()
            });
        }
    }
}
