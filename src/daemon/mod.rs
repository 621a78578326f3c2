//! The daemon's edges: Kafka in, checkpoints, metrics, HTTP and alerts out,
//! wired to the engine in [`app`].

pub(crate) mod admin;
pub mod alert;
pub mod app;
pub(crate) mod baselines;
pub(crate) mod checkpoint;
pub mod ingest;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod plan;
pub(crate) mod readiness;
pub(crate) mod settings;
pub mod snapshot;
