//! The `autokd` command line. `main.rs` only parses arguments and calls [`run`]; the end-to-end
//! tests call [`run`] in-process.

pub mod bench;
pub mod bench_fidelity;
pub mod bench_search;
pub mod bench_seg;
pub mod convert;
pub mod device;
pub mod experiment;
pub mod info;
pub mod search;
pub mod train;

use std::io::Write;

use clap::{Parser, Subcommand};

pub use device::{Backend, DeviceSpec, select_device};

/// autokd: automated knowledge distillation by Monte Carlo Tree Search.
#[derive(Debug, Parser)]
#[command(name = "autokd", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Search the best distiller for a teacher/student pair (default: on the embedded digits).
    Search(search::SearchArgs),
    /// Search, then train the best distillers and named baselines over seeds (resumable).
    Experiment(experiment::ExperimentArgs),
    /// Train a model from scratch, or distil a student with a distiller (e.g. a search's best.toml).
    Train(train::TrainArgs),
    /// Version, compiled backends, visible devices, known datasets and models.
    Info(info::InfoArgs),
    /// Benchmarks: data loader, distiller families, proxy trials, training steps, kernels.
    Bench(bench::BenchArgs),
    /// Load a PyTorch/safetensors checkpoint into an architecture (strictly) and save it as burnpack.
    Convert(convert::ConvertArgs),
}

pub use autokd_app::{model_spec, write_atomic};

/// Runs a parsed command line, writing its report to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Search(args) => search::run(&args, out),
        Command::Experiment(args) => experiment::run(&args, out),
        Command::Train(args) => train::run(&args, out),
        Command::Info(args) => info::run(&args, out),
        Command::Bench(args) => bench::run(&args, out),
        Command::Convert(args) => convert::run(&args, out),
    }
}

/// How a model's score reads: "mIoU" for a segmenter, "AP" (COCO's box AP) for a detector,
/// "top-1" otherwise (and for an unknown name).
pub fn score_label(model: Option<autokd_models::ModelName>) -> &'static str {
    model.map_or("top-1", autokd_app::score_name)
}
