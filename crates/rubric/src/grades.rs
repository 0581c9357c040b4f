//! The grades format: one JSON line per graded (example, response), with a verdict per rubric
//! item in file order. `arlrr grade` writes it; `arlrr score` and the trainer read it.

use crate::error::{parse_line, read_text};
use crate::model::Dataset;
use crate::verdict::Verdict;
use crate::DataError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A [`Verdict`] as the grades file writes it, in the `met` list. `null` in JSON marks a judge
/// failure: it is never scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetValue {
    Met(bool),
    Graded(f64),
    Failed,
}

impl MetValue {
    /// How `verdict` is written: a failure as `null`; for graded data (`graded`) the number,
    /// otherwise `true`/`false` for 1/0 and the number for anything in between.
    pub fn of(verdict: &Verdict, graded: bool) -> MetValue {
        match verdict.value() {
            None => MetValue::Failed,
            Some(v) if graded => MetValue::Graded(v),
            Some(v) if v == 0.0 || v == 1.0 => MetValue::Met(v == 1.0),
            Some(v) => MetValue::Graded(v),
        }
    }

    /// The verdict as a number in [0,1]; `None` for a failure.
    pub fn value(self) -> Option<f64> {
        match self {
            MetValue::Met(b) => Some(if b { 1.0 } else { 0.0 }),
            MetValue::Graded(x) => Some(x),
            MetValue::Failed => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradeLine {
    pub prompt_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    pub met: Vec<MetValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanations: Option<Vec<String>>,
}

impl GradeLine {
    /// Verdicts as numbers, or `None` if any criterion failed to grade.
    pub fn values(&self) -> Option<Vec<f64>> {
        self.met.iter().map(|v| v.value()).collect()
    }
}

/// Reads a grades file and checks every line against the dataset: known `prompt_id`, one
/// verdict per rubric item, values in [0,1].
pub fn read_grades(path: &Path, dataset: &Dataset) -> Result<Vec<GradeLine>, DataError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let g: GradeLine = parse_line(path, line_no, line)?;
        let Some(ex) = dataset.get(&g.prompt_id) else {
            return Err(DataError::new(
                path,
                line_no,
                "prompt_id",
                format!(
                    "unknown prompt_id `{}` (not in {})",
                    g.prompt_id,
                    dataset.source.display()
                ),
            ));
        };
        if g.met.len() != ex.criteria.len() {
            return Err(DataError::new(
                path,
                line_no,
                "met",
                format!(
                    "{} verdicts for {} rubric items of `{}`",
                    g.met.len(),
                    ex.criteria.len(),
                    g.prompt_id
                ),
            ));
        }
        for (j, v) in g.met.iter().enumerate() {
            if let MetValue::Graded(x) = v {
                if !(0.0..=1.0).contains(x) {
                    return Err(DataError::new(
                        path,
                        line_no,
                        format!("met[{j}]"),
                        format!("graded verdict {x} is outside [0,1]"),
                    ));
                }
            }
        }
        out.push(g);
    }
    if out.is_empty() {
        // nothing to score: an overall of NaN would look like a result
        return Err(DataError::new(
            path,
            0,
            "(file)",
            "the file holds no grade lines",
        ));
    }
    Ok(out)
}
