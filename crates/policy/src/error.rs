//! One error type for the crate, so callers see which stage failed (file, format, tensor math).
//!
//! Each message already holds the reason of the error it wraps, so none of them exposes that
//! error as its `source`: a caller printing the chain (anyhow's `{:#}`) would say it twice
//! ("X: no such file: no such file").

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tensor operation failed: {0}")]
    Candle(candle_core::Error),
    #[error("{path}: {reason}")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("missing weight `{0}`")]
    MissingWeight(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            reason,
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}
