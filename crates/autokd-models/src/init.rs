//! Seeded initial weights drawn on the host ([`InitRng`]), never from the device's RNG.
//!
//! Every backend here keeps one process-wide device RNG (`Device::seed`), and burn's
//! initializers create lazy parameters that draw from it at their first use; two trainings in
//! one process then change each other's weights unless a lock serializes seeding and drawing.
//! The models and the distiller instead take an [`InitRng`] owned by the run or the trial and
//! create every random parameter already initialized from it, so the same seed gives the same
//! weights whatever other threads do, on every device.
//!
//! Distributions are those of the reference implementations: convolutions of the CIFAR zoos
//! `N(0, √(2 / fan_out))` (`kaiming_normal_(mode='fan_out')`, zero bias); PyTorch's default
//! `Linear`/`Conv2d` (`kaiming_uniform_(a=√5)`: weight and bias uniform in `±1/√fan_in`).

use burn::module::Param;
use burn::nn::Initializer;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;

/// Names the initialization scheme: it changes whenever the same seed gives other initial
/// weights, so a cache of weights trained from a seed (the search's teachers) keys by it.
pub const INIT_SCHEME: &str = "initrng-1";

/// SplitMix64's increment (Steele, Lea & Flood 2014).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded stream of uniform numbers (SplitMix64 on the host) shared by the clones of the
/// module that owns it: a model moves through optimizer steps by value, and its random masks
/// (MGD's, dropout's) continue one stream that belongs to the run, never to the device.
#[derive(Debug, Clone)]
pub struct SharedRng(std::sync::Arc<std::sync::Mutex<u64>>);

impl SharedRng {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(mix(seed))))
    }

    fn next_u64(&self) -> u64 {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = state.wrapping_add(GOLDEN);
        mix(*state)
    }

    /// Restarts the stream (this one and its clones) from `seed`.
    pub fn reseed(&self, seed: u64) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mix(seed);
    }

    /// A new, independent stream seeded from the next number of this one (for a replica that
    /// draws its own masks, e.g. one shard of a data-parallel step).
    pub fn fork(&self) -> Self {
        Self::new(self.next_u64())
    }

    /// `n` numbers uniform in `[0, 1)` (53-bit resolution).
    pub fn uniform(&self, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .collect()
    }
}

impl Default for SharedRng {
    fn default() -> Self {
        Self::new(0)
    }
}

/// A seeded stream of random numbers for initial weights (SplitMix64 on the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRng {
    state: u64,
}

impl InitRng {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: mix(seed) }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// An independent stream seeded from the next number of this one (e.g. the distiller's,
    /// forked from a trial's after the student's weights).
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }

    /// Uniform in `[0, 1)` with 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` draws uniform in `[-bound, bound)`.
    pub fn uniform_values(&mut self, n: usize, bound: f64) -> Vec<f32> {
        (0..n)
            .map(|_| ((2.0 * self.unit() - 1.0) * bound) as f32)
            .collect()
    }

    /// `n` draws of `N(0, std²)` (Box–Muller, both values of each pair).
    pub fn normal_values(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            // 1 − u is in (0, 1]: the logarithm is finite.
            let r = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
            let theta = std::f64::consts::TAU * self.unit();
            out.push((std * r * theta.cos()) as f32);
            out.push((std * r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A parameter of `shape` uniform in `±bound`.
    pub fn uniform<const D: usize>(
        &mut self,
        shape: [usize; D],
        bound: f64,
        device: &Device,
    ) -> Param<Tensor<D>> {
        let v = self.uniform_values(shape.iter().product(), bound);
        param(v, shape, device)
    }

    /// A parameter of `shape` drawn from `N(0, std²)`.
    pub fn normal<const D: usize>(
        &mut self,
        shape: [usize; D],
        std: f64,
        device: &Device,
    ) -> Param<Tensor<D>> {
        let v = self.normal_values(shape.iter().product(), std);
        param(v, shape, device)
    }
}

fn param<const D: usize>(v: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::<D>::from_data(TensorData::new(v, shape), device))
}

/// A zero parameter of `shape`.
pub fn zeros<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::<D>::zeros(shape, device))
}

/// How a convolution's weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConvInit {
    /// `N(0, √(2 / fan_out))` with `fan_out = out · k² / groups`, zero bias: the CIFAR zoos'
    /// `kaiming_normal_(mode='fan_out', nonlinearity='relu')`.
    KaimingFanOut,
    /// PyTorch's default: weight and bias uniform in `±1/√fan_in`, `fan_in = in / groups · k²`.
    TorchDefault,
    /// `kaiming_uniform_(a=1)`: weight uniform in `±√(3/fan_in)`, zero bias (torchvision's FPN
    /// and its P6/P7 convolutions).
    KaimingUniformUnit,
    /// `normal_(std)`, zero bias (torchvision's RetinaNet heads: 0.01).
    Normal(f64),
}

/// The geometry of a 2-D convolution with a square kernel and symmetric padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub in_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on every side.
    pub padding: usize,
    /// Groups.
    pub groups: usize,
    /// With a bias.
    pub bias: bool,
}

/// A convolution of `shape` with weights drawn from `rng` as `init` says.
pub fn conv2d(shape: ConvShape, init: ConvInit, rng: &mut InitRng, device: &Device) -> Conv2d {
    let ConvShape {
        in_ch,
        out_ch,
        kernel: k,
        stride,
        padding: p,
        groups,
        bias,
    } = shape;
    let groups = groups.max(1);
    // Built with zero initializers that are never evaluated: both tensors are replaced below.
    let mut conv = Conv2dConfig::new([in_ch, out_ch], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_groups(groups)
        .with_bias(bias)
        .with_initializer(Initializer::Zeros)
        .init(device);
    let w = [out_ch, in_ch / groups, k, k];
    let (weight, b) = match init {
        ConvInit::KaimingFanOut => {
            let fan_out = (out_ch * k * k / groups).max(1);
            let weight = rng.normal(w, (2.0 / fan_out as f64).sqrt(), device);
            (weight, bias.then(|| zeros([out_ch], device)))
        }
        ConvInit::TorchDefault => {
            let bound = 1.0 / ((in_ch / groups * k * k).max(1) as f64).sqrt();
            let weight = rng.uniform(w, bound, device);
            (weight, bias.then(|| rng.uniform([out_ch], bound, device)))
        }
        ConvInit::KaimingUniformUnit => {
            let bound = (3.0 / ((in_ch / groups * k * k).max(1) as f64)).sqrt();
            (
                rng.uniform(w, bound, device),
                bias.then(|| zeros([out_ch], device)),
            )
        }
        ConvInit::Normal(std) => (
            rng.normal(w, std, device),
            bias.then(|| zeros([out_ch], device)),
        ),
    };
    conv.weight = weight;
    conv.bias = b;
    conv
}

/// A linear layer `in → out` with PyTorch's default initialization (weight and bias uniform in
/// `±1/√in`).
pub fn linear(
    in_features: usize,
    out_features: usize,
    rng: &mut InitRng,
    device: &Device,
) -> Linear {
    let bound = 1.0 / (in_features.max(1) as f64).sqrt();
    let mut l = LinearConfig::new(in_features, out_features)
        .with_initializer(Initializer::Zeros)
        .init(device);
    // burn stores the weight as `[in, out]`.
    l.weight = rng.uniform([in_features, out_features], bound, device);
    l.bias = Some(rng.uniform([out_features], bound, device));
    l
}

/// A linear layer `in → out` with weights from `N(0, std²)` and zero bias (timm's ViT/DeiT
/// `trunc_normal_(std=.02)`, whose ±2 cut lies 100 standard deviations out).
pub fn linear_normal(
    in_features: usize,
    out_features: usize,
    std: f64,
    rng: &mut InitRng,
    device: &Device,
) -> Linear {
    let mut l = LinearConfig::new(in_features, out_features)
        .with_initializer(Initializer::Zeros)
        .init(device);
    l.weight = rng.normal([in_features, out_features], std, device);
    l.bias = Some(zeros([out_features], device));
    l
}

/// Batch norm with PyTorch's defaults (eps 1e-5, momentum 0.1), its scale and shift created
/// initialized (ones and zeros).
pub fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(channels).init(device);
    bn.gamma = Param::from_tensor(Tensor::<1>::ones([channels], device));
    bn.beta = zeros([channels], device);
    bn
}

/// Layer norm over `d` features with `epsilon`, its scale and shift created initialized (ones
/// and zeros).
pub fn layer_norm(d: usize, epsilon: f64, device: &Device) -> LayerNorm {
    let mut ln = LayerNormConfig::new(d).with_epsilon(epsilon).init(device);
    ln.gamma = Param::from_tensor(Tensor::<1>::ones([d], device));
    ln.beta = Some(zeros([d], device));
    ln
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moments of the draws against their distributions (4σ bands of the sample estimates), the
    /// same stream from the same seed, different streams from a fork.
    #[test]
    fn draws_have_their_moments_and_repeat_by_seed() {
        let n = 200_000;
        let v = InitRng::new(3).normal_values(n, 0.5);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        // sd of the mean 0.5/√n ≈ 0.0011; of the variance 0.25·√(2/n) ≈ 0.0008.
        assert!(mean.abs() < 0.0045, "{mean}");
        assert!((var - 0.25).abs() < 0.0032, "{var}");
        let u = InitRng::new(3).uniform_values(n, 2.0);
        assert!(u.iter().all(|&x| (-2.0..2.0).contains(&x)));
        let var = u.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n as f64;
        // Uniform in ±2: variance 4/3, sd of the estimate ≈ 4/3·√(0.8/n) ≈ 0.0027.
        assert!((var - 4.0 / 3.0).abs() < 0.011, "{var}");
        assert_eq!(
            InitRng::new(3).normal_values(7, 1.0),
            InitRng::new(3).normal_values(7, 1.0)
        );
        let mut a = InitRng::new(3);
        let mut f = a.fork();
        assert_ne!(a.normal_values(4, 1.0), f.normal_values(4, 1.0));
        assert_eq!(InitRng::new(3).normal_values(5, 1.0).len(), 5);
    }

    /// Kaiming fan-out: the weight's standard deviation is √(2 / (out·k²/groups)) and the bias
    /// is zero; the default init's bound is 1/√(in/groups·k²); every parameter is initialized
    /// at construction (nothing left to draw lazily).
    #[test]
    fn convolutions_and_linears_have_the_reference_scales() {
        let device = Device::flex();
        let mut rng = InitRng::new(1);
        let shape = ConvShape {
            in_ch: 32,
            out_ch: 64,
            kernel: 3,
            stride: 1,
            padding: 1,
            groups: 2,
            bias: true,
        };
        let c = conv2d(shape, ConvInit::KaimingFanOut, &mut rng, &device);
        assert!(c.weight.is_initialized());
        let w: Vec<f32> = c.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(w.len(), 64 * 16 * 9);
        let sd = (w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        let expected = (2.0f64 / (64.0 * 9.0 / 2.0)).sqrt();
        assert!((sd / expected - 1.0).abs() < 0.05, "{sd} vs {expected}");
        let b: Vec<f32> = c
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(b.iter().all(|&x| x == 0.0));
        let d = conv2d(shape, ConvInit::TorchDefault, &mut rng, &device);
        let bound = 1.0 / (16.0f64 * 9.0).sqrt();
        let w: Vec<f32> = d.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let max = w.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
        assert!(max < bound && max > 0.95 * bound, "{max} vs {bound}");
        let l = linear(100, 10, &mut rng, &device);
        assert!(l.weight.is_initialized() && l.bias.as_ref().unwrap().is_initialized());
        assert_eq!(l.weight.val().dims(), [100, 10]);
        let w: Vec<f32> = l.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert!(w.iter().all(|&x| f64::from(x).abs() < 0.1));
    }
}
