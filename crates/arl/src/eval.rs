//! Validation: sample responses on a data split, grade every criterion, and summarize overall
//! and per-class HealthBench scores with bootstrap std.

use crate::actor::Policy;
use crate::grading::{grade, Criteria, ToGrade};
use anyhow::Result;
use judge::Judge;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rubric::{summarize, Example, RewardVector, Summary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Scores of a policy on a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub overall: Summary,
    /// Per meta-class, over the responses whose example has a positive item of that class.
    pub classes: BTreeMap<String, Summary>,
    /// Responses graded and scored.
    pub responses: usize,
    /// Responses left out because a verdict failed after the retries.
    pub excluded: usize,
    pub failed_verdicts: usize,
}

/// One line of `eval.jsonl`: a validation of the policy after `step` steps (0 = the start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    pub step: u64,
    #[serde(flatten)]
    pub report: EvalReport,
}

impl EvalReport {
    /// Class scores in class-index order (NaN where a class has no data).
    pub fn class_scores(&self, names: &[String]) -> Vec<f64> {
        names
            .iter()
            .map(|n| self.classes.get(n).map_or(f64::NAN, |s| s.score))
            .collect()
    }
}

/// [`Evaluator::evaluate_examples`]'s answer: the report, and per example its responses
/// with their rewards and verdicts.
pub struct Scored {
    pub report: EvalReport,
    /// `[example][sample]`; `None` = excluded.
    pub rewards: Vec<Vec<Option<RewardVector>>>,
    /// `[example][sample]`: the decoded responses.
    pub texts: Vec<Vec<String>>,
    /// `[example][sample]`: the verdicts the rewards were read from.
    pub verdicts: Vec<Vec<Vec<rubric::Verdict>>>,
}

/// What to evaluate on and how.
pub struct EvalSet<'a> {
    pub examples: Vec<&'a Example>,
    /// Class of each criterion, per example.
    pub class_of: Vec<&'a [usize]>,
    pub class_names: &'a [String],
}

/// How a policy is scored: the judge, and the sampling and bootstrap settings.
pub struct Evaluator<'a> {
    pub judge: &'a dyn Judge,
    pub rt: &'a tokio::runtime::Runtime,
    /// Times a failed verdict is asked again before its response is excluded.
    pub retries: u32,
    /// Responses sampled per example.
    pub samples: usize,
    /// Sampling and bootstrap seed, fixed so repeated evaluations (and the candidates of a
    /// lookahead) see the same sampling noise.
    pub seed: u64,
    /// Bootstrap resamples for the std (0 = mean only).
    pub resamples: usize,
    /// Simulated judge errors: the selectors' fixed batch only, never validation or test.
    pub noise: Option<&'a crate::noise::Noise>,
    /// Common random numbers (paired selection): each (example, sample) draws from its own
    /// stream of `seed`, so its draws do not depend on how long the other responses were and
    /// two policies are compared on the same sampling noise. Otherwise one stream serves all.
    pub paired: bool,
}

impl Evaluator<'_> {
    /// Samples responses of `policy` on `set`, grades every criterion and summarizes them.
    pub fn evaluate(&self, policy: &mut dyn Policy, set: &EvalSet<'_>) -> Result<EvalReport> {
        Ok(self.evaluate_examples(policy, set)?.report)
    }

    /// [`Evaluator::evaluate`], and per example its responses, their rewards (`None` =
    /// excluded) and verdicts.
    pub fn evaluate_examples(&self, policy: &mut dyn Policy, set: &EvalSet<'_>) -> Result<Scored> {
        let Evaluator {
            judge,
            rt,
            retries,
            samples,
            seed,
            resamples,
            noise,
            paired,
        } = *self;
        let completions = if paired {
            let mut out = Vec::with_capacity(set.examples.len());
            for (i, ex) in set.examples.iter().enumerate() {
                let mut group = Vec::with_capacity(samples);
                for j in 0..samples {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(((i as u64) << 32) | j as u64);
                    group.extend(policy.generate(&[*ex], 1, &mut rng)?.into_iter().flatten());
                }
                out.push(group);
            }
            out
        } else {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            policy.generate(&set.examples, samples, &mut rng)?
        };
        let mut items = Vec::new();
        for ((ex, class_of), group) in set.examples.iter().zip(&set.class_of).zip(&completions) {
            for c in group {
                items.push(ToGrade {
                    example: ex,
                    class_of,
                    response: &c.text,
                });
            }
        }
        let k = set.class_names.len();
        let graded = grade(rt, judge, &items, Criteria::Class(None), k, retries, noise)?;
        let mut rewards = graded.rewards.iter();
        let per_example = completions
            .iter()
            .map(|group| rewards.by_ref().take(group.len()).cloned().collect())
            .collect();
        let mut verdicts = graded.verdicts.iter();
        let verdicts = completions
            .iter()
            .map(|group| verdicts.by_ref().take(group.len()).cloned().collect())
            .collect();
        let texts = completions
            .iter()
            .map(|group| group.iter().map(|c| c.text.clone()).collect())
            .collect();
        let mut overall = Vec::new();
        let mut per_class = vec![Vec::new(); k];
        let mut excluded = 0;
        for r in &graded.rewards {
            let Some(r) = r else {
                excluded += 1;
                continue;
            };
            overall.extend(r.overall);
            for (v, rk) in per_class.iter_mut().zip(&r.classes) {
                v.extend(*rk);
            }
        }
        let classes = set
            .class_names
            .iter()
            .zip(&per_class)
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.clone(), summarize(v, resamples, seed)))
            .collect();
        let report = EvalReport {
            overall: summarize(&overall, resamples, seed),
            classes,
            responses: graded.rewards.len() - excluded,
            excluded,
            failed_verdicts: graded.failed_verdicts,
        };
        Ok(Scored {
            report,
            rewards: per_example,
            texts,
            verdicts,
        })
    }
}

impl EvalReport {
    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "responses {} (excluded for judge failures: {}, failed verdicts: {})\n\n{:<28} {:>7} {:>7} {:>6}\n",
            self.responses, self.excluded, self.failed_verdicts, "", "score", "std", "n"
        );
        let row = |name: &str, x: &Summary| {
            format!("{name:<28} {:>7.4} {:>7.4} {:>6}\n", x.score, x.std, x.n)
        };
        s += &row("overall", &self.overall);
        for (name, x) in &self.classes {
            s += &row(name, x);
        }
        s
    }
}
