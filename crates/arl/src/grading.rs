//! From responses to reward vectors: ask the judge, retry failed verdicts, and exclude the
//! responses whose verdicts still failed (counted, never scored as 0 or 1).

use anyhow::Result;
use judge::{GradeTask, Judge};
use rubric::{Example, RewardVector};

/// One response to grade: its example, the class of each criterion and the text.
pub struct ToGrade<'a> {
    pub example: &'a Example,
    pub class_of: &'a [usize],
    pub response: &'a str,
}

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
/// ([`judge::grade_with_retries`]); rewards come from [`rubric::score::reward_vector`], after
/// `noise` (training and selection only) has read the verdicts of every scored response.
pub fn grade(
    rt: &tokio::runtime::Runtime,
    judge: &dyn Judge,
    items: &[ToGrade<'_>],
    only_class: Option<usize>,
    n_classes: usize,
    retries: u32,
    noise: Option<&crate::noise::Noise>,
) -> Result<GradeOutcome> {
    let wanted: Vec<Vec<usize>> = items
        .iter()
        .map(|it| {
            (0..it.example.criteria.len())
                .filter(|&i| only_class.is_none() || only_class == Some(it.class_of[i]))
                .collect()
        })
        .collect();
    let tasks: Vec<GradeTask<'_>> = items
        .iter()
        .zip(&wanted)
        .map(|(it, w)| GradeTask {
            example: it.example,
            response: it.response,
            criteria: Some(w),
        })
        .collect();
    let verdicts = rt
        .block_on(judge::grade_with_retries(judge, &tasks, retries))
        .map_err(anyhow::Error::msg)?;
    let mut out = GradeOutcome {
        retried_verdicts: verdicts.retried,
        ..GradeOutcome::default()
    };
    for (n, it) in items.iter().enumerate() {
        let failed = verdicts.failures(n).count();
        out.failed_verdicts += failed;
        out.rewards.push((failed == 0).then(|| {
            let mut values = verdicts.values(n);
            if let Some(noise) = noise {
                noise.apply(it.example, it.class_of, it.response, &mut values);
            }
            rubric::score::reward_vector(it.example, it.class_of, n_classes, &values)
        }));
    }
    Ok(out)
}
