//! `autokd bench fidelity`: proxy variants judged by an experiment's trainings. Each variant
//! (the search's proxy with some keys overridden: images per class, epochs, β, …) proxy-scores
//! the experiment's searched distillers at one or more proxy seeds; its rewards are ranked
//! against the distillers' trained top-1 (Kendall τ-b and Spearman ρ with 95% bootstrap
//! intervals, precision at top-5), beside its cost per trial.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use autokd_app::SearchConfig;
use autokd_distill::DistillerSpec;
use autokd_search::{bootstrap_ci, kendall_tau_b, spearman};
use serde::Serialize;

use crate::device::{DeviceSpec, select_device};

/// Arguments of `autokd bench fidelity`.
#[derive(Debug, clap::Args)]
pub struct FidelityBenchArgs {
    /// An experiment's run folder (`results.json`, `search/config.toml`).
    #[arg(long)]
    pub experiment: PathBuf,
    /// Proxy variants: `search` (the search's own proxy) or TOML files whose keys override the
    /// search's config (e.g. `[proxy]` with `per_class = 120` and `epochs = 1`).
    #[arg(long, value_delimiter = ',', default_value = "search")]
    pub variants: Vec<String>,
    /// Proxy seeds every variant scores at (the mean over them is a variant too).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub seeds: Vec<u64>,
    /// Folder of trained teachers; default `$XDG_CACHE_HOME/autokd` or `~/.cache/autokd`.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Device.
    #[arg(long, default_value = "flex")]
    pub device: DeviceSpec,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One variant at one seed, or a combination of seeds.
#[derive(Debug, Serialize)]
struct Row {
    variant: String,
    seeds: String,
    /// Optimizer steps per proxy trial.
    steps: usize,
    /// Proxy trials per distiller (1 at one seed; more when seeds are combined).
    trials_per_distiller: f64,
    seconds_per_trial: f64,
    rejected: usize,
    kendall: f64,
    kendall_ci: (f64, f64),
    spearman: f64,
    spearman_ci: (f64, f64),
    precision_at_5: f64,
}

/// Overwrites `base` with `over`, tables merged key by key.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn variant_config(base: &SearchConfig, variant: &str) -> anyhow::Result<SearchConfig> {
    if variant == "search" {
        return Ok(base.clone());
    }
    let text = std::fs::read_to_string(variant).with_context(|| format!("reading {variant}"))?;
    let over: toml::Value =
        toml::from_str(&text).with_context(|| format!("{variant}: not TOML"))?;
    let mut value = toml::Value::try_from(base)?;
    merge(&mut value, over);
    value
        .try_into()
        .with_context(|| format!("{variant}: not a valid override of the search config"))
}

/// Rewards with the rejected ranked below every accepted one.
fn ranked(rewards: &[Option<f64>]) -> Vec<f64> {
    let floor = rewards
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let floor = if floor.is_finite() { floor - 1.0 } else { 0.0 };
    rewards.iter().map(|r| r.unwrap_or(floor)).collect()
}

fn precision_at_5(proxy: &[f64], truth: &[f64]) -> f64 {
    let top = |v: &[f64]| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        order.truncate(5);
        order
    };
    let (a, b) = (top(proxy), top(truth));
    a.iter().filter(|i| b.contains(i)).count() as f64 / a.len().max(1) as f64
}

/// Runs the benchmark.
pub fn run(args: &FidelityBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds: at least one");
    let results_path = args.experiment.join("results.json");
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&results_path)
            .with_context(|| format!("reading {}", results_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", results_path.display()))?;
    let distillers = results["distillers"]
        .as_array()
        .with_context(|| format!("{}: no distillers", results_path.display()))?;
    let seeds_trained = distillers
        .iter()
        .map(|d| d["runs"].as_array().map_or(0, Vec::len))
        .max()
        .unwrap_or(0);
    let mut specs: Vec<DistillerSpec> = Vec::new();
    let mut truth: Vec<f64> = Vec::new();
    for d in distillers.iter().filter(|d| d["kind"] == "searched") {
        if d["runs"].as_array().map_or(0, Vec::len) < seeds_trained {
            continue;
        }
        specs.push(
            serde_json::from_value(d["spec"].clone())
                .with_context(|| format!("{}: a distiller's spec", results_path.display()))?,
        );
        truth.push(
            d["top1"]["mean"]
                .as_f64()
                .with_context(|| format!("{}: a distiller's top1", results_path.display()))?,
        );
    }
    anyhow::ensure!(
        specs.len() >= 3,
        "{}: fewer than 3 searched distillers with every seed trained",
        results_path.display()
    );
    let (base, _) = SearchConfig::from_recorded(&args.experiment.join("search/config.toml"))?;
    let device = select_device(&args.device)?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(autokd_app::default_cache_dir);
    let ceiling = results["fidelity"]["seed_spearman"].as_f64();
    writeln!(
        out,
        "proxy fidelity on {} searched distillers of {} (trained top-1, mean over {seeds_trained} seeds); full training's own seed-to-seed Spearman (the ceiling): {}",
        specs.len(),
        args.experiment.display(),
        ceiling.map_or("—".to_string(), |c| format!("{c:.3}"))
    )?;
    writeln!(
        out,
        "{:<28} {:>10} {:>6} {:>7} {:>8} {:>4}  {:>22}  {:>22}  {:>5}",
        "variant",
        "seeds",
        "steps",
        "trials",
        "s/trial",
        "rej",
        "Kendall [95%]",
        "Spearman [95%]",
        "P@5"
    )?;
    let mut rows = Vec::new();
    let mut push = |row: Row, out: &mut dyn Write| -> anyhow::Result<()> {
        writeln!(
            out,
            "{:<28} {:>10} {:>6} {:>7.2} {:>8.2} {:>4}  {:>6.3} [{:>6.3}, {:>6.3}]  {:>6.3} [{:>6.3}, {:>6.3}]  {:>5.2}",
            row.variant,
            row.seeds,
            row.steps,
            row.trials_per_distiller,
            row.seconds_per_trial,
            row.rejected,
            row.kendall,
            row.kendall_ci.0,
            row.kendall_ci.1,
            row.spearman,
            row.spearman_ci.0,
            row.spearman_ci.1,
            row.precision_at_5
        )?;
        rows.push(row);
        Ok(())
    };
    let row = |variant: &str,
               seeds: String,
               steps: usize,
               trials: f64,
               seconds: f64,
               rewards: &[Option<f64>]| {
        let proxy = ranked(rewards);
        Row {
            variant: variant.to_string(),
            seeds,
            steps,
            trials_per_distiller: trials,
            seconds_per_trial: seconds,
            rejected: rewards.iter().filter(|r| r.is_none()).count(),
            kendall: kendall_tau_b(&proxy, &truth),
            kendall_ci: bootstrap_ci(&proxy, &truth, 2000, 0, kendall_tau_b),
            spearman: spearman(&proxy, &truth),
            spearman_ci: bootstrap_ci(&proxy, &truth, 2000, 0, spearman),
            precision_at_5: precision_at_5(&proxy, &truth),
        }
    };
    for path in &args.variants {
        let cfg = variant_config(&base, path)?;
        // A variant file is named by its stem (`longer` for `…/longer.toml`).
        let variant = std::path::Path::new(path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(path.as_str());
        let classes = cfg.dataset.load()?.info.num_classes;
        let per_epoch = (cfg.proxy.per_class * classes).div_ceil(cfg.proxy.recipe.batch_size);
        let steps = cfg.proxy.recipe.length.plan(per_epoch).1;
        let mut per_seed: Vec<Vec<Option<f64>>> = Vec::new();
        let mut seconds = Vec::new();
        for &seed in &args.seeds {
            let mut c = cfg.clone();
            c.proxy.recipe.seed = seed;
            let clock = Instant::now();
            let outcomes = autokd_app::rescore::score_distillers(&c, &specs, &device, &cache_dir)?;
            let trial_seconds: f64 = outcomes.iter().map(|o| o.seconds).sum::<f64>();
            tracing::info!(
                variant,
                seed,
                wall = clock.elapsed().as_secs_f64(),
                "scored"
            );
            seconds.push(trial_seconds / outcomes.len().max(1) as f64);
            let rewards: Vec<Option<f64>> = outcomes.iter().map(|o| o.reward).collect();
            push(
                row(
                    variant,
                    seed.to_string(),
                    steps,
                    1.0,
                    trial_seconds / outcomes.len().max(1) as f64,
                    &rewards,
                ),
                out,
            )?;
            per_seed.push(rewards);
        }
        if per_seed.len() >= 2 {
            let mean_seconds = seconds.iter().sum::<f64>() / seconds.len() as f64;
            let n = per_seed.len();
            // The mean over seeds; rejected at any seed ranks worst.
            let mean: Vec<Option<f64>> = (0..specs.len())
                .map(|i| {
                    let v: Option<Vec<f64>> = per_seed.iter().map(|s| s[i]).collect();
                    v.map(|v| v.iter().sum::<f64>() / n as f64)
                })
                .collect();
            let label = args
                .seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("+");
            push(
                row(variant, label, steps, n as f64, mean_seconds, &mean),
                out,
            )?;
            // The first seed's ranking with its five best re-scored as the mean of the first two
            // seeds: a second proxy seed for the top only.
            let first = ranked(&per_seed[0]);
            let mut order: Vec<usize> = (0..first.len()).collect();
            order.sort_by(|&a, &b| first[b].total_cmp(&first[a]).then(a.cmp(&b)));
            let mut rescored = per_seed[0].clone();
            for &i in order.iter().take(5) {
                rescored[i] = per_seed[0][i]
                    .zip(per_seed[1][i])
                    .map(|(a, b)| (a + b) / 2.0);
            }
            let top = 5.min(specs.len());
            push(
                row(
                    variant,
                    format!("{} top-5+{}", args.seeds[0], args.seeds[1]),
                    steps,
                    1.0 + top as f64 / specs.len() as f64,
                    mean_seconds,
                    &rescored,
                ),
                out,
            )?;
        }
    }
    if let Some(path) = &args.json {
        crate::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overrides merge into nested tables and replace values; rejected rewards rank below every
    /// accepted one; precision at 5 by hand.
    #[test]
    fn merge_rank_and_precision() {
        let mut base: toml::Value =
            toml::from_str("a = 1\n[proxy]\nper_class = 40\nepochs = 3\n").unwrap();
        merge(
            &mut base,
            toml::from_str("[proxy]\nepochs = 1\nbeta = 0.0\n").unwrap(),
        );
        assert_eq!(base["a"].as_integer(), Some(1));
        assert_eq!(base["proxy"]["per_class"].as_integer(), Some(40));
        assert_eq!(base["proxy"]["epochs"].as_integer(), Some(1));
        assert_eq!(base["proxy"]["beta"].as_float(), Some(0.0));
        assert_eq!(
            ranked(&[Some(-1.0), None, Some(-3.0)]),
            vec![-1.0, -4.0, -3.0]
        );
        // Proxy's top 5: 0..5; truth's top 5: 1..6 → 4 shared.
        let proxy: Vec<f64> = (0..8).map(|i| -f64::from(i)).collect();
        let truth = vec![0.0, 7.0, 6.0, 5.0, 4.0, 3.0, 0.5, 0.2];
        assert_eq!(precision_at_5(&proxy, &truth), 0.8);
    }
}
