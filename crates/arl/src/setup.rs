//! From a config to a run's parts: the concrete config (built-in data written, warm start
//! built or reused), the task data, the policy and the judge, and the policy behind a trained
//! model's path. Config files stay plain data; everything with side effects happens here.

use crate::actor::Policy;
use crate::categorical::CategoricalPolicy;
use crate::config::{JudgeSection, PolicyConfig, TrainConfig};
use crate::eval::{EvalReport, EvalSet, Evaluator};
use anyhow::{bail, Context, Result};
use judge::Judge;
use schedule::TaskData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What [`prepare`] reports while it builds a warm start.
#[cfg(feature = "transformer")]
pub type WarmStartProgress = crate::sft::Progress;
/// What [`prepare`] reports while it builds a warm start (none without the
/// transformer feature).
#[cfg(not(feature = "transformer"))]
pub type WarmStartProgress = std::convert::Infallible;

/// Makes a new run's config concrete: writes the built-in splits when `data.builtin`
/// (into `<run.dir>/data/`, absolute paths, so `--resume` finds them), and builds or
/// reuses the cached warm start when `[policy] model = "warm-start"`. `on_warm_start`
/// sees the warm start's progress (never called when it is cached).
pub fn prepare(cfg: &mut TrainConfig, on_warm_start: impl FnMut(WarmStartProgress)) -> Result<()> {
    if cfg.data.builtin {
        cfg.run.dir = std::path::absolute(&cfg.run.dir)?;
        let data = cfg.run.dir.join("data");
        let spec = cfg.data.builtin_task.unwrap_or_default().spec();
        // the error names the file or folder
        rubric::builtin::write_splits(spec, &data).context("writing the built-in task")?;
        cfg.data.train = data.join("train.jsonl");
        cfg.data.val = data.join("validation.jsonl");
        cfg.data.test = Some(data.join("test.jsonl"));
        cfg.data.builtin = false;
    }
    #[cfg(feature = "transformer")]
    if let (PolicyConfig::Transformer(t), Some(w)) = (&mut cfg.policy, &cfg.warm_start) {
        if t.model.as_os_str() == crate::lm_actor::WARM_START_MODEL {
            let (dir, _reused) = crate::sft::cached(w, on_warm_start)?;
            t.model = dir;
        }
    }
    #[cfg(not(feature = "transformer"))]
    let _ = on_warm_start;
    Ok(())
}

/// The policy a `[policy]` section names, freshly initialized.
pub fn build_policy(cfg: &PolicyConfig) -> Result<Box<dyn Policy>> {
    Ok(match cfg {
        PolicyConfig::Categorical(c) => Box::new(CategoricalPolicy::new(c.clone())?),
        #[cfg(feature = "transformer")]
        PolicyConfig::Transformer(c) => {
            Box::new(crate::lm_actor::TransformerPolicy::new(c.clone())?)
        }
    })
}

/// The judge a `[judge]` section names.
pub fn build_judge(cfg: &JudgeSection) -> Result<Arc<dyn judge::Judge>> {
    // the judge crate names `cache` as the file in its errors; here the section is the subject
    let built = judge::from_config(&cfg.judge_config()).map_err(|e| {
        anyhow::anyhow!(
            "[judge] kind = {}: {}",
            format!("{:?}", cfg.kind).to_lowercase(),
            e.message
        )
    })?;
    Ok(Arc::from(built))
}

/// The task data of the files the config names.
pub fn load_task(cfg: &TrainConfig) -> Result<TaskData> {
    let train = rubric::load(&cfg.data.train)?;
    let val = rubric::load(&cfg.data.val)?;
    let g = &cfg.grpo;
    let (select_size, _) = cfg
        .phases
        .select_batch(val.len(), g.prompts_per_step, g.group_size);
    let mut data = TaskData::new(train, val, &cfg.data.classes, select_size)?;
    data.test = cfg.data.test.as_deref().map(rubric::load).transpose()?;
    Ok(data)
}

/// The replaceable parts of a run. `Parts::from_config` builds what the config names; tests
/// and embedders pass their own policy or judge.
pub struct Parts {
    pub policy: Box<dyn Policy>,
    pub judge: Arc<dyn Judge>,
    pub data: TaskData,
}

impl Parts {
    pub fn from_config(cfg: &TrainConfig) -> Result<Parts> {
        Parts::with_judge(cfg, crate::build_judge(&cfg.judge)?)
    }

    /// The data and the policy the config names, with a judge built beforehand; the cheap
    /// checks come first (the judge must grade the data) and the model loads last.
    /// Every split's prompts are checked against the model's length before any step.
    pub fn with_judge(cfg: &TrainConfig, judge: Arc<dyn Judge>) -> Result<Parts> {
        let data = load_task(cfg)?;
        check_judge(&*judge, &data)?;
        let policy = crate::build_policy(&cfg.policy)?;
        for d in [Some(&data.train), Some(&data.val), data.test.as_ref()]
            .into_iter()
            .flatten()
        {
            check_prompt_lengths(&*policy, d, "`policy.max_new_tokens`")?;
        }
        Ok(Parts {
            policy,
            judge,
            data,
        })
    }
}

/// Every prompt of `data`, tokenized and rendered as the policy feeds it, must leave room
/// for a whole response (`max_new`, the setting that sets its length, is named in the
/// error): otherwise sampling it fails mid-run, at whatever step first draws it. The error
/// names the first such example by file, line and id, counts the others, and says what to
/// change.
pub fn check_prompt_lengths(
    policy: &dyn Policy,
    data: &rubric::Dataset,
    max_new: &str,
) -> Result<()> {
    let Some(limit) = policy.prompt_limit() else {
        return Ok(());
    };
    let mut over = Vec::new();
    for ex in &data.examples {
        let tokens = policy.prompt_tokens(ex)?;
        if tokens + limit.max_new_tokens > limit.positions {
            over.push((ex, tokens));
        }
    }
    let Some(&(ex, tokens)) = over.first() else {
        return Ok(());
    };
    let (positions, new) = (limit.positions, limit.max_new_tokens);
    let others = match over.len() - 1 {
        0 => String::new(),
        1 => " (and 1 more prompt of this file)".to_string(),
        n => format!(" (and {n} more prompts of this file)"),
    };
    let advice = if tokens < positions {
        format!(
            "shorten the prompt, lower {max_new} to at most {}, or use a model with more \
             positions",
            positions - tokens
        )
    } else {
        "shorten the prompt (alone it fills the model) or use a model with more positions"
            .to_string()
    };
    bail!(
        "{}:{}: field `prompt`: example `{}`: the prompt is {tokens} tokens, and with {max_new} \
         = {new} prompt and response need {} positions, more than the model's {positions}\
         {others}; {advice}",
        data.source.display(),
        ex.line,
        ex.id,
        tokens + new
    )
}

/// Grades a few criteria of each data file's first example before any step, so a judge that
/// cannot grade the data (the rule judge on criteria without `check`, an endpoint that never
/// answers) fails now in one line instead of after a run whose every sample was excluded.
/// A criterion the judge can never grade fails the check outright: every response to its
/// prompt would be excluded.
pub fn check_judge(judge: &dyn Judge, data: &TaskData) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for d in [Some(&data.train), Some(&data.val), data.test.as_ref()]
        .into_iter()
        .flatten()
    {
        let Some(ex) = d.examples.first() else {
            continue;
        };
        let criteria: Vec<usize> = (0..ex.criteria.len().min(3)).collect();
        let response = ex
            .ideal_completion
            .as_deref()
            .unwrap_or("Rest, drink fluids, and see a doctor if it gets worse.");
        let task = judge::GradeTask {
            example: ex,
            response,
            criteria: Some(&criteria),
        };
        let grades = rt.block_on(judge.grade(&[task])).pop().unwrap_or_default();
        let failed = |never: bool| {
            grades.iter().find_map(|g| match &g.outcome {
                Err(e) if !never || matches!(e, judge::JudgeFailure::NotGradable(_)) => {
                    Some((g.criterion, e))
                }
                _ => None,
            })
        };
        let all_failed = !grades.is_empty() && grades.iter().all(|g| g.outcome.is_err());
        let bad = failed(true).or_else(|| if all_failed { failed(false) } else { None });
        if let Some((i, e)) = bad {
            bail!(
                "judge `{}` cannot grade {} (line {}, rubrics[{i}]): {e}",
                judge.id(),
                d.source.display(),
                ex.line
            );
        }
    }
    Ok(())
}

/// The checkpoint folder and run config behind a `--model` path: a run directory (its latest
/// checkpoint) or a checkpoint folder inside one.
pub fn resolve_model(model: &Path) -> Result<(PathBuf, TrainConfig)> {
    let (run_dir, ckpt) = if model.join("state.json").exists() {
        let run = model
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.to_path_buf());
        (run.unwrap_or_default(), model.to_path_buf())
    } else {
        let (ckpt, _) = crate::checkpoint::latest(model)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: neither a checkpoint folder (with state.json) nor a run directory with checkpoints",
                model.display()
            )
        })?;
        (model.to_path_buf(), ckpt)
    };
    let cfg = TrainConfig::from_file(&run_dir.join("config.toml"))?;
    Ok((ckpt, cfg))
}

/// Generation settings for `arlrr eval` on a plain model file (a trained run brings its own).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
}

/// The policy behind `--model`: a run directory or checkpoint folder (policy config from the
/// run's `config.toml`, weights from the checkpoint), or with the `transformer` feature a
/// `.gguf` file / HF folder as it is. Returns the policy and the run's class spec.
/// Whether `--model` names a run directory or one of its checkpoint folders (not a model
/// file or folder as it is).
fn is_run(model: &Path) -> bool {
    model.join("state.json").exists() || model.join("config.toml").exists()
}

pub fn load_model(
    model: &Path,
    opts: &ModelOptions,
) -> Result<(Box<dyn Policy>, rubric::ClassSpec)> {
    if !is_run(model) {
        #[cfg(feature = "transformer")]
        {
            let cfg = crate::lm_actor::TransformerConfig {
                model: model.to_path_buf(),
                max_new_tokens: opts.max_new_tokens,
                temperature: opts.temperature,
                lora: None,
                init_seed: 0,
                share_prompt: false,
                sample_precision: policy::Precision::F32,
                train_precision: policy::Precision::F32,
            };
            let policy = crate::lm_actor::TransformerPolicy::new(cfg)?;
            return Ok((Box::new(policy), rubric::ClassSpec::default()));
        }
    }
    let _ = opts;
    let (ckpt, cfg) = resolve_model(model)?;
    let mut policy = crate::build_policy(&cfg.policy)?;
    policy.load(&ckpt.join("policy.safetensors"))?;
    Ok((policy, cfg.data.classes))
}

/// `arlrr eval`: loads a policy, samples on `data`, grades every criterion.
pub fn evaluate_model(
    model: &Path,
    opts: &ModelOptions,
    data: &Path,
    judge: &crate::JudgeSection,
    samples: usize,
    seed: u64,
) -> Result<EvalReport> {
    anyhow::ensure!(
        samples > 0,
        "--samples: must be at least 1 (responses sampled per example), got 0"
    );
    let dataset = rubric::load(data)?;
    let (mut policy, class_spec) = load_model(model, opts)?;
    let max_new = if is_run(model) {
        "the run's `policy.max_new_tokens` (its config.toml)"
    } else {
        "`--max-new-tokens`"
    };
    check_prompt_lengths(&*policy, &dataset, max_new)?;
    let classes = rubric::MetaClasses::new(&class_spec, &[&dataset])?;
    let assignment = classes.assign(&dataset)?;
    let set = EvalSet {
        examples: dataset.examples.iter().collect(),
        class_of: assignment.iter().map(Vec::as_slice).collect(),
        class_names: &classes.names,
    };
    let judge_impl = crate::build_judge(judge)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let evaluator = Evaluator {
        judge: &*judge_impl,
        rt: &rt,
        retries: judge.retries,
        samples,
        seed,
        resamples: rubric::score::BOOTSTRAP_RESAMPLES,
        noise: None,
        paired: false,
    };
    evaluator.evaluate(&mut *policy, &set)
}
