//! `Model`: config + tokenizer + weights, loaded from a `.gguf` file or an HF folder, saved as
//! an HF folder; LoRA adapters saved and loaded as PEFT folders; plus chat conveniences for
//! servers and the CLI.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::generate::{generate_with, Generation, GenerationConfig};
use crate::gguf::read_gguf;
use crate::lora::{read_adapters, write_adapters, LoraConfig};
use crate::tokenizer::Tokenizer;
use crate::transformer::Transformer;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rubric::Message;
use std::collections::HashMap;
use std::path::Path;

pub struct Model {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub transformer: Transformer,
}

impl Model {
    /// Loads in f32 on the CPU. `path` is a `.gguf` file (weights dequantized at load) or a
    /// folder with `config.json`, `*.safetensors` and `tokenizer.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, DType::F32, &Device::Cpu)
    }

    /// A model without a chat template of its own gets ChatML, and the load says so.
    pub fn load_with(path: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let model = Self::read(path, dtype, device)?;
        if model.tokenizer.chat_template.is_fallback() {
            eprintln!(
                "note: {} has no chat template (tokenizer_config.json `chat_template`, \
                 chat_template.jinja or GGUF `tokenizer.chat_template`): prompts are written as \
                 ChatML",
                path.display()
            );
        }
        Ok(model)
    }

    fn read(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if path.is_dir() {
            let (config, tensors) = read_hf_weights(path, device)?;
            let tokenizer = Tokenizer::from_hf_dir(path)?;
            let transformer = Transformer::from_tensors(&config, tensors, dtype, device)?;
            Ok(Model {
                config,
                tokenizer,
                transformer,
            })
        } else if path.is_file() {
            let g = read_gguf(path, device)?;
            let tokenizer = Tokenizer::from_gguf_metadata(&g.metadata)?;
            let transformer = Transformer::from_tensors(&g.config, g.tensors, dtype, device)?;
            Ok(Model {
                config: g.config,
                tokenizer,
                transformer,
            })
        } else {
            Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model file or folder (expected a .gguf file or an HF folder)",
                ),
            ))
        }
    }

    /// Writes an HF folder: `model.safetensors`, `config.json`, `tokenizer.json`,
    /// `tokenizer_config.json`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_hf(&self.transformer, dir.as_ref())?;
        self.tokenizer.save_hf(dir)
    }

    /// Generation config with this tokenizer's stop tokens.
    pub fn generation_config(&self, max_new_tokens: usize, temperature: f64) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens,
            temperature,
            stop_ids: self.tokenizer.stop_ids.clone(),
            ..GenerationConfig::default()
        }
    }

    /// Answers a conversation: the chat template's prompt, sample up to `max_tokens`, decode
    /// without special tokens. `seed` makes sampling reproducible.
    pub fn chat(
        &self,
        messages: &[Message],
        max_tokens: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<String> {
        let mut out = self.chat_batch(&[messages.to_vec()], max_tokens, temperature, seed)?;
        Ok(out.pop().expect("one answer").0)
    }

    /// Answers several conversations in one batch; returns (text, generation) per conversation.
    pub fn chat_batch(
        &self,
        conversations: &[Vec<Message>],
        max_tokens: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<Vec<(String, Generation)>> {
        let prompts = conversations
            .iter()
            .map(|m| self.tokenizer.chat_prompt(m))
            .collect::<Result<Vec<_>>>()?;
        let cfg = self.generation_config(max_tokens, temperature);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let gens = generate_with(&self.transformer, &prompts, &cfg, &mut rng, |_, _| {})?;
        gens.into_iter()
            .map(|g| Ok((self.tokenizer.decode(&g.tokens, true)?, g)))
            .collect()
    }
}

/// Reads `config.json` and every weight from `model.safetensors` or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_hf_weights(dir: &Path, device: &Device) -> Result<(Config, HashMap<String, Tensor>)> {
    let cp = dir.join("config.json");
    let text = std::fs::read_to_string(&cp).map_err(|e| Error::io(&cp, e))?;
    let config = Config::from_hf_json(&text)?;
    let single = dir.join("model.safetensors");
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else {
        let ip = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&ip).map_err(|e| Error::io(&ip, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let mut names: Vec<String> = v["weight_map"]
            .as_object()
            .ok_or_else(|| Error::Invalid(format!("{}: no weight_map", ip.display())))?
            .values()
            .filter_map(|x| x.as_str().map(String::from))
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| dir.join(n)).collect()
    };
    let mut tensors = HashMap::new();
    for f in files {
        let t = candle_core::safetensors::load(&f, device)
            .map_err(|e| Error::Invalid(format!("{}: {e}", f.display())))?;
        tensors.extend(t);
    }
    if config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    Ok((config, tensors))
}

/// Writes `model.safetensors` (HF names; tied output weights stored once, as HF does) and
/// `config.json`.
pub fn save_hf(model: &Transformer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let map: HashMap<String, Tensor> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    let cp = dir.join("config.json");
    std::fs::write(&cp, model.cfg.to_hf_json()).map_err(|e| Error::io(&cp, e))
}

/// Loads a transformer saved by `save_hf` (no tokenizer needed).
pub fn load_hf(dir: &Path, dtype: DType, device: &Device) -> Result<Transformer> {
    let (cfg, tensors) = read_hf_weights(dir, device)?;
    Transformer::from_tensors(&cfg, tensors, dtype, device)
}

/// Saves the adapters of `model` to `dir/adapter_model.safetensors` + `dir/adapter_config.json`
/// (PEFT layout and names).
pub fn save_lora(model: &Transformer, cfg: &LoraConfig, dir: impl AsRef<Path>) -> Result<()> {
    write_adapters(model.lora_vars(), cfg, dir.as_ref())
}

/// Reads an adapter folder written by `save_lora`, adds fresh adapters to `model` with the
/// saved config and sets their values. Returns the config.
pub fn load_lora(model: &mut Transformer, dir: impl AsRef<Path>) -> Result<LoraConfig> {
    let (cfg, tensors) = read_adapters(dir.as_ref(), model.device())?;
    model.remove_lora();
    model.add_lora(&cfg, 0)?;
    model.set_lora_tensors(&tensors)?;
    Ok(cfg)
}
