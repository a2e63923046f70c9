//! `train-cls`: the classification trainer on its own (the same as `autokd train`).

use clap::Parser;

/// Train a classifier from scratch, or distil a student from a teacher with a distiller.
#[derive(Debug, Parser)]
#[command(name = "train-cls", version)]
struct Args {
    #[command(flatten)]
    train: autokd_cli::train::TrainArgs,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
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
