//! `autokd bench`: throughput measurements. Figures are medians of repeated runs after a
//! warm-up; compare ratios measured in one invocation, not absolute numbers across runs.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use autokd_data::{
    Augment, DataLoader, Dataset, DatasetInfo, DatasetSpec, InMemory, LoaderConfig, Split,
    Transform,
};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::device::{DeviceSpec, select_device};

/// Arguments of `autokd bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub what: BenchWhat,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchWhat {
    /// Data loader throughput: decode, augment, normalize, batch and copy to the device.
    Loader(LoaderArgs),
}

/// Arguments of `autokd bench loader`.
#[derive(Debug, clap::Args)]
pub struct LoaderArgs {
    /// Dataset to load; default: synthetic CIFAR-shaped images (3×32×32, random bytes).
    #[arg(long)]
    pub dataset: Option<DatasetSpec>,
    /// Images of the synthetic dataset.
    #[arg(long, default_value_t = 10_000)]
    pub images: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Worker-thread counts to compare (0 = on the consuming thread).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub workers: Vec<usize>,
    /// Timed epochs per setting (after one warm-up epoch); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Device the batches are copied to.
    #[arg(long, default_value = "flex")]
    pub device: DeviceSpec,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One measured setting.
#[derive(Debug, Serialize)]
pub struct LoaderResult {
    /// Worker threads.
    pub workers: usize,
    /// Median images per second.
    pub images_per_s: f64,
    /// Median milliseconds per batch.
    pub ms_per_batch: f64,
}

fn synthetic_cifar(n: usize) -> anyhow::Result<Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut pixels = vec![0u8; n * 3 * 32 * 32];
    rng.fill(pixels.as_mut_slice());
    let labels = (0..n).map(|i| (i % 100) as u16).collect();
    let src = InMemory::new(3, 32, 32, pixels, labels)?.shared();
    Ok(Dataset {
        info: DatasetInfo {
            name: "synthetic-cifar".into(),
            channels: 3,
            height: 32,
            width: 32,
            num_classes: 100,
            class_names: (0..100).map(|i| i.to_string()).collect(),
            pixel_max: 255.0,
            mean: vec![0.5071, 0.4865, 0.4409],
            std: vec![0.2673, 0.2564, 0.2762],
        },
        train: Split::all(src.clone()),
        test: Split::all(src),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs a benchmark.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.what {
        BenchWhat::Loader(a) => loader(a, out),
    }
}

fn loader(args: &LoaderArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    let device = select_device(&args.device)?;
    let ds = match &args.dataset {
        Some(spec) => spec.load().with_context(|| format!("loading {spec}"))?,
        None => synthetic_cifar(args.images)?,
    };
    let transform = Transform::train(&ds.info, Augment::for_dataset(&ds.info))?;
    writeln!(
        out,
        "loader: {} ({} images, {}x{}x{}), batch {}, augment {:?}, device {}",
        ds.info.name,
        ds.train.len(),
        ds.info.channels,
        ds.info.height,
        ds.info.width,
        args.batch_size,
        Augment::for_dataset(&ds.info),
        args.device
    )?;
    writeln!(
        out,
        "{:>8} {:>12} {:>12}",
        "workers", "images/s", "ms/batch"
    )?;
    let mut results = Vec::new();
    for &workers in &args.workers {
        let cfg = LoaderConfig {
            batch_size: args.batch_size,
            workers,
            ..LoaderConfig::default()
        };
        let loader = DataLoader::new(ds.train.clone(), transform.clone(), cfg)?;
        let mut rates = Vec::new();
        for epoch in 0..=args.repeats {
            let start = Instant::now();
            let mut n = 0usize;
            for batch in loader.epoch(epoch as u64, &device) {
                let batch = batch?;
                n += batch.positions.len();
                // Wait for the copy to finish so that it is counted.
                let _ = batch.images.into_data();
            }
            if epoch > 0 {
                rates.push(n as f64 / start.elapsed().as_secs_f64());
            }
        }
        let ips = median(rates);
        let r = LoaderResult {
            workers,
            images_per_s: ips,
            ms_per_batch: 1000.0 * args.batch_size as f64 / ips,
        };
        writeln!(
            out,
            "{:>8} {:>12.0} {:>12.3}",
            r.workers, r.images_per_s, r.ms_per_batch
        )?;
        results.push(r);
    }
    if let Some(path) = &args.json {
        crate::write_atomic(path, serde_json::to_string_pretty(&results)?.as_bytes())?;
    }
    Ok(())
}
