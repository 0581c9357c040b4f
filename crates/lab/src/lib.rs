//! ARL-RR's lab, above the trainer: what is made of finished runs. A run's `report.md` and
//! plots ([`report`], [`plots`]), method comparisons over seeds ([`compare`]), study grids of
//! regimes × methods × learning rates ([`study`]) and the GRPO step bench ([`bench`]).
//!
//! The trainer (`arl`) trains and returns its run's records; nothing here is compiled into it.

pub mod bench;
pub mod compare;
pub mod plots;
pub mod report;
pub mod study;
