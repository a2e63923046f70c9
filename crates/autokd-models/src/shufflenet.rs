//! ShuffleNetV1 (groups 3, `ShuffleV1`) and ShuffleNetV2 (size 1×, `ShuffleV2`) for CIFAR as in
//! RepDistiller/mdistiller (`ShuffleNetv1.py`, `ShuffleNetv2.py`): a 1×1 stem of 24 channels and
//! three stages that each halve the resolution.

use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::common::{ConvBn, bn, channel_shuffle, conv, conv_bn, global_avg_pool};
use crate::features::{Backbone, Collector, Intermediates, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::params::linear_fwd;

/// ShuffleNetV1 unit: grouped 1×1, shuffle, depthwise 3×3, grouped 1×1; a stride-2 unit
/// concatenates a 3×3 average-pooled shortcut, a stride-1 unit adds the identity.
#[derive(Module, Debug)]
pub struct ShuffleV1Unit {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    shortcut: Option<AvgPool2d>,
    groups1: usize,
}

impl ShuffleV1Unit {
    fn new(
        in_planes: usize,
        out_planes: usize,
        stride: usize,
        groups: usize,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        let mid = out_planes / 4;
        let g = if in_planes == 24 { 1 } else { groups };
        Self {
            conv1: ConvBn::new(in_planes, mid, 1, 1, 0, g, rng, device),
            conv2: ConvBn::new(mid, mid, 3, stride, 1, mid, rng, device),
            conv3: ConvBn::new(mid, out_planes, 1, 1, 0, groups, rng, device),
            shortcut: (stride == 2).then(|| {
                AvgPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init()
            }),
            groups1: g,
        }
    }

    /// `(relu(pre), pre)`.
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let out = self.conv1.forward_relu(x.clone());
        let out = channel_shuffle(out, self.groups1);
        let out = self.conv2.forward_relu(out);
        let out = self.conv3.forward(out);
        let pre = match &self.shortcut {
            Some(pool) => Tensor::cat(vec![out, pool.forward(x)], 1),
            None => out + x,
        };
        (relu(pre.clone()), pre)
    }
}

/// Configuration of ShuffleNetV1.
#[derive(Config, Debug)]
pub struct ShuffleNetV1Config {
    /// Output channels of the three stages.
    #[config(default = "vec![240, 480, 960]")]
    pub out_planes: Vec<usize>,
    /// Units per stage.
    #[config(default = "vec![4, 8, 4]")]
    pub num_blocks: Vec<usize>,
    /// Groups of the 1×1 convolutions.
    #[config(default = 3)]
    pub groups: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

impl ShuffleNetV1Config {
    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> ShuffleNetV1 {
        let mut inp = 24;
        let layers = self
            .out_planes
            .iter()
            .zip(&self.num_blocks)
            .map(|(&out, &n)| {
                (0..n)
                    .map(|i| {
                        let (stride, cat) = if i == 0 { (2, inp) } else { (1, 0) };
                        let u =
                            ShuffleV1Unit::new(inp, out - cat, stride, self.groups, rng, device);
                        inp = out;
                        u
                    })
                    .collect()
            })
            .collect();
        ShuffleNetV1 {
            stem: ConvBn::new(self.in_channels, 24, 1, 1, 0, 1, rng, device),
            layers,
            linear: crate::init::linear(inp, self.num_classes, rng, device),
            out_planes: self.out_planes.clone(),
        }
    }
}

/// ShuffleNetV1 with taps `stem`, `stage1..3`.
#[derive(Module, Debug)]
pub struct ShuffleNetV1 {
    stem: ConvBn,
    layers: Vec<Vec<ShuffleV1Unit>>,
    linear: Linear,
    out_planes: Vec<usize>,
}

fn stage_taps(stem: usize, stages: &[usize]) -> Vec<TapInfo> {
    let mut taps = vec![TapInfo::backbone("stem", stem, 1)];
    for (i, &c) in stages.iter().enumerate() {
        taps.push(TapInfo::backbone(&format!("stage{}", i + 1), c, 2 << i));
    }
    taps
}

impl Backbone for ShuffleNetV1 {
    fn feature_info(&self) -> Vec<TapInfo> {
        stage_taps(24, &self.out_planes)
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let mut x = self.stem.forward_relu(x);
        taps.offer_map(0, &x);
        for (i, layer) in self.layers.iter().enumerate() {
            x = taps.stage(i + 1, layer, x, |u, x| u.forward(x));
        }
        let embedding = global_avg_pool(x);
        let logits = linear_fwd(&self.linear, embedding.clone());
        taps.finish(embedding, logits)
    }
}

/// ShuffleNetV2 down-sampling unit: two stride-2 branches concatenated, then shuffled.
#[derive(Module, Debug)]
pub struct ShuffleV2Down {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    conv4: ConvBn,
    conv5: ConvBn,
}

/// ShuffleNetV2 basic unit: channel split, one branch through 1×1–dw3×3–1×1, concat, shuffle.
#[derive(Module, Debug)]
pub struct ShuffleV2Basic {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

/// A ShuffleNetV2 unit.
// Variants differ in size; a network holds few of them and builds them once.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ShuffleV2Unit {
    /// Stride 2.
    Down(ShuffleV2Down),
    /// Stride 1.
    Basic(ShuffleV2Basic),
}

impl ShuffleV2Unit {
    fn down(inp: usize, out: usize, rng: &mut InitRng, device: &Device) -> Self {
        let mid = out / 2;
        ShuffleV2Unit::Down(ShuffleV2Down {
            conv1: ConvBn::new(inp, inp, 3, 2, 1, inp, rng, device),
            conv2: ConvBn::new(inp, mid, 1, 1, 0, 1, rng, device),
            conv3: ConvBn::new(inp, mid, 1, 1, 0, 1, rng, device),
            conv4: ConvBn::new(mid, mid, 3, 2, 1, mid, rng, device),
            conv5: ConvBn::new(mid, mid, 1, 1, 0, 1, rng, device),
        })
    }

    fn basic(channels: usize, rng: &mut InitRng, device: &Device) -> Self {
        let c = channels / 2;
        ShuffleV2Unit::Basic(ShuffleV2Basic {
            conv1: ConvBn::new(c, c, 1, 1, 0, 1, rng, device),
            conv2: ConvBn::new(c, c, 3, 1, 1, c, rng, device),
            conv3: ConvBn::new(c, c, 1, 1, 0, 1, rng, device),
        })
    }

    /// `(out, pre)`: the shuffled output, and for basic units the unshuffled concatenation
    /// before the last ReLU (the reference's `preact`).
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        match self {
            ShuffleV2Unit::Down(d) => {
                let left = d.conv2.forward_relu(d.conv1.forward(x.clone()));
                let right = d.conv3.forward_relu(x);
                let right = d.conv5.forward_relu(d.conv4.forward(right));
                let out = channel_shuffle(Tensor::cat(vec![left, right], 1), 2);
                (out.clone(), out)
            }
            ShuffleV2Unit::Basic(b) => {
                let c = x.dims()[1] / 2;
                let x1 = x.clone().narrow(1, 0, c);
                let x2 = x.narrow(1, c, c);
                let out = b.conv1.forward_relu(x2);
                let out = b.conv2.forward(out);
                let pre = b.conv3.forward(out);
                let out = Tensor::cat(vec![x1.clone(), relu(pre.clone())], 1);
                (channel_shuffle(out, 2), Tensor::cat(vec![x1, pre], 1))
            }
        }
    }
}

/// Configuration of ShuffleNetV2.
#[derive(Config, Debug)]
pub struct ShuffleNetV2Config {
    /// Channels of the three stages and of the last 1×1 convolution (size 1×).
    #[config(default = "vec![116, 232, 464, 1024]")]
    pub out_channels: Vec<usize>,
    /// Basic units per stage (after the down-sampling unit).
    #[config(default = "vec![3, 7, 3]")]
    pub num_blocks: Vec<usize>,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

impl ShuffleNetV2Config {
    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> ShuffleNetV2 {
        let mut inp = 24;
        let mut layers = Vec::new();
        for (&out, &n) in self.out_channels.iter().zip(&self.num_blocks) {
            let mut layer = vec![ShuffleV2Unit::down(inp, out, rng, device)];
            layer.extend((0..n).map(|_| ShuffleV2Unit::basic(out, rng, device)));
            layers.push(layer);
            inp = out;
        }
        let last = self.out_channels.get(3).copied().unwrap_or(1024);
        ShuffleNetV2 {
            stem: ConvBn::new(self.in_channels, 24, 1, 1, 0, 1, rng, device),
            layers,
            conv2: conv(inp, last, 1, 1, 0, 1, false, rng, device),
            bn2: bn(last, device),
            linear: crate::init::linear(last, self.num_classes, rng, device),
            stage_channels: self.out_channels.iter().take(3).copied().collect(),
        }
    }
}

/// ShuffleNetV2 with taps `stem`, `stage1..3`.
#[derive(Module, Debug)]
pub struct ShuffleNetV2 {
    stem: ConvBn,
    layers: Vec<Vec<ShuffleV2Unit>>,
    conv2: Conv2d,
    bn2: BatchNorm,
    linear: Linear,
    stage_channels: Vec<usize>,
}

impl Backbone for ShuffleNetV2 {
    fn feature_info(&self) -> Vec<TapInfo> {
        stage_taps(24, &self.stage_channels)
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let mut x = self.stem.forward_relu(x);
        taps.offer_map(0, &x);
        for (i, layer) in self.layers.iter().enumerate() {
            x = taps.stage(i + 1, layer, x, |u, x| u.forward(x));
        }
        let x = relu(conv_bn(&self.conv2, &self.bn2, x));
        let embedding = global_avg_pool(x);
        let logits = linear_fwd(&self.linear, embedding.clone());
        taps.finish(embedding, logits)
    }
}
