//! The policy: a trainable decoder-only transformer (Llama/SmolLM2, Qwen2, Qwen3) in candle,
//! with GGUF and HF safetensors loading, HF saving, tokenizer and the model's own chat template, batched
//! KV-cached generation, differentiable teacher-forced log-probs and LoRA adapters.
//!
//! ```no_run
//! # fn main() -> policy::Result<()> {
//! let model = policy::Model::load("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let msgs = [rubric::Message { role: "user".into(), content: "Hi!".into() }];
//! println!("{}", model.chat(&msgs, 64, 0.7, 42)?);
//! # Ok(()) }
//! ```

mod attention;
pub mod bench;
pub mod bf16;
pub mod bpe;
pub mod chat_template;
pub mod config;
mod cpu;
mod cpu_op;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod grad_sink;
pub mod int8;
mod linear;
pub mod logprobs;
pub mod lora;
pub mod model;
pub mod ops;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use bf16::{cpu_paths, Precision};
pub use bpe::train_bpe;
pub use chat_template::ChatTemplate;
pub use config::{Arch, Config};
pub use cpu::{check_isa_env, Isa};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_groups, generate_groups_timed, generate_with, Generation, GenerationConfig,
};
pub use logprobs::{completion_log_probs, completion_log_probs_shared, LogProbs};
pub use lora::adapter_base_model;
pub use lora::{LoraConfig, LoraTarget};
pub use model::{
    load_hf, load_lora, parse_dtype, parse_size, save_hf, save_hf_with, save_lora, stored_dtype,
    Model, SaveOptions,
};
pub use tokenizer::Tokenizer;
pub use transformer::{KvCache, Transformer};
pub use weights::WeightSource;

/// The RNG type used for seeded sampling, so callers need not depend on `rand` themselves.
pub type Rng = rand::rngs::StdRng;

/// A seeded RNG for `generate` (same seed, same samples).
pub fn seeded_rng(seed: u64) -> Rng {
    <Rng as rand::SeedableRng>::seed_from_u64(seed)
}

/// Keeps freed tensor memory in the process instead of handing it back to the kernel. With
/// glibc's defaults, buffers of a few MB (activations, gradients) are unmapped or trimmed when
/// freed and faulted back in, zeroed by the kernel, on the next use: a visible share of a
/// SmolLM2 training step in `perf` (docs/benchmarks.md, "The policy's own CPU training ops").
/// Binaries call it once at startup (the `arlrr` binary and the policy bench do); a no-op off
/// glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters: the mmap threshold at glibc's 32 MiB
    // maximum, and -1, which mallopt(3) documents as "never trim the heap".
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}
