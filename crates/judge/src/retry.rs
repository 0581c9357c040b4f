//! The one retry policy for judge failures, shared by the trainer, evaluation and the reward
//! service: a failed verdict is asked for again, up to `retries` times, then recorded as a
//! failure; it is never scored as 0 or 1. A criterion the judge cannot grade at all
//! ([`JudgeFailure::NotGradable`]) is not asked again: no retry changes that answer.

use crate::{GradeTask, Judge, JudgeFailure};

/// Times a failed verdict is asked for again unless configured otherwise.
pub const DEFAULT_RETRIES: u32 = 2;

/// The verdicts of a batch after the retries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdicts {
    /// `outcomes[task][criterion]`, indexed like `example.criteria`; `None` = not asked.
    pub outcomes: Vec<Vec<Option<Result<f64, JudgeFailure>>>>,
    /// Verdicts asked for again.
    pub retried: usize,
}

impl Verdicts {
    /// Task `task`'s verdict values (`None` = not asked or failed), for
    /// `rubric::score::reward_vector`.
    pub fn values(&self, task: usize) -> Vec<Option<f64>> {
        self.outcomes[task]
            .iter()
            .map(|o| o.as_ref().and_then(|r| r.as_ref().ok().copied()))
            .collect()
    }

    /// Task `task`'s failed verdicts: `(criterion, failure)`, in criterion order.
    pub fn failures(&self, task: usize) -> impl Iterator<Item = (usize, &JudgeFailure)> {
        self.outcomes[task]
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Some(Err(f)) => Some((i, f)),
                _ => None,
            })
    }
}

/// Grades `tasks`, then asks again for the verdicts that failed (see the module doc).
/// A judge that answers a different number of tasks or other criteria than it was asked for
/// is an error (a bug in the judge, not a verdict).
pub async fn grade_with_retries(
    judge: &dyn Judge,
    tasks: &[GradeTask<'_>],
    retries: u32,
) -> Result<Verdicts, String> {
    let mut out = Verdicts {
        outcomes: tasks
            .iter()
            .map(|t| vec![None; t.example.criteria.len()])
            .collect(),
        retried: 0,
    };
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
            out.retried += pending.iter().map(|(_, c)| c.len()).sum::<usize>();
            pending
                .iter()
                .map(|(i, c)| GradeTask {
                    criteria: Some(c),
                    ..tasks[*i]
                })
                .collect()
        };
        let results = judge.grade(&batch).await;
        if results.len() != batch.len() {
            return Err(format!(
                "judge `{}` returned {} results for {} tasks",
                judge.id(),
                results.len(),
                batch.len()
            ));
        }
        let mut next = Vec::new();
        for ((i, asked), grades) in pending.iter().zip(results) {
            let mut answered: Vec<usize> = grades.iter().map(|g| g.criterion).collect();
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
            for g in grades {
                if matches!(&g.outcome, Err(f) if !matches!(f, JudgeFailure::NotGradable(_))) {
                    again.push(g.criterion);
                }
                out.outcomes[*i][g.criterion] = Some(g.outcome);
            }
            if !again.is_empty() {
                next.push((*i, again));
            }
        }
        pending = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CriterionGrade;
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
        async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<CriterionGrade>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            tasks
                .iter()
                .map(|t| {
                    t.criterion_indices()
                        .into_iter()
                        .map(|c| CriterionGrade {
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
            assert_eq!(v.values(0), vec![met.then_some(1.0), None]);
            let failed: Vec<usize> = v.failures(0).map(|(c, _)| c).collect();
            assert_eq!(failed, if met { vec![1] } else { vec![0, 1] });
        }
    }
}
