//! `arlrr compare`: every method trained over the same seeds and budget, then compared on the
//! held-out test split — learning curves with 95% bands, test scores with 95% confidence
//! intervals, training efficiency, per-class results, the measured within-group reward spread
//! (variance contraction), and a plain verdict with an exact permutation test.

use crate::eval::{EvalReport, EvalSet, Evaluator};
use crate::metrics::StepMetrics;
use crate::plots::{LineChart, Series, PALETTE};
use crate::trainer::{EvalLine, Parts, Trainer};
use crate::TrainConfig;
use anyhow::{bail, Result};
use rubric::{runfile, Dataset};
use schedule::{ObjectiveKind, SelectorKind};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One contender: an objective, and for `alternating` its selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Method {
    pub objective: ObjectiveKind,
    pub selector: Option<SelectorKind>,
}

impl Method {
    pub fn name(&self) -> String {
        match (self.objective, self.selector) {
            (ObjectiveKind::Alternating, Some(s)) => {
                format!(
                    "alternating:{}",
                    serde_json::to_value(s).unwrap().as_str().unwrap()
                )
            }
            (ObjectiveKind::Alternating, None) => "alternating".into(),
            (ObjectiveKind::Scalarized, _) => "scalarized".into(),
            (ObjectiveKind::Gdpo, _) => "gdpo".into(),
        }
    }

    /// `"scalarized"`, `"gdpo"`, `"alternating"` or `"alternating:<selector>"`.
    pub fn parse(s: &str) -> Result<Method> {
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

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (the two-sided 95% critical
/// value); `df` may be fractional (Welch). NaN when `df` is not positive.
pub fn t975(df: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    // statrs inverts the incomplete beta function, which loses digits (and takes long) for huge
    // df; there the Cornish-Fisher expansion around the normal quantile is exact to ~1e-12.
    if df > 1e4 {
        const Z: f64 = 1.959_963_984_540_054;
        let g1 = (Z.powi(3) + Z) / 4.0;
        let g2 = (5.0 * Z.powi(5) + 16.0 * Z.powi(3) + 3.0 * Z) / 96.0;
        return Z + g1 / df + g2 / (df * df);
    }
    StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |t| t.inverse_cdf(0.975))
}

/// Half-width of the 95% confidence interval of the mean.
pub fn ci95(v: &[f64]) -> f64 {
    t975(v.len() as f64 - 1.0) * sd(v) / (v.len() as f64).sqrt()
}

/// The smallest p-value `permutation_p` can give for groups of `n1` and `n2` distinct values:
/// only the two most extreme relabelings reach the observed difference, so it is
/// 2 / C(n1 + n2, n1). With 3 seeds per method that is 0.1: no difference can be significant.
pub fn min_permutation_p(n1: usize, n2: usize) -> f64 {
    let mut c = 1.0f64;
    for i in 0..n1 {
        c = c * (n2 + n1 - i) as f64 / (i + 1) as f64;
    }
    (2.0 / c).min(1.0)
}

/// Mean difference `mean(a) - mean(b)` with the half-width of its 95% confidence interval
/// (Welch: unequal variances, Welch-Satterthwaite degrees of freedom, not rounded).
pub fn diff_ci95(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (va, vb) = (
        sd(a).powi(2) / a.len() as f64,
        sd(b).powi(2) / b.len() as f64,
    );
    let se = (va + vb).sqrt();
    let df = if se == 0.0 {
        (a.len() + b.len()) as f64 - 2.0
    } else {
        let den =
            va * va / (a.len() as f64 - 1.0).max(1.0) + vb * vb / (b.len() as f64 - 1.0).max(1.0);
        ((va + vb).powi(2) / den).max(1.0)
    };
    (mean(a) - mean(b), t975(df) * se)
}

/// Exact two-sided permutation test of a difference in means: the share of all relabelings
/// of the pooled values whose |difference| is at least the observed one.
pub fn permutation_p(a: &[f64], b: &[f64]) -> f64 {
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let (n, k) = (pooled.len(), a.len());
    if n > 24 || k == 0 || k == n {
        return f64::NAN;
    }
    let observed = (mean(a) - mean(b)).abs();
    let total: f64 = pooled.iter().sum();
    let (mut hits, mut count) = (0u64, 0u64);
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize != k {
            continue;
        }
        let sa: f64 = (0..n)
            .filter(|i| mask >> i & 1 == 1)
            .map(|i| pooled[i])
            .sum();
        let d = (sa / k as f64 - (total - sa) / (n - k) as f64).abs();
        count += 1;
        if d >= observed - 1e-12 {
            hits += 1;
        }
    }
    hits as f64 / count as f64
}

impl Trainer {
    /// Scores the current policy on another split (e.g. test), all examples, with the run's
    /// class assignment.
    pub fn evaluate_on(&mut self, data: &Dataset, samples: usize, seed: u64) -> Result<EvalReport> {
        let assignment = self.data.classes.assign(data)?;
        let set = EvalSet {
            examples: data.examples.iter().collect(),
            class_of: assignment.iter().map(Vec::as_slice).collect(),
            class_names: &self.data.classes.names,
        };
        let evaluator = Evaluator {
            judge: &*self.judge,
            rt: &self.rt,
            retries: self.config.judge.retries,
            samples,
            seed,
            resamples: self.config.eval.bootstrap,
        };
        evaluator.evaluate(&mut *self.policy, &set)
    }
}

/// Trains every method on every seed and evaluates each final policy on the test split.
pub fn run(spec: &CompareSpec, mut on_run: impl FnMut(&str, u64)) -> Result<Vec<RunResult>> {
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
            cfg.run.seed = seed;
            cfg.run.dir = spec
                .out
                .join(m.name().replace(':', "-"))
                .join(format!("seed-{seed}"));
            let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg)?)?;
            t.run(|_| {})?;
            let report = t.evaluate_on(&test, spec.test_samples, seed ^ 0x7e57)?;
            let evals: Vec<EvalLine> = runfile::read_jsonl(&t.run_dir.join("eval.jsonl"))?;
            let metrics: Vec<StepMetrics> = runfile::read_jsonl(&t.run_dir.join("metrics.jsonl"))?;
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

/// Writes `compare.md` and `curves.svg` into `out`; returns the verdict sentence.
pub fn write_report(
    out: &Path,
    spec: &CompareSpec,
    results: &[RunResult],
    classes: &[String],
) -> Result<String> {
    let methods: Vec<String> = spec.methods.iter().map(Method::name).collect();
    let of = |m: &str| -> Vec<&RunResult> { results.iter().filter(|r| r.method == m).collect() };
    let test_scores =
        |m: &str| -> Vec<f64> { of(m).iter().map(|r| r.test.overall.score).collect() };
    let mut r = String::new();
    writeln!(r, "# arlrr compare\n")?;
    writeln!(
        r,
        "{} methods × {} seeds ({:?}), {} steps each, {} prompts × {} samples per step; test split `{}` ({} samples per example).\n",
        methods.len(),
        spec.seeds.len(),
        spec.seeds,
        spec.base.run.steps,
        spec.base.grpo.prompts_per_step,
        spec.base.grpo.group_size,
        spec.test.display(),
        spec.test_samples
    )?;

    // verdict first: best by mean test score, tested against the runner-up
    let mut ranked: Vec<(String, f64)> = methods
        .iter()
        .map(|m| (m.clone(), mean(&test_scores(m))))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let verdict = if ranked.len() >= 2 {
        let (best, second) = (&ranked[0], &ranked[1]);
        let p = permutation_p(&test_scores(&best.0), &test_scores(&second.0));
        let sig = if p < 0.05 {
            "the difference is significant"
        } else {
            "the difference is not significant"
        };
        format!(
            "{} won with a mean test score of {:.3}, ahead of {} ({:.3}); {sig} (exact permutation test over seeds, p = {:.3}).",
            best.0, best.1, second.0, second.1, p
        )
    } else {
        format!("only one method was run ({}).", methods.join(", "))
    };
    writeln!(r, "**Verdict:** {verdict}\n")?;

    // the question the comparison exists for: what each method bought over scalarization
    if methods.iter().any(|m| m == "scalarized") && methods.len() >= 2 {
        let base = test_scores("scalarized");
        writeln!(r, "## Against scalarization\n")?;
        writeln!(
            r,
            "Test score minus the scalarized method's, mean over seeds with a 95% confidence interval (Welch), and the exact permutation test over seeds.\n"
        )?;
        writeln!(
            r,
            "| method | difference | 95% CI | p | |\n|---|---|---|---|---|"
        )?;
        let mut floor = 0.0f64;
        for m in methods.iter().filter(|m| *m != "scalarized") {
            let s = test_scores(m);
            let (d, half) = diff_ci95(&s, &base);
            let p = permutation_p(&s, &base);
            floor = floor.max(min_permutation_p(s.len(), base.len()));
            let word = match (p < 0.05, d.partial_cmp(&0.0)) {
                (_, Some(std::cmp::Ordering::Equal)) => "no difference",
                (true, Some(std::cmp::Ordering::Greater)) => "significantly better",
                (true, _) => "significantly worse",
                (false, Some(std::cmp::Ordering::Greater)) => "better, not significant",
                (false, _) => "worse, not significant",
            };
            writeln!(
                r,
                "| {m} | {d:+.3} | [{:+.3}, {:+.3}] | {p:.3} | {word} |",
                d - half,
                d + half
            )?;
        }
        if floor >= 0.05 {
            writeln!(
                r,
                "\nWith {} seeds per method the smallest p the permutation test can give is {floor:.3}: no difference can reach p < 0.05 here; run more seeds (5 per method allow p = {:.3}).",
                spec.seeds.len(),
                min_permutation_p(5, 5)
            )?;
        }
        writeln!(r)?;
    }

    writeln!(r, "## Final test score (mean over seeds, 95% CI)\n")?;
    writeln!(r, "| method | overall | {} |", classes.join(" | "))?;
    writeln!(r, "|---|---|{}", "---|".repeat(classes.len()))?;
    for m in &methods {
        let s = test_scores(m);
        let mut row = format!("| {m} | {:.3} ± {:.3} |", mean(&s), ci95(&s));
        for c in classes {
            let v: Vec<f64> = of(m)
                .iter()
                .filter_map(|x| x.test.classes.get(c).map(|s| s.score))
                .collect();
            if v.is_empty() {
                row.push_str(" – |");
            } else {
                let _ = write!(row, " {:.3} ± {:.3} |", mean(&v), ci95(&v));
            }
        }
        writeln!(r, "{row}")?;
    }

    // training efficiency against the scalarized baseline's final validation score
    writeln!(r, "\n## Training efficiency\n")?;
    let final_val = |m: &str| -> Vec<f64> {
        of(m)
            .iter()
            .filter_map(|x| x.curve.last().map(|c| c.1))
            .collect()
    };
    if methods.iter().any(|m| m == "scalarized") {
        let target = mean(&final_val("scalarized"));
        writeln!(
            r,
            "Target: the scalarized method's final validation score, {target:.3} (mean over seeds). Steps until a run's validation score first reaches it:\n"
        )?;
        writeln!(
            r,
            "| method | runs that reach it | mean steps (those that do) |\n|---|---|---|"
        )?;
        for m in &methods {
            let steps: Vec<f64> = of(m)
                .iter()
                .filter_map(|x| x.curve.iter().find(|c| c.1 >= target).map(|c| c.0 as f64))
                .collect();
            let mean_steps = if steps.is_empty() {
                "never".to_string()
            } else {
                format!("{:.0}", mean(&steps))
            };
            writeln!(
                r,
                "| {m} | {}/{} | {mean_steps} |",
                steps.len(),
                of(m).len()
            )?;
        }
    } else {
        writeln!(r, "(no scalarized run to measure against)")?;
    }

    writeln!(
        r,
        "\n## Variance contraction (within-group reward std, mean over steps and seeds)\n"
    )?;
    writeln!(
        r,
        "The scalarized (points) reward mixes every class; a single class's reward is what an alternating phase optimizes.\n"
    )?;
    writeln!(
        r,
        "| method | scalarized reward | {} |",
        classes.join(" | ")
    )?;
    writeln!(r, "|---|---|{}", "---|".repeat(classes.len()))?;
    for m in &methods {
        let runs = of(m);
        let s: Vec<f64> = runs.iter().map(|x| x.scalar_group_std).collect();
        let mut row = format!("| {m} | {:.4} |", mean(&s));
        for c in classes {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|x| x.class_group_std.get(c).copied())
                .collect();
            if v.is_empty() {
                row.push_str(" – |");
            } else {
                let _ = write!(row, " {:.4} |", mean(&v));
            }
        }
        writeln!(r, "{row}")?;
    }

    // learning curves: mean validation score by step with a 95% band over seeds
    let mut series = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for x in of(m) {
            for (s, v) in &x.curve {
                by_step.entry(*s).or_default().push(*v);
            }
        }
        let mut ser = Series::new(
            m.clone(),
            PALETTE[i % PALETTE.len()],
            by_step.iter().map(|(s, v)| (*s as f64, mean(v))).collect(),
        );
        ser.band = by_step
            .iter()
            .map(|(s, v)| (*s as f64, mean(v) - ci95(v), mean(v) + ci95(v)))
            .collect();
        series.push(ser);
    }
    runfile::write_atomic(
        &out.join("curves.svg"),
        LineChart {
            title: "Validation score by method (mean over seeds, 95% band)",
            x_label: "training step",
            y_label: "overall validation score",
            series,
        }
        .to_svg()?
        .as_bytes(),
    )?;
    writeln!(r, "\n## Learning curves\n\n![curves.svg](curves.svg)\n")?;
    writeln!(
        r,
        "## Runs\n\n| method | seed | final validation | test |\n|---|---|---|---|"
    )?;
    for x in results {
        writeln!(
            r,
            "| {} | {} | {:.3} | {:.3} ± {:.3} |",
            x.method,
            x.seed,
            x.curve.last().map_or(f64::NAN, |c| c.1),
            x.test.overall.score,
            x.test.overall.std
        )?;
    }
    runfile::write_atomic(&out.join("compare.md"), r.as_bytes())?;
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert!((ci95(&[1.0, 2.0, 3.0]) - t975(2.0) / 3f64.sqrt()).abs() < 1e-12);
        // fully separated groups of 3: 2 of the 20 relabelings are as extreme
        assert!((permutation_p(&[1.0, 1.1, 1.2], &[0.0, 0.1, 0.2]) - 0.1).abs() < 1e-12);
        assert_eq!(permutation_p(&[1.0, 0.0], &[1.0, 0.0]), 1.0);
        assert!((min_permutation_p(3, 3) - 0.1).abs() < 1e-12);
        assert!((min_permutation_p(5, 5) - 2.0 / 252.0).abs() < 1e-12);
        assert!((min_permutation_p(2, 3) - 0.2).abs() < 1e-12);
        // equal spreads: Welch reduces to the pooled t with n1 + n2 - 2 = 4 df
        let (d, half) = diff_ci95(&[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0]);
        assert!((d - 1.0).abs() < 1e-12);
        let se = (2.0f64 / 3.0).sqrt();
        assert!((half - t975(4.0) * se).abs() < 1e-12, "{half}");
    }

    #[test]
    fn methods_parse() {
        let m = Method::parse("alternating:round_robin").unwrap();
        assert_eq!(m.selector, Some(SelectorKind::RoundRobin));
        assert_eq!(m.name(), "alternating:round_robin");
        assert_eq!(Method::parse("gdpo").unwrap().name(), "gdpo");
        assert!(Method::parse("gdpo:ucb").is_err());
        assert!(Method::parse("nope").is_err());
    }
}
