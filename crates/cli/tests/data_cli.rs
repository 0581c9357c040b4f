//! `arlrr data stats` and `arlrr score` on the real HealthBench sample, through the binary.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{arlrr, run_arlrr, sample};

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "arlrr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

/// Every figure `data stats` prints, counted here from the raw JSONL with serde_json.
#[test]
fn stats_of_the_real_sample() {
    let s = json_of(&run_arlrr(&[
        "data",
        "stats",
        "--json",
        sample().to_str().unwrap(),
    ]));
    let raw: Vec<Value> = std::fs::read_to_string(sample())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut want = json!({
        "examples": raw.len(), "criteria": 0, "positive": 0, "negative": 0, "checkable": 0,
        "with_ideal_completion": 0, "axes": {}, "themes": {}, "turns": {},
    });
    let bump = |v: &mut Value| *v = json!(v.as_u64().unwrap_or(0) + 1);
    for ex in &raw {
        let mut axes_here = std::collections::BTreeSet::new();
        for r in ex["rubrics"].as_array().unwrap() {
            let axis = r["tags"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|t| t.as_str().unwrap().strip_prefix("axis:"))
                .unwrap_or("(none)")
                .to_string();
            let points = r["points"].as_f64().unwrap();
            let sign = if points > 0.0 {
                Some("positive")
            } else {
                (points < 0.0).then_some("negative")
            };
            bump(&mut want["criteria"]);
            bump(&mut want["axes"][&axis]["criteria"]);
            if let Some(sign) = sign {
                bump(&mut want[sign]);
                bump(&mut want["axes"][&axis][sign]);
            }
            if r.get("check").is_some() {
                bump(&mut want["checkable"]);
            }
            axes_here.insert(axis);
        }
        for axis in axes_here {
            bump(&mut want["axes"][&axis]["examples"]);
        }
        for t in ex["example_tags"].as_array().unwrap() {
            if let Some(theme) = t.as_str().unwrap().strip_prefix("theme:") {
                bump(&mut want["themes"][theme]);
            }
        }
        let users = ex["prompt"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .count();
        bump(&mut want["turns"][users.to_string()]);
        if ex["ideal_completions_data"]["ideal_completion"].is_string() {
            bump(&mut want["with_ideal_completion"]);
        }
    }
    // an axis with no positive (or negative) criterion still shows the count 0
    for a in want["axes"].as_object_mut().unwrap().values_mut() {
        for f in ["positive", "negative"] {
            if a[f].is_null() {
                a[f] = json!(0);
            }
        }
    }
    assert_eq!(s["format"], "healthbench");
    for key in [
        "examples",
        "criteria",
        "positive",
        "negative",
        "checkable",
        "with_ideal_completion",
        "axes",
        "themes",
        "turns",
    ] {
        assert_eq!(s[key], want[key], "{key}");
    }
    // the sample as docs/design.md (§4 Real assets) describes it: 500 items, 5,965 physician criteria, 5 axes,
    // one theme per example, multi-turn conversations among them
    assert_eq!(want["examples"], 500);
    assert_eq!(want["criteria"], 5965);
    assert_eq!(want["axes"].as_object().unwrap().len(), 5);
    let themed: u64 = want["themes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(themed, 500);
    assert!(want["turns"].as_object().unwrap().len() > 1);
}

/// Deterministic pseudo-random bits, so the test needs no RNG crate.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn random_grades(data: &Path, out: &Path, per_example: usize, seed: u64) {
    let mut rng = XorShift(seed);
    let mut text = String::new();
    for line in std::fs::read_to_string(data).unwrap().lines() {
        let ex: Value = serde_json::from_str(line).unwrap();
        let n = ex["rubrics"].as_array().unwrap().len();
        for r in 0..per_example {
            // vary the met rate per response so scores spread, some below zero
            let rate = rng.next() % 100;
            let met: Vec<bool> = (0..n).map(|_| rng.next() % 100 < rate).collect();
            let line = serde_json::json!({
                "prompt_id": ex["prompt_id"],
                "response_id": format!("r{r}"),
                "met": met,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    std::fs::write(out, text).unwrap();
}

#[test]
fn score_agrees_with_an_independent_implementation() {
    let dir = tempfile::tempdir().unwrap();
    let grades = dir.path().join("grades.jsonl");
    random_grades(&sample(), &grades, 2, 0x5eed);
    let ours = json_of(&run_arlrr(&[
        "score",
        "--json",
        "--data",
        sample().to_str().unwrap(),
        "--grades",
        grades.to_str().unwrap(),
    ]));
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/healthbench_reference.py");
    let reference = Command::new("python3")
        .arg(script)
        .arg(sample())
        .arg(&grades)
        .output()
        .expect("python3");
    let reference = json_of(&reference);
    assert_eq!(ours["n_examples"], 500);
    assert_eq!(ours["n_responses"], reference["n"]);
    let close = |a: &Value, b: &Value, what: &str| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "{what}: ours {a}, reference {b}");
    };
    close(&ours["overall"], &reference["overall"], "overall");
    let ref_axes = reference["axes"].as_object().unwrap();
    assert_eq!(ref_axes.len(), 5);
    for (axis, score) in ref_axes {
        close(&ours["axes"][axis]["score"], score, axis);
        assert!(ours["axes"][axis]["std"].as_f64().unwrap() > 0.0);
    }
    assert!(ours["overall_std"].as_f64().unwrap() > 0.0);
    assert!(!ours["themes"].as_object().unwrap().is_empty());
}

/// One bad input: a clear error naming file, line and field, non-zero exit, no panic,
/// no output file.
fn assert_clean_failure(args: &[&str], out_file: &Path, expect: &str) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--out", out_file.to_str().unwrap()]);
    let out = run_arlrr(&all);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {expect}");
    assert!(err.contains(expect), "stderr {err:?} lacks {expect:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out_file.exists(), "partial output left behind");
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
}

#[test]
fn bad_input_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("table.json");
    let lines: Vec<String> = std::fs::read_to_string(sample())
        .unwrap()
        .lines()
        .take(3)
        .map(str::to_string)
        .collect();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let grades = dir.path().join("grades.jsonl");
    random_grades(&data, &grades, 1, 1);
    let good_grades = std::fs::read_to_string(&grades).unwrap();

    let bad_data = |name: &str, line2: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{}\n{}\n{}\n", lines[0], line2, lines[2])).unwrap();
        p
    };
    let mut ex: Value = serde_json::from_str(&lines[1]).unwrap();
    let truncated = bad_data(
        "truncated.jsonl",
        lines[1][..lines[1].len() / 2].to_string(),
    );
    ex.as_object_mut().unwrap().remove("rubrics");
    let no_rubrics = bad_data("no_rubrics.jsonl", ex.to_string());
    let mut ex: Value = serde_json::from_str(&lines[1]).unwrap();
    ex["rubrics"][2]["points"] = Value::String("five".into());
    let bad_points = bad_data("bad_points.jsonl", ex.to_string());

    for (file, field) in [
        (&truncated, "truncated.jsonl:2: field `(json)`"),
        (&no_rubrics, "no_rubrics.jsonl:2: field `rubrics`"),
        (&bad_points, "bad_points.jsonl:2: field `rubrics[2].points`"),
    ] {
        let f = file.to_str().unwrap();
        assert_clean_failure(
            &["score", "--data", f, "--grades", grades.to_str().unwrap()],
            &out_file,
            field,
        );
        let out = run_arlrr(&["data", "stats", f]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(field));
    }

    let grade_lines: Vec<&str> = good_grades.lines().collect();
    let mut g: Value = serde_json::from_str(grade_lines[1]).unwrap();
    g["met"].as_array_mut().unwrap().pop();
    let short = dir.path().join("short.jsonl");
    std::fs::write(&short, format!("{}\n{}\n", grade_lines[0], g)).unwrap();
    let mut g: Value = serde_json::from_str(grade_lines[1]).unwrap();
    g["prompt_id"] = Value::String("no-such-prompt".into());
    let unknown = dir.path().join("unknown.jsonl");
    std::fs::write(&unknown, format!("{}\n{}\n", grade_lines[0], g)).unwrap();
    let mut g: Value = serde_json::from_str(grade_lines[1]).unwrap();
    g["met"][0] = serde_json::json!(1.5);
    let range = dir.path().join("range.jsonl");
    std::fs::write(&range, format!("{}\n{}\n", grade_lines[0], g)).unwrap();
    for (file, field) in [
        (&short, "short.jsonl:2: field `met`"),
        (&unknown, "unknown.jsonl:2: field `prompt_id`"),
        (&range, "range.jsonl:2: field `met[0]`"),
    ] {
        assert_clean_failure(
            &[
                "score",
                "--data",
                data.to_str().unwrap(),
                "--grades",
                file.to_str().unwrap(),
            ],
            &out_file,
            field,
        );
    }

    // and the good pair writes the file
    let out = run_arlrr(&[
        "score",
        "--json",
        "--data",
        data.to_str().unwrap(),
        "--grades",
        grades.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let table: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(table["n_examples"], 3);
}

/// `data builtin`'s knobs: the defaults spelled out write the same files, a conflict outside
/// [0, 1] is one error naming the field, and conflict 0 leaves no word-count criterion.
#[test]
fn builtin_knobs_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["data", "builtin", "--out", out.to_str().unwrap()];
        args.extend(extra);
        (run_arlrr(&args), out)
    };
    let (plain, a) = write("a", &[]);
    let (spelled, b) = write("b", &["--conflict", "1", "--shape", "builtin"]);
    assert!(plain.status.success() && spelled.status.success());
    for f in ["train.jsonl", "validation.jsonl", "test.jsonl"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap()
        );
    }
    let (bad, c) = write("c", &["--conflict", "1.5"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("field `conflict`"),
        "{err}"
    );
    assert!(!c.exists(), "nothing written on error");
    let (free, d) = write("d", &["--conflict", "0", "--shape", "healthbench"]);
    assert!(free.status.success());
    let text = std::fs::read_to_string(d.join("train.jsonl")).unwrap();
    assert!(!text.contains("word_count") && text.contains("axis:accuracy"));
}

/// Issue #28, item 15: a file with no newline in sight (or one huge line) and a device that
/// never ends are refused with one clear error instead of being read until the machine gives
/// out.
#[test]
fn endless_or_huge_lines_and_devices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.jsonl");
    // one line of 17 MiB: above the longest line a data file may hold
    std::fs::write(&huge, vec![b' '; 17 << 20]).unwrap();
    let zero = std::path::Path::new("/dev/zero");
    for (file, want) in [
        (huge.as_path(), "huge.jsonl:1: field `(line)`: longer than"),
        (zero, "/dev/zero: field `(file)`: not a regular file"),
    ] {
        let mut child = arlrr()
            .args(["data", "stats"])
            .arg(file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("{}: still reading after 20 s", file.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
