//! Max-IoU assignment of anchors to ground-truth boxes (mmdet's `MaxIoUAssigner`, torchvision's
//! `Matcher`): an anchor whose best IoU is at least the positive threshold is assigned to that
//! box, one below the negative threshold is background, one in between is ignored; then each box
//! also takes the anchors that overlap it most ("low-quality matches"), so that no box is left
//! without a positive anchor.

use super::boxes::{Xyxy, iou_matrix};

/// What an anchor is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// Background: its best IoU is below the negative threshold.
    Negative,
    /// Neither: counted in no loss.
    Ignored,
    /// Foreground, matched to this ground-truth box.
    Positive(usize),
}

/// The thresholds of max-IoU assignment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxIouAssigner {
    /// Best IoU ≥ this: positive (RetinaNet 0.5, RPN 0.7).
    pub pos_iou: f32,
    /// Best IoU < this: negative (RetinaNet 0.4, RPN 0.3).
    pub neg_iou: f32,
    /// Give each box the anchors with its highest IoU as well (mmdet's `match_low_quality`,
    /// with `min_pos_iou = 0` and `gt_max_assign_all`).
    pub low_quality: bool,
}

impl MaxIouAssigner {
    /// RetinaNet's: positive ≥ 0.5, negative < 0.4, low-quality matches.
    pub const RETINANET: Self = Self {
        pos_iou: 0.5,
        neg_iou: 0.4,
        low_quality: true,
    };

    /// Assigns every anchor.
    ///
    /// Conventions (mmdet's): an anchor's box is its first best box on ties; in the low-quality
    /// pass boxes are taken in order, so an anchor that is the best of two boxes goes to the
    /// later one, and every anchor tied at a box's highest IoU goes to it. A box that overlaps
    /// no anchor at all takes none (mmdet would, with `min_pos_iou = 0`, make every anchor
    /// positive for it). With no boxes, every anchor is background.
    pub fn assign(&self, anchors: &[Xyxy], boxes: &[Xyxy]) -> Vec<Assigned> {
        if boxes.is_empty() {
            return vec![Assigned::Negative; anchors.len()];
        }
        let g = boxes.len();
        let ious = iou_matrix(anchors, boxes); // [A × G]
        let mut out: Vec<Assigned> = ious
            .chunks_exact(g)
            .map(|row| {
                let (best, max) =
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |acc, (j, &v)| {
                                if v > acc.1 { (j, v) } else { acc }
                            },
                        );
                if max >= self.pos_iou {
                    Assigned::Positive(best)
                } else if max < self.neg_iou {
                    Assigned::Negative
                } else {
                    Assigned::Ignored
                }
            })
            .collect();
        if self.low_quality {
            for j in 0..g {
                let highest = ious
                    .iter()
                    .skip(j)
                    .step_by(g)
                    .fold(0.0f32, |m, &v| m.max(v));
                if highest <= 0.0 {
                    continue;
                }
                for (a, assigned) in out.iter_mut().enumerate() {
                    if ious[a * g + j] == highest {
                        *assigned = Assigned::Positive(j);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Assigned::*;

    #[test]
    fn thresholds_and_low_quality_matches_by_hand() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]];
        let anchors = [
            // IoU 1 with box 0.
            [0.0, 0.0, 10.0, 10.0],
            // IoU 25 / 175 = 0.14 with box 0: background.
            [5.0, 5.0, 15.0, 15.0],
            // IoU 45 / 100 with box 0: between 0.4 and 0.5, ignored.
            [0.0, 0.0, 10.0, 4.5],
            // Far away: background.
            [100.0, 100.0, 110.0, 110.0],
            // IoU 40 / 100 = 0.4 with box 1 (exactly the negative threshold: not negative), and
            // the highest box 1 has: positive by the low-quality pass.
            [20.0, 0.0, 30.0, 4.0],
        ];
        let got = MaxIouAssigner::RETINANET.assign(&anchors, &boxes);
        assert_eq!(
            got,
            vec![Positive(0), Negative, Ignored, Negative, Positive(1)]
        );
        let strict = MaxIouAssigner {
            low_quality: false,
            ..MaxIouAssigner::RETINANET
        };
        assert_eq!(
            strict.assign(&anchors, &boxes),
            vec![Positive(0), Negative, Ignored, Negative, Ignored]
        );
    }

    #[test]
    fn ties_and_empty_images() {
        // One anchor equally good for two identical boxes: the first by IoU, then the low-quality
        // pass gives it to the later box (mmdet's order).
        let b = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(
            MaxIouAssigner::RETINANET.assign(&[b], &[b, b]),
            vec![Positive(1)]
        );
        let strict = MaxIouAssigner {
            low_quality: false,
            ..MaxIouAssigner::RETINANET
        };
        assert_eq!(strict.assign(&[b], &[b, b]), vec![Positive(0)]);
        // Two anchors tied at a box's highest IoU (100 / 400, below the negative threshold) both
        // become positive; a third with less overlap (25 / 475) stays background.
        let anchors = [
            [0.0, 0.0, 20.0, 20.0],
            [-10.0, -10.0, 10.0, 10.0],
            [5.0, 5.0, 25.0, 25.0],
        ];
        let got = MaxIouAssigner::RETINANET.assign(&anchors, &[[0.0, 0.0, 10.0, 10.0]]);
        assert_eq!(got, vec![Positive(0), Positive(0), Negative]);
        // No boxes: all background; a box far from every anchor takes none.
        assert_eq!(MaxIouAssigner::RETINANET.assign(&[b], &[]), vec![Negative]);
        assert_eq!(
            MaxIouAssigner::RETINANET.assign(&[b], &[[100.0, 100.0, 110.0, 110.0]]),
            vec![Negative]
        );
    }
}
