//! The trainer on a real language model: one GRPO step on SmolLM2-135M-Instruct (LoRA, tiny
//! batch, few tokens), end to end through generation, the rule judge, log-probs, backward and
//! AdamW. Uses the real asset (fetched on first use).
#![cfg(feature = "transformer")]

mod common;

use arl::{Parts, Trainer};
use rand::SeedableRng;

/// Criteria that short samples meet about half the time, so a group of four has spread.
const RUBRIC: &str = r#"[
 {"criterion":"comma","points":3,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":[","]}},
 {"criterion":"the","points":2,"tags":["axis:completeness"],"check":{"kind":"contains_any","phrases":["the"]}},
 {"criterion":"you","points":2,"tags":["axis:communication_quality"],"check":{"kind":"contains_any","phrases":["you"]}},
 {"criterion":"is","points":1,"tags":["axis:context_awareness"],"check":{"kind":"regex","pattern":"\\bis\\b"}},
 {"criterion":"period","points":1,"tags":["axis:instruction_following"],"check":{"kind":"contains_any","phrases":["."]}}
]"#;

fn smollm2_config(dir: &std::path::Path) -> arl::TrainConfig {
    let model = rubric::assets::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let toml = common::base_toml(dir, RUBRIC, "[\"unused\"]", "[objective]\nkind = \"scalarized\"")
        .replace(
            "kind = \"categorical\"\nvocab = [\"unused\"]\nmax_tokens = 6",
            &format!(
                "kind = \"transformer\"\nmodel = \"{}\"\nmax_new_tokens = 8\nlora = {{ rank = 4, alpha = 8.0, targets = [\"q\", \"v\"] }}",
                model.display()
            ),
        )
        .replace("prompts_per_step = 4\ngroup_size = 8", "prompts_per_step = 1\ngroup_size = 4")
        .replace("samples = 16\nbootstrap = 100", "samples = 1\nsize = 1\nbootstrap = 10");
    let mut cfg = arl::TrainConfig::from_toml(&toml).unwrap();
    cfg.run.steps = 1;
    cfg.optim.lr = 1e-3;
    cfg
}

#[test]
fn one_grpo_step_on_smollm2_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smollm2_config(dir.path());
    let parts = Parts::from_config(&cfg).unwrap();

    // the adapter's sampling log-probs agree with its teacher-forced ones
    let mut policy = arl::build_policy(&cfg.policy).unwrap();
    let ex = &parts.data.train.examples[0];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let c = policy.generate(&[ex], 2, &mut rng).unwrap();
    let toks: Vec<&[u32]> = c[0].iter().map(|c| c.tokens.as_slice()).collect();
    let lp = policy.log_probs(&[ex, ex], &toks).unwrap();
    let lp: Vec<Vec<f32>> = lp.log_probs.to_vec2().unwrap();
    for (row, comp) in lp.iter().zip(&c[0]) {
        assert!(!comp.text.is_empty() || comp.tokens.len() == 1);
        for (a, b) in row.iter().zip(&comp.log_probs) {
            assert!((a - b).abs() < 1e-3, "teacher-forced {a} vs sampled {b}");
        }
    }
    // with `share_prompt` the two rows run their prompt once: the same log-probs
    let mut shared = cfg.policy.clone();
    if let arl::PolicyConfig::Transformer(t) = &mut shared {
        t.share_prompt = true;
    }
    let shared = arl::build_policy(&shared).unwrap();
    let lp2: Vec<Vec<f32>> = shared
        .log_probs(&[ex, ex], &toks)
        .unwrap()
        .log_probs
        .to_vec2()
        .unwrap();
    for (a, b) in lp2.iter().flatten().zip(lp.iter().flatten()) {
        assert!((a - b).abs() < 1e-4, "shared prompt {a} vs pairs {b}");
    }
    drop((policy, shared));

    let mut t = Trainer::new(cfg.clone(), parts).unwrap();
    let lora_before: Vec<f32> = t
        .policy()
        .vars()
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    let mut steps = Vec::new();
    t.run(|m| steps.push(m.clone())).unwrap();
    let m = &steps[0];
    assert_eq!(m.samples, 4);
    assert!(m.update.rows > 0, "the group had spread: {m:?}");
    assert_eq!(m.update.applied, 1, "{:?}", m.update);
    assert!(m.update.tokens > 0 && m.update.tokens <= 4 * 8);
    assert!(m.update.entropy.unwrap() > 0.0);
    // an f32 sampler's log-probs are the trainer's, up to f32 rounding
    assert!(m.update.sampler_gap.unwrap() < 1e-3, "{:?}", m.update);
    let lora_after: Vec<f32> = t
        .policy()
        .vars()
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    assert_ne!(lora_before, lora_after, "the LoRA adapters moved");
    assert!(lora_after.iter().all(|x| x.is_finite()));
    assert!(dir
        .path()
        .join("run/checkpoints/step-00000001/policy.safetensors")
        .exists());
}

/// Sampling with bf16 weights, bf16 training matmuls and the truncated importance weight: the
/// step trains, and
/// `metrics.jsonl` records the (small, non-zero) gap between sampler and f32 trainer.
#[test]
fn one_grpo_step_on_smollm2_with_bf16_sampling_and_truncated_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = smollm2_config(dir.path());
    if let arl::PolicyConfig::Transformer(t) = &mut cfg.policy {
        t.sample_precision = policy::Precision::Bf16;
        t.train_precision = policy::Precision::Bf16;
    }
    cfg.grpo.truncated_is_cap = Some(2.0);
    let parts = Parts::from_config(&cfg).unwrap();
    let mut t = Trainer::new(cfg, parts).unwrap();
    let mut steps = Vec::new();
    t.run(|m| steps.push(m.clone())).unwrap();
    let u = &steps[0].update;
    assert!(u.rows > 0 && u.applied == 1, "{u:?}");
    let gap = u.sampler_gap.unwrap();
    assert!(gap > 1e-5 && gap < 0.1, "bf16 sampler gap {gap}");
    assert!(u.loss.unwrap().is_finite());
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"sampler_gap\""), "{metrics}");
}
