//! Judges turn (conversation, response, criteria) into verdicts.
//!
//! Every verdict says where it came from, and a judge that cannot decide says so
//! ([`JudgeFailure`]) instead of guessing: the trainer excludes failures from rewards.
//!
//! - [`RuleJudge`]: machine-checkable criteria (`check`), deterministic and free.
//! - [`HttpJudge`]: any OpenAI-compatible chat completions endpoint, one request per
//!   criterion, bounded retries and concurrency, optional requests- and tokens-per-minute
//!   limits ([`rate_limit`]).
//! - `EmbeddingJudge`: approximate local grading by sentence similarity (MiniLM; feature
//!   `embedding`, on by default).
//! - [`CachedJudge`]: a SQLite verdict cache in front of any of them.
//! - [`from_config`]: builds one of the above from a TOML [`JudgeConfig`].
//! - `serve`: an OpenAI-compatible server over a local model (`arlrr serve-judge`; feature
//!   `serve`, on by default).

pub mod cache;
pub mod config;
pub mod embedding;
pub mod http;
pub mod prompt;
pub mod rate_limit;
pub mod retry;
pub mod rules;
#[cfg(feature = "serve")]
pub mod serve;
mod text;

pub use cache::{CachedJudge, VerdictCache};
pub use config::{from_config, BuildError, ConfigError, JudgeConfig, JudgeKind};
pub use embedding::EmbeddingJudgeConfig;
#[cfg(feature = "embedding")]
pub use embedding::{EmbeddingJudge, SentenceEmbedder};
pub use http::{HttpJudge, HttpJudgeConfig};
pub use retry::{
    grade_classes, grade_criteria, grade_with_retries, Graded, ToGrade, DEFAULT_RETRIES,
};
pub use rules::RuleJudge;

use async_trait::async_trait;
use rubric::Example;
/// A verdict and its failure are the rubric crate's, one form from the judge to the rewards.
pub use rubric::{JudgeFailure, Verdict};
use std::sync::Arc;

/// One response to grade against some criteria of one example.
#[derive(Debug, Clone, Copy)]
pub struct GradeTask<'a> {
    pub example: &'a Example,
    pub response: &'a str,
    /// Indices into `example.criteria`; `None` grades all of them.
    pub criteria: Option<&'a [usize]>,
}

impl GradeTask<'_> {
    /// The criterion indices this task asks for.
    pub fn criterion_indices(&self) -> Vec<usize> {
        match self.criteria {
            Some(c) => c.to_vec(),
            None => (0..self.example.criteria.len()).collect(),
        }
    }
}

/// Counters a judge keeps over its lifetime; the trainer logs their deltas per step.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JudgeStats {
    /// Criterion verdicts asked for.
    pub verdicts: u64,
    /// Verdicts that ended in a failure.
    pub failures: u64,
    /// Requests sent to a backend (HTTP calls, model evaluations).
    pub calls: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The HTTP judge's requests-per-minute limit; 0 when there is none (other judges too).
    #[serde(default)]
    pub rate_limit_requests_per_minute: u64,
    /// The HTTP judge's tokens-per-minute limit; 0 when there is none.
    #[serde(default)]
    pub rate_limit_tokens_per_minute: u64,
    /// Requests that waited for those limits before being sent.
    #[serde(default)]
    pub rate_limited_waits: u64,
    /// Time those waits took, in nanoseconds (each counted when it ended or was cancelled).
    #[serde(default)]
    pub rate_limit_wait_nanos: u64,
}

/// Where [`Judge::grade_reporting`] hands over verdicts as soon as they are known: the index of
/// their task in the batch, and some of that task's verdicts (any subset, in any order).
pub type GradeSink<'a> = dyn Fn(usize, &[Verdict]) + Sync + 'a;

#[async_trait]
pub trait Judge: Send + Sync {
    /// Stable id; part of the cache key, so change it when verdicts would change.
    fn id(&self) -> String;

    /// Version of the prompt text this judge sends (empty for judges without one). Part of
    /// the cache key next to [`Judge::id`], so rewording the prompt invalidates old verdicts.
    fn prompt_version(&self) -> String {
        String::new()
    }

    /// Grades a batch. The result has one entry per task, each with one verdict per requested
    /// criterion, in the task's criterion order. A judge implements this method or
    /// [`Judge::grade_reporting`] (each defaults to the other); callers that want the one
    /// retry policy use [`grade_with_retries`].
    async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
        self.grade_reporting(tasks, &|_, _| {}).await
    }

    /// [`Judge::grade`], also handing each verdict to `sink` as soon as it is known, so that a
    /// caller whose future is dropped midway (a request timeout) keeps the verdicts already
    /// obtained: [`CachedJudge`] stores them as they arrive. The default reports every verdict
    /// once `grade` returns; a judge that obtains verdicts one at a time (HTTP) reports each
    /// as it comes, and implements only this method.
    async fn grade_reporting(
        &self,
        tasks: &[GradeTask<'_>],
        sink: &GradeSink<'_>,
    ) -> Vec<Vec<Verdict>> {
        let graded = self.grade(tasks).await;
        for (task, grades) in graded.iter().enumerate() {
            sink(task, grades);
        }
        graded
    }

    fn stats(&self) -> JudgeStats {
        JudgeStats::default()
    }
}

/// Boxed and shared judges are judges too, so wrappers such as [`CachedJudge`] take the
/// `Box<dyn Judge>` that [`from_config`] builds.
macro_rules! forward_judge {
    ($pointer:ident) => {
        #[async_trait]
        impl<J: Judge + ?Sized> Judge for $pointer<J> {
            fn id(&self) -> String {
                (**self).id()
            }
            fn prompt_version(&self) -> String {
                (**self).prompt_version()
            }
            async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
                (**self).grade(tasks).await
            }
            async fn grade_reporting(
                &self,
                tasks: &[GradeTask<'_>],
                sink: &GradeSink<'_>,
            ) -> Vec<Vec<Verdict>> {
                (**self).grade_reporting(tasks, sink).await
            }
            fn stats(&self) -> JudgeStats {
                (**self).stats()
            }
        }
    };
}
forward_judge!(Box);
forward_judge!(Arc);
