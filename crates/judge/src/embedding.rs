//! The embedding judge: an approximate, local, free grader built on the all-MiniLM-L6-v2
//! sentence embedder.
//!
//! A criterion counts as met when its embedding's cosine similarity to the best-matching
//! sentence of the response reaches a threshold. This measures topical overlap, not truth: it
//! cannot tell "recommends ibuprofen" from "warns against ibuprofen", and negative criteria
//! ("fails to mention...") read as their positive topic. Use it for cheap, rough signals and
//! smoke runs; use an LLM judge for numbers that matter.
//!
//! Its settings ([`EmbeddingJudgeConfig`], the `[embedding]` table of a judge config) are
//! always here, so a config parses without the `embedding` feature; the model and the judge
//! come with the feature.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[cfg(feature = "embedding")]
mod model;
#[cfg(feature = "embedding")]
pub use model::{cosine, EmbeddingError, EmbeddingJudge, SentenceEmbedder};

/// Settings of the embedding judge (the `[embedding]` table of a judge config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingJudgeConfig {
    /// Folder with `config.json`, `model.safetensors` and `tokenizer.json`; default: the
    /// fetched all-MiniLM-L6-v2 asset.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Cosine similarity at or above which a criterion is met. With MiniLM, a rubric-style
    /// criterion ("Advises the user to see a doctor") and a sentence doing it ("You should see
    /// a doctor.") score about 0.4–0.6; unrelated sentences below 0.2.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Texts embedded per forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_threshold() -> f32 {
    0.35
}
fn default_batch() -> usize {
    32
}

/// Most texts per forward pass: a CPU gains nothing past a few dozen, and memory grows with
/// every one.
const MAX_BATCH_SIZE: usize = 1024;

impl EmbeddingJudgeConfig {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(-1.0..=1.0).contains(&self.threshold) {
            return Err(format!(
                "`threshold` must be a cosine similarity in [-1, 1], got {}",
                self.threshold
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(format!(
                "`batch_size` must be in 1..={MAX_BATCH_SIZE}, got {}",
                self.batch_size
            ));
        }
        Ok(())
    }
}

impl Default for EmbeddingJudgeConfig {
    fn default() -> Self {
        EmbeddingJudgeConfig {
            model_dir: None,
            threshold: default_threshold(),
            batch_size: default_batch(),
        }
    }
}
