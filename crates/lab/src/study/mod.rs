//! `arlrr study`: a grid of regimes × methods × seeds, each method tuned over the same
//! learning rates (the best on validation kept, reported on test), run in parallel and
//! resumable, then summarized as a regime map (see [`writeup`]).
//!
//! Every run is an ordinary run folder, `runs/<regime>/<method>/lr-<lr>/seed-<s>/`; a
//! finished one also holds `summary.json`, the figures the report reads. An interrupted study
//! keeps its finished runs, resumes the rest from their last checkpoint and restarts runs that
//! had none.

mod grid;
pub mod predict;
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
    /// The same two figures over the run's first [`EARLY_STEPS`] steps only: what a short
    /// pilot run shows (see [`predict`]).
    #[serde(default)]
    pub early_scalar_group_std: Option<f64>,
    #[serde(default)]
    pub early_class_group_std: BTreeMap<String, f64>,
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
    /// The learning rate kept, and the mean final validation score of each candidate (its
    /// regime's rates, the widened ones included, in increasing order).
    pub lr: f64,
    pub lr_scores: Vec<(f64, f64)>,
    /// The kept rate is still the lowest or highest its regime tried: widening reached
    /// `study.widen` on that side.
    pub at_cap: bool,
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
        if self.budget > 0 {
            extra.insert("budget".into(), self.budget.into());
        }
        if m.has("subsample") {
            extra.insert(
                "subsample".into(),
                serde_json::to_value(self.variants.subsample)?,
            );
        }
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
///
/// Tuning: every rate on the tuning seeds; where any method's best rate lies on an edge of
/// its regime's rates, that regime gets a further rate on that side for every method (a
/// grid step beyond, at most `study.widen` per side), until every kept rate is interior or
/// the cap is reached. Then the kept rate's runs on the other seeds.
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

    // 1. every rate on the tuning seeds, widening the rates while a kept one is on an edge
    let mut grid = grid.clone(); // its `lrs` grow by the widened rates
    let mut tuning = Tuning::new(&grid);
    let mut results = Results::new();
    let chosen = loop {
        let keys: Vec<RunKey> = tuning_keys(&grid, &cells, &tuning.tried, tune)
            .into_iter()
            .filter(|k| !results.contains_key(&(k.regime, k.method, k.lr, k.seed)))
            .collect();
        let done = execute(&grid, out, &keys, jobs, &counts, on_run)?;
        for (k, s) in keys.iter().zip(done) {
            results.insert((k.regime, k.method, k.lr, k.seed), s);
        }
        let chosen = choose_rates(&grid, &cells, &tuning.tried, tune, &results);
        if !tuning.widen(&mut grid, &chosen) {
            break chosen;
        }
    };

    // 2. the rest of the seeds at the rate that scored best on validation
    let second: Vec<RunKey> = cells
        .iter()
        .flat_map(|&(regime, method)| {
            let lr = chosen[&(regime, method)].0;
            (grid.first_seed + tune..grid.first_seed + grid.seeds).map(move |seed| RunKey {
                regime,
                method,
                lr,
                seed,
            })
        })
        .collect();
    let done = execute(&grid, out, &second, jobs, &counts, on_run)?;
    for (k, s) in second.iter().zip(done) {
        results.insert((k.regime, k.method, k.lr, k.seed), s);
    }

    let cells = make_cells(&grid, &cells, &tuning, &chosen, &results);
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
/// By (regime, method): the kept learning rate's index and every tried rate's index and mean
/// validation score, in increasing rate order.
type Chosen = BTreeMap<(usize, usize), (usize, Vec<(usize, f64)>)>;

/// The rates each regime tries (indices into the grid's `lrs`, which widening extends).
struct Tuning {
    /// Per regime, in increasing rate order.
    tried: Vec<Vec<usize>>,
    /// Per regime, rates added below and above the grid's.
    added: Vec<(usize, usize)>,
    /// The grid's spacing: the factor between neighbouring rates (geometric mean).
    factor: f64,
}

impl Tuning {
    fn new(grid: &Grid) -> Tuning {
        let mut order: Vec<usize> = (0..grid.lrs.len()).collect();
        order.sort_by(|&a, &b| grid.lrs[a].total_cmp(&grid.lrs[b]));
        let (lo, hi) = (grid.lrs[order[0]], grid.lrs[order[order.len() - 1]]);
        let factor = if order.len() > 1 && hi > lo {
            (hi / lo).powf(1.0 / (order.len() - 1) as f64)
        } else {
            1.0
        };
        Tuning {
            tried: vec![order; grid.regimes.len()],
            added: vec![(0, 0); grid.regimes.len()],
            factor,
        }
    }

    /// Adds a rate beyond each edge of a regime's rates that some method kept, while that
    /// side is under `grid.widen`; whether any was added.
    fn widen(&mut self, grid: &mut Grid, chosen: &Chosen) -> bool {
        if self.factor <= 1.0 {
            return false; // one rate: nothing is tuned
        }
        let mut widened = false;
        for r in 0..self.tried.len() {
            let kept: Vec<usize> = (0..grid.methods.len()).map(|m| chosen[&(r, m)].0).collect();
            let (lo, hi) = (self.tried[r][0], *self.tried[r].last().expect("a rate"));
            let mut add = |rate: f64, lrs: &mut Vec<f64>| {
                let rate = three_digits(rate);
                let i = match lrs.iter().position(|&x| x == rate) {
                    Some(i) => i,
                    None => {
                        lrs.push(rate);
                        lrs.len() - 1
                    }
                };
                self.tried[r].push(i);
                widened = true;
            };
            if kept.contains(&lo) && self.added[r].0 < grid.widen {
                add(grid.lrs[lo] / self.factor, &mut grid.lrs);
                self.added[r].0 += 1;
            }
            if kept.contains(&hi) && self.added[r].1 < grid.widen {
                add(grid.lrs[hi] * self.factor, &mut grid.lrs);
                self.added[r].1 += 1;
            }
            let lrs = &grid.lrs;
            self.tried[r].sort_by(|&a, &b| lrs[a].total_cmp(&lrs[b]));
        }
        widened
    }

    /// The kept rate `lr` lies on an edge of regime `r`'s rates (after all widening).
    fn on_edge(&self, r: usize, lr: usize) -> bool {
        self.factor > 1.0 && (self.tried[r][0] == lr || self.tried[r].last() == Some(&lr))
    }
}

/// `x` to three significant digits (a widened rate's folder name stays short).
fn three_digits(x: f64) -> f64 {
    format!("{x:.2e}").parse().expect("a formatted number")
}

/// Every (regime, method) cell at each of its regime's `tried` rates on the `tune` tuning
/// seeds.
fn tuning_keys(
    grid: &Grid,
    cells: &[(usize, usize)],
    tried: &[Vec<usize>],
    tune: u64,
) -> Vec<RunKey> {
    let seeds = grid.first_seed..grid.first_seed + tune;
    cells
        .iter()
        .flat_map(|&(regime, method)| {
            let seeds = seeds.clone();
            tried[regime].iter().flat_map(move |&lr| {
                seeds.clone().map(move |seed| RunKey {
                    regime,
                    method,
                    lr,
                    seed,
                })
            })
        })
        .collect()
}

/// Each cell's learning rate with the best mean final validation score on the tuning seeds
/// (the lower rate on a tie).
fn choose_rates(
    grid: &Grid,
    cells: &[(usize, usize)],
    tried: &[Vec<usize>],
    tune: u64,
    results: &Results,
) -> Chosen {
    let seeds = grid.first_seed..grid.first_seed + tune;
    let mut chosen = Chosen::new();
    for &(r, m) in cells {
        let scores: Vec<(usize, f64)> = tried[r]
            .iter()
            .map(|&lr| {
                let v: Vec<f64> = seeds
                    .clone()
                    .map(|s| results[&(r, m, lr, s)].val_final)
                    .collect();
                (lr, mean(&v))
            })
            .collect();
        let best = scores
            .iter()
            .fold(scores[0], |b, &x| if x.1 > b.1 { x } else { b });
        chosen.insert((r, m), (best.0, scores));
    }
    chosen
}

/// The cells of the outcome: each with its kept rate's runs over all seeds.
fn make_cells(
    grid: &Grid,
    cells: &[(usize, usize)],
    tuning: &Tuning,
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
                lr_scores: scores.iter().map(|&(i, s)| (grid.lrs[i], s)).collect(),
                at_cap: tuning.on_edge(regime, *lr),
                runs: (grid.first_seed..grid.first_seed + grid.seeds)
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

/// The steps a run's early figures cover.
pub const EARLY_STEPS: usize = 10;

/// Mean over `metrics` lines of the within-group std of the scalarized reward, and of each
/// class's.
fn group_stds(metrics: &[serde_json::Value]) -> (Option<f64>, BTreeMap<String, f64>) {
    let f = |v: &serde_json::Value, path: &[&str]| -> Option<f64> {
        path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
    };
    let scalar: Vec<f64> = metrics
        .iter()
        .filter_map(|m| f(m, &["overall", "group_std"]))
        .collect();
    let mut classes = BTreeMap::new();
    for m in metrics {
        if let Some(cs) = m.get("classes").and_then(|c| c.as_object()) {
            for (name, c) in cs {
                if let Some(s) = f(c, &["group_std"]) {
                    classes.entry(name.clone()).or_insert_with(Vec::new).push(s);
                }
            }
        }
    }
    let classes = classes.into_iter().map(|(k, v)| (k, mean(&v))).collect();
    ((!scalar.is_empty()).then(|| mean(&scalar)), classes)
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
    let (scalar_group_std, class_group_std) = group_stds(&metrics);
    let early = group_stds(&metrics[..metrics.len().min(EARLY_STEPS)]);
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
        scalar_group_std,
        class_group_std,
        early_scalar_group_std: early.0,
        early_class_group_std: early.1,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(body: &str) -> Grid {
        let dir = tempfile::tempdir().unwrap();
        let base = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/builtin-categorical.toml"
        );
        let path = dir.path().join("grid.toml");
        std::fs::write(&path, format!("[study]\nbase = \"{base}\"\n{body}")).unwrap();
        Grid::from_file(&path).unwrap()
    }

    fn summary(val_final: f64) -> RunSummary {
        RunSummary {
            seed: 0,
            lr: 0.0,
            val_final,
            test_start: 0.0,
            test_final: 0.0,
            curve: Vec::new(),
            verdicts: Vec::new(),
            scalar_group_std: None,
            class_group_std: BTreeMap::new(),
            early_scalar_group_std: None,
            early_class_group_std: BTreeMap::new(),
            judge_f1: None,
            decisions: Vec::new(),
            wall_s: 0.0,
        }
    }

    /// Tunes a grid whose scores are `score(method, rate)`, as `run` does; returns the
    /// outcome's rates tried and kept per cell, and whether each kept rate is at the cap.
    fn tune(body: &str, score: impl Fn(usize, f64) -> f64) -> Vec<(Vec<f64>, f64, bool)> {
        let mut g = grid(body);
        let cells: Vec<(usize, usize)> = (0..g.regimes.len())
            .flat_map(|r| (0..g.methods.len()).map(move |m| (r, m)))
            .collect();
        let mut tuning = Tuning::new(&g);
        let mut results = Results::new();
        let chosen = loop {
            for k in tuning_keys(&g, &cells, &tuning.tried, 1) {
                let s = summary(score(k.method, g.lrs[k.lr]));
                results.insert((k.regime, k.method, k.lr, k.seed), s);
            }
            let chosen = choose_rates(&g, &cells, &tuning.tried, 1, &results);
            if !tuning.widen(&mut g, &chosen) {
                break chosen;
            }
        };
        cells
            .iter()
            .map(|&(r, m)| {
                let (kept, scores) = &chosen[&(r, m)];
                let rates = scores.iter().map(|&(i, _)| g.lrs[i]).collect();
                (rates, g.lrs[*kept], tuning.on_edge(r, *kept))
            })
            .collect()
    }

    /// A kept rate on an edge widens the rates of every method, one grid step per round,
    /// until every kept rate is interior or a side reaches `study.widen`.
    #[test]
    fn the_rates_widen_for_every_method_until_each_kept_one_is_interior_or_capped() {
        let peak = |at: f64| move |rate: f64| -(rate / at).ln().powi(2);
        let body =
            "methods = [\"scalarized\", \"gdpo\"]\nseeds = 1\nsteps = 5\nlrs = [0.03, 0.1, 0.3]\n";
        // scalarized peaks inside, gdpo at 1.0: both get the rates above 0.3
        let out = tune(
            body,
            |m, r| if m == 0 { peak(0.1)(r) } else { peak(1.0)(r) },
        );
        // (0.949 kept, on the edge until 3.0 was tried)
        let rates = vec![0.03, 0.1, 0.3, 0.949, 3.0];
        assert_eq!(out[0], (rates.clone(), 0.1, false));
        assert_eq!(out[1], (rates, 0.949, false));
        // a method best at ever smaller rates stops at the cap, and is marked there
        let capped = format!("{body}widen = 2\n");
        let out = tune(&capped, |m, r| if m == 0 { peak(0.1)(r) } else { -r });
        let rates = vec![0.003, 0.00949, 0.03, 0.1, 0.3];
        assert_eq!(out[0], (rates.clone(), 0.1, false));
        assert_eq!(out[1], (rates, 0.003, true));
        // `widen = 0`: the grid as written, an edge marked as the cap
        let fixed = format!("{body}widen = 0\n");
        let out = tune(&fixed, |_, r| -r);
        assert_eq!(out[0], (vec![0.03, 0.1, 0.3], 0.03, true));
    }

    /// `study.budget` reaches every run config, and only a budget changes the runs'
    /// fingerprints (the runs of grids without one are reused as before); `first_seed`
    /// shifts the seeds.
    #[test]
    fn a_budget_reaches_the_runs_and_their_fingerprints() {
        let body = "methods = [\"scalarized\"]\nseeds = 2\nsteps = 50\nlrs = [0.1]\n";
        let k = RunKey {
            regime: 0,
            method: 0,
            lr: 0,
            seed: 7,
        };
        let plain = grid(body);
        let zero = grid(&format!("{body}budget = 0\n"));
        let budget = grid(&format!("{body}budget = 9000\nfirst_seed = 7\n"));
        assert_eq!(plain.fingerprint(k).unwrap(), zero.fingerprint(k).unwrap());
        assert_ne!(
            plain.fingerprint(k).unwrap(),
            budget.fingerprint(k).unwrap()
        );
        let cfg = |g: &Grid| {
            let (r, m) = (&g.regimes[0], &g.methods[0]);
            g.run_config(r, m, 0.1, k.seed, Path::new("/tmp/x"))
                .unwrap()
        };
        assert_eq!(cfg(&plain).run.verdict_budget, 0);
        assert_eq!(
            (cfg(&budget).run.verdict_budget, cfg(&budget).run.steps),
            (9000, 50)
        );
        let keys = tuning_keys(&budget, &[(0, 0)], &[vec![0]], 2);
        assert_eq!(keys.iter().map(|k| k.seed).collect::<Vec<_>>(), [7, 8]);
    }
}
