//! `arlrr grade`: grades responses against their rubrics with a configured judge and writes
//! the grades JSONL that `arlrr score` reads.
//!
//! The output is written through a temporary file and renamed into place at the end, so an
//! error leaves no partial grades file behind. Grading goes through the one grading path
//! (`judge::grade_with_retries`): a failed verdict is asked for again up to the judge config's
//! `retries` times (default 2). A criterion the judge still failed on is written as `null`
//! (never scored) and counted in the summary. When every verdict failed (with
//! `--strict`: any), the file is still written, its nulls carrying the reasons, and the
//! command exits 1 saying how many failed and why.

use anyhow::{Context, Result};
use judge::{GradeTask, Judge, JudgeConfig, JudgeFailure, Verdict};
use rubric::grades::MetValue;
use rubric::{Dataset, Format, GradeLine, ResponseLine};
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

/// Counts for the closing summary.
#[derive(Debug, Default)]
struct Tally {
    responses: usize,
    verdicts: usize,
    failed: usize,
    not_gradable: usize,
    exhausted: usize,
    /// Verdicts asked for again (the judge config's `retries`).
    retried: usize,
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

    /// Counts `v`, a verdict on the response of `responses:line`; returns its explanation (a
    /// failure's reason for a failed one).
    fn count(&mut self, responses: &Path, line: usize, v: &Verdict) -> String {
        self.verdicts += 1;
        let Some(e) = v.failure() else {
            return v.explanation.clone();
        };
        self.failed += 1;
        self.first_failure.get_or_insert_with(|| {
            let at = responses.display();
            format!("{at}:{line} rubrics[{}]: {e}", v.criterion)
        });
        match e {
            JudgeFailure::NotGradable(_) => self.not_gradable += 1,
            JudgeFailure::Exhausted { .. } => self.exhausted += 1,
            JudgeFailure::Other(_) => {}
        }
        format!("judge failure: {e}")
    }

    /// The command's end: an error when every verdict failed (with `--strict`: any).
    fn verdict_errors(&self, strict: bool, out: &Path) -> Result<()> {
        let first = self.first_failure.as_deref().unwrap_or_default();
        if self.verdicts > 0 && self.failed == self.verdicts {
            anyhow::bail!(
                "every verdict failed: {} of {} ({}); first: {first}. {} holds only nulls, which \
                 `arlrr score` leaves out",
                self.failed,
                self.verdicts,
                self.reasons(),
                out.display()
            );
        }
        if strict && self.failed > 0 {
            anyhow::bail!(
                "--strict: {} of {} verdicts failed ({}); first: {first}. They are null in {}",
                self.failed,
                self.verdicts,
                self.reasons(),
                out.display()
            );
        }
        Ok(())
    }
}

pub fn run(args: GradeArgs) -> Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let dataset = crate::cmd_data::load(&args.data, args.format)?;
    let responses = rubric::read_responses(&args.responses, &dataset)?;
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
    let grader = Grader {
        args: &args,
        dataset: &dataset,
        judge: &*judge,
        retries: config.retries(),
    };
    let (out, tally) = runtime.block_on(grader.grade_all(&responses))?;
    rubric::runfile::write_atomic(&args.out, out.as_bytes())?;
    let secs = started.elapsed().as_secs_f64();
    print_summary(&tally, &judge.stats(), secs, &args.out, &*judge);
    tally.verdict_errors(args.strict, &args.out)
}

/// What grades the responses: the judge with the retries of its config, and the options.
struct Grader<'a> {
    args: &'a GradeArgs,
    dataset: &'a Dataset,
    judge: &'a dyn Judge,
    retries: u32,
}

impl Grader<'_> {
    /// Grades every response, `--batch` at a time, through the one grading path
    /// ([`judge::grade_with_retries`]); returns the grades file's text and the counts.
    async fn grade_all(&self, responses: &[ResponseLine]) -> Result<(String, Tally)> {
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
        for chunk in responses.chunks(self.args.batch) {
            let tasks: Vec<GradeTask<'_>> = chunk
                .iter()
                .map(|r| GradeTask {
                    example: self.dataset.get(&r.prompt_id).expect("checked when read"),
                    response: &r.completion,
                    criteria: None,
                })
                .collect();
            let graded = judge::grade_with_retries(self.judge, &tasks, self.retries)
                .await
                .map_err(anyhow::Error::msg)?;
            tally.retried += graded.retried;
            for (r, verdicts) in chunk.iter().zip(&graded.verdicts) {
                let line = self.line(r, verdicts, &mut tally);
                out.push_str(&serde_json::to_string(&line)?);
                out.push('\n');
            }
            bar.inc(chunk.len() as u64);
            let hits = self.judge.stats().cache_hits;
            bar.set_message(format!("{} failed, {hits} cached", tally.failed));
        }
        bar.finish_and_clear();
        Ok((out, tally))
    }

    /// The grades line of response `r` (failed verdicts as `null`), counted in `tally`.
    fn line(&self, r: &ResponseLine, verdicts: &[Verdict], tally: &mut Tally) -> GradeLine {
        tally.responses += 1;
        let explanations = verdicts
            .iter()
            .map(|v| tally.count(&self.args.responses, r.line, v))
            .collect();
        GradeLine {
            prompt_id: r.prompt_id.clone(),
            response_id: r.response_id.clone(),
            completion: (!self.args.no_completion).then(|| r.completion.clone()),
            met: verdicts
                .iter()
                .map(|v| MetValue::of(v, self.dataset.graded))
                .collect(),
            judge: Some(self.judge.id()),
            explanations: Some(explanations),
        }
    }
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
    eprintln!("verdicts asked for again: {}", t.retried);
}
