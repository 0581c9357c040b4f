//! `arlrr serve-judge` running the real SmolLM2-135M GGUF, graded over real HTTP by the HTTP
//! judge. SmolLM2 is a weak grader; what is checked is the protocol: every criterion ends in a
//! parsed verdict or an explicit failure, usage is reported, and nothing hangs. The server also
//! stops generating for a client that left, and refuses a prompt beyond the model's context
//! with a 400.

use judge::{GradeTask, HttpJudge, HttpJudgeConfig, Judge, JudgeFailure};
use rubric::{Criterion, Example, Message};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;
use common::{arlrr, post, Serve};

/// A running `arlrr serve-judge`, killed when the test ends, however it ends.
struct Server {
    serve: Serve,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The first line of its log that contains `needle`, waiting up to `patience` for it.
    fn wait_for_log(&self, needle: &str, patience: Duration) -> String {
        let deadline = Instant::now() + patience;
        loop {
            let log = self.serve.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log after {patience:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start_server() -> Server {
    let model = rubric::assets::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut command = arlrr();
    command.arg("serve-judge");
    let args = ["--model", model.to_str().unwrap(), "--name", "smollm2"];
    let serve = Serve::spawn(dir.path(), command, &args);
    Server {
        url: serve.url.clone(),
        serve,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_judge_grades_through_serve_judge_running_smollm2() {
    let server = start_server();
    let url = server.url.clone();
    let models: serde_json::Value = reqwest::get(format!("{url}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2");

    let judge = HttpJudge::new(HttpJudgeConfig {
        max_tokens: 40,
        concurrency: 2,
        timeout_secs: 240.0,
        retries: 1,
        backoff_initial_secs: 0.05,
        ..HttpJudgeConfig::new(url, "smollm2")
    })
    .unwrap();
    let crit = |t: &str, p: f64| Criterion {
        text: t.into(),
        points: p,
        tags: vec![],
        check: None,
    };
    let ex = Example {
        id: "e".into(),
        prompt: vec![Message {
            role: "user".into(),
            content: "I twisted my ankle. What should I do?".into(),
        }],
        criteria: vec![
            crit("Recommends resting the ankle", 5.0),
            crit("Recommends surgery", -5.0),
        ],
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    };
    let task = GradeTask {
        example: &ex,
        response: "Rest it, put ice on it and keep it raised.",
        criteria: None,
    };
    let grades = tokio::time::timeout(Duration::from_secs(900), judge.grade(&[task]))
        .await
        .expect("grading through serve-judge hung");
    assert_eq!(grades[0].len(), 2);
    for g in &grades[0] {
        eprintln!(
            "criterion {}: {:?} attempts={} explanation={:?}",
            g.criterion, g.outcome, g.attempts, g.explanation
        );
        match &g.outcome {
            Ok(v) => assert!(*v == 0.0 || *v == 1.0),
            // A parse failure after the retries is the honest outcome for a weak grader.
            Err(JudgeFailure::Exhausted {
                attempts,
                last_error,
            }) => {
                assert_eq!(*attempts, 2);
                assert!(
                    last_error.contains("no verdict JSON")
                        || last_error.contains("conflicting verdict objects"),
                    "{last_error}"
                );
            }
            Err(other) => panic!("protocol failure: {other}"),
        }
    }
    let s = judge.stats();
    assert!(
        s.calls >= 2 && s.prompt_tokens > 100 && s.completion_tokens > 0,
        "{s:?}"
    );
}

/// A request asking SmolLM2 to count, greedily: an answer that runs on.
fn counting(max_tokens: usize) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    })
}

/// A client that gives up stops its generation at the next token (the log says what it
/// cost), and a prompt beyond the model's context is a 400 naming the lengths, not a 500 that
/// clients retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_judge_stops_for_clients_that_left_and_refuses_prompts_beyond_the_context() {
    let server = start_server();
    let chat = format!("{}/chat/completions", server.url);
    let client = reqwest::Client::new();
    // Greedy decoding of this prompt does not stop within 64 tokens, nor within the second
    // the client below waits.
    let (status, body) = post(&client, &chat, &counting(64)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let gave_up = impatient.post(&chat).json(&counting(4000)).send().await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let line = server.wait_for_log("the client went away", Duration::from_secs(60));
    let stopped_after: usize = line
        .split("stopped after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(stopped_after < 4000, "{line}");

    let (status, body) = post(&client, &chat, &counting(8)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 8, "{body}");

    let beyond = json!({
        "messages": [{"role": "user", "content": "word ".repeat(9000)}],
        "max_tokens": 16,
    });
    let (status, body) = post(&client, &chat, &beyond).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("max_tokens is 16") && message.contains("context of 8192"),
        "{message}"
    );
}

#[test]
fn a_default_max_tokens_out_of_range_is_refused_before_loading_the_model() {
    for value in ["0", "5000"] {
        let out = arlrr()
            .args(["serve-judge", "--model", "/nonexistent.gguf"])
            .args(["--default-max-tokens", value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "--default-max-tokens must be in 1..=4096, got {value}"
            )),
            "{err}"
        );
    }
}
