//! MobileNet (V1) for ImageNet, the student of the ResNet-50 → MobileNet pair, as in mdistiller
//! (`imagenet/mobilenetv1.py`): a 3×3 stride-2 stem and 13 depthwise-separable blocks.
//! Taps follow mdistiller: `stage1..4` after blocks 3, 5, 11 and 13 (128, 256, 512, 1,024
//! channels, strides 4, 8, 16, 32); `pre_act` gives them before their last ReLU.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::common::{ConvBn, global_avg_pool};
use crate::features::{Backbone, Collector, Intermediates, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::params::linear_fwd;

/// Depthwise 3×3 (stride) + BN + ReLU, pointwise 1×1 + BN (+ ReLU).
#[derive(Module, Debug)]
pub struct DepthwiseSeparable {
    depthwise: ConvBn,
    pointwise: ConvBn,
}

/// Configuration of MobileNet V1.
#[derive(Config, Debug)]
pub struct MobileNetV1Config {
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

/// (output channels, stride) of the 13 depthwise-separable blocks.
const BLOCKS: [(usize, usize); 13] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
];
/// Taps after blocks (1-based, counting the stem as block 0) 3, 5, 11, 13.
const TAP_AFTER: [usize; 4] = [3, 5, 11, 13];

impl MobileNetV1Config {
    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> MobileNetV1 {
        let mut inp = 32;
        let blocks = BLOCKS
            .iter()
            .map(|&(out, s)| {
                let b = DepthwiseSeparable {
                    depthwise: ConvBn::new(inp, inp, 3, s, 1, inp, rng, device),
                    pointwise: ConvBn::new(inp, out, 1, 1, 0, 1, rng, device),
                };
                inp = out;
                b
            })
            .collect();
        MobileNetV1 {
            stem: ConvBn::new(self.in_channels, 32, 3, 2, 1, 1, rng, device),
            blocks,
            fc: crate::init::linear(1024, self.num_classes, rng, device),
        }
    }
}

/// MobileNet V1 with taps `stem`, `stage1..4`.
#[derive(Module, Debug)]
pub struct MobileNetV1 {
    stem: ConvBn,
    blocks: Vec<DepthwiseSeparable>,
    fc: Linear,
}

impl Backbone for MobileNetV1 {
    fn feature_info(&self) -> Vec<TapInfo> {
        vec![
            TapInfo::backbone("stem", 32, 2),
            TapInfo::backbone("stage1", 128, 4),
            TapInfo::backbone("stage2", 256, 8),
            TapInfo::backbone("stage3", 512, 16),
            TapInfo::backbone("stage4", 1024, 32),
        ]
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let mut x = self.stem.forward_relu(x);
        taps.offer_map(0, &x);
        for (i, b) in self.blocks.iter().enumerate() {
            let pre = b.pointwise.forward(b.depthwise.forward_relu(x));
            x = relu(pre.clone());
            if let Some(t) = TAP_AFTER.iter().position(|&a| a == i + 1) {
                taps.offer_map(t + 1, if taps.pre_act() { &pre } else { &x });
            }
        }
        let embedding = global_avg_pool(x);
        let logits = linear_fwd(&self.fc, embedding.clone());
        taps.finish(embedding, logits)
    }
}
