//! PASCAL VOC semantic segmentation (`vocseg:DIR`): `DIR/JPEGImages/<name>.jpg` with class masks
//! `DIR/SegmentationClass/<name>.png` (VOC's palette PNGs, whose palette index is the class; 255
//! marks object borders and is ignored) or `DIR/SegmentationClassPNG/<name>.png` (the same, as
//! labelme's VOC export names the folder). The splits are `DIR/ImageSets/Segmentation/train.txt`
//! and `val.txt` (the test split); without them every image is in the training split and the
//! test split is empty. Class names come from `DIR/class_names.txt` (labelme) or are VOC's 21.
//! Images and masks are decoded when a batch is built.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::annotation::{Annotation, ClassMask, IGNORE, MaskValues};
use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::folder::decode_rgb;
use crate::image::{Image, ImageSource};

/// PASCAL VOC's 21 classes, background first.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The side of the crops a segmentation model is trained on by default (512 × 512).
pub const DEFAULT_CROP: usize = 512;

/// Reads a PNG of class indices as they are stored: a palette PNG's indices (VOC), or a grey
/// PNG's values (Cityscapes' `*_labelTrainIds.png`; 16-bit grey gives a `u16` mask). Colour
/// PNGs are refused: their classes would need a palette lookup.
pub fn read_class_png(path: &Path) -> Result<ClassMask> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let bad = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("the image is too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let rows = buf.chunks(info.line_size).take(h);
    let values = match (info.color_type, info.bit_depth) {
        (png::ColorType::Indexed | png::ColorType::Grayscale, png::BitDepth::Eight) => {
            MaskValues::U8(rows.flat_map(|r| r[..w].iter().copied()).collect())
        }
        (png::ColorType::Grayscale, png::BitDepth::Sixteen) => MaskValues::U16(
            rows.flat_map(|r| {
                r[..2 * w]
                    .chunks_exact(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
            })
            .collect(),
        ),
        (c, d) => {
            return Err(bad(format!(
                "a {c:?} PNG of depth {d:?}; expected a class mask: 8-bit palette or grey, or 16-bit grey"
            )));
        }
    };
    ClassMask::new(h, w, values)
}

/// Images with class masks, decoded on demand; the mask values optionally mapped through a
/// table (Cityscapes' label ids to train ids).
#[derive(Debug, Clone)]
pub struct MaskedFiles {
    /// `(image, mask)` paths.
    files: Vec<(PathBuf, PathBuf)>,
    /// Stored value → class, for values below 256; larger values become [`IGNORE`].
    remap: Option<Arc<[u8; 256]>>,
}

impl MaskedFiles {
    /// The pairs, read as they are or through `remap`.
    pub fn new(files: Vec<(PathBuf, PathBuf)>, remap: Option<[u8; 256]>) -> Self {
        Self {
            files,
            remap: remap.map(Arc::new),
        }
    }

    /// The pairs, in order.
    pub fn files(&self) -> &[(PathBuf, PathBuf)] {
        &self.files
    }

    /// The `(image, mask)` paths of `index`.
    fn pair(&self, index: usize) -> Result<&(PathBuf, PathBuf)> {
        self.files.get(index).ok_or_else(|| {
            DataError::Config(format!(
                "image index {index} out of range (0..{})",
                self.files.len()
            ))
        })
    }
}

impl ImageSource for MaskedFiles {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn label(&self, _index: usize) -> usize {
        0
    }

    fn image(&self, index: usize) -> Result<Image> {
        decode_rgb(&self.pair(index)?.0)
    }

    fn annotation(&self, index: usize) -> Result<Annotation> {
        let path = &self.pair(index)?.1;
        let mask = read_class_png(path)?;
        let Some(table) = &self.remap else {
            return Ok(Annotation::Mask(mask));
        };
        let values = match &mask.values {
            MaskValues::U8(v) => MaskValues::U8(v.iter().map(|&x| table[usize::from(x)]).collect()),
            MaskValues::U16(v) => MaskValues::U8(
                v.iter()
                    .map(|&x| table.get(usize::from(x)).copied().unwrap_or(IGNORE as u8))
                    .collect(),
            ),
        };
        Ok(Annotation::Mask(ClassMask::new(
            mask.height,
            mask.width,
            values,
        )?))
    }
}

/// The names listed in a VOC split file (or a class-name file), one per line.
pub(crate) fn split_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Reads a VOC segmentation folder (see the module documentation).
pub fn load(dir: &Path) -> Result<Dataset> {
    let images = dir.join("JPEGImages");
    let masks = ["SegmentationClass", "SegmentationClassPNG"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| {
            std::fs::read_dir(d).is_ok_and(|mut it| {
                it.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png")))
            })
        })
        .ok_or_else(|| {
            DataError::Config(format!(
                "{}: no SegmentationClass/*.png or SegmentationClassPNG/*.png (VOC class masks)",
                dir.display()
            ))
        })?;
    let pair = |name: &str| -> Result<(PathBuf, PathBuf)> {
        let image = images.join(format!("{name}.jpg"));
        let mask = masks.join(format!("{name}.png"));
        for p in [&image, &mask] {
            if !p.is_file() {
                return Err(DataError::Config(format!(
                    "{}: missing (listed in the split or found among the masks)",
                    p.display()
                )));
            }
        }
        Ok((image, mask))
    };
    let sets = dir.join("ImageSets").join("Segmentation");
    let (train, test) = if sets.join("train.txt").is_file() {
        let val = sets.join("val.txt");
        let test = if val.is_file() {
            split_names(&val)?
        } else {
            Vec::new()
        };
        (split_names(&sets.join("train.txt"))?, test)
    } else {
        let mut names: Vec<String> = std::fs::read_dir(&masks)
            .map_err(|e| DataError::io(&masks, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(String::from))
            .collect();
        names.sort();
        (names, Vec::new())
    };
    let source = |names: &[String]| -> Result<Split> {
        let files = names.iter().map(|n| pair(n)).collect::<Result<Vec<_>>>()?;
        Ok(Split::all(Arc::new(MaskedFiles::new(files, None))))
    };
    let class_file = dir.join("class_names.txt");
    let class_names: Vec<String> = if class_file.is_file() {
        split_names(&class_file)?
    } else {
        VOC_CLASSES.iter().map(|s| s.to_string()).collect()
    };
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("vocseg:{}", dir.display()),
            channels: 3,
            height: DEFAULT_CROP,
            width: DEFAULT_CROP,
            num_classes: class_names.len(),
            class_names,
            pixel_max: 255.0,
            // ImageNet's statistics, as torchvision's and mmseg's VOC pipelines normalize.
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            anchor_base: None,
        },
        train: source(&train)?,
        test: source(&test)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELME: &str =
        "/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc";

    /// A NumPy `.npy` array of integers (labelme writes the class masks as `<i4`), as `i64`.
    fn read_npy(path: &Path) -> (Vec<usize>, Vec<i64>) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        let shape: Vec<usize> = header
            .split("'shape': (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let data = &bytes[10 + header_len..];
        let values = if header.contains("'<i4'") {
            data.chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        } else if header.contains("'<i8'") {
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect()
        } else {
            panic!("{}: unexpected dtype in {header}", path.display())
        };
        (shape, values)
    }

    /// The real PASCAL VOC 2011 photos with class masks of Debian's `labelme-examples`: three
    /// images, 21 classes from `class_names.txt`, every palette-PNG mask equal to labelme's own
    /// `.npy` array of the same mask (its ignored pixels, −1 there, are 255 in the PNG), the
    /// masks the size of their photos. `AUTOKD_REQUIRE_DATA` (set by `.ci/run`, which installs
    /// the package) makes the files mandatory; elsewhere the test skips, saying so.
    #[test]
    fn labelme_voc_masks_match_their_arrays() {
        let dir = Path::new(LABELME);
        if !dir.is_dir() && std::env::var_os("AUTOKD_REQUIRE_DATA").is_none() {
            eprintln!("skipping: {LABELME} missing (apt-get install labelme-examples)");
            return;
        }
        let ds = load(dir).unwrap();
        assert_eq!(ds.info.num_classes, 21);
        assert_eq!(ds.info.class_names[0], "_background_");
        assert_eq!((ds.train.len(), ds.test.len()), (3, 0));
        let mut classes = std::collections::BTreeSet::new();
        for i in 0..ds.train.len() {
            let item = ds.train.annotated(i).unwrap();
            let Annotation::Mask(mask) = &item.annotation else {
                panic!("not a mask")
            };
            assert_eq!(
                (mask.height, mask.width),
                (item.image.height, item.image.width)
            );
            let stem = ["2011_000003", "2011_000006", "2011_000025"][i];
            let (shape, want) = read_npy(&dir.join(format!("SegmentationClass/{stem}.npy")));
            assert_eq!(shape, [mask.height, mask.width], "{stem}");
            for (k, &v) in want.iter().enumerate() {
                let got = mask.at(k / mask.width, k % mask.width);
                let want = if v < 0 { 255 } else { v as u16 };
                assert_eq!(got, want, "{stem}: pixel {k}");
            }
            classes.extend(mask.class_counts().into_keys());
        }
        // Background and at least one object class occur.
        assert!(classes.contains(&0) && classes.len() >= 2, "{classes:?}");
    }

    /// A colour PNG is refused with the file named; a missing mask folder is named too.
    #[test]
    fn bad_masks_are_refused_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rgb.png");
        image::RgbImage::new(2, 2).save(&path).unwrap();
        let err = read_class_png(&path).unwrap_err().to_string();
        assert!(
            err.contains("rgb.png") && err.contains("expected a class mask"),
            "{err}"
        );
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("SegmentationClass"), "{err}");
        // A grey 8-bit PNG reads as its values.
        let grey = dir.path().join("grey.png");
        image::GrayImage::from_raw(3, 1, vec![0, 7, 255])
            .unwrap()
            .save(&grey)
            .unwrap();
        let m = read_class_png(&grey).unwrap();
        assert_eq!((m.at(0, 0), m.at(0, 1), m.at(0, 2)), (0, 7, 255));
    }
}
