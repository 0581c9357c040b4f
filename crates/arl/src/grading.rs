//! From responses to reward vectors: ask the judge, retry failed verdicts, and exclude the
//! responses whose verdicts still failed (counted, never scored as 0 or 1).

use anyhow::Result;
use judge::{GradeTask, Judge, JudgeFailure};
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
/// (except [`JudgeFailure::NotGradable`], which no retry changes).
pub fn grade(
    rt: &tokio::runtime::Runtime,
    judge: &dyn Judge,
    items: &[ToGrade<'_>],
    only_class: Option<usize>,
    n_classes: usize,
    retries: u32,
) -> Result<GradeOutcome> {
    let wanted: Vec<Vec<usize>> = items
        .iter()
        .map(|it| {
            (0..it.example.criteria.len())
                .filter(|&i| only_class.is_none() || only_class == Some(it.class_of[i]))
                .collect()
        })
        .collect();
    // verdicts[item][criterion]: None = not asked, Some(Err) = failed
    let mut verdicts: Vec<Vec<Option<Result<f64, JudgeFailure>>>> = items
        .iter()
        .map(|it| vec![None; it.example.criteria.len()])
        .collect();
    let mut pending: Vec<(usize, Vec<usize>)> = wanted
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.is_empty())
        .map(|(i, w)| (i, w.clone()))
        .collect();
    let mut out = GradeOutcome::default();
    for attempt in 0..=retries {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            out.retried_verdicts += pending.iter().map(|(_, c)| c.len()).sum::<usize>();
        }
        let tasks: Vec<GradeTask<'_>> = pending
            .iter()
            .map(|(i, crit)| GradeTask {
                example: items[*i].example,
                response: items[*i].response,
                criteria: Some(crit),
            })
            .collect();
        let results = rt.block_on(judge.grade(&tasks));
        anyhow::ensure!(
            results.len() == tasks.len(),
            "judge `{}` returned {} results for {} tasks",
            judge.id(),
            results.len(),
            tasks.len()
        );
        let mut next = Vec::new();
        for ((i, crit), grades) in pending.iter().zip(results) {
            anyhow::ensure!(
                grades.len() == crit.len(),
                "judge `{}` returned {} grades for {} criteria",
                judge.id(),
                grades.len(),
                crit.len()
            );
            let mut again = Vec::new();
            for g in grades {
                let retryable =
                    matches!(&g.outcome, Err(f) if !matches!(f, JudgeFailure::NotGradable(_)));
                if retryable {
                    again.push(g.criterion);
                }
                verdicts[*i][g.criterion] = Some(g.outcome);
            }
            if !again.is_empty() {
                next.push((*i, again));
            }
        }
        pending = next;
    }
    for (it, v) in items.iter().zip(&verdicts) {
        let failed = v.iter().filter(|x| matches!(x, Some(Err(_)))).count();
        out.failed_verdicts += failed;
        out.rewards
            .push((failed == 0).then(|| reward_vector(it, v, n_classes)));
    }
    Ok(out)
}

/// Rewards from partially graded verdicts: a class (or the overall score) is defined when all
/// its criteria were graded and it has positive points; HealthBench's formula otherwise.
fn reward_vector(
    it: &ToGrade<'_>,
    verdicts: &[Option<Result<f64, JudgeFailure>>],
    n_classes: usize,
) -> RewardVector {
    let value = |i: usize| verdicts[i].as_ref().and_then(|r| r.as_ref().ok().copied());
    let subset = |include: &dyn Fn(usize) -> bool| -> Option<f64> {
        let (mut achieved, mut possible) = (0.0, 0.0);
        for (i, c) in it
            .example
            .criteria
            .iter()
            .enumerate()
            .filter(|(i, _)| include(*i))
        {
            achieved += c.points * value(i)?;
            if c.points > 0.0 {
                possible += c.points;
            }
        }
        (possible > 0.0).then(|| achieved / possible)
    };
    RewardVector {
        overall: subset(&|_| true),
        classes: (0..n_classes)
            .map(|k| subset(&|i| it.class_of[i] == k))
            .collect(),
    }
}
