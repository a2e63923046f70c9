//! `autokd experiment`: the arguments, and the lines printed for the events of
//! [`autokd_app::run_experiment`] (a search, then full trainings over seeds; resumable).

use std::io::Write;
use std::path::PathBuf;

use autokd_app::{ExperimentEvent, ExperimentFile, ExperimentRequest, SearchRequest};

use crate::device::{DeviceSpec, select_devices};

/// Arguments of `autokd experiment`.
#[derive(Debug, clap::Args)]
pub struct ExperimentArgs {
    /// Config (TOML): a search config with an `[experiment]` section (`top_k`, `sample`,
    /// `baselines`, `seeds`, `train_per_class`, `val_fraction`, `[experiment.recipe]`).
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder (resumed when it holds the same experiment).
    #[arg(long)]
    pub out: PathBuf,
    /// Devices (the search's proxy trials use them as the search does; the trainings take them
    /// in turn, one per worker).
    #[arg(long, value_delimiter = ',', default_value = "flex")]
    pub device: Vec<DeviceSpec>,
    /// Folder of trained teachers; default `$XDG_CACHE_HOME/autokd` or `~/.cache/autokd`.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Trainings at once, each on the next device in turn (the results do not depend on it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: u64,
}

/// Runs the experiment.
pub fn run(args: &ExperimentArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let file = ExperimentFile::from_file(&args.config)?;
    let metric = autokd_app::score_name(file.search.student);
    let (device, devices) = select_devices(&args.device)?;
    let request = ExperimentRequest {
        search: SearchRequest {
            config: file.search,
            dir: args.out.join("search"),
            devices,
            exact_device: crate::device::host_device(&device),
            cache_dir: args
                .cache_dir
                .clone()
                .unwrap_or_else(autokd_app::default_cache_dir),
        },
        experiment: file.experiment,
        dir: args.out.clone(),
        max_runs: None,
        workers: usize::try_from(args.workers)?,
    };
    let mut printer = crate::search::Printer::default();
    // Both observers write to `out`; the search's is done before the first training event.
    let out = std::cell::RefCell::new(out);
    let report = autokd_app::run_experiment(
        &request,
        &mut |event| crate::search::print_event(event, &mut **out.borrow_mut(), &mut printer),
        &mut |event| print_event(event, metric, &mut **out.borrow_mut()),
    )?;
    let out = out.into_inner();
    if let Some(f) = &report.fidelity {
        writeln!(
            out,
            "fidelity over {} searched distillers (95% bootstrap intervals): {}",
            f.distillers,
            f.summary()
        )?;
    }
    writeln!(
        out,
        "wrote {}/{{results.json, results.md}}{}",
        args.out.display(),
        if report.complete { "" } else { " (incomplete)" }
    )?;
    Ok(())
}

fn print_event(
    event: ExperimentEvent<'_>,
    metric: &str,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match event {
        ExperimentEvent::Planned {
            distillers,
            seeds,
            images: (train, val, test),
            recipe,
            teacher_top1,
        } => writeln!(
            out,
            "experiment: {distillers} distillers × {seeds} seeds, {} each; {train} training images, {val} held out to choose the best epoch, {test} test; teacher test {metric} {:.2}%",
            recipe.length,
            100.0 * teacher_top1
        ),
        ExperimentEvent::Training {
            name,
            spec,
            seed,
            index,
            total,
            resuming,
        } => writeln!(
            out,
            "[{index:>3}/{total}] {name} seed {seed}{}  {spec}",
            if resuming {
                ", resuming its checkpoint"
            } else {
                ""
            }
        ),
        ExperimentEvent::Trained {
            name,
            index,
            total,
            result,
            reused,
        } => writeln!(
            out,
            "[{index:>3}/{total}] {name} seed {}: {metric} {:.2}% (epoch {}), last {:.2}%  {}",
            result.seed,
            100.0 * result.top1,
            result.best_epoch,
            100.0 * result.last_top1,
            if reused {
                "(finished earlier)".to_string()
            } else {
                format!("{:.1}s", result.seconds)
            }
        ),
    }
}
