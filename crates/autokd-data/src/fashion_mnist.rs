//! Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; MIT): 60,000 training and 10,000 test images,
//! 28×28 grey, 10 classes, in the original gzip IDX files. Debian's `dataset-fashion-mnist`
//! installs them under [`DEFAULT_DIR`].

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::idx::read_idx_pair;
use crate::image::InMemory;

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The class names, in label order.
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Finds `stem` (e.g. `train-images-idx3-ubyte`) in `dir`, gzip or not.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(stem);
    if raw.is_file() {
        return Ok(raw);
    }
    Err(DataError::MissingFile {
        path: gz,
        what: format!("Fashion-MNIST `{stem}.gz` (or uncompressed `{stem}`)"),
    })
}

fn split(dir: &Path, prefix: &str) -> Result<InMemory> {
    let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (img, labels) = read_idx_pair(&images, &labels, 10)?;
    InMemory::new(1, img.dims[1], img.dims[2], img.data, labels)
}

/// Reads Fashion-MNIST from `dir` (the four IDX files).
pub fn load(dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
            what: "the four Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)".into(),
        });
    }
    let train = split(dir, "train")?;
    let test = split(dir, "t10k")?;
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("fashion-mnist:{}", dir.display()),
            channels: 1,
            height: 28,
            width: 28,
            num_classes: 10,
            class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
            pixel_max: 255.0,
            // Mean and std of the 60,000 training images scaled to [0, 1] (the values used by
            // torchvision-based Fashion-MNIST recipes).
            mean: vec![0.2860],
            std: vec![0.3530],
            anchor_base: None,
        },
        train: Split::all(train.shared()),
        test: Split::all(test.shared()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::encode_idx;

    #[test]
    fn reads_generated_files_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("train-images-idx3-ubyte"),
            encode_idx(&[2, 28, 28], &[7; 2 * 784]),
        )
        .unwrap();
        std::fs::write(d.join("train-labels-idx1-ubyte"), encode_idx(&[2], &[3, 9])).unwrap();
        std::fs::write(
            d.join("t10k-images-idx3-ubyte"),
            encode_idx(&[1, 28, 28], &[1; 784]),
        )
        .unwrap();
        let err = load(d).unwrap_err();
        assert!(
            err.to_string().contains("t10k-labels-idx1-ubyte.gz"),
            "{err}"
        );
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), encode_idx(&[1], &[0])).unwrap();
        let ds = load(d).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (2, 1));
        assert_eq!(ds.train.labels(), vec![3, 9]);
        assert_eq!(ds.train.image(1).unwrap().data, vec![7; 784]);
        let err = load(&d.join("absent")).unwrap_err();
        assert!(matches!(err, DataError::MissingDir { .. }), "{err}");
    }

    /// The real files of Debian's `dataset-fashion-mnist`. `.ci/run` installs them and sets
    /// `AUTOKD_REQUIRE_DATA`, so in CI this test cannot skip; elsewhere it skips, loudly, when
    /// the package is not installed.
    #[test]
    fn real_fashion_mnist() {
        let dir = Path::new(DEFAULT_DIR);
        if !dir.is_dir() && std::env::var_os("AUTOKD_REQUIRE_DATA").is_none() {
            eprintln!(
                "SKIPPED real_fashion_mnist: {DEFAULT_DIR} missing (apt-get install dataset-fashion-mnist)"
            );
            return;
        }
        let ds = load(dir).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (60_000, 10_000));
        assert_eq!(ds.train.class_counts(10), vec![6_000; 10]);
        assert_eq!(ds.test.class_counts(10), vec![1_000; 10]);
        let img = ds.train.image(0).unwrap();
        assert_eq!((img.channels, img.height, img.width), (1, 28, 28));
        // The first training image is an ankle boot (label 9), as in the original release.
        assert_eq!(ds.train.label(0), 9);
    }
}
