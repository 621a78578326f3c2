//! The lab: synthetic traffic and the tools that measure driftd with it.

pub(crate) mod bench;
pub(crate) mod demo;
pub mod generate;
pub(crate) mod harness;
pub(crate) mod label_join;
pub mod quality_suite;
pub mod scenario;
pub(crate) mod soak;
