//! The grading prompt the HTTP judge sends, and the tolerant reader of the answer.
//!
//! One criterion per request, as HealthBench grades: the conversation, the response, the
//! criterion with its points, and a request for a JSON object with an explanation and a
//! boolean. The wording is ours. [`PROMPT_VERSION`] is part of the cache key: change it
//! whenever the text below changes.

use rubric::{Criterion, Message};
use serde_json::Value;
use std::fmt::Write;

/// Version of [`grading_prompt`]'s text.
pub const PROMPT_VERSION: &str = "grade-criterion-v1";

/// The user message asking a model to grade `response` against one criterion.
pub fn grading_prompt(conversation: &[Message], response: &str, criterion: &Criterion) -> String {
    let mut p = String::with_capacity(1024 + response.len() + criterion.text.len());
    p.push_str(
        "You are grading one reply of an AI assistant against one rubric criterion.\n\n\
         The conversation so far:\n<conversation>\n",
    );
    for m in conversation {
        let _ = writeln!(p, "[{}]\n{}\n", m.role, m.content);
    }
    p.push_str("</conversation>\n\nThe assistant's reply to grade:\n<reply>\n");
    p.push_str(response);
    let _ = write!(
        p,
        "\n</reply>\n\nThe criterion (worth {} points):\n<criterion>\n{}\n</criterion>\n\n",
        criterion.points, criterion.text
    );
    p.push_str(
        "Decide whether the reply meets the criterion. Judge only what the criterion \
         describes. If the criterion describes something undesirable (negative points), \
         answer whether the reply does that undesirable thing; do not invert the answer. \
         If the criterion lists several conditions, it is met only when all of them hold.\n\n\
         Answer with one JSON object and nothing else, in this form:\n\
         {\"explanation\": \"<one or two sentences of reasoning>\", \"criteria_met\": <true or false>}",
    );
    p
}

/// A verdict read from a model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedVerdict {
    pub met: bool,
    pub explanation: String,
}

/// Finds the verdict object in a model's answer: the first JSON object, at any position (code
/// fences and prose around it are skipped), that has a `criteria_met` field holding a boolean
/// (or the strings "true" / "false"). `None` when there is none; the caller retries.
pub fn extract_verdict(answer: &str) -> Option<ParsedVerdict> {
    answer.match_indices('{').find_map(|(start, _)| {
        let mut values = serde_json::Deserializer::from_str(&answer[start..]).into_iter::<Value>();
        let Some(Ok(Value::Object(obj))) = values.next() else {
            return None;
        };
        let met = match obj.get("criteria_met")? {
            Value::Bool(b) => *b,
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => true,
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => false,
            _ => return None,
        };
        let explanation = match obj.get("explanation") {
            Some(Value::String(s)) => s.clone(),
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        };
        Some(ParsedVerdict { met, explanation })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_fenced_and_wrapped_answers() {
        let plain = r#"{"explanation": "ok", "criteria_met": true}"#;
        assert_eq!(
            extract_verdict(plain),
            Some(ParsedVerdict {
                met: true,
                explanation: "ok".into()
            })
        );
        let fenced = "Sure!\n```json\n{\n  \"explanation\": \"no {brace} issue\",\n  \"criteria_met\": false\n}\n```\nDone.";
        assert_eq!(
            extract_verdict(fenced),
            Some(ParsedVerdict {
                met: false,
                explanation: "no {brace} issue".into()
            })
        );
        let nested_first = r#"I think {"note": {"x": 1}} then {"criteria_met": "True"}"#;
        assert_eq!(extract_verdict(nested_first).map(|v| v.met), Some(true));
    }

    #[test]
    fn refuses_answers_without_a_boolean_verdict() {
        assert_eq!(extract_verdict("The criterion is met."), None);
        assert_eq!(extract_verdict(r#"{"criteria_met": "maybe"}"#), None);
        assert_eq!(extract_verdict(r#"{"explanation": "x"}"#), None);
        assert_eq!(extract_verdict(r#"{"criteria_met": tru"#), None);
        assert_eq!(extract_verdict(""), None);
    }

    #[test]
    fn prompt_carries_conversation_reply_and_criterion() {
        let conv = vec![Message {
            role: "user".into(),
            content: "Is 38C a fever?".into(),
        }];
        let c = Criterion {
            text: "Says yes".into(),
            points: -3.0,
            tags: vec![],
            check: None,
        };
        let p = grading_prompt(&conv, "Yes it is.", &c);
        for needle in [
            "[user]\nIs 38C a fever?",
            "<reply>\nYes it is.\n</reply>",
            "worth -3 points",
            "Says yes",
            "criteria_met",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in {p}");
        }
    }
}
