//! Log lines written to a file or a pipe carry no terminal colour codes (issue 12 item 8).

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_autokd"))
        .args(["info"])
        .env("AUTOKD_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The log line is there (so the check below looks at something) …
    assert!(err.contains("autokd starting"), "{err}");
    // … and has no ESC byte.
    assert!(!err.contains('\u{1b}'), "{err:?}");
}
