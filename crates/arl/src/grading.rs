//! From responses to reward vectors: ask the judge, retry failed verdicts, and exclude the
//! responses whose verdicts still failed (counted, never scored as 0 or 1).

use anyhow::Result;
use judge::Judge;
use rubric::RewardVector;

pub use judge::ToGrade;

/// Outcome of grading a batch.
#[derive(Debug, Clone, Default)]
pub struct GradeOutcome {
    /// One per response; `None` = excluded because a verdict failed after the retries.
    pub rewards: Vec<Option<RewardVector>>,
    /// Criterion verdicts that still failed after the retries.
    pub failed_verdicts: usize,
    /// Verdicts asked for again.
    pub retried_verdicts: usize,
    /// One per response: the verdicts its rewards were read from (after `noise`), or for an
    /// excluded response the judge's, failures included.
    pub verdicts: Vec<Vec<rubric::Verdict>>,
}

/// Which criteria of each response are graded, and how its rewards read them.
#[derive(Debug, Clone, Copy)]
pub enum Criteria<'a> {
    /// Every criterion (`None`), or only class `k`'s: the other classes' rewards are `None`
    /// (no signal).
    Class(Option<usize>),
    /// Per response, the indices of a sample of its criteria drawn uniformly without
    /// replacement (`objective.subsample`): rewards are the unbiased estimates of
    /// [`rubric::score::estimated_reward_vector`].
    Sample(&'a [Vec<usize>]),
}

/// Grades `items` against `criteria`. Failed verdicts are retried `retries` times
/// ([`judge::grade_criteria`], the one grading path); rewards come from
/// [`rubric::score::reward_vector`] (or its estimate on a sample), after `noise` (training and
/// selection only) has read the verdicts of every scored response into noisy ones.
pub fn grade(
    rt: &tokio::runtime::Runtime,
    judge: &dyn Judge,
    items: &[ToGrade<'_>],
    criteria: Criteria<'_>,
    n_classes: usize,
    retries: u32,
    noise: Option<&crate::noise::Noise>,
) -> Result<GradeOutcome> {
    let every;
    let wanted = match criteria {
        Criteria::Class(only) => {
            every = items.iter().map(|it| it.criteria(only)).collect::<Vec<_>>();
            &every
        }
        Criteria::Sample(sample) => sample,
    };
    let graded = rt
        .block_on(judge::grade_criteria(judge, items, wanted, retries))
        .map_err(anyhow::Error::msg)?;
    let mut out = GradeOutcome {
        retried_verdicts: graded.retried,
        ..GradeOutcome::default()
    };
    for ((it, verdicts), asked) in items.iter().zip(&graded.verdicts).zip(wanted) {
        let failed = verdicts.iter().filter(|v| v.failure().is_some()).count();
        out.failed_verdicts += failed;
        let noisy = (failed == 0)
            .then(|| noise.map(|n| n.apply(it.example, it.class_of, it.response, verdicts)))
            .flatten();
        let read = noisy.as_deref().unwrap_or(verdicts);
        out.rewards.push((failed == 0).then(|| match criteria {
            Criteria::Class(_) => {
                rubric::score::reward_vector(it.example, it.class_of, n_classes, read)
            }
            Criteria::Sample(_) => {
                let n = it.example.criteria.len();
                let inclusion = asked.len().max(1) as f64 / n.max(1) as f64;
                let (ex, class_of) = (it.example, it.class_of);
                rubric::score::estimated_reward_vector(ex, class_of, n_classes, read, inclusion)
            }
        }));
        out.verdicts.push(read.to_vec());
    }
    Ok(out)
}

/// `k = max(1, round(share · n))` of the `n` criteria of each of `items`, drawn uniformly
/// without replacement from `rng` (sorted): the criteria `objective.subsample` grades, each
/// with probability `k/n`. An example without criteria gets none.
pub fn sample_criteria(
    items: &[ToGrade<'_>],
    share: f64,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<Vec<usize>> {
    items
        .iter()
        .map(|it| {
            let n = it.example.criteria.len();
            let k = ((share * n as f64).round() as usize)
                .clamp(1, n.max(1))
                .min(n);
            let mut picked = rand::seq::index::sample(rng, n, k).into_vec();
            picked.sort_unstable();
            picked
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rubric::score::{estimated_reward_vector, reward_vector};
    use rubric::{Criterion, Example, Verdict};
    use schedule::Target;

    /// The scalarized rewards the trainer optimizes (`objective.weights`: points, equal, a
    /// table) of the estimates, averaged over every sample of `k` criteria, are those of the
    /// full reward vector: the estimate of the scalar is unbiased too.
    #[test]
    fn scalarized_targets_of_the_estimate_average_to_the_full_ones() {
        let criterion = |points| Criterion {
            text: "c".into(),
            points,
            tags: vec![],
            check: None,
        };
        let ex = Example {
            id: "e".into(),
            prompt: vec![],
            criteria: [4.0, -3.0, 2.0, 5.0, 1.0].map(criterion).to_vec(),
            tags: vec![],
            ideal_completion: None,
            canary: None,
            line: 1,
        };
        let class_of = [0, 0, 1, 2, 2];
        let met = [1.0, 1.0, 0.0, 1.0, 0.5];
        let verdicts = |picked: &[usize]| -> Vec<Verdict> {
            picked
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
        };
        let full = reward_vector(&ex, &class_of, 4, &verdicts(&[0, 1, 2, 3, 4]));
        let targets = [
            Target::Overall,
            Target::Weighted(vec![1.0; 4]),
            Target::Weighted(vec![2.0, 0.0, 1.0, 3.0]),
        ];
        for k in 1..=5usize {
            let samples: Vec<Vec<usize>> = (0u32..32)
                .filter(|m| m.count_ones() as usize == k)
                .map(|m| (0..5).filter(|c| m & (1 << c) != 0).collect())
                .collect();
            for target in &targets {
                let mean = samples
                    .iter()
                    .map(|s| {
                        let r = estimated_reward_vector(
                            &ex,
                            &class_of,
                            4,
                            &verdicts(s),
                            k as f64 / 5.0,
                        );
                        target.reward(&r).unwrap()
                    })
                    .sum::<f64>()
                    / samples.len() as f64;
                let want = target.reward(&full).unwrap();
                assert!(
                    (mean - want).abs() < 1e-12,
                    "k={k} {target:?}: {mean} vs {want}"
                );
            }
        }
    }
}
