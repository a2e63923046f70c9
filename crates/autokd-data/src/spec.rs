//! The dataset string used in configs and on the command line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cifar::{self, Cifar};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::{cityscapes, coco, digits, fashion_mnist, folder, scenes, voc, vocseg};

/// Which dataset to read: `digits` (default), `fashion-mnist[:DIR]`, `cifar10:DIR`,
/// `cifar100:DIR`, `imagefolder:DIR`, `vocseg:DIR`, `cityscapes:DIR`,
/// `scenes[:fashion-mnist[:DIR]]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum DatasetSpec {
    /// The embedded handwritten digits.
    #[default]
    Digits,
    /// Fashion-MNIST from a folder (default: Debian's install location).
    FashionMnist(Option<PathBuf>),
    /// CIFAR-10 binary version.
    Cifar10(PathBuf),
    /// CIFAR-100 binary version.
    Cifar100(PathBuf),
    /// An ImageNet-style image folder.
    ImageFolder(PathBuf),
    /// PASCAL VOC semantic segmentation (images with class masks).
    VocSeg(PathBuf),
    /// Cityscapes with its fine masks (19 classes).
    Cityscapes(PathBuf),
    /// Segmentation scenes composed of the items of a base set (the digits or Fashion-MNIST).
    Scenes(Box<DatasetSpec>),
    /// The same scenes annotated with their items' boxes (detection).
    BoxScenes(Box<DatasetSpec>),
    /// PASCAL VOC object detection (XML boxes).
    Voc(PathBuf),
    /// COCO object detection (instances JSON).
    Coco(PathBuf),
}

/// The forms of a dataset string, for help texts and error messages.
pub const DATASET_FORMS: [&str; 11] = [
    "digits",
    "fashion-mnist[:DIR]",
    "cifar10:DIR",
    "cifar100:DIR",
    "imagefolder:DIR",
    "vocseg:DIR",
    "cityscapes:DIR",
    "scenes[:fashion-mnist[:DIR]]",
    "boxscenes[:fashion-mnist[:DIR]]",
    "voc:DIR",
    "coco:DIR|FILE",
];

/// The size a dataset declares, known without reading its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclaredSize {
    /// Image shape the models see, `[channels, height, width]`.
    pub input: [usize; 3],
    /// Classes.
    pub num_classes: usize,
    /// Training images of the smallest class.
    pub train_per_class: usize,
}

impl DatasetSpec {
    /// The published size of the dataset: CIFAR-10/100 (5,000 / 500 training images per class,
    /// 32×32×3), Fashion-MNIST (6,000 per class, 28×28×1), the embedded digits (at least 139
    /// training images per class, 8×8×1), the scenes (48×48×1 or 64×64×1, 11 classes, their
    /// training scenes all under class 0), Cityscapes (2,975 training images at the 512 × 1024
    /// crop, 19 classes; its masks have no image-level class either). `None` for an image
    /// folder or a VOC folder, whose
    /// size is their files'.
    pub fn declared_size(&self) -> Option<DeclaredSize> {
        let (input, num_classes, train_per_class) = match self {
            DatasetSpec::Digits => ([1, 8, 8], 10, 139),
            DatasetSpec::FashionMnist(_) => ([1, 28, 28], 10, 6000),
            DatasetSpec::Cifar10(_) => ([3, 32, 32], 10, 5000),
            DatasetSpec::Cifar100(_) => ([3, 32, 32], 100, 500),
            // Scenes carry no image-level class: every scene counts under class 0.
            DatasetSpec::Scenes(base) | DatasetSpec::BoxScenes(base) => {
                let l = match **base {
                    DatasetSpec::Digits => scenes::SceneLayout::DIGITS,
                    _ => scenes::SceneLayout::FASHION,
                };
                let classes = if matches!(self, DatasetSpec::Scenes(_)) {
                    11
                } else {
                    10
                };
                ([1, l.side, l.side], classes, l.scenes.0)
            }
            DatasetSpec::Cityscapes(_) => ([3, 512, 1024], 19, 2975),
            DatasetSpec::ImageFolder(_)
            | DatasetSpec::VocSeg(_)
            | DatasetSpec::Voc(_)
            | DatasetSpec::Coco(_) => return None,
        };
        Some(DeclaredSize {
            input,
            num_classes,
            train_per_class,
        })
    }

    /// Reads the dataset. Image folders are sized to [`folder::DEFAULT_IMAGE_SIZE`]; use
    /// [`DatasetSpec::load_with_size`] for another size.
    pub fn load(&self) -> Result<Dataset> {
        self.load_with_size(folder::DEFAULT_IMAGE_SIZE)
    }

    /// Reads the dataset; `image_size` is the side of the images for image folders.
    pub fn load_with_size(&self, image_size: usize) -> Result<Dataset> {
        match self {
            DatasetSpec::Digits => digits::load(),
            DatasetSpec::FashionMnist(dir) => fashion_mnist::load(
                dir.as_deref()
                    .unwrap_or_else(|| std::path::Path::new(fashion_mnist::DEFAULT_DIR)),
            ),
            DatasetSpec::Cifar10(dir) => cifar::load(Cifar::Ten, dir),
            DatasetSpec::Cifar100(dir) => cifar::load(Cifar::Hundred, dir),
            DatasetSpec::ImageFolder(dir) => folder::load(dir, image_size),
            DatasetSpec::VocSeg(dir) => vocseg::load(dir),
            DatasetSpec::Cityscapes(dir) => cityscapes::load(dir),
            DatasetSpec::Scenes(base) | DatasetSpec::BoxScenes(base) => {
                let layout = match **base {
                    DatasetSpec::Digits => scenes::SceneLayout::DIGITS,
                    _ => scenes::SceneLayout::FASHION,
                };
                if matches!(self, DatasetSpec::Scenes(_)) {
                    scenes::compose(&base.load()?, layout)
                } else {
                    scenes::compose_boxes(&base.load()?, layout)
                }
            }
            DatasetSpec::Voc(dir) => voc::load(dir),
            DatasetSpec::Coco(path) => coco::load(path),
        }
    }
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        let (name, dir) = match s.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let err = |message: String| DataError::Spec {
            spec: s.to_string(),
            message,
        };
        let need_dir = |kind: &str| -> Result<PathBuf> {
            match dir {
                Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
                _ => Err(err(format!("`{kind}` needs a folder: `{kind}:DIR`"))),
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "digits" => match dir {
                None => Ok(DatasetSpec::Digits),
                Some(_) => Err(err("`digits` is embedded and takes no folder".into())),
            },
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(DatasetSpec::FashionMnist(
                dir.filter(|d| !d.is_empty()).map(PathBuf::from),
            )),
            "cifar10" | "cifar-10" => Ok(DatasetSpec::Cifar10(need_dir("cifar10")?)),
            "cifar100" | "cifar-100" => Ok(DatasetSpec::Cifar100(need_dir("cifar100")?)),
            "imagefolder" | "image-folder" => {
                Ok(DatasetSpec::ImageFolder(need_dir("imagefolder")?))
            }
            "vocseg" | "voc-seg" => Ok(DatasetSpec::VocSeg(need_dir("vocseg")?)),
            "cityscapes" => Ok(DatasetSpec::Cityscapes(need_dir("cityscapes")?)),
            "scenes" | "boxscenes" => {
                let base = match dir {
                    None => DatasetSpec::Digits,
                    Some(rest) => rest.parse()?,
                };
                let boxes = name.eq_ignore_ascii_case("boxscenes");
                match base {
                    DatasetSpec::Digits | DatasetSpec::FashionMnist(_) if boxes => {
                        Ok(DatasetSpec::BoxScenes(Box::new(base)))
                    }
                    DatasetSpec::Digits | DatasetSpec::FashionMnist(_) => {
                        Ok(DatasetSpec::Scenes(Box::new(base)))
                    }
                    other => Err(err(format!(
                        "scenes are composed of the digits or Fashion-MNIST, not `{other}`"
                    ))),
                }
            }
            "voc" => Ok(DatasetSpec::Voc(need_dir("voc")?)),
            "coco" => Ok(DatasetSpec::Coco(need_dir("coco")?)),
            other => Err(err(format!(
                "unknown dataset `{other}`; expected one of: {}",
                DATASET_FORMS.join(", ")
            ))),
        }
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSpec::Digits => write!(f, "digits"),
            DatasetSpec::FashionMnist(None) => write!(f, "fashion-mnist"),
            DatasetSpec::FashionMnist(Some(d)) => write!(f, "fashion-mnist:{}", d.display()),
            DatasetSpec::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
            DatasetSpec::Cifar100(d) => write!(f, "cifar100:{}", d.display()),
            DatasetSpec::ImageFolder(d) => write!(f, "imagefolder:{}", d.display()),
            DatasetSpec::VocSeg(d) => write!(f, "vocseg:{}", d.display()),
            DatasetSpec::Cityscapes(d) => write!(f, "cityscapes:{}", d.display()),
            DatasetSpec::Scenes(base) => match **base {
                DatasetSpec::Digits => write!(f, "scenes"),
                ref other => write!(f, "scenes:{other}"),
            },
            DatasetSpec::BoxScenes(base) => match **base {
                DatasetSpec::Digits => write!(f, "boxscenes"),
                ref other => write!(f, "boxscenes:{other}"),
            },
            DatasetSpec::Voc(d) => write!(f, "voc:{}", d.display()),
            DatasetSpec::Coco(d) => write!(f, "coco:{}", d.display()),
        }
    }
}

impl Serialize for DatasetSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatasetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_digits_match_their_declared_size() {
        let ds = DatasetSpec::Digits.load().unwrap();
        let d = DatasetSpec::Digits.declared_size().unwrap();
        assert_eq!(d.input, ds.info.input_shape());
        assert_eq!(d.num_classes, ds.info.num_classes);
        let mut counts = vec![0usize; d.num_classes];
        for i in 0..ds.train.len() {
            counts[ds.train.label(i)] += 1;
        }
        assert_eq!(
            counts.iter().min().copied(),
            Some(d.train_per_class),
            "{counts:?}"
        );
    }

    #[test]
    fn parse_display_round_trip() {
        for s in [
            "digits",
            "fashion-mnist",
            "fashion-mnist:/d/f",
            "cifar10:/data/c10",
            "cifar100:rel/c100",
            "imagefolder:/imagenet",
            "vocseg:/voc/VOC2012",
            "cityscapes:/data/cityscapes",
            "scenes",
            "scenes:fashion-mnist",
            "scenes:fashion-mnist:/d/f",
            "boxscenes",
            "boxscenes:fashion-mnist",
            "voc:/data/VOCdevkit/VOC2007",
            "coco:/data/coco",
            "coco:/data/coco/annotations/instances_val2017.json",
        ] {
            let spec: DatasetSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!(
            "CIFAR-100:/x".parse::<DatasetSpec>().unwrap(),
            DatasetSpec::Cifar100("/x".into())
        );
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct C {
            dataset: DatasetSpec,
        }
        let c: C = serde_json::from_str(r#"{"dataset":"cifar10:/a"}"#).unwrap();
        assert_eq!(c.dataset, DatasetSpec::Cifar10("/a".into()));
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"dataset":"cifar10:/a"}"#
        );
    }

    #[test]
    fn bad_strings_are_explained() {
        let msg = "mnist".parse::<DatasetSpec>().unwrap_err().to_string();
        assert!(
            msg.contains("unknown dataset `mnist`") && msg.contains("cifar100:DIR"),
            "{msg}"
        );
        let msg = "cifar10".parse::<DatasetSpec>().unwrap_err().to_string();
        assert!(msg.contains("cifar10:DIR"), "{msg}");
        assert!("digits:/x".parse::<DatasetSpec>().is_err());
        let msg = "scenes:cifar10:/c"
            .parse::<DatasetSpec>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("digits or Fashion-MNIST"), "{msg}");
        assert!(
            "voc"
                .parse::<DatasetSpec>()
                .unwrap_err()
                .to_string()
                .contains("voc:DIR")
        );
        let r: std::result::Result<DatasetSpec, _> = serde_json::from_str(r#""svhn:/x""#);
        assert!(r.unwrap_err().to_string().contains("unknown dataset"));
    }
}
