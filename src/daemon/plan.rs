//! The memory plan: what `driftd run` may hold with a configuration and the
//! baselines it will load, stated before start.
//!
//! This module owns the daemon's side of `limits.max_memory`. The engine's
//! state is bounded by its own terms (`engine::memory`); beside it the
//! process holds its runtime, librdkafka's prefetch and the alert queue.
//! Those come off the limit first, and the engine's budget is what is
//! left: at run time a model, arm or health state that would pass it is
//! refused and counted, never allocated. `check-config` prints the plan,
//! the start-up log states it, and a configuration whose committed terms
//! (the baselines it loads, at their worst) do not fit is refused before a
//! port is bound.

use crate::daemon::ingest::{FETCH_MAX_BYTES, QUEUED_KBYTES};
use crate::daemon::settings::Config;
use crate::daemon::snapshot::{DETAIL_BYTES, MAX_WATCHED};
use crate::engine::baseline::{Baseline, Layout};
use crate::engine::memory::{human, Plan};
use crate::engine::EngineConfig;

/// The process before any model: binary, async runtime, threads, HTTP
/// server, librdkafka's own structures. Measured as the idle daemon's RSS
/// (`driftd bench`, no traffic): 17 MiB; rounded up.
pub(crate) const PROCESS_BYTES: usize = 20 << 20;

/// An alert transition waiting in the queue, with its labels and text.
const TRANSITION_BYTES: usize = 1024;

/// The daemon's own terms: what the engine's budget does not cover.
pub(crate) fn daemon_terms(cfg: &Config) -> Plan {
    let mut p = Plan::default();
    p.push(
        "process",
        "binary, runtime, threads, HTTP (measured idle)",
        PROCESS_BYTES,
    );
    if let Some(k) = &cfg.kafka {
        let prop = |key: &str| {
            k.properties
                .get(key)
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let queued = prop("queued.max.messages.kbytes").unwrap_or(QUEUED_KBYTES) * 1024;
        let fetch = prop("fetch.max.bytes").unwrap_or(FETCH_MAX_BYTES);
        let brokers = k
            .brokers
            .split(',')
            .filter(|b| !b.trim().is_empty())
            .count()
            .max(1);
        p.push(
            "kafka prefetch",
            format!(
                "queued.max.messages.kbytes {} + fetch.max.bytes {} x {brokers} bootstrap broker(s)",
                human(queued),
                human(fetch)
            ),
            queued + fetch * brokers,
        );
    }
    p.push(
        "model pages",
        format!(
            "{MAX_WATCHED} models' bins and score history at most × {} × 2 snapshots",
            human(DETAIL_BYTES)
        ),
        MAX_WATCHED * DETAIL_BYTES * 2,
    );
    if cfg.alerts.any_sink() {
        p.push(
            "alert queue",
            format!(
                "{} transitions x {}",
                cfg.alerts.queue_capacity,
                human(TRANSITION_BYTES)
            ),
            cfg.alerts.queue_capacity * TRANSITION_BYTES,
        );
    }
    p
}

/// What the engine may take: the limit less the daemon's own terms.
pub(crate) fn engine_limit(cfg: &Config) -> usize {
    cfg.max_memory.saturating_sub(daemon_terms(cfg).total())
}

/// The engine's configuration as the daemon runs it: windows aligned, the
/// cost of publishing each model (series, snapshots) reserved with it, and
/// the budget the daemon's own terms leave.
pub(crate) fn engine_config(cfg: &Config) -> EngineConfig {
    let mut engine = cfg.engine.clone();
    engine.align();
    engine.published = cfg.metrics.published(engine.detect.rules.len());
    engine.max_memory = Some(engine_limit(cfg));
    engine
}

/// The whole plan: the daemon's terms, then the engine's with these
/// baselines at their worst.
pub(crate) fn plan(cfg: &Config, baselines: &[Baseline]) -> Plan {
    let layouts: Vec<Layout> = baselines.iter().cloned().map(Layout::new).collect();
    let refs: Vec<&Layout> = layouts.iter().collect();
    let engine = engine_config(cfg);
    let mut p = daemon_terms(cfg);
    p.terms.extend(engine.memory_plan(&refs).terms);
    p
}

/// The plan as `check-config` prints it, and the problem when it does not
/// fit (`None` when it does).
pub(crate) fn report(cfg: &Config, baselines: &[Baseline]) -> (String, Option<String>) {
    let p = plan(cfg, baselines);
    let total = p.total();
    let mut out = format!(
        "memory at most {} of limits.max_memory {}:\n",
        human(total),
        human(cfg.max_memory)
    );
    for t in &p.terms {
        out.push_str(&format!(
            "  {:<34} {:>10}  {}\n",
            t.what,
            human(t.bytes),
            t.formula
        ));
    }
    let engine = engine_config(cfg);
    let room = cfg.max_memory.saturating_sub(total);
    let largest = baselines
        .iter()
        .map(|b| {
            let l = Layout::new(b.clone());
            engine.model_bytes(&l)
                + engine.max_arms_per_model * engine.arm_bytes(&l)
                + engine.health_bytes()
        })
        .max();
    if let Some(per) = largest.filter(|b| *b > 0) {
        out.push_str(&format!(
            "  room for {} more models like the largest baseline ({} each at worst); beyond the budget a model is refused and counted (driftd_memory_refused_total)\n",
            room / per,
            human(per)
        ));
    }
    let problem = (total > cfg.max_memory).then(|| {
        let big: Vec<String> = p
            .largest(3)
            .iter()
            .map(|t| format!("{} {} ({})", t.what, human(t.bytes), t.formula))
            .collect();
        format!(
            "the configuration may hold {} but limits.max_memory is {}; the largest terms: {}. Raise limits.max_memory (and the container's limit), or lower limits.max_arms_per_model, window.max_panes or the baselines' bins",
            human(total),
            human(cfg.max_memory),
            big.join("; ")
        )
    });
    (out, problem)
}
