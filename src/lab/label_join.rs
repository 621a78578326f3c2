//! `driftd bench --label-join`: the label join at a steady prediction
//! rate with late labels, for a day or more of event time, and what it
//! holds.
//!
//! This module owns that measurement. It drives the engine's
//! [`Quality`] directly (the daemon's path after decoding) with the
//! default `[quality]` settings and a 24 h TTL: `rate` predictions per
//! second of one classifier, each labelled `delay` later (labels arrive in
//! the order of their due time, a fixed delay, so no harness buffer grows
//! with it). Every simulated hour it records the join's sample rate, what
//! waits in it and the process's RSS; the report says whether the join
//! kept within the cap `check-config` states.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::decode::feature_hash;
use crate::engine::quality::{PredictedAs, Quality, QualityConfig, Truth};
use crate::lab::harness::proc_mem;

/// One simulated hour.
#[derive(Debug, Clone)]
pub struct Hour {
    pub hour: u64,
    pub sample_rate: f64,
    pub waiting_predictions: usize,
    pub waiting_labels: usize,
    pub matched: u64,
    pub rss_mib: f64,
}

#[derive(Debug, Clone)]
pub struct LabelJoinReport {
    pub rate: u64,
    pub delay_h: f64,
    pub ttl_h: f64,
    pub max_pending: usize,
    /// The join's bound, as `check-config` states it.
    pub bound_mib: f64,
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
    pub hours: Vec<Hour>,
    pub accuracy: Option<f64>,
    pub labelled: u64,
    pub wall_s: f64,
}

const CLASSES: [&str; 2] = ["fraud", "legit"];

/// The class of request `i` and whether the model got it right: a pure
/// function of `i`, so the label needs no memory of its prediction.
fn draw(i: u64) -> (usize, bool) {
    let h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
    ((h & 1) as usize, (h >> 8) % 100 < 90)
}

/// Runs `hours` of event time at `rate` predictions per second with
/// labels `delay_ms` late.
pub fn run(rate: u64, hours: u64, delay_ms: i64) -> LabelJoinReport {
    let began = Instant::now();
    let cfg = QualityConfig {
        join_from_start: true,
        ..QualityConfig::default()
    };
    let bound = cfg.join_bytes();
    let (rss_start, _) = proc_mem(std::process::id());
    let mut q = Quality::new(cfg.clone());
    let classes: Arc<[(Box<str>, u64)]> = CLASSES
        .iter()
        .map(|c| (Box::<str>::from(*c), feature_hash(c)))
        .collect();
    let class_set = || classes.clone();
    let hashes = [feature_hash(CLASSES[0]), feature_hash(CLASSES[1])];
    let step_us = 1_000_000 / rate.max(1);
    let lag = (delay_ms * 1000) as u64 / step_us;
    let total = hours * 3600 * 1_000_000 / step_us;
    let t0: i64 = 1_800_000_000_000;
    let mut out = Vec::new();
    let mut rss_peak = rss_start;
    let request = |i: u64| xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), 7);
    for i in 0..total + lag {
        let t = t0 + (i * step_us / 1000) as i64;
        if i < total {
            let (class, right) = draw(i);
            let predicted = if right { class } else { 1 - class };
            let p = PredictedAs::Class(hashes[predicted], Some(if right { 0.9 } else { 0.6 }));
            q.prediction("fraud-v1", None, request(i), t, p, &class_set, &mut |_| {
                true
            });
        }
        if i >= lag {
            let j = i - lag;
            q.label(request(j), Truth::Class(hashes[draw(j).0]), t);
        }
        if i > 0 && (i * step_us) % 3_600_000_000 == 0 {
            let (rss, _) = proc_mem(std::process::id());
            rss_peak = rss_peak.max(rss);
            let (p, l) = q.join.waiting();
            out.push(Hour {
                hour: i * step_us / 3_600_000_000,
                sample_rate: q.join.sample_rate(),
                waiting_predictions: p,
                waiting_labels: l,
                matched: q.join.stats.matched,
                rss_mib: rss,
            });
        }
    }
    let end = t0 + ((total + lag) * step_us / 1000) as i64;
    let (reports, _) = q.evaluate(end, &Default::default(), &|_, _| None);
    let r = reports.into_iter().find(|r| r.arm.is_none());
    let (_, peak) = proc_mem(std::process::id());
    LabelJoinReport {
        rate,
        delay_h: delay_ms as f64 / 3_600_000.0,
        ttl_h: cfg.ttl_ms as f64 / 3_600_000.0,
        max_pending: cfg.max_pending,
        bound_mib: bound as f64 / (1 << 20) as f64,
        rss_start_mib: rss_start,
        rss_peak_mib: peak.max(rss_peak),
        hours: out,
        accuracy: r.as_ref().and_then(|r| r.accuracy),
        labelled: r.map_or(0, |r| r.labelled),
        wall_s: began.elapsed().as_secs_f64(),
    }
}

/// The report as markdown.
pub fn render(r: &LabelJoinReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "label join: {} predictions/s, labels {:.1} h late, TTL {:.0} h, max_pending {} (bound {:.1} MiB)\n",
        r.rate, r.delay_h, r.ttl_h, r.max_pending, r.bound_mib
    );
    let _ = writeln!(
        s,
        "| hour | sample rate | predictions waiting | labels waiting | matched | RSS MiB |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    for h in &r.hours {
        let _ = writeln!(
            s,
            "| {} | 1/{:.0} | {} | {} | {} | {:.1} |",
            h.hour,
            1.0 / h.sample_rate,
            h.waiting_predictions,
            h.waiting_labels,
            h.matched,
            h.rss_mib
        );
    }
    let _ = writeln!(
        s,
        "\nRSS {:.1} MiB at the start, {:.1} MiB at the peak (+{:.1} MiB; the join's bound is {:.1} MiB). Realized accuracy over the last window: {} from {} labelled predictions (the stream's is 90%). {:.0} s.",
        r.rss_start_mib,
        r.rss_peak_mib,
        r.rss_peak_mib - r.rss_start_mib,
        r.bound_mib,
        r.accuracy.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
        r.labelled,
        r.wall_s
    );
    s
}
