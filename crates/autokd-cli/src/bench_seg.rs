//! `autokd bench segmentation`: a DeepLabV3 training step (pixel CE with the auxiliary head at
//! 0.4, SGD) and inference at a segmentation crop, side by side with the PyTorch reference
//! (`torch_bench.py --seg`: torchvision's DeepLabV3 heads on the same dilated ResNet) in one
//! invocation; `autokd bench detection`: the same for RetinaNet (focal + L1 on random boxes;
//! inference with post-processing) against torchvision's `RetinaNet` (`torch_bench.py --det`).

use std::io::Write;

use autokd_data::{Batch, BoxAnnotation, DenseBatch};
use autokd_distill::DistillerSpec;
use autokd_models::{Backbone, ModelName, ModelSpec, TapRequest};
use autokd_train::detection::Detection;
use autokd_train::{DistillStudent, Segmentation, distill_step};
use burn::prelude::*;
use rand::{Rng, SeedableRng};

use crate::bench::{
    TrainBenchResult, print_results, pytorch_ms, run_pytorch, warn_param_mismatches,
};
use crate::device::{DeviceSpec, select_device};

/// Arguments of `autokd bench segmentation`.
#[derive(Debug, clap::Args)]
pub struct SegBenchArgs {
    /// The segmentation models whose training step and inference are measured.
    #[arg(long, value_delimiter = ',', default_value = "deeplabv3_resnet18")]
    pub models: Vec<ModelName>,
    /// Input size `HxW` (the Cityscapes recipe's crops are 512x512).
    #[arg(long, default_value = "512x512", value_parser = crate::bench::parse_size)]
    pub size: (usize, usize),
    /// Batch size.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Classes (Cityscapes: 19).
    #[arg(long, default_value_t = 19)]
    pub classes: usize,
    /// Steps, the PyTorch reference, device and output.
    #[command(flatten)]
    pub run: DenseBenchRun,
}

/// Arguments of `autokd bench detection`.
#[derive(Debug, clap::Args)]
pub struct DetBenchArgs {
    /// The detectors whose training step and inference are measured.
    #[arg(long, value_delimiter = ',', default_value = "retinanet_resnet18_fpn")]
    pub models: Vec<ModelName>,
    /// Input size `HxW` (padded to a multiple of 32; COCO's are about 800x1333).
    #[arg(long, default_value = "512x512", value_parser = crate::bench::parse_size)]
    pub size: (usize, usize),
    /// Batch size.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Classes (COCO in torchvision's numbering: 91).
    #[arg(long, default_value_t = 91)]
    pub classes: usize,
    /// Ground-truth boxes per image (random, seeded).
    #[arg(long, default_value_t = 8)]
    pub boxes: usize,
    /// Steps, the PyTorch reference, device and output.
    #[command(flatten)]
    pub run: DenseBenchRun,
}

/// The options both dense benches share: how many steps, the PyTorch reference, the device and
/// the JSON output.
#[derive(Debug, clap::Args)]
pub struct DenseBenchRun {
    /// Timed steps per measurement, after two warm-up steps; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Also run the PyTorch reference with this Python interpreter (which must have torch and
    /// torchvision) in the same invocation, and print autokd/PyTorch ratios.
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

/// Runs the benchmark.
pub fn run(args: &SegBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.run.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(
        args.batch_size > 1,
        "--batch-size must be at least 2 (BatchNorm of the image-pooling branch needs two values per channel)"
    );
    anyhow::ensure!(args.classes > 0, "--classes must be at least 1");
    for m in &args.models {
        anyhow::ensure!(
            m.family() == autokd_models::Family::Segmentation,
            "--models: {m} is not a segmentation model"
        );
    }
    let plain = select_device(&args.run.device)?;
    let ad = plain.clone().autodiff();
    let ((h, w), b, k) = (args.size, args.batch_size, args.classes);
    writeln!(
        out,
        "segmentation bench: batch {b}, 3x{h}x{w}, {k} classes, device {}, median of {} steps after 2 warm-up steps",
        args.run.device, args.run.steps
    )?;
    let images = Tensor::<4>::random(
        [b, 3, h, w],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &plain,
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let labels: Vec<i64> = (0..b * h * w)
        .map(|_| rng.random_range(0..k as i64))
        .collect();
    let batch = Batch {
        images: images.clone().autodiff(),
        targets: Tensor::<1, Int>::zeros([b], &ad),
        positions: (0..b).collect(),
        dense: Some(DenseBatch {
            valid: Tensor::<3>::ones([b, h, w], &ad),
            masks: Some(Tensor::<3, Int>::from_data(
                TensorData::new(labels, [b, h, w]),
                &ad,
            )),
            sizes: vec![(h, w); b],
            original_sizes: Vec::new(),
            boxes: vec![Vec::new(); b],
        }),
    };
    let task = Segmentation::default();
    // PyTorch's SGD as the reference script runs it: momentum 0.9, decay 5e-4.
    let (results, params) = measure(
        &args.models,
        &task,
        &batch,
        [b, k, h, args.run.steps],
        ("seg ce step", "seg inference", 5e-4),
        (&plain, &ad),
        |frozen| {
            let out = frozen.forward_intermediates(images.clone(), &TapRequest::none());
            if let autokd_models::Prediction::Map(m) = out.logits {
                let _ = autokd_models::deeplab::upsample_bilinear(m, [h, w]).into_data();
            }
            Ok(())
        },
    )?;
    report(
        out,
        results,
        &params,
        &args.run,
        ("--seg", &args.models, Vec::new()),
        [h, w, b, k],
    )
}

/// Runs `detector` on a random batch: one training step (focal + L1 against `boxes` random
/// ground-truth boxes per image, SGD as the reference) and inference with post-processing.
pub fn run_detection(args: &DetBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.run.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(args.classes > 0, "--classes must be at least 1");
    anyhow::ensure!(args.boxes > 0, "--boxes must be at least 1");
    for m in &args.models {
        anyhow::ensure!(
            m.family() == autokd_models::Family::Detection,
            "--models: {m} is not a detector"
        );
    }
    let plain = select_device(&args.run.device)?;
    let ad = plain.clone().autodiff();
    let ((h, w), b, k) = (args.size, args.batch_size, args.classes);
    anyhow::ensure!(
        h % 32 == 0 && w % 32 == 0 && h >= 64 && w >= 64,
        "--size: {h}x{w} must be multiples of 32 of at least 64 (the detector pads to 32)"
    );
    writeln!(
        out,
        "detection bench: batch {b}, 3x{h}x{w}, {k} classes, {} boxes per image, device {}, median of {} steps after 2 warm-up steps",
        args.boxes, args.run.device, args.run.steps
    )?;
    let images = Tensor::<4>::random(
        [b, 3, h, w],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &plain,
    );
    let boxes = random_boxes(b, args.boxes, k, h, w);
    let batch = Batch {
        images: images.clone().autodiff(),
        targets: Tensor::<1, Int>::zeros([b], &ad),
        positions: (0..b).collect(),
        dense: Some(DenseBatch {
            valid: Tensor::<3>::ones([b, h, w], &ad),
            masks: None,
            sizes: vec![(h, w); b],
            original_sizes: Vec::new(),
            boxes,
        }),
    };
    // torchvision's anchors, assignment, coder and post-processing.
    let task = Detection::default();
    let sizes = vec![(h, w); b];
    // The models in the layout of a detector with a pretrained backbone, as the reference
    // builds it (frozen batch norms, stem and stage 1); torchvision's detection reference's
    // SGD: momentum 0.9, weight decay 1e-4.
    let (results, params) = measure(
        &args.models,
        &task,
        &batch,
        [b, k, h, args.run.steps],
        ("det focal step", "det inference", 1e-4),
        (&plain, &ad),
        |frozen| {
            let out = frozen.forward_intermediates(images.clone(), &TapRequest::none());
            let _ = task.detect_batch(&out, (h, w), &sizes)?;
            Ok(())
        },
    )?;
    report(
        out,
        results,
        &params,
        &args.run,
        (
            "--det",
            &args.models,
            vec!["--boxes".into(), args.boxes.to_string()],
        ),
        [h, w, b, k],
    )
}

/// Times each of `models` (built for `k` classes at side `h`, trained from scratch with SGD at
/// lr 0.01, momentum 0.9 and `weight_decay`): a training step of `task` on `batch`, then
/// `infer` on its frozen copy; results named `<step> <model>` and `<inference> <model>`, with
/// each model's parameter count.
#[allow(clippy::type_complexity)]
fn measure(
    models: &[ModelName],
    task: &dyn autokd_train::Task,
    batch: &Batch,
    [b, k, h, steps]: [usize; 4],
    (step_name, infer_name, weight_decay): (&str, &str, f64),
    (plain, ad): (&Device, &Device),
    infer: impl Fn(&autokd_models::Model) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<TrainBenchResult>, Vec<(ModelName, usize)>)> {
    let mut results = Vec::new();
    let mut params = Vec::new();
    for &name in models {
        let spec = ModelSpec {
            name,
            in_channels: 3,
            num_classes: k,
            image_size: h,
        };
        let student = spec.init(ad)?;
        params.push((name, autokd_models::trainable_params(&student)));
        let distiller = autokd_distill::Distiller::new(
            &DistillerSpec::baseline("vanilla")?,
            name.as_str(),
            &student.feature_info(),
            "none",
            &[],
            &mut autokd_models::InitRng::new(0),
            ad,
        )?;
        let mut optim = autokd_train::sgd(0.9, weight_decay);
        let none = autokd_models::Intermediates::no_teacher(b, k, plain);
        let mut net = Some(DistillStudent { student, distiller });
        let step = crate::bench::timed(steps, ad, || {
            let m = net
                .take()
                .ok_or_else(|| anyhow::anyhow!("lost the model"))?;
            let (m, _) = distill_step(m, &mut optim, 0.01, task, batch, &none)?;
            net = Some(m);
            Ok(())
        })?;
        results.push(TrainBenchResult::new(
            format!("{step_name} {name}"),
            step,
            b,
        ));
        let frozen = net
            .take()
            .ok_or_else(|| anyhow::anyhow!("lost the model"))?
            .student
            .valid();
        let time = crate::bench::timed(steps, plain, || infer(&frozen))?;
        results.push(TrainBenchResult::new(
            format!("{infer_name} {name}"),
            time,
            b,
        ));
    }
    Ok((results, params))
}

/// `per_image` random boxes of each of `images` images, seeded: sides 32 to a third of the
/// image, inside it, random classes below `classes` (the reference script draws its own with
/// the same rule).
fn random_boxes(
    images: usize,
    per_image: usize,
    classes: usize,
    h: usize,
    w: usize,
) -> Vec<Vec<BoxAnnotation>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    (0..images)
        .map(|_| {
            (0..per_image)
                .map(|_| {
                    let bw = rng.random_range(32..=(w / 3).max(33)) as f32;
                    let bh = rng.random_range(32..=(h / 3).max(33)) as f32;
                    let x = rng.random_range(0.0..(w as f32 - bw).max(1.0));
                    let y = rng.random_range(0.0..(h as f32 - bh).max(1.0));
                    BoxAnnotation {
                        xyxy: [x, y, x + bw, y + bh],
                        label: rng.random_range(0..classes) as u16,
                        crowd: false,
                        area: bw * bh,
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs the PyTorch reference when `run` names one (`flag` `--seg` or `--det` for `models`,
/// then `extra`), pairs its timings with ours, prints the table and writes the JSON.
fn report(
    out: &mut dyn Write,
    mut results: Vec<TrainBenchResult>,
    params: &[(ModelName, usize)],
    run: &DenseBenchRun,
    (flag, models, extra): (&str, &[ModelName], Vec<String>),
    [h, w, b, k]: [usize; 4],
) -> anyhow::Result<()> {
    let mut torch_version = None;
    if let Some(python) = &run.pytorch {
        let threads = run
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&run.pytorch_script)
            .arg(flag)
            .arg(
                models
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--size")
            .arg(format!("{h}x{w}"))
            .arg("--classes")
            .arg(k.to_string())
            .arg("--batch")
            .arg(b.to_string())
            .arg("--steps")
            .arg(run.steps.to_string())
            .arg("--threads")
            .arg(threads.to_string())
            .args(&extra);
        let reply = run_pytorch(cmd, &run.pytorch_script, out)?;
        torch_version = reply["torch"].as_str().map(String::from);
        for r in &mut results {
            r.pytorch_ms = pytorch_ms(&reply, &r.name);
            r.ratio = r.pytorch_ms.map(|p| r.ms / p);
        }
        warn_param_mismatches(&reply, params, out)?;
    }
    print_results(out, &results, torch_version.as_deref())?;
    if let Some(path) = &run.json {
        let json = serde_json::json!({
            "device": run.device.to_string(),
            "batch_size": b,
            "size": [h, w],
            "classes": k,
            "pytorch": torch_version,
            "results": results,
        });
        crate::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SegBenchArgs,
    }

    #[derive(Parser)]
    struct DetCli {
        #[command(flatten)]
        args: DetBenchArgs,
    }

    /// At 64×64 the detection bench measures a RetinaNet step and an inference with
    /// post-processing and writes them as JSON; a segmenter, or a size the detector cannot pad,
    /// is refused with the option named.
    #[test]
    fn measures_a_detector_step_and_an_inference() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("det.json");
        let cli = DetCli::parse_from([
            "bench",
            "--size",
            "64x64",
            "--steps",
            "1",
            "--classes",
            "3",
            "--boxes",
            "2",
            "--json",
            json.to_str().unwrap(),
        ]);
        let mut out = Vec::new();
        run_detection(&cli.args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("det focal step retinanet_resnet18_fpn"),
            "{text}"
        );
        assert!(
            text.contains("det inference retinanet_resnet18_fpn"),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| r["ms"].as_f64().unwrap() > 0.0));
        let bad = DetCli::parse_from(["bench", "--models", "deeplabv3_resnet18"]);
        let err = run_detection(&bad.args, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--models") && err.contains("deeplabv3"),
            "{err}"
        );
        let odd = DetCli::parse_from(["bench", "--size", "100x100"]);
        let err = run_detection(&odd.args, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--size"), "{err}");
        // The boxes lie inside the image, with sides of at least 32.
        for b in random_boxes(2, 5, 3, 64, 96).iter().flatten() {
            let [x1, y1, x2, y2] = b.xyxy;
            assert!(x1 >= 0.0 && y1 >= 0.0 && x2 <= 96.0 && y2 <= 64.0, "{b:?}");
            assert!(x2 - x1 >= 32.0 && y2 - y1 >= 32.0 && b.label < 3, "{b:?}");
        }
    }

    /// At a tiny crop the bench measures a step and an inference of the model and writes them
    /// as JSON; a classifier or a batch of one is refused with the option named.
    #[test]
    fn measures_a_step_and_an_inference() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("seg.json");
        let cli = Cli::parse_from([
            "bench",
            "--size",
            "32x32",
            "--steps",
            "1",
            "--classes",
            "3",
            "--json",
            json.to_str().unwrap(),
        ]);
        let mut out = Vec::new();
        run(&cli.args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("seg ce step deeplabv3_resnet18"), "{text}");
        assert!(text.contains("seg inference deeplabv3_resnet18"), "{text}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| r["ms"].as_f64().unwrap() > 0.0));
        let bad = Cli::parse_from(["bench", "--models", "resnet20"]);
        let err = run(&bad.args, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("--models") && err.contains("resnet20"),
            "{err}"
        );
        let one = Cli::parse_from(["bench", "--batch-size", "1"]);
        let err = run(&one.args, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("--batch-size"), "{err}");
    }
}
