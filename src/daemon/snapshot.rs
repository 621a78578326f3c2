//! The snapshot: what the worker publishes after each evaluation.
//!
//! This module owns the one view of the daemon's state that the rest of the
//! daemon reads: the engine's report, its counters and the edges' counters,
//! as of the last evaluation. `/metrics`, the API and readiness-adjacent
//! status read it from a `watch` channel, so an HTTP request never waits
//! for, or slows, the consumer loop.

use crate::daemon::checkpoint::CheckpointStats;
use crate::daemon::ingest::KafkaStats;
use crate::engine::detect::Transition;
use crate::engine::{EngineStats, Report};

/// What the worker knows after an evaluation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub at_ms: i64,
    pub report: Report,
    pub stats: EngineStats,
    pub kafka: KafkaStats,
    pub checkpoints: CheckpointStats,
    pub eval_seconds: f64,
    /// The transitions this evaluation made.
    pub transitions: Vec<Transition>,
    /// Baseline reloads: (took, failed and kept the old ones).
    pub reloads: (u64, u64),
    /// The engine's memory: (reserved, budget).
    pub memory: (usize, Option<usize>),
}
