//! The verdict on one criterion, in the one form it keeps from the judge that gives it to the
//! reward vector that reads it ([`crate::score::reward_vector`]): a judge answers a response
//! with one [`Verdict`] per criterion asked for, the retries (`judge::grade_with_retries`)
//! replace the failed ones, simulated judge noise maps them to new ones, and the rewards, the
//! reward service's answers and `arlrr grade`'s grades file are read off them.

use std::fmt;

/// Why a criterion got no verdict value. Never scored as 0 or 1: a response with a failed
/// verdict is left out of the rewards.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeFailure {
    /// This judge cannot grade this criterion (e.g. the rule judge and a criterion without
    /// `check`); no retry changes that answer.
    NotGradable(String),
    /// Retries were exhausted; the last error is kept.
    Exhausted {
        attempts: u32,
        last_error: String,
    },
    Other(String),
}

impl fmt::Display for JudgeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JudgeFailure::NotGradable(why) => write!(f, "not gradable by this judge: {why}"),
            JudgeFailure::Exhausted {
                attempts,
                last_error,
            } => write!(f, "gave up after {attempts} attempts: {last_error}"),
            JudgeFailure::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for JudgeFailure {}

/// The verdict on one criterion of one response.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Index into `example.criteria`.
    pub criterion: usize,
    /// Met = 1.0, not met = 0.0, graded data in between; or an explicit failure.
    pub outcome: Result<f64, JudgeFailure>,
    pub explanation: String,
    /// Id of the judge that produced it (model name, "rules", ...).
    pub judge: String,
    pub cached: bool,
    /// Requests made for this verdict (0 for a cache hit or a rule).
    pub attempts: u32,
}

impl Verdict {
    /// The value in [0,1]; `None` for a failure.
    pub fn value(&self) -> Option<f64> {
        self.outcome.as_ref().ok().copied()
    }

    /// Why it failed; `None` for a value.
    pub fn failure(&self) -> Option<&JudgeFailure> {
        self.outcome.as_ref().err()
    }

    /// The same verdict with another value (what simulated judge noise reads).
    pub fn with_value(&self, value: f64) -> Verdict {
        Verdict {
            outcome: Ok(value),
            ..self.clone()
        }
    }
}
