//! `Model`: config + tokenizer + weights, loaded from a `.gguf` file or an HF folder, saved as
//! an HF folder (in f32, bf16 or f16, sharded above a size as transformers shards); LoRA
//! adapters saved and loaded as PEFT folders; plus chat conveniences for servers and the CLI.

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

    /// Writes an HF folder in f32: `model.safetensors`, `config.json`, `tokenizer.json`,
    /// `tokenizer_config.json`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_with(dir, &SaveOptions::default())
    }

    /// Writes an HF folder with the weights in `opts.dtype`, sharded above
    /// `opts.max_shard_bytes` (see [`save_hf_with`]), and the tokenizer files.
    pub fn save_with(&self, dir: impl AsRef<Path>, opts: &SaveOptions) -> Result<()> {
        save_hf_with(&self.transformer, dir.as_ref(), opts)?;
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

/// How [`save_hf_with`] writes the weights of an HF folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOptions {
    /// The dtype on disk: f32, bf16 or f16 (rounded to nearest even from the f32 weights).
    pub dtype: DType,
    /// A model larger than this many bytes (in `dtype`) is written in shards,
    /// `model-00001-of-0000K.safetensors` + `model.safetensors.index.json`, split as
    /// transformers splits them: tensors in order, a new shard when the next would pass the
    /// limit, a tensor larger than the limit alone in its shard.
    pub max_shard_bytes: u64,
}

/// The shard size of [`SaveOptions::default`]: 5 GB, the size of most sharded models on the
/// Hugging Face hub (transformers 4's default).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

impl Default for SaveOptions {
    /// f32 (what arlrr computes in: the weights exactly), shards of 5 GB.
    fn default() -> Self {
        SaveOptions {
            dtype: DType::F32,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }
}

/// The `config.json` name of a weight dtype (`float32`, `bfloat16`, `float16`).
pub fn hf_dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => {
            return Err(Error::Unsupported(format!(
                "weights in {other:?} (use f32, bf16 or f16)"
            )))
        }
    })
}

/// Parses a weight dtype: `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" | "fp16" | "half" => DType::F16,
        other => {
            return Err(Error::Invalid(format!(
                "dtype `{other}` (use f32, bf16 or f16)"
            )))
        }
    })
}

/// Parses a size as transformers' `max_shard_size` reads it: `5GB`, `500MB`, `20KB`, `1TB`
/// (powers of 1000), also `GiB`/`MiB`/`KiB` (powers of 1024) or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = || Error::Invalid(format!("size `{s}` (use e.g. 5GB, 500MB, 20KB or bytes)"));
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The dtype the weights of a model path are stored in, where it says: an HF folder's
/// `config.json` `dtype` (transformers 5) or `torch_dtype`. `None` for a GGUF file (quantized
/// or not, it has no one float dtype to keep) or a folder whose config names none.
pub fn stored_dtype(path: &Path) -> Result<Option<DType>> {
    if !path.is_dir() {
        return Ok(None);
    }
    let cp = path.join("config.json");
    let text = std::fs::read_to_string(&cp).map_err(|e| Error::io(&cp, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not JSON: {e}", cp.display())))?;
    let name = ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|d| d.as_str()));
    match name {
        None | Some("auto") => Ok(None),
        Some(n) => parse_dtype(n)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("{}: field `dtype`: {e}", cp.display()))),
    }
}

/// Writes `model.safetensors` (HF names; tied output weights stored once, as HF does) and
/// `config.json`, in f32.
pub fn save_hf(model: &Transformer, dir: &Path) -> Result<()> {
    save_hf_with(model, dir, &SaveOptions::default())
}

/// Writes the base weights of `model` (HF names, tied output weights once; LoRA adapters are
/// not base weights: merge them first with `Transformer::merge_lora`, or save them with
/// [`save_lora`]) in `opts.dtype`, in one `model.safetensors` or in shards with an index
/// ([`SaveOptions::max_shard_bytes`]), and `config.json` with that `dtype`. Weight files of
/// an earlier save in `dir` are removed first, so the folder holds one set.
pub fn save_hf_with(model: &Transformer, dir: &Path, opts: &SaveOptions) -> Result<()> {
    let dtype_name = hf_dtype_name(opts.dtype)?;
    let tensors = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().detach().to_dtype(opts.dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_weights(dir, tensors, opts.max_shard_bytes)?;
    let cp = dir.join("config.json");
    std::fs::write(&cp, model.cfg.to_hf_json_as(dtype_name)).map_err(|e| Error::io(&cp, e))
}

/// The weight files of an HF folder: `model.safetensors`, the index, its shards.
fn is_weight_file(name: &str) -> bool {
    if name == "model.safetensors" || name == "model.safetensors.index.json" {
        return true;
    }
    // model-00001-of-00003.safetensors
    let Some(mid) = name
        .strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let parts: Vec<&str> = mid.split("-of-").collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| p.len() == 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes `tensors` (in this order) as `model.safetensors`, or, above `max_shard_bytes`, as
/// numbered shards and `model.safetensors.index.json` (`metadata.total_size` in bytes,
/// `weight_map`): the split of huggingface_hub's `split_torch_state_dict_into_shards`.
fn write_weights(dir: &Path, tensors: Vec<(String, Tensor)>, max_shard_bytes: u64) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_file() && is_weight_file(name) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let mut shards: Vec<Vec<(String, Tensor)>> = Vec::new();
    let (mut current, mut current_bytes, mut total) = (Vec::new(), 0u64, 0u64);
    for (name, t) in tensors {
        let size = bytes(&t);
        total += size;
        if size > max_shard_bytes {
            shards.push(vec![(name, t)]);
            continue;
        }
        if current_bytes + size > max_shard_bytes && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push((name, t));
        current_bytes += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    let save = |file: &str, shard: Vec<(String, Tensor)>| -> Result<()> {
        let path = dir.join(file);
        let map: HashMap<String, Tensor> = shard.into_iter().collect();
        candle_core::safetensors::save(&map, &path)
            .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
    };
    if shards.len() <= 1 {
        return save("model.safetensors", shards.pop().unwrap_or_default());
    }
    let k = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{k:05}.safetensors", i + 1);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
        save(&file, shard)?;
    }
    let mut sorted: Vec<_> = weight_map.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": serde_json::Map::from_iter(sorted),
    });
    let ip = dir.join("model.safetensors.index.json");
    std::fs::write(&ip, serde_json::to_string_pretty(&index)?).map_err(|e| Error::io(&ip, e))
}

/// Loads a transformer saved by `save_hf` (no tokenizer needed).
pub fn load_hf(dir: &Path, dtype: DType, device: &Device) -> Result<Transformer> {
    let (cfg, tensors) = read_hf_weights(dir, device)?;
    Transformer::from_tensors(&cfg, tensors, dtype, device)
}

/// Saves the adapters of `model` as a PEFT adapter folder: `dir/adapter_model.safetensors`
/// (PEFT names, f32) and `dir/adapter_config.json` whose `base_model_name_or_path` is
/// `base_model`, the HF folder (or hub id) the adapters were trained on, so
/// `AutoPeftModelForCausalLM.from_pretrained(dir)` finds it.
pub fn save_lora(
    model: &Transformer,
    cfg: &LoraConfig,
    base_model: &str,
    dir: impl AsRef<Path>,
) -> Result<()> {
    write_adapters(model.lora_vars(), cfg, base_model, dir.as_ref())
}

/// Reads a PEFT adapter folder (written by `save_lora`, a LoRA run's checkpoint, or peft's
/// `save_pretrained` for a plain LoRA on the projections arlrr models), adds fresh adapters
/// to `model` with its config and sets their values. Returns the config. Every tensor of the
/// folder must be one of the adapters: a file with more would change the model in ways this
/// one cannot.
pub fn load_lora(model: &mut Transformer, dir: impl AsRef<Path>) -> Result<LoraConfig> {
    let dir = dir.as_ref();
    let (cfg, tensors) = read_adapters(dir, model.device())?;
    model.remove_lora();
    model.add_lora(&cfg, 0)?;
    let known: std::collections::HashSet<String> =
        model.lora_vars().into_iter().map(|(n, _)| n).collect();
    let mut extra: Vec<&String> = tensors.keys().filter(|n| !known.contains(*n)).collect();
    extra.sort();
    if let Some(name) = extra.first() {
        model.remove_lora();
        return Err(Error::Invalid(format!(
            "{}: tensor `{name}` is not an adapter of this model's {:?} projections ({} such \
             tensors)",
            dir.join("adapter_model.safetensors").display(),
            cfg.targets,
            extra.len()
        )));
    }
    model
        .set_lora_tensors(&tensors)
        .inspect_err(|_| model.remove_lora())?;
    Ok(cfg)
}
