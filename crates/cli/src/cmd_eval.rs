//! `arlrr eval`: scores a trained policy on a data file, overall and per meta-class.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its latest checkpoint) or one checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Data file (HealthBench or native JSONL).
    #[arg(long)]
    pub data: PathBuf,
    /// Judge: `rules` or a TOML file with a `[judge]`-style table (kind, retries).
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
    let judge = arl::config::JudgeConfig::parse_arg(&a.judge)?;
    let report = arl::eval::evaluate_model(&a.model, &a.data, &judge, a.samples, a.seed)?;
    print!("{}", report.table());
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
