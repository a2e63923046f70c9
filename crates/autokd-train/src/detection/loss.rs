//! RetinaNet's losses and their targets: sigmoid focal loss on the class logits of every counted
//! anchor, L1 on the box deltas of the positive ones, both summed over the batch and divided by
//! the batch's number of positive anchors (at least 1), as mmdet's `RetinaHead` (torchvision's
//! head divides per image and averages the images; with equal positives per image they agree).

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;

use super::assign::{Assigned, MaxIouAssigner};
use super::boxes::{BoxCoder, Xyxy};
use crate::error::{Result, TrainError};

fn same_shape<const D: usize>(what: &str, a: &Tensor<D>, b: &Tensor<D>) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(TrainError::Config(format!(
            "{what}: predictions of shape {:?} against targets of shape {:?}",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

/// The sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", eq. 5), summed:
/// `Σ w_r · α_t · (1 − p_t)^γ · BCE(x, t)` with `p = σ(x)`, `p_t = p·t + (1 − p)(1 − t)`,
/// `α_t = α·t + (1 − α)(1 − t)`, the cross-entropy from `log σ` (stable at any logit). The
/// formula of torchvision's `sigmoid_focal_loss` and mmdet's `py_sigmoid_focal_loss`.
///
/// # Shapes
/// - `logits`, `targets`: `[R, K]`, targets 0/1 (a positive anchor's class is 1, a background
///   anchor's row all 0)
/// - `weights`: `[R, 1]`: 1 for a counted anchor, 0 for an ignored one
/// - returns `[1]`
pub fn sigmoid_focal_loss(
    logits: Tensor<2>,
    targets: Tensor<2>,
    weights: Tensor<2>,
    gamma: f32,
    alpha: f32,
) -> Result<Tensor<1>> {
    same_shape("focal loss", &logits, &targets)?;
    let [r, _] = logits.dims();
    if weights.dims() != [r, 1] {
        return Err(TrainError::Config(format!(
            "focal loss: weights of shape {:?} for {r} rows (expected [{r}, 1])",
            weights.dims()
        )));
    }
    let p = burn::tensor::activation::sigmoid(logits.clone());
    let ce = -(targets.clone() * log_sigmoid(logits.clone())
        + (targets.clone().neg() + 1.0) * log_sigmoid(logits.neg()));
    let p_t = p.clone() * targets.clone() + (p.neg() + 1.0) * (targets.clone().neg() + 1.0);
    let alpha_t = targets.clone() * alpha + (targets.neg() + 1.0) * (1.0 - alpha);
    let loss = ce * (p_t.neg() + 1.0).powf_scalar(gamma) * alpha_t * weights;
    Ok(loss.sum())
}

/// The L1 loss of box deltas on positive anchors, summed: `Σ_r m_r · Σ_i |d_ri − t_ri|`.
///
/// # Shapes
/// - `deltas`, `targets`: `[R, 4]`; `positive`: `[R, 1]` (1 for a positive anchor, else 0)
/// - returns `[1]`
pub fn l1_box_loss(
    deltas: Tensor<2>,
    targets: Tensor<2>,
    positive: Tensor<2>,
) -> Result<Tensor<1>> {
    same_shape("box loss", &deltas, &targets)?;
    let [r, _] = deltas.dims();
    if positive.dims() != [r, 1] {
        return Err(TrainError::Config(format!(
            "box loss: positive mask of shape {:?} for {r} rows (expected [{r}, 1])",
            positive.dims()
        )));
    }
    Ok(((deltas - targets).abs() * positive).sum())
}

/// The training targets of one image's anchors, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorTargets {
    /// `[A × K]`: 1 at a positive anchor's class.
    pub classes: Vec<f32>,
    /// `[A]`: 1 for a counted (positive or negative) anchor, 0 for an ignored one.
    pub counted: Vec<f32>,
    /// `[A]`: 1 for a positive anchor.
    pub positive: Vec<f32>,
    /// `[A × 4]`: the deltas from a positive anchor to its box (0 elsewhere).
    pub deltas: Vec<f32>,
    /// The number of positive anchors.
    pub num_positive: usize,
}

impl AnchorTargets {
    /// Assigns `anchors` to the boxes `(xyxy, label)` of an image (crowd boxes already removed)
    /// and encodes the positives' boxes with `coder`. A label at or above `classes` is an error.
    pub fn build(
        anchors: &[Xyxy],
        boxes: &[(Xyxy, usize)],
        classes: usize,
        assigner: &MaxIouAssigner,
        coder: &BoxCoder,
    ) -> Result<Self> {
        if let Some((_, label)) = boxes.iter().find(|(_, l)| *l >= classes) {
            return Err(TrainError::Config(format!(
                "a box of class {label} for a detector of {classes} classes"
            )));
        }
        let xyxy: Vec<Xyxy> = boxes.iter().map(|(b, _)| *b).collect();
        let assigned = assigner.assign(anchors, &xyxy);
        let a = anchors.len();
        let mut t = Self {
            classes: vec![0.0; a * classes],
            counted: vec![1.0; a],
            positive: vec![0.0; a],
            deltas: vec![0.0; a * 4],
            num_positive: 0,
        };
        for (i, assigned) in assigned.iter().enumerate() {
            match *assigned {
                Assigned::Negative => {}
                Assigned::Ignored => t.counted[i] = 0.0,
                Assigned::Positive(j) => {
                    let (b, label) = boxes[j];
                    t.classes[i * classes + label] = 1.0;
                    t.positive[i] = 1.0;
                    t.deltas[i * 4..i * 4 + 4].copy_from_slice(&coder.encode(&anchors[i], &b));
                    t.num_positive += 1;
                }
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The focal loss of one logit in f64, written from the paper.
    fn focal_f64(x: f64, t: f64, gamma: f64, alpha: f64) -> f64 {
        let p = 1.0 / (1.0 + (-x).exp());
        let ce = -(t * p.ln() + (1.0 - t) * (1.0 - p).ln());
        let p_t = p * t + (1.0 - p) * (1.0 - t);
        let a_t = alpha * t + (1.0 - alpha) * (1.0 - t);
        a_t * (1.0 - p_t).powf(gamma) * ce
    }

    fn t2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    #[test]
    fn focal_loss_value_and_gradient_match_an_f64_reference() {
        let device = Device::flex().autodiff();
        let x = vec![-3.0f32, -0.5, 0.0, 0.7, 2.5, -1.2, 4.0, -6.0];
        let t = vec![0.0f32, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let w = vec![1.0f32, 1.0, 0.0, 1.0]; // the third row is ignored
        let logits = t2(x.clone(), [4, 2], &device).require_grad();
        let loss = sigmoid_focal_loss(
            logits.clone(),
            t2(t.clone(), [4, 2], &device),
            t2(w.clone(), [4, 1], &device),
            2.0,
            0.25,
        );
        let Ok(loss) = loss else { panic!("{loss:?}") };
        let f64_loss = |xs: &[f64]| -> f64 {
            xs.iter()
                .zip(&t)
                .enumerate()
                .map(|(i, (&x, &t))| f64::from(w[i / 2]) * focal_f64(x, f64::from(t), 2.0, 0.25))
                .sum()
        };
        let xs: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let want = f64_loss(&xs);
        let got = f64::from(loss.clone().into_scalar::<f32>());
        assert!((got - want).abs() < 1e-5 * want.max(1.0), "{got} vs {want}");
        // A hand value: x = 0, t = 1 gives 0.25 · 0.5² · ln 2.
        assert!((focal_f64(0.0, 1.0, 2.0, 0.25) - 0.25 * 0.25 * 2f64.ln()).abs() < 1e-12);
        let grads = loss.backward();
        let g = logits
            .grad(&grads)
            .map(|g| g.into_data().try_to_vec::<f32>().unwrap_or_default())
            .unwrap_or_default();
        for k in 0..xs.len() {
            let h = 1e-6;
            let mut up = xs.clone();
            up[k] += h;
            let mut down = xs.clone();
            down[k] -= h;
            let fd = (f64_loss(&up) - f64_loss(&down)) / (2.0 * h);
            assert!(
                (f64::from(g[k]) - fd).abs() < 1e-5 + 1e-4 * fd.abs(),
                "d/dx[{k}]: {} vs {fd}",
                g[k]
            );
        }
        // The ignored row has no gradient.
        assert_eq!(&g[4..6], &[0.0, 0.0]);
    }

    #[test]
    fn focal_loss_is_finite_at_extreme_logits() {
        let device = Device::flex();
        let loss = sigmoid_focal_loss(
            t2(vec![200.0, -200.0], [1, 2], &device),
            t2(vec![0.0, 1.0], [1, 2], &device),
            t2(vec![1.0], [1, 1], &device),
            2.0,
            0.25,
        )
        .map(|l| l.into_scalar::<f32>());
        // Each term is about α_t · 200 (confidently wrong): 0.75·200 + 0.25·200.
        assert!(
            loss.as_ref().is_ok_and(|v| (v - 200.0).abs() < 1e-2),
            "{loss:?}"
        );
    }

    #[test]
    fn shapes_are_checked() {
        let device = Device::flex();
        let err = sigmoid_focal_loss(
            t2(vec![0.0; 6], [3, 2], &device),
            t2(vec![0.0; 6], [2, 3], &device),
            t2(vec![1.0; 3], [3, 1], &device),
            2.0,
            0.25,
        );
        assert!(err.is_err_and(|e| e.to_string().contains("[3, 2]")));
        let err = l1_box_loss(
            t2(vec![0.0; 8], [2, 4], &device),
            t2(vec![0.0; 8], [2, 4], &device),
            t2(vec![1.0; 4], [4, 1], &device),
        );
        assert!(err.is_err());
    }

    #[test]
    fn l1_loss_counts_positives_only() {
        let device = Device::flex();
        let loss = l1_box_loss(
            t2(
                vec![1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0],
                [2, 4],
                &device,
            ),
            t2(
                vec![0.0, 2.5, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0],
                [2, 4],
                &device,
            ),
            t2(vec![1.0, 0.0], [2, 1], &device),
        )
        .map(|l| l.into_scalar::<f32>());
        // |1| + |−0.5| + 0 + |2| = 3.5; the second row is not positive.
        assert!(loss.is_ok_and(|v| (v - 3.5).abs() < 1e-6));
    }

    #[test]
    fn targets_by_hand() {
        let anchors = [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 4.5],
            [50.0, 50.0, 60.0, 60.0],
        ];
        let boxes = [([0.0, 0.0, 10.0, 12.0], 2usize)];
        let t = AnchorTargets::build(
            &anchors,
            &boxes,
            3,
            &MaxIouAssigner::RETINANET,
            &BoxCoder::default(),
        );
        let Ok(t) = t else { panic!("{t:?}") };
        // Anchor 0: IoU 100 / 120 → positive, class 2; anchor 1: IoU 45 / 120 = 0.375 →
        // background; anchor 2: background.
        assert_eq!(t.num_positive, 1);
        assert_eq!(t.positive, vec![1.0, 0.0, 0.0]);
        assert_eq!(t.counted, vec![1.0, 1.0, 1.0]);
        assert_eq!(t.classes, vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Centre (5, 5) → (5, 6) over a 10-high anchor: dy 0.1; dh ln 1.2.
        let d = &t.deltas[0..4];
        assert!(d[0].abs() < 1e-6 && (d[1] - 0.1).abs() < 1e-6 && d[2].abs() < 1e-6);
        assert!((d[3] - 1.2f32.ln()).abs() < 1e-6);
        assert!(t.deltas[4..].iter().all(|&v| v == 0.0));
        let bad = AnchorTargets::build(
            &anchors,
            &[([0.0, 0.0, 1.0, 1.0], 3)],
            3,
            &MaxIouAssigner::RETINANET,
            &BoxCoder::default(),
        );
        assert!(bad.is_err_and(|e| e.to_string().contains("class 3")));
    }
}
