//! From a one-stage detector's outputs to detections, as torchvision's RetinaNet does it: per
//! level, the anchor-class scores `σ(logit)` above a threshold, the best `top_k` of them, their
//! anchors' deltas decoded and clipped to the image; then over all levels class-aware NMS and the
//! best `max_detections`.
//!
//! NMS is burn-vision's (`Nms` on a `[N, 4]` tensor; its CPU kernel serves every backend without
//! a native one); classes are kept apart by torchvision's `batched_nms` trick, one NMS over boxes
//! shifted by `class · (largest coordinate + 1)`.

use burn::prelude::*;
use burn_vision::{Nms, NmsOptions};

use super::boxes::{BoxCoder, Xyxy, clip};
use crate::error::{Result, TrainError};

/// The thresholds of post-processing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostProcess {
    /// Scores at or below this are dropped (torchvision keeps `score > 0.05`).
    pub score_threshold: f32,
    /// The best anchor-class pairs kept per level before NMS.
    pub top_k: usize,
    /// NMS suppresses a box whose IoU with a better one of its class exceeds this.
    pub nms_iou: f32,
    /// Detections kept per image (COCO evaluates at most 100).
    pub max_detections: usize,
}

impl PostProcess {
    /// RetinaNet's: score > 0.05, 1,000 per level, NMS at 0.5, 100 per image (mmdet's
    /// `max_per_img`; torchvision keeps 300).
    pub const RETINANET: Self = Self {
        score_threshold: 0.05,
        top_k: 1000,
        nms_iou: 0.5,
        max_detections: 100,
    };
}

/// The detections of one image, best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detections {
    /// Boxes `[x1, y1, x2, y2]` in the input's pixels.
    pub boxes: Vec<Xyxy>,
    /// Scores in `(0, 1)`.
    pub scores: Vec<f32>,
    /// Classes.
    pub labels: Vec<usize>,
}

/// One level's outputs for one image, on the host.
#[derive(Debug, Clone, Copy)]
pub struct LevelOutputs<'a> {
    /// `[A × K]` class logits, anchors in the generator's order.
    pub logits: &'a [f32],
    /// `[A × 4]` box deltas.
    pub deltas: &'a [f32],
    /// `[A]` anchors.
    pub anchors: &'a [Xyxy],
}

/// Indices of the boxes that class-aware NMS keeps, best score first (ties in input order).
pub fn batched_nms(
    boxes: &[Xyxy],
    scores: &[f32],
    labels: &[usize],
    iou: f32,
    device: &Device,
) -> Result<Vec<usize>> {
    let n = boxes.len();
    if scores.len() != n || labels.len() != n {
        return Err(TrainError::Config(format!(
            "NMS of {n} boxes with {} scores and {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let largest = boxes.iter().flatten().fold(0.0f32, |m, &v| m.max(v.abs()));
    let mut flat = Vec::with_capacity(n * 4);
    for (b, &l) in boxes.iter().zip(labels) {
        let offset = l as f32 * (largest + 1.0);
        flat.extend(b.iter().map(|v| v + offset));
    }
    let t = Tensor::<2>::from_data(TensorData::new(flat, [n, 4]), device);
    let s = Tensor::<1>::from_data(TensorData::new(scores.to_vec(), [n]), device);
    let keep = t.nms(
        s,
        NmsOptions {
            iou_threshold: iou,
            score_threshold: f32::NEG_INFINITY,
            max_output_boxes: 0,
        },
    );
    let keep = keep
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| TrainError::Config(format!("NMS returned unreadable indices: {e:?}")))?;
    Ok(keep.into_iter().map(|i| i as usize).collect())
}

/// The detections of one image of `width × height` from its levels' outputs.
pub fn detect(
    levels: &[LevelOutputs<'_>],
    classes: usize,
    width: f32,
    height: f32,
    coder: &BoxCoder,
    post: &PostProcess,
    device: &Device,
) -> Result<Detections> {
    let mut boxes = Vec::new();
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    for (l, level) in levels.iter().enumerate() {
        let a = level.anchors.len();
        if level.logits.len() != a * classes || level.deltas.len() != a * 4 {
            return Err(TrainError::Config(format!(
                "level {l}: {} logits and {} deltas for {a} anchors of {classes} classes",
                level.logits.len(),
                level.deltas.len()
            )));
        }
        let mut candidates: Vec<(usize, f32)> = level
            .logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i, 1.0 / (1.0 + (-x).exp())))
            .filter(|&(_, s)| s > post.score_threshold)
            .collect();
        // Best first; equal scores keep the anchor order (a stable sort).
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        candidates.truncate(post.top_k);
        for (i, s) in candidates {
            let (anchor, label) = (i / classes, i % classes);
            let d = &level.deltas[anchor * 4..anchor * 4 + 4];
            let b = coder.decode(&level.anchors[anchor], &[d[0], d[1], d[2], d[3]]);
            boxes.push(clip(&b, width, height));
            scores.push(s);
            labels.push(label);
        }
    }
    let keep = batched_nms(&boxes, &scores, &labels, post.nms_iou, device)?;
    let keep = &keep[..keep.len().min(post.max_detections)];
    Ok(Detections {
        boxes: keep.iter().map(|&i| boxes[i]).collect(),
        scores: keep.iter().map(|&i| scores[i]).collect(),
        labels: keep.iter().map(|&i| labels[i]).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_keeps_classes_apart_by_hand() {
        let device = Device::flex();
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0], // IoU 90 / 110 with box 0, same class: suppressed
            [0.0, 0.0, 10.0, 10.0], // identical to box 0 but another class: kept
            [5.0, 0.0, 15.0, 10.0], // IoU 50 / 150 with box 0: kept
            [20.0, 20.0, 30.0, 30.0], // alone, lowest score
        ];
        let scores = [0.9, 0.8, 0.7, 0.95, 0.1];
        let labels = [0, 0, 1, 0, 0];
        let keep = batched_nms(&boxes, &scores, &labels, 0.5, &device).unwrap();
        assert_eq!(keep, vec![3, 0, 2, 4]);
        // At threshold 0.3 box 0 (IoU 1/3 with box 3) goes too.
        let keep = batched_nms(&boxes, &scores, &labels, 0.3, &device).unwrap();
        assert_eq!(keep, vec![3, 2, 4]);
        assert!(batched_nms(&boxes, &scores[..2], &labels, 0.5, &device).is_err());
        assert_eq!(
            batched_nms(&[], &[], &[], 0.5, &device).unwrap(),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn detections_from_two_levels_by_hand() {
        let device = Device::flex();
        let coder = BoxCoder::default();
        // Level 0: two anchors, two classes. Logit 2 → 0.881, 0 → 0.5, −5 → 0.0067 (dropped).
        let a0 = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]];
        let l0 = [2.0, -5.0, 0.0, -5.0];
        // The second anchor moves right by half its width: [5, 0, 15, 10], IoU 1/3 with the
        // first, so NMS at 0.5 keeps both.
        let d0 = [0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0];
        // Level 1: one anchor, partly outside the image (clipped to 0 … 20), class 1 at 0.731.
        let a1 = [[-10.0, 0.0, 10.0, 20.0]];
        let l1 = [-5.0, 1.0];
        let d1 = [0.0; 4];
        let levels = [
            LevelOutputs {
                logits: &l0,
                deltas: &d0,
                anchors: &a0,
            },
            LevelOutputs {
                logits: &l1,
                deltas: &d1,
                anchors: &a1,
            },
        ];
        let det = detect(
            &levels,
            2,
            20.0,
            20.0,
            &coder,
            &PostProcess::RETINANET,
            &device,
        )
        .unwrap();
        assert_eq!(det.labels, vec![0, 1, 0]);
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert_eq!(det.scores, vec![s(2.0), s(1.0), s(0.0)]);
        assert_eq!(
            det.boxes,
            vec![
                [0.0, 0.0, 10.0, 10.0],
                [0.0, 0.0, 10.0, 20.0],
                [5.0, 0.0, 15.0, 10.0]
            ]
        );
        // top_k 1 per level and at most 2 detections.
        let post = PostProcess {
            top_k: 1,
            max_detections: 2,
            ..PostProcess::RETINANET
        };
        let det = detect(&levels, 2, 20.0, 20.0, &coder, &post, &device).unwrap();
        assert_eq!(det.labels, vec![0, 1]);
        // Mismatched lengths are refused.
        let bad = [LevelOutputs {
            logits: &l0[..3],
            deltas: &d0,
            anchors: &a0,
        }];
        assert!(
            detect(
                &bad,
                2,
                20.0,
                20.0,
                &coder,
                &PostProcess::RETINANET,
                &device
            )
            .is_err()
        );
    }
}
