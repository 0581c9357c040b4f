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
    if let Some(i) = pairs.iter().position(|(p, _)| p.is_empty()) {
        return Err(Error::Invalid(format!(
            "prompt {i} is empty (the first completion token needs a context)"
        )));
    }
    if temperature.is_nan() || temperature <= 0.0 {
        return Err(Error::Invalid(format!(
            "temperature must be > 0, got {temperature}"
        )));
    }
    let b = pairs.len();
    let p = pairs.iter().map(|x| x.0.len()).max().unwrap();
    let c = pairs.iter().map(|x| x.1.len()).max().unwrap().max(1);
    let l = p + c;
    let mut ids = Vec::with_capacity(b * l);
    let mut mask = Vec::with_capacity(b * l);
    let mut targets = Vec::with_capacity(b * c);
    let mut cmask = Vec::with_capacity(b * c);
    for (prompt, comp) in pairs {
        let pad = p - prompt.len();
        ids.extend(std::iter::repeat_n(0, pad));
        ids.extend_from_slice(prompt);
        ids.extend_from_slice(comp);
        ids.extend(std::iter::repeat_n(0, c - comp.len()));
        mask.extend(std::iter::repeat_n(0u8, pad));
        mask.extend(std::iter::repeat_n(1u8, prompt.len() + comp.len()));
        mask.extend(std::iter::repeat_n(0u8, c - comp.len()));
        targets.extend_from_slice(comp);
        targets.extend(std::iter::repeat_n(0, c - comp.len()));
        cmask.extend(std::iter::repeat_n(1f32, comp.len()));
        cmask.extend(std::iter::repeat_n(0f32, c - comp.len()));
    }
    let dev = model.device();
    let dtype = model.dtype();
    let ids = Tensor::from_vec(ids, (b, l), dev)?;
    let mask_t = Tensor::from_vec(mask, (b, l), dev)?;
    let hidden = model.forward_hidden(&ids, &mask_t)?;
    // Hidden state at column j predicts token j+1: columns p-1 .. p+c-2 predict completions.
    let h = hidden.narrow(1, p - 1, c)?;
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
        let logits = model.logits(&h)?;
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
