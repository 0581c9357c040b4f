//! `arlrr study`: a grid of regimes × methods × seeds, each method tuned over the same
//! learning rates (the best on validation kept, reported on test), run in parallel and
//! resumable, then summarized as a regime map (see [`writeup`]).
//!
//! Every run is an ordinary run folder, `runs/<regime>/<method>/lr-<lr>/seed-<s>/`; a
//! finished one also holds `summary.json`, the figures the report reads. An interrupted study
//! keeps its finished runs, resumes the rest from their last checkpoint and restarts runs that
//! had none.

mod grid;
mod writeup;

pub use grid::{show, Grid, Override, Regime, StudyMethod, REGIME_KEYS, VARIANTS};
pub use writeup::write_report;

use crate::compare::stats::mean;
use anyhow::{bail, Context, Result};
use arl::eval::EvalLine;
use arl::setup::Parts;
use arl::trainer::Trainer;
use rubric::runfile::{self, read_jsonl_if_exists};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One run of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunKey {
    pub regime: usize,
    pub method: usize,
    pub lr: usize,
    pub seed: u64,
}

/// The figures of one finished run that the report reads (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub seed: u64,
    pub lr: f64,
    /// Validation overall score at the last step.
    pub val_final: f64,
    pub test_start: f64,
    pub test_final: f64,
    /// Validation overall score by step (step 0 = the start).
    pub curve: Vec<(u64, f64)>,
    /// Judge verdicts spent on training and selection, cumulative, after each step.
    pub verdicts: Vec<u64>,
    /// Mean over steps of the within-group std of the points-scalarized reward.
    pub scalar_group_std: Option<f64>,
    /// Mean over steps of the within-group std of each class's reward.
    pub class_group_std: BTreeMap<String, f64>,
    /// Macro F1 of the noisy training verdicts against the clean judge (noisy runs).
    pub judge_f1: Option<f64>,
    /// Phase decisions, with the evidence behind each.
    pub decisions: Vec<DecisionEvidence>,
    /// Seconds the run took (its last session, when resumed).
    pub wall_s: f64,
}

/// A lookahead decision: what the probe promised and what the phase delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionEvidence {
    pub step: u64,
    /// Gain over the base score the chosen probe measured.
    pub predicted_gain: Option<f64>,
    /// Its standard error (paired selection only).
    pub gain_se: Option<f64>,
    /// The chosen candidate's lead over the runner-up.
    pub lead: Option<f64>,
    /// The fixed batch's score at the next decision minus at this one.
    pub realized_gain: Option<f64>,
    /// The phase before this decision ended early (phase guard).
    pub after_early_end: bool,
}

/// Every (regime, method) cell of the grid after tuning.
#[derive(Debug, Clone)]
pub struct Cell {
    pub regime: usize,
    pub method: usize,
    /// The learning rate kept, and the mean final validation score of each candidate.
    pub lr: f64,
    pub lr_scores: Vec<(f64, f64)>,
    /// The kept rate's runs, one per seed.
    pub runs: Vec<RunSummary>,
}

pub struct StudyOutcome {
    pub cells: Vec<Cell>,
    /// Runs this invocation trained (the others were finished before by this code).
    pub trained: usize,
    /// Of those, runs that replaced a run made by other code.
    pub retrained: usize,
    pub reused: usize,
    pub wall_s: f64,
    pub jobs: usize,
}

impl Grid {
    pub fn run_dir(&self, out: &Path, k: RunKey) -> PathBuf {
        out.join("runs")
            .join(self.regimes[k.regime].slug())
            .join(self.methods[k.method].slug())
            .join(format!("lr-{}", self.lrs[k.lr]))
            .join(format!("seed-{}", k.seed))
    }

    /// What a run folder was made from: the base config file's bytes and everything the grid
    /// sets (stable across arlrr versions, unlike the resolved config).
    fn fingerprint(&self, k: RunKey) -> Result<String> {
        let m = &self.methods[k.method];
        let mut h = Sha256::new();
        h.update(std::fs::read(&self.base_path)?);
        let mut what = serde_json::json!({
            "regime": self.regimes[k.regime].label(),
            "method": m.name,
            "lr": self.lrs[k.lr],
            "seed": k.seed,
            "steps": self.steps,
            "grade_active_class_only": self.grade_active_class_only && m.alternating(),
            "guard_drop": m.has("guard").then_some(self.variants.guard_drop),
            "paired_samples": m.has("paired").then_some(self.variants.paired_samples),
            "anchor": m.has("anchored").then_some(self.variants.anchor),
        });
        // keys added since: present only when set, so earlier runs keep their fingerprints
        let extra = what.as_object_mut().expect("an object");
        if m.has("keep_probe") {
            extra.insert("keep_probe".into(), true.into());
        }
        if let Some(n) = m.phase_length() {
            extra.insert("phase_length".into(), n.into());
        }
        if let Some(file) = self.regimes[k.regime].classes_file() {
            let bytes = std::fs::read(file)
                .with_context(|| format!("cannot read class mapping {}", file.display()))?;
            let digest = format!("{:x}", Sha256::digest(&bytes));
            extra.insert("classes_mapping_sha256".into(), digest.into());
        }
        h.update(what.to_string().as_bytes());
        Ok(format!("{:x}", h.finalize()))
    }

    fn label(&self, k: RunKey) -> String {
        format!(
            "{} {} lr {} seed {}",
            self.regimes[k.regime].label(),
            self.methods[k.method].name,
            self.lrs[k.lr],
            k.seed
        )
    }
}

/// Runs the grid into `out` (resuming what an earlier invocation left), `jobs` runs at a
/// time (0 = the grid's `jobs`, else the core count). `on_run` hears each finished run.
pub fn run(
    grid: &Grid,
    out: &Path,
    jobs: usize,
    on_run: &(dyn Fn(&str, &RunSummary, &Made) + Sync),
) -> Result<StudyOutcome> {
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let grid_text = std::fs::read(&grid.path)?;
    runfile::write_atomic(&out.join("grid.toml"), &grid_text)?;
    let jobs = match (jobs, grid.jobs) {
        (0, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (0, j) | (j, _) => j,
    };
    let tune = if grid.lrs.len() == 1 {
        grid.seeds
    } else {
        grid.tune_seeds
    };
    // a warm start is built once here, not by every run thread at the same time
    let mut warm = grid.base.clone();
    warm.data.builtin = false;
    arl::setup::prepare(&mut warm, |_| {})?;
    let counts = Mutex::new((0usize, 0usize, 0usize));
    let cells: Vec<(usize, usize)> = (0..grid.regimes.len())
        .flat_map(|r| (0..grid.methods.len()).map(move |m| (r, m)))
        .collect();

    // 1. every learning rate on the tuning seeds
    let first = tuning_keys(grid, &cells, tune);
    let done = execute(grid, out, &first, jobs, &counts, on_run)?;
    let mut results: Results = first
        .iter()
        .zip(done)
        .map(|(k, s)| ((k.regime, k.method, k.lr, k.seed), s))
        .collect();

    // 2. the rest of the seeds at the rate that scored best on validation
    let chosen = choose_rates(grid, &cells, tune, &results);
    let second: Vec<RunKey> = cells
        .iter()
        .flat_map(|&(regime, method)| {
            let lr = chosen[&(regime, method)].0;
            (tune..grid.seeds).map(move |seed| RunKey {
                regime,
                method,
                lr,
                seed,
            })
        })
        .collect();
    let done = execute(grid, out, &second, jobs, &counts, on_run)?;
    for (k, s) in second.iter().zip(done) {
        results.insert((k.regime, k.method, k.lr, k.seed), s);
    }

    let cells = make_cells(grid, &cells, &chosen, &results);
    let (trained, retrained, reused) = *counts.lock().unwrap();
    Ok(StudyOutcome {
        cells,
        trained,
        retrained,
        reused,
        wall_s: started.elapsed().as_secs_f64(),
        jobs,
    })
}

/// How a run's summary came to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Made {
    /// Finished before, by this code.
    Reused,
    /// Trained now (resumed from its checkpoint when it had one).
    Trained,
    /// Trained now from the start, replacing a run made by other code (`was`: that code's
    /// version, or `None` when the run recorded none).
    Retrained { was: Option<String> },
}

/// Summaries by (regime, method, learning rate, seed) index.
type Results = BTreeMap<(usize, usize, usize, u64), RunSummary>;
/// By (regime, method): the kept learning rate's index and every rate's mean validation score.
type Chosen = BTreeMap<(usize, usize), (usize, Vec<f64>)>;

/// Every (regime, method) cell at every learning rate on the `tune` tuning seeds.
fn tuning_keys(grid: &Grid, cells: &[(usize, usize)], tune: u64) -> Vec<RunKey> {
    cells
        .iter()
        .flat_map(|&(regime, method)| {
            (0..grid.lrs.len()).flat_map(move |lr| {
                (0..tune).map(move |seed| RunKey {
                    regime,
                    method,
                    lr,
                    seed,
                })
            })
        })
        .collect()
}

/// Each cell's learning rate with the best mean final validation score on the tuning seeds.
fn choose_rates(grid: &Grid, cells: &[(usize, usize)], tune: u64, results: &Results) -> Chosen {
    let mut chosen = Chosen::new();
    for &(r, m) in cells {
        let scores: Vec<f64> = (0..grid.lrs.len())
            .map(|lr| {
                let v: Vec<f64> = (0..tune)
                    .map(|s| results[&(r, m, lr, s)].val_final)
                    .collect();
                mean(&v)
            })
            .collect();
        let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        chosen.insert((r, m), (best, scores));
    }
    chosen
}

/// The cells of the outcome: each with its kept rate's runs over all seeds.
fn make_cells(
    grid: &Grid,
    cells: &[(usize, usize)],
    chosen: &Chosen,
    results: &Results,
) -> Vec<Cell> {
    cells
        .iter()
        .map(|&(regime, method)| {
            let (lr, scores) = &chosen[&(regime, method)];
            Cell {
                regime,
                method,
                lr: grid.lrs[*lr],
                lr_scores: grid
                    .lrs
                    .iter()
                    .copied()
                    .zip(scores.iter().copied())
                    .collect(),
                runs: (0..grid.seeds)
                    .map(|s| results[&(regime, method, *lr, s)].clone())
                    .collect(),
            }
        })
        .collect()
}

/// Runs `keys` on `jobs` threads; returns their summaries in order. The first failure stops
/// the others from starting new runs and is returned, naming the run.
fn execute(
    grid: &Grid,
    out: &Path,
    keys: &[RunKey],
    jobs: usize,
    counts: &Mutex<(usize, usize, usize)>,
    on_run: &(dyn Fn(&str, &RunSummary, &Made) + Sync),
) -> Result<Vec<RunSummary>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<RunSummary>>>> =
        keys.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(keys.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= keys.len() || failed.load(Ordering::SeqCst) {
                    break;
                }
                let k = keys[i];
                let dir = grid.run_dir(out, k);
                let r = finished_or_train(grid, k, &dir)
                    .with_context(|| format!("study run {} ({})", grid.label(k), dir.display()));
                match &r {
                    Ok((s, made)) => {
                        let mut c = counts.lock().unwrap();
                        match made {
                            Made::Reused => c.2 += 1,
                            Made::Trained => c.0 += 1,
                            Made::Retrained { .. } => (c.0, c.1) = (c.0 + 1, c.1 + 1),
                        }
                        drop(c);
                        on_run(&grid.label(k), s, made);
                    }
                    Err(_) => failed.store(true, Ordering::SeqCst),
                }
                *slots[i].lock().unwrap() = Some(r.map(|(s, _)| s));
            });
        }
    });
    let mut outs = Vec::new();
    for slot in slots {
        match slot.into_inner().unwrap() {
            Some(r) => outs.push(r?),
            None => anyhow::bail!("the study stopped after a failed run"),
        }
    }
    Ok(outs)
}

/// The run's summary: read back when it finished before by this code, else trained (resumed
/// from its last checkpoint when this code made it) and summarized. A folder made by other
/// code (its `study-code.txt` differs, or it has none) is trained again from the start.
fn finished_or_train(grid: &Grid, k: RunKey, dir: &Path) -> Result<(RunSummary, Made)> {
    let summary = dir.join("summary.json");
    // a run folder belongs to one config: a changed grid must not reuse or resume it
    let cfg = grid.run_config(
        &grid.regimes[k.regime],
        &grid.methods[k.method],
        grid.lrs[k.lr],
        k.seed,
        dir,
    )?;
    let fingerprint = grid.fingerprint(k)?;
    let stamp = dir.join("study-config.sha256");
    if let Ok(was) = std::fs::read_to_string(&stamp) {
        if was.trim() != fingerprint {
            bail!("the folder holds a run of a different config (the grid changed since); give the study a new --out or delete the folder");
        }
    }
    let code_stamp = dir.join("study-code.txt");
    let mut made = Made::Trained;
    if dir.exists() {
        let was = std::fs::read_to_string(&code_stamp)
            .ok()
            .map(|c| c.trim().to_string());
        if was.as_deref() != Some(crate::CODE_VERSION) {
            std::fs::remove_dir_all(dir)?; // made by other code: neither reused nor resumed
            made = Made::Retrained { was };
        }
    }
    if summary.exists() {
        let text = std::fs::read_to_string(&summary)?;
        let s = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run summary", summary.display()))?;
        return Ok((s, Made::Reused));
    }
    let t = Instant::now();
    let mut trainer = if arl::checkpoint::latest(dir)?.is_some() {
        Trainer::resume(dir)?
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?; // started, but no checkpoint to continue from
        }
        std::fs::create_dir_all(dir)?;
        runfile::write_atomic(&stamp, fingerprint.as_bytes())?;
        runfile::write_atomic(&code_stamp, crate::CODE_VERSION.as_bytes())?;
        let mut cfg = cfg;
        arl::setup::prepare(&mut cfg, |_| {})?;
        Trainer::new(cfg.clone(), Parts::from_config(&cfg)?)?
    };
    crate::report::write_run(&trainer.run(|_| {})?)?;
    let s = summarize(dir, k.seed, grid.lrs[k.lr], t.elapsed().as_secs_f64())?;
    runfile::write_atomic(&summary, serde_json::to_string(&s)?.as_bytes())?;
    Ok((s, made))
}

/// Reads the figures of a finished run from its files.
pub fn summarize(dir: &Path, seed: u64, lr: f64, wall_s: f64) -> Result<RunSummary> {
    let evals: Vec<EvalLine> = read_jsonl_if_exists(&dir.join("eval.jsonl"))?;
    let tests: Vec<EvalLine> = read_jsonl_if_exists(&dir.join("test.jsonl"))?;
    // read loosely: the report needs a few fields, whatever else a line carries
    let metrics: Vec<serde_json::Value> = read_jsonl_if_exists(&dir.join("metrics.jsonl"))?;
    let schedule: Vec<serde_json::Value> = read_jsonl_if_exists(&dir.join("schedule.jsonl"))?;
    let score = |lines: &[EvalLine], first: bool| {
        let line = if first { lines.first() } else { lines.last() };
        line.map(|l| l.report.overall.score)
            .with_context(|| format!("{}: the run has no evaluation", dir.display()))
    };
    let f = |v: &serde_json::Value, path: &[&str]| -> Option<f64> {
        path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
    };
    let mut spent = 0u64;
    let verdicts = metrics
        .iter()
        .map(|m| {
            let step = f(m, &["train_verdicts"]).or_else(|| f(m, &["judge", "verdicts"]));
            spent += step.unwrap_or(0.0) as u64;
            spent
        })
        .collect();
    let scalar: Vec<f64> = metrics
        .iter()
        .filter_map(|m| f(m, &["overall", "group_std"]))
        .collect();
    let mut class_group_std = BTreeMap::new();
    for m in &metrics {
        if let Some(classes) = m.get("classes").and_then(|c| c.as_object()) {
            for (name, c) in classes {
                if let Some(s) = f(c, &["group_std"]) {
                    class_group_std
                        .entry(name.clone())
                        .or_insert_with(Vec::new)
                        .push(s);
                }
            }
        }
    }
    let judge_f1 = metrics
        .last()
        .and_then(|m| f(m, &["judge_noise", "cumulative_macro_f1"]));
    Ok(RunSummary {
        seed,
        lr,
        val_final: score(&evals, false)?,
        test_start: score(&tests, true)?,
        test_final: score(&tests, false)?,
        curve: evals
            .iter()
            .map(|e| (e.step, e.report.overall.score))
            .collect(),
        verdicts,
        scalar_group_std: (!scalar.is_empty()).then(|| mean(&scalar)),
        class_group_std: class_group_std
            .into_iter()
            .map(|(k, v)| (k, mean(&v)))
            .collect(),
        judge_f1,
        decisions: evidence(&schedule),
        wall_s,
    })
}

/// Each decision's promised and delivered gain, from `schedule.jsonl` lines.
fn evidence(schedule: &[serde_json::Value]) -> Vec<DecisionEvidence> {
    let num = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_f64());
    schedule
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let chosen = d.get("chosen").and_then(|c| c.as_str()).unwrap_or_default();
            let candidates = d
                .get("candidates")
                .and_then(|c| c.as_array())
                .cloned()
                .unwrap_or_default();
            let pick = candidates
                .iter()
                .find(|c| c.get("class").and_then(|c| c.as_str()) == Some(chosen));
            let chosen_score = pick.and_then(|c| num(c.get("score")));
            let runner_up = candidates
                .iter()
                .filter(|c| c.get("class").and_then(|c| c.as_str()) != Some(chosen))
                .filter_map(|c| num(c.get("score")))
                .fold(None, |b: Option<f64>, s| Some(b.map_or(s, |b| b.max(s))));
            let base = num(d.get("base_score"));
            let next = schedule.get(i + 1).and_then(|n| num(n.get("base_score")));
            DecisionEvidence {
                step: d.get("step").and_then(|s| s.as_u64()).unwrap_or_default(),
                predicted_gain: pick.and_then(|c| num(c.get("detail"))),
                gain_se: pick.and_then(|c| num(c.get("gain_se"))),
                lead: chosen_score.zip(runner_up).map(|(a, b)| a - b),
                realized_gain: base.zip(next).map(|(a, b)| b - a),
                after_early_end: d.get("guard").is_some_and(|g| !g.is_null()),
            }
        })
        .collect()
}
