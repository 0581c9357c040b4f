//! Loaders. Each reads JSONL line by line and stops at the first bad line with a [`DataError`]
//! naming file, line and field; nothing is half-loaded.

use crate::error::{parse_line, read_text};
use crate::model::{Check, Criterion, Dataset, Example, Format, Message};
use crate::DataError;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Loads a data file, recognising its format from the first record.
pub fn load(path: impl AsRef<Path>) -> Result<Dataset, DataError> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let format = detect(path, &text)?;
    parse(path, &text, format)
}

/// Loads a data file in a format the caller names.
pub fn load_as(path: impl AsRef<Path>, format: Format) -> Result<Dataset, DataError> {
    let path = path.as_ref();
    let text = read_text(path)?;
    parse(path, &text, format)
}

/// Parses JSONL text already in memory; `path` is only used in error messages.
pub fn parse(path: &Path, text: &str, format: Format) -> Result<Dataset, DataError> {
    match format {
        Format::HealthBench | Format::Native => parse_healthbench(path, text),
        Format::WritingBench => parse_writingbench(path, text),
    }
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
}

fn detect(path: &Path, text: &str) -> Result<Format, DataError> {
    let Some((line_no, first)) = lines(text).next() else {
        return Err(DataError::new(
            path,
            0,
            "(file)",
            "the file holds no records",
        ));
    };
    let value: serde_json::Value = parse_line(path, line_no, first)?;
    if value.get("checklist").is_some() {
        Ok(Format::WritingBench)
    } else if value.get("rubrics").is_some() {
        Ok(Format::HealthBench)
    } else {
        Err(DataError::new(
            path,
            line_no,
            "rubrics",
            "missing field `rubrics` (HealthBench/native) or `checklist` (WritingBench)",
        ))
    }
}

/// Largest |points| of a criterion. Far beyond any real rubric (HealthBench: -10..10), and small
/// enough that sums of points stay finite and exact enough to score.
pub const MAX_POINTS: f64 = 1e6;

#[derive(Deserialize)]
struct RawHealthBench {
    prompt: Vec<Message>,
    rubrics: Vec<RawRubric>,
    #[serde(default)]
    example_tags: Vec<String>,
    #[serde(default)]
    ideal_completions_data: Option<RawIdeal>,
    prompt_id: String,
    #[serde(default)]
    canary: Option<String>,
}

#[derive(Deserialize)]
struct RawRubric {
    criterion: String,
    points: f64,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    check: Option<Check>,
}

#[derive(Deserialize)]
struct RawIdeal {
    #[serde(default)]
    ideal_completion: Option<String>,
}

fn parse_healthbench(path: &Path, text: &str) -> Result<Dataset, DataError> {
    let mut examples = Vec::new();
    let mut seen = HashSet::new();
    let mut any_check = false;
    for (line_no, line) in lines(text) {
        let raw: RawHealthBench = parse_line(path, line_no, line)?;
        if !seen.insert(raw.prompt_id.clone()) {
            return Err(DataError::new(
                path,
                line_no,
                "prompt_id",
                format!("duplicate prompt_id `{}`", raw.prompt_id),
            ));
        }
        let mut criteria = Vec::with_capacity(raw.rubrics.len());
        for (i, r) in raw.rubrics.into_iter().enumerate() {
            if !r.points.is_finite() || r.points.abs() > MAX_POINTS {
                return Err(DataError::new(
                    path,
                    line_no,
                    format!("rubrics[{i}].points"),
                    format!(
                        "{:e} is out of range: points must be finite and within ±{MAX_POINTS:e} (HealthBench uses -10..10)",
                        r.points
                    ),
                ));
            }
            any_check |= r.check.is_some();
            criteria.push(Criterion {
                text: r.criterion,
                points: r.points,
                tags: r.tags,
                check: r.check,
            });
        }
        examples.push(Example {
            id: raw.prompt_id,
            prompt: raw.prompt,
            criteria,
            tags: raw.example_tags,
            ideal_completion: raw.ideal_completions_data.and_then(|d| d.ideal_completion),
            canary: raw.canary,
            line: line_no,
        });
    }
    let format = if any_check {
        Format::Native
    } else {
        Format::HealthBench
    };
    Ok(Dataset::new(path.to_path_buf(), format, false, examples))
}

#[derive(Deserialize)]
struct RawWritingBench {
    index: serde_json::Value,
    #[serde(default)]
    domain1: Option<String>,
    #[serde(default)]
    domain2: Option<String>,
    #[serde(default)]
    lang: Option<String>,
    query: String,
    checklist: Vec<RawChecklistItem>,
}

#[derive(Deserialize)]
struct RawChecklistItem {
    name: String,
    criteria_description: String,
    /// Score bands such as `"1-2": "..."`, kept in the criterion text for the judge.
    #[serde(flatten)]
    bands: BTreeMap<String, serde_json::Value>,
}

/// Lowercase, with runs of non-alphanumerics collapsed to `_`, so a domain name can be a tag.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

fn parse_writingbench(path: &Path, text: &str) -> Result<Dataset, DataError> {
    let mut examples = Vec::new();
    let mut seen = HashSet::new();
    for (line_no, line) in lines(text) {
        let raw: RawWritingBench = parse_line(path, line_no, line)?;
        let id = match &raw.index {
            serde_json::Value::String(s) => format!("wb-{s}"),
            serde_json::Value::Number(n) => format!("wb-{n}"),
            _ => {
                return Err(DataError::new(
                    path,
                    line_no,
                    "index",
                    "expected a number or a string",
                ))
            }
        };
        if !seen.insert(id.clone()) {
            return Err(DataError::new(
                path,
                line_no,
                "index",
                format!("duplicate index `{id}`"),
            ));
        }
        if raw.checklist.is_empty() {
            return Err(DataError::new(
                path,
                line_no,
                "checklist",
                "empty checklist",
            ));
        }
        let criteria = raw
            .checklist
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let mut text = format!("{}: {}", item.name, item.criteria_description);
                let bands: Vec<String> = item
                    .bands
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}: {v}")))
                    .collect();
                if !bands.is_empty() {
                    text.push_str("\nScore 1-10. ");
                    text.push_str(&bands.join("\n"));
                }
                Criterion {
                    text,
                    points: 1.0,
                    tags: vec![format!("item:{}", i + 1)],
                    check: None,
                }
            })
            .collect();
        let mut tags = Vec::new();
        if let Some(d) = &raw.domain1 {
            tags.push(format!("theme:{}", slug(d)));
        }
        if let Some(d) = &raw.domain2 {
            tags.push(format!("subdomain:{}", slug(d)));
        }
        if let Some(l) = &raw.lang {
            tags.push(format!("lang:{l}"));
        }
        examples.push(Example {
            id,
            prompt: vec![Message {
                role: "user".into(),
                content: raw.query,
            }],
            criteria,
            tags,
            ideal_completion: None,
            canary: None,
            line: line_no,
        });
    }
    Ok(Dataset::new(
        path.to_path_buf(),
        Format::WritingBench,
        true,
        examples,
    ))
}

/// One example as a native-format record (the HealthBench schema plus `check`).
pub fn to_record(ex: &Example) -> serde_json::Value {
    let rubrics: Vec<serde_json::Value> = ex
        .criteria
        .iter()
        .map(|c| {
            let mut r = serde_json::json!({
                "criterion": c.text,
                "points": c.points,
                "tags": c.tags,
            });
            if let Some(check) = &c.check {
                r["check"] = serde_json::to_value(check).expect("checks serialize");
            }
            r
        })
        .collect();
    let mut rec = serde_json::json!({
        "prompt": ex.prompt,
        "rubrics": rubrics,
        "example_tags": ex.tags,
        "prompt_id": ex.id,
        "ideal_completions_data": ex
            .ideal_completion
            .as_ref()
            .map(|c| serde_json::json!({ "ideal_completion": c })),
    });
    if let Some(canary) = &ex.canary {
        rec["canary"] = serde_json::Value::String(canary.clone());
    }
    rec
}

/// Writes examples as native-format JSONL ([`crate::runfile::write_atomic`]).
pub fn write_jsonl(examples: &[Example], path: &Path) -> std::io::Result<()> {
    let mut text = String::new();
    for ex in examples {
        text.push_str(&to_record(ex).to_string());
        text.push('\n');
    }
    crate::runfile::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb_line(id: &str, rubrics: &str) -> String {
        format!(
            r#"{{"prompt":[{{"role":"user","content":"hi"}}],"rubrics":{rubrics},"example_tags":["theme:t"],"prompt_id":"{id}","canary":"c","ideal_completions_data":null}}"#
        )
    }

    #[test]
    fn loads_healthbench_and_native() {
        let p = Path::new("x.jsonl");
        let text = hb_line(
            "a",
            r#"[{"criterion":"c1","points":5,"tags":["axis:accuracy"]},{"criterion":"c2","points":-2,"tags":["axis:completeness"],"check":{"kind":"contains_any","phrases":["x"]}}]"#,
        );
        let ds = parse(p, &text, Format::HealthBench).unwrap();
        assert_eq!(ds.format, Format::Native);
        assert_eq!(ds.examples[0].criteria[1].points, -2.0);
        assert_eq!(
            ds.examples[0].criteria[1].check,
            Some(Check::ContainsAny {
                phrases: vec!["x".into()]
            })
        );
        assert_eq!(ds.examples[0].tag_value("theme"), Some("t"));
        assert!(!ds.graded);
    }

    #[test]
    fn errors_name_line_and_field() {
        let p = Path::new("bad.jsonl");
        let good = hb_line("a", r#"[{"criterion":"c","points":1,"tags":[]}]"#);
        let cases = [
            (
                hb_line("b", r#"[{"criterion":"c","points":"many","tags":[]}]"#),
                "rubrics[0].points",
            ),
            (r#"{"prompt":[],"prompt_id":"b"}"#.to_string(), "rubrics"),
            (good[..good.len() - 10].to_string(), "(json)"),
            (
                hb_line(
                    "b",
                    r#"[{"criterion":"c","points":1,"tags":[],"check":{"kind":"nope"}}]"#,
                ),
                "rubrics[0].check.kind",
            ),
            (good.clone(), "prompt_id"),
        ];
        for (bad, field) in cases {
            let text = format!("{good}\n\n{bad}\n");
            let err = parse(p, &text, Format::HealthBench).unwrap_err();
            assert_eq!(err.line, 3, "{err}");
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().starts_with("bad.jsonl:3: field"), "{err}");
        }
    }

    #[test]
    fn loads_writingbench_as_graded() {
        let p = Path::new("wb.jsonl");
        let text = r#"{"index":7,"domain1":"Academic & Engineering","domain2":"Paper Outline","lang":"en","query":"Write.","checklist":[{"name":"A","criteria_description":"d","1-2":"bad","9-10":"good"},{"name":"B","criteria_description":"e"}]}"#;
        let ds = parse(p, text, Format::WritingBench).unwrap();
        assert!(ds.graded);
        let ex = &ds.examples[0];
        assert_eq!(ex.id, "wb-7");
        assert_eq!(ex.criteria.len(), 2);
        assert!(ex.criteria[0].text.contains("9-10: good"));
        assert_eq!(ex.tag_value("theme"), Some("academic_engineering"));
        assert_eq!(ds.get("wb-7").unwrap().prompt[0].content, "Write.");
    }

    #[test]
    fn detects_format() {
        let p = Path::new("d.jsonl");
        assert_eq!(detect(p, &hb_line("a", "[]")).unwrap(), Format::HealthBench);
        assert_eq!(
            detect(p, r#"{"index":1,"query":"q","checklist":[]}"#).unwrap(),
            Format::WritingBench
        );
        assert_eq!(detect(p, r#"{"x":1}"#).unwrap_err().field, "rubrics");
        assert_eq!(detect(p, "\n\n").unwrap_err().field, "(file)");
    }
}
