//! The lab: synthetic traffic and the tools that measure driftd with it.

pub mod bench;
pub mod demo;
pub mod generate;
pub mod harness;
pub mod scenario;
pub mod soak;
