//! A trained run's model outside arlrr, through the real binary: a 2-step LoRA run of a tiny
//! warm-started transformer, whose checkpoint is a PEFT adapter folder (`adapter_config.json`
//! naming its base), which `arlrr generate --lora` reads; `arlrr export` of it merged and not,
//! in f32 and bf16, sharded; the same for a full fine-tune. Every folder is read back with
//! arlrr's own loader and must give the run's logits (bf16: those of the bf16-rounded
//! weights). Where HF transformers and peft are installed (`ARLRR_HF_PYTHON`, else
//! `~/.cache/arlrr/engines/hf` from `scripts/engines/setup.sh hf`), `scripts/check_export.py`
//! loads the same folders with them and its logits must be arlrr's within 1e-4; and an adapter
//! peft itself saved must give arlrr peft's logits.

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{arlrr, ok};

/// The Python check's bound in f32 on the tiny model, and arlrr's own bound where merging
/// reorders float sums.
const TOL: f32 = 1e-4;
/// The bound in f64, where neither side's matmuls leave float32 accumulation-order noise: any
/// difference in what the two compute would stand out above it.
const TOL64: f64 = 1e-9;

const RUBRIC: &str = r#"[
 {"criterion":"comma","points":3,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":[","]}},
 {"criterion":"the","points":2,"tags":["axis:completeness"],"check":{"kind":"contains_any","phrases":["the"]}},
 {"criterion":"period","points":1,"tags":["axis:instruction_following"],"check":{"kind":"contains_any","phrases":["."]}}
]"#;

fn write_split(path: &Path, n: usize) {
    let rubric: Value = serde_json::from_str(RUBRIC).unwrap();
    let text: String = (0..n)
        .map(|i| {
            let ex = serde_json::json!({
                "prompt_id": format!("p{i}"),
                "prompt": [{"role": "user", "content": format!("I have a cold ({i}). What should I do?")}],
                "rubrics": rubric,
            });
            format!("{ex}\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Trains 2 steps of a tiny warm-started transformer (LoRA on q, v and down, or full
/// fine-tuning) into `dir/run`; returns the run folder.
fn train(dir: &Path, lora: bool) -> PathBuf {
    write_split(&dir.join("train.jsonl"), 8);
    write_split(&dir.join("val.jsonl"), 4);
    let lora = if lora {
        "lora = { rank = 2, alpha = 4.0, targets = [\"q\", \"v\", \"down\"] }\ninit_seed = 5"
    } else {
        ""
    };
    let text = format!(
        r#"
[run]
seed = 3
steps = 2
checkpoint_every = 2

[data]
train = "{data}/train.jsonl"
val = "{data}/val.jsonl"

[policy]
kind = "transformer"
model = "warm-start"
max_new_tokens = 12
{lora}

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
cache = "{data}/cache"

[grpo]
prompts_per_step = 4
group_size = 4

[optim]
lr = 2e-2

[objective]
kind = "scalarized"

[eval]
every = 0
size = 2
samples = 1
bootstrap = 10
"#,
        data = dir.display()
    );
    train_config(dir, &text, &[])
}

/// Trains the run config `text` (data files already in `dir`) into `dir/run` with `envs`.
fn train_config(dir: &Path, text: &str, envs: &[(&str, &Path)]) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(&config, text).unwrap();
    let run = dir.join("run");
    let mut cmd = arlrr();
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let res = cmd
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    ok(&res);
    run
}

fn export(run: &Path, out: &Path, args: &[&str]) -> std::process::Output {
    arlrr()
        .args(["export", "--run"])
        .arg(run)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Logits [T, V] of `ids`.
fn logits(m: &policy::Transformer, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones_like(&t).unwrap();
    m.forward(&t, &mask).unwrap().squeeze(0).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The prompt the logits are compared on: a chat prompt in the model's template, as token ids
/// and as text.
fn prompt(m: &policy::Model) -> (Vec<u32>, String) {
    let msgs = [rubric::Message {
        role: "user".into(),
        content: "I have a cold. What should I do?".into(),
    }];
    (
        m.tokenizer.chat_prompt(&msgs).unwrap(),
        m.tokenizer.chat_text(&msgs, true).unwrap(),
    )
}

/// Writes arlrr's logits for `check_export.py`: `ids` (i64) and `logits` (f32 [T, V]).
fn write_ref(path: &Path, ids: &[u32], logits: &Tensor) {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let n = ids.len();
    let map = std::collections::HashMap::from([
        (
            "ids".to_string(),
            Tensor::from_vec(ids, n, &Device::Cpu).unwrap(),
        ),
        ("logits".to_string(), logits.clone()),
    ]);
    candle_core::safetensors::save(&map, path).unwrap();
}

fn load(path: &Path) -> policy::Model {
    load_as(path, DType::F32)
}

/// The model at `path`, computing in `dtype` (f64: without f32's rounding noise).
fn load_as(path: &Path, dtype: DType) -> policy::Model {
    policy::Model::load_with(path, dtype, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The run's policy: its base with the checkpoint's adapters.
fn base_with_adapter(base: &Path, adapter: &Path) -> policy::Model {
    base_with_adapter_as(base, adapter, DType::F32)
}

fn base_with_adapter_as(base: &Path, adapter: &Path, dtype: DType) -> policy::Model {
    let mut m = load_as(base, dtype);
    policy::load_lora(&mut m.transformer, adapter).unwrap();
    m
}

/// The Python with transformers and peft, if installed.
fn hf_python() -> Option<String> {
    rubric::assets::engine_python(
        "hf",
        "ARLRR_HF_PYTHON",
        &["transformers", "peft", "safetensors", "torch"],
    )
}

/// Runs `scripts/check_export.py` on `plan`; its report.
fn python_check(python: &str, dir: &Path, plan: &Value) -> Value {
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let report = dir.join("report.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_export.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&plan_path)
        .arg("--out")
        .arg(&report)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_export.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&report)
}

/// Every case of a `check_export.py` report within `tol32` (f32 cases) or `TOL64` (f64) of
/// arlrr's logits, same argmax.
fn assert_cases_close(report: &Value, tol32: f64) {
    for case in report["cases"].as_array().unwrap() {
        eprintln!("transformers/peft vs arlrr: {case}");
        let diff = case["max_abs_diff"].as_f64().unwrap();
        let tol = if case["dtype"] == "float64" {
            TOL64
        } else {
            tol32
        };
        assert!(diff <= tol, "{case}");
        assert_eq!(case["argmax_agree"], true, "{case}");
        if let Some(m) = case.get("tokenizer_ids_match") {
            assert_eq!(m, true, "{case}");
        }
    }
}

#[test]
fn lora_checkpoints_are_peft_adapters_and_export_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = train(d, true);
    let ckpt = run.join("checkpoints/step-00000002");

    // the checkpoint is a PEFT adapter folder naming the run's base model
    let cfg = json(&ckpt.join("adapter_config.json"));
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    let model = PathBuf::from(saved["policy"]["model"].as_str().unwrap());
    let base = PathBuf::from(cfg["base_model_name_or_path"].as_str().unwrap());
    assert_eq!(base, model, "{cfg}");
    assert!(base.is_absolute() && base.join("config.json").exists());
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(
        (cfg["r"].clone(), cfg["lora_alpha"].clone()),
        (2.into(), 4.into())
    );
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    // its tensors are the ones the run resumes from
    let adapter =
        candle_core::safetensors::load(ckpt.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let resumable =
        candle_core::safetensors::load(ckpt.join("policy.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(adapter.len(), resumable.len());
    assert!(adapter
        .keys()
        .all(|k| k.starts_with("base_model.model.model.layers.")));
    for (name, t) in &adapter {
        assert_eq!(max_diff(t, &resumable[name]), 0.0, "{name}");
    }
    // and the adapters were trained: B is no longer zero
    assert!(adapter
        .iter()
        .any(|(n, t)| n.ends_with("lora_B.weight") && max_diff(t, &t.zeros_like().unwrap()) > 0.0));

    // arlrr's logits of the run's policy
    let policy = base_with_adapter(&base, &ckpt);
    let (ids, text) = prompt(&policy);
    let want = logits(&policy.transformer, &ids);
    let plain = logits(&load(&base).transformer, &ids);
    assert!(
        max_diff(&want, &plain) > 1e-4,
        "the adapters change the model"
    );

    // `generate --lora` reads the checkpoint (and the run directory), the base from the adapter
    for lora in [&ckpt, &run] {
        let out = arlrr()
            .args([
                "generate",
                "--prompt",
                "I have a cold.",
                "--max-tokens",
                "4",
            ])
            .args(["--temperature", "0", "--lora"])
            .arg(lora)
            .output()
            .unwrap();
        let stderr = ok(&out);
        assert!(stderr.contains(&base.display().to_string()), "{stderr}");
    }

    // merged, f32: the run's function up to the merge's rounding
    let merged = d.join("merged-f32");
    let stdout = String::from_utf8_lossy(&ok_out(export(
        &run,
        &merged,
        &["--merge", "--dtype", "f32"],
    )))
    .into_owned();
    assert!(
        stdout.contains("model.safetensors") && stdout.contains("LoRA merged"),
        "{stdout}"
    );
    assert_eq!(json(&merged.join("config.json"))["dtype"], "float32");
    assert!(
        merged.join("tokenizer.json").exists() && merged.join("tokenizer_config.json").exists()
    );
    assert!(!merged.join("adapter").exists());
    let got = logits(&load(&merged).transformer, &ids);
    let merge_gap = max_diff(&got, &want);
    eprintln!("arlrr, merged f32 export vs the run's policy: {merge_gap:e}");
    assert!(merge_gap <= 1e-5, "{merge_gap}");

    // merged, bf16, in shards of at most 4 KB
    let sharded = d.join("merged-bf16");
    ok_out(export(
        &run,
        &sharded,
        &["--merge", "--dtype", "bf16", "--max-shard-size", "4KB"],
    ));
    assert!(!sharded.join("model.safetensors").exists());
    let index = json(&sharded.join("model.safetensors.index.json"));
    let mut files: Vec<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f.as_str().unwrap())
        .collect();
    files.sort();
    files.dedup();
    assert!(files.len() > 2, "{files:?}");
    assert_eq!(json(&sharded.join("config.json"))["dtype"], "bfloat16");
    let (_, tensors) = policy::model::read_hf_weights(&sharded, &Device::Cpu).unwrap();
    assert!(tensors.values().all(|t| t.dtype() == DType::BF16));
    let bf16 = load(&sharded);
    let got_bf16 = logits(&bf16.transformer, &ids);
    // exactly the run's policy merged in f32 and rounded to bf16 once
    let rounded = base_with_adapter(&base, &ckpt);
    let mut rounded = rounded;
    rounded.transformer.merge_lora().unwrap();
    for (_, v) in rounded.transformer.named_vars() {
        let r = v
            .as_tensor()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32);
        v.set(&r.unwrap().copy().unwrap()).unwrap();
    }
    assert_eq!(
        max_diff(&got_bf16, &logits(&rounded.transformer, &ids)),
        0.0
    );
    let bf16_gap = max_diff(&got_bf16, &want);
    eprintln!("arlrr, merged bf16 export vs the run's f32 policy: {bf16_gap:e}");
    assert!(bf16_gap > 0.0);

    // not merged, dtype auto (the warm start is stored in f32): base + adapter/
    let unmerged = d.join("unmerged");
    let stdout =
        String::from_utf8_lossy(&ok_out(export(&run, &unmerged, &["--step", "2"]))).into_owned();
    assert!(stdout.contains("PEFT adapter"), "{stdout}");
    assert_eq!(json(&unmerged.join("config.json"))["dtype"], "float32");
    let acfg = json(&unmerged.join("adapter/adapter_config.json"));
    assert_eq!(
        acfg["base_model_name_or_path"],
        unmerged.display().to_string()
    );
    let from_export = base_with_adapter(&unmerged, &unmerged.join("adapter"));
    assert_eq!(
        max_diff(&logits(&from_export.transformer, &ids), &want),
        0.0
    );

    // a folder that is not empty is written over only with --overwrite; an adapter of an
    // earlier export goes when the new one merges
    let again = export(&run, &unmerged, &["--merge"]);
    assert!(!again.status.success());
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(
        e.contains(&unmerged.display().to_string()) && e.contains("--overwrite"),
        "{e}"
    );
    let over = d.join("over");
    ok_out(export(&run, &over, &[]));
    ok_out(export(&run, &over, &["--merge", "--overwrite"]));
    assert!(!over.join("adapter").exists());
    // no checkpoint of that step: the error lists the steps there are
    let e = export(&run, &d.join("none"), &["--step", "1"]);
    assert!(!e.status.success());
    let e = String::from_utf8_lossy(&e.stderr);
    assert!(e.contains("no checkpoint of step 1 (steps: 2)"), "{e}");
    let e = export(&run, &d.join("none"), &["--dtype", "f64"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("--dtype"));

    let Some(python) = hf_python() else {
        eprintln!(
            "no HF transformers + peft (ARLRR_HF_PYTHON or ~/.cache/arlrr/engines/hf, from \
             scripts/engines/setup.sh hf): the folders were not loaded with them"
        );
        return;
    };
    let reference = d.join("ref.safetensors");
    write_ref(&reference, &ids, &want);
    let reference_bf16 = d.join("ref-bf16.safetensors");
    write_ref(&reference_bf16, &ids, &got_bf16);
    let reference64 = d.join("ref-f64.safetensors");
    let want64 = logits(
        &base_with_adapter_as(&base, &ckpt, DType::F64).transformer,
        &ids,
    );
    write_ref(&reference64, &ids, &want64);
    let peft_written = d.join("peft-written");
    let peft_logits = d.join("peft-logits.safetensors");
    let plan = serde_json::json!({
        "cases": [
            // AutoPeftModelForCausalLM: the base from base_model_name_or_path
            {"name": "checkpoint (AutoPeftModelForCausalLM)", "adapter": ckpt,
             "ref": reference, "text": text},
            {"name": "checkpoint (PeftModel over the base)", "adapter": ckpt, "base": base,
             "ref": reference},
            {"name": "checkpoint (AutoPeftModelForCausalLM, f64)", "adapter": ckpt,
             "ref": reference64, "dtype": "float64"},
            {"name": "export --merge --dtype f32", "model": merged, "ref": reference,
             "text": text},
            {"name": "export --merge --dtype bf16 (shards)", "model": sharded,
             "ref": reference_bf16},
            {"name": "export, base + adapter/", "adapter": unmerged.join("adapter"),
             "ref": reference},
        ],
        "make_adapter": {"base": base, "out": peft_written, "ids": reference,
                         "logits": peft_logits, "r": 3, "lora_alpha": 5,
                         "target_modules": ["q_proj", "v_proj", "up_proj"], "seed": 1},
    });
    let report = python_check(&python, d, &plan);
    assert_cases_close(&report, TOL as f64);
    // an adapter peft saved: arlrr computes peft's logits with it
    let theirs = candle_core::safetensors::load(&peft_logits, &Device::Cpu).unwrap();
    let with_peft_adapter = base_with_adapter(&base, &peft_written);
    let gap = max_diff(
        &logits(&with_peft_adapter.transformer, &ids),
        &theirs["logits"],
    );
    eprintln!("arlrr with a peft-saved adapter vs peft: {gap:e}");
    assert!(gap <= TOL, "{gap}");
    assert!(
        max_diff(&theirs["logits"], &plain) > 1e-3,
        "peft's adapter changes the model"
    );
    let out = arlrr()
        .args(["generate", "--prompt", "Hi", "--max-tokens", "2", "--lora"])
        .arg(&peft_written)
        .output()
        .unwrap();
    ok(&out);
}

#[test]
fn full_fine_tune_exports_its_trained_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = train(d, false);
    let ckpt = run.join("checkpoints/step-00000002");
    assert!(!ckpt.join("adapter_config.json").exists());
    // the trained weights: policy.safetensors holds every weight under its HF name
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    let base = PathBuf::from(saved["policy"]["model"].as_str().unwrap());
    let base_model = load(&base);
    let trained =
        candle_core::safetensors::load(ckpt.join("policy.safetensors"), &Device::Cpu).unwrap();
    let trained =
        policy::Transformer::from_tensors(&base_model.config, trained, DType::F32, &Device::Cpu)
            .unwrap();
    let (ids, text) = prompt(&base_model);
    let want = logits(&trained, &ids);
    assert!(max_diff(&want, &logits(&base_model.transformer, &ids)) > 0.0);
    // --merge has nothing to merge and is no error
    let out = d.join("export");
    ok_out(export(&ckpt, &out, &["--merge"]));
    assert_eq!(json(&out.join("config.json"))["dtype"], "float32");
    assert_eq!(max_diff(&logits(&load(&out).transformer, &ids), &want), 0.0);
    // generate --lora on a full fine-tune's run says what it is
    let e = arlrr()
        .args(["generate", "--prompt", "Hi", "--lora"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("adapter_config.json"));

    let Some(python) = hf_python() else {
        eprintln!("no HF transformers + peft: the export was not loaded with them");
        return;
    };
    let reference = d.join("ref.safetensors");
    write_ref(&reference, &ids, &want);
    let plan = serde_json::json!({"cases": [
        {"name": "export of a full fine-tune", "model": out, "ref": reference, "text": text},
    ]});
    assert_cases_close(&python_check(&python, d, &plan), TOL as f64);
}

/// stdout of a successful `arlrr` run.
fn ok_out(out: std::process::Output) -> Vec<u8> {
    ok(&out);
    out.stdout
}

/// The same checks on the real model: 2 GRPO steps of SmolLM2-135M-Instruct straight from its
/// Q4_1 GGUF with LoRA on every projection (bf16 matmuls, as the shipped SmolLM2 configs), then
/// the checkpoint through peft over the base arlrr wrote for the GGUF, and the merged exports
/// in f32 and bf16 (sharded) through transformers. Minutes on 2 cores and the HF Python needed:
/// `cargo test --release -p arlrr --test export_cli -- --ignored --nocapture`.
#[test]
#[ignore]
fn smollm2_gguf_lora_checkpoint_and_exports_load_in_transformers() {
    let Some(python) = hf_python() else {
        eprintln!("no HF transformers + peft: nothing to check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_split(&d.join("train.jsonl"), 8);
    write_split(&d.join("val.jsonl"), 4);
    let text = format!(
        r#"
[run]
seed = 0
steps = 2
checkpoint_every = 2

[data]
train = "{data}/train.jsonl"
val = "{data}/val.jsonl"

[policy]
kind = "transformer"
model = "smollm2"
max_new_tokens = 16
sample_precision = "bf16"
train_precision = "bf16"
lora = {{ rank = 8, alpha = 16.0, targets = ["q", "k", "v", "o", "gate", "up", "down"] }}

[grpo]
prompts_per_step = 2
group_size = 4

[optim]
lr = 1e-3

[objective]
kind = "scalarized"

[eval]
every = 0
size = 2
samples = 1
bootstrap = 10
"#,
        data = d.display()
    );
    // the GGUF's base folder goes to this cache, not the user's
    let cache = d.join("cache");
    let run = train_config(d, &text, &[("ARLRR_CACHE", &cache)]);
    let ckpt = run.join("checkpoints/step-00000002");
    let cfg = json(&ckpt.join("adapter_config.json"));
    let base = PathBuf::from(cfg["base_model_name_or_path"].as_str().unwrap());
    assert!(base.starts_with(cache.join("gguf-base")), "{base:?}");
    assert!(base.join("arlrr-base.json").exists());
    let gguf = rubric::assets::smollm2_gguf().unwrap();
    // the base folder is the GGUF as arlrr loads it
    let policy = base_with_adapter(&base, &ckpt);
    let from_gguf = base_with_adapter(&gguf, &ckpt);
    let (ids, text) = prompt(&policy);
    let want = logits(&policy.transformer, &ids);
    assert_eq!(max_diff(&want, &logits(&from_gguf.transformer, &ids)), 0.0);
    let plain = logits(&load(&base).transformer, &ids);
    eprintln!(
        "SmolLM2: the adapters move the logits by up to {:e}",
        max_diff(&want, &plain)
    );
    assert!(max_diff(&want, &plain) > 1e-3);

    let merged = d.join("merged-f32");
    ok_out(export(&run, &merged, &["--merge", "--dtype", "f32"]));
    let merged_gap = max_diff(&logits(&load(&merged).transformer, &ids), &want);
    eprintln!("arlrr, merged f32 export vs the run's policy: {merged_gap:e}");
    // dtype auto: bf16 for a GGUF base; 270 MB in shards of at most 100 MB
    let sharded = d.join("merged-bf16");
    let stdout = ok_out(export(
        &run,
        &sharded,
        &["--merge", "--max-shard-size", "100MB"],
    ));
    eprintln!("{}", String::from_utf8_lossy(&stdout).trim());
    assert_eq!(json(&sharded.join("config.json"))["dtype"], "bfloat16");
    assert!(sharded.join("model-00003-of-00003.safetensors").exists());
    let got_bf16 = logits(&load(&sharded).transformer, &ids);
    eprintln!(
        "arlrr, merged bf16 export vs the run's f32 policy: {:e} (logits up to {:e})",
        max_diff(&got_bf16, &want),
        want.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    );
    // arlrr's logits of each folder, in f32 and in f64
    let mut cases = Vec::new();
    for (dtype, suffix) in [(DType::F32, ""), (DType::F64, ", f64")] {
        let name = if dtype == DType::F64 {
            "float64"
        } else {
            "float32"
        };
        let reference = |file: &str, m: &policy::Model| {
            let path = d.join(format!("{file}-{name}.safetensors"));
            write_ref(&path, &ids, &logits(&m.transformer, &ids));
            path
        };
        let base_ref = reference("base", &load_as(&base, dtype));
        let policy_ref = reference("policy", &base_with_adapter_as(&base, &ckpt, dtype));
        let merged_ref = reference("merged", &load_as(&merged, dtype));
        let bf16_ref = reference("bf16", &load_as(&sharded, dtype));
        cases.extend([
            serde_json::json!({"name": format!("SmolLM2 base (the GGUF's folder){suffix}"),
                "model": base, "ref": base_ref, "dtype": name}),
            serde_json::json!({"name": format!("SmolLM2 checkpoint (AutoPeftModelForCausalLM){suffix}"),
                "adapter": ckpt, "ref": policy_ref, "text": text, "dtype": name}),
            serde_json::json!({"name": format!("SmolLM2 export --merge --dtype f32{suffix}"),
                "model": merged, "ref": merged_ref, "dtype": name}),
            serde_json::json!({"name": format!("SmolLM2 export --merge (bf16, 3 shards){suffix}"),
                "model": sharded, "ref": bf16_ref, "dtype": name}),
        ]);
    }
    let report = python_check(&python, d, &serde_json::json!({ "cases": cases }));
    // f32: the accumulation-order noise of 30 layers (~1e-4 here, as between arlrr's own
    // decoding and teacher-forced passes, crates/policy/tests/real_model.rs); f64: exact
    assert_cases_close(&report, 1e-3);
}
