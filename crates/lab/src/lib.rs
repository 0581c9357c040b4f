//! ARL-RR's lab, above the trainer: what is made of finished runs. A run's `report.md` and
//! plots ([`report`], [`plots`]), method comparisons over seeds ([`compare`]), study grids of
//! regimes × methods × learning rates ([`study`]) and the GRPO step bench ([`bench`]).
//!
//! The trainer (`arl`) trains and returns its run's records; nothing here is compiled into it.

/// The code this binary was built from: a hash of every crate's sources, manifests and
/// Cargo.lock. A study run made by other code is not reused.
pub const CODE_VERSION: &str = env!("ARLRR_CODE");
/// The git commit of that code (`-dirty` with uncommitted changes; `unknown` outside git).
pub const COMMIT: &str = env!("ARLRR_COMMIT");

pub mod bench;
pub mod compare;
pub mod plots;
pub mod report;
pub mod study;
