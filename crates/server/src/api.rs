//! HTTP handlers, the auth/timeout/metrics middleware and the router.

use crate::groups::Grouped;
use crate::prompts::{id_of, response_from_query, MatchError};
use crate::scheduler::{Report, ReportFault, ValidationScores};
use crate::{clip, GradeFailure, Objective, Service};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rubric::{Message, RewardVector};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// An error answer: `{"error": {"message", "type", "field", "items"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    field: Option<String>,
    items: Vec<ItemError>,
}

/// What is wrong with one item of a batch request.
#[derive(Debug, Clone, Serialize)]
pub struct ItemError {
    pub index: usize,
    pub field: String,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            field: None,
            items: Vec::new(),
        }
    }

    fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
    }

    /// A batch with bad items: 422 naming every one (up to 100).
    fn items(status: StatusCode, kind: &'static str, items: Vec<ItemError>) -> Self {
        let first = &items[0];
        let message = format!(
            "{} item(s) rejected; first: item {} (`{}`): {}",
            items.len(),
            first.index,
            first.field,
            first.message
        );
        ApiError {
            items: items.into_iter().take(100).collect(),
            ..ApiError::new(status, kind, message)
        }
    }
}

/// Longest message or field name an error answer carries: they may quote client input.
const MAX_ECHO: usize = 1000;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let items: Vec<ItemError> = self
            .items
            .into_iter()
            .map(|i| ItemError {
                index: i.index,
                field: clip(&i.field, MAX_ECHO),
                message: clip(&i.message, MAX_ECHO),
            })
            .collect();
        let body = json!({"error": {
            "message": clip(&self.message, MAX_ECHO),
            "type": self.kind,
            "field": self.field.map(|f| clip(&f, MAX_ECHO)),
            "items": items,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// What a JSON value is, for messages that must not echo it.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde reads a struct from a JSON array by position, so `["id", null, ["text"]]` would pass
/// for an item: the entries of the array at `value[key]` (when it is one) must be objects.
fn entries_are_objects(value: &Value, key: &str, field: &str) -> Result<(), ApiError> {
    if let Some(Value::Array(entries)) = value.get(key) {
        if let Some((i, e)) = entries.iter().enumerate().find(|(_, e)| !e.is_object()) {
            return Err(ApiError::bad_request(
                format!("{field}[{i}]"),
                format!("must be a JSON object, got {}", json_kind(e)),
            ));
        }
    }
    Ok(())
}

/// The entries of a batch (`items`, `validation_completions`) and their chat messages must be
/// objects.
fn entries_and_messages_are_objects(value: &Value, key: &str) -> Result<(), ApiError> {
    entries_are_objects(value, key, key)?;
    if let Some(Value::Array(entries)) = value.get(key) {
        for (i, e) in entries.iter().enumerate() {
            entries_are_objects(e, "prompt", &format!("{key}[{i}].prompt"))?;
        }
    }
    Ok(())
}

/// Reads a request body as a JSON object.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(status, kind, format!("cannot read the request body: {e}"))
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("(body)", format!("request body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "(body)",
            format!(
                "request body must be a JSON object, got {}",
                json_kind(&value)
            ),
        ));
    }
    Ok(value)
}

/// Deserializes `T` from JSON, naming the offending field (`items[2].completions`).
fn shape<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(
            if path == "." { "(body)".into() } else { path },
            format!("request body has the wrong shape: {}", e.into_inner()),
        )
    })
}

/// Parses a JSON body into `T`, naming the offending field.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    shape(json_body(body)?)
}

fn check_count(service: &Service, n: usize) -> Result<(), ApiError> {
    let max = service.limits.max_completions;
    if n > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("{n} completions in one request; the limit is {max} (--max-completions)"),
        ));
    }
    Ok(())
}

/// Bad items of a batch, if any, as one 422 naming every one.
fn all_valid(errors: Vec<ItemError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::items(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_items",
        errors,
    ))
}

/// Per-completion failures as an error answer: 500 for a data/judge mismatch (no retry helps),
/// 503 otherwise (retrying, as OpenRLHF's client does, may succeed; verdicts already obtained
/// are cached).
fn grading_failed(failures: Vec<(usize, &str, GradeFailure)>) -> ApiError {
    let permanent = failures
        .iter()
        .any(|(_, _, f)| matches!(f, GradeFailure::NotGradable(_)));
    let items = failures
        .into_iter()
        .map(|(index, field, f)| ItemError {
            index,
            field: format!("{field}[{index}]"),
            message: format!("judge failed: {}", f.message()),
        })
        .collect();
    if permanent {
        ApiError::items(
            StatusCode::INTERNAL_SERVER_ERROR,
            "judge_cannot_grade",
            items,
        )
    } else {
        ApiError::items(StatusCode::SERVICE_UNAVAILABLE, "judge_unavailable", items)
    }
}

/// The schedule state could not be saved, so what the request would have changed (a report,
/// a count of completions) was not taken: 500, and the schedule is unchanged. The path and the
/// OS error are for the operator's log, not the client.
fn state_not_saved(what: &str, cause: &str) -> ApiError {
    eprintln!("arlrr serve: error: {what}, schedule state not saved: {cause}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "state_write_failed",
        format!(
            "the schedule state could not be saved, so {what} and the schedule is unchanged; \
             retry later (verdicts already graded are cached); the service log says why"
        ),
    )
}

/// Header that marks a reward request as evaluation traffic (`x-arlrr-eval: 1`): graded and
/// answered as any other, but never counted toward training steps.
pub const EVAL_HEADER: &str = "x-arlrr-eval";

/// Label prefix that marks an OpenRLHF completion as evaluation traffic (`eval:<example id>`),
/// for its URL mode, which sends no headers; the id after it is matched as usual.
pub const EVAL_LABEL_PREFIX: &str = "eval:";

/// Whether a request carries [`EVAL_HEADER`] set to `1`, `true` or `yes`.
fn eval_traffic(headers: &HeaderMap) -> bool {
    headers
        .get(EVAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// Counts `n` graded completions toward the schedule's steps before their rewards go out.
fn count(service: &Service, n: usize) -> Result<(), ApiError> {
    service
        .count_completions(n as u64)
        .map_err(|e| state_not_saved("the completions were not counted", &format!("{e:#}")))
}

/// The reward vector as JSON: per-class values by name, `null` = no signal.
fn class_map(service: &Service, r: &RewardVector) -> Map<String, Value> {
    service
        .class_names
        .iter()
        .zip(&r.classes)
        .map(|(n, v)| (n.clone(), json!(v)))
        .collect()
}

/// Groups item indices by a key, in order of first appearance.
fn group_by<K: Eq + std::hash::Hash + Copy>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut order: Vec<Vec<usize>> = Vec::new();
    let mut at: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let g = *at.entry(*k).or_insert_with(|| {
            order.push(Vec::new());
            order.len() - 1
        });
        order[g].push(i);
    }
    order
}

/// GDPO rewards of graded completions `(example, reward vector)` collected across requests
/// into their prompts' groups ([`crate::groups`]), in order. All members join before any
/// waits, so a request holding a whole group is answered at once.
async fn collected(service: &Service, members: Vec<(usize, RewardVector)>) -> Vec<Grouped> {
    let tickets: Vec<_> = members
        .into_iter()
        .map(|(e, r)| service.groups.join(e, r))
        .collect();
    let mut out = Vec::with_capacity(tickets.len());
    for t in tickets {
        out.push(service.groups.wait(t).await);
    }
    out
}

/// Under `gdpo` without `--group-size`, a prompt's completions must arrive together: a lone
/// completion has no group to be normalized in, and its reward would be a silent null.
fn lone_gdpo_completion(field: String, what: &str) -> ApiError {
    ApiError::bad_request(
        field,
        format!(
            "objective gdpo normalizes the completions of a prompt as a group, but {what}: \
             start arlrr serve with --group-size <completions per prompt> to collect groups \
             across requests (engines that send one completion per call: OpenRLHF 0.9.1 and \
             later, verl's reward loop, TRL with several processes)"
        ),
    )
}

/// How a reward request's completions are grouped under the objective.
struct Grouping {
    gdpo: bool,
    /// GDPO groups are collected across requests (`--group-size`).
    collect: bool,
    /// A prompt's lone completion is refused ([`lone_gdpo_completion`]).
    refuse_lone: bool,
}

impl Grouping {
    /// Evaluation traffic is never held for a training group: its prompts' completions are
    /// normalized within the request, and a lone one is answered without a GDPO reward.
    fn of(service: &Service, eval: bool) -> Self {
        let gdpo = service.objective == Objective::Gdpo;
        let collect = gdpo && service.groups.enabled() && !eval;
        Grouping {
            gdpo,
            collect,
            refuse_lone: gdpo && !collect && !eval,
        }
    }
}

/// OpenRLHF's remote reward request, as its `remote_rm_fn_ray` sends it (OpenRLHF
/// v0.6–v0.9.0, `openrlhf/utils/remote_rm_utils.py`, a batch per request) and its
/// `SingleTurnAgentExecutor._fetch_rewards_via_http` (v0.9.1 on, one completion per request):
/// `query` = prompt + response as the engine decoded them, `prompts` = the prompt texts,
/// `labels` = the `--label_key` column. Other fields that forks add are ignored.
#[derive(Debug, Deserialize)]
pub struct OpenRlhfRequest {
    pub query: Vec<String>,
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<Vec<Value>>,
}

/// `POST /openrlhf/reward` (and `/get_reward`, the path of OpenRLHF's own `serve_rm`).
///
/// Each query is matched by its label (the example id: set `--label_key` to the id column)
/// or, when the label is null or empty, by its prompt text; the response is the query after
/// the prompt, without trailing special tokens. Answer, read by OpenRLHF's
/// `request_api_wrapper` + `update_samples_with_rewards` (v0.8/0.9), one value per query in
/// order:
/// - `rewards`: the scalar under the objective (no signal = 0.0, which GRPO-style group
///   normalization turns into a zero advantage since it is the same for the whole group);
/// - `scores`: the overall rubric score clipped to [0, 1] (dynamic filtering);
/// - `extra_logs`: `arlrr/overall` and `arlrr/<class>` (0.0 where undefined) with
///   `arlrr/<class>_defined` (1.0 / 0.0), and `arlrr/active_class` (the class index, -1 for
///   the baselines): the same keys in every answer, as OpenRLHF concatenates them.
///
/// Under `gdpo` the answer also has `arlrr/group_size`, the size of the group each reward was
/// normalized in. Without a group size configured, a prompt with a single completion in the
/// request is refused (400): its reward would be a silent 0.0. With one, completions are
/// collected across requests ([`crate::groups`]).
///
/// A judge failure fails the whole request (503), so OpenRLHF retries it; a reward is never
/// made up for an ungraded completion.
pub async fn openrlhf_reward(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: OpenRlhfRequest = parse(body)?;
    let n = req.query.len();
    check_count(&service, n)?;
    let prompts = openrlhf_prompts(&req)?;
    let eval_labels = openrlhf_eval_labels(&req)?;
    let eval = eval_traffic(&headers) || eval_labels;
    let matched = match_queries(&service, &req, prompts)?;
    let examples: Vec<usize> = matched.iter().map(|m| m.0).collect();
    let groups = group_by(&examples);
    let grouping = Grouping::of(&service, eval);
    if grouping.refuse_lone {
        if let Some(lone) = groups.iter().find(|g| g.len() < 2) {
            return Err(lone_gdpo_completion(
                "query".into(),
                &format!(
                    "query[{}] is the only completion of its prompt in this request",
                    lone[0]
                ),
            ));
        }
    }
    // the class read once: the one graded (`--grade active`) is the one rewarded
    let active = service
        .scheduler
        .lock()
        .expect("scheduler lock")
        .active_class();
    let only = service.graded_class(active);
    let rewards = grade_queries(&service, &matched, only).await?;
    let (reward, group_size) = if grouping.collect {
        collected_rewards(&service, &examples, &rewards).await
    } else {
        request_rewards(&service, &groups, &rewards, active)
    };
    let scores = openrlhf_scores(&rewards, only);
    let mut logs = openrlhf_logs(&service, &rewards, active);
    if grouping.gdpo {
        logs.insert("arlrr/group_size".into(), json!(group_size));
    }
    if !eval {
        count(&service, n)?;
    }
    Ok(Json(json!({
        "rewards": reward,
        "scores": scores,
        "extra_logs": logs,
    })))
}

/// The prompt texts of an OpenRLHF request, one per query.
fn openrlhf_prompts(req: &OpenRlhfRequest) -> Result<&[String], ApiError> {
    let n = req.query.len();
    let Some(prompts) = &req.prompts else {
        return Err(ApiError::bad_request(
            "prompts",
            "missing: the prompt texts are needed to cut each response out of its query",
        ));
    };
    if prompts.len() != n {
        return Err(ApiError::bad_request(
            "prompts",
            format!("{} entries, but `query` has {n}", prompts.len()),
        ));
    }
    if let Some(labels) = &req.labels {
        if labels.len() != n {
            return Err(ApiError::bad_request(
                "labels",
                format!("{} entries, but `query` has {n}", labels.len()),
            ));
        }
    }
    Ok(prompts)
}

/// Whether an OpenRLHF request is evaluation traffic by its labels: OpenRLHF's URL mode sends
/// no headers, so an `eval:` label prefix marks it. A request that mixes the two is refused.
fn openrlhf_eval_labels(req: &OpenRlhfRequest) -> Result<bool, ApiError> {
    let eval_labels: Vec<bool> = (0..req.query.len())
        .map(|i| {
            req.labels.as_ref().is_some_and(|l| {
                l[i].as_str()
                    .is_some_and(|s| s.starts_with(EVAL_LABEL_PREFIX))
            })
        })
        .collect();
    if eval_labels.iter().any(|&e| e) && !eval_labels.iter().all(|&e| e) {
        let i = eval_labels.iter().position(|&e| !e).expect("some are not");
        return Err(ApiError::bad_request(
            format!("labels[{i}]"),
            format!(
                "the request mixes evaluation (`{EVAL_LABEL_PREFIX}` labels) and training \
                 completions; send them apart"
            ),
        ));
    }
    Ok(eval_labels.first() == Some(&true))
}

/// Each query's example (by its label, else its prompt text) and response (the query after
/// its prompt); every query that cannot be matched is named in one 422.
fn match_queries<'a>(
    service: &Service,
    req: &'a OpenRlhfRequest,
    prompts: &[String],
) -> Result<Vec<(usize, &'a str)>, ApiError> {
    let mut errors = Vec::new();
    let mut matched = Vec::with_capacity(req.query.len());
    for (i, query) in req.query.iter().enumerate() {
        let item = query_example(service, req.labels.as_ref().map(|l| &l[i]), &prompts[i], i)
            .and_then(|example| match response_from_query(query, &prompts[i]) {
                Some(r) => Ok((example, r)),
                None => Err(ItemError {
                    index: i,
                    field: format!("query[{i}]"),
                    message: "the query does not contain its prompt (`prompts[i]`)".into(),
                }),
            });
        match item {
            Ok(m) => matched.push(m),
            Err(e) => errors.push(e),
        }
    }
    all_valid(errors)?;
    Ok(matched)
}

/// The example of query `index`: by its label (the example id, without an `eval:` prefix) or,
/// when the label is null or empty, by its prompt text.
fn query_example(
    service: &Service,
    label: Option<&Value>,
    prompt: &str,
    index: usize,
) -> Result<usize, ItemError> {
    let id = label
        .and_then(id_of)
        .map(|id| match id.strip_prefix(EVAL_LABEL_PREFIX) {
            Some(rest) => rest.to_string(),
            None => id,
        });
    if let Some(l) = label.filter(|l| !l.is_null() && id.is_none()) {
        return Err(ItemError {
            index,
            field: format!("labels[{index}]"),
            message: format!(
                "expected the example id (a string or number) or null, got {}",
                json_kind(l)
            ),
        });
    }
    service
        .index
        .find(&service.data, id.as_deref(), Some(prompt))
        .map_err(|e| {
            let field = if matches!(e, MatchError::UnknownId(_)) {
                format!("labels[{index}]")
            } else {
                format!("prompts[{index}]")
            };
            ItemError {
                index,
                field,
                message: e.to_string(),
            }
        })
}

/// Grades the matched queries; a failure of any fails the request ([`grading_failed`]).
async fn grade_queries(
    service: &Service,
    matched: &[(usize, &str)],
    only: Option<usize>,
) -> Result<Vec<RewardVector>, ApiError> {
    let graded = service.grade(matched, only).await;
    let failures: Vec<(usize, &str, GradeFailure)> = graded
        .iter()
        .enumerate()
        .filter_map(|(i, g)| g.as_ref().err().map(|f| (i, "query", f.clone())))
        .collect();
    if !failures.is_empty() {
        return Err(grading_failed(failures));
    }
    Ok(graded.into_iter().map(|g| g.expect("checked")).collect())
}

/// The scalar reward of each query (no signal = 0.0) and the size of the group it was
/// normalized in, under GDPO collected across requests.
async fn collected_rewards(
    service: &Service,
    examples: &[usize],
    rewards: &[RewardVector],
) -> (Vec<f64>, Vec<f64>) {
    let members: Vec<_> = examples
        .iter()
        .copied()
        .zip(rewards.iter().cloned())
        .collect();
    collected(service, members)
        .await
        .into_iter()
        .map(|g| (g.reward.unwrap_or(0.0), g.group_size as f64))
        .unzip()
}

/// The scalar reward of each query (no signal = 0.0) and the size of the group it was
/// normalized in, its prompt's queries in this request being its group.
fn request_rewards(
    service: &Service,
    groups: &[Vec<usize>],
    rewards: &[RewardVector],
    active: Option<usize>,
) -> (Vec<f64>, Vec<f64>) {
    let mut reward = vec![0.0; rewards.len()];
    let mut group_size = vec![0.0; rewards.len()];
    let grouped: Vec<Vec<Option<RewardVector>>> = groups
        .iter()
        .map(|g| g.iter().map(|&i| Some(rewards[i].clone())).collect())
        .collect();
    let scalars = service.scalar_rewards(&grouped, active);
    for (g, values) in groups.iter().zip(scalars) {
        for (&i, v) in g.iter().zip(values) {
            reward[i] = v.unwrap_or(0.0);
            group_size[i] = g.len() as f64;
        }
    }
    (reward, group_size)
}

/// The overall rubric score of each query clipped to [0, 1]; under `--grade active` the
/// overall score is not graded: the active class's stands in.
fn openrlhf_scores(rewards: &[RewardVector], only: Option<usize>) -> Vec<f64> {
    rewards
        .iter()
        .map(|r| {
            let score = r.overall.or_else(|| only.and_then(|k| r.classes[k]));
            score.unwrap_or(0.0).clamp(0.0, 1.0)
        })
        .collect()
}

/// OpenRLHF's `extra_logs`: `arlrr/overall`, `arlrr/<class>` and `arlrr/<class>_defined`,
/// `arlrr/active_class`, one value per query.
fn openrlhf_logs(
    service: &Service,
    rewards: &[RewardVector],
    active: Option<usize>,
) -> Map<String, Value> {
    let mut logs = Map::new();
    logs.insert(
        "arlrr/overall".into(),
        json!(rewards
            .iter()
            .map(|r| r.overall.unwrap_or(0.0))
            .collect::<Vec<_>>()),
    );
    for (k, name) in service.class_names.iter().enumerate() {
        let values: Vec<f64> = rewards
            .iter()
            .map(|r| r.classes[k].unwrap_or(0.0))
            .collect();
        let defined: Vec<f64> = rewards
            .iter()
            .map(|r| f64::from(u8::from(r.classes[k].is_some())))
            .collect();
        logs.insert(format!("arlrr/{name}"), json!(values));
        logs.insert(format!("arlrr/{name}_defined"), json!(defined));
    }
    let active_index = active.map_or(-1.0, |k| k as f64);
    logs.insert(
        "arlrr/active_class".into(),
        json!(vec![active_index; rewards.len()]),
    );
    logs
}

/// A prompt as a client may send it: plain text or chat messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptText {
    Text(String),
    Messages(Vec<Message>),
}

/// One prompt and its completions (a GDPO group).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeItem {
    /// The example id (string or number); wins over `prompt` when both are given.
    #[serde(default)]
    pub prompt_id: Option<Value>,
    #[serde(default)]
    pub prompt: Option<PromptText>,
    pub completions: Vec<String>,
}

/// `{"items": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeBatch {
    items: Vec<NativeItem>,
}

fn item_example(service: &Service, item: &NativeItem, index: usize) -> Result<usize, ItemError> {
    let err = |field: &str, message: String| ItemError {
        index,
        field: format!("items[{index}].{field}"),
        message,
    };
    let id = match &item.prompt_id {
        None | Some(Value::Null) => None,
        Some(v) => Some(id_of(v).ok_or_else(|| {
            err(
                "prompt_id",
                format!("expected a string or a number, got {}", json_kind(v)),
            )
        })?),
    };
    let text = match &item.prompt {
        None => None,
        Some(PromptText::Text(t)) => Some(t.clone()),
        Some(PromptText::Messages(m)) => Some(crate::prompts::conversation_text(m)),
    };
    service
        .index
        .find(&service.data, id.as_deref(), text.as_deref())
        .map_err(|e| {
            let field = match e {
                MatchError::UnknownId(_) => "prompt_id",
                _ => "prompt",
            };
            err(field, e.to_string())
        })
}

/// `POST /v1/rewards`: the native endpoint.
///
/// Request: `{"items": [{"prompt_id": "...", "completions": ["...", ...]}, ...]}` (or one
/// item's fields at the top level); `prompt` (text or `[{role, content}]`) may replace
/// `prompt_id`. An item's completions form one GDPO group.
///
/// Answer: `objective`, `active_class`, `phase`, `step`, `classes`, and per item
/// `{"prompt_id", "completions": [{"reward", "overall", "classes": {name: value}, "error"}]}`
/// where `reward` is the scalar under the objective and `null` means no signal (or a failed
/// grading, with `error` saying why; the other completions are still answered).
///
/// Under `gdpo` each graded completion also has `group_size`, the size of the group its reward
/// was normalized in. With `--group-size`, completions are collected by prompt across requests
/// and processes ([`crate::groups`]): the answer waits until each of its completions' groups is
/// full (or its window has passed). Without it, an item is a group, and an item with a single
/// completion is refused (400): it has no group, and its reward would be a silent null.
pub async fn native_rewards(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let items = native_items(json_body(body)?)?;
    let total: usize = items.iter().map(|i| i.completions.len()).sum();
    check_count(&service, total)?;
    let examples = item_examples(&service, &items)?;
    let eval = eval_traffic(&headers);
    let grouping = Grouping::of(&service, eval);
    if grouping.refuse_lone {
        if let Some(i) = items.iter().position(|it| it.completions.len() == 1) {
            return Err(lone_gdpo_completion(
                format!("items[{i}].completions"),
                &format!("items[{i}] has a single completion"),
            ));
        }
    }
    let (active, status) = {
        let s = service.scheduler.lock().expect("scheduler lock");
        (s.active_class(), s.status())
    };
    let only = service.graded_class(active);
    let graded = grade_items(&service, &items, &examples, only).await;
    let groups: Vec<Vec<Option<RewardVector>>> = graded
        .iter()
        .map(|g| g.iter().map(|r| r.as_ref().ok().cloned()).collect())
        .collect();
    // under collected GDPO, each graded completion's group and the size it was normalized in
    let grouped = if grouping.collect {
        collected_groups(&service, &groups, &examples).await
    } else {
        Vec::new()
    };
    let scalars: Vec<Vec<Option<f64>>> = if grouping.collect {
        grouped
            .iter()
            .map(|g| g.iter().map(|x| x.and_then(|x| x.reward)).collect())
            .collect()
    } else {
        service.scalar_rewards(&groups, active)
    };
    let out_items = native_answers(&service, &graded, &scalars, &examples, &grouped);
    // only graded completions are training data: a judge outage must not move the schedule
    let graded_ok = graded.iter().flatten().filter(|g| g.is_ok()).count();
    if !eval {
        count(&service, graded_ok)?;
    }
    let graded_classes: Vec<&String> = match only {
        Some(k) => vec![&service.class_names[k]],
        None => service.class_names.iter().collect(),
    };
    Ok(Json(json!({
        "objective": status.objective,
        "active_class": active.map(|k| service.class_names[k].clone()),
        "graded_classes": graded_classes,
        "phase": status.phase,
        "step": status.step,
        "classes": service.class_names,
        "items": out_items,
    })))
}

/// The items of a native request: a batch, or one item's fields at the top level.
fn native_items(value: Value) -> Result<Vec<NativeItem>, ApiError> {
    if value.get("items").is_some() {
        entries_and_messages_are_objects(&value, "items")?;
        Ok(shape::<NativeBatch>(value)?.items)
    } else {
        entries_are_objects(&value, "prompt", "prompt")?;
        Ok(vec![shape::<NativeItem>(value)?])
    }
}

/// Each item's example; every item that cannot be matched is named in one 422.
fn item_examples(service: &Service, items: &[NativeItem]) -> Result<Vec<usize>, ApiError> {
    let mut errors = Vec::new();
    let mut examples = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item_example(service, item, i) {
            Ok(e) => examples.push(e),
            Err(e) => errors.push(e),
        }
    }
    all_valid(errors)?;
    Ok(examples)
}

/// Grades the completions of all items at once, answered per item.
async fn grade_items(
    service: &Service,
    items: &[NativeItem],
    examples: &[usize],
    only: Option<usize>,
) -> Vec<Vec<Result<RewardVector, GradeFailure>>> {
    let flat: Vec<(usize, &str)> = items
        .iter()
        .zip(examples)
        .flat_map(|(item, &e)| item.completions.iter().map(move |c| (e, c.as_str())))
        .collect();
    let mut graded = service.grade(&flat, only).await.into_iter();
    items
        .iter()
        .map(|item| graded.by_ref().take(item.completions.len()).collect())
        .collect()
}

/// Each graded completion's GDPO reward collected across requests, per item (`None` for a
/// completion that failed grading).
async fn collected_groups(
    service: &Service,
    groups: &[Vec<Option<RewardVector>>],
    examples: &[usize],
) -> Vec<Vec<Option<Grouped>>> {
    let members: Vec<(usize, RewardVector)> = groups
        .iter()
        .zip(examples)
        .flat_map(|(g, &e)| g.iter().flatten().map(move |r| (e, r.clone())))
        .collect();
    let mut answers = collected(service, members).await.into_iter();
    groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|r| r.as_ref().and_then(|_| answers.next()))
                .collect()
        })
        .collect()
}

/// The answer's `items`: per item its `prompt_id` and its completions' answers. Under `gdpo`
/// a graded completion's group size is its collected group's (`grouped`), else its item's
/// graded completions.
fn native_answers(
    service: &Service,
    graded: &[Vec<Result<RewardVector, GradeFailure>>],
    scalars: &[Vec<Option<f64>>],
    examples: &[usize],
    grouped: &[Vec<Option<Grouped>>],
) -> Vec<Value> {
    let gdpo = service.objective == Objective::Gdpo;
    graded
        .iter()
        .zip(scalars)
        .zip(examples)
        .enumerate()
        .map(|(i, ((g, s), &e))| {
            let graded_ok = g.iter().filter(|r| r.is_ok()).count();
            let completions: Vec<Value> = g
                .iter()
                .zip(s)
                .enumerate()
                .map(|(j, (r, scalar))| {
                    let group_size = gdpo.then(|| match grouped.get(i) {
                        Some(g) => g[j].map_or(0, |x| x.group_size),
                        None => graded_ok,
                    });
                    completion_answer(service, r, *scalar, group_size)
                })
                .collect();
            json!({"prompt_id": service.data.examples[e].id, "completions": completions})
        })
        .collect()
}

/// One completion's answer: `reward`, `overall`, `classes` and, under `gdpo`, `group_size`;
/// a failed grading has nulls and an `error`.
fn completion_answer(
    service: &Service,
    graded: &Result<RewardVector, GradeFailure>,
    scalar: Option<f64>,
    group_size: Option<usize>,
) -> Value {
    match (graded, group_size) {
        (Ok(r), Some(size)) => json!({
            "reward": scalar,
            "overall": r.overall,
            "classes": class_map(service, r),
            "group_size": size,
        }),
        (Ok(r), None) => json!({
            "reward": scalar,
            "overall": r.overall,
            "classes": class_map(service, r),
        }),
        (Err(f), _) => json!({
            "reward": null,
            "overall": null,
            "classes": null,
            "error": format!("judge failed: {}", f.message()),
        }),
    }
}

/// `GET /v1/schedule`.
pub async fn schedule_status(State(service): State<Arc<Service>>) -> Json<Value> {
    Json(json!(service.status()))
}

/// One validation completion the service grades itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationCompletion {
    #[serde(default)]
    pub prompt_id: Option<Value>,
    #[serde(default)]
    pub prompt: Option<PromptText>,
    pub completion: String,
}

/// Mean clipped to [0, 1], as HealthBench reports a dataset figure; `None` for no values.
fn clipped_mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| schedule::stats::mean(values).clamp(0.0, 1.0))
}

/// Grades validation completions and scores them as `arlrr eval` does: overall and per class,
/// the clipped mean of the defined values. Failed gradings are left out and counted.
async fn score_validation(
    service: &Service,
    completions: &[ValidationCompletion],
) -> Result<(ValidationScores, usize), ApiError> {
    check_count(service, completions.len())?;
    let mut errors = Vec::new();
    let mut flat = Vec::with_capacity(completions.len());
    for (i, c) in completions.iter().enumerate() {
        let item = NativeItem {
            prompt_id: c.prompt_id.clone(),
            prompt: c.prompt.clone(),
            completions: Vec::new(),
        };
        match item_example(service, &item, i) {
            Ok(e) => flat.push((e, c.completion.as_str())),
            Err(mut e) => {
                e.field = e.field.replacen("items", "validation_completions", 1);
                errors.push(e);
            }
        }
    }
    all_valid(errors)?;
    let graded = service.grade(&flat, None).await;
    let ok: Vec<&RewardVector> = graded.iter().filter_map(|g| g.as_ref().ok()).collect();
    let failed = graded.len() - ok.len();
    let overall: Vec<f64> = ok.iter().filter_map(|r| r.overall).collect();
    let mut classes = BTreeMap::new();
    for (k, name) in service.class_names.iter().enumerate() {
        let v: Vec<f64> = ok.iter().filter_map(|r| r.classes[k]).collect();
        if let Some(m) = clipped_mean(&v) {
            classes.insert(name.clone(), m);
        }
    }
    Ok((
        ValidationScores {
            overall: clipped_mean(&overall),
            classes,
        },
        failed,
    ))
}

/// `POST /v1/schedule/report`: training steps, validation and probe results from the trainer.
/// Answers `{"decision": ... | null, "validation": ... | null, "schedule": status}`.
pub async fn schedule_report(
    State(service): State<Arc<Service>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let value = json_body(body)?;
    entries_and_messages_are_objects(&value, "validation_completions")?;
    if let Some(v) = value
        .get("validation")
        .filter(|v| !v.is_null() && !v.is_object())
    {
        return Err(ApiError::bad_request(
            "validation",
            format!(
                "must be a JSON object ({{\"overall\", \"classes\"}}), got {}",
                json_kind(v)
            ),
        ));
    }
    let req: Report<ValidationCompletion> = shape(value)?;
    let mut failed_validation = 0;
    let validation = match (req.validation, &req.validation_completions) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "validation_completions",
                "give either `validation` (scores) or `validation_completions`, not both",
            ))
        }
        (v, None) => v,
        (None, Some(c)) => {
            let (v, failed) = score_validation(&service, c).await?;
            failed_validation = failed;
            Some(v)
        }
    };
    let report = Report {
        step: req.step,
        steps: req.steps,
        validation: validation.clone(),
        probe_class: req.probe_class,
        validation_completions: None,
    };
    let (decision, status) = {
        let mut s = service.scheduler.lock().expect("scheduler lock");
        let d = s.report(report).map_err(|e| match e.fault {
            ReportFault::Invalid => ApiError::bad_request(e.field, e.message),
            ReportFault::Conflict => ApiError {
                field: Some(e.field),
                ..ApiError::new(StatusCode::CONFLICT, "schedule_conflict", e.message)
            },
            ReportFault::Io => state_not_saved("the report was not applied", &e.message),
        })?;
        (d, s.status())
    };
    if let Some(d) = &decision {
        eprintln!(
            "arlrr serve: step {}: phase {} trains `{}`",
            d.step, d.phase, d.chosen
        );
    }
    Ok(Json(json!({
        "decision": decision,
        "validation": validation,
        "validation_failed_completions": failed_validation,
        "schedule": status,
    })))
}

/// `GET /metrics`.
pub async fn metrics(State(service): State<Arc<Service>>) -> Response {
    let (active, step, phase) = {
        let s = service.scheduler.lock().expect("scheduler lock");
        (s.active_class(), s.state().step, s.state().phase.index)
    };
    let text = service.metrics.render(&crate::metrics::Snapshot {
        judge: service.judge.stats(),
        cached: service.judge_cached,
        classes: &service.class_names,
        active_class: active,
        step,
        phase,
        group_waiting: service.groups.waiting(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Reads and discards, in the background, a refused body that a client is still sending, so
/// that it reads the 413 instead of a broken pipe; only a body within twice the limit, and for
/// at most the header timeout. A larger one is not waited for: the connection closes after the
/// answer.
fn drain_in_background(body: axum::body::Body, declared: u64, limits: &crate::Limits) {
    use http_body_util::BodyExt;
    if declared > 2 * limits.max_body_bytes as u64 {
        return;
    }
    let mut body = body;
    tokio::spawn(tokio::time::timeout(limits.header_timeout, async move {
        while let Some(Ok(_)) = body.frame().await {}
    }));
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 7235) and the token is taken without surrounding whitespace.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Authentication (bearer token, all but `/healthz`), the per-request timeout and the
/// metrics of every routed request.
async fn guard(State(service): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let authorized = match &service.token {
        None => true,
        Some(_) if endpoint == "/healthz" => true,
        Some(token) => req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())),
    };
    let too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&n| n > service.limits.max_body_bytes as u64);
    let response = if !authorized {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (header `Authorization: Bearer <token>`)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
        r
    } else if let Some(n) = too_large {
        // said up front: answered at once, not after waiting for a body that is never read
        drain_in_background(req.into_body(), n, &service.limits);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the body is {n} bytes (Content-Length); the limit is {} bytes (--max-body-mib)",
                service.limits.max_body_bytes
            ),
        )
        .into_response()
    } else {
        let limit = service.limits.request_timeout;
        match tokio::time::timeout(limit, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request took longer than {:.0} s (--request-timeout-secs) and was abandoned",
                    limit.as_secs_f64()
                ),
            )
            .into_response(),
        }
    };
    service
        .metrics
        .observe(&endpoint, response.status().as_u16(), start.elapsed());
    response
}

async fn method_not_allowed(req: Request) -> ApiError {
    // axum adds the `Allow` header to a 405 that has none
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {} (the `Allow` header lists the methods that are)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {} {}; endpoints: POST /openrlhf/reward, POST /get_reward, \
             POST /v1/rewards, GET /v1/schedule, POST /v1/schedule/report, GET /healthz, GET /metrics",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The service's router; serve it with `axum::serve`.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/openrlhf/reward", post(openrlhf_reward))
        .route("/get_reward", post(openrlhf_reward))
        .route("/v1/rewards", post(native_rewards))
        .route("/v1/schedule", get(schedule_status))
        .route("/v1/schedule/report", post(schedule_report))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        // before `route_layer`: it applies to the routes registered so far, unlayered
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(service.clone(), guard))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(service.limits.max_body_bytes))
        .with_state(service)
}
