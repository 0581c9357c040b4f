//! The TRL client (`examples/trl_reward.py`, standard library only) against a live
//! `arlrr serve`, called as TRL 1.16's `GRPOTrainer._calculate_rewards` calls reward functions:
//! per-class functions equal the service's classes at one request per batch, failed gradings
//! come back as None after bounded retries, steps are reported by rank 0 only (the other ranks
//! wait for them), and evaluation calls carry `x-arlrr-eval` and are never counted.
//! The real GRPOTrainer run, with torch, is scripts/engines/check_trl.py.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{
    completions, fake_judge, get, http_judge, metric, ok, post, serve_args, task, Serve, Task,
};

/// What every snippet starts with: the client, a stand-in for the trainer TRL hands over
/// (`log_metric` is its bound method; `model.training` is False in `evaluate()`) and `call`,
/// which calls a reward function with TRL's keyword arguments.
const PRELUDE: &str = r#"
import json, os, sys
sys.path.insert(0, os.environ["EXAMPLES"])
import trl_reward as t

class Model:
    training = True

class Trainer:
    def __init__(self, training=True):
        self.model = Model()
        self.model.training = training
        self.logged = {}

    def log_metric(self, name, value):
        self.logged.setdefault(name, []).append(value)

class State:
    def __init__(self, step):
        self.global_step = step

def call(f, ids, texts, step=None, trainer=None):
    trainer = trainer or Trainer()
    return f(prompts=[""] * len(texts), completions=texts, completion_ids=[[0]] * len(texts),
             prompt_id=ids, trainer_state=None if step is None else State(step),
             log_extra=lambda *a: None, log_metric=trainer.log_metric)
"#;

/// `python3 -c PRELUDE+code` against `url`, started (not waited for).
fn python(url: &str, code: &str, envs: &[(&str, &str)]) -> std::process::Child {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    Command::new("python3")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{code}"))
        .env("EXAMPLES", examples)
        .env("ARLRR_URL", url)
        .env("ARLRR_BACKOFF_SECS", "0.01")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// The JSON a snippet printed.
fn output(child: std::process::Child) -> Value {
    let out = child.wait_with_output().unwrap();
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

fn run(url: &str, code: &str, envs: &[(&str, &str)]) -> Value {
    output(python(url, code, envs))
}

async fn requests(client: &reqwest::Client, serve: &Serve, endpoint: &str) -> f64 {
    let name = format!("arlrr_requests_total{{endpoint=\"{endpoint}\",status=\"200\"}}");
    let text = client
        .get(format!("{}/metrics", serve.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    match text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
    {
        Some(v) => v.parse().unwrap(),
        None => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_class_functions_equal_the_service_classes_at_one_request_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    let args = serve_args(&train, &judge, &state, &["--objective", "scalarized"]);
    let serve = Serve::start(dir.path(), &args, &[]);
    let client = reqwest::Client::new();
    // two prompts' groups in one batch, as TRL lays them out
    let (a, b) = (&examples[0], &examples[4]); // 4 has no instruction_following criterion
    let texts: Vec<String> = completions(a).into_iter().chain(completions(b)).collect();
    let ids: Vec<&Value> = [a, b]
        .iter()
        .flat_map(|e| std::iter::repeat_n(&e["prompt_id"], 4))
        .collect();
    let body = json!({"items": [
        {"prompt_id": a["prompt_id"], "completions": &texts[..4]},
        {"prompt_id": b["prompt_id"], "completions": &texts[4..]},
    ]});
    let (s, want) = post(&client, &format!("{}/v1/rewards", serve.url), &body).await;
    assert_eq!(s, 200, "{want}");
    let code = format!(
        "ids, texts = {}, {}\n\
         funcs = t.class_rewards(overall=True) + [t.arlrr_reward]\n\
         trainer = Trainer()\n\
         got = {{f.__name__: call(f, ids, texts, trainer=trainer) for f in funcs}}\n\
         print(json.dumps({{'got': got, 'logged': trainer.logged}}))",
        json!(ids),
        json!(texts)
    );
    let before = requests(&client, &serve, "/v1/rewards").await;
    let out = run(&serve.url, &code, &[]);
    let after = requests(&client, &serve, "/v1/rewards").await;
    assert_eq!(after - before, 1.0, "seven functions, one request: {out}");

    let got = &out["got"];
    let answered: Vec<&Value> = want["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|it| it["completions"].as_array().unwrap())
        .collect();
    let classes = want["classes"].as_array().unwrap();
    assert_eq!(got.as_object().unwrap().len(), classes.len() + 2, "{got}");
    let mut nulls = 0;
    for class in classes {
        let class = class.as_str().unwrap();
        let column: Vec<&Value> = answered.iter().map(|c| &c["classes"][class]).collect();
        nulls += column.iter().filter(|v| v.is_null()).count();
        assert_eq!(got[format!("arlrr_{class}")], json!(column), "{class}");
        // logged once per completion where defined: TRL's average is the mean over them
        let defined: Vec<f64> = column.iter().filter_map(|v| v.as_f64()).collect();
        let logged = out["logged"][format!("arlrr/{class}")]
            .as_array()
            .map(|v| v.len())
            .unwrap_or(0);
        assert_eq!(logged, defined.len(), "{class}: {}", out["logged"]);
    }
    assert!(nulls > 0, "the batch should hold a class with no signal");
    let overall: Vec<&Value> = answered.iter().map(|c| &c["overall"]).collect();
    assert_eq!(got["arlrr_overall"], json!(overall));
    let reward: Vec<&Value> = answered.iter().map(|c| &c["reward"]).collect();
    assert_eq!(got["arlrr_reward"], json!(reward));
    assert_eq!(out["logged"]["arlrr/failed"], json!(vec![0.0; 8]));
}

/// A judge that answers HTTP 500 for every grading of a completion holding `FAILME`, and a
/// verdict otherwise; counts the failed requests.
async fn judge_failing_on_marker(failed: Arc<AtomicUsize>) -> String {
    fake_judge(move |body| {
        let fail = body.contains("FAILME");
        if fail {
            failed.fetch_add(1, Ordering::SeqCst);
        }
        fail
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_gradings_are_retried_then_come_back_as_none_never_zero() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train, examples, ..
    } = task(dir.path());
    let failed = Arc::new(AtomicUsize::new(0));
    let base_url = judge_failing_on_marker(failed.clone()).await;
    let judge = http_judge(dir.path(), &base_url);
    let state = dir.path().join("state");
    let args = serve_args(&train, &judge, &state, &["--objective", "scalarized"]);
    let serve = Serve::start(dir.path(), &args, &[]);
    let client = reqwest::Client::new();
    let id = &examples[0]["prompt_id"];
    let code = format!(
        "ids, texts = [{id}] * 3, ['Rest it and use ice.', 'FAILME', 'See a doctor.']\n\
         trainer = Trainer()\n\
         got = {{f.__name__: call(f, ids, texts, trainer=trainer)\n\
                for f in [t.arlrr_reward] + t.class_rewards(['accuracy'])}}\n\
         print(json.dumps({{'got': got, 'failed': trainer.logged['arlrr/failed']}}))"
    );
    let out = run(&serve.url, &code, &[("ARLRR_RETRIES", "2")]);
    for (name, values) in out["got"].as_object().unwrap() {
        let v = values.as_array().unwrap();
        assert!(v[0].is_f64() && v[2].is_f64(), "{name}: {values}");
        assert!(
            v[1].is_null(),
            "{name}: a failed grading must be None: {values}"
        );
    }
    assert_eq!(out["failed"], json!([0.0, 1.0, 0.0]));
    // the batch once, then the failed completion alone twice; both functions read one answer
    assert_eq!(requests(&client, &serve, "/v1/rewards").await, 3.0);
    let per_attempt = failed.load(Ordering::SeqCst);
    assert!(per_attempt > 0, "the judge was never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_come_from_rank_0_once_and_evaluation_is_never_counted() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    let args = serve_args(&train, &judge, &state, &["--phase-steps", "1"]);
    let serve = Serve::start(dir.path(), &args, &[]);
    let client = reqwest::Client::new();
    let ex = &examples[2];
    let call = |step: usize| {
        format!(
            "ids, texts = [{}] * 2, ['Rest it.', 'Drink fluids.']\n\
             ans = t._grade([''] * 2, texts, ids, State({step}), log_metric=Trainer().log_metric)\n\
             print(json.dumps({{'active': ans[0]['active_class'], 'step': ans[0]['step']}}))",
            ex["prompt_id"]
        )
    };
    // rank 1 asks for step 3's rewards first: it waits until rank 0 has reported step 3
    let rank1 = python(&serve.url, &call(3), &[("RANK", "1")]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        get(&client, &format!("{}/v1/schedule", serve.url)).await["step"],
        0
    );
    let rank0 = run(&serve.url, &call(3), &[("RANK", "0")]);
    let rank1 = output(rank1);
    assert_eq!(rank0["step"], 3, "{rank0}");
    assert_eq!(rank1, rank0, "both halves of the batch under one class");
    let reports = || requests(&client, &serve, "/v1/schedule/report");
    assert_eq!(reports().await, 1.0, "rank 1 never reports");
    // in a process, a step already reported (another generation batch at the same step) is not
    // resent; the next one is: a fresh process reports 3 once (a no-op there), then 4
    let again = format!(
        "{}\n{}\n{}",
        call(3),
        call(3).replace("'Rest it.'", "'Rest.'"),
        call(4)
    );
    let out = python(&serve.url, &again, &[("RANK", "0")])
        .wait_with_output()
        .unwrap();
    ok(&out);
    assert_eq!(reports().await, 3.0);
    assert_eq!(
        get(&client, &format!("{}/v1/schedule", serve.url)).await["step"],
        4
    );

    // evaluation: TRL's model is out of training mode; counted nowhere, reports nothing
    let counted_state = dir.path().join("counted");
    let more = ["--phase-steps", "1", "--completions-per-step", "2"];
    let counted = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &counted_state, &more),
        &[],
    );
    let eval = format!(
        "ids, texts = [{}] * 2, ['Rest it.', 'Drink fluids.']\n\
         r = call(t.arlrr_reward, ids, texts, step=7, trainer=Trainer(training=False))\n\
         print(json.dumps(r))",
        ex["prompt_id"]
    );
    let r = run(&counted.url, &eval, &[("RANK", "0")]);
    assert_eq!(r.as_array().unwrap().len(), 2);
    let status = get(&client, &format!("{}/v1/schedule", counted.url)).await;
    assert_eq!(status["step"], 0, "evaluation was counted: {status}");
    assert_eq!(
        requests(&client, &counted, "/v1/schedule/report").await,
        0.0
    );
    // the same call in training mode (steps counted on the service) moves it
    let train_call = eval
        .replace("training=False", "training=True")
        .replace("step=7", "step=None");
    run(&counted.url, &train_call, &[("RANK", "0")]);
    assert_eq!(
        metric(&client, &counted.url, "arlrr_schedule_step").await,
        1.0
    );
}
