//! What a run leaves behind for whoever reports on it: its records read back from its own
//! files, with the config and classes they belong to. The trainer returns [`RunData`] from
//! `Trainer::run`; the `lab` crate writes `report.md` and the plots from it.

use crate::completions::CompletionLine;
use crate::config::TrainConfig;
use crate::eval::EvalLine;
use crate::metrics::StepMetrics;
use anyhow::Result;
use rubric::runfile::read_jsonl_if_exists;
use schedule::DecisionRecord;
use std::path::{Path, PathBuf};

/// What a run wrote: its metrics, schedule decisions, validations and test scores.
pub struct RunRecords {
    pub metrics: Vec<StepMetrics>,
    pub schedule: Vec<DecisionRecord>,
    pub evals: Vec<EvalLine>,
    pub tests: Vec<EvalLine>,
    /// `completions.jsonl`: logged responses of training steps and validations.
    pub completions: Vec<CompletionLine>,
}

impl RunRecords {
    /// Reads the run files of `run_dir`; a file not written yet reads as empty.
    pub fn read(run_dir: &Path) -> Result<RunRecords> {
        Ok(RunRecords {
            metrics: read_jsonl_if_exists(&run_dir.join("metrics.jsonl"))?,
            schedule: read_jsonl_if_exists(&run_dir.join("schedule.jsonl"))?,
            evals: read_jsonl_if_exists(&run_dir.join("eval.jsonl"))?,
            tests: read_jsonl_if_exists(&run_dir.join("test.jsonl"))?,
            completions: read_jsonl_if_exists(&run_dir.join("completions.jsonl"))?,
        })
    }
}

/// A finished run: its folder, config, class names and records.
pub struct RunData {
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub classes: Vec<String>,
    pub records: RunRecords,
}
