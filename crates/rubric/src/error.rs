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

/// Longest line a JSONL file may hold: 16 MiB, hundreds of times a long HealthBench record.
/// A longer one is not a record but a file without line breaks (or no text at all), which
/// would otherwise be read whole into memory before any check.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Reads a JSONL file (or another text file of lines) as text: a UTF-8 byte-order mark at the
/// start is skipped, and bytes that are not UTF-8 are reported with their line. A device
/// (`/dev/zero`, a terminal) is refused, and so is a line longer than [`MAX_LINE_BYTES`]:
/// reading stops there instead of filling the memory. Pipes (`<(zcat data.jsonl.gz)`) are
/// read like files.
pub fn read_text(path: &std::path::Path) -> Result<String, DataError> {
    use std::io::{BufRead, Read};
    let file_err = |m: String| DataError::new(path, 0, "(file)", m);
    let cannot = |e: std::io::Error| file_err(format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let kind = file.metadata().map_err(cannot)?.file_type();
    if let Some(what) = device(&kind) {
        return Err(file_err(format!(
            "not a regular file ({what}): it has no end to read to"
        )));
    }
    let mut reader = std::io::BufReader::new(file);
    let mut bytes = Vec::new();
    for line in 1.. {
        let start = bytes.len();
        let limit = MAX_LINE_BYTES as u64 + 1; // the newline
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut bytes)
            .map_err(cannot)?;
        if n == 0 {
            break;
        }
        let mut text = &bytes[start..];
        if line == 1 {
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        }
        if n as u64 == limit && !text.ends_with(b"\n") {
            return Err(DataError::new(
                path,
                line,
                "(line)",
                format!(
                    "longer than {} MiB without a line break (a data file holds one record \
                     per line)",
                    MAX_LINE_BYTES >> 20
                ),
            ));
        }
        if let Err(e) = std::str::from_utf8(text) {
            return Err(DataError::new(
                path,
                line,
                "(file)",
                format!(
                    "not UTF-8 text (invalid byte at column {})",
                    e.valid_up_to() + 1
                ),
            ));
        }
    }
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    Ok(String::from_utf8(bytes).expect("checked line by line"))
}

/// What kind of device `kind` is, when it is one: such a file has no end to read to.
#[cfg(unix)]
fn device(kind: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

#[cfg(not(unix))]
fn device(_kind: &std::fs::FileType) -> Option<&'static str> {
    None
}
