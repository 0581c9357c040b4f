//! `arlrr train` / `arlrr eval` as a user runs them: the real binary, the example config.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::kill_when;

fn arlrr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arlrr"))
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// The example config with absolute data paths and `[run]` overrides.
fn write_config(dir: &Path, steps: u64, checkpoint_every: u64) -> PathBuf {
    let text = std::fs::read_to_string(configs().join("example.toml"))
        .unwrap()
        .replace("data/tiny-", &format!("{}/data/tiny-", configs().display()))
        .replace("steps = 60 ", &format!("steps = {steps} "))
        .replace(
            "checkpoint_every = 10 ",
            &format!("checkpoint_every = {checkpoint_every} "),
        );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn metrics_without_times(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("time_s");
            v
        })
        .collect()
}

#[test]
fn a_sigkilled_run_resumes_to_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 60, 5);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    let status = arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&a)
        .status()
        .unwrap();
    assert!(status.success());

    let mut child = arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&b)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = b.join("checkpoints/step-00000005/state.json");
    kill_when(&mut child, || first.exists());
    let written = std::fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        written < 60,
        "the kill interrupted the run ({written} steps written)"
    );

    let status = arlrr()
        .args(["train", "--quiet", "--resume"])
        .arg(&b)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(metrics_without_times(&a), metrics_without_times(&b));
    assert_eq!(
        std::fs::read_to_string(a.join("schedule.jsonl")).unwrap(),
        std::fs::read_to_string(b.join("schedule.jsonl")).unwrap()
    );
    assert!(b.join("report.md").exists());

    // eval on the trained policy: scores overall and per class
    let out = arlrr()
        .args(["eval", "--judge", "rules", "--samples", "2", "--model"])
        .arg(&a)
        .arg("--data")
        .arg(configs().join("data/tiny-val.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("overall") && text.contains("instruction_following"),
        "{text}"
    );
}

#[test]
fn config_errors_name_file_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 2, 0);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("clip_eps = 0.2", "clip_epsilon = 0.2");
    std::fs::write(&config, text).unwrap();
    let out = arlrr()
        .args(["train", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("clip_epsilon") && err.contains("line"),
        "{err}"
    );
}
