//! `arlrr serve` never loses or double-counts a step: through the real binary over real HTTP,
//! with restarts (SIGKILL and SIGTERM), an unwritable state folder, a judge outage, two
//! services on one folder, abandoned GDPO requests and a hand-edited state file.

use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_close, block, completions, entries, fake_judge, floats, get, http_judge, metric,
    openrlhf_body, post, serve_args, serve_refused, task, unblock, Serve, Task,
};

/// The schedule's `(step, phase)`.
async fn step_phase(client: &reqwest::Client, serve: &Serve) -> (u64, u64) {
    let st = get(client, &format!("{}/v1/schedule", serve.url)).await;
    (st["step"].as_u64().unwrap(), st["phase"].as_u64().unwrap())
}

/// One native reward request for `n` completions of `example`.
async fn rewards(
    client: &reqwest::Client,
    serve: &Serve,
    example: &Value,
    n: usize,
) -> (u16, Value) {
    let completions: Vec<String> = (0..n).map(|i| format!("Rest it, take {i}.")).collect();
    post(
        client,
        &format!("{}/v1/rewards", serve.url),
        &json!({"prompt_id": example["prompt_id"], "completions": completions}),
    )
    .await
}

fn sigterm(serve: &Serve) {
    let ok = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_completions_survive_restarts_and_are_refused_when_they_cannot_be_saved() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    let a = serve_args(
        &train,
        &judge,
        &state,
        &["--completions-per-step", "4", "--phase-steps", "1"],
    );
    let client = reqwest::Client::new();
    let ex = &examples[0];

    // 3 of 4, SIGKILL, then the 4th: the step completes
    let serve = Serve::start(dir.path(), &a, &[]);
    assert_eq!(step_phase(&client, &serve).await, (0, 1));
    for _ in 0..3 {
        assert_eq!(rewards(&client, &serve, ex, 1).await.0, 200);
    }
    serve.kill();
    let serve = Serve::start(dir.path(), &a, &[]);
    assert_eq!(rewards(&client, &serve, ex, 1).await.0, 200);
    assert_eq!(
        step_phase(&client, &serve).await,
        (1, 2),
        "counted completions lost"
    );

    // the same across a SIGTERM
    assert_eq!(rewards(&client, &serve, ex, 3).await.0, 200);
    let mut serve = serve;
    sigterm(&serve);
    assert!(serve.child.wait().unwrap().success(), "{}", serve.log());
    let serve = Serve::start(dir.path(), &a, &[]);
    assert_eq!(rewards(&client, &serve, ex, 1).await.0, 200);
    assert_eq!(step_phase(&client, &serve).await, (2, 3));

    // an unwritable state (a directory in its place: the new state, written to a temporary file
    // of its own, cannot be renamed over it): the rewards are an error, and nothing is counted
    let saved = state.join("schedule_state.json");
    let files = entries(&state);
    let content = block(&saved);
    for _ in 0..5 {
        let (s, e) = rewards(&client, &serve, ex, 4).await;
        assert_eq!(
            (s, &e["error"]["type"]),
            (500, &json!("state_write_failed")),
            "{e}"
        );
    }
    let body = openrlhf_body(ex, &["Rest it.".to_string()]);
    let (s, e) = post(&client, &format!("{}/openrlhf/reward", serve.url), &body).await;
    assert_eq!(
        (s, &e["error"]["type"]),
        (500, &json!("state_write_failed")),
        "{e}"
    );
    assert_eq!(step_phase(&client, &serve).await, (2, 3));
    assert_eq!(entries(&state), files, "a temporary file was left behind");
    unblock(&saved, &content);
    assert_eq!(rewards(&client, &serve, ex, 4).await.0, 200);
    assert_eq!(step_phase(&client, &serve).await, (3, 4));
    drop(serve);
    let serve = Serve::start(dir.path(), &a, &[]);
    assert_eq!(step_phase(&client, &serve).await, (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_requests_in_flight_before_the_service_exits() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    // a GDPO group that never fills holds its request for the window: a request in flight
    let a = serve_args(
        &train,
        &judge,
        &state,
        &[
            "--objective",
            "gdpo",
            "--group-size",
            "4",
            "--group-window-secs",
            "3",
            "--completions-per-step",
            "1",
        ],
    );
    let mut serve = Serve::start(dir.path(), &a, &[]);
    let ex = &examples[0];
    let body = openrlhf_body(ex, &["Rest it.".to_string()]);
    let client = reqwest::Client::new();
    let url = format!("{}/openrlhf/reward", serve.url);
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { post(&client, &url, &body).await }
    });
    // SIGTERM once the request waits in its group (the service's gauge says so)
    let started = Instant::now();
    while metric(&client, &serve.url, "arlrr_gdpo_waiting_completions").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(&serve);
    let (s, r) = in_flight.await.unwrap();
    assert_eq!(s, 200, "the request in flight was dropped: {r}");
    assert_eq!(r["extra_logs"]["arlrr/group_size"], json!([1.0]), "{r}");
    let exit = serve.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}\n{}", serve.log());
    assert!(serve.log().contains("stopping"), "{}", serve.log());
    // and its completion was counted before the answer went out
    let serve = Serve::start(dir.path(), &a, &[]);
    let st = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(st["step"], 1, "{st}");
}

/// A judge that answers every grading request with HTTP 500 while `down` is set, and with a
/// verdict otherwise.
async fn flaky_judge(down: Arc<AtomicBool>) -> String {
    fake_judge(move |_| down.load(Ordering::SeqCst)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_whose_grading_failed_do_not_count_toward_steps() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train, examples, ..
    } = task(dir.path());
    let down = Arc::new(AtomicBool::new(true));
    let base_url = flaky_judge(down.clone()).await;
    let judge = http_judge(dir.path(), &base_url);
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &train,
            &judge,
            &state,
            &["--completions-per-step", "2", "--phase-steps", "1"],
        ),
        &[],
    );
    let client = reqwest::Client::new();
    let ex = &examples[0];
    // a judge outage: failed completions are answered with an error and not counted, on the
    // native endpoint as on OpenRLHF's, however often the client retries
    for _ in 0..3 {
        let (s, r) = rewards(&client, &serve, ex, 2).await;
        assert_eq!(s, 200, "{r}");
        let c = &r["items"][0]["completions"];
        assert!(c[0]["error"].is_string() && c[1]["reward"].is_null(), "{r}");
        let body = openrlhf_body(ex, &["Rest it.".to_string()]);
        let (s, _) = post(&client, &format!("{}/openrlhf/reward", serve.url), &body).await;
        assert_eq!(s, 503);
    }
    assert_eq!(
        step_phase(&client, &serve).await,
        (0, 1),
        "a judge outage moved the schedule"
    );
    // the judge is back: the two graded completions make one step
    down.store(false, Ordering::SeqCst);
    let (s, r) = rewards(&client, &serve, ex, 2).await;
    assert_eq!(s, 200, "{r}");
    assert!(r["items"][0]["completions"][0]["error"].is_null(), "{r}");
    assert_eq!(step_phase(&client, &serve).await, (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_service_on_one_state_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let a = serve_args(&train, &judge, &state, &["--phase-steps", "10"]);
    let first = Serve::start(dir.path(), &a, &[]);
    let (code, err) = serve_refused(&a, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(state.to_str().unwrap()), "{err}");
    assert!(
        err.contains(&format!("process {}", first.child.id())),
        "the other process is not named: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // the lock goes with its process, however it ends
    first.kill();
    let second = Serve::start(dir.path(), &a, &[]);
    let client = reqwest::Client::new();
    assert_eq!(step_phase(&client, &second).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_gdpo_request_leaves_its_group_and_its_retry_is_one_member() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let ex = &examples[3];
    let cs = completions(ex);
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &train,
            &judge,
            &state,
            &[
                "--objective",
                "gdpo",
                "--group-size",
                "4",
                "--group-window-secs",
                "20",
            ],
        ),
        &[],
    );
    let client = reqwest::Client::new();
    let url = format!("{}/openrlhf/reward", serve.url);
    // the rewards of the whole group in one request
    let (s, batch) = post(&client, &url, &openrlhf_body(ex, &cs)).await;
    assert_eq!(s, 200, "{batch}");
    let want = floats(&batch["rewards"]);

    let send = |i: usize| {
        let (client, url, b) = (client.clone(), url.clone(), openrlhf_body(ex, &cs[i..=i]));
        tokio::spawn(async move { post(&client, &url, &b).await })
    };
    let first = [send(0), send(1)];
    // completion 2's client gives up after a moment, then retries
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(impatient
        .post(&url)
        .json(&openrlhf_body(ex, &cs[2..3]))
        .send()
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retry = send(2);
    let last = send(3);
    let started = Instant::now();
    let mut got = Vec::new();
    for h in first.into_iter().chain([retry, last]) {
        let (s, r) = h.await.unwrap();
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["extra_logs"]["arlrr/group_size"], json!([4.0]), "{r}");
        got.push(r["rewards"][0].as_f64().unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the group waited for its window"
    );
    assert_close(&got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_state_is_refused_with_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let a = serve_args(
        &train,
        &judge,
        &state,
        &["--selector", "lookahead", "--phase-steps", "2"],
    );
    drop(Serve::start(dir.path(), &a, &[]));
    let file = state.join("schedule_state.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(saved["probe"]["candidates"].is_array(), "{saved}");
    let edits = [
        ("phase.active", "/phase/active", json!(99)),
        ("probe.candidates[1]", "/probe/candidates/1", json!(99)),
        ("probe.results", "/probe/results", json!([])),
    ];
    for (field, pointer, value) in edits {
        let mut s = saved.clone();
        *s.pointer_mut(pointer).unwrap() = value;
        std::fs::write(&file, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
        let (code, err) = serve_refused(&a, &[]);
        assert_eq!(code, Some(1), "{field}: {err}");
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains(&format!("`{field}`")),
            "{field}: {err}"
        );
    }
    // the saved state itself still loads
    std::fs::write(&file, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let serve = Serve::start(dir.path(), &a, &[]);
    let st = get(
        &reqwest::Client::new(),
        &format!("{}/v1/schedule", serve.url),
    )
    .await;
    assert_eq!(st["waiting_for"], "probe", "{st}");
}
