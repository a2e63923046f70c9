//! MobileNetV2 for CIFAR as in RepDistiller/mdistiller (`mobilenetv2.py`, `mobile_half`:
//! expansion 6, width 0.5). It differs from torchvision's: every inverted residual has the 1×1
//! expansion (also for expansion 1), the second group has stride 1, and the last 1×1
//! convolution keeps 1,280 channels at width 0.5.

use burn::nn::Linear;
use burn::prelude::*;

use crate::common::{ConvBn, global_avg_pool};
use crate::features::{Backbone, Collector, Intermediates, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::params::linear_fwd;

/// Inverted residual: 1×1 expand, 3×3 depthwise (stride), 1×1 linear projection.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    expand: ConvBn,
    depthwise: ConvBn,
    project: ConvBn,
    use_residual: bool,
}

impl InvertedResidual {
    fn new(
        inp: usize,
        oup: usize,
        stride: usize,
        expand: usize,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        let hidden = inp * expand;
        Self {
            expand: ConvBn::new(inp, hidden, 1, 1, 0, 1, rng, device),
            depthwise: ConvBn::new(hidden, hidden, 3, stride, 1, hidden, rng, device),
            project: ConvBn::new(hidden, oup, 1, 1, 0, 1, rng, device),
            use_residual: stride == 1 && inp == oup,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.expand.forward_relu(x.clone());
        let out = self.depthwise.forward_relu(out);
        let out = self.project.forward(out);
        if self.use_residual { x + out } else { out }
    }
}

/// Configuration of the CIFAR MobileNetV2.
#[derive(Config, Debug)]
pub struct MobileNetV2Config {
    /// Expansion ratio `T` of the inverted residuals.
    #[config(default = 6)]
    pub expansion: usize,
    /// Width multiplier.
    #[config(default = 0.5)]
    pub width_mult: f64,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

impl MobileNetV2Config {
    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> MobileNetV2 {
        let t = self.expansion;
        // (expansion, channels, repeats, stride) of the seven groups.
        let setting = [
            (1, 16, 1, 1),
            (t, 24, 2, 1),
            (t, 32, 3, 2),
            (t, 64, 4, 2),
            (t, 96, 3, 1),
            (t, 160, 3, 2),
            (t, 320, 1, 1),
        ];
        let w = self.width_mult;
        let mut inp = (32.0 * w) as usize;
        let conv1 = ConvBn::new(self.in_channels, inp, 3, 2, 1, 1, rng, device);
        let mut blocks = Vec::new();
        let mut channels = vec![inp];
        for (e, c, n, s) in setting {
            let oup = (c as f64 * w) as usize;
            let group = (0..n)
                .map(|i| {
                    let b =
                        InvertedResidual::new(inp, oup, if i == 0 { s } else { 1 }, e, rng, device);
                    inp = oup;
                    b
                })
                .collect();
            blocks.push(group);
            channels.push(oup);
        }
        let last = if w > 1.0 { (1280.0 * w) as usize } else { 1280 };
        MobileNetV2 {
            conv1,
            blocks,
            conv2: ConvBn::new(inp, last, 1, 1, 0, 1, rng, device),
            classifier: crate::init::linear(last, self.num_classes, rng, device),
            // Taps after groups 1, 2, 4, 6 (RepDistiller's f1..f4).
            tap_channels: vec![
                channels[0],
                channels[2],
                channels[3],
                channels[5],
                channels[7],
            ],
        }
    }
}

/// The CIFAR MobileNetV2 with taps `stem`, `stage1..4`.
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    conv1: ConvBn,
    blocks: Vec<Vec<InvertedResidual>>,
    conv2: ConvBn,
    classifier: Linear,
    tap_channels: Vec<usize>,
}

/// Group index after which each stage tap is taken.
const TAP_AFTER: [usize; 4] = [1, 2, 4, 6];

impl Backbone for MobileNetV2 {
    fn feature_info(&self) -> Vec<TapInfo> {
        let c = &self.tap_channels;
        vec![
            TapInfo::backbone("stem", c[0], 2),
            TapInfo::backbone("stage1", c[1], 2),
            TapInfo::backbone("stage2", c[2], 4),
            TapInfo::backbone("stage3", c[3], 8),
            TapInfo::backbone("stage4", c[4], 16),
        ]
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let mut x = self.conv1.forward_relu(x);
        taps.offer_map(0, &x);
        for (g, group) in self.blocks.iter().enumerate() {
            for block in group {
                x = block.forward(x);
            }
            if let Some(t) = TAP_AFTER.iter().position(|&a| a == g) {
                taps.offer_map(t + 1, &x);
            }
        }
        let embedding = global_avg_pool(self.conv2.forward_relu(x));
        let logits = linear_fwd(&self.classifier, embedding.clone());
        taps.finish(embedding, logits)
    }
}
