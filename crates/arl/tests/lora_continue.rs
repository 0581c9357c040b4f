//! A LoRA run's checkpoint, loaded the ways a user loads it: continued by `Trainer::resume`
//! (what `arlrr train --resume` calls) with a larger step budget, and opened by
//! `arl::setup::load_model` (what `arlrr eval --model RUN` calls). The loaded adapters must be
//! the saved ones, not a fresh initialization, and training must go on from them.
#![cfg(feature = "transformer")]

mod common;

use arl::{Parts, Policy, TrainConfig, Trainer};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

const RUBRIC: &str = r#"[
 {"criterion":"comma","points":3,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":[","]}},
 {"criterion":"the","points":2,"tags":["axis:completeness"],"check":{"kind":"contains_any","phrases":["the"]}},
 {"criterion":"period","points":1,"tags":["axis:instruction_following"],"check":{"kind":"contains_any","phrases":["."]}}
]"#;

/// A tiny warm-started transformer with LoRA adapters, on criteria its short samples meet
/// about half the time (so groups have spread and the adapters move).
fn config(dir: &Path) -> TrainConfig {
    common::write_split(&dir.join("train.jsonl"), 8, RUBRIC, "t");
    common::write_split(&dir.join("val.jsonl"), 4, RUBRIC, "v");
    let text = format!(
        r#"
[run]
dir = "{run}"
seed = 1
steps = 2
checkpoint_every = 2

[data]
train = "{train}"
val = "{val}"

[policy]
kind = "transformer"
model = "warm-start"
max_new_tokens = 12
lora = {{ rank = 2, alpha = 4.0, targets = ["q", "v"] }}
init_seed = 9

[warm_start]
responses_per_prompt = 1
vocab_size = 512
hidden_size = 16
intermediate_size = 32
layers = 1
heads = 2
max_positions = 512
steps = 2
batch_size = 4
cache = "{cache}"

[grpo]
prompts_per_step = 2
group_size = 4

[optim]
lr = 1e-2

[objective]
kind = "scalarized"

[eval]
every = 0
size = 2
samples = 1
bootstrap = 10
"#,
        run = dir.join("run").display(),
        cache = dir.join("cache").display(),
        train = dir.join("train.jsonl").display(),
        val = dir.join("val.jsonl").display(),
    );
    let mut cfg = TrainConfig::from_toml(&text).unwrap();
    arl::setup::prepare(&mut cfg, |_| {}).unwrap();
    cfg
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn weights(p: &dyn Policy) -> HashMap<String, Vec<f32>> {
    p.vars()
        .into_iter()
        .map(|(n, v)| (n, flat(v.as_tensor())))
        .collect()
}

fn saved(path: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, flat(&t)))
        .collect()
}

#[test]
fn a_lora_checkpoint_loads_and_training_continues() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let run = cfg.run.dir.clone();
    let fresh = weights(&*arl::build_policy(&cfg.policy).unwrap());
    Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap())
        .unwrap()
        .run(|_| {})
        .unwrap();
    let ckpt = saved(&run.join("checkpoints/step-00000002/policy.safetensors"));

    // the checkpoint holds exactly the adapters (one layer's q and v: A and B each)
    assert_eq!(ckpt.len(), 4, "{:?}", ckpt.keys());
    assert!(
        ckpt.keys().all(|n| n.contains(".lora_")),
        "{:?}",
        ckpt.keys()
    );
    assert_eq!(
        ckpt.keys().collect::<std::collections::BTreeSet<_>>(),
        fresh.keys().collect()
    );
    assert_ne!(ckpt, fresh, "training moved the adapters");

    // continue with a larger budget: the adapters are the saved ones
    let mut more = TrainConfig::from_file(&run.join("config.toml")).unwrap();
    more.run.steps = 4;
    let parts = Parts::from_config(&more).unwrap();
    let mut t = Trainer::resume_with(&run, more, parts).unwrap();
    assert_eq!(t.state.step, 2);
    assert_eq!(weights(t.policy()), ckpt);
    let mut steps = Vec::new();
    t.run(|m| steps.push(m.clone())).unwrap();
    assert_eq!(steps.iter().map(|m| m.step).collect::<Vec<_>>(), [3, 4]);
    assert!(
        steps.iter().any(|m| m.update.applied > 0),
        "an update was applied: {steps:?}"
    );
    let after = weights(t.policy());
    assert_ne!(after, ckpt, "training went on from the checkpoint");
    assert!(after.values().flatten().all(|x| x.is_finite()));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);

    // `arlrr eval --model RUN` loads the newest checkpoint's adapters on the same base
    let opts = arl::setup::ModelOptions {
        max_new_tokens: 8,
        temperature: 1.0,
    };
    let (loaded, _) = arl::setup::load_model(&run, &opts).unwrap();
    assert_eq!(weights(&*loaded), after);
    assert_eq!(
        saved(&run.join("checkpoints/step-00000004/policy.safetensors")),
        after
    );
}
