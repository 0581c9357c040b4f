//! Tokenizer: HF `tokenizer.json` through the `tokenizers` crate, or the same object rebuilt
//! from GGUF metadata (GPT-2 style byte-level BPE), plus the ChatML chat template.

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
    /// System message the chat template inserts when the conversation has none (SmolLM2's
    /// template does this).
    pub default_system: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos_id", &self.eos_id)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Wraps an HF tokenizer; `eos` names the end token (else `<|im_end|>`, `<|endoftext|>`,
    /// `</s>` are tried in that order).
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
        Ok(Tokenizer {
            eos_id,
            bos_id: None,
            stop_ids,
            default_system: chat_template.and_then(default_system_from_template),
            inner,
        })
    }

    /// Reads `tokenizer.json` (and, if present, `tokenizer_config.json` for the eos token and
    /// chat template) from an HF model folder.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tj = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tj.display())))?;
        let tc = dir.join("tokenizer_config.json");
        let (eos, template) = match std::fs::read_to_string(&tc) {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let eos = match &v["eos_token"] {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(o) => {
                        o.get("content").and_then(|c| c.as_str()).map(String::from)
                    }
                    _ => None,
                };
                (eos, v["chat_template"].as_str().map(String::from))
            }
            Err(_) => (None, None),
        };
        Self::from_hf(inner, eos.as_deref(), template.as_deref())
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
        let mut t = Self::from_hf(inner, eos_tok.map(|s| s.as_str()), template.as_deref())?;
        t.bos_id = id("tokenizer.ggml.bos_token_id");
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

    /// The ChatML text of a conversation (SmolLM2's / Qwen's template):
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, the template's default system
    /// message first when the conversation has none, and `<|im_start|>assistant\n` when
    /// `add_generation_prompt`.
    pub fn chat_text(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut s = String::new();
        if let Some(sys) = &self.default_system {
            if messages.first().map(|m| m.role != "system").unwrap_or(true) {
                s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
            }
        }
        for m in messages {
            s.push_str(&format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                m.role, m.content
            ));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        s
    }

    /// Token ids of `chat_text(messages, true)`: the prompt a chat model continues.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.chat_text(messages, true))
    }

    /// Saves as HF `tokenizer.json` + `tokenizer_config.json` (eos token, ChatML template).
    pub fn save_hf(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let tj = dir.join("tokenizer.json");
        self.inner
            .save(&tj, false)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tj.display())))?;
        let eos = self.inner.id_to_token(self.eos_id).unwrap_or_default();
        let cfg = serde_json::json!({
            "eos_token": eos,
            "chat_template": self.jinja_template(),
        });
        let p = dir.join("tokenizer_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&cfg)?).map_err(|e| Error::io(&p, e))
    }

    /// The Jinja form of `chat_text`, for HF tools.
    fn jinja_template(&self) -> String {
        let sys = match &self.default_system {
            Some(s) => format!(
                "{{% if loop.first and messages[0]['role'] != 'system' %}}{{{{ '<|im_start|>system\\n{}<|im_end|>\\n' }}}}{{% endif %}}",
                s.replace('\'', "\\'")
            ),
            None => String::new(),
        };
        format!(
            "{{% for message in messages %}}{sys}{{{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}}}{{% endfor %}}{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant\\n' }}}}{{% endif %}}"
        )
    }
}

/// Finds the default system message in a ChatML Jinja template such as SmolLM2's
/// `'<|im_start|>system\nYou are a helpful AI assistant ...<|im_end|>\n'`.
fn default_system_from_template(t: &str) -> Option<String> {
    for marker in ["<|im_start|>system\\n", "<|im_start|>system\n"] {
        if let Some(i) = t.find(marker) {
            let rest = &t[i + marker.len()..];
            let end = rest.find("<|im_end|>")?;
            let sys = &rest[..end];
            // A template that splices the user's system message in is not a default.
            if sys.contains("{{") || sys.contains('\'') || sys.contains('+') || sys.is_empty() {
                return None;
            }
            return Some(sys.replace("\\n", "\n"));
        }
    }
    None
}
