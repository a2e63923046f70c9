//! COCO object detection (`coco:DIR` or `coco:FILE.json`): boxes from COCO's instance
//! annotations.
//!
//! `DIR` is COCO's layout: `DIR/annotations/instances_train*.json` for training and
//! `instances_val*.json` for test, each split's images in `DIR/<split>/` (the file's name after
//! `instances_`, so `train2017/`, `val2017/`). A single file (or a folder holding one
//! `annotations.json`, as labelme's COCO export does) gives the training split, its images'
//! `file_name`s relative to the file's folder.
//!
//! Classes are the categories in id order (a category named `_background_`, labelme's, is left
//! out) and a box's label is its category's position there (mmdet's `cat2label`: COCO's 80 ids
//! among 1 … 90 become 0 … 79). Boxes are `[x, y, w, h]` in the file; `iscrowd` boxes are crowd
//! regions and `area` is COCO's (the segment's, which evaluation sizes by); boxes with no width
//! or height are skipped, as mmdet and torchvision skip them. Images are decoded when a batch is
//! built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::annotation::BoxAnnotation;
use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::voc::{BoxedFiles, DEFAULT_DETECTION_SIZE};

#[derive(Debug, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Debug, Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    #[serde(default)]
    area: Option<f64>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Debug, Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// One annotation file read: class names and `(image, boxes)` in the file's image order.
type Read = (Vec<String>, Vec<(PathBuf, Vec<BoxAnnotation>)>);

/// Reads one COCO instances file; image paths are `file_name` under `images`.
pub fn read_instances(path: &Path, images: &Path) -> Result<Read> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let file: CocoFile = serde_json::from_str(&text).map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        message: format!("not a COCO instances file: {e}"),
    })?;
    let mut categories: Vec<&CocoCategory> = file
        .categories
        .iter()
        .filter(|c| c.name != "_background_")
        .collect();
    categories.sort_by_key(|c| c.id);
    let label_of: BTreeMap<u64, u16> = categories
        .iter()
        .enumerate()
        .map(|(i, c)| u16::try_from(i).map(|l| (c.id, l)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            DataError::Config(format!("{}: more than 65,535 categories", path.display()))
        })?;
    let mut boxes: BTreeMap<u64, Vec<BoxAnnotation>> =
        file.images.iter().map(|i| (i.id, Vec::new())).collect();
    for (k, a) in file.annotations.iter().enumerate() {
        let bad = |what: String| DataError::Decode {
            path: path.to_path_buf(),
            message: format!("annotation {k}: {what}"),
        };
        let label = *label_of.get(&a.category_id).ok_or_else(|| {
            bad(format!(
                "category {} is not among the categories",
                a.category_id
            ))
        })?;
        let list = boxes
            .get_mut(&a.image_id)
            .ok_or_else(|| bad(format!("image {} is not among the images", a.image_id)))?;
        let [x, y, w, h] = a.bbox;
        if ![x, y, w, h].iter().all(|v| v.is_finite()) {
            return Err(bad(format!("bbox {:?} is not finite", a.bbox)));
        }
        if w <= 0.0 || h <= 0.0 {
            continue;
        }
        list.push(BoxAnnotation {
            xyxy: [x as f32, y as f32, (x + w) as f32, (y + h) as f32],
            label,
            crowd: a.iscrowd != 0,
            area: a.area.unwrap_or(w * h) as f32,
        });
    }
    let mut items = Vec::with_capacity(file.images.len());
    for img in &file.images {
        let p = images.join(&img.file_name);
        if !p.is_file() {
            return Err(DataError::Config(format!(
                "{}: image {} `{}` not found at {}",
                path.display(),
                img.id,
                img.file_name,
                p.display()
            )));
        }
        items.push((p, boxes.remove(&img.id).unwrap_or_default()));
    }
    let names = categories.iter().map(|c| c.name.clone()).collect();
    Ok((names, items))
}

/// The instances file of a split in `DIR/annotations` whose name starts with `prefix`.
fn instances(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let ann = dir.join("annotations");
    let Ok(entries) = std::fs::read_dir(&ann) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(DataError::Config(format!(
            "{}: several {prefix}*.json files ({}); name one with coco:FILE",
            ann.display(),
            found
                .iter()
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The images folder of `DIR/annotations/instances_<split>.json`: `DIR/<split>`.
fn split_images(dir: &Path, file: &Path) -> PathBuf {
    let split = file
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("instances_"))
        .unwrap_or_default();
    dir.join(split)
}

/// Reads a COCO folder or file (see the module documentation).
pub fn load(path: &Path) -> Result<Dataset> {
    let (names, train, test) = if path.is_file() {
        let folder = path.parent().unwrap_or(Path::new("."));
        let (names, train) = read_instances(path, folder)?;
        (names, train, Vec::new())
    } else if path.join("annotations.json").is_file() {
        let (names, train) = read_instances(&path.join("annotations.json"), path)?;
        (names, train, Vec::new())
    } else {
        let train_file = instances(path, "instances_train")?.ok_or_else(|| {
            DataError::Config(format!(
                "{}: no annotations/instances_train*.json nor annotations.json (COCO instances)",
                path.display()
            ))
        })?;
        let (names, train) = read_instances(&train_file, &split_images(path, &train_file))?;
        let test = match instances(path, "instances_val")? {
            Some(f) => {
                let (test_names, test) = read_instances(&f, &split_images(path, &f))?;
                if test_names != names {
                    return Err(DataError::Config(format!(
                        "{}: its categories differ from {}'s",
                        f.display(),
                        train_file.display()
                    )));
                }
                test
            }
            None => Vec::new(),
        };
        (names, train, test)
    };
    let (height, width) = DEFAULT_DETECTION_SIZE;
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("coco:{}", path.display()),
            channels: 3,
            height,
            width,
            num_classes: names.len(),
            class_names: names,
            pixel_max: 255.0,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            anchor_base: None,
        },
        train: Split::all(Arc::new(BoxedFiles::new(train))),
        test: Split::all(Arc::new(BoxedFiles::new(test))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::Annotation;

    const LABELME: &str =
        "/usr/share/doc/labelme-examples/examples/instance_segmentation/data_dataset_coco";

    /// labelme's COCO export of PASCAL VOC photos: 20 classes (its `_background_` category left
    /// out), 3 images with 3, 3 and 6 instances; the first image's boxes as in the file
    /// (`[191, 107, 123, 221]` → `[191, 107, 314, 328]`, category 15 "person" → label 14, area
    /// 15,689 from the segment, not 123 × 221).
    #[test]
    fn labelme_coco_boxes() {
        let dir = Path::new(LABELME);
        if !dir.is_dir() {
            assert!(
                std::env::var_os("AUTOKD_REQUIRE_DATA").is_none(),
                "{LABELME} is missing and AUTOKD_REQUIRE_DATA is set"
            );
            eprintln!("skipping: {LABELME} missing (apt-get install labelme-examples)");
            return;
        }
        let ds = load(dir).unwrap();
        assert_eq!(ds.info.num_classes, 20);
        assert_eq!(ds.info.class_names[14], "person");
        assert_eq!((ds.train.len(), ds.test.len()), (3, 0));
        let counts: Vec<usize> = (0..3)
            .map(|i| match ds.train.annotated(i).unwrap().annotation {
                Annotation::Boxes(b) => b.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(counts, vec![3, 3, 6]);
        let Annotation::Boxes(b) = ds.train.annotated(0).unwrap().annotation else {
            panic!("not boxes")
        };
        assert_eq!(b[0].xyxy, [191.0, 107.0, 314.0, 328.0]);
        assert_eq!((b[0].label, b[0].area, b[0].crowd), (14, 15689.0, false));
        assert_eq!(b[2].label, 4); // category 5, "bottle"
        assert_eq!(ds.train.image(0).unwrap().width, 500);
    }

    /// COCO's own layout with sparse category ids, a crowd box, a zero-width box skipped, an
    /// image without boxes; errors name the file.
    #[test]
    fn coco_layout_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("annotations")).unwrap();
        std::fs::create_dir_all(d.join("train2017")).unwrap();
        for f in ["a.jpg", "b.jpg"] {
            image::RgbImage::new(4, 4)
                .save(d.join("train2017").join(f))
                .unwrap();
        }
        let json = r#"{"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}],
            "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
            "annotations": [
              {"image_id": 7, "category_id": 90, "bbox": [0, 0, 2, 3], "area": 5, "iscrowd": 1},
              {"image_id": 7, "category_id": 1, "bbox": [1, 1, 0, 3]},
              {"image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2]}]}"#;
        std::fs::write(d.join("annotations/instances_train2017.json"), json).unwrap();
        let ds = load(d).unwrap();
        assert_eq!(ds.info.class_names, vec!["person", "toothbrush"]);
        let Annotation::Boxes(b) = ds.train.annotated(0).unwrap().annotation else {
            panic!("not boxes")
        };
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].xyxy, b[0].label, b[0].crowd, b[0].area),
            ([0.0, 0.0, 2.0, 3.0], 1, true, 5.0)
        );
        assert_eq!((b[1].label, b[1].area), (0, 4.0));
        assert_eq!(
            ds.train.annotated(1).unwrap().annotation,
            Annotation::Boxes(Vec::new())
        );
        assert_eq!(ds.test.len(), 0);
        // An unknown category, an unknown image and a missing image file are named.
        let bad = json.replace("\"category_id\": 90", "\"category_id\": 3");
        std::fs::write(d.join("annotations/instances_train2017.json"), bad).unwrap();
        let e = load(d).unwrap_err().to_string();
        assert!(
            e.contains("instances_train2017.json") && e.contains("category 3"),
            "{e}"
        );
        let bad = json.replace(
            "\"image_id\": 7, \"category_id\": 90",
            "\"image_id\": 8, \"category_id\": 90",
        );
        std::fs::write(d.join("annotations/instances_train2017.json"), bad).unwrap();
        let e = load(d).unwrap_err().to_string();
        assert!(e.contains("image 8"), "{e}");
        std::fs::remove_file(d.join("train2017/b.jpg")).unwrap();
        std::fs::write(d.join("annotations/instances_train2017.json"), json).unwrap();
        let e = load(d).unwrap_err().to_string();
        assert!(e.contains("b.jpg") && e.contains("not found"), "{e}");
        std::fs::write(d.join("annotations/instances_train2017.json"), "{").unwrap();
        let e = load(d).unwrap_err().to_string();
        assert!(e.contains("not a COCO instances file"), "{e}");
    }
}
