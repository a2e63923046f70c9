//! `run_search`: find the best distiller for a teacher/student pair with MCTS (or random search),
//! scoring each candidate by proxy training, and write a run folder: `config.toml` (resolved),
//! `space.json`, the store, `trials.jsonl`, `best.toml`, `report.md`, `rewards.svg`. It returns a
//! typed [`SearchReport`]; what happens on the way is told to the caller as [`SearchEvent`]s (the
//! command line prints them).

use std::path::{Path, PathBuf};
use std::time::Instant;

use autokd_data::Dataset;
use autokd_distill::{DistillerSpec, Effective, SearchSpace};
use autokd_models::{Backbone, Model, ModelSpec, TapRequest, load_weights, save_weights};
use autokd_search::{Evolution, GridSearch, Mcts, RandomSearch, Strategy, Tpe, Trial, TrialStore};
use autokd_train::{Length, ProxyEvaluator, TeacherPlan, TrialOutcome};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{SearchConfig, StoreKind, StrategyName};
use crate::error::{AppError, Result};
use crate::{model_spec, write_atomic};

/// What a search needs besides its config.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// The search.
    pub config: SearchConfig,
    /// The run folder (resumed when it holds the same search).
    pub dir: PathBuf,
    /// Devices: one proxy evaluator each; the teacher trains on the first.
    pub devices: Vec<Device>,
    /// A device for small exact (f64) computations: the CPU's.
    pub exact_device: Device,
    /// Folder of trained teachers, reused across searches.
    pub cache_dir: PathBuf,
}

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRecord {
    /// Index, choices and reward.
    pub trial: Trial,
    /// The distiller.
    pub spec: DistillerSpec,
    /// What the proxy measured.
    pub outcome: TrialOutcome,
}

/// A named baseline scored by the search's proxy (`baselines.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedBaseline {
    /// Its name (`kd`, …).
    pub name: String,
    /// Its loss, as printed.
    pub distiller: String,
    /// What the proxy measured.
    pub outcome: TrialOutcome,
    /// Where its reward would rank among the search's accepted trials (1: above all).
    pub rank: Option<usize>,
    /// The search's accepted trials.
    pub accepted: usize,
}

const NAMED_BASELINES_FILE: &str = "baselines.json";

/// Where the teacher came from.
#[derive(Debug, Clone, PartialEq)]
pub enum TeacherOrigin {
    /// The config's weights.
    Weights(PathBuf),
    /// The teacher cache (trained by an earlier search), with its test top-1.
    Cached {
        /// The cached weights.
        path: PathBuf,
        /// Test top-1.
        top1: f64,
    },
    /// Trained now, and cached.
    Trained {
        /// Where it was cached.
        path: PathBuf,
        /// Whether it resumed the checkpoint of a search killed while its teacher trained.
        resumed: bool,
        /// Epochs trained by this search (fewer than the recipe's when it resumed).
        epochs_run: usize,
        /// Wall time.
        seconds: f64,
        /// Test top-1 after the last epoch.
        top1: f64,
    },
}

impl TeacherOrigin {
    /// The teacher's weights file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Weights(path) | Self::Cached { path, .. } | Self::Trained { path, .. } => path,
        }
    }
}

/// What a search tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum SearchEvent<'a> {
    /// The search is checked and about to start.
    Started {
        /// The config.
        config: &'a SearchConfig,
        /// Dataset name, training and test images.
        dataset: (&'a str, usize, usize),
        /// Candidates in the space.
        space_size: u128,
        /// Distinct losses among them (`None`: a run folder from before deduplication).
        distinct: Option<u128>,
        /// The run folder.
        dir: &'a Path,
        /// Whether it resumes a run folder.
        resuming: bool,
    },
    /// The teacher is about to train (minutes to hours).
    TeacherTraining {
        /// Its architecture.
        teacher: &'a str,
        /// The dataset.
        dataset: &'a str,
        /// Epochs or iterations.
        length: Length,
        /// Where it will be cached.
        path: &'a Path,
    },
    /// The teacher is ready.
    Teacher {
        /// Its architecture.
        teacher: &'a str,
        /// Where it came from.
        origin: &'a TeacherOrigin,
    },
    /// The proxy evaluators are ready.
    Proxy {
        /// Training and validation images.
        sizes: (usize, usize),
        /// Training images per class.
        per_class: usize,
        /// Proxy epochs or iterations.
        length: Length,
        /// Cache or online teacher.
        plan: TeacherPlan,
        /// Seconds to build the evaluators.
        seconds: f64,
    },
    /// A named baseline was scored by the proxy, after the search.
    NamedBaseline {
        /// The baseline.
        record: &'a NamedBaseline,
    },
    /// A stream of trials starts (`label` is `""` for the strategy, `"random "` for the baseline).
    Stream {
        /// Label.
        label: &'a str,
        /// Trials of its budget.
        budget: usize,
        /// Trials replayed from the store and trials to run again.
        resumed: Option<(usize, usize)>,
    },
    /// A trial finished (or was replayed from the store).
    Trial {
        /// Its stream's label.
        label: &'a str,
        /// 1-based position among the stream's finished trials.
        k: usize,
        /// The stream's budget.
        budget: usize,
        /// The trial.
        record: &'a TrialRecord,
        /// Best reward so far.
        best: Option<f64>,
        /// Whether it came from the store.
        replayed: bool,
    },
    /// A stream of trials ended.
    StreamEnd,
}

/// The result of a search.
#[derive(Debug, Clone)]
pub struct SearchReport {
    /// The run folder.
    pub dir: PathBuf,
    /// The resolved config.
    pub config: SearchConfig,
    /// Every trial of the strategy, in the order they finished.
    pub records: Vec<TrialRecord>,
    /// The random baseline's trials, when it ran.
    pub baseline: Option<Vec<TrialRecord>>,
    /// Position of the best trial in `records`.
    pub best: usize,
    /// Where the teacher came from (its weights file).
    pub teacher: TeacherOrigin,
    /// The named baselines on the proxy (`named_baselines`).
    pub named_baselines: Vec<NamedBaseline>,
    /// Wall time of the strategy's trials.
    pub seconds: f64,
    /// Files written into the run folder.
    pub files: Vec<String>,
}

impl SearchReport {
    /// The best trial.
    pub fn best(&self) -> Option<&TrialRecord> {
        self.records.get(self.best)
    }

    /// The baseline's best trial.
    pub fn baseline_best(&self) -> Option<&TrialRecord> {
        self.baseline.as_deref().and_then(best_of).map(|(_, r)| r)
    }
}

/// The observer of a search: `Err` (a failed write) stops it.
pub type Observer<'o> = dyn FnMut(SearchEvent<'_>) -> std::io::Result<()> + 'o;

/// One line of `trials.jsonl`.
#[derive(Debug, Serialize)]
struct TrialLine<'a> {
    trial: usize,
    choices: &'a [usize],
    distiller: String,
    spec: &'a DistillerSpec,
    outcome: &'a TrialOutcome,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The space a run folder is searched over (`space.json`): resolved, with its fingerprint, so that
/// a run resumes over the space it started with even when the default space changes, and whether
/// candidates with the same loss are one candidate (runs written before that replay without it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunSpace {
    /// FNV-1a of the resolved space's JSON.
    fingerprint: String,
    /// Deduplicate candidates by their effective loss ([`Effective`]).
    deduplicate: bool,
    /// The resolved space.
    space: SearchSpace,
}

impl RunSpace {
    const FILE: &'static str = "space.json";

    fn new(space: SearchSpace, deduplicate: bool) -> Result<Self> {
        let fingerprint = format!("{:016x}", fnv1a(serde_json::to_string(&space)?.as_bytes()));
        Ok(Self {
            fingerprint,
            deduplicate,
            space,
        })
    }

    /// The space of the run in `dir`: the recorded one when resuming (a folder from before
    /// `space.json` keeps the configured space, without deduplication), else `configured`.
    fn for_run(dir: &Path, resuming: bool, configured: SearchSpace) -> Result<Self> {
        let path = dir.join(Self::FILE);
        if !resuming {
            return Self::new(configured, true);
        }
        if !path.is_file() {
            return Self::new(configured, false);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| AppError::io(&path, e))?;
        let recorded: Self = serde_json::from_str(&text).map_err(|e| AppError::File {
            path: path.clone(),
            message: format!("not a recorded search space: {e}"),
        })?;
        let check = Self::new(recorded.space.clone(), recorded.deduplicate)?;
        if check.fingerprint != recorded.fingerprint {
            return Err(AppError::File {
                path,
                message: format!(
                    "its fingerprint {} does not match its space ({}); the file was edited",
                    recorded.fingerprint, check.fingerprint
                ),
            });
        }
        Ok(recorded)
    }
}

/// Where the teacher `cfg` trains is cached: `<cache>/teachers/<model>-<hash>.bpk`, the hash over
/// the architecture, the dataset, the teacher's recipe and the initialization scheme (the same
/// seed under another scheme trains another teacher), and over the contents of a pretrained
/// backbone when the recipe names one (the same path holding other weights trains another
/// teacher; keys without one are as before).
fn teacher_cache_path(
    cfg: &SearchConfig,
    spec: &ModelSpec,
    dataset: &str,
    cache_dir: &Path,
) -> Result<PathBuf> {
    let mut key = serde_json::to_string(&(
        spec,
        dataset,
        &cfg.teacher_training,
        autokd_models::init::INIT_SCHEME,
    ))?;
    if let Some(path) = &cfg.teacher_training.backbone_weights {
        let bytes = std::fs::read(path).map_err(|e| AppError::io(path, e))?;
        key.push_str(&format!("|backbone {:016x}", fnv1a(&bytes)));
    }
    Ok(cache_dir.join("teachers").join(format!(
        "{}-{:016x}.bpk",
        cfg.teacher,
        fnv1a(key.as_bytes())
    )))
}

/// The teacher: `model` (its architecture, freshly initialized) loaded from the config's
/// weights or from the cache, or a teacher trained and cached.
pub(crate) fn teacher(
    cfg: &SearchConfig,
    spec: &ModelSpec,
    model: Model,
    dataset: &Dataset,
    cache_dir: &Path,
    device: &Device,
    observe: &mut Observer<'_>,
) -> Result<(Model, TeacherOrigin)> {
    if let Some(w) = &cfg.teacher_weights {
        let model = load_weights(model, cfg.teacher, w)?;
        return Ok((model, TeacherOrigin::Weights(w.clone())));
    }
    let path = teacher_cache_path(cfg, spec, &dataset.info.name, cache_dir)?;
    if path.is_file() {
        let model = load_weights(model, cfg.teacher, &path)?;
        let top1 = autokd_train::accuracy(&model, dataset, device)?;
        return Ok((model, TeacherOrigin::Cached { path, top1 }));
    }
    observe(SearchEvent::TeacherTraining {
        teacher: cfg.teacher.as_str(),
        dataset: &dataset.info.name,
        length: cfg.teacher_training.length,
        path: &path,
    })
    .map_err(AppError::Output)?;
    // The one training loop, checkpointed in a folder beside the cached weights: a search killed
    // while its teacher trains resumes the teacher from its last epoch.
    let start = Instant::now();
    let run_dir = path.with_extension("run");
    let resume = autokd_train::find_checkpoint(&run_dir).is_some();
    let (model, summary) = autokd_train::train(
        spec,
        None,
        dataset,
        None,
        &cfg.teacher_training,
        1,
        &run_dir,
        resume,
        None,
        std::slice::from_ref(device),
        |event| {
            if let autokd_train::TrainEvent::Epoch(m) = event {
                // The task's score: top-1 for a classifier, mIoU for a segmenter, AP for a
                // detector.
                let metric = ["miou", "ap"]
                    .into_iter()
                    .find(|k| m.metrics.contains_key(*k))
                    .unwrap_or("top1");
                tracing::info!(epoch = m.epoch, metric, score = m.metric(metric), "teacher");
            }
        },
    )?;
    let top1 = summary.last_top1;
    let dir = path.parent().unwrap_or(cache_dir);
    std::fs::create_dir_all(dir).map_err(|e| AppError::io(dir, e))?;
    save_weights(&model, &path)?;
    std::fs::remove_dir_all(&run_dir).map_err(|e| AppError::io(&run_dir, e))?;
    Ok((
        model,
        TeacherOrigin::Trained {
            path,
            resumed: resume,
            epochs_run: summary.epochs_run,
            seconds: start.elapsed().as_secs_f64(),
            top1,
        },
    ))
}

/// Runs the search of `request`, telling `observe` what happens; resumes the run folder when it
/// holds the same search.
pub fn run_search(request: &SearchRequest, observe: &mut Observer<'_>) -> Result<SearchReport> {
    let mut cfg = request.config.clone();
    if cfg.trials == 0 {
        return Err(AppError::Invalid("trials must be at least 1".into()));
    }
    if cfg.workers == 0 {
        return Err(AppError::Invalid("workers must be at least 1".into()));
    }
    let Some(device) = request.devices.first().cloned() else {
        return Err(AppError::Invalid("no device to search on".into()));
    };
    let devices = &request.devices;
    let configured = cfg.space.validate()?;
    cfg.workers = cfg.workers.max(devices.len());
    let dataset = cfg.dataset.load()?;
    let info = &dataset.info;
    let (t_spec, s_spec) = (model_spec(cfg.teacher, info), model_spec(cfg.student, info));
    let dir = request.dir.clone();
    let config_path = dir.join("config.toml");
    let resuming = config_path.is_file();
    if resuming {
        let (old, legacy) = SearchConfig::from_recorded(&config_path)?;
        if legacy {
            // A folder from before rank-scaled rewards or shared statistics resumes as it ran.
            cfg.resume_as(&old);
        }
        if !old.same_search(&cfg) {
            return Err(AppError::Invalid(format!(
                "{} holds a different search (its config.toml differs in more than trials, max_minutes, workers, baseline and named_baselines); resume it with the same config and seed, or give a new --out",
                dir.display()
            )));
        }
    }
    let recorded = RunSpace::for_run(&dir, resuming, configured)?;
    let space = recorded.space.clone();
    // Everything that can be checked is checked before the teacher trains (minutes to hours):
    // the taps of both models against the space, the teacher's weights, the run folder and the
    // stores.
    let (t_model, s_model) = (t_spec.init(&device)?, s_spec.init(&device)?);
    let (t_info, s_info) = (t_model.feature_info(), s_model.feature_info());
    let terms = space
        .resolve_taps(cfg.student.as_str(), &s_info, cfg.teacher.as_str(), &t_info)
        .map_err(|e| AppError::Invalid(format!("the search space does not fit the models: {e}")))?;
    let mut taps = autokd_distill::space::teacher_indices(&terms);
    // The named baselines, scored after the search; the teacher taps they read are cached too.
    let named_specs = cfg
        .named_baselines
        .iter()
        .map(|name| {
            let spec = DistillerSpec::baseline(name)
                .map_err(|e| AppError::Invalid(format!("named_baselines: {e}")))?;
            let terms = spec
                .resolve(cfg.student.as_str(), &s_info, cfg.teacher.as_str(), &t_info)
                .map_err(|e| {
                    AppError::Invalid(format!(
                        "named_baselines: `{name}` does not fit the models: {e}"
                    ))
                })?;
            taps.extend(autokd_distill::space::teacher_indices(&terms));
            Ok((name.clone(), spec))
        })
        .collect::<Result<Vec<_>>>()?;
    taps.sort_unstable();
    taps.dedup();
    // Candidates that compute the same loss at these taps are evaluated once.
    let effective = if recorded.deduplicate {
        // Measured at the first tap pair (of a group: its first member).
        let pair = terms
            .first()
            .and_then(|t| t.pairs.first())
            .ok_or_else(|| AppError::Invalid("the search space has no feature term".into()))?;
        let [c, h, w] = info.input_shape();
        let shape_at = |model: &Model, tap: usize| {
            let out = model.forward_intermediates(
                Tensor::<4>::zeros([1, c, h, w], &device),
                &TapRequest::indices(&[tap]),
            );
            out.features
                .first()
                .map(|f| autokd_distill::map_shape(&f.dims()))
                .ok_or_else(|| AppError::Invalid("a model returned no tap".into()))
        };
        let ([ct, ht, wt], [_, hs, ws]) = (
            shape_at(&t_model, pair.teacher_index)?,
            shape_at(&s_model, pair.student_index)?,
        );
        Some(Effective::new(
            &space,
            [ct, ht.min(hs), wt.min(ws)],
            &request.exact_device,
        )?)
    } else {
        None
    };
    if let Some(w) = &cfg.teacher_weights {
        std::fs::File::open(w).map_err(|e| AppError::Io {
            path: w.clone(),
            source: std::io::Error::new(e.kind(), format!("teacher_weights: cannot read it: {e}")),
        })?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| AppError::io(&dir, e))?;
    tempfile::NamedTempFile::new_in(&dir).map_err(|e| AppError::Io {
        path: dir.clone(),
        source: std::io::Error::new(e.kind(), format!("the run folder is not writable: {e}")),
    })?;
    // A grid search records which candidate represents each one's loss (the tabular
    // benchmark reads it); a space too large for a grid is refused here, before training.
    let levels: Vec<usize> = space.levels().iter().map(|l| l.options).collect();
    let grid = if cfg.strategy == StrategyName::Grid {
        Some(crate::table::GridMap::new(&levels, |c| match &effective {
            Some(e) => e.canonical(c),
            None => c.to_vec(),
        })?)
    } else {
        None
    };
    let mut store = open_store(&cfg, &dir, "mcts")?;
    store.events()?;
    // Random search as the baseline of a strategy that learns.
    let learns = matches!(
        cfg.strategy,
        StrategyName::Mcts | StrategyName::Tpe | StrategyName::Evolution
    );
    let mut baseline_store = if cfg.baseline && learns {
        let mut s = open_store(&cfg, &dir, "random")?;
        s.events()?;
        Some(s)
    } else {
        None
    };
    write_atomic(&config_path, toml::to_string(&cfg)?.as_bytes())?;
    write_atomic(
        &dir.join(RunSpace::FILE),
        serde_json::to_string_pretty(&recorded)?.as_bytes(),
    )?;
    if let Some(grid) = &grid {
        write_atomic(
            &dir.join(crate::table::GridMap::FILE),
            serde_json::to_string(grid)?.as_bytes(),
        )?;
    }
    observe(SearchEvent::Started {
        config: &cfg,
        dataset: (info.name.as_str(), dataset.train.len(), dataset.test.len()),
        space_size: space.size(),
        distinct: effective.as_ref().map(Effective::distinct),
        dir: &dir,
        resuming,
    })
    .map_err(AppError::Output)?;
    let (teacher, origin) = teacher(
        &cfg,
        &t_spec,
        t_model,
        &dataset,
        &request.cache_dir,
        &device,
        observe,
    )?;
    observe(SearchEvent::Teacher {
        teacher: cfg.teacher.as_str(),
        origin: &origin,
    })
    .map_err(AppError::Output)?;
    let start = Instant::now();
    let evaluators = devices
        .iter()
        .map(|d| {
            ProxyEvaluator::new(
                &dataset,
                &teacher.clone().fork(d),
                cfg.teacher.as_str(),
                s_spec,
                &taps,
                cfg.proxy.clone(),
                d,
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let evaluator = EvaluatorPool {
        busy: std::sync::Mutex::new(vec![0; evaluators.len()]),
        evaluators,
    };
    let first = evaluator
        .evaluators
        .first()
        .ok_or_else(|| AppError::Invalid("no proxy evaluator".into()))?;
    observe(SearchEvent::Proxy {
        sizes: first.sizes(),
        per_class: cfg.proxy.per_class,
        length: cfg.proxy.recipe.length,
        plan: first.plan(),
        seconds: start.elapsed().as_secs_f64(),
    })
    .map_err(AppError::Output)?;
    // The validation sample every trial is scored on (indices into the training split).
    write_atomic(
        &dir.join(VALIDATION_FILE),
        serde_json::to_string(first.val_indices())?.as_bytes(),
    )?;
    let val_images = first.sizes().1;
    let deadline = cfg
        .max_minutes
        .map(|m| Instant::now() + std::time::Duration::from_secs_f64(60.0 * m));
    let mut strategy: Box<dyn Strategy> = match cfg.strategy {
        StrategyName::Mcts => Box::new(Mcts::new(&levels, cfg.mcts.clone())),
        StrategyName::Random => Box::new(RandomSearch::new(&levels, cfg.mcts.seed)),
        StrategyName::Grid => Box::new(GridSearch::new(&levels)),
        StrategyName::Tpe => Box::new(Tpe::new(&levels, cfg.tpe.clone(), cfg.mcts.seed)),
        StrategyName::Evolution => Box::new(Evolution::new(
            &levels,
            cfg.evolution.clone(),
            cfg.mcts.seed,
        )),
    };
    let search_start = Instant::now();
    let ctx = Ctx {
        cfg: &cfg,
        space: &space,
        effective: effective.as_ref(),
        evaluator: &evaluator,
        deadline,
    };
    let records = trial_loop(
        &ctx,
        strategy.as_mut(),
        "",
        store.as_mut(),
        &dir.join("trials.jsonl"),
        observe,
    )?;
    let seconds = search_start.elapsed().as_secs_f64();
    let baseline = if let Some(baseline_store) = baseline_store.as_mut() {
        let mut random = RandomSearch::new(&levels, cfg.mcts.seed);
        let mut budgeted = cfg.clone();
        budgeted.trials = records.len();
        let ctx = Ctx {
            cfg: &budgeted,
            deadline: None,
            ..ctx
        };
        Some(trial_loop(
            &ctx,
            &mut random,
            "random ",
            baseline_store.as_mut(),
            &dir.join("trials_random.jsonl"),
            observe,
        )?)
    } else {
        None
    };
    if records.is_empty() {
        return Err(AppError::Invalid(format!(
            "no trial ran within the time budget of {:?} minutes",
            cfg.max_minutes
        )));
    }
    let Some((best, best_record)) = best_of(&records) else {
        return Err(AppError::Invalid(format!(
            "every one of the {} trials was rejected (the first: {})",
            records.len(),
            records
                .first()
                .and_then(|r| r.outcome.rejected.as_deref())
                .unwrap_or("no reason recorded")
        )));
    };
    write_atomic(
        &dir.join("best.toml"),
        best_record.spec.to_toml()?.as_bytes(),
    )?;
    // The named baselines on the same proxy, outside the budget and the strategy.
    let mut named = Vec::new();
    for (name, spec) in &named_specs {
        let outcome = evaluator.evaluate(spec)?;
        let record = NamedBaseline {
            name: name.clone(),
            distiller: spec.to_string(),
            rank: outcome.reward.map(|v| {
                1 + records
                    .iter()
                    .filter(|r| r.trial.reward.is_some_and(|x| x > v))
                    .count()
            }),
            outcome,
            accepted: records.iter().filter(|r| r.trial.reward.is_some()).count(),
        };
        observe(SearchEvent::NamedBaseline { record: &record }).map_err(AppError::Output)?;
        named.push(record);
    }
    write_atomic(
        &dir.join(NAMED_BASELINES_FILE),
        serde_json::to_string_pretty(&named)?.as_bytes(),
    )?;
    let label = format!("{:?}", cfg.strategy).to_lowercase();
    let chart = crate::plots::rewards_svg(
        &crate::plots::RewardSeries {
            label: &label,
            records: &records,
        },
        baseline
            .as_deref()
            .map(|records| crate::plots::RewardSeries {
                label: "random search",
                records,
            })
            .as_ref(),
        &named,
    )?;
    write_atomic(&dir.join("rewards.svg"), chart.as_bytes())?;
    write_atomic(
        &dir.join("report.md"),
        report_markdown(
            &cfg,
            &records,
            baseline.as_deref(),
            seconds,
            &dir,
            val_images,
            &named,
        )
        .as_bytes(),
    )?;
    let mut files = vec![
        "config.toml".to_string(),
        RunSpace::FILE.to_string(),
        VALIDATION_FILE.to_string(),
    ];
    if grid.is_some() {
        files.push(crate::table::GridMap::FILE.into());
    }
    match cfg.store {
        StoreKind::Journal => files.push("journal.jsonl".into()),
        StoreKind::Sqlite if cfg.store_path.is_none() => files.push("trials.sqlite".into()),
        _ => {}
    }
    files.extend(
        [
            "trials.jsonl",
            "best.toml",
            NAMED_BASELINES_FILE,
            "report.md",
            "rewards.svg",
        ]
        .iter()
        .map(|f| f.to_string()),
    );
    Ok(SearchReport {
        dir,
        config: cfg.clone(),
        records,
        baseline,
        best,
        teacher: origin,
        named_baselines: named,
        seconds,
        files,
    })
}

/// The best accepted trial and its position.
fn best_of(records: &[TrialRecord]) -> Option<(usize, &TrialRecord)> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.trial.reward.is_some())
        .max_by(|(_, a), (_, b)| {
            a.trial
                .reward
                .partial_cmp(&b.trial.reward)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
}

/// One proxy evaluator per device; a trial runs on the one with the fewest trials in flight.
struct EvaluatorPool {
    evaluators: Vec<ProxyEvaluator>,
    busy: std::sync::Mutex<Vec<usize>>,
}

impl EvaluatorPool {
    fn evaluate(&self, spec: &DistillerSpec) -> autokd_train::Result<TrialOutcome> {
        let lock = || {
            self.busy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let least = {
            let mut busy = lock();
            let least = busy
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map(|(i, _)| i);
            if let Some(n) = least.and_then(|i| busy.get_mut(i)) {
                *n += 1;
            }
            least
        };
        let (Some(i), Some(e)) = (least, least.and_then(|i| self.evaluators.get(i))) else {
            return Err(autokd_train::TrainError::Config(
                "no proxy evaluator".into(),
            ));
        };
        // Released even when the trial panics (the driver records the panic as a rejection).
        struct Release<'a>(&'a EvaluatorPool, usize);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut busy = self
                    .0
                    .busy
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(n) = busy.get_mut(self.1) {
                    *n -= 1;
                }
            }
        }
        let _release = Release(self, i);
        e.evaluate(spec)
    }
}

/// What a trial loop needs.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    cfg: &'a SearchConfig,
    space: &'a SearchSpace,
    /// Candidates with the same loss (`None`: a run folder written before deduplication, replayed
    /// as it was).
    effective: Option<&'a Effective>,
    evaluator: &'a EvaluatorPool,
    deadline: Option<Instant>,
}

/// The store of one search stream (`mcts` or `random`) of a run folder.
fn open_store(cfg: &SearchConfig, dir: &Path, stream: &str) -> Result<Box<dyn TrialStore>> {
    let suffix = if stream == "mcts" {
        String::new()
    } else {
        format!("_{stream}")
    };
    Ok(match cfg.store {
        StoreKind::Journal => Box::new(autokd_search::JournalStore::open(
            dir.join(format!("journal{suffix}.jsonl")),
        )),
        StoreKind::Sqlite => {
            let path = cfg
                .store_path
                .clone()
                .unwrap_or_else(|| dir.join("trials.sqlite"));
            Box::new(autokd_search::SqliteStore::open(path, stream)?)
        }
        StoreKind::Memory => Box::new(autokd_search::MemoryStore::new()),
    })
}

/// Runs `strategy` for the configured budget against `store` (resuming what it holds), telling
/// `observe` of every trial and writing every finished trial to `log_path` as JSON.
fn trial_loop(
    ctx: &Ctx<'_>,
    strategy: &mut dyn Strategy,
    label: &str,
    store: &mut dyn TrialStore,
    log_path: &Path,
    observe: &mut Observer<'_>,
) -> Result<Vec<TrialRecord>> {
    let events = store.events()?;
    let started = events
        .iter()
        .filter(|e| matches!(e, autokd_search::Event::Started { .. }))
        .count();
    let finished = events.len() - started;
    let budget = ctx.cfg.trials;
    observe(SearchEvent::Stream {
        label,
        budget,
        resumed: (!events.is_empty()).then_some((finished, started - finished)),
    })
    .map_err(AppError::Output)?;
    let mut log = std::fs::File::create(log_path).map_err(|e| AppError::io(log_path, e))?;
    let mut records: Vec<TrialRecord> = Vec::new();
    let mut best: Option<f64> = None;
    let mut failure: Option<AppError> = None;
    // Set with `failure`: no new trial starts once an output or log write has failed.
    let failed = std::cell::Cell::new(false);
    let deadline = ctx.deadline;
    let evaluate = |_trial: usize, choices: &Vec<usize>| -> autokd_search::Evaluation {
        let spec = ctx.space.spec(choices).map_err(|e| e.to_string())?;
        let outcome = ctx
            .evaluator
            .evaluate(&spec)
            .map_err(|e| format!("{spec}: {e}"))?;
        // The stored payload carries the resolved spec, so that the trial stays readable whatever
        // the space becomes.
        let mut payload = serde_json::to_value(&outcome).map_err(|e| e.to_string())?;
        if let Some(map) = payload.as_object_mut() {
            map.insert(
                "spec".into(),
                serde_json::to_value(&spec).map_err(|e| e.to_string())?,
            );
        }
        Ok((outcome.reward, payload))
    };
    let on_result = |r: &autokd_search::TrialResult| {
        if failure.is_some() {
            return;
        }
        let done = (|| -> Result<()> {
            let spec = match r.payload.get("spec") {
                Some(v) => serde_json::from_value(v.clone())?,
                None => ctx.space.spec(&r.trial.choices)?,
            };
            let outcome: TrialOutcome = serde_json::from_value(r.payload.clone())?;
            if let Some(v) = outcome.reward {
                best = Some(best.map_or(v, |b| b.max(v)));
            }
            let record = TrialRecord {
                trial: r.trial.clone(),
                spec,
                outcome,
            };
            observe(SearchEvent::Trial {
                label,
                k: records.len() + 1,
                budget,
                record: &record,
                best,
                replayed: r.replayed,
            })
            .map_err(AppError::Output)?;
            let j = serde_json::to_string(&TrialLine {
                trial: r.trial.index + 1,
                choices: &r.trial.choices,
                distiller: record.spec.to_string(),
                spec: &record.spec,
                outcome: &record.outcome,
            })?;
            use std::io::Write;
            writeln!(log, "{j}").map_err(|e| AppError::io(log_path, e))?;
            records.push(record);
            Ok(())
        })();
        if let Err(e) = done {
            failure = Some(e);
            failed.set(true);
        }
    };
    let canonical = |c: &Vec<usize>| match ctx.effective {
        Some(e) => e.canonical(c),
        None => c.clone(),
    };
    let driven = autokd_search::drive(
        strategy,
        store,
        autokd_search::DriverConfig {
            budget,
            workers: ctx.cfg.workers,
            max_repeats: 10 * budget.max(100),
        },
        &canonical,
        || failed.get() || deadline.is_some_and(|d| Instant::now() >= d),
        evaluate,
        on_result,
    );
    observe(SearchEvent::StreamEnd).map_err(AppError::Output)?;
    driven?;
    match failure {
        Some(e) => Err(e),
        None => Ok(records),
    }
}

/// The run folder's record of the validation sample: indices into the training split (JSON).
const VALIDATION_FILE: &str = "validation.json";

/// `report.md`: the run, the top-10 table, the comparison with random search when it ran.
pub fn report_markdown(
    cfg: &SearchConfig,
    records: &[TrialRecord],
    baseline: Option<&[TrialRecord]>,
    seconds: f64,
    dir: &Path,
    val_images: usize,
    named: &[NamedBaseline],
) -> String {
    let sorted = accepted_best_first(records);
    let rejected = records.len() - sorted.len();
    let mut s = format!(
        "# autokd search\n\n{} → {} on `{}`, strategy {:?}, {} trials ({} rejected), {:.1} s of evaluation in all ({:.1} s in the call that wrote this report).\nReward: {:?} (β = {}) on {} validation images ({}).\nRun folder: `{}`.\n\n## Top 10\n\n| rank | trial | reward | val CE | gap | top-1 | distiller |\n| ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
        cfg.teacher,
        cfg.student,
        cfg.dataset,
        cfg.strategy,
        records.len(),
        rejected,
        records.iter().map(|r| r.outcome.seconds).sum::<f64>(),
        seconds,
        cfg.proxy.reward,
        cfg.proxy.beta,
        val_images,
        VALIDATION_FILE,
        dir.display()
    );
    for (
        rank,
        TrialRecord {
            trial: t,
            spec,
            outcome: o,
        },
    ) in sorted.iter().take(10).enumerate()
    {
        s.push_str(&format!(
            "| {} | {} | {:.4} | {:.3} | {:.3} | {:.1}% | `{}` |\n",
            rank + 1,
            t.index + 1,
            o.reward.unwrap_or(f64::NAN),
            o.val_ce,
            o.gap,
            100.0 * o.accuracy,
            spec
        ));
    }
    if let Some(note) = noise_note(&sorted, val_images) {
        s.push_str(&note);
    }
    if !named.is_empty() {
        s.push_str("\n## Named baselines on the same proxy\n\n| baseline | reward | rank among the trials | val CE | top-1 | distiller |\n| --- | ---: | ---: | ---: | ---: | --- |\n");
        for b in named {
            let o = &b.outcome;
            s.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.1}% | `{}` |\n",
                b.name,
                o.reward
                    .map_or("rejected".to_string(), |v| format!("{v:.4}")),
                b.rank
                    .map_or("—".to_string(), |r| format!("{r} of {}", sorted.len())),
                o.val_ce,
                100.0 * o.accuracy,
                b.distiller
            ));
        }
    }
    if let Some(base) = baseline {
        let curve = |r: &[TrialRecord]| best_so_far(r);
        let (m, b) = (curve(records), curve(base));
        let final_b = b.last().copied().flatten().unwrap_or(f64::NEG_INFINITY);
        let reached = m
            .iter()
            .position(|v| v.is_some_and(|v| v >= final_b))
            .map_or("never".to_string(), |i| format!("at trial {}", i + 1));
        s.push_str(&format!(
            "\n## Against random search (same space, same budget)\n\n| strategy | best reward | trials |\n| --- | ---: | ---: |\n| {:?} | {:.4} | {} |\n| random | {:.4} | {} |\n\n{:?} reached random search's final best {reached}.\n",
            cfg.strategy,
            m.last().copied().flatten().unwrap_or(f64::NAN),
            records.len(),
            final_b,
            base.len(),
            cfg.strategy
        ));
    }
    s.push_str("\n![reward against trial](rewards.svg)\n");
    s
}

/// The accepted trials, best reward first (ties in the order given).
pub(crate) fn accepted_best_first(records: &[TrialRecord]) -> Vec<&TrialRecord> {
    let mut sorted: Vec<&TrialRecord> = records
        .iter()
        .filter(|r| r.trial.reward.is_some())
        .collect();
    sorted.sort_by(|a, b| {
        b.trial
            .reward
            .partial_cmp(&a.trial.reward)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    sorted
}

/// How noisy the validation CE is on this sample, against how far the top trials lie apart:
/// the median over accepted trials of the per-image CE's standard deviation over `√n`.
/// `None` when no trial kept it (records from before it was measured).
fn noise_note(sorted: &[&TrialRecord], val_images: usize) -> Option<String> {
    let mut sds: Vec<f64> = sorted
        .iter()
        .map(|r| r.outcome.val_ce_sd)
        .filter(|v| v.is_finite())
        .collect();
    if sds.is_empty() || val_images == 0 {
        return None;
    }
    sds.sort_by(f64::total_cmp);
    let median = sds[sds.len() / 2];
    let se = median / (val_images as f64).sqrt();
    let reward = |i: usize| sorted.get(i).and_then(|r| r.trial.reward);
    let spread = match (reward(0), reward(sorted.len().min(10).saturating_sub(1))) {
        (Some(a), Some(b)) if sorted.len() > 1 => format!(
            "; the top {} rewards span {:.4}",
            sorted.len().min(10),
            a - b
        ),
        _ => String::new(),
    };
    Some(format!(
        "\nThe validation CE's standard error on these {val_images} images is about {se:.4} (median per-image standard deviation {median:.3} over √{val_images}){spread}. Two trials are scored on the same images, so the noise in their difference is smaller still.\n"
    ))
}

/// Best reward so far after each trial (`None` until one is accepted).
pub fn best_so_far(records: &[TrialRecord]) -> Vec<Option<f64>> {
    let mut best: Option<f64> = None;
    records
        .iter()
        .map(|r| {
            if let Some(v) = r.trial.reward {
                best = Some(best.map_or(v, |b| b.max(v)));
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The teacher's cache name: unchanged for a recipe without a backbone (the hash of the
    /// architecture, dataset, recipe and init scheme, as before), and for one with a backbone it
    /// follows the file's contents, not only its path; an unreadable backbone names the file.
    #[test]
    fn a_pretrained_backbone_is_part_of_the_teachers_cache_name() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SearchConfig::default();
        let spec = ModelSpec {
            name: cfg.teacher,
            in_channels: 1,
            num_classes: 10,
            image_size: 8,
        };
        let plain = teacher_cache_path(&cfg, &spec, "digits", dir.path()).unwrap();
        let key = serde_json::to_string(&(
            &spec,
            "digits",
            &cfg.teacher_training,
            autokd_models::init::INIT_SCHEME,
        ))
        .unwrap();
        assert_eq!(
            plain,
            dir.path().join("teachers").join(format!(
                "{}-{:016x}.bpk",
                cfg.teacher,
                fnv1a(key.as_bytes())
            ))
        );
        let weights = dir.path().join("backbone.bpk");
        let mut with = cfg.clone();
        with.teacher_training.backbone_weights = Some(weights.clone());
        let err = teacher_cache_path(&with, &spec, "digits", dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("backbone.bpk"), "{err}");
        std::fs::write(&weights, b"one").unwrap();
        let a = teacher_cache_path(&with, &spec, "digits", dir.path()).unwrap();
        std::fs::write(&weights, b"two").unwrap();
        let b = teacher_cache_path(&with, &spec, "digits", dir.path()).unwrap();
        assert_ne!(a, plain);
        assert_ne!(a, b);
        std::fs::write(&weights, b"one").unwrap();
        assert_eq!(
            a,
            teacher_cache_path(&with, &spec, "digits", dir.path()).unwrap()
        );
    }
    use autokd_distill::{GlobalTransform, SearchSpace};

    /// The report's noise line: the median per-image SD over √n, and the top rewards' span;
    /// nothing for records from before the SD was kept.
    #[test]
    fn the_report_states_the_validation_noise() {
        let record = |index: usize, reward: f64, sd: f64| TrialRecord {
            trial: Trial {
                index,
                choices: vec![0],
                reward: Some(reward),
            },
            spec: DistillerSpec::baseline("kd").unwrap(),
            outcome: TrialOutcome {
                reward: Some(reward),
                val_ce: -reward,
                val_ce_sd: sd,
                gap: 0.0,
                accuracy: 0.9,
                last_losses: Vec::new(),
                rejected: None,
                seconds: 0.1,
            },
        };
        let records = [
            record(0, -0.5, 0.5),
            record(1, -0.3, 1.5),
            record(2, -0.4, 1.0),
        ];
        let sorted: Vec<&TrialRecord> = vec![&records[1], &records[2], &records[0]];
        let note = noise_note(&sorted, 100).unwrap();
        // Median SD 1.0 over √100: 0.1; the top three span -0.3 - (-0.5) = 0.2.
        assert!(
            note.contains("about 0.1000 (median per-image standard deviation 1.000 over √100)"),
            "{note}"
        );
        assert!(note.contains("the top 3 rewards span 0.2000"), "{note}");
        let old: Vec<TrialRecord> = records
            .iter()
            .cloned()
            .map(|mut r| {
                r.outcome.val_ce_sd = f64::NAN;
                r
            })
            .collect();
        assert_eq!(noise_note(&old.iter().collect::<Vec<_>>(), 100), None);
        // The header counts the trials' own evaluation time (0.1 s each), whatever call wrote
        // it: a resumed search that ran no trial does not read "in 0.0 s".
        let cfg: SearchConfig = toml::from_str("").unwrap();
        let md = report_markdown(&cfg, &records, None, 0.0, Path::new("run"), 100, &[]);
        assert!(
            md.contains("3 trials (0 rejected), 0.3 s of evaluation in all (0.0 s in the call"),
            "{md}"
        );
    }

    /// A run resumes over the space recorded in its folder, whatever the configured (or
    /// default) space is now; a folder from before `space.json` replays without deduplication;
    /// an edited `space.json` is refused.
    #[test]
    fn a_run_keeps_its_recorded_space() {
        let dir = tempfile::tempdir().unwrap();
        let narrow = SearchSpace {
            global: vec![GlobalTransform::None],
            ..SearchSpace::default()
        };
        // A new run takes the configured space and deduplicates.
        let new = RunSpace::for_run(dir.path(), false, narrow.clone()).unwrap();
        assert!(new.deduplicate);
        assert_eq!(new.space, narrow);
        // Resuming a folder without space.json: the configured space, no deduplication.
        let legacy = RunSpace::for_run(dir.path(), true, SearchSpace::default()).unwrap();
        assert!(!legacy.deduplicate);
        // Resuming with a recorded space: that space, even though the default is now wider.
        std::fs::write(
            dir.path().join(RunSpace::FILE),
            serde_json::to_string(&new).unwrap(),
        )
        .unwrap();
        let resumed = RunSpace::for_run(dir.path(), true, SearchSpace::default()).unwrap();
        assert_eq!(resumed.space, narrow);
        assert!(resumed.deduplicate);
        assert_eq!(resumed.fingerprint, new.fingerprint);
        // An edited file: refused, naming it.
        let mut edited = new.clone();
        edited.space.temperature.pop();
        std::fs::write(
            dir.path().join(RunSpace::FILE),
            serde_json::to_string(&edited).unwrap(),
        )
        .unwrap();
        let err = RunSpace::for_run(dir.path(), true, SearchSpace::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("space.json") && err.contains("edited"),
            "{err}"
        );
    }
}
