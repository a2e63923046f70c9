//! DeepLabV3 as torchvision defines it (`deeplabv3_resnet50`, `deeplabv3_resnet101`), and on a
//! dilated ResNet-18:
//! - the backbone is an ImageNet ResNet whose stages 3 and 4 trade their stride for dilation
//!   (`replace_stride_with_dilation = [False, True, True]`: output stride 8; the first block of
//!   a dilated stage keeps the previous dilation, the others take the new one: 1, 2 in stage 3
//!   and 2, 4 in stage 4), without its classifier;
//! - ASPP on stage 4: a 1×1 branch, three 3×3 branches dilated by 12, 24 and 36, and an
//!   image-pooling branch (global mean, 1×1, broadcast back), each conv + BN + ReLU with 256
//!   channels, concatenated and projected by a 1×1 conv + BN + ReLU, then dropout 0.5;
//! - the head: 3×3 conv + BN + ReLU, then a 1×1 classifier with a bias;
//! - the auxiliary FCN head on stage 3 (3×3 conv to a quarter of the channels + BN + ReLU,
//!   dropout 0.1, 1×1 classifier with a bias), trained with weight 0.4 by the task.
//!
//! The prediction is the head's `[B, K, H/8, W/8]` map (what distillers compare, as CIRKD's CWD
//! does); the task upsamples it to the input size (bilinear, `align_corners = false`, see
//! [`upsample_bilinear`]) for its loss and its metrics, as torchvision's forward does. Taps:
//! `backbone.stem`, `backbone.stage1` … `backbone.stage4`, `aspp` (the projected ASPP output,
//! stride 8) and `head.logits` (the prediction map itself, for terms such as CWD on the logits;
//! read only when named, see [`crate::PREDICTION_TAP`]). Submodule names follow torchvision's state-dict keys where they can (`conv1`,
//! `bn1`, `layers[i]` for `backbone.layer{i+1}`, `aspp.convs[i]`, `aspp.project`).

use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::common::{ConvBn, SeededDropout, bn, conv, conv_bn, global_avg_pool};
#[cfg(test)]
use crate::features::Feature;
use crate::features::{Backbone, Collector, Intermediates, Prediction, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::resnet::Block;

/// `x` resized to `size` by bilinear interpolation with `align_corners = false` (PyTorch's
/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`: half-pixel centres), as
/// torchvision's segmentation models upsample their output. burn's default aligns corners.
pub fn upsample_bilinear(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    let mut options = InterpolateOptions::new(InterpolateMode::Bilinear).with_output_size(size);
    options.align_corners = false;
    interpolate(x, options)
}

/// A convolution of the heads (ASPP, the 3×3 head, the classifiers, the FCN head) with
/// PyTorch's default initialization, as torchvision leaves them (its init loop covers only the
/// ResNet backbone; the backbone here keeps `kaiming_normal_(fan_out)`). With the backbone's init
/// instead, the fresh 1×1 classifier's logits have a standard deviation near 5 and a pixel CE
/// of 8 (ln K is 2.4), and training from scratch stalls at the class prior.
pub(crate) fn head_conv(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    padding: usize,
    bias: bool,
    rng: &mut InitRng,
    device: &Device,
) -> Conv2d {
    crate::init::conv2d(
        crate::init::ConvShape {
            in_ch,
            out_ch,
            kernel,
            stride: 1,
            padding,
            groups: 1,
            bias,
        },
        crate::init::ConvInit::TorchDefault,
        rng,
        device,
    )
}

/// [`head_conv`] (no bias) and a batch norm.
pub(crate) fn head_conv_bn(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    padding: usize,
    rng: &mut InitRng,
    device: &Device,
) -> ConvBn {
    ConvBn {
        conv: head_conv(in_ch, out_ch, kernel, padding, false, rng, device),
        bn: bn(out_ch, device),
    }
}

/// Atrous spatial pyramid pooling.
#[derive(Module, Debug)]
pub struct Aspp {
    /// The 1×1 branch, then one 3×3 branch per rate.
    convs: Vec<ConvBn>,
    /// The image-pooling branch's 1×1 conv.
    pool: ConvBn,
    /// 1×1 projection of the concatenated branches.
    project: ConvBn,
    pub(crate) dropout: SeededDropout,
}

impl Aspp {
    pub(crate) fn new(
        in_ch: usize,
        out_ch: usize,
        rates: &[usize],
        rng: &mut InitRng,
        device: &Device,
    ) -> Self {
        let mut convs = vec![head_conv_bn(in_ch, out_ch, 1, 0, rng, device)];
        for &r in rates {
            let mut branch = head_conv_bn(in_ch, out_ch, 3, r, rng, device);
            branch.conv.dilation = [r, r];
            convs.push(branch);
        }
        let pool = head_conv_bn(in_ch, out_ch, 1, 0, rng, device);
        let project = head_conv_bn((rates.len() + 2) * out_ch, out_ch, 1, 0, rng, device);
        Self {
            convs,
            pool,
            project,
            dropout: SeededDropout::new(0.5),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let mut branches: Vec<Tensor<4>> = self
            .convs
            .iter()
            .map(|c| relu(c.forward(x.clone())))
            .collect();
        // Bilinear upsampling of a 1×1 map is a broadcast, whatever the corner convention.
        let pooled = relu(self.pool.forward(x.mean_dims(&[2, 3])));
        let c = pooled.dims()[1];
        branches.push(pooled.expand([b, c, h, w]));
        self.dropout
            .forward(relu(self.project.forward(Tensor::cat(branches, 1))))
    }
}

/// torchvision's `FCNHead`: the auxiliary classifier.
#[derive(Module, Debug)]
pub struct FcnHead {
    conv: ConvBn,
    pub(crate) dropout: SeededDropout,
    classifier: Conv2d,
}

impl FcnHead {
    pub(crate) fn new(in_ch: usize, classes: usize, rng: &mut InitRng, device: &Device) -> Self {
        let inter = in_ch / 4;
        Self {
            conv: head_conv_bn(in_ch, inter, 3, 1, rng, device),
            dropout: SeededDropout::new(0.1),
            classifier: head_conv(inter, classes, 1, 0, true, rng, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.dropout.forward(relu(self.conv.forward(x)));
        crate::common::conv2d(&self.classifier, x)
    }
}

/// Restarts the heads' dropout streams (ASPP's, the auxiliary head's) from `seed`.
pub(crate) fn seed_head_dropout(aspp: &Aspp, aux: Option<&FcnHead>, seed: u64) {
    aspp.dropout.reseed(seed ^ 0x5eed_a5b9);
    if let Some(aux) = aux {
        aux.dropout.reseed(seed ^ 0x5eed_0a0c);
    }
}

/// Gives the heads' dropout streams of their own (a data-parallel replica).
pub(crate) fn fork_head_dropout(aspp: &mut Aspp, aux: Option<&mut FcnHead>) {
    aspp.dropout.fork_stream();
    if let Some(aux) = aux {
        aux.dropout.fork_stream();
    }
}

/// The decoder of both backbones on the last stage's `x`: the embedding (its global mean), the
/// ASPP output and the prediction (3×3 head + BN + ReLU, 1×1 classifier).
pub(crate) fn decode_head(
    aspp: &Aspp,
    head: &ConvBn,
    classifier: &Conv2d,
    x: Tensor<4>,
) -> (Tensor<2>, Tensor<4>, Tensor<4>) {
    let embedding = global_avg_pool(x.clone()); // [B, C4]
    let a = aspp.forward(x); // [B, 256, H/8, W/8]
    let logits = crate::common::conv2d(classifier, relu(head.forward(a.clone())));
    (embedding, a, logits)
}

/// Configuration of a DeepLabV3.
#[derive(Config, Debug)]
pub struct DeepLabV3Config {
    /// Registry name.
    pub name: String,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
    /// Blocks per backbone stage (`[2, 2, 2, 2]` ResNet-18, `[3, 4, 6, 3]` ResNet-50,
    /// `[3, 4, 23, 3]` ResNet-101).
    pub blocks: Vec<usize>,
    /// Bottleneck blocks (ResNet-50/101) instead of basic blocks (ResNet-18/34).
    pub bottleneck: bool,
    /// With the auxiliary FCN head on stage 3.
    #[config(default = true)]
    pub aux: bool,
    /// ASPP rates.
    #[config(default = "vec![12, 24, 36]")]
    pub rates: Vec<usize>,
    /// ASPP and head channels.
    #[config(default = 256)]
    pub channels: usize,
    /// Planes of each backbone stage (output channels are ×4 for bottlenecks).
    #[config(default = "vec![64, 128, 256, 512]")]
    pub planes: Vec<usize>,
    /// Channels of the stem.
    #[config(default = 64)]
    pub stem_channels: usize,
}

impl DeepLabV3Config {
    /// Builds the network.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> DeepLabV3 {
        let exp = if self.bottleneck { 4 } else { 1 };
        let planes = &self.planes;
        let (mut inplanes, mut dilation) = (self.stem_channels, 1usize);
        let mut layers = Vec::new();
        for (i, (&p, &n)) in planes.iter().zip(&self.blocks).enumerate() {
            // Stages 3 and 4 trade their stride 2 for dilation ×2.
            let (stride, previous) = match i {
                0 => (1, dilation),
                1 => (2, dilation),
                _ => {
                    let previous = dilation;
                    dilation *= 2;
                    (1, previous)
                }
            };
            let mut stage = Vec::with_capacity(n);
            for j in 0..n {
                let (s, d) = if j == 0 {
                    (stride, previous)
                } else {
                    (1, dilation)
                };
                stage.push(Block::dilated(
                    self.bottleneck,
                    inplanes,
                    p,
                    s,
                    d,
                    rng,
                    device,
                ));
                inplanes = p * exp;
            }
            layers.push(stage);
        }
        let c = self.channels;
        DeepLabV3 {
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
            aspp: Aspp::new(inplanes, c, &self.rates, rng, device),
            head: head_conv_bn(c, c, 3, 1, rng, device),
            classifier: head_conv(c, self.num_classes, 1, 0, true, rng, device),
            aux: self.aux.then(|| {
                let c3 = planes.get(2).map_or(inplanes, |p| p * exp);
                FcnHead::new(c3, self.num_classes, rng, device)
            }),
            name: self.name.clone(),
            stage_channels: planes.iter().map(|p| p * exp).collect(),
            stem_channels: self.stem_channels,
            channels: c,
            num_classes: self.num_classes,
        }
    }
}

/// DeepLabV3 with the features contract.
#[derive(Module, Debug)]
pub struct DeepLabV3 {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: MaxPool2d,
    layers: Vec<Vec<Block>>,
    aspp: Aspp,
    head: ConvBn,
    classifier: Conv2d,
    aux: Option<FcnHead>,
    name: String,
    stage_channels: Vec<usize>,
    stem_channels: usize,
    channels: usize,
    num_classes: usize,
}

impl Backbone for DeepLabV3 {
    fn feature_info(&self) -> Vec<TapInfo> {
        let mut taps = vec![TapInfo::backbone("stem", self.stem_channels, 2)];
        for (i, &c) in self.stage_channels.iter().enumerate() {
            let stride = [4, 8, 8, 8][i.min(3)];
            taps.push(TapInfo::backbone(&format!("stage{}", i + 1), c, stride));
        }
        taps.push(TapInfo::map("aspp", self.channels, 8));
        taps.push(TapInfo::map(crate::PREDICTION_TAP, self.num_classes, 8));
        taps
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let x = relu(conv_bn(&self.conv1, &self.bn1, x)); // [B, 64, H/2, W/2]
        taps.offer_map(0, &x);
        let mut x = self.maxpool.forward(x);
        let mut aux = None;
        for (i, stage) in self.layers.iter().enumerate() {
            x = taps.stage(i + 1, stage, x, |u, x| u.forward(x));
            if i == 2 {
                aux = self.aux.as_ref().map(|h| h.forward(x.clone()));
            }
        }
        let (embedding, a, logits) = decode_head(&self.aspp, &self.head, &self.classifier, x);
        taps.offer_map(self.layers.len() + 1, &a);
        taps.offer_map(self.layers.len() + 2, &logits);
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

    fn config(blocks: [usize; 4], bottleneck: bool, classes: usize) -> DeepLabV3Config {
        DeepLabV3Config::new("deeplabv3".into(), 3, classes, blocks.to_vec(), bottleneck)
    }

    /// torchvision's counts at 21 classes with the auxiliary head: `deeplabv3_resnet50`
    /// 42,004,074 and `deeplabv3_resnet101` 60,996,202 (`sum(p.numel() for p in
    /// model.parameters())`); on ResNet-18, 16,053,034 from the same definitions
    /// (`models/param_counts.py`); without the auxiliary head, ResNet-50 has 2,365,205 fewer
    /// (FCNHead(1024, 21): 1024·256·9 + 2·256 + 256·21 + 21).
    #[test]
    fn parameter_counts_match_torchvision() {
        let device = Device::flex();
        let mut rng = InitRng::new(0);
        let count = |c: DeepLabV3Config, rng: &mut InitRng| trainable_params(&c.init(rng, &device));
        assert_eq!(count(config([3, 4, 6, 3], true, 21), &mut rng), 42_004_074);
        assert_eq!(count(config([3, 4, 23, 3], true, 21), &mut rng), 60_996_202);
        assert_eq!(count(config([2, 2, 2, 2], false, 21), &mut rng), 16_053_034);
        assert_eq!(
            count(config([3, 4, 6, 3], true, 21).with_aux(false), &mut rng),
            42_004_074 - 2_365_205
        );
    }

    /// Output stride 8 on a 64×48 input: taps at 32×24 (stem), 16×12 (stage 1) and 8×6
    /// (stages 2–4 and ASPP); the prediction and the auxiliary prediction are `[B, K, 8, 6]`;
    /// stage 4's first block has dilation 2 and the others 4, as torchvision's.
    #[test]
    fn output_stride_8_and_taps() {
        let device = Device::flex();
        let m = config([2, 2, 2, 2], false, 5).init(&mut InitRng::new(1), &device);
        let info = m.feature_info();
        let names: Vec<&str> = info.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "backbone.stem",
                "backbone.stage1",
                "backbone.stage2",
                "backbone.stage3",
                "backbone.stage4",
                "aspp",
                "head.logits"
            ]
        );
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
        assert_eq!(out.logits.dims(), vec![2, 5, 8, 6]);
        // The prediction tap is the prediction; a term without a tap reads the ASPP output.
        let (Some(Feature::Map(tap)), Prediction::Map(pred)) = (out.features.last(), &out.logits)
        else {
            panic!("a map tap and a map prediction")
        };
        assert_eq!(
            tap.clone().into_data().try_to_vec::<f32>().unwrap(),
            pred.clone().into_data().try_to_vec::<f32>().unwrap()
        );
        assert_eq!(crate::default_tap(&info), Some(5));
        assert_eq!(out.aux_logits.unwrap().dims(), vec![2, 5, 8, 6]);
        let dilations: Vec<usize> = m.layers[3]
            .iter()
            .map(|b| match b {
                Block::Basic(b) => b.conv1.dilation[0],
                Block::Bottleneck(b) => b.conv2.dilation[0],
            })
            .collect();
        assert_eq!(dilations, [2, 4]);
    }

    /// Dropout draws from the model's own stream: reseeded, it drops the same elements; kept
    /// elements are doubled at p = 0.5 and about half are dropped; off the autodiff device it
    /// is the identity.
    #[test]
    fn dropout_follows_its_own_seed() {
        let device = Device::flex();
        let ad = device.clone().autodiff();
        let d = SeededDropout::new(0.5);
        let x = Tensor::<2>::ones([64, 64], &ad);
        let draw = |seed| {
            d.reseed(seed);
            let v: Vec<f32> = d.forward(x.clone()).into_data().try_to_vec().unwrap();
            v
        };
        let (a, b, c) = (draw(3), draw(3), draw(4));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let dropped = a.iter().filter(|&&v| v == 0.0).count();
        assert!((1800..2300).contains(&dropped), "{dropped} of 4096");
        let plain = Tensor::<2>::ones([4, 4], &device);
        let y: Vec<f32> = d.forward(plain).into_data().try_to_vec().unwrap();
        assert!(y.iter().all(|&v| v == 1.0));
    }

    /// The upsampling's gradient is its adjoint: for `L = Σ w ⊙ up(x)` on a 2×2 → 4×4
    /// upsampling, `∂L/∂x_j = Σ_i w_i · ∂up_i/∂x_j`, with the weights of the forward rows by
    /// hand (output (0, 0) is x₀₀ alone; output (1, 1) is 0.5625·x₀₀ + 0.1875·x₀₁ + 0.1875·x₁₀
    /// + 0.0625·x₁₁).
    #[test]
    fn upsampling_gradient_is_its_adjoint() {
        let ad = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [1, 1, 2, 2]),
            &ad,
        )
        .require_grad();
        for (at, want) in [
            (0usize, [1.0f32, 0.0, 0.0, 0.0]),
            (5, [0.5625, 0.1875, 0.1875, 0.0625]),
        ] {
            let mut w = vec![0.0f32; 16];
            w[at] = 1.0;
            let w = Tensor::<4>::from_data(TensorData::new(w, [1, 1, 4, 4]), &ad);
            let loss = (upsample_bilinear(x.clone(), [4, 4]) * w).sum();
            let grads = loss.backward();
            let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            for (a, b) in g.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "output {at}: {g:?} vs {want:?}");
            }
        }
    }

    /// The heads start as torchvision's do (PyTorch's default init: the classifier's weights
    /// within ±1/√256, where the backbone's `kaiming_normal_(fan_out)` would draw a standard
    /// deviation of √(2/5) ≈ 0.63 for 5 classes): a fresh model's logits on a unit-normal input
    /// are small, and its mean pixel CE is within 0.5 of ln 5 (it was above 5 with the
    /// backbone's init, and training from scratch stalled at the class prior).
    #[test]
    fn heads_start_with_pytorchs_default_init() {
        let device = Device::flex();
        let m = config([2, 2, 2, 2], false, 5).init(&mut InitRng::new(1), &device);
        let w: Vec<f32> = m.classifier.weight.val().into_data().try_to_vec().unwrap();
        let bound = 1.0 / 256f32.sqrt();
        assert!(
            w.iter().all(|v| v.abs() <= bound),
            "classifier beyond ±1/16"
        );
        let v = InitRng::new(5).normal_values(2 * 3 * 48 * 48, 1.0);
        let x = Tensor::<4>::from_data(TensorData::new(v, [2, 3, 48, 48]), &device);
        let Prediction::Map(logits) = m.forward_intermediates(x, &TapRequest::none()).logits else {
            panic!("a map")
        };
        let l: Vec<f32> = logits.into_data().try_to_vec().unwrap();
        let ce: f64 = l
            .chunks(36) // [2, 5, 6, 6]: per image and class, 36 cells
            .collect::<Vec<_>>()
            .chunks(5)
            .flat_map(|img| {
                (0..36).map(move |p| {
                    let z: f64 = img.iter().map(|c| f64::from(c[p]).exp()).sum();
                    z.ln() - f64::from(img[0][p])
                })
            })
            .sum::<f64>()
            / 72.0;
        assert!((ce - 5f64.ln()).abs() < 0.5, "CE {ce}");
    }

    /// PyTorch's half-pixel bilinear upsampling of `[[0, 1], [2, 3]]` to 4×4: output pixel
    /// `i` samples the input at `(i + 0.5)/2 − 0.5`, clamped at 0, so the rows are
    /// `[0, 0.25, 0.75, 1]`, `[0.5, 0.75, 1.25, 1.5]`, `[1.5, 1.75, 2.25, 2.5]`,
    /// `[2, 2.25, 2.75, 3]` (`F.interpolate(..., align_corners=False)`).
    #[test]
    fn upsampling_uses_half_pixel_centres() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [1, 1, 2, 2]),
            &device,
        );
        let y: Vec<f32> = upsample_bilinear(x, [4, 4])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }
}
