//! Batched sampling with a KV cache.
//!
//! Prompts are left-padded so every row's next token sits in the same column; the padding is
//! masked out of attention and positions count real tokens only, so a row's output does not
//! depend on what else is in the batch. Sampling itself runs on the host in f64 over one
//! [B,V] logits matrix per step.

use crate::error::{Error, Result};
use crate::transformer::{KvCache, Transformer};
use candle_core::{DType, Tensor};
use rand::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`
    /// (1.0 = off).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Generation of a row ends after it emits one of these (the stop token is included in
    /// the output, since a policy is trained to emit it).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 128,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            stop_ids: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated tokens (without the prompt), ending with the stop token when `finished`.
    pub tokens: Vec<u32>,
    /// Per token, `log softmax(logits / T)[token]` under the full (not top-k/top-p truncated)
    /// distribution at the sampling temperature (T = 1 when greedy); this is what
    /// `completion_log_probs` with the same temperature recomputes with gradients.
    pub logprobs: Vec<f32>,
    /// True when a stop token ended the row, false when `max_new_tokens` did.
    pub finished: bool,
}

/// Samples continuations of every prompt in one batch. `on_token(row, token)` is called for
/// each new token as it is produced (for streaming); pass `|_, _| {}` otherwise.
pub fn generate_with(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    rng: &mut impl Rng,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Invalid(format!("prompt {i} is empty")));
    }
    if cfg.top_p.is_nan() || cfg.top_p <= 0.0 || cfg.temperature.is_nan() || cfg.temperature < 0.0 {
        return Err(Error::Invalid(format!(
            "need top_p > 0 and temperature >= 0, got top_p {} temperature {}",
            cfg.top_p, cfg.temperature
        )));
    }
    let b = prompts.len();
    let plen = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let total = plen + cfg.max_new_tokens;
    if total > model.cfg.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "prompt ({plen}) + max_new_tokens ({}) exceeds the model's {} positions",
            cfg.max_new_tokens, model.cfg.max_position_embeddings
        )));
    }
    let device = model.device();
    let mut ids = Vec::with_capacity(b * plen);
    let mut key_mask: Vec<Vec<u8>> = Vec::with_capacity(b);
    let mut positions = Vec::with_capacity(b);
    for p in prompts {
        let pad = plen - p.len();
        ids.extend(std::iter::repeat_n(0u32, pad).chain(p.iter().copied()));
        key_mask.push(
            std::iter::repeat_n(0u8, pad)
                .chain(std::iter::repeat_n(1, p.len()))
                .collect(),
        );
        positions.push((0..pad).map(|_| 0u32).chain(0..p.len() as u32).collect());
    }
    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finished: false,
        })
        .collect();
    if cfg.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let mut cache = KvCache::new(&model.cfg, total);
    let input = Tensor::from_vec(ids, (b, plen), device)?;
    let h = model.forward_with(&input, &positions, &key_mask, Some(&mut cache))?;
    let mut logits = model.logits(&h.narrow(1, plen - 1, 1)?)?;
    for step in 0..cfg.max_new_tokens {
        let rows = logits.squeeze(1)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let mut next = Vec::with_capacity(b);
        let mut produced = vec![false; b];
        for (i, row) in rows.iter().enumerate() {
            if out[i].finished {
                next.push(0u32);
                continue;
            }
            let (tok, lp) = sample(row, cfg, rng);
            out[i].tokens.push(tok);
            out[i].logprobs.push(lp);
            produced[i] = true;
            on_token(i, tok);
            if cfg.stop_ids.contains(&tok) {
                out[i].finished = true;
            }
            next.push(tok);
        }
        if step + 1 == cfg.max_new_tokens || out.iter().all(|g| g.finished) {
            break;
        }
        // Rows that finished earlier feed a masked dummy token: they stay in the batch (the
        // cache is shared) but nothing attends to their new positions.
        let mut pos = Vec::with_capacity(b);
        for (i, km) in key_mask.iter_mut().enumerate() {
            km.push(u8::from(produced[i]));
            pos.push(vec![next_pos[i]]);
            if produced[i] {
                next_pos[i] += 1;
            }
        }
        let input = Tensor::from_vec(next, (b, 1), device)?;
        let h = model.forward_with(&input, &pos, &key_mask, Some(&mut cache))?;
        logits = model.logits(&h)?;
    }
    Ok(out)
}

/// `generate_with` without a streaming callback.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    rng: &mut impl Rng,
) -> Result<Vec<Generation>> {
    generate_with(model, prompts, cfg, rng, |_, _| {})
}

/// Picks one token from a logits row; returns it with its log-probability under the full
/// tempered distribution.
fn sample(row: &[f64], cfg: &GenerationConfig, rng: &mut impl Rng) -> (u32, f32) {
    let t = if cfg.temperature > 0.0 {
        cfg.temperature
    } else {
        1.0
    };
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let mut z = 0.0f64;
    for &x in row {
        z += ((x - max) / t).exp();
    }
    let logz = z.ln();
    let lp = |i: usize| ((row[i] - max) / t - logz) as f32;
    if cfg.temperature == 0.0 {
        let i = argmax(row);
        return (i as u32, lp(i));
    }
    // Candidates: every token unless top-k / top-p restrict them.
    let mut cand: Vec<(f64, usize)>;
    if cfg.top_k == 0 && cfg.top_p >= 1.0 {
        let u: f64 = rng.gen::<f64>() * z;
        let mut acc = 0.0;
        for (i, &x) in row.iter().enumerate() {
            acc += ((x - max) / t).exp();
            if acc >= u {
                return (i as u32, lp(i));
            }
        }
        let i = row.len() - 1;
        return (i as u32, lp(i));
    }
    cand = row
        .iter()
        .enumerate()
        .map(|(i, &x)| (((x - max) / t).exp() / z, i))
        .collect();
    if cfg.top_k > 0 && cfg.top_k < cand.len() {
        cand.select_nth_unstable_by(cfg.top_k - 1, |a, b| b.0.total_cmp(&a.0));
        cand.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        // Tokens below 1e-9 cannot change the nucleus unless top_p is within ~5e-5 of 1;
        // dropping them first keeps the sort short.
        let small: Vec<(f64, usize)> = cand.iter().copied().filter(|c| c.0 >= 1e-9).collect();
        if small.iter().map(|c| c.0).sum::<f64>() >= cfg.top_p {
            cand = small;
        }
        cand.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (j, c) in cand.iter().enumerate() {
            acc += c.0;
            if acc >= cfg.top_p {
                keep = j + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    let total: f64 = cand.iter().map(|c| c.0).sum();
    let u = rng.gen::<f64>() * total;
    let mut acc = 0.0;
    for c in &cand {
        acc += c.0;
        if acc >= u {
            return (c.1 as u32, lp(c.1));
        }
    }
    let last = cand.last().expect("at least one candidate").1;
    (last as u32, lp(last))
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}
