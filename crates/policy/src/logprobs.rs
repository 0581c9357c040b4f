//! Teacher-forced log-probabilities of completions given prompts: the differentiable quantity
//! GRPO's loss is built from.

use crate::cpu_op::Cpu;
use crate::error::{Error, Result};
use crate::linear::OutputLogProbs;
use crate::ops::log_softmax_last;
use crate::transformer::Transformer;
use candle_core::{DType, Tensor, D};

/// Per-token results for a batch, all [B, C] with C the longest completion; entries past a
/// row's completion are 0 and masked out.
#[derive(Debug, Clone)]
pub struct LogProbs {
    /// `log softmax(logits / T)[token]`, attached to the graph (call `backward` on a loss
    /// built from it).
    pub logp: Tensor,
    /// 1 for real completion tokens, 0 for padding (model dtype).
    pub mask: Tensor,
    /// Entropy of the tempered next-token distribution at each position (detached).
    pub entropy: Tensor,
}

/// Log-probs of each completion token given its prompt and the completion tokens before it.
///
/// Prompts are left-padded and completions right-padded so all completions start in the
/// same column; only those columns go through the output projection, which keeps the
/// [B, C, vocab] tensors as small as they can be.
pub fn completion_log_probs(
    model: &Transformer,
    pairs: &[(Vec<u32>, Vec<u32>)],
    temperature: f64,
) -> Result<LogProbs> {
    if pairs.is_empty() {
        return Err(Error::Invalid("no (prompt, completion) pairs".into()));
    }
    check_inputs(pairs.iter().map(|x| &x.0), temperature)?;
    let b = pairs.len();
    let p = pairs.iter().map(|x| x.0.len()).max().unwrap();
    let c = pairs.iter().map(|x| x.1.len()).max().unwrap().max(1);
    let l = p + c;
    let mut ids = Vec::with_capacity(b * l);
    let mut mask = Vec::with_capacity(b * l);
    for (prompt, comp) in pairs {
        let pad = p - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad));
        ids.extend_from_slice(prompt);
        ids.extend_from_slice(comp);
        ids.extend(std::iter::repeat_n(0, c - comp.len()));
        mask.extend(std::iter::repeat_n(0u8, pad));
        mask.extend(std::iter::repeat_n(1u8, prompt.len() + comp.len()));
        mask.extend(std::iter::repeat_n(0u8, c - comp.len()));
    }
    let dev = model.device();
    let ids = Tensor::from_vec(ids, (b, l), dev)?;
    let mask_t = Tensor::from_vec(mask, (b, l), dev)?;
    let hidden = model.forward_hidden(&ids, &mask_t)?;
    // Hidden state at column j predicts token j+1: columns p-1 .. p+c-2 predict completions.
    let h = hidden.narrow(1, p - 1, c)?;
    score(model, &h, pairs.iter().map(|x| &x.1), temperature)
}

/// `completion_log_probs` of `completions[i].1` given `prompts[completions[i].0]`, running
/// each prompt's forward once: the completions attend to its keys and values, and the
/// gradient of every completion flows back into the one prompt pass. The same values and
/// gradients as the pairs spelled out, up to float rounding (the sums run in another order);
/// cheaper when several completions share a long prompt.
pub fn completion_log_probs_shared(
    model: &Transformer,
    prompts: &[Vec<u32>],
    completions: &[(usize, Vec<u32>)],
    temperature: f64,
) -> Result<LogProbs> {
    if completions.is_empty() {
        return Err(Error::Invalid("no completions".into()));
    }
    if let Some(i) = completions.iter().position(|x| x.0 >= prompts.len()) {
        return Err(Error::Invalid(format!(
            "completion {i} names prompt {} of {}",
            completions[i].0,
            prompts.len()
        )));
    }
    check_inputs(prompts.iter(), temperature)?;
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let c = completions.iter().map(|x| x.1.len()).max().unwrap().max(1);
    let mut ids = Vec::with_capacity(prompts.len() * p);
    let mut pmask = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let pad = p - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad));
        ids.extend_from_slice(prompt);
        pmask.push(
            std::iter::repeat_n(0u8, pad)
                .chain(std::iter::repeat_n(1, prompt.len()))
                .collect::<Vec<u8>>(),
        );
    }
    let dev = model.device();
    let ids = Tensor::from_vec(ids, (prompts.len(), p), dev)?;
    let (hp, kv) = model.forward_prefix(&ids, &pmask)?;
    let b = completions.len();
    let rows: Vec<u32> = completions.iter().map(|x| x.0 as u32).collect();
    let mut ids = Vec::with_capacity(b * c);
    let mut key_mask = Vec::with_capacity(b);
    for (i, comp) in completions {
        ids.extend_from_slice(comp);
        ids.extend(std::iter::repeat_n(0, c - comp.len()));
        let mut keys = pmask[*i].clone();
        keys.extend(std::iter::repeat_n(1u8, comp.len()));
        keys.extend(std::iter::repeat_n(0u8, c - comp.len()));
        key_mask.push(keys);
    }
    let ids = Tensor::from_vec(ids, (b, c), dev)?;
    // The prompt's last hidden state predicts the first completion token, column j of the
    // completion's own the token j+1.
    let first = hp
        .narrow(1, p - 1, 1)?
        .contiguous()?
        .index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
    let h = if c > 1 {
        let own =
            model.forward_after_prefix(&ids.narrow(1, 0, c - 1)?, &trim(&key_mask), &kv, &rows)?;
        Tensor::cat(&[&first, &own], 1)?
    } else {
        first
    };
    score(model, &h, completions.iter().map(|x| &x.1), temperature)
}

/// Key mask rows without their last column (the last completion token is never an input).
fn trim(rows: &[Vec<u8>]) -> Vec<Vec<u8>> {
    rows.iter().map(|r| r[..r.len() - 1].to_vec()).collect()
}

fn check_inputs<'a>(
    mut prompts: impl Iterator<Item = &'a Vec<u32>>,
    temperature: f64,
) -> Result<()> {
    if let Some(i) = prompts.position(|p| p.is_empty()) {
        return Err(Error::Invalid(format!(
            "prompt {i} is empty (the first completion token needs a context)"
        )));
    }
    if temperature.is_nan() || temperature <= 0.0 {
        return Err(Error::Invalid(format!(
            "temperature must be > 0, got {temperature}"
        )));
    }
    Ok(())
}

/// Log-probs and entropies of the `completions` (rows of `h` [B,C,H]: column j holds the
/// hidden state that predicts token j).
fn score<'a>(
    model: &Transformer,
    h: &Tensor,
    completions: impl Iterator<Item = &'a Vec<u32>>,
    temperature: f64,
) -> Result<LogProbs> {
    let (b, c, _) = h.dims3()?;
    let dev = model.device();
    let dtype = model.dtype();
    let mut targets = Vec::with_capacity(b * c);
    let mut cmask = Vec::with_capacity(b * c);
    for comp in completions {
        targets.extend_from_slice(comp);
        targets.extend(std::iter::repeat_n(0, c - comp.len()));
        cmask.extend(std::iter::repeat_n(1f32, comp.len()));
        cmask.extend(std::iter::repeat_n(0f32, c - comp.len()));
    }
    let cmask = Tensor::from_vec(cmask, (b, c), dev)?.to_dtype(dtype)?;
    let (logp, entropy) = if dev.is_cpu() && matches!(dtype, DType::F32 | DType::F64) {
        // Output projection, target log-softmax and entropy in one op: the [B·C, vocab]
        // logits are written once and become their own gradient in the backward.
        let w = model.output_weight();
        let h = h.contiguous()?.reshape((b * c, model.cfg.hidden_size))?;
        let keep = h.track_op() || w.track_op();
        let op = Cpu(OutputLogProbs::new(temperature, keep, targets));
        let both = if keep {
            h.apply_op2(&w, op)?
        } else {
            h.apply_op2_no_bwd(&w, &op)?
        };
        let logp = both.narrow(1, 0, 1)?.reshape((b, c))?;
        let ent = both.detach().narrow(1, 1, 1)?.reshape((b, c))?;
        ((logp * &cmask)?, (ent * &cmask)?)
    } else {
        let logits = model.logits(h)?;
        let logits = if temperature != 1.0 {
            (logits / temperature)?
        } else {
            logits
        };
        let lsm = log_softmax_last(&logits)?;
        let targets = Tensor::from_vec(targets, (b, c, 1), dev)?;
        let logp = (lsm.gather(&targets, 2)?.squeeze(2)? * &cmask)?;
        let lsm_d = lsm.detach();
        let entropy = (lsm_d.exp()?.mul(&lsm_d)?.sum(D::Minus1)?.neg()? * &cmask)?;
        (logp, entropy)
    };
    Ok(LogProbs {
        logp,
        mask: cmask,
        entropy,
    })
}

#[cfg(test)]
mod tests {
    use crate::grad_sink::install_grad_sink;
    use candle_core::{Device, Tensor};

    /// A training step's gradients over two micro-batches, with and without the sink: in
    /// f32 the same bits (linear weights only), under bf16 matmuls (embedding and output
    /// projection too, summed in another order) the same to rounding.
    #[test]
    fn a_transformer_gets_the_same_gradients_through_the_sink() {
        use crate::bf16::{with_matmul_precision, Precision};
        use crate::config::{Arch, Config};
        let mut cfg = Config::tiny(Arch::Llama);
        cfg.tie_word_embeddings = true;
        let model =
            crate::Transformer::random(&cfg, candle_core::DType::F32, &Device::Cpu, 3).unwrap();
        let pairs = |r: u32| -> Vec<(Vec<u32>, Vec<u32>)> {
            (0..3)
                .map(|i| (vec![1 + r + i, 5, 9], vec![7 + i, 2 * r + 3, 11]))
                .collect()
        };
        let grads = |p: Precision, sink: bool| {
            with_matmul_precision(p, || {
                let scope = sink.then(install_grad_sink);
                let mut sums: Vec<Option<Tensor>> = vec![None; model.vars().len()];
                for r in 0..2 {
                    let lp = crate::completion_log_probs(&model, &pairs(r), 1.0).unwrap();
                    let store = lp.logp.sum_all().unwrap().backward().unwrap();
                    for (acc, v) in sums.iter_mut().zip(model.vars()) {
                        if let Some(g) = store.get(v.as_tensor()) {
                            *acc = Some(acc.take().map_or(g.clone(), |a| (a + g).unwrap()));
                        }
                    }
                }
                if let Some(scope) = &scope {
                    for (acc, v) in sums.iter_mut().zip(model.vars()) {
                        if let Some(g) = scope.take(v.as_tensor()) {
                            *acc = Some(acc.take().map_or(g.clone(), |a| (a + g).unwrap()));
                        }
                    }
                }
                let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                sums.into_iter()
                    .map(|g| flat(g.unwrap()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(grads(Precision::F32, true), grads(Precision::F32, false));
        for (a, b) in grads(Precision::Bf16, true)
            .iter()
            .zip(grads(Precision::Bf16, false))
        {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-5 * scale, "difference {diff} at scale {scale}");
        }
    }
}
