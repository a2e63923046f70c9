//! Residual networks: the CIFAR ResNets of RepDistiller/mdistiller (`resnet8` … `resnet110`,
//! `resnet8x4`, `resnet32x4`: 3×3 stem, three stages of basic blocks), their CIFAR ResNet-50
//! (`resnetv2.py`: 3×3 stem with 64 channels, four stages of bottlenecks), and torchvision's
//! ImageNet ResNet-18/34/50 (7×7 stride-2 stem, max pool, four stages; stride on the 3×3 conv of
//! the bottleneck, "v1.5").
//!
//! Submodule names follow the PyTorch state-dict keys (`conv1`, `bn1`, `layers[i]` for
//! `layer{i+1}`, `downsample`, `fc`).

use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::common::{ConvBn, bn, conv, conv_bn, global_avg_pool};
use crate::features::{Backbone, Collector, Intermediates, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::params::linear_fwd;

/// The basic block: two 3×3 convolutions and an identity or projection shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) bn2: BatchNorm,
    pub(crate) downsample: Option<ConvBn>,
}

/// The bottleneck block: 1×1, 3×3 (with the stride), 1×1 expanding ×4.
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub(crate) conv1: Conv2d,
    pub(crate) bn1: BatchNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) bn2: BatchNorm,
    pub(crate) conv3: Conv2d,
    pub(crate) bn3: BatchNorm,
    pub(crate) downsample: Option<ConvBn>,
}

/// A residual block of either kind.
// Variants differ in size; a network holds few of them and builds them once.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Block {
    /// Two 3×3 convolutions.
    Basic(BasicBlock),
    /// 1×1–3×3–1×1.
    Bottleneck(Bottleneck),
}

impl Block {
    fn new(
        bottleneck: bool,
        inplanes: usize,
        planes: usize,
        stride: usize,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        Self::dilated(bottleneck, inplanes, planes, stride, 1, rng, device)
    }

    /// A block whose 3×3 convolutions have `dilation` (and as much padding): the bottleneck's
    /// one, as torchvision's; both of a basic block's (torchvision refuses dilated basic
    /// blocks; dilated ResNet-18s of segmentation code dilate both).
    pub(crate) fn dilated(
        bottleneck: bool,
        inplanes: usize,
        planes: usize,
        stride: usize,
        dilation: usize,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        let d = dilation.max(1);
        let dilate = |mut c: Conv2d| {
            c.dilation = [d, d];
            c
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let downsample = (stride != 1 || inplanes != planes * expansion)
            .then(|| ConvBn::new(inplanes, planes * expansion, 1, stride, 0, 1, rng, device));
        if bottleneck {
            Block::Bottleneck(Bottleneck {
                conv1: conv(inplanes, planes, 1, 1, 0, 1, false, rng, device),
                bn1: bn(planes, device),
                conv2: dilate(conv(planes, planes, 3, stride, d, 1, false, rng, device)),
                bn2: bn(planes, device),
                conv3: conv(planes, planes * 4, 1, 1, 0, 1, false, rng, device),
                bn3: bn(planes * 4, device),
                downsample,
            })
        } else {
            Block::Basic(BasicBlock {
                conv1: dilate(conv(inplanes, planes, 3, stride, d, 1, false, rng, device)),
                bn1: bn(planes, device),
                conv2: dilate(conv(planes, planes, 3, 1, d, 1, false, rng, device)),
                bn2: bn(planes, device),
                downsample,
            })
        }
    }

    /// Returns `(relu(out), out)`: the block output and its pre-activation.
    pub(crate) fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (out, shortcut) = match self {
            Block::Basic(b) => {
                let out = relu(conv_bn(&b.conv1, &b.bn1, x.clone()));
                let out = conv_bn(&b.conv2, &b.bn2, out);
                let sc = match &b.downsample {
                    Some(d) => d.forward(x),
                    None => x,
                };
                (out, sc)
            }
            Block::Bottleneck(b) => {
                let out = relu(conv_bn(&b.conv1, &b.bn1, x.clone()));
                let out = relu(conv_bn(&b.conv2, &b.bn2, out));
                let out = conv_bn(&b.conv3, &b.bn3, out);
                let sc = match &b.downsample {
                    Some(d) => d.forward(x),
                    None => x,
                };
                (out, sc)
            }
        };
        let pre = out + shortcut;
        (relu(pre.clone()), pre)
    }
}

/// The stem of a residual network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 3×3 convolution, stride 1 (CIFAR).
    Cifar,
    /// 7×7 convolution, stride 2, then 3×3 max pool, stride 2 (ImageNet).
    ImageNet,
}

/// Configuration of a residual network.
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Registry name, used in messages and reports.
    pub name: String,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
    /// The stem.
    pub stem: Stem,
    /// Channels of the stem.
    pub stem_channels: usize,
    /// Planes of each stage (output channels are ×4 for bottlenecks).
    pub planes: Vec<usize>,
    /// Blocks per stage.
    pub blocks: Vec<usize>,
    /// Bottleneck blocks instead of basic blocks.
    pub bottleneck: bool,
}

impl ResNetConfig {
    /// RepDistiller's CIFAR ResNet of `depth = 6n + 2` with filters `[f0, f1, f2, f3]`.
    pub fn cifar(
        name: &str,
        depth: usize,
        filters: [usize; 4],
        in_channels: usize,
        num_classes: usize,
    ) -> Self {
        let n = (depth - 2) / 6;
        Self::new(
            name.into(),
            in_channels,
            num_classes,
            Stem::Cifar,
            filters[0],
            filters[1..].to_vec(),
            vec![n; 3],
            false,
        )
    }

    /// RepDistiller's CIFAR ResNet-50 (`resnetv2.ResNet50`).
    pub fn cifar_resnet50(in_channels: usize, num_classes: usize) -> Self {
        Self::new(
            "resnet50_cifar".into(),
            in_channels,
            num_classes,
            Stem::Cifar,
            64,
            vec![64, 128, 256, 512],
            vec![3, 4, 6, 3],
            true,
        )
    }

    /// torchvision's ImageNet ResNet with `blocks` per stage.
    pub fn imagenet(
        name: &str,
        blocks: [usize; 4],
        bottleneck: bool,
        in_channels: usize,
        num_classes: usize,
    ) -> Self {
        Self::new(
            name.into(),
            in_channels,
            num_classes,
            Stem::ImageNet,
            64,
            vec![64, 128, 256, 512],
            blocks.to_vec(),
            bottleneck,
        )
    }

    fn expansion(&self) -> usize {
        if self.bottleneck { 4 } else { 1 }
    }

    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> ResNet {
        let (k, s, p) = match self.stem {
            Stem::Cifar => (3, 1, 1),
            Stem::ImageNet => (7, 2, 3),
        };
        let mut inplanes = self.stem_channels;
        let mut layers = Vec::new();
        for (i, (&planes, &n)) in self.planes.iter().zip(&self.blocks).enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let mut stage = Vec::with_capacity(n);
            for j in 0..n {
                stage.push(Block::new(
                    self.bottleneck,
                    inplanes,
                    planes,
                    if j == 0 { stride } else { 1 },
                    rng,
                    device,
                ));
                inplanes = planes * self.expansion();
            }
            layers.push(stage);
        }
        ResNet {
            conv1: conv(
                self.in_channels,
                self.stem_channels,
                k,
                s,
                p,
                1,
                false,
                rng,
                device,
            ),
            bn1: bn(self.stem_channels, device),
            maxpool: (self.stem == Stem::ImageNet).then(|| {
                MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init()
            }),
            layers,
            fc: crate::init::linear(inplanes, self.num_classes, rng, device),
            name: self.name.clone(),
            stem_stride: match self.stem {
                Stem::Cifar => 1,
                Stem::ImageNet => 2,
            },
            stage_channels: self.planes.iter().map(|p| p * self.expansion()).collect(),
            stem_channels: self.stem_channels,
        }
    }
}

/// A residual network with taps `stem`, `stage1` … `stageN`.
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: Option<MaxPool2d>,
    layers: Vec<Vec<Block>>,
    fc: Linear,
    name: String,
    stem_stride: usize,
    stage_channels: Vec<usize>,
    stem_channels: usize,
}

impl Backbone for ResNet {
    fn feature_info(&self) -> Vec<TapInfo> {
        let mut taps = vec![TapInfo::backbone(
            "stem",
            self.stem_channels,
            self.stem_stride,
        )];
        let mut r = self.stem_stride * if self.maxpool.is_some() { 2 } else { 1 };
        for (i, &c) in self.stage_channels.iter().enumerate() {
            if i > 0 {
                r *= 2;
            }
            taps.push(TapInfo::backbone(&format!("stage{}", i + 1), c, r));
        }
        taps
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let mut x = relu(conv_bn(&self.conv1, &self.bn1, x)); // [B, C0, H/r, W/r]
        taps.offer_map(0, &x);
        if let Some(pool) = &self.maxpool {
            x = pool.forward(x);
        }
        for (i, stage) in self.layers.iter().enumerate() {
            x = taps.stage(i + 1, stage, x, |u, x| u.forward(x));
        }
        let embedding = global_avg_pool(x); // [B, C]
        let logits = linear_fwd(&self.fc, embedding.clone());
        taps.finish(embedding, logits)
    }
}
