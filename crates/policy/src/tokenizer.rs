//! Tokenizer: HF `tokenizer.json` through the `tokenizers` crate, or the same object rebuilt
//! from GGUF metadata (GPT-2 style byte-level BPE), plus the model's own chat template
//! (`chat_template`).

use crate::chat_template::{ChatTemplate, SpecialTokens};
use crate::error::{Error, Result};
use crate::gguf::md;
use candle_core::quantized::gguf_file::Value;
use rubric::Message;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// The Qwen2 pre-tokenizer regex (llama.cpp `qwen2` pre-type; HF Qwen2 tokenizer.json).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token that ends an assistant turn / the sequence.
    pub eos_id: u32,
    pub bos_id: Option<u32>,
    /// Every token at which generation should stop (eos, `<|im_end|>`, `<|endoftext|>`).
    pub stop_ids: Vec<u32>,
    /// The model's own chat template (ChatML where it has none: `is_fallback`).
    pub chat_template: ChatTemplate,
    /// The special tokens the template sees (`bos_token`, `eos_token`, ...).
    specials: SpecialTokens,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos_id", &self.eos_id)
            .field("stop_ids", &self.stop_ids)
            .field("chat_template", &self.chat_template)
            .finish()
    }
}

impl Tokenizer {
    /// Wraps an HF tokenizer; `eos` names the end token (else `<|im_end|>`, `<|endoftext|>`,
    /// `</s>` are tried in that order); `chat_template` is the model's Jinja template (ChatML
    /// when `None`, marked as the fallback). A template that does not compile is an error
    /// naming its line.
    pub fn from_hf(
        inner: tokenizers::Tokenizer,
        eos: Option<&str>,
        chat_template: Option<&str>,
    ) -> Result<Self> {
        let find = |s: &str| inner.token_to_id(s);
        let eos_id = eos
            .and_then(find)
            .or_else(|| find("<|im_end|>"))
            .or_else(|| find("<|endoftext|>"))
            .or_else(|| find("</s>"))
            .ok_or_else(|| Error::Tokenizer("cannot determine the end-of-sequence token".into()))?;
        let mut stop_ids = vec![eos_id];
        for s in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = find(s) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let chat_template = match chat_template {
            Some(t) => ChatTemplate::new(t)?,
            None => ChatTemplate::chatml(),
        };
        let mut specials = SpecialTokens::new();
        if let Some(t) = inner.id_to_token(eos_id) {
            specials.insert("eos_token", t);
        }
        Ok(Tokenizer {
            eos_id,
            bos_id: None,
            stop_ids,
            chat_template,
            specials,
            inner,
        })
    }

    /// Reads `tokenizer.json` (and, if present, `tokenizer_config.json` for the special
    /// tokens and the chat template, or `chat_template.jinja`) from an HF model folder.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tj = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tj.display())))?;
        let tc = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&tc) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", tc.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let template = hf_chat_template(dir, &config)?;
        let eos = token_text(&config["eos_token"]);
        let mut t = Self::from_hf(inner, eos.as_deref(), template.as_deref())
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", dir.display())))?;
        for name in SPECIAL_NAMES {
            if let Some(tok) = token_text(&config[name]) {
                if t.inner.token_to_id(&tok).is_some() {
                    t.set_special_token(name, &tok)?;
                }
            }
        }
        Ok(t)
    }

    /// Rebuilds the tokenizer from GGUF metadata (`tokenizer.ggml.*`): vocabulary, merges,
    /// special tokens (token types 3 = control, 4 = user-defined) and the pre-tokenizer named
    /// by `tokenizer.ggml.pre`.
    pub fn from_gguf_metadata(m: &HashMap<String, Value>) -> Result<Self> {
        let model = md(m, "tokenizer.ggml.model")?.to_string()?;
        if model != "gpt2" {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer model `{model}` (only gpt2-style byte-level BPE is supported)"
            )));
        }
        let tokens: Vec<String> = md(m, "tokenizer.ggml.tokens")?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<candle_core::Result<_>>()?;
        let merges: Vec<(String, String)> = md(m, "tokenizer.ggml.merges")?
            .to_vec()?
            .iter()
            .map(|v| {
                let s = v.to_string()?;
                s.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| candle_core::Error::Msg(format!("bad merge `{s}`")))
            })
            .collect::<candle_core::Result<_>>()?;
        let types: Vec<i32> = match m.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|x| x.to_i32())
                .collect::<candle_core::Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = m
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "default".into());
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = match pre.as_str() {
            "default" | "gpt2" | "gpt-2" => byte_level.into(),
            // SmolLM2 / StarCoder: every digit is its own pre-token, then GPT-2 splitting.
            "smollm" | "starcoder" | "refact" => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            "qwen2" => Sequence::new(vec![
                Split::new(
                    SplitPattern::Regex(QWEN2_REGEX.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .into(),
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
            other => {
                return Err(Error::Unsupported(format!(
                    "GGUF pre-tokenizer `{other}` (supported: default/gpt2, smollm, qwen2)"
                )))
            }
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .filter(|(_, &ty)| ty == 3 || ty == 4)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |k: &str| {
            m.get(k).and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_i32().ok().map(|x| x as u32))
            })
        };
        let template = m
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        let eos_tok = id("tokenizer.ggml.eos_token_id").and_then(|i| tokens.get(i as usize));
        let mut t = Self::from_hf(inner, eos_tok.map(|s| s.as_str()), template.as_deref())
            .map_err(|e| Error::Tokenizer(format!("GGUF `tokenizer.chat_template`: {e}")))?;
        for (name, key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(tok) = id(key).and_then(|i| tokens.get(i as usize)) {
                t.set_special_token(name, tok)?;
            }
        }
        Ok(t)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes text without adding BOS/EOS; special tokens written in the text (such as
    /// `<|im_start|>`) are recognised as single tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        Ok(self.inner.decode(ids, skip_special)?)
    }

    /// The conversation's text through the model's chat template, as HF transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` writes it.
    pub fn chat_text(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.chat_template
            .render(messages, add_generation_prompt, &self.specials)
    }

    /// Token ids of `chat_text(messages, true)`: the prompt a chat model continues (as
    /// `apply_chat_template(..., tokenize=True)`, which adds no further special tokens).
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.chat_text(messages, true)?)
    }

    /// The tokenizer with another chat template.
    pub fn with_chat_template(mut self, template: ChatTemplate) -> Self {
        self.chat_template = template;
        self
    }

    /// Adds tokens that are always matched whole and never split (HF `add_special_tokens`).
    pub fn add_special_tokens(&mut self, tokens: &[&str]) {
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        self.inner.add_special_tokens(&added);
    }

    /// Names the token a template sees as `name` (`bos_token`, `eos_token`, `unk_token`,
    /// `pad_token`); `bos_token` also sets `bos_id`. The token must be in the vocabulary.
    pub fn set_special_token(&mut self, name: &str, token: &str) -> Result<()> {
        let key = SPECIAL_NAMES
            .iter()
            .find(|k| **k == name)
            .ok_or_else(|| Error::Tokenizer(format!("`{name}` is not one of {SPECIAL_NAMES:?}")))?;
        let id = self.inner.token_to_id(token).ok_or_else(|| {
            Error::Tokenizer(format!("{name} `{token}` is not in the vocabulary"))
        })?;
        if *key == "bos_token" {
            self.bos_id = Some(id);
        }
        self.specials.insert(key, token.to_string());
        Ok(())
    }

    /// Saves as HF `tokenizer.json` + `tokenizer_config.json` (special tokens and the chat
    /// template).
    pub fn save_hf(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let tj = dir.join("tokenizer.json");
        self.inner
            .save(&tj, false)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tj.display())))?;
        let mut cfg = serde_json::Map::new();
        for (k, v) in &self.specials {
            cfg.insert(k.to_string(), v.clone().into());
        }
        cfg.insert(
            "chat_template".into(),
            self.chat_template.source().to_string().into(),
        );
        let p = dir.join("tokenizer_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&cfg)?).map_err(|e| Error::io(&p, e))
    }
}

/// The special tokens a chat template may name, as in transformers' `special_tokens_map`.
const SPECIAL_NAMES: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// A token named in `tokenizer_config.json`: a string, or an object with `content`.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// The chat template of an HF folder: `chat_template.jinja` (where transformers saves it),
/// else `tokenizer_config.json`'s `chat_template`, a string or a list of named templates (the
/// one named `default`).
fn hf_chat_template(dir: &Path, config: &serde_json::Value) -> Result<Option<String>> {
    let file = dir.join("chat_template.jinja");
    if file.exists() {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        return Ok(Some(text));
    }
    Ok(match &config["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(String::from),
        _ => None,
    })
}
