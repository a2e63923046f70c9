//! A search killed with SIGKILL and started again with the same run folder loses no finished
//! trial, runs the interrupted one again, and ends exactly where an uninterrupted search ends.
//! Runs the real binary, so that the kill is a real one.

// Helpers outside #[test] functions unwrap too: this is a test file.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn autokd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_autokd"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn finished(journal: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "finished")
        .collect()
}

fn search(dir: &Path, config: &Path, out: &str, store: &str) -> Command {
    autokd(&[
        "search",
        "--config",
        config.to_str().unwrap(),
        "--out",
        dir.join(out).to_str().unwrap(),
        "--cache-dir",
        dir.join("cache").to_str().unwrap(),
        "--store",
        store,
        "--seed",
        "5",
    ])
}

#[test]
fn a_killed_search_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("search.toml");
    std::fs::write(
        &config,
        "trials = 6\n[teacher_training]\nepochs = 1\nmilestones = []\n[proxy]\nper_class = 4\nepochs = 1\nbatch_size = 16\nchance_margin = 1e9\n",
    )
    .unwrap();
    // The uninterrupted search (it also trains and caches the teacher).
    let full = search(dir.path(), &config, "full", "journal")
        .output()
        .unwrap();
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let reference = finished(&dir.path().join("full/journal.jsonl"));
    assert_eq!(reference.len(), 6);

    for store in ["journal", "sqlite"] {
        let out = format!("killed-{store}");
        let run_dir = dir.path().join(&out);
        let mut child = search(dir.path(), &config, &out, store).spawn().unwrap();
        // Kill it once two trials have finished (the third is then running).
        let progress = |d: &Path| -> usize {
            std::fs::read_to_string(d.join("trials.jsonl")).map_or(0, |t| t.lines().count())
        };
        let start = Instant::now();
        while progress(&run_dir) < 2 {
            assert!(start.elapsed() < Duration::from_secs(300), "no progress");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the search ended first"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let before = progress(&run_dir);
        assert!(before < 6, "killed too late");
        assert!(!run_dir.join("best.toml").exists());

        let resumed = search(dir.path(), &config, &out, store).output().unwrap();
        let text = String::from_utf8_lossy(&resumed.stdout);
        assert!(
            resumed.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert!(text.contains("resuming: "), "{text}");
        // Only the trials not finished before the kill are evaluated in the second process.
        let lines = text.lines().filter(|l| l.starts_with("[  ")).count();
        assert!(lines <= 6 - before + 1 && lines >= 6 - before - 1, "{text}");
        // Same trials, same rewards, same order as the uninterrupted search.
        let trials: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("trials.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(trials.len(), 6);
        for (t, r) in trials.iter().zip(&reference) {
            assert_eq!(t["outcome"]["reward"], r["payload"]["reward"], "{store}");
            assert_eq!(t["outcome"]["val_ce"], r["payload"]["val_ce"], "{store}");
        }
        assert_eq!(
            std::fs::read_to_string(run_dir.join("best.toml")).unwrap(),
            std::fs::read_to_string(dir.path().join("full/best.toml")).unwrap()
        );
    }

    // A different search in the same folder is refused, naming the folder.
    std::fs::write(&config, "trials = 6\nstudent = \"resnet14\"\n").unwrap();
    let other = search(dir.path(), &config, "full", "journal")
        .output()
        .unwrap();
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("holds a different search"), "{err}");
}
