//! Exact resume of the transformer policy through the real `arlrr train` binary: a tiny
//! warm-started transformer (full fine-tuning, and LoRA), killed with
//! SIGKILL after a checkpoint, resumed with `--resume`, must end bit for bit where an
//! uninterrupted run ends: metrics, schedule, validation and test figures, weights, moments.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::kill_when;

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

fn arlrr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arlrr"))
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
    let text = format!(
        r#"
[run]
seed = 3
steps = {STEPS}
checkpoint_every = 2
keep_checkpoints = 0

[data]
train = "{dir}/train.jsonl"
val = "{dir}/val.jsonl"
test = "{dir}/test.jsonl"

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
"#,
        cache = dir.join("cache").display(),
        dir = dir.display()
    );
    write_split(&dir.join("train.jsonl"), 8);
    write_split(&dir.join("val.jsonl"), 4);
    write_split(&dir.join("test.jsonl"), 4);
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn train(config: &Path, out: &Path) {
    let res = arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn metrics_without_times(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("time_s");
            v
        })
        .collect()
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
    let mut child = arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&b)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let ma = metrics_without_times(&a);
    assert_eq!(ma.len(), STEPS);
    assert_eq!(ma, metrics_without_times(&b));
    assert!(
        ma[2..].iter().any(|m| m["update"]["applied"] == 2),
        "the weights were updated after the checkpoint the run resumed from: {ma:?}"
    );
    for f in ["schedule.jsonl", "eval.jsonl", "test.jsonl"] {
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
