//! `arlrr serve` under abuse and faults, through the real binary over real HTTP (issue #15):
//! step counts that would overflow, slow and piled-up connections, a state write that fails,
//! error answers (echoes, 405, arrays for objects, error types), GDPO groups that OpenRLHF
//! sends one completion at a time, and verl batches in any order.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{
    assert_close, block, completions, entries, floats, get, metric, ok, openrlhf_body, post,
    serve_args, serve_refused, task, unblock, user_text, Serve, Task,
};

async fn raw(client: &reqwest::Client, url: &str, body: String) -> (u16, String) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn decisions(state: &Path) -> usize {
    std::fs::read_to_string(state.join("schedule.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_counts_that_would_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let a = serve_args(&train, &judge, &state, &["--phase-steps", "5"]);
    let serve = Serve::start(dir.path(), &a, &[]);
    let client = reqwest::Client::new();
    let report = format!("{}/v1/schedule/report", serve.url);
    let schedule = format!("{}/v1/schedule", serve.url);

    let (s, r) = post(&client, &report, &json!({"steps": 3})).await;
    assert_eq!((s, &r["schedule"]["step"]), (200, &json!(3)), "{r}");
    for (body, field) in [
        (json!({"steps": u64::MAX}), "steps"),
        (json!({"step": u64::MAX}), "step"),
        (json!({"step": (1u64 << 53) + 1}), "step"),
    ] {
        let (s, e) = post(&client, &report, &body).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["type"], "invalid_request", "{e}");
        assert_eq!(e["error"]["field"], field, "{e}");
        let st = get(&client, &schedule).await;
        assert_eq!((&st["step"], &st["phase"]), (&json!(3), &json!(1)), "{st}");
    }
    // a report of nothing decides nothing, and a restart commits no phase
    let (s, r) = post(&client, &report, &json!({})).await;
    assert_eq!((s, &r["decision"]), (200, &Value::Null), "{r}");
    drop(serve);
    let serve = Serve::start(dir.path(), &a, &[]);
    let st = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!((&st["step"], &st["phase"]), (&json!(3), &json!(1)), "{st}");
    assert_eq!(decisions(&state), 1);

    // the largest step is taken, and the phase it starts still ends
    let report = format!("{}/v1/schedule/report", serve.url);
    let (s, r) = post(&client, &report, &json!({"step": 1u64 << 53})).await;
    assert_eq!((s, &r["decision"]["phase"]), (200, &json!(2)), "{r}");
    let (s, r) = post(&client, &report, &json!({})).await;
    assert_eq!((s, &r["decision"]), (200, &Value::Null), "{r}");
    let (s, e) = post(&client, &report, &json!({"steps": 1})).await;
    assert_eq!((s, &e["error"]["field"]), (400, &json!("steps")), "{e}");
    drop(serve);
    let serve = Serve::start(dir.path(), &a, &[]);
    let st = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(st["phase"], 2, "{st}");
    assert_eq!(decisions(&state), 2);
}

/// Half-sent requests: `count` connections that sent a request line and one header.
async fn half_open(addr: &str, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /v1/rewards HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_dropped_and_healthz_answers_under_1000_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--header-timeout-secs", "1"]),
        &[],
    );
    let conns = half_open(&serve.addr(), 1000).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let health = get(&client, &format!("{}/healthz", serve.url)).await;
    assert_eq!(health["status"], "ok");
    // every half-sent request is dropped by the service: well before hyper's default 30 s
    // would, so the configured timeout is the one in force
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        for mut c in conns {
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "half-sent requests were left open");
    let health = get(&client, &format!("{}/healthz", serve.url)).await;
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_bounds_file_descriptors_and_healthz_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &train,
            &judge,
            &state,
            &["--header-timeout-secs", "1", "--max-connections", "50"],
        ),
        &[],
    );
    let baseline = serve.fds();
    let _conns = half_open(&serve.addr(), 300).await;
    // wait (bounded) until the service holds its 50, then watch it never hold more
    let mut most = 0;
    for _ in 0..2000 {
        most = most.max(serve.fds());
        if most >= baseline + 50 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(most >= baseline + 50, "the service took {most} fds");
    for _ in 0..200 {
        most = most.max(serve.fds());
        tokio::task::yield_now().await;
    }
    assert!(
        most <= baseline + 50 + 4,
        "{most} fds open, {baseline} before the 300 connections, limit 50"
    );
    // the half-sent ones time out, so a real request gets its turn
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let health = get(&client, &format!("{}/healthz", serve.url)).await;
    assert_eq!(health["status"], "ok");
}

#[test]
fn a_connection_limit_over_ulimit_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    // `ulimit -n 512` for the service only; the default --max-connections is 4096
    let mut sh = Command::new("sh");
    sh.args(["-c", "ulimit -n 512 && exec \"$0\" serve \"$@\""])
        .arg(env!("CARGO_BIN_EXE_arlrr"));
    let serve = Serve::spawn(dir.path(), sh, &serve_args(&train, &judge, &state, &[]));
    let log = serve.log();
    assert!(log.contains("`ulimit -n` 512"), "{log}");
    drop(serve);
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--max-connections", "100"]),
        &[],
    );
    assert!(!serve.log().contains("ulimit"), "{}", serve.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_state_write_leaves_the_schedule_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    let a = serve_args(&train, &judge, &state, &["--phase-steps", "2"]);
    let serve = Serve::start(dir.path(), &a, &[]);
    let client = reqwest::Client::new();
    let report = format!("{}/v1/schedule/report", serve.url);
    let schedule = format!("{}/v1/schedule", serve.url);
    let before = get(&client, &schedule).await;
    assert_eq!(before["phase"], 1);
    let active = before["active_class"].clone();
    let log = state.join("schedule.jsonl");
    let saved = state.join("schedule_state.json");

    // root ignores permissions: a directory in the file's place fails the write for anyone (the
    // log cannot be appended to; the state, written to a temporary file of its own, cannot be
    // renamed over it)
    for blocked in [&log, &saved] {
        let lines = decisions(&state);
        let files = entries(&state);
        let content = block(blocked);
        let (s, e) = post(&client, &report, &json!({"step": 2})).await;
        assert_eq!(s, 500, "{e}");
        assert_eq!(entries(&state), files, "a temporary file was left behind");
        assert_eq!(e["error"]["type"], "state_write_failed", "{e}");
        let text = e.to_string();
        assert!(
            !text.contains(state.to_str().unwrap()) && !text.contains(".json"),
            "internal paths in the answer: {e}"
        );
        let now = get(&client, &schedule).await;
        assert_eq!(now, before, "the schedule moved");
        let ex = &examples[0];
        let (_, r) = post(
            &client,
            &format!("{}/v1/rewards", serve.url),
            &json!({"prompt_id": ex["prompt_id"], "completions": ["Rest it."]}),
        )
        .await;
        assert_eq!(r["active_class"], active, "rewards follow another class");
        unblock(blocked, &content);
        if blocked == &saved {
            assert_eq!(decisions(&state), lines, "a decision logged but not saved");
        }
    }
    assert!(
        serve.log().contains(state.to_str().unwrap()),
        "the log names the file"
    );

    // writable again: the same report decides, and the decision is on disk
    let logged = decisions(&state);
    let (s, r) = post(&client, &report, &json!({"step": 2})).await;
    assert_eq!((s, &r["decision"]["phase"]), (200, &json!(2)), "{r}");
    assert_eq!(decisions(&state), logged + 1);
    drop(serve);
    let serve = Serve::start(dir.path(), &a, &[]);
    let st = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!((&st["phase"], &st["step"]), (&json!(2), &json!(2)), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_short_typed_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(dir.path(), &serve_args(&train, &judge, &state, &[]), &[]);
    let client = reqwest::Client::new();
    let native = format!("{}/v1/rewards", serve.url);
    let openrlhf = format!("{}/openrlhf/reward", serve.url);
    let report = format!("{}/v1/schedule/report", serve.url);
    let id = examples[0]["prompt_id"].as_str().unwrap();

    // a 10 MB value is not echoed back (twice)
    let huge = "x".repeat(10 << 20);
    let mut unknown_field = json!({"prompt_id": id, "completions": ["a"]});
    unknown_field[huge.as_str()] = json!(1);
    for (url, body) in [
        (&native, json!({"prompt_id": huge, "completions": ["a"]})),
        (
            &openrlhf,
            json!({"query": ["pa"], "prompts": ["p"], "labels": [huge]}),
        ),
        (&native, json!({"prompt_id": id, "completions": huge})),
        (&native, unknown_field),
    ] {
        let (s, text) = raw(&client, url, body.to_string()).await;
        assert!((400..500).contains(&s), "{s}");
        assert!(text.len() < 10_000, "a {} byte answer", text.len());
        assert!(text.contains("xxx…"), "{}", &text[..text.len().min(500)]);
    }

    // 405 with the JSON error shape and the Allow header
    let r = client.get(&native).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "method_not_allowed", "{e}");

    // an array is not an object, at the top level or as an item
    let item = json!([id, null, ["use ice"]]);
    for (url, body, field) in [
        (&native, item.clone(), "(body)"),
        (&native, json!({"items": [item]}), "items[0]"),
        (
            &native,
            json!({"items": [{"prompt": [["user", "hi"]], "completions": ["a"]}]}),
            "items[0].prompt[0]",
        ),
        (&openrlhf, json!([["q"], ["p"], [id]]), "(body)"),
        (&report, json!({"validation": [0.5, {}]}), "validation"),
        (
            &report,
            json!({"validation_completions": [[id, null, "use ice"]]}),
            "validation_completions[0]",
        ),
    ] {
        let (s, e) = post(&client, url, &body).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["field"], field, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request", "{e}");
    }

    // bad reports are invalid requests, not schedule conflicts
    for body in [
        json!({"validation": {"classes": {"nope": 0.5}}}),
        json!({"step": 1, "steps": 1}),
    ] {
        let (s, e) = post(&client, &report, &body).await;
        assert_eq!(
            (s, &e["error"]["type"]),
            (400, &json!("invalid_request")),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdpo_groups_openrlhf_completions_sent_one_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let client = reqwest::Client::new();
    let ex = &examples[3];
    let cs = completions(ex);

    // without a group size a lone completion is refused, not rewarded 0.0
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--objective", "gdpo"]),
        &[],
    );
    let url = format!("{}/openrlhf/reward", serve.url);
    let (s, batch) = post(&client, &url, &openrlhf_body(ex, &cs)).await;
    assert_eq!(s, 200, "{batch}");
    let want = floats(&batch["rewards"]);
    assert!(want.iter().any(|r| r.abs() > 0.1), "{want:?}");
    let (s, e) = post(&client, &url, &openrlhf_body(ex, &cs[..1])).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--group-size"),
        "{e}"
    );
    drop(serve);

    // with one: the four requests of a group, sent at once, get the batch's rewards
    let state = dir.path().join("state-grouped");
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
                "30",
            ],
        ),
        &[],
    );
    let url = format!("{}/openrlhf/reward", serve.url);
    let (s, r) = post(&client, &url, &openrlhf_body(ex, &cs)).await;
    assert_eq!(s, 200, "{r}");
    assert_close(&floats(&r["rewards"]), &want);
    let singles: Vec<_> = cs
        .iter()
        .map(|c| {
            let (client, url, body) = (
                client.clone(),
                url.clone(),
                openrlhf_body(ex, std::slice::from_ref(c)),
            );
            tokio::spawn(async move { post(&client, &url, &body).await })
        })
        .collect();
    let mut got = Vec::new();
    for h in singles {
        let (s, r) = h.await.unwrap();
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["extra_logs"]["arlrr/group_size"], json!([4.0]), "{r}");
        got.extend(floats(&r["rewards"]));
    }
    assert_close(&got, &want);

    // OpenRLHF's `--reward.remote_url file.py` mode, through the shipped reward_func
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/openrlhf_reward_func.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(ex["prompt_id"].as_str().unwrap())
        .arg(user_text(ex))
        .args(&cs)
        .env("ARLRR_URL", &serve.url)
        .output()
        .expect("python3");
    ok(&out);
    let via_func: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_close(&floats(&via_func), &want);

    // a group that never fills is answered at the window's end, its size in the logs
    drop(serve);
    let state = dir.path().join("state-window");
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
                "1",
            ],
        ),
        &[],
    );
    let url = format!("{}/openrlhf/reward", serve.url);
    let (s, r) = post(&client, &url, &openrlhf_body(ex, &cs[..1])).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["extra_logs"]["arlrr/group_size"], json!([1.0]), "{r}");
    assert!(serve.log().contains("closed after"), "{}", serve.log());
}

/// `/v1/rewards` under gdpo, as engines send it when a prompt's completions are split across
/// processes or calls (TRL with several processes, verl's reward loop): without `--group-size`
/// a lone completion is refused before any judge call; with it, the parts of a group sent by
/// different clients are normalized as one group, equal to the whole group sent at once, and
/// each completion is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_gdpo_collects_a_group_split_across_requests() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let client = reqwest::Client::new();
    let ex = &examples[3];
    let cs = completions(ex);
    let rewards = |answer: &Value| -> Vec<Option<f64>> {
        answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|it| it["completions"].as_array().unwrap().clone())
            .map(|c| c["reward"].as_f64())
            .collect()
    };
    let body = |cs: &[String]| json!({"prompt_id": ex["prompt_id"], "completions": cs});

    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--objective", "gdpo"]),
        &[],
    );
    let url = format!("{}/v1/rewards", serve.url);
    let (s, whole) = post(&client, &url, &body(&cs)).await;
    assert_eq!(s, 200, "{whole}");
    let want = rewards(&whole);
    assert!(
        want.iter().any(|r| r.is_some_and(|r| r.abs() > 0.1)),
        "{want:?}"
    );
    let calls = metric(&client, &serve.url, "arlrr_judge_calls_total").await;
    let (s, e) = post(&client, &url, &body(&cs[..1])).await;
    assert_eq!(s, 400, "a lone gdpo completion was answered: {e}");
    assert_eq!(e["error"]["field"], json!("items[0].completions"), "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--group-size"),
        "{e}"
    );
    let after = metric(&client, &serve.url, "arlrr_judge_calls_total").await;
    assert_eq!(after, calls, "the refused completion was graded");
    drop(serve);

    let state = dir.path().join("state-grouped");
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
                "30",
                "--completions-per-step",
                "4",
            ],
        ),
        &[],
    );
    let url = format!("{}/v1/rewards", serve.url);
    // two clients, two completions each, at once
    let halves: Vec<_> = [cs[..2].to_vec(), cs[2..].to_vec()]
        .into_iter()
        .map(|half| {
            let (client, url, body) = (client.clone(), url.clone(), body(&half));
            tokio::spawn(async move { post(&client, &url, &body).await })
        })
        .collect();
    let mut got = Vec::new();
    for h in halves {
        let (s, r) = h.await.unwrap();
        assert_eq!(s, 200, "{r}");
        for c in r["items"][0]["completions"].as_array().unwrap() {
            assert_eq!(c["group_size"], json!(4), "{r}");
        }
        got.extend(rewards(&r));
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g.unwrap() - w.unwrap()).abs() < 1e-9,
            "split group {got:?} vs whole {want:?}"
        );
    }
    let status = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(status["step"], json!(1), "{status}");

    // evaluation traffic is never held for a group (nor refused): answered at once, not counted
    let started = std::time::Instant::now();
    let r = client
        .post(&url)
        .header("x-arlrr-eval", "1")
        .json(&body(&cs[..1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    let c = &r["items"][0]["completions"][0];
    assert_eq!(
        (&c["group_size"], &c["reward"]),
        (&json!(1), &Value::Null),
        "{r}"
    );
    assert!(c["classes"].is_object(), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the evaluation completion waited for a training group"
    );
    let waiting = metric(&client, &serve.url, "arlrr_gdpo_waiting_completions").await;
    assert_eq!(waiting, 0.0);
    let status = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(status["step"], json!(1), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verl_batches_are_grouped_by_id_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--objective", "gdpo"]),
        &[],
    );
    // three prompts' groups in order, then the same batch in an order that separates every
    // group (as verl's balance_batch may); the scores must follow each completion
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for ex in &examples[..3] {
        for c in completions(ex) {
            ids.push(ex["prompt_id"].as_str().unwrap().to_string());
            texts.push(c);
        }
    }
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import verl_reward
ids, texts = json.loads(sys.argv[2]), json.loads(sys.argv[3])
n = len(ids)
order = [(i * 5) % n for i in range(n)]
def scores(ix):
    out = verl_reward.compute_score_batch(["arlrr"] * len(ix), [texts[i] for i in ix], [ids[i] for i in ix], [None] * len(ix))
    return [d["score"] for d in out]
ordered = scores(list(range(n)))
shuffled = [0.0] * n
for pos, s in zip(order, scores(order)):
    shuffled[pos] = s
print(json.dumps([ordered, shuffled]))
"#;
    let examples_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&examples_dir)
        .arg(json!(ids).to_string())
        .arg(json!(texts).to_string())
        .env("ARLRR_URL", &serve.url)
        .output()
        .expect("python3");
    ok(&out);
    let both: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (ordered, shuffled) = (floats(&both[0]), floats(&both[1]));
    assert!(ordered.iter().any(|r| r.abs() > 0.1), "{ordered:?}");
    assert_close(&shuffled, &ordered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_answers_cannot_pin_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &train,
            &judge,
            &state,
            &[
                "--max-connections",
                "5",
                "--header-timeout-secs",
                "2",
                "--request-timeout-secs",
                "5",
                "--write-timeout-secs",
                "1",
                "--idle-timeout-secs",
                "2",
            ],
        ),
        &[],
    );
    let addr = serve.addr();
    // five connections take every slot with pipelined /metrics requests (kilobytes each),
    // whose answers they never read
    let mut hogs = Vec::new();
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let conn = socket.connect(addr.parse().unwrap()).await.unwrap();
        let (read, mut write) = conn.into_split();
        hogs.push(read);
        tokio::spawn(async move {
            for _ in 0..5000 {
                if write
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .is_err()
                {
                    break; // the service closed it
                }
            }
            // hold the write half open as a careless client would
            tokio::time::sleep(Duration::from_secs(600)).await;
            drop(write);
        });
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for _ in 0..3 {
        let health = client
            .get(format!("{}/healthz", serve.url))
            .send()
            .await
            .expect("/healthz went unanswered: the connection limit is pinned");
        assert_eq!(health.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(hogs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &train,
            &judge,
            &state,
            &["--header-timeout-secs", "60", "--idle-timeout-secs", "1"],
        ),
        &[],
    );
    let mut c = tokio::net::TcpStream::connect(serve.addr()).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut all = Vec::new();
        let _ = c.read_to_end(&mut all).await;
        all
    })
    .await
    .expect("an idle connection stayed open");
    assert!(
        String::from_utf8_lossy(&closed).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&closed)
    );
}

#[test]
fn absurd_durations_and_sizes_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    for (flag, value) in [
        ("--request-timeout-secs", "1e30"),
        ("--header-timeout-secs", "1e20"),
        ("--write-timeout-secs", "0"),
        ("--idle-timeout-secs", "NaN"),
        ("--group-window-secs", "-1"),
        ("--max-body-mib", "17592186044416"),
        ("--max-body-mib", "0"),
        ("--max-connections", "0"),
        ("--max-completions", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let (code, err) = serve_refused(&serve_args(&train, &judge, &state, &[&arg]), &[]);
        assert_eq!(code, Some(1), "{flag} {value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    // weights that give no signal are refused, not served as a constant reward
    for weights in ["accuracy=0,completeness=0", "accuracy=-1"] {
        let args = serve_args(
            &train,
            &judge,
            &state,
            &["--objective", "scalarized", "--weights", weights],
        );
        let (code, err) = serve_refused(&args, &[]);
        assert_eq!(code, Some(1), "{weights}: {err}");
        assert!(err.contains("--weights"), "{weights}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_trimmed_on_both_sides_and_the_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let a = serve_args(&train, &judge, &state, &["--token-env", "MYTOK"]);
    let serve = Serve::start(dir.path(), &a, &[("MYTOK", "s3cret\n")]);
    let client = reqwest::Client::new();
    let schedule = format!("{}/v1/schedule", serve.url);
    for (header, status) in [
        ("Bearer s3cret", 200),
        ("bearer s3cret", 200),
        ("BEARER  s3cret ", 200),
        ("Bearer s3cret\t", 200),
        ("Bearer s3cre", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
    ] {
        let r = client
            .get(&schedule)
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{header:?}");
    }
    drop(serve);
    // a token no header can carry is refused at start, not answered 401 forever
    for bad in ["s3 cret", "   ", "s3cr\u{e9}t"] {
        let (code, err) = serve_refused(&a, &[("MYTOK", bad)]);
        assert_eq!(code, Some(1), "{bad:?}: {err}");
        assert!(err.contains("MYTOK"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_content_length_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--request-timeout-secs", "60"]),
        &[],
    );
    let mut c = tokio::net::TcpStream::connect(serve.addr()).await.unwrap();
    c.write_all(
        b"POST /v1/rewards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 99999999999\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut answer))
        .await
        .expect("no answer until the request timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_scores_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Task { train, judge, .. } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--selector", "deficit"]),
        &[],
    );
    let client = reqwest::Client::new();
    let report = format!("{}/v1/schedule/report", serve.url);
    for (body, field) in [
        (
            json!({"validation": {"overall": 7.5}}),
            "validation.overall",
        ),
        (
            json!({"validation": {"classes": {"accuracy": -0.2}}}),
            "validation.classes.accuracy",
        ),
    ] {
        let (s, e) = post(&client, &report, &body).await;
        assert_eq!((s, &e["error"]["field"]), (400, &json!(field)), "{e}");
    }
    let (s, r) = post(
        &client,
        &report,
        &json!({"validation": {"overall": 1.0, "classes": {"accuracy": 0.0}}}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
}

/// OpenRLHF's URL mode sends no headers, so an `eval:` label prefix marks its evaluation
/// completions: graded and answered as any other, never counted, never held for a GDPO group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openrlhf_eval_labels_are_answered_but_never_counted() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let client = reqwest::Client::new();
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
                "--completions-per-step",
                "1",
            ],
        ),
        &[],
    );
    let url = format!("{}/openrlhf/reward", serve.url);
    let mut body = openrlhf_body(ex, &cs[..1]);
    let id = ex["prompt_id"].as_str().unwrap();
    body["labels"] = json!([format!("eval:{id}")]);
    let (s, r) = post(&client, &url, &body).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["extra_logs"]["arlrr/group_size"], json!([1.0]), "{r}");
    let status = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(
        status["step"],
        json!(0),
        "evaluation moved the schedule: {status}"
    );

    // a batch mixing evaluation and training is refused, naming the first training label
    let mut mixed = openrlhf_body(ex, &cs[..2]);
    mixed["labels"] = json!([format!("eval:{id}"), id]);
    let (s, e) = post(&client, &url, &mixed).await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["field"], json!("labels[1]"), "{e}");

    // the same completion as training traffic counts
    let (s, r) = post(&client, &url, &openrlhf_body(ex, &cs)).await;
    assert_eq!(s, 200, "{r}");
    let status = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(status["step"], json!(4), "{status}");
}
