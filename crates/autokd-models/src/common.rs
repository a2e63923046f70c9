//! Building blocks shared by the architectures.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;

use crate::params::conv_fwd;
use burn::tensor::activation::relu;

/// A 2-D convolution with square kernel, symmetric padding, groups and optional bias, initialized
/// as PyTorch's `kaiming_normal_(mode='fan_out', nonlinearity='relu')` (the CIFAR zoos' init).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    let fan_out = out_ch * kernel * kernel / groups;
    Conv2dConfig::new([in_ch, out_ch], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_groups(groups)
        .with_bias(bias)
        .with_initializer(burn::nn::Initializer::Normal {
            mean: 0.0,
            std: (2.0 / fan_out as f64).sqrt(),
        })
        .init(device)
}

/// Batch norm with PyTorch's defaults (eps 1e-5, momentum 0.1).
pub(crate) fn bn(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).init(device)
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
        device: &Device,
    ) -> Self {
        Self {
            conv: conv(
                in_ch, out_ch, kernel, stride, padding, groups, false, device,
            ),
            bn: bn(out_ch, device),
        }
    }

    /// `bn(conv(x))`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(conv_fwd(&self.conv, x))
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
    fn global_pool_by_hand() {
        let device = Device::flex();
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0], &device)
            .reshape([1, 2, 2, 2]);
        let y: Vec<f32> = global_avg_pool(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y, vec![3.0, 1.0]);
    }
}
