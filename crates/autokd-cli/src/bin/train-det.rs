//! `train-det`: the detection trainer on its own: `autokd train` with a detection dataset and
//! model by default (`--dataset boxscenes --model retinanet_resnet18_fpn_gn`, the GroupNorm
//! head, which learns in a short schedule; any option given overrides them), as mmdetection's
//! `tools/train.py` is its repository's.

use clap::Parser;

/// Train a detector from scratch, or distil a student detector from a teacher with a
/// distiller.
#[derive(Debug, Parser)]
#[command(name = "train-det", version, args_override_self = true)]
struct Args {
    #[command(flatten)]
    train: autokd_cli::train::TrainArgs,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The detection defaults, before the caller's arguments (a later occurrence of an option
/// overrides an earlier one).
const DEFAULTS: [&str; 4] = [
    "--dataset",
    "boxscenes",
    "--model",
    "retinanet_resnet18_fpn_gn",
];

fn main() -> std::process::ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let rest = argv.split_off(1.min(argv.len()));
    argv.extend(DEFAULTS.iter().map(std::ffi::OsString::from));
    argv.extend(rest);
    let args = Args::parse_from(argv);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut stdout = std::io::stdout().lock();
    match autokd_cli::train::run(&args.train, &mut stdout) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
