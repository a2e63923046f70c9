//! `autokd experiment` as a library, end to end on the embedded digits at a tiny size: a search,
//! one searched distiller and two baselines trained for two epochs at one seed, killed after its
//! first training and resumed without retraining it; and trained two at a time with the same
//! results.

#![allow(clippy::unwrap_used)]

use autokd_app::{
    ExperimentConfig, ExperimentEvent, ExperimentRequest, SearchConfig, SearchRequest,
    run_experiment,
};
use burn::prelude::Device;

fn request(dir: &std::path::Path, max_runs: Option<usize>, top_k: usize) -> ExperimentRequest {
    let search: SearchConfig = toml::from_str(
        "trials = 3\n[teacher_training]\nepochs = 1\nmilestones = []\n[proxy]\nper_class = 4\nepochs = 1\nbatch_size = 16\nchance_margin = 1e9\n",
    )
    .unwrap();
    let experiment: ExperimentConfig = toml::from_str(&format!(
        "top_k = {top_k}\nbaselines = [\"vanilla\", \"kd\"]\nseeds = [0]\ntrain_per_class = 20\n[recipe]\nepochs = 2\nmilestones = []\n"
    ))
    .unwrap();
    ExperimentRequest {
        search: SearchRequest {
            config: search,
            dir: dir.join("unused"),
            devices: vec![Device::flex()],
            exact_device: Device::flex(),
            cache_dir: dir.join("cache"),
        },
        experiment,
        dir: dir.join("exp"),
        max_runs,
        workers: 1,
    }
}

#[test]
fn an_experiment_resumes_without_retraining_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut events: Vec<(String, bool)> = Vec::new();
    let mut trained = |e: ExperimentEvent<'_>| {
        if let ExperimentEvent::Trained { name, reused, .. } = e {
            events.push((name.to_string(), reused));
        }
        Ok(())
    };
    // "Killed" after its first training.
    let first = run_experiment(
        &request(dir.path(), Some(1), 1),
        &mut |_| Ok(()),
        &mut trained,
    )
    .unwrap();
    assert!(!first.complete);
    let searched = first
        .distillers
        .iter()
        .find(|d| d.kind == "searched")
        .unwrap()
        .name
        .clone();
    assert_eq!(events, vec![(searched.clone(), false)]);
    let result = dir
        .path()
        .join("exp/runs")
        .join(&searched)
        .join("seed0/result.json");
    let written = std::fs::read_to_string(&result).unwrap();
    let md = std::fs::read_to_string(dir.path().join("exp/results.md")).unwrap();
    assert!(md.contains("Incomplete"), "{md}");
    // Resumed: the finished training is read back, the two baselines train.
    events.clear();
    let mut trained = |e: ExperimentEvent<'_>| {
        if let ExperimentEvent::Trained { name, reused, .. } = e {
            events.push((name.to_string(), reused));
        }
        Ok(())
    };
    let report =
        run_experiment(&request(dir.path(), None, 1), &mut |_| Ok(()), &mut trained).unwrap();
    assert!(report.complete);
    assert_eq!(
        events,
        vec![
            (searched.clone(), true),
            ("vanilla".to_string(), false),
            ("kd".to_string(), false)
        ]
    );
    assert_eq!(std::fs::read_to_string(&result).unwrap(), written);
    // results.json: three distillers, one seed each, the searched one with its proxy reward.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("exp/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["complete"], true);
    // 20 per class, 10% held out: 180 trained on, 20 choose the epoch; the test split whole.
    assert_eq!(json["images"], serde_json::json!([180, 20, 359]));
    let distillers = json["distillers"].as_array().unwrap();
    assert_eq!(distillers.len(), 3);
    for d in distillers {
        let runs = d["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        let top1 = runs[0]["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{d}");
        assert!(
            (1..=2).contains(&runs[0]["best_epoch"].as_u64().unwrap()),
            "{d}"
        );
        assert_eq!(d["top1"]["mean"].as_f64().unwrap(), top1);
        // Searched distillers and the baselines the search scored (vanilla, kd) have a reward.
        assert!(d["proxy_reward"].is_f64(), "{d}");
        assert!(
            d["distiller"].as_str().unwrap().starts_with("L = task"),
            "{d}"
        );
    }
    // One searched distiller measures no fidelity.
    assert!(json["fidelity"].is_null());
    // Another [experiment] in the same folder is refused.
    let err = run_experiment(&request(dir.path(), None, 2), &mut |_| Ok(()), &mut |_| {
        Ok(())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("another experiment"), "{err}");
}

/// Two trainings at a time give the same results as one after another: every training is
/// seeded on its own (the workers share the teacher cache, not the run folders).
#[test]
fn parallel_trainings_give_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, workers: usize| {
        let mut r = request(dir.path(), None, 1);
        r.dir = dir.path().join(name);
        r.workers = workers;
        let mut started = 0;
        let report = run_experiment(&r, &mut |_| Ok(()), &mut |e| {
            if let ExperimentEvent::Training { .. } = e {
                started += 1;
            }
            Ok(())
        })
        .unwrap();
        assert!(report.complete);
        assert_eq!(started, 3);
        report
            .distillers
            .iter()
            .map(|d| (d.name.clone(), d.runs.clone()))
            .collect::<Vec<_>>()
    };
    let one = run("one", 1);
    let two = run("two", 2);
    assert_eq!(one.len(), 3);
    let strip = |v: Vec<(String, Vec<autokd_app::experiment::RunResult>)>| {
        v.into_iter()
            .map(|(n, runs)| {
                let runs: Vec<(u64, f64, usize, f64)> = runs
                    .into_iter()
                    .map(|r| (r.seed, r.top1, r.best_epoch, r.last_top1))
                    .collect();
                (n, runs)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(one), strip(two));
}
