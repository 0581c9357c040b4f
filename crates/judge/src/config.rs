//! Judge configuration files (TOML) and [`from_config`], which builds the judge they describe.
//!
//! ```toml
//! kind = "http"                 # rules | http | embedding
//! cache = "judge-cache.sqlite"  # optional; relative paths are relative to this file's folder
//! retries = 2                   # optional; times a failed verdict is asked for again
//!
//! [http]                        # required when kind = "http"; see HttpJudgeConfig
//! base_url = "http://127.0.0.1:8080/v1"
//! model = "smollm2"
//! concurrency = 32
//! api_key_env = "OPENAI_API_KEY"
//!
//! [embedding]                   # optional when kind = "embedding"; see EmbeddingJudgeConfig
//! threshold = 0.55
//! ```

use crate::cache::CachedJudge;
#[cfg(feature = "embedding")]
use crate::embedding::EmbeddingJudge;
use crate::embedding::EmbeddingJudgeConfig;
use crate::http::{HttpJudge, HttpJudgeConfig};
use crate::rules::RuleJudge;
use crate::Judge;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which judge grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeKind {
    /// [`RuleJudge`]: evaluates each criterion's machine-checkable `check`; criteria without
    /// one fail as not gradable.
    Rules,
    /// [`HttpJudge`]: an OpenAI-compatible chat completions endpoint, one request per
    /// criterion. Needs the `[http]` table.
    Http,
    /// [`EmbeddingJudge`]: approximate, local sentence-similarity grading with
    /// all-MiniLM-L6-v2. `[embedding]` is optional.
    Embedding,
}

/// A judge config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Which judge grades.
    pub kind: JudgeKind,
    /// SQLite verdict cache shared across runs and processes; none when absent. A relative path
    /// is taken relative to the config file's folder (see [`JudgeConfig::load`]).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// Settings of the HTTP judge; required when `kind = "http"`.
    #[serde(default)]
    pub http: Option<HttpJudgeConfig>,
    /// Settings of the embedding judge; defaults apply when absent.
    #[serde(default)]
    pub embedding: Option<EmbeddingJudgeConfig>,
    /// Times a failed verdict is asked for again ([`crate::grade_with_retries`], the one retry
    /// policy); [`crate::DEFAULT_RETRIES`] when absent. (`[http] retries` is the HTTP judge's
    /// own retrying of one request, inside each of these attempts.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// A config file that cannot be read or is invalid, naming the file (and the field where
/// known).
#[derive(Debug, thiserror::Error)]
#[error("judge config {}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

/// Why [`from_config`] could not build the judge of a valid config: what failed (the cache
/// file and the OS error, the API key's variable, the embedding model), in its own words. No
/// file is blamed for it, since the config may come from a file or from a run config's
/// `[judge]` section, and the caller knows which.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    pub message: String,
}

impl JudgeConfig {
    /// A config with only `kind` set.
    pub fn of_kind(kind: JudgeKind) -> Self {
        JudgeConfig {
            kind,
            cache: None,
            http: None,
            embedding: None,
            retries: None,
        }
    }

    /// Times a failed verdict is asked for again: `retries`, or [`crate::DEFAULT_RETRIES`].
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(crate::DEFAULT_RETRIES)
    }

    /// Reads a TOML file; a relative `cache` path is resolved against the file's folder, so a
    /// config means the same from any working directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; `origin` names the file in errors and anchors a relative `cache`.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let mut cfg: JudgeConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if let Some(cache) = &cfg.cache {
            if cache.is_relative() {
                let base = origin.parent().unwrap_or(Path::new(""));
                cfg.cache = Some(base.join(cache));
            }
        }
        let err = |message: String| ConfigError {
            file: origin.to_path_buf(),
            message,
        };
        match (cfg.kind, &cfg.http) {
            (JudgeKind::Http, None) => {
                return Err(err(
                    "kind = \"http\" needs an [http] table (base_url, model)".into(),
                ))
            }
            (JudgeKind::Http, Some(h)) => h.validate().map_err(|m| err(format!("[http] {m}")))?,
            _ => {}
        }
        if let Some(e) = &cfg.embedding {
            e.validate().map_err(|m| err(format!("[embedding] {m}")))?;
        }
        Ok(cfg)
    }
}

/// Builds the judge a config describes, with the cache in front when `cache` is set. Loading
/// the embedding model or opening the cache happens here, so errors surface before grading.
pub fn from_config(config: &JudgeConfig) -> Result<Box<dyn Judge>, BuildError> {
    let err = |message: String| BuildError { message };
    let judge: Box<dyn Judge> = match config.kind {
        JudgeKind::Rules => Box::new(RuleJudge::new()),
        JudgeKind::Http => {
            let http = config.http.clone().ok_or_else(|| {
                err("kind = \"http\" needs an [http] table (base_url, model)".into())
            })?;
            Box::new(HttpJudge::new(http).map_err(|e| err(e.to_string()))?)
        }
        #[cfg(feature = "embedding")]
        JudgeKind::Embedding => {
            let emb = config.embedding.clone().unwrap_or_default();
            Box::new(
                EmbeddingJudge::from_config(&emb).map_err(|m| err(format!("[embedding] {m}")))?,
            )
        }
        #[cfg(not(feature = "embedding"))]
        JudgeKind::Embedding => {
            return Err(err(
                "kind = \"embedding\" needs the judge crate's `embedding` feature".into(),
            ))
        }
    };
    Ok(match &config.cache {
        None => judge,
        Some(path) => Box::new(CachedJudge::open(judge, path).map_err(|e| err(e.to_string()))?),
    })
}
