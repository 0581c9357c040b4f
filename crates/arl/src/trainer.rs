//! The training loop. One step: sample prompts → generate `G` responses each → grade →
//! reward vectors → objective/phase → group-normalized advantages → clipped token-level loss →
//! AdamW. `run` reads top to bottom; the pieces are the methods below it.

use crate::actor::{Completion, ParamSnapshot, Policy};
use crate::checkpoint::{self, RunState};
use crate::completions::{self, CompletionLine, Split};
use crate::config::TrainConfig;
use crate::eval::{EvalLine, EvalReport, EvalSet, Evaluator, Scored};
use crate::grading::{grade, sample_criteria, Criteria, ToGrade};
use crate::grpo::{grpo_loss, scalar};
use crate::metrics::{
    reward_stats, zero_spread_share, JudgeDelta, Resampled, StepMetrics, UpdateStats,
};
use crate::noise::{Confusion, Noise, NoiseStats};
use crate::optim::{add_grad, clip_grads, global_norm, AdamW};
use crate::records::{RunData, RunRecords};
use crate::setup::Parts;
use crate::tensorboard::{self, EventLog};
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use judge::{Judge, JudgeStats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rubric::runfile::{self, Jsonl};
use rubric::{Dataset, Example, RewardVector};
use schedule::{BatchScores, Decision, Measured, ObjectiveKind, Target, TaskData};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use crate::metrics::Timing;

mod select;

/// A new run must not land on an earlier one: checked before anything is written. The error
/// says what to do with the folder: resume a run that holds a checkpoint, start over
/// (`--overwrite`) one that was stopped before its first.
pub fn ensure_new_run(run_dir: &Path) -> Result<()> {
    if !run_dir.join("metrics.jsonl").exists() {
        return Ok(());
    }
    let dir = run_dir.display();
    match checkpoint::latest(run_dir)? {
        Some((_, state)) => bail!(
            "{dir} already holds a run (its latest checkpoint is at step {}); continue it with \
             `arlrr train --resume {dir}`, or write the new run elsewhere (`--out` or `run.dir`)",
            state.step
        ),
        None => bail!(
            "{dir} already holds a run, stopped before its first checkpoint, so there is \
             nothing to resume; start over into it with `--overwrite`, write the new run \
             elsewhere (`--out` or `run.dir`), or delete the folder"
        ),
    }
}

/// Xored into `run.seed` to seed the stream that draws `objective.subsample`'s criteria.
const SUBSAMPLE_STREAM: u64 = 0x5ab5_a3b1_e000_c417;

/// The run's `objective.weights` as a target over `classes`, the error naming the field.
fn scalarized_target(config: &TrainConfig, classes: &[String]) -> Result<Target> {
    let target = config.objective.weights.target(classes);
    target.map_err(|e| anyhow::anyhow!("field `objective.weights`: {e}"))
}

/// Why `--resume` cannot continue a run without a checkpoint, and the way out.
fn no_checkpoint(run_dir: &Path, config: &TrainConfig) -> anyhow::Error {
    let dir = run_dir.display();
    anyhow::anyhow!(
        "{dir} holds no checkpoint to resume from: the run stopped before its first \
         (`run.checkpoint_every` = {}). Start it over in that folder with `arlrr train --config \
         {dir}/config.toml --overwrite`, or delete the folder",
        config.run.checkpoint_every
    )
}

/// The files a run writes into its folder besides `checkpoints/`, `tensorboard/` and `data/`.
const RUN_FILES: [&str; 11] = [
    "config.toml",
    "metrics.jsonl",
    "completions.jsonl",
    "schedule.jsonl",
    "eval.jsonl",
    "test.jsonl",
    "reference.safetensors",
    "report.md",
    "validation.svg",
    "schedule.svg",
    "variance.svg",
];

/// `arlrr train --overwrite`: clears what a run stopped before its first checkpoint left in
/// `run_dir` (its files and any half-written checkpoint; nothing else in the folder), so
/// that a new run starts there. A folder holding a checkpoint is refused: that work is
/// resumed, never thrown away by a flag.
pub fn discard_unstarted_run(run_dir: &Path) -> Result<()> {
    let dir = run_dir.display();
    if let Some((_, state)) = checkpoint::latest(run_dir)? {
        bail!(
            "--overwrite: {dir} holds a checkpoint at step {}, which is not thrown away; \
             continue the run with `arlrr train --resume {dir}`, or delete the folder to start \
             over",
            state.step
        );
    }
    let remove = |p: PathBuf, all: bool| -> Result<()> {
        let gone = if all {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match gone {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow::Error::new(e)
                .context(format!("--overwrite: cannot remove {}", p.display()))),
            _ => Ok(()),
        }
    };
    for name in RUN_FILES {
        remove(run_dir.join(name), false)?;
    }
    remove(run_dir.join(tensorboard::DIR), true)?;
    remove(run_dir.join("checkpoints"), true)
}

/// Appends `value` to a run file that resume and the report read back. JSON has no NaN or
/// infinity (serde_json writes them as null, which then fails to read back as a number), so
/// the line is read back first and a non-finite figure fails here, naming the field.
fn append_eval(file: &mut Jsonl, name: &str, line: &EvalLine) -> Result<()> {
    let r = &line.report;
    if r.overall.n == 0 {
        bail!(
            "{name}: no response scored at step {} ({} excluded for {} failed judge verdicts, the rest without positive points): the judge cannot grade this data",
            line.step,
            r.excluded,
            r.failed_verdicts
        );
    }
    // the report itself, not the line: `#[serde(flatten)]` would hide the field's path
    finite(name, r)?;
    Ok(file.append(line)?)
}

fn append_checked<T>(file: &mut Jsonl, name: &str, value: &T) -> Result<()>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    finite(name, value)?;
    Ok(file.append(value)?)
}

/// Fails when `value` would not read back from its JSON (a NaN or infinity in a number
/// field), naming the field.
fn finite<T>(name: &str, value: &T) -> Result<()>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let line = serde_json::to_string(value)?;
    let de = &mut serde_json::Deserializer::from_str(&line);
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(de) {
        bail!(
            "{name}: field `{}` is not a finite number (JSON cannot hold NaN or infinity); not written",
            e.path()
        );
    }
    Ok(())
}

/// Responses sampled for a batch of training prompts, with their rewards.
pub(crate) struct Rollout {
    /// Training-set index of each prompt.
    pub prompts: Vec<usize>,
    /// `[prompt][sample]`.
    pub completions: Vec<Vec<Completion>>,
    /// `[prompt][sample]`; `None` = excluded (judge failure).
    pub rewards: Vec<Vec<Option<RewardVector>>>,
    /// `[prompt][sample]`: the verdicts each response's rewards were read from.
    pub verdicts: Vec<Vec<Vec<rubric::Verdict>>>,
    pub failed_verdicts: usize,
    pub retried_verdicts: usize,
}

impl Rollout {
    /// Adds a further round's groups after these.
    fn append(&mut self, more: Rollout) {
        self.prompts.extend(more.prompts);
        self.completions.extend(more.completions);
        self.rewards.extend(more.rewards);
        self.verdicts.extend(more.verdicts);
        self.failed_verdicts += more.failed_verdicts;
        self.retried_verdicts += more.retried_verdicts;
    }
}

/// A GRPO step's rollout (every group sampled), the objective's advantages on it, the
/// update, and what dynamic sampling did (`grpo.resample_flat`).
pub(crate) struct Stepped {
    /// The learning rate of the step's (first) optimizer step.
    pub lr: f64,
    pub rollout: Rollout,
    pub adv: schedule::BatchAdvantages,
    /// `[prompt][sample]`: the advantage each response was trained with (`None` = left out).
    pub trained: Vec<Vec<Option<f64>>>,
    pub update: UpdateStats,
    pub resample: Option<Resampled>,
}

/// Responses sampled at the lookahead probes' shared starting point (see
/// [`Trainer::probe_samples`]), with the sampling stream's state before and after.
pub(crate) struct ProbeSample {
    rng_before: ChaCha8Rng,
    prompts: Vec<usize>,
    completions: Vec<Vec<Completion>>,
    rng_after: ChaCha8Rng,
}

/// Each micro-batch's rows by example and tokens: what the reference log-probs depend on.
type RowsKey = Vec<Vec<(usize, Vec<u32>)>>;

/// One completion in an update.
struct Row {
    example: usize,
    tokens: Vec<u32>,
    /// The sampler's log-prob of each token.
    sampler_log_probs: Vec<f32>,
    advantage: f64,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub run_dir: PathBuf,
    pub state: RunState,
    pub(crate) policy: Box<dyn Policy>,
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) optimizer: AdamW,
    pub(crate) judge: Arc<dyn Judge>,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) data: TaskData,
    /// Frozen starting parameters for the KL penalty (`grpo.kl_beta > 0`).
    reference: Option<ParamSnapshot>,
    pub(crate) rng: ChaCha8Rng,
    /// Draws the criteria `objective.subsample` grades; its own stream, so the prompts and
    /// responses are those of the same run without subsampling.
    subsample_rng: ChaCha8Rng,
    /// `[judge.noise]`, and its tally over the steps written so far.
    noise: Option<Noise>,
    noise_total: Confusion,
    /// Judge verdicts spent on training and selection by the steps written so far
    /// (`run.verdict_budget`); on resume summed from `metrics.jsonl`.
    spent: u64,
    metrics: Jsonl,
    schedule: Jsonl,
    evals: Jsonl,
    tests: Jsonl,
    completions: Jsonl,
    /// `log.tensorboard`: `metrics.jsonl`'s lines as TensorBoard scalars.
    tensorboard: Option<EventLog>,
    /// `Some` while the lookahead's probes take their first step: every candidate starts
    /// from the same parameters and sampling stream, so each rollout is sampled once, kept
    /// here by the stream's state it started from, and replayed for the next candidates
    /// (only their grading differs). Exact: the same tokens a fresh sample would draw.
    pub(crate) probe_samples: Option<Vec<ProbeSample>>,
    /// Replay the first probe step's rollouts to every candidate (on by default). Off, each
    /// candidate samples afresh: the same bits, slower (what the tests compare against).
    pub share_probe_rollouts: bool,
    /// The last reference log-probs computed, by the micro-batches' rows (example and
    /// tokens) they were computed for: the probes of one selection usually train on the
    /// same rows, and the reference is frozen.
    reference_memo: Option<(RowsKey, Vec<Option<Tensor>>)>,
}

impl Trainer {
    /// Starts a new run in `config.run.dir` (which must not hold one yet).
    pub fn new(mut config: TrainConfig, parts: Parts) -> Result<Trainer> {
        config.validate()?;
        let run_dir = config.run.dir.clone();
        ensure_new_run(&run_dir)?;
        // the saved config.toml names absolute paths: `--resume` works from any folder
        config.absolutize()?;
        scalarized_target(&config, &parts.data.classes.names)?; // a class-name typo
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
        runfile::write_atomic(&run_dir.join("config.toml"), config.to_toml()?.as_bytes())?;
        let mut t = Trainer::assemble(config, run_dir, parts, RunState::default())?;
        t.rng = ChaCha8Rng::seed_from_u64(t.config.run.seed);
        if t.config.log.tensorboard {
            t.tensorboard = Some(EventLog::start(&t.run_dir, &[])?);
        }
        if let Some(r) = &t.reference {
            checkpoint::save_snapshot(&t.vars, r, &t.run_dir.join("reference.safetensors"))?;
        }
        Ok(t)
    }

    /// Continues the run in `run_dir` from its latest checkpoint, with parts built from the
    /// run's resolved `config.toml`.
    pub fn resume(run_dir: &Path) -> Result<Trainer> {
        let saved = run_dir.join("config.toml");
        if !saved.exists() && run_dir.is_dir() {
            bail!(
                "{} is not a run directory (it has no config.toml): `--resume` takes the folder a \
                 run was written to",
                run_dir.display()
            );
        }
        let config = TrainConfig::from_file(&saved)?;
        if checkpoint::latest(run_dir)?.is_none() {
            // before the data and the model load
            return Err(no_checkpoint(run_dir, &config));
        }
        let parts = Parts::from_config(&config)?;
        Trainer::resume_with(run_dir, config, parts)
    }

    pub fn resume_with(run_dir: &Path, mut config: TrainConfig, parts: Parts) -> Result<Trainer> {
        config.run.dir = run_dir.to_path_buf();
        let Some((ckpt, state)) = checkpoint::latest(run_dir)? else {
            return Err(no_checkpoint(run_dir, &config));
        };
        let mut t = Trainer::assemble(config, run_dir.to_path_buf(), parts, state)?;
        t.policy.load(&ckpt.join("policy.safetensors"))?;
        t.optimizer
            .load(&ckpt.join("optimizer.safetensors"), t.state.optimizer_t)?;
        t.rng = t.state.rng.restore();
        if let Some(r) = &t.state.subsample_rng {
            t.subsample_rng = r.restore();
        }
        if t.reference.is_some() {
            let r = checkpoint::load_snapshot(&t.vars, &run_dir.join("reference.safetensors"))?;
            t.reference = Some(r);
        }
        t.metrics.truncate(t.state.metrics_lines)?;
        let written = runfile::read_jsonl_if_exists::<StepMetrics>(&run_dir.join("metrics.jsonl"))?;
        for m in written.iter().filter_map(|m| m.judge_noise) {
            t.noise_total = t.noise_total.plus(m.step);
        }
        t.spent = written.iter().map(|m| m.train_verdicts).sum();
        if t.config.log.tensorboard {
            // the event log holds the lines kept, each once
            let kept = runfile::read_jsonl_if_exists(&run_dir.join("metrics.jsonl"))?;
            t.tensorboard = Some(EventLog::start(run_dir, &kept)?);
        }
        t.schedule.truncate(t.state.schedule_lines)?;
        t.evals.truncate(t.state.eval_lines)?;
        t.completions.truncate(t.state.completions_lines)?;
        Ok(t)
    }

    fn assemble(
        config: TrainConfig,
        run_dir: PathBuf,
        parts: Parts,
        state: RunState,
    ) -> Result<Trainer> {
        let vars = parts.policy.vars();
        let optimizer = AdamW::new(&vars, config.optim.clone())?;
        let reference = if config.grpo.kl_beta > 0.0 {
            Some(ParamSnapshot::take(&vars)?)
        } else {
            None
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let noise = config.judge.noise.as_ref();
        let noise = noise
            .map(|n| n.resolve(&parts.data.classes.names, config.run.seed))
            .transpose()?;
        Ok(Trainer {
            noise,
            noise_total: Confusion::default(),
            spent: 0,
            metrics: Jsonl::open(&run_dir.join("metrics.jsonl"))?,
            schedule: Jsonl::open(&run_dir.join("schedule.jsonl"))?,
            evals: Jsonl::open(&run_dir.join("eval.jsonl"))?,
            tests: Jsonl::open(&run_dir.join("test.jsonl"))?,
            completions: Jsonl::open(&run_dir.join("completions.jsonl"))?,
            tensorboard: None,
            rng: ChaCha8Rng::seed_from_u64(config.run.seed),
            subsample_rng: ChaCha8Rng::seed_from_u64(config.run.seed ^ SUBSAMPLE_STREAM),
            config,
            run_dir,
            state,
            policy: parts.policy,
            vars,
            optimizer,
            judge: parts.judge,
            rt,
            data: parts.data,
            reference,
            probe_samples: None,
            share_probe_rollouts: true,
            reference_memo: None,
        })
    }

    pub fn policy(&mut self) -> &mut dyn Policy {
        &mut *self.policy
    }

    /// Scores the current policy on another split (e.g. test), all examples, with the run's
    /// class assignment.
    pub fn evaluate_on(&mut self, data: &Dataset, samples: usize, seed: u64) -> Result<EvalReport> {
        let resamples = self.config.eval.bootstrap;
        let scored = self.evaluate_split(Some(data), usize::MAX, samples, seed, resamples, false);
        Ok(scored?.report)
    }

    pub fn class_names(&self) -> &[String] {
        &self.data.classes.names
    }

    /// Runs the remaining steps (until `run.steps`, or until `run.verdict_budget` is spent),
    /// calling `on_step` after each; writes a checkpoint at the end and returns the run's
    /// records (the `lab` crate writes `report.md` from them).
    pub fn run(&mut self, mut on_step: impl FnMut(&StepMetrics)) -> Result<RunData> {
        if self.state.step == 0 && self.evals.lines == 0 {
            let v = self.validate_scored()?; // the starting policy, for the report's comparison
            let lines = self.val_lines(0, &v);
            append_eval(
                &mut self.evals,
                "eval.jsonl",
                &EvalLine {
                    step: 0,
                    report: v.report,
                },
            )?;
            self.log_completions(&lines)?;
            self.test_split(0)?;
        }
        while !self.finished() {
            let mut time = Timing::default();
            let judge_before = self.judge.stats();
            if let Some(n) = &self.noise {
                n.take(); // the tally starts with the step
            }

            // 1. at a phase boundary the selector picks the class the next S steps optimize
            if self.alternating()
                && self
                    .state
                    .phase
                    .boundary(self.state.step, &self.config.phases)
            {
                let t = Instant::now();
                let (decision, kept) = self.select_class(&mut Timing::default())?;
                self.log_decision(&decision)?;
                if self.guarding() && !self.config.phases.selector.measures() {
                    // the guard needs the score the phase starts from
                    let start = self.select_eval(&mut Timing::default())?;
                    self.state.phase.start_score = start.measured.overall;
                }
                time.select = t.elapsed().as_secs_f64();
                if let Some(kept) = kept {
                    // the chosen probe's steps are the phase's first steps
                    self.write_kept(kept, time.select, &judge_before, &mut on_step)?;
                    continue;
                }
            }

            // 2. one GRPO step toward the objective
            let target = self.target()?;
            let only = self.graded_class();
            let stepped = self.grpo_step(&target, only, &mut time)?;
            self.state.step += 1;
            let stepped_verdicts = self.judge.stats().verdicts - judge_before.verdicts;
            self.spent += stepped_verdicts; // `finished` from here on counts this step

            // 3. `end_flat` (no spread left) or the phase guard (a drop on the fixed batch)
            // may end the phase before its length
            self.end_phase_early(zero_spread_share(&stepped.adv), &mut time)?;
            let train_verdicts = self.judge.stats().verdicts - judge_before.verdicts;
            self.spent += train_verdicts - stepped_verdicts; // the guard's

            // 4. validation, metrics, checkpoint
            let val = self.validate_if_due(&mut time)?;
            let judge = JudgeDelta::between(&judge_before, &self.judge.stats());
            let lines = self.train_lines(&stepped);
            let mut m = self.metrics_line(stepped, judge, train_verdicts);
            m.val = val;
            m.judge_noise = self.noise_stats();
            m.time_s = time;
            self.write_step(&m, &lines, true, &mut on_step)?;
        }
        self.test_split(self.state.step)?;
        Ok(RunData {
            dir: self.run_dir.clone(),
            config: self.config.clone(),
            classes: self.data.classes.names.clone(),
            records: RunRecords::read(&self.run_dir)?,
        })
    }

    /// After the step just completed (the last of a phase's kept probe steps included), whose
    /// groups had zero spread in `share` of the cases: `end_flat` and the phase guard may end
    /// the phase, so that the next step is a boundary. The guard's measurement goes to
    /// `time.select`.
    fn end_phase_early(&mut self, share: f64, time: &mut Timing) -> Result<()> {
        if !self.alternating() {
            return Ok(());
        }
        let (step, phases) = (self.state.step, &self.config.phases);
        self.state.phase.note_flat(phases, share);
        if self.finished() || self.state.phase.boundary(step, phases) {
            return Ok(());
        }
        if self.state.phase.check_flat(phases, step) || !self.guarding() {
            return Ok(());
        }
        let t = Instant::now();
        let now = self.select_eval(&mut Timing::default())?.measured.overall;
        let phases = &self.config.phases;
        self.state.phase.check_guard(phases, step, now);
        time.select += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// Validation (`[eval]`) after the step just completed, when due (every `eval.every`
    /// steps and at the end), written to `eval.jsonl`; its time goes to `time.eval`.
    fn validate_if_due(&mut self, time: &mut Timing) -> Result<Option<EvalReport>> {
        let (step, every) = (self.state.step, self.config.eval.every);
        let due = every > 0 && step.is_multiple_of(every);
        if !due && !self.finished() {
            return Ok(None);
        }
        let t = Instant::now();
        let scored = self.validate_scored()?;
        time.eval = t.elapsed().as_secs_f64();
        let line = EvalLine {
            step,
            report: scored.report.clone(),
        };
        append_eval(&mut self.evals, "eval.jsonl", &line)?;
        if self.finished() {
            let lines = self.val_lines(step, &scored);
            self.log_completions(&lines)?;
        }
        Ok(Some(scored.report))
    }

    /// The metrics line of the step just completed (`val`, `judge_noise` and `time_s` left
    /// for the caller).
    fn metrics_line(
        &self,
        stepped: Stepped,
        judge: JudgeDelta,
        train_verdicts: u64,
    ) -> StepMetrics {
        let Stepped {
            lr,
            rollout,
            adv,
            update,
            resample,
            ..
        } = stepped;
        let (overall, classes) = reward_stats(&rollout.rewards, &self.data.classes.names);
        StepMetrics {
            step: self.state.step,
            phase: self.state.phase.index,
            active_class: self.active_class_name(),
            lr,
            overall,
            objective_group_std: schedule::mean_std(adv.group_std.iter().copied())
                .map_or(0.0, |a| a.0),
            classes,
            groups: adv.zero_spread.len(),
            zero_spread_share: zero_spread_share(&adv),
            resample,
            samples: rollout.rewards.iter().map(Vec::len).sum(),
            excluded_samples: rollout
                .rewards
                .iter()
                .flatten()
                .filter(|r| r.is_none())
                .count(),
            failed_verdicts: rollout.failed_verdicts,
            retried_verdicts: rollout.retried_verdicts,
            judge,
            train_verdicts,
            update,
            val: None,
            judge_noise: None,
            time_s: Timing::default(),
            generated_tokens: rollout
                .completions
                .iter()
                .flatten()
                .map(|c| c.tokens.len())
                .sum(),
        }
    }

    /// Appends a step's metrics line and its `completions.jsonl` lines, then checkpoints when one is due (and `checkpoint`).
    fn write_step(
        &mut self,
        m: &StepMetrics,
        lines: &[CompletionLine],
        checkpoint: bool,
        on_step: &mut impl FnMut(&StepMetrics),
    ) -> Result<()> {
        append_checked(&mut self.metrics, "metrics.jsonl", m)?;
        self.state.metrics_lines += 1;
        if let Some(log) = &mut self.tensorboard {
            log.append(&serde_json::to_value(m)?)?;
        }
        self.log_completions(lines)?;
        on_step(m);
        let (step, every) = (self.state.step, self.config.run.checkpoint_every);
        let due = (every > 0 && step.is_multiple_of(every)) || self.finished();
        if checkpoint && due {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// `phases.keep_probe`: writes the kept probe's steps as the new phase's first steps (the
    /// run's state is already the probe's). `select_s`: the selection's wall time, which holds
    /// theirs; the selection's other judge work (since `judge_before`) goes to the first line,
    /// as it does to a boundary's step. A checkpoint falls on the last of them only: the state
    /// of the steps before it was not kept.
    fn write_kept(
        &mut self,
        mut kept: select::KeptSteps,
        select_s: f64,
        judge_before: &JudgeStats,
        on_step: &mut impl FnMut(&StepMetrics),
    ) -> Result<()> {
        let selection = JudgeDelta::between(judge_before, &self.judge.stats());
        let later = kept.steps[1..].iter().map(|k| k.metrics.judge);
        let first = later.fold(selection, JudgeDelta::less);
        let m0 = &mut kept.steps[0].metrics;
        let own_validation = m0.judge.verdicts - m0.train_verdicts;
        (m0.judge, m0.train_verdicts) = (first, first.verdicts - own_validation);
        let n = kept.steps.len();
        for (i, k) in kept.steps.into_iter().enumerate() {
            self.state.step += 1;
            let mut m = k.metrics;
            self.spent += m.train_verdicts;
            (m.step, m.phase) = (self.state.step, self.state.phase.index);
            m.active_class = self.active_class_name();
            let mut lines = k.completions;
            for l in &mut lines {
                (l.step, l.phase) = (m.step, m.phase);
                l.active_class.clone_from(&m.active_class);
            }
            if i == 0 {
                m.time_s.select = (select_s - kept.secs).max(0.0);
            }
            let last = i + 1 == n;
            m.val = match k.val {
                _ if last => self.validate_if_due(&mut m.time_s)?,
                Some(report) => {
                    let line = EvalLine {
                        step: m.step,
                        report,
                    };
                    append_eval(&mut self.evals, "eval.jsonl", &line)?;
                    Some(line.report)
                }
                None => None,
            };
            m.judge_noise = k.noise.map(|c| self.count_noise(c));
            if last {
                self.end_phase_early(m.zero_spread_share, &mut m.time_s)?;
            } else {
                let phases = &self.config.phases;
                self.state.phase.note_flat(phases, m.zero_spread_share);
            }
            self.write_step(&m, &lines, last, on_step)?;
        }
        Ok(())
    }

    /// Scores the policy on the held-out test split (when the config names one) into
    /// `test.jsonl`, once per step count: the start and the end of the run.
    fn test_split(&mut self, step: u64) -> Result<()> {
        let Some(mut test) = self.data.test.clone() else {
            return Ok(());
        };
        if self.config.eval.test_size > 0 {
            test.examples.truncate(self.config.eval.test_size);
        }
        let path = self.run_dir.join("test.jsonl");
        let done = runfile::read_jsonl_if_exists::<EvalLine>(&path)?
            .iter()
            .any(|e| e.step == step);
        if done {
            return Ok(());
        }
        let seed = self.config.run.seed ^ 0x7e57_5eed;
        let report = self.evaluate_on(&test, self.config.eval.samples, seed)?;
        append_eval(&mut self.tests, "test.jsonl", &EvalLine { step, report })
    }

    /// One GRPO step on a fresh rollout batch (also the lookahead's probe step).
    pub(crate) fn grpo_step(
        &mut self,
        target: &Target,
        only_class: Option<usize>,
        time: &mut Timing,
    ) -> Result<Stepped> {
        let lrs = self.step_lrs();
        let want = self.config.grpo.prompts_per_step;
        let mut rollout = self.rollout(want, only_class, time)?;
        let mut adv = self.advantages(target, &rollout.rewards);
        let (trained, resample) = match self.config.grpo.resample_flat {
            None => (adv.advantages.clone(), None),
            Some(r) => {
                // DAPO's dynamic sampling: more prompts for the groups without spread (a
                // group's spread does not depend on the others, so each round adds to it)
                let mut rounds = 1;
                loop {
                    let spread = adv.zero_spread.iter().filter(|z| !**z).count();
                    if spread >= want || rounds >= r.max_rounds {
                        break;
                    }
                    let more = self.rollout(want - spread, only_class, time)?;
                    rollout.append(more);
                    adv = self.advantages(target, &rollout.rewards);
                    rounds += 1;
                }
                // the update: `want` groups, those with spread first, in sampling order
                let mut keep: Vec<usize> = (0..rollout.rewards.len()).collect();
                keep.sort_by_key(|&i| adv.zero_spread[i]);
                keep.truncate(want);
                keep.sort_unstable();
                let kept: Vec<_> = keep.iter().map(|&i| rollout.rewards[i].clone()).collect();
                let trained = self.advantages(target, &kept);
                let mut advantages: Vec<Vec<Option<f64>>> = rollout
                    .rewards
                    .iter()
                    .map(|g| vec![None; g.len()])
                    .collect();
                for (&i, a) in keep.iter().zip(trained.advantages.iter()) {
                    advantages[i].clone_from(a);
                }
                let stats = Resampled {
                    rounds,
                    sampled_groups: rollout.rewards.len(),
                    trained_groups: keep.len(),
                    trained_zero_spread_share: zero_spread_share(&trained),
                };
                (advantages, Some(stats))
            }
        };
        let rows = rows(&rollout, &trained);
        let (t, optimizer) = (Instant::now(), time.optimizer);
        let update = self.update(&rows, &lrs, time)?;
        // the optimizer's steps are timed apart, so `train` is the forward and backward passes
        time.train += t.elapsed().as_secs_f64() - (time.optimizer - optimizer);
        Ok(Stepped {
            lr: lrs[0],
            rollout,
            adv,
            trained,
            update,
            resample,
        })
    }

    /// The advantages of `target` on a rollout's rewards, as `[grpo]` scales them.
    fn advantages(
        &self,
        target: &Target,
        rewards: &[Vec<Option<RewardVector>>],
    ) -> schedule::BatchAdvantages {
        let g = &self.config.grpo;
        target.scaled_advantages(rewards, self.data.classes.len(), g.adv_eps, g.scale_rewards)
    }

    /// Samples `n` prompts and generates `G` completions each, or replays them from
    /// [`Trainer::probe_samples`] when this stream state was sampled there already.
    fn sample(
        &mut self,
        n: usize,
        time: &mut Timing,
    ) -> Result<(Vec<usize>, Vec<Vec<Completion>>)> {
        if let Some(s) = self.probe_samples.as_ref().and_then(|all| {
            all.iter()
                .find(|s| s.rng_before == self.rng && s.prompts.len() == n)
        }) {
            self.rng = s.rng_after.clone();
            return Ok((s.prompts.clone(), s.completions.clone()));
        }
        let rng_before = self.probe_samples.is_some().then(|| self.rng.clone());
        let prompts: Vec<usize> = (0..n)
            .map(|_| self.rng.gen_range(0..self.data.train.len()))
            .collect();
        let examples: Vec<&Example> = prompts
            .iter()
            .map(|&i| &self.data.train.examples[i])
            .collect();
        let t = Instant::now();
        let completions =
            self.policy
                .generate(&examples, self.config.grpo.group_size, &mut self.rng)?;
        let prefill = self.policy.prefill_secs();
        time.prefix += prefill;
        time.generate += t.elapsed().as_secs_f64() - prefill;
        if let (Some(all), Some(rng_before)) = (&mut self.probe_samples, rng_before) {
            all.push(ProbeSample {
                rng_before,
                prompts: prompts.clone(),
                completions: completions.clone(),
                rng_after: self.rng.clone(),
            });
        }
        Ok((prompts, completions))
    }

    /// Samples `n` prompts, generates `G` completions each, grades them.
    pub(crate) fn rollout(
        &mut self,
        n: usize,
        only_class: Option<usize>,
        time: &mut Timing,
    ) -> Result<Rollout> {
        let (prompts, completions) = self.sample(n, time)?;
        let g = &self.config.grpo;
        let t = Instant::now();
        let items: Vec<ToGrade<'_>> = prompts
            .iter()
            .zip(&completions)
            .flat_map(|(&i, group)| group.iter().map(move |c| (i, c)))
            .map(|(i, c)| ToGrade {
                example: &self.data.train.examples[i],
                class_of: &self.data.train_classes[i],
                response: &c.text,
            })
            .collect();
        let k = self.data.classes.len();
        let share = self.config.objective.subsample.map(|s| s.share(k));
        let sample = share.map(|s| sample_criteria(&items, s, &mut self.subsample_rng));
        let criteria = match &sample {
            Some(sample) => Criteria::Sample(sample),
            None => Criteria::Class(only_class),
        };
        let graded = grade(
            &self.rt,
            &*self.judge,
            &items,
            criteria,
            k,
            self.config.judge.retries,
            self.noise.as_ref(),
        )?;
        time.judge += t.elapsed().as_secs_f64();
        let rewards = graded
            .rewards
            .chunks(g.group_size)
            .map(<[_]>::to_vec)
            .collect();
        let verdicts = graded
            .verdicts
            .chunks(g.group_size)
            .map(<[_]>::to_vec)
            .collect();
        Ok(Rollout {
            prompts,
            completions,
            rewards,
            verdicts,
            failed_verdicts: graded.failed_verdicts,
            retried_verdicts: graded.retried_verdicts,
        })
    }

    /// `ppo_epochs` AdamW steps on the rows, each over the whole batch (micro-batches
    /// accumulate gradients). A step whose loss or gradient is NaN/inf is skipped and counted.
    fn update(&mut self, rows: &[Row], lrs: &[f64], time: &mut Timing) -> Result<UpdateStats> {
        let mut s = UpdateStats {
            rows: rows.len(),
            tokens: rows.iter().map(|r| r.tokens.len()).sum(),
            ..Default::default()
        };
        if rows.is_empty() {
            self.state.optimizer_steps += self.config.grpo.ppo_epochs as u64;
            return Ok(s); // every group had zero spread or was excluded: no signal
        }
        let chunks = self.micro_batches(rows)?;
        let reference = self.reference_log_probs(&chunks)?;
        let mut old: Vec<Option<Tensor>> = vec![None; chunks.len()];
        let (mut loss_sum, mut kl, mut ent, mut clipped, mut toks, mut norms) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let mut sampler_gap = 0.0;
        for &lr in lrs {
            self.state.optimizer_steps += 1;
            let Some((mut grads, d)) = self.batch_gradient(&chunks, &mut old, &reference)? else {
                s.nonfinite_skips += 1;
                continue;
            };
            sampler_gap += d.sampler_gap;
            let norm = global_norm(&grads)?;
            if !norm.is_finite() {
                s.nonfinite_skips += 1;
                continue;
            }
            clip_grads(&mut grads, norm, self.config.optim.grad_clip)?;
            let t = Instant::now();
            self.optimizer.step(&self.vars, &grads, lr)?;
            time.optimizer += t.elapsed().as_secs_f64();
            s.applied += 1;
            (loss_sum, kl, ent, clipped, toks, norms) = (
                loss_sum + d.loss,
                kl + d.kl,
                ent + d.entropy,
                clipped + d.clipped,
                toks + d.tokens,
                norms + norm,
            );
        }
        if s.applied > 0 {
            let n = s.applied as f64;
            s.loss = Some(loss_sum / n);
            s.kl = self.reference.is_some().then(|| kl / toks);
            s.entropy = Some(ent / toks);
            s.clip_frac = Some(clipped / toks);
            s.grad_norm = Some(norms / n);
            s.sampler_gap = Some(sampler_gap / s.tokens.max(1) as f64);
        }
        Ok(s)
    }

    /// Gradient of the GRPO loss over all rows (the micro-batches `chunks`, accumulated), or
    /// `None` when the loss is not finite. `old[i]` holds micro-batch `i`'s log-probs from the
    /// first epoch.
    fn batch_gradient(
        &self,
        chunks: &[&[Row]],
        old: &mut [Option<Tensor>],
        reference: &[Option<Tensor>],
    ) -> Result<Option<(Vec<Tensor>, Diag)>> {
        let g = &self.config.grpo;
        let rows = chunks.iter().flat_map(|c| c.iter());
        let total_tokens = rows.map(|r| r.tokens.len()).sum::<usize>().max(1) as f64;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let mut d = Diag::default();
        // No weight changes until this returns: bf16 matmuls pack each weight once.
        #[cfg(feature = "transformer")]
        let _packs = policy::bf16::cache_weight_packs();
        // The linear layers sum their weight gradients in place across micro-batches.
        #[cfg(feature = "transformer")]
        let sink = policy::grad_sink::install_grad_sink();
        for (i, chunk) in chunks.iter().enumerate() {
            let examples: Vec<&Example> = chunk
                .iter()
                .map(|r| &self.data.train.examples[r.example])
                .collect();
            let tokens: Vec<&[u32]> = chunk.iter().map(|r| r.tokens.as_slice()).collect();
            let lp = self.policy.log_probs(&examples, &tokens)?;
            let sampler = sampler_log_probs(chunk, &lp.log_probs)?;
            let old_lp = match &old[i] {
                Some(o) => o.clone(),
                None => {
                    let o = lp.log_probs.detach();
                    d.sampler_gap += scalar(&((&o - &sampler)?.abs()? * &lp.mask)?.sum_all()?)?;
                    old[i] = Some(o.clone());
                    o
                }
            };
            let is_weight = match g.truncated_is_cap {
                Some(cap) => Some((&old_lp - &sampler)?.exp()?.clamp(0.0, cap)?),
                None => None,
            };
            let adv: Vec<f32> = chunk.iter().map(|r| r.advantage as f32).collect();
            let adv = Tensor::from_vec(adv, chunk.len(), &self.policy.device())?;
            let l = grpo_loss(
                &lp,
                &old_lp,
                reference[i].as_ref(),
                is_weight.as_ref(),
                &adv,
                g,
                total_tokens,
            )?;
            let loss = scalar(&l.loss)?;
            if !loss.is_finite() {
                return Ok(None);
            }
            let mut store = l.loss.backward()?;
            d.loss += loss;
            d.kl += l.kl_sum;
            d.entropy += l.entropy_sum;
            d.clipped += l.clipped_tokens;
            d.tokens += l.tokens;
            // The micro-batch's activations go before the sums are made.
            drop((l, lp));
            for (acc, (_, var)) in grads.iter_mut().zip(&self.vars) {
                // Detached: a gradient can reference the forward graph through its op, which
                // would keep every activation of the micro-batch alive until the optimizer step.
                add_grad(acc, store.remove(var.as_tensor()).map(|g| g.detach()))?;
            }
        }
        #[cfg(feature = "transformer")]
        for (acc, (_, var)) in grads.iter_mut().zip(&self.vars) {
            add_grad(acc, sink.take(var.as_tensor()))?;
        }
        // A var the loss does not reach gets a zero gradient.
        let grads = grads
            .into_iter()
            .zip(&self.vars)
            .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        Ok(Some((grads, d)))
    }

    /// The policy gradient of `target`'s GRPO loss on a rollout (gradient selector).
    pub(crate) fn policy_gradient(
        &self,
        rollout: &Rollout,
        target: &Target,
    ) -> Result<Option<Vec<Tensor>>> {
        let adv = self.advantages(target, &rollout.rewards);
        let rows = rows(rollout, &adv.advantages);
        if rows.is_empty() {
            return Ok(None);
        }
        let chunks = self.micro_batches(&rows)?;
        let n = chunks.len();
        let (mut old, reference) = (vec![None; n], vec![None; n]);
        Ok(self
            .batch_gradient(&chunks, &mut old, &reference)?
            .map(|(g, _)| g))
    }

    /// Log-probs of the rows under the frozen reference, per micro-batch (`None` without KL).
    fn reference_log_probs(&mut self, chunks: &[&[Row]]) -> Result<Vec<Option<Tensor>>> {
        let Some(reference) = &self.reference else {
            return Ok(vec![None; chunks.len()]);
        };
        let key: RowsKey = chunks
            .iter()
            .map(|c| c.iter().map(|r| (r.example, r.tokens.clone())).collect())
            .collect();
        if let Some((k, lp)) = &self.reference_memo {
            if *k == key {
                return Ok(lp.clone());
            }
        }
        let current = ParamSnapshot::take(&self.vars)?;
        reference.restore(&self.vars)?;
        let out = chunks
            .iter()
            .map(|chunk| {
                let examples: Vec<&Example> = chunk
                    .iter()
                    .map(|r| &self.data.train.examples[r.example])
                    .collect();
                let tokens: Vec<&[u32]> = chunk.iter().map(|r| r.tokens.as_slice()).collect();
                Ok(Some(
                    self.policy
                        .log_probs(&examples, &tokens)?
                        .log_probs
                        .detach(),
                ))
            })
            .collect::<Result<Vec<_>>>();
        current.restore(&self.vars)?;
        let out = out?;
        self.reference_memo = Some((key, out.clone()));
        Ok(out)
    }

    /// Full validation (`[eval]`): overall and per-class scores with bootstrap std.
    pub fn validate(&mut self) -> Result<EvalReport> {
        Ok(self.validate_scored()?.report)
    }

    /// [`Trainer::validate`], with the responses it sampled, their rewards and verdicts.
    fn validate_scored(&mut self) -> Result<Scored> {
        let e = self.config.eval.clone();
        let n = if e.size == 0 {
            self.data.val.len()
        } else {
            e.size.min(self.data.val.len())
        };
        let seed = self.config.run.seed ^ 0x5eed_e7a1;
        self.evaluate_split(None, n, e.samples, seed, e.bootstrap, false)
    }

    /// The `completions.jsonl` lines of a validation after `step` steps: the first response
    /// on each of the first `log.val_completions` prompts.
    fn val_lines(&self, step: u64, scored: &Scored) -> Vec<CompletionLine> {
        let n = self.config.log.val_completions.min(scored.texts.len());
        let active = self.active_class_name();
        (0..n)
            .filter_map(|i| {
                let text = scored.texts[i].first()?;
                let at = completions::At {
                    step,
                    split: Split::Val,
                    phase: self.state.phase.index,
                    active_class: active.as_deref(),
                    group: i,
                    sample: 0,
                };
                let graded = completions::Graded {
                    example: &self.data.val.examples[i],
                    completion: text,
                    rewards: scored.rewards[i][0].as_ref(),
                    verdicts: &scored.verdicts[i][0],
                    advantage: None,
                };
                Some(completions::line(at, graded, &self.data.classes.names))
            })
            .collect()
    }

    /// The `completions.jsonl` lines of the step just made: every response of its rollout's
    /// first `log.completions_per_step` groups.
    fn train_lines(&self, stepped: &Stepped) -> Vec<CompletionLine> {
        let r = &stepped.rollout;
        let n = self.config.log.completions_per_step.min(r.prompts.len());
        let active = self.active_class_name();
        let mut out = Vec::new();
        for g in 0..n {
            let example = &self.data.train.examples[r.prompts[g]];
            for (s, c) in r.completions[g].iter().enumerate() {
                let at = completions::At {
                    step: self.state.step,
                    split: Split::Train,
                    phase: self.state.phase.index,
                    active_class: active.as_deref(),
                    group: g,
                    sample: s,
                };
                let graded = completions::Graded {
                    example,
                    completion: &c.text,
                    rewards: r.rewards[g][s].as_ref(),
                    verdicts: &r.verdicts[g][s],
                    advantage: stepped.trained[g][s],
                };
                out.push(completions::line(at, graded, &self.data.classes.names));
            }
        }
        out
    }

    /// Appends lines to `completions.jsonl`.
    fn log_completions(&mut self, lines: &[CompletionLine]) -> Result<()> {
        for l in lines {
            append_checked(&mut self.completions, "completions.jsonl", l)?;
        }
        Ok(())
    }

    /// The selectors' fixed batch: examples, and responses per example
    /// ([`schedule::PhaseConfig::select_batch`]).
    pub(crate) fn select_batch(&self) -> (usize, usize) {
        let g = &self.config.grpo;
        let val = self.data.val.len();
        self.config
            .phases
            .select_batch(val, g.prompts_per_step, g.group_size)
    }

    /// The selectors' fixed validation batch (mean scores, per example for paired selection,
    /// per response for the spread filter).
    pub(crate) fn select_eval(&mut self, time: &mut Timing) -> Result<BatchScores> {
        let t = Instant::now();
        let (n, samples) = self.select_batch();
        let seed = self.config.run.seed ^ 0x5e1e_c7ed;
        let r = self.evaluate_split(None, n, samples, seed, 0, true);
        time.eval += t.elapsed().as_secs_f64();
        let Scored {
            report, rewards, ..
        } = r?;
        let finite = |x: f64| x.is_finite().then_some(x);
        let classes = report.class_scores(&self.data.classes.names);
        let measured = Measured {
            step: self.state.step,
            overall: finite(report.overall.score),
            classes: classes.into_iter().map(finite).collect(),
        };
        Ok(BatchScores::new(measured, rewards))
    }

    /// Scores the first `n` examples of `split` (validation when `None`), and each example's
    /// response rewards. `selection`: the selectors' measurement, with the run's judge
    /// noise and `phases.paired`'s sampling (validation and test are clean and unpaired).
    fn evaluate_split(
        &mut self,
        split: Option<&Dataset>,
        n: usize,
        samples: usize,
        seed: u64,
        resamples: usize,
        selection: bool,
    ) -> Result<Scored> {
        let assigned;
        let (examples, class_of) = match split {
            None => (&self.data.val.examples, &self.data.val_classes),
            Some(data) => {
                assigned = self.data.classes.assign(data)?;
                (&data.examples, &assigned)
            }
        };
        let set = EvalSet {
            examples: examples.iter().take(n).collect(),
            class_of: class_of.iter().take(n).map(Vec::as_slice).collect(),
            class_names: &self.data.classes.names,
        };
        let evaluator = Evaluator {
            judge: &*self.judge,
            rt: &self.rt,
            retries: self.config.judge.retries,
            samples,
            seed,
            resamples,
            noise: self.noise.as_ref().filter(|_| selection),
            paired: selection && self.config.phases.paired,
        };
        evaluator.evaluate_examples(&mut *self.policy, &set)
    }

    /// The step's judge-noise tally (taken) and the run's so far; `None` without noise.
    fn noise_stats(&mut self) -> Option<NoiseStats> {
        let step = self.noise.as_ref()?.take();
        Some(self.count_noise(step))
    }

    /// Adds a step's judge-noise tally to the run's.
    fn count_noise(&mut self, step: Confusion) -> NoiseStats {
        self.noise_total = self.noise_total.plus(step);
        NoiseStats {
            step,
            macro_f1: step.macro_f1(),
            cumulative_macro_f1: self.noise_total.macro_f1(),
        }
    }

    /// Macro F1 of every noisy training verdict of the run against the clean judge, and the
    /// number of verdicts; `None` without `[judge.noise]`.
    pub fn judge_noise_f1(&self) -> Option<(Option<f64>, f64)> {
        self.noise.as_ref()?;
        Some((self.noise_total.macro_f1(), self.noise_total.verdicts()))
    }

    /// Writes `checkpoints/step-N` (weights, optimizer moments, run state) atomically.
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        self.state.optimizer_t = self.optimizer.t;
        self.state.rng = checkpoint::RngState::of(&self.rng);
        self.state.subsample_rng = self
            .config
            .objective
            .subsample
            .map(|_| checkpoint::RngState::of(&self.subsample_rng));
        self.state.schedule_lines = self.schedule.lines;
        self.state.eval_lines = self.evals.lines;
        self.state.completions_lines = self.completions.lines;
        let dir = checkpoint::write(&self.run_dir, &*self.policy, &self.optimizer, &self.state)?;
        checkpoint::prune(&self.run_dir, self.config.run.keep_checkpoints)?;
        Ok(dir)
    }

    fn log_decision(&mut self, d: &Decision) -> Result<()> {
        let record = d.named(&self.data.classes.names);
        append_checked(&mut self.schedule, "schedule.jsonl", &record)?;
        self.state.schedule_lines = self.schedule.lines;
        Ok(())
    }

    /// The run has taken `run.steps` steps, or spent its `run.verdict_budget`.
    pub fn finished(&self) -> bool {
        let budget = self.config.run.verdict_budget;
        self.state.step >= self.config.run.steps || (budget > 0 && self.spent >= budget)
    }

    /// Judge verdicts spent on training and selection so far.
    pub fn verdicts_spent(&self) -> u64 {
        self.spent
    }

    pub(crate) fn alternating(&self) -> bool {
        self.config.objective.kind == ObjectiveKind::Alternating
    }

    /// The phase guard is on (`phases.guard_drop`, alternating runs).
    fn guarding(&self) -> bool {
        self.alternating() && self.config.phases.guard_drop.is_some()
    }

    fn active_class_name(&self) -> Option<String> {
        let k = self.state.phase.active.filter(|_| self.alternating())?;
        Some(self.data.classes.names[k].clone())
    }

    /// The reward the next step optimizes.
    fn target(&self) -> Result<Target> {
        let o = &self.config.objective;
        Ok(match o.kind {
            ObjectiveKind::Alternating => {
                self.phase_target(self.state.phase.active.context("no active class")?)?
            }
            ObjectiveKind::Gdpo => Target::Decoupled,
            ObjectiveKind::Scalarized => self.scalarized()?,
        })
    }

    /// The reward of a phase on `class` (and of its lookahead probe): the class's, or with
    /// `objective.anchor < 1` its mix with the scalarized reward.
    pub(crate) fn phase_target(&self, class: usize) -> Result<Target> {
        let anchor = self.config.objective.anchor;
        if anchor >= 1.0 {
            return Ok(Target::Class(class));
        }
        Ok(Target::anchored(class, anchor, self.scalarized()?))
    }

    /// The `objective.weights` target.
    fn scalarized(&self) -> Result<Target> {
        scalarized_target(&self.config, &self.data.classes.names)
    }

    /// The class whose criteria alone are graded during training, when that switch is on.
    fn graded_class(&self) -> Option<usize> {
        (self.alternating() && self.config.objective.grade_active_class_only)
            .then_some(self.state.phase.active)
            .flatten()
    }

    /// The learning rate of each optimizer step of the next GRPO step (one per PPO epoch):
    /// computed once per step. The schedule spans `run.steps`, or with `run.verdict_budget`
    /// the optimizer steps the budget buys at the run's spend per step so far, if fewer.
    fn step_lrs(&self) -> Vec<f64> {
        let epochs = self.config.grpo.ppo_epochs as u64;
        let (t, mut total) = (self.state.optimizer_steps, self.config.run.steps * epochs);
        let budget = self.config.run.verdict_budget;
        if budget > 0 && self.spent > 0 && t > 0 {
            // the schedule spans the budget: the optimizer steps it buys at the spend so far
            let projected = (t as f64 * budget as f64 / self.spent as f64).ceil() as u64;
            total = total.min(projected.max(t + epochs));
        }
        (0..epochs)
            .map(|e| self.config.optim.lr_at(t + e, total))
            .collect()
    }

    /// The rows of an update as its micro-batches, in order: `grpo.micro_batch` rows each, or
    /// with 0 as many as fit [`crate::micro::ACTIVATION_BUDGET`] by the policy's estimate.
    fn micro_batches<'a>(&self, rows: &'a [Row]) -> Result<Vec<&'a [Row]>> {
        if let m @ 1.. = self.config.grpo.micro_batch {
            return Ok(rows.chunks(m).collect());
        }
        let lens = rows
            .iter()
            .map(|r| {
                let prompt = &self.data.train.examples[r.example];
                Ok((self.policy.prompt_tokens(prompt)?, r.tokens.len()))
            })
            .collect::<Result<Vec<_>>>()?;
        // distinct prompts: runs of rows of one example (a group's rows are consecutive)
        let prompts = |r: std::ops::Range<usize>| {
            1 + rows[r]
                .windows(2)
                .filter(|w| w[0].example != w[1].example)
                .count()
        };
        let cost =
            |r: std::ops::Range<usize>, p, c| self.policy.train_bytes(r.len(), prompts(r), p, c);
        let ranges = crate::micro::budget_ranges(&lens, crate::micro::ACTIVATION_BUDGET, cost);
        Ok(ranges.into_iter().map(|r| &rows[r]).collect())
    }
}

#[derive(Default)]
struct Diag {
    loss: f64,
    kl: f64,
    entropy: f64,
    clipped: f64,
    tokens: f64,
    /// Σ |log p_sampler - log p_old| over the tokens whose old log-probs this pass computed.
    sampler_gap: f64,
}

/// The sampler's log-probs of `rows` as a [B, T] tensor shaped like `like` (0 on padding).
fn sampler_log_probs(rows: &[Row], like: &Tensor) -> Result<Tensor> {
    let (b, t) = like.dims2()?;
    let mut flat = vec![0f32; b * t];
    for (dst, r) in flat.chunks_mut(t.max(1)).zip(rows) {
        let n = r.sampler_log_probs.len().min(t);
        dst[..n].copy_from_slice(&r.sampler_log_probs[..n]);
    }
    Ok(Tensor::from_vec(flat, (b, t), like.device())?.to_dtype(like.dtype())?)
}

/// The completions with a defined advantage (zero-spread groups and excluded samples drop out).
fn rows(rollout: &Rollout, advantages: &[Vec<Option<f64>>]) -> Vec<Row> {
    let mut out = Vec::new();
    for ((&ex, group), adv) in rollout
        .prompts
        .iter()
        .zip(&rollout.completions)
        .zip(advantages)
    {
        for (c, a) in group.iter().zip(adv) {
            if let Some(a) = a {
                out.push(Row {
                    example: ex,
                    tokens: c.tokens.clone(),
                    sampler_log_probs: c.log_probs.clone(),
                    advantage: *a,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(score: f64, n: usize) -> EvalLine {
        let summary = |score| rubric::Summary { score, std: 0.0, n };
        EvalLine {
            step: 3,
            report: EvalReport {
                overall: summary(score),
                classes: [("accuracy".to_string(), summary(0.5))].into(),
                responses: n,
                excluded: 8 - n,
                failed_verdicts: 8 - n,
            },
        }
    }

    #[test]
    fn non_finite_figures_fail_instead_of_becoming_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.jsonl");
        let mut file = Jsonl::open(&path).unwrap();
        append_eval(&mut file, "eval.jsonl", &line(0.5, 4)).unwrap();
        let err = append_eval(&mut file, "eval.jsonl", &line(f64::INFINITY, 4)).unwrap_err();
        assert!(
            err.to_string()
                .contains("field `overall.score` is not a finite number"),
            "{err}"
        );
        let err = append_eval(&mut file, "eval.jsonl", &line(f64::NAN, 0)).unwrap_err();
        assert!(
            err.to_string()
                .contains("no response scored at step 3 (8 excluded"),
            "{err}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "nothing unreadable was written");
        let back: EvalLine = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(back, line(0.5, 4));
    }
}
