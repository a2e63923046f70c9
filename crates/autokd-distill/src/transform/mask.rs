//! MGD's masked generation (Yang et al. 2022): the student feature is masked at random spatial
//! positions (each dropped with probability λ) and a learnable block — 3×3 conv, ReLU, 3×3 conv
//! — must regenerate the teacher's feature from what is left.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;

/// The generation block `conv3×3 → ReLU → conv3×3`, `C → C`.
#[derive(Module, Debug)]
pub struct MaskGenerator {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl MaskGenerator {
    /// A generation block for `channels` channels.
    pub fn new(channels: usize, device: &Device) -> Self {
        let conv = || {
            Conv2dConfig::new([channels, channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(),
            conv2: conv(),
        }
    }

    /// `gen(x ⊙ M)` with `M[b, 0, h, w] = 0` with probability `ratio`, else 1.
    ///
    /// # Shapes
    /// - `x`: `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, ratio: f64) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let keep = Tensor::<4>::random([b, 1, h, w], Distribution::Uniform(0.0, 1.0), &x.device())
            .greater_equal_elem(ratio)
            .float();
        let masked = x * keep; // broadcast over channels
        use autokd_models::common::conv2d;
        conv2d(&self.conv2, relu(conv2d(&self.conv1, masked)))
    }
}
