//! The training and evaluation pipelines of dense prediction (segmentation, detection): the
//! geometric steps of [`crate::annotation`] in a configured order, photometric distortion, and
//! the normalization of a batch padded to a common size.
//!
//! A [`DenseTransform`] turns an [`Annotated`] image into another of any size; the loader
//! ([`crate::DataLoader::dense`]) pads a batch of them with [`pad_batch`] and normalizes the
//! valid pixels (the padding is 0 after normalization, as mmdet's and mmseg's data
//! preprocessors pad the normalized batch). Every random draw comes from the RNG the loader
//! seeds per sample from `(seed, epoch, position)`.
//!
//! The presets follow mmseg's Cityscapes and mmdet's COCO pipelines:
//! - segmentation, training: random rescale of `2048 × 1024` by 0.5 … 2.0 (keep ratio), random
//!   crop `512 × 1024` with `cat_max_ratio` 0.75, flip with probability 0.5, photometric
//!   distortion; evaluation: resize to `2048 × 1024` (keep ratio);
//! - detection, training: resize to `1333 × 800` (keep ratio), flip with probability 0.5;
//!   evaluation: the same resize. Batches pad to a multiple of 32.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::annotation::{Annotated, PaddedBatch, pad_batch};
use crate::dataset::DatasetInfo;
use crate::error::{DataError, Result};
use crate::image::Image;

/// One step of a dense pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DenseStep {
    /// Resize keeping the ratio so that the short side fits `short` and the long side
    /// `max_long` ([`crate::keep_ratio_size`]).
    Resize {
        /// Target of the short side.
        short: usize,
        /// Bound on the long side.
        max_long: usize,
    },
    /// Resize keeping the ratio to `short × max_long` times a factor drawn from `ratio`.
    RandomRescale {
        /// Target of the short side at factor 1.
        short: usize,
        /// Bound on the long side at factor 1.
        max_long: usize,
        /// Range of the factor, e.g. `[0.5, 2.0]`.
        ratio: [f64; 2],
    },
    /// A random `height × width` crop (the whole side where the image is smaller); for masks,
    /// redrawn while one class covers `cat_max_ratio` or more of the counted pixels.
    RandomCrop {
        /// Crop height.
        height: usize,
        /// Crop width.
        width: usize,
        /// Largest share of one class in a mask crop (1.0: no condition).
        #[serde(default = "one")]
        cat_max_ratio: f64,
    },
    /// Horizontal flip with probability `p`.
    Flip {
        /// Probability of flipping.
        p: f64,
    },
    /// Photometric distortion (pixels only).
    Photometric(PhotometricDistortion),
}

fn one() -> f64 {
    1.0
}

/// mmseg's `PhotoMetricDistortion`, each part applied with probability 1/2: brightness
/// `v + β`, β uniform in `±brightness_delta`; contrast `v · α`, α uniform in `contrast`
/// (before the colour steps or after them, chosen with probability 1/2); saturation `S · α` and
/// hue `(H + δ) mod 180` in OpenCV's 8-bit HSV (H in degrees / 2), δ an integer in
/// `[−hue_delta, hue_delta)`. Each part clips to `[0, 255]` and truncates to bytes, as mmseg's
/// `convert` does. For images whose levels run to another top (`pixel_max`, e.g. 16 for the
/// digits), the brightness offset is scaled by `pixel_max / 255` and the parts clip to
/// `[0, pixel_max]`, so that a distortion means the same on any scale (the parts are
/// mmseg's exactly for 8-bit images). The HSV round trip is computed in floating point and rounded, where OpenCV
/// uses integer tables (a level apart at most). Grey images skip saturation and hue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhotometricDistortion {
    /// Largest brightness offset, in pixel levels (32).
    pub brightness_delta: f64,
    /// Contrast factor range (0.5 … 1.5).
    pub contrast: [f64; 2],
    /// Saturation factor range (0.5 … 1.5).
    pub saturation: [f64; 2],
    /// Largest hue shift, in OpenCV's half-degrees (18).
    pub hue_delta: i32,
}

impl Default for PhotometricDistortion {
    fn default() -> Self {
        Self {
            brightness_delta: 32.0,
            contrast: [0.5, 1.5],
            saturation: [0.5, 1.5],
            hue_delta: 18,
        }
    }
}

/// mmseg's `convert`: `v · α + β`, clipped to `[0, 255]`, truncated.
fn convert(v: u8, alpha: f64, beta: f64) -> u8 {
    convert_to(v, alpha, beta, 255.0)
}

/// `convert` on levels that run to `max`: clipped to `[0, max]`, truncated.
fn convert_to(v: u8, alpha: f64, beta: f64, max: f64) -> u8 {
    (f64::from(v) * alpha + beta).clamp(0.0, max) as u8
}

/// OpenCV's 8-bit RGB → HSV: H in `[0, 180)`, S and V in `[0, 255]` (floating point, rounded).
fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (f64::from(r), f64::from(g), f64::from(b));
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    let s = if v > 0.0 { 255.0 * diff / v } else { 0.0 };
    let mut h = if diff == 0.0 {
        0.0
    } else if v == r {
        60.0 * (g - b) / diff
    } else if v == g {
        120.0 + 60.0 * (b - r) / diff
    } else {
        240.0 + 60.0 * (r - g) / diff
    };
    if h < 0.0 {
        h += 360.0;
    }
    let h = (h / 2.0).round() % 180.0;
    [h as u8, s.round() as u8, v as u8]
}

/// OpenCV's 8-bit HSV → RGB.
fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    let h = f64::from(h) * 2.0 / 60.0;
    let (s, v) = (f64::from(s) / 255.0, f64::from(v));
    let sector = (h.floor() as i64).rem_euclid(6);
    let f = h - h.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match sector {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    let byte = |x: f64| x.round().clamp(0.0, 255.0) as u8;
    [byte(r), byte(g), byte(b)]
}

/// Applies `f` to the HSV values of every pixel of a 3-channel CHW image.
fn map_hsv(img: &mut Image, f: impl Fn([u8; 3]) -> [u8; 3]) {
    let n = img.height * img.width;
    let (r, rest) = img.data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for i in 0..n {
        let [nr, ng, nb] = hsv_to_rgb(f(rgb_to_hsv([r[i], g[i], b[i]])));
        (r[i], g[i], b[i]) = (nr, ng, nb);
    }
}

impl PhotometricDistortion {
    /// Distorts `img`, an 8-bit image, in place.
    pub fn apply<R: Rng>(&self, img: &mut Image, rng: &mut R) {
        self.apply_levels(img, 255.0, rng);
    }

    /// Distorts `img`, whose levels run from 0 to `pixel_max` (at most 255), in place: the
    /// brightness offset is scaled by `pixel_max / 255` and brightness and contrast clip to
    /// `pixel_max` (colour images are 8-bit here: their saturation and hue steps are
    /// OpenCV's).
    pub fn apply_levels<R: Rng>(&self, img: &mut Image, pixel_max: f32, rng: &mut R) {
        let max = f64::from(pixel_max).clamp(1.0, 255.0);
        let uniform = |rng: &mut R, [lo, hi]: [f64; 2]| lo + (hi - lo) * rng.random::<f64>();
        if rng.random_bool(0.5) {
            let d = self.brightness_delta * max / 255.0;
            let beta = uniform(rng, [-d, d]);
            img.data
                .iter_mut()
                .for_each(|v| *v = convert_to(*v, 1.0, beta, max));
        }
        let contrast = |img: &mut Image, rng: &mut R| {
            if rng.random_bool(0.5) {
                let alpha = uniform(rng, self.contrast);
                img.data
                    .iter_mut()
                    .for_each(|v| *v = convert_to(*v, alpha, 0.0, max));
            }
        };
        let contrast_first = rng.random_bool(0.5);
        if contrast_first {
            contrast(img, rng);
        }
        if img.channels == 3 {
            if rng.random_bool(0.5) {
                let alpha = uniform(rng, self.saturation);
                map_hsv(img, |[h, s, v]| [h, convert(s, alpha, 0.0), v]);
            }
            if rng.random_bool(0.5) && self.hue_delta > 0 {
                let delta = rng.random_range(-self.hue_delta..self.hue_delta);
                map_hsv(img, |[h, s, v]| {
                    [(i32::from(h) + delta).rem_euclid(180) as u8, s, v]
                });
            }
        }
        if !contrast_first {
            contrast(img, rng);
        }
    }
}

/// The geometric and photometric steps of a dense pipeline, and the multiple its batches pad
/// to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DensePipeline {
    /// The steps, in order.
    pub steps: Vec<DenseStep>,
    /// Batches pad to a multiple of this (32).
    #[serde(default = "thirty_two")]
    pub pad_multiple: usize,
}

fn thirty_two() -> usize {
    32
}

impl DensePipeline {
    /// mmseg's Cityscapes training pipeline at `crop = (height, width)` (`(512, 1024)`), scaled
    /// from its `2048 × 1024` base by `base_short / 1024`.
    pub fn segmentation_train(base_short: usize, crop: (usize, usize)) -> Self {
        Self {
            steps: vec![
                DenseStep::RandomRescale {
                    short: base_short,
                    max_long: 2 * base_short,
                    ratio: [0.5, 2.0],
                },
                DenseStep::RandomCrop {
                    height: crop.0,
                    width: crop.1,
                    cat_max_ratio: 0.75,
                },
                DenseStep::Flip { p: 0.5 },
                DenseStep::Photometric(PhotometricDistortion::default()),
            ],
            pad_multiple: 32,
        }
    }

    /// Keep-ratio resize to `short × max_long` and nothing random (evaluation of both tasks).
    pub fn resize_only(short: usize, max_long: usize) -> Self {
        Self {
            steps: vec![DenseStep::Resize { short, max_long }],
            pad_multiple: 32,
        }
    }

    /// mmdet's COCO training pipeline (`short × max_long` = `800 × 1333`): resize, flip.
    pub fn detection_train(short: usize, max_long: usize) -> Self {
        Self {
            steps: vec![
                DenseStep::Resize { short, max_long },
                DenseStep::Flip { p: 0.5 },
            ],
            pad_multiple: 32,
        }
    }

    /// Checks every step's numbers.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Config(m));
        if self.pad_multiple == 0 {
            return bad("pad_multiple must be at least 1".into());
        }
        for step in &self.steps {
            match step {
                DenseStep::Resize { short, max_long }
                | DenseStep::RandomRescale {
                    short, max_long, ..
                } if *short == 0 || *max_long == 0 => {
                    return bad(format!("{step:?}: sizes must be at least 1"));
                }
                DenseStep::RandomRescale {
                    ratio: [lo, hi], ..
                } if !(*lo > 0.0 && lo <= hi) => {
                    return bad(format!(
                        "random_rescale ratio [{lo}, {hi}]: expected 0 < low ≤ high"
                    ));
                }
                DenseStep::RandomCrop {
                    height,
                    width,
                    cat_max_ratio,
                } if *height == 0
                    || *width == 0
                    || cat_max_ratio.is_nan()
                    || *cat_max_ratio <= 0.0 =>
                {
                    return bad(format!(
                        "random_crop {height}×{width}, cat_max_ratio {cat_max_ratio}: expected sizes ≥ 1 and a ratio > 0"
                    ));
                }
                DenseStep::Flip { p } if !(0.0..=1.0).contains(p) => {
                    return bad(format!("flip p = {p}: expected a probability"));
                }
                DenseStep::Photometric(d)
                    if !(d.brightness_delta >= 0.0
                        && d.hue_delta >= 0
                        && d.contrast[0] >= 0.0
                        && d.contrast[0] <= d.contrast[1]
                        && d.saturation[0] >= 0.0
                        && d.saturation[0] <= d.saturation[1]) =>
                {
                    return bad(format!(
                        "photometric {d:?}: expected non-negative deltas and ranges low ≤ high"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A [`DensePipeline`] with the dataset's normalization.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTransform {
    pipeline: DensePipeline,
    channels: usize,
    pixel_max: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl DenseTransform {
    /// The pipeline for images of `info` (its channels and normalization).
    pub fn new(info: &DatasetInfo, pipeline: DensePipeline) -> Result<Self> {
        pipeline.validate()?;
        if info.mean.len() != info.channels
            || info.std.len() != info.channels
            || info.std.iter().any(|&s| s <= 0.0)
            || info.pixel_max <= 0.0
        {
            return Err(DataError::Config(format!(
                "{}: {} channels need as many means and positive stds, and pixel_max > 0",
                info.name, info.channels
            )));
        }
        Ok(Self {
            pipeline,
            channels: info.channels,
            pixel_max: info.pixel_max,
            mean: info.mean.clone(),
            std: info.std.clone(),
        })
    }

    /// The steps.
    pub fn pipeline(&self) -> &DensePipeline {
        &self.pipeline
    }

    /// Runs the steps on one item.
    pub fn apply<R: Rng>(&self, item: Annotated, rng: &mut R) -> Result<Annotated> {
        if item.image.channels != self.channels {
            return Err(DataError::Config(format!(
                "image has {} channels, the dataset {}",
                item.image.channels, self.channels
            )));
        }
        let mut item = item;
        for step in &self.pipeline.steps {
            item = match step {
                DenseStep::Resize { short, max_long } => {
                    item.resize_keep_ratio(*short, *max_long)?
                }
                DenseStep::RandomRescale {
                    short,
                    max_long,
                    ratio: [lo, hi],
                } => item.random_rescale(*short, *max_long, (*lo, *hi), rng)?,
                DenseStep::RandomCrop {
                    height,
                    width,
                    cat_max_ratio,
                } => item.random_crop(*height, *width, *cat_max_ratio, rng)?,
                DenseStep::Flip { p } => {
                    if rng.random_bool(*p) {
                        item.hflip()?
                    } else {
                        item
                    }
                }
                DenseStep::Photometric(d) => {
                    d.apply_levels(&mut item.image, self.pixel_max, rng);
                    item
                }
            };
        }
        Ok(item)
    }

    /// Pads `items` to a common size and normalizes them: `(v / pixel_max − mean_c) / std_c`
    /// on valid pixels, 0 in the padding. Returns the floats `[B, C, H, W]` and the padded
    /// batch (its bytes, valid mask, sizes and annotations).
    pub fn collate(&self, items: &[Annotated]) -> Result<(Vec<f32>, PaddedBatch)> {
        let batch = pad_batch(items, self.pipeline.pad_multiple)?;
        let (h, w) = batch.padded;
        let plane = h * w;
        let scale = 1.0 / self.pixel_max;
        let mut out = vec![0.0f32; batch.images.len()];
        for (i, (bytes, valid)) in batch
            .images
            .chunks(self.channels * plane)
            .zip(batch.valid.chunks(plane))
            .enumerate()
        {
            for c in 0..self.channels {
                let (m, s) = (self.mean[c], self.std[c]);
                let src = &bytes[c * plane..(c + 1) * plane];
                let dst = &mut out[(i * self.channels + c) * plane..][..plane];
                for ((d, &v), &ok) in dst.iter_mut().zip(src).zip(valid) {
                    if ok != 0 {
                        *d = (f32::from(v) * scale - m) / s;
                    }
                }
            }
        }
        Ok((out, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::{Annotation, ClassMask, IGNORE, MaskValues};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn info(channels: usize) -> DatasetInfo {
        DatasetInfo {
            name: "toy".into(),
            channels,
            height: 0,
            width: 0,
            num_classes: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
            pixel_max: 255.0,
            mean: vec![0.5; channels],
            std: vec![0.25; channels],
            anchor_base: None,
        }
    }

    /// OpenCV's 8-bit HSV by hand: pure red is (0, 255, 255); (255, 128, 0) is hue 30.1° → 15;
    /// grey has no hue or saturation; a shift of 60 half-degrees turns red into green, and
    /// 120 into blue. The round trip is lossy as OpenCV's is: hue is kept in 2° steps, so the
    /// middle channel moves by up to V·S·(1°/60°) ≈ 4.3 levels.
    #[test]
    fn hsv_by_hand() {
        assert_eq!(rgb_to_hsv([255, 0, 0]), [0, 255, 255]);
        assert_eq!(rgb_to_hsv([255, 128, 0]), [15, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 0, 255]), [120, 255, 255]);
        assert_eq!(rgb_to_hsv([90, 90, 90]), [0, 0, 90]);
        assert_eq!(hsv_to_rgb([60, 255, 255]), [0, 255, 0]);
        assert_eq!(hsv_to_rgb([120, 255, 255]), [0, 0, 255]);
        // (200, 100, 50): V 200, S 255·150/200 = 191.25 → 191, H 60·50/150 = 20° → 10.
        assert_eq!(rgb_to_hsv([200, 100, 50]), [10, 191, 200]);
        for r in (0..=255).step_by(15) {
            for g in (0..=255).step_by(17) {
                for b in (0..=255).step_by(51) {
                    let back = hsv_to_rgb(rgb_to_hsv([r, g, b]));
                    for (x, y) in back.iter().zip([r, g, b]) {
                        assert!(x.abs_diff(y) <= 5, "{:?} → {back:?}", [r, g, b]);
                    }
                }
            }
        }
    }

    /// Each part alone, by hand: brightness +10 on 250 clips to 255 and on 3 gives 13;
    /// contrast ×1.5 on 100 is 150 and on 200 clips; saturation ×0.5 of (200, 100, 50) is
    /// S 191 → 95 (truncated), which maps back to (200, 150, 125); with empty ranges the
    /// distortion is the identity; the defaults move the pixels of a colour image.
    #[test]
    fn photometric_parts_by_hand() {
        assert_eq!(convert(250, 1.0, 10.0), 255);
        assert_eq!(convert(3, 1.0, 10.0), 13);
        assert_eq!(convert(100, 1.5, 0.0), 150);
        assert_eq!(convert(200, 1.5, 0.0), 255);
        assert_eq!(convert(191, 0.5, 0.0), 95);
        // S 95/255, V 200, H 10 (20°, sector 0, f = 1/3): p = 200·(1 − 0.37255) = 125.49 → 125,
        // t = 200·(1 − 0.37255·(2/3)) = 150.33 → 150; (r, g, b) = (v, t, p).
        assert_eq!(hsv_to_rgb([10, 95, 200]), [200, 150, 125]);
        let none = PhotometricDistortion {
            brightness_delta: 0.0,
            contrast: [1.0, 1.0],
            saturation: [1.0, 1.0],
            hue_delta: 0,
        };
        let grey = Image::new(1, 2, 2, vec![0, 50, 128, 255]).unwrap();
        for seed in 0..8 {
            let mut g = grey.clone();
            none.apply(&mut g, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(g, grey);
        }
        // The defaults move pixels of a colour image for some seed, never its size.
        let rgb = Image::new(3, 2, 2, (0..12).map(|v| v * 20).collect()).unwrap();
        let moved = (0..8).any(|seed| {
            let mut c = rgb.clone();
            PhotometricDistortion::default().apply(&mut c, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(c.data.len(), 12);
            c != rgb
        });
        assert!(moved);
        // On 16 levels (the digits) the default brightness offset is at most 32·16/255 ≈ 2
        // levels and nothing passes 16: the mean level moves by at most 2 + what contrast
        // ×0.5 … ×1.5 does, where 8-bit offsets of up to 32 would push the background to 32.
        let digits = Image::new(1, 2, 4, vec![0, 0, 0, 0, 16, 16, 8, 4]).unwrap();
        for seed in 0..32 {
            let mut d = digits.clone();
            PhotometricDistortion::default().apply_levels(
                &mut d,
                16.0,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            assert!(d.data.iter().all(|&v| v <= 16), "{:?}", d.data);
            assert!(d.data[..4].iter().all(|&v| v <= 3), "{:?}", d.data);
        }
    }

    /// A mask through the segmentation preset: the image and mask keep one size, photometric
    /// distortion leaves the mask alone, the same seed gives the same item, and the batch
    /// normalizes valid pixels by hand ((v/255 − 0.5)/0.25) and leaves 0 in the padding.
    #[test]
    fn the_segmentation_preset_and_collate() {
        let (h, w) = (30, 50);
        let image = Image::new(3, h, w, (0..3 * h * w).map(|i| (i % 256) as u8).collect()).unwrap();
        let mask: Vec<u8> = (0..h * w).map(|i| ((i % w) / 17) as u8).collect();
        let item = Annotated::new(
            image,
            Annotation::Mask(ClassMask::new(h, w, MaskValues::U8(mask)).unwrap()),
        )
        .unwrap();
        let t =
            DenseTransform::new(&info(3), DensePipeline::segmentation_train(20, (16, 24))).unwrap();
        let run = |seed| {
            t.apply(item.clone(), &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap()
        };
        let a = run(3);
        assert_eq!(a, run(3));
        let (ah, aw) = a.size();
        assert!(ah <= 16 && aw <= 24, "{ah}×{aw}");
        let Annotation::Mask(m) = &a.annotation else {
            panic!("not a mask")
        };
        assert_eq!((m.height, m.width), (ah, aw));
        // Classes 0, 1, 2 only (17-column stripes); nothing became IGNORE before padding.
        assert!(m.class_counts().keys().all(|&c| c <= 2));
        assert_eq!(m.class_counts().values().sum::<usize>(), ah * aw);
        let b = run(4);
        let (floats, batch) = t.collate(&[a.clone(), b.clone()]).unwrap();
        let (ph, pw) = batch.padded;
        assert_eq!((ph % 32, pw % 32), (0, 0));
        assert_eq!(floats.len(), 2 * 3 * ph * pw);
        let v = f32::from(a.image.at(1, 0, 0));
        assert!((floats[ph * pw] - (v / 255.0 - 0.5) / 0.25).abs() < 1e-6);
        // Row `ah` of image 0 is padding: 0 in every channel, IGNORE in the mask.
        assert_eq!(floats[ah * pw], 0.0);
        let Annotation::Mask(pm) = &batch.annotations[0] else {
            panic!("not a mask")
        };
        assert_eq!(pm.at(ah, 0), IGNORE);
    }

    #[test]
    fn bad_pipelines_are_refused_with_the_step() {
        let bad = [
            DenseStep::Resize {
                short: 0,
                max_long: 10,
            },
            DenseStep::RandomRescale {
                short: 10,
                max_long: 10,
                ratio: [2.0, 1.0],
            },
            DenseStep::RandomCrop {
                height: 4,
                width: 4,
                cat_max_ratio: 0.0,
            },
            DenseStep::Flip { p: 1.5 },
        ];
        for step in bad {
            let p = DensePipeline {
                steps: vec![step.clone()],
                pad_multiple: 32,
            };
            assert!(DenseTransform::new(&info(3), p).is_err(), "{step:?}");
        }
        let text = "pad_multiple = 32\n[[steps]]\nkind = \"random_crop\"\nheight = 8\nwidth = 8\n[[steps]]\nkind = \"flip\"\np = 0.5\n";
        let p: DensePipeline = toml::from_str(text).unwrap();
        assert_eq!(
            p.steps[0],
            DenseStep::RandomCrop {
                height: 8,
                width: 8,
                cat_max_ratio: 1.0
            }
        );
        let err = toml::from_str::<DensePipeline>("[[steps]]\nkind = \"rotate\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rotate"), "{err}");
    }
}
