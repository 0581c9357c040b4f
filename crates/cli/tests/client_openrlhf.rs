//! OpenRLHF's `.py` reward path through `examples/openrlhf_reward_func.py` against the real
//! service: its rollout actor's request pattern (one completion per call, every sample of every
//! prompt at once, in the event loop's bounded default thread pool), replayed by
//! `scripts/engines/check_openrlhf.py` from openrlhf 0.11.2 (PyPI wheel; git 3c3be62,
//! `openrlhf/utils/agent.py:286-325`, `openrlhf/trainer/ray/vllm_engine.py:37-59,183-206`), and
//! the function's retries against a judge that fails, then recovers.
//! With an openrlhf install (`ARLRR_OPENRLHF_PYTHON`, or a venv at
//! `~/.cache/arlrr/engines/openrlhf`) the same runs through OpenRLHF's own
//! `SingleTurnAgentExecutor` as well.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_close, chatml, completions, fake_judge, floats, get, http_judge, openrlhf_body, post,
    repo, serve_args, task, user_text, Serve,
};

fn reward_func() -> PathBuf {
    repo().join("examples/openrlhf_reward_func.py")
}

/// The `--cases` file: each example's chat prompt and its four completions.
fn cases(dir: &Path, examples: &[Value]) -> PathBuf {
    let cases: Vec<Value> = examples
        .iter()
        .map(|ex| {
            json!({"label": ex["prompt_id"], "prompt": chatml(&user_text(ex)),
                   "completions": completions(ex)})
        })
        .collect();
    let path = dir.join("cases.json");
    std::fs::write(&path, serde_json::to_vec(&cases).unwrap()).unwrap();
    path
}

/// `check_openrlhf.py ARGS` with `python`; its JSON report.
fn replay(
    python: &str,
    serve: &Serve,
    cases: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Value {
    let out_file = cases.with_file_name("report.json");
    let _ = std::fs::remove_file(&out_file);
    let out = Command::new(python)
        .arg(repo().join("scripts/engines/check_openrlhf.py"))
        .arg("--func")
        .arg(reward_func())
        .arg("--cases")
        .arg(cases)
        .arg("--out")
        .arg(&out_file)
        .args(args)
        .env("ARLRR_URL", &serve.url)
        .envs(envs.iter().copied())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap()
}

fn samples(report: &Value) -> &Vec<Value> {
    report["samples"].as_array().unwrap()
}

/// Every sample rewarded, in a group of `n`, with the reward a whole-group batch request gets.
fn assert_whole_groups(report: &Value, n: f64, want: &HashMap<(String, u64), f64>) {
    let s = samples(report);
    assert_eq!(s.len(), want.len(), "{report}");
    for x in s {
        assert!(x["error"].is_null(), "{x}\n{report}");
        assert_eq!(x["group_size"].as_f64(), Some(n), "a partial group: {x}");
        let key = (
            x["label"].as_str().unwrap().to_string(),
            x["completion"].as_u64().unwrap(),
        );
        let (got, exp) = (x["reward"].as_f64().unwrap(), want[&key]);
        assert!((got - exp).abs() < 1e-9, "{key:?}: {got} vs {exp}");
    }
}

async fn step(client: &reqwest::Client, serve: &Serve) -> u64 {
    get(client, &format!("{}/v1/schedule", serve.url)).await["step"]
        .as_u64()
        .unwrap()
}

/// The Python of an openrlhf install, if there is one.
fn openrlhf_python() -> Option<String> {
    rubric::assets::engine_python("openrlhf", "ARLRR_OPENRLHF_PYTHON", &["openrlhf"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openrlhf_singles_from_a_bounded_pool_fill_every_gdpo_group() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let examples = &t.examples[..12];
    let state = dir.path().join("state");
    // 12 prompts x 4 samples = 48 calls at once in a pool of 4, as 32 threads take
    // rollout_batch_size x n_samples_per_prompt calls on a rollout actor
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &t.train,
            &t.judge,
            &state,
            &[
                "--objective",
                "gdpo",
                "--group-size",
                "4",
                "--group-window-secs",
                "20",
                "--completions-per-step",
                "4",
            ],
        ),
        &[],
    );
    let client = reqwest::Client::new();

    // what each completion gets when its group comes in one request
    let mut want = HashMap::new();
    for ex in examples {
        let body = openrlhf_body(ex, &completions(ex));
        let (s, r) = post(&client, &format!("{}/openrlhf/reward", serve.url), &body).await;
        assert_eq!(s, 200, "{r}");
        for (i, x) in r["rewards"].as_array().unwrap().iter().enumerate() {
            let id = ex["prompt_id"].as_str().unwrap().to_string();
            want.insert((id, i as u64), x.as_f64().unwrap());
        }
    }
    assert!(want.values().any(|r| r.abs() > 0.1), "{want:?}");
    assert_eq!(step(&client, &serve).await, 12);
    let cases = cases(dir.path(), examples);

    // the file loaded in the actor's running loop (as OpenRLHF does), and outside it
    for load in ["in-loop", "outside"] {
        let r = replay(
            "python3",
            &serve,
            &cases,
            &["--pool", "4", "--load", load],
            &[],
        );
        assert_whole_groups(&r, 4.0, &want);
        let secs = r["seconds"].as_f64().unwrap();
        assert!(
            secs < 10.0,
            "{load}: groups waited for their window: {secs}s"
        );
        // a thread per waiting call, beyond the pool of 4
        assert!(r["peak_threads"].as_u64().unwrap() > 4 + 12, "{r}");
    }
    assert_eq!(step(&client, &serve).await, 12 + 12 + 12);

    // evaluation rollouts (labels `eval:<id>`) are answered at once, never held for (or mixed
    // into) a training group, and never counted; their GDPO reward is no signal (a lone
    // completion), their scores and per-class logs are the graded ones
    let r = replay("python3", &serve, &cases, &["--pool", "4", "--eval"], &[]);
    assert_eq!(samples(&r).len(), want.len(), "{r}");
    for x in samples(&r) {
        assert!(x["error"].is_null(), "{x}");
        assert_eq!(x["group_size"].as_f64(), Some(1.0), "{x}");
    }
    assert!(r["seconds"].as_f64().unwrap() < 10.0, "{r}");
    assert_eq!(
        step(&client, &serve).await,
        36,
        "evaluation traffic moved the schedule"
    );

    // through OpenRLHF's own SingleTurnAgentExecutor, where openrlhf is installed
    match openrlhf_python() {
        Some(python) => {
            let r = replay(
                &python,
                &serve,
                &cases,
                &["--engine", "openrlhf", "--pool", "4"],
                &[],
            );
            assert!(r["openrlhf"].is_string(), "{r}");
            assert_whole_groups(&r, 4.0, &want);
            assert!(r["seconds"].as_f64().unwrap() < 10.0, "{r}");
            assert_eq!(step(&client, &serve).await, 48);
        }
        None => eprintln!(
            "no openrlhf install (ARLRR_OPENRLHF_PYTHON or ~/.cache/arlrr/engines/openrlhf): \
             OpenRLHF's own executor not run, the replay only"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_wide_pool_the_bounded_pool_starves_gdpo_groups() {
    // the control: what the replay sees from a function that waits in the stock pool
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &t.train,
            &t.judge,
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
    let cases = cases(dir.path(), &t.examples[..4]);
    let r = replay(
        "python3",
        &serve,
        &cases,
        &["--pool", "2"],
        &[("ARLRR_REWARD_THREADS", "0")],
    );
    let partial = samples(&r)
        .iter()
        .filter(|x| x["group_size"].as_f64() != Some(4.0))
        .count();
    assert!(partial > 0, "no group was cut short: {r}");
    assert!(r["seconds"].as_f64().unwrap() >= 1.0, "{r}");
    assert!(serve.log().contains("closed after"), "{}", serve.log());
}

/// A judge that answers HTTP 500 while `down` is set and a verdict otherwise; counts requests.
async fn flaky_judge(down: Arc<AtomicBool>, calls: Arc<AtomicUsize>) -> String {
    fake_judge(move |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        down.load(Ordering::SeqCst)
    })
    .await
}

/// `openrlhf_reward_func.py ID PROMPT COMPLETION...` (one call per completion, all at once).
fn func_cli(serve_url: &str, ex: &Value, cs: &[String], envs: &[(&str, &str)]) -> Output {
    Command::new("python3")
        .arg(reward_func())
        .arg(ex["prompt_id"].as_str().unwrap())
        .arg(user_text(ex))
        .args(cs)
        .env("ARLRR_URL", serve_url)
        .env("ARLRR_BACKOFF_SECS", "0.1")
        .env("ARLRR_BACKOFF_MAX_SECS", "0.5")
        .envs(envs.iter().copied())
        .output()
        .expect("python3")
}

fn retries_logged(out: &Output) -> usize {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("; try "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reward_func_retries_a_judge_outage_and_never_makes_up_a_reward() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let base_url = flaky_judge(down.clone(), calls.clone()).await;
    let judge = http_judge(dir.path(), &base_url);
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(
            &t.train,
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
    let client = reqwest::Client::new();
    let ex = &t.examples[0];
    let cs = completions(ex);

    // down for good: a bounded number of tries for each of the group's four calls, then an
    // error naming the last answer
    let start = Instant::now();
    let out = func_cli(&serve.url, ex, &cs, &[("ARLRR_RETRIES", "2")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a reward was made up: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("failed 3 tries") && err.contains("503 judge_unavailable"),
        "{err}"
    );
    assert_eq!(retries_logged(&out), 4 * 2, "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // down, then back after 2 s: the four concurrent calls of a group retry into one group
    let before = calls.load(Ordering::SeqCst);
    let back = tokio::spawn({
        let down = down.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            down.store(false, Ordering::SeqCst);
        }
    });
    let start = Instant::now();
    let url = serve.url.clone();
    let (ex2, cs2) = (ex.clone(), cs.clone());
    let out =
        tokio::task::spawn_blocking(move || func_cli(&url, &ex2, &cs2, &[("ARLRR_RETRIES", "30")]))
            .await
            .unwrap();
    back.await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(retries_logged(&out) >= 4, "no retries seen: {err}");
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(
        calls.load(Ordering::SeqCst) > before,
        "the judge was never asked"
    );
    let got: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    let (s, batch) = post(
        &client,
        &format!("{}/openrlhf/reward", serve.url),
        &openrlhf_body(ex, &cs),
    )
    .await;
    assert_eq!(s, 200, "{batch}");
    assert_eq!(got.len(), 4);
    assert_close(&got, &floats(&batch["rewards"]));
    // the outage counted nothing: one step for the retried group, one for the batch
    assert_eq!(step(&client, &serve).await, 2);

    // a request the service refuses (an unknown id, 422) is not retried
    let unknown = json!({"prompt_id": "no-such-id", "prompt": [{"role": "user", "content": "hi"}]});
    let out = func_cli(&serve.url, &unknown, &cs[..1], &[("ARLRR_RETRIES", "5")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refused the request: 422"), "{err}");
    assert_eq!(retries_logged(&out), 0, "{err}");

    // no service at all: connection errors are retried, then raised
    drop(serve);
    let out = func_cli(
        "http://127.0.0.1:9",
        ex,
        &cs[..1],
        &[("ARLRR_RETRIES", "1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("failed 2 tries"), "{err}");
    assert_eq!(retries_logged(&out), 1, "{err}");
}
