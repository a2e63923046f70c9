//! The embedded default dataset: UCI optical recognition of handwritten digits, test split, as
//! shipped in scikit-learn (1,797 images, 8×8, values 0..16, 10 classes; CC BY 4.0, see
//! `datasets/digits/NOTICE`). Compiled into the binary so that a search needs no files.
//!
//! The source has a single split; autokd holds out a fixed, stratified 20% (seed 0) as the test
//! split and trains on the rest: 1,438 training and 359 test images (per class, round(0.2·n)).

use std::path::Path;

use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::Result;
use crate::idx::{check_pair, parse_idx};
use crate::image::InMemory;
use crate::split::stratified_split;

/// The embedded IDX images file (`[1797, 8, 8]`).
pub const IMAGES_IDX: &[u8] = include_bytes!("../../../datasets/digits/digits-images-idx3-ubyte");
/// The embedded IDX labels file (`[1797]`).
pub const LABELS_IDX: &[u8] = include_bytes!("../../../datasets/digits/digits-labels-idx1-ubyte");

/// Fraction of the 1,797 images held out as the test split.
pub const TEST_FRACTION: f64 = 0.2;
/// Seed of the train/test hold-out.
pub const TEST_SEED: u64 = 0;

/// Per-pixel mean and std of all 1,797 images, values scaled by 1/16 (computed in f64 over the
/// IDX bytes: mean 0.305260, std 0.376049).
const MEAN: f32 = 0.305_260;
const STD: f32 = 0.376_049;

/// All 1,797 embedded images as one source, in file order.
pub fn source() -> Result<InMemory> {
    let images = parse_idx(Path::new("<embedded digits images>"), IMAGES_IDX, 3)?;
    let labels = parse_idx(Path::new("<embedded digits labels>"), LABELS_IDX, 1)?;
    let (img, labels) = check_pair(
        Path::new("<embedded digits images>"),
        Path::new("<embedded digits labels>"),
        &images,
        &labels,
        10,
    )?;
    InMemory::new(1, img.dims[1], img.dims[2], img.data, labels)
}

/// The embedded digits with their fixed train/test hold-out.
pub fn load() -> Result<Dataset> {
    let all = Split::all(source()?.shared());
    let (train, test) = stratified_split(&all, 10, TEST_FRACTION, TEST_SEED)?;
    Ok(Dataset {
        info: DatasetInfo {
            name: "digits".into(),
            channels: 1,
            height: 8,
            width: 8,
            num_classes: 10,
            class_names: (0..10).map(|d| d.to_string()).collect(),
            pixel_max: 16.0,
            mean: vec![MEAN],
            std: vec![STD],
            anchor_base: None,
        },
        train,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn embedded_files_are_the_converted_ones() {
        // Printed by datasets/digits/convert.py when it wrote the files.
        assert_eq!(
            hex(IMAGES_IDX),
            "359cd13f0f514122884198b78a131df597421cbf5e93a76678fa96fc548f0d96"
        );
        assert_eq!(
            hex(LABELS_IDX),
            "ce71631c1f31ce56fa54f31d1d498fafacff59b001e6c30c4a5e29508aa277ad"
        );
    }

    #[test]
    fn class_counts_and_values() {
        let src = source().unwrap();
        let all = Split::all(src.clone().shared());
        assert_eq!(all.len(), 1797);
        // The class counts of the UCI test split (also in scikit-learn's documentation).
        assert_eq!(
            all.class_counts(10),
            vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        // First row of digits.csv.gz: 0,0,5,13,9,1,0,0, ... label 0.
        assert_eq!(&src.pixels(0)[..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
        assert_eq!(all.label(0), 0);
        assert!((0..1797).all(|i| src.pixels(i).iter().all(|&v| v <= 16)));
        // The pinned normalization constants are those of the data.
        let n = (1797 * 64) as f64;
        let vals: Vec<f64> = (0..1797)
            .flat_map(|i| {
                src.pixels(i)
                    .iter()
                    .map(|&v| f64::from(v) / 16.0)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mean = vals.iter().sum::<f64>() / n;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - f64::from(MEAN)).abs() < 1e-5 && (std - f64::from(STD)).abs() < 1e-5);
    }

    #[test]
    fn hold_out_is_fixed_and_stratified() {
        let ds = load().unwrap();
        // Per class round(0.2·n): 36+36+35+37+36+36+36+36+35+36 = 359.
        assert_eq!((ds.train.len(), ds.test.len()), (1438, 359));
        let test_counts = ds.test.class_counts(10);
        for (c, (&t, &all)) in test_counts
            .iter()
            .zip(&[178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
            .enumerate()
        {
            let exact = all as f64 * TEST_FRACTION;
            assert!((t as f64 - exact).abs() <= 1.0, "class {c}: {t} vs {exact}");
        }
        let again = load().unwrap();
        assert_eq!(ds.test.source_indices(), again.test.source_indices());
    }
}
