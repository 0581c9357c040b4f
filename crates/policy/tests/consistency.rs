//! Consistency checks on tiny random models: padding invariance, KV-cache generation vs full
//! recomputation, generation log-probs vs teacher-forced log-probs, save/load round trips.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{llama_metadata, max_abs_diff, to_gguf_bytes};
use policy::{
    completion_log_probs, generate, generate_groups, Arch, Config, GenerationConfig, LoraConfig,
    LoraTarget, Transformer,
};
use rand::SeedableRng;

fn model(arch: Arch, seed: u64) -> Transformer {
    // A larger init than the default 0.02 so logits are far from uniform and bugs show.
    let cfg = Config::tiny(arch);
    let m = Transformer::random(&cfg, DType::F32, &Device::Cpu, seed).unwrap();
    for (n, v) in m.named_vars() {
        if !n.ends_with("norm.weight") && !n.ends_with("bias") {
            v.set(&(v.as_tensor() * 15.0).unwrap()).unwrap();
        }
    }
    m
}

fn logits_of(m: &Transformer, ids: &[u32]) -> Tensor {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones_like(&t).unwrap();
    m.forward(&t, &mask).unwrap().squeeze(0).unwrap()
}

#[test]
fn padding_left_or_right_does_not_change_logits() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let m = model(arch, 1);
        let a = [5u32, 9, 3, 17, 8];
        let b = [4u32, 30];
        let la = logits_of(&m, &a);
        let lb = logits_of(&m, &b);
        let ids = Tensor::new(
            &[[5u32, 9, 3, 17, 8], [0, 0, 0, 4, 30], [4, 30, 0, 0, 0]],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(
            &[[1u8, 1, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 0, 0, 0]],
            &Device::Cpu,
        )
        .unwrap();
        let out = m.forward(&ids, &mask).unwrap();
        assert!(max_abs_diff(&out.get(0).unwrap(), &la) < 1e-5);
        let left = out.get(1).unwrap().narrow(0, 3, 2).unwrap();
        let right = out.get(2).unwrap().narrow(0, 0, 2).unwrap();
        assert!(max_abs_diff(&left, &lb) < 1e-5, "{arch:?} left padding");
        assert!(max_abs_diff(&right, &lb) < 1e-5, "{arch:?} right padding");
        // And the outputs are not trivially equal across positions.
        assert!(max_abs_diff(&la.get(0).unwrap(), &la.get(1).unwrap()) > 1e-3);
    }
}

#[test]
fn greedy_kv_cache_matches_full_recompute() {
    let m = model(Arch::Qwen3, 2);
    let prompts = vec![vec![3u32, 4, 5, 6, 7, 8], vec![10u32, 11]];
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        temperature: 0.0,
        ..Default::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let gens = generate(&m, &prompts, &cfg, &mut rng).unwrap();
    for (p, g) in prompts.iter().zip(&gens) {
        assert_eq!(g.tokens.len(), 8);
        let mut seq = p.clone();
        for &t in &g.tokens {
            let l = logits_of(&m, &seq);
            let last = l.get(seq.len() - 1).unwrap().to_vec1::<f32>().unwrap();
            let best = (0..last.len())
                .max_by(|&i, &j| last[i].total_cmp(&last[j]))
                .unwrap() as u32;
            assert_eq!(best, t, "greedy token differs from full recompute");
            seq.push(t);
        }
    }
}

#[test]
fn generation_logprobs_equal_teacher_forced_with_padding() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let m = model(arch, 3);
        let prompts = vec![vec![3u32, 4, 5, 6, 7], vec![10u32], vec![20u32, 21, 22]];
        let cfg = GenerationConfig {
            max_new_tokens: 10,
            temperature: 0.8,
            top_k: 20,
            top_p: 0.95,
            stop_ids: vec![2],
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let gens = generate(&m, &prompts, &cfg, &mut rng).unwrap();
        for g in &gens {
            assert_eq!(g.tokens.len(), g.logprobs.len());
            assert_eq!(g.finished, g.tokens.last() == Some(&2));
            assert!(g.finished || g.tokens.len() == 10);
        }
        let pairs: Vec<_> = prompts
            .iter()
            .cloned()
            .zip(gens.iter().map(|g| g.tokens.clone()))
            .collect();
        let lp = completion_log_probs(&m, &pairs, 0.8).unwrap();
        let tf = lp.logp.to_vec2::<f32>().unwrap();
        let mask = lp.mask.to_vec2::<f32>().unwrap();
        let ent = lp.entropy.to_vec2::<f32>().unwrap();
        for (i, g) in gens.iter().enumerate() {
            for (j, &l) in g.logprobs.iter().enumerate() {
                assert!(
                    (tf[i][j] - l).abs() < 1e-4,
                    "{arch:?} row {i} tok {j}: generated {l} vs teacher-forced {}",
                    tf[i][j]
                );
                assert_eq!(mask[i][j], 1.0);
                assert!(ent[i][j] > 0.0 && ent[i][j] <= (37f32).ln() + 1e-4);
            }
            for j in g.logprobs.len()..tf[i].len() {
                assert_eq!(mask[i][j], 0.0);
                assert_eq!(tf[i][j], 0.0);
            }
        }
    }
}

#[test]
fn shared_prefill_generates_what_repeated_prompts_do() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let m = model(arch, 4);
        let prompts = vec![vec![3u32, 4, 5, 6, 7], vec![10u32], vec![20u32, 21, 22]];
        let cfg = GenerationConfig {
            max_new_tokens: 12,
            temperature: 0.9,
            top_k: 25,
            top_p: 0.95,
            stop_ids: vec![2],
            ..Default::default()
        };
        let group = 4;
        let repeated: Vec<Vec<u32>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), group))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let want = generate(&m, &repeated, &cfg, &mut rng).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let got = generate_groups(&m, &prompts, group, &cfg, &mut rng).unwrap();
        assert_eq!(got.len(), want.len());
        // The samples of a group differ (the fork does not tie them together).
        assert!(got[..group].iter().any(|g| g.tokens != got[0].tokens));
        let mut worst = 0f32;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.tokens, w.tokens, "{arch:?} row {i}");
            assert_eq!(g.finished, w.finished, "{arch:?} row {i}");
            for (a, b) in g.logprobs.iter().zip(&w.logprobs) {
                worst = worst.max((a - b).abs());
            }
        }
        println!("{arch:?}: shared prefill, max |log-prob difference| {worst:e}");
        assert!(worst < 1e-5, "{arch:?}: {worst}");
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let m = model(Arch::Llama, 4);
    let prompts = vec![vec![3u32, 4, 5]; 4];
    let cfg = GenerationConfig {
        max_new_tokens: 12,
        temperature: 1.0,
        ..Default::default()
    };
    let run = |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        generate(&m, &prompts, &cfg, &mut rng).unwrap()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn a_sampling_copy_made_once_samples_what_one_made_per_call_does() {
    // `arlrr serve-judge` packs its copy at startup; `generate` packs one per call.
    let m = model(Arch::Llama, 4);
    let prompts = vec![vec![3u32, 4, 5]; 3];
    for precision in [
        policy::Precision::Bf16,
        policy::Precision::Int8,
        policy::Precision::Int4,
    ] {
        let cfg = GenerationConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            precision,
            ..Default::default()
        };
        let copy = m.sampling_copy(precision).unwrap().into_owned();
        assert!(matches!(
            copy.sampling_copy(precision).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        let run = |t: &Transformer| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            generate(t, &prompts, &cfg, &mut rng).unwrap()
        };
        assert_eq!(run(&m), run(&copy), "{precision:?}");
        // an f32 sampler of a packed copy would silently sample the packed weights: refused
        assert!(copy.sampling_copy(policy::Precision::F32).is_err());
    }
}

#[test]
fn save_load_round_trip_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Llama, Arch::Qwen3] {
        let m = model(arch, 5);
        let path = dir.path().join(format!("{arch:?}"));
        policy::save_hf(&m, &path).unwrap();
        let back = policy::load_hf(&path, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(back.cfg, m.cfg);
        let ids = [1u32, 5, 9, 13, 20];
        assert_eq!(
            max_abs_diff(&logits_of(&m, &ids), &logits_of(&back, &ids)),
            0.0
        );
    }
}

#[test]
fn lora_save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(Arch::Qwen2, 6);
    let ids = [1u32, 5, 9, 13, 20];
    let base = logits_of(&m, &ids);
    let lcfg = LoraConfig {
        rank: 3,
        alpha: 6.0,
        targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
    };
    m.add_lora(&lcfg, 1).unwrap();
    // Fresh adapters do not change the function.
    assert!(max_abs_diff(&base, &logits_of(&m, &ids)) < 1e-6);
    for (n, v) in m.lora_vars() {
        if n.ends_with("lora_B.weight") {
            v.set(&(v.ones_like().unwrap() * 0.3).unwrap()).unwrap();
        }
    }
    let adapted = logits_of(&m, &ids);
    assert!(max_abs_diff(&base, &adapted) > 1e-3);
    policy::save_lora(&m, &lcfg, "/models/base", dir.path()).unwrap();
    let mut fresh = model(Arch::Qwen2, 6);
    let cfg_back = policy::load_lora(&mut fresh, dir.path()).unwrap();
    assert_eq!(cfg_back, lcfg);
    assert_eq!(max_abs_diff(&adapted, &logits_of(&fresh, &ids)), 0.0);
    assert!(fresh.base_frozen());
    // a PEFT adapter folder: the fields peft needs to find the base and rebuild the adapters
    let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["base_model_name_or_path"], "/models/base");
    assert_eq!(j["peft_type"], "LORA");
    assert_eq!(j["task_type"], "CAUSAL_LM");
    assert_eq!(j["r"], 3);
    assert_eq!(j["lora_alpha"], 6);
    assert_eq!(
        j["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert_eq!(j["lora_dropout"], 0.0);
    assert_eq!(j["bias"], "none");
    assert_eq!(
        policy::adapter_base_model(dir.path()).unwrap().as_deref(),
        Some("/models/base")
    );
}

/// Settings of a peft-written adapter_config.json that arlrr's adapters cannot compute are
/// refused with the file and the field; peft's other fields are read over.
#[test]
fn peft_adapter_configs_arlrr_cannot_compute_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(Arch::Llama, 6);
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![LoraTarget::Q, LoraTarget::V],
    };
    m.add_lora(&lcfg, 1).unwrap();
    policy::save_lora(&m, &lcfg, "base", dir.path()).unwrap();
    let path = dir.path().join("adapter_config.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut j = saved.clone();
        j[field] = value;
        std::fs::write(&path, j.to_string()).unwrap();
        let mut fresh = model(Arch::Llama, 6);
        policy::load_lora(&mut fresh, dir.path()).map(|_| ())
    };
    // fields peft 0.22 writes with their defaults load
    with("peft_version", "0.22.0".into()).unwrap();
    with("rank_pattern", serde_json::json!({})).unwrap();
    with("target_modules", serde_json::json!(["v_proj", "q_proj"])).unwrap();
    for (field, value) in [
        ("use_rslora", serde_json::json!(true)),
        ("use_dora", serde_json::json!(true)),
        ("bias", serde_json::json!("all")),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("rank_pattern", serde_json::json!({"q_proj": 4})),
        ("target_modules", serde_json::json!(".*proj")),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"])),
        ("peft_type", serde_json::json!("IA3")),
    ] {
        let e = with(field, value.clone()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("field `{field}`")),
            "{field} = {value}: {e}"
        );
        assert!(e.contains("adapter_config.json"), "{e}");
    }
    // adapters of projections the config does not name: refused, not ignored
    with("target_modules", serde_json::json!(["q_proj"])).unwrap_err();
}

/// `save_hf_with`: bf16 or f16 weights, sharded as transformers shards above a size, with an
/// index `read_hf_weights` follows; the model read back is the saved one rounded to the dtype.
#[test]
fn sharded_reduced_precision_saves_load_back() {
    let m = model(Arch::Llama, 7);
    let ids = [1u32, 5, 9, 13, 20];
    let dir = tempfile::tempdir().unwrap();
    for (dtype, name) in [
        (DType::F32, "float32"),
        (DType::BF16, "bfloat16"),
        (DType::F16, "float16"),
    ] {
        let path = dir.path().join(name);
        // a shard limit of 1 KB: every matrix of the tiny model passes it alone
        let opts = policy::SaveOptions {
            dtype,
            max_shard_bytes: 1000,
        };
        policy::save_hf_with(&m, &path, &opts).unwrap();
        assert!(!path.join("model.safetensors").exists());
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(path.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), m.named_vars().len());
        let mut files: Vec<&str> = map.values().map(|f| f.as_str().unwrap()).collect();
        files.sort();
        files.dedup();
        let k = files.len();
        assert!(k > 2, "{k} shards");
        assert_eq!(files[0], format!("model-00001-of-{k:05}.safetensors"));
        let bytes: u64 = m
            .named_vars()
            .iter()
            .map(|(_, v)| (v.elem_count() * dtype.size_in_bytes()) as u64)
            .sum();
        assert_eq!(index["metadata"]["total_size"], bytes);
        let (cfg, tensors) = policy::model::read_hf_weights(&path, &Device::Cpu).unwrap();
        assert!(tensors.values().all(|t| t.dtype() == dtype));
        assert_eq!(policy::stored_dtype(&path).unwrap(), Some(dtype));
        let back = Transformer::from_tensors(&cfg, tensors, DType::F32, &Device::Cpu).unwrap();
        // the reference: the same weights rounded to `dtype` and back
        let rounded = model(Arch::Llama, 7);
        for (_, v) in rounded.named_vars() {
            let r = v.as_tensor().to_dtype(dtype).unwrap().to_dtype(DType::F32);
            v.set(&r.unwrap().copy().unwrap()).unwrap();
        }
        let gap = max_abs_diff(&logits_of(&rounded, &ids), &logits_of(&back, &ids));
        assert_eq!(gap, 0.0, "{name}");
        if dtype != DType::F32 {
            assert!(max_abs_diff(&logits_of(&m, &ids), &logits_of(&back, &ids)) > 0.0);
        }
        // saved again unsharded into the same folder: the shards and the index go
        policy::save_hf_with(&m, &path, &policy::SaveOptions::default()).unwrap();
        let left: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors") || n.ends_with(".json"))
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(policy::stored_dtype(&path).unwrap(), Some(DType::F32));
    }
    assert_eq!(policy::parse_size("5GB").unwrap(), 5_000_000_000);
    assert_eq!(policy::parse_size("20KB").unwrap(), 20_000);
    assert_eq!(policy::parse_size("2MiB").unwrap(), 2 << 20);
    assert_eq!(policy::parse_size("1234").unwrap(), 1234);
    assert!(policy::parse_size("5 parsecs").is_err());
    assert!(policy::parse_size("0").is_err());
}

#[test]
fn gguf_layout_round_trip_gives_same_model() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let m = model(arch, 7);
        let bytes = to_gguf_bytes(&m, &llama_metadata(&m.cfg));
        let mut cur = std::io::Cursor::new(bytes);
        let content = candle_core::quantized::gguf_file::Content::read(&mut cur).unwrap();
        let g = policy::gguf::read_content(content, &mut cur, &Device::Cpu).unwrap();
        let mut expect = m.cfg.clone();
        expect.bos_token_id = None;
        assert_eq!(g.config, expect);
        let back =
            Transformer::from_tensors(&g.config, g.tensors, DType::F32, &Device::Cpu).unwrap();
        let ids = [1u32, 5, 9, 13, 20];
        assert!(max_abs_diff(&logits_of(&m, &ids), &logits_of(&back, &ids)) < 1e-6);
    }
}

#[test]
fn hf_config_json_round_trip() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3] {
        let cfg = Config::tiny(arch);
        let back = Config::from_hf_json(&cfg.to_hf_json()).unwrap();
        assert_eq!(back, cfg);
    }
    let err = Config::from_hf_json(
        r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":1,
        "intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("gpt2"));
}

#[test]
fn clear_errors_on_bad_input() {
    let m = model(Arch::Llama, 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let e = generate(&m, &[vec![]], &GenerationConfig::default(), &mut rng).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = completion_log_probs(&m, &[(vec![], vec![1])], 1.0).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = policy::Model::load("/nonexistent/model.gguf")
        .err()
        .unwrap();
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn custom_rms_norm_matches_primitives_in_value_and_gradient() {
    use policy::ops::{rms_norm, rms_norm_primitive};
    let x = candle_core::Var::from_tensor(
        &(Tensor::randn(0f64, 3.0, (3, 4, 7), &Device::Cpu).unwrap()),
    )
    .unwrap();
    let w = candle_core::Var::from_tensor(&(Tensor::randn(1f64, 0.3, 7, &Device::Cpu).unwrap()))
        .unwrap();
    let c = Tensor::randn(0f64, 1.0, (3, 4, 7), &Device::Cpu).unwrap();
    let a = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    let b = rms_norm_primitive(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-12);
    let ga = (a * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &c).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&x, &w] {
        let (da, db) = (
            ga.get(v.as_tensor()).unwrap(),
            gb.get(v.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(da, db) < 1e-12);
        assert!(common::max_abs(da) > 1e-3);
    }
}

#[test]
fn custom_softmax_ops_match_primitives_in_value_and_gradient() {
    use policy::ops::{
        log_softmax_last, log_softmax_last_primitive, softmax_last, softmax_last_primitive,
    };
    let x = candle_core::Var::from_tensor(
        &(Tensor::randn(0f64, 3.0, (3, 4, 7), &Device::Cpu).unwrap()),
    )
    .unwrap();
    let w = Tensor::randn(0f64, 1.0, (3, 4, 7), &Device::Cpu).unwrap();
    type F = fn(&Tensor) -> policy::Result<Tensor>;
    let pairs: [(F, F); 2] = [
        (softmax_last, softmax_last_primitive),
        (log_softmax_last, log_softmax_last_primitive),
    ];
    for (fast, slow) in pairs {
        let a = fast(x.as_tensor()).unwrap();
        let b = slow(x.as_tensor()).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-12);
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        assert!(max_abs_diff(ga, gb) < 1e-12);
        assert!(common::max_abs(ga) > 1e-3);
    }
}

/// A bf16 sampling copy (LoRA merged into its packed weights) decodes what the f32 model
/// does, up to bf16 rounding: the same greedy tokens on a short run, logits close, and the
/// f32 "copy" is the model itself.
#[test]
fn bf16_sampling_copy_follows_the_f32_model() {
    let mut m = model(Arch::Qwen2, 5);
    let lcfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec![LoraTarget::Q, LoraTarget::Down],
    };
    m.add_lora(&lcfg, 1).unwrap();
    for (_, v) in m.lora_vars() {
        // non-zero B, so a missing merge would show
        v.set(&(v.as_tensor().ones_like().unwrap() * 0.05).unwrap())
            .unwrap();
    }
    assert!(matches!(
        m.sampling_copy(policy::Precision::F32).unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    let copy = m.sampling_copy(policy::Precision::Bf16).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 3, 17, 8]], &Device::Cpu).unwrap();
    let pos = vec![(0..5).collect::<Vec<u32>>()];
    let keys = vec![vec![1u8; 5]];
    let logits = |t: &Transformer| {
        let h = t.forward_infer(&ids, &pos, &keys, None).unwrap();
        t.logits_infer(&h).unwrap()
    };
    let (exact, rounded) = (logits(&m), logits(&copy));
    let scale = exact
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let gap = max_abs_diff(&exact, &rounded);
    assert!(
        gap > 0.0 && gap < 0.05 * scale as f64,
        "gap {gap} at logit scale {scale}"
    );
    let prompts = vec![vec![5u32, 9, 3], vec![4u32, 30, 2, 7]];
    let greedy = |precision| {
        let cfg = GenerationConfig {
            max_new_tokens: 4,
            temperature: 0.0,
            precision,
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let g = generate(&m, &prompts, &cfg, &mut rng).unwrap();
        g.into_iter().map(|g| g.tokens).collect::<Vec<_>>()
    };
    assert_eq!(
        greedy(policy::Precision::F32),
        greedy(policy::Precision::Bf16)
    );
}

#[test]
fn merging_lora_keeps_the_function_and_removes_the_adapters() {
    let mut m = model(Arch::Llama, 6);
    let lcfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: LoraTarget::ALL.to_vec(),
    };
    m.add_lora(&lcfg, 2).unwrap();
    for (_, v) in m.lora_vars() {
        // non-zero B, so the adapters change the function
        v.set(&(v.as_tensor().ones_like().unwrap() * 0.05).unwrap())
            .unwrap();
    }
    let ids = [5u32, 9, 3, 17, 8];
    let before = logits_of(&m, &ids);
    m.merge_lora().unwrap();
    assert!(m.lora_vars().is_empty() && !m.base_frozen());
    let after = logits_of(&m, &ids);
    let scale = before.abs().unwrap().max_all().unwrap();
    let gap = max_abs_diff(&before, &after);
    assert!(
        gap < 1e-5 * scale.to_scalar::<f32>().unwrap() as f64,
        "gap {gap}"
    );
    // and the merged weights are what the model saves: a fresh load computes the same
    let dir = tempfile::tempdir().unwrap();
    policy::save_hf(&m, dir.path()).unwrap();
    let loaded = policy::load_hf(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&after, &logits_of(&loaded, &ids)), 0.0);
}
