//! `arlrr train`: runs (or resumes) a training run with a live progress bar.

use anyhow::{bail, Context, Result};
use arl::{Parts, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML); every field is documented in configs/example.toml.
    #[arg(long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint, exactly.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write the run here instead of the config's `run.dir`.
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Start over in a run folder left by a run stopped before its first checkpoint (its
    /// run files are replaced; a folder with a checkpoint is refused: resume it instead).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// No progress bar (one line per validation instead).
    #[arg(long)]
    pub quiet: bool,
    /// Override `run.steps` (e.g. a quick smoke run of a config).
    #[arg(long, conflicts_with = "resume")]
    pub steps: Option<u64>,
    /// Override `run.verdict_budget`: stop once this many judge verdicts are spent on
    /// training and selection (`run.steps` stays the most steps the run may take).
    #[arg(long, conflicts_with = "resume")]
    pub verdict_budget: Option<u64>,
    /// Override `warm_start.steps`, the supervised fine-tuning steps of the warm start.
    #[arg(long, conflicts_with = "resume")]
    pub sft_steps: Option<u64>,
    /// Write no TensorBoard scalars (`log.tensorboard = false`; by default every run writes
    /// its metrics.jsonl lines to RUN_DIR/tensorboard/ as well).
    #[arg(long, conflicts_with = "resume")]
    pub no_tensorboard: bool,
    /// Override `[judge]`: a kind (`rules`, `embedding`) or a judge config file (e.g.
    /// configs/judges/embedding.toml; its paths are relative to it).
    #[arg(long, conflicts_with = "resume")]
    pub judge: Option<String>,
}

/// The compiled-in default config (`configs/builtin.toml`): the tiny transformer, warm-started
/// by supervised fine-tuning, on the built-in task.
pub(crate) const BUILTIN: &str = include_str!("../../../configs/builtin.toml");
/// The categorical phrase policy on the built-in task (`configs/builtin-categorical.toml`):
/// seconds instead of minutes; `arlrr compare`'s default.
pub(crate) const BUILTIN_CATEGORICAL: &str =
    include_str!("../../../configs/builtin-categorical.toml");

/// A compiled-in built-in config (`data.builtin = true`) with its run directory: `out`, or
/// the config's `run.dir` numbered so an earlier run is never overwritten. The splits are
/// written by [`arl::setup::prepare`].
pub(crate) fn builtin_config(text: &str, out: Option<PathBuf>) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::from_toml(text)?;
    let dir = match out {
        Some(d) => d,
        None => {
            // never overwrite an earlier run: runs/builtin, runs/builtin-2, ...
            let base = cfg.run.dir.clone();
            let mut d = base.clone();
            let mut n = 1;
            while d.exists() {
                n += 1;
                d = PathBuf::from(format!("{}-{n}", base.display()));
            }
            d
        }
    };
    cfg.run.dir = dir;
    Ok(cfg)
}

/// Writes the built-in data and builds (or reuses) the warm start, with a progress bar.
pub(crate) fn prepare(cfg: &mut TrainConfig, quiet: bool) -> Result<()> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("warm start {bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .expect("a valid template"),
    );
    let mut built = false;
    arl::setup::prepare(cfg, |p| {
        built = true;
        match p {
            arl::sft::Progress::Tokenizer => bar.set_message("training the tokenizer"),
            arl::sft::Progress::Step { step, total, loss } => {
                bar.set_length(total);
                bar.set_position(step);
                bar.set_message(format!("supervised fine-tuning, loss {loss:.3}"));
            }
        }
    })?;
    bar.finish_and_clear();
    if let (Some(_), arl::PolicyConfig::Transformer(t)) = (&cfg.warm_start, &cfg.policy) {
        let how = if built { "built" } else { "cached" };
        eprintln!("warm start ({how}): {}", t.model.display());
    }
    Ok(())
}

/// A new run's trainer: checks the config (`origin` names it in errors), builds the judge,
/// writes the data and the warm start, loads the policy.
pub(crate) fn start(cfg: &mut TrainConfig, origin: &str, quiet: bool) -> Result<Trainer> {
    // everything that can refuse the run is checked before `prepare` writes data/
    cfg.validate().context(origin.to_string())?;
    arl::trainer::ensure_new_run(&cfg.run.dir)?;
    let judge = arl::build_judge(&cfg.judge).context(origin.to_string())?;
    prepare(cfg, quiet)?;
    let parts = Parts::with_judge(cfg, judge)?;
    // a `[judge.noise.classes]` name is checked against the classes here
    Trainer::new(cfg.clone(), parts).context(origin.to_string())
}

pub fn run(a: Args) -> Result<()> {
    let origin = match &a.config {
        Some(path) => path.display().to_string(),
        None => "configs/builtin.toml (built in)".to_string(),
    };
    let mut cfg = match (&a.config, &a.resume) {
        (Some(path), None) => {
            let mut cfg = TrainConfig::from_file(path)?;
            if let Some(out) = &a.out {
                cfg.run.dir = out.clone();
            }
            Some(cfg)
        }
        (None, Some(_)) => None,
        (None, None) => {
            let cfg = builtin_config(BUILTIN, a.out.clone())?;
            eprintln!(
                "built-in task, config configs/builtin.toml, run {}",
                cfg.run.dir.display()
            );
            Some(cfg)
        }
        _ => bail!("give --config FILE.toml (a new run) or --resume RUN_DIR"),
    };
    let mut trainer = match (&mut cfg, &a.resume) {
        (Some(cfg), _) => {
            if let Some(s) = a.steps {
                cfg.run.steps = s;
            }
            if let Some(b) = a.verdict_budget {
                cfg.run.verdict_budget = b;
            }
            if let (Some(s), Some(w)) = (a.sft_steps, &mut cfg.warm_start) {
                w.steps = s;
            }
            if a.no_tensorboard {
                cfg.log.tensorboard = false;
            }
            if let Some(j) = &a.judge {
                cfg.judge = arl::config::JudgeSection::parse_arg(j)?;
            }
            if a.overwrite {
                // a config that cannot run is refused before the old run's files go
                cfg.validate().context(origin.clone())?;
                arl::trainer::discard_unstarted_run(&cfg.run.dir)?;
            }
            start(cfg, &origin, a.quiet)?
        }
        (None, Some(dir)) => Trainer::resume(dir)?,
        (None, None) => unreachable!("a config or a run to resume"),
    };
    // with a verdict budget the bar counts verdicts, else steps
    let budget = trainer.config.run.verdict_budget;
    let (total, at) = match budget {
        0 => (trainer.config.run.steps, trainer.state.step),
        b => (b, trainer.verdicts_spent().min(b)),
    };
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .expect("a valid template"),
    );
    bar.set_position(at);
    let mut last_val = None;
    let mut spent = at;
    let finished = trainer.run(|m| {
        spent += m.train_verdicts;
        bar.set_position(if budget > 0 {
            spent.min(budget)
        } else {
            m.step
        });
        if let Some(v) = &m.val {
            last_val = Some(v.overall.score);
            if a.quiet {
                eprintln!(
                    "step {} val overall {:.3} ± {:.3}",
                    m.step, v.overall.score, v.overall.std
                );
            }
        }
        if m.update.nonfinite_skips > 0 {
            bar.println(format!(
                "step {}: non-finite loss or gradient, update skipped",
                m.step
            ));
        }
        let at_step = if budget > 0 {
            format!("step {} ", m.step)
        } else {
            String::new()
        };
        bar.set_message(format!(
            "{at_step}{} r={:.3} val={} zero-spread={:.2} judge={}",
            m.active_class.as_deref().unwrap_or("-"),
            m.overall.mean.unwrap_or(f64::NAN),
            last_val.map_or("-".into(), |v: f64| format!("{v:.3}")),
            m.zero_spread_share,
            m.judge.verdicts,
        ));
    })?;
    lab::report::write_run(&finished)?;
    bar.finish();
    if let Some((f1, verdicts)) = trainer.judge_noise_f1() {
        let f1 = f1.map_or("-".into(), |f| format!("{f:.3}"));
        outln!("judge noise   macro F1 {f1} of {verdicts:.0} noisy training verdicts against the clean judge")?;
    }
    let dir = trainer.run_dir.display();
    outln!("run directory {dir}\nreport        {dir}/report.md")?;
    Ok(())
}
