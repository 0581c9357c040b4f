//! `arlrr train`: runs (or resumes) a training run with a live progress bar.

use anyhow::{bail, Result};
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
    /// No progress bar (one line per validation instead).
    #[arg(long)]
    pub quiet: bool,
}

/// The default run: the built-in task's splits written into a fresh run directory and
/// `configs/builtin.toml` (compiled in) pointed at them.
pub(crate) fn builtin_config(out: Option<PathBuf>) -> Result<TrainConfig> {
    let mut cfg: TrainConfig = toml::from_str(include_str!("../../../configs/builtin.toml"))?;
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
    // absolute, so the run's resolved config.toml still points at the data on --resume
    let dir = std::path::absolute(&dir)?;
    let data = dir.join("data");
    rubric::builtin::write_splits(rubric::builtin::BuiltinSpec::default(), &data)?;
    cfg.data.train = data.join("train.jsonl");
    cfg.data.val = data.join("validation.jsonl");
    cfg.run.dir = dir;
    Ok(cfg)
}

pub fn run(a: Args) -> Result<()> {
    let mut trainer = match (&a.config, &a.resume) {
        (Some(path), None) => {
            let mut cfg = TrainConfig::from_file(path)?;
            if let Some(out) = &a.out {
                cfg.run.dir = out.clone();
            }
            Trainer::new(cfg.clone(), Parts::from_config(&cfg)?)?
        }
        (None, Some(dir)) => Trainer::resume(dir)?,
        (None, None) => {
            let cfg = builtin_config(a.out.clone())?;
            eprintln!(
                "built-in task, config configs/builtin.toml, run {}",
                cfg.run.dir.display()
            );
            Trainer::new(cfg.clone(), Parts::from_config(&cfg)?)?
        }
        _ => bail!("give --config FILE.toml (a new run) or --resume RUN_DIR"),
    };
    let total = trainer.config.run.steps;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .expect("a valid template"),
    );
    bar.set_position(trainer.state.step);
    let mut last_val = None;
    trainer.run(|m| {
        bar.set_position(m.step);
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
        bar.set_message(format!(
            "{} r={:.3} val={} zero-spread={:.2} judge={}",
            m.active_class.as_deref().unwrap_or("-"),
            m.overall.mean.unwrap_or(f64::NAN),
            last_val.map_or("-".into(), |v: f64| format!("{v:.3}")),
            m.zero_spread_share,
            m.judge.verdicts,
        ));
    })?;
    bar.finish();
    let dir = trainer.run_dir.display();
    println!("run directory {dir}\nreport        {dir}/report.md");
    Ok(())
}
