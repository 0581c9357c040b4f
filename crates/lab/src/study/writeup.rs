//! `study/report.md` and `study/plots/`: the regime map first (test scores, then ARL-RR
//! against scalarization), then efficiency per judge verdict and per step, the measured
//! variance contraction, the selectors' evidence and the learning rates kept.

use super::{Cell, DecisionEvidence, Grid, Regime, RunSummary, StudyOutcome};
use crate::compare::stats::{ci95, diff_ci95, mean, min_permutation_p, permutation_p};
use crate::plots::{LineChart, Series, PALETTE};
use anyhow::Result;
use rubric::runfile;
use schedule::ObjectiveKind;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

/// A difference is a win or a loss when the permutation test gives p below this.
const ALPHA: f64 = 0.05;

struct View<'a> {
    grid: &'a Grid,
    cells: &'a [Cell],
    /// the grid's method names, in its order
    methods: Vec<&'a str>,
}

impl View<'_> {
    fn cell(&self, regime: usize, method: usize) -> &Cell {
        self.cells
            .iter()
            .find(|c| c.regime == regime && c.method == method)
            .expect("every cell was run")
    }

    fn tests(&self, regime: usize, method: usize) -> Vec<f64> {
        self.cell(regime, method)
            .runs
            .iter()
            .map(|r| r.test_final)
            .collect()
    }

    /// The first method of `kind` without variants (else with).
    fn method_index(&self, kind: ObjectiveKind) -> Option<usize> {
        let ms = &self.grid.methods;
        let plain = ms
            .iter()
            .position(|m| m.objective == kind && m.variants.is_empty());
        plain.or_else(|| ms.iter().position(|m| m.objective == kind))
    }

    /// Mean validation curve over seeds (steps every run evaluated at).
    fn mean_curve(&self, regime: usize, method: usize) -> Vec<(u64, f64)> {
        let runs = &self.cell(regime, method).runs;
        let steps: Vec<u64> = runs[0].curve.iter().map(|p| p.0).collect();
        steps
            .into_iter()
            .filter_map(|step| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.curve.iter().find(|p| p.0 == step).map(|p| p.1))
                    .collect();
                (v.len() == runs.len()).then(|| (step, mean(&v)))
            })
            .collect()
    }

    /// First evaluated step where the mean validation curve reaches `target`, and the mean
    /// verdicts spent by then.
    fn reach(&self, regime: usize, method: usize, target: f64) -> Option<(u64, f64)> {
        let (step, _) = self
            .mean_curve(regime, method)
            .into_iter()
            .find(|&(s, v)| s > 0 && v >= target - 1e-12)?;
        let spent: Vec<f64> = self
            .cell(regime, method)
            .runs
            .iter()
            .map(|r| r.verdicts.get(step as usize - 1).copied().unwrap_or(0) as f64)
            .collect();
        Some((step, mean(&spent)))
    }
}

/// `400 steps per run`, or the budget.
fn per_run(grid: &Grid) -> String {
    match grid.budget {
        0 => format!("{} steps per run", grid.steps),
        b => format!(
            "a judge budget of {b} verdicts (training and selection) per run, at most {} steps",
            grid.steps
        ),
    }
}

/// The smallest p a test allows, readable however small.
fn p_floor(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn p_text(p: f64) -> String {
    if p.is_nan() {
        "n/a".into()
    } else if p < 0.001 {
        "p<0.001".into()
    } else {
        format!("p={p:.3}")
    }
}

fn count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Writes `report.md` and the plots into `out`; returns the headline (one line per
/// alternating method: wins, ties and losses against scalarization).
pub fn write_report(out: &Path, grid: &Grid, outcome: &StudyOutcome) -> Result<String> {
    let v = View {
        grid,
        cells: &outcome.cells,
        methods: grid.methods.iter().map(|m| m.name.as_str()).collect(),
    };
    let mut r = String::new();
    header(&mut r, &v, outcome)?;
    let scal = v.method_index(ObjectiveKind::Scalarized);
    regime_map(&mut r, &v)?;
    if grid.budget > 0 {
        spend(&mut r, &v)?;
    }
    let alternating: Vec<usize> = (0..v.methods.len())
        .filter(|&m| grid.methods[m].alternating())
        .collect();
    let mut headline = String::new();
    if let Some(s) = scal.filter(|_| !alternating.is_empty()) {
        // every other method, alternating or not: the baselines' own standing is tested too
        let others: Vec<usize> = (0..v.methods.len()).filter(|&m| m != s).collect();
        let title = "Every method against scalarization";
        headline += &against(&mut r, &v, s, &others, title)?;
    }
    let control = grid.methods.iter().position(|m| m.has("subsample"));
    if let Some(c) = control.filter(|_| !alternating.is_empty()) {
        let title = format!(
            "Alternation against the cost-matched control (`{}`)",
            v.methods[c]
        );
        headline += &against(&mut r, &v, c, &alternating, &title)?;
    }
    if let Some(s) = scal {
        efficiency(&mut r, &v, s)?;
    }
    variance_contraction(&mut r, &v, scal)?;
    selector_evidence(&mut r, &v)?;
    learning_rates(&mut r, &v)?;
    super::predict::section(&mut r, grid, &outcome.cells)?;
    curves(&mut r, &v, out)?;
    runfile::write_atomic(&out.join("report.md"), r.as_bytes())?;
    Ok(headline)
}

/// The title, the grid's shape and how to reproduce it.
fn header(r: &mut String, v: &View, outcome: &StudyOutcome) -> Result<()> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    let run_s: f64 = outcome
        .cells
        .iter()
        .flat_map(|c| &c.runs)
        .map(|r| r.wall_s)
        .sum();
    writeln!(r, "# ARL-RR regime study\n")?;
    writeln!(
        r,
        "Grid `{}`: base config `{}`, {} regimes × {} methods × {} seeds ({}–{}), {}. \
         Every method is tuned over the same learning rates {:?}: each rate is run on the first \
         {} seed(s), the one with the best mean final validation score is kept, and test \
         figures are that rate's runs over all seeds. {}\n",
        grid.path.display(),
        grid.base_path.display(),
        grid.regimes.len(),
        methods.len(),
        grid.seeds,
        grid.first_seed,
        grid.first_seed + grid.seeds - 1,
        per_run(grid),
        grid.lrs,
        if grid.lrs.len() == 1 {
            grid.seeds
        } else {
            grid.tune_seeds
        },
        if grid.lrs.len() > 1 {
            format!(
                "Where any method's kept rate lay on an edge of a regime's rates, that \
                 regime's rates were widened for every method, one grid step at a time, at most \
                 {} per side (see \"Learning rates kept\").",
                grid.widen
            )
        } else {
            String::new()
        }
    )?;
    writeln!(
        r,
        "Reproduce: `arlrr study --grid {}`. The kept runs' own wall times sum to {:.0} s \
         (tuning runs at other rates not counted). Every run was made by commit {} (code {}). \
         The invocation that wrote this report trained {} run(s) ({} of them replacing runs \
         made by other code) and reused {} finished before, in {:.0} s wall, {} at a time.\n",
        grid.path.display(),
        run_s,
        crate::COMMIT,
        crate::CODE_VERSION,
        outcome.trained,
        outcome.retrained,
        outcome.reused,
        outcome.wall_s,
        outcome.jobs
    )?;
    Ok(())
}

/// The regime map: test scores of every method in every regime, and the winner.
fn regime_map(r: &mut String, v: &View) -> Result<()> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    writeln!(r, "## Regime map\n")?;
    writeln!(
        r,
        "Test score (HealthBench overall on the held-out split) at the end of the run ({}), \
         mean ± 95% CI over {} seeds; the best mean in bold; the winner's exact permutation p \
         against the runner-up.\n",
        per_run(grid),
        grid.seeds
    )?;
    writeln!(r, "| regime | {} | winner |", methods.join(" | "))?;
    writeln!(r, "|---|{}---|", "---|".repeat(methods.len()))?;
    for (ri, regime) in grid.regimes.iter().enumerate() {
        let means: Vec<f64> = (0..methods.len()).map(|m| mean(&v.tests(ri, m))).collect();
        let mut order: Vec<usize> = (0..methods.len()).collect();
        order.sort_by(|&a, &b| means[b].total_cmp(&means[a]));
        let best = order[0];
        let cells: Vec<String> = (0..methods.len())
            .map(|m| {
                let t = v.tests(ri, m);
                let s = format!("{:.3} ± {:.3}", mean(&t), ci95(&t));
                if m == best {
                    format!("**{s}**")
                } else {
                    s
                }
            })
            .collect();
        let winner = match order.get(1) {
            Some(&second) => {
                let p = permutation_p(&v.tests(ri, best), &v.tests(ri, second));
                let word = if p < ALPHA { "" } else { " (tie)" };
                format!(
                    "{}{word}, {} vs {}",
                    methods[best],
                    p_text(p),
                    methods[second]
                )
            }
            None => methods[best].to_string(),
        };
        writeln!(
            r,
            "| {} | {} | {winner} |",
            regime.label(),
            cells.join(" | ")
        )?;
    }
    writeln!(r)?;
    Ok(())
}

/// Each of `alternating` (every other method, against `scalarized`) against the reference
/// method `s` (`scalarized`, or its cost-matched control), regime by regime, under `title`;
/// returns the headline (wins, ties and losses per method).
fn against(
    r: &mut String,
    v: &View,
    s: usize,
    alternating: &[usize],
    title: &str,
) -> Result<String> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    let mut headline = String::new();
    writeln!(r, "### {title}\n")?;
    writeln!(
        r,
        "Each method minus `{}` on test: difference [95% CI], exact \
         permutation p; **win** or **loss** when p < {ALPHA}, tie otherwise (the smallest \
         p {} seeds per side allow is {}).\n",
        methods[s],
        grid.seeds,
        p_floor(min_permutation_p(grid.seeds as usize, grid.seeds as usize))
    )?;
    let names: Vec<&str> = alternating.iter().map(|&m| methods[m]).collect();
    writeln!(r, "| regime | {} |", names.join(" | "))?;
    writeln!(r, "|---|{}", "---|".repeat(names.len()))?;
    let mut tally = vec![(0, 0, 0); alternating.len()];
    for (ri, regime) in grid.regimes.iter().enumerate() {
        let base = v.tests(ri, s);
        let cells: Vec<String> = alternating
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let t = v.tests(ri, m);
                let (d, half) = diff_ci95(&t, &base);
                let p = permutation_p(&t, &base);
                let word = if p < ALPHA && d > 0.0 {
                    tally[i].0 += 1;
                    "**win**"
                } else if p < ALPHA {
                    tally[i].2 += 1;
                    "**loss**"
                } else {
                    tally[i].1 += 1;
                    "tie"
                };
                format!(
                    "{word} {d:+.3} [{:+.3}, {:+.3}], {}",
                    d - half,
                    d + half,
                    p_text(p)
                )
            })
            .collect();
        writeln!(r, "| {} | {} |", regime.label(), cells.join(" | "))?;
    }
    writeln!(r)?;
    for (i, &m) in alternating.iter().enumerate() {
        let (w, t, l) = tally[i];
        writeln!(
            headline,
            "{}: wins {w}, ties {t}, loses {l} of {} regimes against {}",
            methods[m],
            grid.regimes.len(),
            methods[s]
        )?;
    }
    for line in headline.lines() {
        writeln!(r, "- {line}")?;
    }
    writeln!(r)?;
    Ok(headline)
}

/// What each method's runs spent of the budget, in how many steps; the runs the step cap
/// stopped first.
fn spend(r: &mut String, v: &View) -> Result<()> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    writeln!(r, "### Spend at the budget\n")?;
    writeln!(
        r,
        "Judge verdicts each method's runs spent on training and selection, and the steps \
         they took (means over seeds). A run stops after the step that reaches the budget \
         of {} verdicts, so it may overspend by part of one step (or one selection).\n",
        grid.budget
    )?;
    let mut short = Vec::new();
    method_table(r, grid, methods, |ri, m| {
        let runs = &v.cell(ri, m).runs;
        let under = runs
            .iter()
            .filter(|r| (spent(r) as u64) < grid.budget)
            .count();
        let spent: Vec<f64> = runs.iter().map(spent).collect();
        let steps: Vec<f64> = runs.iter().map(|r| r.verdicts.len() as f64).collect();
        if under > 0 {
            short.push(format!(
                "{} in {}: {under} run(s)",
                methods[m],
                grid.regimes[ri].label()
            ));
        }
        format!("{} in {:.0} steps", count(mean(&spent)), mean(&steps))
    })?;
    if short.is_empty() {
        writeln!(r, "Every run spent its budget within the step cap.\n")?;
    } else {
        writeln!(
            r,
            "**Stopped by the step cap ({} steps) before spending the budget** (compared at \
             a smaller spend): {}.\n",
            grid.steps,
            short.join("; ")
        )?;
    }
    Ok(())
}

/// Verdicts and steps until each method reaches `scalarized`'s (method `s`) final validation
/// score, total verdicts, and the score at equal judge cost.
fn efficiency(r: &mut String, v: &View, s: usize) -> Result<()> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    writeln!(r, "## Efficiency per judge verdict\n")?;
    writeln!(
        r,
        "Judge verdicts spent on training and selection (validation excluded) until the \
         method's mean validation curve first reaches `scalarized`'s final mean validation \
         score; — = not within {} steps. With an LLM judge the verdicts are the bill. \
         Alternating methods grade {} during training.\n",
        grid.steps,
        if grid.grade_active_class_only {
            "only the active class's criteria (`grade_active_class_only`; anchored \
             alternation grades every class)"
        } else {
            "every class"
        }
    )?;
    efficiency_table(r, v, s, methods, |(_, verdicts)| count(verdicts))?;
    writeln!(r, "Total verdicts per run (mean over seeds):\n")?;
    method_table(r, grid, methods, |ri, m| {
        let t: Vec<f64> = v.cell(ri, m).runs.iter().map(spent).collect();
        count(mean(&t))
    })?;
    writeln!(r, "### Score at equal judge cost\n")?;
    writeln!(
        r,
        "Each method's final validation score minus `scalarized`'s validation score at the \
         same verdict spend (each scalarized run's curve interpolated between its \
         validations at the method's mean spend): difference [95% CI], exact permutation p, \
         and the spend. Positive = better for the money. `>` = the method spent more than \
         `scalarized`'s whole run and is compared with its final score.\n"
    )?;
    method_table(r, grid, methods, |ri, m| {
        if m == s {
            return "(reference)".into();
        }
        let runs = &v.cell(ri, m).runs;
        let spend = mean(&runs.iter().map(spent).collect::<Vec<_>>());
        let finals: Vec<f64> = runs.iter().map(|r| r.val_final).collect();
        let at: Option<Vec<(f64, bool)>> = v
            .cell(ri, s)
            .runs
            .iter()
            .map(|r| at_cost(&cost_curve(r), spend))
            .collect();
        let Some(at) = at else {
            return "—".into();
        };
        let beyond = at.iter().any(|a| a.1);
        let base: Vec<f64> = at.iter().map(|a| a.0).collect();
        let (d, half) = diff_ci95(&finals, &base);
        format!(
            "{d:+.3} [{:+.3}, {:+.3}], {} ({}{})",
            d - half,
            d + half,
            p_text(permutation_p(&finals, &base)),
            if beyond { ">" } else { "" },
            count(spend)
        )
    })?;
    writeln!(r, "## Efficiency per step\n")?;
    writeln!(
        r,
        "Training steps until the mean validation curve first reaches `scalarized`'s final \
         mean validation score (validation every {} steps); — = not within {} steps.\n",
        grid.base.eval.every, grid.steps
    )?;
    efficiency_table(r, v, s, methods, |(step, _)| step.to_string())?;
    Ok(())
}

/// The within-group reward std of `scalarized`'s runs (or the first method's) against each
/// class's.
fn variance_contraction(r: &mut String, v: &View, scal: Option<usize>) -> Result<()> {
    let grid = v.grid;
    writeln!(r, "## Variance contraction\n")?;
    writeln!(
        r,
        "Within-group std of the rewards on each method's own training samples, averaged over \
         steps and seeds: the points-scalarized reward against each class's. Scalarizing sums \
         the classes, so where they vary independently (or against each other) its spread is \
         smaller than theirs: the contraction ARL-RR's argument rests on. `ratio` = scalarized \
         std / mean class std. Measured in `scalarized`'s runs; `judge F1` is the training \
         judge's measured macro F1 against the clean one (noisy regimes).\n"
    )?;
    let classes: BTreeSet<String> = v
        .cells
        .iter()
        .flat_map(|c| &c.runs)
        .flat_map(|r| r.class_group_std.keys().cloned())
        .collect();
    let classes: Vec<String> = classes.into_iter().collect();
    writeln!(
        r,
        "| regime | scalarized | {} | ratio | judge F1 |",
        classes.join(" | ")
    )?;
    writeln!(r, "|---|---|{}---|---|", "---|".repeat(classes.len()))?;
    let source = scal.unwrap_or(0);
    for (ri, regime) in grid.regimes.iter().enumerate() {
        let runs = &v.cell(ri, source).runs;
        let avg = |f: &dyn Fn(&RunSummary) -> Option<f64>| {
            let x: Vec<f64> = runs.iter().filter_map(f).collect();
            (!x.is_empty()).then(|| mean(&x))
        };
        let scalar = avg(&|r| r.scalar_group_std);
        let per_class: Vec<Option<f64>> = classes
            .iter()
            .map(|c| avg(&|r| r.class_group_std.get(c).copied()))
            .collect();
        let defined: Vec<f64> = per_class.iter().flatten().copied().collect();
        let ratio = scalar
            .filter(|_| !defined.is_empty())
            .map(|s| s / mean(&defined));
        let f1 = avg(&|r| r.judge_f1);
        let fmt = |x: Option<f64>| x.map_or("—".into(), |x| format!("{x:.3}"));
        writeln!(
            r,
            "| {} | {} | {} | {} | {} |",
            regime.label(),
            fmt(scalar),
            per_class
                .iter()
                .map(|x| fmt(*x))
                .collect::<Vec<_>>()
                .join(" | "),
            fmt(ratio),
            fmt(f1)
        )?;
    }
    writeln!(r)?;
    Ok(())
}

/// The lookahead selectors' evidence, per regime and probing method.
fn selector_evidence(r: &mut String, v: &View) -> Result<()> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    let probing: Vec<usize> = (0..methods.len())
        .filter(|&m| {
            v.cells.iter().any(|c| {
                c.method == m
                    && c.runs
                        .iter()
                        .any(|r| r.decisions.iter().any(|d| d.lead.is_some()))
            })
        })
        .collect();
    if !probing.is_empty() {
        writeln!(r, "## Selector evidence\n")?;
        writeln!(
            r,
            "Per lookahead decision: the gain the chosen probe measured over the phase's start \
             score, its lead over the runner-up probe, and its paired standard error (paired \
             selection only). `confident` = share of decisions whose lead exceeds 2 SE. \
             `agree` = share of decisions whose phase then moved the fixed batch's score in the \
             direction the probe predicted; `corr` = correlation of predicted and realized gain. \
             `early` = phases the guard ended.\n"
        )?;
        writeln!(
            r,
            "| regime | method | decisions | mean gain | mean lead | mean SE | confident | agree | corr | early |"
        )?;
        writeln!(r, "|---|---|---|---|---|---|---|---|---|---|")?;
        for (ri, regime) in grid.regimes.iter().enumerate() {
            for &m in &probing {
                evidence_row(r, v, regime, ri, m)?;
            }
        }
        writeln!(r)?;
    }
    Ok(())
}

/// One row of the selector evidence: method `m`'s decisions in regime `ri`.
fn evidence_row(r: &mut String, v: &View, regime: &Regime, ri: usize, m: usize) -> Result<()> {
    let d: Vec<_> = v
        .cell(ri, m)
        .runs
        .iter()
        .flat_map(|r| &r.decisions)
        .collect();
    let pick = |f: &dyn Fn(&DecisionEvidence) -> Option<f64>| -> Vec<f64> {
        d.iter()
            .filter_map(|x| f(x))
            .filter(|x| x.is_finite())
            .collect()
    };
    let fmt = |x: &[f64]| {
        if x.is_empty() {
            "—".to_string()
        } else {
            format!("{:+.4}", mean(x))
        }
    };
    let gains = pick(&|x| x.predicted_gain);
    let leads = pick(&|x| x.lead);
    let ses = pick(&|x| x.gain_se);
    let confident = pick(&|x| Some(f64::from(u8::from(x.lead? > 2.0 * x.gain_se?))));
    let pairs: Vec<(f64, f64)> = d
        .iter()
        .filter_map(|x| Some((x.predicted_gain?, x.realized_gain?)))
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    let agree: Vec<f64> = pairs
        .iter()
        .map(|(a, b)| f64::from(u8::from((a > &0.0) == (b > &0.0))))
        .collect();
    let share = |x: &[f64]| {
        if x.is_empty() {
            "—".to_string()
        } else {
            format!("{:.0}%", 100.0 * mean(x))
        }
    };
    let early = d.iter().filter(|x| x.after_early_end).count();
    writeln!(
        r,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {early} |",
        regime.label(),
        v.methods[m],
        d.len(),
        fmt(&gains),
        fmt(&leads),
        if ses.is_empty() {
            "—".into()
        } else {
            format!("{:.4}", mean(&ses))
        },
        share(&confident),
        share(&agree),
        correlation(&pairs).map_or("—".into(), |c| format!("{c:+.2}")),
    )?;
    Ok(())
}

/// Each candidate learning rate's mean final validation score, the kept one in bold.
fn learning_rates(r: &mut String, v: &View) -> Result<()> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    writeln!(r, "## Learning rates kept\n")?;
    writeln!(
        r,
        "Each method's score over rates: the mean final validation score of each candidate \
         rate on the tuning seeds (the regime's widened rates included); the kept one in bold, \
         marked `(cap)` where it still lies on an edge after widening stopped at its cap.\n"
    )?;
    method_table(r, grid, methods, |ri, m| {
        let c = v.cell(ri, m);
        let rates = c
            .lr_scores
            .iter()
            .map(|&(lr, s)| {
                if lr == c.lr {
                    format!("**{lr}: {s:.3}**")
                } else {
                    format!("{lr}: {s:.3}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        if c.at_cap {
            format!("{rates} (cap)")
        } else {
            rates
        }
    })?;
    let capped: Vec<String> = v
        .cells
        .iter()
        .filter(|c| c.at_cap)
        .map(|c| {
            format!(
                "{} in {}",
                methods[c.method],
                grid.regimes[c.regime].label()
            )
        })
        .collect();
    if grid.lrs.len() > 1 {
        match capped.len() {
            0 => writeln!(r, "Every kept rate is interior.\n")?,
            n => writeln!(
                r,
                "{n} kept rate(s) lie on an edge at the cap ({} rates per side): {}.\n",
                grid.widen,
                capped.join("; ")
            )?,
        }
    }
    Ok(())
}

/// The mean validation curves, two plots per regime (against steps and against judge
/// verdicts), written under `out/plots`.
fn curves(r: &mut String, v: &View, out: &Path) -> Result<()> {
    let (grid, methods) = (v.grid, &v.methods[..]);
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots)?;
    writeln!(r, "## Validation curves\n")?;
    writeln!(
        r,
        "Per regime, the mean validation score over seeds against training steps, and against \
         the judge verdicts spent on training and selection with its 95% band over seeds \
         (each run's curve interpolated linearly between its validations, up to the spend \
         every seed reached): the frontier a user with a judge budget reads.\n"
    )?;
    for (ri, regime) in grid.regimes.iter().enumerate() {
        let series = (0..methods.len())
            .map(|m| {
                let pts = v
                    .mean_curve(ri, m)
                    .into_iter()
                    .map(|(s, y)| (s as f64, y))
                    .collect();
                let mut s = Series::new(methods[m], PALETTE[m % PALETTE.len()], pts);
                s.dashed = m >= PALETTE.len();
                s
            })
            .collect();
        let title = regime.label();
        let chart = LineChart {
            title: &title,
            x_label: "step",
            y_label: "validation score (mean over seeds)",
            series,
        };
        let name = format!("{}.svg", regime.slug());
        runfile::write_atomic(&plots.join(&name), chart.to_svg()?.as_bytes())?;
        let cost = format!("{}-verdicts.svg", regime.slug());
        runfile::write_atomic(&plots.join(&cost), verdict_chart(v, ri)?.as_bytes())?;
        writeln!(
            r,
            "![{title}](plots/{name}) ![{title}, per verdict](plots/{cost})\n"
        )?;
    }
    Ok(())
}

/// Regime `ri`'s validation score against judge verdicts: each method's mean over seeds
/// with its 95% band.
fn verdict_chart(v: &View, ri: usize) -> Result<String> {
    const POINTS: usize = 24;
    let series = (0..v.methods.len())
        .map(|m| {
            let curves: Vec<Vec<(f64, f64)>> = v.cell(ri, m).runs.iter().map(cost_curve).collect();
            let reach = curves
                .iter()
                .map(|c| c.last().map_or(0.0, |p| p.0))
                .fold(f64::INFINITY, f64::min);
            let (mut points, mut band) = (Vec::new(), Vec::new());
            for i in 0..=POINTS {
                let x = reach * i as f64 / POINTS as f64;
                let ys: Option<Vec<f64>> =
                    curves.iter().map(|c| at_cost(c, x).map(|a| a.0)).collect();
                if let Some(ys) = ys {
                    let (y, half) = (mean(&ys), ci95(&ys));
                    points.push((x, y));
                    band.push((x, y - half, y + half));
                }
            }
            let mut s = Series::new(v.methods[m], PALETTE[m % PALETTE.len()], points);
            s.band = band;
            s.dashed = m >= PALETTE.len();
            s
        })
        .collect();
    let title = format!("{}: score against judge cost", v.grid.regimes[ri].label());
    LineChart {
        title: &title,
        x_label: "judge verdicts (training and selection)",
        y_label: "validation score (mean, 95% band)",
        series,
    }
    .to_svg()
}

/// A table with the regimes as rows and the methods as columns, `cell(regime, method)` each.
fn method_table(
    r: &mut String,
    grid: &Grid,
    methods: &[&str],
    mut cell: impl FnMut(usize, usize) -> String,
) -> Result<()> {
    writeln!(r, "| regime | {} |", methods.join(" | "))?;
    writeln!(r, "|---|{}", "---|".repeat(methods.len()))?;
    for (ri, regime) in grid.regimes.iter().enumerate() {
        let cells: Vec<String> = (0..methods.len()).map(|m| cell(ri, m)).collect();
        writeln!(r, "| {} | {} |", regime.label(), cells.join(" | "))?;
    }
    writeln!(r)?;
    Ok(())
}

/// Verdicts a run spent on training and selection in all.
fn spent(run: &RunSummary) -> f64 {
    run.verdicts.last().copied().unwrap_or(0) as f64
}

fn efficiency_table(
    r: &mut String,
    v: &View<'_>,
    scal: usize,
    methods: &[&str],
    show: impl Fn((u64, f64)) -> String,
) -> Result<()> {
    writeln!(r, "| regime | target | {} |", methods.join(" | "))?;
    writeln!(r, "|---|---|{}", "---|".repeat(methods.len()))?;
    for (ri, regime) in v.grid.regimes.iter().enumerate() {
        let finals: Vec<f64> = v.cell(ri, scal).runs.iter().map(|r| r.val_final).collect();
        let target = mean(&finals);
        let cells: Vec<String> = (0..methods.len())
            .map(|m| v.reach(ri, m, target).map_or("—".into(), &show))
            .collect();
        writeln!(
            r,
            "| {} | {target:.3} | {} |",
            regime.label(),
            cells.join(" | ")
        )?;
    }
    writeln!(r)?;
    Ok(())
}

/// Pearson correlation, or `None` with fewer than 3 pairs or no spread.
fn correlation(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    let (mx, my) = (mean(&xs), mean(&ys));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// One run's validation score against the verdicts spent by then.
fn cost_curve(run: &RunSummary) -> Vec<(f64, f64)> {
    run.curve
        .iter()
        .map(|&(step, y)| {
            let spent = match step {
                0 => 0,
                s => run.verdicts.get(s as usize - 1).copied().unwrap_or(0),
            };
            (spent as f64, y)
        })
        .collect()
}

/// The curve's score at spend `x` (linear between points), and whether `x` lies beyond its
/// last point (then its last score).
fn at_cost(curve: &[(f64, f64)], x: f64) -> Option<(f64, bool)> {
    let last = *curve.last()?;
    if x >= last.0 {
        return Some((last.1, x > last.0 * 1.0001));
    }
    let i = curve.iter().position(|p| p.0 >= x)?;
    if i == 0 {
        return Some((curve[0].1, false));
    }
    let (a, b) = (curve[i - 1], curve[i]);
    let t = if b.0 > a.0 {
        (x - a.0) / (b.0 - a.0)
    } else {
        1.0
    };
    Some((a.1 + t * (b.1 - a.1), false))
}
