//! The search as a library: a tiny search on the embedded digits, checked through its typed
//! report and its events rather than printed lines.

#![allow(clippy::unwrap_used)]

use autokd_app::{SearchConfig, SearchEvent, SearchRequest, TeacherOrigin, run_search};
use burn::prelude::Device;

#[test]
fn a_search_returns_its_typed_report() {
    let dir = tempfile::tempdir().unwrap();
    let config: SearchConfig = toml::from_str(
        "trials = 3\n[teacher_training]\nepochs = 1\nmilestones = []\n[proxy]\nper_class = 4\nepochs = 1\nbatch_size = 16\n",
    )
    .unwrap();
    let request = SearchRequest {
        config,
        dir: dir.path().join("run"),
        devices: vec![Device::flex()],
        exact_device: Device::flex(),
        cache_dir: dir.path().join("cache"),
    };
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
