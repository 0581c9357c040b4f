//! ARL-RR's phase schedule run inside the service, driven by what the trainer reports.
//!
//! In `arlrr train` the trainer owns the policy and measures validation itself; a remote
//! engine owns the policy here, so the schedule advances on reports: training steps (or
//! graded completions, `completions_per_step`), validation scores, and, for lookahead, the
//! score of each probe. The phase boundary, the decision rules and the decision record are
//! the `schedule` crate's ([`PhaseState::boundary`], [`PhaseState::plan`],
//! [`PhaseState::commit`], [`DecisionRecord`]), the same the trainer runs, so a service run's
//! `schedule.jsonl` reads like a trainer run's.
//!
//! Selectors in service mode:
//! - `fixed`, `round_robin`, `shuffled`: need only step counts (`shuffled`'s orders are
//!   drawn from seed 0, the service having no run seed).
//! - `deficit`, `ucb`: at a phase end they wait for a validation report made at or after that
//!   step (the active class stays until it arrives); `ucb` scores a phase by the change of the
//!   overall validation score across it.
//! - `lookahead`: at a phase end the service names the candidate classes (`probe`); the
//!   trainer snapshots its policy and optimizer, trains `probe_steps` steps on each candidate
//!   (the service's active class is the candidate being probed), reports the overall
//!   validation score with `probe_class`, restores, and after the last candidate the service
//!   commits the best one.
//! - `gradient` is refused: it needs per-class policy gradients, which only the trainer has.
//!
//! The state is written to `schedule_state.json` atomically (temporary file, fsync, rename)
//! after every change, so a killed service resumes exactly; decisions are appended to
//! `schedule.jsonl`.

use schedule::{
    probe_candidates, Candidate, Choices, DecisionRecord, Measured, ObjectiveKind, PhaseConfig,
    PhaseState, Plan, SelectorKind,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of `schedule_state.json`; another version is refused, not misread.
const STATE_FORMAT: u32 = 1;
pub const STATE_FILE: &str = "schedule_state.json";
pub const DECISIONS_FILE: &str = "schedule.jsonl";
/// Largest step the schedule counts to (2^53, exact in every JSON reader); a phase end
/// `step + --phase-steps` then never overflows.
pub const MAX_STEP: u64 = 1 << 53;

/// How the schedule is run.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub objective: ObjectiveKind,
    /// `length` (steps per phase), `selector`, `fixed_class`, `top_m`, `ucb_c` apply;
    /// `probe_steps` is the trainer's business and only reported back in the status.
    pub phases: PhaseConfig,
    /// Completions graded per training step; when non-zero, every that many completions
    /// graded through the reward endpoints count as one step (for engines that cannot report
    /// steps, such as OpenRLHF: `rollout_batch_size × n_samples_per_prompt`). 0 = steps
    /// come only from reports.
    pub completions_per_step: u64,
}

/// A lookahead search in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Validation before probing (gains are measured against its overall score).
    pub base: Option<Measured>,
    /// Class indices to probe, in order.
    pub candidates: Vec<usize>,
    /// Overall validation score after each candidate's probe; `None` = not reported yet.
    pub results: Vec<Option<f64>>,
}

/// Everything the schedule needs to resume (`schedule_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub format: u32,
    pub objective: ObjectiveKind,
    pub selector: SelectorKind,
    pub classes: Vec<String>,
    /// Latest training step reported (or counted from completions).
    pub step: u64,
    /// The step the active phase began at, as files written before `phase.started_at` held
    /// it carry it: read into `phase.started_at` on load, never written.
    #[serde(default, skip_serializing)]
    phase_start_step: Option<u64>,
    /// Completions graded since the last counted step (`completions_per_step`).
    pub pending_completions: u64,
    pub phase: PhaseState,
    /// Latest validation report.
    pub validation: Option<Measured>,
    pub probe: Option<Probe>,
    pub last_decision: Option<DecisionRecord>,
}

/// A report from the trainer (`POST /v1/schedule/report`). `C` is a validation completion
/// the service grades itself; the API turns those into `validation` before the schedule sees
/// the report, so the schedule's own reports carry none (`C = ()`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "C: Deserialize<'de>"))]
pub struct Report<C = ()> {
    /// The trainer's global step (absolute).
    #[serde(default)]
    pub step: Option<u64>,
    /// Steps done since the last report (when the trainer does not count globally).
    #[serde(default)]
    pub steps: Option<u64>,
    /// Validation scores measured now.
    #[serde(default)]
    pub validation: Option<ValidationScores>,
    /// Lookahead: the class whose probe `validation` measures.
    #[serde(default)]
    pub probe_class: Option<String>,
    /// Validation completions for the service to grade and score (instead of `validation`).
    #[serde(default)]
    pub validation_completions: Option<Vec<C>>,
}

/// Validation scores as reported: overall and per class name (missing classes unknown).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationScores {
    #[serde(default)]
    pub overall: Option<f64>,
    #[serde(default)]
    pub classes: BTreeMap<String, f64>,
}

/// What kind of fault a [`ReportError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFault {
    /// The report itself is wrong (400).
    Invalid,
    /// The report does not fit the schedule's state (409).
    Conflict,
    /// The state could not be saved (500); the schedule is unchanged. The message names the
    /// file, for the service log only.
    Io,
}

/// A report the schedule cannot take; `field` names the offending part of the request. The
/// schedule is left exactly as it was.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportError {
    pub field: String,
    pub message: String,
    pub fault: ReportFault,
}

impl ReportError {
    fn bad(field: &str, message: String) -> Self {
        ReportError {
            field: field.into(),
            message,
            fault: ReportFault::Invalid,
        }
    }
    fn conflict(field: &str, message: String) -> Self {
        ReportError {
            field: field.into(),
            message,
            fault: ReportFault::Conflict,
        }
    }
}

/// Where the schedule stands, as `GET /v1/schedule` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub objective: ObjectiveKind,
    pub selector: Option<SelectorKind>,
    pub classes: Vec<String>,
    pub step: u64,
    /// Phases begun so far (0 for the baselines, which have none).
    pub phase: u64,
    /// The class the scalar reward follows now (the probed class during a lookahead).
    pub active_class: Option<String>,
    pub phase_length: Option<u64>,
    pub phase_start_step: Option<u64>,
    /// Steps left before the phase ends and the selector decides.
    pub steps_left_in_phase: Option<u64>,
    /// `"validation"` when a phase has ended and the selector waits for a validation report;
    /// `"probe"` while a lookahead waits for probe results.
    pub waiting_for: Option<&'static str>,
    pub probe: Option<ProbeStatus>,
    pub last_decision: Option<DecisionRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    /// The candidate to probe now (the active class).
    pub current: String,
    /// Candidates not yet reported, in order.
    pub pending: Vec<String>,
    /// Reported overall validation score per probed candidate.
    pub results: BTreeMap<String, f64>,
    /// Probe steps per candidate the trainer should run (`--probe-steps`).
    pub probe_steps: u64,
}

/// The schedule and its state folder.
pub struct Scheduler {
    settings: ScheduleSettings,
    /// Classes with positive points in the data (the others give no signal, never chosen).
    trainable: Vec<usize>,
    /// Each class's share of the positive points (`deficit` weights).
    select_weights: Vec<f64>,
    state: ScheduleState,
    dir: PathBuf,
    /// `serve.lock` in `dir`, locked for the scheduler's life: one service per state folder.
    _lock: std::fs::File,
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("{what} {}: {e}", path.display())
}

/// The lock file that keeps a second service off a state folder.
pub const LOCK_FILE: &str = "serve.lock";

/// Locks `dir` for this process (an advisory `flock` on `serve.lock`, released by the OS when
/// the process ends, however it ends) and writes the process id into the file, so a second
/// service on the same folder is refused with the first one's pid instead of overwriting its
/// schedule.
fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(&path, "cannot open", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            anyhow::bail!(
                "{} is in use by another arlrr serve ({}); two services on one state folder \
                 would overwrite each other's schedule: stop that one, or give this one another \
                 --state-dir",
                dir.display(),
                if holder.is_empty() {
                    "its process id is not written yet".to_string()
                } else {
                    format!("process {holder}")
                }
            )
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&path, "cannot lock", e)),
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(&path, "cannot write", e))?;
    Ok(file)
}

/// A state read back from disk refers to classes, candidates and results by index: check
/// every index and length before use, so a hand-edited or damaged file is a clear error at
/// start, not a panic mid-request. `Err((field, what is wrong))`.
fn check_state(state: &ScheduleState) -> Result<(), (String, String)> {
    let n = state.classes.len();
    let index = |field: &str, k: usize| {
        if k < n {
            Ok(())
        } else {
            Err((
                field.to_string(),
                format!(
                    "is class {k}, but there are {n} classes (0 to {})",
                    n.max(1) - 1
                ),
            ))
        }
    };
    let measured = |field: &str, m: &Measured| {
        if m.classes.len() == n {
            Ok(())
        } else {
            Err((
                format!("{field}.classes"),
                format!("has {} entries for {n} classes", m.classes.len()),
            ))
        }
    };
    if let Some(k) = state.phase.active {
        index("phase.active", k)?;
    }
    if !state.phase.arms.is_empty() && state.phase.arms.len() != n {
        return Err((
            "phase.arms".into(),
            format!("has {} entries for {n} classes", state.phase.arms.len()),
        ));
    }
    if let Some(v) = &state.validation {
        measured("validation", v)?;
    }
    if let Some(p) = &state.probe {
        for (i, &k) in p.candidates.iter().enumerate() {
            index(&format!("probe.candidates[{i}]"), k)?;
        }
        if p.candidates.is_empty() || p.results.len() != p.candidates.len() {
            return Err((
                "probe.results".into(),
                format!(
                    "has {} entries for {} candidates (at least one)",
                    p.results.len(),
                    p.candidates.len()
                ),
            ));
        }
        if let Some(b) = &p.base {
            measured("probe.base", b)?;
        }
    }
    Ok(())
}

/// Refuses settings the service cannot run: for `alternating`, no trainable class, no phase
/// length, the trainer-only `gradient` selector, or `fixed` without a known class.
fn check_settings(
    settings: &ScheduleSettings,
    classes: &[String],
    trainable: &[usize],
) -> anyhow::Result<()> {
    if settings.objective == ObjectiveKind::Alternating {
        anyhow::ensure!(
            !trainable.is_empty(),
            "no meta-class has a positive-point criterion in the data"
        );
        anyhow::ensure!(
            settings.phases.length > 0,
            "--phase-steps must be at least 1"
        );
        match settings.phases.selector {
            SelectorKind::Gradient => anyhow::bail!(
                "selector `gradient` needs per-class policy gradients, which only the \
                 trainer has; in service mode use lookahead, deficit, ucb, round_robin, shuffled or fixed"
            ),
            SelectorKind::Fixed => {
                let name = settings.phases.fixed_class.as_deref().unwrap_or_default();
                anyhow::ensure!(
                    classes.iter().any(|c| c == name),
                    "selector `fixed` needs --fixed-class naming a meta-class (classes: {}); got `{name}`",
                    classes.join(", ")
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads the saved schedule at `path`, refusing one of another format, objective, selector or
/// class list, or one beyond the largest step or otherwise inconsistent.
fn read_state(
    path: &Path,
    settings: &ScheduleSettings,
    classes: &[String],
) -> anyhow::Result<ScheduleState> {
    let alternating = settings.objective == ObjectiveKind::Alternating;
    let text = std::fs::read(path).map_err(|e| io_error(path, "cannot read", e))?;
    let mut state: ScheduleState = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a schedule state: {e}", path.display()))?;
    if state.phase.active.is_some() && state.phase.started_at.is_none() {
        // a file from before `phase.started_at`: its phase began at `phase_start_step`
        state.phase.started_at = Some(state.phase_start_step.unwrap_or(0));
    }
    state.phase_start_step = None;
    let start = state.phase.started_at.unwrap_or(0);
    anyhow::ensure!(
        state.format == STATE_FORMAT,
        "{}: state format {}, this build reads {STATE_FORMAT}",
        path.display(),
        state.format
    );
    anyhow::ensure!(
        state.step <= MAX_STEP && start <= state.step,
        "{}: step {} (phase start {start}) is beyond {MAX_STEP} (2^53), the largest step \
         the schedule counts to; use another --state-dir (or remove that one)",
        path.display(),
        state.step,
    );
    anyhow::ensure!(
        state.objective == settings.objective
            && (!alternating || state.selector == settings.phases.selector)
            && state.classes == classes,
        "{} holds the schedule of objective {:?}, selector {:?}, classes [{}]; this \
         service runs objective {:?}, selector {:?}, classes [{}]. Use another \
         --state-dir (or remove that one) to start a new schedule",
        path.display(),
        state.objective,
        state.selector,
        state.classes.join(", "),
        settings.objective,
        settings.phases.selector,
        classes.join(", ")
    );
    check_state(&state).map_err(|(field, message)| {
        anyhow::anyhow!(
            "{}: `{field}` {message}; the file was edited or damaged: restore it, or use \
             another --state-dir (or remove that one) to start a new schedule",
            path.display()
        )
    })?;
    Ok(state)
}

/// A new schedule: step 0, no phase begun.
fn new_state(settings: &ScheduleSettings, classes: &[String]) -> ScheduleState {
    ScheduleState {
        format: STATE_FORMAT,
        objective: settings.objective,
        selector: settings.phases.selector,
        classes: classes.to_vec(),
        step: 0,
        phase_start_step: None,
        pending_completions: 0,
        phase: PhaseState::default(),
        validation: None,
        probe: None,
        last_decision: None,
    }
}

impl Scheduler {
    /// Resumes the schedule saved in `dir`, or starts one (deciding the first class at once
    /// for `alternating`). A saved schedule of another objective, selector or class list is
    /// refused: silently mixing two runs' schedules would corrupt both.
    pub fn open(
        dir: &Path,
        settings: ScheduleSettings,
        classes: &[String],
        trainable: Vec<usize>,
        select_weights: Vec<f64>,
    ) -> anyhow::Result<Scheduler> {
        check_settings(&settings, classes, &trainable)?;
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "cannot create", e))?;
        let lock = lock_state_dir(dir)?;
        let path = dir.join(STATE_FILE);
        let state = if path.exists() {
            read_state(&path, &settings, classes)?
        } else {
            new_state(&settings, classes)
        };
        let mut s = Scheduler {
            settings,
            trainable,
            select_weights,
            state,
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        let fresh = !path.exists();
        let decided = s.advance()?;
        if fresh || decided.is_some() {
            s.persist(decided.as_ref())?;
        }
        Ok(s)
    }

    pub fn state(&self) -> &ScheduleState {
        &self.state
    }

    pub fn classes(&self) -> &[String] {
        &self.state.classes
    }

    fn alternating(&self) -> bool {
        self.settings.objective == ObjectiveKind::Alternating
    }

    /// The class the scalar reward follows now: the probed candidate during a lookahead, the
    /// phase's class otherwise; `None` for the baselines.
    pub fn active_class(&self) -> Option<usize> {
        if !self.alternating() {
            return None;
        }
        if let Some(p) = &self.state.probe {
            if let Some(i) = p.results.iter().position(Option::is_none) {
                return Some(p.candidates[i]);
            }
        }
        self.state.phase.active
    }

    /// Whether the selector needs a validation report made at or after the phase end.
    fn needs_validation(&self) -> bool {
        match self.settings.phases.selector {
            SelectorKind::Deficit | SelectorKind::Ucb => true,
            SelectorKind::Lookahead => self.settings.phases.top_m > 0,
            _ => false,
        }
    }

    /// The validation report the next decision may use: for the first phase whatever was
    /// reported (possibly nothing), later only one made at or after the phase end.
    fn fresh_validation(&self) -> Option<&Measured> {
        let end = self.state.phase.end_step(&self.settings.phases);
        self.state
            .validation
            .as_ref()
            .filter(|v| end.is_none_or(|end| v.step >= end))
    }

    fn waiting_for(&self) -> Option<&'static str> {
        if !self.alternating() {
            return None;
        }
        if self.state.probe.is_some() {
            return Some("probe");
        }
        let first = self.state.phase.active.is_none();
        let phases = &self.settings.phases;
        (!first
            && self.state.phase.boundary(self.state.step, phases)
            && self.needs_validation()
            && self.fresh_validation().is_none())
        .then_some("validation")
    }

    pub fn status(&self) -> Status {
        let names = &self.state.classes;
        let alternating = self.alternating();
        let probe = self.state.probe.as_ref().and_then(|p| {
            let pending: Vec<String> = p
                .candidates
                .iter()
                .zip(&p.results)
                .filter(|(_, r)| r.is_none())
                .map(|(&k, _)| names[k].clone())
                .collect();
            Some(ProbeStatus {
                current: pending.first()?.clone(),
                pending,
                results: p
                    .candidates
                    .iter()
                    .zip(&p.results)
                    .filter_map(|(&k, r)| r.map(|r| (names[k].clone(), r)))
                    .collect(),
                probe_steps: self.settings.phases.probe_steps,
            })
        });
        Status {
            objective: self.settings.objective,
            selector: alternating.then_some(self.settings.phases.selector),
            classes: names.clone(),
            step: self.state.step,
            phase: self.state.phase.index,
            active_class: self.active_class().map(|k| names[k].clone()),
            phase_length: alternating.then_some(self.settings.phases.length),
            phase_start_step: alternating.then_some(self.state.phase.started_at.unwrap_or(0)),
            steps_left_in_phase: self
                .state
                .phase
                .end_step(&self.settings.phases)
                .filter(|_| alternating && self.state.probe.is_none())
                .map(|end| end.saturating_sub(self.state.step)),
            waiting_for: self.waiting_for(),
            probe,
            last_decision: self.state.last_decision.clone(),
        }
    }

    /// Takes a trainer report; returns the decision it triggered, if any. The state is saved
    /// before this returns; on any error the schedule is left exactly as it was.
    pub fn report(&mut self, report: Report) -> Result<Option<DecisionRecord>, ReportError> {
        let before = self.state.clone();
        let result = self.apply(report);
        if result.is_err() {
            self.state = before;
        }
        result
    }

    fn apply(&mut self, report: Report) -> Result<Option<DecisionRecord>, ReportError> {
        if report.step.is_some() && report.steps.is_some() {
            return Err(ReportError::bad(
                "steps",
                "give either `step` (absolute) or `steps` (increment), not both".into(),
            ));
        }
        let measured = match &report.validation {
            None => None,
            Some(v) => Some(self.measured(v)?),
        };
        if let Some(class) = &report.probe_class {
            self.take_probe_result(class, measured.as_ref())?;
        }
        if let Some(step) = report.step {
            if step > MAX_STEP {
                return Err(ReportError::bad(
                    "step",
                    format!("{step} is beyond {MAX_STEP} (2^53), the largest step the schedule counts to"),
                ));
            }
            // Steps are counted once, by number: a step the schedule has reached already (the
            // same step from another rank, a retried report, a late one, or a trainer resumed
            // from an earlier checkpoint redoing steps) changes nothing.
            self.state.step = self.state.step.max(step);
        }
        if let Some(n) = report.steps {
            self.state.step = self
                .state
                .step
                .checked_add(n)
                .filter(|&s| s <= MAX_STEP)
                .ok_or_else(|| {
                    ReportError::bad(
                        "steps",
                        format!(
                            "{n} steps after step {} go beyond step {MAX_STEP} (2^53), the largest \
                             the schedule counts to",
                            self.state.step
                        ),
                    )
                })?;
        }
        if let (Some(m), None) = (measured, &report.probe_class) {
            self.state.validation = Some(Measured {
                step: self.state.step,
                ..m
            });
        }
        let decision = self
            .advance()
            .map_err(|e| ReportError::conflict("(schedule)", e.to_string()))?;
        self.persist(decision.as_ref()).map_err(|e| ReportError {
            field: "(state)".into(),
            message: format!("{e:#}"),
            fault: ReportFault::Io,
        })?;
        Ok(decision)
    }

    /// Counts graded completions toward steps (`completions_per_step`); saves and may decide
    /// when a step completes. On an error the schedule is left as it was.
    pub fn count_completions(&mut self, n: u64) -> anyhow::Result<Option<DecisionRecord>> {
        let per_step = self.settings.completions_per_step;
        if per_step == 0 || n == 0 {
            return Ok(None);
        }
        let before = self.state.clone();
        let result = self.count(n, per_step);
        if result.is_err() {
            self.state = before;
        }
        result
    }

    fn count(&mut self, n: u64, per_step: u64) -> anyhow::Result<Option<DecisionRecord>> {
        let pending = self.state.pending_completions.saturating_add(n);
        self.state.pending_completions = pending % per_step;
        let steps = pending / per_step;
        if steps == 0 {
            // the count itself is durable before the reward goes out: a restart loses nothing
            self.save()?;
            return Ok(None);
        }
        self.state.step = self
            .state
            .step
            .checked_add(steps)
            .filter(|&s| s <= MAX_STEP)
            .ok_or_else(|| anyhow::anyhow!("step count beyond {MAX_STEP} (2^53)"))?;
        let decision = self.advance()?;
        self.persist(decision.as_ref())?;
        Ok(decision)
    }

    fn measured(&self, v: &ValidationScores) -> Result<Measured, ReportError> {
        let names = &self.state.classes;
        // validation scores are clipped means, as `arlrr eval` and the service compute them
        let score = |field: String, x: f64| {
            if (0.0..=1.0).contains(&x) {
                Ok(x)
            } else {
                Err(ReportError::bad(
                    &field,
                    format!("must be a score in [0, 1] (a clipped mean, as HealthBench reports), got {x}"),
                ))
            }
        };
        let overall = v
            .overall
            .map(|x| score("validation.overall".into(), x))
            .transpose()?;
        let mut classes = vec![None; names.len()];
        for (name, &x) in &v.classes {
            let field = format!("validation.classes.{name}");
            let k = names.iter().position(|n| n == name).ok_or_else(|| {
                ReportError::bad(
                    &field,
                    format!(
                        "`{name}` is not a meta-class (classes: {})",
                        names.join(", ")
                    ),
                )
            })?;
            classes[k] = Some(score(field, x)?);
        }
        Ok(Measured {
            step: self.state.step,
            overall,
            classes,
        })
    }

    fn take_probe_result(
        &mut self,
        class: &str,
        measured: Option<&Measured>,
    ) -> Result<(), ReportError> {
        let names = self.state.classes.clone();
        let Some(probe) = self.state.probe.as_mut() else {
            return Err(ReportError::conflict(
                "probe_class",
                "no lookahead probe is in progress (see GET /v1/schedule)".into(),
            ));
        };
        let Some(i) = probe.candidates.iter().position(|&k| names[k] == class) else {
            return Err(ReportError::conflict(
                "probe_class",
                format!(
                    "`{class}` is not a candidate of this probe (candidates: {})",
                    probe
                        .candidates
                        .iter()
                        .map(|&k| names[k].as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let Some(score) = measured.and_then(|m| m.overall) else {
            return Err(ReportError::bad(
                "validation.overall",
                "a probe report needs the overall validation score after the probe".into(),
            ));
        };
        probe.results[i] = Some(score);
        Ok(())
    }

    /// Decides the next class when the schedule allows it: the phase is over and the
    /// selector has what it needs (a fresh validation report, all probe results).
    fn advance(&mut self) -> anyhow::Result<Option<DecisionRecord>> {
        if !self.alternating() {
            return Ok(None);
        }
        if let Some(probe) = &self.state.probe {
            if probe.results.iter().any(Option::is_none) {
                return Ok(None);
            }
            let probe = self.state.probe.take().expect("checked above");
            let scores: Vec<f64> = probe.results.iter().flatten().copied().collect();
            let candidates = probe_candidates(
                &probe.candidates,
                &scores,
                probe.base.as_ref().and_then(|b| b.overall),
            );
            return self.commit(candidates, probe.base).map(Some);
        }
        if !self
            .state
            .phase
            .boundary(self.state.step, &self.settings.phases)
        {
            return Ok(None);
        }
        let first = self.state.phase.active.is_none();
        let base = self.fresh_validation().cloned();
        if !first && self.needs_validation() && base.is_none() {
            return Ok(None);
        }
        let at = Choices {
            names: &self.state.classes,
            trainable: &self.trainable,
            select_weights: &self.select_weights,
            // the service has no run seed: `shuffled` draws its orders from seed 0
            seed: 0,
        };
        match self
            .state
            .phase
            .plan(&self.settings.phases, at, base.as_ref())?
        {
            Plan::Decide(candidates) => self.commit(candidates, base).map(Some),
            Plan::Probe(candidates) => {
                let n = candidates.len();
                self.state.probe = Some(Probe {
                    base,
                    candidates,
                    results: vec![None; n],
                });
                Ok(None)
            }
            Plan::Gradients(_) => anyhow::bail!("selector `gradient` is refused at start"),
        }
    }

    /// Starts the phase of the best candidate and records the decision.
    fn commit(
        &mut self,
        candidates: Vec<Candidate>,
        base: Option<Measured>,
    ) -> anyhow::Result<DecisionRecord> {
        let decision = self.state.phase.commit(
            self.state.step,
            self.settings.phases.selector,
            self.state.classes.len(),
            candidates,
            base.as_ref(),
        )?;
        let record = decision.named(&self.state.classes);
        self.state.last_decision = Some(record.clone());
        Ok(record)
    }

    /// Saves the state and the decision that led to it, if any: the decision line is appended
    /// to `schedule.jsonl`, then the state is written; when the state cannot be written the
    /// line is taken back, so the log never holds a decision the saved state does not.
    fn persist(&self, decision: Option<&DecisionRecord>) -> anyhow::Result<()> {
        let Some(decision) = decision else {
            return self.save();
        };
        rubric::runfile::Jsonl::open(&self.dir.join(DECISIONS_FILE))?
            .append_then(decision, || self.save())
    }

    /// Writes `schedule_state.json` atomically ([`rubric::runfile::write_atomic`]), so a kill
    /// at any moment leaves the old or the new state.
    fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(&self.state)?;
        Ok(rubric::runfile::write_atomic(&path, &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    fn open(dir: &Path, selector: SelectorKind, length: u64) -> Scheduler {
        let settings = ScheduleSettings {
            objective: ObjectiveKind::Alternating,
            phases: PhaseConfig {
                length,
                selector,
                ..PhaseConfig::default()
            },
            completions_per_step: 0,
        };
        Scheduler::open(
            dir,
            settings,
            &classes(),
            vec![0, 1, 2],
            vec![0.5, 0.3, 0.2],
        )
        .unwrap()
    }

    fn step(s: &mut Scheduler, step: u64) -> Option<DecisionRecord> {
        s.report(Report {
            step: Some(step),
            ..Report::default()
        })
        .unwrap()
    }

    #[test]
    fn round_robin_switches_after_the_phase_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), SelectorKind::RoundRobin, 3);
        assert_eq!(s.active_class(), Some(0));
        assert!(step(&mut s, 2).is_none());
        assert_eq!(step(&mut s, 3).unwrap().chosen, "b");
        drop(s);
        let mut s = open(dir.path(), SelectorKind::RoundRobin, 3);
        assert_eq!((s.active_class(), s.state().step), (Some(1), 3));
        assert_eq!(step(&mut s, 6).unwrap().chosen, "c");
        assert_eq!(step(&mut s, 9).unwrap().chosen, "a");
        let log = std::fs::read_to_string(dir.path().join(DECISIONS_FILE)).unwrap();
        assert_eq!(log.lines().count(), 4);
    }

    #[test]
    fn each_step_counts_once_whatever_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), SelectorKind::RoundRobin, 3);
        // two ranks report every step, one of them late
        for (a, b) in [(1, 1), (2, 1), (3, 2), (3, 3)] {
            let decided = [step(&mut s, a), step(&mut s, b)];
            assert_eq!(
                decided.iter().flatten().count(),
                usize::from(a == 3 && b == 2)
            );
            assert_eq!(s.state().step, a);
        }
        // the phase still ends three steps after it began, not after the late report
        assert!(step(&mut s, 5).is_none());
        assert_eq!(step(&mut s, 6).unwrap().chosen, "c");
        let log = std::fs::read_to_string(dir.path().join(DECISIONS_FILE)).unwrap();
        assert_eq!(log.lines().count(), 3, "{log}");
    }

    #[test]
    fn deficit_waits_for_validation_after_the_phase_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), SelectorKind::Deficit, 2);
        assert_eq!(s.active_class(), Some(0), "no scores yet: first class");
        assert!(step(&mut s, 2).is_none());
        assert_eq!(s.status().waiting_for, Some("validation"));
        let d = s
            .report(Report {
                validation: Some(ValidationScores {
                    overall: Some(0.5),
                    classes: [("a".into(), 0.9), ("b".into(), 0.1), ("c".into(), 0.5)].into(),
                }),
                ..Report::default()
            })
            .unwrap()
            .unwrap();
        // deficits: a 0.05, b 0.27, c 0.1
        assert_eq!(d.chosen, "b");
        assert_eq!(s.status().waiting_for, None);
    }

    #[test]
    fn lookahead_probes_each_candidate_then_commits_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), SelectorKind::Lookahead, 2);
        assert_eq!(s.status().waiting_for, Some("probe"));
        let probe = |s: &mut Scheduler, class: &str, score: f64| {
            s.report(Report {
                probe_class: Some(class.into()),
                validation: Some(ValidationScores {
                    overall: Some(score),
                    ..Default::default()
                }),
                ..Report::default()
            })
        };
        assert_eq!(s.active_class(), Some(0));
        assert!(probe(&mut s, "a", 0.3).unwrap().is_none());
        assert_eq!(s.active_class(), Some(1));
        assert_eq!(
            probe(&mut s, "zzz", 0.3).unwrap_err().fault,
            ReportFault::Conflict
        );
        assert!(probe(&mut s, "b", 0.6).unwrap().is_none());
        let d = probe(&mut s, "c", 0.4).unwrap().unwrap();
        assert_eq!(d.chosen, "b");
        assert_eq!(s.active_class(), Some(1));
        assert!(s.state().probe.is_none());
    }

    #[test]
    fn completions_count_as_steps() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ScheduleSettings {
            objective: ObjectiveKind::Alternating,
            phases: PhaseConfig {
                length: 1,
                selector: SelectorKind::RoundRobin,
                ..PhaseConfig::default()
            },
            completions_per_step: 4,
        };
        let open = || {
            Scheduler::open(
                dir.path(),
                settings.clone(),
                &classes(),
                vec![0, 2],
                vec![0.5, 0.0, 0.5],
            )
        };
        let mut s = open().unwrap();
        assert!(s.count_completions(3).unwrap().is_none());
        // a second scheduler on the folder is refused while the first holds it
        let e = open().err().unwrap().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        // the partial count is on disk: a restart carries it
        drop(s);
        let mut s = open().unwrap();
        assert_eq!(s.state().pending_completions, 3);
        assert_eq!(s.count_completions(1).unwrap().unwrap().chosen, "c");
        assert_eq!(s.state().step, 1);
    }

    #[test]
    fn counted_steps_that_cannot_be_saved_are_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ScheduleSettings {
            objective: ObjectiveKind::Alternating,
            phases: PhaseConfig {
                length: 1,
                selector: SelectorKind::RoundRobin,
                ..PhaseConfig::default()
            },
            completions_per_step: 2,
        };
        let mut s = Scheduler::open(
            dir.path(),
            settings,
            &classes(),
            vec![0, 1, 2],
            vec![0.3; 3],
        )
        .unwrap();
        let before = s.state().clone();
        // a directory in the state file's place fails the write (the new state, written to a
        // temporary file of its own, cannot be renamed over it), even for root
        let saved = dir.path().join(STATE_FILE);
        let content = std::fs::read(&saved).unwrap();
        std::fs::remove_file(&saved).unwrap();
        std::fs::create_dir(&saved).unwrap();
        assert!(s.count_completions(3).is_err());
        assert_eq!(s.state(), &before);
        let log = std::fs::read_to_string(dir.path().join(DECISIONS_FILE)).unwrap();
        assert_eq!(log.lines().count(), 1, "the failed decision was taken back");
        std::fs::remove_dir(&saved).unwrap();
        std::fs::write(&saved, content).unwrap();
        assert_eq!(s.count_completions(3).unwrap().unwrap().chosen, "b");
        assert_eq!((s.state().step, s.state().pending_completions), (1, 1));
    }

    #[test]
    fn a_state_file_from_before_the_phase_start_in_the_phase_state_resumes() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), SelectorKind::RoundRobin, 3));
        // a file of format 1 as written before: the phase start beside the phase state
        let file = dir.path().join(STATE_FILE);
        let mut saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert!(saved.get("phase_start_step").is_none(), "{saved}");
        saved["step"] = 4.into();
        saved["phase_start_step"] = 4.into();
        saved["phase"]["active"] = 1.into();
        saved["phase"].as_object_mut().unwrap().remove("started_at");
        std::fs::write(&file, serde_json::to_vec(&saved).unwrap()).unwrap();
        let mut s = open(dir.path(), SelectorKind::RoundRobin, 3);
        assert_eq!(s.state().phase.started_at, Some(4));
        let status = s.status();
        assert_eq!(status.phase_start_step, Some(4));
        assert_eq!(status.steps_left_in_phase, Some(3));
        // the phase runs its length from there
        assert!(step(&mut s, 6).is_none());
        assert_eq!(step(&mut s, 7).unwrap().chosen, "c");
        let written = std::fs::read_to_string(&file).unwrap();
        assert!(!written.contains("phase_start_step"), "{written}");
    }

    #[test]
    fn a_state_of_another_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), SelectorKind::RoundRobin, 3));
        let settings = ScheduleSettings {
            objective: ObjectiveKind::Alternating,
            phases: PhaseConfig {
                selector: SelectorKind::Deficit,
                ..PhaseConfig::default()
            },
            completions_per_step: 0,
        };
        let e = Scheduler::open(
            dir.path(),
            settings,
            &classes(),
            vec![0],
            vec![1.0, 0.0, 0.0],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("--state-dir"), "{e}");
    }
}
