//! Checkpoints. Everything is written to a temporary name and renamed into place, so a crash
//! never leaves a half-written checkpoint: a checkpoint folder either exists complete or not
//! at all. The run's logs (`metrics.jsonl`, `schedule.jsonl`, ...: [`rubric::runfile::Jsonl`])
//! are cut back to the checkpoint's line counts on resume, so a resumed run writes exactly the
//! lines an uninterrupted one would.

use crate::actor::{set_vars, ParamSnapshot, Policy};
use crate::optim::AdamW;
use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use rand_chacha::ChaCha8Rng;
use schedule::PhaseState;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Everything besides weights and moments needed to continue exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Steps completed.
    pub step: u64,
    /// Position in the learning-rate schedule (optimizer steps attempted).
    pub optimizer_steps: u64,
    /// AdamW's bias-correction step count (updates applied).
    pub optimizer_t: u64,
    pub phase: PhaseState,
    pub rng: RngState,
    /// The stream that draws the criteria `objective.subsample` grades (apart from `rng`, so
    /// prompts and responses are those of the same run without it); absent in other runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsample_rng: Option<RngState>,
    pub metrics_lines: u64,
    pub schedule_lines: u64,
    pub eval_lines: u64,
    /// Lines of `completions.jsonl` (0 in checkpoints written before it existed).
    #[serde(default)]
    pub completions_lines: u64,
}

/// A ChaCha8 stream position: seed, stream and word position (as a decimal string, u128).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: Vec<u8>,
    pub stream: u64,
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> RngState {
        RngState {
            seed: rng.get_seed().to_vec(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> ChaCha8Rng {
        use rand::SeedableRng;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&self.seed);
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().expect("a decimal word position"));
        rng
    }
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes `run_dir/checkpoints/step-N/{policy,optimizer}.safetensors + state.json`, plus what
/// [`Policy::save_extras`] adds (a LoRA policy's PEFT adapter files).
pub fn write(
    run_dir: &Path,
    policy: &dyn Policy,
    optimizer: &AdamW,
    state: &RunState,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root)?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    policy.save(&tmp.join("policy.safetensors"))?;
    policy.save_extras(&tmp)?;
    optimizer.save(&tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    for f in std::fs::read_dir(&tmp)? {
        File::open(f?.path())?.sync_all()?;
    }
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot move checkpoint into {}", dst.display()))?;
    Ok(dst)
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = run_dir.join("checkpoints");
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            out.push((step, p));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint and its state.
pub fn latest(run_dir: &Path) -> Result<Option<(PathBuf, RunState)>> {
    let Some((_, dir)) = list(run_dir)?.pop() else {
        return Ok(None);
    };
    let state = read_state(&dir)?;
    Ok(Some((dir, state)))
}

pub fn read_state(dir: &Path) -> Result<RunState> {
    let p = dir.join("state.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run state", p.display()))
}

/// Removes all but the newest `keep` checkpoints (0 keeps all).
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list(run_dir)?;
    if keep == 0 || all.len() <= keep {
        return Ok(());
    }
    for (_, p) in &all[..all.len() - keep] {
        std::fs::remove_dir_all(p)?;
    }
    Ok(())
}

pub fn save_snapshot(vars: &[(String, Var)], snap: &ParamSnapshot, path: &Path) -> Result<()> {
    let t: HashMap<String, Tensor> = vars
        .iter()
        .zip(&snap.0)
        .map(|((n, _), t)| (n.clone(), t.clone()))
        .collect();
    let bytes = safetensors::serialize(&t, None)?;
    rubric::runfile::write_atomic(path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn load_snapshot(vars: &[(String, Var)], path: &Path) -> Result<ParamSnapshot> {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let current = ParamSnapshot::take(vars)?;
    set_vars(vars, &tensors, path)?;
    let snap = ParamSnapshot::take(vars)?;
    current.restore(vars)?;
    Ok(snap)
}
