//! The cache folder arlrr keeps what it builds in (`$ARLRR_CACHE`, else
//! `$XDG_CACHE_HOME/arlrr`, else `~/.cache/arlrr`): warm starts (`warm-start/`, see
//! [`crate::sft::cached`]) and the HF folders of GGUF models' weights that PEFT adapters name
//! as their base (`gguf-base/`).

use anyhow::{Context, Result};
use std::path::PathBuf;

/// `$ARLRR_CACHE` if set, else `$XDG_CACHE_HOME/arlrr`, else `~/.cache/arlrr`.
pub fn default_cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("ARLRR_CACHE") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("arlrr")
}

/// The folder under the cache (`$ARLRR_CACHE` or `~/.cache/arlrr`, `gguf-base/<file
/// stem>-<sha256 prefix>/`) that holds the base weights of `model`, loaded from the GGUF file
/// `gguf`, as an f32 HF folder with its tokenizer: written on first use (to a temporary
/// folder, then renamed), reused after. Keyed by the file's bytes, so a changed file gets a
/// new folder.
pub fn gguf_base_dir(model: &policy::Model, gguf: &std::path::Path) -> Result<PathBuf> {
    use sha2::Digest;
    let mut file =
        std::fs::File::open(gguf).with_context(|| format!("reading {}", gguf.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", gguf.display()))?;
    let hash: String = hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stem = gguf
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = default_cache_root().join("gguf-base");
    let dir = root.join(format!("{stem}-{hash}"));
    if dir.join("config.json").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".writing-")
        .tempdir_in(&root)?;
    // the base weights: adapters are not among them, and a LoRA run never changes the base
    model
        .save(tmp.path())
        .with_context(|| format!("writing the base of {} as an HF folder", gguf.display()))?;
    let source = serde_json::json!({
        "what": "the weights of this GGUF file as arlrr loads them (dequantized to f32): the \
                 base of the PEFT adapters arlrr writes for runs on it",
        "gguf": gguf,
        "sha256_prefix": hash,
    });
    std::fs::write(
        tmp.path().join("arlrr-base.json"),
        serde_json::to_string_pretty(&source)?,
    )?;
    let written = tmp.keep();
    if let Err(e) = std::fs::rename(&written, &dir) {
        // another process wrote the same base first: use its copy
        let _ = std::fs::remove_dir_all(&written);
        if !dir.join("config.json").exists() {
            return Err(e).with_context(|| format!("moving the base to {}", dir.display()));
        }
    }
    Ok(dir)
}
