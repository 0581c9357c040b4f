//! Speed and memory figures (printed, never asserted): the machine's f32 matmul peak,
//! forward+backward throughput on SmolLM2-135M as a fraction of that peak, batched generation
//! throughput and the peak memory of a training step. Run `cargo bench -p arlrr-policy`.

use crate::bf16::Precision;
use crate::config::Config;
use crate::error::Result;
use crate::generate::{generate, GenerationConfig};
use crate::int8::SamplerWeight;
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
    /// A second training shape (batch, prompt_len, completion_len), timed after the first
    /// (so the peak memory printed after it is its own when it is the larger step).
    pub long_train: Option<(usize, usize, usize)>,
    pub gen_batch: usize,
    /// A second, small generation batch (latency-bound decoding); 0 skips it.
    pub gen_small_batch: usize,
    pub gen_prompt_len: usize,
    pub gen_new_tokens: usize,
    /// Generation is timed at each of these sampling precisions, and training at each of
    /// these matmul precisions.
    pub gen_precisions: Vec<Precision>,
    pub train_precisions: Vec<Precision>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            // 4,096 tokens as 16 x 256, then as 8 x 512 (attention 2x larger per row); both
            // fit a small machine's memory thanks to the fused custom ops of `ops.rs`.
            train_batch: 16,
            prompt_len: 32,
            completion_len: 224,
            train_iters: 2,
            long_train: Some((8, 32, 480)),
            gen_batch: 32,
            gen_small_batch: 1,
            gen_prompt_len: 32,
            gen_new_tokens: 64,
            gen_precisions: vec![
                Precision::F32,
                Precision::Bf16,
                Precision::Int8,
                Precision::Int4,
            ],
            train_precisions: vec![Precision::F32, Precision::Bf16],
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

/// Forward+backward figures for one training-step shape: seconds of the best iteration
/// (whole step, forward only) and the achieved matmul GFLOP/s.
#[derive(Debug, Clone, Copy)]
pub struct TrainFigures {
    pub tokens: usize,
    pub secs: f64,
    pub forward_secs: f64,
    pub gflops: f64,
}

/// Times `iters` training steps (teacher-forced log-probs of `completion_len` tokens after
/// `prompt_len` prompt tokens, for `batch` rows, then backward) and keeps the best.
pub fn train_step(
    model: &Transformer,
    batch: usize,
    prompt_len: usize,
    completion_len: usize,
    iters: usize,
) -> Result<TrainFigures> {
    let cfg = &model.cfg;
    let (b, p, c) = (batch, prompt_len, completion_len);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..b)
        .map(|r| {
            let tok = |k: usize| ((r * 7919 + k * 104729) % (cfg.vocab_size - 10) + 5) as u32;
            ((0..p).map(tok).collect(), (p..p + c).map(tok).collect())
        })
        .collect();
    let mut best = f64::MAX;
    let mut fwd_best = f64::MAX;
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        let loss = {
            let lp = completion_log_probs(model, &pairs, 1.0)?;
            (lp.logp.sum_all()? / (b * c) as f64)?
        };
        let _ = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let tf = t0.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        best = best.min(t0.elapsed().as_secs_f64());
        fwd_best = fwd_best.min(tf);
        drop(grads);
    }
    let flops = 3.0 * forward_flops(cfg, b, p + c, c);
    Ok(TrainFigures {
        tokens: b * (p + c),
        secs: best,
        forward_secs: fwd_best,
        gflops: flops / best / 1e9,
    })
}

/// Times one batched generation of `new_tokens` tokens per prompt, sampled as GRPO samples
/// (temperature 1, no top-p or top-k, as the trainer and TRL do by default); returns
/// (generated tokens, seconds).
pub fn generation(
    model: &Transformer,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    precision: Precision,
) -> Result<(usize, f64)> {
    let cfg = &model.cfg;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|r| {
            (0..prompt_len)
                .map(|k| ((r * 31 + k * 17) % (cfg.vocab_size - 10) + 5) as u32)
                .collect()
        })
        .collect();
    let gcfg = GenerationConfig {
        max_new_tokens: new_tokens,
        temperature: 1.0,
        precision,
        ..Default::default()
    };
    let mut rng = crate::seeded_rng(0);
    let t0 = Instant::now();
    let gens = generate(model, &prompts, &gcfg, &mut rng)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((gens.iter().map(|g| g.tokens.len()).sum(), secs))
}

/// Matmul FLOPs of generating one token per row at batch `b` with `s` cached keys: every
/// projection, the attention over the cache and the output projection for that one position.
pub fn decode_flops_per_token(cfg: &Config, s: usize) -> f64 {
    forward_flops(cfg, 1, 1, 1)
        - 2.0 * 2.0 * (cfg.num_attention_heads * cfg.head_dim) as f64 * cfg.num_hidden_layers as f64
        + 2.0 * 2.0 * (cfg.num_attention_heads * cfg.head_dim * s * cfg.num_hidden_layers) as f64
}

/// Seconds (best of `reps`) of the projection matmuls of one decoding step at batch `b`: every
/// layer's q, k, v, o, gate, up and down and the output projection, in the form generation
/// uses, on random weights of the model's shapes (all layers, so the weights stream from
/// memory as in a real step). No decoding step can be faster on this machine: it bounds the
/// generation rate whatever the rest of the step costs.
pub fn decode_matmul_secs(
    cfg: &Config,
    b: usize,
    reps: usize,
    precision: Precision,
) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    // (output, input) of each projection, in the order a layer applies them
    let shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)];
    let mut weights = Vec::new();
    for _ in 0..cfg.num_hidden_layers {
        for &(o, k) in &shapes {
            weights.push(Tensor::randn(0f32, 1.0, (o, k), &dev)?);
        }
    }
    weights.push(Tensor::randn(0f32, 1.0, (cfg.vocab_size, h), &dev)?);
    let inputs: Vec<Tensor> = [h, q, i]
        .iter()
        .map(|&k| Tensor::randn(0f32, 1.0, (b, k), &dev))
        .collect::<candle_core::Result<_>>()?;
    let input_for = |k: usize| {
        inputs
            .iter()
            .find(|x| x.dim(1).ok() == Some(k))
            .expect("an input per width")
    };
    let flops: f64 = weights
        .iter()
        .map(|w| 2.0 * (b * w.elem_count()) as f64)
        .sum();
    let packed = match precision {
        Precision::F32 => Vec::new(),
        p => weights
            .iter()
            .map(|w| SamplerWeight::pack(w, p))
            .collect::<Result<Vec<_>>>()?,
    };
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        for (i, w) in weights.iter().enumerate() {
            let x = input_for(w.dim(1)?);
            let y = match packed.get(i) {
                Some(p) => p.forward(x)?,
                None => crate::linear::linear_infer(x, w, None)?,
            };
            let _ = y.dims();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((best, flops))
}

/// Runs every figure on `model` and prints them; returns nothing to assert on by design.
pub fn run(model: &Transformer, opts: &BenchOptions) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("machine: {threads} CPU threads (candle CPU backend, f32)");
    println!("cpu paths: {}", crate::cpu_paths());
    // Neighbours on a shared machine make one peak reading swing widely, so the peak is
    // measured again after every training step and each fraction is taken against the
    // highest reading so far: a lucky slow peak cannot flatter the result.
    let mut peak = matmul_peak_gflops(1024, 5)?;
    println!("f32 matmul peak (1024^3, best of 5): {peak:.1} GFLOP/s");
    let cfg = &model.cfg;
    let rss0 = peak_rss_mib().unwrap_or(0.0);

    let shapes = std::iter::once((opts.train_batch, opts.prompt_len, opts.completion_len))
        .chain(opts.long_train)
        .filter(|_| opts.train_iters > 0)
        .flat_map(|s| opts.train_precisions.iter().map(move |&p| (s, p)));
    for ((b, p, c), precision) in shapes {
        let f = crate::bf16::with_matmul_precision(precision, || {
            train_step(model, b, p, c, opts.train_iters)
        })?;
        let again = matmul_peak_gflops(1024, 5)?;
        peak = peak.max(again);
        println!(
            "forward+backward ({precision:?} matmuls): batch {b} x {} tokens = {} tokens in {:.2}s (forward {:.2}s): {:.0} tokens/s, {:.1} GFLOP/s = {:.0}% of matmul peak {peak:.1} (re-measured after the step: {again:.1})",
            p + c,
            f.tokens,
            f.secs,
            f.forward_secs,
            f.tokens as f64 / f.secs,
            f.gflops,
            100.0 * f.gflops / peak
        );
        if let Some(hwm) = peak_rss_mib() {
            println!(
                "peak memory (VmHWM) so far, after this training step: {hwm:.0} MiB (was {rss0:.0} MiB with the model loaded)"
            );
        }
    }

    let runs = [opts.gen_batch, opts.gen_small_batch]
        .into_iter()
        .flat_map(|b| opts.gen_precisions.iter().map(move |&p| (b, p)));
    for (batch, precision) in runs {
        if batch == 0 || opts.gen_new_tokens == 0 {
            continue;
        }
        let (plen, new) = (opts.gen_prompt_len, opts.gen_new_tokens);
        let (n, secs) = generation(model, batch, plen, new, precision)?;
        let rate = n as f64 / secs;
        // The work actually done: the prompt pass (output projection at the last position
        // only), then one decoding step per new token after the first.
        let flops = forward_flops(cfg, batch, plen, 1)
            + (plen + 1..plen + new)
                .map(|s| batch as f64 * decode_flops_per_token(cfg, s))
                .sum::<f64>();
        let decode_bound = peak * 1e9 / decode_flops_per_token(cfg, plen + new / 2);
        println!(
            "generation ({precision:?}): batch {batch} x {new} new tokens (prompt {plen}) in {secs:.2}s: {rate:.0} tokens/s aggregate, {:.1} GFLOP/s = {:.0}% of matmul peak (decoding alone at 100% of peak: {decode_bound:.0} tokens/s)",
            flops / secs / 1e9,
            100.0 * flops / secs / 1e9 / peak,
        );
        let (mm_secs, mm_flops) = decode_matmul_secs(cfg, batch, 5, precision)?;
        println!(
            "  bound: the projection matmuls of one decoding step at batch {batch} alone take {:.1} ms ({:.1} GFLOP/s on these shapes): at most {:.0} tokens/s here; the measured step is {:.1} ms",
            1e3 * mm_secs,
            mm_flops / mm_secs / 1e9,
            batch as f64 / mm_secs,
            1e3 * secs / new as f64,
        );
    }
    Ok(())
}
