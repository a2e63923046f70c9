//! Annotations that travel with their image through every geometric transform, and batches of
//! images of different sizes padded to one size (issue 27: what segmentation and detection need
//! of the data layer).
//!
//! An [`Annotated`] image carries a class, a per-pixel class mask (`u8` or `u16`, [`IGNORE`] =
//! 255 for pixels that count for nothing), or boxes (`xyxy` in absolute pixels, with a class, a
//! crowd flag and an area). The geometric transforms move the annotation with the pixels:
//! masks are resampled nearest-neighbour and padded with [`IGNORE`]; boxes are scaled, shifted,
//! flipped and clipped. Photometric distortion touches pixels only ([`crate::dense`]).
//!
//! Conventions, and where they come from:
//! - **Resize** keeps the ratio as mmcv's `rescale_size` does: the scale is the largest that
//!   fits the short side into `short` and the long side into `max_long`, sizes rounded half up.
//!   Images are resampled bilinearly (antialiased when shrinking), masks nearest (source pixel
//!   `⌊y · h_in / h_out⌋`, as PyTorch's `nearest`). A box's corners and area are scaled.
//! - **Crop**: boxes are shifted and clipped to the crop, and dropped when nothing of them is
//!   left (mmdet's `RandomCrop` with `allow_negative_crop = False`); a kept box's area shrinks by
//!   the share of the box that was cut off. A random crop of a mask retries up to 10 times until
//!   no class covers more than `cat_max_ratio` of its counted pixels (mmseg's `RandomCrop`).
//! - **Flip** mirrors `x ↦ W − x` for box corners (continuous coordinates, no "+1 pixel").
//! - **Pad** adds rows and columns at the bottom and right (zeros for the image, [`IGNORE`] for
//!   a mask); boxes do not move.
//!
//! burn-dataset's `Annotation` is not used: its masks are `usize` per pixel (eight times the
//! memory of `u8`), its boxes `xywh` without crowd flags or areas.

use std::collections::BTreeMap;

use rand::Rng;

use crate::augment::crop_resize;
use crate::error::{DataError, Result};
use crate::image::Image;

/// The mask value of pixels that count for nothing (borders, void, padding).
pub const IGNORE: u16 = 255;

/// What an image is annotated with.
#[derive(Debug, Clone, PartialEq)]
pub enum Annotation {
    /// One class for the whole image.
    Class(u16),
    /// A class per pixel.
    Mask(ClassMask),
    /// Objects.
    Boxes(Vec<BoxAnnotation>),
}

/// The values of a class mask, one per pixel in row-major order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskValues {
    /// Up to 255 classes (VOC, Cityscapes, ADE20K).
    U8(Vec<u8>),
    /// More classes (COCO-Stuff, LVIS panoptic).
    U16(Vec<u16>),
}

impl MaskValues {
    fn len(&self) -> usize {
        match self {
            MaskValues::U8(v) => v.len(),
            MaskValues::U16(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> u16 {
        match self {
            MaskValues::U8(v) => u16::from(v[i]),
            MaskValues::U16(v) => v[i],
        }
    }

    /// New values of the same width: `pick(i)` is the source index of output pixel `i`, or
    /// `None` for [`IGNORE`].
    fn remap(&self, n: usize, pick: impl Fn(usize) -> Option<usize>) -> MaskValues {
        match self {
            MaskValues::U8(v) => MaskValues::U8(
                (0..n)
                    .map(|i| pick(i).map_or(IGNORE as u8, |s| v[s]))
                    .collect(),
            ),
            MaskValues::U16(v) => {
                MaskValues::U16((0..n).map(|i| pick(i).map_or(IGNORE, |s| v[s])).collect())
            }
        }
    }
}

/// A class per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMask {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `height × width` values, row-major.
    pub values: MaskValues,
}

impl ClassMask {
    /// A mask from its values; their number must be `height × width`.
    pub fn new(height: usize, width: usize, values: MaskValues) -> Result<Self> {
        if values.len() != height * width {
            return Err(DataError::Config(format!(
                "a {height}×{width} mask needs {} values, got {}",
                height * width,
                values.len()
            )));
        }
        Ok(Self {
            height,
            width,
            values,
        })
    }

    /// The class at row `y`, column `x`.
    pub fn at(&self, y: usize, x: usize) -> u16 {
        self.values.get(y * self.width + x)
    }

    /// Pixels per class, [`IGNORE`] left out.
    pub fn class_counts(&self) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for i in 0..self.values.len() {
            let v = self.values.get(i);
            if v != IGNORE {
                *counts.entry(v).or_insert(0) += 1;
            }
        }
        counts
    }

    /// A `height × width` mask whose pixel `(y, x)` is this mask's `pick(y, x)`, or [`IGNORE`].
    fn remap(
        &self,
        height: usize,
        width: usize,
        pick: impl Fn(usize, usize) -> Option<(usize, usize)>,
    ) -> ClassMask {
        let w0 = self.width;
        ClassMask {
            height,
            width,
            values: self.values.remap(height * width, |i| {
                pick(i / width, i % width).map(|(y, x)| y * w0 + x)
            }),
        }
    }
}

/// One object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxAnnotation {
    /// `[x1, y1, x2, y2]` in pixels of the image it belongs to (continuous coordinates: a box
    /// over the whole of a `W`-wide image spans `0 … W`).
    pub xyxy: [f32; 4],
    /// Its class.
    pub label: u16,
    /// A crowd region (COCO's `iscrowd`): ignored in training and matched leniently in
    /// evaluation.
    pub crowd: bool,
    /// Its area in pixels (COCO's `area`: of the segment where there is one, which evaluation
    /// uses for its size ranges).
    pub area: f32,
}

/// An image with its annotation; the transforms below return new ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotated {
    /// The pixels.
    pub image: Image,
    /// What they show.
    pub annotation: Annotation,
}

/// The size `(h, w)` an `h × w` image is resized to so that its short side fits `short` and its
/// long side `max_long`, keeping its ratio (mmcv's `rescale_size`; mmdet's `Resize` with
/// `keep_ratio`, e.g. 1333 × 800).
pub fn keep_ratio_size(h: usize, w: usize, short: usize, max_long: usize) -> (usize, usize) {
    let (lo, hi) = (h.min(w) as f64, h.max(w) as f64);
    let scale = (short as f64 / lo).min(max_long as f64 / hi);
    let side = |x: usize| ((x as f64 * scale + 0.5) as usize).max(1);
    (side(h), side(w))
}

impl Annotated {
    /// An annotated image; a mask must have the image's size.
    pub fn new(image: Image, annotation: Annotation) -> Result<Self> {
        if let Annotation::Mask(m) = &annotation
            && (m.height, m.width) != (image.height, image.width)
        {
            return Err(DataError::Config(format!(
                "a {}×{} mask for a {}×{} image",
                m.height, m.width, image.height, image.width
            )));
        }
        Ok(Self { image, annotation })
    }

    /// `(height, width)` of the image.
    pub fn size(&self) -> (usize, usize) {
        (self.image.height, self.image.width)
    }

    /// Resized to `height × width` (image bilinear, mask nearest, boxes scaled).
    pub fn resize(&self, height: usize, width: usize) -> Result<Self> {
        if height == 0 || width == 0 {
            return Err(DataError::Config(format!(
                "cannot resize to {height}×{width}"
            )));
        }
        let (h0, w0) = self.size();
        let image = crop_resize(&self.image, 0, 0, h0, w0, height, width)?;
        let (sy, sx) = (height as f32 / h0 as f32, width as f32 / w0 as f32);
        let annotation = match &self.annotation {
            Annotation::Class(c) => Annotation::Class(*c),
            Annotation::Mask(m) => Annotation::Mask(m.remap(height, width, |y, x| {
                Some(((y * h0) / height, (x * w0) / width))
            })),
            Annotation::Boxes(b) => Annotation::Boxes(
                b.iter()
                    .map(|b| BoxAnnotation {
                        xyxy: [
                            b.xyxy[0] * sx,
                            b.xyxy[1] * sy,
                            b.xyxy[2] * sx,
                            b.xyxy[3] * sy,
                        ],
                        area: b.area * sx * sy,
                        ..*b
                    })
                    .collect(),
            ),
        };
        Ok(Self { image, annotation })
    }

    /// Resized keeping the ratio ([`keep_ratio_size`]).
    pub fn resize_keep_ratio(&self, short: usize, max_long: usize) -> Result<Self> {
        let (h, w) = self.size();
        let (nh, nw) = keep_ratio_size(h, w, short, max_long);
        self.resize(nh, nw)
    }

    /// Resized keeping the ratio by a factor drawn uniformly from `range` times the scale that
    /// fits `short × max_long` (mmseg's `RandomResize` with a `ratio_range`, e.g. 0.5 … 2.0).
    pub fn random_rescale<R: Rng>(
        &self,
        short: usize,
        max_long: usize,
        range: (f64, f64),
        rng: &mut R,
    ) -> Result<Self> {
        let (lo, hi) = range;
        if !(lo > 0.0 && lo <= hi) {
            return Err(DataError::Config(format!(
                "rescale range {lo} … {hi}: expected 0 < low ≤ high"
            )));
        }
        let ratio = lo + (hi - lo) * rng.random::<f64>();
        let side = |x: usize| ((x as f64 * ratio + 0.5) as usize).max(1);
        self.resize_keep_ratio(side(short), side(max_long))
    }

    /// The `height × width` window at row `y0`, column `x0`; it must lie inside the image.
    pub fn crop(&self, y0: usize, x0: usize, height: usize, width: usize) -> Result<Self> {
        let (h0, w0) = self.size();
        if height == 0 || width == 0 || y0 + height > h0 || x0 + width > w0 {
            return Err(DataError::Config(format!(
                "crop of {height}×{width} at ({y0}, {x0}) outside a {h0}×{w0} image"
            )));
        }
        let c = self.image.channels;
        let mut data = Vec::with_capacity(c * height * width);
        for ch in 0..c {
            for y in 0..height {
                let start = (ch * h0 + y0 + y) * w0 + x0;
                data.extend_from_slice(&self.image.data[start..start + width]);
            }
        }
        let image = Image::new(c, height, width, data)?;
        let annotation = match &self.annotation {
            Annotation::Class(c) => Annotation::Class(*c),
            Annotation::Mask(m) => {
                Annotation::Mask(m.remap(height, width, |y, x| Some((y + y0, x + x0))))
            }
            Annotation::Boxes(b) => {
                let (fx, fy) = (x0 as f32, y0 as f32);
                let (fw, fh) = (width as f32, height as f32);
                Annotation::Boxes(
                    b.iter()
                        .filter_map(|b| {
                            let [x1, y1, x2, y2] = b.xyxy;
                            let clipped = [
                                (x1 - fx).clamp(0.0, fw),
                                (y1 - fy).clamp(0.0, fh),
                                (x2 - fx).clamp(0.0, fw),
                                (y2 - fy).clamp(0.0, fh),
                            ];
                            let kept = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]);
                            let whole = (x2 - x1) * (y2 - y1);
                            (clipped[2] > clipped[0] && clipped[3] > clipped[1]).then(|| {
                                BoxAnnotation {
                                    xyxy: clipped,
                                    area: if whole > 0.0 {
                                        b.area * kept / whole
                                    } else {
                                        b.area
                                    },
                                    ..*b
                                }
                            })
                        })
                        .collect(),
                )
            }
        };
        Ok(Self { image, annotation })
    }

    /// A random `height × width` crop (the whole side where the image is smaller). For a mask,
    /// up to 10 draws until no class covers more than `cat_max_ratio` of the counted pixels
    /// (1.0: the first draw), as mmseg's `RandomCrop`.
    pub fn random_crop<R: Rng>(
        &self,
        height: usize,
        width: usize,
        cat_max_ratio: f64,
        rng: &mut R,
    ) -> Result<Self> {
        let (h0, w0) = self.size();
        let (ch, cw) = (height.min(h0), width.min(w0));
        let draw = |rng: &mut R| (rng.random_range(0..=h0 - ch), rng.random_range(0..=w0 - cw));
        let mut at = draw(rng);
        if let Annotation::Mask(m) = &self.annotation
            && cat_max_ratio < 1.0
        {
            for _ in 0..10 {
                let crop = m.remap(ch, cw, |y, x| Some((y + at.0, x + at.1)));
                let counts: Vec<usize> = crop.class_counts().into_values().collect();
                let total: usize = counts.iter().sum();
                let max = counts.iter().copied().max().unwrap_or(0);
                if counts.len() > 1 && (max as f64) < cat_max_ratio * total as f64 {
                    break;
                }
                at = draw(rng);
            }
        }
        self.crop(at.0, at.1, ch, cw)
    }

    /// Mirrored left to right.
    pub fn hflip(&self) -> Result<Self> {
        let (h, w) = self.size();
        let c = self.image.channels;
        let mut data = Vec::with_capacity(self.image.data.len());
        for row in self.image.data.chunks(w) {
            data.extend(row.iter().rev());
        }
        let image = Image::new(c, h, w, data)?;
        let fw = w as f32;
        let annotation = match &self.annotation {
            Annotation::Class(c) => Annotation::Class(*c),
            Annotation::Mask(m) => Annotation::Mask(m.remap(h, w, |y, x| Some((y, w - 1 - x)))),
            Annotation::Boxes(b) => Annotation::Boxes(
                b.iter()
                    .map(|b| BoxAnnotation {
                        xyxy: [fw - b.xyxy[2], b.xyxy[1], fw - b.xyxy[0], b.xyxy[3]],
                        ..*b
                    })
                    .collect(),
            ),
        };
        Ok(Self { image, annotation })
    }

    /// Padded at the bottom and right to `height × width` (at least the image's size).
    pub fn pad(&self, height: usize, width: usize) -> Result<Self> {
        let (h0, w0) = self.size();
        if height < h0 || width < w0 {
            return Err(DataError::Config(format!(
                "cannot pad a {h0}×{w0} image to {height}×{width}"
            )));
        }
        let c = self.image.channels;
        let mut data = vec![0u8; c * height * width];
        for ch in 0..c {
            for y in 0..h0 {
                let src = (ch * h0 + y) * w0;
                let dst = (ch * height + y) * width;
                data[dst..dst + w0].copy_from_slice(&self.image.data[src..src + w0]);
            }
        }
        let image = Image::new(c, height, width, data)?;
        let annotation = match &self.annotation {
            Annotation::Mask(m) => Annotation::Mask(
                m.remap(height, width, |y, x| (y < h0 && x < w0).then_some((y, x))),
            ),
            other => other.clone(),
        };
        Ok(Self { image, annotation })
    }
}

/// Images of different sizes padded to one: the largest height and width, each rounded up to
/// a multiple of `multiple` (32 for FPN backbones).
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    /// The padded images, `[B, C, H, W]` bytes (padding 0).
    pub images: Vec<u8>,
    /// `[B, H, W]`: 1 where a pixel belongs to its image, 0 in the padding.
    pub valid: Vec<u8>,
    /// Each image's `(height, width)` before padding (detection maps boxes back with them).
    pub sizes: Vec<(usize, usize)>,
    /// The common `(H, W)`.
    pub padded: (usize, usize),
    /// Channels.
    pub channels: usize,
    /// The annotations, masks padded with [`IGNORE`].
    pub annotations: Vec<Annotation>,
}

/// Pads `items` to a common size that is a multiple of `multiple`; they must share their
/// channel count.
pub fn pad_batch(items: &[Annotated], multiple: usize) -> Result<PaddedBatch> {
    let Some(first) = items.first() else {
        return Err(DataError::Config("a batch needs at least one image".into()));
    };
    let channels = first.image.channels;
    if let Some(bad) = items.iter().find(|a| a.image.channels != channels) {
        return Err(DataError::Config(format!(
            "a batch mixes {channels}- and {}-channel images",
            bad.image.channels
        )));
    }
    let m = multiple.max(1);
    let round = |x: usize| x.div_ceil(m) * m;
    let h = round(items.iter().map(|a| a.image.height).max().unwrap_or(0));
    let w = round(items.iter().map(|a| a.image.width).max().unwrap_or(0));
    let mut batch = PaddedBatch {
        images: Vec::with_capacity(items.len() * channels * h * w),
        valid: Vec::with_capacity(items.len() * h * w),
        sizes: Vec::with_capacity(items.len()),
        padded: (h, w),
        channels,
        annotations: Vec::with_capacity(items.len()),
    };
    for a in items {
        let (ih, iw) = a.size();
        let p = a.pad(h, w)?;
        batch.images.extend_from_slice(&p.image.data);
        batch
            .valid
            .extend((0..h * w).map(|i| u8::from(i / w < ih && i % w < iw)));
        batch.sizes.push((ih, iw));
        batch.annotations.push(p.annotation);
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn blank(c: usize, h: usize, w: usize) -> Image {
        Image::new(c, h, w, (0..c * h * w).map(|i| (i % 251) as u8).collect()).unwrap()
    }

    fn boxes(a: &Annotated) -> Vec<BoxAnnotation> {
        match &a.annotation {
            Annotation::Boxes(b) => b.clone(),
            other => panic!("not boxes: {other:?}"),
        }
    }

    fn mask(a: &Annotated) -> &ClassMask {
        match &a.annotation {
            Annotation::Mask(m) => m,
            other => panic!("not a mask: {other:?}"),
        }
    }

    fn close(a: [f32; 4], b: [f32; 4]) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    /// By hand: a 100×200 image (h × w) with box A = [20, 10, 60, 50] (area 1600) and box
    /// B = [150, 80, 190, 95]. Rescaled ×0.5 to 50×100: A = [10, 5, 30, 25] (area 400),
    /// B = [75, 40, 95, 47.5]. Crop 40×40 at row 2, column 15: A shifts to [−5, 3, 15, 23] and
    /// clips to [0, 3, 15, 23] (15 of its 20 columns kept: area 300); B lies right of the crop
    /// (x ≥ 60 > 15 + 40) and is dropped. Flip in a width of 40: A = [25, 3, 40, 23]. Pad to
    /// 64×64: unchanged.
    #[test]
    fn a_box_through_rescale_crop_flip_and_pad() {
        let a = Annotated::new(
            blank(3, 100, 200),
            Annotation::Boxes(vec![
                BoxAnnotation {
                    xyxy: [20.0, 10.0, 60.0, 50.0],
                    label: 3,
                    crowd: false,
                    area: 1600.0,
                },
                BoxAnnotation {
                    xyxy: [150.0, 80.0, 190.0, 95.0],
                    label: 1,
                    crowd: true,
                    area: 600.0,
                },
            ]),
        )
        .unwrap();
        let r = a.resize_keep_ratio(50, 1000).unwrap();
        assert_eq!(r.size(), (50, 100));
        let b = boxes(&r);
        assert!(close(b[0].xyxy, [10.0, 5.0, 30.0, 25.0]) && b[0].area == 400.0);
        assert!(close(b[1].xyxy, [75.0, 40.0, 95.0, 47.5]));
        let c = r.crop(2, 15, 40, 40).unwrap();
        let b = boxes(&c);
        assert_eq!(b.len(), 1);
        assert!(close(b[0].xyxy, [0.0, 3.0, 15.0, 23.0]), "{b:?}");
        assert!((b[0].area - 300.0).abs() < 1e-3 && b[0].label == 3 && !b[0].crowd);
        let f = c.hflip().unwrap();
        assert!(close(boxes(&f)[0].xyxy, [25.0, 3.0, 40.0, 23.0]));
        let p = f.pad(64, 64).unwrap();
        assert_eq!(p.size(), (64, 64));
        assert!(close(boxes(&p)[0].xyxy, [25.0, 3.0, 40.0, 23.0]));
        // The pixels moved with the boxes: the crop's (0, 0) is the resized (2, 15), the flip's
        // (0, 39) is the crop's (0, 0).
        let at = |img: &Image, y, x| img.at(0, y, x);
        assert_eq!(at(&c.image, 0, 0), at(&r.image, 2, 15));
        assert_eq!(at(&f.image, 0, 39), at(&c.image, 0, 0));
        assert_eq!(at(&p.image, 63, 63), 0);
    }

    /// A 4×6 mask (column 5 ignored) through ×2 nearest (8×12: every class count ×4), a crop of
    /// the first 10 columns (only ignored pixels cut), a flip and a pad to 32×32: the counts stay
    /// 4× the original; the class at (1, 2) lands on rows 2–3, columns 4–5 (10 − 1 − 5 … 10 − 1 −
    /// 4); the padding is ignored.
    #[test]
    fn a_mask_keeps_its_class_counts_where_nothing_was_cropped() {
        let v: Vec<u8> = vec![
            0, 0, 1, 1, 2, 255, //
            0, 3, 7, 1, 2, 255, //
            4, 4, 4, 1, 2, 255, //
            5, 5, 6, 6, 2, 255,
        ];
        let m = ClassMask::new(4, 6, MaskValues::U8(v)).unwrap();
        let before = m.class_counts();
        let a = Annotated::new(blank(1, 4, 6), Annotation::Mask(m)).unwrap();
        let r = a.resize(8, 12).unwrap();
        let c = r.crop(0, 0, 8, 10).unwrap();
        let f = c.hflip().unwrap();
        let p = f.pad(32, 32).unwrap();
        let after = mask(&p).class_counts();
        assert_eq!(
            after,
            before
                .iter()
                .map(|(k, n)| (*k, 4 * n))
                .collect::<BTreeMap<_, _>>()
        );
        let pm = mask(&p);
        for (y, x) in [(2, 4), (2, 5), (3, 4), (3, 5)] {
            assert_eq!(pm.at(y, x), 7, "({y}, {x})");
        }
        assert_eq!(pm.at(0, 10), IGNORE);
        assert_eq!(pm.at(8, 0), IGNORE);
        // u16 masks move the same way.
        let m16 = ClassMask::new(1, 2, MaskValues::U16(vec![300, 301])).unwrap();
        let a16 = Annotated::new(blank(1, 1, 2), Annotation::Mask(m16)).unwrap();
        let f16 = a16.hflip().unwrap().pad(2, 2).unwrap();
        assert_eq!(
            mask(&f16).values,
            MaskValues::U16(vec![301, 300, IGNORE, IGNORE])
        );
    }

    /// Three images of 37×50, 64×64 and 20×90 pad to 64×96 (multiples of 32), each valid
    /// exactly over its own pixels.
    #[test]
    fn a_batch_of_three_sizes_pads_to_a_multiple_of_32() {
        let items: Vec<Annotated> = [(37, 50), (64, 64), (20, 90)]
            .iter()
            .map(|&(h, w)| Annotated::new(blank(3, h, w), Annotation::Class(1)).unwrap())
            .collect();
        let b = pad_batch(&items, 32).unwrap();
        assert_eq!(b.padded, (64, 96));
        assert_eq!(b.sizes, vec![(37, 50), (64, 64), (20, 90)]);
        assert_eq!(b.images.len(), 3 * 3 * 64 * 96);
        let plane = 64 * 96;
        let valid = |i: usize| {
            b.valid[i * plane..(i + 1) * plane]
                .iter()
                .map(|&v| usize::from(v))
                .sum::<usize>()
        };
        assert_eq!((valid(0), valid(1), valid(2)), (37 * 50, 64 * 64, 20 * 90));
        let at = |i: usize, y: usize, x: usize| b.valid[i * plane + y * 96 + x];
        assert_eq!((at(0, 36, 49), at(0, 37, 0), at(0, 0, 50)), (1, 0, 0));
        assert_eq!((at(2, 19, 89), at(2, 20, 0), at(2, 0, 90)), (1, 0, 0));
        // Image 2's first pixel row sits at the start of its padded plane.
        let start = 2 * 3 * plane;
        assert_eq!(&b.images[start..start + 90], &items[2].image.data[..90]);
        assert!(b.images[start + 90..start + 96].iter().all(|&v| v == 0));
        let err = pad_batch(
            &[
                items[0].clone(),
                Annotated::new(blank(1, 4, 4), Annotation::Class(0)).unwrap(),
            ],
            32,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("3- and 1-channel"), "{err}");
    }

    /// mmcv's `rescale_size` by hand: 480×640 into 800×1333 → scale min(800/480, 1333/640) =
    /// 1.6667 → 800×1067; 1000×200 into 800×1333 → min(4, 1.333) → 1333×267.
    #[test]
    fn keep_ratio_sizes_by_hand() {
        assert_eq!(keep_ratio_size(480, 640, 800, 1333), (800, 1067));
        assert_eq!(keep_ratio_size(1000, 200, 800, 1333), (1333, 267));
    }

    /// A random crop of a mask avoids windows that one class dominates: a 12×12 mask of class 0
    /// with a 4×4 patch of class 1 at rows and columns 2–5, 6×6 crops. By hand, 15 of the 49
    /// windows hold at least 10 patch pixels (class 0 under 75%); a crop that keeps the rule
    /// (cat_max_ratio 0.75) finds one in nearly every seed, a plain crop (1.0) in about a third.
    /// The same seed gives the same crop.
    #[test]
    fn random_crops_respect_cat_max_ratio_and_the_seed() {
        let mut v = vec![0u8; 144];
        for y in 2..6 {
            for x in 2..6 {
                v[y * 12 + x] = 1;
            }
        }
        let a = Annotated::new(
            blank(1, 12, 12),
            Annotation::Mask(ClassMask::new(12, 12, MaskValues::U8(v)).unwrap()),
        )
        .unwrap();
        let kept = |ratio: f64| {
            (0..40)
                .filter(|&seed| {
                    let c = a
                        .random_crop(6, 6, ratio, &mut ChaCha8Rng::seed_from_u64(seed))
                        .unwrap();
                    let again = a
                        .random_crop(6, 6, ratio, &mut ChaCha8Rng::seed_from_u64(seed))
                        .unwrap();
                    assert_eq!(c, again);
                    let counts = mask(&c).class_counts();
                    let total: usize = counts.values().sum();
                    counts.len() > 1 && (counts[&0] as f64) < 0.75 * total as f64
                })
                .count()
        };
        let (with_rule, plain) = (kept(0.75), kept(1.0));
        assert!(
            with_rule >= 36 && plain <= 24,
            "{with_rule} vs {plain} of 40"
        );
        let rescaled = a
            .random_rescale(10, 10, (0.5, 2.0), &mut ChaCha8Rng::seed_from_u64(1))
            .unwrap();
        let (h, w) = rescaled.size();
        assert!(h == w && (5..=20).contains(&h), "{h}×{w}");
    }
}
