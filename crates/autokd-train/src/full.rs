//! Full training (`autokd train`): a model from scratch, or a student distilled from a frozen
//! online teacher with any [`DistillerSpec`]; recipes as presets; metrics per epoch as JSON lines;
//! checkpoints (model with distiller parts, optimizer, epoch) every N epochs and at the end;
//! `resume` continues a killed run and reaches the same weights as an uninterrupted one.
//!
//! The learning rate is a pure function of the epoch (multi-step or cosine with warm-up), and
//! every random stream is seeded from `(seed, epoch)`: the loader's order and augmentation, and
//! the distiller's own MGD mask streams reseeded at each epoch start. A checkpoint therefore needs
//! no RNG state beyond its epoch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autokd_data::{Augment, DataLoader, Dataset, LoaderConfig, Transform};
use autokd_distill::{Distiller, DistillerSpec};
use autokd_models::{Backbone, Intermediates, Model, ModelSpec, TapRequest};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::step::{DistillStudent, data_parallel_step, distill_step};

/// Optimizer of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
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

/// Learning-rate schedule of a recipe, by epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Schedule {
    /// `lr · gamma^(number of milestones ≤ epoch)`.
    MultiStep {
        /// Epochs at which the rate drops.
        milestones: Vec<usize>,
        /// Factor per milestone.
        gamma: f64,
    },
    /// Linear warm-up, then half a cosine down to 0.
    Cosine {
        /// Warm-up epochs.
        warmup_epochs: usize,
    },
}

/// A training recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Schedule.
    pub schedule: Schedule,
}

/// Names of the recipe presets.
pub const PRESETS: [&str; 5] = ["cifar100", "imagenet", "deit", "digits", "fashion-mnist"];

impl Recipe {
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
        Ok(match name {
            "cifar100" => Self {
                epochs: 240,
                batch_size: 64,
                lr: 0.05,
                optimizer: sgd(5e-4),
                schedule: steps(&[150, 180, 210]),
            },
            "imagenet" => Self {
                epochs: 100,
                batch_size: 256,
                lr: 0.1,
                optimizer: sgd(1e-4),
                schedule: steps(&[30, 60, 90]),
            },
            "deit" => Self {
                epochs: 300,
                batch_size: 128,
                lr: 5e-4,
                optimizer: OptimizerKind::AdamW { weight_decay: 0.05 },
                schedule: Schedule::Cosine { warmup_epochs: 5 },
            },
            "digits" => Self {
                epochs: 30,
                batch_size: 64,
                lr: 0.05,
                optimizer: sgd(5e-4),
                schedule: steps(&[20, 25]),
            },
            "fashion-mnist" => Self {
                epochs: 15,
                batch_size: 128,
                lr: 0.1,
                optimizer: sgd(5e-4),
                schedule: steps(&[10, 13]),
            },
            other => {
                return Err(TrainError::Config(format!(
                    "unknown recipe `{other}`; expected one of: {}",
                    PRESETS.join(", ")
                )));
            }
        })
    }

    /// The learning rate of `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match &self.schedule {
            Schedule::MultiStep { milestones, gamma } => {
                self.lr * gamma.powi(milestones.iter().filter(|&&m| m <= epoch).count() as i32)
            }
            Schedule::Cosine { warmup_epochs } => {
                if epoch < *warmup_epochs {
                    self.lr * (epoch + 1) as f64 / *warmup_epochs as f64
                } else {
                    let span = (self.epochs - warmup_epochs).max(1) as f64;
                    let t = (epoch - warmup_epochs) as f64 / span;
                    0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }

    pub(crate) fn optimizer(&self) -> ModuleOptimizer {
        match &self.optimizer {
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => sgd(*momentum, *weight_decay),
            OptimizerKind::AdamW { weight_decay } => AdamWConfig::new()
                .with_weight_decay(*weight_decay as f32)
                .init(),
        }
    }
}

/// SGD with momentum (no dampening, as PyTorch's default) and L2 weight decay: the optimizer
/// of the CIFAR/ImageNet recipes, the supervised trainer and the proxy.
pub fn sgd(momentum: f64, weight_decay: f64) -> ModuleOptimizer {
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(momentum)
                .with_dampening(0.0),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(weight_decay as f32)))
        .init()
}

/// A teacher's recipe as a search config gives it (`[teacher_training]`): SGD with momentum and
/// weight decay, ×`gamma` at each milestone, and the seed; trained by [`train`] through
/// [`SupervisedConfig::recipe`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisedConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Epochs at which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// Learning-rate factor at each milestone.
    pub gamma: f64,
    /// Seed of initialization, order and augmentation.
    pub seed: u64,
}

impl Default for SupervisedConfig {
    /// A small recipe that trains a CIFAR-style ResNet on the digits in seconds.
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            milestones: vec![20, 25],
            gamma: 0.1,
            seed: 0,
        }
    }
}

impl SupervisedConfig {
    /// The same schedule and optimizer as a [`Recipe`]: SGD, ×`gamma` at each milestone.
    pub fn recipe(&self) -> Recipe {
        Recipe {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: OptimizerKind::Sgd {
                momentum: self.momentum,
                weight_decay: self.weight_decay,
            },
            schedule: Schedule::MultiStep {
                milestones: self.milestones.clone(),
                gamma: self.gamma,
            },
        }
    }
}

/// Top-1 accuracy of `model` (its `valid()` copy) on the test split of `dataset`.
pub fn accuracy(model: &Model, dataset: &Dataset, device: &Device) -> Result<f64> {
    Ok(evaluate(model, dataset, device)?.0)
}

/// Metrics of one epoch (one line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Learning rate.
    pub lr: f64,
    /// Mean of each loss term over the epoch (`ce`, `feat0`, …, `logits`) and `total`.
    pub losses: Vec<(String, f64)>,
    /// Test top-1 accuracy.
    pub top1: f64,
    /// Test top-5 accuracy.
    pub top5: f64,
    /// Training images per second.
    pub images_per_s: f64,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Best test top-1 over epochs.
    pub best_top1: f64,
    /// Test top-1 after the last epoch.
    pub last_top1: f64,
    /// Epochs run in this call (after a resume, only the remaining ones).
    pub epochs_run: usize,
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

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    best_top1: f64,
    /// Test top-1 after `epoch` (absent in checkpoints written before it was recorded).
    #[serde(default)]
    last_top1: Option<f64>,
}

/// The newest complete checkpoint of a run folder: `checkpoint/`, or `checkpoint.old/` when a
/// crash came between moving the old one aside and renaming the new one in. [`train`] with
/// `resume` continues from it.
pub fn find_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| run_dir.join(d))
        .find(|d| d.join("state.json").is_file() && d.join("model.bpk").is_file())
}

impl Recipe {
    /// Checks the recipe: at least one epoch, a positive batch size, learning rate and gamma, and
    /// a cosine warm-up shorter than the run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(format!("recipe: {m}")));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
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
            Schedule::Cosine { warmup_epochs } if *warmup_epochs >= self.epochs => bad(format!(
                "warmup_epochs {warmup_epochs} must be below epochs {}",
                self.epochs
            )),
            _ => Ok(()),
        }
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("{}: {e}", path.display()))
}

/// Top-1 and top-5 accuracy of a model on the test split.
pub fn evaluate(model: &Model, dataset: &Dataset, device: &Device) -> Result<(f64, f64)> {
    let model = model.valid();
    let loader = DataLoader::new(
        dataset.test.clone(),
        Transform::eval(&dataset.info)?,
        LoaderConfig {
            batch_size: 256,
            shuffle: false,
            workers: 1,
            ..LoaderConfig::default()
        },
    )?;
    let k = dataset.info.num_classes.min(5);
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    for batch in loader.epoch(0, device) {
        let batch = batch?;
        let b = batch.positions.len();
        let logits = model
            .forward_intermediates(batch.images, &TapRequest::none())
            .eval_logits();
        let targets = batch.targets.reshape([b, 1]);
        let sorted = logits.argsort_descending(1).narrow(1, 0, k); // [B, k]
        let hits = sorted.equal(targets.repeat_dim(1, k)).int(); // [B, k]
        top1 += hits.clone().narrow(1, 0, 1).sum().into_scalar::<i64>() as usize;
        top5 += hits.sum().into_scalar::<i64>() as usize;
        n += b;
    }
    let n = n.max(1) as f64;
    Ok((top1 as f64 / n, top5 as f64 / n))
}

/// What [`train`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum TrainEvent<'a> {
    /// A training step finished.
    Step {
        /// 0-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// Total loss of the step.
        loss: f64,
    },
    /// An epoch finished and was evaluated.
    Epoch(&'a EpochMetrics),
}

/// Trains `student` (from scratch, or distilled when `teacher` is given) on `dataset`, writing
/// `metrics.jsonl` and `checkpoint/` into `run_dir`. With `resume`, continues from the
/// checkpoint there. `stop_after` ends the call after that many epochs (as a kill would; tests).
#[allow(clippy::too_many_arguments)]
pub fn train(
    student: &ModelSpec,
    teacher: Option<TeacherSetup<'_>>,
    dataset: &Dataset,
    recipe: &Recipe,
    seed: u64,
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
    let ad = device.clone().autodiff();
    let guard = crate::INIT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ad.seed(seed);
    let model = student.init(&ad)?;
    let vanilla = DistillerSpec::baseline("vanilla").map_err(TrainError::from)?;
    let (spec, t_info, t_name) = match &teacher {
        Some(t) => (t.spec.clone(), t.model.feature_info(), t.name.to_string()),
        None => (vanilla, Vec::new(), "none".to_string()),
    };
    let distiller = Distiller::new(
        &spec,
        student.name.as_str(),
        &model.feature_info(),
        &t_name,
        &t_info,
        &ad,
    )?;
    crate::force_init(&model);
    crate::force_init(&distiller);
    drop(guard);
    let (_, t_req) = distiller.tap_requests();
    let frozen = teacher.as_ref().map(|t| t.model.valid());
    let mut net = DistillStudent {
        student: model,
        distiller,
    };
    let mut optim = recipe.optimizer();
    std::fs::create_dir_all(run_dir).map_err(|e| io(run_dir, e))?;
    let ckpt = run_dir.join("checkpoint");
    let metrics_path = run_dir.join("metrics.jsonl");
    let (mut start, mut best, mut last) = (0usize, 0.0f64, 0.0f64);
    if resume {
        let Some(ckpt) = find_checkpoint(run_dir) else {
            return Err(TrainError::Config(format!(
                "--resume: {} holds no checkpoint (checkpoint/state.json and model.bpk, or checkpoint.old/); run without --resume to start from scratch",
                run_dir.display()
            )));
        };
        let state_path = ckpt.join("state.json");
        let state: CheckpointState = serde_json::from_str(
            &std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?,
        )
        .map_err(|e| io(&state_path, e))?;
        let mut store = BurnpackStore::from_file(ckpt.join("model.bpk"));
        net.load_from(&mut store)
            .map_err(|e| io(&ckpt.join("model.bpk"), e))?;
        optim = optim
            .load(ckpt.join("optim.bpk"))
            .map_err(|e| io(&ckpt.join("optim.bpk"), format!("{e:?}")))?;
        start = state.epoch;
        best = state.best_top1;
        // Keep the metrics of the epochs the checkpoint covers; without them the run's record
        // would silently lose epochs.
        let text = std::fs::read_to_string(&metrics_path).map_err(|e| io(&metrics_path, e))?;
        let kept: Vec<&str> = text.lines().take(start).collect();
        if kept.len() < start {
            return Err(io(
                &metrics_path,
                format!(
                    "holds {} epochs, the checkpoint {start}; the run folder is inconsistent",
                    kept.len()
                ),
            ));
        }
        last = match state.last_top1 {
            Some(v) => v,
            None => kept
                .last()
                .and_then(|l| serde_json::from_str::<EpochMetrics>(l).ok())
                .map_or(0.0, |m| m.top1),
        };
        write_file_atomic(
            &metrics_path,
            kept.iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .as_bytes(),
        )?;
    } else {
        write_file_atomic(&metrics_path, b"")?;
    }
    let loader = DataLoader::new(
        dataset.train.clone(),
        Transform::train(&dataset.info, Augment::for_dataset(&dataset.info))?,
        LoaderConfig {
            batch_size: recipe.batch_size,
            shuffle: true,
            seed,
            workers: 1,
            ..LoaderConfig::default()
        },
    )?;
    let mut run = 0usize;
    for epoch in start..recipe.epochs {
        if stop_after.is_some_and(|s| run >= s) {
            break;
        }
        net.distiller
            .seed_masks(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let lr = recipe.lr_at(epoch);
        let clock = Instant::now();
        let mut sums: Vec<(String, f64)> = Vec::new();
        let (mut steps, mut images) = (0usize, 0usize);
        for batch in loader.host_epoch(epoch as u64) {
            let batch = batch?;
            let b = batch.positions.len();
            let plain = batch.clone().to_device(device);
            let t_out = match &frozen {
                Some(t) => t.forward_intermediates(plain.images.clone(), &t_req),
                None => Intermediates::no_teacher(b, dataset.info.num_classes, device),
            };
            let (n2, losses) = if devices.len() > 1 {
                data_parallel_step(
                    net,
                    &mut optim,
                    lr,
                    plain.images,
                    plain.targets,
                    &t_out,
                    devices,
                )?
            } else {
                let batch = batch.to_device(&ad);
                distill_step(net, &mut optim, lr, batch.images, batch.targets, &t_out)?
            };
            net = n2;
            if sums.is_empty() {
                sums = losses.terms.iter().map(|(k, _)| (k.clone(), 0.0)).collect();
                sums.push(("total".into(), 0.0));
            }
            for (slot, (_, v)) in sums.iter_mut().zip(
                losses
                    .terms
                    .iter()
                    .chain(std::iter::once(&("total".to_string(), losses.total))),
            ) {
                slot.1 += v;
            }
            steps += 1;
            images += b;
            on_event(TrainEvent::Step {
                epoch,
                step: steps,
                steps: loader.num_batches(),
                loss: losses.total,
            });
        }
        // Training throughput: the evaluation below is not part of it.
        let images_per_s = images as f64 / clock.elapsed().as_secs_f64();
        let (top1, top5) = evaluate(&net.student, dataset, device)?;
        best = best.max(top1);
        last = top1;
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            losses: sums
                .into_iter()
                .map(|(k, v)| (k, v / steps.max(1) as f64))
                .collect(),
            top1,
            top5,
            images_per_s,
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&metrics_path)
            .map_err(|e| io(&metrics_path, e))?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(&m).map_err(|e| io(&metrics_path, e))?
        )
        .map_err(|e| io(&metrics_path, e))?;
        on_event(TrainEvent::Epoch(&m));
        run += 1;
        if (epoch + 1) % checkpoint_every.max(1) == 0 || epoch + 1 == recipe.epochs {
            write_checkpoint(
                &ckpt,
                &net,
                &optim,
                &CheckpointState {
                    epoch: epoch + 1,
                    best_top1: best,
                    last_top1: Some(last),
                },
            )?;
        }
    }
    Ok((
        net.student.valid(),
        TrainSummary {
            best_top1: best,
            last_top1: last,
            epochs_run: run,
        },
    ))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Writes the checkpoint into a fresh folder, then swaps it in, so a kill never leaves a
/// half-written checkpoint (a kill between the two renames leaves `checkpoint.old/`, which
/// resuming falls back to).
fn write_checkpoint(
    dir: &Path,
    net: &DistillStudent,
    optim: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<()> {
    let tmp: PathBuf = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let mut store = BurnpackStore::from_file(tmp.join("model.bpk")).overwrite(true);
    net.save_into(&mut store).map_err(|e| io(&tmp, e))?;
    optim
        .save(tmp.join("optim.bpk"))
        .map_err(|e| io(&tmp, format!("{e:?}")))?;
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_string(state).map_err(|e| io(&tmp, e))?,
    )
    .map_err(|e| io(&tmp, e))?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use autokd_data::DatasetSpec;
    use autokd_models::ModelName;

    #[test]
    fn presets_and_schedules() {
        let _serial = crate::serial();
        let c = Recipe::preset("cifar100").unwrap();
        assert_eq!((c.epochs, c.batch_size), (240, 64));
        assert!((c.lr_at(149) - 0.05).abs() < 1e-12 && (c.lr_at(150) - 0.005).abs() < 1e-12);
        assert!((c.lr_at(210) - 0.05e-3).abs() < 1e-12);
        let i = Recipe::preset("imagenet").unwrap();
        assert!((i.lr_at(95) - 1e-4).abs() < 1e-12);
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
    }

    /// A killed run resumed from its checkpoint reaches exactly the weights of an uninterrupted
    /// run; the online teacher's BatchNorm statistics and weights never move.
    #[test]
    fn resume_reaches_the_same_weights_and_the_teacher_stays_frozen() {
        let _serial = crate::serial();
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
            epochs: 3,
            batch_size: 128,
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
            &recipe,
            7,
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
                .all(|m| m.top5 >= m.top1 && m.images_per_s > 0.0)
        );
        // (serde_json's default float parser may be 1 ULP off.)
        assert!((sa.last_top1 - lines[2].top1).abs() < 1e-12);
        // Killed after 2 epochs, then resumed.
        let split = dir.path().join("split");
        let (_, s1) = train(
            &spec(ModelName::Resnet8),
            setup(),
            &ds,
            &recipe,
            7,
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
            &recipe,
            7,
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
        let _serial = crate::serial();
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let recipe = Recipe {
            epochs: 2,
            ..Recipe::preset("digits").unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut step_events, mut epoch_events) = (Vec::new(), Vec::new());
        let (m, s) = train(
            &spec,
            None,
            &ds,
            &recipe,
            0,
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

    /// A teacher's supervised config trains through [`train`]: the schedule drops at its
    /// milestone, the loss falls, and a few epochs of a small ResNet reach far above chance.
    #[test]
    fn a_small_resnet_learns_the_digits_with_a_supervised_config() {
        let _serial = crate::serial();
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let cfg = SupervisedConfig {
            epochs: 4,
            milestones: vec![3],
            ..SupervisedConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut epochs = Vec::new();
        let (model, summary) = train(
            &spec,
            None,
            &ds,
            &cfg.recipe(),
            cfg.seed,
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
        let _serial = crate::serial();
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let ds = Dataset {
            train: autokd_data::stratified_subset(&ds.train, 10, 6, 0).unwrap(),
            ..ds
        };
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let recipe = Recipe {
            epochs: 2,
            batch_size: 32,
            ..Recipe::preset("digits").unwrap()
        };
        let go = |dir: &Path, recipe: &Recipe, resume: bool| {
            train(
                &spec,
                None,
                &ds,
                recipe,
                0,
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
        // Zero epochs.
        let zero = Recipe {
            epochs: 0,
            ..recipe.clone()
        };
        let err = go(&tmp.path().join("zero"), &zero, false)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "recipe: epochs must be at least 1");
    }
}
