//! Speed and memory figures (printed, never asserted): the machine's f32 matmul peak,
//! forward+backward throughput on SmolLM2-135M as a fraction of that peak, batched generation
//! throughput and the peak memory of a training step. Run `cargo bench -p policy`.

use crate::config::Config;
use crate::error::Result;
use crate::generate::{generate, GenerationConfig};
use crate::logprobs::completion_log_probs;
use crate::transformer::Transformer;
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Training step shape: `batch` sequences of `prompt_len + completion_len` tokens.
    pub train_batch: usize,
    pub prompt_len: usize,
    pub completion_len: usize,
    pub train_iters: usize,
    pub gen_batch: usize,
    pub gen_prompt_len: usize,
    pub gen_new_tokens: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            // 4,096 tokens; at 8 x 512 the autograd graph (no activation checkpointing) needs
            // more than the 23 GB of the development machine.
            train_batch: 16,
            prompt_len: 32,
            completion_len: 224,
            train_iters: 2,
            gen_batch: 32,
            gen_prompt_len: 32,
            gen_new_tokens: 64,
        }
    }
}

/// Best-of-several f32 GFLOP/s of one large square matmul on this machine (candle's CPU
/// gemm, all threads): the "peak" the training figure is compared to.
pub fn matmul_peak_gflops(n: usize, reps: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let _ = a.matmul(&b)?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        let _ = c.dims();
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// Peak resident memory so far (VmHWM), in MiB; `None` off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Matmul FLOPs of one forward pass over `b` rows of `t` tokens where only the last `c`
/// positions go through the output projection.
pub fn forward_flops(cfg: &Config, b: usize, t: usize, c: usize) -> f64 {
    let (h, i, hd) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.head_dim as f64,
    );
    let (nh, nkv) = (
        cfg.num_attention_heads as f64,
        cfg.num_key_value_heads as f64,
    );
    let tokens = (b * t) as f64;
    let proj = h * nh * hd * 2.0 + h * nkv * hd * 2.0 + 3.0 * h * i;
    let attn = 2.0 * nh * hd * (t as f64); // QK^T and AV per token (full square)
    let per_layer = 2.0 * tokens * proj + 2.0 * tokens * attn;
    per_layer * cfg.num_hidden_layers as f64 + 2.0 * (b * c) as f64 * h * cfg.vocab_size as f64
}

/// Runs every figure on `model` and prints them; returns nothing to assert on by design.
pub fn run(model: &Transformer, opts: &BenchOptions) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("machine: {threads} CPU threads (candle CPU backend, f32)");
    let peak = matmul_peak_gflops(1024, 5)?;
    println!("f32 matmul peak (1024^3, best of 5): {peak:.1} GFLOP/s");
    let cfg = &model.cfg;
    let rss0 = peak_rss_mib().unwrap_or(0.0);

    // Training step: teacher-forced log-probs of the completions + backward.
    let (b, p, c) = (opts.train_batch, opts.prompt_len, opts.completion_len);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..b)
        .map(|r| {
            let tok = |k: usize| ((r * 7919 + k * 104729) % (cfg.vocab_size - 10) + 5) as u32;
            ((0..p).map(tok).collect(), (p..p + c).map(tok).collect())
        })
        .collect();
    let mut best = f64::MAX;
    let mut fwd_best = f64::MAX;
    for _ in 0..opts.train_iters {
        let t0 = Instant::now();
        let loss = {
            let lp = completion_log_probs(model, &pairs, 1.0)?;
            (lp.logp.sum_all()? / (b * c) as f64)?
        };
        let _ = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let tf = t0.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        let n_grads = model
            .trainable_vars()
            .iter()
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .count();
        let total = t0.elapsed().as_secs_f64();
        best = best.min(total);
        fwd_best = fwd_best.min(tf);
        drop(grads);
        let _ = n_grads;
    }
    let tokens = (b * (p + c)) as f64;
    let flops = 3.0 * forward_flops(cfg, b, p + c, c);
    println!(
        "forward+backward: batch {b} x {} tokens = {tokens} tokens in {best:.2}s (forward {fwd_best:.2}s): {:.0} tokens/s, {:.1} GFLOP/s = {:.0}% of matmul peak",
        p + c,
        tokens / best,
        flops / best / 1e9,
        100.0 * flops / best / 1e9 / peak
    );
    if let Some(hwm) = peak_rss_mib() {
        println!(
            "peak memory (VmHWM) after the training step: {hwm:.0} MiB (was {rss0:.0} MiB with the model loaded)"
        );
    }

    // Batched generation.
    let prompts: Vec<Vec<u32>> = (0..opts.gen_batch)
        .map(|r| {
            (0..opts.gen_prompt_len)
                .map(|k| ((r * 31 + k * 17) % (cfg.vocab_size - 10) + 5) as u32)
                .collect()
        })
        .collect();
    let gcfg = GenerationConfig {
        max_new_tokens: opts.gen_new_tokens,
        temperature: 1.0,
        top_p: 0.95,
        ..Default::default()
    };
    let mut rng = crate::seeded_rng(0);
    let t0 = Instant::now();
    let gens = generate(model, &prompts, &gcfg, &mut rng)?;
    let secs = t0.elapsed().as_secs_f64();
    let n: usize = gens.iter().map(|g| g.tokens.len()).sum();
    println!(
        "generation: batch {} x {} new tokens (prompt {}) in {secs:.2}s: {:.0} tokens/s aggregate",
        opts.gen_batch,
        opts.gen_new_tokens,
        opts.gen_prompt_len,
        n as f64 / secs
    );
    Ok(())
}
