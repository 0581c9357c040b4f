use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// The format of a rubric data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The official HealthBench schema.
    HealthBench,
    /// HealthBench schema plus a machine-checkable `check` on rubric items.
    Native,
    /// WritingBench: five criteria per query, each scored 1–10.
    WritingBench,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "healthbench" => Ok(Format::HealthBench),
            "native" => Ok(Format::Native),
            "writingbench" => Ok(Format::WritingBench),
            other => Err(format!(
                "unknown data format `{other}` (expected healthbench, native or writingbench)"
            )),
        }
    }
}

/// One chat message of the prompt conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A machine-checkable form of a criterion, evaluated by the rule judge.
///
/// Text matching is case-insensitive throughout; it is what a human grader would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    ContainsAny {
        phrases: Vec<String>,
    },
    ContainsAll {
        phrases: Vec<String>,
    },
    ContainsNone {
        phrases: Vec<String>,
    },
    Regex {
        pattern: String,
    },
    WordCount {
        #[serde(default)]
        min: Option<usize>,
        #[serde(default)]
        max: Option<usize>,
    },
    StartsWith {
        text: String,
    },
    EndsWith {
        text: String,
    },
    HasList {
        #[serde(default)]
        style: ListStyle,
    },
    AsksQuestion {},
    MentionsNumber {},
    Not {
        check: Box<Check>,
    },
    All {
        checks: Vec<Check>,
    },
    Any {
        checks: Vec<Check>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListStyle {
    #[default]
    Any,
    Bullet,
    Numbered,
}

/// One rubric item. `points` is signed: a negative item penalises a behaviour when met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    pub text: String,
    pub points: f64,
    pub tags: Vec<String>,
    pub check: Option<Check>,
}

impl Criterion {
    /// The value of the first tag `prefix:value`, e.g. `tag_value("axis")`.
    pub fn tag_value(&self, prefix: &str) -> Option<&str> {
        tag_value(&self.tags, prefix)
    }
}

pub(crate) fn tag_value<'a>(tags: &'a [String], prefix: &str) -> Option<&'a str> {
    tags.iter().find_map(|t| {
        t.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// A prompt with its rubric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub prompt: Vec<Message>,
    pub criteria: Vec<Criterion>,
    /// Example-level tags such as `theme:emergency_referrals`.
    pub tags: Vec<String>,
    pub ideal_completion: Option<String>,
    /// HealthBench's canary string, kept so that copies of the data stay recognisable.
    pub canary: Option<String>,
    /// 1-based line of the record in its source file, for error messages.
    #[serde(skip)]
    pub line: usize,
}

impl Example {
    pub fn tag_value(&self, prefix: &str) -> Option<&str> {
        tag_value(&self.tags, prefix)
    }

    /// Number of user turns in the conversation.
    pub fn user_turns(&self) -> usize {
        self.prompt.iter().filter(|m| m.role == "user").count()
    }
}

/// A loaded data file. `graded` is true when verdicts are scores in [0,1] rather than met /
/// not met (WritingBench's 1–10 checklist).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub source: PathBuf,
    pub format: Format,
    pub graded: bool,
    pub examples: Vec<Example>,
    index: HashMap<String, usize>,
}

impl Dataset {
    pub fn new(source: PathBuf, format: Format, graded: bool, examples: Vec<Example>) -> Self {
        let index = examples
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        Dataset {
            source,
            format,
            graded,
            examples,
            index,
        }
    }

    /// Position of the example with this id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn get(&self, id: &str) -> Option<&Example> {
        self.position(id).map(|i| &self.examples[i])
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}
