//! Segmentation scenes composed of real items (`scenes`, `scenes:fashion-mnist[:DIR]`): a
//! trainable segmentation set at CPU scale, made deterministically from a classification set.
//!
//! Each scene is a black canvas on which two or three items of the base set's split (the
//! embedded digits, upscaled ×3 with nearest pixels, or Fashion-MNIST's 28×28 images) are
//! pasted at random places, later items over earlier ones. The mask gives every pixel its
//! item's class + 1 where the item is bright enough (at least a tenth of the largest value) and
//! 0 (background) elsewhere. Box scenes (`boxscenes`, [`compose_boxes`]) are the same scenes
//! annotated instead with each item's box: the tight box of its bright pixels as placed (later
//! items may cover part of it, as objects occlude each other), labelled with the item's class
//! (no background class). **The composition is synthetic; the items are real.** Training
//! scenes draw from the base's training split only, test scenes from its test split only. The
//! same base gives the same scenes on every machine (a fixed seed per split).

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::annotation::{Annotation, BoxAnnotation, ClassMask, MaskValues};
use crate::dataset::{Dataset, DatasetInfo, Split};
use crate::error::{DataError, Result};
use crate::image::{Image, ImageSource};

/// How scenes are made from a base set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SceneLayout {
    /// Canvas side.
    pub side: usize,
    /// Nearest-neighbour upscaling of the items.
    pub scale: usize,
    /// Scenes made from the training split and from the test split.
    pub scenes: (usize, usize),
}

impl SceneLayout {
    /// For the embedded digits (8×8 → 24×24 items): 48×48 scenes, 1,000 for training and 250
    /// for test.
    pub const DIGITS: SceneLayout = SceneLayout {
        side: 48,
        scale: 3,
        scenes: (1000, 250),
    };
    /// For Fashion-MNIST (28×28 items): 64×64 scenes, 2,000 for training and 500 for test.
    pub const FASHION: SceneLayout = SceneLayout {
        side: 64,
        scale: 1,
        scenes: (2000, 500),
    };
}

/// The smallest anchor box scenes declare ([`DatasetInfo::anchor_base`]): their items are 8–28
/// pixels wide and high, so RetinaNet's anchors start at 16 px on P3 instead of 32.
pub const BOX_SCENE_ANCHOR: f32 = 16.0;

/// Scenes in memory: grey images, their masks and their items' boxes.
#[derive(Debug, Clone)]
pub struct Scenes {
    side: usize,
    pixels: Vec<u8>,
    masks: Vec<u8>,
    boxes: Vec<Vec<BoxAnnotation>>,
    /// Annotate with the boxes instead of the masks.
    as_boxes: bool,
}

impl Scenes {
    /// `n` scenes from the images of `split` (grey, one size), seeded by `seed`.
    pub fn compose(
        split: &Split,
        layout: SceneLayout,
        n: usize,
        pixel_max: f32,
        seed: u64,
    ) -> Result<Self> {
        if split.is_empty() {
            return Err(DataError::Config(
                "scenes need a non-empty base split".into(),
            ));
        }
        let first = split.image(0)?;
        let (ih, iw) = (first.height * layout.scale, first.width * layout.scale);
        let side = layout.side;
        if first.channels != 1 || ih > side || iw > side {
            return Err(DataError::Config(format!(
                "scenes of side {side} need grey items of at most that size, got {}×{}×{}",
                first.channels, ih, iw
            )));
        }
        let threshold = (pixel_max / 10.0).ceil() as u8;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let plane = side * side;
        let mut pixels = vec![0u8; n * plane];
        let mut masks = vec![0u8; n * plane];
        let mut boxes = Vec::with_capacity(n);
        for s in 0..n {
            let items = rng.random_range(2..=3);
            let mut scene_boxes = Vec::with_capacity(items);
            for _ in 0..items {
                let pos = rng.random_range(0..split.len());
                let item = split.image(pos)?;
                if (
                    item.channels,
                    item.height * layout.scale,
                    item.width * layout.scale,
                ) != (1, ih, iw)
                {
                    return Err(DataError::Config(format!(
                        "scenes need base images of one size; image {pos} is {}×{}×{}",
                        item.channels, item.height, item.width
                    )));
                }
                let class = u8::try_from(split.label(pos) + 1).map_err(|_| {
                    DataError::Config("scenes hold at most 254 item classes".into())
                })?;
                let (y0, x0) = (
                    rng.random_range(0..=side - ih),
                    rng.random_range(0..=side - iw),
                );
                // The item's bright pixels' extent: [x_lo, x_hi) × [y_lo, y_hi).
                let (mut x_lo, mut y_lo, mut x_hi, mut y_hi) = (usize::MAX, usize::MAX, 0, 0);
                for y in 0..ih {
                    for x in 0..iw {
                        let v = item.at(0, y / layout.scale, x / layout.scale);
                        if v >= threshold {
                            let at = s * plane + (y0 + y) * side + x0 + x;
                            pixels[at] = v;
                            masks[at] = class;
                            (x_lo, y_lo) = (x_lo.min(x0 + x), y_lo.min(y0 + y));
                            (x_hi, y_hi) = (x_hi.max(x0 + x + 1), y_hi.max(y0 + y + 1));
                        }
                    }
                }
                if x_hi > x_lo && y_hi > y_lo {
                    let [a, b, c, d] = [x_lo, y_lo, x_hi, y_hi].map(|v| v as f32);
                    scene_boxes.push(BoxAnnotation {
                        xyxy: [a, b, c, d],
                        label: u16::from(class - 1),
                        crowd: false,
                        area: (c - a) * (d - b),
                    });
                }
            }
            boxes.push(scene_boxes);
        }
        Ok(Self {
            side,
            pixels,
            masks,
            boxes,
            as_boxes: false,
        })
    }

    /// Shares the scenes behind an `Arc`.
    pub fn shared(self) -> Arc<dyn ImageSource> {
        Arc::new(self)
    }

    fn check(&self, index: usize) -> Result<std::ops::Range<usize>> {
        let plane = self.side * self.side;
        if index >= self.len() {
            return Err(DataError::Config(format!(
                "scene {index} out of range (0..{})",
                self.len()
            )));
        }
        Ok(index * plane..(index + 1) * plane)
    }
}

impl ImageSource for Scenes {
    fn len(&self) -> usize {
        self.pixels.len() / (self.side * self.side).max(1)
    }

    fn label(&self, _index: usize) -> usize {
        0
    }

    fn image(&self, index: usize) -> Result<Image> {
        let r = self.check(index)?;
        Image::new(1, self.side, self.side, self.pixels[r].to_vec())
    }

    fn annotation(&self, index: usize) -> Result<Annotation> {
        let r = self.check(index)?;
        if self.as_boxes {
            return Ok(Annotation::Boxes(self.boxes[index].clone()));
        }
        Ok(Annotation::Mask(ClassMask::new(
            self.side,
            self.side,
            MaskValues::U8(self.masks[r].to_vec()),
        )?))
    }
}

/// Scenes composed from `base` (its training split for training scenes, its test split for
/// test scenes), annotated with masks.
pub fn compose(base: &Dataset, layout: SceneLayout) -> Result<Dataset> {
    compose_as(base, layout, false)
}

/// The same scenes annotated with their items' boxes; the classes are the base's.
pub fn compose_boxes(base: &Dataset, layout: SceneLayout) -> Result<Dataset> {
    compose_as(base, layout, true)
}

fn compose_as(base: &Dataset, layout: SceneLayout, as_boxes: bool) -> Result<Dataset> {
    let info = &base.info;
    let mut train = Scenes::compose(&base.train, layout, layout.scenes.0, info.pixel_max, 0)?;
    let mut test = Scenes::compose(&base.test, layout, layout.scenes.1, info.pixel_max, 1)?;
    train.as_boxes = as_boxes;
    test.as_boxes = as_boxes;
    // Normalization from the training scenes' own pixels.
    let scale = f64::from(info.pixel_max);
    let n = train.pixels.len().max(1) as f64;
    let mean = train
        .pixels
        .iter()
        .map(|&v| f64::from(v) / scale)
        .sum::<f64>()
        / n;
    let var = train
        .pixels
        .iter()
        .map(|&v| (f64::from(v) / scale - mean).powi(2))
        .sum::<f64>()
        / n;
    let mut class_names = if as_boxes {
        Vec::new()
    } else {
        vec!["background".to_string()]
    };
    class_names.extend(info.class_names.iter().cloned());
    let kind = if as_boxes { "boxscenes" } else { "scenes" };
    Ok(Dataset {
        info: DatasetInfo {
            name: format!("{kind}:{}", info.name),
            channels: 1,
            height: layout.side,
            width: layout.side,
            num_classes: class_names.len(),
            class_names,
            pixel_max: info.pixel_max,
            mean: vec![mean as f32],
            std: vec![var.sqrt().max(1e-3) as f32],
            // Items of 8–28 px: anchors from 16 px on P3 (half RetinaNet's 32).
            anchor_base: as_boxes.then_some(BOX_SCENE_ANCHOR),
        },
        train: Split::all(train.shared()),
        test: Split::all(test.shared()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DatasetSpec;

    /// Scenes of the embedded digits: the declared sizes and classes; the same scenes on every
    /// load; a pixel is an item's (mask > 0) exactly when it is at least the threshold (2 of
    /// 16); every scene holds items; classes 1–10 all occur; background dominates.
    #[test]
    fn digit_scenes_are_deterministic_and_their_masks_follow_the_pixels() {
        let base = DatasetSpec::Digits.load().unwrap();
        let a = compose(&base, SceneLayout::DIGITS).unwrap();
        let b = compose(&base, SceneLayout::DIGITS).unwrap();
        assert_eq!((a.train.len(), a.test.len()), (1000, 250));
        assert_eq!(a.info.num_classes, 11);
        assert_eq!(a.info.input_shape(), [1, 48, 48]);
        let declared = DatasetSpec::Scenes(Box::new(DatasetSpec::Digits))
            .declared_size()
            .unwrap();
        assert_eq!(
            (
                declared.input,
                declared.num_classes,
                declared.train_per_class
            ),
            (a.info.input_shape(), 11, a.train.class_counts(11)[0])
        );
        let mut counts = [0usize; 11];
        for i in [0, 1, 499, 999] {
            let x = a.train.annotated(i).unwrap();
            assert_eq!(x, b.train.annotated(i).unwrap());
            let Annotation::Mask(m) = &x.annotation else {
                panic!("not a mask")
            };
            let mut item_pixels = 0;
            for y in 0..48 {
                for xx in 0..48 {
                    let (v, c) = (x.image.at(0, y, xx), m.at(y, xx));
                    assert_eq!(
                        c > 0,
                        v >= 2,
                        "scene {i} at ({y}, {xx}): value {v}, class {c}"
                    );
                    counts[usize::from(c)] += 1;
                    item_pixels += usize::from(c > 0);
                }
            }
            assert!(item_pixels > 0, "scene {i} is empty");
        }
        assert!(counts[0] > counts[1..].iter().sum::<usize>(), "{counts:?}");
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..a.test.len() {
            let Annotation::Mask(m) = a.test.annotated(i).unwrap().annotation else {
                panic!("not a mask")
            };
            seen.extend(m.class_counts().into_keys());
        }
        assert_eq!(seen.len(), 11, "{seen:?}");
    }

    /// Box scenes: the same pixels as the mask scenes; one box per item whose pixels reach the
    /// threshold, each tight around pixels of its class in the mask where it is not covered
    /// (at least one pixel of its class on each edge of the box, unless a later item covers
    /// that edge), labels 0–9, 10 classes.
    #[test]
    fn box_scenes_bound_their_items() {
        let base = DatasetSpec::Digits.load().unwrap();
        let masks = compose(&base, SceneLayout::DIGITS).unwrap();
        let boxes = compose_boxes(&base, SceneLayout::DIGITS).unwrap();
        assert_eq!(boxes.info.num_classes, 10);
        assert_eq!(boxes.info.class_names[0], base.info.class_names[0]);
        let mut total = 0;
        for i in 0..50 {
            let m = masks.train.annotated(i).unwrap();
            let b = boxes.train.annotated(i).unwrap();
            assert_eq!(m.image, b.image);
            let (Annotation::Mask(mask), Annotation::Boxes(bs)) = (&m.annotation, &b.annotation)
            else {
                panic!("scene {i}: not a mask and boxes")
            };
            assert!((2..=3).contains(&bs.len()), "scene {i}: {bs:?}");
            for bx in bs {
                let [x1, y1, x2, y2] = bx.xyxy.map(|v| v as usize);
                assert!(x2 <= 48 && y2 <= 48 && x1 < x2 && y1 < y2 && bx.label < 10);
                assert_eq!(bx.area, ((x2 - x1) * (y2 - y1)) as f32);
                // No pixel of the item's class lies outside its box unless another item of
                // the same class is in the scene.
                let same = bs.iter().filter(|o| o.label == bx.label).count();
                if same == 1 {
                    for y in 0..48 {
                        for x in 0..48 {
                            if mask.at(y, x) == bx.label + 1 {
                                assert!(
                                    (x1..x2).contains(&x) && (y1..y2).contains(&y),
                                    "scene {i}: pixel ({y}, {x}) of class {} outside {bx:?}",
                                    bx.label
                                );
                            }
                        }
                    }
                }
                total += 1;
            }
        }
        assert!(total >= 100);
    }
}
