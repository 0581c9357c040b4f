//! The default run: `arlrr train` with no config trains on the built-in task, writes its data,
//! report and plots, and lifts the validation score.

use serde_json::Value;
use std::process::Command;

#[test]
fn default_train_runs_end_to_end_and_improves() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_arlrr"))
        .args(["train", "--quiet", "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "data/train.jsonl",
        "data/validation.jsonl",
        "data/test.jsonl",
        "report.md",
        "metrics.jsonl",
        "schedule.jsonl",
        "validation.svg",
        "schedule.svg",
        "variance.svg",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let evals: Vec<Value> = std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
    let stats = Command::new(env!("CARGO_BIN_EXE_arlrr"))
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
    let res = Command::new(env!("CARGO_BIN_EXE_arlrr"))
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
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let report = std::fs::read_to_string(out.join("compare.md")).unwrap();
    for section in [
        "**Verdict:**",
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
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(
        svg.contains("gdpo") && svg.contains("<polygon"),
        "bands drawn"
    );
}
