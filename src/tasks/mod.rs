//! Verifiable tasks. For now: synthetic arithmetic used by the default pretraining job.

pub mod arithmetic;
