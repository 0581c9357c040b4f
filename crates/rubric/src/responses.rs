//! The responses format `arlrr grade` reads: one JSON object per line,
//! `{"prompt_id": ..., "completion": ...}`, optionally `"response_id"`. Like the other loaders it
//! stops at the first bad line with a [`DataError`] naming file, line and field.

use crate::error::read_text;
use crate::model::Dataset;
use crate::DataError;
use serde_json::Value;
use std::path::Path;

/// One line of a responses file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseLine {
    pub prompt_id: String,
    pub response_id: Option<String>,
    pub completion: String,
    pub line: usize,
}

/// Reads a responses file, checking each line's fields and that its `prompt_id` is in the
/// dataset; errors name the file, line and field.
pub fn read_responses(path: &Path, dataset: &Dataset) -> Result<Vec<ResponseLine>, DataError> {
    read_text(path)?
        .lines()
        .enumerate()
        .filter(|(_, raw)| !raw.trim().is_empty())
        .map(|(i, raw)| response_line(path, dataset, i + 1, raw))
        .collect()
}

/// Line `line` of a responses file, `raw`.
fn response_line(
    path: &Path,
    dataset: &Dataset,
    line: usize,
    raw: &str,
) -> Result<ResponseLine, DataError> {
    let err = |field: &str, msg: String| DataError::new(path, line, field, msg);
    let value: Value =
        serde_json::from_str(raw).map_err(|e| err("(json)", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(err("(line)", "expected a JSON object".into()));
    };
    let string = |field: &str| -> Result<Option<String>, DataError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(err(field, format!("expected a string, got {other}"))),
        }
    };
    let prompt_id = string("prompt_id")?.ok_or_else(|| err("prompt_id", "missing field".into()))?;
    let completion =
        string("completion")?.ok_or_else(|| err("completion", "missing field".into()))?;
    let response_id = string("response_id")?;
    if dataset.get(&prompt_id).is_none() {
        return Err(err(
            "prompt_id",
            format!(
                "unknown prompt_id `{prompt_id}` (not in {})",
                dataset.source.display()
            ),
        ));
    }
    Ok(ResponseLine {
        prompt_id,
        response_id,
        completion,
        line,
    })
}
