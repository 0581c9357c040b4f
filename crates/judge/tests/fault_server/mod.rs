//! A fault-injecting OpenAI-compatible server on loopback, shared by the HTTP judge tests.
//!
//! The server's behaviour per request is chosen by the criterion text, which reaches it inside
//! the grading prompt: `scenario=<name>`. Each scenario keeps its own attempt counter, so
//! "fail twice, then answer" is expressible.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use judge::{GradeTask, HttpJudge, HttpJudgeConfig, Judge, JudgeFailure, Verdict};
use rubric::{Criterion, Example, Message};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Every test's grading must finish within this, or the test fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct Fault {
    pub attempts: Mutex<HashMap<String, usize>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub requests: AtomicUsize,
}

pub fn completion(content: &str) -> Response {
    Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "fault",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

pub fn verdict(met: bool) -> String {
    json!({"explanation": format!("scripted {met}"), "criteria_met": met}).to_string()
}

async fn chat(
    State(fault): State<Arc<Fault>>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> Response {
    fault.requests.fetch_add(1, Ordering::SeqCst);
    let now = fault.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fault.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let resp = respond(&fault, &headers, &req).await;
    fault.in_flight.fetch_sub(1, Ordering::SeqCst);
    resp
}

async fn respond(fault: &Fault, headers: &HeaderMap, req: &Value) -> Response {
    let prompt = req["messages"][0]["content"].as_str().unwrap_or_default();
    let scenario = prompt
        .split("scenario=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("none")
        .to_string();
    let n = {
        let mut a = fault.attempts.lock().unwrap();
        let n = a.entry(scenario.clone()).or_insert(0);
        *n += 1;
        *n
    };
    match scenario.as_str() {
        "met" => completion(&verdict(true)),
        "unmet" => completion(&verdict(false)),
        "fenced" => completion(&format!(
            "Let me think.\n```json\n{}\n```\nHope that helps!",
            verdict(true)
        )),
        "garbage-then-unmet" if n == 1 => completion("I would say it mostly meets it."),
        "garbage-then-unmet" => completion(&verdict(false)),
        "garbage-always" => completion("{\"criteria_met\": maybe}"),
        "not-json-body" => (StatusCode::OK, "<html>proxy error</html>").into_response(),
        "500-twice" if n <= 2 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "500-twice" => completion(&verdict(true)),
        "503-always" => (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response(),
        "429-retry-after" if n == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        "429-retry-after" => completion(&verdict(true)),
        // Retry-After beyond `retry_after_max_secs`, and as HTTP dates (RFC 7231 IMF-fixdate):
        // one far in the future, one already past.
        "429-hour" | "429-date-2100" | "429-date-2015" if n == 1 => {
            let wish = match scenario.as_str() {
                "429-hour" => "3600",
                "429-date-2100" => "Fri, 01 Jan 2100 00:00:00 GMT",
                _ => "Wed, 21 Oct 2015 07:28:00 GMT",
            };
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", wish)],
                "slow down",
            )
                .into_response()
        }
        "429-hour" | "429-date-2100" | "429-date-2015" => completion(&verdict(true)),
        "slow-once" if n == 1 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            completion(&verdict(false))
        }
        "slow-once" => completion(&verdict(true)),
        "slow-always" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            completion(&verdict(true))
        }
        "truncated-once" if n == 1 => {
            // Headers, part of the body, then the connection dies mid-response.
            let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
                Ok("{\"choices\": [{\"message\": {\"content\": "),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "cut",
                )),
            ];
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .unwrap()
        }
        "truncated-once" => completion(&verdict(false)),
        "auth" => {
            let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some("Bearer sekrit-token-123");
            if ok {
                completion(&verdict(true))
            } else {
                (StatusCode::UNAUTHORIZED, "bad key").into_response()
            }
        }
        "slow-met" => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            completion(&verdict(true))
        }
        // Hangs on its first request (each `hang-once-<name>` counts its own), then answers.
        s if s.starts_with("hang-once") && n == 1 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            completion(&verdict(false))
        }
        s if s.starts_with("hang-once") => completion(&verdict(true)),
        // A judge model that repeats its prompt (the graded reply inside) before answering,
        // or without answering; and one that quotes an example verdict before its own.
        "echo" => completion(&format!("{prompt}\n{}", verdict(false))),
        "echo-only" => completion(prompt),
        "example-first" => completion(&format!(
            "An answer looks like {{\"explanation\": \"...\", \"criteria_met\": true}}. Mine: {}",
            verdict(false)
        )),
        other => (StatusCode::BAD_REQUEST, format!("unknown scenario {other}")).into_response(),
    }
}

pub async fn spawn_fault_server() -> (SocketAddr, Arc<Fault>) {
    let fault = Arc::new(Fault::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(fault.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, fault)
}

pub fn config(addr: SocketAddr) -> HttpJudgeConfig {
    HttpJudgeConfig {
        timeout_secs: 0.3,
        retries: 2,
        backoff_initial_secs: 0.01,
        backoff_max_secs: 0.05,
        ..HttpJudgeConfig::new(format!("http://{addr}/v1"), "fault-model")
    }
}

pub fn example(scenarios: &[&str]) -> Example {
    Example {
        id: "ex".into(),
        prompt: vec![Message {
            role: "user".into(),
            content: "Hi".into(),
        }],
        criteria: scenarios
            .iter()
            .map(|s| Criterion {
                text: format!("scenario={s} applies"),
                points: 3.0,
                tags: vec![],
                check: None,
            })
            .collect(),
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    }
}

pub async fn grade_all(judge: &HttpJudge, ex: &Example) -> Vec<Verdict> {
    let task = GradeTask {
        example: ex,
        response: "Hello there.",
        criteria: None,
    };
    let mut out = tokio::time::timeout(DEADLINE, judge.grade(&[task]))
        .await
        .expect("grading hung past the deadline");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

pub fn assert_exhausted(g: &Verdict, attempts: u32, needle: &str) {
    match &g.outcome {
        Err(JudgeFailure::Exhausted {
            attempts: a,
            last_error,
        }) => {
            assert_eq!(*a, attempts, "{last_error}");
            assert!(
                last_error.contains(needle),
                "expected {needle:?} in {last_error:?}"
            );
        }
        other => panic!("expected exhaustion with {needle:?}, got {other:?}"),
    }
    assert_eq!(g.attempts, attempts);
    assert!(g.explanation.is_empty(), "no invented explanation");
}
