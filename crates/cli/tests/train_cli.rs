//! `arlrr train` / `arlrr eval` as a user runs them: the real binary, the example config.

use std::path::{Path, PathBuf};
use std::process::Stdio;

mod common;
use common::{arlrr, configs, kill_when, metrics_without_times, ok, spawn_train};

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

    let mut child = spawn_train(&config, &b);
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
    ok(&out);
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

/// `configs/builtin-categorical.toml` with `[judge.noise]` (when given) and `run.steps`.
fn categorical_config(dir: &Path, name: &str, noise: Option<&str>, steps: u64) -> PathBuf {
    let mut text = std::fs::read_to_string(configs().join("builtin-categorical.toml"))
        .unwrap()
        .replace("steps = 400", &format!("steps = {steps}"))
        .replace("checkpoint_every = 50", "checkpoint_every = 5");
    if let Some(noise) = noise {
        text += &format!("\n[judge.noise]\n{noise}\n");
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn train(config: &Path, out: &Path) -> String {
    let out = arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn judge_noise_leaves_validation_and_test_clean() {
    let dir = tempfile::tempdir().unwrap();
    let preset = "preset = \"healthbench-gpt41\"";
    let noisy = categorical_config(dir.path(), "noisy.toml", Some(preset), 0);
    let clean = categorical_config(dir.path(), "clean.toml", None, 0);
    let (a, b) = (dir.path().join("noisy"), dir.path().join("clean"));
    train(&noisy, &a);
    train(&clean, &b);
    for file in ["eval.jsonl", "test.jsonl"] {
        let read = |run: &Path| std::fs::read_to_string(run.join(file)).unwrap();
        assert!(!read(&a).is_empty(), "{file}");
        assert_eq!(read(&a), read(&b), "{file}");
    }
}

#[test]
fn a_preset_run_measures_its_macro_f1_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = categorical_config(
        dir.path(),
        "noisy.toml",
        Some("preset = \"healthbench-gpt41\""),
        400,
    );
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let short = categorical_config(
        dir.path(),
        "short.toml",
        Some("preset = \"healthbench-gpt41\""),
        20,
    );
    let out = train(&short, &dir.path().join("short"));
    let f1: f64 = out
        .split("macro F1 ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no macro F1 printed: {out}"));
    assert!(
        (0.69..=0.73).contains(&f1),
        "macro F1 {f1} outside 0.71 ± 0.02"
    );
    let report = std::fs::read_to_string(dir.path().join("short/report.md")).unwrap();
    assert!(
        report.contains(&format!("clean judge: {f1:.3} over")),
        "{report}"
    );
    let last = metrics_without_times(&dir.path().join("short"))
        .pop()
        .unwrap();
    let cumulative = last["judge_noise"]["cumulative_macro_f1"].as_f64().unwrap();
    assert_eq!(format!("{cumulative:.3}"), format!("{f1:.3}"));

    // a noisy run killed after a checkpoint resumes to the same lines
    train(&config, &a);
    let mut child = spawn_train(&config, &b);
    let first = b.join("checkpoints/step-00000005/state.json");
    kill_when(&mut child, || first.exists());
    let status = arlrr()
        .args(["train", "--quiet", "--resume"])
        .arg(&b)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(metrics_without_times(&a), metrics_without_times(&b));
}

#[test]
fn judge_noise_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (noise, want) in [
        ("fp = 1.0", "field `judge.noise.fp`: must be in [0, 1)"),
        (
            "[judge.noise.classes.accuracy]\nfn = -0.5",
            "field `judge.noise.classes.accuracy.fn`",
        ),
        (
            "[judge.noise.classes.acuracy]\nfp = 0.1",
            "field `judge.noise.classes.acuracy`: not a meta-class",
        ),
        (
            "preset = \"gpt5\"",
            "field `judge.noise.preset`: unknown preset `gpt5`",
        ),
        ("fq = 0.1", "fq"),
    ] {
        let config = categorical_config(dir.path(), "bad.toml", Some(noise), 1);
        let out = arlrr()
            .args(["train", "--quiet", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(dir.path().join("run"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{noise}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.toml") && err.contains(want),
            "{noise}: {err}"
        );
    }
}

/// Issue #28, item 15: scalarized weights that cannot train (all zero: no signal and no
/// update; negative; a name that is no class) are refused before step 1, naming the field.
#[test]
fn scalarized_weights_that_cannot_train_are_refused_before_step_one() {
    let dir = tempfile::tempdir().unwrap();
    for (weights, want) in [
        ("{ accuracy = 0.0 }", "every weight is 0"),
        ("{}", "every weight is 0"),
        ("{ accuracy = 1.0, completeness = -0.5 }", "`completeness`"),
        ("{ acuracy = 1.0 }", "`acuracy` is not a meta-class"),
    ] {
        let text = std::fs::read_to_string(write_config(dir.path(), 2, 0))
            .unwrap()
            .replace("kind = \"alternating\" ", "kind = \"scalarized\" ")
            .replace("weights = \"points\" ", &format!("weights = {weights} "));
        let config = dir.path().join("weights.toml");
        std::fs::write(&config, text).unwrap();
        let run = dir.path().join("run");
        let out = arlrr()
            .args(["train", "--quiet", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&run)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{weights}: {err}");
        assert!(
            err.contains("weights.toml") && err.contains("objective.weights") && err.contains(want),
            "{weights}: {err}"
        );
        assert!(!run.exists(), "{weights}: nothing written: {err}");
    }
}
