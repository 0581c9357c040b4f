//! The HTTP judge against a fault-injecting OpenAI-compatible server on loopback: every case
//! ends in the correct verdict or an explicit failure after the configured retries, within a
//! hard deadline (nothing hangs), and no verdict is invented.
//!
//! The server's behaviour per request is chosen by the criterion text, which reaches it inside
//! the grading prompt: `scenario=<name>`. Each scenario keeps its own attempt counter, so
//! "fail twice, then answer" is expressible.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use judge::{CriterionGrade, GradeTask, HttpJudge, HttpJudgeConfig, Judge, JudgeFailure};
use rubric::{Criterion, Example, Message};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every test's grading must finish within this, or the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Fault {
    attempts: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: AtomicUsize,
}

fn completion(content: &str) -> Response {
    Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "fault",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

fn verdict(met: bool) -> String {
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
        other => (StatusCode::BAD_REQUEST, format!("unknown scenario {other}")).into_response(),
    }
}

async fn spawn_fault_server() -> (SocketAddr, Arc<Fault>) {
    let fault = Arc::new(Fault::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(fault.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, fault)
}

/// A raw TCP server that resets (RST, via zero linger) the first `resets` connections after
/// reading the request, then answers with a hand-written HTTP response.
async fn spawn_resetting_server(resets: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the whole request: headers, then content-length bytes of body.
                loop {
                    let k = sock.read(&mut chunk).await.unwrap_or(0);
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                if n < resets {
                    sock.set_zero_linger().unwrap();
                    drop(sock);
                    return;
                }
                let body = json!({"choices": [{"message": {"role": "assistant", "content": verdict(true)}}]}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

fn config(addr: SocketAddr) -> HttpJudgeConfig {
    HttpJudgeConfig {
        timeout_secs: 0.3,
        retries: 2,
        backoff_initial_secs: 0.01,
        backoff_max_secs: 0.05,
        ..HttpJudgeConfig::new(format!("http://{addr}/v1"), "fault-model")
    }
}

fn example(scenarios: &[&str]) -> Example {
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

async fn grade_all(judge: &HttpJudge, ex: &Example) -> Vec<CriterionGrade> {
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

fn assert_exhausted(g: &CriterionGrade, attempts: u32, needle: &str) {
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

#[tokio::test]
async fn answers_plain_fenced_and_after_transient_faults_are_correct() {
    let (addr, fault) = spawn_fault_server().await;
    let judge = HttpJudge::new(config(addr)).unwrap();
    let ex = example(&[
        "met",
        "unmet",
        "fenced",
        "garbage-then-unmet",
        "500-twice",
        "slow-once",
        "truncated-once",
    ]);
    let g = grade_all(&judge, &ex).await;
    let got: Vec<(usize, Result<f64, JudgeFailure>, u32)> = g
        .iter()
        .map(|g| (g.criterion, g.outcome.clone(), g.attempts))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, Ok(1.0), 1),
            (1, Ok(0.0), 1),
            (2, Ok(1.0), 1),
            (3, Ok(0.0), 2),
            (4, Ok(1.0), 3),
            (5, Ok(1.0), 2),
            (6, Ok(0.0), 2),
        ]
    );
    assert_eq!(g[0].explanation, "scripted true");
    assert!(g.iter().all(|g| g.judge == "http:fault-model" && !g.cached));
    let s = judge.stats();
    assert_eq!((s.verdicts, s.failures, s.calls, s.retries), (7, 0, 12, 5));
    // Usage is counted on every completed answer, including the unparseable one.
    assert_eq!((s.prompt_tokens, s.completion_tokens), (80, 40));
    assert_eq!(fault.requests.load(Ordering::SeqCst), 12);
}

#[tokio::test]
async fn persistent_faults_end_in_explicit_failures_after_the_configured_retries() {
    let (addr, fault) = spawn_fault_server().await;
    let judge = HttpJudge::new(config(addr)).unwrap();
    let ex = example(&[
        "garbage-always",
        "503-always",
        "slow-always",
        "not-json-body",
    ]);
    let started = Instant::now();
    let g = grade_all(&judge, &ex).await;
    assert_exhausted(&g[0], 3, "no verdict JSON");
    assert_exhausted(&g[1], 3, "503");
    assert_exhausted(&g[2], 3, "timed out");
    assert_exhausted(&g[3], 3, "not a chat completion");
    // Three 0.3 s timeouts in a row plus small backoffs; far below the slow handler's 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fault.requests.load(Ordering::SeqCst), 12);
    assert_eq!(judge.stats().failures, 4);
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let (addr, _fault) = spawn_fault_server().await;
    let judge = HttpJudge::new(config(addr)).unwrap();
    let ex = example(&["429-retry-after"]);
    let started = Instant::now();
    let g = grade_all(&judge, &ex).await;
    assert_eq!((g[0].outcome.clone(), g[0].attempts), (Ok(1.0), 2));
    // The backoff alone is at most 0.05 s; the server asked for 1 s.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connection_resets_are_retried_and_bounded() {
    let (addr, seen) = spawn_resetting_server(2).await;
    let judge = HttpJudge::new(config(addr)).unwrap();
    let g = grade_all(&judge, &example(&["any"])).await;
    assert_eq!((g[0].outcome.clone(), g[0].attempts), (Ok(1.0), 3));
    assert_eq!(seen.load(Ordering::SeqCst), 3);

    let (addr, seen) = spawn_resetting_server(usize::MAX).await;
    let judge = HttpJudge::new(config(addr)).unwrap();
    let g = grade_all(&judge, &example(&["any"])).await;
    assert_exhausted(&g[0], 3, "transport error");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_closed_port_fails_fast_with_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let judge = HttpJudge::new(config(addr)).unwrap();
    let g = grade_all(&judge, &example(&["met"])).await;
    assert_exhausted(&g[0], 3, "transport error");
}

#[tokio::test]
async fn api_key_comes_from_the_named_variable_and_never_shows() {
    let (addr, _fault) = spawn_fault_server().await;
    let var = "ARLRR_TEST_JUDGE_KEY_HTTP_FAULTS";
    let mut cfg = config(addr);
    cfg.api_key_env = Some(var.into());
    std::env::remove_var(var);
    let err = HttpJudge::new(cfg.clone()).unwrap_err().to_string();
    assert!(err.contains(var), "{err}");

    std::env::set_var(var, "sekrit-token-123");
    let judge = HttpJudge::new(cfg.clone()).unwrap();
    assert!(!format!("{judge:?}").contains("sekrit"));
    let g = grade_all(&judge, &example(&["auth"])).await;
    assert_eq!(g[0].outcome, Ok(1.0));

    // A rejected key is not retried: retrying cannot fix it.
    std::env::set_var(var, "wrong");
    let judge = HttpJudge::new(cfg).unwrap();
    let g = grade_all(&judge, &example(&["auth"])).await;
    assert_eq!(g[0].attempts, 1);
    match &g[0].outcome {
        Err(JudgeFailure::Other(m)) => assert!(m.contains("401") && !m.contains("wrong"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_in_flight_never_exceed_the_configured_concurrency() {
    let (addr, fault) = spawn_fault_server().await;
    let mut cfg = config(addr);
    cfg.concurrency = 3;
    cfg.timeout_secs = 5.0;
    let judge = Arc::new(HttpJudge::new(cfg).unwrap());
    let ex = example(&["slow-met"; 8]);
    // Two batches graded at once share the bound.
    let (a, b) = tokio::join!(grade_all(&judge, &ex), grade_all(&judge, &ex));
    assert!(a.iter().chain(&b).all(|g| g.outcome == Ok(1.0)));
    assert_eq!(fault.max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(fault.requests.load(Ordering::SeqCst), 16);
}

#[test]
fn config_reads_toml_with_defaults_and_rejects_bad_values() {
    let cfg: HttpJudgeConfig = toml::from_str(
        "base_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"KEY\"",
    )
    .unwrap();
    assert_eq!((cfg.concurrency, cfg.retries, cfg.max_tokens), (16, 4, 512));
    assert!(cfg.validate().is_ok());
    let bad = HttpJudgeConfig {
        concurrency: 0,
        ..cfg.clone()
    };
    assert!(bad.validate().unwrap_err().contains("concurrency"));
    let bad = HttpJudgeConfig {
        base_url: "localhost:8080".into(),
        ..cfg
    };
    assert!(HttpJudge::new(bad)
        .unwrap_err()
        .to_string()
        .contains("base_url"));
    let err =
        toml::from_str::<HttpJudgeConfig>("base_url = \"http://x\"\nmodel = \"m\"\ntimeout = 3")
            .unwrap_err()
            .to_string();
    assert!(err.contains("timeout"), "{err}");
}
