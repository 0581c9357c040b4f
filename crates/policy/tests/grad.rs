//! Finite-difference gradient checks on tiny random models, in f64: every parameter kind
//! (embedding, attention projections and biases, norms incl. QK-norm, MLP, untied lm_head,
//! LoRA A/B) must get the gradient the loss actually has. This is the guard against
//! gradient-dropping fused kernels (docs/design.md, §5 Known traps).

use candle_core::{DType, Device, Tensor, Var};
use policy::{completion_log_probs, Arch, Config, LoraConfig, LoraTarget, Transformer};
use rand::{Rng, SeedableRng};

/// A batch with different prompt and completion lengths, so padding is exercised.
fn pairs() -> Vec<(Vec<u32>, Vec<u32>)> {
    vec![
        (vec![3, 7, 1, 9], vec![4, 5, 6]),
        (vec![11], vec![12, 2]),
        (vec![20, 21, 22], vec![30, 31, 32, 33]),
    ]
}

/// Loss = Σ w·logp with fixed random weights (so every token's gradient matters) + a small
/// entropy-free term; the same function for analytic and numeric gradients.
fn loss(model: &Transformer, weights: &Tensor) -> f64 {
    loss_t(model, weights).to_scalar::<f64>().unwrap()
}

fn loss_t(model: &Transformer, weights: &Tensor) -> Tensor {
    let lp = completion_log_probs(model, &pairs(), 0.9).unwrap();
    (lp.logp * weights).unwrap().sum_all().unwrap()
}

fn get(v: &Var) -> Vec<f64> {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn set(v: &Var, data: Vec<f64>) {
    let t = Tensor::from_vec(data, v.dims(), &Device::Cpu).unwrap();
    v.set(&t).unwrap();
}

/// Compares analytic and central-difference gradients on a few entries of each named var.
fn check(model: &Transformer, vars: &[(String, Var)], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let w: Vec<f64> = (0..3 * 4).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let weights = Tensor::from_vec(w, (3, 4), &Device::Cpu).unwrap();
    let grads = loss_t(model, &weights).backward().unwrap();
    let eps = 1e-5;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let orig = get(var);
        let n = orig.len();
        let mut worst = 0.0f64;
        for _ in 0..4 {
            let i = rng.gen_range(0..n);
            let mut d = orig.clone();
            d[i] += eps;
            set(var, d.clone());
            let lp = loss(model, &weights);
            d[i] -= 2.0 * eps;
            set(var, d);
            let lm = loss(model, &weights);
            set(var, orig.clone());
            let num = (lp - lm) / (2.0 * eps);
            let err = (num - g[i]).abs() / (num.abs().max(g[i].abs()).max(1e-3));
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "{name}[{i}]: analytic {} vs numeric {num} (rel err {err})",
                g[i]
            );
        }
        // A gradient that is identically zero would pass trivially; make sure it is not.
        assert!(
            g.iter().any(|x| x.abs() > 1e-8),
            "{name}: gradient is all zeros"
        );
        let _ = worst;
    }
}

fn tiny(arch: Arch) -> Transformer {
    let cfg = Config::tiny(arch);
    Transformer::random(&cfg, DType::F64, &Device::Cpu, 7).unwrap()
}

#[test]
fn grad_llama_all_parameter_kinds() {
    let m = tiny(Arch::Llama);
    let vars = m.named_vars();
    assert!(vars.iter().any(|(n, _)| n == "model.embed_tokens.weight"));
    check(&m, &vars, 1);
}

#[test]
fn grad_qwen2_bias() {
    let m = tiny(Arch::Qwen2);
    let vars: Vec<_> = m
        .named_vars()
        .into_iter()
        .filter(|(n, _)| n.contains("layers.1") || n.contains("embed"))
        .collect();
    assert!(vars.iter().any(|(n, _)| n.ends_with("q_proj.bias")));
    check(&m, &vars, 2);
}

#[test]
fn grad_qwen3_qk_norm_untied_head() {
    let m = tiny(Arch::Qwen3);
    let vars: Vec<_> = m
        .named_vars()
        .into_iter()
        .filter(|(n, _)| {
            n.contains("layers.0") || n.contains("lm_head") || n.contains("model.norm")
        })
        .collect();
    assert!(vars.iter().any(|(n, _)| n.ends_with("q_norm.weight")));
    assert!(vars.iter().any(|(n, _)| n == "lm_head.weight"));
    check(&m, &vars, 3);
}

#[test]
fn grad_lora_adapters_and_frozen_base() {
    let mut m = tiny(Arch::Llama);
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: LoraTarget::ALL.to_vec(),
    };
    m.add_lora(&lcfg, 5).unwrap();
    // B starts at zero (A's gradient would then be zero); give it values.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for (n, v) in m.lora_vars() {
        if n.ends_with("lora_B.weight") {
            let d: Vec<f64> = (0..v.elem_count())
                .map(|_| rng.gen_range(-0.1..0.1))
                .collect();
            set(&v, d);
        }
    }
    let lvars = m.lora_vars();
    assert_eq!(lvars.len(), 2 * 7 * 2);
    check(&m, &lvars, 4);
    // The base is frozen: no gradient reaches it, and only adapters are trainable.
    let weights = Tensor::ones((3, 4), DType::F64, &Device::Cpu).unwrap();
    let grads = loss_t(&m, &weights).backward().unwrap();
    for (n, v) in m.named_vars() {
        assert!(
            grads.get(v.as_tensor()).is_none(),
            "frozen {n} got a gradient"
        );
    }
    assert_eq!(m.trainable_vars().len(), lvars.len());
}
