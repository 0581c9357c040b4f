//! Exact resume of the transformer policy through the real `arlrr train` binary: a tiny
//! warm-started transformer (full fine-tuning, and LoRA), killed with
//! SIGKILL after a checkpoint, resumed with `--resume`, must end bit for bit where an
//! uninterrupted run ends: metrics, schedule, validation and test figures, weights, moments.

use std::path::{Path, PathBuf};

mod common;
use common::{arlrr, kill_when, metrics_without_times, ok, spawn_train};

const STEPS: usize = 8;

/// Criteria that the tiny model's short samples meet about half the time, one per axis, so
/// groups have spread and every step updates the weights.
const RUBRIC: &str = r#"[
 {"criterion":"comma","points":3,"tags":["axis:accuracy"],"check":{"kind":"contains_any","phrases":[","]}},
 {"criterion":"the","points":2,"tags":["axis:completeness"],"check":{"kind":"contains_any","phrases":["the"]}},
 {"criterion":"you","points":2,"tags":["axis:communication_quality"],"check":{"kind":"contains_any","phrases":["you"]}},
 {"criterion":"is","points":1,"tags":["axis:context_awareness"],"check":{"kind":"contains_any","phrases":["is"]}},
 {"criterion":"period","points":1,"tags":["axis:instruction_following"],"check":{"kind":"contains_any","phrases":["."]}}
]"#;

fn write_split(path: &Path, n: usize) {
    let rubric: serde_json::Value = serde_json::from_str(RUBRIC).unwrap();
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

/// A tiny warm-started transformer (well under a second per run), with every
/// trainer path that carries state across a checkpoint: lookahead probes (policy, optimizer
/// and RNG snapshots), the KL reference, two PPO epochs in micro-batches, warmup and cosine
/// decay, periodic validation and the test split.
fn write_config(dir: &Path, lora: bool) -> PathBuf {
    let lora = if lora {
        "lora = { rank = 2, alpha = 4.0, targets = [\"q\", \"v\", \"down\"] }\ninit_seed = 5"
    } else {
        ""
    };
    let (data, cache) = (
        dir.display().to_string(),
        dir.join("cache").display().to_string(),
    );
    let text = config_text(&data, &cache, lora, "");
    write_split(&dir.join("train.jsonl"), 8);
    write_split(&dir.join("val.jsonl"), 4);
    write_split(&dir.join("test.jsonl"), 4);
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The run config: the splits in folder `data`, the warm start cached in `cache`, `lora` in
/// `[policy]`, then the tables of `extra`.
fn config_text(data: &str, cache: &str, lora: &str, extra: &str) -> String {
    format!(
        r#"
[run]
seed = 3
steps = {STEPS}
checkpoint_every = 2
keep_checkpoints = 0

[data]
train = "{data}/train.jsonl"
val = "{data}/val.jsonl"
test = "{data}/test.jsonl"

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
cache = "{cache}"

[grpo]
prompts_per_step = 4
group_size = 4
kl_beta = 0.1
ppo_epochs = 2
micro_batch = 3

[optim]
lr = 5e-3
warmup_steps = 2
schedule = "cosine"

[objective]
kind = "alternating"

[phases]
length = 2
selector = "lookahead"
probe_steps = 1
top_m = 2
select_size = 2
select_samples = 2

[eval]
every = 2
size = 4
samples = 1
bootstrap = 10
test_size = 4
{extra}
"#
    )
}

fn train(config: &Path, out: &Path) {
    let res = arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    ok(&res);
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sigkilled_run_resumes_exactly(lora: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), lora);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&config, &a); // uninterrupted; also builds the warm start into the cache

    // the same run, killed once it has a checkpoint and has moved past it
    let mut child = spawn_train(&config, &b);
    let first = b.join("checkpoints/step-00000002/state.json");
    kill_when(&mut child, || {
        first.exists() && lines(&b.join("metrics.jsonl")) >= 3
    });
    assert!(
        !b.join("report.md").exists(),
        "the kill interrupted the run"
    );

    let res = arlrr()
        .args(["train", "--quiet", "--resume"])
        .arg(&b)
        .output()
        .unwrap();
    ok(&res);

    let ma = metrics_without_times(&a);
    assert_eq!(ma.len(), STEPS);
    assert_eq!(ma, metrics_without_times(&b));
    assert!(
        ma[2..].iter().any(|m| m["update"]["applied"] == 2),
        "the weights were updated after the checkpoint the run resumed from: {ma:?}"
    );
    for f in [
        "schedule.jsonl",
        "eval.jsonl",
        "test.jsonl",
        "completions.jsonl",
    ] {
        assert_eq!(
            std::fs::read_to_string(a.join(f)).unwrap(),
            std::fs::read_to_string(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    assert_eq!(lines(&a.join("schedule.jsonl")), STEPS / 2);
    assert_eq!(lines(&a.join("test.jsonl")), 2, "start and end");
    for step in [4, STEPS] {
        let ck = format!("checkpoints/step-{step:08}");
        assert_eq!(
            std::fs::read_to_string(a.join(&ck).join("state.json")).unwrap(),
            std::fs::read_to_string(b.join(&ck).join("state.json")).unwrap(),
            "{ck}/state.json differs"
        );
        for f in ["policy.safetensors", "optimizer.safetensors"] {
            assert!(
                bytes(&a.join(&ck).join(f)) == bytes(&b.join(&ck).join(f)),
                "{ck}/{f} differs"
            );
        }
    }
    // the weights moved: the final checkpoint is not the first one
    assert!(
        bytes(&a.join("checkpoints/step-00000002/policy.safetensors"))
            != bytes(&a.join(format!("checkpoints/step-{STEPS:08}/policy.safetensors")))
    );
    assert!(b.join("report.md").exists());
}

#[test]
fn sigkilled_transformer_run_resumes_exactly() {
    sigkilled_run_resumes_exactly(false);
}

#[test]
fn sigkilled_lora_run_resumes_exactly() {
    sigkilled_run_resumes_exactly(true);
}

/// Two classes by a mapping file (a path field of the config like the others).
const CLASSES: &str = r#"
[[class]]
name = "substance"
tags = ["axis:accuracy", "axis:completeness"]

[[class]]
name = "manner"
tags = ["axis:communication_quality", "axis:context_awareness", "axis:instruction_following"]
"#;

/// Issue #28, item 1: a run started from a relative `--config` and `--out` records in its
/// `config.toml` paths that resolve from anywhere (data splits, class mapping, judge cache,
/// warm-start cache and model), so `--resume` continues it from another working directory,
/// exactly.
#[test]
fn a_run_from_a_relative_config_resumes_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    let configs = project.join("configs");
    std::fs::create_dir_all(configs.join("data")).unwrap();
    write_split(&configs.join("data/train.jsonl"), 8);
    write_split(&configs.join("data/val.jsonl"), 4);
    write_split(&configs.join("data/test.jsonl"), 4);
    std::fs::write(configs.join("classes.toml"), CLASSES).unwrap();
    let extra = "[data.classes]\nscheme = { mapping = \"classes.toml\" }\n\n[judge]\ncache = \"judge.sqlite\"\n";
    let text = config_text("data", "../cache", "", extra);
    std::fs::write(configs.join("run.toml"), text).unwrap();

    let res = arlrr()
        .current_dir(&project)
        .args(["train", "--quiet", "--config", "configs/run.toml"])
        .args(["--out", "runs/relative"])
        .output()
        .unwrap();
    ok(&res);
    let run = project.join("runs/relative");
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    let fields = [
        &saved["run"]["dir"],
        &saved["data"]["train"],
        &saved["data"]["val"],
        &saved["data"]["test"],
        &saved["data"]["classes"]["scheme"]["mapping"],
        &saved["policy"]["model"],
        &saved["judge"]["cache"],
        &saved["warm_start"]["cache"],
    ];
    for f in fields {
        let p = Path::new(f.as_str().unwrap());
        assert!(p.is_absolute() && p.exists(), "{f} in {saved:#?}");
    }
    assert!(
        project.join("configs/judge.sqlite").exists(),
        "relative to the config"
    );

    // as a kill after the checkpoint at step 4 leaves it; the resumed steps find their
    // verdicts in the judge cache, so the judge's counts differ and nothing else
    let metrics = || {
        let mut m = metrics_without_times(&run);
        m.iter_mut().for_each(|l| {
            l.as_object_mut().unwrap().remove("judge");
        });
        m
    };
    let whole = metrics();
    for step in [6, STEPS] {
        std::fs::remove_dir_all(run.join(format!("checkpoints/step-{step:08}"))).unwrap();
    }
    std::fs::remove_file(run.join("report.md")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let res = arlrr()
        .current_dir(&elsewhere)
        .args(["train", "--quiet", "--resume", "../project/runs/relative"])
        .output()
        .unwrap();
    ok(&res);
    assert_eq!(metrics(), whole);
    assert!(run.join("report.md").exists());
    assert!(
        !elsewhere.join("runs").exists(),
        "nothing written beside the cwd"
    );
}
