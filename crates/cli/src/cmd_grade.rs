//! `arlrr grade`: grades responses against their rubrics with a configured judge and writes
//! the grades JSONL that `arlrr score` reads.
//!
//! The output is written through a temporary file and renamed into place at the end, so an
//! error leaves no partial grades file behind. A criterion the judge failed on is written as
//! `null` (never scored) and counted in the summary. When every verdict failed (with
//! `--strict`: any), the file is still written, its nulls carrying the reasons, and the
//! command exits 1 saying how many failed and why.

use anyhow::{Context, Result};
use judge::{GradeTask, Judge, JudgeConfig, JudgeFailure};
use rubric::grades::Verdict;
use rubric::{DataError, Dataset, Format, GradeLine};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct GradeArgs {
    /// The rubric data (HealthBench, native or WritingBench JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Format of --data (default: recognised from the first record).
    #[arg(long)]
    format: Option<Format>,
    /// Responses JSONL: `{"prompt_id": ..., "completion": ...}` per line, optionally
    /// `"response_id"`.
    #[arg(long)]
    responses: PathBuf,
    /// Judge config (TOML): kind = rules | http | embedding, optional cache = "file.sqlite".
    #[arg(long)]
    judge: PathBuf,
    /// Grades JSONL to write.
    #[arg(long)]
    out: PathBuf,
    /// Responses handed to the judge per call (the HTTP judge runs their criteria
    /// concurrently, up to its `concurrency`).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Leave the completion text out of the grades file.
    #[arg(long)]
    no_completion: bool,
    /// Exit non-zero when any verdict failed (by default only when every verdict failed;
    /// the grades file is written either way, failures as `null`).
    #[arg(long)]
    strict: bool,
}

/// One line of a responses file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseLine {
    pub prompt_id: String,
    pub response_id: Option<String>,
    pub completion: String,
    pub line: usize,
}

/// Reads a responses file, checking each line's fields and that its `prompt_id` is in the
/// dataset; errors name the file, line and field.
pub fn read_responses(path: &Path, dataset: &Dataset) -> Result<Vec<ResponseLine>, DataError> {
    let text = rubric::read_text(path)?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |field: &str, msg: String| DataError::new(path, line, field, msg);
        let value: Value =
            serde_json::from_str(raw).map_err(|e| err("(json)", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(err("(line)", "expected a JSON object".into()));
        };
        let string = |field: &str| -> Result<Option<String>, DataError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(err(field, format!("expected a string, got {other}"))),
            }
        };
        let prompt_id =
            string("prompt_id")?.ok_or_else(|| err("prompt_id", "missing field".into()))?;
        let completion =
            string("completion")?.ok_or_else(|| err("completion", "missing field".into()))?;
        let response_id = string("response_id")?;
        if dataset.get(&prompt_id).is_none() {
            return Err(err(
                "prompt_id",
                format!(
                    "unknown prompt_id `{prompt_id}` (not in {})",
                    dataset.source.display()
                ),
            ));
        }
        out.push(ResponseLine {
            prompt_id,
            response_id,
            completion,
            line,
        });
    }
    Ok(out)
}

/// Counts for the closing summary.
#[derive(Debug, Default)]
struct Tally {
    responses: usize,
    verdicts: usize,
    failed: usize,
    not_gradable: usize,
    exhausted: usize,
    /// The first failed verdict: `file:line` of its response, the criterion, the reason.
    first_failure: Option<String>,
}

impl Tally {
    /// Why verdicts failed: "X not gradable by this judge, Y after exhausting retries, Z other".
    fn reasons(&self) -> String {
        format!(
            "{} not gradable by this judge, {} after exhausting retries, {} other",
            self.not_gradable,
            self.exhausted,
            self.failed - self.not_gradable - self.exhausted
        )
    }
}

/// A judge's grade as the grades format's verdict.
fn verdict(outcome: &Result<f64, JudgeFailure>, graded: bool) -> Verdict {
    match outcome {
        Err(_) => Verdict::Failed,
        Ok(v) if graded => Verdict::Graded(*v),
        Ok(v) if *v == 0.0 || *v == 1.0 => Verdict::Met(*v == 1.0),
        Ok(v) => Verdict::Graded(*v),
    }
}

pub fn run(args: GradeArgs) -> Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let dataset = crate::cmd_data::load(&args.data, args.format)?;
    let responses = read_responses(&args.responses, &dataset)?;
    let config = JudgeConfig::load(&args.judge)?;
    // a build error says what failed (the cache file, the API key's variable); the config
    // that asked for it is --judge
    let judge = judge::from_config(&config)
        .with_context(|| format!("building the judge of --judge {}", args.judge.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(responses.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} grading [{bar:30}] {pos}/{len} responses {per_sec} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut tally = Tally::default();
    let mut out = String::new();
    for chunk in responses.chunks(args.batch) {
        let tasks: Vec<GradeTask<'_>> = chunk
            .iter()
            .map(|r| GradeTask {
                example: dataset.get(&r.prompt_id).expect("checked when read"),
                response: &r.completion,
                criteria: None,
            })
            .collect();
        let grades = runtime.block_on(judge.grade(&tasks));
        for (r, row) in chunk.iter().zip(grades) {
            tally.responses += 1;
            let mut met = Vec::with_capacity(row.len());
            let mut explanations = Vec::with_capacity(row.len());
            for g in &row {
                tally.verdicts += 1;
                match &g.outcome {
                    Err(e) => {
                        tally.failed += 1;
                        tally.first_failure.get_or_insert_with(|| {
                            let at = args.responses.display();
                            format!("{at}:{} rubrics[{}]: {e}", r.line, g.criterion)
                        });
                        match e {
                            JudgeFailure::NotGradable(_) => tally.not_gradable += 1,
                            JudgeFailure::Exhausted { .. } => tally.exhausted += 1,
                            JudgeFailure::Other(_) => {}
                        }
                        explanations.push(format!("judge failure: {e}"));
                    }
                    Ok(_) => explanations.push(g.explanation.clone()),
                }
                met.push(verdict(&g.outcome, dataset.graded));
            }
            let line = GradeLine {
                prompt_id: r.prompt_id.clone(),
                response_id: r.response_id.clone(),
                completion: (!args.no_completion).then(|| r.completion.clone()),
                met,
                judge: Some(judge.id()),
                explanations: Some(explanations),
            };
            out.push_str(&serde_json::to_string(&line)?);
            out.push('\n');
        }
        bar.inc(chunk.len() as u64);
        let s = judge.stats();
        bar.set_message(format!("{} failed, {} cached", tally.failed, s.cache_hits));
    }
    bar.finish_and_clear();
    rubric::runfile::write_atomic(&args.out, out.as_bytes())?;
    print_summary(
        &tally,
        &judge.stats(),
        started.elapsed().as_secs_f64(),
        &args.out,
        &*judge,
    );
    let first = tally.first_failure.as_deref().unwrap_or_default();
    if tally.verdicts > 0 && tally.failed == tally.verdicts {
        anyhow::bail!(
            "every verdict failed: {} of {} ({}); first: {first}. {} holds only nulls, which \
             `arlrr score` leaves out",
            tally.failed,
            tally.verdicts,
            tally.reasons(),
            args.out.display()
        );
    }
    if args.strict && tally.failed > 0 {
        anyhow::bail!(
            "--strict: {} of {} verdicts failed ({}); first: {first}. They are null in {}",
            tally.failed,
            tally.verdicts,
            tally.reasons(),
            args.out.display()
        );
    }
    Ok(())
}

fn print_summary(t: &Tally, s: &judge::JudgeStats, secs: f64, out: &Path, judge: &dyn Judge) {
    eprintln!(
        "graded {} responses, {} verdicts with {} in {secs:.1}s -> {}",
        t.responses,
        t.verdicts,
        judge.id(),
        out.display()
    );
    eprintln!(
        "failed verdicts (written as null): {} ({})",
        t.failed,
        t.reasons()
    );
    eprintln!(
        "cache: {} hits, {} misses; backend calls: {}, retries: {}; tokens: {} prompt, {} completion",
        s.cache_hits, s.cache_misses, s.calls, s.retries, s.prompt_tokens, s.completion_tokens
    );
}
