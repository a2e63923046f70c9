//! The task abstraction (ARCHITECTURE §6): what the one training loop ([`crate::Fit`]) needs to
//! know about a task, and nothing about its distiller. A task gives its own loss terms on the
//! student's outputs (classification: CE; segmentation: pixel CE and the auxiliary head;
//! detection: focal and box losses), the ground truth a distiller may weight by, its evaluation
//! metrics, and which metric is its score (`best` of a training, the proxy's accuracy reward).
//!
//! The network is any module with the features contract ([`Net`]): classifiers today, segmenters
//! and detectors composing a backbone next. Batches are `autokd_data::Batch`es; a task reads the
//! annotations it expects from them.

use std::collections::BTreeMap;

use autokd_data::{Batch, DataLoader, ItemTransform, LoaderConfig, Split};
use autokd_distill::GroundTruth;
use autokd_models::{Backbone, Intermediates, TapRequest};
use burn::module::{Module, ModuleDisplay};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::error::Result;

/// A network the loop can train: a module with the features contract.
pub trait Net: Module + ModuleDisplay + Backbone + Sync {}

impl<T: Module + ModuleDisplay + Backbone + Sync> Net for T {}

/// How to evaluate: batch size, loader threads, and how many embeddings to keep (the first
/// rows, for the proxy's representation gap; 0 keeps none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Batch size.
    pub batch_size: usize,
    /// Loader threads (0: on the caller's thread).
    pub workers: usize,
    /// Embeddings to keep, from the first image on.
    pub embeddings: usize,
}

/// What an evaluation measured.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Named metrics (classification: `top1`, `top5`).
    pub metrics: BTreeMap<String, f64>,
    /// The task's loss per image (classification: mean CE).
    pub loss: f64,
    /// Standard deviation of the per-image loss (population form, over the images evaluated):
    /// the loss's standard error on `n` images drawn at random is about `loss_sd / √n`.
    pub loss_sd: f64,
    /// Embeddings of the first images (see [`EvalOptions::embeddings`]).
    pub embeddings: Option<Tensor<2>>,
}

impl Evaluation {
    /// A metric by name (0 when the task has none by that name).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(0.0)
    }
}

impl EvalOptions {
    /// The loader an evaluation reads `split` with: in order, at this batch size and with
    /// these threads.
    pub fn loader(&self, split: &Split, transform: &ItemTransform) -> Result<DataLoader> {
        Ok(DataLoader::with_transform(
            split.clone(),
            transform.clone(),
            LoaderConfig {
                batch_size: self.batch_size,
                shuffle: false,
                workers: self.workers,
                ..LoaderConfig::default()
            },
        )?)
    }
}

/// What every task's evaluation gathers besides its metrics: the per-image task loss (summed
/// and squared in f64 on the host, for its mean and standard deviation) and the embeddings of
/// the first images.
#[derive(Debug, Default)]
pub(crate) struct EvalTally {
    sum: f64,
    squares: f64,
    images: usize,
    embeddings: Vec<Tensor<2>>,
    kept: usize,
}

impl EvalTally {
    /// Adds a batch's per-image losses `[B]` and keeps its embeddings up to `limit` in all.
    pub(crate) fn add(
        &mut self,
        losses: Tensor<1>,
        embedding: &Tensor<2>,
        limit: usize,
    ) -> Result<()> {
        let losses = losses.into_data().try_into_vec_as::<f32>().map_err(|e| {
            crate::error::TrainError::Config(format!("evaluation: reading the loss: {e:?}"))
        })?;
        for v in &losses {
            let v = f64::from(*v);
            self.sum += v;
            self.squares += v * v;
        }
        self.images += losses.len();
        if self.kept < limit {
            let take = losses.len().min(limit - self.kept);
            self.embeddings.push(embedding.clone().narrow(0, 0, take));
            self.kept += take;
        }
        Ok(())
    }

    /// Images counted so far.
    pub(crate) fn images(&self) -> usize {
        self.images
    }

    /// The evaluation with `metrics`.
    pub(crate) fn finish(self, metrics: BTreeMap<String, f64>) -> Evaluation {
        let count = self.images.max(1) as f64;
        let mean = self.sum / count;
        Evaluation {
            metrics,
            loss: mean,
            loss_sd: (self.squares / count - mean * mean).max(0.0).sqrt(),
            embeddings: (!self.embeddings.is_empty()).then(|| Tensor::cat(self.embeddings, 0)),
        }
    }
}

/// Refuses a fixed-size transform for a dense task: `task` (`segmentation`) evaluates `what`
/// (`masks`) through a dense pipeline.
pub(crate) fn require_dense(transform: &ItemTransform, task: &str, what: &str) -> Result<()> {
    if matches!(transform, ItemTransform::Dense(_)) {
        Ok(())
    } else {
        Err(crate::error::TrainError::Config(format!(
            "{task} evaluates through a dense pipeline ({what}), not a fixed-size transform"
        )))
    }
}

/// A task the training loop serves.
pub trait Task: Send + Sync + std::fmt::Debug {
    /// Name, e.g. `classification`.
    fn name(&self) -> &'static str;

    /// The task's own loss terms of the student's outputs on `batch`, each weighted (e.g.
    /// `[("ce", …)]`); the step adds the distiller's terms after them.
    fn loss(&self, out: &Intermediates, batch: &Batch) -> Result<Vec<(String, Tensor<1>)>>;

    /// The ground truth of `batch` that a distiller's terms may weight by, at the sizes of the
    /// student's outputs `out`.
    fn ground_truth(&self, _batch: &Batch, _out: &Intermediates) -> GroundTruth {
        GroundTruth::default()
    }

    /// Evaluates the frozen `net` over `split` through `transform`.
    fn evaluate(
        &self,
        net: &dyn Backbone,
        split: &Split,
        transform: &ItemTransform,
        options: EvalOptions,
        device: &Device,
    ) -> Result<Evaluation>;

    /// The metric that scores a model of this task (higher is better): a training's best
    /// epoch, the proxy's accuracy reward.
    fn score_metric(&self) -> &'static str;

    /// The task loss of a model that knows nothing, for `classes` classes (classification:
    /// `ln K`, the CE of the uniform prediction); `None` when the task has no such level. A proxy
    /// trial whose validation loss is worse than this by a margin is rejected.
    fn chance_loss(&self, _classes: usize) -> Option<f64> {
        None
    }
}

/// Image classification: CE on `[B, K]` logits; top-1 and top-5 accuracy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Classification;

impl Task for Classification {
    fn name(&self) -> &'static str {
        "classification"
    }

    fn loss(&self, out: &Intermediates, batch: &Batch) -> Result<Vec<(String, Tensor<1>)>> {
        let logits = out.logits.rows();
        let ce = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, batch.targets.clone());
        Ok(vec![("ce".to_string(), ce)])
    }

    fn evaluate(
        &self,
        net: &dyn Backbone,
        split: &Split,
        transform: &ItemTransform,
        options: EvalOptions,
        device: &Device,
    ) -> Result<Evaluation> {
        let loader = options.loader(split, transform)?;
        let (mut top1, mut top5) = (0usize, 0usize);
        let mut tally = EvalTally::default();
        for batch in loader.epoch(0, device) {
            let batch = batch?;
            let b = batch.positions.len();
            let out = net.forward_intermediates(batch.images, &TapRequest::none());
            let logits = out.eval_logits();
            let k = logits.dims()[1].min(5);
            let targets = batch.targets.reshape([b, 1]);
            let log_p = log_softmax(logits.clone(), 1);
            let nll = log_p.gather(1, targets.clone()).reshape([b]).neg();
            tally.add(nll, &out.embedding, options.embeddings)?;
            let pred = logits.clone().argmax(1);
            top1 += pred.equal(targets.clone()).int().sum().into_scalar::<i64>() as usize;
            let sorted = logits.argsort_descending(1).narrow(1, 0, k); // [B, k]
            top5 += sorted
                .equal(targets.repeat_dim(1, k))
                .int()
                .sum()
                .into_scalar::<i64>() as usize;
        }
        let count = tally.images().max(1) as f64;
        Ok(tally.finish(BTreeMap::from([
            ("top1".to_string(), top1 as f64 / count),
            ("top5".to_string(), top5 as f64 / count),
        ])))
    }

    fn score_metric(&self) -> &'static str {
        "top1"
    }

    fn chance_loss(&self, classes: usize) -> Option<f64> {
        (classes >= 2).then(|| (classes as f64).ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autokd_data::{DatasetInfo, InMemory};
    use autokd_models::{Feature, Prediction, TapInfo};

    /// A "network" whose logits are a fixed function of the image's first pixel, so the
    /// metrics can be counted by hand.
    #[derive(Debug)]
    struct Fixed;

    impl Backbone for Fixed {
        fn feature_info(&self) -> Vec<TapInfo> {
            Vec::new()
        }

        fn forward_intermediates(&self, x: Tensor<4>, _: &TapRequest) -> Intermediates {
            let [b, ..] = x.dims();
            // An image whose first pixel is v = 10·k / 255 scores classes [0, v, 2v, ±3v], with
            // + for odd k and − for even k (so the score does not depend on batch position).
            let device = x.device();
            let v: Vec<f32> = x
                .narrow(1, 0, 1)
                .narrow(2, 0, 1)
                .narrow(3, 0, 1)
                .reshape([b])
                .into_data()
                .try_to_vec()
                .unwrap_or_default();
            let mut rows = Vec::new();
            for v in &v {
                let k = (v * 255.0 / 10.0).round() as i32;
                let s = if k % 2 == 1 { 1.0 } else { -1.0 };
                rows.extend([0.0, *v, 2.0 * v, 3.0 * v * s]);
            }
            let logits = Tensor::<2>::from_data(TensorData::new(rows, [b, 4]), &device);
            Intermediates {
                features: Vec::<Feature>::new(),
                embedding: logits.clone(),
                logits: Prediction::Rows(logits),
                dist_logits: None,
                aux_logits: None,
                box_deltas: None,
            }
        }
    }

    /// Top-1, top-5 and mean CE of the fixed network, counted by hand in f64; embeddings are
    /// kept for the first images only.
    #[test]
    fn classification_metrics_match_a_hand_count() {
        let device = Device::flex();
        // Four 1×1 gray images with values 10, 20, 30, 40 and classes 3, 2, 3, 0.
        let source = InMemory::new(1, 1, 1, vec![10, 20, 30, 40], vec![3, 2, 3, 0]).unwrap();
        let split = Split::all(source.shared());
        let info = DatasetInfo {
            name: "four".into(),
            channels: 1,
            height: 1,
            width: 1,
            num_classes: 4,
            class_names: (0..4).map(|c| c.to_string()).collect(),
            pixel_max: 255.0,
            mean: vec![0.0],
            std: vec![1.0],
            anchor_base: None,
        };
        let transform = ItemTransform::from(autokd_data::Transform::eval(&info).unwrap());
        let eval = Classification
            .evaluate(
                &Fixed,
                &split,
                &transform,
                EvalOptions {
                    batch_size: 3,
                    workers: 0,
                    embeddings: 3,
                },
                &device,
            )
            .unwrap();
        let labels = [3usize, 2, 3, 0];
        let (mut ce, mut top1) = (0.0f64, 0usize);
        let mut per_image = Vec::new();
        for (i, &y) in labels.iter().enumerate() {
            let v = [10.0, 20.0, 30.0, 40.0][i] / 255.0f64;
            let s = if i % 2 == 0 { 1.0 } else { -1.0 };
            let row = [0.0, v, 2.0 * v, 3.0 * v * s];
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|r| (r - max).exp()).sum::<f64>().ln();
            ce += lse - row[y];
            per_image.push(lse - row[y]);
            let arg = (0..4).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            top1 += usize::from(arg == y);
        }
        // Images 0 and 2 score class 3 highest (their labels: hits); image 1 scores class 2
        // (its label: a hit); image 3 scores class 2 (label 0: a miss). Top-5 of 4 classes: all.
        assert_eq!(top1, 3);
        assert!((eval.metric("top1") - 0.75).abs() < 1e-12);
        assert!((eval.metric("top5") - 1.0).abs() < 1e-12);
        assert!(
            (eval.loss - ce / 4.0).abs() < 1e-6,
            "{} vs {}",
            eval.loss,
            ce / 4.0
        );
        // The per-image CE's standard deviation, two-pass in f64.
        let mean = ce / 4.0;
        let sd = (per_image.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        assert!(sd > 0.05, "the four images' CEs differ: {per_image:?}");
        assert!((eval.loss_sd - sd).abs() < 1e-5, "{} vs {sd}", eval.loss_sd);
        assert_eq!(eval.embeddings.unwrap().dims(), [3, 4]);
    }
}
