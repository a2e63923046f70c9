//! ImageNet-style image folders: `DIR/train/<class>/*.{jpg,jpeg,png}` and `DIR/val/<class>/*`.
//! Class names are the sorted sub-folder names of `train/`. Images are decoded (to RGB) when a
//! batch is built, so the folder may be far larger than memory.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::image::{Image, ImageSource};

/// The side of the square images a model sees by default (ImageNet's 224).
pub const DEFAULT_IMAGE_SIZE: usize = 224;

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The files of one split of an image folder, with their class indices.
#[derive(Debug, Clone)]
pub struct FolderSource {
    files: Vec<(PathBuf, u16)>,
}

impl FolderSource {
    /// The files and labels, in order.
    pub fn files(&self) -> &[(PathBuf, u16)] {
        &self.files
    }
}

/// Decodes an image file to RGB, CHW bytes.
pub fn decode_rgb(path: &Path) -> Result<Image> {
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|e| DataError::Decode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.into_raw(); // HWC
    let mut chw = vec![0u8; raw.len()];
    for (p, px) in raw.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * h * w + p] = v;
        }
    }
    Image::new(3, h, w, chw)
}

impl ImageSource for FolderSource {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn label(&self, index: usize) -> usize {
        usize::from(self.files[index].1)
    }

    fn image(&self, index: usize) -> Result<Image> {
        let (path, _) = self.files.get(index).ok_or_else(|| {
            DataError::Config(format!(
                "image index {index} out of range (0..{})",
                self.files.len()
            ))
        })?;
        decode_rgb(path)
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        out.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn scan_split(dir: &Path, classes: &[String]) -> Result<FolderSource> {
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        if !class_dir.is_dir() {
            return Err(DataError::MissingDir {
                path: class_dir,
                what: format!("class folder `{class}` (every class of train/ must be here)"),
            });
        }
        let before = files.len();
        for p in sorted_entries(&class_dir)? {
            if is_image(&p) {
                files.push((p, label as u16));
            }
        }
        if files.len() == before {
            return Err(DataError::Format {
                path: class_dir,
                message: "class folder holds no .jpg, .jpeg or .png image".into(),
            });
        }
    }
    Ok(FolderSource { files })
}

/// Reads an image folder with `train/` and `val/`; the model sees `image_size`² RGB images.
pub fn load(dir: &Path, image_size: usize) -> Result<Dataset> {
    let train_dir = dir.join("train");
    let val_dir = dir.join("val");
    for (d, what) in [
        (dir, "an image folder with train/ and val/"),
        (&train_dir, "train/<class>/ folders"),
        (&val_dir, "val/<class>/ folders"),
    ] {
        if !d.is_dir() {
            return Err(DataError::MissingDir {
                path: d.to_path_buf(),
                what: what.into(),
            });
        }
    }
    let classes: Vec<String> = sorted_entries(&train_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
        .collect();
    if classes.is_empty() {
        return Err(DataError::MissingDir {
            path: train_dir,
            what: "at least one class folder".into(),
        });
    }
    if classes.len() > usize::from(u16::MAX) {
        return Err(DataError::format(
            &train_dir,
            "more than 65,535 class folders",
        ));
    }
    for p in sorted_entries(&val_dir)? {
        if let Some(name) = p.file_name().and_then(|n| n.to_str())
            && p.is_dir()
            && !classes.iter().any(|c| c == name)
        {
            return Err(DataError::format(
                &p,
                format!("class folder `{name}` of val/ is not a class of train/"),
            ));
        }
    }
    let train = scan_split(&train_dir, &classes)?;
    let val = scan_split(&val_dir, &classes)?;
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("imagefolder:{}", dir.display()),
            channels: 3,
            height: image_size,
            width: image_size,
            num_classes: classes.len(),
            class_names: classes,
            pixel_max: 255.0,
            // ImageNet statistics, the convention for image-folder training.
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            anchor_base: None,
        },
        train: Split::all(std::sync::Arc::new(train)),
        test: Split::all(std::sync::Arc::new(val)),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a small image folder: classes `a` and `b`, PNG and JPEG files.
    pub(crate) fn make_folder(root: &Path) {
        for split in ["train", "val"] {
            for (ci, class) in ["a", "b"].iter().enumerate() {
                let d = root.join(split).join(class);
                std::fs::create_dir_all(&d).unwrap();
                for k in 0..2u8 {
                    let img = image::RgbImage::from_fn(6, 4, |x, y| {
                        image::Rgb([x as u8 * 10 + k, y as u8 * 20, 100 * ci as u8])
                    });
                    let ext = if k == 0 { "png" } else { "jpg" };
                    img.save(d.join(format!("{k}.{ext}"))).unwrap();
                }
                std::fs::write(d.join("notes.txt"), "not an image").unwrap();
            }
        }
    }

    #[test]
    fn reads_classes_and_decodes() {
        let dir = tempfile::tempdir().unwrap();
        make_folder(dir.path());
        let ds = load(dir.path(), 16).unwrap();
        assert_eq!(ds.info.class_names, vec!["a", "b"]);
        assert_eq!((ds.train.len(), ds.test.len()), (4, 4));
        assert_eq!(ds.train.labels(), vec![0, 0, 1, 1]);
        let img = ds.train.image(0).unwrap(); // a/0.png, lossless
        assert_eq!((img.channels, img.height, img.width), (3, 4, 6));
        assert_eq!(
            (img.at(0, 0, 5), img.at(1, 3, 0), img.at(2, 0, 0)),
            (50, 60, 0)
        );
    }

    #[test]
    fn bad_folders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let err = load(&root.join("none"), 16).unwrap_err();
        assert!(matches!(err, DataError::MissingDir { .. }), "{err}");
        make_folder(root);
        // A class of train/ missing from val/.
        std::fs::remove_dir_all(root.join("val/b")).unwrap();
        let err = load(root, 16).unwrap_err();
        assert!(
            err.to_string().contains("val/b") && err.to_string().contains("class folder"),
            "{err}"
        );
        // An extra class in val/.
        std::fs::create_dir_all(root.join("val/b")).unwrap();
        std::fs::copy(root.join("val/a/0.png"), root.join("val/b/0.png")).unwrap();
        std::fs::create_dir_all(root.join("val/zebra")).unwrap();
        let err = load(root, 16).unwrap_err();
        assert!(err.to_string().contains("zebra"), "{err}");
        std::fs::remove_dir_all(root.join("val/zebra")).unwrap();
        // An empty class folder.
        std::fs::create_dir_all(root.join("train/c")).unwrap();
        let err = load(root, 16).unwrap_err();
        assert!(
            err.to_string().contains("train/c") && err.to_string().contains("no .jpg"),
            "{err}"
        );
        std::fs::remove_dir_all(root.join("train/c")).unwrap();
        // An undecodable image is named when it is read.
        std::fs::write(root.join("train/a/broken.jpg"), b"not a jpeg at all").unwrap();
        let ds = load(root, 16).unwrap();
        let pos = ds.train.labels().len();
        let broken = (0..pos).find_map(|i| ds.train.image(i).err()).unwrap();
        assert!(matches!(broken, DataError::Decode { .. }), "{broken}");
        assert!(broken.to_string().contains("broken.jpg"), "{broken}");
    }
}
