//! A small constructed task in the native format (every criterion has a `check`), written to
//! a temporary folder, and configs for the categorical policy on it.
#![allow(dead_code)]

use arl::TrainConfig;
use std::path::Path;

/// Five classes with real tensions: completeness wants two extra phrases, communication
/// caps the length, accuracy rewards "rest" and penalizes "antibiotics".
pub const RUBRIC: &str = r#"[
 {"criterion":"Recommends rest","points":5,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":["rest"]}},
 {"criterion":"Recommends antibiotics for a virus","points":-5,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":["antibiotics"]}},
 {"criterion":"Mentions fluids and a doctor","points":3,"tags":["axis:completeness"],"check":{"kind":"contains_all","phrases":["fluids","doctor"]}},
 {"criterion":"Brief","points":2,"tags":["axis:communication_quality"],"check":{"kind":"word_count","max":8}},
 {"criterion":"Considers the pregnancy","points":3,"tags":["axis:context_awareness"],"check":{"kind":"contains_any","phrases":["pregnan"]}},
 {"criterion":"Starts with Answer:","points":2,"tags":["axis:instruction_following"],"check":{"kind":"starts_with","text":"Answer:"}}
]"#;

pub const VOCAB: &str = r#"["Answer:", "Rest at home.", "Drink fluids.", "See a doctor.", "Mind the pregnancy.", "Take antibiotics.", "Hmm,", "okay", "well"]"#;

/// Lookahead case: training completeness adds "more detail", which accuracy penalizes more
/// than completeness rewards; training accuracy lifts the overall score.
pub const LOOKAHEAD_RUBRIC: &str = r#"[
 {"criterion":"Recommends rest","points":10,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":["rest"]}},
 {"criterion":"Invents details","points":-10,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":["more detail"]}},
 {"criterion":"Gives more detail","points":4,"tags":["axis:completeness"],"check":{"kind":"contains_any","phrases":["more detail"]}}
]"#;
pub const LOOKAHEAD_VOCAB: &str = r#"["Rest.", "more detail", "ok", "hmm"]"#;

pub fn write_split(path: &Path, n: usize, rubric: &str, prefix: &str) {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            r#"{{"prompt_id":"{prefix}{i}","prompt":[{{"role":"user","content":"I am pregnant and have a cold ({i}). What should I do?"}}],"example_tags":["theme:cold"],"rubrics":{}}}"#,
            rubric.replace('\n', "")
        ));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Writes train/val files and returns a config TOML body (without `[objective]`/`[phases]`).
pub fn base_toml(dir: &Path, rubric: &str, vocab: &str, extra: &str) -> String {
    write_split(&dir.join("train.jsonl"), 8, rubric, "t");
    write_split(&dir.join("val.jsonl"), 4, rubric, "v");
    format!(
        r#"
[run]
dir = "{run}"
seed = 7
steps = 30
checkpoint_every = 0

[data]
train = "{train}"
val = "{val}"

[policy]
kind = "categorical"
vocab = {vocab}
max_tokens = 6

[grpo]
prompts_per_step = 4
group_size = 8

[optim]
lr = 0.1

[eval]
every = 0
samples = 16
bootstrap = 100
{extra}
"#,
        run = dir.join("run").display(),
        train = dir.join("train.jsonl").display(),
        val = dir.join("val.jsonl").display(),
    )
}

pub fn config(dir: &Path, rubric: &str, vocab: &str, extra: &str) -> TrainConfig {
    TrainConfig::from_toml(&base_toml(dir, rubric, vocab, extra)).unwrap()
}

/// The shipped configs (`configs/*.toml`), split into run configs
/// and study grids (those with a `[study]` table).
pub fn shipped_configs() -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let (mut runs, mut grids) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let table: toml::Table = toml::from_str(&text).unwrap();
            if table.contains_key("study") {
                grids.push(path);
            } else {
                runs.push(path);
            }
        }
    }
    (runs, grids)
}
