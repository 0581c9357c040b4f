//! `arlrr generate`: a quick look at a model. Loads a `.gguf` file or HF folder, wraps the
//! prompt in the chat template (unless `--raw`) and streams the sampled tokens to stdout.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A `.gguf` file or an HF folder (config.json, *.safetensors, tokenizer.json); default:
    /// the `--lora` adapter's base (`base_model_name_or_path`, when it is a local folder),
    /// else the fetched SmolLM2-135M-Instruct GGUF.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The user message (or the raw text with `--raw`).
    #[arg(long)]
    prompt: String,
    /// Optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The matmul weights decoding reads: `f32` (the model's own), `bf16` (rounded), `int8`
    /// (8-bit blocks of 32 with a step and a minimum each: 1.25 bytes per weight against
    /// f32's 4) or `int4` (4-bit blocks, 0.75 bytes: GGUF Q4_1's own grid, exact for a Q4_1
    /// model, coarser than int8 for any other; the fastest at small batches).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: policy::Precision,
    /// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`)
    /// applied on top of the model: a LoRA run's checkpoint folder, a run directory (its
    /// latest checkpoint), the `adapter/` of an unmerged `arlrr export`, or a plain LoRA
    /// that peft saved.
    #[arg(long)]
    lora: Option<PathBuf>,
}

pub(crate) fn parse_precision(s: &str) -> Result<policy::Precision, String> {
    policy::Precision::parse(s).map_err(|e| e.to_string())
}

/// The adapter folder behind `--lora`: the folder itself, or a run directory's latest
/// checkpoint.
fn adapter_folder(lora: &std::path::Path) -> Result<PathBuf> {
    if lora.join("adapter_config.json").exists() {
        return Ok(lora.to_path_buf());
    }
    if let Some((ckpt, _)) = arl::checkpoint::latest(lora)? {
        anyhow::ensure!(
            ckpt.join("adapter_config.json").exists(),
            "--lora {}: its latest checkpoint {} has no adapter_config.json (a full \
             fine-tune, or a LoRA run checkpointed before arlrr wrote PEFT adapters: use \
             `arlrr eval --model` or `arlrr export`)",
            lora.display(),
            ckpt.display()
        );
        return Ok(ckpt);
    }
    anyhow::bail!(
        "--lora {}: no adapter_config.json (a PEFT adapter folder, a LoRA checkpoint folder or \
         a run directory with checkpoints)",
        lora.display()
    )
}

pub fn run(a: Args) -> Result<()> {
    let adapter = a.lora.as_deref().map(adapter_folder).transpose()?;
    // the adapter's own base, when it names a local folder
    let named = match &adapter {
        Some(dir) => policy::adapter_base_model(dir)?,
        None => None,
    };
    let adapter_base = named.as_deref().map(PathBuf::from).filter(|p| p.is_dir());
    if let (Some(name), None, None) = (&named, &adapter_base, &a.model) {
        eprintln!(
            "note: the adapter's base_model_name_or_path `{name}` is not a local folder; \
             applying it to the default model (name the base with --model)"
        );
    }
    let path = match (a.model, adapter_base) {
        (Some(p), _) => p,
        (None, Some(base)) => {
            eprintln!(
                "base model: {} (the adapter's base_model_name_or_path)",
                base.display()
            );
            base
        }
        (None, None) => rubric::assets::smollm2_gguf()
            .map_err(anyhow::Error::msg)
            .context("no --model given and the default SmolLM2 asset could not be fetched")?,
    };
    let mut model =
        policy::Model::load(&path).with_context(|| format!("loading model {}", path.display()))?;
    if let Some(dir) = &adapter {
        policy::load_lora(&mut model.transformer, dir)
            .with_context(|| format!("loading LoRA adapters from {}", dir.display()))?;
    }
    let tok = &model.tokenizer;
    let prompt = if a.raw {
        tok.encode(&a.prompt)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = a.system {
            msgs.push(rubric::Message {
                role: "system".into(),
                content: s,
            });
        }
        msgs.push(rubric::Message {
            role: "user".into(),
            content: a.prompt,
        });
        tok.chat_prompt(&msgs)?
    };
    let mut cfg = model.generation_config(a.max_tokens, a.temperature);
    cfg.top_p = a.top_p;
    cfg.top_k = a.top_k;
    cfg.precision = a.precision;
    let mut rng = policy::seeded_rng(a.seed);
    // Decode the whole completion each time and print the new suffix: a token can end in the
    // middle of a UTF-8 character, which only a later token completes.
    let mut tokens = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let start = std::time::Instant::now();
    policy::generate_with(&model.transformer, &[prompt], &cfg, &mut rng, |_, t| {
        tokens.push(t);
        if let Ok(text) = tok.decode(&tokens, true) {
            if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{FFFD}')
            {
                let _ = stdout.write_all(&text.as_bytes()[printed..]);
                let _ = stdout.flush();
                printed = text.len();
            }
        }
    })?;
    outln!()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "[{} tokens in {secs:.2}s, {:.1} tokens/s]",
        tokens.len(),
        tokens.len() as f64 / secs
    );
    Ok(())
}
