//! The real-model config `configs/builtin-smollm2.toml`: a SmolLM2-135M-Instruct warm start (the
//! fetched GGUF, LoRA SFT merged into the saved weights), then two GRPO steps of it on the
//! built-in task with the rule judge, through the real binary: warm start, selection, rollouts,
//! update, validation, test split, checkpoint and report. Uses the real asset (fetched on first
//! use).
//!
//! The shipped config is run with only its counts shrunk (warm-start steps, validation, test and
//! lookahead batches, new tokens), so the test stays within CI minutes on 2 cores. Model, LoRA,
//! judge, GRPO, objective and selector are as shipped.

use std::path::Path;

mod common;
use common::{arlrr, configs, ok, read_jsonl};

#[test]
fn builtin_smollm2_config_runs_two_steps() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let shipped = configs().join("builtin-smollm2.toml");
    let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
    let mut set = |section: &str, key: &str, value: i64| {
        let table = cfg[section].as_table_mut().unwrap();
        assert!(
            table.contains_key(key),
            "[{section}] {key} is in the shipped config"
        );
        table.insert(key.into(), toml::Value::Integer(value));
    };
    set("policy", "max_new_tokens", 24);
    set("eval", "size", 4);
    set("eval", "samples", 1);
    set("eval", "test_size", 4);
    set("phases", "select_size", 2);
    set("phases", "select_samples", 1);
    set("warm_start", "steps", 2);
    set("warm_start", "batch_size", 2);
    let rows = cfg["grpo"]["prompts_per_step"].as_integer().unwrap()
        * cfg["grpo"]["group_size"].as_integer().unwrap();
    // the warm start is cached here, not in the user's cache
    let cache = dir.path().join("cache").display().to_string();
    cfg["warm_start"]
        .as_table_mut()
        .unwrap()
        .insert("cache".into(), toml::Value::String(cache));
    let config = dir.path().join("builtin-smollm2.toml");
    std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
    let out = arlrr()
        .args(["train", "--quiet", "--steps", "2", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    ok(&out);
    let metrics = read_jsonl(run.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 2);
    for m in &metrics {
        assert_eq!(m["samples"], rows, "{m}");
        assert_eq!(m["excluded_samples"], 0, "{m}");
    }
    let tests = std::fs::read_to_string(run.join("test.jsonl")).unwrap();
    assert_eq!(
        tests.lines().count(),
        2,
        "start and end scored on the test split"
    );
    assert!(run
        .join("checkpoints/step-00000002/policy.safetensors")
        .exists());
    // RL started from the fine-tuned SmolLM2, saved as a plain HF folder in the cache
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    let model = Path::new(saved["policy"]["model"].as_str().unwrap());
    assert!(model.starts_with(dir.path().join("cache")), "{model:?}");
    assert!(model.join("model.safetensors").exists() && model.join("tokenizer.json").exists());
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("**Test score: "), "{report}");
}
