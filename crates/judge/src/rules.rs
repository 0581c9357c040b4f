//! The rule judge: evaluates a criterion's machine-checkable [`Check`] against the response.
//!
//! Deterministic and free, so the trainer's tests and the cheap criteria of real runs use it.
//! Text matching is case-insensitive throughout, regexes included (the rubric data model
//! promises that). A criterion without `check` is [`JudgeFailure::NotGradable`]: guessing would
//! put invented verdicts into rewards.

use crate::text;
use crate::{GradeTask, Judge, JudgeFailure, JudgeStats, Verdict};
use async_trait::async_trait;
use regex::{Regex, RegexBuilder};
use rubric::{Check, Criterion};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Judge id of the rule judge; bump the suffix when a check's semantics change, since the id
/// is part of the cache key.
pub const RULES_JUDGE_ID: &str = "rules-v1";

/// Evaluates [`Check`]s. Compiled regexes are cached by pattern for the judge's lifetime.
#[derive(Default)]
pub struct RuleJudge {
    regexes: RwLock<HashMap<String, Result<Arc<Regex>, String>>>,
    verdicts: AtomicU64,
    failures: AtomicU64,
}

/// A response prepared once for all the checks run against it.
pub struct PreparedResponse<'a> {
    pub original: &'a str,
    pub lower: String,
}

impl<'a> PreparedResponse<'a> {
    pub fn new(response: &'a str) -> Self {
        PreparedResponse {
            original: response,
            lower: response.to_lowercase(),
        }
    }
}

impl RuleJudge {
    pub fn new() -> Self {
        Self::default()
    }

    /// The compiled (case-insensitive) regex for `pattern`, compiling it on first use.
    fn regex(&self, pattern: &str) -> Result<Arc<Regex>, String> {
        if let Some(r) = self.regexes.read().expect("regex cache lock").get(pattern) {
            return r.clone();
        }
        let compiled = RegexBuilder::new(pattern)
            .case_insensitive(true)
            .build()
            .map(Arc::new)
            .map_err(|e| format!("invalid regex `{pattern}`: {e}"));
        self.regexes
            .write()
            .expect("regex cache lock")
            .insert(pattern.to_string(), compiled.clone());
        compiled
    }

    /// Evaluates one check. `Err` only for a check that cannot be evaluated (a bad regex, an
    /// empty phrase list): that is a broken rubric, not a verdict.
    pub fn evaluate(&self, check: &Check, response: &PreparedResponse<'_>) -> Result<bool, String> {
        let lower = response.lower.as_str();
        Ok(match check {
            Check::ContainsAny { phrases } => {
                non_empty(phrases, "contains_any")?;
                phrases.iter().any(|p| text::contains_ci(lower, p))
            }
            Check::ContainsAll { phrases } => {
                non_empty(phrases, "contains_all")?;
                phrases.iter().all(|p| text::contains_ci(lower, p))
            }
            Check::ContainsNone { phrases } => {
                non_empty(phrases, "contains_none")?;
                !phrases.iter().any(|p| text::contains_ci(lower, p))
            }
            Check::Regex { pattern } => self.regex(pattern)?.is_match(response.original),
            Check::WordCount { min, max } => {
                if min.is_none() && max.is_none() {
                    return Err("word_count needs `min`, `max` or both".into());
                }
                let n = text::word_count(response.original);
                min.is_none_or(|m| m <= n) && max.is_none_or(|m| n <= m)
            }
            Check::StartsWith { text: t } => text::starts_with_ci(lower, t),
            Check::EndsWith { text: t } => text::ends_with_ci(lower, t),
            Check::HasList { style } => text::has_list(response.original, *style),
            Check::AsksQuestion {} => text::asks_question(response.original),
            Check::MentionsNumber {} => text::mentions_number(lower),
            Check::Not { check } => !self.evaluate(check, response)?,
            Check::All { checks } => {
                non_empty(checks, "all")?;
                for c in checks {
                    if !self.evaluate(c, response)? {
                        return Ok(false);
                    }
                }
                true
            }
            Check::Any { checks } => {
                non_empty(checks, "any")?;
                for c in checks {
                    if self.evaluate(c, response)? {
                        return Ok(true);
                    }
                }
                false
            }
        })
    }

    /// Grades one criterion against a prepared response.
    pub fn grade_criterion(
        &self,
        index: usize,
        criterion: &Criterion,
        response: &PreparedResponse<'_>,
    ) -> Verdict {
        let (outcome, explanation) = match &criterion.check {
            None => (
                Err(JudgeFailure::NotGradable(
                    "criterion has no `check`; the rule judge grades only machine-checkable criteria"
                        .into(),
                )),
                String::new(),
            ),
            Some(check) => match self.evaluate(check, response) {
                Ok(met) => (
                    Ok(if met { 1.0 } else { 0.0 }),
                    explain(check, met),
                ),
                Err(e) => (Err(JudgeFailure::Other(e)), String::new()),
            },
        };
        self.verdicts.fetch_add(1, Ordering::Relaxed);
        if outcome.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        Verdict {
            criterion: index,
            outcome,
            explanation,
            judge: RULES_JUDGE_ID.to_string(),
            cached: false,
            attempts: 0,
        }
    }

    /// Synchronous form of [`Judge::grade`], for callers outside an async runtime.
    pub fn grade_sync(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
        tasks
            .iter()
            .map(|task| {
                let prepared = PreparedResponse::new(task.response);
                task.criterion_indices()
                    .into_iter()
                    .map(|i| match task.example.criteria.get(i) {
                        Some(c) => self.grade_criterion(i, c, &prepared),
                        None => out_of_range(task, i),
                    })
                    .collect()
            })
            .collect()
    }
}

/// A grade for a criterion index the example does not have: a caller bug, reported per
/// criterion rather than by panicking in the middle of a batch.
pub(crate) fn out_of_range(task: &GradeTask<'_>, index: usize) -> Verdict {
    Verdict {
        criterion: index,
        outcome: Err(JudgeFailure::Other(format!(
            "criterion index {index} out of range: example `{}` has {} criteria",
            task.example.id,
            task.example.criteria.len()
        ))),
        explanation: String::new(),
        judge: String::new(),
        cached: false,
        attempts: 0,
    }
}

fn non_empty<T>(items: &[T], kind: &str) -> Result<(), String> {
    if items.is_empty() {
        Err(format!("`{kind}` check has an empty list"))
    } else {
        Ok(())
    }
}

/// "rule <kind> holds" / "does not hold", built without the formatting machinery: this runs
/// once per verdict on the rule judge's hot path.
fn explain(check: &Check, met: bool) -> String {
    let kind = check_kind(check);
    let verdict = if met { " holds" } else { " does not hold" };
    let mut s = String::with_capacity(5 + kind.len() + verdict.len());
    s.push_str("rule ");
    s.push_str(kind);
    s.push_str(verdict);
    s
}

/// The `kind` tag of a check as written in the data, for explanations.
fn check_kind(check: &Check) -> &'static str {
    match check {
        Check::ContainsAny { .. } => "contains_any",
        Check::ContainsAll { .. } => "contains_all",
        Check::ContainsNone { .. } => "contains_none",
        Check::Regex { .. } => "regex",
        Check::WordCount { .. } => "word_count",
        Check::StartsWith { .. } => "starts_with",
        Check::EndsWith { .. } => "ends_with",
        Check::HasList { .. } => "has_list",
        Check::AsksQuestion {} => "asks_question",
        Check::MentionsNumber {} => "mentions_number",
        Check::Not { .. } => "not",
        Check::All { .. } => "all",
        Check::Any { .. } => "any",
    }
}

#[async_trait]
impl Judge for RuleJudge {
    fn id(&self) -> String {
        RULES_JUDGE_ID.to_string()
    }

    async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
        self.grade_sync(tasks)
    }

    fn stats(&self) -> JudgeStats {
        JudgeStats {
            verdicts: self.verdicts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            ..JudgeStats::default()
        }
    }
}
