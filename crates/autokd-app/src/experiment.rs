//! `autokd experiment`: a search, then its best distillers (and, for measuring the proxy, a
//! sample spread over its reward ranks) and the named baselines trained with the full recipe
//! over seeds, and how well the proxy reward predicted the trained accuracy.
//!
//! The run folder holds `search/` (the search's own run folder), `experiment.toml` (the
//! `[experiment]` section it runs with), `runs/<name>/seed<k>/` (one resumable training each,
//! finished when its `result.json` is written) and `results.json` / `results.md`. Every
//! training holds out a stratified part of its training images to choose its best epoch; the
//! test split chooses nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use autokd_data::Split;
use autokd_distill::DistillerSpec;
use autokd_models::load_weights;
use autokd_search::{bootstrap_ci, kendall_tau_b, spearman};
use autokd_train::{Recipe, TeacherSetup};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, Result};
use crate::search::{Observer, SearchRequest, run_search};
use crate::{SearchConfig, model_spec, write_atomic};

/// The `[experiment]` section of a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The search's best distinct distillers to train.
    pub top_k: usize,
    /// More searched distillers, spread evenly over the remaining accepted trials' reward ranks
    /// (best to worst): the points that measure the proxy's fidelity (0: none).
    pub sample: usize,
    /// Named baselines (`vanilla`, `kd`, `at`, `sp`, `ickd`, `cwd`, `dist`, `fitnet`).
    pub baselines: Vec<String>,
    /// Seeds of every training.
    pub seeds: Vec<u64>,
    /// The full training recipe (default: the search's `[teacher_training]`).
    pub recipe: Option<Recipe>,
    /// Train on a fixed stratified subset of this many images per class (default: all).
    pub train_per_class: Option<usize>,
    /// Fraction of the training images held out (stratified, seed 0) to choose each training's
    /// best epoch.
    pub val_fraction: f64,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            top_k: 3,
            sample: 0,
            baselines: vec!["vanilla".into(), "kd".into(), "dist".into()],
            seeds: vec![0, 1, 2],
            recipe: None,
            train_per_class: None,
            val_fraction: 0.1,
        }
    }
}

impl ExperimentConfig {
    /// Refuses settings that cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(AppError::Invalid(format!("[experiment] {m}")));
        if self.seeds.is_empty() {
            return bad("seeds: at least one seed".into());
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad(format!(
                "val_fraction {} must lie in (0, 1): the best epoch is chosen on held-out training images, never on the test set",
                self.val_fraction
            ));
        }
        if self.train_per_class == Some(0) {
            return bad("train_per_class must be at least 1".into());
        }
        for b in &self.baselines {
            DistillerSpec::baseline(b)
                .map_err(|e| AppError::Invalid(format!("[experiment] baselines: {e}")))?;
        }
        if let Some(r) = &self.recipe {
            r.validate()
                .map_err(|e| AppError::Invalid(format!("[experiment] recipe: {e}")))?;
        }
        Ok(())
    }
}

/// A config file with a search and an `[experiment]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentFile {
    /// Everything but `[experiment]`.
    pub search: SearchConfig,
    /// `[experiment]` (defaults when absent).
    pub experiment: ExperimentConfig,
}

impl ExperimentFile {
    /// Reads a config file; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AppError::io(path, e))?;
        Self::from_text(path, &text)
    }

    /// Parses a config's text (`path` names it in errors).
    pub fn from_text(path: &Path, text: &str) -> Result<Self> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| AppError::File {
            path: path.to_path_buf(),
            message: format!("invalid {what}: {e}"),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid("config", &e))?;
        let experiment = match table.remove("experiment") {
            Some(v) => v
                .try_into::<ExperimentConfig>()
                .map_err(|e| invalid("[experiment]", &e))?,
            None => ExperimentConfig::default(),
        };
        let search: SearchConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e| invalid("search config", &e))?;
        Ok(Self { search, experiment })
    }
}

/// What an experiment needs.
#[derive(Debug, Clone)]
pub struct ExperimentRequest {
    /// The search (its `dir` is ignored: the search runs in `dir/search`).
    pub search: SearchRequest,
    /// The trainings.
    pub experiment: ExperimentConfig,
    /// The experiment's run folder (resumed when it holds the same experiment).
    pub dir: PathBuf,
    /// Start at most this many trainings in this call, then return with the experiment
    /// incomplete (as a kill would; tests). `None`: all.
    pub max_runs: Option<usize>,
    /// Trainings at once (at least 1), each on the next of the search's devices in turn. Each
    /// training is seeded on its own, so the results do not depend on this.
    pub workers: usize,
}

/// One finished training (`result.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Its seed.
    pub seed: u64,
    /// Test top-1 at the epoch with the best validation top-1.
    pub top1: f64,
    /// That epoch (from 1).
    pub best_epoch: usize,
    /// Test top-1 after the last epoch.
    pub last_top1: f64,
    /// Wall time of the call that finished it (after a resume, only its part).
    pub seconds: f64,
}

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
}

impl MeanStd {
    /// Of `xs` (mean 0 and std 0 when empty).
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len().max(1) as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = if xs.len() > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { mean, std }
    }
}

/// One distiller's trainings.
#[derive(Debug, Clone, Serialize)]
pub struct DistillerResult {
    /// `trial-<n>` (the search's trial) or the baseline's name.
    pub name: String,
    /// `searched` or `baseline`.
    pub kind: &'static str,
    /// The loss, as printed.
    pub distiller: String,
    /// The distiller.
    pub spec: DistillerSpec,
    /// Its proxy reward (a baseline's when the search scored it: `named_baselines`).
    pub proxy_reward: Option<f64>,
    /// Its rank among the search's accepted distinct losses (1: the best); a baseline's, the
    /// rank its reward would take among the search's accepted trials.
    pub proxy_rank: Option<usize>,
    /// The finished trainings, by seed.
    pub runs: Vec<RunResult>,
    /// Test top-1 at the validation-chosen epoch over the finished seeds.
    pub top1: MeanStd,
    /// Test top-1 after the last epoch over the finished seeds.
    pub last_top1: MeanStd,
}

/// How well the proxy reward ranks the searched distillers as full training does.
#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    /// Searched distillers with every seed trained.
    pub distillers: usize,
    /// Kendall's τ-b between proxy reward and mean top-1.
    pub kendall: f64,
    /// Its 95% bootstrap interval (2,000 resamples of the distillers).
    pub kendall_ci: (f64, f64),
    /// Spearman's ρ between proxy reward and mean top-1.
    pub spearman: f64,
    /// Its 95% bootstrap interval.
    pub spearman_ci: (f64, f64),
    /// Of the proxy's five best, the share among full training's five best (10 or more
    /// distillers).
    pub precision_at_5: Option<f64>,
    /// The ceiling: Spearman's ρ between two seeds' top-1 over all trained distillers, the
    /// mean over seed pairs (two or more seeds).
    pub seed_spearman: Option<f64>,
}

impl Fidelity {
    /// `Kendall τ-b … [lo, hi], Spearman ρ … [lo, hi]`.
    pub fn summary(&self) -> String {
        format!(
            "Kendall τ-b {:.3} [{:.3}, {:.3}], Spearman ρ {:.3} [{:.3}, {:.3}]",
            self.kendall,
            self.kendall_ci.0,
            self.kendall_ci.1,
            self.spearman,
            self.spearman_ci.0,
            self.spearman_ci.1
        )
    }
}

/// The result of an experiment.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentReport {
    /// Teacher, student and dataset.
    pub teacher: String,
    /// The student.
    pub student: String,
    /// The dataset.
    pub dataset: String,
    /// The score the `top1` fields hold: `top-1` (a classifier's accuracy) or `mIoU` (a
    /// segmenter's).
    pub metric: String,
    /// Its teacher's test top-1.
    pub teacher_top1: f64,
    /// The recipe every training ran.
    pub recipe: Recipe,
    /// Training, validation and test images.
    pub images: (usize, usize, usize),
    /// Every distiller, best mean top-1 first.
    pub distillers: Vec<DistillerResult>,
    /// The proxy's fidelity (three or more searched distillers with every seed).
    pub fidelity: Option<Fidelity>,
    /// Whether every training finished.
    pub complete: bool,
}

/// What an experiment tells its caller besides the search's events.
#[derive(Debug, Clone, Copy)]
pub enum ExperimentEvent<'a> {
    /// The plan, after the search.
    Planned {
        /// Distillers to train.
        distillers: usize,
        /// Seeds each.
        seeds: usize,
        /// Training, validation and test images.
        images: (usize, usize, usize),
        /// The recipe.
        recipe: &'a Recipe,
        /// The teacher's test top-1.
        teacher_top1: f64,
    },
    /// A training starts (or resumes from its checkpoint).
    Training {
        /// Its distiller's name.
        name: &'a str,
        /// The loss.
        spec: &'a DistillerSpec,
        /// Its seed.
        seed: u64,
        /// Position among all trainings (from 1), and their number.
        index: usize,
        /// Trainings in all.
        total: usize,
        /// Whether it continues from a checkpoint.
        resuming: bool,
    },
    /// A training finished, now or (reused) in an earlier call.
    Trained {
        /// Its distiller's name.
        name: &'a str,
        /// Position among all trainings (from 1).
        index: usize,
        /// Trainings in all.
        total: usize,
        /// Its result.
        result: &'a RunResult,
        /// Finished in an earlier call.
        reused: bool,
    },
}

const RESULT_FILE: &str = "result.json";
const CONFIG_FILE: &str = "experiment.toml";

/// One training still to run.
#[derive(Debug, Clone)]
struct Job {
    /// Index of its distiller in the plan.
    distiller: usize,
    /// Index of its seed among the experiment's seeds.
    slot: usize,
    seed: u64,
    /// Position among all trainings (from 1).
    index: usize,
    run_dir: PathBuf,
    /// Whether it continues from a checkpoint.
    resuming: bool,
}

/// What every training of an experiment shares.
struct RunContext<'a> {
    student: &'a autokd_models::ModelSpec,
    teacher_name: autokd_models::ModelName,
    teacher_path: &'a Path,
    info: &'a autokd_data::DatasetInfo,
    dataset: &'a autokd_data::Dataset,
    validation: &'a Split,
    recipe: &'a Recipe,
}

/// The teacher `name` with the weights at `path`, on `device`.
fn load_teacher(
    name: autokd_models::ModelName,
    info: &autokd_data::DatasetInfo,
    path: &Path,
    device: &burn::prelude::Device,
) -> Result<autokd_models::Model> {
    Ok(load_weights(
        model_spec(name, info).init(device)?,
        name,
        path,
    )?)
}

impl RunContext<'_> {
    /// The teacher on `device` (each worker loads its own).
    fn teacher(&self, device: &burn::prelude::Device) -> Result<autokd_models::Model> {
        load_teacher(self.teacher_name, self.info, self.teacher_path, device)
    }

    /// Trains one job to its `result.json`.
    fn run(
        &self,
        job: &Job,
        spec: &DistillerSpec,
        teacher: &autokd_models::Model,
        device: &burn::prelude::Device,
    ) -> Result<RunResult> {
        let clock = Instant::now();
        let setup = spec.uses_teacher().then_some(TeacherSetup {
            model: teacher,
            name: self.teacher_name.as_str(),
            spec,
        });
        let (_, summary) = autokd_train::train(
            self.student,
            setup,
            self.dataset,
            Some(self.validation),
            &Recipe {
                seed: job.seed,
                ..self.recipe.clone()
            },
            1,
            &job.run_dir,
            job.resuming,
            None,
            std::slice::from_ref(device),
            |_| {},
        )?;
        let result = RunResult {
            seed: job.seed,
            top1: summary.best_top1,
            best_epoch: summary.best_epoch,
            last_top1: summary.last_top1,
            seconds: clock.elapsed().as_secs_f64(),
        };
        write_atomic(
            &job.run_dir.join(RESULT_FILE),
            serde_json::to_string_pretty(&result)?.as_bytes(),
        )?;
        Ok(result)
    }
}

/// A distiller the experiment trains.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    /// `trial-<n>` or the baseline's name.
    name: String,
    /// `searched` or `baseline`.
    kind: &'static str,
    spec: DistillerSpec,
    /// Proxy reward and rank (searched distillers).
    proxy: Option<(f64, usize)>,
}

/// The distillers to train: the search's `top_k` best distinct losses, `sample` more spread
/// over the remaining accepted ones by rank, then the baselines.
fn plan(records: &[crate::TrialRecord], cfg: &ExperimentConfig) -> Result<Vec<Planned>> {
    let mut accepted = crate::search::accepted_best_first(records);
    // One representative per printed loss, ranked by its best reward.
    let mut seen = std::collections::HashSet::new();
    accepted.retain(|r| seen.insert(r.spec.to_string()));
    let top = cfg.top_k.min(accepted.len());
    let rest = accepted.len() - top;
    let mut picked: Vec<usize> = (0..top).collect();
    let sample = cfg.sample.min(rest);
    for j in 0..sample {
        // Evenly spaced over the rest, its best and worst included.
        let at = if sample == 1 {
            0
        } else {
            (j * (rest - 1) + (sample - 1) / 2) / (sample - 1)
        };
        picked.push(top + at);
    }
    picked.dedup();
    let mut out: Vec<_> = picked
        .into_iter()
        .filter_map(|i| accepted.get(i).map(|r| (i, r)))
        .map(|(i, r)| Planned {
            name: format!("trial-{}", r.trial.index + 1),
            kind: "searched",
            spec: r.spec.clone(),
            proxy: r.trial.reward.map(|v| (v, i + 1)),
        })
        .collect();
    for b in &cfg.baselines {
        out.push(Planned {
            name: b.clone(),
            kind: "baseline",
            spec: DistillerSpec::baseline(b)?,
            proxy: None,
        });
    }
    Ok(out)
}

/// Runs (or resumes) the experiment of `request`: the search, then every training not yet
/// finished, then `results.json` and `results.md`.
pub fn run_experiment(
    request: &ExperimentRequest,
    observe: &mut Observer<'_>,
    on_event: &mut dyn FnMut(ExperimentEvent<'_>) -> std::io::Result<()>,
) -> Result<ExperimentReport> {
    let cfg = &request.experiment;
    cfg.validate()?;
    let dir = &request.dir;
    std::fs::create_dir_all(dir).map_err(|e| AppError::io(dir, e))?;
    let recorded = dir.join(CONFIG_FILE);
    if recorded.is_file() {
        let text = std::fs::read_to_string(&recorded).map_err(|e| AppError::io(&recorded, e))?;
        let old: ExperimentConfig = toml::from_str(&text).map_err(|e| AppError::File {
            path: recorded.clone(),
            message: format!("not an [experiment] section: {e}"),
        })?;
        if old != *cfg {
            return Err(AppError::Invalid(format!(
                "{} holds another experiment ({} differs); resume it with the same [experiment] section, or give a new --out",
                dir.display(),
                recorded.display()
            )));
        }
    }
    write_atomic(&recorded, toml::to_string(cfg)?.as_bytes())?;
    let search = SearchRequest {
        dir: dir.join("search"),
        ..request.search.clone()
    };
    let report = run_search(&search, observe)?;
    let scfg = &report.config;
    let device = search
        .devices
        .first()
        .cloned()
        .ok_or_else(|| AppError::Invalid("no device to train on".into()))?;
    let mut dataset = scfg.dataset.load()?;
    let classes = dataset.info.num_classes;
    if let Some(n) = cfg.train_per_class {
        dataset.train = autokd_data::stratified_subset(&dataset.train, classes, n, 0)?;
    }
    let (train, validation): (Split, Split) =
        autokd_data::stratified_split(&dataset.train, classes, cfg.val_fraction, 0)?;
    dataset.train = train;
    let images = (dataset.train.len(), validation.len(), dataset.test.len());
    let info = dataset.info.clone();
    let teacher_path = report.teacher.path().to_path_buf();
    let teacher = load_teacher(scfg.teacher, &info, &teacher_path, &device)?;
    let teacher_top1 = autokd_train::accuracy(&teacher, &dataset, &device)?;
    let recipe = cfg
        .recipe
        .clone()
        .unwrap_or_else(|| scfg.teacher_training.clone());
    let mut distillers = plan(&report.records, cfg)?;
    // The baselines' proxy rewards, from the search's own scoring of them.
    for d in distillers.iter_mut().filter(|d| d.kind == "baseline") {
        if let Some(b) = report.named_baselines.iter().find(|b| b.name == d.name) {
            d.proxy = b.outcome.reward.zip(b.rank);
        }
    }
    on_event(ExperimentEvent::Planned {
        distillers: distillers.len(),
        seeds: cfg.seeds.len(),
        images,
        recipe: &recipe,
        teacher_top1,
    })
    .map_err(AppError::Output)?;
    let student = model_spec(scfg.student, &info);
    let total = distillers.len() * cfg.seeds.len();
    // Finished trainings are read back; the others become jobs, in plan order.
    let mut finished: Vec<Vec<Option<RunResult>>> =
        vec![vec![None; cfg.seeds.len()]; distillers.len()];
    let mut jobs: Vec<Job> = Vec::new();
    let mut complete = true;
    for (d, planned) in distillers.iter().enumerate() {
        let folder = dir.join("runs").join(&planned.name);
        std::fs::create_dir_all(&folder).map_err(|e| AppError::io(&folder, e))?;
        write_atomic(
            &folder.join("distiller.toml"),
            planned.spec.to_toml()?.as_bytes(),
        )?;
        for (k, &seed) in cfg.seeds.iter().enumerate() {
            let index = d * cfg.seeds.len() + k + 1;
            let run_dir = folder.join(format!("seed{seed}"));
            let result_path = run_dir.join(RESULT_FILE);
            if result_path.is_file() {
                let text = std::fs::read_to_string(&result_path)
                    .map_err(|e| AppError::io(&result_path, e))?;
                let result: RunResult =
                    serde_json::from_str(&text).map_err(|e| AppError::File {
                        path: result_path.clone(),
                        message: format!("not a training's result: {e}"),
                    })?;
                on_event(ExperimentEvent::Trained {
                    name: &planned.name,
                    index,
                    total,
                    result: &result,
                    reused: true,
                })
                .map_err(AppError::Output)?;
                finished[d][k] = Some(result);
            } else if request.max_runs.is_some_and(|m| jobs.len() >= m) {
                complete = false;
            } else {
                jobs.push(Job {
                    distiller: d,
                    slot: k,
                    seed,
                    index,
                    resuming: autokd_train::find_checkpoint(&run_dir).is_some(),
                    run_dir,
                });
            }
        }
    }
    let context = RunContext {
        student: &student,
        teacher_name: scfg.teacher,
        teacher_path: &teacher_path,
        info: &info,
        dataset: &dataset,
        validation: &validation,
        recipe: &recipe,
    };
    let devices = &search.devices;
    let workers = request.workers.clamp(1, jobs.len().max(1));
    let starting =
        |job: &Job, on_event: &mut dyn FnMut(ExperimentEvent<'_>) -> std::io::Result<()>| {
            let planned = &distillers[job.distiller];
            on_event(ExperimentEvent::Training {
                name: &planned.name,
                spec: &planned.spec,
                seed: job.seed,
                index: job.index,
                total,
                resuming: job.resuming,
            })
            .map_err(AppError::Output)
        };
    let trained =
        |job: &Job,
         result: &RunResult,
         on_event: &mut dyn FnMut(ExperimentEvent<'_>) -> std::io::Result<()>| {
            on_event(ExperimentEvent::Trained {
                name: &distillers[job.distiller].name,
                index: job.index,
                total,
                result,
                reused: false,
            })
            .map_err(AppError::Output)
        };
    if workers == 1 {
        for job in &jobs {
            starting(job, on_event)?;
            let spec = &distillers[job.distiller].spec;
            let result = context.run(job, spec, &teacher, &device)?;
            trained(job, &result, on_event)?;
            finished[job.distiller][job.slot] = Some(result);
        }
    } else {
        // Workers take jobs in plan order; this thread reports their progress and stops
        // handing out jobs after the first error (trainings already running finish).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Option<Result<RunResult>>)>();
        let mut first_error: Option<AppError> = None;
        std::thread::scope(|scope| {
            for w in 0..workers {
                let tx = tx.clone();
                let (jobs, distillers, context, next, stop) =
                    (&jobs, &distillers, &context, &next, &stop);
                let device = devices[w % devices.len()].clone();
                scope.spawn(move || {
                    let teacher = match context.teacher(&device) {
                        Ok(t) => t,
                        Err(e) => {
                            stop.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = tx.send((usize::MAX, Some(Err(e))));
                            return;
                        }
                    };
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(job) = jobs.get(j) else { break };
                        if tx.send((j, None)).is_err() {
                            break;
                        }
                        let spec = &distillers[job.distiller].spec;
                        let result = context.run(job, spec, &teacher, &device);
                        if result.is_err() {
                            stop.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        if tx.send((j, Some(result))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (j, message) in rx {
                let outcome = match (jobs.get(j), message) {
                    (Some(job), None) => starting(job, on_event),
                    (Some(job), Some(Ok(result))) => {
                        let reported = trained(job, &result, on_event);
                        finished[job.distiller][job.slot] = Some(result);
                        reported
                    }
                    (_, Some(Err(e))) => Err(e),
                    (None, _) => Ok(()),
                };
                if let Err(e) = outcome {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        });
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    let mut results = Vec::new();
    for (
        Planned {
            name,
            kind,
            spec,
            proxy,
        },
        slots,
    ) in distillers.iter().zip(finished)
    {
        let runs: Vec<RunResult> = slots.into_iter().flatten().collect();
        let top1: Vec<f64> = runs.iter().map(|r| r.top1).collect();
        let last: Vec<f64> = runs.iter().map(|r| r.last_top1).collect();
        results.push(DistillerResult {
            name: name.clone(),
            kind,
            distiller: spec.to_string(),
            spec: spec.clone(),
            proxy_reward: proxy.map(|p| p.0),
            proxy_rank: proxy.map(|p| p.1),
            top1: MeanStd::of(&top1),
            last_top1: MeanStd::of(&last),
            runs,
        });
    }
    let fidelity = fidelity(&results, cfg.seeds.len());
    results.sort_by(|a, b| b.top1.mean.total_cmp(&a.top1.mean));
    let out = ExperimentReport {
        teacher: scfg.teacher.as_str().to_string(),
        student: scfg.student.as_str().to_string(),
        dataset: info.name.clone(),
        metric: score_name(scfg.student).into(),
        teacher_top1,
        recipe,
        images,
        distillers: results,
        fidelity,
        complete,
    };
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&out)?.as_bytes(),
    )?;
    write_atomic(
        &dir.join("top1.svg"),
        crate::plots::top1_svg(&out)?.as_bytes(),
    )?;
    if let Some(chart) = crate::plots::fidelity_svg(&out)? {
        write_atomic(&dir.join("fidelity.svg"), chart.as_bytes())?;
    }
    write_atomic(&dir.join("results.md"), results_markdown(&out).as_bytes())?;
    Ok(out)
}

/// Fidelity over the searched distillers whose every seed finished.
fn fidelity(results: &[DistillerResult], seeds: usize) -> Option<Fidelity> {
    let full: Vec<&DistillerResult> = results.iter().filter(|r| r.runs.len() == seeds).collect();
    let searched: Vec<(f64, f64)> = full
        .iter()
        .filter(|r| r.kind == "searched")
        .filter_map(|r| r.proxy_reward.map(|p| (p, r.top1.mean)))
        .collect();
    if searched.len() < 3 {
        return None;
    }
    let (proxy, top1): (Vec<f64>, Vec<f64>) = searched.iter().copied().unzip();
    let precision_at_5 = (searched.len() >= 10).then(|| {
        let top5 = |v: &[f64]| {
            let mut order: Vec<usize> = (0..v.len()).collect();
            order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
            order.truncate(5);
            order
        };
        let (a, b) = (top5(&proxy), top5(&top1));
        a.iter().filter(|i| b.contains(i)).count() as f64 / 5.0
    });
    let seed_spearman = (seeds >= 2 && full.len() >= 3).then(|| {
        let mut sum = 0.0;
        let mut pairs = 0usize;
        for i in 0..seeds {
            for j in i + 1..seeds {
                let a: Vec<f64> = full.iter().map(|r| r.runs[i].top1).collect();
                let b: Vec<f64> = full.iter().map(|r| r.runs[j].top1).collect();
                sum += spearman(&a, &b);
                pairs += 1;
            }
        }
        sum / pairs as f64
    });
    Some(Fidelity {
        distillers: searched.len(),
        kendall: kendall_tau_b(&proxy, &top1),
        kendall_ci: bootstrap_ci(&proxy, &top1, 2000, 0, kendall_tau_b),
        spearman: spearman(&proxy, &top1),
        spearman_ci: bootstrap_ci(&proxy, &top1, 2000, 0, spearman),
        precision_at_5,
        seed_spearman,
    })
}

/// The name of a model's test score: `mIoU` for a segmenter, `AP` (COCO's box AP) for a
/// detector, `top-1` otherwise.
pub fn score_name(model: autokd_models::ModelName) -> &'static str {
    match model.family() {
        autokd_models::Family::Segmentation => "mIoU",
        autokd_models::Family::Detection => "AP",
        autokd_models::Family::Cifar | autokd_models::Family::ImageNet => "top-1",
    }
}

/// `results.md`.
pub fn results_markdown(r: &ExperimentReport) -> String {
    let (train, val, test) = r.images;
    let m = &r.metric;
    let what = if m == "top-1" { "accuracy" } else { m.as_str() };
    let mut s = format!(
        "# autokd experiment\n\n{} (test {m} {:.2}%) → {} on `{}`: {train} training images, {val} held out to choose each training's best epoch, {test} test images. Recipe: {} at lr {}, batch {}.{}\n\n{} is the test {what} at the epoch with the best validation {what}; \"last\" after the last epoch; mean ± standard deviation over seeds.\n\n| distiller | kind | proxy reward (rank) | {m} | last | seeds | s/run | loss |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
        r.teacher,
        100.0 * r.teacher_top1,
        r.student,
        r.dataset,
        r.recipe.length,
        r.recipe.lr,
        r.recipe.batch_size,
        if r.complete {
            ""
        } else {
            " **Incomplete**: run the same command again to finish it."
        },
        // A sentence starts with it: `Top-1`, or `mIoU` as written.
        if m == "top-1" { "Top-1" } else { m },
    );
    for d in &r.distillers {
        let seconds = d.runs.iter().map(|x| x.seconds).sum::<f64>() / d.runs.len().max(1) as f64;
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} ± {:.2}% | {:.2} ± {:.2}% | {} | {:.1} | `{}` |\n",
            d.name,
            d.kind,
            match (d.proxy_reward, d.proxy_rank) {
                (Some(v), Some(k)) => format!("{v:.4} ({k})"),
                _ => "—".into(),
            },
            100.0 * d.top1.mean,
            100.0 * d.top1.std,
            100.0 * d.last_top1.mean,
            100.0 * d.last_top1.std,
            d.runs.len(),
            seconds,
            d.distiller
        ));
    }
    s.push_str(&format!("\n![test {m} per distiller](top1.svg)\n"));
    if crate::plots::fidelity_points(r).len() >= 2 {
        s.push_str(&format!(
            "\n![proxy reward against test {m}](fidelity.svg)\n"
        ));
    }
    if let Some(f) = &r.fidelity {
        s.push_str(&format!(
            "\n## Proxy fidelity\n\nOver {} searched distillers, proxy reward against mean {m} (95% bootstrap intervals): {}",
            f.distillers,
            f.summary()
        ));
        if let Some(p) = f.precision_at_5 {
            s.push_str(&format!("; precision at top-5 {p:.2}"));
        }
        if let Some(c) = f.seed_spearman {
            s.push_str(&format!(
                ". The ceiling, full training's own agreement between seeds (Spearman over all trained distillers, mean over seed pairs): {c:.3}"
            ));
        }
        s.push_str(".\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrialRecord;
    use autokd_search::Trial;
    use autokd_train::TrialOutcome;

    fn record(index: usize, reward: Option<f64>, weight: f64) -> TrialRecord {
        let mut spec = DistillerSpec::baseline("kd").unwrap();
        if let Some(l) = spec.logits.as_mut() {
            l.weight = autokd_distill::Real(weight);
        }
        TrialRecord {
            trial: Trial {
                index,
                choices: vec![index],
                reward,
            },
            spec,
            outcome: TrialOutcome::default(),
        }
    }

    /// The plan: the best distinct losses first, then a sample spread over the rest (its best
    /// and worst included), then the baselines; rejected trials and repeated losses are skipped.
    #[test]
    fn the_plan_takes_the_best_then_a_spread_then_the_baselines() {
        // Trials 0..8 with rewards -0, -1, …; trial 8 repeats trial 0's loss; trial 9 rejected.
        let mut records: Vec<TrialRecord> = (0..8)
            .map(|i| record(i, Some(-(i as f64)), 1.0 + i as f64))
            .collect();
        records.push(record(8, Some(-0.5), 1.0));
        records.push(record(9, None, 99.0));
        let cfg = ExperimentConfig {
            top_k: 2,
            sample: 3,
            baselines: vec!["vanilla".into()],
            ..ExperimentConfig::default()
        };
        let plan = plan(&records, &cfg).unwrap();
        let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
        // Top 2: trials 1, 2 (rewards 0, -1); the rest ranks 3..8 are trials 3..8 (6 of
        // them): spread 3 over positions 0, 3 (rounded 2.5 up), 5.
        assert_eq!(
            names,
            vec![
                "trial-1", "trial-2", "trial-3", "trial-6", "trial-8", "vanilla"
            ]
        );
        assert_eq!(plan[3].proxy, Some((-5.0, 6)));
        assert_eq!(plan[5].proxy, None);
    }

    /// The file: `[experiment]` apart from the search's keys; a bad field names itself; the
    /// best epoch may not be chosen on the test set.
    #[test]
    fn an_experiment_file() {
        let path = Path::new("x.toml");
        let f = ExperimentFile::from_text(
            path,
            "trials = 5\n[experiment]\ntop_k = 1\nseeds = [0]\n[experiment.recipe]\nepochs = 2\nmilestones = []\n",
        )
        .unwrap();
        assert_eq!(f.search.trials, 5);
        assert_eq!(
            (f.experiment.top_k, f.experiment.seeds.clone()),
            (1, vec![0])
        );
        assert_eq!(
            f.experiment.recipe.as_ref().map(|r| r.length),
            Some(autokd_train::Length::Epochs(2))
        );
        let err = ExperimentFile::from_text(path, "[experiment]\ntopk = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("topk"), "{err}");
        let err = ExperimentFile::from_text(path, "trialz = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trialz"), "{err}");
        let zero = ExperimentConfig {
            val_fraction: 0.0,
            ..ExperimentConfig::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("never on the test set")
        );
        let unknown = ExperimentConfig {
            baselines: vec!["kd2".into()],
            ..ExperimentConfig::default()
        };
        assert!(unknown.validate().unwrap_err().to_string().contains("kd2"));
    }
}
