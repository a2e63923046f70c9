//! Building blocks shared by the architectures.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

use crate::init::{ConvInit, ConvShape, InitRng, SharedRng};
use crate::params::conv_fwd;
use burn::tensor::activation::relu;

/// A 2-D convolution with square kernel, symmetric padding, groups and optional bias, initialized
/// as PyTorch's `kaiming_normal_(mode='fan_out', nonlinearity='relu')` (the CIFAR zoos' init; zero
/// bias) from `rng`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    bias: bool,
    rng: &mut InitRng,
    device: &Device,
) -> Conv2d {
    crate::init::conv2d(
        ConvShape {
            in_ch,
            out_ch,
            kernel,
            stride,
            padding,
            groups,
            bias,
        },
        ConvInit::KaimingFanOut,
        rng,
        device,
    )
}

/// Batch norm with PyTorch's defaults (eps 1e-5, momentum 0.1).
pub(crate) fn bn(channels: usize, device: &Device) -> BatchNorm {
    crate::init::batch_norm(channels, device)
}

/// `bn(x)` for a `[B, C, H, W]` input: the same results as `BatchNorm::forward`, with a faster
/// training path.
///
/// In training (autodiff device and the layer's training flag on) burn 0.22's backend-generic
/// `batch_norm_train` computes the statistics after swapping the batch and channel axes, which
/// copies the activation in the forward pass and three more times in the backward pass; on `flex`
/// a 64×16×32×32 forward + backward took 18.5 ms against PyTorch's 2.7 ms (`autokd bench ops`).
/// - On `flex`, [`crate::flex::batch_norm_train`]: one kernel forward, one backward.
/// - Elsewhere, the statistics are reductions over the contiguous `H·W` axis and then the batch,
///   and autodiff differentiates the composition.
///
/// Running statistics are updated as burn does (momentum, biased batch variance). Inference uses
/// the running statistics through burn.
///
/// `AUTOKD_BATCHNORM=burn` in the environment selects burn's own training path, and
/// `AUTOKD_BATCHNORM=composed` the composed one everywhere (to measure them side by side).
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let path = batch_norm_path();
    if path == "burn" || !in_training(bn, &x) {
        return bn.forward(x);
    }
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let m = bn.momentum;
    let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
        let old = state.value_sync().to_device(&device);
        let new = old.mul_scalar(1.0 - m) + batch.detach().mul_scalar(m);
        state.update(new.detach());
    };
    #[cfg(feature = "flex")]
    if path != "composed" {
        let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
        if let Some(n) = crate::flex::batch_norm_train(&x, &gamma, &beta, bn.epsilon) {
            let stat = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &device);
            update(&bn.running_mean, stat(n.mean));
            update(&bn.running_var, stat(n.var));
            return n.output;
        }
    }
    let flat = x.reshape([b, c, h * w]);
    let mean = flat.clone().mean_dim(2).mean_dim(0); // [1, C, 1]
    let centered = flat - mean.clone();
    let var = centered.clone().powi_scalar(2).mean_dim(2).mean_dim(0); // biased
    let scale =
        var.clone().add_scalar(bn.epsilon).sqrt().recip() * bn.gamma.val().reshape([1, c, 1]);
    let out = centered * scale + bn.beta.val().reshape([1, c, 1]);
    update(&bn.running_mean, mean.reshape([c]));
    update(&bn.running_var, var.reshape([c]));
    out.reshape([b, c, h, w])
}

/// Whether `bn` normalizes `x` with batch statistics (and updates its running ones), as burn's
/// `BatchNorm::forward` decides: on an autodiff device with the layer's training flag on.
fn in_training(bn: &BatchNorm, x: &Tensor<4>) -> bool {
    x.device().is_autodiff() && bn.training.is_enabled()
}

/// `AUTOKD_BATCHNORM`: `burn`, `composed` or empty (see [`batch_norm`]).
fn batch_norm_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| std::env::var("AUTOKD_BATCHNORM").unwrap_or_default())
}

/// `AUTOKD_BATCHNORM=burn` also keeps burn's batch norm in inference (no folding).
fn burn_batch_norm() -> bool {
    batch_norm_path() == "burn"
}

/// `conv(x)` as `Conv2d::forward`, faster on `flex`.
///
/// - On `flex`, convolutions without dilation, with one group or depthwise, run through
///   [`crate::flex`] (NCHW im2col + gemm per image, forward and backward): 2.5–4× faster than
///   burn-flex's own path at the CIFAR models' shapes, forward + backward (`autokd bench ops`).
/// - 1×1 strided convolutions without padding (ResNet and WRN shortcuts) are computed as a
///   subsampling followed by a stride-1 1×1 convolution: the same numbers, as one matrix
///   product per image instead of a general im2col.
///
/// `AUTOKD_CONV=burn` in the environment selects burn's own convolution for every layer (to
/// measure the difference side by side).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match explicit_padding(conv) {
        Some(padding) => {
            let bias = conv.bias.as_ref().map(|p| p.val());
            conv2d_with(conv, padding, conv.weight.val(), bias, x)
        }
        None => conv.forward(x),
    }
}

/// `AUTOKD_CONV=burn`: burn's convolution everywhere.
fn burn_conv() -> bool {
    static BURN_PATH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BURN_PATH.get_or_init(|| std::env::var("AUTOKD_CONV").is_ok_and(|v| v == "burn"))
}

/// The padding of `conv` as `(begin, end)` pairs, unless it is `Same` (computed by burn from the
/// input) or `AUTOKD_CONV=burn` asks for burn's path.
fn explicit_padding(conv: &Conv2d) -> Option<[(usize, usize); 2]> {
    match conv.padding {
        _ if burn_conv() => None,
        PaddingConfig2d::Valid => Some([(0, 0), (0, 0)]),
        PaddingConfig2d::Explicit(t, l, b, r) => Some([(t, b), (l, r)]),
        _ => None,
    }
}

/// The convolution of `conv`'s geometry (stride, dilation, groups, `padding`) with the given
/// weight and bias.
fn conv2d_with(
    conv: &Conv2d,
    padding: [(usize, usize); 2],
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    x: Tensor<4>,
) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let [sh, sw] = conv.stride;
    let pointwise_strided = conv.kernel_size == [1, 1]
        && (sh > 1 || sw > 1)
        && padding == [(0, 0), (0, 0)]
        && conv.dilation == [1, 1]
        && h % sh == 0
        && w % sw == 0;
    if pointwise_strided {
        let (ho, wo) = (h / sh, w / sw);
        let sub: Tensor<4> = x
            .reshape([b, c, ho, sh, wo, sw])
            .narrow(3, 0, 1)
            .narrow(5, 0, 1)
            .reshape([b, c, ho, wo]);
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], conv.groups);
        return conv2d_op(sub, weight, bias, options);
    }
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    conv2d_op(x, weight, bias, options)
}

/// `bn(conv(x))`, counting the convolution's multiply-accumulates.
///
/// In inference (the batch norm uses its running statistics) the batch norm is folded into the
/// convolution: `W·γ/σ` and bias `β − μ·γ/σ` (plus the convolution's own bias times `γ/σ`), one
/// pass over the activation instead of a convolution and then a batch norm. The teacher's
/// forward pass (online distillation, building the teacher cache) and evaluation take this path.
pub(crate) fn conv_bn(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let padding = explicit_padding(conv);
    let Some(padding) = padding.filter(|_| !in_training(bn, &x) && !burn_batch_norm()) else {
        return batch_norm(bn, conv_fwd(conv, x));
    };
    let o = conv.weight.dims()[0];
    let scale = bn.gamma.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
    let weight = conv.weight.val() * scale.clone().reshape([o, 1, 1, 1]);
    let shift = bn.beta.val() - bn.running_mean.value() * scale.clone();
    let bias = match &conv.bias {
        Some(b) => shift + b.val() * scale,
        None => shift,
    };
    let y = conv2d_with(conv, padding, weight, Some(bias), x);
    crate::params::count_conv(conv, &y);
    y
}

/// `burn::tensor::module::conv2d`, through [`crate::flex`] where that applies.
pub fn conv2d_op(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    {
        crate::flex::conv2d(x, weight, bias, options)
    }
    #[cfg(not(feature = "flex"))]
    {
        burn::tensor::module::conv2d(x, weight, bias, options)
    }
}

/// Convolution then batch norm (no activation).
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: Conv2d,
    /// The batch norm.
    pub bn: BatchNorm,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        Self {
            conv: conv(
                in_ch, out_ch, kernel, stride, padding, groups, false, rng, device,
            ),
            bn: bn(out_ch, device),
        }
    }

    /// `bn(conv(x))`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv_bn(&self.conv, &self.bn, x)
    }

    /// `relu(bn(conv(x)))`.
    pub fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.forward(x))
    }
}

/// Global average pooling `[B, C, H, W] → [B, C]`. At the reference input sizes it equals the
/// fixed-size average pools of the reference code (`AvgPool2d(8)` on 8×8 maps, etc.).
pub(crate) fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dims(&[2, 3]).reshape([b, c])
}

/// Dropout whose masks come from its own seeded stream ([`SharedRng`]), never from the device's
/// process-wide RNG: a training is the same whatever other threads draw, and a resumed one
/// continues where the per-epoch seeding ([`crate::Backbone::seed_dropout`]) puts it. Active
/// only on an autodiff device (training), as burn's `Dropout`; kept elements are scaled by
/// `1 / (1 − p)`.
#[derive(Module, Debug)]
pub struct SeededDropout {
    prob: f64,
    #[module(skip)]
    rng: SharedRng,
}

impl SeededDropout {
    /// Drops with probability `prob`.
    pub fn new(prob: f64) -> Self {
        Self {
            prob,
            rng: SharedRng::default(),
        }
    }

    /// Restarts the stream (shared with this module's clones) from `seed`.
    pub fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    /// Gives this copy a stream of its own, forked from the shared one.
    pub fn fork_stream(&mut self) {
        self.rng = self.rng.fork();
    }

    /// `x` with elements dropped (training) or unchanged.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.prob <= 0.0 || !x.device().is_autodiff() {
            return x;
        }
        let dims = x.dims();
        let n = dims.iter().product();
        let scale = (1.0 / (1.0 - self.prob)) as f32;
        let keep: Vec<f32> = self
            .rng
            .uniform(n)
            .into_iter()
            .map(|u| if u >= self.prob { scale } else { 0.0 })
            .collect();
        let mask = Tensor::<D>::from_data(TensorData::new(keep, dims), &x.device());
        x * mask
    }
}

/// ShuffleNet's channel shuffle: `[N, g·k, H, W] → [N, g, k, H, W] → [N, k, g, H, W] → [N, g·k, H, W]`.
pub(crate) fn channel_shuffle(x: Tensor<4>, groups: usize) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, groups, c / groups, h, w])
        .swap_dims(1, 2)
        .reshape([n, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::nn::conv::Conv2dConfig;

    #[test]
    fn channel_shuffle_by_hand() {
        // Channels [0 1 2 3 4 5] in 2 groups → [0 3 1 4 2 5]; in 3 groups → [0 2 4 1 3 5].
        let device = Device::flex();
        let x =
            Tensor::<1>::from_floats([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &device).reshape([1, 6, 1, 1]);
        let two: Vec<f32> = channel_shuffle(x.clone(), 2)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(two, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let three: Vec<f32> = channel_shuffle(x, 3)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(three, vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
    }

    #[test]
    fn batch_norm_matches_burn_in_training_and_inference() {
        let ad = Device::flex().autodiff();
        let make = || {
            let mut m = BatchNormConfig::new(3).init(&ad);
            // Non-trivial affine parameters.
            m.gamma = m
                .gamma
                .map(|_| Tensor::from_floats([0.5, 1.5, -2.0], &ad).require_grad());
            m.beta = m
                .beta
                .map(|_| Tensor::from_floats([0.1, -0.3, 2.0], &ad).require_grad());
            m
        };
        let (ours, theirs) = (make(), make());
        let values: Vec<f32> = (0..4 * 3 * 5 * 2)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let x = || {
            Tensor::<4>::from_data(TensorData::new(values.clone(), [4, 3, 5, 2]), &ad)
                .require_grad()
        };
        let (xa, xb) = (x(), x());
        let (ya, yb) = (batch_norm(&ours, xa.clone()), theirs.forward(xb.clone()));
        let close = |a: Tensor<1>, b: Tensor<1>, what: &str| {
            let (a, b) = (
                a.into_data().try_to_vec::<f32>().unwrap(),
                b.into_data().try_to_vec::<f32>().unwrap(),
            );
            assert_eq!(a.len(), b.len());
            for (u, v) in a.iter().zip(&b) {
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "{what}: {a:?} vs {b:?}"
                );
            }
        };
        let flat = |t: Tensor<4>| t.reshape([-1]);
        close(flat(ya.clone()), flat(yb.clone()), "output");
        // A loss that weighs positions unequally, so that every gradient term matters.
        let w = Tensor::<4>::from_data(
            TensorData::new(
                (0..120).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(),
                [4, 3, 5, 2],
            ),
            &ad,
        );
        let (ga, gb) = ((ya * w.clone()).sum().backward(), (yb * w).sum().backward());
        close(
            flat(xa.grad(&ga).unwrap()),
            flat(xb.grad(&gb).unwrap()),
            "input gradient",
        );
        close(
            ours.gamma.val().grad(&ga).unwrap(),
            theirs.gamma.val().grad(&gb).unwrap(),
            "gamma gradient",
        );
        close(
            ours.beta.val().grad(&ga).unwrap(),
            theirs.beta.val().grad(&gb).unwrap(),
            "beta gradient",
        );
        close(
            ours.running_mean.value(),
            theirs.running_mean.value(),
            "running mean",
        );
        close(
            ours.running_var.value(),
            theirs.running_var.value(),
            "running var",
        );
        // Off the autodiff device, the running statistics: burn's inference path.
        let plain = Device::flex();
        let (ours, theirs) = (ours.valid(), theirs.valid());
        let xp = Tensor::<4>::from_data(TensorData::new(values.clone(), [4, 3, 5, 2]), &plain);
        close(
            flat(batch_norm(&ours, xp.clone())),
            flat(theirs.forward(xp)),
            "inference",
        );
    }

    #[test]
    fn subsampled_pointwise_conv_matches_burn() {
        let ad = Device::flex().autodiff();
        for (stride, groups, bias, side) in [(2, 1, false, 8), (2, 2, true, 6), (3, 1, true, 9)] {
            let conv = Conv2dConfig::new([4, 6], [1, 1])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_bias(bias)
                .init(&ad);
            let values: Vec<f32> = (0..2 * 4 * side * side)
                .map(|i| ((i * 29 % 17) as f32 - 8.0) / 5.0)
                .collect();
            let x = || {
                Tensor::<4>::from_data(TensorData::new(values.clone(), [2, 4, side, side]), &ad)
                    .require_grad()
            };
            let (xa, xb) = (x(), x());
            let (ya, yb) = (conv2d(&conv, xa.clone()), conv.forward(xb.clone()));
            assert_eq!(ya.dims(), yb.dims());
            let flat = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            let (ga, gb) = (ya.clone().sum().backward(), yb.clone().sum().backward());
            for (a, b) in [
                (flat(ya), flat(yb)),
                (flat(xa.grad(&ga).unwrap()), flat(xb.grad(&gb).unwrap())),
                (
                    flat(conv.weight.val().grad(&ga).unwrap()),
                    flat(conv.weight.val().grad(&gb).unwrap()),
                ),
            ] {
                for (u, v) in a.iter().zip(&b) {
                    assert!(
                        (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                        "stride {stride}: {u} vs {v}"
                    );
                }
            }
        }
        // Not strided, padded or 3×3: burn's own path (same object, same numbers trivially).
        let conv = Conv2dConfig::new([4, 6], [3, 3])
            .with_stride([2, 2])
            .init(&ad);
        let x = Tensor::<4>::ones([1, 4, 8, 8], &ad);
        assert_eq!(conv2d(&conv, x.clone()).dims(), conv.forward(x).dims());
    }

    #[test]
    fn folded_inference_equals_conv_then_batch_norm() {
        // Running statistics, affine parameters and a convolution bias that are all non-trivial,
        // with stride 1 and 2 (the strided 1×1 shortcut takes the subsampled path).
        let device = Device::flex();
        for (kernel, stride, padding, bias) in [(3, 1, 1, true), (1, 2, 0, false), (3, 2, 1, false)]
        {
            let conv = Conv2dConfig::new([3, 4], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_bias(bias)
                .init(&device);
            let mut bn = BatchNormConfig::new(4).init(&device);
            let t = |v: [f32; 4]| Tensor::<1>::from_floats(v, &device);
            bn.gamma = bn.gamma.map(|_| t([0.5, 1.5, -2.0, 1.0]));
            bn.beta = bn.beta.map(|_| t([0.1, -0.3, 2.0, 0.0]));
            bn.running_mean = burn::module::RunningState::new(t([0.2, -1.0, 0.5, 3.0]));
            bn.running_var = burn::module::RunningState::new(t([0.5, 2.0, 0.1, 4.0]));
            let values: Vec<f32> = (0..2 * 3 * 6 * 6)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 5.0)
                .collect();
            let x = Tensor::<4>::from_data(TensorData::new(values, [2, 3, 6, 6]), &device);
            let folded = conv_bn(&conv, &bn, x.clone());
            let unfused = bn.forward(conv.forward(x));
            assert_eq!(folded.dims(), unfused.dims());
            let (a, b) = (
                folded.into_data().try_to_vec::<f32>().unwrap(),
                unfused.into_data().try_to_vec::<f32>().unwrap(),
            );
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn global_pool_by_hand() {
        let device = Device::flex();
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0], &device)
            .reshape([1, 2, 2, 2]);
        let y: Vec<f32> = global_avg_pool(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y, vec![3.0, 1.0]);
    }
}
