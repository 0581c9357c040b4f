//! `arlrr export`: a trained transformer run as a Hugging Face model folder that transformers
//! (and peft) load. The run's config rebuilds the policy, a checkpoint sets its weights, and
//! `policy`'s HF writer writes them in the chosen dtype, sharded above a size.
//!
//! - Full fine-tuning: the trained weights.
//! - LoRA with `merge`: `W + (alpha/r) B A` folded into each adapted weight (in f32, then
//!   rounded to the dtype once).
//! - LoRA without `merge`: the base weights in the folder and the adapter, in f32, in its
//!   `adapter/` subfolder, a PEFT adapter whose `base_model_name_or_path` is the folder.

use crate::config::{PolicyConfig, TrainConfig};
use crate::lm_actor::TransformerPolicy;
use crate::Policy;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};

/// What `arlrr export` writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// The checkpoint of this step; `None` = the latest.
    pub step: Option<u64>,
    /// Fold LoRA adapters into the weights (no effect on a full fine-tune).
    pub merge: bool,
    /// Weight dtype; `None` = [`auto_dtype`].
    pub dtype: Option<DType>,
    /// Shard above this many bytes ([`policy::SaveOptions::max_shard_bytes`]).
    pub max_shard_bytes: u64,
    /// Write into a folder that is not empty (weight files of an earlier export there are
    /// replaced).
    pub overwrite: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            step: None,
            merge: false,
            dtype: None,
            max_shard_bytes: policy::model::DEFAULT_MAX_SHARD_BYTES,
            overwrite: false,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The checkpoint folder the weights came from.
    pub checkpoint: PathBuf,
    pub step: u64,
    pub dtype: DType,
    /// Weight files (1 = `model.safetensors`, else shards with an index).
    pub weight_files: usize,
    /// The PEFT adapter folder of an unmerged LoRA export.
    pub adapter: Option<PathBuf>,
    /// Whether LoRA adapters were folded into the weights.
    pub merged: bool,
}

/// The dtype `--dtype auto` picks: the one the base model's weights are stored in where it
/// says (an HF folder's `config.json` `dtype`/`torch_dtype`), else bf16 (a GGUF file: its
/// weights are quantized or in a dtype of its own, and bf16 is what models are published in).
pub fn auto_dtype(base: &Path) -> Result<DType> {
    Ok(policy::stored_dtype(base)?.unwrap_or(DType::BF16))
}

/// The checkpoint folder of `run` (a run directory, or one checkpoint folder of it) at `step`
/// (`None`: the latest), with its step and the run's config.
pub fn resolve_checkpoint(run: &Path, step: Option<u64>) -> Result<(PathBuf, u64, TrainConfig)> {
    let (run_dir, ckpt, at) = if run.join("state.json").exists() {
        let at = crate::checkpoint::read_state(run)?.step;
        if let Some(s) = step.filter(|s| *s != at) {
            bail!(
                "{} is the checkpoint of step {at}, not of --step {s}; name the run directory",
                run.display()
            );
        }
        let run_dir = run
            .parent()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        (run_dir, run.to_path_buf(), at)
    } else {
        let all = crate::checkpoint::list(run)?;
        let found = match step {
            None => all.last().cloned(),
            Some(s) => all.iter().find(|(n, _)| *n == s).cloned(),
        };
        let Some((at, ckpt)) = found else {
            if all.is_empty() {
                bail!(
                    "{}: no checkpoints (neither a run directory with checkpoints/step-N nor a \
                     checkpoint folder with state.json)",
                    run.display()
                );
            }
            let steps: Vec<String> = all.iter().map(|(n, _)| n.to_string()).collect();
            bail!(
                "{}: no checkpoint of step {} (steps: {})",
                run.display(),
                step.unwrap_or_default(),
                steps.join(", ")
            );
        };
        (run.to_path_buf(), ckpt, at)
    };
    let cfg = TrainConfig::from_file(&run_dir.join("config.toml"))?;
    Ok((ckpt, at, cfg))
}

/// The run's policy with the weights of its checkpoint (see [`resolve_checkpoint`]).
pub fn load_checkpoint(run: &Path, step: Option<u64>) -> Result<(TransformerPolicy, PathBuf, u64)> {
    let (ckpt, at, cfg) = resolve_checkpoint(run, step)?;
    let PolicyConfig::Transformer(t) = &cfg.policy else {
        bail!(
            "{}: [policy] kind = \"categorical\" has no model to export (only transformer \
             policies do)",
            run.display()
        );
    };
    let mut policy = TransformerPolicy::new(t.clone())?;
    policy.load(&ckpt.join("policy.safetensors"))?;
    Ok((policy, ckpt, at))
}

/// Writes the model of `run`'s checkpoint into `out` as an HF folder (see the module docs).
pub fn export(run: &Path, out: &Path, opts: &ExportOptions) -> Result<Exported> {
    if out.is_file() {
        bail!("--out {}: a file, not a folder", out.display());
    }
    let not_empty = out.is_dir()
        && std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some();
    if not_empty && !opts.overwrite {
        bail!(
            "--out {}: the folder is not empty (pass --overwrite to write over it)",
            out.display()
        );
    }
    let (mut policy, checkpoint, step) = load_checkpoint(run, opts.step)?;
    let base = policy.base_path().to_path_buf();
    let out_abs = std::path::absolute(out)?;
    if base.is_dir() && same_folder(&base, &out_abs) {
        bail!(
            "--out {}: the run's base model folder; export elsewhere",
            out.display()
        );
    }
    let dtype = match opts.dtype {
        Some(d) => d,
        None => auto_dtype(&base)?,
    };
    let save = policy::SaveOptions {
        dtype,
        max_shard_bytes: opts.max_shard_bytes,
    };
    let adapter_dir = out_abs.join("adapter");
    let lora = policy.lora_config().cloned();
    let merged = lora.is_some() && opts.merge;
    if merged {
        policy.model.transformer.merge_lora()?;
    }
    std::fs::create_dir_all(&out_abs).with_context(|| format!("creating {}", out.display()))?;
    // the base weights (adapters, when not merged, are not among them)
    policy
        .model
        .save_with(&out_abs, &save)
        .with_context(|| format!("writing the model into {}", out.display()))?;
    // an adapter of an earlier export that this one does not replace would describe another
    // model
    if adapter_dir.join("adapter_config.json").exists() {
        std::fs::remove_dir_all(&adapter_dir)
            .with_context(|| format!("removing {}", adapter_dir.display()))?;
    }
    let adapter = match (&lora, merged) {
        (Some(lcfg), false) => {
            policy::save_lora(
                &policy.model.transformer,
                lcfg,
                &out_abs.to_string_lossy(),
                &adapter_dir,
            )?;
            Some(adapter_dir)
        }
        _ => None,
    };
    let weight_files = if out_abs.join("model.safetensors").exists() {
        1
    } else {
        let index = out_abs.join("model.safetensors.index.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
        let mut files: Vec<&str> = v["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|f| f.as_str()).collect())
            .unwrap_or_default();
        files.sort();
        files.dedup();
        files.len()
    };
    Ok(Exported {
        checkpoint,
        step,
        dtype,
        weight_files,
        adapter,
        merged,
    })
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
