//! The run configuration: one TOML file, every field documented here and in
//! `configs/example.toml`. Unknown fields are errors naming the field and line; every section
//! except `[data]` and `[policy]` has defaults that work.

use crate::categorical::CategoricalConfig;
use crate::grpo::GrpoConfig;
use crate::optim::OptimConfig;
use anyhow::{bail, Context, Result};
use rubric::ClassSpec;
use schedule::{ObjectiveKind, PhaseConfig, Weights};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub run: RunConfig,
    pub data: DataConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub judge: JudgeSection,
    #[serde(default)]
    pub grpo: GrpoConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub objective: ObjectiveConfig,
    #[serde(default)]
    pub phases: PhaseConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// `[log]`: what `completions.jsonl` records, and the TensorBoard scalars (left out of a
    /// saved config when default).
    #[serde(default, skip_serializing_if = "LogConfig::is_default")]
    pub log: LogConfig,
    /// `[warm_start]`: the tiny transformer built by supervised fine-tuning on the built-in
    /// task before RL (`[policy] model = "warm-start"` names it); see
    /// [`crate::sft::WarmStartConfig`].
    #[cfg(feature = "transformer")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<crate::sft::WarmStartConfig>,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory (created; must not already hold a run unless resuming). Like every
    /// relative path in the file, resolved against the config file's folder.
    pub dir: PathBuf,
    /// Seeds prompt sampling, generation and the bootstrap; the same seed gives the same run.
    pub seed: u64,
    /// Rollout steps (each: one batch of prompts, `grpo.ppo_epochs` optimizer steps); with
    /// `verdict_budget` the most steps the run may take.
    pub steps: u64,
    /// Judge verdicts the run may spend on training and selection (validation and test not
    /// counted): the run stops after the step that reaches it, or at `steps`, whichever comes
    /// first; validation and test then score that step's policy. 0 = no budget.
    #[serde(skip_serializing_if = "is_zero")]
    pub verdict_budget: u64,
    /// Write a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (oldest removed first); 0 keeps all.
    pub keep_checkpoints: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            dir: PathBuf::from("runs/arlrr"),
            seed: 0,
            steps: 100,
            verdict_budget: 0,
            checkpoint_every: 10,
            keep_checkpoints: 2,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training prompts (HealthBench or native JSONL).
    #[serde(default)]
    pub train: PathBuf,
    /// Validation prompts: periodic evaluation and the selectors' fixed batch.
    #[serde(default)]
    pub val: PathBuf,
    /// Held-out test prompts, optional: the starting and the final policy are scored on them
    /// (never used for selection), and `report.md` shows the difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// `true`: a new run writes the built-in task's splits (`arlrr data builtin`) into
    /// `<run.dir>/data/` and uses them as `train`, `val` and `test` (which may then be left
    /// out). The run's resolved config.toml names the written files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub builtin: bool,
    /// `[data.builtin_task]`: the built-in task's `conflict` (0..=1, default 1) and `shape`
    /// (`"builtin"` or `"healthbench"`); see `rubric::builtin::BuiltinSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_task: Option<rubric::builtin::TaskKnobs>,
    /// How criteria are grouped into meta-classes: `scheme = "axis"` (default), `"cluster"`,
    /// `"theme"` or `{ mapping = "classes.toml" }`, and an optional `catch_all` class name.
    #[serde(default)]
    pub classes: ClassSpec,
}

/// `[policy]`: `kind = "categorical"` (a phrase-table policy; see [`CategoricalConfig`]) or
/// `kind = "transformer"` (a GGUF/HF language model; see
/// `arl::lm_actor::TransformerConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicyConfig {
    Categorical(CategoricalConfig),
    #[cfg(feature = "transformer")]
    Transformer(crate::lm_actor::TransformerConfig),
}

/// `[judge]`: the judge crate's config (`kind = "rules" | "http" | "embedding"`, `cache`,
/// `[judge.http]`, `[judge.embedding]`; see `judge::JudgeConfig`) plus the trainer's retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeSection {
    /// `"rules"` grades each criterion's machine-checkable `check` (criteria without one fail
    /// and their responses are excluded); `"http"` asks an OpenAI-compatible endpoint;
    /// `"embedding"` grades by sentence similarity (approximate, local).
    pub kind: judge::JudgeKind,
    /// SQLite verdict cache shared across runs; none when absent.
    pub cache: Option<PathBuf>,
    /// `kind = "http"`: `base_url`, `model`, `concurrency`, ... (required for http).
    pub http: Option<judge::HttpJudgeConfig>,
    /// `kind = "embedding"`: `threshold`, ... (defaults when absent).
    pub embedding: Option<judge::EmbeddingJudgeConfig>,
    /// Times a failed verdict is asked again before its response is excluded.
    pub retries: u32,
    /// `[judge.noise]`: simulated judge errors on the verdicts that drive training and
    /// selection (validation and test stay clean); see [`crate::noise`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise: Option<crate::noise::NoiseConfig>,
}

impl Default for JudgeSection {
    fn default() -> Self {
        JudgeSection {
            kind: judge::JudgeKind::Rules,
            cache: None,
            http: None,
            embedding: None,
            retries: judge::DEFAULT_RETRIES,
            noise: None,
        }
    }
}

impl JudgeSection {
    /// The judge crate's view of this section.
    pub fn judge_config(&self) -> judge::JudgeConfig {
        judge::JudgeConfig {
            kind: self.kind,
            cache: self.cache.clone(),
            http: self.http.clone(),
            embedding: self.embedding.clone(),
            retries: Some(self.retries),
        }
    }

    /// A `--judge` argument: a judge kind (`rules`, `embedding`) or a judge config file
    /// (the judge crate's format, plus an optional `retries`).
    pub fn parse_arg(arg: &str) -> Result<JudgeSection> {
        let path = Path::new(arg);
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read judge config {arg}"))?;
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{arg}: {e}"))?;
            let retries = match table.remove("retries") {
                Some(v) => v
                    .as_integer()
                    .and_then(|r| u32::try_from(r).ok())
                    .with_context(|| format!("{arg}: field `retries`: a non-negative integer"))?,
                None => JudgeSection::default().retries,
            };
            let j = judge::JudgeConfig::parse(&toml::to_string(&table)?, path)?;
            return Ok(JudgeSection {
                kind: j.kind,
                cache: j.cache,
                http: j.http,
                embedding: j.embedding,
                retries,
                noise: None,
            });
        }
        let kind = toml::Value::String(arg.to_string())
            .try_into()
            .map_err(|_| {
                anyhow::anyhow!(
                    "--judge `{arg}`: neither a file nor a judge kind (rules, embedding)"
                )
            })?;
        Ok(JudgeSection {
            kind,
            ..JudgeSection::default()
        })
    }
}

/// `[eval]`: periodic validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Validate every this many steps (and after the last); 0 = only after the last.
    pub every: u64,
    /// Validation examples used (the first ones of the file); 0 = all.
    pub size: usize,
    /// Responses sampled per validation example.
    pub samples: usize,
    /// Bootstrap resamples for the std of the validation scores.
    pub bootstrap: usize,
    /// Test examples scored at the start and the end (the first ones of `data.test`); 0 = all.
    pub test_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every: 10,
            size: 0,
            samples: 4,
            bootstrap: rubric::score::BOOTSTRAP_RESAMPLES,
            test_size: 0,
        }
    }
}

/// `[log]`: the completions a run logs to `completions.jsonl`, and its TensorBoard scalars.
/// Logging draws from no stream and changes nothing in training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Groups of each training step logged (every response of the step's first groups);
    /// 0 = none.
    pub completions_per_step: usize,
    /// Validation prompts (the first ones) whose first sampled response is logged at step 0
    /// and at the last step; 0 = none.
    pub val_completions: usize,
    /// Every `metrics.jsonl` line also as TensorBoard scalars in `tensorboard/`
    /// ([`crate::tensorboard`]).
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            completions_per_step: 2,
            val_completions: 3,
            tensorboard: true,
        }
    }
}

impl LogConfig {
    fn is_default(&self) -> bool {
        *self == LogConfig::default()
    }
}

/// `[objective]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// `"alternating"` (ARL-RR), `"scalarized"` or `"gdpo"`.
    pub kind: ObjectiveKind,
    /// Weights of `scalarized`: `"points"` (the HealthBench overall score itself), `"equal"`,
    /// or a table `{ accuracy = 2.0, completeness = 1.0 }` (missing classes weigh 0).
    pub weights: Weights,
    /// `alternating` only: grade just the active class's criteria during training (fewer
    /// judge calls); validation always grades everything.
    pub grade_active_class_only: bool,
    /// `alternating` only, anchored alternation (our extension): a phase's reward is
    /// `anchor · r_active + (1 − anchor) · r_scalarized` (`weights`' target); 1 = pure ARL-RR.
    #[serde(skip_serializing_if = "is_one")]
    pub anchor: f64,
    /// `scalarized` only, the cost-matched control of `grade_active_class_only`: each training
    /// response is graded on a uniform random sample of its criteria, `max(1, round(share·n))`
    /// of its `n`, and rewarded the unbiased (Horvitz–Thompson) estimate of its full reward.
    /// A share in (0, 1], or `"one_class"`: 1/K for K meta-classes, alternation's verdicts per
    /// step. Absent: every criterion graded. Validation, test and selection grade everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsample: Option<Subsample>,
}

/// `objective.subsample`: the share of each response's criteria graded during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SubsampleRaw", into = "SubsampleRaw")]
pub enum Subsample {
    /// This share of the criteria, in (0, 1].
    Share(f64),
    /// `"one_class"`: 1/K for the run's K meta-classes.
    OneClass,
}

/// The TOML form of [`Subsample`]: a number or a name.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SubsampleRaw {
    Share(f64),
    Name(String),
}

impl TryFrom<SubsampleRaw> for Subsample {
    type Error = String;
    fn try_from(raw: SubsampleRaw) -> Result<Subsample, String> {
        match raw {
            SubsampleRaw::Share(x) => Ok(Subsample::Share(x)),
            SubsampleRaw::Name(n) if n == Subsample::ONE_CLASS => Ok(Subsample::OneClass),
            SubsampleRaw::Name(n) => Err(format!(
                "`{n}`: a share in (0, 1] or \"{}\"",
                Subsample::ONE_CLASS
            )),
        }
    }
}

impl From<Subsample> for SubsampleRaw {
    fn from(s: Subsample) -> SubsampleRaw {
        match s {
            Subsample::Share(x) => SubsampleRaw::Share(x),
            Subsample::OneClass => SubsampleRaw::Name(Subsample::ONE_CLASS.into()),
        }
    }
}

impl Subsample {
    pub const ONE_CLASS: &'static str = "one_class";

    /// The share of the criteria graded in a run with `n_classes` meta-classes.
    pub fn share(self, n_classes: usize) -> f64 {
        match self {
            Subsample::Share(x) => x,
            Subsample::OneClass => 1.0 / n_classes.max(1) as f64,
        }
    }

    /// A `[variants] subsample` or `--subsample` value: a share or `one_class`.
    pub fn parse(text: &str) -> Result<Subsample> {
        let s = match text.trim() {
            Subsample::ONE_CLASS => Subsample::OneClass,
            t => Subsample::Share(t.parse().map_err(|_| {
                anyhow::anyhow!("`{t}`: a share in (0, 1] or \"{}\"", Subsample::ONE_CLASS)
            })?),
        };
        s.check()?;
        Ok(s)
    }

    /// The share's range, the error naming the field.
    pub fn check(self) -> Result<()> {
        if let Subsample::Share(x) = self {
            if !(x > 0.0 && x <= 1.0) {
                bail!("field `objective.subsample`: a share must be in (0, 1], got {x}");
            }
        }
        Ok(())
    }
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            kind: ObjectiveKind::Alternating,
            weights: Weights::Points,
            grade_active_class_only: false,
            anchor: 1.0,
            subsample: None,
        }
    }
}

impl TrainConfig {
    /// Reads a config file; relative paths inside it are resolved against its folder, to
    /// absolute paths (so the run's saved `config.toml` means the same from any folder).
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut cfg =
            Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        cfg.resolve_paths(&absolute(base.unwrap_or(Path::new(".")))?);
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Parses TOML text; the error names the offending field and its line.
    pub fn from_toml(text: &str) -> Result<TrainConfig> {
        parse_toml(text)
    }

    /// Makes every path of the config absolute, a relative one taken from the working
    /// directory: what a new run saves as its `config.toml`, so that `--resume` finds the
    /// data, the judge cache and the model from any working directory.
    pub fn absolutize(&mut self) -> Result<()> {
        self.resolve_paths(&absolute(Path::new("."))?);
        Ok(())
    }

    /// Joins every relative path field to `base`. A field that holds a path belongs here:
    /// the run's saved config must not depend on the folder it was started from.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.run.dir);
        for p in [&mut self.data.train, &mut self.data.val] {
            if !p.as_os_str().is_empty() {
                fix(p);
            }
        }
        if let Some(p) = &mut self.data.test {
            fix(p);
        }
        #[cfg(feature = "transformer")]
        if let Some(w) = self.warm_start.as_mut() {
            if let Some(p) = w.cache.as_mut() {
                fix(p);
            }
            if let Some(p) = w.base.as_mut().filter(|p| p.as_os_str() != "smollm2") {
                fix(p);
            }
        }
        #[cfg(feature = "transformer")]
        if let PolicyConfig::Transformer(t) = &mut self.policy {
            let named = ["smollm2", crate::lm_actor::WARM_START_MODEL];
            if !named.iter().any(|n| t.model.as_os_str() == *n) {
                fix(&mut t.model);
            }
        }
        if let rubric::ClassScheme::Mapping(p) = &mut self.data.classes.scheme {
            fix(p);
        }
        if let Some(p) = &mut self.judge.cache {
            fix(p);
        }
        let embedding = self.judge.embedding.as_mut();
        if let Some(p) = embedding.and_then(|e| e.model_dir.as_mut()) {
            fix(p);
        }
    }

    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<()> {
        self.validate_data()?;
        self.check_finite()?;
        self.validate_policy()?;
        self.validate_grpo()?;
        self.validate_optim()?;
        self.validate_phases()?;
        if self.eval.samples == 0 {
            bail!("field `eval.samples`: must be at least 1");
        }
        Ok(())
    }

    /// `[data]`, the built-in task's knobs and `[warm_start]`.
    fn validate_data(&self) -> Result<()> {
        if !self.data.builtin {
            if self.data.train.as_os_str().is_empty() {
                bail!("field `data.train`: required (or `data.builtin = true`)");
            }
            if self.data.val.as_os_str().is_empty() {
                bail!("field `data.val`: required (or `data.builtin = true`)");
            }
        }
        if let Some(k) = &self.data.builtin_task {
            k.validate("data.builtin_task.")
                .map_err(anyhow::Error::msg)?;
        }
        #[cfg(feature = "transformer")]
        {
            if let Some(w) = &self.warm_start {
                w.validate()?;
            }
            if let PolicyConfig::Transformer(t) = &self.policy {
                if t.model.as_os_str() == crate::lm_actor::WARM_START_MODEL
                    && self.warm_start.is_none()
                {
                    bail!(
                        "field `policy.model`: `{}` needs a `[warm_start]` section",
                        crate::lm_actor::WARM_START_MODEL
                    );
                }
            }
        }
        Ok(())
    }

    /// `[grpo]` (and `[judge.noise]`).
    fn validate_grpo(&self) -> Result<()> {
        let g = &self.grpo;
        if g.prompts_per_step == 0 {
            bail!("field `grpo.prompts_per_step`: must be at least 1");
        }
        if g.group_size < 2 {
            bail!("field `grpo.group_size`: must be at least 2 (advantages compare samples of a prompt)");
        }
        if g.ppo_epochs == 0 {
            bail!("field `grpo.ppo_epochs`: must be at least 1");
        }
        if let Some(cap) = g.truncated_is_cap {
            if cap.is_nan() || cap <= 0.0 {
                bail!("field `grpo.truncated_is_cap`: must be positive");
            }
        }
        if g.clip_eps.is_nan() || g.clip_eps <= 0.0 {
            bail!("field `grpo.clip_eps`: must be positive");
        }
        if g.kl_beta < 0.0 {
            bail!("field `grpo.kl_beta`: must be 0 (no KL penalty) or positive");
        }
        if let Some(n) = &self.judge.noise {
            n.validate()?;
        }
        if g.adv_eps < 0.0 {
            bail!("field `grpo.adv_eps`: must not be negative");
        }
        if g.resample_flat.is_some_and(|r| r.max_rounds == 0) {
            bail!(
                "field `grpo.resample_flat.max_rounds`: must be at least 1 (the step's own round)"
            );
        }
        Ok(())
    }

    /// `[optim]`.
    fn validate_optim(&self) -> Result<()> {
        let o = &self.optim;
        if o.lr <= 0.0 {
            bail!("field `optim.lr`: must be positive");
        }
        for (name, beta) in [("beta1", o.beta1), ("beta2", o.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("field `optim.{name}`: must be in [0, 1)");
            }
        }
        if o.eps <= 0.0 {
            bail!("field `optim.eps`: must be positive");
        }
        if o.weight_decay < 0.0 {
            bail!("field `optim.weight_decay`: must not be negative");
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            bail!("field `optim.min_lr_ratio`: must be in [0, 1]");
        }
        if o.grad_clip < 0.0 {
            bail!("field `optim.grad_clip`: must not be negative (0 disables clipping)");
        }
        Ok(())
    }

    /// `[phases]` and `[objective]`.
    fn validate_phases(&self) -> Result<()> {
        if self.phases.ucb_c < 0.0 {
            bail!("field `phases.ucb_c`: must not be negative");
        }
        self.objective
            .weights
            .check()
            .map_err(|e| anyhow::anyhow!("field `objective.weights`: {e}"))?;
        if self.phases.length == 0 {
            bail!("field `phases.length`: must be at least 1");
        }
        if let Some(d) = self.phases.guard_drop.filter(|d| *d <= 0.0) {
            bail!("field `phases.guard_drop`: must be positive (leave it out to turn the guard off), got {d}");
        }
        let p = &self.phases;
        if let Some(f) = p.end_flat {
            if !(f.share > 0.0 && f.share <= 1.0) {
                bail!(
                    "field `phases.end_flat.share`: must be in (0, 1], got {}",
                    f.share
                );
            }
            if f.window == 0 {
                bail!("field `phases.end_flat.window`: must be at least 1");
            }
        }
        if p.keep_probe && p.guard_drop.is_some() {
            bail!("fields `phases.keep_probe` and `phases.guard_drop`: the guard does not check kept probe steps; turn one off");
        }
        if p.keep_probe && p.probe_steps > p.length {
            bail!(
                "field `phases.keep_probe`: the kept probe steps ({}) must fit in a phase (`phases.length` = {})",
                p.probe_steps,
                p.length
            );
        }
        let anchor = self.objective.anchor;
        if anchor <= 0.0 || anchor > 1.0 {
            bail!("field `objective.anchor`: must be in (0, 1] (1 = pure ARL-RR), got {anchor}");
        }
        if let Some(s) = self.objective.subsample {
            if self.objective.kind != ObjectiveKind::Scalarized {
                bail!("field `objective.subsample`: only with `objective.kind = \"scalarized\"` (alternation saves verdicts with `grade_active_class_only`)");
            }
            s.check()?;
        }
        if anchor < 1.0 && self.objective.grade_active_class_only {
            bail!("fields `objective.anchor` and `objective.grade_active_class_only`: an anchor below 1 needs every class graded; set grade_active_class_only = false");
        }
        Ok(())
    }

    /// Every number in the config must be finite: `lr = inf` or `nan` would only surface at
    /// the end of the run, as a null in metrics.jsonl.
    fn check_finite(&self) -> Result<()> {
        fn walk(v: &toml::Value, path: &str) -> Result<()> {
            match v {
                toml::Value::Float(x) if !x.is_finite() => {
                    bail!("field `{path}`: must be a finite number, got {x}")
                }
                toml::Value::Table(t) => t.iter().try_for_each(|(k, v)| {
                    walk(
                        v,
                        &if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        },
                    )
                }),
                toml::Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, v)| walk(v, &format!("{path}[{i}]"))),
                _ => Ok(()),
            }
        }
        walk(&toml::Value::try_from(self)?, "")
    }

    /// The `[policy]` section's values, checked before anything is written or loaded.
    fn validate_policy(&self) -> Result<()> {
        let temperature = |t: f64| {
            if t <= 0.0 {
                bail!("field `policy.temperature`: must be positive, got {t}");
            }
            Ok(())
        };
        match &self.policy {
            PolicyConfig::Categorical(c) => {
                if c.vocab.is_empty() {
                    bail!("field `policy.vocab`: needs at least one phrase");
                }
                if c.max_tokens == 0 {
                    bail!("field `policy.max_tokens`: must be at least 1");
                }
                if c.buckets == 0 {
                    bail!("field `policy.buckets`: must be at least 1");
                }
                temperature(c.temperature)
            }
            #[cfg(feature = "transformer")]
            PolicyConfig::Transformer(t) => {
                if t.max_new_tokens == 0 {
                    bail!("field `policy.max_new_tokens`: must be at least 1");
                }
                if let Some(l) = &t.lora {
                    if l.rank == 0 {
                        bail!("field `policy.lora.rank`: must be at least 1");
                    }
                    if l.targets.is_empty() {
                        bail!("field `policy.lora.targets`: needs at least one of q, k, v, o, gate, up, down");
                    }
                    for (i, name) in l.targets.iter().enumerate() {
                        if let Err(e) = policy::LoraTarget::parse(name) {
                            bail!("field `policy.lora.targets[{i}]`: {e}");
                        }
                    }
                }
                temperature(t.temperature)
            }
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// `path` made absolute against the working directory (not resolving symlinks).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// Parses TOML text into `T`; the error names the offending field and its line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| format!("line {}: ", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        anyhow::anyhow!("{line}field `{path}`: {}", inner.message().trim())
    })
}
