//! `autokd search`: find the best distiller for a teacher/student pair with MCTS (or random
//! search), scoring each candidate by proxy training, and write a run folder:
//! `config.toml` (resolved), `trials.jsonl`, `best.toml`, `report.md`, `rewards.svg`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use autokd_data::DatasetSpec;
use autokd_distill::{DistillerSpec, SearchSpaceConfig};
use autokd_models::{Backbone, Model, ModelName, ModelSpec, load_weights, save_weights};
use autokd_search::{Mcts, MctsConfig, RandomSearch, Strategy, Trial};
use autokd_train::{ProxyConfig, ProxyEvaluator, SupervisedConfig, TrialOutcome, train_supervised};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::device::{DeviceSpec, select_devices};

/// Which search strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    /// Monte Carlo Tree Search.
    Mcts,
    /// Uniform random search (the baseline).
    Random,
}

/// Where the trials of a search are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// JSON lines in the run folder (`journal.jsonl`): a killed search resumes from it.
    Journal,
    /// A SQLite database (`store_path`, default `trials.sqlite` in the run folder).
    Sqlite,
    /// In memory only: nothing to resume from.
    Memory,
}

/// A search, as a config file gives it (every field has a default: the embedded-digits search).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Dataset string.
    pub dataset: DatasetSpec,
    /// Teacher architecture.
    pub teacher: ModelName,
    /// Teacher weights (.bpk, .pth, .safetensors); without them the teacher is trained first
    /// (and cached for the next search).
    pub teacher_weights: Option<PathBuf>,
    /// Student architecture.
    pub student: ModelName,
    /// Recipe of the teacher when it must be trained.
    pub teacher_training: SupervisedConfig,
    /// Proxy training of each candidate.
    pub proxy: ProxyConfig,
    /// The search space (default: the paper's).
    pub space: SearchSpaceConfig,
    /// Strategy.
    pub strategy: StrategyName,
    /// MCTS settings.
    pub mcts: MctsConfig,
    /// Distinct candidates to evaluate.
    pub trials: usize,
    /// Wall-time budget of the search in minutes (no new trial starts after it).
    pub max_minutes: Option<f64>,
    /// After an MCTS search, run random search with the same budget and plot both.
    pub baseline: bool,
    /// Proxy trials evaluated at once (threads sharing the teacher cache).
    pub workers: usize,
    /// Where trials are kept.
    pub store: StoreKind,
    /// Database file of the SQLite store (default `trials.sqlite` in the run folder).
    pub store_path: Option<PathBuf>,
}

impl SearchConfig {
    /// The same search, whatever its budget and parallelism: what a run folder can be resumed
    /// with.
    fn same_search(&self, other: &Self) -> bool {
        let strip = |c: &Self| Self {
            trials: 0,
            max_minutes: None,
            workers: 1,
            baseline: false,
            ..c.clone()
        };
        strip(self) == strip(other)
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetSpec::Digits,
            teacher: ModelName::Resnet20,
            teacher_weights: None,
            student: ModelName::Resnet8,
            teacher_training: SupervisedConfig::default(),
            proxy: ProxyConfig::default(),
            space: SearchSpaceConfig::default(),
            strategy: StrategyName::Mcts,
            mcts: MctsConfig::default(),
            trials: 60,
            max_minutes: None,
            baseline: false,
            workers: 1,
            store: StoreKind::Journal,
            store_path: None,
        }
    }
}

/// Arguments of `autokd search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Search config (TOML); default: the embedded digits, resnet20 → resnet8.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder; default `runs/search-<unix time>`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Distinct candidates to evaluate (overrides the config).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Seed of the search, the proxy students and their data order (overrides the config).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Strategy (overrides the config).
    #[arg(long)]
    pub strategy: Option<StrategyName>,
    /// Wall-time budget in minutes (overrides the config).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Also run the random-search baseline with the same budget, and plot both.
    #[arg(long)]
    pub baseline: bool,
    /// Proxy trials evaluated at once (overrides the config).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Where trials are kept (overrides the config).
    #[arg(long)]
    pub store: Option<StoreKind>,
    /// Device; several (comma-separated, e.g. `cuda:0,cuda:1`) evaluate trials on all of them at
    /// once, one proxy evaluator (with its own teacher cache) per device, at least one worker
    /// each. The teacher is trained on the first.
    #[arg(long, value_delimiter = ',', default_value = "flex")]
    pub device: Vec<DeviceSpec>,
    /// Folder of trained teachers, reused across searches; default `$XDG_CACHE_HOME/autokd` or
    /// `~/.cache/autokd`.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// The space a run folder is searched over (`space.json`): resolved, with its fingerprint, so that
/// a run resumes over the space it started with even when the default space changes, and whether
/// candidates with the same loss are one candidate (runs written before that replay without it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunSpace {
    /// FNV-1a of the resolved space's JSON.
    fingerprint: String,
    /// Deduplicate candidates by their effective loss (`autokd_distill::Effective`).
    deduplicate: bool,
    /// The resolved space.
    space: autokd_distill::SearchSpace,
}

impl RunSpace {
    const FILE: &'static str = "space.json";

    fn new(space: autokd_distill::SearchSpace, deduplicate: bool) -> anyhow::Result<Self> {
        let fingerprint = format!("{:016x}", fnv1a(serde_json::to_string(&space)?.as_bytes()));
        Ok(Self {
            fingerprint,
            deduplicate,
            space,
        })
    }

    /// The space of the run in `dir`: the recorded one when resuming (a folder from before
    /// `space.json` keeps the configured space, without deduplication), else `configured`.
    fn for_run(
        dir: &Path,
        resuming: bool,
        configured: autokd_distill::SearchSpace,
    ) -> anyhow::Result<Self> {
        let path = dir.join(Self::FILE);
        if !resuming {
            return Self::new(configured, true);
        }
        if !path.is_file() {
            return Self::new(configured, false);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let recorded: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a recorded search space", path.display()))?;
        let check = Self::new(recorded.space.clone(), recorded.deduplicate)?;
        anyhow::ensure!(
            check.fingerprint == recorded.fingerprint,
            "{}: its fingerprint {} does not match its space ({}); the file was edited",
            path.display(),
            recorded.fingerprint,
            check.fingerprint
        );
        Ok(recorded)
    }
}

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

fn cache_root(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = arg {
        return p.clone();
    }
    match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(x), _) => PathBuf::from(x).join("autokd"),
        (None, Some(h)) => PathBuf::from(h).join(".cache").join("autokd"),
        _ => PathBuf::from(".autokd-cache"),
    }
}

/// The teacher: loaded from the config's weights, from the cache, or trained and cached.
fn teacher(
    cfg: &SearchConfig,
    spec: &ModelSpec,
    dataset: &autokd_data::Dataset,
    args: &SearchArgs,
    device: &Device,
    out: &mut dyn Write,
) -> anyhow::Result<Model> {
    let model = spec.init(device)?;
    if let Some(w) = &cfg.teacher_weights {
        writeln!(out, "teacher: {} from {}", cfg.teacher, w.display())?;
        return Ok(load_weights(model, cfg.teacher, w)?);
    }
    let key = serde_json::to_string(&(spec, dataset.info.name.as_str(), &cfg.teacher_training))?;
    let dir = cache_root(&args.cache_dir).join("teachers");
    let path = dir.join(format!(
        "{}-{:016x}.bpk",
        cfg.teacher,
        fnv1a(key.as_bytes())
    ));
    if path.is_file() {
        let model = load_weights(model, cfg.teacher, &path)?;
        let acc = autokd_train::accuracy(&model, dataset, device)?;
        writeln!(
            out,
            "teacher: {} from the cache {} (test top-1 {:.2}%)",
            cfg.teacher,
            path.display(),
            100.0 * acc
        )?;
        return Ok(model);
    }
    writeln!(
        out,
        "teacher: training {} on {} ({} epochs); cached as {}",
        cfg.teacher,
        dataset.info.name,
        cfg.teacher_training.epochs,
        path.display()
    )?;
    let start = Instant::now();
    let (model, reports) = train_supervised(spec, dataset, &cfg.teacher_training, device, |r| {
        tracing::info!(
            epoch = r.epoch,
            loss = r.train_loss,
            acc = r.test_accuracy,
            "teacher"
        );
    })?;
    let last = reports.last().map_or(0.0, |r| r.test_accuracy);
    writeln!(
        out,
        "teacher: trained in {:.1} s, test top-1 {:.2}%",
        start.elapsed().as_secs_f64(),
        100.0 * last
    )?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    save_weights(&model, &path)?;
    Ok(model)
}

/// Runs the search.
pub fn run(args: &SearchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cfg: SearchConfig = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{}: invalid search config", p.display()))?
        }
        None => SearchConfig::default(),
    };
    if let Some(t) = args.trials {
        cfg.trials = t;
    }
    if let Some(s) = args.seed {
        cfg.mcts.seed = s;
        cfg.proxy.seed = s;
    }
    if let Some(s) = args.strategy {
        cfg.strategy = s;
    }
    if let Some(m) = args.max_minutes {
        cfg.max_minutes = Some(m);
    }
    cfg.baseline |= args.baseline;
    if let Some(w) = args.workers {
        cfg.workers = w;
    }
    if let Some(s) = args.store {
        cfg.store = s;
    }
    anyhow::ensure!(cfg.trials > 0, "trials must be at least 1");
    anyhow::ensure!(cfg.workers > 0, "workers must be at least 1");
    let configured = cfg.space.validate()?;
    let (device, devices) = select_devices(&args.device)?;
    cfg.workers = cfg.workers.max(devices.len());
    let dataset = cfg
        .dataset
        .load()
        .with_context(|| format!("loading {}", cfg.dataset))?;
    let info = &dataset.info;
    let spec_of = |name: ModelName| crate::model_spec(name, info);
    let (t_spec, s_spec) = (spec_of(cfg.teacher), spec_of(cfg.student));
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("runs").join(format!("search-{secs}"))
        }
    };
    let config_path = dir.join("config.toml");
    let resuming = config_path.is_file();
    if resuming {
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let old: SearchConfig = toml::from_str(&text)
            .with_context(|| format!("{}: invalid search config", config_path.display()))?;
        anyhow::ensure!(
            old.same_search(&cfg),
            "{} holds a different search (its config.toml differs in more than trials, max_minutes, workers and baseline); resume it with the same config and seed, or give a new --out",
            dir.display()
        );
    }
    let recorded = RunSpace::for_run(&dir, resuming, configured)?;
    let space = recorded.space.clone();
    // Everything that can be checked is checked before the teacher trains (minutes to hours):
    // the taps of both models against the space, the teacher's weights, the run folder and the
    // stores.
    let (t_model, s_model) = (t_spec.init(&device)?, s_spec.init(&device)?);
    let (t_info, s_info) = (t_model.feature_info(), s_model.feature_info());
    let taps = space
        .teacher_taps(cfg.student.as_str(), &s_info, cfg.teacher.as_str(), &t_info)
        .context("the search space does not fit the models")?;
    // Candidates that compute the same loss at these taps are evaluated once.
    let effective = {
        let zeros = space.levels().iter().map(|_| 0).collect::<Vec<_>>();
        let terms = space.spec(&zeros)?.resolve(
            cfg.student.as_str(),
            &s_info,
            cfg.teacher.as_str(),
            &t_info,
        )?;
        let term = terms
            .first()
            .context("the search space has no feature term")?;
        let [c, h, w] = info.input_shape();
        let shape_at = |model: &Model, tap: usize| {
            let out = model.forward_intermediates(
                Tensor::<4>::zeros([1, c, h, w], &device),
                &autokd_models::TapRequest::indices(&[tap]),
            );
            out.features
                .first()
                .map(|f| autokd_distill::map_shape(&f.dims()))
                .context("a model returned no tap")
        };
        let ([ct, ht, wt], [_, hs, ws]) = (
            shape_at(&t_model, term.teacher_index)?,
            shape_at(&s_model, term.student_index)?,
        );
        recorded
            .deduplicate
            .then(|| {
                autokd_distill::Effective::new(
                    &space,
                    [ct, ht.min(hs), wt.min(ws)],
                    &crate::device::host_device(&device),
                )
            })
            .transpose()?
    };
    if let Some(w) = &cfg.teacher_weights {
        std::fs::File::open(w)
            .with_context(|| format!("teacher_weights: cannot read {}", w.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("the run folder {} is not writable", dir.display()))?;
    let mut store = open_store(&cfg, &dir, "mcts")?;
    store.events()?;
    let mut baseline_store = if cfg.baseline && cfg.strategy == StrategyName::Mcts {
        let mut s = open_store(&cfg, &dir, "random")?;
        s.events()?;
        Some(s)
    } else {
        None
    };
    crate::write_atomic(&config_path, toml::to_string(&cfg)?.as_bytes())?;
    crate::write_atomic(
        &dir.join(RunSpace::FILE),
        serde_json::to_string_pretty(&recorded)?.as_bytes(),
    )?;
    writeln!(
        out,
        "search: {} → {} on {} ({} train, {} test), {:?}, {} trials, {} at a time, space of {} distillers ({}); run folder {} ({} it with --out {})",
        cfg.teacher,
        cfg.student,
        info.name,
        dataset.train.len(),
        dataset.test.len(),
        cfg.strategy,
        cfg.trials,
        cfg.workers,
        space.size(),
        match &effective {
            Some(e) => format!("{} distinct losses at these taps", e.distinct()),
            None => "no deduplication: a run folder from before it".to_string(),
        },
        dir.display(),
        if resuming {
            "resuming; resume"
        } else {
            "resume"
        },
        dir.display()
    )?;
    let teacher = teacher(&cfg, &t_spec, &dataset, args, &device, out)?;
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
        .collect::<Result<Vec<_>, _>>()?;
    let evaluator = EvaluatorPool {
        busy: std::sync::Mutex::new(vec![0; evaluators.len()]),
        evaluators,
    };
    let (n_train, n_val) = evaluator.evaluators[0].sizes();
    let plan = evaluator.evaluators[0].plan();
    let mib = |b: usize| b as f64 / f64::from(1u32 << 20);
    let source = match plan.source {
        autokd_train::TeacherSource::Cache => format!(
            "teacher outputs cached ({:.0} MiB of its {:.0} MiB budget) in {:.1} s",
            mib(plan.bytes),
            mib(plan.budget),
            start.elapsed().as_secs_f64()
        ),
        autokd_train::TeacherSource::Online if cfg.proxy.cache_teacher => format!(
            "the teacher cache would need {:.0} MiB, over its {:.0} MiB budget (proxy.cache_budget_bytes): the frozen teacher runs online on every batch instead",
            mib(plan.bytes),
            mib(plan.budget)
        ),
        autokd_train::TeacherSource::Online => {
            "the frozen teacher runs online on every batch (proxy.cache_teacher = false)".into()
        }
    };
    writeln!(
        out,
        "proxy: {n_train} training images ({} per class), {n_val} validation images, {} epochs; {source}",
        cfg.proxy.per_class, cfg.proxy.epochs,
    )?;
    let levels: Vec<usize> = space.levels().iter().map(|l| l.options).collect();
    let deadline = cfg
        .max_minutes
        .map(|m| Instant::now() + std::time::Duration::from_secs_f64(60.0 * m));
    let mut strategy: Box<dyn Strategy> = match cfg.strategy {
        StrategyName::Mcts => Box::new(Mcts::new(&levels, cfg.mcts.clone())),
        StrategyName::Random => Box::new(RandomSearch::new(&levels, cfg.mcts.seed)),
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
        out,
    )?;
    let elapsed = search_start.elapsed().as_secs_f64();
    let baseline = if let Some(baseline_store) = baseline_store.as_mut() {
        writeln!(
            out,
            "baseline: random search over the same space, same budget ({} trials)",
            records.len()
        )?;
        let mut random = RandomSearch::new(&levels, cfg.mcts.seed);
        let ctx = Ctx {
            deadline: None,
            ..ctx
        };
        let mut budgeted = cfg.clone();
        budgeted.trials = records.len();
        let ctx = Ctx {
            cfg: &budgeted,
            ..ctx
        };
        Some(trial_loop(
            &ctx,
            &mut random,
            "random ",
            baseline_store.as_mut(),
            &dir.join("trials_random.jsonl"),
            out,
        )?)
    } else {
        None
    };
    anyhow::ensure!(
        !records.is_empty(),
        "no trial ran within the time budget of {:?} minutes",
        cfg.max_minutes
    );
    let Some((_, best_spec, best_outcome)) = best_of(&records) else {
        anyhow::bail!("every one of the {} trials was rejected", records.len());
    };
    crate::write_atomic(&dir.join("best.toml"), best_spec.to_toml()?.as_bytes())?;
    crate::write_atomic(
        &dir.join("rewards.svg"),
        plot(&records, baseline.as_deref()).as_bytes(),
    )?;
    crate::write_atomic(
        &dir.join("report.md"),
        report(&cfg, &records, baseline.as_deref(), elapsed, &dir).as_bytes(),
    )?;
    writeln!(
        out,
        "best: reward {:.4} (top-1 {:.1}%)  {best_spec}",
        best_outcome.reward.unwrap_or(f64::NAN),
        100.0 * best_outcome.accuracy
    )?;
    if let Some((_, spec, o)) = baseline.as_deref().and_then(best_of) {
        writeln!(
            out,
            "random baseline best: reward {:.4} (top-1 {:.1}%)  {spec}",
            o.reward.unwrap_or(f64::NAN),
            100.0 * o.accuracy
        )?;
    }
    writeln!(
        out,
        "wrote {}/{{config.toml, space.json, {}trials.jsonl, best.toml, report.md, rewards.svg}} ({} trials in {elapsed:.1} s)",
        dir.display(),
        match cfg.store {
            StoreKind::Journal => "journal.jsonl, ",
            StoreKind::Sqlite if cfg.store_path.is_none() => "trials.sqlite, ",
            _ => "",
        },
        records.len()
    )?;
    Ok(())
}

type Record = (Trial, DistillerSpec, TrialOutcome);

fn best_of(records: &[Record]) -> Option<&Record> {
    records
        .iter()
        .filter(|(t, _, _)| t.reward.is_some())
        .max_by(|a, b| {
            a.0.reward
                .partial_cmp(&b.0.reward)
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
    space: &'a autokd_distill::SearchSpace,
    /// Candidates with the same loss (`None`: a run folder written before deduplication, replayed
    /// as it was).
    effective: Option<&'a autokd_distill::Effective>,
    evaluator: &'a EvaluatorPool,
    deadline: Option<Instant>,
}

/// The store of one search stream (`mcts` or `random`) of a run folder.
fn open_store(
    cfg: &SearchConfig,
    dir: &Path,
    stream: &str,
) -> anyhow::Result<Box<dyn autokd_search::TrialStore>> {
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

/// Runs `strategy` for the configured budget against `store` (resuming what it holds), printing
/// a line per trial and writing every finished trial to `log_path` as JSON.
fn trial_loop(
    ctx: &Ctx<'_>,
    strategy: &mut dyn Strategy,
    label: &str,
    store: &mut dyn autokd_search::TrialStore,
    log_path: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<Vec<Record>> {
    let events = store.events()?;
    let started = events
        .iter()
        .filter(|e| matches!(e, autokd_search::Event::Started { .. }))
        .count();
    let finished = events.len() - started;
    if !events.is_empty() {
        writeln!(
            out,
            "{label}resuming: {finished} finished trials replayed from the store, {} to run again",
            started - finished
        )?;
    }
    let mut log = std::fs::File::create(log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut records: Vec<Record> = Vec::new();
    let mut best: Option<f64> = None;
    let mut failure: Option<anyhow::Error> = None;
    // Set with `failure`: no new trial starts once an output or log write has failed.
    let failed = std::cell::Cell::new(false);
    let budget = ctx.cfg.trials;
    let deadline = ctx.deadline;
    let bar = progress_bar(budget as u64, label);
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
        let parsed = (|| -> anyhow::Result<(DistillerSpec, TrialOutcome)> {
            let spec = match r.payload.get("spec") {
                Some(v) => serde_json::from_value(v.clone())
                    .with_context(|| format!("the stored spec of trial {}", r.trial.index))?,
                None => ctx.space.spec(&r.trial.choices)?,
            };
            let outcome: TrialOutcome = serde_json::from_value(r.payload.clone())
                .with_context(|| format!("the stored outcome of trial {}", r.trial.index))?;
            Ok((spec, outcome))
        })();
        let (spec, outcome) = match parsed {
            Ok(x) => x,
            Err(e) => {
                failure = Some(e);
                failed.set(true);
                return;
            }
        };
        let k = records.len() + 1;
        if let Some(v) = outcome.reward {
            best = Some(best.map_or(v, |b| b.max(v)));
        }
        bar.inc(1);
        let written = (|| -> anyhow::Result<()> {
            if !r.replayed {
                let line = match (&outcome.reward, &outcome.rejected) {
                    (Some(v), _) => format!(
                        "reward {v:>8.4} (ce {:.3}, gap {:.3}, top-1 {:5.1}%)",
                        outcome.val_ce,
                        outcome.gap,
                        100.0 * outcome.accuracy
                    ),
                    (None, Some(why)) => format!("rejected: {why}"),
                    (None, None) => "rejected".to_string(),
                };
                bar.suspend(|| {
                    writeln!(
                        out,
                        "{label}[{k:>3}/{budget}] {line}  best {:>8.4}  {:.1}s  {spec}",
                        best.unwrap_or(f64::NAN),
                        outcome.seconds
                    )
                })
                .context("writing the search's output")?;
            }
            let j = serde_json::to_string(&TrialLine {
                trial: r.trial.index + 1,
                choices: &r.trial.choices,
                distiller: spec.to_string(),
                spec: &spec,
                outcome: &outcome,
            })?;
            writeln!(log, "{j}").with_context(|| format!("writing {}", log_path.display()))?;
            Ok(())
        })();
        if let Err(e) = written {
            failure = Some(e);
            failed.set(true);
            return;
        }
        records.push((r.trial.clone(), spec, outcome));
    };
    let driven = autokd_search::drive(
        strategy,
        store,
        autokd_search::DriverConfig {
            budget,
            workers: ctx.cfg.workers,
            max_repeats: 10 * budget.max(100),
        },
        &|c| match ctx.effective {
            Some(e) => e.canonical(c),
            None => c.clone(),
        },
        || failed.get() || deadline.is_some_and(|d| Instant::now() >= d),
        evaluate,
        on_result,
    );
    bar.finish_and_clear();
    driven?;
    match failure {
        Some(e) => Err(e),
        None => Ok(records),
    }
}

/// A bar of finished trials on a terminal (stderr); hidden when stderr is not one.
fn progress_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix}{bar:40.cyan/blue} {pos}/{len} trials  {elapsed_precise} (eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_string());
    bar
}

fn report(
    cfg: &SearchConfig,
    records: &[Record],
    baseline: Option<&[Record]>,
    seconds: f64,
    dir: &Path,
) -> String {
    let mut sorted: Vec<&Record> = records.iter().filter(|r| r.0.reward.is_some()).collect();
    sorted.sort_by(|a, b| {
        b.0.reward
            .partial_cmp(&a.0.reward)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let rejected = records.len() - sorted.len();
    let mut s = format!(
        "# autokd search\n\n{} → {} on `{}`, strategy {:?}, {} trials ({} rejected) in {:.1} s.\nReward: {:?} (β = {}).\nRun folder: `{}`.\n\n## Top 10\n\n| rank | trial | reward | val CE | gap | top-1 | distiller |\n| ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
        cfg.teacher,
        cfg.student,
        cfg.dataset,
        cfg.strategy,
        records.len(),
        rejected,
        seconds,
        cfg.proxy.reward,
        cfg.proxy.beta,
        dir.display()
    );
    for (rank, (t, spec, o)) in sorted.iter().take(10).enumerate() {
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
    if let Some(base) = baseline {
        let curve = |r: &[Record]| best_so_far(r);
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

/// Best reward so far after each trial (`None` until one is accepted).
fn best_so_far(records: &[Record]) -> Vec<Option<f64>> {
    let mut best: Option<f64> = None;
    records
        .iter()
        .map(|r| {
            if let Some(v) = r.0.reward {
                best = Some(best.map_or(v, |b| b.max(v)));
            }
            best
        })
        .collect()
}

/// An SVG plot of each trial's reward (dots) and the best so far (line), with the random
/// baseline's best so far when it ran. The reward axis is clipped at the 10th percentile so
/// that a few disastrous candidates do not flatten the curve.
fn plot(records: &[Record], baseline: Option<&[Record]>) -> String {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let rewards: Vec<Option<f64>> = records.iter().map(|r| r.0.reward).collect();
    let mut vals: Vec<f64> = rewards.iter().flatten().copied().collect();
    if let Some(b) = baseline {
        vals.extend(b.iter().filter_map(|r| r.0.reward));
    }
    vals.sort_by(f64::total_cmp);
    let hi = vals.last().copied().unwrap_or(1.0);
    let lo = vals.get(vals.len() / 10).copied().unwrap_or(0.0);
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let n = records
        .len()
        .max(baseline.map_or(0, <[Record]>::len))
        .max(2) as f64;
    let x = |i: usize| m + (w - 2.0 * m) * i as f64 / (n - 1.0);
    let y = |v: f64| h - m - (h - 2.0 * m) * (v.max(lo) - lo) / (hi - lo);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    svg.push_str(&format!("<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n", h - m, w - m, h - m, h - m));
    svg.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">trial</text>\n<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">reward</text>\n", w / 2.0, h - 12.0, h / 2.0, h / 2.0));
    svg.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{hi:.3}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{lo:.3}</text>\n", m - 4.0, m + 4.0, m - 4.0, h - m));
    for (i, r) in rewards.iter().enumerate() {
        match r {
            Some(v) => svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#4477aa\"/>\n",
                x(i),
                y(*v)
            )),
            None => svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#cc3311\" text-anchor=\"middle\">×</text>\n",
                x(i),
                h - m - 4.0
            )),
        }
    }
    let line = |curve: Vec<Option<f64>>, colour: &str, label: &str, row: f64| {
        let pts: String = curve
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1} ", x(i), y(v))))
            .collect();
        format!(
            "<polyline points=\"{pts}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{label}</text>\n",
            w - m - 150.0,
            m - 30.0 + 14.0 * row
        )
    };
    svg.push_str(&line(best_so_far(records), "#ee6677", "best so far", 0.0));
    if let Some(b) = baseline {
        svg.push_str(&line(
            best_so_far(b),
            "#228833",
            "random search, best so far",
            1.0,
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use autokd_distill::{GlobalTransform, SearchSpace};

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
