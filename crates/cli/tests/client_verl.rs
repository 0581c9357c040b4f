//! `examples/verl_reward.py` (standard library only) against a live `arlrr serve`: the dict verl
//! gets per response (`score`, every class, `overall`, `<key>_defined`) equals the service's
//! answer, sync and async alike; classes answered null do not crash it; a failed grading is
//! retried and then raised, never a 0.0; evaluation rows are not counted as training steps.
//! The check through verl's own code is `scripts/engines/check_verl.py`.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

mod common;
use common::{completions, fake_judge, get, http_judge, ok, post, serve_args, task, Serve, Task};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `python3 examples/verl_reward.py ARGS` against `url`, with extra environment variables.
fn verl_cli(url: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new("python3")
        .arg(examples_dir().join("verl_reward.py"))
        .args(args)
        .env("ARLRR_URL", url)
        .env_remove("ARLRR_TOKEN")
        .envs(envs.iter().copied())
        .output()
        .expect("python3")
}

/// The JSON list the CLI prints; fails the test with its stderr when it did not succeed.
fn verl_dicts(url: &str, args: &[&str]) -> Vec<Value> {
    let out = verl_cli(url, args, &[]);
    assert!(
        out.status.success(),
        "verl_reward.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A Python snippet with `examples/` on the path, `verl_reward` imported as `v`.
fn python(url: &str, code: &str) -> Output {
    let prelude = format!(
        "import sys, json, asyncio\nsys.path.insert(0, {:?})\nimport verl_reward as v\n",
        examples_dir().to_str().unwrap()
    );
    Command::new("python3")
        .args(["-c", &(prelude + code)])
        .env("ARLRR_URL", url)
        .env_remove("ARLRR_TOKEN")
        .output()
        .expect("python3")
}

/// What verl must get for one completion of a native answer: the scalar, each class and the
/// overall score, null as 0.0 with `_defined` 0.0.
fn expected(answer: &Value, c: &Value) -> Value {
    let mut want = serde_json::Map::new();
    want.insert("score".into(), json!(c["reward"].as_f64().unwrap_or(0.0)));
    let mut keys: Vec<String> = answer["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    keys.push("overall".into());
    for k in keys {
        let v = if k == "overall" {
            &c["overall"]
        } else {
            &c["classes"][&k]
        };
        want.insert(k.clone(), json!(v.as_f64().unwrap_or(0.0)));
        let defined = if v.is_f64() { 1.0 } else { 0.0 };
        want.insert(format!("{k}_defined"), json!(defined));
    }
    Value::Object(want)
}

async fn native(client: &reqwest::Client, url: &str, id: &Value, cs: &[String]) -> Value {
    let (s, r) = post(
        client,
        &format!("{url}/v1/rewards"),
        &json!({"items": [{"prompt_id": id, "completions": cs}]}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verl_dict_is_the_services_answer_sync_async_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&t.train, &t.judge, &state, &["--objective", "scalarized"]),
        &[],
    );
    let client = reqwest::Client::new();
    for ex in [&t.examples[0], &t.examples[5]] {
        let cs = completions(ex);
        let answer = native(&client, &serve.url, &ex["prompt_id"], &cs).await;
        let want: Vec<Value> = answer["items"][0]["completions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| expected(&answer, c))
            .collect();
        // the classes have values that differ from 0 and from each other, so a mix-up shows
        assert!(
            want.iter()
                .any(|w| w["accuracy"] != w["completeness"] && w["accuracy"] != json!(0.0)),
            "{want:?}"
        );
        let id = ex["prompt_id"].as_str().unwrap();
        let mut args = vec![id];
        args.extend(cs.iter().map(String::as_str));
        assert_eq!(verl_dicts(&serve.url, &args), want, "compute_score");
        let mut args_async = vec!["--async"];
        args_async.extend(&args);
        assert_eq!(
            verl_dicts(&serve.url, &args_async),
            want,
            "compute_score_async"
        );
    }

    // the verl <= 0.7.0 batch function: two prompts interleaved, answered in the batch's order
    let (a, b) = (&t.examples[0], &t.examples[5]);
    let (ca, cb) = (completions(a), completions(b));
    let ra = native(&client, &serve.url, &a["prompt_id"], &ca).await;
    let rb = native(&client, &serve.url, &b["prompt_id"], &cb).await;
    let texts = vec![&ca[0], &cb[0], &ca[1], &cb[1]];
    let ids = vec![
        &a["prompt_id"],
        &b["prompt_id"],
        &a["prompt_id"],
        &b["prompt_id"],
    ];
    let code = format!(
        "print(json.dumps(v.compute_score_batch(['x'] * 4, {}, {}, [{{}}] * 4)))",
        json!(texts),
        json!(ids)
    );
    let out = python(&serve.url, &code);
    ok(&out);
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = |r: &Value, i: usize| expected(r, &r["items"][0]["completions"][i]);
    assert_eq!(got, json!([c(&ra, 0), c(&rb, 0), c(&ra, 1), c(&rb, 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classes_answered_null_are_zero_with_defined_zero_and_every_dict_has_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    // --grade active: only the active class is graded, the others and overall come back null
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &t.train,
            &t.judge,
            &state,
            &["--objective", "alternating", "--grade", "active"],
        ),
        &[],
    );
    let client = reqwest::Client::new();
    let ex = &t.examples[2];
    let cs = completions(ex);
    let answer = native(&client, &serve.url, &ex["prompt_id"], &cs).await;
    let active = answer["active_class"].as_str().unwrap().to_string();
    let c0 = &answer["items"][0]["completions"][0];
    assert!(
        c0["overall"].is_null() && c0["classes"].as_object().unwrap().len() > 1,
        "{answer}"
    );
    let id = ex["prompt_id"].as_str().unwrap();
    let mut args = vec!["--async", id];
    args.extend(cs.iter().map(String::as_str));
    let got = verl_dicts(&serve.url, &args);
    for (g, c) in got
        .iter()
        .zip(answer["items"][0]["completions"].as_array().unwrap())
    {
        assert_eq!(g, &expected(&answer, c));
        assert_eq!(g["overall_defined"], json!(0.0), "{g}");
        assert_eq!(g[format!("{active}_defined")], json!(1.0), "{g}");
        assert_eq!(g["score"], c["reward"], "the reward is the active class's");
        assert!(
            g.as_object().unwrap().values().all(Value::is_f64),
            "verl needs numbers in every key: {g}"
        );
    }
    let keys = |d: &Value| d.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert!(got.iter().all(|d| keys(d) == keys(&got[0])));

    // a failed completion's answer (classes null, an error) is never read as a reward
    let failed = json!({"objective": "alternating", "classes": answer["classes"],
        "items": [{"completions": [{"reward": null, "overall": null, "classes": null,
                                    "error": "judge failed: HTTP 500"}]}]});
    let out = python(
        &serve.url,
        &format!(
            "try:\n    print(v.to_verl(json.loads({:?})))\nexcept v._Retry as e:\n    print('retry:', e)\n",
            failed.to_string()
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("retry: grading failed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_rows_are_graded_but_never_counted_as_steps() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &t.train,
            &t.judge,
            &state,
            &["--completions-per-step", "4", "--phase-steps", "1"],
        ),
        &[],
    );
    let client = reqwest::Client::new();
    let step = |client: reqwest::Client, url: String| async move {
        get(&client, &format!("{url}/v1/schedule")).await["step"]
            .as_u64()
            .unwrap()
    };
    let ex = &t.examples[1];
    let cs = completions(ex);
    let id = ex["prompt_id"].as_str().unwrap();
    for mode in [&["--eval"][..], &["--eval", "--async"][..]] {
        let mut args = mode.to_vec();
        args.push(id);
        args.extend(cs.iter().map(String::as_str));
        let got = verl_dicts(&serve.url, &args);
        assert_eq!(got.len(), 4);
        assert_eq!(step(client.clone(), serve.url.clone()).await, 0, "{mode:?}");
    }
    // the same rows as training rows: 4 completions make one step
    let mut args = vec!["--async", id];
    args.extend(cs.iter().map(String::as_str));
    verl_dicts(&serve.url, &args);
    assert_eq!(step(client.clone(), serve.url.clone()).await, 1);
    // verl's validation rows as its preprocessing writes them, and the explicit flag
    let code = "for info in [{'split': 'test', 'index': 3}, {'split': 'val'}, {'arlrr_eval': True}]:\n    \
                v.compute_score('x', 'Rest it.', ID, info)\n"
        .replace("ID", &format!("{id:?}"));
    let out = python(&serve.url, &code);
    ok(&out);
    assert_eq!(step(client.clone(), serve.url.clone()).await, 1);
    let code =
        "for i in range(4):\n    v.compute_score('x', 'Rest it %d.' % i, ID, {'split': 'train'})\n"
            .replace("ID", &format!("{id:?}"));
    let out = python(&serve.url, &code);
    ok(&out);
    assert_eq!(step(client, serve.url.clone()).await, 2);
}

/// A judge that answers HTTP 500 while `down` is set and a met verdict otherwise; counts calls.
async fn flaky_judge(down: Arc<AtomicBool>, calls: Arc<AtomicUsize>) -> String {
    fake_judge(move |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        down.load(Ordering::SeqCst)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_grading_is_retried_then_raised_never_a_zero() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train, examples, ..
    } = task(dir.path());
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let base_url = flaky_judge(down.clone(), calls.clone()).await;
    let judge = http_judge(dir.path(), &base_url);
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &train,
            &judge,
            &state,
            &["--objective", "scalarized", "--completions-per-step", "1"],
        ),
        &[],
    );
    let id = examples[0]["prompt_id"].as_str().unwrap().to_string();
    let fast = [("ARLRR_RETRIES", "2"), ("ARLRR_BACKOFF_SECS", "0.05")];
    for mode in [&[][..], &["--async"][..]] {
        let before = calls.load(Ordering::SeqCst);
        let mut args = mode.to_vec();
        args.extend([id.as_str(), "Rest it and use ice."]);
        let out = verl_cli(&serve.url, &args, &fast);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{mode:?} gave a reward: {stdout}");
        assert!(stdout.trim().is_empty(), "{stdout}");
        assert!(
            stderr.contains("no reward") && stderr.contains("after 3 tries"),
            "{stderr}"
        );
        assert!(!stderr.contains("AttributeError"), "{stderr}");
        // three tries reached the judge three times (at least once per try)
        assert!(calls.load(Ordering::SeqCst) - before >= 3, "{mode:?}");
    }
    // a transport failure is retried and raised the same way
    let out = verl_cli("http://127.0.0.1:9", &["--async", &id, "x"], &fast);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("after 3 tries"));
    // nothing failed was counted
    let client = reqwest::Client::new();
    let st = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(st["step"], 0, "{st}");

    // the judge comes back while the client is backing off: its retry gets the real reward
    let py = Command::new("python3")
        .arg(examples_dir().join("verl_reward.py"))
        .args(["--async", &id, "Rest it and use ice."])
        .env("ARLRR_URL", &serve.url)
        .env("ARLRR_RETRIES", "8")
        .env("ARLRR_BACKOFF_SECS", "0.2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let before = calls.load(Ordering::SeqCst);
    while calls.load(Ordering::SeqCst) == before {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    down.store(false, Ordering::SeqCst);
    let out = py.wait_with_output().unwrap();
    ok(&out);
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = native(
        &client,
        &serve.url,
        &json!(id),
        &["Rest it and use ice.".to_string()],
    )
    .await;
    let c = &answer["items"][0]["completions"][0];
    assert!(c["reward"].is_f64(), "{answer}");
    assert_eq!(got, json!([expected(&answer, c)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_completion_gdpo_call_without_group_size_is_an_error_not_a_zero() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&t.train, &t.judge, &state, &["--objective", "gdpo"]),
        &[],
    );
    let id = t.examples[0]["prompt_id"].as_str().unwrap();
    for mode in ["--sync", "--async"] {
        let args: Vec<&str> = [mode, id, "Rest it and use ice."]
            .into_iter()
            .filter(|a| *a != "--sync")
            .collect();
        let out = verl_cli(&serve.url, &args, &[("ARLRR_RETRIES", "0")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.contains("--group-size"), "{mode}: {stderr}");
    }
}

/// With `--group-size`, one-completion calls of a prompt wait for each other across requests;
/// concurrent async calls (as verl's reward loop makes them) get the rewards that one request
/// with the whole group gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_gdpo_with_group_size_equals_one_request_with_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let ex = &t.examples[3];
    let cs = completions(ex);
    let id = ex["prompt_id"].as_str().unwrap();
    let state = dir.path().join("state");
    let whole = {
        let serve = Serve::start(
            dir.path(),
            &serve_args(&t.train, &t.judge, &state, &["--objective", "gdpo"]),
            &[],
        );
        let client = reqwest::Client::new();
        native(&client, &serve.url, &ex["prompt_id"], &cs).await
    };
    let state = dir.path().join("state2");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &t.train,
            &t.judge,
            &state,
            &["--objective", "gdpo", "--group-size", "4"],
        ),
        &[],
    );
    let mut args = vec!["--async", id];
    args.extend(cs.iter().map(String::as_str));
    let got = verl_dicts(&serve.url, &args);
    let want: Vec<Value> = whole["items"][0]["completions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| expected(&whole, c))
        .collect();
    assert!(want.iter().any(|w| w["score"] != json!(0.0)), "{want:?}");
    // the collected group is normalized in the order its members arrived, so the score's sums
    // may differ from the one request's in the last bit; every other field is exact
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!(
            (gs - ws).abs() <= 1e-12 * ws.abs().max(1.0),
            "{got:?}\n{want:?}"
        );
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("score");
            v
        };
        assert_eq!(strip(g), strip(w));
    }
}
