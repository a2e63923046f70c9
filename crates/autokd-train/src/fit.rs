//! The one training loop (ARCHITECTURE §6). Teacher training, full distillation, proxy trials
//! and the benchmarks' steps all go through [`Fit::run`] and its step ([`distill_step`] /
//! [`data_parallel_step`]): epochs over a loader, the teacher's outputs (none, online, or
//! cached), the learning rate of each epoch, MGD mask seeding, data parallelism, divergence
//! checks, evaluation after each epoch, `metrics.jsonl`, checkpoints and resume, and progress
//! events, each in this one place.
//!
//! The learning rate is a function of the epoch and every random stream is seeded from the
//! epoch (the loader's order and augmentation; the mask streams with [`MaskSeeds::PerEpoch`]),
//! so a checkpoint needs no RNG state beyond its epoch and a resumed run reaches the weights of
//! an uninterrupted one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autokd_data::{DataLoader, ItemTransform, Split};
use autokd_models::{Backbone, Intermediates};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};

use crate::cache::TeacherCache;
use crate::error::{Result, TrainError};
use crate::full::{Length, Recipe};
use crate::step::{DistillStudent, data_parallel_step, distill_step};
use crate::task::{EvalOptions, Net, Task};

/// Where the teacher's outputs of each batch come from.
#[derive(Clone, Copy)]
pub enum TeacherFeed<'a> {
    /// No teacher (a model trained from scratch): zeros that no term reads.
    None,
    /// A frozen teacher run on every batch (give its `valid()` copy).
    Online(&'a dyn Backbone),
    /// Outputs cached by position in the training split.
    Cache(&'a TeacherCache),
}

/// How the distiller's MGD mask streams are seeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSeeds {
    /// Once, before the first epoch (a proxy trial).
    Once(u64),
    /// At each epoch start from `(seed, epoch)`, so that a resumed run draws the same masks.
    PerEpoch(u64),
}

/// The split evaluated after each epoch.
#[derive(Clone, Copy)]
pub struct EvalSet<'a> {
    /// The split.
    pub split: &'a Split,
    /// Its transform (no augmentation).
    pub transform: &'a ItemTransform,
    /// Batch size and loader threads.
    pub options: EvalOptions,
}

/// A run folder: `metrics.jsonl` and `checkpoint/`.
#[derive(Debug, Clone, Copy)]
pub struct RunDir<'a> {
    /// The folder.
    pub path: &'a Path,
    /// Checkpoint every this many epochs (and after the last).
    pub checkpoint_every: usize,
    /// Continue from the folder's checkpoint.
    pub resume: bool,
}

/// Metrics of one epoch (one line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Learning rate (of the epoch's first step, for an iteration recipe).
    pub lr: f64,
    /// Mean of each loss term over the epoch (`ce`, `feat0`, …, `logits`) and `total`.
    pub losses: Vec<(String, f64)>,
    /// The task's metrics on the evaluated split (classification: `top1`, `top5`; none
    /// without an evaluated split), written at the top level of the JSON line.
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// Training images per second.
    pub images_per_s: f64,
}

impl EpochMetrics {
    /// A metric by name (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(0.0)
    }
}

/// What [`Fit::run`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum TrainEvent<'a> {
    /// A training step finished.
    Step {
        /// 0-based epoch.
        epoch: usize,
        /// Epochs of the run.
        epochs: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Steps per epoch.
        steps: usize,
        /// Total loss of the step.
        loss: f64,
    },
    /// An epoch finished (and was evaluated, given a split to evaluate).
    Epoch(&'a EpochMetrics),
}

/// How a [`Fit::run`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOutcome {
    /// Epochs run in this call (after a resume, only the remaining ones).
    pub epochs_run: usize,
    /// The task's score metric at the best epoch (0 without evaluation): the epoch whose
    /// `select` score is best when a selection split is given (the first of ties), else the
    /// best `eval` score over epochs.
    pub best: f64,
    /// The best epoch (from 1; 0 without evaluation).
    pub best_epoch: usize,
    /// Its value after the last epoch.
    pub last: f64,
    /// The loss terms of the last finished step.
    pub last_losses: Vec<(String, f64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    /// Best score metric so far (named for classification's, which it was first).
    best_top1: f64,
    /// Score metric after `epoch` (absent in checkpoints written before it was recorded).
    #[serde(default)]
    last_top1: Option<f64>,
    /// The best epoch so far (absent in checkpoints written before it was recorded).
    #[serde(default)]
    best_epoch: Option<usize>,
    /// The selection split's score at the best epoch (runs with a selection split).
    #[serde(default)]
    best_select: Option<f64>,
}

/// The newest complete checkpoint of a run folder: `checkpoint/`, or `checkpoint.old/` when a
/// crash came between moving the old one aside and renaming the new one in. A resumed
/// [`Fit::run`] continues from it.
pub fn find_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| run_dir.join(d))
        .find(|d| d.join("state.json").is_file() && d.join("model.bpk").is_file())
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("{}: {e}", path.display()))
}

/// One training: what to run, how, and what to record.
pub struct Fit<'a> {
    /// The task (its loss terms, metrics and score).
    pub task: &'a dyn Task,
    /// Training batches, one epoch per call of `host_epoch(epoch)`.
    pub loader: &'a DataLoader,
    /// The run's length and learning rate of each epoch or step ([`Recipe::lr_at`]); its
    /// optimizer is the one given to [`Fit::run`] (a resumed run starts at its checkpoint's
    /// epoch).
    pub recipe: &'a Recipe,
    /// The teacher's outputs.
    pub teacher: TeacherFeed<'a>,
    /// Mask seeding.
    pub masks: MaskSeeds,
    /// Devices (data parallel over several).
    pub devices: &'a [Device],
    /// `Some(f)`: a non-finite loss, or one past `f ×` the first step's, ends the run with
    /// [`TrainError::Diverged`] (a proxy trial is then rejected); `None`: a non-finite loss is
    /// [`TrainError::NonFinite`].
    pub explode_factor: Option<f64>,
    /// The split evaluated after each epoch, if any (see `eval_each_epoch`).
    pub eval: Option<EvalSet<'a>>,
    /// Whether `eval` runs after every epoch. `false` with a selection split: `eval` runs once,
    /// after the last epoch, on the last weights and on the weights of the best epoch (kept
    /// from that epoch on, and in each checkpoint as `best.bpk`), which is all that the outcome
    /// reads: the last line of `metrics.jsonl` holds both, the best epoch's as
    /// `best_epoch_<metric>`. Without a selection split `eval` chooses the best epoch and runs
    /// after every epoch regardless.
    pub eval_each_epoch: bool,
    /// The split that chooses the best epoch (a validation part of the training split, never
    /// the test set), evaluated after each epoch with its metrics written as `val_<name>` and
    /// its loss as `val_loss`. Without it the best epoch is the one with the best `eval` score.
    pub select: Option<EvalSet<'a>>,
    /// The run folder, if any.
    pub run_dir: Option<RunDir<'a>>,
    /// End after this many epochs in this call (as a kill would; tests).
    pub stop_after: Option<usize>,
}

impl Fit<'_> {
    /// Trains `net` with `optim`; returns the trained student and distiller and how it ended.
    pub fn run<N: Net>(
        &self,
        mut net: DistillStudent<N>,
        mut optim: ModuleOptimizer,
        on_event: &mut dyn FnMut(TrainEvent<'_>),
    ) -> Result<(DistillStudent<N>, FitOutcome)> {
        let Some(device) = self.devices.first() else {
            return Err(TrainError::Config("no device to train on".into()));
        };
        let ad = device.clone().autodiff();
        let (mut start, mut best, mut last) = (0usize, 0.0f64, 0.0f64);
        let (mut best_epoch, mut best_select) = (0usize, f64::NEG_INFINITY);
        // Evaluate `eval` only at the end, on the last and the best epoch's weights.
        let deferred = !self.eval_each_epoch && self.select.is_some() && self.eval.is_some();
        let mut best_weights: Option<N> = None;
        if let Some(dir) = &self.run_dir {
            std::fs::create_dir_all(dir.path).map_err(|e| io(dir.path, e))?;
            let metrics_path = dir.path.join("metrics.jsonl");
            if dir.resume {
                let state;
                (net, optim, state) = resume(dir.path, net, optim)?;
                if deferred {
                    best_weights = resume_best(dir.path, &net.student)?;
                }
                (start, best) = (state.epoch, state.best_top1);
                best_epoch = state.best_epoch.unwrap_or(0);
                best_select = state.best_select.unwrap_or(f64::NEG_INFINITY);
                // Keep the metrics of the epochs the checkpoint covers; without them the run's
                // record would silently lose epochs.
                let text =
                    std::fs::read_to_string(&metrics_path).map_err(|e| io(&metrics_path, e))?;
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
                        .map_or(0.0, |m| m.metric(self.task.score_metric())),
                };
                let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
                write_file_atomic(&metrics_path, text.as_bytes())?;
            } else {
                write_file_atomic(&metrics_path, b"")?;
            }
        }
        if let MaskSeeds::Once(seed) = self.masks {
            net.distiller.seed_masks(seed);
            net.student.seed_dropout(seed);
        }
        let (_, t_req) = net.distiller.tap_requests();
        let steps_per_epoch = self.loader.num_batches();
        let (epochs, total_steps) = self.recipe.length.plan(steps_per_epoch);
        let per_step = matches!(self.recipe.length, Length::Iterations(_));
        let mut first: Option<f64> = None;
        let mut last_losses = Vec::new();
        let mut run = 0usize;
        for epoch in start..epochs {
            if self.stop_after.is_some_and(|s| run >= s) {
                break;
            }
            if let MaskSeeds::PerEpoch(seed) = self.masks {
                let s = seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                net.distiller.seed_masks(s);
                net.student.seed_dropout(s);
            }
            // The optimizer steps before this epoch; an iteration recipe's last epoch ends
            // part-way.
            let done = epoch * steps_per_epoch;
            let epoch_steps = steps_per_epoch.min(total_steps.saturating_sub(done));
            let rate = |step: usize| {
                self.recipe
                    .lr_at_step(if per_step { done + step } else { epoch }, done + step)
            };
            let clock = Instant::now();
            let mut sums: Vec<(String, f64)> = Vec::new();
            let (mut steps, mut images) = (0usize, 0usize);
            for batch in self.loader.host_epoch(epoch as u64).take(epoch_steps) {
                let batch = batch?;
                let lr = rate(steps);
                let b = batch.positions.len();
                let teacher = match self.teacher {
                    TeacherFeed::Cache(cache) => cache.lookup(&batch.positions, &t_req)?,
                    TeacherFeed::Online(t) => {
                        let plain = batch.clone().to_device(device);
                        t.forward_intermediates(plain.images, &t_req)
                    }
                    TeacherFeed::None => Intermediates::no_teacher(b, 1, device),
                };
                let step = if self.devices.len() > 1 {
                    let plain = batch.to_device(device);
                    data_parallel_step(
                        net,
                        &mut optim,
                        lr,
                        self.task,
                        &plain,
                        &teacher,
                        self.devices,
                    )
                } else {
                    let batch = batch.to_device(&ad);
                    distill_step(net, &mut optim, lr, self.task, &batch, &teacher)
                };
                let (n2, losses) = match (step, self.explode_factor) {
                    (Ok(x), _) => x,
                    (Err(TrainError::NonFinite(why)), Some(_)) => {
                        return Err(TrainError::Diverged {
                            reason: format!("epoch {epoch}: loss is not finite ({why})"),
                            last_losses,
                        });
                    }
                    (Err(e), _) => return Err(e),
                };
                net = n2;
                if let Some(factor) = self.explode_factor {
                    let base = *first.get_or_insert(losses.total);
                    if losses.total > factor * base.max(1e-3) {
                        return Err(TrainError::Diverged {
                            reason: format!(
                                "epoch {epoch}: loss {:.4} exploded past {factor} × the first step's {base:.4}",
                                losses.total
                            ),
                            last_losses: losses.terms,
                        });
                    }
                }
                if sums.is_empty() {
                    sums = losses.terms.iter().map(|(k, _)| (k.clone(), 0.0)).collect();
                    sums.push(("total".into(), 0.0));
                }
                for (slot, v) in sums.iter_mut().zip(
                    losses
                        .terms
                        .iter()
                        .map(|(_, v)| *v)
                        .chain(std::iter::once(losses.total)),
                ) {
                    slot.1 += v;
                }
                last_losses = losses.terms;
                steps += 1;
                images += b;
                on_event(TrainEvent::Step {
                    epoch,
                    epochs,
                    step: steps,
                    steps: epoch_steps,
                    loss: losses.total,
                });
            }
            // Training throughput: the evaluation below is not part of it.
            let images_per_s = images as f64 / clock.elapsed().as_secs_f64();
            run += 1;
            let evaluate = |set: &EvalSet<'_>| {
                self.task.evaluate(
                    &net.student.valid(),
                    set.split,
                    set.transform,
                    set.options,
                    device,
                )
            };
            let selection = self.select.as_ref().map(evaluate).transpose()?;
            let selection_improved = selection
                .as_ref()
                .map(|v| v.metric(self.task.score_metric()) > best_select);
            let needed = !deferred
                && (self.eval_each_epoch
                    || selection_improved != Some(false)
                    || epoch + 1 == epochs);
            let mut metrics = BTreeMap::new();
            if deferred && selection_improved == Some(true) {
                best_epoch = epoch + 1;
                if let Some(v) = &selection {
                    best_select = v.metric(self.task.score_metric());
                }
                best_weights = Some(net.student.valid());
            }
            if let Some(eval) = self
                .eval
                .as_ref()
                .filter(|_| deferred && epoch + 1 == epochs)
            {
                let evaluation = evaluate(eval)?;
                let metric = self.task.score_metric();
                last = evaluation.metric(metric);
                best = match &best_weights {
                    Some(w) if best_epoch < epoch + 1 => {
                        let at_best = self.task.evaluate(
                            w,
                            eval.split,
                            eval.transform,
                            eval.options,
                            device,
                        )?;
                        metrics.extend(
                            at_best
                                .metrics
                                .iter()
                                .map(|(k, x)| (format!("best_epoch_{k}"), *x)),
                        );
                        at_best.metric(metric)
                    }
                    // The best epoch is the last; or a checkpoint of an earlier version, which
                    // kept no weights, already holds the best epoch's score.
                    Some(_) => last,
                    None if best_epoch == epoch + 1 => last,
                    None => best,
                };
                if best_epoch == epoch + 1 {
                    metrics.extend(
                        evaluation
                            .metrics
                            .iter()
                            .map(|(k, x)| (format!("best_epoch_{k}"), *x)),
                    );
                }
                metrics.extend(evaluation.metrics);
            }
            let eval_metrics = match self.eval.as_ref().filter(|_| needed) {
                Some(eval) => {
                    let evaluation = evaluate(eval)?;
                    let score = evaluation.metric(self.task.score_metric());
                    let improved = match selection_improved {
                        Some(improved) => improved,
                        // A checkpoint from before the best epoch was recorded keeps its best.
                        None => score > best || (best_epoch == 0 && score >= best),
                    };
                    if improved {
                        (best, best_epoch) = (score, epoch + 1);
                        if let Some(v) = &selection {
                            best_select = v.metric(self.task.score_metric());
                        }
                    }
                    last = score;
                    evaluation.metrics
                }
                None => BTreeMap::new(),
            };
            metrics.extend(eval_metrics);
            if let Some(v) = selection {
                metrics.extend(v.metrics.into_iter().map(|(k, x)| (format!("val_{k}"), x)));
                metrics.insert("val_loss".into(), v.loss);
            }
            let m = EpochMetrics {
                epoch: epoch + 1,
                lr: rate(0),
                losses: sums
                    .into_iter()
                    .map(|(k, v)| (k, v / steps.max(1) as f64))
                    .collect(),
                metrics,
                images_per_s,
            };
            if let Some(dir) = &self.run_dir {
                append_line(&dir.path.join("metrics.jsonl"), &m)?;
            }
            on_event(TrainEvent::Epoch(&m));
            if let Some(dir) = &self.run_dir
                && ((epoch + 1) % dir.checkpoint_every.max(1) == 0 || epoch + 1 == epochs)
            {
                write_checkpoint(
                    &dir.path.join("checkpoint"),
                    &net,
                    best_weights.as_ref(),
                    &optim,
                    &CheckpointState {
                        epoch: epoch + 1,
                        best_top1: best,
                        last_top1: Some(last),
                        best_epoch: Some(best_epoch),
                        best_select: best_select.is_finite().then_some(best_select),
                    },
                )?;
            }
        }
        Ok((
            net,
            FitOutcome {
                epochs_run: run,
                best,
                best_epoch,
                last,
                last_losses,
            },
        ))
    }
}

/// The best epoch's student weights of the newest checkpoint of `run_dir` (`best.bpk`, written
/// by a run that evaluates its `eval` split only at the end), if it holds them.
fn resume_best<N: Net>(run_dir: &Path, student: &N) -> Result<Option<N>> {
    let Some(path) = find_checkpoint(run_dir)
        .map(|d| d.join(BEST_FILE))
        .filter(|p| p.is_file())
    else {
        return Ok(None);
    };
    let mut w = student.valid();
    let mut store = BurnpackStore::from_file(&path);
    w.load_from(&mut store).map_err(|e| {
        io(
            &path,
            format!("the best epoch's weights do not fit this run's student ({e})"),
        )
    })?;
    Ok(Some(w))
}

/// The best epoch's student weights in a checkpoint folder.
const BEST_FILE: &str = "best.bpk";

/// Loads the newest checkpoint of `run_dir` into `net` and `optim`.
fn resume<N: Net>(
    run_dir: &Path,
    mut net: DistillStudent<N>,
    optim: ModuleOptimizer,
) -> Result<(DistillStudent<N>, ModuleOptimizer, CheckpointState)> {
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
    net.load_from(&mut store).map_err(|e| {
        io(
            &ckpt.join("model.bpk"),
            format!(
                "the checkpoint does not fit this run's student and distiller ({e}); resume with the model, teacher and distiller it was written with, or start a new run folder"
            ),
        )
    })?;
    let optim = optim
        .load(ckpt.join("optim.bpk"))
        .map_err(|e| io(&ckpt.join("optim.bpk"), format!("{e:?}")))?;
    Ok((net, optim, state))
}

fn append_line(path: &Path, m: &EpochMetrics) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    writeln!(f, "{}", serde_json::to_string(m).map_err(|e| io(path, e))?).map_err(|e| io(path, e))
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
fn write_checkpoint<N: Net>(
    dir: &Path,
    net: &DistillStudent<N>,
    best: Option<&N>,
    optim: &ModuleOptimizer,
    state: &CheckpointState,
) -> Result<()> {
    let tmp: PathBuf = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let mut store = BurnpackStore::from_file(tmp.join("model.bpk")).overwrite(true);
    net.save_into(&mut store).map_err(|e| io(&tmp, e))?;
    if let Some(best) = best {
        let mut store = BurnpackStore::from_file(tmp.join(BEST_FILE)).overwrite(true);
        best.save_into(&mut store).map_err(|e| io(&tmp, e))?;
    }
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
