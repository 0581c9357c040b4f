//! The built-in task: `arlrr train` with no config (the tiny transformer, warm start built and
//! cached, a small budget here; the full default run is not a test) and the categorical config,
//! which must lift the validation score; each writes its data, report and plots.

use serde_json::Value;
use std::path::Path;

mod common;
use common::{arlrr, configs, ok, read_jsonl as lines};

#[test]
fn default_train_builds_the_warm_start_once_and_reports_the_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let train = |run: &Path| {
        let out = arlrr()
            .args([
                "train",
                "--quiet",
                "--steps",
                "2",
                "--sft-steps",
                "3",
                "--out",
            ])
            .arg(run)
            .env("ARLRR_CACHE", &cache)
            .output()
            .unwrap();
        ok(&out)
    };
    let first = train(&dir.path().join("a"));
    assert!(first.contains("warm start (built)"), "{first}");
    let warm: Vec<_> = std::fs::read_dir(cache.join("warm-start"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(warm.len(), 1, "{warm:?}");
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "sft.jsonl",
    ] {
        assert!(warm[0].join(f).exists(), "{f} missing from the warm start");
    }
    assert_eq!(lines(warm[0].join("sft.jsonl")).len(), 3);
    // the second run reuses it
    let run = dir.path().join("b");
    let second = train(&run);
    assert!(second.contains("warm start (cached)"), "{second}");
    for f in [
        "data/test.jsonl",
        "report.md",
        "metrics.jsonl",
        "schedule.jsonl",
        "test.jsonl",
        "validation.svg",
        "checkpoints/step-00000002/policy.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let tests = lines(run.join("test.jsonl"));
    assert_eq!(tests.len(), 2);
    assert_eq!(tests[0]["step"], 0);
    assert_eq!(tests[1]["step"], 2);
    assert_eq!(tests[1]["overall"]["n"], 96 * 4);
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Test split"), "{report}");
    assert!(report.contains("**Test score: "), "{report}");
    // the trained policy loads as a plain model for `arlrr eval`
    let eval = arlrr()
        .args(["eval", "--samples", "1", "--model"])
        .arg(&run)
        .arg("--data")
        .arg(run.join("data/validation.jsonl"))
        .output()
        .unwrap();
    ok(&eval);
    assert!(String::from_utf8_lossy(&eval.stdout).contains("overall"));
}

#[test]
fn categorical_builtin_runs_end_to_end_and_improves() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = arlrr()
        .args([
            "train",
            "--quiet",
            "--out",
            run.to_str().unwrap(),
            "--config",
        ])
        .arg(configs().join("builtin-categorical.toml"))
        .output()
        .unwrap();
    ok(&out);
    for f in [
        "data/train.jsonl",
        "data/validation.jsonl",
        "data/test.jsonl",
        "report.md",
        "metrics.jsonl",
        "schedule.jsonl",
        "completions.jsonl",
        "validation.svg",
        "schedule.svg",
        "variance.svg",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let events: Vec<_> = std::fs::read_dir(run.join("tensorboard"))
        .unwrap()
        .collect();
    assert_eq!(events.len(), 1, "one TensorBoard event file");
    let evals = lines(run.join("eval.jsonl"));
    let first = evals.first().unwrap()["overall"]["score"].as_f64().unwrap();
    let last = evals.last().unwrap()["overall"]["score"].as_f64().unwrap();
    assert!(last - first >= 0.10, "validation {first:.3} -> {last:.3}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("![schedule.svg](schedule.svg)"));
    let svg = std::fs::read_to_string(run.join("schedule.svg")).unwrap();
    for class in rubric::HEALTHBENCH_AXES {
        assert!(
            svg.contains(class),
            "{class} missing from the schedule legend"
        );
    }
    // the built-in data is valid native format
    let stats = arlrr()
        .args(["data", "stats", "--json"])
        .arg(run.join("data/test.jsonl"))
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["examples"], 96);
    assert_eq!(stats["checkable"], stats["criteria"]);
}

#[test]
fn compare_writes_every_section_with_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let res = arlrr()
        .args([
            "compare",
            "--seeds",
            "2",
            "--steps",
            "30",
            "--methods",
            "alternating:lookahead,scalarized,gdpo",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    ok(&res);
    let report = std::fs::read_to_string(out.join("compare.md")).unwrap();
    for section in [
        "**Verdict:**",
        "## Against scalarization",
        "## Final test score (mean over seeds, 95% CI)",
        "## Training efficiency",
        "## Variance contraction",
        "![curves.svg](curves.svg)",
    ] {
        assert!(report.contains(section), "{section} missing:\n{report}");
    }
    assert!(report.contains(" won with a mean test score of "));
    assert!(report.contains("permutation test"));
    for m in ["| alternating:lookahead |", "| scalarized |", "| gdpo |"] {
        assert!(report.matches(m).count() >= 3, "{m} rows missing");
    }
    assert!(!report.contains("NaN"), "{report}");
    // each method against scalarization: difference, its CI and p, and with 2 seeds the
    // note that no difference can be significant (smallest p = 2/C(4,2) = 0.333)
    let against = report
        .split("## Against scalarization")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    for m in ["| alternating:lookahead | ", "| gdpo | "] {
        let row = against.lines().find(|l| l.starts_with(m)).unwrap();
        assert!(row.contains("not significant"), "{row}");
        assert_eq!(row.matches('[').count(), 1, "{row}");
    }
    assert!(against.contains("smallest p the permutation test can give is 0.333"));
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(
        svg.contains("gdpo") && svg.contains("<polygon"),
        "bands drawn"
    );
}
