//! Preprocessing and augmentation: geometry to the model's input size, random crop with
//! padding, horizontal flip, random resized crop, and per-dataset normalization.
//!
//! Every random choice is drawn from the RNG the caller passes, which the loader seeds per
//! sample from (seed, epoch, position): the same seed gives the same batches whatever the
//! number of loader threads.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::DatasetInfo;
use crate::error::{DataError, Result};
use crate::image::Image;

/// Training-time augmentation. `Augment::default()` is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Random crop of the input size after zero padding by this many pixels (CIFAR: 4); 0 is off.
    pub crop_padding: usize,
    /// Horizontal flip with probability 1/2.
    pub horizontal_flip: bool,
    /// Random resized crop (torchvision's): area fraction drawn from this range, aspect ratio
    /// from [3/4, 4/3], then resized to the input size. Image folders: `[0.08, 1.0]`.
    pub random_resized_crop: Option<[f32; 2]>,
}

impl Augment {
    /// The CIFAR recipe: 4-pixel padded random crop and horizontal flip.
    pub fn cifar() -> Self {
        Self {
            crop_padding: 4,
            horizontal_flip: true,
            random_resized_crop: None,
        }
    }

    /// The ImageNet recipe: random resized crop (scale 0.08..1) and horizontal flip.
    pub fn imagenet() -> Self {
        Self {
            crop_padding: 0,
            horizontal_flip: true,
            random_resized_crop: Some([0.08, 1.0]),
        }
    }

    /// Small shifts for tiny grey images (digits, Fashion-MNIST): padded random crop by
    /// `padding` pixels, no flip (digits and clothes are not mirror-symmetric classes).
    pub fn shift(padding: usize) -> Self {
        Self {
            crop_padding: padding,
            horizontal_flip: false,
            random_resized_crop: None,
        }
    }

    /// The usual training augmentation for a dataset: CIFAR-style for 32×32 colour images,
    /// ImageNet-style for image folders, a 1-pixel shift for 8×8 digits and 2 for 28×28.
    pub fn for_dataset(info: &DatasetInfo) -> Self {
        if info.name.starts_with("imagefolder") {
            Self::imagenet()
        } else if info.channels == 3 {
            Self::cifar()
        } else if info.height <= 8 {
            Self::shift(1)
        } else {
            Self::shift(2)
        }
    }
}

/// Turns a decoded [`Image`] into the normalized `f32` CHW input of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    channels: usize,
    height: usize,
    width: usize,
    pixel_max: f32,
    mean: Vec<f32>,
    std: Vec<f32>,
    augment: Option<Augment>,
}

impl Transform {
    /// Evaluation transform of a dataset: resize/centre-crop if needed, then normalize.
    pub fn eval(info: &DatasetInfo) -> Result<Self> {
        Self::new(info, None)
    }

    /// Training transform with `augment`.
    pub fn train(info: &DatasetInfo, augment: Augment) -> Result<Self> {
        Self::new(info, Some(augment))
    }

    fn new(info: &DatasetInfo, augment: Option<Augment>) -> Result<Self> {
        if info.mean.len() != info.channels || info.std.len() != info.channels {
            return Err(DataError::Config(format!(
                "{}: {} channels but {} means and {} stds",
                info.name,
                info.channels,
                info.mean.len(),
                info.std.len()
            )));
        }
        if info.std.iter().any(|&s| s <= 0.0) || info.pixel_max <= 0.0 {
            return Err(DataError::Config(format!(
                "{}: std and pixel_max must be positive",
                info.name
            )));
        }
        if let Some(Augment {
            random_resized_crop: Some([lo, hi]),
            ..
        }) = &augment
            && !(0.0 < *lo && lo <= hi && *hi <= 1.0)
        {
            return Err(DataError::Config(format!(
                "random_resized_crop scale [{lo}, {hi}] must satisfy 0 < lo <= hi <= 1"
            )));
        }
        Ok(Self {
            channels: info.channels,
            height: info.height,
            width: info.width,
            pixel_max: info.pixel_max,
            mean: info.mean.clone(),
            std: info.std.clone(),
            augment,
        })
    }

    /// Floats per output image.
    pub fn output_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Output shape `[C, H, W]`.
    pub fn output_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Writes the transformed image into `out` (`output_len()` floats).
    pub fn apply<R: Rng>(&self, img: &Image, rng: &mut R, out: &mut [f32]) -> Result<()> {
        if img.channels != self.channels {
            return Err(DataError::Config(format!(
                "image has {} channels, the dataset {}",
                img.channels, self.channels
            )));
        }
        if out.len() != self.output_len() {
            return Err(DataError::Config(format!(
                "output buffer of {} floats, expected {}",
                out.len(),
                self.output_len()
            )));
        }
        let (h, w) = (self.height, self.width);
        let resized;
        let base = match &self.augment {
            Some(Augment {
                random_resized_crop: Some(scale),
                ..
            }) => {
                let (y, x, ch, cw) = random_resized_box(img.height, img.width, *scale, rng);
                resized = crop_resize(img, y, x, ch, cw, h, w)?;
                &resized
            }
            _ if img.height != h || img.width != w => {
                resized = resize_center_crop(img, h, w)?;
                &resized
            }
            _ => img,
        };
        let (pad, flip) = match &self.augment {
            Some(a) => {
                let p = a.crop_padding;
                let dy = if p > 0 {
                    rng.random_range(0..=2 * p)
                } else {
                    p
                };
                let dx = if p > 0 {
                    rng.random_range(0..=2 * p)
                } else {
                    p
                };
                let flip = a.horizontal_flip && rng.random_bool(0.5);
                ((p, dy, dx), flip)
            }
            None => ((0, 0, 0), false),
        };
        self.crop_flip_normalize(base, pad, flip, out);
        Ok(())
    }

    /// Crop of the zero-padded image at offset `(dy, dx)` (padding `p`), optional mirror, then
    /// `(v / pixel_max − mean_c) / std_c`. `base` has the output size.
    fn crop_flip_normalize(
        &self,
        base: &Image,
        (p, dy, dx): (usize, usize, usize),
        flip: bool,
        out: &mut [f32],
    ) {
        let (h, w) = (self.height as isize, self.width as isize);
        let scale = 1.0 / self.pixel_max;
        for c in 0..self.channels {
            let (m, s) = (self.mean[c], self.std[c]);
            let zero = (0.0 - m) / s;
            for y in 0..h {
                let sy = y + dy as isize - p as isize;
                let row = &mut out[(c * self.height + y as usize) * self.width..][..self.width];
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx + dx as isize - p as isize;
                    row[x as usize] = if sy >= 0 && sy < h && sx >= 0 && sx < w {
                        (f32::from(base.at(c, sy as usize, sx as usize)) * scale - m) / s
                    } else {
                        zero
                    };
                }
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)`.
fn random_resized_box<R: Rng>(
    h: usize,
    w: usize,
    [lo, hi]: [f32; 2],
    rng: &mut R,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f32;
    let (log_lo, log_hi) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(lo..=hi);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let y = rng.random_range(0..=h - ch);
            let x = rng.random_range(0..=w - cw);
            return (y, x, ch, cw);
        }
    }
    // Fallback: the central crop of the whole image with its ratio clamped to [3/4, 4/3].
    let in_ratio = w as f32 / h as f32;
    let (ch, cw) = if in_ratio < 0.75 {
        (((w as f32) / 0.75).round() as usize, w)
    } else if in_ratio > 4.0 / 3.0 {
        (h, ((h as f32) * 4.0 / 3.0).round() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Evaluation geometry: resize the shorter side to `out · 8/7` (256 for 224), then take the
/// central `out_h × out_w` crop (torchvision's `Resize(256)` + `CenterCrop(224)`).
fn resize_center_crop(img: &Image, out_h: usize, out_w: usize) -> Result<Image> {
    let short = img.height.min(img.width) as f32;
    let target = (out_h.max(out_w) as f32 * 8.0 / 7.0).round();
    let f = target / short;
    let rh = ((img.height as f32 * f).round() as usize).max(out_h);
    let rw = ((img.width as f32 * f).round() as usize).max(out_w);
    let full = crop_resize(img, 0, 0, img.height, img.width, rh, rw)?;
    let (y0, x0) = ((rh - out_h) / 2, (rw - out_w) / 2);
    let mut data = Vec::with_capacity(img.channels * out_h * out_w);
    for c in 0..img.channels {
        for y in 0..out_h {
            let start = (c * rh + y0 + y) * rw + x0;
            data.extend_from_slice(&full.data[start..start + out_w]);
        }
    }
    Image::new(img.channels, out_h, out_w, data)
}

/// Resizes the box `(y, x, ch, cw)` of `img` to `out_h × out_w` with a triangle (bilinear,
/// antialiased when shrinking) filter, per channel.
pub(crate) fn crop_resize(
    img: &Image,
    y: usize,
    x: usize,
    ch: usize,
    cw: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Image> {
    let mut data = Vec::with_capacity(img.channels * out_h * out_w);
    for c in 0..img.channels {
        let plane = &img.data[c * img.height * img.width..(c + 1) * img.height * img.width];
        let gray = image::GrayImage::from_raw(img.width as u32, img.height as u32, plane.to_vec())
            .ok_or_else(|| DataError::Config("image plane of the wrong size".into()))?;
        let cropped =
            image::imageops::crop_imm(&gray, x as u32, y as u32, cw as u32, ch as u32).to_image();
        let r = image::imageops::resize(
            &cropped,
            out_w as u32,
            out_h as u32,
            image::imageops::FilterType::Triangle,
        );
        data.extend_from_slice(r.as_raw());
    }
    Image::new(img.channels, out_h, out_w, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn info(c: usize, h: usize, w: usize) -> DatasetInfo {
        DatasetInfo {
            name: "toy".into(),
            channels: c,
            height: h,
            width: w,
            num_classes: 2,
            class_names: vec!["a".into(), "b".into()],
            pixel_max: 255.0,
            mean: vec![0.5; c],
            std: vec![0.25; c],
            anchor_base: None,
        }
    }

    fn ramp(c: usize, h: usize, w: usize) -> Image {
        Image::new(c, h, w, (0..c * h * w).map(|v| v as u8).collect()).unwrap()
    }

    #[test]
    fn normalize_by_hand() {
        let t = Transform::eval(&info(1, 2, 2)).unwrap();
        let img = Image::new(1, 2, 2, vec![0, 51, 102, 255]).unwrap();
        let mut out = vec![0.0; 4];
        t.apply(&img, &mut ChaCha8Rng::seed_from_u64(0), &mut out)
            .unwrap();
        // (v/255 - 0.5)/0.25: 0 -> -2, 51 -> -1.2, 102 -> -0.4, 255 -> 2.
        for (o, e) in out.iter().zip([-2.0, -1.2, -0.4, 2.0]) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn padded_crop_and_flip_by_hand() {
        let t = Transform::train(&info(1, 3, 3), Augment::cifar()).unwrap();
        let img = ramp(1, 3, 3); // 0 1 2 / 3 4 5 / 6 7 8
        let mut out = vec![0.0; 9];
        // Padding 1, offset (dy, dx) = (0, 2): rows shift down by one, columns left by one.
        t.crop_flip_normalize(&img, (1, 0, 2), false, &mut out);
        let raw: Vec<f32> = out.iter().map(|v| (v * 0.25 + 0.5) * 255.0).collect();
        let expect = [0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 0.0];
        for (r, e) in raw.iter().zip(expect) {
            assert!((r - e).abs() < 1e-3, "{raw:?}");
        }
        // The same crop mirrored.
        t.crop_flip_normalize(&img, (1, 0, 2), true, &mut out);
        let raw: Vec<f32> = out.iter().map(|v| (v * 0.25 + 0.5) * 255.0).collect();
        let expect = [0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0, 5.0, 4.0];
        for (r, e) in raw.iter().zip(expect) {
            assert!((r - e).abs() < 1e-3, "{raw:?}");
        }
    }

    #[test]
    fn random_augment_is_seeded_and_varies() {
        let t = Transform::train(&info(3, 8, 8), Augment::cifar()).unwrap();
        let img = ramp(3, 8, 8);
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut out = vec![0.0; t.output_len()];
            t.apply(&img, &mut rng, &mut out).unwrap();
            out
        };
        assert_eq!(run(3), run(3));
        let distinct: std::collections::HashSet<Vec<u32>> = (0..40)
            .map(|s| run(s).iter().map(|v| v.to_bits()).collect())
            .collect();
        // 9 × 9 offsets × 2 flips: 40 seeds give many different crops.
        assert!(distinct.len() > 20, "{}", distinct.len());
    }

    #[test]
    fn resized_crop_and_eval_resize_shapes() {
        let big = ramp(3, 40, 60);
        let t = Transform::train(&info(3, 16, 16), Augment::imagenet()).unwrap();
        let mut out = vec![0.0; t.output_len()];
        t.apply(&big, &mut ChaCha8Rng::seed_from_u64(1), &mut out)
            .unwrap();
        assert!(out.iter().all(|v| v.is_finite()));
        let e = Transform::eval(&info(3, 16, 16)).unwrap();
        e.apply(&big, &mut ChaCha8Rng::seed_from_u64(1), &mut out)
            .unwrap();
        // A constant image stays constant through resize and crop.
        let flat = Image::new(3, 40, 60, vec![255; 3 * 40 * 60]).unwrap();
        e.apply(&flat, &mut ChaCha8Rng::seed_from_u64(1), &mut out)
            .unwrap();
        assert!(out.iter().all(|v| (v - 2.0).abs() < 1e-6));
        for _ in 0..100 {
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let (y, x, h, w) = random_resized_box(40, 60, [0.08, 1.0], &mut rng);
            assert!(y + h <= 40 && x + w <= 60 && h > 0 && w > 0);
        }
    }

    #[test]
    fn bad_inputs() {
        let t = Transform::eval(&info(3, 4, 4)).unwrap();
        let mut out = vec![0.0; 48];
        let msg = t
            .apply(&ramp(1, 4, 4), &mut ChaCha8Rng::seed_from_u64(0), &mut out)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1 channels"), "{msg}");
        let mut i = info(3, 4, 4);
        i.mean = vec![0.5];
        assert!(Transform::eval(&i).is_err());
        let a = Augment {
            random_resized_crop: Some([0.5, 0.1]),
            ..Augment::default()
        };
        assert!(Transform::train(&info(3, 4, 4), a).is_err());
    }
}
