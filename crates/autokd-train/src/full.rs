//! Recipes and full training (`autokd train`): a model from scratch, or a student distilled from
//! a frozen online teacher with any [`DistillerSpec`], through the one training loop
//! ([`crate::Fit`]) with metrics per epoch, checkpoints and resume.
//!
//! [`Recipe`] is the one recipe type: presets for `autokd train`, a search's
//! `[teacher_training]`, and the training part of a proxy trial ([`crate::ProxyConfig::recipe`]).

use std::path::Path;

use autokd_data::{
    Augment, DataLoader, Dataset, DensePipeline, DenseStep, DenseTransform, ItemTransform,
    LoaderConfig, PhotometricDistortion, Split, Transform,
};
use autokd_distill::{Distiller, DistillerSpec};
use autokd_models::{Backbone, Model, ModelSpec};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::detection::Detection;
use crate::error::{Result, TrainError};
use crate::fit::{EvalSet, Fit, MaskSeeds, RunDir, TeacherFeed, TrainEvent};
use crate::segmentation::Segmentation;
use crate::step::DistillStudent;
use crate::task::{Classification, EvalOptions, Task};

/// The segmentation task of full trainings (auxiliary head at 0.4).
pub(crate) static SEGMENTATION: Segmentation = Segmentation { aux_weight: 0.4 };

/// Optimizer of a recipe.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerKind {
    /// SGD with momentum (no dampening) and L2 weight decay.
    Sgd {
        /// Momentum.
        momentum: f64,
        /// Weight decay.
        weight_decay: f64,
    },
    /// AdamW with decoupled weight decay.
    AdamW {
        /// Weight decay.
        weight_decay: f64,
    },
}

/// Learning-rate schedule of a recipe. It counts the unit of the recipe's [`Length`]: an epoch
/// recipe sets one rate per epoch (milestones and warm-up in epochs), an iteration recipe one per
/// optimizer step (milestones and warm-up in iterations), as mmseg's iteration-based schedules.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// `lr · gamma^(number of milestones ≤ t)` (constant without milestones).
    MultiStep {
        /// Epochs (or iterations) at which the rate drops.
        milestones: Vec<usize>,
        /// Factor per milestone.
        gamma: f64,
    },
    /// Linear warm-up, then half a cosine down to 0.
    Cosine {
        /// Warm-up epochs (or iterations).
        warmup_epochs: usize,
    },
    /// `(lr − min_lr) · (1 − t/T)^power + min_lr` over the run's `T` epochs or iterations
    /// (torchvision's `PolynomialLR` with `min_lr = 0`; mmseg's `PolyLR` with `eta_min`). The
    /// segmentation recipes use power 0.9.
    Poly {
        /// Exponent.
        power: f64,
        /// Floor of the rate.
        min_lr: f64,
    },
}

/// How long a recipe trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Whole epochs over the training split.
    Epochs(usize),
    /// Optimizer steps; the last epoch ends part-way when they do not fill it.
    Iterations(usize),
}

impl Length {
    /// The number of epochs or iterations (the span `T` of the schedule).
    pub fn count(self) -> usize {
        match self {
            Length::Epochs(n) | Length::Iterations(n) => n,
        }
    }

    /// Epochs and optimizer steps of a run with `steps_per_epoch` batches per epoch (an
    /// iteration recipe: as many epochs as its steps begin).
    pub fn plan(self, steps_per_epoch: usize) -> (usize, usize) {
        let spe = steps_per_epoch.max(1);
        match self {
            Length::Epochs(e) => (e, e * spe),
            Length::Iterations(i) => (i.div_ceil(spe), i),
        }
    }
}

impl std::fmt::Display for Length {
    /// `30 epochs`, `40000 iterations`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Length::Epochs(e) => write!(f, "{e} epochs"),
            Length::Iterations(i) => write!(f, "{i} iterations"),
        }
    }
}

/// A training recipe: length, batch, optimizer, schedule and seed. In files it is one flat table
/// (see [`RecipeFile`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RecipeFile", into = "RecipeFile")]
pub struct Recipe {
    /// Epochs or iterations.
    pub length: Length,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Schedule.
    pub schedule: Schedule,
    /// Seed of initialization, data order, augmentation and masks.
    pub seed: u64,
    /// A classification checkpoint of the model's backbone to start from (a segmentation model
    /// or a detector: torchvision's `weights_backbone`, CIRKD's `--student-pretrained-base`;
    /// [`autokd_models::load_backbone`]); `None`: from scratch.
    pub backbone_weights: Option<std::path::PathBuf>,
    /// Linear warm-up of the first optimizer steps, on top of the schedule (the detection
    /// recipes').
    pub warmup: Option<Warmup>,
    /// Gradient clipping by L2 norm: all gradients are scaled together so that their joint norm
    /// is at most this, as PyTorch's `clip_grad_norm_` and mmdet's `grad_clip` do
    /// ([`crate::step::clip_grad_norm`], before each optimizer step).
    pub clip_grad_norm: Option<f64>,
}

/// mmdet's linear warm-up (`warmup = 'linear'`): at optimizer step `i < iterations` the rate is
/// the schedule's times `1 − (1 − ratio)·(1 − i / iterations)`, from `ratio` at the first step
/// to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    /// Steps of the warm-up.
    pub iterations: usize,
    /// Factor of the first step.
    pub ratio: f64,
}

impl Warmup {
    /// The factor of optimizer step `step` (0-based; 1 from `iterations` on).
    pub fn factor(&self, step: usize) -> f64 {
        if step >= self.iterations {
            return 1.0;
        }
        1.0 - (1.0 - self.ratio) * (1.0 - step as f64 / self.iterations as f64)
    }
}

/// Optimizer names in a recipe file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    /// SGD with momentum.
    #[default]
    Sgd,
    /// AdamW.
    Adamw,
}

/// Schedule names in a recipe file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleName {
    /// Steps at `milestones`.
    #[default]
    MultiStep,
    /// Warm-up and cosine.
    Cosine,
    /// Polynomial decay (`power`, `min_lr`).
    Poly,
}

/// A [`Recipe`] as a file gives it, every field defaulting to the `digits` preset. The first
/// eight fields are those of the search config's `[teacher_training]` since its start (and
/// serialize in that order, so cached teachers keep their keys); the others are written only
/// when they differ from SGD with steps over epochs. `epochs` or `iterations` gives the length
/// (not both; neither: the preset's 30 epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeFile {
    /// Epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Epochs (or iterations) at which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// Learning-rate factor at each milestone.
    pub gamma: f64,
    /// Seed.
    pub seed: u64,
    /// `sgd` or `adamw`.
    #[serde(skip_serializing_if = "is_default")]
    pub optimizer: OptimizerName,
    /// `multi_step`, `cosine` or `poly`.
    #[serde(skip_serializing_if = "is_default")]
    pub schedule: ScheduleName,
    /// Warm-up epochs (or iterations) of the cosine schedule.
    #[serde(skip_serializing_if = "is_default")]
    pub warmup_epochs: usize,
    /// Optimizer steps instead of epochs; the schedule then counts iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// Exponent of the poly schedule.
    #[serde(skip_serializing_if = "is_default_power")]
    pub power: f64,
    /// Floor of the poly schedule's rate.
    #[serde(skip_serializing_if = "is_default")]
    pub min_lr: f64,
    /// An ImageNet classification checkpoint of the backbone to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_weights: Option<std::path::PathBuf>,
    /// Optimizer steps of a linear warm-up (0: none), over any schedule.
    #[serde(skip_serializing_if = "is_default")]
    pub warmup_iterations: usize,
    /// The warm-up's factor at its first step.
    #[serde(skip_serializing_if = "is_default_warmup_ratio")]
    pub warmup_ratio: f64,
    /// Gradient clipping by the joint norm of all gradients (PyTorch's `clip_grad_norm_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The poly schedule's exponent of the segmentation recipes (DeepLab, mmseg).
const POLY_POWER: f64 = 0.9;

fn is_default_power(p: &f64) -> bool {
    *p == POLY_POWER
}

/// mmdet's warm-up ratio.
const WARMUP_RATIO: f64 = 0.001;

fn is_default_warmup_ratio(r: &f64) -> bool {
    *r == WARMUP_RATIO
}

impl Default for RecipeFile {
    fn default() -> Self {
        Recipe::digits().into()
    }
}

impl From<Recipe> for RecipeFile {
    fn from(r: Recipe) -> Self {
        let (optimizer, momentum, weight_decay) = match r.optimizer {
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => (OptimizerName::Sgd, momentum, weight_decay),
            OptimizerKind::AdamW { weight_decay } => (OptimizerName::Adamw, 0.9, weight_decay),
        };
        let (mut milestones, mut gamma, mut warmup_epochs) = (Vec::new(), 0.1, 0);
        let (mut power, mut min_lr) = (POLY_POWER, 0.0);
        let schedule = match r.schedule {
            Schedule::MultiStep {
                milestones: m,
                gamma: g,
            } => {
                (milestones, gamma) = (m, g);
                ScheduleName::MultiStep
            }
            Schedule::Cosine { warmup_epochs: w } => {
                warmup_epochs = w;
                ScheduleName::Cosine
            }
            Schedule::Poly {
                power: p,
                min_lr: m,
            } => {
                (power, min_lr) = (p, m);
                ScheduleName::Poly
            }
        };
        let (epochs, iterations) = match r.length {
            Length::Epochs(e) => (Some(e), None),
            Length::Iterations(i) => (None, Some(i)),
        };
        Self {
            epochs,
            batch_size: r.batch_size,
            lr: r.lr,
            momentum,
            weight_decay,
            milestones,
            gamma,
            seed: r.seed,
            optimizer,
            schedule,
            warmup_epochs,
            iterations,
            power,
            min_lr,
            backbone_weights: r.backbone_weights,
            warmup_iterations: r.warmup.map_or(0, |w| w.iterations),
            warmup_ratio: r.warmup.map_or(WARMUP_RATIO, |w| w.ratio),
            clip_grad_norm: r.clip_grad_norm,
        }
    }
}

impl TryFrom<RecipeFile> for Recipe {
    type Error = String;

    fn try_from(f: RecipeFile) -> std::result::Result<Self, String> {
        let optimizer = match f.optimizer {
            OptimizerName::Sgd => OptimizerKind::Sgd {
                momentum: f.momentum,
                weight_decay: f.weight_decay,
            },
            OptimizerName::Adamw => OptimizerKind::AdamW {
                weight_decay: f.weight_decay,
            },
        };
        let schedule = match f.schedule {
            ScheduleName::MultiStep => Schedule::MultiStep {
                milestones: f.milestones,
                gamma: f.gamma,
            },
            ScheduleName::Cosine => Schedule::Cosine {
                warmup_epochs: f.warmup_epochs,
            },
            ScheduleName::Poly => Schedule::Poly {
                power: f.power,
                min_lr: f.min_lr,
            },
        };
        let length = match (f.epochs, f.iterations) {
            (Some(e), None) => Length::Epochs(e),
            (None, Some(i)) => Length::Iterations(i),
            (None, None) => Recipe::digits().length,
            (Some(e), Some(i)) => {
                return Err(format!(
                    "recipe: give `epochs` or `iterations`, not both (epochs = {e}, iterations = {i})"
                ));
            }
        };
        let recipe = Recipe {
            length,
            batch_size: f.batch_size,
            lr: f.lr,
            optimizer,
            schedule,
            seed: f.seed,
            backbone_weights: f.backbone_weights,
            warmup: (f.warmup_iterations > 0).then_some(Warmup {
                iterations: f.warmup_iterations,
                ratio: f.warmup_ratio,
            }),
            clip_grad_norm: f.clip_grad_norm,
        };
        recipe.validate().map_err(|e| e.to_string())?;
        Ok(recipe)
    }
}

/// Names of the recipe presets.
pub const PRESETS: [&str; 7] = [
    "cifar100",
    "imagenet",
    "deit",
    "digits",
    "fashion-mnist",
    "cityscapes",
    "coco-2x",
];

impl Recipe {
    /// The `digits` preset: a CIFAR-style ResNet on the embedded digits in seconds (and the
    /// default of a search's `[teacher_training]`).
    pub fn digits() -> Self {
        Self {
            length: Length::Epochs(30),
            batch_size: 64,
            lr: 0.05,
            optimizer: OptimizerKind::Sgd {
                momentum: 0.9,
                weight_decay: 5e-4,
            },
            schedule: Schedule::MultiStep {
                milestones: vec![20, 25],
                gamma: 0.1,
            },
            seed: 0,
            backbone_weights: None,
            warmup: None,
            clip_grad_norm: None,
        }
    }

    /// A preset from the supplementary material (CIFAR-100, ImageNet, DeiT-Tiny) or a small one
    /// that finishes in minutes on a CPU (digits, Fashion-MNIST).
    pub fn preset(name: &str) -> Result<Self> {
        let sgd = |wd| OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: wd,
        };
        let steps = |m: &[usize]| Schedule::MultiStep {
            milestones: m.to_vec(),
            gamma: 0.1,
        };
        let recipe = |epochs, batch_size, lr, optimizer, schedule| Self {
            length: Length::Epochs(epochs),
            batch_size,
            lr,
            optimizer,
            schedule,
            seed: 0,
            backbone_weights: None,
            warmup: None,
            clip_grad_norm: None,
        };
        Ok(match name {
            "cifar100" => recipe(240, 64, 0.05, sgd(5e-4), steps(&[150, 180, 210])),
            "imagenet" => recipe(100, 256, 0.1, sgd(1e-4), steps(&[30, 60, 90])),
            "deit" => recipe(
                300,
                128,
                5e-4,
                OptimizerKind::AdamW { weight_decay: 0.05 },
                Schedule::Cosine { warmup_epochs: 5 },
            ),
            "digits" => Self::digits(),
            "fashion-mnist" => recipe(15, 128, 0.1, sgd(5e-4), steps(&[10, 13])),
            // The supplementary's segmentation recipe (SGD, poly schedule, batch 8, 40k
            // iterations; its crops are 512×512) with mmseg's DeepLabV3 numbers for what it
            // leaves open: lr 0.01, momentum 0.9, weight decay 5e-4, power 0.9, floor 1e-4.
            "cityscapes" => Self {
                length: Length::Iterations(40_000),
                batch_size: 8,
                lr: 0.01,
                optimizer: sgd(5e-4),
                schedule: Schedule::Poly {
                    power: 0.9,
                    min_lr: 1e-4,
                },
                seed: 0,
                backbone_weights: None,
                warmup: None,
                clip_grad_norm: None,
            },
            // mmdet's 2× detection schedule (RetinaNet, Faster R-CNN; the supplementary's COCO
            // runs): 24 epochs, batch 16, SGD 0.01 with momentum 0.9 and weight decay 1e-4,
            // steps at 16 and 22, linear warm-up over 500 steps from 0.001; no clipping.
            "coco-2x" => Self {
                warmup: Some(Warmup {
                    iterations: 500,
                    ratio: WARMUP_RATIO,
                }),
                ..recipe(24, 16, 0.01, sgd(1e-4), steps(&[16, 22]))
            },
            other => {
                return Err(TrainError::Config(format!(
                    "unknown recipe `{other}`; expected one of: {}",
                    PRESETS.join(", ")
                )));
            }
        })
    }

    /// Epochs of the run, when its length is in epochs (`None` for an iteration recipe, whose
    /// epochs depend on the loader: [`Length::plan`]).
    pub fn epochs(&self) -> Option<usize> {
        match self.length {
            Length::Epochs(e) => Some(e),
            Length::Iterations(_) => None,
        }
    }

    /// The learning rate at `t` (0-based) of the recipe's unit: the epoch of an epoch recipe,
    /// the optimizer step of an iteration recipe.
    pub fn lr_at(&self, t: usize) -> f64 {
        let span = self.length.count();
        match &self.schedule {
            Schedule::MultiStep { milestones, gamma } => {
                self.lr * gamma.powi(milestones.iter().filter(|&&m| m <= t).count() as i32)
            }
            Schedule::Cosine { warmup_epochs } => {
                if t < *warmup_epochs {
                    self.lr * (t + 1) as f64 / *warmup_epochs as f64
                } else {
                    let rest = span.saturating_sub(*warmup_epochs).max(1) as f64;
                    let x = (t - warmup_epochs) as f64 / rest;
                    0.5 * self.lr * (1.0 + (std::f64::consts::PI * x).cos())
                }
            }
            Schedule::Poly { power, min_lr } => {
                let x = t.min(span) as f64 / span.max(1) as f64;
                (self.lr - min_lr) * (1.0 - x).powf(*power) + min_lr
            }
        }
    }

    /// The learning rate of optimizer step `step` (0-based, over the whole run) in unit `t`
    /// of the schedule ([`Recipe::lr_at`]), with the warm-up's factor.
    pub fn lr_at_step(&self, t: usize, step: usize) -> f64 {
        self.lr_at(t) * self.warmup.map_or(1.0, |w| w.factor(step))
    }

    /// A fresh optimizer of the recipe, clipping gradients when it says so.
    pub fn optimizer(&self) -> ModuleOptimizer {
        let clip = self
            .clip_grad_norm
            .map(|n| burn::grad_clipping::GradientClippingConfig::Norm(n as f32));
        match &self.optimizer {
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => sgd_config(*momentum, *weight_decay)
                .with_gradient_clipping(clip)
                .init(),
            OptimizerKind::AdamW { weight_decay } => AdamWConfig::new()
                .with_weight_decay(*weight_decay as f32)
                .with_grad_clipping(clip)
                .init(),
        }
    }

    /// Checks the recipe: at least one epoch or iteration, a positive batch size, learning rate
    /// and gamma, a cosine warm-up shorter than the run, a positive poly power and a floor in
    /// `[0, lr)`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(format!("recipe: {m}")));
        let (unit, span) = match self.length {
            Length::Epochs(e) => ("epochs", e),
            Length::Iterations(i) => ("iterations", i),
        };
        if span == 0 {
            return bad(format!("{unit} must be at least 1"));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr {} must be a positive number", self.lr));
        }
        match &self.schedule {
            Schedule::MultiStep { gamma, .. } if !(gamma.is_finite() && *gamma > 0.0) => {
                bad(format!("gamma {gamma} must be a positive number"))
            }
            Schedule::Cosine { warmup_epochs } if *warmup_epochs >= span => bad(format!(
                "warmup_epochs {warmup_epochs} must be below {unit} {span}"
            )),
            Schedule::Poly { power, .. } if !(power.is_finite() && *power > 0.0) => {
                bad(format!("power {power} must be a positive number"))
            }
            Schedule::Poly { min_lr, .. } if !(*min_lr >= 0.0 && *min_lr < self.lr) => {
                bad(format!(
                    "min_lr {min_lr} must be at least 0 and below lr {}",
                    self.lr
                ))
            }
            _ => Ok(()),
        }?;
        if let Some(w) = self.warmup
            && !(w.ratio > 0.0 && w.ratio <= 1.0)
        {
            return bad(format!("warmup_ratio {} must lie in (0, 1]", w.ratio));
        }
        match self.clip_grad_norm {
            Some(n) if !(n.is_finite() && n > 0.0) => {
                bad(format!("clip_grad_norm {n} must be a positive number"))
            }
            _ => Ok(()),
        }
    }
}

/// SGD with momentum (no dampening, as PyTorch's default) and L2 weight decay: the optimizer
/// of the CIFAR/ImageNet recipes, teachers and the proxy.
pub fn sgd(momentum: f64, weight_decay: f64) -> ModuleOptimizer {
    sgd_config(momentum, weight_decay).init()
}

fn sgd_config(momentum: f64, weight_decay: f64) -> SgdConfig {
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(momentum)
                .with_dampening(0.0),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(weight_decay as f32)))
}

/// The score of `model` (its `valid()` copy) on the test split of `dataset`: top-1 accuracy
/// for a classifier, mIoU for a segmenter.
pub fn accuracy(model: &Model, dataset: &Dataset, device: &Device) -> Result<f64> {
    Ok(evaluate(model, dataset, device)?.0)
}

/// The score and the second metric of a model on the test split: top-1 and top-5 accuracy for
/// a classifier, mIoU and pixel accuracy for a segmenter (through the evaluation pipeline of
/// [`segmentation_pipelines`]).
pub fn evaluate(model: &Model, dataset: &Dataset, device: &Device) -> Result<(f64, f64)> {
    if matches!(model, Model::RetinaNet(_)) {
        let task = Detection::for_dataset(&dataset.info);
        let (_, eval) = detection_pipelines(&dataset.info);
        let transform: ItemTransform = DenseTransform::new(&dataset.info, eval)?.into();
        let e = task.evaluate(
            &model.valid(),
            &dataset.test,
            &transform,
            DETECTION_EVAL,
            device,
        )?;
        return Ok((e.metric(task.score_metric()), e.metric("ap50")));
    }
    let (task, transform, second): (&dyn Task, ItemTransform, &str) =
        if matches!(model, Model::DeepLabV3(_) | Model::DeepLabV3MobileNet(_)) {
            let (_, eval) = segmentation_pipelines(&dataset.info);
            (
                &SEGMENTATION,
                DenseTransform::new(&dataset.info, eval)?.into(),
                "pixel_acc",
            )
        } else {
            (
                &Classification,
                Transform::eval(&dataset.info)?.into(),
                "top5",
            )
        };
    let e = task.evaluate(&model.valid(), &dataset.test, &transform, TEST_EVAL, device)?;
    Ok((e.metric(task.score_metric()), e.metric(second)))
}

/// How full training evaluates the test split.
const TEST_EVAL: EvalOptions = EvalOptions {
    batch_size: 256,
    workers: 1,
    embeddings: 0,
};

/// How a detector's test split is evaluated (images up to 800 × 1,333: smaller batches).
const DETECTION_EVAL: EvalOptions = EvalOptions {
    batch_size: 8,
    workers: 1,
    embeddings: 0,
};

/// The dense pipelines of a detector on `info` (mmdet's and torchvision's): training resizes
/// with the ratio kept to the dataset's size (short side `min(H, W)`, long side at most
/// `max(H, W)`: 800 × 1,333 for VOC and COCO, the scene size for box scenes) and flips half the
/// images; evaluation only resizes; both pad to a multiple of 32 (the FPN's P5 stride).
pub fn detection_pipelines(info: &autokd_data::DatasetInfo) -> (DensePipeline, DensePipeline) {
    let resize = DenseStep::Resize {
        short: info.height.min(info.width),
        max_long: info.height.max(info.width),
    };
    let train = DensePipeline {
        steps: vec![resize.clone(), DenseStep::Flip { p: 0.5 }],
        pad_multiple: 32,
    };
    let eval = DensePipeline {
        steps: vec![resize],
        pad_multiple: 32,
    };
    (train, eval)
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The task's score metric (`top1` for classification, `miou` for segmentation), which the
    /// `*_top1` fields hold (named for classification's, which they held first).
    #[serde(default = "top1")]
    pub metric: String,
    /// Test score at the best epoch: the one with the best validation score when the run has a
    /// validation split, else the best over epochs.
    pub best_top1: f64,
    /// The best epoch (from 1; 0 in summaries from before it was recorded).
    #[serde(default)]
    pub best_epoch: usize,
    /// Test top-1 after the last epoch.
    pub last_top1: f64,
    /// Epochs run in this call (after a resume, only the remaining ones).
    pub epochs_run: usize,
}

fn top1() -> String {
    "top1".into()
}

/// The dense pipelines of a segmentation dataset at CPU scale, from its declared image size
/// `H × W`: training rescales by 0.5 … 2.0 around `H × W` (keep ratio), crops `H × W` (at most
/// 75% of one class), flips with probability 1/2 and distorts photometrically (mmseg's
/// Cityscapes steps at this size); evaluation takes the images as they are. Batches pad to a
/// multiple of 8 (DeepLabV3's output stride).
pub fn segmentation_pipelines(info: &autokd_data::DatasetInfo) -> (DensePipeline, DensePipeline) {
    let (h, w) = (info.height, info.width);
    let train = DensePipeline {
        steps: vec![
            DenseStep::RandomRescale {
                short: h.min(w),
                max_long: h.max(w),
                ratio: [0.5, 2.0],
            },
            DenseStep::RandomCrop {
                height: h,
                width: w,
                cat_max_ratio: 0.75,
            },
            DenseStep::Flip { p: 0.5 },
            DenseStep::Photometric(PhotometricDistortion::default()),
        ],
        pad_multiple: 8,
    };
    let eval = DensePipeline {
        steps: Vec::new(),
        pad_multiple: 8,
    };
    (train, eval)
}

/// A frozen teacher and the distiller to train the student with.
pub struct TeacherSetup<'a> {
    /// The teacher (run through its `valid()` copy, without autodiff).
    pub model: &'a Model,
    /// Its registry name.
    pub name: &'a str,
    /// The distiller.
    pub spec: &'a DistillerSpec,
}

/// `model` with the backbone of [`Recipe::backbone_weights`] when the recipe names one.
///
/// A detector without pretrained weights trains as torchvision builds one when neither `weights`
/// nor `weights_backbone` is given: batch norms that normalize with the batch's statistics and
/// learn their affine terms (`BatchNorm2d`, not `FrozenBatchNorm2d`) and no frozen stage
/// (`trainable_backbone_layers = 5`). Frozen batch norms whose running statistics were never
/// trained would leave a scratch backbone unnormalized.
pub(crate) fn with_backbone(model: Model, spec: &ModelSpec, recipe: &Recipe) -> Result<Model> {
    Ok(match &recipe.backbone_weights {
        Some(path) => autokd_models::load_backbone(model, spec.name, path)?,
        None => match model {
            Model::RetinaNet(m) => Model::RetinaNet(m.unfreeze()),
            other => other,
        },
    })
}

/// Initializes a student and its distiller from the recipe's seed (their own streams,
/// [`crate::init_streams`]; no device RNG).
pub(crate) fn init_student(
    student: &ModelSpec,
    spec: &DistillerSpec,
    teacher: Option<(&str, &[autokd_models::TapInfo])>,
    recipe: &Recipe,
    ad: &Device,
) -> Result<DistillStudent> {
    let (mut student_rng, mut distiller_rng) = crate::init_streams(recipe.seed);
    let model = with_backbone(student.init_with(&mut student_rng, ad)?, student, recipe)?;
    let (t_name, t_info) = teacher.unwrap_or(("none", &[]));
    let distiller = Distiller::new(
        spec,
        student.name.as_str(),
        &model.feature_info(),
        t_name,
        t_info,
        &mut distiller_rng,
        ad,
    )?;
    Ok(DistillStudent {
        student: model,
        distiller,
    })
}

/// Trains `student` (from scratch, or distilled when `teacher` is given) on `dataset` with
/// `recipe` (its seed included), writing `metrics.jsonl` and `checkpoint/` into `run_dir`. With
/// `resume`, continues from the checkpoint there. `validation` (a part of the training split
/// that `dataset.train` no longer holds) chooses the best epoch; the test split is then evaluated
/// once, at the end, on the last and the best epoch's weights. `stop_after` ends the call after
/// that many epochs (as a kill would; tests). The student's family picks the task: a
/// segmentation model ([`autokd_models::Family::Segmentation`]) trains with [`Segmentation`]
/// through [`segmentation_pipelines`], a detector ([`autokd_models::Family::Detection`]) with
/// [`Detection`] through [`detection_pipelines`], every other with [`Classification`].
#[allow(clippy::too_many_arguments)]
pub fn train(
    student: &ModelSpec,
    teacher: Option<TeacherSetup<'_>>,
    dataset: &Dataset,
    validation: Option<&Split>,
    recipe: &Recipe,
    checkpoint_every: usize,
    run_dir: &Path,
    resume: bool,
    stop_after: Option<usize>,
    devices: &[Device],
    mut on_event: impl FnMut(TrainEvent<'_>),
) -> Result<(Model, TrainSummary)> {
    let Some(device) = devices.first() else {
        return Err(TrainError::Config("no device to train on".into()));
    };
    recipe.validate()?;
    let vanilla = DistillerSpec::baseline("vanilla").map_err(TrainError::from)?;
    let t_info = teacher.as_ref().map(|t| t.model.feature_info());
    let net = init_student(
        student,
        teacher.as_ref().map_or(&vanilla, |t| t.spec),
        teacher
            .as_ref()
            .zip(t_info.as_deref())
            .map(|(t, info)| (t.name, info)),
        recipe,
        &device.clone().autodiff(),
    )?;
    let frozen = teacher.as_ref().map(|t| t.model.valid());
    // The student's family picks the task: a segmenter trains on masks, a detector on boxes,
    // both through dense pipelines.
    let detection = Detection::for_dataset(&dataset.info);
    let (task, train_transform, test_transform, eval_options): (
        &dyn Task,
        ItemTransform,
        ItemTransform,
        EvalOptions,
    ) = match student.name.family() {
        autokd_models::Family::Segmentation => {
            let (train, eval) = segmentation_pipelines(&dataset.info);
            (
                &SEGMENTATION,
                DenseTransform::new(&dataset.info, train)?.into(),
                DenseTransform::new(&dataset.info, eval)?.into(),
                TEST_EVAL,
            )
        }
        autokd_models::Family::Detection => {
            let (train, eval) = detection_pipelines(&dataset.info);
            (
                &detection,
                DenseTransform::new(&dataset.info, train)?.into(),
                DenseTransform::new(&dataset.info, eval)?.into(),
                DETECTION_EVAL,
            )
        }
        autokd_models::Family::Cifar | autokd_models::Family::ImageNet => (
            &Classification,
            Transform::train(&dataset.info, Augment::for_dataset(&dataset.info))?.into(),
            Transform::eval(&dataset.info)?.into(),
            TEST_EVAL,
        ),
    };
    let loader = DataLoader::with_transform(
        dataset.train.clone(),
        train_transform,
        LoaderConfig {
            batch_size: recipe.batch_size,
            shuffle: true,
            seed: recipe.seed,
            workers: 1,
            ..LoaderConfig::default()
        },
    )?;
    let fit = Fit {
        task,
        loader: &loader,
        recipe,
        teacher: frozen
            .as_ref()
            .map_or(TeacherFeed::None, |t| TeacherFeed::Online(t)),
        masks: MaskSeeds::PerEpoch(recipe.seed),
        devices,
        explode_factor: None,
        eval: Some(EvalSet {
            split: &dataset.test,
            transform: &test_transform,
            options: eval_options,
        }),
        // With a validation part, the test set is read only where the outcome needs it.
        eval_each_epoch: validation.is_none(),
        select: validation.map(|split| EvalSet {
            split,
            transform: &test_transform,
            options: eval_options,
        }),
        run_dir: Some(RunDir {
            path: run_dir,
            checkpoint_every,
            resume,
        }),
        stop_after,
    };
    let (net, outcome) = fit.run(net, recipe.optimizer(), &mut on_event)?;
    Ok((
        net.student.valid(),
        TrainSummary {
            metric: task.score_metric().into(),
            best_top1: outcome.best,
            best_epoch: outcome.best_epoch,
            last_top1: outcome.last,
            epochs_run: outcome.epochs_run,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::EpochMetrics;
    use autokd_data::DatasetSpec;
    use autokd_models::ModelName;

    /// Through the segmentation pipelines, the masks stay on their items: in the normalized
    /// batches of digit scenes, item pixels (mask 1–10) are brighter than background pixels
    /// (mask 0) by a margin, for the training pipeline (rescale, crop, flip, photometric
    /// distortion) and for evaluation.
    #[test]
    fn scene_masks_stay_on_their_items_through_the_pipelines() {
        let ds = DatasetSpec::Scenes(Box::new(DatasetSpec::Digits))
            .load()
            .unwrap();
        let (train, eval) = segmentation_pipelines(&ds.info);
        let device = Device::flex();
        for pipeline in [train, eval] {
            let loader = DataLoader::dense(
                ds.train.clone(),
                DenseTransform::new(&ds.info, pipeline).unwrap(),
                LoaderConfig {
                    batch_size: 16,
                    shuffle: true,
                    seed: 3,
                    workers: 0,
                    ..LoaderConfig::default()
                },
            )
            .unwrap();
            let (mut item, mut back) = ((0.0f64, 0usize), (0.0f64, 0usize));
            for batch in loader.epoch(0, &device).take(4) {
                let batch = batch.unwrap();
                let dense = batch.dense.unwrap();
                let x: Vec<f32> = batch.images.into_data().try_to_vec().unwrap();
                let m: Vec<i64> = dense
                    .masks
                    .unwrap()
                    .into_data()
                    .convert::<i64>()
                    .try_to_vec()
                    .unwrap();
                assert_eq!(x.len(), m.len());
                for (&v, &c) in x.iter().zip(&m) {
                    match c {
                        0 => back = (back.0 + f64::from(v), back.1 + 1),
                        1..=10 => item = (item.0 + f64::from(v), item.1 + 1),
                        _ => {}
                    }
                }
            }
            let (item, back) = (item.0 / item.1 as f64, back.0 / back.1 as f64);
            assert!(item > back + 1.0, "items {item:.3}, background {back:.3}");
        }
    }

    /// A recipe file is one flat table defaulting to the digits preset; the search config's
    /// `[teacher_training]` of earlier versions reads as before and serializes to the same JSON
    /// (the key of a cached teacher); other optimizers and schedules round-trip; bad values are
    /// refused with the field.
    #[test]
    fn recipe_files() {
        let old = "epochs = 30\nbatch_size = 64\nlr = 0.05\nmomentum = 0.9\nweight_decay = 0.0005\nmilestones = [20, 25]\ngamma = 0.1\nseed = 0\n";
        let r: Recipe = toml::from_str(old).unwrap();
        assert_eq!(r, Recipe::digits());
        assert_eq!(toml::from_str::<Recipe>("").unwrap(), Recipe::digits());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "{\"epochs\":30,\"batch_size\":64,\"lr\":0.05,\"momentum\":0.9,\"weight_decay\":0.0005,\"milestones\":[20,25],\"gamma\":0.1,\"seed\":0}"
        );
        let deit = Recipe::preset("deit").unwrap();
        let text = toml::to_string(&deit).unwrap();
        assert!(
            text.contains("optimizer = \"adamw\"") && text.contains("warmup_epochs = 5"),
            "{text}"
        );
        assert_eq!(toml::from_str::<Recipe>(&text).unwrap(), deit);
        let err = toml::from_str::<Recipe>("epochs = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("epochs must be at least 1"), "{err}");
        let err = toml::from_str::<Recipe>("lr_max = 1.0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `lr_max`"), "{err}");
        // An ImageNet backbone to start from round-trips (and is not written when absent, as
        // the JSON key above shows).
        let pre: Recipe = toml::from_str("backbone_weights = \"resnet18.pth\"\n").unwrap();
        assert_eq!(
            pre.backbone_weights.as_deref(),
            Some(std::path::Path::new("resnet18.pth"))
        );
        assert_eq!(
            toml::from_str::<Recipe>(&toml::to_string(&pre).unwrap()).unwrap(),
            pre
        );
    }

    /// A recipe's backbone checkpoint is read when the student is built: one that does not
    /// fit the model (the narrow ResNet-18 fixture for a full DeepLabV3-R18) stops the training
    /// with an error naming the file, before any step.
    #[test]
    fn a_backbone_checkpoint_that_does_not_fit_is_an_error() {
        let ds = DatasetSpec::Scenes(Box::new(DatasetSpec::Digits))
            .load()
            .unwrap();
        let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/fixtures/resnet18_narrow.pth");
        let spec = autokd_models::ModelSpec {
            name: ModelName::Deeplabv3Resnet18,
            in_channels: 1,
            num_classes: 11,
            image_size: 48,
        };
        let recipe = Recipe {
            length: Length::Epochs(1),
            backbone_weights: Some(fixture),
            ..Recipe::digits()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = train(
            &spec,
            None,
            &ds,
            None,
            &recipe,
            1,
            dir.path(),
            false,
            None,
            &[Device::flex()],
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("resnet18_narrow.pth") && err.contains("does not fit"),
            "{err}"
        );
        assert!(!dir.path().join("metrics.jsonl").exists());
    }

    /// Poly decay by hand: `lr · (1 − t/T)^0.9`, with and without a floor; an iteration recipe
    /// counts its schedule in steps; its file gives `iterations` instead of `epochs`.
    #[test]
    fn poly_and_iteration_recipes() {
        let r = Recipe {
            length: Length::Iterations(100),
            lr: 0.01,
            schedule: Schedule::Poly {
                power: 0.9,
                min_lr: 0.0,
            },
            ..Recipe::digits()
        };
        // 0.5^0.9 = 0.535886731…, 0.9^0.9 = 0.909532576…
        assert_eq!(r.lr_at(0), 0.01);
        assert!(
            (r.lr_at(50) - 0.005_358_867_31).abs() < 1e-11,
            "{}",
            r.lr_at(50)
        );
        assert!(
            (r.lr_at(10) - 0.009_095_325_76).abs() < 1e-11,
            "{}",
            r.lr_at(10)
        );
        assert_eq!(r.lr_at(100), 0.0);
        assert_eq!(r.lr_at(150), 0.0);
        let floor = Recipe {
            schedule: Schedule::Poly {
                power: 0.9,
                min_lr: 1e-4,
            },
            ..r.clone()
        };
        assert!((floor.lr_at(50) - (0.0099 * 0.535_886_731 + 1e-4)).abs() < 1e-11);
        assert!((floor.lr_at(100) - 1e-4).abs() < 1e-15);
        // Milestones of an iteration recipe are steps.
        let steps = Recipe {
            schedule: Schedule::MultiStep {
                milestones: vec![30],
                gamma: 0.1,
            },
            ..r.clone()
        };
        assert_eq!((steps.lr_at(29), steps.lr_at(30)), (0.01, 0.01 * 0.1));
        assert_eq!(Length::Iterations(30).plan(23), (2, 30));
        assert_eq!(Length::Iterations(46).plan(23), (2, 46));
        assert_eq!(Length::Epochs(3).plan(23), (3, 69));
        assert_eq!(r.length.to_string(), "100 iterations");
        let text = toml::to_string(&r).unwrap();
        assert!(
            text.contains("iterations = 100")
                && text.contains("schedule = \"poly\"")
                && !text.contains("epochs =")
                && !text.contains("power"),
            "{text}"
        );
        assert_eq!(toml::from_str::<Recipe>(&text).unwrap(), r);
        let file: Recipe =
            toml::from_str("iterations = 40000\nschedule = \"poly\"\nlr = 0.01\nmin_lr = 1e-4\n")
                .unwrap();
        assert_eq!(file.length, Length::Iterations(40000));
        for (bad, why) in [
            ("epochs = 3\niterations = 10", "not both"),
            ("iterations = 0", "iterations must be at least 1"),
            (
                "schedule = \"poly\"\npower = 0",
                "power 0 must be a positive number",
            ),
            (
                "schedule = \"poly\"\nmin_lr = 0.5",
                "min_lr 0.5 must be at least 0 and below lr",
            ),
        ] {
            let err = toml::from_str::<Recipe>(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    /// An iteration recipe through the loop: 30 steps at batch 64 over 1,438 images (23 steps per
    /// epoch) are 23 + 7 steps in 2 epochs, the poly rate falls per step, and a run killed after
    /// its first epoch resumes to the weights of the uninterrupted one.
    #[test]
    fn an_iteration_recipe_runs_its_steps_and_resumes() {
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let recipe = Recipe {
            length: Length::Iterations(30),
            schedule: Schedule::Poly {
                power: 0.9,
                min_lr: 0.0,
            },
            ..Recipe::digits()
        };
        let tmp = tempfile::tempdir().unwrap();
        let go = |dir: &Path,
                  resume: bool,
                  stop: Option<usize>,
                  steps: &mut Vec<(usize, usize, usize)>,
                  lrs: &mut Vec<f64>| {
            train(
                &spec,
                None,
                &ds,
                None,
                &recipe,
                1,
                dir,
                resume,
                stop,
                std::slice::from_ref(&device),
                |e| match e {
                    TrainEvent::Step {
                        epoch,
                        epochs,
                        step,
                        ..
                    } => steps.push((epoch, epochs, step)),
                    TrainEvent::Epoch(m) => lrs.push(m.lr),
                },
            )
            .unwrap()
        };
        let (mut steps, mut lrs) = (Vec::new(), Vec::new());
        let (a, sa) = go(&tmp.path().join("whole"), false, None, &mut steps, &mut lrs);
        let expected: Vec<(usize, usize, usize)> = (1..=23)
            .map(|s| (0, 2, s))
            .chain((1..=7).map(|s| (1, 2, s)))
            .collect();
        assert_eq!(steps, expected);
        assert_eq!(sa.epochs_run, 2);
        assert_eq!(lrs, vec![recipe.lr_at(0), recipe.lr_at(23)]);
        assert!(lrs[1] < lrs[0]);
        let split = tmp.path().join("split");
        let (_, s1) = go(&split, false, Some(1), &mut Vec::new(), &mut Vec::new());
        assert_eq!(s1.epochs_run, 1);
        let mut rest = Vec::new();
        let (b, s2) = go(&split, true, None, &mut rest, &mut Vec::new());
        assert_eq!((s2.epochs_run, rest.len()), (1, 7));
        assert_eq!(
            crate::testing::snapshot(&a),
            crate::testing::snapshot(&b),
            "resumed weights differ"
        );
    }

    #[test]
    fn presets_and_schedules() {
        let c = Recipe::preset("cifar100").unwrap();
        assert_eq!((c.length, c.batch_size), (Length::Epochs(240), 64));
        assert!((c.lr_at(149) - 0.05).abs() < 1e-12 && (c.lr_at(150) - 0.005).abs() < 1e-12);
        assert!((c.lr_at(210) - 0.05e-3).abs() < 1e-12);
        let i = Recipe::preset("imagenet").unwrap();
        assert!((i.lr_at(95) - 1e-4).abs() < 1e-12);
        // Cityscapes: poly over 40k steps, (0.01 − 1e-4)·0.5^0.9 + 1e-4 = 0.0054053 half-way.
        let cs = Recipe::preset("cityscapes").unwrap();
        assert_eq!((cs.length, cs.batch_size), (Length::Iterations(40_000), 8));
        assert!(
            (cs.lr_at(20_000) - 0.005_405_28).abs() < 1e-7,
            "{}",
            cs.lr_at(20_000)
        );
        assert!((cs.lr_at(40_000) - 1e-4).abs() < 1e-12);
        let d = Recipe::preset("deit").unwrap();
        // Warm-up 5 epochs to 5e-4, then cosine: half-way through the rest, half the peak.
        assert!((d.lr_at(0) - 1e-4).abs() < 1e-12 && (d.lr_at(4) - 5e-4).abs() < 1e-12);
        assert!(
            (d.lr_at(5 + 295 / 2) - 2.5e-4).abs() < 2e-6,
            "{}",
            d.lr_at(152)
        );
        assert!(
            Recipe::preset("mnist")
                .unwrap_err()
                .to_string()
                .contains("unknown recipe `mnist`")
        );
        // coco-2x: mmdet's linear warm-up, 1 − (1 − 0.001)(1 − i/500) of the rate at step i:
        // 1e-5 at step 0, 0.01 · (1 − 0.999 · 0.5) = 0.005005 at step 250, the rate from step
        // 500 on; steps at epochs 16 and 22.
        let coco = Recipe::preset("coco-2x").unwrap();
        assert_eq!((coco.length, coco.batch_size), (Length::Epochs(24), 16));
        assert_eq!(coco.clip_grad_norm, None);
        for (t, step, want) in [
            (0, 0, 1e-5),
            (0, 250, 0.005_005),
            (0, 500, 0.01),
            (15, 9_000, 0.01),
            (16, 9_000, 0.001),
            (22, 9_000, 1e-4),
        ] {
            let got = coco.lr_at_step(t, step);
            assert!((got - want).abs() < 1e-12, "epoch {t} step {step}: {got}");
        }
        // In a file: the warm-up and clipping keys round-trip, and are absent when unset (the
        // keys of cached teachers stay as they were).
        let text = toml::to_string(&RecipeFile::from(Recipe {
            clip_grad_norm: Some(35.0),
            ..coco.clone()
        }))
        .unwrap();
        assert!(
            text.contains("warmup_iterations = 500") && text.contains("clip_grad_norm = 35.0"),
            "{text}"
        );
        assert!(!text.contains("warmup_ratio"), "{text}");
        let back = Recipe::try_from(toml::from_str::<RecipeFile>(&text).unwrap()).unwrap();
        assert_eq!(back.warmup, coco.warmup);
        assert_eq!(back.clip_grad_norm, Some(35.0));
        let plain = toml::to_string(&RecipeFile::from(Recipe::digits())).unwrap();
        assert!(
            !plain.contains("warmup_iterations") && !plain.contains("clip"),
            "{plain}"
        );
        for (key, what) in [
            (
                "warmup_iterations = 10\nwarmup_ratio = 0.0",
                "warmup_ratio 0",
            ),
            ("clip_grad_norm = -1.0", "clip_grad_norm -1"),
        ] {
            let err = Recipe::try_from(toml::from_str::<RecipeFile>(key).unwrap()).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
    }

    /// A killed run resumed from its checkpoint reaches exactly the weights of an uninterrupted
    /// run; the online teacher's BatchNorm statistics and weights never move.
    #[test]
    fn resume_reaches_the_same_weights_and_the_teacher_stays_frozen() {
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let spec = crate::testing::digits_spec;
        // The teacher on the autodiff device, as a careless caller might leave it.
        let teacher = spec(ModelName::Resnet14)
            .init(&device.clone().autodiff())
            .unwrap();
        let before = crate::testing::snapshot(&teacher);
        let cwd = DistillerSpec::baseline("cwd").unwrap();
        let recipe = Recipe {
            length: Length::Epochs(3),
            batch_size: 128,
            seed: 7,
            ..Recipe::preset("digits").unwrap()
        };
        let setup = || {
            Some(TeacherSetup {
                model: &teacher,
                name: "resnet14",
                spec: &cwd,
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole");
        let (a, sa) = train(
            &spec(ModelName::Resnet8),
            setup(),
            &ds,
            None,
            &recipe,
            1,
            &whole,
            false,
            None,
            std::slice::from_ref(&device),
            |_| {},
        )
        .unwrap();
        assert_eq!(sa.epochs_run, 3);
        assert_eq!(
            crate::testing::snapshot(&teacher),
            before,
            "the teacher moved"
        );
        let lines: Vec<EpochMetrics> = std::fs::read_to_string(whole.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0]
                .losses
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            vec!["ce", "feat0", "total"]
        );
        assert!(
            lines
                .iter()
                .all(|m| m.metric("top5") >= m.metric("top1") && m.images_per_s > 0.0)
        );
        // (serde_json's default float parser may be 1 ULP off.)
        assert!((sa.last_top1 - lines[2].metric("top1")).abs() < 1e-12);
        // Killed after 2 epochs, then resumed.
        let split = dir.path().join("split");
        let (_, s1) = train(
            &spec(ModelName::Resnet8),
            setup(),
            &ds,
            None,
            &recipe,
            1,
            &split,
            false,
            Some(2),
            std::slice::from_ref(&device),
            |_| {},
        )
        .unwrap();
        assert_eq!(s1.epochs_run, 2);
        let (b, s2) = train(
            &spec(ModelName::Resnet8),
            setup(),
            &ds,
            None,
            &recipe,
            1,
            &split,
            true,
            None,
            std::slice::from_ref(&device),
            |_| {},
        )
        .unwrap();
        assert_eq!(s2.epochs_run, 1);
        assert_eq!(
            crate::testing::snapshot(&a),
            crate::testing::snapshot(&b),
            "resumed weights differ"
        );
        assert_eq!(
            std::fs::read_to_string(split.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            3
        );
    }

    #[test]
    fn vanilla_training_from_scratch() {
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let recipe = Recipe {
            length: Length::Epochs(2),
            ..Recipe::preset("digits").unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut step_events, mut epoch_events) = (Vec::new(), Vec::new());
        let (m, s) = train(
            &spec,
            None,
            &ds,
            None,
            &recipe,
            5,
            dir.path(),
            false,
            None,
            std::slice::from_ref(&device),
            |e| match e {
                TrainEvent::Step {
                    epoch, step, steps, ..
                } => step_events.push((epoch, step, steps)),
                TrainEvent::Epoch(m) => epoch_events.push(m.epoch),
            },
        )
        .unwrap();
        // 1,438 training images at batch 64: 23 steps per epoch, each reported.
        let expected: Vec<(usize, usize, usize)> = (0..2)
            .flat_map(|e| (1..=23).map(move |s| (e, s, 23)))
            .collect();
        assert_eq!(step_events, expected);
        assert_eq!(epoch_events, vec![1, 2]);
        assert!(s.best_top1 > 0.3, "{s:?}");
        assert_eq!(evaluate(&m, &ds, &device).unwrap().0, s.last_top1);
        assert!(dir.path().join("checkpoint/state.json").is_file());
    }

    /// A RetinaNet-R18 trains on box scenes from scratch through `train`: the loss has `focal`
    /// and `box_l1`, the validation part chooses the best epoch by COCO AP, and the test split
    /// reports AP and AP50 in [0, 1].
    /// torchvision's rule for a detector without pretrained weights: every parameter gets a
    /// gradient (the stem and stage 1 too, and the batch norms' affine terms), also after the
    /// proxy's `valid()` → `train()` round trip; the registry's model keeps the pretrained
    /// layout (frozen stem, stage 1 and batch norms: no gradient there).
    #[test]
    fn a_scratch_detector_trains_every_parameter() {
        use burn::optim::GradientsParams;
        struct Count<'a>(&'a GradientsParams, usize, usize);
        impl burn::module::ModuleVisitor for Count<'_> {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                if self.0.get::<D>(p.id).is_some() {
                    self.1 += 1;
                } else {
                    self.2 += 1;
                }
            }
        }
        let ad = Device::flex().autodiff();
        // (with a gradient, without) after one backward pass.
        let count = |m: &Model| {
            let out = m.forward_intermediates(
                Tensor::<4>::ones([2, 1, 64, 64], &ad),
                &autokd_models::TapRequest::none(),
            );
            let loss = out.logits.rows().sum() + out.box_deltas.unwrap().sum();
            let grads = GradientsParams::from_grads(loss.backward(), m);
            let mut v = Count(&grads, 0, 0);
            m.visit(&mut v);
            (v.1, v.2)
        };
        let spec = ModelSpec {
            name: ModelName::RetinanetResnet18,
            in_channels: 1,
            num_classes: 3,
            image_size: 64,
        };
        let pretrained_layout = spec.init(&ad).unwrap();
        let (trained, frozen) = count(&pretrained_layout);
        // Without a gradient in the pretrained layout: the stem conv, stage 1's four convs, the
        // 20 batch norms' affine terms, and their running statistics (which burn visits as
        // float values too, and which never have one).
        let running = 20 * 2;
        assert_eq!(frozen, 1 + 4 + 20 * 2 + running);
        let scratch = with_backbone(pretrained_layout, &spec, &Recipe::digits()).unwrap();
        assert_eq!(count(&scratch), (trained + frozen - running, running));
        assert_eq!(
            count(&scratch.valid().train()),
            (trained + frozen - running, running)
        );
    }

    #[test]
    fn a_detector_trains_on_box_scenes() {
        let device = Device::flex();
        let mut ds = DatasetSpec::BoxScenes(Box::new(DatasetSpec::Digits))
            .load()
            .unwrap();
        let val = ds.train.subset(&(16..24).collect::<Vec<_>>()).unwrap();
        ds.train = ds.train.subset(&(0..16).collect::<Vec<_>>()).unwrap();
        ds.test = ds.test.subset(&(0..8).collect::<Vec<_>>()).unwrap();
        let spec = ModelSpec {
            name: ModelName::RetinanetResnet18,
            in_channels: 1,
            num_classes: 10,
            image_size: 48,
        };
        let recipe = Recipe {
            length: Length::Epochs(2),
            batch_size: 8,
            lr: 0.01,
            ..Recipe::preset("digits").unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (model, s) = train(
            &spec,
            None,
            &ds,
            Some(&val),
            &recipe,
            1,
            dir.path(),
            false,
            None,
            std::slice::from_ref(&device),
            |_| {},
        )
        .unwrap();
        assert_eq!(s.metric, "ap");
        assert!((0.0..=1.0).contains(&s.best_top1), "{s:?}");
        let lines: Vec<EpochMetrics> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let loss = |k: &str| {
            lines[1]
                .losses
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
        };
        for k in ["focal", "box_l1"] {
            assert!(loss(k).is_some_and(f64::is_finite), "{k}: {:?}", lines[1]);
        }
        let (ap, ap50) = evaluate(&model, &ds, &device).unwrap();
        assert!((0.0..=1.0).contains(&ap) && (0.0..=1.0).contains(&ap50));
    }

    /// A DeepLabV3 student trains on digit scenes with the segmentation task, from scratch and
    /// distilled per pixel (KD on every counted pixel of the 1/8 grid): the loss has the pixel
    /// CE and the auxiliary head's term, the validation part chooses the best epoch by mIoU,
    /// the test split reports mIoU, pixel accuracy and per-class IoU, all finite and in [0, 1].
    #[test]
    fn a_segmenter_trains_on_scenes() {
        let device = Device::flex();
        let mut ds = DatasetSpec::Scenes(Box::new(DatasetSpec::Digits))
            .load()
            .unwrap();
        let val = ds.train.subset(&(16..24).collect::<Vec<_>>()).unwrap();
        ds.train = ds.train.subset(&(0..16).collect::<Vec<_>>()).unwrap();
        ds.test = ds.test.subset(&(0..8).collect::<Vec<_>>()).unwrap();
        let spec = ModelSpec {
            name: ModelName::Deeplabv3Resnet18,
            in_channels: 1,
            num_classes: 11,
            image_size: 48,
        };
        let recipe = Recipe {
            length: Length::Epochs(2),
            batch_size: 8,
            lr: 0.01,
            ..Recipe::preset("digits").unwrap()
        };
        let teacher = spec.init(&device).unwrap();
        let kd = DistillerSpec::baseline("kd").unwrap();
        for distilled in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let setup = distilled.then_some(TeacherSetup {
                model: &teacher,
                name: "deeplabv3_resnet18",
                spec: &kd,
            });
            let (_, s) = train(
                &spec,
                setup,
                &ds,
                Some(&val),
                &recipe,
                1,
                dir.path(),
                false,
                None,
                std::slice::from_ref(&device),
                |_| {},
            )
            .unwrap();
            assert_eq!(s.metric, "miou");
            assert!((0.0..=1.0).contains(&s.best_top1), "{s:?}");
            let lines: Vec<EpochMetrics> =
                std::fs::read_to_string(dir.path().join("metrics.jsonl"))
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
            assert_eq!(lines.len(), 2);
            let last = &lines[1];
            let loss = |k: &str| last.losses.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            for k in ["ce", "aux"] {
                assert!(loss(k).is_some_and(f64::is_finite), "{k}: {last:?}");
            }
            assert_eq!(loss("logits").is_some(), distilled, "{last:?}");
            assert!(lines.iter().all(|m| m.metrics.contains_key("val_miou")));
            for k in ["miou", "pixel_acc", "iou_0"] {
                assert!((0.0..=1.0).contains(&last.metric(k)), "{k}: {last:?}");
            }
            assert_eq!(s.last_top1, last.metric("miou"));
        }
    }

    /// With a validation part, the best epoch is the one with the best validation top-1 (the
    /// first of ties), and the reported top-1 is the test split's at that epoch, also across a
    /// kill and resume (the best weights travel in the checkpoint): it equals the test top-1 of
    /// a second run stopped after that epoch. `metrics.jsonl` holds the validation metrics of
    /// every epoch and the test split's only after the last (the last weights' and, as
    /// `best_epoch_top1`, the best epoch's).
    #[test]
    fn the_validation_part_chooses_the_best_epoch() {
        let device = Device::flex();
        let mut ds = DatasetSpec::Digits.load().unwrap();
        let (rest, val) = autokd_data::stratified_split(&ds.train, 10, 0.2, 0).unwrap();
        ds.train = autokd_data::stratified_subset(&rest, 10, 60, 0).unwrap();
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        // A learning rate high enough that the validation top-1 does not rise every epoch.
        let recipe = Recipe {
            length: Length::Epochs(10),
            lr: 0.2,
            ..Recipe::preset("digits").unwrap()
        };
        let run = |dir: &Path, resume: bool, stop_after: Option<usize>| {
            train(
                &spec,
                None,
                &ds,
                Some(&val),
                &recipe,
                1,
                dir,
                resume,
                stop_after,
                std::slice::from_ref(&device),
                |_| {},
            )
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let first = run(dir.path(), false, Some(9)).1;
        assert_eq!(first.epochs_run, 9);
        let s = run(dir.path(), true, None).1;
        assert_eq!(s.epochs_run, 1);
        let lines: Vec<EpochMetrics> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10);
        let mut best = 0;
        for (i, m) in lines.iter().enumerate() {
            assert!(m.metrics.contains_key("val_loss"));
            assert_eq!(m.metrics.contains_key("top1"), i == 9, "epoch {}", i + 1);
            if m.metric("val_top1") > lines[best].metric("val_top1") {
                best = i;
            }
        }
        assert_eq!(s.best_epoch, best + 1, "{lines:?}");
        // This seeded run's best epoch comes before the kill (after 9 epochs): the resume
        // carried its weights over.
        assert!(best + 1 < 9, "{lines:?}");
        assert_eq!(s.best_top1, lines[9].metric("best_epoch_top1"));
        assert_eq!(s.last_top1, lines[9].metric("top1"));
        let again = tempfile::tempdir().unwrap();
        let (at_best, _) = run(again.path(), false, Some(best + 1));
        assert_eq!(s.best_top1, accuracy(&at_best, &ds, &device).unwrap());
        // The validation images are not trained on: 287 held out, 200 trained.
        assert_eq!((val.len(), ds.train.len()), (287, 600));
    }

    /// A teacher's recipe as a search config gives it (`[teacher_training]`) trains through
    /// [`train`]: the schedule drops at its milestone, the loss falls, and a few epochs of a small
    /// ResNet reach far above chance.
    #[test]
    fn a_small_resnet_learns_the_digits_with_a_supervised_config() {
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let cfg: Recipe = toml::from_str("epochs = 4\nmilestones = [3]\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut epochs = Vec::new();
        let (model, summary) = train(
            &spec,
            None,
            &ds,
            None,
            &cfg,
            1,
            dir.path(),
            false,
            None,
            std::slice::from_ref(&device),
            |e| {
                if let TrainEvent::Epoch(m) = e {
                    epochs.push(m.clone());
                }
            },
        )
        .unwrap();
        assert_eq!(epochs.len(), 4);
        assert!((epochs[3].lr - 0.005).abs() < 1e-12);
        let loss = |m: &EpochMetrics| m.losses.iter().find(|(k, _)| k == "ce").unwrap().1;
        assert!(loss(&epochs[3]) < loss(&epochs[0]), "{epochs:?}");
        // Chance is 0.1.
        let acc = accuracy(&model, &ds, &device).unwrap();
        assert!(acc > 0.6, "{acc}");
        assert_eq!(acc, summary.last_top1);
    }

    /// Issue 12 item 4: `--resume` without a checkpoint is an error that leaves `metrics.jsonl`
    /// alone; a crash between the checkpoint's two renames resumes from `checkpoint.old/`; a
    /// finished run resumed reports its real last accuracy; zero epochs are refused.
    #[test]
    fn resume_edge_cases() {
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let ds = Dataset {
            train: autokd_data::stratified_subset(&ds.train, 10, 6, 0).unwrap(),
            ..ds
        };
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let recipe = Recipe {
            length: Length::Epochs(2),
            batch_size: 32,
            ..Recipe::preset("digits").unwrap()
        };
        let go = |dir: &Path, recipe: &Recipe, resume: bool| {
            train(
                &spec,
                None,
                &ds,
                None,
                recipe,
                1,
                dir,
                resume,
                None,
                std::slice::from_ref(&device),
                |_| {},
            )
        };
        let tmp = tempfile::tempdir().unwrap();
        // No checkpoint: an error naming the folder; metrics.jsonl untouched.
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("metrics.jsonl"), "{\"epoch\":1}\n").unwrap();
        let err = go(&empty, &recipe, true).unwrap_err().to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
        assert_eq!(
            std::fs::read_to_string(empty.join("metrics.jsonl")).unwrap(),
            "{\"epoch\":1}\n"
        );
        // A finished run resumed: nothing to run, the real last accuracy.
        let done = tmp.path().join("done");
        let (_, first) = go(&done, &recipe, false).unwrap();
        let (_, again) = go(&done, &recipe, true).unwrap();
        assert_eq!(again.epochs_run, 0);
        assert_eq!(again.last_top1, first.last_top1);
        assert_eq!(again.best_top1, first.best_top1);
        assert!(again.last_top1 > 0.0);
        // Killed between moving checkpoint/ aside and renaming the new one in.
        std::fs::rename(done.join("checkpoint"), done.join("checkpoint.old")).unwrap();
        let (_, old) = go(&done, &recipe, true).unwrap();
        assert_eq!((old.epochs_run, old.last_top1), (0, first.last_top1));
        // A checkpoint of another student is refused, saying why.
        let other = crate::testing::digits_spec(ModelName::Resnet14);
        let err = train(
            &other,
            None,
            &ds,
            None,
            &recipe,
            1,
            &done,
            true,
            None,
            std::slice::from_ref(&device),
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("model.bpk") && err.contains("does not fit this run's student"),
            "{err}"
        );
        // Zero epochs.
        let zero = Recipe {
            length: Length::Epochs(0),
            ..recipe.clone()
        };
        let err = go(&tmp.path().join("zero"), &zero, false)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "recipe: epochs must be at least 1");
    }
}
