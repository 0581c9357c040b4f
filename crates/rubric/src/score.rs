//! HealthBench scoring, reproduced exactly: an example's score is the points of its met items
//! over the sum of its positive points (negative totals allowed, undefined without positive
//! points); tag scores use the same formula on the tagged items; a dataset figure is the mean of
//! the defined scores clipped to [0,1], with the std of 1000 clipped bootstrap means.

use crate::grades::GradeLine;
use crate::model::{Criterion, Dataset, Example};
use crate::moments;
use crate::verdict::Verdict;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Score of the items selected by `include`; `None` when they hold no positive points.
pub fn subset_score(
    criteria: &[Criterion],
    verdicts: &[f64],
    include: impl FnMut(usize) -> bool,
) -> Option<f64> {
    debug_assert_eq!(criteria.len(), verdicts.len());
    partial_score(criteria, |i| Some(verdicts[i]), include)
}

/// [`subset_score`] over verdicts that may be missing (`value(i) = None`: not graded); `None`
/// also when an item it includes has no verdict.
fn partial_score(
    criteria: &[Criterion],
    value: impl Fn(usize) -> Option<f64>,
    mut include: impl FnMut(usize) -> bool,
) -> Option<f64> {
    let mut achieved = 0.0;
    let mut possible = 0.0;
    for (i, c) in criteria.iter().enumerate() {
        if include(i) {
            achieved += c.points * value(i)?;
            if c.points > 0.0 {
                possible += c.points;
            }
        }
    }
    (possible > 0.0).then(|| achieved / possible)
}

/// HealthBench's per-example score.
pub fn example_score(criteria: &[Criterion], verdicts: &[f64]) -> Option<f64> {
    subset_score(criteria, verdicts, |_| true)
}

/// One response's rewards: overall and per meta-class. `None` means "no signal" (the class
/// has no positive-point item in this example), not zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardVector {
    pub overall: Option<f64>,
    pub classes: Vec<Option<f64>>,
}

/// Rewards of one response given its verdicts and the class of each criterion
/// (from [`crate::MetaClasses::assign`]): the one verdicts -> reward-vector formula of the
/// trainer, evaluation and the reward service. A criterion without a verdict (e.g. only one
/// class was asked for) or with a failed one counts as not graded; the overall score and each
/// class are defined when all their criteria were graded and they hold positive points.
pub fn reward_vector(
    example: &Example,
    class_of: &[usize],
    n_classes: usize,
    verdicts: &[Verdict],
) -> RewardVector {
    let mut values = vec![None; example.criteria.len()];
    for v in verdicts {
        values[v.criterion] = v.value();
    }
    rewards_of(example, class_of, n_classes, &values)
}

/// The Horvitz–Thompson estimate of [`reward_vector`] from the verdicts of a random sample of
/// the criteria in which every criterion has the same probability `inclusion` (`k/n` for `k`
/// of `n` drawn uniformly without replacement): the points earned, overall and per class, are
/// `Σ_{c ∈ sample} points_c · met_c / inclusion`, over the same positive-points total as the
/// full reward (known without grading). Its mean over samples is the full reward exactly, so
/// it is not clipped (clipping would bias it; a single estimate may leave [-1, 1]). Defined
/// where the full reward is (positive points), whether or not the sample holds one of the
/// class's criteria; a failed verdict in the sample leaves its class and the overall `None`, as
/// in [`reward_vector`]. With `inclusion = 1` and every criterion graded it is
/// [`reward_vector`], bit for bit.
pub fn estimated_reward_vector(
    example: &Example,
    class_of: &[usize],
    n_classes: usize,
    verdicts: &[Verdict],
    inclusion: f64,
) -> RewardVector {
    debug_assert!(inclusion > 0.0 && inclusion <= 1.0, "{inclusion}");
    // a criterion outside the sample adds nothing to the estimate
    let mut values = vec![Some(0.0); example.criteria.len()];
    for v in verdicts {
        values[v.criterion] = v.value().map(|m| m / inclusion);
    }
    rewards_of(example, class_of, n_classes, &values)
}

/// [`partial_score`] overall and per class on per-criterion values (`None`: not graded).
fn rewards_of(
    example: &Example,
    class_of: &[usize],
    n_classes: usize,
    values: &[Option<f64>],
) -> RewardVector {
    let value = |i: usize| values[i];
    RewardVector {
        overall: partial_score(&example.criteria, value, |_| true),
        classes: (0..n_classes)
            .map(|k| partial_score(&example.criteria, value, |i| class_of[i] == k))
            .collect(),
    }
}

/// A dataset-level figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean of the defined values, clipped to [0,1].
    pub score: f64,
    /// Population std of the clipped means of bootstrap resamples.
    pub std: f64,
    pub n: usize,
}

pub const BOOTSTRAP_RESAMPLES: usize = 1000;

fn clipped_mean(values: &[f64]) -> f64 {
    moments::mean(values).clamp(0.0, 1.0)
}

/// Clipped mean and bootstrap std, as HealthBench computes them. NaN score for no values.
pub fn summarize(values: &[f64], resamples: usize, seed: u64) -> Summary {
    let n = values.len();
    if n == 0 {
        return Summary {
            score: f64::NAN,
            std: f64::NAN,
            n,
        };
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let means: Vec<f64> = (0..resamples)
        .map(|_| {
            let s: f64 = (0..n).map(|_| values[rng.gen_range(0..n)]).sum();
            (s / n as f64).clamp(0.0, 1.0)
        })
        .collect();
    Summary {
        score: clipped_mean(values),
        std: moments::mean_std(means).map_or(0.0, |(_, std)| std),
        n,
    }
}

/// The score table `arlrr score` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreTable {
    /// Distinct examples graded.
    pub n_examples: usize,
    /// Graded responses (rows) that entered the figures.
    pub n_responses: usize,
    /// Responses left out because a verdict failed; never scored as 0 or 1.
    pub n_failed: usize,
    /// Responses whose rubric has no positive points (score undefined).
    pub n_undefined: usize,
    pub overall: f64,
    pub overall_std: f64,
    pub axes: BTreeMap<String, Summary>,
    pub themes: BTreeMap<String, Summary>,
}

/// Scores graded responses: each grades line is one row, as in HealthBench.
/// Lines must already be validated against `dataset` ([`crate::read_grades`]).
pub fn score_table(dataset: &Dataset, grades: &[GradeLine], seed: u64) -> ScoreTable {
    let mut overall = Vec::with_capacity(grades.len());
    let mut axes: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut themes: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut examples = std::collections::HashSet::new();
    let (mut n_failed, mut n_undefined) = (0, 0);
    for g in grades {
        let ex = dataset
            .get(&g.prompt_id)
            .expect("grades are validated against the dataset");
        let Some(verdicts) = g.values() else {
            n_failed += 1;
            continue;
        };
        examples.insert(ex.id.as_str());
        let mut row_axes: Vec<&str> = ex
            .criteria
            .iter()
            .filter_map(|c| c.tag_value("axis"))
            .collect();
        row_axes.sort_unstable();
        row_axes.dedup();
        for axis in row_axes {
            let s = subset_score(&ex.criteria, &verdicts, |i| {
                ex.criteria[i].tag_value("axis") == Some(axis)
            });
            if let Some(s) = s {
                axes.entry(axis.to_string()).or_default().push(s);
            }
        }
        match example_score(&ex.criteria, &verdicts) {
            Some(s) => {
                overall.push(s);
                for t in ex.tags.iter().filter_map(|t| t.strip_prefix("theme:")) {
                    themes.entry(t.to_string()).or_default().push(s);
                }
            }
            None => n_undefined += 1,
        }
    }
    let total = summarize(&overall, BOOTSTRAP_RESAMPLES, seed);
    let by = |m: BTreeMap<String, Vec<f64>>| {
        m.into_iter()
            .map(|(k, v)| {
                let s = summarize(&v, BOOTSTRAP_RESAMPLES, seed);
                (k, s)
            })
            .collect()
    };
    ScoreTable {
        n_examples: examples.len(),
        n_responses: overall.len(),
        n_failed,
        n_undefined,
        overall: total.score,
        overall_std: total.std,
        axes: by(axes),
        themes: by(themes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crit(points: f64, axis: &str) -> Criterion {
        Criterion {
            text: "c".into(),
            points,
            tags: vec![format!("axis:{axis}")],
            check: None,
        }
    }

    #[test]
    fn example_score_follows_healthbench() {
        let cs = [crit(5.0, "a"), crit(3.0, "a"), crit(-4.0, "b")];
        assert_eq!(example_score(&cs, &[1.0, 0.0, 0.0]), Some(5.0 / 8.0));
        // a met negative item subtracts; totals may go below zero
        assert_eq!(example_score(&cs, &[0.0, 0.0, 1.0]), Some(-4.0 / 8.0));
        // graded verdicts weight the points
        assert_eq!(
            example_score(&cs, &[0.5, 1.0, 0.25]),
            Some((2.5 + 3.0 - 1.0) / 8.0)
        );
        // no positive points: undefined, not zero
        assert_eq!(example_score(&cs[2..], &[1.0]), None);
        assert_eq!(example_score(&[], &[]), None);
    }

    #[test]
    fn reward_vector_per_class() {
        let ex = Example {
            id: "x".into(),
            prompt: vec![],
            criteria: vec![crit(5.0, "a"), crit(3.0, "a"), crit(-4.0, "b")],
            tags: vec![],
            ideal_completion: None,
            canary: None,
            line: 1,
        };
        let verdicts = |values: &[f64]| -> Vec<Verdict> {
            values
                .iter()
                .enumerate()
                .map(|(criterion, &v)| Verdict {
                    criterion,
                    outcome: Ok(v),
                    explanation: String::new(),
                    judge: "j".into(),
                    cached: false,
                    attempts: 1,
                })
                .collect()
        };
        let r = reward_vector(&ex, &[0, 0, 1], 3, &verdicts(&[1.0, 1.0, 1.0]));
        assert_eq!(r.overall, Some(0.5));
        assert_eq!(r.classes, vec![Some(1.0), None, None]);
        // only class 0 graded: the overall score needs every verdict
        let r = reward_vector(&ex, &[0, 0, 1], 3, &verdicts(&[1.0, 0.0]));
        assert_eq!(r.overall, None);
        assert_eq!(r.classes, vec![Some(5.0 / 8.0), None, None]);
    }

    fn verdicts_of(criteria: &[usize], met: &[f64]) -> Vec<Verdict> {
        criteria
            .iter()
            .map(|&criterion| Verdict {
                criterion,
                outcome: Ok(met[criterion]),
                explanation: String::new(),
                judge: "j".into(),
                cached: false,
                attempts: 1,
            })
            .collect()
    }

    /// Every `k`-subset of `0..n`, in lexicographic order.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        if k == 0 {
            return vec![vec![]];
        }
        (k - 1..n)
            .flat_map(|last| {
                subsets(last, k - 1).into_iter().map(move |mut s| {
                    s.push(last);
                    s
                })
            })
            .collect()
    }

    #[test]
    fn the_estimate_averaged_over_every_sample_is_the_full_reward() {
        // classes: 0 mixes positive, negative and zero points; 1 has only a negative item
        // (undefined); 2 one positive item; 3 has no criterion at all (undefined)
        let ex = Example {
            id: "x".into(),
            prompt: vec![],
            criteria: vec![
                crit(5.0, "a"),
                crit(3.0, "a"),
                crit(-4.0, "b"),
                crit(0.0, "a"),
                crit(7.0, "c"),
                crit(-2.0, "a"),
            ],
            tags: vec![],
            ideal_completion: None,
            canary: None,
            line: 1,
        };
        let class_of = [0, 0, 1, 0, 2, 0];
        let met = [1.0, 0.5, 1.0, 1.0, 0.0, 1.0];
        let n = ex.criteria.len();
        let full = reward_vector(&ex, &class_of, 4, &verdicts_of(&[0, 1, 2, 3, 4, 5], &met));
        assert_eq!(full.classes[1], None);
        assert_eq!(full.classes[3], None);
        for k in 1..=n {
            let samples = subsets(n, k);
            let inclusion = k as f64 / n as f64;
            let estimates: Vec<RewardVector> = samples
                .iter()
                .map(|s| {
                    estimated_reward_vector(&ex, &class_of, 4, &verdicts_of(s, &met), inclusion)
                })
                .collect();
            let mean = |get: &dyn Fn(&RewardVector) -> Option<f64>| -> Option<f64> {
                let values: Option<Vec<f64>> = estimates.iter().map(get).collect();
                values.map(|v| v.iter().sum::<f64>() / v.len() as f64)
            };
            let close = |a: Option<f64>, b: Option<f64>, what: &str| match (a, b) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "k={k} {what}: {a} vs {b}"),
                _ => assert_eq!(a, b, "k={k} {what}: defined where the full reward is"),
            };
            close(mean(&|r| r.overall), full.overall, "overall");
            for c in 0..4 {
                close(
                    mean(&|r| r.classes[c]),
                    full.classes[c],
                    &format!("class {c}"),
                );
            }
            if k < n {
                // single estimates spread (and are not clipped): not the full reward each time
                let overall: Vec<f64> = estimates.iter().map(|r| r.overall.unwrap()).collect();
                assert!(overall
                    .iter()
                    .any(|&o| (o - full.overall.unwrap()).abs() > 1e-6));
            }
        }
        // every criterion in the sample: the full reward, bit for bit
        let all = estimated_reward_vector(
            &ex,
            &class_of,
            4,
            &verdicts_of(&[0, 1, 2, 3, 4, 5], &met),
            1.0,
        );
        assert_eq!(all, full);
        // unclipped: class 2 alone, met, drawn with probability 1/6, reads 6
        let one = estimated_reward_vector(
            &ex,
            &class_of,
            4,
            &verdicts_of(&[4], &[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            1.0 / 6.0,
        );
        assert!((one.classes[2].unwrap() - 6.0).abs() < 1e-12, "{one:?}");
        // a failed verdict in the sample: its class and the overall undefined
        let mut failed = verdicts_of(&[0, 4], &met);
        failed[0].outcome = Err(crate::JudgeFailure::Other("timeout".into()));
        let r = estimated_reward_vector(&ex, &class_of, 4, &failed, 2.0 / 6.0);
        assert_eq!(
            (r.overall, r.classes[0], r.classes[2]),
            (None, None, Some(0.0))
        );
    }

    #[test]
    fn summary_clips_and_bootstraps() {
        let s = summarize(&[-0.5, -0.2], 1000, 0);
        assert_eq!(s.score, 0.0);
        assert_eq!(s.std, 0.0, "every resample mean clips to 0");
        let s = summarize(&[1.5, 0.9], 1000, 0);
        assert_eq!(s.score, 1.0);
        let s = summarize(&[0.0, 1.0], 1000, 7);
        assert_eq!(s.score, 0.5);
        // std of a mean of 2 Bernoulli(0.5) draws is 0.3536
        assert!((s.std - 0.3536).abs() < 0.03, "{}", s.std);
        assert_eq!(summarize(&[0.0, 1.0], 1000, 7), s, "seeded");
        assert!(summarize(&[], 1000, 0).score.is_nan());
    }
}
