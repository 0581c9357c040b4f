//! The one retry policy for judge failures, shared by the trainer, evaluation, the reward
//! service and `arlrr grade`: a failed verdict is asked for again, up to `retries` times, then recorded as a
//! failure; it is never scored as 0 or 1. A criterion the judge cannot grade at all
//! ([`JudgeFailure::NotGradable`]) is not asked again: no retry changes that answer.

use crate::{GradeTask, Judge, JudgeFailure, Verdict};
use rubric::Example;

/// Times a failed verdict is asked for again unless configured otherwise.
pub const DEFAULT_RETRIES: u32 = 2;

/// The verdicts of a batch after the retries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graded {
    /// Per task, the final verdict of each criterion asked for, in criterion order.
    pub verdicts: Vec<Vec<Verdict>>,
    /// Verdicts asked for again.
    pub retried: usize,
}

/// One response to grade for rewards: its example, the class of each criterion and the text.
#[derive(Debug, Clone, Copy)]
pub struct ToGrade<'a> {
    pub example: &'a Example,
    pub class_of: &'a [usize],
    pub response: &'a str,
}

impl ToGrade<'_> {
    /// The criteria of class `only`, in order; all of them when `only` is `None`.
    pub fn criteria(&self, only: Option<usize>) -> Vec<usize> {
        (0..self.example.criteria.len())
            .filter(|&c| only.is_none_or(|k| self.class_of[c] == k))
            .collect()
    }
}

/// [`grade_with_retries`] on `items`, each against the criteria of class `only` (all of them
/// when `None`): how the trainer, evaluation and the reward service grade for rewards.
pub async fn grade_classes(
    judge: &dyn Judge,
    items: &[ToGrade<'_>],
    only: Option<usize>,
    retries: u32,
) -> Result<Graded, String> {
    let wanted: Vec<Vec<usize>> = items.iter().map(|it| it.criteria(only)).collect();
    grade_criteria(judge, items, &wanted, retries).await
}

/// [`grade_with_retries`] on `items`, item `i` against the criteria `wanted[i]` (indices into
/// its example's criteria, in order): [`grade_classes`] and the trainer's sampled criteria
/// (`objective.subsample`).
pub async fn grade_criteria(
    judge: &dyn Judge,
    items: &[ToGrade<'_>],
    wanted: &[Vec<usize>],
    retries: u32,
) -> Result<Graded, String> {
    assert_eq!(items.len(), wanted.len(), "one criterion list per item");
    let tasks: Vec<GradeTask<'_>> = items
        .iter()
        .zip(wanted)
        .map(|(it, criteria)| GradeTask {
            example: it.example,
            response: it.response,
            criteria: Some(criteria),
        })
        .collect();
    grade_with_retries(judge, &tasks, retries).await
}

/// Grades `tasks`, then asks again for the verdicts that failed (see the module doc): the one
/// grading path of the trainer, evaluation, the reward service and `arlrr grade`. A judge that
/// answers a different number of tasks or other criteria than it was asked for is an error (a
/// bug in the judge, not a verdict).
pub async fn grade_with_retries(
    judge: &dyn Judge,
    tasks: &[GradeTask<'_>],
    retries: u32,
) -> Result<Graded, String> {
    // per task and criterion index, the latest verdict
    let mut latest: Vec<Vec<Option<Verdict>>> = tasks
        .iter()
        .map(|t| vec![None; t.example.criteria.len()])
        .collect();
    let mut retried = 0;
    // (task, criteria asked for); the first attempt sends the tasks as given
    let mut pending: Vec<(usize, Vec<usize>)> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (i, t.criterion_indices()))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    for attempt in 0..=retries {
        if pending.is_empty() {
            break;
        }
        let batch: Vec<GradeTask<'_>> = if attempt == 0 {
            pending.iter().map(|(i, _)| tasks[*i]).collect()
        } else {
            retried += pending.iter().map(|(_, c)| c.len()).sum::<usize>();
            pending
                .iter()
                .map(|(i, c)| GradeTask {
                    criteria: Some(c),
                    ..tasks[*i]
                })
                .collect()
        };
        let results = judge.grade(&batch).await;
        pending = record(judge, &pending, results, &mut latest)?;
    }
    Ok(Graded {
        verdicts: latest
            .into_iter()
            .map(|row| row.into_iter().flatten().collect())
            .collect(),
        retried,
    })
}

/// Stores one attempt's `results` for the `pending` (task, criteria) in `latest`, after checking
/// that the judge answered what was asked; returns what to ask again.
fn record(
    judge: &dyn Judge,
    pending: &[(usize, Vec<usize>)],
    results: Vec<Vec<Verdict>>,
    latest: &mut [Vec<Option<Verdict>>],
) -> Result<Vec<(usize, Vec<usize>)>, String> {
    if results.len() != pending.len() {
        return Err(format!(
            "judge `{}` returned {} results for {} tasks",
            judge.id(),
            results.len(),
            pending.len()
        ));
    }
    let mut next = Vec::new();
    for ((i, asked), verdicts) in pending.iter().zip(results) {
        let mut answered: Vec<usize> = verdicts.iter().map(|v| v.criterion).collect();
        answered.sort_unstable();
        let mut wanted = asked.clone();
        wanted.sort_unstable();
        if answered != wanted {
            return Err(format!(
                "judge `{}` returned grades for criteria {answered:?} when asked for {wanted:?}",
                judge.id()
            ));
        }
        let mut again = Vec::new();
        for v in verdicts {
            if matches!(v.failure(), Some(f) if !matches!(f, JudgeFailure::NotGradable(_))) {
                again.push(v.criterion);
            }
            let criterion = v.criterion;
            latest[*i][criterion] = Some(v);
        }
        if !again.is_empty() {
            next.push((*i, again));
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rubric::{Criterion, Example};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails criterion 0 `fail_first` times, then meets it; criterion 1 is not gradable.
    struct Flaky {
        fail_first: u32,
        calls: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Judge for Flaky {
        fn id(&self) -> String {
            "flaky".into()
        }
        async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            tasks
                .iter()
                .map(|t| {
                    t.criterion_indices()
                        .into_iter()
                        .map(|c| Verdict {
                            criterion: c,
                            outcome: match c {
                                0 if call < self.fail_first => {
                                    Err(JudgeFailure::Other("timeout".into()))
                                }
                                0 => Ok(1.0),
                                _ => Err(JudgeFailure::NotGradable("no check".into())),
                            },
                            explanation: String::new(),
                            judge: self.id(),
                            cached: false,
                            attempts: 1,
                        })
                        .collect()
                })
                .collect()
        }
    }

    fn example() -> Example {
        let criterion = |points| Criterion {
            text: "x".into(),
            points,
            tags: vec![],
            check: None,
        };
        Example {
            id: "e".into(),
            prompt: vec![],
            criteria: vec![criterion(5.0), criterion(3.0)],
            tags: vec![],
            ideal_completion: None,
            canary: None,
            line: 1,
        }
    }

    #[tokio::test]
    async fn failures_are_retried_then_recorded_and_not_gradable_is_asked_once() {
        let ex = example();
        let task = GradeTask {
            example: &ex,
            response: "r",
            criteria: None,
        };
        for (fail_first, retries, met, calls) in [(2, 2, true, 3), (3, 2, false, 3)] {
            let judge = Flaky {
                fail_first,
                calls: AtomicU32::new(0),
            };
            let v = grade_with_retries(&judge, &[task], retries).await.unwrap();
            assert_eq!(judge.calls.load(Ordering::SeqCst), calls);
            assert_eq!(
                v.retried, 2,
                "criterion 0 asked twice more, criterion 1 never"
            );
            let values: Vec<Option<f64>> = v.verdicts[0].iter().map(Verdict::value).collect();
            assert_eq!(values, vec![met.then_some(1.0), None]);
            let failed: Vec<usize> = v.verdicts[0]
                .iter()
                .filter(|v| v.failure().is_some())
                .map(|v| v.criterion)
                .collect();
            assert_eq!(failed, if met { vec![1] } else { vec![0, 1] });
        }
    }
}
