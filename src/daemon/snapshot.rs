//! The snapshot: what the worker publishes after each evaluation.
//!
//! This module owns the one view of the daemon's state that the rest of the
//! daemon reads: the engine's report, its counters and the edges' counters,
//! as of the last evaluation. `/metrics`, the API and readiness-adjacent
//! status read it from a `watch` channel, so an HTTP request never waits
//! for, or slows, the consumer loop.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::daemon::checkpoint::CheckpointStats;
use crate::daemon::ingest::KafkaStats;
use crate::engine::detect::Transition;
use crate::engine::{EngineStats, ModelReport, Report};

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
    /// Detailed reports (bins, counts, score history) of the models whose
    /// pages were viewed lately (see [`Watched`]).
    pub details: Vec<ModelReport>,
}

/// Models whose pages are being looked at, at most this many ...
pub const MAX_WATCHED: usize = 16;
/// ... each for this long after its last view.
pub const WATCH_FOR: Duration = Duration::from_secs(600);
/// What one detailed model report may hold in a snapshot (bin labels and
/// counts of its windows, its score history): a bound for the plan.
pub const DETAIL_BYTES: usize = 256 << 10;

/// The models whose pages were viewed lately. The worker puts their
/// detailed reports in every snapshot it publishes, so a page is drawn
/// from the snapshot and a view never asks, or waits for, the consumer
/// loop; the first view of a model shows its scores and asks for its bars
/// at the next evaluation.
#[derive(Debug, Default)]
pub struct Watched {
    models: Mutex<Vec<(String, Instant)>>,
}

impl Watched {
    /// A page of `model` was viewed now.
    pub fn watch(&self, model: &str) {
        let mut m = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(e) = m.iter_mut().find(|(n, _)| n == model) {
            e.1 = now;
            return;
        }
        if m.len() >= MAX_WATCHED {
            // The one viewed longest ago makes room.
            if let Some(i) = (0..m.len()).min_by_key(|&i| m[i].1) {
                m.swap_remove(i);
            }
        }
        m.push((model.to_owned(), now));
    }

    /// The models viewed within [`WATCH_FOR`], forgetting the others.
    pub fn current(&self) -> Vec<String> {
        let mut m = self.models.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|(_, at)| at.elapsed() < WATCH_FOR);
        m.iter().map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_models_are_bounded_and_the_oldest_view_makes_room() {
        let w = Watched::default();
        for i in 0..MAX_WATCHED {
            w.watch(&format!("m{i}"));
        }
        w.watch("m0"); // viewed again: now the newest
        w.watch("new");
        let c = w.current();
        assert_eq!(c.len(), MAX_WATCHED);
        assert!(c.contains(&"new".to_owned()) && c.contains(&"m0".to_owned()));
        assert!(!c.contains(&"m1".to_owned()), "{c:?}");
    }
}
