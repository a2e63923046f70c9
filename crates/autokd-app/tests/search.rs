//! The search as a library: a tiny search on the embedded digits, checked through its typed
//! report and its events rather than printed lines.

#![allow(clippy::unwrap_used)]

use autokd_app::{SearchConfig, SearchEvent, SearchRequest, TeacherOrigin, run_search};
use burn::prelude::Device;

/// A search on the CPU of the tiny proxy (4 images per class, one epoch; students that far from
/// trained are often worse than chance, so no trial is rejected for it) with `trials` trials and
/// the teacher recipe `teacher`, run in `dir/name` with its teachers cached in `dir/cache-name`.
fn tiny(dir: &std::path::Path, name: &str, trials: usize, teacher: &str) -> SearchRequest {
    let config: SearchConfig = toml::from_str(&format!(
        "trials = {trials}\n[teacher_training]\n{teacher}\n[proxy]\nper_class = 4\nepochs = 1\nbatch_size = 16\nchance_margin = 1e9\n"
    ))
    .unwrap();
    SearchRequest {
        config,
        dir: dir.join(name),
        devices: vec![Device::flex()],
        exact_device: Device::flex(),
        cache_dir: dir.join(format!("cache-{name}")),
    }
}

#[test]
fn a_search_returns_its_typed_report() {
    let dir = tempfile::tempdir().unwrap();
    let request = tiny(dir.path(), "run", 3, "epochs = 1\nmilestones = []");
    let mut trials = Vec::new();
    let (mut started, mut trained, mut ended) = (0, 0, 0);
    let report = run_search(&request, &mut |event| {
        match event {
            SearchEvent::Started { distinct, .. } => {
                assert_eq!(distinct, Some(153_216));
                started += 1;
            }
            SearchEvent::Teacher { origin, .. } => {
                assert!(matches!(origin, TeacherOrigin::Trained { .. }));
                trained += 1;
            }
            SearchEvent::Trial {
                k, budget, record, ..
            } => trials.push((k, budget, record.trial.index)),
            SearchEvent::StreamEnd => ended += 1,
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    assert_eq!((started, trained, ended), (1, 1, 1));
    assert_eq!(trials, vec![(1, 3, 0), (2, 3, 1), (3, 3, 2)]);
    assert_eq!(report.records.len(), 3);
    assert_eq!(report.config.trials, 3);
    assert!(report.baseline.is_none());
    // The best is the highest accepted reward, and best.toml holds its spec.
    let best = report.best().unwrap();
    let max = report
        .records
        .iter()
        .filter_map(|r| r.trial.reward)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(best.trial.reward, Some(max));
    let written = autokd_distill::DistillerSpec::from_toml(
        &std::fs::read_to_string(report.dir.join("best.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(written, best.spec);
    for f in &report.files {
        assert!(report.dir.join(f).is_file(), "{f} missing");
    }
    // The named baselines on the same proxy, each ranked among the accepted trials.
    let names: Vec<&str> = report
        .named_baselines
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(names, vec!["vanilla", "kd", "dist"]);
    for b in &report.named_baselines {
        if let Some(v) = b.outcome.reward {
            let above = report
                .records
                .iter()
                .filter(|r| r.trial.reward.is_some_and(|x| x > v))
                .count();
            assert_eq!(b.rank, Some(above + 1), "{b:?}");
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.dir.join("baselines.json")).unwrap())
            .unwrap();
    assert_eq!(json[1]["name"], "kd");
    let md = std::fs::read_to_string(report.dir.join("report.md")).unwrap();
    assert!(
        md.contains("## Named baselines on the same proxy") && md.contains("| kd |"),
        "{md}"
    );
    // An unknown baseline is refused before anything trains, with its name.
    let mut bad = request.clone();
    bad.config.named_baselines = vec!["kd2".into()];
    bad.dir = dir.path().join("bad");
    let err = run_search(&bad, &mut |_| Ok(())).unwrap_err().to_string();
    assert!(
        err.contains("named_baselines") && err.contains("kd2"),
        "{err}"
    );
    // A failed write of the caller's output stops the search with that error.
    let err = run_search(
        &SearchRequest {
            dir: dir.path().join("run2"),
            ..request.clone()
        },
        &mut |event| match event {
            SearchEvent::Trial { .. } => Err(std::io::Error::other("disk full")),
            _ => Ok(()),
        },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "writing the search's output: disk full");
}

/// A search killed while its teacher trains resumes the teacher from its last checkpoint, and
/// reaches the teacher an uninterrupted search trains.
#[test]
fn an_interrupted_teacher_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let request = |name: &str| tiny(dir.path(), name, 1, "epochs = 2\nmilestones = [1]");
    let config = request("whole").config;
    // (epochs trained by the search, test top-1)
    let teacher_top1 = |request: &SearchRequest| {
        let mut trained = None;
        run_search(request, &mut |event| {
            if let SearchEvent::Teacher {
                origin:
                    TeacherOrigin::Trained {
                        epochs_run, top1, ..
                    },
                ..
            } = event
            {
                trained = Some((*epochs_run, *top1));
            }
            Ok(())
        })
        .unwrap();
        trained.unwrap()
    };
    let (epochs, whole) = teacher_top1(&request("whole"));
    assert_eq!(epochs, 2);
    // Stopped when the teacher is about to train: that tells where it is cached.
    let killed = request("killed");
    let mut cached = None;
    run_search(&killed, &mut |event| match event {
        SearchEvent::TeacherTraining { path, .. } => {
            cached = Some(path.to_path_buf());
            Err(std::io::Error::other("stop"))
        }
        _ => Ok(()),
    })
    .unwrap_err();
    // A kill after the first epoch leaves the teacher's checkpoint beside its cached weights.
    let run_dir = cached.unwrap().with_extension("run");
    let dataset = autokd_data::DatasetSpec::Digits.load().unwrap();
    let spec = autokd_app::model_spec(config.teacher, &dataset.info);
    autokd_train::train(
        &spec,
        None,
        &dataset,
        None,
        &config.teacher_training,
        1,
        &run_dir,
        false,
        Some(1),
        &[Device::flex()],
        |_| {},
    )
    .unwrap();
    assert!(run_dir.join("checkpoint").is_dir());
    // The search again: it resumes the teacher (one epoch left) and reaches the same one.
    assert_eq!(teacher_top1(&killed), (1, whole));
    assert!(
        !run_dir.exists(),
        "the teacher's run folder is removed once it is cached"
    );
}

/// Scoring a search's distillers again outside the search, with its config and teacher cache,
/// gives each its reward in the search (the same proxy seed and initialization).
#[test]
fn rescoring_a_searched_distiller_gives_its_reward() {
    let dir = tempfile::tempdir().unwrap();
    let request = tiny(dir.path(), "run", 2, "epochs = 1\nmilestones = []");
    let report = run_search(&request, &mut |_| Ok(())).unwrap();
    let specs: Vec<_> = report.records.iter().map(|r| r.spec.clone()).collect();
    let outcomes = autokd_app::rescore::score_distillers(
        &request.config,
        &specs,
        &Device::flex(),
        &request.cache_dir,
    )
    .unwrap();
    assert_eq!(outcomes.len(), 2);
    for (r, o) in report.records.iter().zip(&outcomes) {
        assert_eq!(r.outcome.reward, o.reward, "{}", r.spec);
    }
}

/// A detector searched end to end on tiny inputs: a RetinaNet-R18 teacher trained for two
/// iterations on box scenes, then proxy trials of RetinaNet-R18 students (the online teacher
/// and the cached one) with feature terms over the FPN group and a sigmoid prediction term
/// over the anchors, scored by validation loss (focal + L1) and gap; AP is their accuracy.
#[test]
fn a_detector_is_searched_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    for cache in [false, true] {
        let config: SearchConfig = toml::from_str(&format!(
            "dataset = \"boxscenes\"\nteacher = \"retinanet_resnet18_fpn\"\nstudent = \"retinanet_resnet18_fpn\"\ntrials = 2\nnamed_baselines = [\"kd\"]\n[teacher_training]\niterations = 2\nbatch_size = 4\nlr = 0.01\nmilestones = []\n[proxy]\nper_class = 4\nval_per_class = 4\nepochs = 1\nbatch_size = 4\nlr = 0.01\ncache_teacher = {cache}\n[space]\nstudent_tap = \"fpn\"\nteacher_tap = \"fpn\"\n"
        ))
        .unwrap();
        let request = SearchRequest {
            config,
            dir: dir.path().join(format!("run-{cache}")),
            devices: vec![Device::flex()],
            exact_device: Device::flex(),
            cache_dir: dir.path().join("cache"),
        };
        let report = run_search(&request, &mut |_| Ok(())).unwrap();
        assert_eq!(report.records.len(), 2);
        for r in &report.records {
            let o = &r.outcome;
            if let Some(reward) = o.reward {
                assert!(reward.is_finite() && o.val_ce > 0.0, "{o:?}");
                assert!((0.0..=1.0).contains(&o.accuracy), "{o:?}");
            }
        }
        assert!(report.best().is_some(), "no trial was accepted");
        let kd = &report.named_baselines[0];
        assert_eq!(kd.name, "kd");
        assert!(kd.outcome.reward.is_some_and(f64::is_finite), "{kd:?}");
    }
}
