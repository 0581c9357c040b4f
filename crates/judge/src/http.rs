//! The HTTP judge: grades each criterion with one request to an OpenAI-compatible
//! `/v1/chat/completions` endpoint (vLLM, llama.cpp's server, OpenAI, `arlrr serve-judge`).
//!
//! Remote graders fail in every way a network can: timeouts, resets, 429s, 5xx, answers that
//! are not the JSON asked for. Each of those is retried a bounded number of times with
//! exponential backoff and jitter (honouring `Retry-After`), and what still fails becomes an
//! explicit [`JudgeFailure`], never a guessed verdict. A semaphore bounds the requests in
//! flight across all concurrent `grade` calls, and optional requests- and tokens-per-minute
//! limits ([`crate::rate_limit`]) pace what is sent.

use crate::prompt::{extract_verdict, grading_prompt, ParsedVerdict, PROMPT_VERSION};
use crate::rate_limit::{
    estimate_tokens, RateLimits, MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE,
};
use crate::{GradeSink, GradeTask, Judge, JudgeFailure, JudgeStats, Verdict};
use async_trait::async_trait;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Settings of the HTTP judge (the `[http]` table of a judge config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpJudgeConfig {
    /// API root up to and including the version, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8080/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Model name sent in each request; also the judge id (`http:<model>`), hence the cache key.
    pub model: String,
    /// Sampling temperature; 0 makes graders as repeatable as the server allows.
    #[serde(default)]
    pub temperature: f32,
    /// Cap on the grader's answer length in tokens; the verdict JSON needs about 100.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Requests in flight at once, over all batches this judge is grading.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Per-request timeout in seconds (connect to last byte of the body).
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Retries after the first attempt; a criterion costs at most `1 + retries` requests.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First backoff delay in seconds; doubles per retry, with jitter in [50%, 100%].
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_secs: f64,
    /// Ceiling of one backoff delay, in seconds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: f64,
    /// Longest `Retry-After` honoured, in seconds; a longer one is cut to this.
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max_secs: f64,
    /// Name of the environment variable holding the API key (sent as a bearer token). The
    /// key itself never appears in config files, logs or `Debug` output.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests sent per minute at most (a provider's RPM), retries included; no limit when
    /// absent. A burst of this many goes at once, then one every `60 / limit` seconds; a
    /// request over the limit waits, it does not fail. verl's rate-limited reward manager
    /// calls it `max_rpm`, accepted here too.
    #[serde(default, alias = "max_rpm")]
    pub max_requests_per_minute: Option<u64>,
    /// Tokens sent per minute at most (a provider's TPM); no limit when absent. A request
    /// counts as its estimate before it is sent ([`crate::rate_limit::estimate_tokens`]: the
    /// prompt's UTF-8 bytes / 4 plus `max_tokens`). verl calls it `max_tpm`, accepted too.
    #[serde(default, alias = "max_tpm")]
    pub max_tokens_per_minute: Option<u64>,
}

/// Most requests in flight: far above what any endpoint serves, far below where a semaphore
/// or the open-file limit gives out.
const MAX_CONCURRENCY: usize = 4096;

/// Most retries per criterion: `1 + retries` attempts must not overflow, and a judge retrying
/// a criterion more than this is down, not flaky.
const MAX_RETRIES: u32 = 100;

fn default_max_tokens() -> u32 {
    512
}
fn default_concurrency() -> usize {
    16
}
fn default_timeout() -> f64 {
    60.0
}
fn default_retries() -> u32 {
    4
}
fn default_backoff_initial() -> f64 {
    0.5
}
fn default_backoff_max() -> f64 {
    30.0
}
fn default_retry_after_max() -> f64 {
    120.0
}

impl HttpJudgeConfig {
    /// A config with defaults for everything but the endpoint and the model.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        HttpJudgeConfig {
            base_url: base_url.into(),
            model: model.into(),
            temperature: 0.0,
            max_tokens: default_max_tokens(),
            concurrency: default_concurrency(),
            timeout_secs: default_timeout(),
            retries: default_retries(),
            backoff_initial_secs: default_backoff_initial(),
            backoff_max_secs: default_backoff_max(),
            retry_after_max_secs: default_retry_after_max(),
            api_key_env: None,
            max_requests_per_minute: None,
            max_tokens_per_minute: None,
        }
    }

    /// Checks ranges; the message names the field. Every duration goes through
    /// [`rubric::limits::duration_secs`], so none can panic a conversion later.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!(
                "`base_url` must start with http:// or https://, got `{}`",
                self.base_url
            ));
        }
        if self.model.trim().is_empty() {
            return Err("`model` is empty".into());
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "`concurrency` must be in 1..={MAX_CONCURRENCY}, got {}",
                self.concurrency
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(format!(
                "`retries` must be at most {MAX_RETRIES}, got {}",
                self.retries
            ));
        }
        if self.max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(format!(
                "`temperature` must be in [0, 2], got {}",
                self.temperature
            ));
        }
        if let Some(rpm) = self.max_requests_per_minute {
            if !(1..=MAX_REQUESTS_PER_MINUTE).contains(&rpm) {
                return Err(format!(
                    "`max_requests_per_minute` (`max_rpm`) must be in 1..={MAX_REQUESTS_PER_MINUTE} \
                     (leave it out for no limit), got {rpm}"
                ));
            }
        }
        if let Some(tpm) = self.max_tokens_per_minute {
            if !(1..=MAX_TOKENS_PER_MINUTE).contains(&tpm) {
                return Err(format!(
                    "`max_tokens_per_minute` (`max_tpm`) must be in 1..={MAX_TOKENS_PER_MINUTE} \
                     (leave it out for no limit), got {tpm}"
                ));
            }
            if tpm <= u64::from(self.max_tokens) {
                return Err(format!(
                    "`max_tokens_per_minute` (`max_tpm`) = {tpm} must exceed `max_tokens` = {}: \
                     every request counts its whole reply cap against the limit",
                    self.max_tokens
                ));
            }
        }
        for (field, secs) in [
            ("`timeout_secs`", self.timeout_secs),
            ("`backoff_initial_secs`", self.backoff_initial_secs),
            ("`backoff_max_secs`", self.backoff_max_secs),
            ("`retry_after_max_secs`", self.retry_after_max_secs),
        ] {
            rubric::limits::duration_secs(field, secs)?;
        }
        Ok(())
    }

    fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }

    /// Backoff before retry number `retry` (1-based): `backoff_initial_secs * 2^(retry-1)`,
    /// capped at `backoff_max_secs`, scaled by a factor in [0.5, 1] drawn from `rng` (so
    /// clients that failed together do not retry together); the server's `Retry-After`, cut
    /// to `retry_after_max_secs`, wins when longer.
    pub fn backoff(
        &self,
        retry: u32,
        server_wish: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let exp = self.backoff_initial_secs * 2f64.powi(retry.saturating_sub(1).min(30) as i32);
        let base = exp.min(self.backoff_max_secs);
        let jittered = base * rng.gen_range(0.5..=1.0);
        let wish = server_wish
            .map(|d| d.as_secs_f64().min(self.retry_after_max_secs))
            .unwrap_or(0.0);
        // Clamped, so that a config that skipped `validate` cannot panic the conversion either
        // (a NaN field drops out of `max`, a negative wait is none).
        let secs = jittered.max(wish).min(rubric::limits::MAX_SECS);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
    }
}

/// Why the HTTP judge could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpJudgeError {
    #[error("http judge config: {0}")]
    Config(String),
    #[error("http judge: environment variable `{0}` (named by `api_key_env`) is not set")]
    MissingApiKey(String),
    #[error("http judge: cannot build the HTTP client: {0}")]
    Client(String),
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [ChatMessage<'a>; 1],
    temperature: f32,
    max_tokens: u32,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// What one request ended in, short of a verdict.
enum AttemptError {
    /// Worth another try; `retry_after` is the server's own wish, if it said one.
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (bad key, unknown model, malformed request).
    Fatal(String),
}

/// The judge. Cheap to share behind an `Arc`; the client pools connections.
pub struct HttpJudge {
    config: HttpJudgeConfig,
    endpoint: String,
    client: reqwest::Client,
    permits: Semaphore,
    limits: RateLimits,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    verdicts: AtomicU64,
    failures: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    backoff_nanos: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl std::fmt::Debug for HttpJudge {
    /// Shows the config (which holds only the key's variable name), never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJudge")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Longest body excerpt kept in an error message.
const EXCERPT: usize = 200;

fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(EXCERPT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The wait a `Retry-After` header asks for, seen at `now`.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, now)
}

/// A `Retry-After` value as the wait from `now`: delta-seconds (the form APIs send) or an HTTP
/// date in IMF-fixdate form (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 7231), where a date already
/// past means no wait. Anything else is `None`, and the normal backoff applies.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        // A huge value ("1e30") still asks for a long wait (cut later to
        // `retry_after_max_secs`); it must not panic the conversion.
        return (secs >= 0.0).then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let at = UNIX_EPOCH + Duration::from_secs(imf_fixdate_unix(value)?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`). The day
/// name is not checked against the date: it carries no information.
fn imf_fixdate_unix(s: &str) -> Option<u64> {
    let [_day_name, day, month, year, time, "GMT"] = s.split_whitespace().collect::<Vec<_>>()[..]
    else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 (H. Hinnant's days_from_civil: years start in March, so the
    // leap day is the last day of its year and the month lengths follow a fixed pattern).
    let y = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (y / 400, y % 400);
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3_600 + m * 60 + sec)
}

impl HttpJudge {
    /// Builds the judge, reading the API key from the environment variable the config names.
    pub fn new(config: HttpJudgeConfig) -> Result<Self, HttpJudgeError> {
        config.validate().map_err(HttpJudgeError::Config)?;
        let mut headers = HeaderMap::new();
        if let Some(var) = &config.api_key_env {
            let key = std::env::var(var).map_err(|_| HttpJudgeError::MissingApiKey(var.clone()))?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                    HttpJudgeError::Config(format!(
                        "the value of `{var}` is not a valid header value (control characters?)"
                    ))
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs_f64(config.timeout_secs))
            .pool_max_idle_per_host(config.concurrency.max(1))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| HttpJudgeError::Client(e.to_string()))?;
        // `validate` bounded both limits far below `u32::MAX`.
        let per_minute = |limit: Option<u64>| limit.and_then(|n| NonZeroU32::new(n as u32));
        Ok(HttpJudge {
            endpoint: config.endpoint(),
            permits: Semaphore::new(config.concurrency),
            limits: RateLimits::new(
                per_minute(config.max_requests_per_minute),
                per_minute(config.max_tokens_per_minute),
            ),
            config,
            client,
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &HttpJudgeConfig {
        &self.config
    }

    /// The requests- and tokens-per-minute limits, and the waits they caused.
    pub fn rate_limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Total backoff this judge has chosen to wait between attempts, over all criteria
    /// (including any sleep still in progress).
    pub fn backoff_total(&self) -> Duration {
        Duration::from_nanos(self.counters.backoff_nanos.load(Ordering::Relaxed))
    }

    /// One request; the permit bounds concurrency and is released before any backoff sleep.
    /// With the permit held, the request waits for the rate limits (`tokens` is its estimate),
    /// so that it is sent as soon as they allow. `reply` is the graded response, whose own
    /// verdict-like text the parser ignores.
    async fn attempt(
        &self,
        prompt: &str,
        tokens: u64,
        reply: &str,
    ) -> Result<ParsedVerdict, AttemptError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        self.limits.acquire(tokens).await;
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let request = ChatRequest {
            model: &self.config.model,
            messages: [ChatMessage {
                role: "user",
                content: prompt,
            }],
            temperature: self.config.temperature,
            max_tokens: self.config.max_tokens,
        };
        let transport = |e: reqwest::Error| AttemptError::Retryable {
            message: if e.is_timeout() {
                format!("timed out after {}s", self.config.timeout_secs)
            } else {
                format!("transport error: {}", error_chain(&e))
            },
            retry_after: None,
        };
        let resp = self
            .client
            .post(&self.endpoint)
            .json(&request)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let wait = retry_after(resp.headers(), SystemTime::now());
        let body = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            let message = format!("HTTP {status}: {}", excerpt(&body));
            return Err(
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status.is_server_error()
                {
                    AttemptError::Retryable {
                        message,
                        retry_after: wait,
                    }
                } else {
                    AttemptError::Fatal(message)
                },
            );
        }
        let parsed: ChatResponse =
            serde_json::from_str(&body).map_err(|e| AttemptError::Retryable {
                message: format!(
                    "response is not a chat completion ({e}): {}",
                    excerpt(&body)
                ),
                retry_after: None,
            })?;
        if let Some(u) = parsed.usage {
            self.counters
                .prompt_tokens
                .fetch_add(u.prompt_tokens, Ordering::Relaxed);
            self.counters
                .completion_tokens
                .fetch_add(u.completion_tokens, Ordering::Relaxed);
        }
        let answer = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        extract_verdict(&answer, reply).map_err(|e| AttemptError::Retryable {
            message: format!("{e}: {:?}", excerpt(&answer)),
            retry_after: None,
        })
    }

    /// Grades one criterion with retries.
    async fn grade_one(&self, task: &GradeTask<'_>, index: usize) -> Verdict {
        let Some(criterion) = task.example.criteria.get(index) else {
            return crate::rules::out_of_range(task, index);
        };
        let prompt = grading_prompt(&task.example.prompt, task.response, criterion);
        let tokens = estimate_tokens(&prompt, self.config.max_tokens);
        let max_attempts = 1 + self.config.retries;
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            match self.attempt(&prompt, tokens, task.response).await {
                Ok(v) => break Ok(v),
                Err(AttemptError::Fatal(message)) => break Err(JudgeFailure::Other(message)),
                Err(AttemptError::Retryable {
                    message,
                    retry_after,
                }) => {
                    if attempts >= max_attempts {
                        break Err(JudgeFailure::Exhausted {
                            attempts,
                            last_error: message,
                        });
                    }
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = self
                        .config
                        .backoff(attempts, retry_after, &mut rand::thread_rng());
                    self.counters
                        .backoff_nanos
                        .fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
            }
        };
        self.counters.verdicts.fetch_add(1, Ordering::Relaxed);
        let (outcome, explanation) = match outcome {
            Ok(v) => (Ok(if v.met { 1.0 } else { 0.0 }), v.explanation),
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                (Err(e), String::new())
            }
        };
        Verdict {
            criterion: index,
            outcome,
            explanation,
            judge: self.id(),
            cached: false,
            attempts,
        }
    }
}

/// An error with its sources ("error sending request: connection reset by peer"), since
/// reqwest's top-level message alone rarely says what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!(": {inner}"));
        source = inner.source();
    }
    s
}

#[async_trait]
impl Judge for HttpJudge {
    fn id(&self) -> String {
        format!("http:{}", self.config.model)
    }

    fn prompt_version(&self) -> String {
        PROMPT_VERSION.to_string()
    }

    /// Each criterion's grade goes to `sink` as soon as its request (and retries) ended.
    async fn grade_reporting(
        &self,
        tasks: &[GradeTask<'_>],
        sink: &GradeSink<'_>,
    ) -> Vec<Vec<Verdict>> {
        let jobs = tasks.iter().enumerate().flat_map(|(ti, t)| {
            t.criterion_indices().into_iter().map(move |ci| async move {
                let grade = self.grade_one(t, ci).await;
                sink(ti, std::slice::from_ref(&grade));
                (ti, grade)
            })
        });
        let mut out: Vec<Vec<Verdict>> = tasks
            .iter()
            .map(|t| {
                Vec::with_capacity(t.criteria.map_or(t.example.criteria.len(), <[usize]>::len))
            })
            .collect();
        // join_all keeps input order, so each task's grades come back in its criterion order.
        for (ti, g) in futures_util::future::join_all(jobs).await {
            out[ti].push(g);
        }
        out
    }

    fn stats(&self) -> JudgeStats {
        let c = &self.counters;
        JudgeStats {
            verdicts: c.verdicts.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            calls: c.calls.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: c.completion_tokens.load(Ordering::Relaxed),
            rate_limit_requests_per_minute: self.limits.requests_per_minute().map_or(0, u64::from),
            rate_limit_tokens_per_minute: self.limits.tokens_per_minute().map_or(0, u64::from),
            rate_limited_waits: self.limits.waits(),
            rate_limit_wait_nanos: self.limits.wait_total().as_nanos() as u64,
            ..JudgeStats::default()
        }
    }
}
