//! COCO box evaluation: AP over IoU 0.50:0.95, AP50, AP75, AP by object size and AR at 1, 10
//! and 100 detections, exactly as pycocotools' `COCOeval` computes them (101 recall points,
//! crowd boxes matched leniently and never counted as misses, areas from the annotations). The
//! engine is `hotcoco`'s, whose precision, recall and summary arrays are pycocotools' to the bit.

use autokd_data::BoxAnnotation;
use hotcoco::params::IouType;
use hotcoco::types::{Annotation, Category, Dataset, Image};
use hotcoco::{COCO, COCOeval};
use serde::{Deserialize, Serialize};

use super::boxes::Xyxy;
use super::postprocess::Detections;
use crate::error::{Result, TrainError};

/// The twelve numbers of COCO's box summary (pycocotools' `stats`, in its order); a metric with
/// nothing to measure (no ground truth of that size, say) is −1 as there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CocoMetrics {
    /// AP at IoU 0.50:0.95, all sizes, 100 detections.
    pub ap: f64,
    /// AP at IoU 0.50.
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
    /// AP of small objects (area < 32²).
    pub ap_small: f64,
    /// AP of medium objects (32² … 96²).
    pub ap_medium: f64,
    /// AP of large objects (> 96²).
    pub ap_large: f64,
    /// AR with 1 detection per image.
    pub ar1: f64,
    /// AR with 10.
    pub ar10: f64,
    /// AR with 100.
    pub ar100: f64,
    /// AR of small objects.
    pub ar_small: f64,
    /// AR of medium objects.
    pub ar_medium: f64,
    /// AR of large objects.
    pub ar_large: f64,
}

impl CocoMetrics {
    /// The metrics with their names (`ap`, `ap50`, …), in pycocotools' order.
    pub fn named(&self) -> [(&'static str, f64); 12] {
        [
            ("ap", self.ap),
            ("ap50", self.ap50),
            ("ap75", self.ap75),
            ("ap_small", self.ap_small),
            ("ap_medium", self.ap_medium),
            ("ap_large", self.ap_large),
            ("ar1", self.ar1),
            ("ar10", self.ar10),
            ("ar100", self.ar100),
            ("ar_small", self.ar_small),
            ("ar_medium", self.ar_medium),
            ("ar_large", self.ar_large),
        ]
    }
}

/// One evaluated image: its size, its ground truth and the model's detections.
#[derive(Debug, Clone, Copy)]
pub struct EvalImage<'a> {
    /// Width and height in pixels.
    pub size: (u32, u32),
    /// The ground-truth boxes (crowd ones included: they are matched leniently).
    pub truth: &'a [BoxAnnotation],
    /// The detections.
    pub detections: &'a Detections,
}

fn xywh(b: &Xyxy) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [x1, y1, x2 - x1, y2 - y1]
}

/// COCO box metrics of `images` for a detector of `classes` classes (labels `0..classes`).
pub fn coco_metrics(images: &[EvalImage<'_>], classes: usize) -> Result<CocoMetrics> {
    let mut gt = Dataset {
        categories: (0..classes)
            .map(|c| Category {
                id: c as u64 + 1,
                name: format!("class{c}"),
                ..Category::default()
            })
            .collect(),
        ..Dataset::default()
    };
    let mut dets = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let image_id = i as u64 + 1;
        gt.images.push(Image {
            id: image_id,
            width: img.size.0,
            height: img.size.1,
            ..Image::default()
        });
        for b in img.truth {
            if usize::from(b.label) >= classes {
                return Err(TrainError::Config(format!(
                    "image {i}: a ground-truth box of class {} for {classes} classes",
                    b.label
                )));
            }
            gt.annotations.push(Annotation {
                id: gt.annotations.len() as u64 + 1,
                image_id,
                category_id: u64::from(b.label) + 1,
                bbox: Some(xywh(&b.xyxy)),
                area: Some(f64::from(b.area)),
                iscrowd: b.crowd,
                ..Annotation::default()
            });
        }
        let d = img.detections;
        for ((b, &s), &l) in d.boxes.iter().zip(&d.scores).zip(&d.labels) {
            if l >= classes || !s.is_finite() {
                return Err(TrainError::Config(format!(
                    "image {i}: a detection of class {l} with score {s} for {classes} classes"
                )));
            }
            dets.push(Annotation {
                id: dets.len() as u64 + 1,
                image_id,
                category_id: l as u64 + 1,
                bbox: Some(xywh(b)),
                score: Some(f64::from(s)),
                ..Annotation::default()
            });
        }
    }
    let gt = COCO::from_dataset(gt);
    let dt = gt
        .load_res_anns(dets)
        .map_err(|e| TrainError::Config(format!("COCO evaluation refused the detections: {e}")))?;
    let mut ev = COCOeval::new(gt, dt, IouType::Bbox);
    ev.evaluate()
        .map_err(|e| TrainError::Config(format!("COCO evaluation failed: {e}")))?;
    ev.accumulate();
    ev.summarize_lines();
    let s = ev.stats().unwrap_or_default();
    let [
        ap,
        ap50,
        ap75,
        ap_small,
        ap_medium,
        ap_large,
        ar1,
        ar10,
        ar100,
        ar_small,
        ar_medium,
        ar_large,
    ] = s[..]
    else {
        return Err(TrainError::Config(format!(
            "COCO evaluation gave {} summary numbers, expected 12",
            s.len()
        )));
    };
    Ok(CocoMetrics {
        ap,
        ap50,
        ap75,
        ap_small,
        ap_medium,
        ap_large,
        ar1,
        ar10,
        ar100,
        ar_small,
        ar_medium,
        ar_large,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(xywh: [f32; 4], label: u16) -> BoxAnnotation {
        let [x, y, w, h] = xywh;
        BoxAnnotation {
            xyxy: [x, y, x + w, y + h],
            label,
            crowd: false,
            area: w * h,
        }
    }

    fn dets(list: &[([f32; 4], f32, usize)]) -> Detections {
        Detections {
            boxes: list
                .iter()
                .map(|(b, _, _)| [b[0], b[1], b[0] + b[2], b[1] + b[3]])
                .collect(),
            scores: list.iter().map(|d| d.1).collect(),
            labels: list.iter().map(|d| d.2).collect(),
        }
    }

    /// The golden case, as pycocotools computes it: ground truth [10,10,40,40] and
    /// [60,60,30,30] (xywh); detections [10,10,40,40]@0.9, [70,60,30,30]@0.8, [0,80,10,10]@0.95.
    /// By hand: the 0.95 detection is a false positive first; the exact one is matched at every
    /// threshold; the shifted one (IoU 600/1200 = 0.5) only at 0.50. At IoU 0.5 the precision
    /// envelope is 2/3 up to recall 1 → AP50 = 0.6667; at 0.55 … 0.95 it is 1/2 up to recall
    /// 0.5 → 51 of 101 points × 0.5 = 0.2525 (AP75); AP = (0.6667 + 9 × 0.2525) / 10 = 0.2939.
    #[test]
    fn golden_case_matches_pycocotools() {
        let truth = [
            gt([10.0, 10.0, 40.0, 40.0], 0),
            gt([60.0, 60.0, 30.0, 30.0], 0),
        ];
        let d = dets(&[
            ([10.0, 10.0, 40.0, 40.0], 0.9, 0),
            ([70.0, 60.0, 30.0, 30.0], 0.8, 0),
            ([0.0, 80.0, 10.0, 10.0], 0.95, 0),
        ]);
        let m = coco_metrics(
            &[EvalImage {
                size: (100, 100),
                truth: &truth,
                detections: &d,
            }],
            1,
        )
        .unwrap();
        assert!((m.ap - 0.2939).abs() < 1e-4, "{m:?}");
        assert!((m.ap50 - 0.6667).abs() < 1e-4, "{m:?}");
        assert!((m.ap75 - 0.2525).abs() < 1e-4, "{m:?}");
        // The 40×40 object is medium (1600 ≥ 32²), the 30×30 one small; none is large (> 96²),
        // so large AP has nothing to measure: −1, as pycocotools prints it.
        assert_eq!(m.ap_large, -1.0, "{m:?}");
        // AR@1: one detection per image (the 0.95 false positive) finds nothing.
        assert_eq!(m.ar1, 0.0);
    }

    #[test]
    fn crowds_classes_and_empty_results() {
        // A crowd box absorbs a detection without counting as a miss; a second class with one
        // perfect detection has AP 1; the mean over the two classes is (1 + 1) / 2.
        let truth = [
            gt([0.0, 0.0, 50.0, 50.0], 0),
            BoxAnnotation {
                crowd: true,
                ..gt([60.0, 60.0, 30.0, 30.0], 0)
            },
            gt([0.0, 60.0, 40.0, 40.0], 1),
        ];
        let d = dets(&[
            ([0.0, 0.0, 50.0, 50.0], 0.9, 0),
            ([62.0, 62.0, 20.0, 20.0], 0.95, 0),
            ([0.0, 60.0, 40.0, 40.0], 0.5, 1),
        ]);
        let m = coco_metrics(
            &[EvalImage {
                size: (100, 100),
                truth: &truth,
                detections: &d,
            }],
            2,
        )
        .unwrap();
        assert!((m.ap - 1.0).abs() < 1e-9, "{m:?}");
        // No detections at all: AP 0 where there is ground truth.
        let none = Detections::default();
        let m = coco_metrics(
            &[EvalImage {
                size: (100, 100),
                truth: &truth,
                detections: &none,
            }],
            2,
        )
        .unwrap();
        assert_eq!(m.ap, 0.0, "{m:?}");
        // A label out of range is an error, not a silent miss.
        let bad = dets(&[([0.0, 0.0, 1.0, 1.0], 0.5, 2)]);
        let err = coco_metrics(
            &[EvalImage {
                size: (10, 10),
                truth: &[],
                detections: &bad,
            }],
            2,
        );
        assert!(err.is_err_and(|e| e.to_string().contains("class 2")));
    }
}
