//! The reward service: ARL-RR rewards and scheduling for distributed RL engines (OpenRLHF,
//! verl, TRL) that keep their own policy and rollouts and ask arlrr for rewards over HTTP.
//!
//! One process holds the rubric data, the judge (with its SQLite verdict cache) and the phase
//! schedule, so every rollout worker sees the same active class and no verdict is paid twice.
//! Endpoints (all JSON; errors are `{"error": {"message", "type", "field", "items"}}` with 4xx
//! for bad input and the service keeps serving):
//!
//! - `POST /openrlhf/reward` (alias `/get_reward`): OpenRLHF's remote reward protocol
//!   (`--remote_rm_url`), see [`api::openrlhf_reward`].
//! - `POST /v1/rewards`: the native endpoint for any client, see [`api::native_rewards`].
//! - `GET /v1/schedule`, `POST /v1/schedule/report`: the phase schedule ([`schedule`]).
//! - `GET /healthz` (never needs the token), `GET /metrics` (Prometheus text).
//!
//! Prompts are matched to rubric examples by id or by normalized prompt text ([`prompts`]).
//! A group, for GDPO's per-group normalization, is the completions of one item of a native
//! request, or the completions of one prompt within one OpenRLHF request, or, with a group size
//! set, a prompt's completions collected across OpenRLHF requests ([`groups`]).
//!
//! Connections: HTTP/1.1, at most `max_connections` at once, closed when a request's headers,
//! a write or an idle spell take too long; shutdown drains the requests in flight
//! ([`conn::serve`]).
//!
//! Nothing counted is lost: a completion counts toward a step only once it is graded, and the
//! count is saved before its reward is answered (or the answer is an error); one service holds
//! a state folder at a time (`serve.lock`).

pub mod api;
pub mod conn;
pub mod groups;
pub mod metrics;
pub mod prompts;
pub mod scheduler;

use anyhow::Result;
use judge::{Judge, JudgeFailure, ToGrade};
use rubric::{ClassSpec, Dataset, RewardVector};
use schedule::{ObjectiveKind, Target, Weights};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use api::router;
pub use groups::GroupSettings;
pub use scheduler::{Report, ScheduleSettings, Scheduler, Status, ValidationScores};

/// `eps` in GDPO's `(r - mean) / (std + eps)`, as the trainer's GRPO default.
pub const GDPO_EPS: f64 = 1e-6;

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Time a request may take before it is answered 503 (grading is abandoned).
    pub request_timeout: Duration,
    /// Most completions graded in one request (413 above).
    pub max_completions: usize,
    /// Time a client may take to send a request's headers (and an idle keep-alive connection
    /// may stay open) before the connection is closed.
    pub header_timeout: Duration,
    /// Most connections open at once; more wait in the listen backlog until one closes, so
    /// the process never runs out of file descriptors.
    pub max_connections: usize,
    /// Time a write may wait for the client to read before the connection is closed.
    pub write_timeout: Duration,
    /// Time a connection with no request being answered may move no byte before it is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 32 << 20,
            // under OpenRLHF's 180 s client timeout, so it gets an answer it can retry on
            request_timeout: Duration::from_secs(170),
            max_completions: 8192,
            header_timeout: Duration::from_secs(30),
            max_connections: 4096,
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Which criteria the service grades for a reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradeScope {
    /// Every criterion: every class's reward and the overall score are answered.
    #[default]
    All,
    /// `alternating` only: the active class's criteria alone, as the trainer's
    /// `grade_active_class_only` does; the other classes and the overall score are not graded
    /// (`null`), and the verdicts not asked for are counted in `/metrics`.
    Active,
}

/// What a service is built from.
pub struct ServiceConfig {
    pub data: Dataset,
    pub classes: ClassSpec,
    pub judge: Arc<dyn Judge>,
    /// Whether `judge` has a verdict cache in front (then judge calls = cache misses).
    pub judge_cached: bool,
    /// Times a failed verdict is asked for again (the judge config's `retries`).
    pub retries: u32,
    pub objective: ObjectiveKind,
    /// `scalarized` weights.
    pub weights: Weights,
    pub schedule: ScheduleSettings,
    /// Folder of `schedule_state.json` and `schedule.jsonl`.
    pub state_dir: PathBuf,
    /// Bearer token every endpoint but `/healthz` requires; none = open.
    pub token: Option<String>,
    pub limits: Limits,
    /// GDPO groups collected across OpenRLHF requests.
    pub groups: GroupSettings,
    /// Which criteria a reward request grades.
    pub grade: GradeScope,
}

/// The objective resolved against the class list.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// ARL-RR: the active class's reward.
    Alternating,
    /// A fixed scalarization (`Target::Overall` or `Target::Weighted`).
    Scalarized(Target),
    /// GDPO: per-class group normalization, summed, normalized over the request.
    Gdpo,
}

/// The running service's shared state.
pub struct Service {
    pub(crate) data: Dataset,
    /// Class of each criterion of each example.
    pub(crate) class_of: Vec<Vec<usize>>,
    pub(crate) class_names: Vec<String>,
    pub(crate) index: prompts::PromptIndex,
    pub(crate) judge: Arc<dyn Judge>,
    pub(crate) judge_cached: bool,
    pub(crate) retries: u32,
    pub(crate) objective: Objective,
    pub(crate) scheduler: Mutex<Scheduler>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) token: Option<String>,
    pub(crate) limits: Limits,
    pub(crate) groups: groups::Collector,
    pub(crate) grade: GradeScope,
}

/// Why a completion got no reward.
#[derive(Debug, Clone, PartialEq)]
pub enum GradeFailure {
    /// The judge failed after the retries ([`judge::grade_with_retries`]: timeouts, 5xx,
    /// unparseable answers); asking again later may work.
    Transient(String),
    /// The judge cannot grade a criterion at all (e.g. the rule judge and a criterion without
    /// `check`): a data/judge mismatch no retry fixes.
    NotGradable(String),
}

impl GradeFailure {
    pub fn message(&self) -> &str {
        match self {
            GradeFailure::Transient(m) | GradeFailure::NotGradable(m) => m,
        }
    }
}

/// `text` cut to `max` characters (marked with `…`), for echoing client input in messages.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

impl Service {
    /// Assigns classes, resolves the objective and opens (or resumes) the schedule.
    pub fn new(config: ServiceConfig) -> Result<Arc<Service>> {
        anyhow::ensure!(
            !config.data.is_empty(),
            "{}: no examples",
            config.data.source.display()
        );
        // the schedule's task data gives the class assignment, the classes with a signal and the
        // points shares the deficit selector weighs by, exactly as a training run has them.
        let task = schedule::TaskData::new(
            config.data.clone(),
            config.data,
            &config.classes,
            usize::MAX,
        )?;
        let objective = match config.objective {
            ObjectiveKind::Alternating => Objective::Alternating,
            ObjectiveKind::Gdpo => Objective::Gdpo,
            ObjectiveKind::Scalarized => Objective::Scalarized(
                config
                    .weights
                    .target(&task.classes.names)
                    .map_err(|e| anyhow::anyhow!("--weights: {e}"))?,
            ),
        };
        anyhow::ensure!(
            config.grade == GradeScope::All || config.objective == ObjectiveKind::Alternating,
            "--grade active applies to --objective alternating only (scalarized and gdpo reward \
             every class, so every criterion is graded)"
        );
        if config.groups.size > 0 {
            anyhow::ensure!(
                config.objective == ObjectiveKind::Gdpo,
                "--group-size applies to --objective gdpo only (the other objectives reward each \
                 completion on its own)"
            );
            anyhow::ensure!(
                config.groups.size >= 2,
                "--group-size must be at least 2 (GDPO normalizes within a group)"
            );
            anyhow::ensure!(
                config.groups.window < config.limits.request_timeout,
                "--group-window-secs must be shorter than --request-timeout-secs, so a waiting \
                 request is answered"
            );
        }
        let settings = ScheduleSettings {
            objective: config.objective,
            ..config.schedule
        };
        let scheduler = Scheduler::open(
            &config.state_dir,
            settings,
            &task.classes.names,
            task.trainable.clone(),
            task.select_weights.clone(),
        )?;
        Ok(Arc::new(Service {
            index: prompts::PromptIndex::new(&task.train),
            class_of: task.train_classes,
            class_names: task.classes.names.clone(),
            data: task.train,
            judge: config.judge,
            judge_cached: config.judge_cached,
            retries: config.retries,
            objective,
            scheduler: Mutex::new(scheduler),
            metrics: metrics::Metrics::default(),
            token: config.token,
            limits: config.limits,
            groups: groups::Collector::new(config.groups, task.classes.names.len(), GDPO_EPS),
            grade: config.grade,
        }))
    }

    pub fn data(&self) -> &Dataset {
        &self.data
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The schedule's status now.
    pub fn status(&self) -> Status {
        self.scheduler.lock().expect("scheduler lock").status()
    }

    /// The class whose criteria alone a reward request grades, given the active class now:
    /// `Some` under `--grade active`, `None` (grade everything) otherwise.
    pub fn graded_class(&self, active: Option<usize>) -> Option<usize> {
        (self.grade == GradeScope::Active)
            .then_some(active)
            .flatten()
    }

    /// Grades completions (`(example position, text)`) in one judge batch, against their full
    /// rubrics or, with `only = Some(k)`, against class `k`'s criteria alone (the other
    /// classes and the overall score come out `None`); failed verdicts are retried as the
    /// trainer does ([`judge::grade_classes`], the one grading path). One reward vector or
    /// failure each, in order.
    pub async fn grade(
        &self,
        items: &[(usize, &str)],
        only: Option<usize>,
    ) -> Vec<Result<RewardVector, GradeFailure>> {
        let items: Vec<ToGrade<'_>> = items
            .iter()
            .map(|&(i, response)| ToGrade {
                example: &self.data.examples[i],
                class_of: &self.class_of[i],
                response,
            })
            .collect();
        let all: usize = items.iter().map(|it| it.example.criteria.len()).sum();
        let asked: usize = items.iter().map(|it| it.criteria(only).len()).sum();
        self.metrics.add_verdicts_saved((all - asked) as u64);
        let graded = judge::grade_classes(&*self.judge, &items, only, self.retries).await;
        self.metrics.add_completions(items.len() as u64);
        let graded = match graded {
            Ok(g) => g,
            Err(e) => return vec![Err(GradeFailure::Transient(e)); items.len()],
        };
        items
            .iter()
            .zip(&graded.verdicts)
            .map(|(it, verdicts)| {
                match verdicts
                    .iter()
                    .find_map(|v| Some((v.criterion, v.failure()?)))
                {
                    Some((c, e)) => {
                        let message = format!("criterion {c}: {e}");
                        Err(match e {
                            JudgeFailure::NotGradable(_) => GradeFailure::NotGradable(message),
                            _ => GradeFailure::Transient(message),
                        })
                    }
                    None => Ok(rubric::score::reward_vector(
                        it.example,
                        it.class_of,
                        self.class_names.len(),
                        verdicts,
                    )),
                }
            })
            .collect()
    }

    /// The scalar reward of every completion under the objective (`groups[group][completion]`,
    /// `None` in = failed grading). `None` out = no signal: the active class (or every class)
    /// has no positive-point criterion for that prompt, or, for GDPO, the group has no spread.
    pub fn scalar_rewards(
        &self,
        groups: &[Vec<Option<RewardVector>>],
        active: Option<usize>,
    ) -> Vec<Vec<Option<f64>>> {
        let per_completion = |target: &Target| {
            groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|r| r.as_ref().and_then(|r| target.reward(r)))
                        .collect()
                })
                .collect()
        };
        match &self.objective {
            Objective::Alternating => match active {
                Some(k) => per_completion(&Target::Class(k)),
                None => groups.iter().map(|g| vec![None; g.len()]).collect(),
            },
            Objective::Scalarized(target) => per_completion(target),
            Objective::Gdpo => {
                Target::Decoupled
                    .advantages(groups, self.class_names.len(), GDPO_EPS)
                    .advantages
            }
        }
    }

    /// Counts graded completions toward steps (`--completions-per-step`) and logs a decision
    /// they trigger. The count is saved before this returns; on an error nothing is counted,
    /// and the caller must not answer the rewards as if it had been.
    pub(crate) fn count_completions(&self, n: u64) -> anyhow::Result<()> {
        let decided = self
            .scheduler
            .lock()
            .expect("scheduler lock")
            .count_completions(n)?;
        if let Some(d) = decided {
            eprintln!(
                "arlrr serve: step {}: phase {} trains `{}`",
                d.step, d.phase, d.chosen
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedule::PhaseConfig;

    fn service(objective: ObjectiveKind, weights: Weights, dir: &std::path::Path) -> Arc<Service> {
        let files =
            rubric::builtin::write_splits(rubric::builtin::BuiltinSpec::default(), dir).unwrap();
        Service::new(ServiceConfig {
            data: rubric::load(&files[0].1).unwrap(),
            classes: ClassSpec::default(),
            judge: Arc::new(judge::RuleJudge::new()),
            judge_cached: false,
            retries: judge::DEFAULT_RETRIES,
            objective,
            weights,
            schedule: ScheduleSettings {
                objective,
                phases: PhaseConfig::default(),
                completions_per_step: 0,
            },
            state_dir: dir.join("state"),
            token: None,
            limits: Limits::default(),
            groups: GroupSettings::default(),
            grade: GradeScope::All,
        })
        .unwrap()
    }

    /// Two prompts' groups of sampled responses, graded.
    async fn groups(s: &Service) -> Vec<Vec<Option<RewardVector>>> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut out = Vec::new();
        for e in [0, 1] {
            let ex = &s.data.examples[e];
            let texts: Vec<String> = (0..6)
                .map(|j| rubric::builtin::sample_response(ex, j as f64 / 5.0, &mut rng))
                .collect();
            let items: Vec<(usize, &str)> = texts.iter().map(|t| (e, t.as_str())).collect();
            out.push(
                s.grade(&items, None)
                    .await
                    .into_iter()
                    .map(Result::ok)
                    .collect(),
            );
        }
        out
    }

    fn mean_std(v: &[f64]) -> (f64, f64) {
        schedule::mean_std(v.iter().copied()).expect("values")
    }

    #[tokio::test]
    async fn scalarized_weights_average_the_defined_classes() {
        let dir = tempfile::tempdir().unwrap();
        let w = Weights::Custom([("accuracy".into(), 3.0), ("completeness".into(), 1.0)].into());
        let s = service(ObjectiveKind::Scalarized, w, dir.path());
        let g = groups(&s).await;
        let scalars = s.scalar_rewards(&g, None);
        for (group, values) in g.iter().zip(&scalars) {
            for (r, v) in group.iter().zip(values) {
                let r = r.as_ref().unwrap();
                let (a, c) = (r.classes[0].unwrap(), r.classes[1].unwrap());
                assert!((v.unwrap() - (3.0 * a + c) / 4.0).abs() < 1e-12);
            }
        }
        let points = service(
            ObjectiveKind::Scalarized,
            Weights::Points,
            &dir.path().join("p"),
        );
        let scalars = points.scalar_rewards(&g, None);
        assert_eq!(scalars[0][0], g[0][0].as_ref().unwrap().overall);
    }

    #[tokio::test]
    async fn gdpo_normalizes_each_class_within_its_group_then_over_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(ObjectiveKind::Gdpo, Weights::Points, dir.path());
        let g = groups(&s).await;
        // by hand: z-score each class within its group, sum, z-score over all completions
        let mut summed: Vec<f64> = Vec::new();
        for group in &g {
            let mut sum = vec![0.0; group.len()];
            for k in 0..s.class_names.len() {
                let v: Vec<f64> = group
                    .iter()
                    .map(|r| r.as_ref().unwrap().classes[k].unwrap_or(0.0))
                    .collect();
                let (m, sd) = mean_std(&v);
                if sd > 1e-12 {
                    for (x, y) in sum.iter_mut().zip(&v) {
                        *x += (y - m) / (sd + GDPO_EPS);
                    }
                }
            }
            summed.extend(sum);
        }
        let (m, sd) = mean_std(&summed);
        let want: Vec<f64> = summed.iter().map(|x| (x - m) / (sd + GDPO_EPS)).collect();
        let got: Vec<f64> = s
            .scalar_rewards(&g, None)
            .into_iter()
            .flatten()
            .map(|v| v.expect("every group has spread"))
            .collect();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }
}
