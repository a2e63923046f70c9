//! `autokd bench`: throughput measurements. Figures are medians of repeated runs after a
//! warm-up; compare ratios measured in one invocation, not absolute numbers across runs.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use autokd_data::{
    Annotation, Augment, ClassMask, DataLoader, Dataset, DatasetInfo, DatasetSpec, DensePipeline,
    DenseTransform, Image, ImageSource, InMemory, LoaderConfig, MaskValues, Split, Transform,
};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use autokd_distill::DistillerSpec;
use autokd_models::{Backbone, ModelName, ModelSpec};
use autokd_train::{Classification, DistillStudent, distill_step};
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
    /// Training speed: CE steps, KD steps with an online and a cached teacher, teacher
    /// inference, a proxy trial, peak memory; side by side with PyTorch with `--pytorch`.
    Train(TrainBenchArgs),
    /// Single operations at resnet20's training shapes (forward, and forward + backward), to
    /// find which kernels a training step's time goes to; side by side with PyTorch.
    Ops(OpsBenchArgs),
    /// Search strategies replayed against a tabular benchmark (grid runs at two or more proxy
    /// seeds): regret at several budgets, paired with random search.
    Search(crate::bench_search::SearchBenchArgs),
    /// Proxy variants judged by an experiment's trainings: Kendall and Spearman of each
    /// variant's rewards against trained top-1, beside its cost per trial.
    Fidelity(crate::bench_fidelity::FidelityBenchArgs),
    /// A DeepLabV3 training step (pixel CE + auxiliary head) and inference at a segmentation
    /// crop (512×512, batch 2); side by side with PyTorch with `--pytorch`.
    Segmentation(crate::bench_seg::SegBenchArgs),
    /// A RetinaNet training step (focal + L1 on random boxes) and inference with
    /// post-processing (512×512, batch 2); side by side with torchvision's with `--pytorch`.
    Detection(crate::bench_seg::DetBenchArgs),
}

/// Arguments of `autokd bench ops`.
#[derive(Debug, clap::Args)]
pub struct OpsBenchArgs {
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed repetitions, after two warm-up ones; the median is reported.
    #[arg(long, default_value_t = 7)]
    pub steps: usize,
    /// Also run the PyTorch reference (`--ops` mode of the script) with this interpreter.
    #[arg(long)]
    pub pytorch: Option<std::path::PathBuf>,
    /// The PyTorch reference script.
    #[arg(long, default_value = "benches/reference/torch_bench.py")]
    pub pytorch_script: std::path::PathBuf,
    /// Threads PyTorch may use (default: the cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device.
    #[arg(long, default_value = "flex")]
    pub device: DeviceSpec,
}

/// Arguments of `autokd bench train`.
#[derive(Debug, clap::Args)]
pub struct TrainBenchArgs {
    /// Students whose CE-only training step is measured.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resnet20,resnet8x4,wrn_16_2,mobilenetv2,shufflenetv2"
    )]
    pub students: Vec<ModelName>,
    /// Teacher:student pairs whose KD step (online and cached teacher) and teacher inference are
    /// measured; the first one also runs a proxy trial.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resnet56:resnet20,resnet32x4:resnet8x4"
    )]
    pub pairs: Vec<String>,
    /// Batch size (CIFAR shape, 3×32×32, 100 classes).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed steps per measurement, after two warm-up steps; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Proxy images per class of the proxy trial (100 classes of synthetic images).
    #[arg(long, default_value_t = 10)]
    pub proxy_per_class: usize,
    /// Skip the proxy trial.
    #[arg(long)]
    pub no_proxy: bool,
    /// Also run the PyTorch reference with this Python interpreter (which must have torch) in
    /// the same invocation, and print autokd/PyTorch ratios.
    #[arg(long)]
    pub pytorch: Option<std::path::PathBuf>,
    /// The PyTorch reference script.
    #[arg(long, default_value = "benches/reference/torch_bench.py")]
    pub pytorch_script: std::path::PathBuf,
    /// Threads PyTorch may use (set it to what autokd's backend uses: the cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device.
    #[arg(long, default_value = "flex")]
    pub device: DeviceSpec,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One measurement of `bench train`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchResult {
    /// What was measured, e.g. `kd step online resnet56->resnet20`.
    pub name: String,
    /// Median milliseconds (per step, per batch, or per trial).
    pub ms: f64,
    /// Images per second at that speed (the proxy trial: its training images).
    pub images_per_s: f64,
    /// Peak resident memory of the process during the measurement, in MiB (Linux).
    pub peak_rss_mib: Option<f64>,
    /// The PyTorch reference's median, when it ran.
    pub pytorch_ms: Option<f64>,
    /// `ms / pytorch_ms`: below 1 autokd is faster.
    pub ratio: Option<f64>,
}

impl TrainBenchResult {
    /// A measurement of `images` images per call from its `(median ms, peak MiB)`.
    pub(crate) fn new(name: String, (ms, peak): (f64, Option<f64>), images: usize) -> Self {
        Self {
            name,
            ms,
            images_per_s: images as f64 / ms * 1000.0,
            peak_rss_mib: peak,
            pytorch_ms: None,
            ratio: None,
        }
    }
}

/// Resets the peak-RSS counter of this process (Linux: `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last reset, in MiB (Linux: `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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
    /// Measure the dense (segmentation) pipeline instead, at this base size `HxW` (e.g.
    /// `512x1024`): synthetic colour images with class masks, each of a size drawn in
    /// `[H/2, H] × [W/2, W]`, through mmseg's Cityscapes training steps scaled to short side
    /// `H` (random rescale 0.5 … 2, crop `H/2 × H` with `cat_max_ratio` 0.75, flip,
    /// photometric distortion), padded per batch to a multiple of 32.
    #[arg(long, value_parser = parse_size)]
    pub dense: Option<(usize, usize)>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub(crate) fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once('x')
        .ok_or_else(|| format!("`{s}`: expected HxW, e.g. 512x1024"))?;
    let side = |v: &str| match v.trim().parse::<usize>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err(format!("`{s}`: sides must be integers of at least 2")),
    };
    Ok((side(h)?, side(w)?))
}

/// Synthetic colour images of varying sizes with vertical-stripe class masks, kept in memory.
#[derive(Debug)]
struct SyntheticScenes {
    images: Vec<Image>,
    classes: usize,
}

impl SyntheticScenes {
    fn new(n: usize, (h, w): (usize, usize), classes: usize) -> anyhow::Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let images = (0..n)
            .map(|_| {
                let ih = rng.random_range(h / 2..=h);
                let iw = rng.random_range(w / 2..=w);
                let mut data = vec![0u8; 3 * ih * iw];
                rng.fill(data.as_mut_slice());
                Ok(Image::new(3, ih, iw, data)?)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { images, classes })
    }
}

impl ImageSource for SyntheticScenes {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn label(&self, _: usize) -> usize {
        0
    }
    fn image(&self, index: usize) -> autokd_data::Result<Image> {
        Ok(self.images[index].clone())
    }
    fn annotation(&self, index: usize) -> autokd_data::Result<Annotation> {
        let img = &self.images[index];
        let stripe = img.width.div_ceil(self.classes);
        let values = (0..img.height * img.width)
            .map(|i| ((i % img.width) / stripe) as u8)
            .collect();
        Ok(Annotation::Mask(ClassMask::new(
            img.height,
            img.width,
            MaskValues::U8(values),
        )?))
    }
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
            anchor_base: None,
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
        BenchWhat::Train(a) => train_bench(a, out),
        BenchWhat::Ops(a) => ops_bench(a, out),
        BenchWhat::Search(a) => crate::bench_search::run(a, out),
        BenchWhat::Fidelity(a) => crate::bench_fidelity::run(a, out),
        BenchWhat::Segmentation(a) => crate::bench_seg::run(a, out),
        BenchWhat::Detection(a) => crate::bench_seg::run_detection(a, out),
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
    let dense = match args.dense {
        Some((h, w)) => {
            let scenes = SyntheticScenes::new(args.images, (h, w), 19)?;
            let pipeline = DensePipeline::segmentation_train(h, (h / 2, h));
            writeln!(
                out,
                "loader: synthetic scenes ({} colour images of {}..={} × {}..={} with 19-class masks), batch {}, {:?}, device {}",
                args.images,
                h / 2,
                h,
                w / 2,
                w,
                args.batch_size,
                pipeline.steps,
                args.device
            )?;
            let info = DatasetInfo {
                name: "synthetic-scenes".into(),
                height: h,
                width: w,
                ..ds.info.clone()
            };
            Some((
                Split::all(std::sync::Arc::new(scenes)),
                DenseTransform::new(&info, pipeline)?,
            ))
        }
        None => {
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
            None
        }
    };
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
        let loader = match &dense {
            Some((split, t)) => DataLoader::dense(split.clone(), t.clone(), cfg)?,
            None => DataLoader::new(ds.train.clone(), transform.clone(), cfg)?,
        };
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
            &mut autokd_models::InitRng::new(0),
            &ad,
        )?;
        let (_, t_req) = distiller.tap_requests();
        // The teacher cache: computed once, outside the timed steps.
        let cached = teacher.forward_intermediates(images.clone(), &t_req);
        let optim = autokd_train::sgd(0.9, 0.0);
        variants.push((
            family,
            dspec,
            Some(DistillStudent { student, distiller }),
            optim,
            cached,
            Vec::new(),
        ));
    }
    let batch = autokd_data::Batch {
        images: images.clone().autodiff(),
        targets: targets.clone(),
        positions: (0..b).collect(),
        dense: None,
    };
    for round in 0..args.steps + 2 {
        for (_, _, model, optim, cached, times) in variants.iter_mut() {
            let m = model
                .take()
                .ok_or_else(|| anyhow::anyhow!("lost a model"))?;
            let start = Instant::now();
            let (m, _) = distill_step(m, optim, 0.01, &Classification, &batch, cached)?;
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
    let spec = |name: ModelName| crate::model_spec(name, info);
    let teacher = spec(args.teacher).init(&device)?;
    let taps: Vec<usize> = autokd_models::default_tap(&teacher.feature_info())
        .into_iter()
        .collect();
    let cfg = |cache_teacher| {
        let mut c = autokd_train::ProxyConfig {
            per_class: args.per_class,
            cache_teacher,
            ..Default::default()
        };
        (c.recipe.length, c.recipe.batch_size) = (autokd_train::Length::Epochs(args.epochs), 64);
        c
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

/// One training step of the model in `net` (taken out and put back) at learning rate 0.01.
fn step_once(
    net: &mut Option<DistillStudent>,
    optim: &mut burn::optim::ModuleOptimizer,
    images: &Tensor<4>,
    targets: &Tensor<1, Int>,
    teacher: &autokd_models::Intermediates,
) -> anyhow::Result<()> {
    let m = net
        .take()
        .ok_or_else(|| anyhow::anyhow!("lost the model"))?;
    let batch = autokd_data::Batch {
        images: images.clone().autodiff(),
        targets: targets.clone(),
        positions: (0..images.dims()[0]).collect(),
        dense: None,
    };
    let (m, _) = distill_step(m, optim, 0.01, &Classification, &batch, teacher)?;
    *net = Some(m);
    Ok(())
}

/// Median of `steps` timed calls after two warm-up calls, with the peak RSS over them.
pub(crate) fn timed(
    steps: usize,
    device: &Device,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, Option<f64>)> {
    reset_peak_rss();
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let start = Instant::now();
        f()?;
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device: {e:?}"))?;
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok((median(times), peak_rss_mib()))
}

fn train_bench(args: &TrainBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    let plain = select_device(&args.device)?;
    let ad = plain.clone().autodiff();
    let b = args.batch_size;
    let spec = |name: ModelName| ModelSpec {
        name,
        in_channels: 3,
        num_classes: 100,
        image_size: 32,
    };
    let pairs: Vec<(ModelName, ModelName)> = args
        .pairs
        .iter()
        .map(|p| -> anyhow::Result<(ModelName, ModelName)> {
            let (t, s) = p
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--pairs: `{p}` is not TEACHER:STUDENT"))?;
            Ok((t.parse()?, s.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let images = Tensor::<4>::random(
        [b, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &plain,
    );
    let targets: Vec<i64> = (0..b as i64).map(|i| i % 100).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [b]), &ad);
    writeln!(
        out,
        "train bench: batch {b}, 3x32x32, 100 classes, device {}, median of {} steps after 2 warm-up steps",
        args.device, args.steps
    )?;
    let mut results: Vec<TrainBenchResult> = Vec::new();
    let mut params: Vec<(String, usize)> = Vec::new();
    let mut push = |name: String, timing: (f64, Option<f64>), images: usize| {
        results.push(TrainBenchResult::new(name, timing, images));
    };
    // PyTorch's SGD as the reference script runs it: momentum 0.9, no dampening, decay 5e-4.
    let sgd = || autokd_train::sgd(0.9, 5e-4);
    // A student with its distiller (CE only, or KD) on the autodiff device.
    let student_with = |s: ModelName, t: Option<(ModelName, &autokd_models::Model)>, kd: bool| {
        let dspec = DistillerSpec::baseline(if kd { "kd" } else { "vanilla" })?;
        let student = spec(s).init(&ad)?;
        let (t_name, t_info) = match t {
            Some((n, m)) => (n.as_str().to_string(), m.feature_info()),
            None => ("none".to_string(), Vec::new()),
        };
        let distiller = autokd_distill::Distiller::new(
            &dspec,
            s.as_str(),
            &student.feature_info(),
            &t_name,
            &t_info,
            &mut autokd_models::InitRng::new(0),
            &ad,
        )?;
        anyhow::Ok(DistillStudent { student, distiller })
    };
    for &s in &args.students {
        let net_s = student_with(s, None, false)?;
        params.push((
            s.as_str().into(),
            autokd_models::trainable_params(&net_s.student),
        ));
        let mut net = Some(net_s);
        let mut optim = sgd();
        let none = autokd_models::Intermediates::no_teacher(b, 100, &plain);
        let r = timed(args.steps, &ad, || {
            step_once(&mut net, &mut optim, &images, &targets, &none)
        })?;
        push(format!("ce step {s}"), r, b);
    }
    for &(t, s) in &pairs {
        let teacher = spec(t).init(&plain)?.valid();
        params.push((t.as_str().into(), autokd_models::trainable_params(&teacher)));
        let r = timed(args.steps, &plain, || {
            let _ = teacher
                .forward_intermediates(images.clone(), &autokd_models::TapRequest::none())
                .logits
                .rows()
                .into_data();
            Ok(())
        })?;
        push(format!("teacher inference {t}"), r, b);
        for online in [true, false] {
            let mut net = Some(student_with(s, Some((t, &teacher)), true)?);
            let (_, t_req) = net
                .as_ref()
                .map(|n| n.distiller.tap_requests())
                .ok_or_else(|| anyhow::anyhow!("no model"))?;
            let cached = teacher.forward_intermediates(images.clone(), &t_req);
            let mut optim = sgd();
            let r = timed(args.steps, &ad, || {
                let t_out = if online {
                    teacher.forward_intermediates(images.clone(), &t_req)
                } else {
                    cached.clone()
                };
                step_once(&mut net, &mut optim, &images, &targets, &t_out)
            })?;
            let mode = if online { "online" } else { "cached" };
            push(format!("kd step {mode} {t}->{s}"), r, b);
        }
    }
    let mut proxy_sizes = None;
    if let (false, Some(&(t, s))) = (args.no_proxy, pairs.first()) {
        let ds = synthetic_cifar(args.proxy_per_class * 100 * 2)?;
        let teacher = spec(t).init(&plain)?;
        let evaluator = autokd_train::ProxyEvaluator::new(
            &ds,
            &teacher,
            t.as_str(),
            spec(s),
            &Vec::from_iter(autokd_models::default_tap(&teacher.feature_info())),
            {
                let mut c = autokd_train::ProxyConfig {
                    per_class: args.proxy_per_class,
                    cache_teacher: true,
                    ..Default::default()
                };
                (c.recipe.length, c.recipe.batch_size) = (autokd_train::Length::Epochs(1), b);
                c
            },
            &plain,
        )?;
        let kd = DistillerSpec::baseline("kd")?;
        let (n_train, n_val) = evaluator.sizes();
        reset_peak_rss();
        let mut times = Vec::new();
        evaluator.evaluate(&kd)?; // warm-up
        for _ in 0..3 {
            times.push(evaluator.evaluate(&kd)?.seconds * 1000.0);
        }
        push(
            format!("proxy trial cached {t}->{s}"),
            (median(times), peak_rss_mib()),
            n_train,
        );
        proxy_sizes = Some((n_train, n_val));
    }
    // PyTorch, same models, batch and steps, in the same invocation.
    let mut torch_version = None;
    if let Some(python) = &args.pytorch {
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let join = |v: Vec<String>| v.join(",");
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&args.pytorch_script)
            .arg("--students")
            .arg(join(
                args.students
                    .iter()
                    .map(|m| m.as_str().to_string())
                    .collect(),
            ))
            .arg("--pairs")
            .arg(join(
                pairs.iter().map(|(t, s)| format!("{t}:{s}")).collect(),
            ))
            .arg("--batch")
            .arg(b.to_string())
            .arg("--steps")
            .arg(args.steps.to_string())
            .arg("--threads")
            .arg(threads.to_string());
        if let Some((n_train, n_val)) = proxy_sizes {
            cmd.arg("--proxy-train")
                .arg(n_train.to_string())
                .arg("--proxy-val")
                .arg(n_val.to_string());
        }
        let reply = run_pytorch(cmd, &args.pytorch_script, out)?;
        torch_version = reply["torch"].as_str().map(String::from);
        let torch_ms = |name: &str| pytorch_ms(&reply, name);
        for r in &mut results {
            // autokd's proxy trial with its teacher cache is compared with the PyTorch loop and
            // its online teacher (what a user would otherwise run); every step with its twin.
            let twin = if r.name.starts_with("proxy trial cached") {
                r.name.replace(" cached ", " online ")
            } else {
                r.name.clone()
            };
            r.pytorch_ms = torch_ms(&twin);
            r.ratio = r.pytorch_ms.map(|p| r.ms / p);
        }
        warn_param_mismatches(&reply, &params, out)?;
    }
    print_results(out, &results, torch_version.as_deref())?;
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "device": args.device.to_string(),
            "batch_size": b,
            "pytorch": torch_version,
            "results": results,
        });
        crate::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    Ok(())
}

/// Runs the PyTorch reference `cmd` (its stderr passed through) and reads the JSON it prints.
pub(crate) fn run_pytorch(
    mut cmd: std::process::Command,
    script: &std::path::Path,
    out: &mut dyn Write,
) -> anyhow::Result<serde_json::Value> {
    writeln!(out, "running the PyTorch reference: {cmd:?}")?;
    let output = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    anyhow::ensure!(
        output.status.success(),
        "the PyTorch reference {} failed ({})",
        script.display(),
        output.status
    );
    serde_json::from_slice(&output.stdout).context("the PyTorch reference printed no JSON")
}

/// Warns of each model whose parameter count here differs from the PyTorch reference's.
pub(crate) fn warn_param_mismatches(
    reply: &serde_json::Value,
    params: &[(impl std::fmt::Display, usize)],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for (model, ours) in params {
        let theirs = reply["params"][model.to_string().as_str()].as_u64();
        if theirs != Some(*ours as u64) {
            writeln!(
                out,
                "warning: {model} has {ours} parameters here and {theirs:?} in the PyTorch reference"
            )?;
        }
    }
    Ok(())
}

/// The PyTorch reference's median for the measurement `name`, when it reported one.
pub(crate) fn pytorch_ms(reply: &serde_json::Value, name: &str) -> Option<f64> {
    reply["results"]
        .as_array()?
        .iter()
        .find(|r| r["name"].as_str() == Some(name))?["ms"]
        .as_f64()
}

/// The measurements as a table, with PyTorch's medians and the ratios where it ran.
pub(crate) fn print_results(
    out: &mut dyn Write,
    results: &[TrainBenchResult],
    torch_version: Option<&str>,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<40} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "measurement", "autokd ms", "images/s", "peak MiB", "PyTorch ms", "ratio"
    )?;
    for r in results {
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        writeln!(
            out,
            "{:<40} {:>10.1} {:>10.0} {:>10} {:>12} {:>8}",
            r.name,
            r.ms,
            r.images_per_s,
            opt(r.peak_rss_mib, 0),
            opt(r.pytorch_ms, 1),
            opt(r.ratio, 2)
        )?;
    }
    if let Some(v) = torch_version {
        writeln!(
            out,
            "PyTorch {v}; ratio = autokd / PyTorch (below 1: autokd is faster)"
        )?;
    }
    Ok(())
}

/// The operations of `bench ops`: name, input shape `[C, H, W]`, and what runs on it. The same
/// names and shapes are in the PyTorch script's `--ops` mode.
const OPS: [(&str, [usize; 3]); 14] = [
    ("conv3x3 16->16 @32", [16, 32, 32]),
    ("conv3x3 16->16 autokd @32", [16, 32, 32]),
    ("conv3x3 32->32 @16", [32, 16, 16]),
    ("conv3x3 32->32 autokd @16", [32, 16, 16]),
    ("conv3x3 64->64 @8", [64, 8, 8]),
    ("conv3x3 64->64 autokd @8", [64, 8, 8]),
    ("conv1x1 16->32 s2 @32", [16, 32, 32]),
    ("conv1x1 16->32 s2 autokd @32", [16, 32, 32]),
    ("batchnorm train 16 @32", [16, 32, 32]),
    ("batchnorm train autokd 16 @32", [16, 32, 32]),
    ("relu 16 @32", [16, 32, 32]),
    ("add 16 @32", [16, 32, 32]),
    ("global avg pool 64 @8", [64, 8, 8]),
    ("linear 64->100", [64, 1, 1]),
];

/// One operation of [`OPS`], its module built once. Rows named `autokd` run the same operation
/// as the row above them through autokd's own code instead of burn's module.
enum BenchOp {
    Conv(burn::nn::conv::Conv2d),
    Norm(burn::nn::BatchNorm),
    AutokdNorm(burn::nn::BatchNorm),
    AutokdConv(burn::nn::conv::Conv2d),
    Relu,
    Add,
    Pool,
    Linear(burn::nn::Linear),
}

impl BenchOp {
    fn new(name: &str, c: usize, d: &Device) -> Self {
        let conv = |cout: usize, k: usize, stride: usize| {
            burn::nn::conv::Conv2dConfig::new([c, cout], [k, k])
                .with_stride([stride, stride])
                .with_padding(burn::nn::PaddingConfig2d::Explicit(
                    k / 2,
                    k / 2,
                    k / 2,
                    k / 2,
                ))
                .with_bias(false)
                .init(d)
        };
        match name {
            n if n.starts_with("conv3x3") && n.contains("autokd") => {
                Self::AutokdConv(conv(c, 3, 1))
            }
            n if n.starts_with("conv3x3") => Self::Conv(conv(c, 3, 1)),
            n if n.starts_with("conv1x1") && n.contains("autokd") => {
                Self::AutokdConv(conv(2 * c, 1, 2))
            }
            n if n.starts_with("conv1x1") => Self::Conv(conv(2 * c, 1, 2)),
            n if n.starts_with("batchnorm train autokd") => {
                Self::AutokdNorm(burn::nn::BatchNormConfig::new(c).init(d))
            }
            n if n.starts_with("batchnorm") => {
                Self::Norm(burn::nn::BatchNormConfig::new(c).init(d))
            }
            n if n.starts_with("relu") => Self::Relu,
            n if n.starts_with("add") => Self::Add,
            n if n.starts_with("global") => Self::Pool,
            _ => Self::Linear(burn::nn::LinearConfig::new(c, 100).init(d)),
        }
    }

    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, _, _] = x.dims();
        match self {
            Self::Conv(m) => m.forward(x),
            Self::AutokdConv(m) => autokd_models::common::conv2d(m, x),
            Self::Norm(m) => m.forward(x),
            Self::AutokdNorm(m) => autokd_models::common::batch_norm(m, x),
            Self::Relu => burn::tensor::activation::relu(x),
            Self::Add => x.clone() + x,
            Self::Pool => x.mean_dims(&[2, 3]),
            Self::Linear(l) => {
                let y = l.forward(x.reshape([b, c]));
                let n = y.dims()[1];
                y.reshape([b, n, 1, 1])
            }
        }
    }
}

fn ops_bench(args: &OpsBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    let plain = select_device(&args.device)?;
    let ad = plain.clone().autodiff();
    let b = args.batch_size;
    writeln!(
        out,
        "ops: batch {b}, device {}, median of {} runs; fwd = forward only (no autodiff), fwd+bwd = forward, sum, backward",
        args.device, args.steps
    )?;
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for (name, [c, h, w]) in OPS {
        let x = Tensor::<4>::random(
            [b, c, h, w],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &plain,
        );
        let (op_plain, op_ad) = (BenchOp::new(name, c, &plain), BenchOp::new(name, c, &ad));
        // Parameters initialize lazily: touch them before timing.
        let _ = op_plain.apply(x.clone()).into_data();
        let xa = x.clone().autodiff().require_grad();
        let _ = op_ad.apply(xa.clone()).into_data();
        let (fwd, _) = timed(args.steps, &plain, || {
            let _ = op_plain.apply(x.clone()).into_data();
            Ok(())
        })?;
        let (both, _) = timed(args.steps, &ad, || {
            let _grads = op_ad.apply(xa.clone()).sum().backward();
            Ok(())
        })?;
        rows.push((name.to_string(), fwd, both));
    }
    let mut reference: Option<serde_json::Value> = None;
    if let Some(python) = &args.pytorch {
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let output = std::process::Command::new(python)
            .arg(&args.pytorch_script)
            .args([
                "--ops",
                "--batch",
                &b.to_string(),
                "--steps",
                &args.steps.to_string(),
            ])
            .args(["--threads", &threads.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "the PyTorch reference failed ({})",
            output.status
        );
        reference = Some(
            serde_json::from_slice(&output.stdout)
                .context("the PyTorch reference printed no JSON")?,
        );
    }
    let theirs = |name: &str, key: &str| -> Option<f64> {
        reference.as_ref()?["results"]
            .as_array()?
            .iter()
            .find(|r| r["name"].as_str() == Some(name))?[key]
            .as_f64()
    };
    writeln!(
        out,
        "{:<26} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "op", "fwd ms", "torch", "fwd+bwd", "torch", "ratio", "ratio"
    )?;
    for (name, fwd, both) in rows {
        // An autokd row is compared with PyTorch's row for the same operation.
        let op = name.replace(" autokd", "");
        let (tf, tb) = (theirs(&op, "fwd"), theirs(&op, "fwd_bwd"));
        let f = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        writeln!(
            out,
            "{:<26} {:>10.3} {:>10} {:>10.3} {:>10} {:>8} {:>8}",
            name,
            fwd,
            f(tf, 3),
            both,
            f(tb, 3),
            f(tf.map(|t| fwd / t), 2),
            f(tb.map(|t| both / t), 2)
        )?;
    }
    Ok(())
}
