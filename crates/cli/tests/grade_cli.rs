//! `arlrr grade` through the binary: the rule judge end to end into `arlrr score`, precise
//! errors on bad responses files, and the verdict cache shared across processes with the HTTP
//! judge (a second run makes zero HTTP requests).

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;
use common::{ok, read_jsonl, run_arlrr};

/// Three examples in the native format: checkable criteria plus one without a check.
fn write_data(dir: &Path) -> String {
    let item = |id: &str, tags: Value, rubrics: Value| {
        json!({"prompt_id": id, "prompt": [{"role": "user", "content": "My head hurts."}], "rubrics": rubrics, "example_tags": tags})
            .to_string()
    };
    let rubric = |text: &str, points: i32, axis: &str, check: Option<Value>| {
        let mut r = json!({"criterion": text, "points": points, "tags": [format!("axis:{axis}")]});
        if let Some(c) = check {
            r["check"] = c;
        }
        r
    };
    let a = item(
        "p1",
        json!([]),
        json!([
            rubric(
                "Advises seeing a doctor",
                5,
                "accuracy",
                Some(json!({"kind": "contains_any", "phrases": ["doctor"]}))
            ),
            rubric(
                "Asks a follow-up question",
                3,
                "completeness",
                Some(json!({"kind": "asks_question"}))
            ),
            rubric("Is empathetic", 2, "communication_quality", None),
        ]),
    );
    let b = item(
        "p2",
        json!([]),
        json!([rubric(
            "Uses a list",
            4,
            "communication_quality",
            Some(json!({"kind": "has_list"}))
        )]),
    );
    // fully checkable, with a negative item and a theme, so `score` has figures to show
    let c = item(
        "p3",
        json!(["theme:emergency_referrals"]),
        json!([
            rubric(
                "Advises seeing a doctor",
                5,
                "accuracy",
                Some(json!({"kind": "contains_any", "phrases": ["doctor"]}))
            ),
            rubric(
                "Recommends antibiotics",
                -4,
                "accuracy",
                Some(json!({"kind": "contains_any", "phrases": ["antibiotics"]}))
            ),
            rubric(
                "Asks a follow-up question",
                3,
                "completeness",
                Some(json!({"kind": "asks_question"}))
            ),
            rubric(
                "Uses a list",
                2,
                "communication_quality",
                Some(json!({"kind": "has_list"}))
            ),
        ]),
    );
    let path = dir.join("data.jsonl");
    std::fs::write(&path, format!("{a}\n{b}\n{c}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn rule_judge_grades_into_the_score_format_with_nulls_for_failures() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let responses = write(
        dir.path(),
        "responses.jsonl",
        "{\"prompt_id\":\"p1\",\"completion\":\"See a doctor. Any fever?\",\"response_id\":\"r1\"}\n\
         {\"prompt_id\":\"p1\",\"completion\":\"Rest.\"}\n\n\
         {\"prompt_id\":\"p2\",\"completion\":\"- rest\\n- water\"}\n\
         {\"prompt_id\":\"p3\",\"completion\":\"See a doctor. Any fever?\"}\n\
         {\"prompt_id\":\"p3\",\"completion\":\"Take antibiotics.\"}\n",
    );
    let judge = write(
        dir.path(),
        "judge.toml",
        "kind = \"rules\"\ncache = \"cache.sqlite\"\n",
    );
    let out = dir.path().join("grades.jsonl");
    let out = out.to_str().unwrap();
    let stderr = ok(&run_arlrr(&[
        "grade",
        "--data",
        &data,
        "--responses",
        &responses,
        "--judge",
        &judge,
        "--out",
        out,
    ]));
    assert!(
        stderr.contains("graded 5 responses, 15 verdicts"),
        "{stderr}"
    );
    assert!(
        stderr.contains("failed verdicts (written as null): 2 (2 not gradable"),
        "{stderr}"
    );
    assert!(
        dir.path().join("cache.sqlite").exists(),
        "cache path is relative to the config"
    );

    let lines = read_jsonl(out);
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["met"], json!([true, true, null]));
    assert_eq!(lines[0]["response_id"], "r1");
    assert_eq!(lines[0]["judge"], "rules-v1");
    assert!(lines[0]["explanations"][2]
        .as_str()
        .unwrap()
        .contains("not gradable"));
    assert_eq!(lines[1]["met"], json!([false, false, null]));
    assert_eq!(lines[2]["met"], json!([true]));
    assert_eq!(lines[3]["met"], json!([true, false, true, false]));
    assert_eq!(lines[4]["met"], json!([false, true, false, false]));

    // `arlrr score` reads what `grade` wrote.
    let scored = run_arlrr(&["score", "--data", &data, "--grades", out, "--json"]);
    ok(&scored);
    let table: Value = serde_json::from_slice(&scored.stdout).unwrap();
    // By hand from the verdicts above: the two p1 rows hold a null and are left out, never
    // scored; p2 scores 4/4; p3 scores (5 + 3)/10 and -4/10 (positive points 5 + 3 + 2).
    let (p2, p3a, p3b) = (4.0 / 4.0, 8.0 / 10.0, -4.0 / 10.0);
    let close = |got: &Value, want: f64, what: &str| {
        let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {table}"));
        assert!((got - want).abs() < 1e-12, "{what}: {got} vs {want}");
    };
    assert_eq!(table["n_failed"], 2, "{table}");
    assert_eq!(table["n_responses"], 3, "{table}");
    assert_eq!(table["n_examples"], 2, "p2 and p3; p1 has no scored row");
    assert_eq!(table["n_undefined"], 0);
    close(&table["overall"], (p2 + p3a + p3b) / 3.0, "overall");
    assert!(table["overall_std"].as_f64().unwrap() > 0.0);
    let axes = table["axes"].as_object().unwrap();
    assert_eq!(
        axes.keys().collect::<Vec<_>>(),
        ["accuracy", "communication_quality", "completeness"],
        "{table}"
    );
    // accuracy: p3 only (5/5, -4/5), mean 0.1; communication: p2 1, p3 0 and 0
    close(&axes["accuracy"]["score"], (1.0 - 0.8) / 2.0, "accuracy");
    close(&axes["completeness"]["score"], 0.5, "completeness");
    close(
        &axes["communication_quality"]["score"],
        1.0 / 3.0,
        "communication_quality",
    );
    assert_eq!(axes["accuracy"]["n"], 2);
    assert_eq!(axes["communication_quality"]["n"], 3);
    let themes = table["themes"].as_object().unwrap();
    assert_eq!(themes.len(), 1, "{table}");
    close(
        &themes["emergency_referrals"]["score"],
        (p3a + p3b) / 2.0,
        "theme",
    );
    assert_eq!(themes["emergency_referrals"]["n"], 2);
}

#[test]
fn bad_responses_lines_are_named_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let judge = write(dir.path(), "judge.toml", "kind = \"rules\"\n");
    let out = dir.path().join("grades.jsonl");
    for (text, needle) in [
        (
            "{\"prompt_id\":\"p1\",\"completion\":\"ok\"}\n{\"prompt_id\":\"p1\"}\n",
            ":2: field `completion`: missing",
        ),
        (
            "{\"prompt_id\":\"p9\",\"completion\":\"x\"}\n",
            ":1: field `prompt_id`: unknown prompt_id `p9`",
        ),
        (
            "{\"prompt_id\":\"p1\",\"completion\":7}\n",
            ":1: field `completion`: expected a string",
        ),
        ("\n\n{\"prompt_id\":\"p1\",\n", ":3: field `(json)`"),
    ] {
        let responses = write(dir.path(), "bad.jsonl", text);
        let o = run_arlrr(&[
            "grade",
            "--data",
            &data,
            "--responses",
            &responses,
            "--judge",
            &judge,
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains(&format!("bad.jsonl{needle}")),
            "expected {needle:?} in {stderr}"
        );
        assert!(!out.exists(), "no partial output");
    }
    // A bad judge config names its file and the offending key.
    let responses = write(
        dir.path(),
        "r.jsonl",
        "{\"prompt_id\":\"p1\",\"completion\":\"ok\"}\n",
    );
    let judge = write(dir.path(), "bad.toml", "kind = \"http\"\n");
    let o = run_arlrr(&[
        "grade",
        "--data",
        &data,
        "--responses",
        &responses,
        "--judge",
        &judge,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("[http]"),
        "{stderr}"
    );
}

/// A loopback OpenAI-compatible server that counts requests and says "met" when the reply
/// mentions a doctor.
fn spawn_counting_server() -> (String, Arc<AtomicUsize>, std::thread::JoinHandle<()>) {
    use axum::{routing::post, Json, Router};
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new().route(
                "/v1/chat/completions",
                post(move |Json(req): Json<Value>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let prompt = req["messages"][0]["content"].as_str().unwrap_or("").to_string();
                        let reply = prompt.split("<reply>").nth(1).unwrap_or("");
                        let met = reply.contains("doctor");
                        Json(json!({"choices": [{"message": {"role": "assistant",
                            "content": format!("{{\"explanation\": \"checked\", \"criteria_met\": {met}}}")}}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 10}}))
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/v1"), count, handle)
}

#[test]
fn second_run_in_a_new_process_is_served_from_the_cache_with_zero_requests() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let responses = write(
        dir.path(),
        "responses.jsonl",
        "{\"prompt_id\":\"p1\",\"completion\":\"See a doctor.\"}\n{\"prompt_id\":\"p2\",\"completion\":\"Rest.\"}\n",
    );
    let (url, count, _server) = spawn_counting_server();
    let judge = write(
        dir.path(),
        "judge.toml",
        &format!("kind = \"http\"\ncache = \"cache.sqlite\"\n[http]\nbase_url = \"{url}\"\nmodel = \"counter\"\ntimeout_secs = 10\nretries = 1\n"),
    );
    let first = dir.path().join("first.jsonl");
    let second = dir.path().join("second.jsonl");
    let run = |out: &Path| {
        ok(&run_arlrr(&[
            "grade",
            "--data",
            &data,
            "--responses",
            &responses,
            "--judge",
            &judge,
            "--out",
            out.to_str().unwrap(),
        ]))
    };
    let s1 = run(&first);
    assert_eq!(count.load(Ordering::SeqCst), 4, "one request per criterion");
    assert!(
        s1.contains("cache: 0 hits, 4 misses; backend calls: 4"),
        "{s1}"
    );
    let s2 = run(&second);
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "the second process made no requests"
    );
    assert!(
        s2.contains("cache: 4 hits, 0 misses; backend calls: 0"),
        "{s2}"
    );
    let (a, b) = (
        read_jsonl(first.to_str().unwrap()),
        read_jsonl(second.to_str().unwrap()),
    );
    assert_eq!(a[0]["met"], json!([true, true, true]));
    assert_eq!(a[1]["met"], json!([false]));
    assert_eq!(
        a.iter().map(|l| &l["met"]).collect::<Vec<_>>(),
        b.iter().map(|l| &l["met"]).collect::<Vec<_>>()
    );
    assert_eq!(a[0]["judge"], "http:counter");
}

/// Issue #28, item 15: `grade` exits non-zero when every verdict failed, saying how many and
/// why; with `--strict` any failed verdict does. The grades file is written either way (its
/// nulls carry the reasons).
#[test]
fn grade_fails_when_every_verdict_failed_and_strict_on_any() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let judge = write(dir.path(), "judge.toml", "kind = \"rules\"\n");
    let out = dir.path().join("grades.jsonl");
    let out = out.to_str().unwrap();
    // p1's third criterion has no `check`: the rule judge cannot grade it
    let only_unchecked = write(
        dir.path(),
        "unchecked.jsonl",
        "{\"prompt_id\":\"p1\",\"completion\":\"Rest.\"}\n",
    );
    let run = |responses: &str, extra: &[&str]| {
        let mut args = vec!["grade", "--data", &data, "--responses", responses];
        args.extend(["--judge", &judge, "--out", out]);
        args.extend(extra);
        run_arlrr(&args)
    };
    // a data file whose criteria have no check at all: every verdict fails
    let unchecked_data = write(
        dir.path(),
        "nocheck.jsonl",
        &(json!({"prompt_id": "q1", "prompt": [{"role": "user", "content": "Hi"}],
                 "rubrics": [{"criterion": "Is kind", "points": 2, "tags": ["axis:accuracy"]},
                             {"criterion": "Is brief", "points": 1, "tags": ["axis:accuracy"]}]})
        .to_string()
            + "\n"),
    );
    let responses = write(
        dir.path(),
        "q.jsonl",
        "{\"prompt_id\":\"q1\",\"completion\":\"Hello.\"}\n{\"prompt_id\":\"q1\",\"completion\":\"Hi.\"}\n",
    );
    let res = run_arlrr(&[
        "grade",
        "--data",
        &unchecked_data,
        "--responses",
        &responses,
        "--judge",
        &judge,
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(err.contains("every verdict failed: 4 of 4"), "{err}");
    assert!(
        err.contains("4 not gradable") && err.contains("q.jsonl:1"),
        "{err}"
    );
    assert_eq!(read_jsonl(out).len(), 2, "written, all null");

    // partial failures: exit 0 by default, non-zero with --strict
    let partial = run(&only_unchecked, &[]);
    ok(&partial);
    let strict = run(&only_unchecked, &["--strict"]);
    let err = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(1), "{err}");
    assert!(
        err.contains("1 of 3 verdicts failed") && err.contains("--strict"),
        "{err}"
    );
    assert_eq!(read_jsonl(out)[0]["met"], json!([false, false, null]));
}

/// `arlrr grade` goes through the one grading path, so a failed verdict is asked for
/// again with the judge config's `retries` (default 2): an HTTP judge that fails its first
/// request (and does not retry the request itself) still yields the verdict. With
/// `retries = 0` the same failure is written as `null` and counted, never as 0 or 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grade_retries_a_failed_verdict_with_the_judge_configs_retries() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    // p2 has one criterion: one request per attempt
    let responses = write(
        dir.path(),
        "responses.jsonl",
        "{\"prompt_id\":\"p2\",\"completion\":\"- rest\\n- fluids\"}\n",
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    // every odd request fails: the first attempt of each run
    let url =
        common::fake_judge(move |_| counter.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)).await;
    let judge = common::http_judge(dir.path(), &url);
    let out = dir.path().join("grades.jsonl");
    let run = |judge: &Path| {
        run_arlrr(&[
            "grade",
            "--data",
            &data,
            "--responses",
            &responses,
            "--judge",
            judge.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let stderr = ok(&run(&judge));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "failed once, asked again");
    assert!(stderr.contains("verdicts asked for again: 1"), "{stderr}");
    assert!(
        stderr.contains("failed verdicts (written as null): 0"),
        "{stderr}"
    );
    let lines = read_jsonl(&out);
    assert_eq!(lines[0]["met"], json!([true]));
    assert_eq!(lines[0]["explanations"], json!(["fine"]));

    // the config's `retries = 0`: no second attempt, the failure stays a failure
    let text = std::fs::read_to_string(&judge).unwrap();
    let no_retries = dir.path().join("no-retries.toml");
    std::fs::write(&no_retries, format!("retries = 0\n{text}")).unwrap();
    let res = run(&no_retries);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one attempt");
    assert!(
        err.contains("every verdict failed: 1 of 1 (0 not gradable by this judge, 1 after exhausting retries"),
        "{err}"
    );
    let lines = read_jsonl(&out);
    assert_eq!(lines[0]["met"], json!([null]), "a failure, never 0 or 1");
}
