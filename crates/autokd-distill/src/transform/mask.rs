//! MGD's masked generation (Yang et al. 2022): the student feature is masked at random spatial
//! positions (each dropped with probability λ) and a learnable block — 3×3 conv, ReLU, 3×3 conv
//! — must regenerate the teacher's feature from what is left.
//!
//! The masks come from the generator's own seeded stream ([`MaskRng`]), never from the device's
//! process-wide RNG, so a trial's masks do not depend on what other threads seed or draw.

use autokd_models::init::{ConvInit, ConvShape, InitRng, SharedRng};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;

/// The mask stream: the models' [`SharedRng`], owned by the generator and its clones.
pub type MaskRng = SharedRng;

/// The generation block `conv3×3 → ReLU → conv3×3`, `C → C`, with its mask stream.
#[derive(Module, Debug)]
pub struct MaskGenerator {
    conv1: Conv2d,
    conv2: Conv2d,
    #[module(skip)]
    rng: MaskRng,
}

impl MaskGenerator {
    /// A generation block for `channels` channels, its convolutions drawn from `init`
    /// (PyTorch's default: uniform in `±1/√(9C)`, as MGD's `nn.Conv2d`); masks from a stream
    /// seeded with `seed`.
    pub fn new(channels: usize, seed: u64, init: &mut InitRng, device: &Device) -> Self {
        let shape = ConvShape {
            in_ch: channels,
            out_ch: channels,
            kernel: 3,
            stride: 1,
            padding: 1,
            groups: 1,
            bias: true,
        };
        Self {
            conv1: autokd_models::init::conv2d(shape, ConvInit::TorchDefault, init, device),
            conv2: autokd_models::init::conv2d(shape, ConvInit::TorchDefault, init, device),
            rng: MaskRng::new(seed),
        }
    }

    /// A generation block whose weights are drawn from a [`MaskRng`] seeded with `seed` (uniform
    /// in `±1/√(9C)`, PyTorch's default bound) instead of the device RNG: the same weights on
    /// every call, whatever else the process seeds. Masks from the same stream continue after.
    /// The weights have element type `dtype`.
    pub fn deterministic(channels: usize, seed: u64, dtype: DType, device: &Device) -> Self {
        let mut g = Self::new(channels, seed, &mut InitRng::new(seed), device);
        let bound = 1.0 / ((9 * channels.max(1)) as f64).sqrt();
        let draw = |shape: Vec<usize>| -> Vec<f32> {
            let n = shape.iter().product();
            g.rng
                .uniform(n)
                .into_iter()
                .map(|u| ((2.0 * u - 1.0) * bound) as f32)
                .collect()
        };
        let w = [channels, channels, 3, 3];
        let (w1, w2, b1, b2) = (
            draw(w.to_vec()),
            draw(w.to_vec()),
            draw(vec![channels]),
            draw(vec![channels]),
        );
        let t4 = |v: Vec<f32>| {
            Param::from_tensor(Tensor::<4>::from_data(TensorData::new(v, w), device).cast(dtype))
        };
        let t1 = |v: Vec<f32>| {
            Param::from_tensor(
                Tensor::<1>::from_data(TensorData::new(v, [channels]), device).cast(dtype),
            )
        };
        g.conv1.weight = t4(w1);
        g.conv2.weight = t4(w2);
        g.conv1.bias = Some(t1(b1));
        g.conv2.bias = Some(t1(b2));
        g
    }

    /// The mask stream.
    pub fn rng(&self) -> &MaskRng {
        &self.rng
    }

    /// Replaces the mask stream (a replica's own, from [`MaskRng::fork`]).
    pub fn set_rng(&mut self, rng: MaskRng) {
        self.rng = rng;
    }

    /// `gen(x ⊙ M)` with `M[b, 0, h, w] = 0` with probability `ratio`, else 1.
    ///
    /// # Shapes
    /// - `x`: `[B, C, H, W]` → `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, ratio: f64) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let keep: Vec<f32> = self
            .rng
            .uniform(b * h * w)
            .into_iter()
            .map(|u| if u >= ratio { 1.0 } else { 0.0 })
            .collect();
        let keep = Tensor::<4>::from_data(TensorData::new(keep, [b, 1, h, w]), &x.device())
            .cast(x.dtype());
        let masked = x * keep; // broadcast over channels
        use autokd_models::common::conv2d;
        conv2d(&self.conv2, relu(conv2d(&self.conv1, masked)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_seeded_shared_by_clones_and_forkable() {
        let a = MaskRng::new(7);
        let first = a.uniform(4);
        assert!(first.iter().all(|u| (0.0..1.0).contains(u)));
        // Same seed, same numbers; a clone continues the same stream.
        let b = MaskRng::new(7);
        assert_eq!(b.uniform(4), first);
        let c = b.clone();
        let (x, y) = (b.uniform(1), c.uniform(1));
        assert_ne!(x, y);
        b.reseed(7);
        assert_eq!(c.uniform(4), first);
        // A fork is independent of its parent's later draws.
        let parent = MaskRng::new(1);
        let child = parent.fork();
        let want = MaskRng::new(1).fork().uniform(3);
        parent.uniform(100);
        assert_eq!(child.uniform(3), want);
        // Roughly uniform: the mean of 10,000 draws is within 0.02 of 1/2.
        let mean = MaskRng::new(3).uniform(10_000).iter().sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
