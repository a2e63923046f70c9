//! The `autokd` command line. `main.rs` only parses arguments and calls [`run`]; the end-to-end
//! tests call [`run`] in-process.

pub mod bench;
pub mod convert;
pub mod device;
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
    /// Train a model from scratch, or distil a student with a distiller (e.g. a search's best.toml).
    Train(train::TrainArgs),
    /// Version, compiled backends, visible devices, known datasets and models.
    Info(info::InfoArgs),
    /// Benchmarks: data loader, distiller families, proxy trials, training steps, kernels.
    Bench(bench::BenchArgs),
    /// Load a PyTorch/safetensors checkpoint into an architecture (strictly) and save it as burnpack.
    Convert(convert::ConvertArgs),
}

/// The spec of `name` sized for a dataset: its channels, classes and image side.
pub fn model_spec(
    name: autokd_models::ModelName,
    info: &autokd_data::DatasetInfo,
) -> autokd_models::ModelSpec {
    autokd_models::ModelSpec {
        name,
        in_channels: info.channels,
        num_classes: info.num_classes,
        image_size: info.height,
    }
}

/// Runs a parsed command line, writing its report to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Search(args) => search::run(&args, out),
        Command::Train(args) => train::run(&args, out),
        Command::Info(args) => info::run(&args, out),
        Command::Bench(args) => bench::run(&args, out),
        Command::Convert(args) => convert::run(&args, out),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that a
/// crash never leaves a half-written file behind.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
