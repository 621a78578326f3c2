//! Readiness: whether this replica is doing its job, for `/readyz`.
//!
//! This module owns the flags `/readyz` is made of. Each is set by the part
//! that knows: the Kafka callbacks (partitions assigned, a broker talking),
//! the worker (running, baselines loaded). They are atomics because those
//! parts run on other threads than the HTTP server, and a probe must never
//! wait for the consumer loop.
//!
//! Not to be confused with `engine::health`, the analysis of the models'
//! error rates and latencies: that is about the models, this is about us.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What readiness is made of; shared by the worker, the Kafka callbacks and
/// the HTTP server.
#[derive(Debug, Default)]
pub struct Readiness {
    pub baselines: AtomicUsize,
    pub auto_baseline: AtomicBool,
    pub assigned: AtomicUsize,
    pub broker_up: AtomicBool,
    pub running: AtomicBool,
}

impl Readiness {
    /// Ok, or the reasons the daemon is not ready.
    pub fn ready(&self) -> Result<(), Vec<&'static str>> {
        let mut why = Vec::new();
        if !self.running.load(Ordering::Relaxed) {
            why.push("consumer not running");
        }
        if self.baselines.load(Ordering::Relaxed) == 0
            && !self.auto_baseline.load(Ordering::Relaxed)
        {
            why.push("no baselines loaded");
        }
        if self.assigned.load(Ordering::Relaxed) == 0 {
            why.push("no partitions assigned");
        }
        if !self.broker_up.load(Ordering::Relaxed) {
            why.push("no broker reachable");
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_reason() {
        let r = Readiness::default();
        assert_eq!(r.ready().unwrap_err().len(), 4);
        r.running.store(true, Ordering::Relaxed);
        r.baselines.store(1, Ordering::Relaxed);
        r.assigned.store(2, Ordering::Relaxed);
        r.broker_up.store(true, Ordering::Relaxed);
        assert!(r.ready().is_ok());
    }

    #[test]
    fn automatic_baselines_stand_in_for_loaded_ones() {
        let r = Readiness::default();
        r.running.store(true, Ordering::Relaxed);
        r.assigned.store(1, Ordering::Relaxed);
        r.broker_up.store(true, Ordering::Relaxed);
        assert_eq!(r.ready().unwrap_err(), vec!["no baselines loaded"]);
        r.auto_baseline.store(true, Ordering::Relaxed);
        assert!(r.ready().is_ok());
    }
}
