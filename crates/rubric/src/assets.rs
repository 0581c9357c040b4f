//! Where the fetched real assets live. `arlrr fetch` fills this folder; every command and test
//! finds it without flags: `$ARLRR_ASSETS` if set, else `$XDG_CACHE_HOME/arlrr/assets`, else
//! `~/.cache/arlrr/assets`.

use std::path::PathBuf;

pub const HEALTHBENCH_FILE: &str = "healthbench_eval.jsonl";
pub const WRITINGBENCH_FILE: &str = "writingbench_all.jsonl";
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ARLRR_ASSETS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("arlrr").join("assets")
}

fn existing(name: &str) -> Result<PathBuf, String> {
    let p = dir().join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "asset {} not found; run `cargo run --release -- fetch` (or set ARLRR_ASSETS)",
            p.display()
        ))
    }
}

/// The 500-item HealthBench sample.
pub fn healthbench_sample() -> Result<PathBuf, String> {
    existing(HEALTHBENCH_FILE)
}

/// WritingBench's 1,000 queries with their checklists.
pub fn writingbench() -> Result<PathBuf, String> {
    existing(WRITINGBENCH_FILE)
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF.
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    existing(SMOLLM2_FILE)
}

/// Folder with all-MiniLM-L6-v2's config.json, model.safetensors and tokenizer.json.
pub fn minilm_dir() -> Result<PathBuf, String> {
    existing(MINILM_DIR)
}
