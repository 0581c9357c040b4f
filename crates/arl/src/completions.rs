//! `completions.jsonl`: what the policy wrote, for a reader. Each training step logs every
//! response of its first `log.completions_per_step` groups (a deterministic sample: no draw
//! from any stream), with its rewards, advantage and the judge's verdicts; validation at step
//! 0 and at the last step logs one response on each of its first `log.val_completions`
//! prompts, so the report can set the start and the end side by side.

use rubric::{Example, RewardVector, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most characters of a prompt's last user message a line keeps.
pub const PROMPT_CHARS: usize = 500;
/// The most characters of a criterion's text a line keeps.
pub const CRITERION_CHARS: usize = 200;

/// Where a logged response was sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// A training step's rollout.
    Train,
    /// Validation (`[eval]`), at step 0 or the last step.
    Val,
}

/// One criterion's verdict on a logged response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedVerdict {
    /// Index into the example's criteria.
    pub criterion: usize,
    /// The criterion's text (trimmed to [`CRITERION_CHARS`]).
    pub text: String,
    pub points: f64,
    /// Met = 1, not met = 0 (graded data in between); `None` for a failure.
    pub met: Option<f64>,
    /// Why the verdict failed (after the retries); `None` for a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One line of `completions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionLine {
    /// Steps completed when the response was sampled and graded (as in `metrics.jsonl`; a
    /// training step's rollout is logged under the step it makes).
    pub step: u64,
    pub split: Split,
    /// As in `metrics.jsonl`.
    pub phase: u64,
    pub active_class: Option<String>,
    /// The group's index in the step's rollout (the prompt's index in validation).
    pub group: usize,
    /// The response's index in its group.
    pub sample: usize,
    /// The example's id.
    pub prompt_id: String,
    /// The prompt's last user message (trimmed to [`PROMPT_CHARS`]).
    pub prompt: String,
    /// The decoded response.
    pub completion: String,
    /// The overall reward; `None` where not graded (excluded for a failed verdict).
    pub overall: Option<f64>,
    /// Per class; `None` where the class was not graded or has no criteria here.
    pub classes: BTreeMap<String, Option<f64>>,
    /// The response's advantage in the update; `None` if it was not trained on (excluded,
    /// zero spread, or validation).
    pub advantage: Option<f64>,
    /// The verdicts its rewards were read from, one per criterion graded.
    pub verdicts: Vec<LoggedVerdict>,
}

/// What one graded response contributes to a line.
pub struct Graded<'a> {
    pub example: &'a Example,
    pub completion: &'a str,
    pub rewards: Option<&'a RewardVector>,
    pub verdicts: &'a [Verdict],
    pub advantage: Option<f64>,
}

/// Where a line sits: step, split, phase and position.
pub struct At<'a> {
    pub step: u64,
    pub split: Split,
    pub phase: u64,
    pub active_class: Option<&'a str>,
    pub group: usize,
    pub sample: usize,
}

/// `s` cut to at most `n` characters (an ellipsis marks a cut).
pub fn trim(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// The prompt's last user message (the last message when none is a user's).
pub fn last_user_message(example: &Example) -> &str {
    let user = example.prompt.iter().rev().find(|m| m.role == "user");
    user.or(example.prompt.last())
        .map_or("", |m| m.content.as_str())
}

/// The line of one graded response.
pub fn line(at: At<'_>, g: Graded<'_>, class_names: &[String]) -> CompletionLine {
    let classes = class_names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let r = g.rewards.and_then(|r| r.classes.get(k).copied().flatten());
            (name.clone(), r)
        })
        .collect();
    let verdicts = g
        .verdicts
        .iter()
        .map(|v| {
            let c = g.example.criteria.get(v.criterion);
            LoggedVerdict {
                criterion: v.criterion,
                text: c.map_or(String::new(), |c| trim(&c.text, CRITERION_CHARS)),
                points: c.map_or(0.0, |c| c.points),
                met: v.value(),
                failure: v.failure().map(|f| f.to_string()),
            }
        })
        .collect();
    CompletionLine {
        step: at.step,
        split: at.split,
        phase: at.phase,
        active_class: at.active_class.map(str::to_string),
        group: at.group,
        sample: at.sample,
        prompt_id: g.example.id.clone(),
        prompt: trim(last_user_message(g.example), PROMPT_CHARS),
        completion: g.completion.to_string(),
        overall: g.rewards.and_then(|r| r.overall),
        classes,
        advantage: g.advantage,
        verdicts,
    }
}

#[cfg(test)]
mod tests {
    use super::trim;

    #[test]
    fn trim_cuts_on_characters() {
        assert_eq!(trim(" abc ", 5), "abc");
        assert_eq!(trim("ééééé", 3), "ééé…");
    }
}
