//! Batched sampling with a KV cache.
//!
//! Prompts are left-padded so every row's next token sits in the same column; the padding is
//! masked out of attention and positions count real tokens only, so a row's output does not
//! depend on what else is in the batch. Sampling itself runs on the host in f64 over one
//! [B,V] logits matrix per step (in f32 with a vectorized exp for a reduced-precision sampler).

use crate::bf16::Precision;
use crate::error::{Error, Result};
use crate::transformer::{KvCache, Transformer};
use candle_core::{DType, Tensor};
use rand::Rng;
use rayon::prelude::*;

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
    /// The matmul precision of sampling (`Transformer::sampling_copy`). Below f32 the returned
    /// log-probs are the sampler's, which differ from the teacher-forced f32 ones.
    pub precision: Precision,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 128,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            stop_ids: Vec::new(),
            precision: Precision::F32,
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
    rng: &mut (impl Rng + Send),
    on_token: impl FnMut(usize, u32) + Send,
) -> Result<Vec<Generation>> {
    Ok(generate_groups_timed(model, prompts, 1, cfg, rng, on_token)?.0)
}

/// `group` samples of every prompt: rows `i·group .. (i+1)·group` continue `prompts[i]`. The
/// same tokens and log-probs as `generate_with` on each prompt repeated `group` times (the
/// same [B,V] rows consume the rng in the same order), but each prompt is prefilled once and
/// its KV cache forked for the group. Also returns the seconds spent before the first token
/// was sampled: the reduced-precision sampling copy, when there is one, and the prompt
/// prefill.
pub fn generate_groups_timed(
    model: &Transformer,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &GenerationConfig,
    rng: &mut (impl Rng + Send),
    on_token: impl FnMut(usize, u32) + Send,
) -> Result<(Vec<Generation>, f64)> {
    generate_core(model, prompts, group, cfg, rng, on_token, || false)
}

/// `generate` that stops once `cancelled()` is true (asked before the prefill and before each
/// new token), returning the tokens so far with `finished` false: a server stops generating
/// for a client that has gone instead of paying for the whole answer.
pub fn generate_cancellable(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    rng: &mut (impl Rng + Send),
    cancelled: impl Fn() -> bool + Sync,
) -> Result<Vec<Generation>> {
    Ok(generate_core(model, prompts, 1, cfg, rng, |_, _| {}, cancelled)?.0)
}

/// The one sampling loop behind every `generate*` function. It runs on a thread of the
/// pool (`cpu::in_pool`): each token's forward runs hundreds of small parallel loops.
fn generate_core(
    model: &Transformer,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &GenerationConfig,
    rng: &mut (impl Rng + Send),
    on_token: impl FnMut(usize, u32) + Send,
    cancelled: impl Fn() -> bool + Sync,
) -> Result<(Vec<Generation>, f64)> {
    crate::cpu::in_pool(|| sampling_loop(model, prompts, group, cfg, rng, on_token, &cancelled))
}

fn sampling_loop(
    model: &Transformer,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &GenerationConfig,
    rng: &mut (impl Rng + Send),
    mut on_token: impl FnMut(usize, u32),
    cancelled: &(impl Fn() -> bool + Sync),
) -> Result<(Vec<Generation>, f64)> {
    let start = std::time::Instant::now();
    if prompts.is_empty() || group == 0 {
        return Ok((Vec::new(), 0.0));
    }
    let total = check_request(model, prompts, cfg)?;
    let sampler = model.sampling_copy(cfg.precision)?;
    let model: &Transformer = &sampler;
    let b = prompts.len() * group;
    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finished: false,
        })
        .collect();
    if cfg.max_new_tokens == 0 || cancelled() {
        return Ok((out, start.elapsed().as_secs_f64()));
    }
    let mut cache = KvCache::new(&model.cfg, total);
    let (mut logits, mut key_mask) = prefill(model, prompts, group, &mut cache)?;
    let prefill = start.elapsed().as_secs_f64();
    let mut next_pos: Vec<u32> = (0..b).map(|r| prompts[r / group].len() as u32).collect();
    // A reduced-precision sampler also samples in f32 with a vectorized exp (plain
    // temperature sampling, GRPO's case); exact f32 sampling stays in f64 with libm.
    let approximate = cfg.precision != Precision::F32
        && cfg.temperature > 0.0
        && cfg.top_k == 0
        && cfg.top_p >= 1.0;
    for step in 0..cfg.max_new_tokens {
        if cancelled() {
            break;
        }
        let active: Vec<bool> = out.iter().map(|g| !g.finished).collect();
        let picks = if approximate {
            let rows = logits.flatten_all()?.to_vec1::<f32>()?;
            sample_rows_approx(&rows, &active, cfg.temperature, rng)
        } else {
            let rows = logits.squeeze(1)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            sample_rows(&rows, &active, cfg, rng)
        };
        let (next, produced) = record_picks(&mut out, picks, &cfg.stop_ids, &mut on_token);
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
        let input = Tensor::from_vec(next, (b, 1), model.device())?;
        let h = model.forward_infer(&input, &pos, &key_mask, Some(&mut cache))?;
        logits = model.logits_infer(&h)?;
    }
    Ok((out, prefill))
}

/// Refuses empty prompts, a bad `top_p` or temperature, and prompts that leave no room for
/// `max_new_tokens`; answers the positions the cache needs (longest prompt + new tokens).
fn check_request(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<usize> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Invalid(format!("prompt {i} is empty")));
    }
    if cfg.top_p.is_nan() || cfg.top_p <= 0.0 || cfg.temperature.is_nan() || cfg.temperature < 0.0 {
        return Err(Error::Invalid(format!(
            "need top_p > 0 and temperature >= 0, got top_p {} temperature {}",
            cfg.top_p, cfg.temperature
        )));
    }
    let plen = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let total = plen + cfg.max_new_tokens;
    if total > model.cfg.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "prompt ({plen}) + max_new_tokens ({}) exceeds the model's {} positions",
            cfg.max_new_tokens, model.cfg.max_position_embeddings
        )));
    }
    Ok(total)
}

/// Runs the left-padded prompts through the model into `cache` and answers the logits of
/// each row's first new token and the rows' key masks, `group` rows per prompt.
fn prefill(
    model: &Transformer,
    prompts: &[Vec<u32>],
    group: usize,
    cache: &mut KvCache,
) -> Result<(Tensor, Vec<Vec<u8>>)> {
    let device = model.device();
    let b = prompts.len() * group;
    let plen = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * plen);
    let mut key_mask: Vec<Vec<u8>> = Vec::with_capacity(b);
    let mut positions = Vec::with_capacity(prompts.len());
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
    let input = Tensor::from_vec(ids, (prompts.len(), plen), device)?;
    let h = model.forward_infer(&input, &positions, &key_mask, Some(cache))?;
    let mut last = h.narrow(1, plen - 1, 1)?;
    if group > 1 {
        // Fork: every prompt's cache rows, key mask and last hidden state, once per sample.
        // The logits are taken after the fork, so their matmul has today's shape (gemm sums
        // in another order for a single row).
        let rows: Vec<u32> = (0..b).map(|r| (r / group) as u32).collect();
        cache.select_rows(&rows)?;
        last = last
            .contiguous()?
            .index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
        key_mask = rows.iter().map(|&r| key_mask[r as usize].clone()).collect();
    }
    Ok((model.logits_infer(&last)?, key_mask))
}

/// Appends each row's sampled token (`None` = the row has finished) to its generation, ending
/// it at a stop token; answers the tokens to feed next (0 for finished rows) and which rows
/// produced one.
fn record_picks(
    out: &mut [Generation],
    picks: Vec<Option<(u32, f32)>>,
    stop_ids: &[u32],
    on_token: &mut impl FnMut(usize, u32),
) -> (Vec<u32>, Vec<bool>) {
    let mut next = Vec::with_capacity(out.len());
    let mut produced = vec![false; out.len()];
    for (i, pick) in picks.into_iter().enumerate() {
        let Some((tok, lp)) = pick else {
            next.push(0u32);
            continue;
        };
        out[i].tokens.push(tok);
        out[i].logprobs.push(lp);
        produced[i] = true;
        on_token(i, tok);
        if stop_ids.contains(&tok) {
            out[i].finished = true;
        }
        next.push(tok);
    }
    (next, produced)
}

/// `generate_groups_timed` without a streaming callback or the time.
pub fn generate_groups(
    model: &Transformer,
    prompts: &[Vec<u32>],
    group: usize,
    cfg: &GenerationConfig,
    rng: &mut (impl Rng + Send),
) -> Result<Vec<Generation>> {
    Ok(generate_groups_timed(model, prompts, group, cfg, rng, |_, _| {})?.0)
}

/// `generate_with` without a streaming callback.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    rng: &mut (impl Rng + Send),
) -> Result<Vec<Generation>> {
    generate_with(model, prompts, cfg, rng, |_, _| {})
}

/// Picks one token from a logits row given a uniform draw `u` in [0, 1); returns it with its
/// log-probability under the full tempered distribution.
fn sample(row: &[f64], cfg: &GenerationConfig, u: f64) -> (u32, f32) {
    let t = if cfg.temperature > 0.0 {
        cfg.temperature
    } else {
        1.0
    };
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    if cfg.temperature == 0.0 {
        let mut z = 0.0f64;
        for &x in row {
            z += ((x - max) / t).exp();
        }
        let i = argmax(row);
        return (i as u32, ((row[i] - max) / t - z.ln()) as f32);
    }
    // One exp per vocabulary entry: the unnormalised weights are kept for the draw.
    let w: Vec<f64> = row.iter().map(|&x| ((x - max) / t).exp()).collect();
    let z: f64 = w.iter().sum();
    let logz = z.ln();
    let lp = |i: usize| ((row[i] - max) / t - logz) as f32;
    if cfg.top_k == 0 && cfg.top_p >= 1.0 {
        let u = u * z;
        let mut acc = 0.0;
        for (i, &x) in w.iter().enumerate() {
            acc += x;
            if acc >= u {
                return (i as u32, lp(i));
            }
        }
        let i = row.len() - 1;
        return (i as u32, lp(i));
    }
    let desc = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0);
    let mut cand: Vec<(f64, usize)> = w.iter().enumerate().map(|(i, &x)| (x / z, i)).collect();
    if cfg.top_k > 0 && cfg.top_k < cand.len() {
        cand.select_nth_unstable_by(cfg.top_k - 1, desc);
        cand.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        // The nucleus is a prefix of the candidates sorted by probability. Rather than sorting
        // the whole vocabulary, partition out the k most likely (k = 64, 256, ...) until their
        // mass reaches top_p; only those are sorted. Same nucleus as a full sort.
        let mut k = 64.min(cand.len());
        loop {
            if k < cand.len() {
                cand.select_nth_unstable_by(k - 1, desc);
            }
            let mass: f64 = cand[..k].iter().map(|c| c.0).sum();
            if mass >= cfg.top_p || k == cand.len() {
                break;
            }
            k = (k * 4).min(cand.len());
        }
        cand.truncate(k);
        cand.sort_unstable_by(desc);
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
    let u = u * total;
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

/// Samples every row that is still generating; rows are split across threads (the draws are
/// taken from `rng` in row order first, so results do not depend on the thread count).
fn sample_rows(
    rows: &[Vec<f64>],
    active: &[bool],
    cfg: &GenerationConfig,
    rng: &mut (impl Rng + Send),
) -> Vec<Option<(u32, f32)>> {
    let draws: Vec<f64> = active
        .iter()
        .map(|&a| {
            if a && cfg.temperature > 0.0 {
                rng.gen::<f64>()
            } else {
                0.0
            }
        })
        .collect();
    let one = |i: usize| active[i].then(|| sample(&rows[i], cfg, draws[i]));
    let threads = crate::cpu::n_threads().min(rows.len());
    if threads <= 1 {
        return (0..rows.len()).map(one).collect();
    }
    let chunk = rows.len().div_ceil(threads);
    let mut out = vec![None; rows.len()];
    out.par_chunks_mut(chunk).enumerate().for_each(|(c, slot)| {
        for (j, o) in slot.iter_mut().enumerate() {
            *o = one(c * chunk + j);
        }
    });
    out
}

/// `sample_rows` for a reduced-precision sampler: `rows` is the [B, V] logits matrix in f32,
/// sampled at temperature `t` with no truncation. One uniform draw per active row, in row
/// order, as `sample_rows` takes them.
fn sample_rows_approx(
    rows: &[f32],
    active: &[bool],
    t: f64,
    rng: &mut (impl Rng + Send),
) -> Vec<Option<(u32, f32)>> {
    let draws: Vec<f64> = active
        .iter()
        .map(|&a| if a { rng.gen::<f64>() } else { 0.0 })
        .collect();
    let vocab = rows.len() / active.len().max(1);
    let mut out = vec![None; active.len()];
    out.par_iter_mut().enumerate().for_each(|(i, o)| {
        if active[i] {
            let row = &rows[i * vocab..][..vocab];
            *o = Some(crate::cpu::wide(|| sample_approx(row, t as f32, draws[i])));
        }
    });
    out
}

/// Inverse-CDF draw from softmax(row / t) with `u` in [0, 1): weights by
/// [`crate::cpu::exp_approx`], summed in blocks of 64 (in f64 across blocks), so finding the
/// draw scans one block. Returns the token and its log-probability.
#[inline(always)]
fn sample_approx(row: &[f32], t: f32, u: f64) -> (u32, f32) {
    const BLOCK: usize = 64;
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let inv_t = 1.0 / t;
    let w: Vec<f32> = row
        .iter()
        .map(|&x| crate::cpu::exp_approx((x - max) * inv_t))
        .collect();
    let sums: Vec<f64> = w
        .chunks(BLOCK)
        .map(|c| {
            let mut lanes = [0f32; 16];
            for part in c.chunks(16) {
                for (l, &x) in lanes.iter_mut().zip(part) {
                    *l += x;
                }
            }
            lanes.iter().sum::<f32>() as f64
        })
        .collect();
    let z: f64 = sums.iter().sum();
    let lp = |i: usize| ((row[i] - max) * inv_t) - z.ln() as f32;
    let target = u * z;
    let mut acc = 0f64;
    for (blk, &s) in sums.iter().enumerate() {
        if acc + s < target {
            acc += s;
            continue;
        }
        for (j, &x) in w[blk * BLOCK..][..(row.len() - blk * BLOCK).min(BLOCK)]
            .iter()
            .enumerate()
        {
            acc += x as f64;
            if acc >= target {
                let i = blk * BLOCK + j;
                return (i as u32, lp(i));
            }
        }
    }
    // Rounding left the target just above the total: the last token with weight.
    let i = w.iter().rposition(|&x| x > 0.0).unwrap_or(row.len() - 1);
    (i as u32, lp(i))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximate_sampling_draws_what_exact_sampling_draws() {
        let mut rng = crate::seeded_rng(3);
        // A long-tailed row over 5,000 tokens (the approximate path's blocks and its tail).
        let row: Vec<f32> = (0..5000).map(|_| rng.gen_range(-8.0f32..4.0)).collect();
        let wide: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        let cfg = GenerationConfig {
            temperature: 0.7,
            ..GenerationConfig::default()
        };
        let (mut same, n) = (0, 2000);
        for k in 0..n {
            let u = (k as f64 + 0.5) / n as f64;
            let (want, _) = sample(&wide, &cfg, u);
            let (got, got_lp) = sample_approx(&row, 0.7, u);
            same += usize::from(got == want);
            // The drawn token's log-prob agrees with the exact one to f32 rounding.
            let max = wide.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = wide.iter().map(|x| ((x - max) / 0.7).exp()).sum();
            let exact = ((wide[got as usize] - max) / 0.7 - z.ln()) as f32;
            assert!((got_lp - exact).abs() < 1e-4, "{got_lp} vs {exact}");
        }
        // Draws differ only where u falls within rounding of a token boundary.
        assert!(same >= n - 4, "{same} of {n} draws agree");
    }

    /// A cancelled generation stops before its next token and keeps the tokens so far, the
    /// same ones an uncancelled generation starts with; cancelled before the prefill, none.
    #[test]
    fn cancelled_generation_stops_before_the_next_token() {
        let cfg = crate::Config::tiny(crate::Arch::Llama);
        let model = Transformer::random(&cfg, DType::F32, &candle_core::Device::Cpu, 1).unwrap();
        let gen = GenerationConfig {
            max_new_tokens: 20,
            ..GenerationConfig::default()
        };
        let prompt = [vec![1u32, 2, 3]];
        let full = generate(&model, &prompt, &gen, &mut crate::seeded_rng(5)).unwrap();
        for (checks_allowed, tokens) in [(0, 0), (1, 0), (4, 3)] {
            let asked = std::sync::atomic::AtomicUsize::new(0);
            let cancelled =
                || asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= checks_allowed;
            let got =
                generate_cancellable(&model, &prompt, &gen, &mut crate::seeded_rng(5), cancelled)
                    .unwrap();
            assert_eq!(got[0].tokens, full[0].tokens[..tokens], "{checks_allowed}");
            assert!(!got[0].finished);
        }
    }
}
