//! `autokd search`: the arguments, and the lines printed for the events of
//! [`autokd_app::run_search`], which does the search and writes the run folder.

use std::io::Write;
use std::path::PathBuf;

use autokd_app::{
    SearchConfig, SearchEvent, SearchRequest, StoreKind, StrategyName, TeacherOrigin,
};
use autokd_train::TeacherSource;

use crate::device::{DeviceSpec, select_devices};

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

/// Runs the search.
pub fn run(args: &SearchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => SearchConfig::from_file(p)?,
        None => SearchConfig::default(),
    };
    if let Some(t) = args.trials {
        cfg.trials = t;
    }
    if let Some(s) = args.seed {
        cfg.mcts.seed = s;
        cfg.proxy.recipe.seed = s;
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
    let (device, devices) = select_devices(&args.device)?;
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("runs").join(format!("search-{secs}"))
        }
    };
    let request = SearchRequest {
        config: cfg,
        dir,
        devices,
        exact_device: crate::device::host_device(&device),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(autokd_app::default_cache_dir),
    };
    let mut printer = Printer::default();
    let report =
        autokd_app::run_search(&request, &mut |event| print_event(event, out, &mut printer))?;
    let score = printer.score;
    if let Some(best) = report.best() {
        writeln!(
            out,
            "best: reward {:.4} ({score} {:.1}%)  {}",
            best.outcome.reward.unwrap_or(f64::NAN),
            100.0 * best.outcome.accuracy,
            best.spec
        )?;
    }
    if let Some(best) = report.baseline_best() {
        writeln!(
            out,
            "random baseline best: reward {:.4} ({score} {:.1}%)  {}",
            best.outcome.reward.unwrap_or(f64::NAN),
            100.0 * best.outcome.accuracy,
            best.spec
        )?;
    }
    writeln!(
        out,
        "wrote {}/{{{}}} ({} trials in {:.1} s)",
        report.dir.display(),
        report.files.join(", "),
        report.records.len(),
        report.seconds
    )?;
    Ok(())
}

/// The line(s) of one event; a bar of finished trials on a terminal (stderr).
/// What printing a search's events keeps between them.
#[derive(Default)]
pub(crate) struct Printer {
    /// The trials' progress bar (on a terminal).
    pub bar: Option<indicatif::ProgressBar>,
    /// How the student's score reads ("top-1", "mIoU").
    pub score: &'static str,
}

pub(crate) fn print_event(
    event: SearchEvent<'_>,
    out: &mut dyn Write,
    state: &mut Printer,
) -> std::io::Result<()> {
    let Printer { bar, score } = state;
    match event {
        SearchEvent::Started {
            config: cfg,
            dataset: (name, n_train, n_test),
            space_size,
            distinct,
            dir,
            resuming,
        } => {
            *score = crate::score_label(Some(cfg.student));
            writeln!(
                out,
                "search: {} → {} on {name} ({n_train} train, {n_test} test), {:?}, {} trials, {} at a time, space of {space_size} distillers ({}); run folder {} ({} it with --out {})",
                cfg.teacher,
                cfg.student,
                cfg.strategy,
                cfg.trials,
                cfg.workers,
                match distinct {
                    Some(n) => format!("{n} distinct losses at these taps"),
                    None => "no deduplication: a run folder from before it".to_string(),
                },
                dir.display(),
                if resuming {
                    "resuming; resume"
                } else {
                    "resume"
                },
                dir.display()
            )
        }
        SearchEvent::TeacherTraining {
            teacher,
            dataset,
            length,
            path,
        } => writeln!(
            out,
            "teacher: training {teacher} on {dataset} ({length}); cached as {}",
            path.display()
        ),
        SearchEvent::Teacher { teacher, origin } => {
            let score = crate::score_label(teacher.parse().ok());
            match origin {
                TeacherOrigin::Weights(w) => {
                    writeln!(out, "teacher: {teacher} from {}", w.display())
                }
                TeacherOrigin::Cached { path, top1 } => writeln!(
                    out,
                    "teacher: {teacher} from the cache {} (test {score} {:.2}%)",
                    path.display(),
                    100.0 * top1
                ),
                TeacherOrigin::Trained {
                    seconds,
                    top1,
                    resumed,
                    epochs_run,
                    ..
                } => writeln!(
                    out,
                    "teacher: trained in {seconds:.1} s{}, test {score} {:.2}%",
                    if *resumed {
                        format!(" ({epochs_run} epochs after resuming its checkpoint)")
                    } else {
                        String::new()
                    },
                    100.0 * top1
                ),
            }
        }
        SearchEvent::Proxy {
            sizes: (n_train, n_val),
            per_class,
            length,
            plan,
            seconds,
        } => {
            let mib = |b: usize| b as f64 / f64::from(1u32 << 20);
            let source = match plan.source {
                TeacherSource::Cache => format!(
                    "teacher outputs cached ({:.0} MiB of its {:.0} MiB budget) in {seconds:.1} s",
                    mib(plan.bytes),
                    mib(plan.budget)
                ),
                TeacherSource::Online if plan.bytes > plan.budget => format!(
                    "the teacher cache would need {:.0} MiB, over its {:.0} MiB budget (proxy.cache_budget_bytes): the frozen teacher runs online on every batch instead",
                    mib(plan.bytes),
                    mib(plan.budget)
                ),
                TeacherSource::Online => {
                    "the frozen teacher runs online on every batch (proxy.cache_teacher = false)"
                        .into()
                }
            };
            writeln!(
                out,
                "proxy: {n_train} training images ({per_class} per class), {n_val} validation images, {length}; {source}"
            )
        }
        SearchEvent::Stream {
            label,
            budget,
            resumed,
        } => {
            if label == "random " {
                writeln!(
                    out,
                    "baseline: random search over the same space, same budget ({budget} trials)"
                )?;
            }
            if let Some((finished, rerun)) = resumed {
                writeln!(
                    out,
                    "{label}resuming: {finished} finished trials replayed from the store, {rerun} to run again"
                )?;
            }
            *bar = Some(progress_bar(budget as u64, label));
            Ok(())
        }
        SearchEvent::Trial {
            label,
            k,
            budget,
            record,
            best,
            replayed,
        } => {
            if let Some(b) = bar.as_ref() {
                b.inc(1);
            }
            if replayed {
                return Ok(());
            }
            let o = &record.outcome;
            let line = match (&o.reward, &o.rejected) {
                (Some(v), _) => format!(
                    "reward {v:>8.4} (ce {:.3}, gap {:.3}, {score} {:5.1}%)",
                    o.val_ce,
                    o.gap,
                    100.0 * o.accuracy
                ),
                (None, Some(why)) => format!("rejected: {why}"),
                (None, None) => "rejected".to_string(),
            };
            // No accepted trial yet: no best.
            let best = best.map_or_else(|| format!("{:>8}", "none"), |b| format!("{b:>8.4}"));
            let mut write = || {
                writeln!(
                    out,
                    "{label}[{k:>3}/{budget}] {line}  best {best}  {:.1}s  {}",
                    o.seconds, record.spec
                )
            };
            match bar.as_ref() {
                Some(b) => b.suspend(write),
                None => write(),
            }
        }
        SearchEvent::StreamEnd => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            Ok(())
        }
        SearchEvent::NamedBaseline { record } => {
            let o = &record.outcome;
            match (o.reward, record.rank) {
                (Some(v), Some(rank)) => writeln!(
                    out,
                    "baseline {:<8} reward {v:>8.4} ({score} {:5.1}%), would rank {rank} of the {} accepted trials  {}",
                    record.name,
                    100.0 * o.accuracy,
                    record.accepted,
                    record.distiller
                ),
                _ => writeln!(
                    out,
                    "baseline {:<8} rejected: {}  {}",
                    record.name,
                    o.rejected.as_deref().unwrap_or("no reason recorded"),
                    record.distiller
                ),
            }
        }
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
