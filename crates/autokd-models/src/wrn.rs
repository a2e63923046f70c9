//! Wide residual networks for CIFAR as in RepDistiller/mdistiller (`wrn.py`): pre-activation
//! basic blocks, `depth = 6n + 4`, widths `[16, 16k, 32k, 64k]`, no dropout.
//!
//! Taps follow RepDistiller: `stem` is the first convolution, `stage1..3` the raw outputs of the
//! three groups (before the next batch norm); with `pre_act` they pass through that next batch
//! norm (`block2.layer[0].bn1`, `block3.layer[0].bn1`, the final `bn1`), as RepDistiller's
//! `preact=True` does.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::common::{batch_norm, bn, conv, conv_bn, global_avg_pool};
use crate::features::{Backbone, Collector, Intermediates, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::params::{conv_fwd, linear_fwd};

/// A pre-activation basic block.
#[derive(Module, Debug)]
pub struct WideBlock {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn new(
        in_planes: usize,
        out_planes: usize,
        stride: usize,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        Self {
            bn1: bn(in_planes, device),
            conv1: conv(in_planes, out_planes, 3, stride, 1, 1, false, rng, device),
            bn2: bn(out_planes, device),
            conv2: conv(out_planes, out_planes, 3, 1, 1, 1, false, rng, device),
            conv_shortcut: (in_planes != out_planes)
                .then(|| conv(in_planes, out_planes, 1, stride, 0, 1, false, rng, device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let act = relu(batch_norm(&self.bn1, x.clone()));
        let out = relu(conv_bn(&self.conv1, &self.bn2, act.clone()));
        let out = conv_fwd(&self.conv2, out);
        match &self.conv_shortcut {
            // Unequal in/out: the shortcut takes the activated input (as the reference does).
            Some(sc) => conv_fwd(sc, act) + out,
            None => x + out,
        }
    }
}

/// Configuration of a wide residual network.
#[derive(Config, Debug)]
pub struct WideResNetConfig {
    /// Registry name.
    pub name: String,
    /// Depth `6n + 4`.
    pub depth: usize,
    /// Widening factor `k`.
    pub widen_factor: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

impl WideResNetConfig {
    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> WideResNet {
        let k = self.widen_factor;
        let ch = [16, 16 * k, 32 * k, 64 * k];
        let n = (self.depth - 4) / 6;
        let groups = (0..3)
            .map(|g| {
                (0..n)
                    .map(|i| {
                        let inp = if i == 0 { ch[g] } else { ch[g + 1] };
                        let stride = if i == 0 && g > 0 { 2 } else { 1 };
                        WideBlock::new(inp, ch[g + 1], stride, rng, device)
                    })
                    .collect()
            })
            .collect();
        WideResNet {
            conv1: conv(self.in_channels, 16, 3, 1, 1, 1, false, rng, device),
            blocks: groups,
            bn1: bn(ch[3], device),
            fc: crate::init::linear(ch[3], self.num_classes, rng, device),
            channels: ch.to_vec(),
        }
    }
}

/// A wide residual network with taps `stem`, `stage1..3`.
#[derive(Module, Debug)]
pub struct WideResNet {
    conv1: Conv2d,
    blocks: Vec<Vec<WideBlock>>,
    bn1: BatchNorm,
    fc: Linear,
    channels: Vec<usize>,
}

impl Backbone for WideResNet {
    fn feature_info(&self) -> Vec<TapInfo> {
        vec![
            TapInfo::backbone("stem", self.channels[0], 1),
            TapInfo::backbone("stage1", self.channels[1], 1),
            TapInfo::backbone("stage2", self.channels[2], 2),
            TapInfo::backbone("stage3", self.channels[3], 4),
        ]
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let mut x = conv_fwd(&self.conv1, x);
        taps.offer_map(0, &x);
        for (g, group) in self.blocks.iter().enumerate() {
            for block in group {
                x = block.forward(x);
            }
            if taps.wants(g + 1) {
                let f = if taps.pre_act() {
                    // The batch norm that follows this group.
                    match self.blocks.get(g + 1).and_then(|next| next.first()) {
                        Some(next) => batch_norm(&next.bn1, x.clone()),
                        None => batch_norm(&self.bn1, x.clone()),
                    }
                } else {
                    x.clone()
                };
                taps.offer_map(g + 1, &f);
            }
        }
        let embedding = global_avg_pool(relu(batch_norm(&self.bn1, x)));
        let logits = linear_fwd(&self.fc, embedding.clone());
        taps.finish(embedding, logits)
    }
}
