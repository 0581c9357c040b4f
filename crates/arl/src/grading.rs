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

/// Grades `items`; with `only_class = Some(k)` only class `k`'s criteria are graded and the
/// other classes' rewards are `None` (no signal). Failed verdicts are retried `retries` times
/// ([`judge::grade_classes`], the one grading path); rewards come from
/// [`rubric::score::reward_vector`], after `noise` (training and selection only) has read the
/// verdicts of every scored response into noisy ones.
pub fn grade(
    rt: &tokio::runtime::Runtime,
    judge: &dyn Judge,
    items: &[ToGrade<'_>],
    only_class: Option<usize>,
    n_classes: usize,
    retries: u32,
    noise: Option<&crate::noise::Noise>,
) -> Result<GradeOutcome> {
    let graded = rt
        .block_on(judge::grade_classes(judge, items, only_class, retries))
        .map_err(anyhow::Error::msg)?;
    let mut out = GradeOutcome {
        retried_verdicts: graded.retried,
        ..GradeOutcome::default()
    };
    for (it, verdicts) in items.iter().zip(&graded.verdicts) {
        let failed = verdicts.iter().filter(|v| v.failure().is_some()).count();
        out.failed_verdicts += failed;
        out.rewards.push((failed == 0).then(|| {
            let noisy = noise.map(|n| n.apply(it.example, it.class_of, it.response, verdicts));
            let read = noisy.as_deref().unwrap_or(verdicts);
            rubric::score::reward_vector(it.example, it.class_of, n_classes, read)
        }));
    }
    Ok(out)
}
