//! Rubric data: examples whose responses are graded criterion by criterion, the meta-classes
//! those criteria are grouped into, and HealthBench's scoring rules, reproduced exactly.
//!
//! Everything downstream (judges, the trainer, the reward service) speaks these types, so this
//! crate stays dependency-light: serde, a seeded RNG for the bootstrap, and sha2 + zip to verify
//! and unpack the fetched assets.

pub mod assets;
pub mod builtin;
pub mod classes;
pub mod error;
pub mod grades;
pub mod limits;
pub mod load;
pub mod model;
pub mod moments;
pub mod responses;
pub mod runfile;
pub mod score;
pub mod split;
pub mod stats;
pub mod verdict;

pub use classes::{ClassScheme, ClassSpec, MetaClasses, HEALTHBENCH_AXES};
pub use error::{read_text, DataError};
pub use grades::{read_grades, GradeLine};
pub use load::{load, load_as, write_jsonl};
pub use model::{Check, Criterion, Dataset, Example, Format, ListStyle, Message};
pub use responses::{read_responses, ResponseLine};
pub use score::{example_score, summarize, RewardVector, ScoreTable, Summary};
pub use stats::DataStats;
pub use verdict::{JudgeFailure, Verdict};
