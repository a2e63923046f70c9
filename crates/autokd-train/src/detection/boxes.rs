//! Boxes as `[x1, y1, x2, y2]` in continuous pixel coordinates (a box over the whole of a
//! `W`-wide image spans `0 … W`): IoU without the old "+1 pixel" (mmdet ≥ 2, torchvision,
//! pycocotools on xywh), and the delta-XYWH box coding of R-CNN, RetinaNet and their
//! descendants.

/// A box `[x1, y1, x2, y2]`.
pub type Xyxy = [f32; 4];

/// The area of a box; zero for an empty or inverted one.
pub fn area(b: &Xyxy) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// The IoU of two boxes, `|a ∩ b| / |a ∪ b|`; zero when the union is empty.
pub fn iou(a: &Xyxy, b: &Xyxy) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The IoU of every box of `a` with every box of `b`: `[a.len() × b.len()]`, row-major (torchvision
/// `box_iou`, mmdet `bbox_overlaps` in `iou` mode).
pub fn iou_matrix(a: &[Xyxy], b: &[Xyxy]) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        out.extend(b.iter().map(|y| iou(x, y)));
    }
    out
}

/// The delta-XYWH coding of a box relative to a reference box (an anchor or a proposal):
/// `dx = wx·(gx − ax)/aw`, `dy = wy·(gy − ay)/ah`, `dw = ww·ln(gw/aw)`, `dh = wh·ln(gh/ah)`,
/// with centres `x1 + w/2` and sizes `x2 − x1`.
///
/// The weights are torchvision's `BoxCoder` weights; mmdet's `DeltaXYWHBBoxCoder` with means 0
/// and standard deviations `s` is the same coder with weights `1/s` (RetinaNet: all 1; the
/// Faster R-CNN head: `(10, 10, 5, 5)`, stds `(0.1, 0.1, 0.2, 0.2)`). Decoding clamps `dw, dh`
/// at `ln(1000/16)` before the exponential, as both do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxCoder {
    /// `(wx, wy, ww, wh)`.
    pub weights: [f32; 4],
    /// The largest `dw`, `dh` a decode exponentiates.
    pub clamp: f32,
}

impl Default for BoxCoder {
    fn default() -> Self {
        Self::new([1.0; 4])
    }
}

impl BoxCoder {
    /// A coder with these weights and the usual clamp `ln(1000/16)`.
    pub fn new(weights: [f32; 4]) -> Self {
        Self {
            weights,
            clamp: (1000.0f32 / 16.0).ln(),
        }
    }

    /// The deltas that move `reference` onto `target`. Both need a positive width and height
    /// (anchors and ground truths that survived the data layer's degenerate-box filter do).
    pub fn encode(&self, reference: &Xyxy, target: &Xyxy) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let (aw, ah) = (reference[2] - reference[0], reference[3] - reference[1]);
        let (ax, ay) = (reference[0] + 0.5 * aw, reference[1] + 0.5 * ah);
        let (gw, gh) = (target[2] - target[0], target[3] - target[1]);
        let (gx, gy) = (target[0] + 0.5 * gw, target[1] + 0.5 * gh);
        [
            wx * (gx - ax) / aw,
            wy * (gy - ay) / ah,
            ww * (gw / aw).ln(),
            wh * (gh / ah).ln(),
        ]
    }

    /// The box that `deltas` make of `reference` (the inverse of [`BoxCoder::encode`], with the
    /// size deltas clamped).
    pub fn decode(&self, reference: &Xyxy, deltas: &[f32; 4]) -> Xyxy {
        let [wx, wy, ww, wh] = self.weights;
        let (aw, ah) = (reference[2] - reference[0], reference[3] - reference[1]);
        let (ax, ay) = (reference[0] + 0.5 * aw, reference[1] + 0.5 * ah);
        let dx = deltas[0] / wx;
        let dy = deltas[1] / wy;
        let dw = (deltas[2] / ww).min(self.clamp);
        let dh = (deltas[3] / wh).min(self.clamp);
        let (cx, cy) = (ax + dx * aw, ay + dy * ah);
        let (w, h) = (aw * dw.exp(), ah * dh.exp());
        [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
    }
}

/// Clips a box to an image of `width × height`.
pub fn clip(b: &Xyxy, width: f32, height: f32) -> Xyxy {
    [
        b[0].clamp(0.0, width),
        b[1].clamp(0.0, height),
        b[2].clamp(0.0, width),
        b[3].clamp(0.0, height),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn iou_by_hand() {
        // Overlap 5×5 = 25; union 100 + 100 − 25 = 175 (no +1 pixel: the old convention would
        // give 36 / (121 + 121 − 36)).
        assert!(
            (iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 5.0, 15.0, 15.0]) - 25.0 / 175.0).abs() < 1e-7
        );
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        // Touching edges share no area.
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[10.0, 0.0, 20.0, 10.0]), 0.0);
        // A box inside another: 4 / 100.
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[1.0, 1.0, 3.0, 3.0]) - 0.04).abs() < 1e-7);
        // Empty boxes have no IoU, not NaN.
        assert_eq!(iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
        let m = iou_matrix(
            &[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]],
            &[
                [0.0, 0.0, 10.0, 10.0],
                [100.0, 100.0, 110.0, 110.0],
                [0.0, 0.0, 5.0, 10.0],
            ],
        );
        // Row 2, column 3: overlap [5,5]–[5,10] is empty.
        assert!(
            close(&m, &[1.0, 0.0, 0.5, 25.0 / 175.0, 0.0, 0.0], 1e-7),
            "{m:?}"
        );
    }

    #[test]
    fn coding_by_hand_and_round_trip() {
        // Anchor: centre (5, 5), 10 × 10. Target: centre (7, 14), 10 × 20.
        let coder = BoxCoder::default();
        let anchor = [0.0, 0.0, 10.0, 10.0];
        let target = [2.0, 4.0, 12.0, 24.0];
        let d = coder.encode(&anchor, &target);
        assert!(
            close(&d, &[0.2, 0.9, 0.0, std::f32::consts::LN_2], 1e-6),
            "{d:?}"
        );
        assert!(close(&coder.decode(&anchor, &d), &target, 1e-5));
        // Faster R-CNN's head weights multiply the deltas.
        let rcnn = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
        let d = rcnn.encode(&anchor, &target);
        assert!(
            close(&d, &[2.0, 9.0, 0.0, 5.0 * std::f32::consts::LN_2], 1e-5),
            "{d:?}"
        );
        assert!(close(&rcnn.decode(&anchor, &d), &target, 1e-4));
    }

    #[test]
    fn decoding_clamps_the_size() {
        // exp(10) would make the box 220,000 wide; the clamp keeps 1000/16 of the anchor.
        let coder = BoxCoder::default();
        let b = coder.decode(&[0.0, 0.0, 16.0, 16.0], &[0.0, 0.0, 10.0, -1.0]);
        assert!((b[2] - b[0] - 1000.0).abs() < 1e-2, "{b:?}");
        assert!((b[3] - b[1] - 16.0 * (-1.0f32).exp()).abs() < 1e-4, "{b:?}");
        assert_eq!(clip(&b, 64.0, 64.0)[0], 0.0);
        assert_eq!(clip(&b, 64.0, 64.0)[2], 64.0);
    }
}
