//! `arlrr eval`: scores a trained policy on a data file, overall and per meta-class.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its latest checkpoint), one checkpoint folder, or a model as it is
    /// (`.gguf` file or HF folder).
    #[arg(long)]
    pub model: PathBuf,
    /// Longest response in tokens (plain model files only; a run uses its own config).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature (plain model files only).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Data file (HealthBench or native JSONL).
    #[arg(long)]
    pub data: PathBuf,
    /// Judge: a kind (`rules`, `embedding`) or a judge config file (kind, cache, [http], ...,
    /// and optionally `retries`).
    #[arg(long, default_value = "rules")]
    pub judge: String,
    /// Responses sampled per example.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let judge = arl::config::JudgeSection::parse_arg(&a.judge)?;
    let opts = arl::setup::ModelOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
    };
    let report = arl::setup::evaluate_model(&a.model, &opts, &a.data, &judge, a.samples, a.seed)?;
    if let Some(out) = &a.out {
        rubric::runfile::write_atomic(out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    out!("{}", report.table())?;
    Ok(())
}
