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
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
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
    })?;
    // One record per line: a second value or stray text after the first would be lost.
    de.end().map_err(|e| {
        let col = e.column();
        DataError::new(
            file,
            line_no,
            "(json)",
            format!(
                "trailing characters after the record (column {col}): one JSON object per line"
            ),
        )
    })?;
    Ok(value)
}

/// Reads a JSONL file as text: a UTF-8 byte-order mark at the start is skipped, and bytes that
/// are not UTF-8 are reported with their line.
pub fn read_text(path: &std::path::Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError::new(path, 0, "(file)", format!("cannot read: {e}")))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let at = e.valid_up_to();
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            let col = at
                - bytes[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
                + 1;
            Err(DataError::new(
                path,
                line,
                "(file)",
                format!("not UTF-8 text (invalid byte at column {col})"),
            ))
        }
    }
}
