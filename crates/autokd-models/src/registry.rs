//! The registry: every architecture by name, and the [`Model`] enum that holds any of them.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::deeplab::{DeepLabV3, DeepLabV3Config};
use crate::deit::{Deit, DeitConfig};
use crate::error::ModelError;
use crate::features::{Backbone, Intermediates, TapInfo, TapRequest};
use crate::init::InitRng;
use crate::mobilenet_v1::{MobileNetV1, MobileNetV1Config};
use crate::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use crate::resnet::{ResNet, ResNetConfig};
use crate::retinanet::{RetinaNet, RetinaNetConfig};
use crate::shufflenet::{ShuffleNetV1, ShuffleNetV1Config, ShuffleNetV2, ShuffleNetV2Config};
use crate::vgg::{Vgg, VggConfig};
use crate::wrn::{WideResNet, WideResNetConfig};

macro_rules! model_names {
    ($($variant:ident => $name:literal, $family:ident;)*) => {
        /// Every architecture autokd can build.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ModelName {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl ModelName {
            /// Every registered architecture.
            pub const ALL: &'static [ModelName] = &[$(ModelName::$variant),*];

            /// The name used in configs and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ModelName::$variant => $name,)*
                }
            }

            /// The family (reference input size and class count).
            pub fn family(self) -> Family {
                match self {
                    $(ModelName::$variant => Family::$family,)*
                }
            }
        }
    };
}

model_names! {
    Resnet8 => "resnet8", Cifar;
    Resnet14 => "resnet14", Cifar;
    Resnet20 => "resnet20", Cifar;
    Resnet32 => "resnet32", Cifar;
    Resnet44 => "resnet44", Cifar;
    Resnet56 => "resnet56", Cifar;
    Resnet110 => "resnet110", Cifar;
    Resnet8x4 => "resnet8x4", Cifar;
    Resnet32x4 => "resnet32x4", Cifar;
    Wrn16_1 => "wrn_16_1", Cifar;
    Wrn16_2 => "wrn_16_2", Cifar;
    Wrn40_1 => "wrn_40_1", Cifar;
    Wrn40_2 => "wrn_40_2", Cifar;
    Vgg8 => "vgg8", Cifar;
    Vgg11 => "vgg11", Cifar;
    Vgg13 => "vgg13", Cifar;
    Vgg16 => "vgg16", Cifar;
    Vgg19 => "vgg19", Cifar;
    MobileNetV2 => "mobilenetv2", Cifar;
    ShuffleNetV1 => "shufflenetv1", Cifar;
    ShuffleNetV2 => "shufflenetv2", Cifar;
    Resnet50Cifar => "resnet50_cifar", Cifar;
    Resnet18 => "resnet18", ImageNet;
    Resnet34 => "resnet34", ImageNet;
    Resnet50 => "resnet50", ImageNet;
    MobileNetV1 => "mobilenet_v1", ImageNet;
    DeitTiny => "deit_tiny", ImageNet;
    DeitTinyP4 => "deit_tiny_p4", Cifar;
    Deeplabv3Resnet18 => "deeplabv3_resnet18", Segmentation;
    Deeplabv3Resnet50 => "deeplabv3_resnet50", Segmentation;
    Deeplabv3Resnet101 => "deeplabv3_resnet101", Segmentation;
    Deeplabv3Mobilenetv2 => "deeplabv3_mobilenetv2", Segmentation;
    RetinanetResnet18 => "retinanet_resnet18_fpn", Detection;
    RetinanetResnet50 => "retinanet_resnet50_fpn", Detection;
    RetinanetResnet101 => "retinanet_resnet101_fpn", Detection;
    RetinanetResnet18Gn => "retinanet_resnet18_fpn_gn", Detection;
    RetinanetResnet50Gn => "retinanet_resnet50_fpn_gn", Detection;
}

/// Where an architecture comes from, which fixes its reference input and class count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// CIFAR-100 zoo (RepDistiller / mdistiller): 3×32×32, 100 classes.
    Cifar,
    /// ImageNet (torchvision, mdistiller, DeiT): 3×224×224, 1,000 classes.
    ImageNet,
    /// Semantic segmentation (torchvision's DeepLabV3): 3×512×512, 21 classes (PASCAL VOC, at
    /// which torchvision counts its parameters); the prediction is a `[B, K, H/8, W/8]` map.
    Segmentation,
    /// Object detection (torchvision's RetinaNet): 91 classes (COCO's category ids, at which
    /// torchvision counts its parameters) at a 3×512×512 reference input (torchvision resizes
    /// COCO to 800 × 1,333; a square 512 keeps `autokd info` affordable); the prediction is a
    /// row of class logits per anchor, `[B·ΣA, K]`, with box deltas beside it.
    Detection,
}

impl Family {
    /// `(channels, side)` of the reference input.
    pub fn reference_input(self) -> (usize, usize) {
        match self {
            Family::Cifar => (3, 32),
            Family::ImageNet => (3, 224),
            Family::Segmentation | Family::Detection => (3, 512),
        }
    }

    /// Classes of the reference dataset.
    pub fn reference_classes(self) -> usize {
        match self {
            Family::Cifar => 100,
            Family::ImageNet => 1000,
            Family::Segmentation => 21,
            Family::Detection => 91,
        }
    }
}

impl ModelName {
    /// The architecture at its reference input and class count.
    pub fn reference_spec(self) -> ModelSpec {
        let (c, side) = self.family().reference_input();
        ModelSpec {
            name: self,
            in_channels: c,
            num_classes: self.family().reference_classes(),
            image_size: side,
        }
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelName {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        ModelName::ALL
            .iter()
            .copied()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ModelError::UnknownModel {
                name: s.to_string(),
                available: ModelName::ALL
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl Serialize for ModelName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ModelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An architecture with its input and output sizes: everything needed to build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The architecture.
    pub name: ModelName,
    /// Input channels (1 for digits and Fashion-MNIST, 3 for colour images).
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
    /// Input side in pixels (used by DeiT's position embedding; convolutional models take any).
    pub image_size: usize,
}

impl ModelSpec {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), ModelError> {
        let err = |message: String| ModelError::Config {
            model: self.name.to_string(),
            message,
        };
        if self.in_channels == 0 || self.num_classes == 0 || self.image_size == 0 {
            return Err(err(
                "in_channels, num_classes and image_size must be positive".into(),
            ));
        }
        if let Some(p) = self.deit_patch()
            && !self.image_size.is_multiple_of(p)
        {
            return Err(err(format!(
                "image size {} is not a multiple of the patch size {p}",
                self.image_size
            )));
        }
        Ok(())
    }

    fn deit_patch(&self) -> Option<usize> {
        match self.name {
            ModelName::DeitTiny => Some(16),
            ModelName::DeitTinyP4 => Some(4),
            _ => None,
        }
    }

    /// Builds the model on `device` with the initial weights of seed 0 (the same on every call
    /// and device; for weights that are loaded next, or a run without a seed of its own).
    pub fn init(&self, device: &Device) -> Result<Model, ModelError> {
        self.init_with(&mut InitRng::new(0), device)
    }

    /// Builds the model on `device`, its initial weights drawn from `rng` (never from the
    /// device's RNG: the same stream gives the same weights whatever other threads do).
    pub fn init_with(&self, rng: &mut InitRng, device: &Device) -> Result<Model, ModelError> {
        self.validate()?;
        let (c, k) = (self.in_channels, self.num_classes);
        use ModelName as N;
        let cifar = |name: N, depth, filters, rng: &mut InitRng| {
            Model::ResNet(
                ResNetConfig::cifar(name.as_str(), depth, filters, c, k).init(rng, device),
            )
        };
        let wrn = |name: N, depth, width, rng: &mut InitRng| {
            Model::WideResNet(
                WideResNetConfig::new(name.as_str().into(), depth, width, c, k).init(rng, device),
            )
        };
        let small = [16, 16, 32, 64];
        let x4 = [32, 64, 128, 256];
        Ok(match self.name {
            N::Resnet8 => cifar(N::Resnet8, 8, small, rng),
            N::Resnet14 => cifar(N::Resnet14, 14, small, rng),
            N::Resnet20 => cifar(N::Resnet20, 20, small, rng),
            N::Resnet32 => cifar(N::Resnet32, 32, small, rng),
            N::Resnet44 => cifar(N::Resnet44, 44, small, rng),
            N::Resnet56 => cifar(N::Resnet56, 56, small, rng),
            N::Resnet110 => cifar(N::Resnet110, 110, small, rng),
            N::Resnet8x4 => cifar(N::Resnet8x4, 8, x4, rng),
            N::Resnet32x4 => cifar(N::Resnet32x4, 32, x4, rng),
            N::Wrn16_1 => wrn(N::Wrn16_1, 16, 1, rng),
            N::Wrn16_2 => wrn(N::Wrn16_2, 16, 2, rng),
            N::Wrn40_1 => wrn(N::Wrn40_1, 40, 1, rng),
            N::Wrn40_2 => wrn(N::Wrn40_2, 40, 2, rng),
            N::Vgg8 | N::Vgg11 | N::Vgg13 | N::Vgg16 | N::Vgg19 => {
                let cfg = VggConfig::preset(self.name.as_str(), c, k).ok_or_else(|| {
                    ModelError::Config {
                        model: self.name.to_string(),
                        message: "no VGG preset".into(),
                    }
                })?;
                Model::Vgg(cfg.init(rng, device))
            }
            N::MobileNetV2 => Model::MobileNetV2(MobileNetV2Config::new(c, k).init(rng, device)),
            N::ShuffleNetV1 => Model::ShuffleNetV1(ShuffleNetV1Config::new(c, k).init(rng, device)),
            N::ShuffleNetV2 => Model::ShuffleNetV2(ShuffleNetV2Config::new(c, k).init(rng, device)),
            N::Resnet50Cifar => Model::ResNet(ResNetConfig::cifar_resnet50(c, k).init(rng, device)),
            N::Resnet18 => Model::ResNet(
                ResNetConfig::imagenet("resnet18", [2, 2, 2, 2], false, c, k).init(rng, device),
            ),
            N::Resnet34 => Model::ResNet(
                ResNetConfig::imagenet("resnet34", [3, 4, 6, 3], false, c, k).init(rng, device),
            ),
            N::Resnet50 => Model::ResNet(
                ResNetConfig::imagenet("resnet50", [3, 4, 6, 3], true, c, k).init(rng, device),
            ),
            N::MobileNetV1 => Model::MobileNetV1(MobileNetV1Config::new(c, k).init(rng, device)),
            N::Deeplabv3Resnet18 | N::Deeplabv3Resnet50 | N::Deeplabv3Resnet101 => {
                let (blocks, bottleneck) = match self.name {
                    N::Deeplabv3Resnet18 => (vec![2, 2, 2, 2], false),
                    N::Deeplabv3Resnet50 => (vec![3, 4, 6, 3], true),
                    _ => (vec![3, 4, 23, 3], true),
                };
                Model::DeepLabV3(
                    DeepLabV3Config::new(self.name.as_str().into(), c, k, blocks, bottleneck)
                        .init(rng, device),
                )
            }
            N::Deeplabv3Mobilenetv2 => Model::DeepLabV3MobileNet(
                crate::deeplab_mobilenet::DeepLabV3MobileNetConfig::new(c, k).init(rng, device),
            ),
            N::RetinanetResnet18
            | N::RetinanetResnet50
            | N::RetinanetResnet101
            | N::RetinanetResnet18Gn
            | N::RetinanetResnet50Gn => {
                let preset = match self.name {
                    N::RetinanetResnet18 => RetinaNetConfig::resnet18(k),
                    N::RetinanetResnet50 => RetinaNetConfig::resnet50(k),
                    N::RetinanetResnet18Gn => RetinaNetConfig::resnet18(k).gn_head(),
                    N::RetinanetResnet50Gn => RetinaNetConfig::resnet50(k).gn_head(),
                    _ => RetinaNetConfig::resnet101(k),
                };
                Model::RetinaNet(
                    RetinaNetConfig {
                        in_channels: c,
                        ..preset
                    }
                    .init(rng, device),
                )
            }
            N::DeitTiny | N::DeitTinyP4 => {
                let patch = self.deit_patch().unwrap_or(16);
                Model::Deit(
                    DeitConfig::new(c, k)
                        .with_img_size(self.image_size)
                        .with_patch_size(patch)
                        .init(rng, device),
                )
            }
        })
    }
}

/// Any registered architecture.
// Variants differ in size; a network holds few of them and builds them once.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// CIFAR and ImageNet ResNets.
    ResNet(ResNet),
    /// Wide ResNets.
    WideResNet(WideResNet),
    /// VGG with batch norm.
    Vgg(Vgg),
    /// CIFAR MobileNetV2.
    MobileNetV2(MobileNetV2),
    /// ShuffleNetV1.
    ShuffleNetV1(ShuffleNetV1),
    /// ShuffleNetV2.
    ShuffleNetV2(ShuffleNetV2),
    /// ImageNet MobileNet V1.
    MobileNetV1(MobileNetV1),
    /// DeiT.
    Deit(Deit),
    /// DeepLabV3 (segmentation).
    DeepLabV3(DeepLabV3),
    /// DeepLabV3 on MobileNetV2 (segmentation).
    DeepLabV3MobileNet(crate::deeplab_mobilenet::DeepLabV3MobileNet),
    /// RetinaNet (detection).
    RetinaNet(RetinaNet),
}

macro_rules! dispatch {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            Model::ResNet($m) => $e,
            Model::WideResNet($m) => $e,
            Model::Vgg($m) => $e,
            Model::MobileNetV2($m) => $e,
            Model::ShuffleNetV1($m) => $e,
            Model::ShuffleNetV2($m) => $e,
            Model::MobileNetV1($m) => $e,
            Model::Deit($m) => $e,
            Model::DeepLabV3($m) => $e,
            Model::DeepLabV3MobileNet($m) => $e,
            Model::RetinaNet($m) => $e,
        }
    };
}

impl Backbone for Model {
    fn feature_info(&self) -> Vec<TapInfo> {
        dispatch!(self, m => m.feature_info())
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        dispatch!(self, m => m.forward_intermediates(x, request))
    }

    fn seed_dropout(&self, seed: u64) {
        dispatch!(self, m => m.seed_dropout(seed))
    }

    fn fork_dropout(&mut self) {
        dispatch!(self, m => m.fork_dropout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::trainable_params;

    /// Trainable parameters at the reference class count (100 for the CIFAR zoo, 1,000 for
    /// ImageNet), from `models/param_counts.py`, which walks the reference definitions
    /// (RepDistiller, torchvision, mdistiller, DeiT) and reproduces every published count
    /// (resnet20 278,324; resnet32x4 7,433,860; wrn_40_2 2,255,156; ResNet-18 11,689,512;
    /// ResNet-34 21,797,672; ResNet-50 25,557,032; DeiT-Tiny distilled 5,910,800).
    const REFERENCE_PARAMS: &[(ModelName, usize)] = &[
        (ModelName::Resnet8, 83_892),
        (ModelName::Resnet14, 181_108),
        (ModelName::Resnet20, 278_324),
        (ModelName::Resnet32, 472_756),
        (ModelName::Resnet44, 667_188),
        (ModelName::Resnet56, 861_620),
        (ModelName::Resnet110, 1_736_564),
        (ModelName::Resnet8x4, 1_233_540),
        (ModelName::Resnet32x4, 7_433_860),
        (ModelName::Wrn16_1, 180_916),
        (ModelName::Wrn16_2, 703_284),
        (ModelName::Wrn40_1, 569_780),
        (ModelName::Wrn40_2, 2_255_156),
        (ModelName::Vgg8, 3_965_028),
        (ModelName::Vgg11, 9_277_284),
        (ModelName::Vgg13, 9_462_180),
        (ModelName::Vgg16, 14_774_436),
        (ModelName::Vgg19, 20_086_692),
        (ModelName::MobileNetV2, 812_836),
        (ModelName::ShuffleNetV1, 949_258),
        (ModelName::ShuffleNetV2, 1_355_528),
        (ModelName::Resnet50Cifar, 23_705_252),
        (ModelName::Resnet18, 11_689_512),
        (ModelName::Resnet34, 21_797_672),
        (ModelName::Resnet50, 25_557_032),
        (ModelName::MobileNetV1, 4_231_976),
        (ModelName::DeitTiny, 5_910_800),
        (ModelName::DeitTinyP4, 5_399_816),
        (ModelName::Deeplabv3Resnet18, 16_053_034),
        (ModelName::Deeplabv3Resnet50, 42_004_074),
        (ModelName::Deeplabv3Resnet101, 60_996_202),
        (ModelName::Deeplabv3Mobilenetv2, 5_135_186),
        // torchvision 0.29, frozen batch norms (see `retinanet.rs`).
        (ModelName::RetinanetResnet18, 21_038_871),
        (ModelName::RetinanetResnet50, 34_014_999),
        (ModelName::RetinanetResnet101, 52_954_903),
        // The GroupNorm head: 8 convolutions lose their 256 biases and gain 8 group norms of
        // 2 × 256 affine terms, +2,048 (checked with torchvision's `RetinaNetHead(256, 9, 91,
        // norm_layer=partial(GroupNorm, 32))` on the v1 extractor, see `retinanet.rs`).
        (ModelName::RetinanetResnet18Gn, 21_040_919),
        (ModelName::RetinanetResnet50Gn, 34_017_047),
    ];

    #[test]
    fn parameter_counts_match_the_references() {
        assert_eq!(
            REFERENCE_PARAMS.len(),
            ModelName::ALL.len(),
            "every model is pinned"
        );
        let device = Device::flex();
        for &(name, expected) in REFERENCE_PARAMS {
            let model = name.reference_spec().init(&device).unwrap();
            assert_eq!(trainable_params(&model), expected, "{name}");
        }
    }

    #[test]
    fn names_round_trip() {
        for &m in ModelName::ALL {
            assert_eq!(m.as_str().parse::<ModelName>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<ModelName>(&json).unwrap(), m);
        }
        let msg = "resnet9".parse::<ModelName>().unwrap_err().to_string();
        assert!(
            msg.contains("unknown model `resnet9`") && msg.contains("wrn_40_2"),
            "{msg}"
        );
        let spec = ModelSpec {
            image_size: 30,
            ..ModelName::DeitTinyP4.reference_spec()
        };
        assert!(
            spec.init(&Device::flex())
                .unwrap_err()
                .to_string()
                .contains("multiple of the patch size 4")
        );
    }
}
