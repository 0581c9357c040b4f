//! The HTTP judge's rate limits through `arlrr serve`: the configured limits are on
//! `/metrics` (0 when there is none), and a grading held by them is counted there, its wait
//! included when the service abandons it at its request timeout.

use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;
use common::{fake_judge, metric, post, serve_args, task, Serve, Task};

/// A judge server that meets every criterion; counts the requests.
async fn judge_server(requests: Arc<AtomicUsize>) -> String {
    fake_judge(move |_| {
        requests.fetch_add(1, Ordering::SeqCst);
        false
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_judge_rate_limits_and_the_waits_they_cause() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge: rules,
        examples,
    } = task(dir.path());
    let client = reqwest::Client::new();

    // No limits (a rules judge): both gauges are 0, nothing waited.
    let state = dir.path().join("rules-state");
    let serve = Serve::start(dir.path(), &serve_args(&train, &rules, &state, &[]), &[]);
    for name in [
        "arlrr_judge_rate_limit_requests_per_minute",
        "arlrr_judge_rate_limit_tokens_per_minute",
        "arlrr_judge_rate_limited_waits_total",
        "arlrr_judge_rate_limit_wait_seconds_total",
    ] {
        assert_eq!(metric(&client, &serve.url, name).await, 0.0, "{name}");
    }
    drop(serve);

    // 2 requests a minute (under verl's name for it) and a token budget: an example of 11
    // criteria sends 2 at once and holds the rest 30 s, past the request timeout (3 s).
    let requests = Arc::new(AtomicUsize::new(0));
    let base_url = judge_server(requests.clone()).await;
    let judge = dir.path().join("http.toml");
    std::fs::write(
        &judge,
        format!(
            "kind = \"http\"\n[http]\nbase_url = \"{base_url}\"\nmodel = \"m\"\n\
             max_rpm = 2\nmax_tokens_per_minute = 1000000\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("http-state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--request-timeout-secs", "3"]),
        &[],
    );
    let limit = |name: &'static str| metric(&client, &serve.url, name);
    assert_eq!(
        limit("arlrr_judge_rate_limit_requests_per_minute").await,
        2.0
    );
    assert_eq!(limit("arlrr_judge_rate_limit_tokens_per_minute").await, 1e6);
    let ex = &examples[0];
    let criteria = ex["rubrics"].as_array().unwrap().len();
    assert!(
        criteria > 2,
        "the example needs more criteria than the limit"
    );
    let (status, answer) = post(
        &client,
        &format!("{}/v1/rewards", serve.url),
        &json!({"prompt_id": ex["prompt_id"], "completions": ["Rest it."]}),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.to_string().contains("timeout"), "{answer}");
    assert_eq!(requests.load(Ordering::SeqCst), 2, "the limit was not kept");
    assert_eq!(limit("arlrr_judge_backend_requests_total").await, 2.0);
    // Every criterion after the first two waited, each until the request timeout (3 s).
    assert_eq!(
        limit("arlrr_judge_rate_limited_waits_total").await,
        (criteria - 2) as f64
    );
    let waited = limit("arlrr_judge_rate_limit_wait_seconds_total").await;
    assert!(waited >= 1.0, "abandoned waits not counted: {waited}");
}
