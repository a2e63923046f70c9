//! `autokd bench search`: strategies replayed against a tabular benchmark (grid runs of one space
//! at two or more proxy seeds, see `autokd_app::table`), hundreds of times each, with their regret
//! at several budgets, a 95% interval, and a paired comparison with random search.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use autokd_search::{
    Evolution, EvolutionConfig, Mcts, MctsConfig, RandomSearch, RewardScale, Strategy, Table, Tpe,
    TpeConfig, mean_ci, wilcoxon_signed_rank,
};
use serde::Serialize;

/// Arguments of `autokd bench search`.
#[derive(Debug, clap::Args)]
pub struct SearchBenchArgs {
    /// Grid run folders of one space, one per proxy seed (`strategy = "grid"`; see
    /// `configs/digits/bench_table.toml`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub tables: Vec<PathBuf>,
    /// Budgets (distinct candidates) at which regret is measured.
    #[arg(long, value_delimiter = ',', default_value = "20,40,100,200")]
    pub budgets: Vec<usize>,
    /// Replays per strategy (strategy seeds 0.., observing the proxy seeds in turn).
    #[arg(long, default_value_t = 200)]
    pub replays: usize,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One strategy at one budget.
#[derive(Debug, Serialize)]
struct Row {
    /// Replays.
    replays: usize,
    budget: usize,
    strategy: String,
    regret_mean: f64,
    regret_ci95: f64,
    /// Mean of (strategy − random) over paired replays, with its 95% half-width.
    diff_mean: f64,
    diff_ci95: f64,
    wins: usize,
    ties: usize,
    losses: usize,
    wilcoxon_z: f64,
    wilcoxon_p: f64,
}

/// The strategies compared: name and how to build one for a replay seed.
type Make = fn(&[usize], u64) -> Box<dyn Strategy>;

const STRATEGIES: &[(&str, Make)] = &[
    ("random", |l, s| Box::new(RandomSearch::new(l, s))),
    ("mcts", |l, s| {
        Box::new(Mcts::new(
            l,
            MctsConfig {
                seed: s,
                ..MctsConfig::default()
            },
        ))
    }),
    // Without shared statistics (plain UCT, uniform rollouts), on ranks and on min–max.
    ("mcts-plain", |l, s| {
        Box::new(Mcts::new(
            l,
            MctsConfig {
                seed: s,
                rave: 0.0,
                rollout_temperature: 0.0,
                ..MctsConfig::default()
            },
        ))
    }),
    ("mcts-minmax", |l, s| {
        Box::new(Mcts::new(
            l,
            MctsConfig {
                seed: s,
                reward_scale: RewardScale::MinMax,
                rave: 0.0,
                rollout_temperature: 0.0,
                ..MctsConfig::default()
            },
        ))
    }),
    ("tpe", |l, s| Box::new(Tpe::new(l, TpeConfig::default(), s))),
    ("evolution", |l, s| {
        Box::new(Evolution::new(l, EvolutionConfig::default(), s))
    }),
];

/// Regret of every replay of every strategy: `[strategy][replay][budget]`.
fn replays(table: &Table, budgets: &[usize], n: usize) -> anyhow::Result<Vec<Vec<Vec<f64>>>> {
    STRATEGIES
        .iter()
        .map(|(name, make)| {
            (0..n)
                .map(|r| {
                    let mut s = make(table.levels(), r as u64);
                    table
                        .replay(s.as_mut(), r % table.seeds(), budgets)
                        .with_context(|| format!("replaying {name}"))
                })
                .collect()
        })
        .collect()
}

/// Runs the benchmark and prints its table.
pub fn run(args: &SearchBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.replays >= 2, "--replays must be at least 2");
    anyhow::ensure!(
        !args.budgets.is_empty() && args.budgets.iter().all(|&b| b >= 1),
        "--budgets must be at least 1 each"
    );
    let table = autokd_app::load_table(&args.tables)?;
    writeln!(
        out,
        "tabular benchmark: {} candidates (levels {:?}), {} proxy seeds, {} replays per strategy; regret = the best held-out reward in the table − the held-out reward of the pick (the best observed), lower is better",
        table.len(),
        table.levels(),
        table.seeds(),
        args.replays
    )?;
    // The floor: even a strategy that saw every candidate picks the observed best, whose
    // held-out reward is not the table's best (the proxy's seed-to-seed noise).
    let floor = (0..table.seeds())
        .map(|s| table.random_regret(s, table.len()))
        .sum::<f64>()
        / table.seeds() as f64;
    let agreement = table.seed_agreement(0, 1);
    writeln!(
        out,
        "proxy seeds 0 and 1: Spearman {:.3} over the {} candidates accepted at both, {} rejected at one only; regret of the observed best of the whole table (the floor): {floor:.4}",
        agreement.spearman, agreement.accepted_both, agreement.rejected_one
    )?;
    let all = replays(&table, &args.budgets, args.replays)?;
    let mut rows = Vec::new();
    writeln!(
        out,
        "{:>6}  {:<12} {:>18}  {:>22}  {:>17}  {:>8}",
        "budget", "strategy", "regret (95% CI)", "− random (95% CI)", "wins/ties/losses", "p"
    )?;
    for (j, &budget) in args.budgets.iter().enumerate() {
        let random: Vec<f64> = all[0].iter().map(|r| r[j]).collect();
        let closed = (0..args.replays)
            .map(|r| table.random_regret(r % table.seeds(), budget))
            .sum::<f64>()
            / args.replays as f64;
        for (k, (name, _)) in STRATEGIES.iter().enumerate() {
            let regret: Vec<f64> = all[k].iter().map(|r| r[j]).collect();
            let (m, h) = mean_ci(&regret);
            let diffs: Vec<f64> = regret.iter().zip(&random).map(|(a, b)| a - b).collect();
            let (dm, dh) = mean_ci(&diffs);
            let wins = diffs.iter().filter(|d| **d < 0.0).count();
            let ties = diffs.iter().filter(|d| **d == 0.0).count();
            let (z, p) = wilcoxon_signed_rank(&diffs);
            let row = Row {
                replays: args.replays,
                budget,
                strategy: name.to_string(),
                regret_mean: m,
                regret_ci95: h,
                diff_mean: dm,
                diff_ci95: dh,
                wins,
                ties,
                losses: diffs.len() - wins - ties,
                wilcoxon_z: z,
                wilcoxon_p: p,
            };
            if k == 0 {
                writeln!(
                    out,
                    "{budget:>6}  {:<12} {:>9.4} ± {:<6.4}  {:>22}  {:>17}  {:>8}   closed form {closed:.4}",
                    row.strategy, m, h, "", "", ""
                )?;
            } else {
                writeln!(
                    out,
                    "{budget:>6}  {:<12} {:>9.4} ± {:<6.4}  {:>+13.4} ± {:<6.4}  {:>17}  {:>8.2e}",
                    row.strategy,
                    m,
                    h,
                    dm,
                    dh,
                    format!("{}/{}/{}", row.wins, row.ties, row.losses),
                    p
                )?;
            }
            rows.push(row);
        }
    }
    if let Some(path) = &args.json {
        autokd_app::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}
