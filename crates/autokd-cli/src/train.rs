//! `autokd train`: train a model from scratch, or distil a student from a teacher with any
//! distiller (a TOML file such as a search's `best.toml`, or a baseline name), for one or more
//! seeds; resumable.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use autokd_data::DatasetSpec;
use autokd_distill::DistillerSpec;
use autokd_models::{ModelName, load_weights, save_weights};
use autokd_train::{Length, Recipe, TeacherSetup, TrainEvent, train};
use serde::Serialize;

use crate::device::{DeviceSpec, select_devices};

/// Arguments of `autokd train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Dataset string.
    #[arg(long, default_value = "digits")]
    pub dataset: DatasetSpec,
    /// The model to train (the student when distilling).
    #[arg(long)]
    pub model: ModelName,
    /// Teacher architecture (distillation); needs `--teacher-weights`.
    #[arg(long, requires = "teacher_weights")]
    pub teacher: Option<ModelName>,
    /// Teacher weights (.bpk, .pth, .safetensors).
    #[arg(long)]
    pub teacher_weights: Option<PathBuf>,
    /// Distiller: a TOML file (e.g. a search's best.toml) or a baseline name (vanilla, kd, at,
    /// sp, ickd, cwd, cwd_logits, dist, fitnet). Default with a teacher: kd.
    #[arg(long)]
    pub distiller: Option<String>,
    /// Recipe preset (cifar100, imagenet, deit, digits, fashion-mnist) or a TOML file of one
    /// (the keys of a search config's `[teacher_training]`, plus `optimizer`, `schedule`
    /// = multi_step | cosine | poly, `warmup_epochs`, `iterations`, `power`, `min_lr`).
    #[arg(long, default_value = "digits")]
    pub recipe: String,
    /// Override the recipe's length with this many epochs.
    #[arg(long, conflicts_with = "iterations")]
    pub epochs: Option<usize>,
    /// Override the recipe's length with this many optimizer steps (its schedule then counts
    /// iterations).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Override the recipe's batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override the recipe's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Train on a fixed stratified subset of at most N images per class (the same subset for
    /// every run and seed); the test split stays whole.
    #[arg(long)]
    pub train_per_class: Option<usize>,
    /// Evaluate on a fixed stratified subset of at most N test images per class (faster epochs;
    /// the default is the whole test split).
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// Override the recipe's schedule with steps ×0.1 at these epochs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Hold out this fraction of the training split (stratified, after `--train-per-class`) to
    /// choose the best epoch; the test split then chooses nothing. 0: the best epoch is the one
    /// with the best test top-1 (a test-set choice, optimistic).
    #[arg(long, default_value_t = 0.0)]
    pub val_fraction: f64,
    /// Seeds; several run repeats and report mean ± std.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Checkpoint every N epochs (and at the end).
    #[arg(long, default_value_t = 1)]
    pub checkpoint_every: usize,
    /// Start a segmentation model's or a detector's backbone from this classification
    /// checkpoint (torchvision's `resnet18`/`resnet50`/`resnet101` state dict, `.pth` or
    /// `.safetensors`, or the `.bpk` of a ResNet classifier trained here; loaded strictly, `fc`
    /// ignored); the recipe's `backbone_weights` otherwise.
    #[arg(long)]
    pub backbone_weights: Option<PathBuf>,
    /// Run folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the checkpoints in the run folder.
    #[arg(long)]
    pub resume: bool,
    /// Device; several (comma-separated, e.g. `cuda:0,cuda:1`) train data-parallel: each batch is
    /// split across them and the gradients are summed on the first.
    #[arg(long, value_delimiter = ',', default_value = "flex")]
    pub device: Vec<DeviceSpec>,
}

#[derive(Debug, Serialize)]
struct SeedResult {
    seed: u64,
    best_top1: f64,
    best_epoch: usize,
    last_top1: f64,
}

/// Trains.
pub fn run(args: &TrainArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (device, devices) = select_devices(&args.device)?;
    let mut dataset = args
        .dataset
        .load()
        .with_context(|| format!("loading {}", args.dataset))?;
    if let Some(n) = args.train_per_class {
        anyhow::ensure!(n > 0, "--train-per-class must be at least 1");
        dataset.train =
            autokd_data::stratified_subset(&dataset.train, dataset.info.num_classes, n, 0)?;
    }
    if let Some(n) = args.test_per_class {
        anyhow::ensure!(n > 0, "--test-per-class must be at least 1");
        dataset.test =
            autokd_data::stratified_subset(&dataset.test, dataset.info.num_classes, n, 0)?;
    }
    let validation = if args.val_fraction > 0.0 {
        let (rest, val) = autokd_data::stratified_split(
            &dataset.train,
            dataset.info.num_classes,
            args.val_fraction,
            0,
        )
        .context("--val-fraction")?;
        dataset.train = rest;
        Some(val)
    } else {
        None
    };
    let dataset = dataset;
    let info = &dataset.info;
    let spec = |name: ModelName| crate::model_spec(name, info);
    let mut recipe = load_recipe(&args.recipe)?;
    if let Some(e) = args.epochs {
        recipe.length = Length::Epochs(e);
    }
    if let Some(i) = args.iterations {
        recipe.length = Length::Iterations(i);
    }
    if let Some(b) = args.batch_size {
        recipe.batch_size = b;
    }
    if let Some(lr) = args.lr {
        recipe.lr = lr;
    }
    if let Some(w) = &args.backbone_weights {
        recipe.backbone_weights = Some(w.clone());
    }
    if let Some(m) = &args.milestones {
        recipe.schedule = autokd_train::Schedule::MultiStep {
            milestones: m.clone(),
            gamma: 0.1,
        };
    }
    recipe.validate().context(
        "--epochs, --iterations, --batch-size, --lr and --milestones override the recipe",
    )?;
    let teacher = match (args.teacher, &args.teacher_weights) {
        (Some(t), Some(w)) => Some((
            t,
            load_weights(spec(t).init(&device)?, t, w)
                .with_context(|| format!("loading the teacher from {}", w.display()))?,
        )),
        (None, Some(_)) => anyhow::bail!("--teacher-weights needs --teacher"),
        _ => None,
    };
    let distiller = match (&args.distiller, &teacher) {
        (Some(d), _) if std::path::Path::new(d).is_file() => {
            let text = std::fs::read_to_string(d).with_context(|| format!("reading {d}"))?;
            DistillerSpec::from_toml(&text).with_context(|| format!("{d}: invalid distiller"))?
        }
        (Some(d), _) => DistillerSpec::baseline(d)
            .with_context(|| format!("`{d}` is neither a distiller file nor a baseline"))?,
        (None, Some(_)) => DistillerSpec::baseline("kd")?,
        (None, None) => DistillerSpec::baseline("vanilla")?,
    };
    anyhow::ensure!(
        teacher.is_some() || !distiller.uses_teacher(),
        "distiller {distiller} needs --teacher and --teacher-weights"
    );
    writeln!(
        out,
        "train: {} on {} ({} train, {}{} test), recipe {} ({}, batch {}, lr {}), {distiller}, seeds {:?}{}",
        args.model,
        info.name,
        dataset.train.len(),
        validation
            .as_ref()
            .map_or(String::new(), |v| format!("{} validation, ", v.len())),
        dataset.test.len(),
        args.recipe,
        recipe.length,
        recipe.batch_size,
        recipe.lr,
        args.seeds,
        if devices.len() > 1 {
            format!(", data parallel on {} devices", devices.len())
        } else {
            String::new()
        }
    )?;
    // The task's score: top-1 for a classifier, mIoU for a segmenter.
    let label = crate::score_label(Some(args.model));
    // The score's key and a second metric of the task, for the epoch lines.
    let (metric, second_key, second_label) = match label {
        "mIoU" => ("miou", "pixel_acc", "pixel acc."),
        "AP" => ("ap", "ap50", "AP50"),
        _ => ("top1", "top5", "top-5"),
    };
    let mut results = Vec::new();
    for &seed in &args.seeds {
        // A bar of the epoch's steps on a terminal (stderr); plain epoch lines otherwise.
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} {bar:40.cyan/blue} {pos}/{len} steps  {msg}  {elapsed} (eta {eta})",
        ) {
            bar.set_style(style);
        }
        let dir = args.out.join(format!("seed{seed}"));
        let setup = teacher.as_ref().map(|(name, model)| TeacherSetup {
            model,
            name: name.as_str(),
            spec: &distiller,
        });
        // The first failed write of an epoch line; the run stops with it once `train` returns.
        let mut write_error: Option<std::io::Error> = None;
        // Epochs of the run, as its first step tells (an iteration recipe's depend on the loader).
        let mut total_epochs = recipe.epochs().unwrap_or(0);
        let (model, summary) = train(
            &spec(args.model),
            setup,
            &dataset,
            validation.as_ref(),
            &Recipe {
                seed,
                ..recipe.clone()
            },
            args.checkpoint_every,
            &dir,
            args.resume,
            None,
            &devices,
            |event| match event {
                TrainEvent::Step {
                    epoch,
                    epochs,
                    step,
                    steps,
                    loss,
                } => {
                    if step == 1 {
                        bar.set_length(steps as u64);
                        bar.set_prefix(format!("seed {seed} epoch {}/{epochs}", epoch + 1));
                        total_epochs = epochs;
                    }
                    bar.set_position(step as u64);
                    bar.set_message(format!("loss {loss:.4}"));
                }
                TrainEvent::Epoch(m) => {
                    let losses: Vec<String> = m
                        .losses
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect();
                    // With a validation part, the test set is evaluated only after epochs that
                    // improve the validation top-1, and after the last.
                    let pct = |k: &str| {
                        m.metrics
                            .get(k)
                            .map_or("—".to_string(), |v| format!("{:.2}%", 100.0 * v))
                    };
                    let val_key = format!("val_{metric}");
                    let val = if m.metrics.contains_key(&val_key) {
                        format!("val {label} {}  ", pct(&val_key))
                    } else {
                        String::new()
                    };
                    let second = format!("{second_label} {}", pct(second_key));
                    let written = bar.suspend(|| {
                        writeln!(
                            out,
                            "seed {seed} epoch {:>3}/{}  lr {:.5}  {}  {val}{label} {}  {second}  {:.0} img/s",
                            m.epoch,
                            total_epochs,
                            m.lr,
                            losses.join("  "),
                            pct(metric),
                            m.images_per_s
                        )
                    });
                    if let Err(e) = written {
                        write_error.get_or_insert(e);
                    }
                }
            },
        )?;
        bar.finish_and_clear();
        if let Some(e) = write_error {
            return Err(anyhow::Error::new(e).context("writing the training's output"));
        }
        save_weights(&model, &dir.join("model.bpk"))?;
        writeln!(
            out,
            "seed {seed}: best {label} {:.2}% (epoch {}, chosen on {}), last {:.2}%  ({}){}",
            100.0 * summary.best_top1,
            summary.best_epoch,
            if validation.is_some() {
                "the validation part"
            } else {
                "the test split"
            },
            100.0 * summary.last_top1,
            dir.join("model.bpk").display(),
            if summary.epochs_run == 0 {
                format!(
                    "; already finished: the checkpoint holds all {}",
                    recipe.length
                )
            } else {
                String::new()
            }
        )?;
        results.push(SeedResult {
            seed,
            best_top1: summary.best_top1,
            best_epoch: summary.best_epoch,
            last_top1: summary.last_top1,
        });
    }
    let of = |f: fn(&SeedResult) -> f64| {
        let m = autokd_app::experiment::MeanStd::of(&results.iter().map(f).collect::<Vec<_>>());
        (m.mean, m.std)
    };
    let (bm, bs) = of(|r| r.best_top1);
    let (lm, ls) = of(|r| r.last_top1);
    writeln!(
        out,
        "{label} over {} seed(s): best {:.2} ± {:.2}%, last {:.2} ± {:.2}%",
        results.len(),
        100.0 * bm,
        100.0 * bs,
        100.0 * lm,
        100.0 * ls
    )?;
    crate::write_atomic(
        &args.out.join("summary.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "distiller": distiller.to_string(), "recipe": recipe, "seeds": results,
            "metric": metric,
            "best_top1": {"mean": bm, "std": bs}, "last_top1": {"mean": lm, "std": ls},
        }))?
        .as_bytes(),
    )?;
    Ok(())
}

/// A recipe preset by name, or a recipe TOML file (an error names the file and the field).
fn load_recipe(name: &str) -> anyhow::Result<Recipe> {
    let path = std::path::Path::new(name);
    if name.ends_with(".toml") || path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the recipe file {}", path.display()))?;
        return toml::from_str(&text)
            .with_context(|| format!("{}: not a valid recipe", path.display()));
    }
    Ok(Recipe::preset(name)?)
}
