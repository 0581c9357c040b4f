//! The model's own chat template, token for token against HF transformers'
//! `apply_chat_template`: SmolLM2's template from its GGUF, and the templates of Qwen2.5,
//! Qwen3 and Llama 3 (fixtures in tests/fixtures/chat_templates/) over the same GGUF
//! tokenizer, on short conversations and a real multi-turn HealthBench prompt.
//!
//! The expected text and ids in `expected.json` were made by
//! `scripts/chat_template_reference.py` (transformers 5.25.0). Where that Python is installed
//! (`scripts/engines/setup.sh hf`, or `ARLRR_HF_PYTHON`), the test runs the script again and
//! checks that transformers still writes exactly the fixture.

use candle_core::quantized::gguf_file::Content;
use policy::{ChatTemplate, Tokenizer};
use rubric::Message;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const LLAMA3_SPECIALS: [&str; 4] = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn gguf_tokenizer() -> Tokenizer {
    let path = rubric::assets::smollm2_gguf().unwrap_or_else(|e| panic!("SmolLM2 GGUF: {e}"));
    let mut f = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut f).unwrap();
    Tokenizer::from_gguf_metadata(&content.metadata).unwrap()
}

/// The tokenizer each case names, set up as the reference script sets up transformers'.
fn tokenizer_for(base: &Tokenizer, template: &str) -> Tokenizer {
    if template == "smollm2" {
        return base.clone();
    }
    let source = std::fs::read_to_string(fixtures().join(format!("{template}.jinja"))).unwrap();
    let mut t = base
        .clone()
        .with_chat_template(ChatTemplate::new(&source).unwrap());
    if template == "llama3" {
        t.add_special_tokens(&LLAMA3_SPECIALS);
        t.set_special_token("bos_token", "<|begin_of_text|>")
            .unwrap();
    }
    t
}

fn messages(case: &Value) -> Vec<Message> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn smollm2_gguf_and_the_qwen_and_llama3_templates_match_transformers_token_for_token() {
    let base = gguf_tokenizer();
    assert!(!base.chat_template.is_fallback(), "the GGUF has a template");
    let exp = expected();
    let cases = exp["cases"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let template = case["template"].as_str().unwrap();
        let tok = tokenizer_for(&base, template);
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let msgs = messages(case);
        let what = format!("{template} / {} / add={add}", case["conversation"]);
        let text = tok.chat_text(&msgs, add).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{what}");
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(&text).unwrap(), ids, "{what}");
        if add {
            assert_eq!(tok.chat_prompt(&msgs).unwrap(), ids, "{what}");
        }
        seen.insert(template.to_string());
    }
    let want = ["llama3", "qwen2.5", "qwen3", "smollm2"];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), want);
    assert!(cases.len() >= 20, "{} cases", cases.len());
}

#[test]
fn the_rendering_differs_where_the_models_differ() {
    // the fixtures are what they claim: each template renders its own markers
    let base = gguf_tokenizer();
    let msgs = [Message {
        role: "user".into(),
        content: "Hi".into(),
    }];
    let text = |t: &str| tokenizer_for(&base, t).chat_text(&msgs, true).unwrap();
    assert!(text("smollm2").contains("named SmolLM, trained by Hugging Face"));
    assert!(text("qwen2.5").contains("You are Qwen, created by Alibaba Cloud."));
    assert_eq!(
        text("qwen3"),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        text("llama3"),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn an_hf_folder_keeps_its_template_through_save_and_load() {
    let base = gguf_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let msgs = [Message {
        role: "user".into(),
        content: "Hi".into(),
    }];
    // SmolLM2's own template and special tokens survive save_hf / from_hf_dir
    base.save_hf(dir.path()).unwrap();
    let back = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(back.chat_template.source(), base.chat_template.source());
    assert_eq!(
        back.chat_text(&msgs, true).unwrap(),
        base.chat_text(&msgs, true).unwrap()
    );
    assert_eq!(back.bos_id, base.bos_id);
    // `chat_template.jinja` (where transformers saves a template) wins over the config's
    let llama3 = std::fs::read_to_string(fixtures().join("llama3.jinja")).unwrap();
    let qwen3 = std::fs::read_to_string(fixtures().join("qwen3.jinja")).unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), &qwen3).unwrap();
    let t = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(t.chat_template.source(), qwen3);
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    // a list of named templates: the one named `default`
    let cfg_path = dir.path().join("tokenizer_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = serde_json::json!([
        {"name": "tool_use", "template": qwen3},
        {"name": "default", "template": llama3},
    ]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let t = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(t.chat_template.source(), llama3);
    assert!(!t.chat_template.is_fallback());
    // no template at all: ChatML, marked as the fallback
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let t = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert!(t.chat_template.is_fallback());
    assert_eq!(
        t.chat_text(&msgs, true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // a template that does not compile names the folder and the template's problem
    cfg["chat_template"] = "{% for m in messages %}".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
    assert!(e.contains("chat template"), "{e}");
}

/// The Python with HF transformers and gguf, if installed.
fn hf_python() -> Option<String> {
    rubric::assets::engine_python("hf", "ARLRR_HF_PYTHON", &["transformers", "gguf"])
}

#[test]
fn transformers_still_writes_the_fixture() {
    let Some(python) = hf_python() else {
        eprintln!(
            "no HF transformers install (ARLRR_HF_PYTHON or ~/.cache/arlrr/engines/hf, from \
             scripts/engines/setup.sh hf): the fixture was not remade"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("expected.json");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/chat_template_reference.py");
    let status = Command::new(python)
        .arg(script)
        .arg("--gguf")
        .arg(rubric::assets::smollm2_gguf().unwrap())
        .arg("--healthbench")
        .arg(rubric::assets::healthbench_sample().unwrap())
        .arg("--out")
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .status()
        .unwrap();
    assert!(status.success());
    let live: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(live["cases"], expected()["cases"]);
}
