//! `arlrr sft`: builds a warm start (the tiny transformer from scratch, or `warm_start.base`
//! such as SmolLM2, fine-tuned on the built-in task) into
//! a folder, from a run config's `[warm_start]` section.

use anyhow::{Context, Result};
use arl::TrainConfig;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run config whose `[warm_start]` section to build; default: configs/builtin.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder (an HF model folder: model.safetensors, config.json, tokenizer.json,
    /// plus sft.jsonl and warm_start.toml); load it with `[policy] model = "DIR"`.
    #[arg(long)]
    pub out: PathBuf,
    /// Override `warm_start.steps`.
    #[arg(long)]
    pub steps: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = match &a.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::from_toml(crate::cmd_train::BUILTIN)?,
    };
    let mut ws = cfg
        .warm_start
        .context("the config has no [warm_start] section")?;
    if let Some(s) = a.steps {
        ws.steps = s;
    }
    let bar = ProgressBar::new(ws.steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .expect("a valid template"),
    );
    arl::sft::build(&ws, &a.out, |p| match p {
        arl::sft::Progress::Tokenizer => bar.set_message("training the tokenizer"),
        arl::sft::Progress::Step { step, loss, .. } => {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.3}"));
        }
    })?;
    bar.finish();
    outln!("warm start {}", a.out.display())?;
    Ok(())
}
