//! Matching what a trainer sends to the rubric example it was generated from.
//!
//! Engines send prompts in different shapes: OpenRLHF sends the chat-templated prompt text
//! (`<|im_start|>user\n...<|im_end|>`), TRL a string or a list of `{role, content}` messages,
//! verl whatever the dataset's `ground_truth` holds. The robust key is the example id (an
//! OpenRLHF label, a TRL dataset column, a verl `ground_truth`); the fallback is a hash of the
//! prompt text after [`normalize_prompt`], which strips chat-template tokens, role header lines
//! and system turns, case and whitespace, so the templated and the plain text of one
//! conversation meet on the same key.

use regex::Regex;
use rubric::{Dataset, Message};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Chat-template markup that carries no content: ChatML / Llama-3 / Gemma special tokens
/// (`<|im_start|>`, `<|eot_id|>`, ...), Llama-2 `[INST]`, `<<SYS>>` and sentence markers.
fn template_tokens() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"<\|[^|<>\s]{1,64}\|>|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>")
            .expect("valid regex")
    })
}

/// Special tokens (and padding) that decoders leave at the end of a generated response.
fn trailing_special_tokens() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?:\s*(?:<\|[^|<>\s]{1,64}\|>|</s>|<pad>|<eos>|<unk>|<end_of_turn>))+\s*$")
            .expect("valid regex")
    })
}

/// Role names that chat templates put on a header line of their own.
const ROLE_LINES: [&str; 6] = ["system", "user", "assistant", "developer", "human", "model"];

/// The content of a prompt with the template removed, for hashing: template tokens dropped,
/// role header lines dropped, the lines of `system` turns dropped (templates such as Qwen's
/// insert a default system prompt that the rubric data does not have), then lowercased with
/// every whitespace run collapsed to one space.
pub fn normalize_prompt(text: &str) -> String {
    let stripped = template_tokens().replace_all(text, "\n");
    let mut in_system = false;
    let mut words: Vec<String> = Vec::new();
    for line in stripped.lines() {
        let bare = line.trim().trim_end_matches(':').to_ascii_lowercase();
        if ROLE_LINES.contains(&bare.as_str()) {
            in_system = bare == "system";
            continue;
        }
        if in_system {
            continue;
        }
        words.extend(line.split_whitespace().map(str::to_lowercase));
    }
    words.join(" ")
}

/// The prompt text of a conversation as [`normalize_prompt`] sees it: the contents of its
/// non-system messages, one per line.
pub fn conversation_text(messages: &[Message]) -> String {
    messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn text_key(normalized: &str) -> [u8; 32] {
    Sha256::digest(normalized.as_bytes()).into()
}

/// The response part of an OpenRLHF `query` (prompt + response, as decoded by the engine):
/// the text after `prompt`, without trailing special tokens and padding. `None` when the
/// query does not contain the prompt.
pub fn response_from_query<'a>(query: &'a str, prompt: &str) -> Option<&'a str> {
    let start = if prompt.is_empty() {
        0
    } else {
        query.find(prompt)? + prompt.len()
    };
    let rest = &query[start..];
    let end = trailing_special_tokens()
        .find(rest)
        .map_or(rest.len(), |m| m.start());
    Some(&rest[..end])
}

/// Why a prompt matched no example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchError {
    UnknownId(String),
    UnknownText,
    /// The normalized text belongs to several examples; only an id tells them apart.
    AmbiguousText(Vec<String>),
    Empty,
}

impl std::fmt::Display for MatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatchError::UnknownId(id) => write!(f, "unknown prompt id `{}`", crate::clip(id, 200)),
            MatchError::UnknownText => write!(
                f,
                "prompt text matches no rubric example (after removing chat-template tokens, \
                 system turns, case and whitespace); send the example id instead"
            ),
            MatchError::AmbiguousText(ids) => write!(
                f,
                "prompt text matches {} rubric examples ({}); send the example id instead",
                ids.len(),
                ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
            MatchError::Empty => write!(f, "neither a prompt id nor a prompt text was given"),
        }
    }
}

/// Example lookup by id or by normalized prompt text.
pub struct PromptIndex {
    by_text: HashMap<[u8; 32], Vec<usize>>,
}

impl PromptIndex {
    /// Indexes every example of `data` under the hash of its normalized conversation text.
    pub fn new(data: &Dataset) -> Self {
        let mut by_text: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
        for (i, ex) in data.examples.iter().enumerate() {
            let key = text_key(&normalize_prompt(&conversation_text(&ex.prompt)));
            by_text.entry(key).or_default().push(i);
        }
        PromptIndex { by_text }
    }

    /// The position in `data` of the example with id `id` (when given and non-empty), else of
    /// the one whose prompt text is `text`.
    pub fn find(
        &self,
        data: &Dataset,
        id: Option<&str>,
        text: Option<&str>,
    ) -> Result<usize, MatchError> {
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            return data
                .position(id)
                .ok_or_else(|| MatchError::UnknownId(id.to_string()));
        }
        let text = text
            .filter(|t| !t.trim().is_empty())
            .ok_or(MatchError::Empty)?;
        match self
            .by_text
            .get(&text_key(&normalize_prompt(text)))
            .map(Vec::as_slice)
        {
            None | Some([]) => Err(MatchError::UnknownText),
            Some([one]) => Ok(*one),
            Some(many) => Err(MatchError::AmbiguousText(
                many.iter().map(|&i| data.examples[i].id.clone()).collect(),
            )),
        }
    }
}

/// Example id as given in a request: a string, or a number written as a string.
pub fn id_of(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_and_plain_text_meet() {
        let templated = "<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n\
                         <|im_start|>user\nI have  a FEVER.\nWhat now?<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(normalize_prompt(templated), "i have a fever. what now?");
        assert_eq!(
            normalize_prompt("I have a fever.\nWhat now?"),
            "i have a fever. what now?"
        );
        let llama3 = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nI have a fever.\nWhat now?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        assert_eq!(normalize_prompt(llama3), "i have a fever. what now?");
    }

    #[test]
    fn response_is_cut_from_the_query() {
        let p = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
        let q = format!("<|endoftext|><|endoftext|>{p}Drink fluids.<|im_end|><|endoftext|>");
        assert_eq!(response_from_query(&q, p), Some("Drink fluids."));
        assert_eq!(response_from_query("other text", p), None);
        assert_eq!(response_from_query("just text </s>", ""), Some("just text"));
    }
}
