//! `compare.md` and `curves.svg`, written section by section: the verdict first, then what
//! each method bought over scalarization, final scores, efficiency, variance contraction,
//! learning curves and the runs themselves.

use super::stats::{ci95, diff_ci95, mean, min_permutation_p, permutation_p};
use super::{CompareSpec, Method, RunResult};
use crate::plots::{LineChart, Series, PALETTE};
use anyhow::Result;
use rubric::runfile;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The finished runs, looked up by method.
struct Runs<'a> {
    methods: Vec<String>,
    results: &'a [RunResult],
    classes: &'a [String],
}

impl Runs<'_> {
    fn of(&self, m: &str) -> Vec<&RunResult> {
        self.results.iter().filter(|r| r.method == m).collect()
    }

    fn test_scores(&self, m: &str) -> Vec<f64> {
        self.of(m).iter().map(|r| r.test.overall.score).collect()
    }

    fn has(&self, m: &str) -> bool {
        self.methods.iter().any(|x| x == m)
    }
}

/// Writes `compare.md` and `curves.svg` into `out`; returns the verdict sentence.
pub fn write_report(
    out: &Path,
    spec: &CompareSpec,
    results: &[RunResult],
    classes: &[String],
) -> Result<String> {
    let runs = Runs {
        methods: spec.methods.iter().map(Method::name).collect(),
        results,
        classes,
    };
    let mut r = String::new();
    writeln!(r, "# arlrr compare\n")?;
    writeln!(
        r,
        "{} methods × {} seeds ({:?}), {} steps each, {} prompts × {} samples per step; test split `{}` ({} samples per example).\n",
        runs.methods.len(),
        spec.seeds.len(),
        spec.seeds,
        spec.base.run.steps,
        spec.base.grpo.prompts_per_step,
        spec.base.grpo.group_size,
        spec.test.display(),
        spec.test_samples
    )?;
    let verdict = verdict(&runs);
    writeln!(r, "**Verdict:** {verdict}\n")?;
    against_scalarization(&mut r, &runs, spec.seeds.len())?;
    final_scores(&mut r, &runs)?;
    efficiency(&mut r, &runs)?;
    variance_contraction(&mut r, &runs)?;
    runfile::write_atomic(&out.join("curves.svg"), curves(&runs)?.as_bytes())?;
    writeln!(r, "\n## Learning curves\n\n![curves.svg](curves.svg)\n")?;
    run_table(&mut r, &runs)?;
    runfile::write_atomic(&out.join("compare.md"), r.as_bytes())?;
    Ok(verdict)
}

/// The best method by mean test score, tested against the runner-up.
fn verdict(runs: &Runs) -> String {
    let mut ranked: Vec<(String, f64)> = runs
        .methods
        .iter()
        .map(|m| (m.clone(), mean(&runs.test_scores(m))))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    if ranked.len() < 2 {
        return format!("only one method was run ({}).", runs.methods.join(", "));
    }
    let (best, second) = (&ranked[0], &ranked[1]);
    let p = permutation_p(&runs.test_scores(&best.0), &runs.test_scores(&second.0));
    let sig = if p < 0.05 {
        "the difference is significant"
    } else {
        "the difference is not significant"
    };
    format!(
        "{} won with a mean test score of {:.3}, ahead of {} ({:.3}); {sig} (exact permutation test over seeds, p = {:.3}).",
        best.0, best.1, second.0, second.1, p
    )
}

/// The question the comparison exists for: what each method bought over scalarization.
fn against_scalarization(r: &mut String, runs: &Runs, seeds: usize) -> Result<()> {
    if !runs.has("scalarized") || runs.methods.len() < 2 {
        return Ok(());
    }
    let base = runs.test_scores("scalarized");
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
    for m in runs.methods.iter().filter(|m| *m != "scalarized") {
        let s = runs.test_scores(m);
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
            "\nWith {seeds} seeds per method the smallest p the permutation test can give is {floor:.3}: no difference can reach p < 0.05 here; run more seeds (5 per method allow p = {:.3}).",
            min_permutation_p(5, 5)
        )?;
    }
    writeln!(r)?;
    Ok(())
}

/// One row per method: the mean over seeds of `value` of each run, overall and per class
/// (`–` where no run has the class).
fn class_row(
    runs: &Runs,
    m: &str,
    first: String,
    class_value: impl Fn(&RunResult, &str) -> Option<f64>,
    cell: impl Fn(&[f64]) -> String,
) -> String {
    let mut row = format!("| {m} | {first} |");
    for c in runs.classes {
        let v: Vec<f64> = runs
            .of(m)
            .iter()
            .filter_map(|x| class_value(x, c))
            .collect();
        if v.is_empty() {
            row.push_str(" – |");
        } else {
            let _ = write!(row, " {} |", cell(&v));
        }
    }
    row
}

fn final_scores(r: &mut String, runs: &Runs) -> Result<()> {
    writeln!(r, "## Final test score (mean over seeds, 95% CI)\n")?;
    writeln!(r, "| method | overall | {} |", runs.classes.join(" | "))?;
    writeln!(r, "|---|---|{}", "---|".repeat(runs.classes.len()))?;
    let cell = |v: &[f64]| format!("{:.3} ± {:.3}", mean(v), ci95(v));
    for m in &runs.methods {
        let overall = cell(&runs.test_scores(m));
        let row = class_row(
            runs,
            m,
            overall,
            |x, c| x.test.classes.get(c).map(|s| s.score),
            cell,
        );
        writeln!(r, "{row}")?;
    }
    Ok(())
}

/// Steps until each run first reaches the scalarized baseline's final validation score.
fn efficiency(r: &mut String, runs: &Runs) -> Result<()> {
    writeln!(r, "\n## Training efficiency\n")?;
    if !runs.has("scalarized") {
        writeln!(r, "(no scalarized run to measure against)")?;
        return Ok(());
    }
    let finals: Vec<f64> = runs
        .of("scalarized")
        .iter()
        .filter_map(|x| x.curve.last().map(|c| c.1))
        .collect();
    let target = mean(&finals);
    writeln!(
        r,
        "Target: the scalarized method's final validation score, {target:.3} (mean over seeds). Steps until a run's validation score first reaches it:\n"
    )?;
    writeln!(
        r,
        "| method | runs that reach it | mean steps (those that do) |\n|---|---|---|"
    )?;
    for m in &runs.methods {
        let steps: Vec<f64> = runs
            .of(m)
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
            runs.of(m).len()
        )?;
    }
    Ok(())
}

/// The within-group reward spread the theory is about, scalarized and per class.
fn variance_contraction(r: &mut String, runs: &Runs) -> Result<()> {
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
        runs.classes.join(" | ")
    )?;
    writeln!(r, "|---|---|{}", "---|".repeat(runs.classes.len()))?;
    let cell = |v: &[f64]| format!("{:.4}", mean(v));
    for m in &runs.methods {
        let s: Vec<f64> = runs.of(m).iter().map(|x| x.scalar_group_std).collect();
        let row = class_row(
            runs,
            m,
            cell(&s),
            |x, c| x.class_group_std.get(c).copied(),
            cell,
        );
        writeln!(r, "{row}")?;
    }
    Ok(())
}

/// Learning curves: mean validation score by step with a 95% band over seeds.
fn curves(runs: &Runs) -> Result<String> {
    let mut series = Vec::new();
    for (i, m) in runs.methods.iter().enumerate() {
        let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for x in runs.of(m) {
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
    LineChart {
        title: "Validation score by method (mean over seeds, 95% band)",
        x_label: "training step",
        y_label: "overall validation score",
        series,
    }
    .to_svg()
}

fn run_table(r: &mut String, runs: &Runs) -> Result<()> {
    writeln!(
        r,
        "## Runs\n\n| method | seed | final validation | test |\n|---|---|---|---|"
    )?;
    for x in runs.results {
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
    Ok(())
}
