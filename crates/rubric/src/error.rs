use std::fmt;
use std::path::PathBuf;

/// A problem with an input file, located precisely enough to fix it by hand:
/// the file, the 1-based line, and the field (a JSON path such as `rubrics[3].points`).
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    pub file: PathBuf,
    /// 1-based line number; 0 when the problem concerns the whole file.
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl DataError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DataError {
            file: file.into(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(
                f,
                "{}: field `{}`: {}",
                self.file.display(),
                self.field,
                self.message
            )
        } else {
            write!(
                f,
                "{}:{}: field `{}`: {}",
                self.file.display(),
                self.line,
                self.field,
                self.message
            )
        }
    }
}

impl std::error::Error for DataError {}

/// Parses one JSONL line into `T`, turning serde's error into a [`DataError`] that names the
/// failing field by its JSON path.
pub(crate) fn parse_line<T: serde::de::DeserializeOwned>(
    file: &std::path::Path,
    line_no: usize,
    text: &str,
) -> Result<T, DataError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // Each record is one line, so serde's "at line 1 column N" reduces to the column.
        let msg = match inner.to_string().split_once(" at line 1 column ") {
            Some((m, col)) => format!("{m} (column {col})"),
            None => inner.to_string(),
        };
        // serde reports a missing field at the parent's path; name the field itself.
        let field = match msg.strip_prefix("missing field `") {
            Some(rest) => {
                let name = rest.split('`').next().unwrap_or("");
                if path == "." {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                }
            }
            None if inner.is_eof() || inner.is_syntax() => "(json)".to_string(),
            None => path,
        };
        let msg = if inner.is_eof() {
            format!("truncated JSON ({msg})")
        } else {
            msg
        };
        DataError::new(file, line_no, field, msg)
    })
}
