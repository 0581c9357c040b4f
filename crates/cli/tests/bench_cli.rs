//! `arlrr bench grpo` on the categorical config: it runs and prints every figure; bad
//! arguments are one-line errors. Timings are printed, never asserted.

mod common;
use common::{configs, run_arlrr};

fn categorical() -> String {
    configs()
        .join("builtin-categorical.toml")
        .display()
        .to_string()
}

#[test]
fn the_grpo_bench_prints_and_writes_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let out = run_arlrr(&[
        "bench",
        "grpo",
        "--config",
        &categorical(),
        "--steps",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for column in [
        "total s",
        "generate",
        "prefix",
        "judge",
        "train",
        "optimizer",
        "select",
        "gen tokens",
        "gen tok/s",
        "trn tokens",
        "trn tok/s",
        "peak RSS (VmHWM)",
    ] {
        assert!(stdout.contains(column), "no `{column}` in\n{stdout}");
    }
    for row in ["1 ", "2 ", "3 ", "median "] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "no row `{row}` in\n{stdout}"
        );
    }
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let bench = &figures[0];
    assert_eq!(bench["steps"].as_array().unwrap().len(), 3);
    for field in [
        "total_s",
        "generate_s",
        "prefix_s",
        "judge_s",
        "train_s",
        "optimizer_s",
        "select_s",
        "generated_tokens",
        "generated_tokens_per_s",
        "trained_tokens",
        "trained_tokens_per_s",
    ] {
        assert!(bench["median"][field].is_number(), "median.{field}");
        assert!(bench["steps"][2][field].is_number(), "steps[2].{field}");
    }
    assert!(bench["steps"][0]["generated_tokens"].as_f64().unwrap() > 0.0);
    assert!(bench["machine"].is_string());
    assert!(bench.get("peak_rss_mib").is_some());
}

#[test]
fn bad_steps_and_missing_configs_are_one_line_errors() {
    let cases = [
        (vec!["--steps", "0"], "--steps 0"),
        (vec!["--config", "no/such/bench.toml"], "no/such/bench.toml"),
    ];
    for (args, needle) in cases {
        let out = run_arlrr(&[&["bench", "grpo"][..], &args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
