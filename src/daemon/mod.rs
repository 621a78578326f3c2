//! The daemon's edges: Kafka in, checkpoints, metrics, HTTP and alerts out,
//! wired to the engine in [`app`].

pub mod admin;
pub mod alert;
pub mod app;
pub mod baselines;
pub mod checkpoint;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod readiness;
pub mod settings;
pub mod snapshot;
