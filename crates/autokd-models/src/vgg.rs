//! VGG with batch norm for CIFAR as in RepDistiller/mdistiller (`vgg.py`, the `*_bn` variants):
//! five blocks of 3×3 convolutions (with bias) + BN + ReLU, max pools between the first four,
//! global average pool, one linear classifier.

use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::common::{bn, conv, conv_bn, global_avg_pool};
use crate::features::{Backbone, Collector, Intermediates, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::params::linear_fwd;

/// One 3×3 convolution with bias and its batch norm.
#[derive(Module, Debug)]
pub struct VggConv {
    conv: Conv2d,
    bn: BatchNorm,
}

/// Configuration of a VGG.
#[derive(Config, Debug)]
pub struct VggConfig {
    /// Registry name.
    pub name: String,
    /// Channels of the convolutions of each of the five blocks.
    pub blocks: Vec<Vec<usize>>,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

impl VggConfig {
    /// The configurations of RepDistiller: vgg8 (`S`), vgg11 (`A`), vgg13 (`B`), vgg16 (`D`),
    /// vgg19 (`E`).
    pub fn preset(name: &str, in_channels: usize, num_classes: usize) -> Option<Self> {
        let blocks: Vec<Vec<usize>> = match name {
            "vgg8" => vec![vec![64], vec![128], vec![256], vec![512], vec![512]],
            "vgg11" => vec![
                vec![64],
                vec![128],
                vec![256, 256],
                vec![512, 512],
                vec![512, 512],
            ],
            "vgg13" => vec![
                vec![64, 64],
                vec![128, 128],
                vec![256, 256],
                vec![512, 512],
                vec![512, 512],
            ],
            "vgg16" => vec![
                vec![64, 64],
                vec![128, 128],
                vec![256; 3],
                vec![512; 3],
                vec![512; 3],
            ],
            "vgg19" => vec![
                vec![64, 64],
                vec![128, 128],
                vec![256; 4],
                vec![512; 4],
                vec![512; 4],
            ],
            _ => return None,
        };
        Some(Self::new(name.into(), blocks, in_channels, num_classes))
    }

    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> Vgg {
        let mut inp = self.in_channels;
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                b.iter()
                    .map(|&c| {
                        let layer = VggConv {
                            conv: conv(inp, c, 3, 1, 1, 1, true, rng, device),
                            bn: bn(c, device),
                        };
                        inp = c;
                        layer
                    })
                    .collect()
            })
            .collect();
        Vgg {
            blocks,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            classifier: crate::init::linear(inp, self.num_classes, rng, device),
            channels: self
                .blocks
                .iter()
                .map(|b| b.last().copied().unwrap_or(inp))
                .collect(),
        }
    }
}

/// A VGG with taps `stem` (block 0) and `stage1..4`.
#[derive(Module, Debug)]
pub struct Vgg {
    blocks: Vec<Vec<VggConv>>,
    pool: MaxPool2d,
    classifier: Linear,
    channels: Vec<usize>,
}

impl Backbone for Vgg {
    fn feature_info(&self) -> Vec<TapInfo> {
        let names = ["stem", "stage1", "stage2", "stage3", "stage4"];
        // Reductions at 32×32: pools after blocks 0, 1, 2; block 4 follows block 3 directly.
        let strides = [1, 2, 4, 8, 8];
        names
            .iter()
            .zip(strides)
            .zip(&self.channels)
            .map(|((n, r), &c)| TapInfo::backbone(n, c, r))
            .collect()
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let h = x.dims()[2];
        let mut x = x;
        for (i, block) in self.blocks.iter().enumerate() {
            // Pools before blocks 1, 2, 3, and before block 4 only for 64×64 inputs (reference).
            if i > 0 && (i < 4 || h == 64) {
                x = self.pool.forward(x);
            }
            for (j, layer) in block.iter().enumerate() {
                x = conv_bn(&layer.conv, &layer.bn, x);
                if j + 1 < block.len() {
                    x = relu(x);
                }
            }
            let pre = x.clone();
            x = relu(x);
            taps.offer_map(i, if taps.pre_act() && i > 0 { &pre } else { &x });
        }
        let embedding = global_avg_pool(x);
        let logits = linear_fwd(&self.classifier, embedding.clone());
        taps.finish(embedding, logits)
    }
}
