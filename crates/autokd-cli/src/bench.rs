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

use autokd_distill::DistillerSpec;
use autokd_models::{Backbone, ModelName, ModelSpec};
use autokd_train::{DistillStudent, distill_step};
use burn::prelude::*;

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
    /// Cost of each distiller family: one training step of a student with cached teacher
    /// outputs, CE only against CE + each family of feature term and the logits terms.
    Distill(DistillArgs),
    /// Wall time of one proxy trial with the teacher cache against an online teacher.
    Proxy(ProxyArgs),
}

/// Arguments of `autokd bench proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Student architecture.
    #[arg(long, default_value = "resnet20")]
    pub student: ModelName,
    /// Teacher architecture.
    #[arg(long, default_value = "resnet56")]
    pub teacher: ModelName,
    /// Dataset; default: synthetic CIFAR-shaped images (100 classes).
    #[arg(long)]
    pub dataset: Option<DatasetSpec>,
    /// Proxy images per class.
    #[arg(long, default_value_t = 10)]
    pub per_class: usize,
    /// Proxy epochs.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Trials per setting (alternating cached / online); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    /// Device.
    #[arg(long, default_value = "flex")]
    pub device: DeviceSpec,
}

/// Arguments of `autokd bench distill`.
#[derive(Debug, clap::Args)]
pub struct DistillArgs {
    /// Student architecture.
    #[arg(long, default_value = "resnet20")]
    pub student: ModelName,
    /// Teacher architecture (run once; its outputs are cached).
    #[arg(long, default_value = "resnet56")]
    pub teacher: ModelName,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed steps per variant (after two warm-up steps); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Device.
    #[arg(long, default_value = "flex")]
    pub device: DeviceSpec,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One measured distiller.
#[derive(Debug, Serialize)]
pub struct DistillResult {
    /// Family measured.
    pub family: String,
    /// The distiller as a formula.
    pub formula: String,
    /// Median milliseconds per step.
    pub ms_per_step: f64,
    /// Against CE only.
    pub ratio: f64,
    /// Trainable parameters the distiller adds (connectors, generation blocks).
    pub distiller_params: usize,
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
        BenchWhat::Distill(a) => distill(a, out),
        BenchWhat::Proxy(a) => proxy(a, out),
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

/// The families measured: name and spec (TOML), one per kind of feature term plus the logits terms.
fn distill_families() -> Vec<(&'static str, String)> {
    let feature = |global: &str, intra: &str, relation: &str, distance: &str| {
        format!(
            "[[features]]\nglobal = {{ kind = \"{global}\"{} }}\nintra = {{ kind = \"{intra}\"{} }}\nrelation = \"{relation}\"\ndistance = \"{distance}\"\ntemperature = 4.0\nweight = 1.0\n",
            if global == "mask" {
                ", ratio = 0.5"
            } else {
                ""
            },
            if intra == "local" { ", k = 2" } else { "" },
        )
    };
    let logits =
        |d: &str| format!("[logits]\ndistance = \"{d}\"\ntemperature = 4.0\nweight = 1.0\n");
    vec![
        ("ce only", String::new()),
        ("plain L2 (FitNet)", feature("none", "none", "none", "l2")),
        (
            "spatial attention (AT)",
            feature("spatial_attention", "none", "none", "l2"),
        ),
        (
            "channel attention",
            feature("channel_attention", "none", "none", "l2"),
        ),
        (
            "summed attention (FKD)",
            feature("summed_attention", "none", "none", "l2"),
        ),
        (
            "mask + generator (MGD)",
            feature("mask", "none", "none", "l2"),
        ),
        ("multi-scale", feature("none", "multi_scale", "none", "l2")),
        ("local 2x2", feature("none", "local", "none", "l2")),
        (
            "sample correlation (SP)",
            feature("none", "none", "sample_correlation", "l2"),
        ),
        (
            "sample softmax + KL",
            feature("none", "none", "sample_softmax", "kl"),
        ),
        (
            "channel correlation (ICKD)",
            feature("none", "none", "channel_correlation", "l2"),
        ),
        (
            "channel softmax + KL (CWD)",
            feature("none", "none", "channel_softmax", "kl"),
        ),
        (
            "channel L2 norm + cosine",
            feature("none", "none", "channel_l2_norm", "cosine"),
        ),
        ("logits KD", logits("kl")),
        ("logits DIST", logits("dist")),
    ]
}

fn distill(args: &DistillArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    let plain = select_device(&args.device)?;
    let ad = plain.clone().autodiff();
    let spec = |name: ModelName| ModelSpec {
        name,
        ..name.reference_spec()
    };
    let (s_spec, t_spec) = (spec(args.student), spec(args.teacher));
    anyhow::ensure!(
        s_spec.num_classes == t_spec.num_classes,
        "student and teacher must have the same classes"
    );
    let [c, side] = [s_spec.in_channels, s_spec.image_size];
    let teacher = t_spec.init(&plain)?;
    let b = args.batch_size;
    let images = Tensor::<4>::random(
        [b, c, side, side],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &plain,
    );
    let targets: Vec<i64> = (0..b as i64)
        .map(|i| i % s_spec.num_classes as i64)
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [b]), &ad);
    writeln!(
        out,
        "distiller step: student {} ← teacher {} (cached), batch {b}, {c}x{side}x{side}, device {}, median of {} steps",
        args.student, args.teacher, args.device, args.steps
    )?;
    writeln!(
        out,
        "{:<28} {:>10} {:>8} {:>8}  formula",
        "family", "ms/step", "ratio", "params"
    )?;
    // Build every variant first, then time them round-robin (one step of each per round), so
    // that every family sees the same machine load; report the median over rounds.
    let mut variants = Vec::new();
    for (family, toml) in distill_families() {
        let dspec = DistillerSpec::from_toml(&toml)?;
        let student = s_spec.init(&ad)?;
        let distiller = autokd_distill::Distiller::new(
            &dspec,
            args.student.as_str(),
            &student.feature_info(),
            args.teacher.as_str(),
            &teacher.feature_info(),
            &ad,
        )?;
        let (_, t_req) = distiller.tap_requests();
        // The teacher cache: computed once, outside the timed steps.
        let cached = teacher.forward_intermediates(images.clone(), &t_req);
        let optim = burn::optim::SgdConfig::new()
            .with_momentum(Some(burn::optim::momentum::MomentumConfig::new()))
            .init();
        variants.push((
            family,
            dspec,
            Some(DistillStudent { student, distiller }),
            optim,
            cached,
            Vec::new(),
        ));
    }
    for round in 0..args.steps + 2 {
        for (_, _, model, optim, cached, times) in variants.iter_mut() {
            let m = model
                .take()
                .ok_or_else(|| anyhow::anyhow!("lost a model"))?;
            let start = Instant::now();
            let (m, _) = distill_step(
                m,
                optim,
                0.01,
                images.clone().autodiff(),
                targets.clone(),
                cached,
            )?;
            ad.sync().map_err(|e| anyhow::anyhow!("device: {e:?}"))?;
            if round >= 2 {
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            *model = Some(m);
        }
    }
    let mut results: Vec<DistillResult> = Vec::new();
    for (family, dspec, model, _, _, times) in variants {
        let distiller_params = model
            .as_ref()
            .map_or(0, |m| autokd_models::trainable_params(&m.distiller));
        let ms = median(times);
        let base = results.first().map_or(ms, |r| r.ms_per_step);
        let r = DistillResult {
            family: family.into(),
            formula: dspec.to_string(),
            ms_per_step: ms,
            ratio: ms / base,
            distiller_params,
        };
        writeln!(
            out,
            "{:<28} {:>10.1} {:>8.3} {:>8}  {}",
            r.family, r.ms_per_step, r.ratio, r.distiller_params, r.formula
        )?;
        results.push(r);
    }
    if let Some(path) = &args.json {
        crate::write_atomic(path, serde_json::to_string_pretty(&results)?.as_bytes())?;
    }
    Ok(())
}

fn proxy(args: &ProxyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.trials > 0, "--trials must be at least 1");
    let device = select_device(&args.device)?;
    let ds = match &args.dataset {
        Some(spec) => spec.load().with_context(|| format!("loading {spec}"))?,
        None => synthetic_cifar(args.per_class * 100 * 2)?,
    };
    let info = &ds.info;
    let spec = |name: ModelName| ModelSpec {
        name,
        in_channels: info.channels,
        num_classes: info.num_classes,
        image_size: info.height,
    };
    let teacher = spec(args.teacher).init(&device)?;
    let taps: Vec<usize> = vec![teacher.feature_info().len() - 1];
    let cfg = |cache_teacher| autokd_train::ProxyConfig {
        per_class: args.per_class,
        epochs: args.epochs,
        batch_size: 64,
        cache_teacher,
        ..Default::default()
    };
    let start = Instant::now();
    let cached = autokd_train::ProxyEvaluator::new(
        &ds,
        &teacher,
        args.teacher.as_str(),
        spec(args.student),
        &taps,
        cfg(true),
        &device,
    )?;
    let cache_s = start.elapsed().as_secs_f64();
    let online = autokd_train::ProxyEvaluator::new(
        &ds,
        &teacher,
        args.teacher.as_str(),
        spec(args.student),
        &taps,
        cfg(false),
        &device,
    )?;
    let (n_train, n_val) = cached.sizes();
    let cwd = DistillerSpec::baseline("cwd")?;
    writeln!(
        out,
        "proxy trial: {} ← {} on {} ({n_train} proxy images, {n_val} validation, {} epoch(s)), distiller {cwd}, device {}",
        args.student, args.teacher, info.name, args.epochs, args.device
    )?;
    writeln!(
        out,
        "building the teacher cache took {cache_s:.1} s (once per search)"
    )?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..args.trials {
        with.push(cached.evaluate(&cwd)?.seconds);
        without.push(online.evaluate(&cwd)?.seconds);
    }
    let (w, o) = (median(with), median(without));
    writeln!(out, "{:<22} {:>10}", "teacher", "s/trial")?;
    writeln!(out, "{:<22} {:>10.2}", "cached", w)?;
    writeln!(out, "{:<22} {:>10.2}", "online (every batch)", o)?;
    writeln!(out, "speed-up of the cache: {:.2}x", o / w)?;
    Ok(())
}
