//! End-to-end tests of the `autokd` command line, run in-process through `autokd_cli::run`.

use autokd_cli::{Cli, run};
use clap::Parser;

fn autokd(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("autokd").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run(cli, &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// This crate's folder as cargo gives it to the running test: a test binary reused from a clone
/// at another path (one shared target folder) would otherwise read that clone's files, baked in
/// at compile time.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    )
}

#[test]
fn info_lists_backends_devices_and_datasets() {
    let text = autokd(&["info"]).unwrap();
    assert!(
        text.starts_with(&format!("autokd {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("flex     compiled"), "{text}");
    assert!(
        text.contains("cuda     not compiled (--features cuda"),
        "{text}"
    );
    assert!(text.contains("CPU, "), "{text}");
    // The embedded digits with their fixed hold-out.
    assert!(
        text.contains("1438 train + 359 test images, 1x8x8, 10 classes"),
        "{text}"
    );
    for form in autokd_data::DATASET_FORMS {
        assert!(text.contains(form), "{form} missing from:\n{text}");
    }
    assert!(text.contains("models (37;"), "{text}");
    for m in autokd_models::ModelName::ALL {
        assert!(text.contains(m.as_str()), "{m} missing from:\n{text}");
    }
}

#[test]
fn unknown_device_and_missing_backend_are_clear() {
    let err = autokd(&["bench", "loader", "--device", "tpu"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown backend `tpu`"), "{err}");
    let err = autokd(&["bench", "loader", "--device", "cuda:0", "--images", "8"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--features cuda"), "{err}");
    let err = autokd(&["bench", "loader", "--dataset", "mnist"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown dataset `mnist`"), "{err}");
    let err = autokd(&["bench", "loader", "--dataset", "cifar10:/nonexistent/c10"]).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/c10"), "{err:#}");
}

#[test]
fn loader_bench_runs_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("loader.json");
    let text = autokd(&[
        "bench",
        "loader",
        "--images",
        "256",
        "--batch-size",
        "32",
        "--workers",
        "0,2",
        "--repeats",
        "1",
        "--json",
        json.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        text.contains("synthetic-cifar (256 images, 3x32x32)"),
        "{text}"
    );
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r["images_per_s"].as_f64().unwrap() > 0.0)
    );
    let digits = autokd(&[
        "bench",
        "loader",
        "--dataset",
        "digits",
        "--workers",
        "1",
        "--repeats",
        "1",
    ])
    .unwrap();
    assert!(digits.contains("digits (1438 images, 1x8x8)"), "{digits}");
}

#[test]
fn convert_a_repdistiller_checkpoint() {
    let fixtures = manifest_dir().join("../models/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("teacher.bpk");
    let pth = fixtures.join("resnet8_cifar10.pth");
    let text = autokd(&[
        "convert",
        "--model",
        "resnet8",
        "--num-classes",
        "10",
        "--weights",
        pth.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        text.starts_with("resnet8: 78042 parameters loaded"),
        "{text}"
    );
    assert!(out.is_file());
    // The burnpack loads back; the wrong class count is refused with the key named.
    let again = dir.path().join("again.bpk");
    autokd(&[
        "convert",
        "--model",
        "resnet8",
        "--num-classes",
        "10",
        "--weights",
        out.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ])
    .unwrap();
    let err = autokd(&[
        "convert",
        "--model",
        "resnet8",
        "--weights",
        pth.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("fc.weight"), "{err:#}");
    let err = autokd(&[
        "convert",
        "--model",
        "resnet9",
        "--weights",
        "x.pth",
        "--out",
        "y.bpk",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("unknown model `resnet9`"), "{err}");
}

#[test]
fn distill_bench_measures_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("distill.json");
    let text = autokd(&[
        "bench",
        "distill",
        "--student",
        "resnet8",
        "--teacher",
        "resnet14",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--json",
        json.to_str().unwrap(),
    ])
    .unwrap();
    assert!(text.contains("channel softmax + KL (CWD)"), "{text}");
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(results.len(), 15);
    assert_eq!(results[0]["ratio"].as_f64().unwrap(), 1.0);
    assert!(
        results
            .iter()
            .all(|r| r["ms_per_step"].as_f64().unwrap() > 0.0)
    );
}

#[test]
fn search_end_to_end_on_the_embedded_digits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("search.toml");
    std::fs::write(
        &config,
        "trials = 4\n[teacher_training]\nepochs = 2\nmilestones = []\n[proxy]\nper_class = 5\nepochs = 1\nbatch_size = 16\nchance_margin = 1e9\n",
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let search = |out: &str| {
        let out = dir.path().join(out);
        let text = autokd(&[
            "search",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--seed",
            "3",
        ])
        .unwrap();
        (text, out)
    };
    let (text, out) = search("run1");
    assert!(
        text.contains("teacher: training resnet20 on digits (2 epochs)"),
        "{text}"
    );
    assert!(text.contains("[  4/4] "), "{text}");
    for f in [
        "config.toml",
        "space.json",
        "trials.jsonl",
        "best.toml",
        "report.md",
        "rewards.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let best = autokd_distill::DistillerSpec::from_toml(
        &std::fs::read_to_string(out.join("best.toml")).unwrap(),
    )
    .unwrap();
    assert!(text.contains(&format!("{best}")), "{text}");
    let trials = std::fs::read_to_string(out.join("trials.jsonl")).unwrap();
    assert_eq!(trials.lines().count(), 4);
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .unwrap()
            .contains("## Top 10")
    );
    assert!(
        std::fs::read_to_string(out.join("rewards.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    // The second search reuses the cached teacher and, with the same seed, proposes the same
    // distillers in the same order.
    let (text2, out2) = search("run2");
    assert!(text2.contains("from the cache"), "{text2}");
    let formulas = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p.join("trials.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["distiller"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(formulas(&out), formulas(&out2));
    // With the random baseline: both trial logs, both curves, the comparison in the report.
    let out3 = dir.path().join("run3");
    let text3 = autokd(&[
        "search",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out3.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--baseline",
    ])
    .unwrap();
    assert!(
        text3.contains("random [  4/4] ") && text3.contains("random baseline best"),
        "{text3}"
    );
    assert_eq!(
        std::fs::read_to_string(out3.join("trials_random.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    assert!(
        std::fs::read_to_string(out3.join("report.md"))
            .unwrap()
            .contains("## Against random search")
    );
    assert!(
        std::fs::read_to_string(out3.join("rewards.svg"))
            .unwrap()
            .contains("random search, best so far")
    );
    // Two devices (both the CPU here): one evaluator each, two trials at a time.
    let text5 = autokd(&[
        "search",
        "--config",
        config.to_str().unwrap(),
        "--out",
        dir.path().join("run5").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--device",
        "flex,flex",
        "--store",
        "sqlite",
    ])
    .unwrap();
    assert!(text5.contains("4 trials, 2 at a time"), "{text5}");
    assert!(text5.contains("[  4/4] "), "{text5}");
    assert!(dir.path().join("run5/trials.sqlite").is_file());
    // A wall-time budget of zero runs no trial, and says so.
    let err = autokd(&[
        "search",
        "--config",
        config.to_str().unwrap(),
        "--out",
        dir.path().join("run4").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--max-minutes",
        "0",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("time budget"), "{err}");
    // A bad config is an error naming the file and the field.
    std::fs::write(&config, "trails = 4\n").unwrap();
    let err = autokd(&["search", "--config", config.to_str().unwrap()]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("search.toml") && msg.contains("unknown field `trails`"),
        "{msg}"
    );
}

/// Every shipped config can start at its dataset's real size (issue 12 item 1): the taps it
/// names exist in both models, its proxy subset fits in the training split, and the teacher's
/// outputs either fit the cache budget (only the taps the space reaches are cached) or are served
/// by the online teacher, which holds nothing but the gap's validation embeddings. Sized from
/// the image counts the dataset declares (ImageNet-1k's for the image-folder configs, which are
/// the ImageNet ones), without the data.
/// A search config's teacher and proxy at their smallest (one teacher epoch, 4 images per class).
const TINY_SEARCH: &str = "[teacher_training]\nepochs = 1\nmilestones = []\n[proxy]\nper_class = 4\nepochs = 1\nbatch_size = 16\nchance_margin = 1e9\n";

/// Issue 12 item 5: what can be checked is checked before the teacher trains. A missing tap,
/// unreadable teacher weights and an unusable store path each fail at once, naming the problem,
/// and no teacher was trained (none is in the cache folder).
#[test]
fn a_search_checks_its_inputs_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let base = format!("trials = 2\n{TINY_SEARCH}");
    let search = |name: &str, extra_top: &str, extra_space: &str| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("{extra_top}{base}[space]\n{extra_space}")).unwrap();
        let start = std::time::Instant::now();
        let err = autokd(&[
            "search",
            "--config",
            config.to_str().unwrap(),
            "--out",
            dir.path().join(name).to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
        .unwrap_err();
        (format!("{err:#}"), start.elapsed())
    };
    let (err, _) = search("tap", "", "student_tap = \"stage9\"\n");
    assert!(
        err.contains("stage9") && err.contains("stage3"),
        "the error names the tap and the available ones: {err}"
    );
    let (err, _) = search("weights", "teacher_weights = \"/nonexistent/t.bpk\"\n", "");
    assert!(
        err.contains("teacher_weights") && err.contains("/nonexistent/t.bpk"),
        "{err}"
    );
    // A SQLite store under a path whose parent is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad_store = format!(
        "store = \"sqlite\"\nstore_path = \"{}\"\n",
        file.join("trials.sqlite").display()
    );
    let (err, _) = search("store", &bad_store, "");
    assert!(err.contains("trials.sqlite"), "{err}");
    assert!(
        !cache.join("teachers").exists(),
        "a teacher was trained before the check failed"
    );
}

/// Issue 12 item 7: a failed write of the trial log stops the search with an error naming the
/// file (the log is a link to /dev/full, where every write fails with ENOSPC).
#[test]
fn a_failed_log_write_stops_the_search() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("search.toml");
    std::fs::write(&config, format!("trials = 3\n{TINY_SEARCH}")).unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("trials.jsonl")).unwrap();
    let err = autokd(&[
        "search",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        dir.path().join("cache").to_str().unwrap(),
    ])
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("trials.jsonl"), "{msg}");
    // It stopped at the first trial instead of running the other two.
    let finished = std::fs::read_to_string(out.join("journal.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"finished\""))
        .count();
    assert_eq!(finished, 1);
}

#[test]
fn shipped_configs_can_start() {
    use autokd_models::Backbone;
    use autokd_train::{TeacherPlan, TeacherSource};
    let root = manifest_dir().join("../configs");
    let device = burn::prelude::Device::flex();
    let mut n = 0;
    let mut paths: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        // A search config, or an experiment's (a search config with `[experiment]`).
        let cfg = autokd_app::ExperimentFile::from_text(&path, &text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .search;
        let space = cfg.space.validate().unwrap();
        let declared = cfg
            .dataset
            .declared_size()
            .unwrap_or(autokd_data::DeclaredSize {
                input: [3, 224, 224],
                num_classes: 1000,
                train_per_class: 732,
            });
        let spec = |name| autokd_models::ModelSpec {
            name,
            in_channels: declared.input[0],
            num_classes: declared.num_classes,
            image_size: declared.input[1],
        };
        // Parameters initialize lazily: building even an ImageNet model here is cheap.
        let teacher = spec(cfg.teacher).init(&device).unwrap();
        let student = spec(cfg.student).init(&device).unwrap();
        let taps = space
            .teacher_taps(
                cfg.student.as_str(),
                &student.feature_info(),
                cfg.teacher.as_str(),
                &teacher.feature_info(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let per_class = declared.train_per_class;
        let held_out = (cfg.proxy.val_fraction * per_class as f64).round() as usize;
        assert!(
            cfg.proxy.per_class <= per_class - held_out,
            "{}: proxy.per_class {} > the {} images per class left after validation",
            path.display(),
            cfg.proxy.per_class,
            per_class - held_out
        );
        let images = cfg.proxy.per_class * declared.num_classes;
        let plan = |taps: &[usize]| {
            TeacherPlan::new(
                &teacher,
                taps,
                declared.input,
                images,
                cfg.proxy.cache_budget_bytes,
                cfg.proxy.cache_teacher,
                &device,
            )
            .unwrap()
        };
        let all: Vec<usize> = (0..teacher.feature_info().len()).collect();
        let (p, every) = (plan(&taps), plan(&all));
        let val_images = (held_out * declared.num_classes).min(autokd_train::proxy::GAP_IMAGES);
        // The gap's validation embeddings: `D` floats per image (the teacher's prediction is
        // not kept with them).
        let [c, h, w] = declared.input;
        let width = teacher
            .forward_intermediates(
                burn::prelude::Tensor::<4>::zeros([1, c, h, w], &device),
                &autokd_models::TapRequest::none(),
            )
            .embedding
            .dims()[1];
        let resident = match p.source {
            TeacherSource::Cache => p.bytes,
            TeacherSource::Online => 0,
        } + val_images * width * 4;
        eprintln!(
            "{}: {} → {}, {images} proxy images, taps {taps:?}: cache {} MiB ({:?}; all {} taps would be {} MiB), resident {} MiB",
            path.strip_prefix(&root).unwrap().display(),
            cfg.teacher,
            cfg.student,
            p.bytes >> 20,
            p.source,
            all.len(),
            every.bytes >> 20,
            resident >> 20
        );
        assert!(
            resident <= cfg.proxy.cache_budget_bytes,
            "{}: {resident} bytes",
            path.display()
        );
        // The CIFAR and small-data configs cache their teacher (before, caching every tap put
        // resnet32x4, wrn_40_2 and vgg13 over the budget and the search refused to start);
        // Cityscapes' whole-image maps do not fit, and its teacher runs online; so do COCO's.
        if cfg.dataset.declared_size().is_some()
            && cfg.student.family() != autokd_models::Family::Segmentation
        {
            assert_eq!(p.source, TeacherSource::Cache, "{}", path.display());
        }
        n += 1;
    }
    assert!(n >= 9, "{n} configs");
    // The digits config is the built-in default.
    let text = std::fs::read_to_string(root.join("digits/search_res20_res8.toml")).unwrap();
    let cfg: autokd_app::SearchConfig = toml::from_str(&text).unwrap();
    assert_eq!(cfg, autokd_app::SearchConfig::default());
}

#[test]
fn train_a_teacher_then_distil_with_a_spec_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let text = autokd(&[
        "train",
        "--model",
        "resnet14",
        "--epochs",
        "1",
        "--out",
        &p("teacher"),
    ])
    .unwrap();
    assert!(text.contains("seed 0 epoch   1/1"), "{text}");
    // A fixed stratified subset of the training split.
    let small = autokd(&[
        "train",
        "--model",
        "resnet8",
        "--epochs",
        "1",
        "--train-per-class",
        "20",
        "--test-per-class",
        "10",
        "--milestones",
        "1",
        "--device",
        "flex,flex",
        "--out",
        &p("small"),
    ])
    .unwrap();
    assert!(small.contains("(200 train, 100 test)"), "{small}");
    assert!(small.contains("data parallel on 2 devices"), "{small}");
    // A recipe file by iterations with poly decay: 5 steps of the 7 in an epoch of 200 images.
    std::fs::write(
        p("poly.toml"),
        "iterations = 5\nbatch_size = 32\nschedule = \"poly\"\n",
    )
    .unwrap();
    let poly = autokd(&[
        "train",
        "--model",
        "resnet8",
        "--recipe",
        &p("poly.toml"),
        "--train-per-class",
        "20",
        "--test-per-class",
        "10",
        "--out",
        &p("poly"),
    ])
    .unwrap();
    assert!(
        poly.contains("(5 iterations, batch 32") && poly.contains("seed 0 epoch   1/1"),
        "{poly}"
    );
    std::fs::write(p("bad.toml"), "epochs = 0\n").unwrap();
    let err = autokd(&[
        "train",
        "--model",
        "resnet8",
        "--recipe",
        &p("bad.toml"),
        "--out",
        &p("bad"),
    ])
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("bad.toml") && err.contains("epochs must be at least 1"),
        "{err}"
    );
    let weights = p("teacher/seed0/model.bpk");
    assert!(std::path::Path::new(&weights).is_file());
    let spec = autokd_distill::DistillerSpec::baseline("cwd").unwrap();
    std::fs::write(p("cwd.toml"), spec.to_toml().unwrap()).unwrap();
    let text = autokd(&[
        "train",
        "--model",
        "resnet8",
        "--teacher",
        "resnet14",
        "--teacher-weights",
        &weights,
        "--distiller",
        &p("cwd.toml"),
        "--epochs",
        "1",
        "--seeds",
        "0,1",
        "--out",
        &p("student"),
    ])
    .unwrap();
    assert!(
        text.contains("KL_T4(channel_softmax(s.last), channel_softmax(t.last))"),
        "{text}"
    );
    assert!(text.contains("top-1 over 2 seed(s)"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("student/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["seeds"].as_array().unwrap().len(), 2);
    // Resuming a finished run trains nothing more.
    let text = autokd(&[
        "train",
        "--model",
        "resnet8",
        "--teacher",
        "resnet14",
        "--teacher-weights",
        &weights,
        "--distiller",
        "cwd",
        "--epochs",
        "1",
        "--out",
        &p("student"),
        "--resume",
    ])
    .unwrap();
    assert!(!text.contains("epoch   1/1"), "{text}");
    let err = autokd(&[
        "train",
        "--model",
        "resnet8",
        "--distiller",
        "kd",
        "--out",
        &p("x"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("needs --teacher"), "{err}");
}

#[test]
fn proxy_bench_compares_cached_and_online_teachers() {
    let text = autokd(&[
        "bench",
        "proxy",
        "--dataset",
        "digits",
        "--student",
        "resnet8",
        "--teacher",
        "resnet14",
        "--per-class",
        "3",
        "--trials",
        "1",
    ])
    .unwrap();
    assert!(
        text.contains("cached") && text.contains("online (every batch)"),
        "{text}"
    );
    assert!(text.contains("speed-up of the cache: "), "{text}");
}

#[test]
fn train_bench_measures_and_compares_with_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for the PyTorch script (the tests never need PyTorch): same JSON shape.
    let fake = dir.path().join("fake_reference.sh");
    std::fs::write(
        &fake,
        r#"echo '{"torch": "fake", "threads": 2, "params": {"resnet8": 83892, "resnet14": 1}, "results": [{"name": "ce step resnet8", "ms": 2.0}, {"name": "proxy trial online resnet14->resnet8", "ms": 4.0}]}'"#,
    )
    .unwrap();
    let json = dir.path().join("train.json");
    let text = autokd(&[
        "bench",
        "train",
        "--students",
        "resnet8",
        "--pairs",
        "resnet14:resnet8",
        "--steps",
        "1",
        "--proxy-per-class",
        "3",
        "--pytorch",
        "sh",
        "--pytorch-script",
        fake.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ])
    .unwrap();
    for name in [
        "ce step resnet8",
        "teacher inference resnet14",
        "kd step online resnet14->resnet8",
        "kd step cached resnet14->resnet8",
        "proxy trial cached resnet14->resnet8",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // The parameter check catches a reference whose model differs from ours.
    assert!(
        text.contains("warning: resnet14 has") && !text.contains("warning: resnet8 has"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    let ce = &results[0];
    assert_eq!(ce["pytorch_ms"].as_f64(), Some(2.0));
    let ratio = ce["ratio"].as_f64().unwrap();
    assert!((ratio - ce["ms"].as_f64().unwrap() / 2.0).abs() < 1e-9);
    // The cached proxy trial is compared with the reference loop's online teacher.
    assert_eq!(results[4]["pytorch_ms"].as_f64(), Some(4.0));
    assert!(results[1]["ratio"].is_null());
    assert!(results.iter().all(|r| r["ms"].as_f64().unwrap() > 0.0));
}

/// `autokd bench search` on a tabular benchmark written by hand: two grid runs of a 3×4 space
/// whose reward falls with both choices. It prints random search's regret beside its closed form
/// and the strategies paired with it, writes the JSON, and names a folder that is no grid run.
#[test]
fn bench_search_replays_strategies_on_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let levels = [3usize, 4];
    let grid = autokd_app::GridMap::new(&levels, |c| c.to_vec()).unwrap();
    let mut folders = Vec::new();
    for seed in 0..2 {
        let d = dir.path().join(format!("table-{seed}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("grid.json"), serde_json::to_string(&grid).unwrap()).unwrap();
        let lines: String = (0..3)
            .flat_map(|a| (0..4).map(move |b| (a, b)))
            .map(|(a, b)| {
                let r = -(a as f64) - 0.25 * b as f64 - 0.01 * seed as f64 * b as f64;
                format!(
                    "{}\n",
                    serde_json::json!({"trial": 1, "choices": [a, b], "outcome": {"reward": r}})
                )
            })
            .collect();
        std::fs::write(d.join("trials.jsonl"), lines).unwrap();
        folders.push(d.to_str().unwrap().to_string());
    }
    let json = dir.path().join("bench.json");
    let text = autokd(&[
        "bench",
        "search",
        "--tables",
        &folders.join(","),
        "--budgets",
        "1,12",
        "--replays",
        "20",
        "--json",
        json.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        text.contains("12 candidates (levels [3, 4]), 2 proxy seeds"),
        "{text}"
    );
    assert!(text.contains("closed form"), "{text}");
    // At budget 12 every strategy has seen the whole space and picks the best: regret 0.
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let at_12: Vec<f64> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["budget"] == 12)
        .map(|r| r["regret_mean"].as_f64().unwrap())
        .collect();
    assert_eq!(at_12, vec![0.0; 6]);
    let err = autokd(&["bench", "search", "--tables", dir.path().to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("grid.json"), "{err}");
}

/// The committed tabular benchmarks (docs/RESULTS.md) load and replay: 1,728 candidates at two
/// proxy seeds, random search's replays beside their closed form.
#[test]
fn the_committed_table_replays() {
    let replay = |table: &str| {
        let root = format!("{}/../benches/tables/{table}", manifest_dir().display());
        autokd(&[
            "bench",
            "search",
            "--tables",
            &format!("{root}/seed-0,{root}/seed-1"),
            "--budgets",
            "40",
            "--replays",
            "10",
        ])
        .unwrap()
    };
    let text = replay("digits-res20-res8");
    assert!(
        text.contains("1728 candidates (levels [3, 2, 3, 3, 2, 2, 2, 2, 2]), 2 proxy seeds"),
        "{text}"
    );
    assert!(
        text.contains("Spearman 0.699 over the 1053 candidates"),
        "{text}"
    );
    assert!(text.contains("closed form 0.2661"), "{text}");
    let text = replay("digits-wrn16x2-res14");
    assert!(
        text.contains("Spearman 0.503 over the 914 candidates"),
        "{text}"
    );
}
