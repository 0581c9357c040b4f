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
        out.rewards.push((failed == 0).then(|| {
            let noisy = noise.map(|n| n.apply(it.example, it.class_of, it.response, verdicts));
            let read = noisy.as_deref().unwrap_or(verdicts);
            match criteria {
                Criteria::Class(_) => {
                    rubric::score::reward_vector(it.example, it.class_of, n_classes, read)
                }
                Criteria::Sample(_) => {
                    let n = it.example.criteria.len();
                    let inclusion = asked.len().max(1) as f64 / n.max(1) as f64;
                    let (ex, class_of) = (it.example, it.class_of);
                    rubric::score::estimated_reward_vector(ex, class_of, n_classes, read, inclusion)
                }
            }
        }));
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
