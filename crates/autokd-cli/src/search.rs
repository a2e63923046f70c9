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
use autokd_search::{Mcts, MctsConfig, RandomSearch, Strategy, Trial, run as run_search};
use autokd_train::{ProxyConfig, ProxyEvaluator, SupervisedConfig, TrialOutcome, train_supervised};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::device::{DeviceSpec, select_device};

/// Which search strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    /// Monte Carlo Tree Search.
    Mcts,
    /// Uniform random search (the baseline).
    Random,
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
    /// Device.
    #[arg(long, default_value = "flex")]
    pub device: DeviceSpec,
    /// Folder of trained teachers, reused across searches; default `$XDG_CACHE_HOME/autokd` or
    /// `~/.cache/autokd`.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
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
    anyhow::ensure!(cfg.trials > 0, "trials must be at least 1");
    let space = cfg.space.validate()?;
    let device = select_device(&args.device)?;
    let dataset = cfg
        .dataset
        .load()
        .with_context(|| format!("loading {}", cfg.dataset))?;
    let info = &dataset.info;
    let spec_of = |name: ModelName| ModelSpec {
        name,
        in_channels: info.channels,
        num_classes: info.num_classes,
        image_size: info.height,
    };
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
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::write_atomic(&dir.join("config.toml"), toml::to_string(&cfg)?.as_bytes())?;
    writeln!(
        out,
        "search: {} → {} on {} ({} train, {} test), {:?}, {} trials, space of {} distillers; run folder {}",
        cfg.teacher,
        cfg.student,
        info.name,
        dataset.train.len(),
        dataset.test.len(),
        cfg.strategy,
        cfg.trials,
        space.size(),
        dir.display()
    )?;
    let teacher = teacher(&cfg, &t_spec, &dataset, args, &device, out)?;
    let taps: Vec<usize> = (0..teacher.feature_info().len()).collect();
    let start = Instant::now();
    let evaluator = ProxyEvaluator::new(
        &dataset,
        &teacher,
        cfg.teacher.as_str(),
        s_spec,
        &taps,
        cfg.proxy.clone(),
        &device,
    )?;
    let (n_train, n_val) = evaluator.sizes();
    writeln!(
        out,
        "proxy: {n_train} training images ({} per class), {n_val} validation images, {} epochs; teacher cached in {:.1} s",
        cfg.proxy.per_class,
        cfg.proxy.epochs,
        start.elapsed().as_secs_f64()
    )?;
    let levels: Vec<usize> = space.levels().iter().map(|l| l.options).collect();
    let mut strategy: Box<dyn Strategy> = match cfg.strategy {
        StrategyName::Mcts => Box::new(Mcts::new(&levels, cfg.mcts.clone())),
        StrategyName::Random => Box::new(RandomSearch::new(&levels, cfg.mcts.seed)),
    };
    let trials_path = dir.join("trials.jsonl");
    let mut log = std::fs::File::create(&trials_path)
        .with_context(|| format!("creating {}", trials_path.display()))?;
    let mut records: Vec<(Trial, DistillerSpec, TrialOutcome)> = Vec::new();
    let mut best: Option<f64> = None;
    let mut failure: Option<anyhow::Error> = None;
    let search_start = Instant::now();
    let trials = run_search(
        &mut StrategyRef(strategy.as_mut()),
        cfg.trials,
        10 * cfg.trials.max(100),
        |choices| {
            if failure.is_some() {
                return None;
            }
            let result = (|| -> anyhow::Result<(DistillerSpec, TrialOutcome)> {
                let spec = space.spec(choices)?;
                let outcome = evaluator.evaluate(&spec)?;
                Ok((spec, outcome))
            })();
            match result {
                Ok((spec, outcome)) => {
                    let k = records.len() + 1;
                    if let Some(r) = outcome.reward {
                        best = Some(best.map_or(r, |b| b.max(r)));
                    }
                    let line = match (&outcome.reward, &outcome.rejected) {
                        (Some(r), _) => format!(
                            "reward {r:>8.4} (ce {:.3}, gap {:.3}, top-1 {:5.1}%)",
                            outcome.val_ce,
                            outcome.gap,
                            100.0 * outcome.accuracy
                        ),
                        (None, Some(why)) => format!("rejected: {why}"),
                        (None, None) => "rejected".to_string(),
                    };
                    let _ = writeln!(
                        out,
                        "[{k:>3}/{}] {line}  best {:>8.4}  {:.1}s  {spec}",
                        cfg.trials,
                        best.unwrap_or(f64::NAN),
                        outcome.seconds
                    );
                    let json = serde_json::to_string(&TrialLine {
                        trial: k,
                        choices,
                        distiller: spec.to_string(),
                        spec: &spec,
                        outcome: &outcome,
                    });
                    if let Ok(j) = json {
                        let _ = writeln!(log, "{j}");
                    }
                    let reward = outcome.reward;
                    records.push((
                        Trial {
                            index: k - 1,
                            choices: choices.clone(),
                            reward,
                        },
                        spec,
                        outcome,
                    ));
                    reward
                }
                Err(e) => {
                    failure = Some(e);
                    None
                }
            }
        },
    );
    if let Some(e) = failure {
        return Err(e.context("a trial failed"));
    }
    let elapsed = search_start.elapsed().as_secs_f64();
    let Some((_, best_spec, best_outcome)) = records
        .iter()
        .filter(|(t, _, _)| t.reward.is_some())
        .max_by(|a, b| {
            a.0.reward
                .partial_cmp(&b.0.reward)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    else {
        anyhow::bail!("every one of the {} trials was rejected", trials.len());
    };
    crate::write_atomic(&dir.join("best.toml"), best_spec.to_toml()?.as_bytes())?;
    crate::write_atomic(&dir.join("rewards.svg"), plot(&records).as_bytes())?;
    crate::write_atomic(
        &dir.join("report.md"),
        report(&cfg, &records, elapsed, &dir).as_bytes(),
    )?;
    writeln!(
        out,
        "best: reward {:.4} (top-1 {:.1}%)  {best_spec}",
        best_outcome.reward.unwrap_or(f64::NAN),
        100.0 * best_outcome.accuracy
    )?;
    writeln!(
        out,
        "wrote {}/{{config.toml, trials.jsonl, best.toml, report.md, rewards.svg}} ({} trials in {elapsed:.1} s)",
        dir.display(),
        trials.len()
    )?;
    Ok(())
}

/// Lets the driver use a boxed strategy.
struct StrategyRef<'a>(&'a mut dyn Strategy);

impl Strategy for StrategyRef<'_> {
    fn ask(&mut self) -> autokd_search::Ticket {
        self.0.ask()
    }
    fn tell(&mut self, ticket: &autokd_search::Ticket, reward: Option<f64>) {
        self.0.tell(ticket, reward)
    }
}

fn report(
    cfg: &SearchConfig,
    records: &[(Trial, DistillerSpec, TrialOutcome)],
    seconds: f64,
    dir: &Path,
) -> String {
    let mut sorted: Vec<&(Trial, DistillerSpec, TrialOutcome)> =
        records.iter().filter(|r| r.0.reward.is_some()).collect();
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
    s.push_str("\n![reward against trial](rewards.svg)\n");
    s
}

/// An SVG plot of each trial's reward (dots) and the best so far (line).
fn plot(records: &[(Trial, DistillerSpec, TrialOutcome)]) -> String {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let rewards: Vec<Option<f64>> = records.iter().map(|r| r.0.reward).collect();
    let vals: Vec<f64> = rewards.iter().flatten().copied().collect();
    let (lo, hi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let n = records.len().max(2) as f64;
    let x = |i: usize| m + (w - 2.0 * m) * i as f64 / (n - 1.0);
    let y = |v: f64| h - m - (h - 2.0 * m) * (v - lo) / (hi - lo);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    svg.push_str(&format!("<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n", h - m, w - m, h - m, h - m));
    svg.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">trial</text>\n<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">reward</text>\n", w / 2.0, h - 12.0, h / 2.0, h / 2.0));
    svg.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{hi:.3}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{lo:.3}</text>\n", m - 4.0, m + 4.0, m - 4.0, h - m));
    let mut best = f64::NEG_INFINITY;
    let mut line = String::new();
    for (i, r) in rewards.iter().enumerate() {
        match r {
            Some(v) => {
                svg.push_str(&format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#4477aa\"/>\n",
                    x(i),
                    y(*v)
                ));
                best = best.max(*v);
            }
            None => svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#cc3311\" text-anchor=\"middle\">×</text>\n",
                x(i),
                h - m - 4.0
            )),
        }
        if best.is_finite() {
            line.push_str(&format!("{:.1},{:.1} ", x(i), y(best)));
        }
    }
    svg.push_str(&format!(
        "<polyline points=\"{line}\" fill=\"none\" stroke=\"#ee6677\" stroke-width=\"2\"/>\n"
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#ee6677\">best so far</text>\n</svg>\n",
        w - m - 80.0,
        m - 10.0
    ));
    svg
}
