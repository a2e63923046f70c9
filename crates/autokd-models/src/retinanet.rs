//! RetinaNet as torchvision's `retinanet_resnet50_fpn` (v1) defines it, on ResNet-18/50/101:
//! - the backbone is an ImageNet ResNet ([`FrozenBnResNet`]) with frozen batch norms
//!   (torchvision's `FrozenBatchNorm2d`: running statistics in training too, affine terms not
//!   trained) and the stem and stage 1 frozen (`trainable_layers = 3`), without its classifier;
//! - the FPN on stages 2–4 (C3–C5): 1×1 lateral convolutions to 256 channels, top-down
//!   nearest upsampling and addition, 3×3 output convolutions (P3–P5); P6 a 3×3 stride-2
//!   convolution on P5 and P7 one on `relu(P6)` (torchvision's `LastLevelP6P7(256, 256)`; mmdet
//!   takes P6 from C5 instead, `add_extra_convs = 'on_input'`: [`RetinaNetConfig::p6_from_c5`]);
//! - the head, shared by the levels: per branch four 3×3 convolutions + ReLU, then a 3×3
//!   convolution to `A·K` class logits (bias `−ln((1 − 0.01)/0.01)`, the focal loss' prior) or
//!   `A·4` box deltas; weights `N(0, 0.01²)`. With [`RetinaNetConfig::head_norm`]
//!   (`retinanet_resnet18_fpn_gn`, `retinanet_resnet50_fpn_gn`) each of the four convolutions is
//!   followed by `GroupNorm(32, 256)` and has no bias, as in `retinanet_resnet50_fpn_v2`'s head
//!   (its other changes, P6 on C5 and GIoU, are not taken); parameter counts and state-dict keys
//!   checked against torchvision 0.29 (ResNet-18 at 91 classes 21,040,919, ResNet-50
//!   34,017,047).
//!
//! Outputs: the class logits of every anchor, `Prediction::Anchors` `[B, ΣA, K]` (levels P3 →
//! P7, positions row by row, anchors in the order of `autokd_train::detection::anchors`; its
//! `rows()` are `[B·ΣA, K]`, image-major) and the box deltas in
//! `Intermediates::box_deltas` `[B, ΣA, 4]`. Taps: `backbone.stage1` … `backbone.stage4` (C2–C5,
//! strides 4–32) and the FPN group `fpn.p3` … `fpn.p7` (strides 8–128).
//!
//! Submodule names follow torchvision's state-dict keys (`backbone.body.conv1`,
//! `backbone.fpn.inner_blocks`, `head.classification_head.cls_logits`, …; `layers[i]` for
//! `layer{i+1}` and `conv[i]` for `conv.{i}.0`).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::common::{bn, conv, conv_bn, global_avg_pool};
use crate::features::{Backbone, Collector, Intermediates, TapInfo, TapRequest};
use crate::init::{ConvInit, ConvShape, InitRng};
use crate::resnet::Block;

/// A 3×3 (or 1×1) convolution with a bias, initialized as `init` says.
fn head_conv(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    init: ConvInit,
    rng: &mut InitRng,
    device: &Device,
) -> Conv2d {
    crate::init::conv2d(
        ConvShape {
            in_ch,
            out_ch,
            kernel,
            stride,
            padding: kernel / 2,
            groups: 1,
            bias: true,
        },
        init,
        rng,
        device,
    )
}

/// An ImageNet ResNet body whose batch norms are frozen (torchvision's detection backbones).
/// Its name tells [`crate::trainable_params`] that the batch norms' affine terms are buffers,
/// as `FrozenBatchNorm2d`'s are.
#[derive(Module, Debug)]
pub struct FrozenBnResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: MaxPool2d,
    layers: Vec<Vec<Block>>,
}

impl FrozenBnResNet {
    /// `[C2, C3, C4, C5]` of `x` (strides 4, 8, 16, 32), offering them as taps 0–3.
    fn forward(&self, x: Tensor<4>, taps: &mut Collector<'_>) -> Vec<Tensor<4>> {
        let x = relu(conv_bn(&self.conv1, &self.bn1, x)); // [B, 64, H/2, W/2]
        let mut x = self.maxpool.forward(x);
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, stage) in self.layers.iter().enumerate() {
            x = taps.stage(i, stage, x, |u, x| u.forward(x));
            out.push(x.clone());
        }
        out
    }
}

/// The feature pyramid: lateral and output convolutions, and the extra levels.
#[derive(Module, Debug)]
pub struct Fpn {
    inner_blocks: Vec<Conv2d>,
    layer_blocks: Vec<Conv2d>,
    extra_blocks: LastLevelP6P7,
}

/// P6 and P7.
#[derive(Module, Debug)]
pub struct LastLevelP6P7 {
    p6: Conv2d,
    p7: Conv2d,
}

/// `x` resized to `size` by nearest-neighbour sampling, PyTorch's `mode="nearest"` (source
/// index `⌊i · in / out⌋`).
pub fn upsample_nearest(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
    )
}

impl Fpn {
    /// P3–P7 of `[C3, C4, C5]`.
    fn forward(&self, c: &[Tensor<4>], p6_from_c5: bool) -> Vec<Tensor<4>> {
        let n = c.len();
        let mut last = crate::params::conv_fwd(&self.inner_blocks[n - 1], c[n - 1].clone());
        let mut out = vec![crate::params::conv_fwd(
            &self.layer_blocks[n - 1],
            last.clone(),
        )];
        for i in (0..n - 1).rev() {
            let lateral = crate::params::conv_fwd(&self.inner_blocks[i], c[i].clone());
            let [_, _, h, w] = lateral.dims();
            last = lateral + upsample_nearest(last, [h, w]);
            out.insert(
                0,
                crate::params::conv_fwd(&self.layer_blocks[i], last.clone()),
            );
        }
        let source = if p6_from_c5 {
            c[n - 1].clone()
        } else {
            out[n - 1].clone()
        };
        let p6 = crate::params::conv_fwd(&self.extra_blocks.p6, source);
        let p7 = crate::params::conv_fwd(&self.extra_blocks.p7, relu(p6.clone()));
        out.push(p6);
        out.push(p7);
        out
    }
}

/// One branch of the head: four 3×3 convolutions + ReLU (with a group norm before each ReLU
/// in the GroupNorm head), then the output convolution.
#[derive(Module, Debug)]
pub struct HeadBranch {
    conv: Vec<Conv2d>,
    /// Empty, or one `GroupNorm(32, C)` per convolution (torchvision's
    /// `retinanet_resnet50_fpn_v2` head: `conv.{i}.1`).
    norm: Vec<GroupNorm>,
    out: Conv2d,
}

impl HeadBranch {
    /// `[B, A·n, H, W]` → `[B, H·W·A, n]`.
    fn forward(&self, x: Tensor<4>, per_anchor: usize) -> Tensor<3> {
        let mut x = x;
        for (i, c) in self.conv.iter().enumerate() {
            x = crate::params::conv_fwd(c, x);
            if let Some(n) = self.norm.get(i) {
                x = n.forward(x);
            }
            x = relu(x);
        }
        let y = crate::params::conv_fwd(&self.out, x); // [B, A·n, H, W]
        let [b, an, h, w] = y.dims();
        y.reshape([b, an / per_anchor, per_anchor, h, w])
            .permute([0, 3, 4, 1, 2]) // [B, H, W, A, n]
            .reshape([b, h * w * (an / per_anchor), per_anchor])
    }
}

/// The classification and regression branches.
#[derive(Module, Debug)]
pub struct RetinaHead {
    classification_head: HeadBranch,
    regression_head: HeadBranch,
}

/// The ResNet and the FPN.
#[derive(Module, Debug)]
pub struct BackboneWithFpn {
    body: FrozenBnResNet,
    fpn: Fpn,
}

/// Configuration of a RetinaNet.
#[derive(Config, Debug)]
pub struct RetinaNetConfig {
    /// Registry name.
    pub name: String,
    /// Input channels.
    pub in_channels: usize,
    /// Object classes (no background: the focal loss is per class).
    pub num_classes: usize,
    /// Blocks per ResNet stage.
    pub blocks: Vec<usize>,
    /// Bottleneck blocks (ResNet-50/101).
    pub bottleneck: bool,
    /// Anchors per position (3 scales × 3 ratios).
    #[config(default = 9)]
    pub anchors: usize,
    /// FPN and head channels.
    #[config(default = 256)]
    pub channels: usize,
    /// P6 from C5 (mmdet) instead of P5 (torchvision).
    #[config(default = false)]
    pub p6_from_c5: bool,
    /// Frozen ResNet parts: 0 none, 1 the stem, 2 the stem and stage 1 (torchvision's default
    /// with pretrained backbones), … 5 all.
    #[config(default = 2)]
    pub frozen_stages: usize,
    /// Base channels of the ResNet's four stages (narrow variants: tests).
    #[config(default = "vec![64, 128, 256, 512]")]
    pub planes: Vec<usize>,
    /// Channels of the ResNet's stem.
    #[config(default = 64)]
    pub stem_channels: usize,
    /// The head's four convolutions per branch are followed by `GroupNorm(32, C)` and have no
    /// bias, as in torchvision's `retinanet_resnet50_fpn_v2` and mmdet's GN heads (FCOS,
    /// ATSS): normalized, the signal through the `N(0, 0.01²)` convolutions does not vanish, so
    /// a short schedule leaves the focal loss' plateau.
    #[config(default = false)]
    pub head_norm: bool,
}

impl RetinaNetConfig {
    /// torchvision's `retinanet_resnet50_fpn` with `classes` classes.
    pub fn resnet50(classes: usize) -> Self {
        Self::new(
            "retinanet_resnet50_fpn".into(),
            3,
            classes,
            vec![3, 4, 6, 3],
            true,
        )
    }

    /// The same on ResNet-18 (`_resnet_fpn_extractor(resnet18(), 3, [2, 3, 4], LastLevelP6P7(256, 256))`).
    pub fn resnet18(classes: usize) -> Self {
        Self::new(
            "retinanet_resnet18_fpn".into(),
            3,
            classes,
            vec![2, 2, 2, 2],
            false,
        )
    }

    /// The same with the GroupNorm head ([`RetinaNetConfig::head_norm`]), named `…_gn`.
    pub fn gn_head(self) -> Self {
        let name = format!("{}_gn", self.name);
        Self {
            name,
            head_norm: true,
            ..self
        }
    }

    /// The same on ResNet-101.
    pub fn resnet101(classes: usize) -> Self {
        Self::new(
            "retinanet_resnet101_fpn".into(),
            3,
            classes,
            vec![3, 4, 23, 3],
            true,
        )
    }

    /// Builds the network: the ResNet with PyTorch's ResNet init, the FPN with
    /// `kaiming_uniform_(a=1)`, the head with `N(0, 0.01²)`.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> RetinaNet {
        let exp = if self.bottleneck { 4 } else { 1 };
        let planes = &self.planes;
        let mut inplanes = self.stem_channels;
        let mut layers = Vec::new();
        for (i, (&p, &n)) in planes.iter().zip(&self.blocks).enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let stage: Vec<Block> = (0..n)
                .map(|j| {
                    let b = Block::dilated(
                        self.bottleneck,
                        inplanes,
                        p,
                        if j == 0 { stride } else { 1 },
                        1,
                        rng,
                        device,
                    );
                    inplanes = p * exp;
                    b
                })
                .collect();
            layers.push(stage);
        }
        let mut body = FrozenBnResNet {
            conv1: conv(
                self.in_channels,
                self.stem_channels,
                7,
                2,
                3,
                1,
                false,
                rng,
                device,
            ),
            bn1: bn(self.stem_channels, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layers,
        };
        body = freeze(body, self.frozen_stages);
        let c = self.channels;
        let stage_channels: Vec<usize> = planes.iter().map(|p| p * exp).collect();
        let kaiming = ConvInit::KaimingUniformUnit;
        let inner_blocks = stage_channels[1..]
            .iter()
            .map(|&ci| head_conv(ci, c, 1, 1, kaiming, rng, device))
            .collect();
        let layer_blocks = (0..3)
            .map(|_| head_conv(c, c, 3, 1, kaiming, rng, device))
            .collect();
        let p6_in = if self.p6_from_c5 {
            stage_channels[3]
        } else {
            c
        };
        let extra_blocks = LastLevelP6P7 {
            p6: head_conv(p6_in, c, 3, 2, kaiming, rng, device),
            p7: head_conv(c, c, 3, 2, kaiming, rng, device),
        };
        let normal = ConvInit::Normal(0.01);
        let head_norm = self.head_norm;
        let groups = if c.is_multiple_of(32) { 32 } else { c };
        let branch = |out: usize, rng: &mut InitRng| HeadBranch {
            conv: (0..4)
                .map(|_| {
                    let mut conv = head_conv(c, c, 3, 1, normal, rng, device);
                    if head_norm {
                        conv.bias = None;
                    }
                    conv
                })
                .collect(),
            norm: if head_norm {
                (0..4)
                    .map(|_| GroupNormConfig::new(groups, c).init(device))
                    .collect()
            } else {
                Vec::new()
            },
            out: head_conv(c, out, 3, 1, normal, rng, device),
        };
        let mut classification_head = branch(self.anchors * self.num_classes, rng);
        // The focal loss' prior: every anchor starts at probability 0.01 of each class.
        let prior = -((1.0 - 0.01f32) / 0.01).ln();
        classification_head.out.bias = Some(burn::module::Param::from_tensor(Tensor::full(
            [self.anchors * self.num_classes],
            prior,
            device,
        )));
        let regression_head = branch(self.anchors * 4, rng);
        RetinaNet {
            backbone: BackboneWithFpn {
                body,
                fpn: Fpn {
                    inner_blocks,
                    layer_blocks,
                    extra_blocks,
                },
            },
            head: RetinaHead {
                classification_head,
                regression_head,
            },
            name: self.name.clone(),
            stage_channels,
            channels: c,
            num_classes: self.num_classes,
            anchors: self.anchors,
            p6_from_c5: self.p6_from_c5,
        }
    }
}

/// Freezes every batch norm of `body` and the parameters of its first `stages` parts (the stem,
/// then stages 1 …).
fn freeze(body: FrozenBnResNet, stages: usize) -> FrozenBnResNet {
    let freeze_bns = |b: Block| match b {
        Block::Basic(mut b) => {
            b.bn1 = b.bn1.freeze();
            b.bn2 = b.bn2.freeze();
            b.downsample = b.downsample.map(|mut d| {
                d.bn = d.bn.freeze();
                d
            });
            Block::Basic(b)
        }
        Block::Bottleneck(mut b) => {
            b.bn1 = b.bn1.freeze();
            b.bn2 = b.bn2.freeze();
            b.bn3 = b.bn3.freeze();
            b.downsample = b.downsample.map(|mut d| {
                d.bn = d.bn.freeze();
                d
            });
            Block::Bottleneck(b)
        }
    };
    let FrozenBnResNet {
        conv1,
        bn1,
        maxpool,
        layers,
    } = body;
    let layers = layers
        .into_iter()
        .enumerate()
        .map(|(i, stage)| {
            let stage: Vec<Block> = stage.into_iter().map(freeze_bns).collect();
            if i + 1 < stages {
                stage.into_iter().map(Module::freeze).collect()
            } else {
                stage
            }
        })
        .collect();
    FrozenBnResNet {
        conv1: if stages >= 1 { conv1.freeze() } else { conv1 },
        bn1: bn1.freeze(),
        maxpool,
        layers,
    }
}

/// RetinaNet with the features contract.
#[derive(Module, Debug)]
pub struct RetinaNet {
    backbone: BackboneWithFpn,
    head: RetinaHead,
    name: String,
    stage_channels: Vec<usize>,
    channels: usize,
    num_classes: usize,
    anchors: usize,
    p6_from_c5: bool,
}

impl RetinaNet {
    /// Anchors per position.
    pub fn anchors_per_position(&self) -> usize {
        self.anchors
    }

    /// Object classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
}

impl Backbone for RetinaNet {
    fn feature_info(&self) -> Vec<TapInfo> {
        let mut taps: Vec<TapInfo> = self
            .stage_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| TapInfo::backbone(&format!("stage{}", i + 1), c, 4 << i))
            .collect();
        for (k, stride) in [(3, 8), (4, 16), (5, 32), (6, 64), (7, 128)] {
            taps.push(TapInfo::map(&format!("fpn.p{k}"), self.channels, stride));
        }
        taps
    }

    /// # Shapes
    /// - `x`: `[B, C, H, W]`
    /// - logits: `Prediction::Anchors` `[B, ΣA, K]`; `box_deltas`: `[B, ΣA, 4]`, with `ΣA = A · Σ_l ⌈H/s_l⌉⌈W/s_l⌉`
    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let c = self.backbone.body.forward(x, &mut taps); // C2..C5
        let embedding = global_avg_pool(c[3].clone());
        let p = self.backbone.fpn.forward(&c[1..], self.p6_from_c5);
        let mut logits = Vec::with_capacity(p.len());
        let mut deltas = Vec::with_capacity(p.len());
        for (l, level) in p.iter().enumerate() {
            taps.offer_map(4 + l, level);
            logits.push(
                self.head
                    .classification_head
                    .forward(level.clone(), self.num_classes),
            );
            deltas.push(self.head.regression_head.forward(level.clone(), 4));
        }
        taps.finish_anchors(embedding, Tensor::cat(logits, 1), Tensor::cat(deltas, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::trainable_params;

    fn requiring_grad<M: Module>(m: &M) -> usize {
        struct V(usize);
        impl burn::module::ModuleVisitor for V {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                if p.is_require_grad() {
                    self.0 += p.lazy_shape().num_elements();
                }
            }
        }
        let mut v = V(0);
        m.visit(&mut v);
        v.0
    }

    /// torchvision's counts (`sum(p.numel() for p in m.parameters())`, and of those with
    /// `requires_grad`), from `RetinaNet(_resnet_fpn_extractor(resnetX(norm_layer=
    /// FrozenBatchNorm2d), 3, [2, 3, 4], LastLevelP6P7(256, 256)), K)` in torchvision 0.29:
    /// ResNet-50 at 91 classes 34,014,999 (trainable 33,792,599), ResNet-18 at 91 classes
    /// 21,038,871 (20,882,007) and at 11 19,379,271, ResNet-101 at 91 classes 52,954,903. With
    /// trainable batch norms (`retinanet_resnet50_fpn(weights=None, weights_backbone=None)`):
    /// 34,068,119, the 53,120 affine terms of ResNet-50's 26,560 batch-norm channels more.
    #[test]
    fn parameter_counts_match_torchvision() {
        // On an autodiff device, where parameters carry their `require_grad`.
        let device = Device::flex().autodiff();
        let mut rng = InitRng::new(0);
        let r50 = RetinaNetConfig::resnet50(91).init(&mut rng, &device);
        assert_eq!(trainable_params(&r50), 34_014_999);
        assert_eq!(requiring_grad(&r50), 33_792_599);
        let r18 = RetinaNetConfig::resnet18(91).init(&mut rng, &device);
        assert_eq!(trainable_params(&r18), 21_038_871);
        assert_eq!(requiring_grad(&r18), 20_882_007);
        let r18 = RetinaNetConfig::resnet18(11).init(&mut rng, &device);
        assert_eq!(trainable_params(&r18), 19_379_271);
        let r101 = RetinaNetConfig::resnet101(91).init(&mut rng, &device);
        assert_eq!(trainable_params(&r101), 52_954_903);
        // mmdet's P6 on C5 (2,048 channels) instead of P5 (256): 1,792 · 256 · 9 more.
        let c5 = RetinaNetConfig::resnet50(91)
            .with_p6_from_c5(true)
            .init(&mut rng, &device);
        assert_eq!(trainable_params(&c5), 34_014_999 + 1792 * 256 * 9);
    }

    /// A 64×48 input: taps at strides 4–32 and P3–P7 at 8–128 (⌈·⌉ sizes 8×6, 4×3, 2×2, 1×1,
    /// 1×1), 9 anchors per position: ΣA = 9 · (48 + 12 + 4 + 1 + 1) = 594 rows per image; a fresh
    /// head scores every anchor-class near the prior 0.01 and predicts deltas near 0.
    #[test]
    fn shapes_taps_and_the_prior() {
        let device = Device::flex();
        let m = RetinaNetConfig::resnet18(3).init(&mut InitRng::new(1), &device);
        let info = m.feature_info();
        let names: Vec<&str> = info.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "backbone.stage1",
                "backbone.stage2",
                "backbone.stage3",
                "backbone.stage4",
                "fpn.p3",
                "fpn.p4",
                "fpn.p5",
                "fpn.p6",
                "fpn.p7"
            ]
        );
        let x = crate::init::InitRng::new(2).normal_values(2 * 3 * 64 * 48, 1.0);
        let x = Tensor::<4>::from_data(TensorData::new(x, [2, 3, 64, 48]), &device);
        let out = m.forward_intermediates(x, &TapRequest::all(&info));
        let sizes = [
            (16, 12),
            (8, 6),
            (4, 3),
            (2, 2),
            (8, 6),
            (4, 3),
            (2, 2),
            (1, 1),
            (1, 1),
        ];
        for ((tap, f), (h, w)) in info.iter().zip(&out.features).zip(sizes) {
            assert_eq!(f.dims(), vec![2, tap.channels, h, w], "{}", tap.name);
        }
        assert_eq!(out.logits.dims(), vec![2, 594, 3]);
        let deltas = out.box_deltas.unwrap();
        assert_eq!(deltas.dims(), [2, 594, 4]);
        let p = burn::tensor::activation::sigmoid(out.logits.rows());
        let mean = p.mean().into_scalar::<f32>();
        assert!((mean - 0.01).abs() < 0.005, "{mean}");
        let d = deltas.abs().max().into_scalar::<f32>();
        assert!(d < 0.5, "{d}");
    }

    /// The row layout: row `b·ΣA + i` is image `b`'s anchor `i`, levels in turn, positions row
    /// by row, the anchors of a position together. A logit map with one hot position shows where
    /// it lands.
    #[test]
    fn head_rows_follow_the_anchor_order() {
        let device = Device::flex();
        let branch = HeadBranch {
            conv: Vec::new(),
            norm: Vec::new(),
            out: head_conv(
                2,
                2 * 3,
                1,
                1,
                ConvInit::Normal(0.0),
                &mut InitRng::new(0),
                &device,
            ),
        };
        // Identity-free 1×1 conv with zero weights: the output is the bias; give channel
        // (anchor 1, class 2) = index 1·3 + 2 = 5 the value 7.
        let mut bias = vec![0.0f32; 6];
        bias[5] = 7.0;
        let mut branch = branch;
        branch.out.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [6]),
            &device,
        )));
        let rows = branch.forward(Tensor::zeros([1, 2, 2, 3], &device), 3); // [1, 2·3·2, 3]
        assert_eq!(rows.dims(), [1, 12, 3]);
        let v = rows.into_data().try_to_vec::<f32>().unwrap();
        // Every position's anchor 1 (rows 1, 3, 5, …) has class 2 at 7.
        for r in 0..12 {
            assert_eq!(v[r * 3 + 2], if r % 2 == 1 { 7.0 } else { 0.0 }, "row {r}");
        }
    }

    /// PyTorch's nearest: `F.interpolate(arange(3), size=5, mode="nearest")` is `[0, 0, 1, 1, 2]`.
    #[test]
    fn nearest_upsampling_matches_pytorch() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0], [1, 1, 1, 3]),
            &device,
        );
        let y = upsample_nearest(x, [1, 5])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(y, vec![0.0, 0.0, 1.0, 1.0, 2.0]);
    }

    /// Frozen batch norms use their running statistics and keep them on a training device;
    /// the frozen stem gets no gradient, stage 2 does.
    #[test]
    fn frozen_parts_stay_frozen() {
        let device = Device::flex().autodiff();
        let m = RetinaNetConfig::resnet18(2).init(&mut InitRng::new(3), &device);
        let before = m.backbone.body.bn1.running_mean.value_sync().into_data();
        let x = Tensor::<4>::ones([1, 3, 32, 32], &device);
        let out = m.forward_intermediates(x, &TapRequest::none());
        let loss = out.logits.rows().sum() + out.box_deltas.unwrap().sum();
        let grads = loss.backward();
        let after = m.backbone.body.bn1.running_mean.value_sync().into_data();
        assert_eq!(before, after);
        assert!(m.backbone.body.conv1.weight.grad(&grads).is_none());
        let Block::Basic(b) = &m.backbone.body.layers[1][0] else {
            panic!("basic blocks")
        };
        assert!(b.conv1.weight.grad(&grads).is_some());
        assert!(b.bn1.gamma.grad(&grads).is_none());
    }
}
