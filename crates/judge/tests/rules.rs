//! The rule judge on every `Check` variant, written as the data file would write it (JSON), so
//! that these tests also pin the `check` syntax rubric authors use.

use judge::{GradeTask, Judge, JudgeFailure, RuleJudge};
use rubric::{Check, Criterion, Example};

fn check(json: &str) -> Check {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad check {json}: {e}"))
}

fn example(checks: &[Option<&str>]) -> Example {
    Example {
        id: "ex1".into(),
        prompt: vec![rubric::Message {
            role: "user".into(),
            content: "I have a headache".into(),
        }],
        criteria: checks
            .iter()
            .enumerate()
            .map(|(i, c)| Criterion {
                text: format!("criterion {i}"),
                points: 1.0,
                tags: vec![],
                check: c.map(check),
            })
            .collect(),
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    }
}

/// Grades `response` against one check and returns met / not met, panicking on failure.
fn met(check_json: &str, response: &str) -> bool {
    let judge = RuleJudge::new();
    let ex = example(&[Some(check_json)]);
    let grades = judge.grade_sync(&[GradeTask {
        example: &ex,
        response,
        criteria: None,
    }]);
    match &grades[0][0].outcome {
        Ok(v) => *v == 1.0,
        Err(e) => panic!("{check_json} failed: {e}"),
    }
}

const RESPONSE: &str = "Hello! Please see a Doctor if the pain lasts 3 days.\n\
- rest\n- drink water\n\nDo you also have a fever?";

#[test]
fn contains_variants_ignore_case() {
    assert!(met(
        r#"{"kind":"contains_any","phrases":["doctor","nurse"]}"#,
        RESPONSE
    ));
    assert!(!met(
        r#"{"kind":"contains_any","phrases":["nurse","clinic"]}"#,
        RESPONSE
    ));
    assert!(met(
        r#"{"kind":"contains_all","phrases":["DOCTOR","water"]}"#,
        RESPONSE
    ));
    assert!(!met(
        r#"{"kind":"contains_all","phrases":["doctor","nurse"]}"#,
        RESPONSE
    ));
    assert!(met(
        r#"{"kind":"contains_none","phrases":["ibuprofen","aspirin"]}"#,
        RESPONSE
    ));
    assert!(!met(
        r#"{"kind":"contains_none","phrases":["Fever"]}"#,
        RESPONSE
    ));
}

#[test]
fn regex_is_case_insensitive() {
    assert!(met(
        r#"{"kind":"regex","pattern":"\\b\\d+ days\\b"}"#,
        RESPONSE
    ));
    assert!(met(r#"{"kind":"regex","pattern":"^hello"}"#, RESPONSE));
    assert!(!met(
        r#"{"kind":"regex","pattern":"\\bweeks?\\b"}"#,
        RESPONSE
    ));
}

#[test]
fn word_count_bounds_are_inclusive() {
    let n = RESPONSE.split_whitespace().count();
    assert!(met(
        &format!(r#"{{"kind":"word_count","min":{n},"max":{n}}}"#),
        RESPONSE
    ));
    assert!(!met(
        &format!(r#"{{"kind":"word_count","min":{}}}"#, n + 1),
        RESPONSE
    ));
    assert!(!met(
        &format!(r#"{{"kind":"word_count","max":{}}}"#, n - 1),
        RESPONSE
    ));
    assert!(met(r#"{"kind":"word_count","max":1000}"#, RESPONSE));
}

#[test]
fn starts_and_ends_with() {
    assert!(met(r#"{"kind":"starts_with","text":"hello!"}"#, RESPONSE));
    assert!(!met(r#"{"kind":"starts_with","text":"please"}"#, RESPONSE));
    assert!(met(r#"{"kind":"ends_with","text":"FEVER?"}"#, RESPONSE));
    assert!(!met(r#"{"kind":"ends_with","text":"water"}"#, RESPONSE));
}

#[test]
fn lists_by_style() {
    assert!(met(r#"{"kind":"has_list"}"#, RESPONSE));
    assert!(met(r#"{"kind":"has_list","style":"bullet"}"#, RESPONSE));
    assert!(!met(r#"{"kind":"has_list","style":"numbered"}"#, RESPONSE));
    assert!(met(
        r#"{"kind":"has_list","style":"numbered"}"#,
        "Steps:\n1. rest\n2. water"
    ));
}

#[test]
fn questions_and_numbers() {
    assert!(met(r#"{"kind":"asks_question"}"#, RESPONSE));
    assert!(!met(r#"{"kind":"asks_question"}"#, "Rest well."));
    assert!(met(r#"{"kind":"mentions_number"}"#, RESPONSE));
    assert!(met(r#"{"kind":"mentions_number"}"#, "Take two tablets."));
    assert!(!met(
        r#"{"kind":"mentions_number"}"#,
        "Rest well, everyone."
    ));
}

#[test]
fn combinators_nest() {
    let not = r#"{"kind":"not","check":{"kind":"asks_question"}}"#;
    assert!(!met(not, RESPONSE));
    assert!(met(not, "Rest well."));
    let all = r#"{"kind":"all","checks":[{"kind":"asks_question"},{"kind":"mentions_number"}]}"#;
    assert!(met(all, RESPONSE));
    assert!(!met(all, "Any fever?"));
    let any = r#"{"kind":"any","checks":[{"kind":"contains_any","phrases":["zzz"]},{"kind":"not","check":{"kind":"mentions_number"}}]}"#;
    assert!(!met(any, RESPONSE));
    assert!(met(any, "no digits"));
}

#[test]
fn criterion_without_check_is_not_gradable_and_order_is_kept() {
    let judge = RuleJudge::new();
    let ex = example(&[
        Some(r#"{"kind":"asks_question"}"#),
        None,
        Some(r#"{"kind":"mentions_number"}"#),
    ]);
    let grades = judge.grade_sync(&[GradeTask {
        example: &ex,
        response: "Why?",
        criteria: Some(&[2, 1, 0]),
    }]);
    let g = &grades[0];
    assert_eq!(
        g.iter().map(|g| g.criterion).collect::<Vec<_>>(),
        vec![2, 1, 0]
    );
    assert_eq!(g[0].outcome, Ok(0.0));
    assert!(matches!(g[1].outcome, Err(JudgeFailure::NotGradable(_))));
    assert_eq!(g[2].outcome, Ok(1.0));
    assert!(g
        .iter()
        .all(|g| g.judge == "rules-v1" && !g.cached && g.attempts == 0));
    let stats = judge.stats();
    assert_eq!((stats.verdicts, stats.failures), (3, 1));
}

#[test]
fn broken_checks_fail_explicitly() {
    let judge = RuleJudge::new();
    let ex = example(&[
        Some(r#"{"kind":"regex","pattern":"(unclosed"}"#),
        Some(r#"{"kind":"contains_any","phrases":[]}"#),
        Some(r#"{"kind":"word_count"}"#),
    ]);
    let grades = judge.grade_sync(&[GradeTask {
        example: &ex,
        response: "text",
        criteria: Some(&[0, 1, 2, 7]),
    }]);
    for (g, needle) in grades[0].iter().zip([
        "invalid regex `(unclosed`",
        "empty list",
        "word_count needs",
        "out of range",
    ]) {
        match &g.outcome {
            Err(JudgeFailure::Other(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("expected failure containing {needle}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn async_grade_matches_sync_and_is_deterministic() {
    let judge = RuleJudge::new();
    let ex = example(&[
        Some(r#"{"kind":"regex","pattern":"fever"}"#),
        Some(r#"{"kind":"has_list"}"#),
    ]);
    let tasks = [
        GradeTask {
            example: &ex,
            response: RESPONSE,
            criteria: None,
        },
        GradeTask {
            example: &ex,
            response: "nothing",
            criteria: None,
        },
    ];
    let a = judge.grade(&tasks).await;
    let b = judge.grade_sync(&tasks);
    assert_eq!(a, b);
    let values: Vec<Vec<f64>> = a
        .iter()
        .map(|t| t.iter().map(|g| *g.outcome.as_ref().unwrap()).collect())
        .collect();
    assert_eq!(values, vec![vec![1.0, 1.0], vec![0.0, 0.0]]);
}
