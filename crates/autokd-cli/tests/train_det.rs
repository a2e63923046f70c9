//! `train-det`, the detection trainer on its own: a RetinaNet on box scenes by default, any
//! option overriding the defaults.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn train_det_trains_a_detector_by_default_and_takes_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_train-det"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let det = dir.path().join("det");
    let text = run(&[
        "--epochs",
        "1",
        "--train-per-class",
        "8",
        "--test-per-class",
        "4",
        "--batch-size",
        "4",
        "--out",
        det.to_str().unwrap(),
    ]);
    assert!(
        text.contains("retinanet_resnet18_fpn_gn on boxscenes") && text.contains("AP50"),
        "{text}"
    );
    assert!(det.join("seed0/model.bpk").is_file());
    let cls = dir.path().join("cls");
    let text = run(&[
        "--dataset",
        "digits",
        "--model",
        "resnet8",
        "--epochs",
        "1",
        "--out",
        cls.to_str().unwrap(),
    ]);
    assert!(
        text.contains("resnet8 on digits") && text.contains("top-1"),
        "{text}"
    );
}
