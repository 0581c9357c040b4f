//! Can a regime's first steps predict its winner? Each regime gets a few figures from the
//! first [`super::EARLY_STEPS`] steps of its runs (what a short pilot run would show) and a
//! label: whether alternation holds its own there (its best method does not lose to
//! `scalarized` on test at p < 0.05; without `scalarized` in the grid, whether an alternating
//! method has the best mean test score). A one-threshold
//! rule per figure is fitted on half the regimes (a seeded random half, so that no regime axis
//! decides the split) and scored on the other half, beside the majority label of the fit half
//! as the baseline to beat.

use super::{Cell, Grid};
use crate::compare::stats::{mean, permutation_p};
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use schedule::{ObjectiveKind, SelectorKind};
use std::fmt::Write;

/// The split's seed: fixed, so the report reads the same every time.
const SPLIT_SEED: u64 = 31;

/// One figure per regime (`None` where the grid has no run that shows it).
struct Feature {
    name: &'static str,
    about: &'static str,
    values: Vec<Option<f64>>,
}

/// A threshold rule: alternation is predicted to win where `value < threshold` (or `>` when
/// `above`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rule {
    threshold: f64,
    above: bool,
}

impl Rule {
    fn predicts(&self, x: f64) -> bool {
        (x > self.threshold) == self.above
    }
}

/// The rule with the most regimes of `(value, label)` right (the first such), and that count.
fn fit(points: &[(f64, bool)]) -> Option<(Rule, usize)> {
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    let mut cuts = vec![xs.first()? - 1.0];
    cuts.extend(xs.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    let mut best: Option<(Rule, usize)> = None;
    for &threshold in &cuts {
        for above in [false, true] {
            let rule = Rule { threshold, above };
            let right = points.iter().filter(|p| rule.predicts(p.0) == p.1).count();
            if best.is_none_or(|b| right > b.1) {
                best = Some((rule, right));
            }
        }
    }
    best
}

/// A difference is a loss when the permutation test gives p below this.
const ALPHA: f64 = 0.05;

/// Per regime: alternation holds its own (see the module doc).
fn labels(grid: &Grid, cells: &[Cell]) -> Vec<bool> {
    let scal = plain(grid, |m| m.objective == ObjectiveKind::Scalarized);
    (0..grid.regimes.len())
        .map(|ri| {
            let tests = |c: &Cell| -> Vec<f64> { c.runs.iter().map(|r| r.test_final).collect() };
            let best = |alternating: Option<bool>| {
                cells
                    .iter()
                    .filter(|c| c.regime == ri)
                    .filter(|c| {
                        alternating.is_none_or(|a| grid.methods[c.method].alternating() == a)
                    })
                    .max_by(|a, b| mean(&tests(a)).total_cmp(&mean(&tests(b))))
            };
            let reference =
                scal.and_then(|s| cells.iter().find(|c| c.regime == ri && c.method == s));
            match (best(Some(true)), reference) {
                (Some(alt), Some(scal)) => {
                    let (a, s) = (tests(alt), tests(scal));
                    mean(&a) >= mean(&s) || permutation_p(&a, &s) >= ALPHA
                }
                _ => best(None).is_some_and(|c| grid.methods[c.method].alternating()),
            }
        })
        .collect()
}

/// The first method `is` picks that has no variants.
fn plain(grid: &Grid, is: impl Fn(&super::StudyMethod) -> bool) -> Option<usize> {
    grid.methods
        .iter()
        .position(|m| is(m) && m.variants.is_empty())
}

/// The candidates of the issue: the variance-contraction ratio and the spread of the class
/// stds over the first steps of `scalarized`'s runs, and the lookahead's first lead.
fn features(grid: &Grid, cells: &[Cell]) -> Vec<Feature> {
    let cell = |ri: usize, m: usize| cells.iter().find(|c| c.regime == ri && c.method == m);
    let scal = plain(grid, |m| m.objective == ObjectiveKind::Scalarized);
    let look = plain(grid, |m| m.selector == Some(SelectorKind::Lookahead));
    let per_regime = |f: &dyn Fn(&Cell) -> Option<f64>, m: Option<usize>| -> Vec<Option<f64>> {
        (0..grid.regimes.len())
            .map(|ri| m.and_then(|m| cell(ri, m)).and_then(f))
            .collect()
    };
    let early_classes = |c: &Cell| -> Option<(f64, Vec<f64>)> {
        let mut scalar = Vec::new();
        let mut classes: Vec<Vec<f64>> = Vec::new();
        for r in &c.runs {
            scalar.push(r.early_scalar_group_std?);
            classes.push(r.early_class_group_std.values().copied().collect());
        }
        let n = classes.first()?.len();
        let per_class: Vec<f64> = (0..n)
            .map(|k| mean(&classes.iter().map(|c| c[k]).collect::<Vec<_>>()))
            .collect();
        (n > 0).then(|| (mean(&scalar), per_class))
    };
    let contraction = |c: &Cell| {
        let (s, classes) = early_classes(c)?;
        let m = mean(&classes);
        (m > 0.0).then(|| s / m)
    };
    let spread = |c: &Cell| {
        let (_, classes) = early_classes(c)?;
        let m = mean(&classes);
        let var = mean(&classes.iter().map(|x| (x - m).powi(2)).collect::<Vec<_>>());
        (m > 0.0).then(|| var.sqrt() / m)
    };
    let lead = |c: &Cell| {
        let leads: Option<Vec<f64>> = c
            .runs
            .iter()
            .map(|r| r.decisions.first().and_then(|d| d.lead))
            .collect();
        leads.map(|l| mean(&l))
    };
    vec![
        Feature {
            name: "contraction",
            about: "scalarized std / mean class std, first steps of `scalarized`",
            values: per_regime(&contraction, scal),
        },
        Feature {
            name: "class std spread",
            about: "coefficient of variation of the class stds, first steps of `scalarized`",
            values: per_regime(&spread, scal),
        },
        Feature {
            name: "lookahead lead",
            about: "the first decision's lead over the runner-up, `alternating:lookahead`",
            values: per_regime(&lead, look),
        },
    ]
}

/// `## Predicting the winner from the first steps`.
pub(crate) fn section(r: &mut String, grid: &Grid, cells: &[Cell]) -> Result<()> {
    let n = grid.regimes.len();
    if n < 4 || !grid.methods.iter().any(|m| m.alternating()) {
        return Ok(());
    }
    let label = labels(grid, cells);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(SPLIT_SEED));
    let (fit_half, test_half) = order.split_at(n / 2);
    let wins = label.iter().filter(|&&l| l).count();
    writeln!(r, "## Predicting the winner from the first steps\n")?;
    writeln!(
        r,
        "Label: alternation holds its own in the regime: its best method (by mean test score) \
         does not lose to `scalarized` at p < {ALPHA} (or, without `scalarized`, has the best \
         mean); {wins} of {n} regimes. Each figure comes from the first {} steps of the runs at the kept rate \
         (mean over seeds). A one-threshold rule is fitted on half the regimes (a seeded \
         random half: {}) and scored on the other half; `majority` = the fit half's majority \
         label applied to the test half, the baseline a rule must beat.\n",
        super::EARLY_STEPS,
        fit_half
            .iter()
            .map(|&i| grid.regimes[i].label())
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    writeln!(
        r,
        "| figure | rule (fit half) | fit right | test right | majority |"
    )?;
    writeln!(r, "|---|---|---|---|---|")?;
    let fit_wins = fit_half.iter().filter(|&&i| label[i]).count();
    let majority = fit_wins * 2 > fit_half.len();
    let baseline = test_half.iter().filter(|&&i| label[i] == majority).count();
    if fit_wins == 0 || fit_wins == fit_half.len() {
        writeln!(
            r,
            "| every figure | none: every regime of the fit half has the same label, so no \
             rule beats the majority | | | {baseline}/{} |\n",
            test_half.len()
        )?;
        return Ok(());
    }
    for f in features(grid, cells) {
        let points = |half: &[usize]| -> Option<Vec<(f64, bool)>> {
            half.iter()
                .map(|&i| Some((f.values[i]?, label[i])))
                .collect()
        };
        let (Some(fit_pts), Some(test_pts)) = (points(fit_half), points(test_half)) else {
            writeln!(r, "| {} ({}) | — (not measured) | | | |", f.name, f.about)?;
            continue;
        };
        let Some((rule, right)) = fit(&fit_pts) else {
            continue;
        };
        let test_right = test_pts
            .iter()
            .filter(|p| rule.predicts(p.0) == p.1)
            .count();
        writeln!(
            r,
            "| {} ({}) | alternation holds where {} {} {:.3} | {right}/{} | {test_right}/{} | {baseline}/{} |",
            f.name,
            f.about,
            f.name,
            if rule.above { ">" } else { "<" },
            rule.threshold,
            fit_pts.len(),
            test_pts.len(),
            test_half.len()
        )?;
    }
    writeln!(r)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fitted_rule_separates_what_one_threshold_can() {
        let pts = [(0.1, true), (0.2, true), (0.5, false), (0.9, false)];
        let (rule, right) = fit(&pts).unwrap();
        assert_eq!(right, 4);
        assert!(rule.predicts(0.15) && !rule.predicts(0.7), "{rule:?}");
        // the other direction
        let flipped: Vec<(f64, bool)> = pts.iter().map(|p| (p.0, !p.1)).collect();
        let (rule, right) = fit(&flipped).unwrap();
        assert_eq!(right, 4);
        assert!(rule.above, "{rule:?}");
        // not separable: the best a threshold does
        let mixed = [(0.1, true), (0.2, false), (0.3, true), (0.4, false)];
        assert_eq!(fit(&mixed).unwrap().1, 3);
    }
}
