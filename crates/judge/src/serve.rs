//! An OpenAI-compatible chat completions server over any local [`ChatModel`], so that the
//! HTTP judge (or any OpenAI client) can use a local model with no outside service:
//! `POST /v1/chat/completions`, `GET /v1/models`, and `GET /health`.
//!
//! Generation is CPU-bound and blocking, so it runs on blocking threads, at most
//! `parallel` at a time (more would only split the same cores). A client that goes away (a
//! timeout, a closed connection) drops its request, and that stops its generation at the next
//! token: an abandoned answer would otherwise hold the cores from the requests still waiting.
//! Only what the judge and common clients need is implemented: no streaming, one choice;
//! unsupported requests get an OpenAI-style error, not a silent approximation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rubric::Message;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// A model that answers a conversation.
pub trait ChatModel: Send + Sync + 'static {
    /// Name reported by `/v1/models` and in responses.
    fn id(&self) -> String;

    /// Answers the request's messages with at most `max_tokens` new tokens.
    fn chat(&self, request: &ChatCall<'_>) -> Result<ChatOutput, ChatError>;
}

/// What a [`ChatModel`] is asked to answer.
#[derive(Debug, Clone, Copy)]
pub struct ChatCall<'a> {
    pub messages: &'a [Message],
    pub max_tokens: usize,
    pub temperature: f64,
    /// Turns true when the client has gone: check it before each new token and return what
    /// there is.
    pub cancelled: &'a AtomicBool,
}

/// Why a model gave no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// The request cannot be answered as sent, e.g. a prompt longer than the model's context:
    /// a 400, which clients do not retry (they retry a 500, to the same end).
    #[error("{0}")]
    Invalid(String),
    /// The model failed: a 500.
    #[error("{0}")]
    Failed(String),
}

/// One answer with the token counts reported as `usage`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOutput {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// True when generation stopped at `max_tokens` (`finish_reason: "length"`).
    pub truncated: bool,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// Generations run at once.
    pub parallel: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            default_max_tokens: 256,
            max_tokens_limit: 4096,
            parallel: 1,
        }
    }
}

struct AppState {
    model: Arc<dyn ChatModel>,
    options: ServeOptions,
    /// One per generation running; held by the blocking thread until the generation ends,
    /// so a generation being cancelled never runs beside the next one.
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// Sets its flag when dropped: the request handler holds it, and axum drops the handler when
/// the client goes away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The router; serve it with `axum::serve`.
pub fn router(model: Arc<dyn ChatModel>, options: ServeOptions) -> Router {
    let state = Arc::new(AppState {
        permits: Arc::new(Semaphore::new(options.parallel.max(1))),
        model,
        options,
        next_id: AtomicU64::new(1),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    model: Arc<dyn ChatModel>,
    options: ServeOptions,
) -> std::io::Result<()> {
    axum::serve(listener, router(model, options)).await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An OpenAI-style error body.
fn error(
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
    param: Option<&str>,
) -> Response {
    let body =
        json!({"error": {"message": message.into(), "type": kind, "param": param, "code": null}});
    (status, Json(body)).into_response()
}

fn bad_request(message: impl Into<String>, param: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        Some(param),
    )
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.model.id(), "object": "model", "created": unix_now(), "owned_by": "arlrr"}]
    }))
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Vec<RequestMessage>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    n: Option<usize>,
}

#[derive(Deserialize)]
struct RequestMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

/// Message content as a string: either a string, or an array of `{"type":"text","text":..}`
/// parts joined (other part types cannot be fed to a text model).
fn content_text(content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                (kind, _) => Err(format!(
                    "content part of type {kind:?} is not supported; only text"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join("\n")),
        other => Err(format!(
            "content must be a string or an array of text parts, got {other}"
        )),
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(
                format!("request body is not a chat completion request: {e}"),
                "body",
            )
        }
    };
    if req.stream == Some(true) {
        return bad_request(
            "streaming is not supported by this server; send stream=false",
            "stream",
        );
    }
    if req.n.is_some_and(|n| n != 1) {
        return bad_request("only n=1 is supported", "n");
    }
    if req.messages.is_empty() {
        return bad_request("`messages` must hold at least one message", "messages");
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        match content_text(&m.content) {
            Ok(content) => messages.push(Message {
                role: m.role.clone(),
                content,
            }),
            Err(e) => return bad_request(e, &format!("messages[{i}].content")),
        }
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(state.options.default_max_tokens);
    if max_tokens == 0 || max_tokens > state.options.max_tokens_limit {
        return bad_request(
            format!(
                "max_tokens must be in 1..={}, got {max_tokens}",
                state.options.max_tokens_limit
            ),
            "max_tokens",
        );
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return bad_request(
            format!("temperature must be in [0, 2], got {temperature}"),
            "temperature",
        );
    }

    let id = format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let out = match generate(&state, &id, messages, max_tokens, temperature).await {
        Ok(out) => out,
        Err(response) => return response,
    };
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": state.model.id(),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "finish_reason": if out.truncated { "length" } else { "stop" },
        }],
        "usage": {
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens,
        }
    }))
    .into_response()
}

/// Runs one generation on a blocking thread once a permit is free. Dropping this future (the
/// client went away) cancels the generation at its next token; the blocking thread keeps the
/// permit until the generation has really ended.
async fn generate(
    state: &AppState,
    id: &str,
    messages: Vec<Message>,
    max_tokens: usize,
    temperature: f64,
) -> Result<ChatOutput, Response> {
    let permit = state
        .permits
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    let (model, request) = (state.model.clone(), id.to_string());
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let out = model.chat(&ChatCall {
            messages: &messages,
            max_tokens,
            temperature,
            cancelled: &cancelled,
        });
        if cancelled.load(Ordering::Relaxed) {
            log_abandoned(&request, max_tokens, &out);
        }
        out
    })
    .await;
    let server_error = |message: String| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            message,
            None,
        )
    };
    match result {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(ChatError::Invalid(e))) => Err(bad_request(e, "messages")),
        Ok(Err(ChatError::Failed(e))) => Err(server_error(format!("generation failed: {e}"))),
        Err(e) => Err(server_error(format!("generation panicked: {e}"))),
    }
}

/// The log line of a generation whose client went away: what it cost before it stopped.
fn log_abandoned(request: &str, max_tokens: usize, out: &Result<ChatOutput, ChatError>) {
    match out {
        Ok(out) => eprintln!(
            "{request}: the client went away; generation stopped after {} of {max_tokens} tokens",
            out.completion_tokens
        ),
        Err(e) => eprintln!("{request}: the client went away; generation ended: {e}"),
    }
}
