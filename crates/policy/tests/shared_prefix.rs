//! The shared-prompt training pass (`completion_log_probs_shared`: one forward per prompt, its
//! completions attending to its keys and values) against the pairs spelled out: the same
//! log-probs and the same gradient for every parameter, in f32, within 1e-5 relative.

use candle_core::{DType, Device, Tensor, Var};
use policy::{
    completion_log_probs, completion_log_probs_shared, Arch, Config, LoraConfig, LoraTarget,
    Transformer,
};
use rand::{Rng, SeedableRng};

fn model(arch: Arch, dtype: DType) -> Transformer {
    // A larger init than the default 0.02 so logits are far from uniform and bugs show.
    let m = Transformer::random(&Config::tiny(arch), dtype, &Device::Cpu, 11).unwrap();
    for (n, v) in m.named_vars() {
        if !n.ends_with("norm.weight") && !n.ends_with("bias") {
            v.set(&(v.as_tensor() * 10.0).unwrap()).unwrap();
        }
    }
    m
}

/// Completions, each with the index of its prompt.
type Completions = Vec<(usize, Vec<u32>)>;

/// Two prompts of different lengths; three completions of the first (one of a single token),
/// two of the second, not in prompt order.
fn batch() -> (Vec<Vec<u32>>, Completions) {
    let prompts = vec![vec![3, 7, 1, 9, 4, 8], vec![11, 5]];
    let comps = vec![
        (0, vec![4, 5, 6]),
        (0, vec![12]),
        (1, vec![20, 21, 22, 23, 2]),
        (0, vec![30, 31, 32, 33]),
        (1, vec![6, 2]),
    ];
    (prompts, comps)
}

/// Largest |a - b| over the largest |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    let f = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    f(d) / f(s).max(1e-30)
}

/// Compares log-probs, mask, entropy and the gradient of Σ w·logp for every var in `vars`.
fn check(m: &Transformer, vars: &[(String, Var)]) {
    let (prompts, comps) = batch();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = comps
        .iter()
        .map(|(i, c)| (prompts[*i].clone(), c.clone()))
        .collect();
    let want = completion_log_probs(m, &pairs, 0.9).unwrap();
    let got = completion_log_probs_shared(m, &prompts, &comps, 0.9).unwrap();
    assert_eq!(got.logp.dims(), want.logp.dims());
    assert_eq!(
        got.mask.to_vec2::<f32>().unwrap(),
        want.mask.to_vec2::<f32>().unwrap()
    );
    let lp = rel_diff(&got.logp, &want.logp);
    let ent = rel_diff(&got.entropy, &want.entropy);
    assert!(lp < 1e-5 && ent < 1e-5, "log-probs {lp:e}, entropy {ent:e}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (b, c) = want.logp.dims2().unwrap();
    let w: Vec<f32> = (0..b * c).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let w = Tensor::from_vec(w, (b, c), &Device::Cpu)
        .unwrap()
        .to_dtype(m.dtype())
        .unwrap();
    let loss = |lp: &Tensor| (lp * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let (gw, gg) = (loss(&want.logp), loss(&got.logp));
    let mut worst = 0f64;
    for (name, v) in vars {
        let a = gg.get(v.as_tensor());
        let r = gw
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let a = a.unwrap_or_else(|| panic!("shared pass: no gradient for {name}"));
        let e = rel_diff(a, r);
        assert!(e < 1e-5, "{name}: relative gradient difference {e:e}");
        worst = worst.max(e);
    }
    println!("log-probs {lp:.2e}, worst parameter gradient {worst:.2e} (relative)");
}

#[test]
fn shared_prompt_pass_matches_pairs_in_log_probs_and_every_gradient() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let m = model(arch, DType::F32);
        check(&m, &m.named_vars());
    }
}

#[test]
fn shared_prompt_pass_matches_pairs_with_lora() {
    let mut m = model(Arch::Llama, DType::F32);
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
            let d: Vec<f32> = (0..v.elem_count())
                .map(|_| rng.gen_range(-0.3..0.3))
                .collect();
            v.set(&Tensor::from_vec(d, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    check(&m, &m.lora_vars());
}

#[test]
fn shared_prompt_pass_rejects_bad_indices() {
    let m = model(Arch::Llama, DType::F32);
    let e = completion_log_probs_shared(&m, &[vec![1, 2]], &[(1, vec![3])], 1.0);
    assert!(e.unwrap_err().to_string().contains("names prompt 1 of 1"));
}
