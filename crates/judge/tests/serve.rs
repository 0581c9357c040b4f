//! The OpenAI-compatible server (`judge::serve`) end to end over real loopback HTTP, with the
//! HTTP judge and with raw requests. The model here is a deterministic grader (it answers from
//! the reply's length) so the protocol is checked exactly; the test with the real SmolLM2
//! model lives with the `arlrr serve-judge` command.

use judge::serve::{router, ChatCall, ChatError, ChatModel, ChatOutput, ServeOptions};
use judge::{GradeTask, HttpJudge, HttpJudgeConfig, Judge, JudgeFailure};
use rubric::{Criterion, Example, Message};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Says "met" when the reply inside `<reply>` is longer than 20 characters; fails on demand
/// when the criterion says `explode`, and refuses a prompt that says `too long` as a model
/// refuses one beyond its context. Token counts are words, so usage is checkable.
struct LengthGrader;

impl ChatModel for LengthGrader {
    fn id(&self) -> String {
        "length-grader".into()
    }

    fn chat(&self, request: &ChatCall<'_>) -> Result<ChatOutput, ChatError> {
        let (messages, max_tokens) = (request.messages, request.max_tokens);
        let prompt = &messages
            .last()
            .expect("the server refuses no messages")
            .content;
        if prompt.contains("explode") {
            return Err(ChatError::Failed("the model exploded".into()));
        }
        if prompt.contains("too long") {
            return Err(ChatError::Invalid("the prompt is 9000 tokens".into()));
        }
        let reply = prompt
            .split("<reply>")
            .nth(1)
            .and_then(|r| r.split("</reply>").next())
            .unwrap_or(prompt);
        let met = reply.trim().len() > 20;
        let text = format!(
            "```json\n{{\"explanation\": \"reply length {}\", \"criteria_met\": {met}}}\n```",
            reply.trim().len()
        );
        let words = text.split_whitespace().count();
        Ok(ChatOutput {
            completion_tokens: words.min(max_tokens),
            prompt_tokens: messages
                .iter()
                .map(|m| m.content.split_whitespace().count())
                .sum(),
            text,
            truncated: false,
        })
    }
}

async fn spawn() -> SocketAddr {
    spawn_with(Arc::new(LengthGrader)).await
}

async fn spawn_with(model: Arc<dyn ChatModel>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(model, ServeOptions::default());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn example() -> Example {
    let crit = |t: &str| Criterion {
        text: t.into(),
        points: 1.0,
        tags: vec![],
        check: None,
    };
    Example {
        id: "e".into(),
        prompt: vec![Message {
            role: "user".into(),
            content: "Hello".into(),
        }],
        criteria: vec![crit("Is detailed"), crit("explode")],
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    }
}

#[tokio::test]
async fn http_judge_gets_verdicts_and_usage_from_the_server() {
    let addr = spawn().await;
    let judge = HttpJudge::new(HttpJudgeConfig {
        retries: 1,
        backoff_initial_secs: 0.01,
        timeout_secs: 5.0,
        ..HttpJudgeConfig::new(format!("http://{addr}/v1/"), "length-grader")
    })
    .unwrap();
    let ex = example();
    let grades = judge
        .grade(&[
            GradeTask {
                example: &ex,
                response: "A long and detailed answer.",
                criteria: None,
            },
            GradeTask {
                example: &ex,
                response: "Short.",
                criteria: Some(&[0]),
            },
        ])
        .await;
    assert_eq!(grades[0][0].outcome, Ok(1.0));
    assert_eq!(grades[0][0].explanation, "reply length 27");
    assert_eq!(grades[1][0].outcome, Ok(0.0));
    // A model error is a 500: retried, then an explicit failure naming it.
    match &grades[0][1].outcome {
        Err(JudgeFailure::Exhausted {
            attempts: 2,
            last_error,
        }) => {
            assert!(
                last_error.contains("500") && last_error.contains("exploded"),
                "{last_error}"
            )
        }
        other => panic!("{other:?}"),
    }
    let s = judge.stats();
    assert_eq!((s.calls, s.verdicts, s.failures), (4, 3, 1));
    assert!(s.prompt_tokens > 100 && s.completion_tokens > 0, "{s:?}");
}

async fn post(addr: SocketAddr, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn responses_follow_the_openai_shape() {
    let addr = spawn().await;
    let (status, body) = post(
        addr,
        json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "<reply>tiny</reply>"}]}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "length-grader");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["usage"]["prompt_tokens"], 1);
    assert_eq!(body["usage"]["total_tokens"], 4);

    let models: Value = reqwest::get(format!("http://{addr}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "length-grader");
    assert_eq!(models["object"], "list");
}

#[tokio::test]
async fn unsupported_or_malformed_requests_get_openai_errors() {
    let addr = spawn().await;
    let user = json!([{"role": "user", "content": "hi"}]);
    for (body, param) in [
        (json!({"messages": user, "stream": true}), "stream"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
        (json!({"messages": user, "n": 2}), "n"),
        (json!({"messages": user, "temperature": 7.5}), "temperature"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content",
        ),
        (json!({"messages": "not a list"}), "body"),
        (
            json!({"messages": [{"role": "user", "content": "too long"}]}),
            "messages",
        ),
    ] {
        let (status, resp) = post(addr, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_eq!(resp["error"]["param"], param, "{body} -> {resp}");
        assert_eq!(resp["error"]["type"], "invalid_request_error");
    }
}

/// A model that emits a token each millisecond until `max_tokens` or until its client has
/// gone, and counts what it does.
#[derive(Default)]
struct Ticking {
    running: AtomicUsize,
    most_running: AtomicUsize,
    tokens: AtomicUsize,
    finished: AtomicUsize,
    stopped: AtomicUsize,
}

impl ChatModel for Ticking {
    fn id(&self) -> String {
        "ticking".into()
    }

    fn chat(&self, request: &ChatCall<'_>) -> Result<ChatOutput, ChatError> {
        let (max_tokens, cancelled) = (request.max_tokens, request.cancelled);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let mut generated = 0;
        while generated < max_tokens && !cancelled.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            generated += 1;
            self.tokens.fetch_add(1, Ordering::SeqCst);
        }
        let done = if generated == max_tokens {
            &self.finished
        } else {
            &self.stopped
        };
        done.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(ChatOutput {
            text: "tick ".repeat(generated),
            prompt_tokens: 1,
            completion_tokens: generated,
            truncated: generated == max_tokens,
        })
    }
}

/// Three clients give up on answers that would take 4 s each: the generation that had
/// started stops at its next token, the waiting ones never finish, and the next request runs
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_its_generation() {
    let model = Arc::new(Ticking::default());
    let addr = spawn_with(model.clone()).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let long = json!({"messages": [{"role": "user", "content": "go on"}], "max_tokens": 4000});
    let gave_up =
        futures_util::future::join_all((0..3).map(|_| impatient.post(&url).json(&long).send()))
            .await;
    assert!(gave_up
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.is_timeout())));

    let deadline = Instant::now() + Duration::from_secs(3);
    while model.stopped.load(Ordering::SeqCst) == 0 || model.running.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "generation goes on for clients that left"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(model.finished.load(Ordering::SeqCst), 0);
    let spent = model.tokens.load(Ordering::SeqCst);
    assert!(spent < 4000, "{spent} tokens for clients that left");

    let (status, body) = post(
        addr,
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(model.tokens.load(Ordering::SeqCst), spent + 5);
    assert_eq!(model.finished.load(Ordering::SeqCst), 1);
    assert_eq!(
        model.most_running.load(Ordering::SeqCst),
        1,
        "a generation ran beside another"
    );
}
