//! CIFAR-10 and CIFAR-100, "binary version" (Krizhevsky 2009).
//!
//! CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`, records of 3,073
//! bytes: the label (0..9), then 1,024 red, 1,024 green and 1,024 blue bytes, row-major (so the
//! pixels are already CHW). CIFAR-100: `train.bin` and `test.bin`, records of 3,074 bytes: the
//! coarse label (0..19), the fine label (0..99), then the pixels as above. autokd trains on the
//! fine labels.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::image::InMemory;

const PIXELS: usize = 3 * 32 * 32;

/// Which of the two CIFAR datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes, 50,000 + 10,000 images.
    Ten,
    /// 100 fine classes (20 coarse), 50,000 + 10,000 images.
    Hundred,
}

impl Cifar {
    /// Bytes per record.
    pub fn record_size(self) -> usize {
        match self {
            Cifar::Ten => 1 + PIXELS,
            Cifar::Hundred => 2 + PIXELS,
        }
    }

    /// Number of (fine) classes.
    pub fn num_classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    fn train_files(self) -> Vec<String> {
        match self {
            Cifar::Ten => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Cifar::Hundred => vec!["train.bin".into()],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            Cifar::Ten => "test_batch.bin",
            Cifar::Hundred => "test.bin",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar10",
            Cifar::Hundred => "cifar100",
        }
    }
}

/// Parses the records of one CIFAR binary file into pixels and (fine) labels.
pub fn parse_records(kind: Cifar, path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u16>)> {
    let rec = kind.record_size();
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            record: rec,
            found: bytes.len() as u64,
        });
    }
    let n = bytes.len() / rec;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = match kind {
            Cifar::Ten => r[0],
            Cifar::Hundred => {
                if r[0] >= 20 {
                    return Err(DataError::LabelOutOfRange {
                        path: path.to_path_buf(),
                        index: i,
                        label: u64::from(r[0]),
                        num_classes: 20,
                    });
                }
                r[1]
            }
        };
        if usize::from(label) >= kind.num_classes() {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index: i,
                label: u64::from(label),
                num_classes: kind.num_classes(),
            });
        }
        labels.push(u16::from(label));
        pixels.extend_from_slice(&r[rec - PIXELS..]);
    }
    Ok((pixels, labels))
}

fn read_files(kind: Cifar, dir: &Path, files: &[String]) -> Result<InMemory> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let path = dir.join(f);
        if !path.is_file() {
            return Err(DataError::MissingFile {
                path,
                what: format!("{} binary batch", kind.key()),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let (p, l) = parse_records(kind, &path, &bytes)?;
        pixels.extend_from_slice(&p);
        labels.extend_from_slice(&l);
    }
    InMemory::new(3, 32, 32, pixels, labels)
}

fn class_names(kind: Cifar, dir: &Path) -> Result<Vec<String>> {
    let (file, builtin): (&str, &[&str]) = match kind {
        Cifar::Ten => ("batches.meta.txt", &CIFAR10_CLASSES),
        Cifar::Hundred => ("fine_label_names.txt", &CIFAR100_CLASSES),
    };
    let path: PathBuf = dir.join(file);
    if !path.is_file() {
        return Ok(builtin.iter().map(|s| s.to_string()).collect());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != kind.num_classes() {
        return Err(DataError::format(
            &path,
            format!(
                "{} class names, expected {}",
                names.len(),
                kind.num_classes()
            ),
        ));
    }
    Ok(names)
}

/// Reads CIFAR-10 or CIFAR-100 from the folder holding its `.bin` files.
pub fn load(kind: Cifar, dir: &Path) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
            what: format!("the {} binary files", kind.key()),
        });
    }
    let train = read_files(kind, dir, &kind.train_files())?;
    let test = read_files(kind, dir, &[kind.test_file().to_string()])?;
    // Channel means and stds of the training images in [0, 1], as used by RepDistiller and
    // mdistiller (CIFAR-100) and the common CIFAR-10 recipes.
    let (mean, std) = match kind {
        Cifar::Ten => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
        Cifar::Hundred => (vec![0.5071, 0.4865, 0.4409], vec![0.2673, 0.2564, 0.2762]),
    };
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("{}:{}", kind.key(), dir.display()),
            channels: 3,
            height: 32,
            width: 32,
            num_classes: kind.num_classes(),
            class_names: class_names(kind, dir)?,
            pixel_max: 255.0,
            mean,
            std,
            anchor_base: None,
        },
        train: Split::all(train.shared()),
        test: Split::all(test.shared()),
    })
}

/// CIFAR-10 class names (`batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 fine class names in label order (`fine_label_names.txt`).
pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with the given labels and pixel bytes `seed, seed+1, ...` (mod 256).
    fn record(labels: &[u8], seed: u8) -> Vec<u8> {
        let mut r = labels.to_vec();
        r.extend((0..PIXELS).map(|i| (i as u8).wrapping_add(seed)));
        r
    }

    #[test]
    fn cifar10_generated_batches() {
        let dir = tempfile::tempdir().unwrap();
        for b in 1..=5u8 {
            let bytes: Vec<u8> = [record(&[b], b), record(&[9], 0)].concat();
            std::fs::write(dir.path().join(format!("data_batch_{b}.bin")), bytes).unwrap();
        }
        let err = load(Cifar::Ten, dir.path()).unwrap_err();
        assert!(err.to_string().contains("test_batch.bin"), "{err}");
        std::fs::write(dir.path().join("test_batch.bin"), record(&[4], 3)).unwrap();
        let ds = load(Cifar::Ten, dir.path()).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (10, 1));
        assert_eq!(ds.train.labels(), vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
        let img = ds.test.image(0).unwrap();
        assert_eq!((img.channels, img.height, img.width), (3, 32, 32));
        // Byte 1 of the record is red (0,0); byte 1 + 1024 is green (0,0).
        assert_eq!(
            (img.at(0, 0, 0), img.at(1, 0, 0), img.at(2, 31, 31)),
            (3, 3, 2)
        );
        assert_eq!(ds.info.class_names[0], "airplane");
    }

    #[test]
    fn cifar100_fine_labels_and_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("train.bin"),
            [record(&[3, 77], 0), record(&[19, 99], 1)].concat(),
        )
        .unwrap();
        std::fs::write(p.join("test.bin"), record(&[0, 5], 2)).unwrap();
        let ds = load(Cifar::Hundred, p).unwrap();
        assert_eq!(ds.train.labels(), vec![77, 99]);
        assert_eq!(ds.info.class_names[99], "worm");

        // Record size mismatch: one byte short.
        let mut short = record(&[0, 5], 2);
        short.pop();
        std::fs::write(p.join("test.bin"), &short).unwrap();
        let err = load(Cifar::Hundred, p).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::RecordSize {
                    record: 3074,
                    found: 3073,
                    ..
                }
            ),
            "{err}"
        );
        // Fine label out of range.
        std::fs::write(p.join("test.bin"), record(&[0, 100], 2)).unwrap();
        let err = load(Cifar::Hundred, p).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::LabelOutOfRange {
                    label: 100,
                    num_classes: 100,
                    ..
                }
            ),
            "{err}"
        );
        // Coarse label out of range.
        std::fs::write(p.join("test.bin"), record(&[20, 1], 2)).unwrap();
        assert!(matches!(
            load(Cifar::Hundred, p).unwrap_err(),
            DataError::LabelOutOfRange {
                num_classes: 20,
                ..
            }
        ));
        // Class-name file of the wrong length.
        std::fs::write(p.join("test.bin"), record(&[0, 5], 2)).unwrap();
        std::fs::write(p.join("fine_label_names.txt"), "a\nb\n").unwrap();
        let err = load(Cifar::Hundred, p).unwrap_err();
        assert!(
            err.to_string().contains("2 class names, expected 100"),
            "{err}"
        );
        // Missing folder.
        assert!(matches!(
            load(Cifar::Ten, &p.join("x")).unwrap_err(),
            DataError::MissingDir { .. }
        ));
    }

    #[test]
    fn cifar10_label_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data_batch_1.bin");
        let err = parse_records(Cifar::Ten, &path, &record(&[10], 0)).unwrap_err();
        assert!(err.to_string().contains("label 10 at record 0"), "{err}");
        assert!(matches!(
            parse_records(Cifar::Ten, &path, &[]).unwrap_err(),
            DataError::RecordSize { .. }
        ));
    }
}
