//! Cityscapes (`cityscapes:DIR`): `DIR/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` with
//! the fine masks `DIR/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png` (the 19 training
//! classes, 255 = ignore, as cityscapesScripts' `createTrainIdLabelImgs.py` writes them) or,
//! where those were not made, `<name>_gtFine_labelIds.png` mapped from the 35 label ids to the
//! 19 train ids (every other id 255), as cityscapesScripts' `labels.py` defines them. The
//! training split is `train` (2,975 images), the test split `val` (500), as the seed reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::vocseg::MaskedFiles;

/// The 19 training classes, by train id.
pub const CITYSCAPES_CLASSES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// Label id → train id (`labels.py`): road 7, sidewalk 8, building 11, wall 12, fence 13,
/// pole 17, traffic light 19, traffic sign 20, vegetation 21, terrain 22, sky 23, person 24,
/// rider 25, car 26, truck 27, bus 28, train 31, motorcycle 32, bicycle 33; all else 255.
pub fn train_ids() -> [u8; 256] {
    let mut t = [255u8; 256];
    for (train, id) in [
        7u8, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
    ]
    .into_iter()
    .enumerate()
    {
        t[usize::from(id)] = train as u8;
    }
    t
}

/// The images of one split and their masks; label ids are mapped when the split has no
/// `labelTrainIds` files.
fn split(dir: &Path, name: &str) -> Result<Split> {
    let images = dir.join("leftImg8bit").join(name);
    let masks = dir.join("gtFine").join(name);
    let mut cities: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(|e| DataError::io(&images, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cities.sort();
    let mut pairs = Vec::new();
    for city in cities {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&city)
            .map_err(|e| DataError::io(&city, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("_leftImg8bit.png"))
            })
            .collect();
        files.sort();
        let city_name = city.file_name().map(PathBuf::from).unwrap_or_default();
        for image in files {
            let stem = image
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix("_leftImg8bit.png"))
                .unwrap_or_default()
                .to_string();
            pairs.push((image, masks.join(&city_name), stem));
        }
    }
    if pairs.is_empty() {
        return Err(DataError::Config(format!(
            "{}: no <city>/*_leftImg8bit.png images",
            images.display()
        )));
    }
    // One kind of mask per split: train ids where the first image has them, else label ids.
    let trained =
        |(_, m, s): &(PathBuf, PathBuf, String)| m.join(format!("{s}_gtFine_labelTrainIds.png"));
    let use_train_ids = trained(&pairs[0]).is_file();
    let files = pairs
        .iter()
        .map(|p| {
            let (image, m, s) = p;
            let mask = if use_train_ids {
                trained(p)
            } else {
                m.join(format!("{s}_gtFine_labelIds.png"))
            };
            if !mask.is_file() {
                return Err(DataError::Config(format!(
                    "{}: missing, the mask of {}",
                    mask.display(),
                    image.display()
                )));
            }
            Ok((image.clone(), mask))
        })
        .collect::<Result<Vec<_>>>()?;
    let remap = (!use_train_ids).then(train_ids);
    Ok(Split::all(Arc::new(MaskedFiles::new(files, remap))))
}

/// Reads a Cityscapes folder (see the module documentation).
pub fn load(dir: &Path) -> Result<Dataset> {
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("cityscapes:{}", dir.display()),
            channels: 3,
            // The crop the seed trains on; images are 1024 × 2048.
            height: 512,
            width: 1024,
            num_classes: CITYSCAPES_CLASSES.len(),
            class_names: CITYSCAPES_CLASSES.iter().map(|s| s.to_string()).collect(),
            pixel_max: 255.0,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            anchor_base: None,
        },
        train: split(dir, "train")?,
        test: split(dir, "val")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::Annotation;

    fn write(dir: &Path, split: &str, city: &str, name: &str, ids: &[u8], kind: &str) {
        let img = dir.join("leftImg8bit").join(split).join(city);
        let gt = dir.join("gtFine").join(split).join(city);
        std::fs::create_dir_all(&img).unwrap();
        std::fs::create_dir_all(&gt).unwrap();
        image::RgbImage::new(3, 2)
            .save(img.join(format!("{name}_leftImg8bit.png")))
            .unwrap();
        image::GrayImage::from_raw(3, 2, ids.to_vec())
            .unwrap()
            .save(gt.join(format!("{name}_gtFine_{kind}.png")))
            .unwrap();
    }

    /// Label ids map to train ids by `labels.py` (road 7 → 0, sidewalk 8 → 1, car 26 → 13,
    /// bicycle 33 → 18; unlabeled 0 and license plate −1 (255) → 255); `labelTrainIds` files
    /// are read as they are; cities and files come in sorted order; a missing mask is named.
    #[test]
    fn label_ids_become_train_ids() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "train",
            "bonn",
            "bonn_000001_000019",
            &[7, 8, 0, 26, 33, 255],
            "labelIds",
        );
        write(
            d,
            "train",
            "aachen",
            "aachen_000000_000019",
            &[11; 6],
            "labelIds",
        );
        write(
            d,
            "val",
            "lindau",
            "lindau_000000_000019",
            &[0, 1, 18, 255, 5, 5],
            "labelTrainIds",
        );
        let ds = load(d).unwrap();
        assert_eq!(
            (ds.train.len(), ds.test.len(), ds.info.num_classes),
            (2, 1, 19)
        );
        let mask = |split: &Split, i| match split.annotated(i).unwrap().annotation {
            Annotation::Mask(m) => (0..6).map(|k| m.at(k / 3, k % 3)).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(mask(&ds.train, 0), [2; 6]); // aachen first: building 11 → 2
        assert_eq!(mask(&ds.train, 1), [0, 1, 255, 13, 18, 255]);
        assert_eq!(mask(&ds.test, 0), [0, 1, 18, 255, 5, 5]);
        std::fs::remove_file(
            d.join("gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"),
        )
        .unwrap();
        let err = load(d).unwrap_err().to_string();
        assert!(
            err.contains("lindau_000000_000019_gtFine_labelIds.png"),
            "{err}"
        );
    }
}
