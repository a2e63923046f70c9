//! Semantic segmentation: pixel cross-entropy with ignore index 255 (plus the auxiliary head's
//! at weight 0.4, as torchvision's reference training), and mIoU over one confusion matrix of the
//! whole split, per-class IoU and pixel accuracy, as Cityscapes' scripts and mmseg compute them.
//!
//! The model's prediction is a `[B, K, h, w]` map (DeepLabV3: `h = H/8`); the loss and the
//! metrics upsample it to the batch's padded size (bilinear, `align_corners = false`) and read
//! the masks of [`autokd_data::DenseBatch`], whose padding is [`IGNORE`]. Metrics are taken at
//! the evaluation pipeline's output size (mmseg resizes the prediction back to the original
//! image instead; an evaluation pipeline without a resize gives the same).

use std::collections::BTreeMap;

use autokd_data::{Batch, IGNORE, ItemTransform, Split};
use autokd_distill::GroundTruth;
use autokd_models::deeplab::upsample_bilinear;
use autokd_models::{Backbone, Intermediates, Prediction, TapRequest};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::error::{Result, TrainError};
use crate::task::{EvalOptions, EvalTally, Evaluation, Task, require_dense};

/// A `K × K` confusion matrix of pixels: rows the ground truth, columns the prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix of `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Counts the pixels of `truth` and `pred` (same length); a ground truth of [`IGNORE`] or
    /// of no class below `K` is not counted, nor is its prediction.
    pub fn add(&mut self, truth: &[i64], pred: &[i64]) {
        let k = self.classes as i64;
        for (&t, &p) in truth.iter().zip(pred) {
            if (0..k).contains(&t) && (0..k).contains(&p) {
                self.counts[(t * k + p) as usize] += 1;
            }
        }
    }

    /// Each class's IoU, `TP / (TP + FP + FN)`; `None` for a class neither in the ground truth
    /// nor in the prediction.
    pub fn iou(&self) -> Vec<Option<f64>> {
        let k = self.classes;
        (0..k)
            .map(|c| {
                let tp = self.counts[c * k + c];
                let truth: u64 = self.counts[c * k..(c + 1) * k].iter().sum();
                let pred: u64 = (0..k).map(|r| self.counts[r * k + c]).sum();
                let union = truth + pred - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// The mean IoU over the classes that occur (in the ground truth or the prediction).
    pub fn miou(&self) -> f64 {
        let ious: Vec<f64> = self.iou().into_iter().flatten().collect();
        if ious.is_empty() {
            0.0
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        }
    }

    /// The share of counted pixels predicted right.
    pub fn pixel_accuracy(&self) -> f64 {
        let k = self.classes;
        let total: u64 = self.counts.iter().sum();
        let right: u64 = (0..k).map(|c| self.counts[c * k + c]).sum();
        if total == 0 {
            0.0
        } else {
            right as f64 / total as f64
        }
    }
}

/// The pixels that count `[B, H, W]`: a class below `classes` and not [`IGNORE`] (a mask
/// value of no class is ignored, as [`ConfusionMatrix::add`] does).
fn counted(masks: &Tensor<3, Int>, classes: usize) -> Tensor<3, Bool> {
    masks
        .clone()
        .not_equal_elem(i64::from(IGNORE))
        .bool_and(masks.clone().lower_elem(classes as i64))
}

/// Per-image mean pixel CE `[B]` of `logits` (upsampled to the masks' size) against `masks`
/// `[B, H, W]`, over the pixels that count ([`counted`]), and the number of those per image.
fn pixel_ce(logits: Tensor<4>, masks: Tensor<3, Int>) -> (Tensor<1>, Tensor<1>) {
    let [b, h, w] = masks.dims();
    let k = logits.dims()[1];
    let log_p = log_softmax(upsample_bilinear(logits, [h, w]), 1); // [B, K, H, W]
    let valid = counted(&masks, k); // [B, H, W]
    let safe = masks.mask_fill(valid.clone().bool_not(), 0);
    let picked = log_p.gather(1, safe.unsqueeze_dim(1)).reshape([b, h, w]);
    let valid = valid.float();
    let sums = (picked * valid.clone()).sum_dims(&[1, 2]).reshape([b]);
    let counts = valid.sum_dims(&[1, 2]).reshape([b]);
    (sums.neg() / counts.clone().clamp_min(1.0), counts)
}

/// The batch's mean pixel CE: summed over every counted pixel of the batch, divided by their
/// number (PyTorch's `cross_entropy(..., ignore_index=255)` with the mean reduction).
fn batch_ce(logits: Tensor<4>, masks: Tensor<3, Int>) -> Tensor<1> {
    let (per_image, counts) = pixel_ce(logits, masks);
    (per_image * counts.clone()).sum() / counts.sum().clamp_min(1.0)
}

fn masks_of(batch: &Batch) -> Result<Tensor<3, Int>> {
    batch
        .dense
        .as_ref()
        .and_then(|d| d.masks.clone())
        .ok_or_else(|| {
            TrainError::Config(
                "segmentation needs batches with masks (a dataset of masks through a dense pipeline)"
                    .into(),
            )
        })
}

fn map_of(p: &Prediction) -> Result<Tensor<4>> {
    match p {
        Prediction::Map(m) => Ok(m.clone()),
        other => Err(TrainError::Config(format!(
            "segmentation needs a model that predicts a map [B, K, H, W]; this one gives {:?}",
            other.dims()
        ))),
    }
}

/// Semantic segmentation: `ce` (pixel CE, ignore 255) and `aux` (the auxiliary head's, weighted);
/// metrics `miou`, `pixel_acc` and `iou_<class>`; the score is `miou`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segmentation {
    /// Weight of the auxiliary head's CE (0.4).
    pub aux_weight: f64,
}

impl Default for Segmentation {
    fn default() -> Self {
        Self { aux_weight: 0.4 }
    }
}

impl Task for Segmentation {
    fn name(&self) -> &'static str {
        "segmentation"
    }

    fn loss(&self, out: &Intermediates, batch: &Batch) -> Result<Vec<(String, Tensor<1>)>> {
        let masks = masks_of(batch)?;
        let mut terms = vec![(
            "ce".to_string(),
            batch_ce(map_of(&out.logits)?, masks.clone()),
        )];
        if let Some(aux) = &out.aux_logits {
            let ce = batch_ce(map_of(aux)?, masks);
            terms.push(("aux".to_string(), ce.mul_scalar(self.aux_weight)));
        }
        Ok(terms)
    }

    /// `valid_rows` of the prediction map: a cell counts when any pixel of the input it covers
    /// is not [`IGNORE`] (the mask max-pooled over the cells of the prediction's grid).
    fn ground_truth(&self, batch: &Batch, out: &Intermediates) -> GroundTruth {
        let (Ok(masks), Prediction::Map(m)) = (masks_of(batch), &out.logits) else {
            return GroundTruth::default();
        };
        let [b, k, h, w] = m.dims();
        let [_, mh, mw] = masks.dims();
        let valid = counted(&masks, k).float().unsqueeze_dim(1);
        let cells = if mh % h == 0 && mw % w == 0 {
            let k = [mh / h, mw / w];
            burn::tensor::module::max_pool2d(valid, burn::tensor::ops::MaxPoolOptions::new(k))
        } else {
            // A grid that does not divide the input: nearest cells, as the upsampling maps them.
            upsample_bilinear(valid, [h, w]).greater_elem(0.0).float()
        };
        GroundTruth {
            foreground: None,
            valid_rows: Some(cells.reshape([b * h * w])),
        }
    }

    fn evaluate(
        &self,
        net: &dyn Backbone,
        split: &Split,
        transform: &ItemTransform,
        options: EvalOptions,
        device: &Device,
    ) -> Result<Evaluation> {
        require_dense(transform, "segmentation", "masks")?;
        let loader = options.loader(split, transform)?;
        let mut matrix: Option<ConfusionMatrix> = None;
        let mut tally = EvalTally::default();
        for batch in loader.epoch(0, device) {
            let batch = batch?;
            let masks = masks_of(&batch)?;
            let [b, h, w] = masks.dims();
            let out = net.forward_intermediates(batch.images, &TapRequest::none());
            let logits = map_of(&out.logits)?;
            let k = logits.dims()[1];
            let matrix = matrix.get_or_insert_with(|| ConfusionMatrix::new(k));
            let (per_image, _) = pixel_ce(logits.clone(), masks.clone());
            tally.add(per_image, &out.embedding, options.embeddings)?;
            let pred = upsample_bilinear(logits, [h, w])
                .argmax(1)
                .reshape([b * h * w]);
            let as_i64 = |t: Tensor<1, Int>| {
                t.into_data().try_into_vec_as::<i64>().map_err(|e| {
                    TrainError::Config(format!("evaluation: reading the prediction: {e:?}"))
                })
            };
            matrix.add(&as_i64(masks.reshape([b * h * w]))?, &as_i64(pred)?);
        }
        let matrix = matrix.unwrap_or_else(|| ConfusionMatrix::new(0));
        let mut metrics = BTreeMap::from([
            ("miou".to_string(), matrix.miou()),
            ("pixel_acc".to_string(), matrix.pixel_accuracy()),
        ]);
        for (c, iou) in matrix.iou().into_iter().enumerate() {
            if let Some(v) = iou {
                metrics.insert(format!("iou_{c}"), v);
            }
        }
        Ok(tally.finish(metrics))
    }

    fn score_metric(&self) -> &'static str {
        "miou"
    }

    fn chance_loss(&self, classes: usize) -> Option<f64> {
        (classes >= 2).then(|| (classes as f64).ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autokd_data::{
        Annotation, ClassMask, DatasetInfo, DensePipeline, DenseTransform, Image, ImageSource,
        MaskValues,
    };
    use autokd_models::{Feature, TapInfo};
    use std::sync::Arc;

    /// Ground truth `[0, 0, 1, 1, 2, 255]`, prediction `[0, 1, 1, 1, 0, 2]`: class 0 has
    /// TP 1, FP 1, FN 1 (IoU 1/3), class 1 TP 2, FP 1 (2/3), class 2 TP 0, FN 1 (0; the
    /// prediction 2 at the ignored pixel does not count): mIoU 1/3, pixel accuracy 3/5.
    #[test]
    fn miou_by_hand() {
        let mut m = ConfusionMatrix::new(3);
        m.add(&[0, 0, 1, 1, 2, 255], &[0, 1, 1, 1, 0, 2]);
        let iou = m.iou();
        assert!((iou[0].unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((iou[1].unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou[2], Some(0.0));
        assert!((m.miou() - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.pixel_accuracy() - 0.6).abs() < 1e-12);
        // A class in neither the ground truth nor the prediction is left out of the mean.
        let mut m = ConfusionMatrix::new(4);
        m.add(&[0, 1], &[0, 1]);
        assert_eq!(m.iou()[2], None);
        assert_eq!(m.miou(), 1.0);
    }

    fn map(values: Vec<f32>, dims: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, dims), device)
    }

    /// One image, two classes, 1×3 pixels with logits (0, 1), (2, 0), (5, 5) and ground truth
    /// 1, 1, IGNORE (or 7, no class): CE = mean(ln(1 + e^−1), ln(1 + e^2)) over the two counted pixels; the aux
    /// term is 0.4 × its own CE; the gradient is (softmax − one-hot) / 2 on counted pixels and
    /// 0 on the ignored one.
    #[test]
    fn pixel_ce_ignores_255_with_its_gradient() {
        let device = Device::flex().autodiff();
        let logits = map(vec![0.0, 2.0, 5.0, 1.0, 0.0, 5.0], [1, 2, 1, 3], &device).require_grad();
        let masks =
            Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 1, 255], [1, 1, 3]), &device);
        let want = ((1.0f64 + (-1.0f64).exp()).ln() + (1.0f64 + 2.0f64.exp()).ln()) / 2.0;
        let ce = batch_ce(logits.clone(), masks.clone());
        let got = f64::from(ce.clone().into_scalar::<f32>());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // A mask value of no class (7 of 2 classes) is ignored like 255.
        let other =
            Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 1, 7], [1, 1, 3]), &device);
        let got7 = f64::from(batch_ce(logits.clone(), other).into_scalar::<f32>());
        assert!((got7 - want).abs() < 1e-6, "{got7} vs {want}");
        let grads = ce.backward();
        let g: Vec<f32> = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        // Pixel 0: softmax (0.2689, 0.7311), target 1 → (0.2689, −0.2689) / 2.
        let s0 = 1.0 / (1.0 + 1.0f64.exp());
        // Pixel 1: softmax (0.8808, 0.1192), target 1 → (0.8808, −0.8808) / 2.
        let s1 = 1.0 / (1.0 + (-2.0f64).exp());
        let want_g = [s0 / 2.0, s1 / 2.0, 0.0, -s0 / 2.0, -s1 / 2.0, 0.0];
        for (a, b) in g.iter().zip(want_g) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{g:?} vs {want_g:?}");
        }
        // Through the task, with an auxiliary prediction twice the main one.
        let out = Intermediates {
            features: Vec::<Feature>::new(),
            embedding: Tensor::zeros([1, 1], &device),
            logits: Prediction::Map(logits.clone()),
            dist_logits: None,
            aux_logits: Some(Prediction::Map(logits.clone().mul_scalar(2.0))),
            box_deltas: None,
        };
        let batch = Batch {
            images: Tensor::zeros([1, 1, 1, 3], &device),
            targets: Tensor::zeros([1], &device),
            positions: vec![0],
            dense: Some(autokd_data::DenseBatch {
                valid: Tensor::ones([1, 1, 3], &device),
                masks: Some(masks),
                sizes: vec![(1, 3)],
                original_sizes: Vec::new(),
                boxes: vec![Vec::new()],
            }),
        };
        let terms = Segmentation::default().loss(&out, &batch).unwrap();
        let aux_want = 0.4 * ((1.0f64 + (-2.0f64).exp()).ln() + (1.0f64 + 4.0f64.exp()).ln()) / 2.0;
        let aux = f64::from(terms[1].1.clone().into_scalar::<f32>());
        assert_eq!((terms[0].0.as_str(), terms[1].0.as_str()), ("ce", "aux"));
        assert!((aux - aux_want).abs() < 1e-5, "{aux} vs {aux_want}");
        // The prediction term's rows: the 1×3 grid matches the mask, the ignored pixel's row is 0.
        let truth = Segmentation::default().ground_truth(&batch, &out);
        let rows: Vec<f32> = truth.valid_rows.unwrap().into_data().try_to_vec().unwrap();
        assert_eq!(rows, [1.0, 1.0, 0.0]);
    }

    /// Two 2×4 grey images whose masks are known; a "network" that predicts class 1 where a
    /// pixel is brighter than half and class 0 elsewhere, at full resolution. Image 0: pixels
    /// 0, 200, 200, 0 / 0, 0, 200, 200 with masks 0 1 1 0 / 0 0 0 1 (one error: truth 0,
    /// predicted 1); image 1: all 0 with mask 0 0 255 255 / 1 1 1 1 (four errors: truth 1,
    /// predicted 0). Class 0: TP 4 + 2, FP 4, FN 1 → 6/11; class 1: TP 3, FP 1, FN 4 → 3/8.
    /// mIoU (6/11 + 3/8)/2 = 81/176; pixel accuracy (7 + 2)/14.
    #[test]
    fn evaluation_counts_one_matrix_over_the_split() {
        #[derive(Debug)]
        struct Two;
        const PIX: [[u8; 8]; 2] = [[0, 200, 200, 0, 0, 0, 200, 200], [0; 8]];
        const MASK: [[u8; 8]; 2] = [[0, 1, 1, 0, 0, 0, 0, 1], [0, 0, 255, 255, 1, 1, 1, 1]];
        impl ImageSource for Two {
            fn len(&self) -> usize {
                2
            }
            fn label(&self, _: usize) -> usize {
                0
            }
            fn image(&self, i: usize) -> autokd_data::Result<Image> {
                Image::new(1, 2, 4, PIX[i].to_vec())
            }
            fn annotation(&self, i: usize) -> autokd_data::Result<Annotation> {
                Ok(Annotation::Mask(ClassMask::new(
                    2,
                    4,
                    MaskValues::U8(MASK[i].to_vec()),
                )?))
            }
        }
        #[derive(Debug)]
        struct Threshold;
        impl Backbone for Threshold {
            fn feature_info(&self) -> Vec<TapInfo> {
                Vec::new()
            }
            fn forward_intermediates(&self, x: Tensor<4>, _: &TapRequest) -> Intermediates {
                // Scores (0.5, v) for normalized v in [0, 1]: class 1 where v > 0.5.
                let half = x.clone().zeros_like().add_scalar(0.5);
                Intermediates {
                    features: Vec::new(),
                    embedding: Tensor::zeros([x.dims()[0], 1], &x.device()),
                    logits: Prediction::Map(Tensor::cat(vec![half, x], 1)),
                    dist_logits: None,
                    aux_logits: None,
                    box_deltas: None,
                }
            }
        }
        let device = Device::flex();
        let info = DatasetInfo {
            name: "two".into(),
            channels: 1,
            height: 2,
            width: 4,
            num_classes: 2,
            class_names: vec!["a".into(), "b".into()],
            pixel_max: 255.0,
            mean: vec![0.0],
            std: vec![1.0],
            anchor_base: None,
        };
        // No steps, pad to a multiple of 1: the images as they are.
        let pipeline = DensePipeline {
            steps: Vec::new(),
            pad_multiple: 1,
        };
        let transform = ItemTransform::Dense(DenseTransform::new(&info, pipeline).unwrap());
        let eval = Segmentation::default()
            .evaluate(
                &Threshold,
                &Split::all(Arc::new(Two)),
                &transform,
                EvalOptions {
                    batch_size: 2,
                    workers: 0,
                    embeddings: 0,
                },
                &device,
            )
            .unwrap();
        assert!(
            (eval.metric("miou") - 81.0 / 176.0).abs() < 1e-12,
            "{:?}",
            eval.metrics
        );
        assert!((eval.metric("pixel_acc") - 9.0 / 14.0).abs() < 1e-12);
        assert!((eval.metric("iou_0") - 6.0 / 11.0).abs() < 1e-12);
        assert!((eval.metric("iou_1") - 3.0 / 8.0).abs() < 1e-12);
        // A fixed-size transform is refused with a clear message.
        let fixed = ItemTransform::Fixed(autokd_data::Transform::eval(&info).unwrap());
        let err = Segmentation::default()
            .evaluate(
                &Threshold,
                &Split::all(Arc::new(Two)),
                &fixed,
                EvalOptions {
                    batch_size: 2,
                    workers: 0,
                    embeddings: 0,
                },
                &device,
            )
            .unwrap_err();
        assert!(err.to_string().contains("dense pipeline"), "{err}");
    }
}
