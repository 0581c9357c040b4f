//! `score_table` against the independent Python scorer (scripts/healthbench_reference.py) on
//! the cases the real-sample cross-check does not reach: theme scores (an example with two
//! themes, one without, a theme whose mean is negative), fractional verdicts, null (failed)
//! verdicts and examples without positive points.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

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

/// A HealthBench-format example: `(id, example_tags, [(points, axis)])`.
type Spec = (&'static str, Vec<&'static str>, Vec<(i32, &'static str)>);

fn examples() -> Vec<Spec> {
    vec![
        (
            "e1",
            vec!["theme:emergency_referrals"],
            vec![
                (5, "accuracy"),
                (3, "completeness"),
                (-4, "accuracy"),
                (2, "communication_quality"),
            ],
        ),
        (
            "e2",
            vec!["theme:hedging", "physician_agreed_category:x"],
            vec![
                (6, "context_awareness"),
                (4, "accuracy"),
                (-2, "context_awareness"),
            ],
        ),
        // no positive points: overall and accuracy undefined, never a zero
        ("e3", vec!["theme:hedging"], vec![(-3, "accuracy")]),
        (
            "e4",
            vec![],
            vec![(1, "instruction_following"), (1, "completeness")],
        ),
        // two themes; mostly negative, so global_health's mean is clipped to 0
        (
            "e5",
            vec!["theme:global_health", "theme:hedging"],
            vec![(2, "accuracy"), (-8, "communication_quality")],
        ),
    ]
}

fn write_data(path: &Path) {
    let text: String = examples()
        .iter()
        .map(|(id, tags, rubrics)| {
            let rubrics: Vec<Value> = rubrics
                .iter()
                .map(|(p, axis)| {
                    json!({"criterion": format!("{axis} {p}"), "points": p,
                           "tags": ["level:example", format!("axis:{axis}")]})
                })
                .collect();
            json!({"prompt_id": id, "prompt": [{"role": "user", "content": format!("question {id}")}],
                   "rubrics": rubrics, "example_tags": tags})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Eight responses per example; each verdict is true/false, a fraction k/7 or (rarely) null.
/// `e5`'s met negative item is forced so its theme mean goes below zero.
fn write_grades(path: &Path) -> (usize, usize, usize) {
    let mut rng = XorShift(0x7e57);
    let (mut fractional, mut nulls, mut failed_rows) = (0, 0, 0);
    let mut text = String::new();
    for (id, _, rubrics) in examples() {
        for r in 0..8 {
            let mut row_failed = false;
            let met: Vec<Value> = rubrics
                .iter()
                .map(|(p, _)| {
                    if id == "e5" && *p < 0 {
                        return json!(true);
                    }
                    match rng.next() % 20 {
                        0 => {
                            nulls += 1;
                            row_failed = true;
                            Value::Null
                        }
                        1..=8 => {
                            fractional += 1;
                            json!((rng.next() % 8) as f64 / 7.0)
                        }
                        x => json!(x % 2 == 0),
                    }
                })
                .collect();
            failed_rows += usize::from(row_failed);
            let line = json!({"prompt_id": id, "response_id": format!("r{r}"), "met": met});
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    std::fs::write(path, text).unwrap();
    (fractional, nulls, failed_rows)
}

#[test]
fn themes_fractional_and_null_verdicts_match_the_python_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (data, grades) = (dir.path().join("data.jsonl"), dir.path().join("g.jsonl"));
    write_data(&data);
    let (fractional, nulls, failed_rows) = write_grades(&grades);
    // the generated file really holds the cases under test
    assert!(fractional > 10 && nulls > 1 && failed_rows > 1);

    let dataset = rubric::load(&data).unwrap();
    let lines = rubric::read_grades(&grades, &dataset).unwrap();
    let ours = rubric::score::score_table(&dataset, &lines, 0);

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/healthbench_reference.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&data)
        .arg(&grades)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).unwrap();

    let close = |a: f64, b: &Value, what: &str| {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() < 1e-12, "{what}: ours {a}, reference {b}");
    };
    assert_eq!(ours.n_responses as u64, reference["n"].as_u64().unwrap());
    assert_eq!(ours.n_failed, failed_rows);
    assert_eq!(
        ours.n_failed as u64,
        reference["n_failed"].as_u64().unwrap()
    );
    // e3's rows that did not fail have no positive points
    assert!(ours.n_undefined > 0);
    close(ours.overall, &reference["overall"], "overall");

    let names = |m: &Value| {
        let mut k: Vec<String> = m.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let ref_axes = &reference["axes"];
    assert_eq!(
        ours.axes.keys().cloned().collect::<Vec<_>>(),
        names(ref_axes)
    );
    assert_eq!(ours.axes.len(), 5);
    for (axis, s) in &ours.axes {
        close(s.score, &ref_axes[axis], axis);
    }
    let ref_themes = &reference["themes"];
    assert_eq!(
        ours.themes.keys().cloned().collect::<Vec<_>>(),
        ["emergency_referrals", "global_health", "hedging"]
    );
    assert_eq!(
        ours.themes.keys().cloned().collect::<Vec<_>>(),
        names(ref_themes)
    );
    for (theme, s) in &ours.themes {
        close(s.score, &ref_themes[theme], theme);
    }
    assert_eq!(ours.themes["global_health"].score, 0.0, "clipped below");
    // hedging collects e2, e5 and no undefined e3 row
    let n_of = |id: &str| {
        lines
            .iter()
            .filter(|g| g.prompt_id == id && g.values().is_some())
            .count()
    };
    assert_eq!(ours.themes["hedging"].n, n_of("e2") + n_of("e5"));
}
