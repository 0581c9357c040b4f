//! `arlrr export`: a trained run's checkpoint as a Hugging Face model folder (config.json,
//! tokenizer files, weights in bf16/f32/f16, sharded with an index above a size); a LoRA run's
//! adapters merged into the weights or written beside the base as a PEFT adapter.

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its latest checkpoint, or `--step`) or one checkpoint folder.
    #[arg(long)]
    run: PathBuf,
    /// The folder to write (created; must be empty unless `--overwrite`).
    #[arg(long)]
    out: PathBuf,
    /// The checkpoint of this step instead of the latest.
    #[arg(long)]
    step: Option<u64>,
    /// LoRA runs: fold the adapters into the weights (W + alpha/r · B A). Without it the
    /// folder holds the base weights and `adapter/`, a PEFT adapter over them.
    #[arg(long)]
    merge: bool,
    /// Weight dtype: bf16, f32, f16, or auto (the base model's dtype for an HF folder, bf16
    /// for a GGUF file).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Write the weights in shards of at most this size (`5GB`, `500MB`, `20KB`, bytes), with
    /// `model.safetensors.index.json`, when they are larger.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Write into a folder that is not empty.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "auto" => None,
        d => Some(policy::parse_dtype(d).map_err(|e| anyhow::anyhow!("--dtype: {e}"))?),
    };
    let max_shard_bytes = policy::parse_size(&a.max_shard_size)
        .map_err(|e| anyhow::anyhow!("--max-shard-size: {e}"))?;
    let opts = arl::export::ExportOptions {
        step: a.step,
        merge: a.merge,
        dtype,
        max_shard_bytes,
        overwrite: a.overwrite,
    };
    let done = arl::export::export(&a.run, &a.out, &opts)?;
    let files = match done.weight_files {
        1 => "model.safetensors".to_string(),
        k => format!("{k} shards + model.safetensors.index.json"),
    };
    outln!(
        "wrote {} (step {} from {}): {} weights in {files}{}",
        a.out.display(),
        done.step,
        done.checkpoint.display(),
        policy::model::hf_dtype_name(done.dtype)?,
        if done.merged { ", LoRA merged" } else { "" }
    )?;
    if let Some(adapter) = &done.adapter {
        outln!("PEFT adapter (f32) over that base: {}", adapter.display())?;
    }
    Ok(())
}
