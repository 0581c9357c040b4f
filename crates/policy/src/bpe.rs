//! Training a small byte-level BPE tokenizer on a task's own text, for a tiny policy.
//!
//! The pre-tokenizer maps bytes to printable characters but does **not** split at spaces
//! (`use_regex = false`), so merges may cross word boundaries: frequent phrases of a narrow
//! task ("contact your doctor") become single tokens, and a response is a few dozen tokens
//! instead of a few hundred characters. Every byte stays in the alphabet, so any text still
//! encodes. The ChatML markers are special tokens and ChatML is the tokenizer's own chat
//! template, which keeps `Tokenizer::chat_prompt`, `Model::save` and `Model::load` working
//! exactly as for a downloaded model.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The special tokens of a trained tokenizer, ids 0, 1, 2 in this order. `<|im_end|>` ends an
/// assistant turn, so it is the end-of-sequence token generation stops at.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Trains a byte-level BPE with at most `vocab_size` entries (256 bytes + 3 special tokens +
/// merges) on `texts`. Merges are capped at `max_token_chars` characters so one token never
/// swallows a whole sentence (which would make the model a phrase table). Pass the text
/// pieces exactly as they are encoded later: a chat prompt is split at its special tokens,
/// so train on `"user\n{content}"` and `"assistant\n"`, and on the responses on their own.
pub fn train_bpe<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
    max_token_chars: usize,
) -> Result<Tokenizer> {
    let base = 256 + SPECIAL_TOKENS.len();
    if vocab_size < base {
        return Err(Error::Invalid(format!(
            "vocab_size {vocab_size} is below the {base} byte and special tokens"
        )));
    }
    let mut inner = tokenizers::Tokenizer::new(BPE::default());
    inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .max_token_length(Some(max_token_chars.max(1)))
        .build()
        .into();
    inner
        .train(&mut trainer, texts)
        .map_err(|e| Error::Tokenizer(format!("training BPE: {e}")))?;
    Tokenizer::from_hf(
        inner,
        Some("<|im_end|>"),
        Some(crate::chat_template::CHATML),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_bpe_round_trips_and_compresses_the_task_text() {
        let phrases = [
            "Contact your doctor if it does not improve in two days.",
            "Drink plenty of fluids and rest.",
            "Ask your pharmacist before any new medicine.",
        ];
        let corpus: Vec<String> = (0..200)
            .map(|i| format!("{} {}", phrases[i % 3], phrases[(i / 3) % 3].to_lowercase()))
            .collect();
        let tok = train_bpe(corpus.iter(), 400, 16).unwrap();
        assert!(tok.vocab_size() <= 400);
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
        assert_eq!(tok.eos_id, 2);
        let text = &corpus[5];
        let ids = tok.encode(text).unwrap();
        assert!(
            ids.len() * 4 < text.len(),
            "{} tokens for {} chars",
            ids.len(),
            text.len()
        );
        assert_eq!(&tok.decode(&ids, true).unwrap(), text);
        // unseen bytes still encode (byte fallback) and round-trip
        let odd = "Zebra ü 42 % {x}";
        assert_eq!(tok.decode(&tok.encode(odd).unwrap(), true).unwrap(), odd);
        // the chat markers are single tokens
        let msgs = [rubric::Message {
            role: "user".into(),
            content: "Drink plenty of fluids and rest.".into(),
        }];
        let p = tok.chat_prompt(&msgs).unwrap();
        assert_eq!(p[0], 1);
        assert!(p.contains(&2));
        // and it survives the HF save format
        let dir = tempfile::tempdir().unwrap();
        tok.save_hf(dir.path()).unwrap();
        let back = Tokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(back.encode(text).unwrap(), ids);
        assert_eq!(back.eos_id, 2);
    }
}
