//! DeepLabV3 on MobileNetV2 (`deeplabv3_mobilenetv2`), the small student of CIRKD's table
//! (R101 → MobileNetV2): torchvision's DeepLabV3 heads ([`crate::deeplab`]: ASPP 12/24/36 with
//! image pooling on 320 channels, the 3×3 head, the FCN auxiliary head on the 96-channel stage)
//! on torchvision's MobileNetV2 (width 1.0: the 3×3 stem to 32 channels, inverted residuals
//! `(t, c, n, s)` = (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
//! (6, 160, 3, 2), (6, 320, 1, 1), ReLU6, no 1×1 expansion where t = 1) without its last 1×1
//! convolution to 1,280 channels, at output stride 8 as mmseg's `deeplabv3_m-v2-d8` makes it:
//! the groups of 64 and 160 channels trade their stride 2 for dilation, every depthwise
//! convolution of the last four groups dilated by 2, 2, 4, 4. torchvision defines no DeepLabV3 on
//! MobileNetV2; the parameter count is pinned from this definition (`models/param_counts.py`).
//!
//! Taps: `backbone.stem` (32 channels, stride 2), `backbone.stage1` (24, stride 4),
//! `backbone.stage2` (32, stride 8), `backbone.stage3` (96, stride 8, the auxiliary head's
//! input), `backbone.stage4` (320, stride 8), `aspp` and `head.logits`, as DeepLabV3 on a ResNet.

use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::common::ConvBn;
use crate::deeplab::{
    Aspp, FcnHead, decode_head, fork_head_dropout, head_conv, head_conv_bn, seed_head_dropout,
};
use crate::features::{Backbone, Collector, Intermediates, Prediction, TapInfo, TapRequest};
use crate::init::InitRng;

/// torchvision's inverted-residual settings `(t, c, n, s)` of MobileNetV2.
pub(crate) const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// mmseg's output-stride-8 MobileNetV2: the stride and dilation of each group.
const STRIDES: [usize; 7] = [1, 2, 2, 1, 1, 1, 1];
const DILATIONS: [usize; 7] = [1, 1, 1, 2, 2, 4, 4];

/// `min(max(x, 0), 6)`.
fn relu6(x: Tensor<4>) -> Tensor<4> {
    x.clamp(0.0, 6.0)
}

/// torchvision's `InvertedResidual`: 1×1 expansion (when t > 1) + BN + ReLU6, 3×3 depthwise
/// (stride, dilation) + BN + ReLU6, 1×1 projection + BN; the input is added when the shapes
/// allow.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedResidual {
    #[allow(clippy::too_many_arguments)]
    fn new(
        inp: usize,
        oup: usize,
        stride: usize,
        dilation: usize,
        t: usize,
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        let hidden = inp * t;
        let mut depthwise = ConvBn::new(hidden, hidden, 3, stride, dilation, hidden, rng, device);
        depthwise.conv.dilation = [dilation, dilation];
        Self {
            expand: (t != 1).then(|| ConvBn::new(inp, hidden, 1, 1, 0, 1, rng, device)),
            depthwise,
            project: ConvBn::new(hidden, oup, 1, 1, 0, 1, rng, device),
            residual: stride == 1 && inp == oup,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = match &self.expand {
            Some(e) => relu6(e.forward(x.clone())),
            None => x.clone(),
        };
        let out = self.project.forward(relu6(self.depthwise.forward(h)));
        if self.residual { x + out } else { out }
    }
}

/// Configuration of DeepLabV3 on MobileNetV2.
#[derive(Config, Debug)]
pub struct DeepLabV3MobileNetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
    /// With the auxiliary FCN head on the 96-channel stage.
    #[config(default = true)]
    pub aux: bool,
    /// ASPP and head channels.
    #[config(default = 256)]
    pub channels: usize,
}

impl DeepLabV3MobileNetConfig {
    /// Builds the network (the backbone as torchvision initializes it, the heads with
    /// PyTorch's default init as in [`crate::deeplab`]).
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> DeepLabV3MobileNet {
        let stem = ConvBn::new(self.in_channels, 32, 3, 2, 1, 1, rng, device);
        let mut inp = 32;
        let mut groups = Vec::with_capacity(SETTINGS.len());
        for (g, &(t, c, n, _)) in SETTINGS.iter().enumerate() {
            let blocks: Vec<InvertedResidual> = (0..n)
                .map(|i| {
                    let stride = if i == 0 { STRIDES[g] } else { 1 };
                    let block = InvertedResidual::new(inp, c, stride, DILATIONS[g], t, rng, device);
                    inp = c;
                    block
                })
                .collect();
            groups.push(blocks);
        }
        let c = self.channels;
        DeepLabV3MobileNet {
            stem,
            groups,
            aspp: Aspp::new(inp, c, &[12, 24, 36], rng, device),
            head: head_conv_bn(c, c, 3, 1, rng, device),
            classifier: head_conv(c, self.num_classes, 1, 0, true, rng, device),
            aux: self
                .aux
                .then(|| FcnHead::new(96, self.num_classes, rng, device)),
            channels: c,
            num_classes: self.num_classes,
        }
    }
}

/// DeepLabV3 on MobileNetV2 with the features contract.
#[derive(Module, Debug)]
pub struct DeepLabV3MobileNet {
    stem: ConvBn,
    /// The seven groups of inverted residuals.
    groups: Vec<Vec<InvertedResidual>>,
    aspp: Aspp,
    head: ConvBn,
    classifier: Conv2d,
    aux: Option<FcnHead>,
    channels: usize,
    num_classes: usize,
}

/// After which group each backbone tap is taken: stage1 … stage4.
const TAP_AFTER: [usize; 4] = [1, 2, 4, 6];

impl Backbone for DeepLabV3MobileNet {
    fn feature_info(&self) -> Vec<TapInfo> {
        let mut taps = vec![TapInfo::backbone("stem", 32, 2)];
        for (i, &g) in TAP_AFTER.iter().enumerate() {
            let stride = if i == 0 { 4 } else { 8 };
            taps.push(TapInfo::backbone(
                &format!("stage{}", i + 1),
                SETTINGS[g].1,
                stride,
            ));
        }
        taps.push(TapInfo::map("aspp", self.channels, 8));
        taps.push(TapInfo::map(crate::PREDICTION_TAP, self.num_classes, 8));
        taps
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let mut x = relu6(self.stem.forward(x));
        taps.offer_map(0, &x);
        let mut aux = None;
        for (g, group) in self.groups.iter().enumerate() {
            for block in group {
                x = block.forward(x);
            }
            if let Some(i) = TAP_AFTER.iter().position(|&t| t == g) {
                taps.offer_map(i + 1, &x);
            }
            if g == TAP_AFTER[2] {
                aux = self.aux.as_ref().map(|h| h.forward(x.clone()));
            }
        }
        let (embedding, a, logits) = decode_head(&self.aspp, &self.head, &self.classifier, x);
        taps.offer_map(TAP_AFTER.len() + 1, &a);
        taps.offer_map(TAP_AFTER.len() + 2, &logits);
        let mut out = taps.finish_map(embedding, logits);
        out.aux_logits = aux.map(Prediction::Map);
        out
    }

    fn seed_dropout(&self, seed: u64) {
        seed_head_dropout(&self.aspp, self.aux.as_ref(), seed);
    }

    fn fork_dropout(&mut self) {
        fork_head_dropout(&mut self.aspp, self.aux.as_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::trainable_params;

    /// The count of `models/param_counts.py` (this definition written out layer by layer) at 21
    /// classes with the auxiliary head: 5,135,186, MobileNetV2's 1,811,712 without its last 1×1
    /// convolution and classifier (torchvision's whole `mobilenet_v2` counts 3,504,872) plus the
    /// heads; without the auxiliary head, FCNHead(96, 21)'s 21,309 fewer
    /// (96·24·9 + 2·24 + 24·21 + 21).
    #[test]
    fn parameter_count_matches_the_reference_definition() {
        let device = Device::flex();
        let mut rng = InitRng::new(0);
        let full = DeepLabV3MobileNetConfig::new(3, 21).init(&mut rng, &device);
        let bare = DeepLabV3MobileNetConfig::new(3, 21)
            .with_aux(false)
            .init(&mut rng, &device);
        assert_eq!(trainable_params(&full), 5_135_186);
        assert_eq!(trainable_params(&full) - trainable_params(&bare), 21_309);
    }

    /// Output stride 8 on a 64×48 input: the taps' sizes and channels as declared, the
    /// prediction and the auxiliary prediction `[B, K, 8, 6]`; the depthwise convolutions of
    /// the last group are dilated by 4 and its first has stride 1.
    #[test]
    fn output_stride_8_and_taps() {
        let device = Device::flex();
        let m = DeepLabV3MobileNetConfig::new(3, 5).init(&mut InitRng::new(1), &device);
        let info = m.feature_info();
        let x = Tensor::<4>::ones([2, 3, 64, 48], &device);
        let out = m.forward_intermediates(x, &TapRequest::all(&info));
        for (tap, f) in info.iter().zip(&out.features) {
            assert_eq!(
                f.dims(),
                vec![2, tap.channels, 64 / tap.stride, 48 / tap.stride],
                "{}",
                tap.name
            );
        }
        assert_eq!(
            info.iter().map(|t| t.channels).collect::<Vec<_>>(),
            [32, 24, 32, 96, 320, 256, 5]
        );
        assert_eq!(out.logits.dims(), vec![2, 5, 8, 6]);
        assert_eq!(out.aux_logits.unwrap().dims(), vec![2, 5, 8, 6]);
        let last = &m.groups[6][0].depthwise.conv;
        assert_eq!((last.dilation, last.stride), ([4, 4], [1, 1]));
        assert!(m.groups[0][0].expand.is_none() && m.groups[1][0].expand.is_some());
    }
}
