//! `arlrr compare`: every method trained over the same seeds and budget, then compared on the
//! held-out test split — learning curves with 95% bands, test scores with 95% confidence
//! intervals, training efficiency, per-class results, the measured within-group reward spread
//! (variance contraction), and a plain verdict with an exact permutation test.

pub mod stats;
mod writeup;

use stats::mean;
pub use stats::{ci95, diff_ci95, min_permutation_p, permutation_p, t975};
pub use writeup::write_report;

use crate::report::RunRecords;
use anyhow::{bail, Result};
use arl::eval::EvalReport;
use arl::setup::Parts;
use arl::trainer::Trainer;
use arl::TrainConfig;
use schedule::{ObjectiveKind, SelectorKind};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One contender: an objective, and for `alternating` its selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Method {
    pub objective: ObjectiveKind,
    pub selector: Option<SelectorKind>,
    /// `scalarized+subsample`: `objective.subsample = "one_class"`, the cost-matched control
    /// of alternation's `grade_active_class_only`.
    pub subsample: bool,
}

/// The suffix of `scalarized+subsample`.
const SUBSAMPLE: &str = "+subsample";

impl Method {
    pub fn name(&self) -> String {
        let suffix = if self.subsample { SUBSAMPLE } else { "" };
        let head = match (self.objective, self.selector) {
            (ObjectiveKind::Alternating, Some(s)) => {
                format!(
                    "alternating:{}",
                    serde_json::to_value(s).unwrap().as_str().unwrap()
                )
            }
            (ObjectiveKind::Alternating, None) => "alternating".into(),
            (ObjectiveKind::Scalarized, _) => "scalarized".into(),
            (ObjectiveKind::Gdpo, _) => "gdpo".into(),
        };
        head + suffix
    }

    /// `"scalarized"`, `"scalarized+subsample"`, `"gdpo"`, `"alternating"` or
    /// `"alternating:<selector>"`.
    pub fn parse(s: &str) -> Result<Method> {
        if let Some(head) = s.strip_suffix(SUBSAMPLE) {
            let m = Method::parse(head)?;
            if m.objective != ObjectiveKind::Scalarized {
                bail!("method `{s}`: `{SUBSAMPLE}` needs `scalarized`");
            }
            return Ok(Method {
                subsample: true,
                ..m
            });
        }
        let (obj, sel) = match s.split_once(':') {
            Some((o, sel)) => (o, Some(sel)),
            None => (s, None),
        };
        let objective: ObjectiveKind = serde_json::from_value(serde_json::json!(obj))
            .map_err(|_| anyhow::anyhow!("unknown objective `{obj}` in method `{s}`"))?;
        let selector = match sel {
            Some(sel) => {
                if objective != ObjectiveKind::Alternating {
                    bail!("method `{s}`: only `alternating` takes a selector");
                }
                Some(
                    serde_json::from_value(serde_json::json!(sel))
                        .map_err(|_| anyhow::anyhow!("unknown selector `{sel}` in method `{s}`"))?,
                )
            }
            None => None,
        };
        Ok(Method {
            objective,
            selector,
            subsample: false,
        })
    }
}

/// What one (method, seed) run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub method: String,
    pub seed: u64,
    /// Validation overall score by step (step 0 = the start).
    pub curve: Vec<(u64, f64)>,
    pub test: EvalReport,
    /// Mean over steps of the within-group std of each class's reward.
    pub class_group_std: BTreeMap<String, f64>,
    /// Mean over steps of the within-group std of the points-scalarized reward.
    pub scalar_group_std: f64,
}

pub struct CompareSpec {
    pub base: TrainConfig,
    pub test: PathBuf,
    pub methods: Vec<Method>,
    pub seeds: Vec<u64>,
    pub out: PathBuf,
    /// Responses per test example.
    pub test_samples: usize,
}

/// The counts a comparison needs (`--seeds`, `--test-samples`), checked before any work:
/// one seed gives no confidence interval and no test, zero test samples no score.
pub fn check_counts(seeds: usize, test_samples: usize) -> Result<()> {
    if seeds < 2 {
        bail!(
            "--seeds: a comparison needs at least 2 seeds per method (got {seeds}): its \
             confidence intervals and permutation test compare runs over seeds; 5 allow p = 0.008"
        );
    }
    if test_samples == 0 {
        bail!("--test-samples: must be at least 1 (responses per test example), got 0");
    }
    Ok(())
}

/// Trains every method on every seed and evaluates each final policy on the test split.
pub fn run(spec: &CompareSpec, mut on_run: impl FnMut(&str, u64)) -> Result<Vec<RunResult>> {
    check_counts(spec.seeds.len(), spec.test_samples)?;
    let test = rubric::load(&spec.test)?;
    let mut results = Vec::new();
    for m in &spec.methods {
        for &seed in &spec.seeds {
            on_run(&m.name(), seed);
            let mut cfg = spec.base.clone();
            cfg.objective.kind = m.objective;
            if let Some(s) = m.selector {
                cfg.phases.selector = s;
            }
            if m.subsample {
                cfg.objective.subsample = Some(arl::Subsample::OneClass);
            }
            cfg.run.seed = seed;
            cfg.run.dir = spec
                .out
                .join(m.name().replace(':', "-"))
                .join(format!("seed-{seed}"));
            let parts = Parts::from_config(&cfg)?;
            // the test split is the comparison's own: its prompts must fit the model too
            arl::setup::check_prompt_lengths(&*parts.policy, &test, "`policy.max_new_tokens`")?;
            let mut t = Trainer::new(cfg.clone(), parts)?;
            let finished = t.run(|_| {})?;
            crate::report::write_run(&finished)?;
            let report = t.evaluate_on(&test, spec.test_samples, seed ^ 0x7e57)?;
            let RunRecords { evals, metrics, .. } = finished.records;
            let mut class_group_std = BTreeMap::new();
            for c in t.class_names() {
                let v: Vec<f64> = metrics
                    .iter()
                    .filter_map(|m| m.classes.get(c)?.group_std)
                    .collect();
                if !v.is_empty() {
                    class_group_std.insert(c.clone(), mean(&v));
                }
            }
            let s: Vec<f64> = metrics.iter().filter_map(|m| m.overall.group_std).collect();
            results.push(RunResult {
                method: m.name(),
                seed,
                curve: evals
                    .iter()
                    .map(|e| (e.step, e.report.overall.score))
                    .collect(),
                test: report,
                class_group_std,
                scalar_group_std: mean(&s),
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse() {
        let m = Method::parse("alternating:round_robin").unwrap();
        assert_eq!(m.selector, Some(SelectorKind::RoundRobin));
        assert_eq!(m.name(), "alternating:round_robin");
        let m = Method::parse("alternating:shuffled").unwrap();
        assert_eq!(m.selector, Some(SelectorKind::Shuffled));
        assert_eq!(m.name(), "alternating:shuffled");
        assert_eq!(Method::parse("gdpo").unwrap().name(), "gdpo");
        assert!(Method::parse("gdpo:ucb").is_err());
        assert!(Method::parse("nope").is_err());
        let m = Method::parse("scalarized+subsample").unwrap();
        assert!(m.subsample && m.objective == ObjectiveKind::Scalarized);
        assert_eq!(m.name(), "scalarized+subsample");
        assert!(!Method::parse("scalarized").unwrap().subsample);
        assert!(Method::parse("gdpo+subsample").is_err());
        assert!(Method::parse("alternating:ucb+subsample").is_err());
    }
}
