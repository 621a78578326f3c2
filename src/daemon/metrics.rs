//! Metrics: the engine's Prometheus series, updated once per evaluation.
//!
//! This module owns the names and label sets of every series made from the
//! engine's report: drift scores, states and thresholds, window sizes,
//! health, latency, arms, decoding and join counters, evaluation time.
//! Each edge registers its own beside its code: `ingest` the
//! `driftd_kafka_*` series, `checkpoint` the `driftd_checkpoint*` ones,
//! `alert` the `driftd_alerts_*` ones. One registry is passed in (no
//! globals); [`Metrics::update`] is called with the [`Snapshot`] the worker
//! publishes after each evaluation, so nothing on the per-event path
//! touches Prometheus.
//!
//! Two kinds of series, two paths. Counters and process gauges (fixed or
//! small label sets) live in the registry. The per-window gauges (scores,
//! states, thresholds, window sizes, health, latency, arms: tens of
//! thousands of series for a hundred models) are written straight into the
//! exposition text from the last evaluation's snapshot, by the first scrape
//! after it, and the scrapes after that share the text until the next
//! evaluation: going through `GaugeVec`s cost a hash of every label set on
//! every update and a protobuf per series on every scrape (measured: 180k
//! series, 1 s per update, 560 ms per scrape; now see `driftd bench`). The
//! text is not built at the evaluation: it would then be held beside the
//! text still being served, and an evaluation each second rebuilt megabytes
//! no scrape read (at 100 models x 50 features, 10 MB: the steady RSS swung
//! by twice that). The text is built whole each time, so series of windows
//! that went away (idle models, removed baselines, arms) simply are not in
//! it; counters of models that went away are removed. Every label value
//! is bounded: model and feature names from baselines, arms under a cap,
//! reasons from fixed lists. No label ever carries a feature value or a
//! request id.

use std::collections::{BTreeMap, HashSet};

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::daemon::snapshot::Snapshot;
use crate::engine::compare::Metric;
use crate::engine::decode::{Issue, RecordKind, Reject, Skip};
use crate::engine::health::HealthReport;
use crate::engine::Published;
use crate::engine::{EngineStats, Report, WindowReport};

/// Scores exported per feature by default: six, to keep the series count of
/// many models x features x arms reasonable (every score is always in
/// /api/v1/drift). Configurable as `[metrics] scores`.
pub const DEFAULT_SCORES: [Metric; 6] = [
    Metric::Psi,
    Metric::JsDistance,
    Metric::Hellinger,
    Metric::Chi2P,
    Metric::Wasserstein,
    Metric::UnseenShare,
];

/// `[metrics]`: which scores become series.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Scores exported per feature (`scores`).
    pub scores: Vec<Metric>,
    /// Export per-arm feature scores and states too (`per_arm_scores`).
    pub per_arm_scores: bool,
}

impl MetricsConfig {
    /// What publishing a model costs outside the engine with this
    /// configuration and `rules` drift rules: per distribution of the
    /// model's window the scores, the unseen share, a state and two
    /// thresholds per rule (and its window size); per arm the divergence
    /// from the control in each score, and with `per_arm_scores` the arm's
    /// own scores and states. Each line is held three times at most: twice
    /// in its family's buffer while it grows (the old and the new
    /// allocation), and once in an older text a slow scrape is still
    /// sending (a scrape drops the text it replaces before it builds the
    /// new one, and the worker drops it at each evaluation). The snapshot's
    /// report entry (name, scores, verdicts) is held by the old and the new
    /// snapshot; three copies cover it too.
    pub fn published(&self, rules: usize) -> Published {
        let scores = self.scores.len();
        let arm_own = if self.per_arm_scores {
            scores + 1 + rules
        } else {
            0
        };
        Published {
            lines_per_distribution: scores + 1 + 3 * rules + 1,
            lines_per_arm_distribution: scores + arm_own,
            // `driftd_feature_drift{arm="",feature="",metric="",model=""}`,
            // the longest metric name, a value of 24 characters: names aside.
            line_bytes: 120,
            // Name, scores, verdicts, and up to three moved bins while drifting.
            report_bytes_per_distribution: 560 + 48 * rules,
            copies: 3,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            scores: DEFAULT_SCORES.to_vec(),
            per_arm_scores: false,
        }
    }
}

/// The engine's series: drift, health, experiments, decoding and
/// evaluation, set from the [`Snapshot`] once per evaluation.
pub struct Metrics {
    scores: Vec<Metric>,
    /// Export every feature's scores and states per arm too (`arm="x"`);
    /// off by default: the arms' windows triple the series, and how arms
    /// differ is in `driftd_arm_divergence`.
    per_arm_scores: bool,
    registry: Registry,
    gauges: Arc<GaugeText>,
    events: IntCounterVec,
    rejected: IntCounterVec,
    skipped: IntCounterVec,
    issues: IntCounterVec,
    late: IntCounter,
    future: IntCounter,
    no_baseline: IntCounter,
    models_refused: IntCounter,
    arms_refused: IntCounter,
    memory_refused: IntCounter,
    memory_reserved: IntGauge,
    memory_limit: IntGauge,
    eval_duration: Histogram,
    transitions: IntCounterVec,
    reloads: IntCounterVec,
    records: IntCounterVec,
    requests: IntCounterVec,
    errors: IntCounterVec,
    batches: IntCounterVec,
    join: IntCounterVec,
    join_waiting: IntGaugeVec,
    labels: IntCounterVec,
    labels_waiting: IntGaugeVec,
    label_sample: prometheus::Gauge,
    refused: IntCounterVec,
    // What was exported last time, to remove the counters of models that
    // went away and to turn cumulative totals into counter increments.
    prev_series: HashSet<(&'static str, Vec<String>)>,
    prev_totals: BTreeMap<(&'static str, Vec<String>), u64>,
    prev_stats: EngineStats,
    prev_reloads: (u64, u64),
    prev_records: [u64; RecordKind::ALL.len()],
    prev_join: crate::engine::experiment::JoinStats,
    prev_labels: crate::engine::quality::LabelStats,
    prev_refused: crate::engine::health::HealthStats,
}

/// The per-window gauges' text: what the last evaluation published, and
/// its text once a scrape has asked for it.
#[derive(Default)]
struct GaugeText {
    latest: RwLock<Latest>,
    /// The text of `latest` (by generation). Held from the first scrape
    /// after an evaluation to the next evaluation; a scrape that builds it
    /// holds the lock meanwhile, so scrapes at once build it once.
    rendered: Mutex<Option<(u64, Arc<[Bytes]>)>>,
}

/// The last evaluation's snapshot, with how its gauges are written.
#[derive(Default, Clone)]
struct Latest {
    generation: u64,
    snapshot: Option<Arc<Snapshot>>,
    scores: Vec<Metric>,
    per_arm: bool,
}

impl GaugeText {
    fn publish(&self, snapshot: &Arc<Snapshot>, scores: &[Metric], per_arm: bool) {
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        *latest = Latest {
            generation: latest.generation.wrapping_add(1),
            snapshot: Some(snapshot.clone()),
            scores: scores.to_vec(),
            per_arm,
        };
        drop(latest);
        // The old text goes now rather than at the next scrape. A scrape
        // building text holds the lock; its text is then of an older
        // generation and is replaced by the next scrape, so the worker
        // never waits for one.
        if let Ok(mut r) = self.rendered.try_lock() {
            *r = None;
        }
    }

    /// The text of the latest snapshot, built if no scrape has built it.
    fn text(&self) -> Arc<[Bytes]> {
        let latest = self
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut r = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((generation, text)) = &*r {
            if *generation == latest.generation {
                return text.clone();
            }
        }
        // Dropped before the new text is built, not after.
        *r = None;
        let text: Arc<[Bytes]> = match &latest.snapshot {
            Some(s) => gauges_text(&s.report, &latest.scores, latest.per_arm).into(),
            None => Arc::from(Vec::new()),
        };
        *r = Some((latest.generation, text.clone()));
        text
    }
}

/// What /metrics serves: the registry, and the gauges of the last
/// evaluation. Cheap to clone (the admin server holds one).
#[derive(Clone)]
pub struct Exposition {
    registry: Registry,
    gauges: Arc<GaugeText>,
}

impl Exposition {
    /// The whole exposition as chunks: the registry's families (rendered
    /// now: counters move between evaluations), then the gauges' text of
    /// the last evaluation, built by the first scrape after it and shared,
    /// not copied, by the scrapes after that. Building it takes tens of
    /// milliseconds for a hundred models: call it off the async runtime.
    pub fn chunks(&self) -> Vec<Bytes> {
        // The registry first: an evaluation publishes its gauges before it
        // moves the counters, so gauges read after the counters are never
        // older than them. Read the other way round, a scrape that built an
        // old evaluation's gauges while a new one landed served that
        // evaluation's counters beside gauges from before it (a test saw
        // every event counted and no baseline loaded).
        let registry = Bytes::from(render(&self.registry));
        let gauges = self.gauges.text();
        let mut out = Vec::with_capacity(gauges.len() + 1);
        out.push(registry);
        out.extend(gauges.iter().cloned());
        out
    }

    /// The whole exposition as one string (tests, the bench).
    pub fn render(&self) -> String {
        let chunks = self.chunks();
        let mut buf = String::with_capacity(chunks.iter().map(Bytes::len).sum());
        for c in &chunks {
            buf.push_str(std::str::from_utf8(c).expect("the exposition is text"));
        }
        buf
    }
}

const JOIN_OUTCOMES: [&str; 10] = [
    "joined",
    "joined_early",
    "duplicate_feedback",
    "duplicate_prediction",
    "pending_evicted",
    "early_evicted",
    "early_expired",
    "late_feedback",
    "refused",
    "before_feedback",
];

const LABEL_OUTCOMES: [&str; 12] = [
    "matched",
    "matched_early",
    "late",
    "orphan",
    "duplicate",
    "unlabelled",
    "evicted_prediction",
    "evicted_label",
    "sampled_out",
    "refused",
    "before_labels",
    "mismatched_kind",
];

const REFUSED: [&str; 5] = ["models", "stages", "batch_stats", "late", "lineages"];

fn int_gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Registers `driftd_build_info{version}`.
pub fn register_build_info(r: &Registry) -> Result<(), prometheus::Error> {
    let g = IntGaugeVec::new(
        Opts::new("driftd_build_info", "driftd build; the value is always 1"),
        &["version"],
    )?;
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    r.register(Box::new(g))
}

impl Metrics {
    pub fn new(r: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            scores: DEFAULT_SCORES.to_vec(),
            per_arm_scores: false,
            registry: r.clone(),
            gauges: Arc::default(),
            events: counter_vec(r, "driftd_events_total", "Inference events counted into windows", &["model"])?,
            rejected: counter_vec(r, "driftd_events_rejected_total", "Lines rejected, by reason", &["reason"])?,
            skipped: counter_vec(r, "driftd_events_skipped_total", "Valid lines no analysis uses, by reason", &["reason"])?,
            issues: counter_vec(r, "driftd_event_field_issues_total", "Accepted events with a field that could not be used, by issue", &["issue"])?,
            late: counter(r, "driftd_late_events_total", "Events older than their window, dropped")?,
            future: counter(r, "driftd_future_events_total", "Events timestamped too far in the future, clamped to arrival time")?,
            no_baseline: counter(r, "driftd_events_without_baseline_total", "Events of models that have no baseline")?,
            models_refused: counter(r, "driftd_models_refused_total", "Events of new models refused because limits.max_models was reached")?,
            arms_refused: counter(r, "driftd_arms_refused_total", "Events of new arms not tracked because limits.max_arms_per_model was reached")?,
            memory_refused: counter(r, "driftd_memory_refused_total", "Lines whose new model, arm, health state, feedback counts or automatic baseline would have passed the memory budget (limits.max_memory): not tracked")?,
            memory_reserved: int_gauge(r, "driftd_memory_reserved_bytes", "Bytes reserved for the engine's state: the bound of every window, health state and join held")?,
            memory_limit: int_gauge(r, "driftd_memory_limit_bytes", "The engine's memory budget: limits.max_memory less the daemon's own buffers")?,
            eval_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "driftd_evaluation_duration_seconds",
                        "Time to score every window and step every verdict",
                    )
                    .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
            transitions: counter_vec(r, "driftd_verdict_transitions_total", "Verdict transitions, by the state entered", &["to"])?,
            reloads: counter_vec(r, "driftd_baseline_reloads_total", "Baseline reloads (file change, SIGHUP, API), by outcome; on error the baselines in force stay", &["outcome"])?,
            records: counter_vec(r, "driftd_records_total", "Non-inference records used by the health and experiment analyses, by kind", &["kind"])?,
            requests: counter_vec(r, "driftd_requests_total", "Requests seen per model: inference records and error records", &["model"])?,
            errors: counter_vec(r, "driftd_errors_total", "Error records per model, by error_type (the first health.max_error_types types, then other)", &["model", "error_type"])?,
            batches: counter_vec(r, "driftd_batches_total", "Batch statistics lines per model", &["model"])?,
            join: counter_vec(r, "driftd_feedback_join_total", "What the feedback join did, by outcome", &["outcome"])?,
            join_waiting: int_gauge_vec(r, "driftd_feedback_join_waiting", "Predictions waiting for feedback, and feedback waiting for its prediction", &["side"])?,
            labels: counter_vec(r, "driftd_label_join_total", "What the label join did, by outcome (quality: ground truth joined to predictions by request id)", &["outcome"])?,
            labels_waiting: int_gauge_vec(r, "driftd_label_join_waiting", "Predictions waiting for their label, and labels waiting for their prediction", &["side"])?,
            label_sample: {
                let g = prometheus::Gauge::new("driftd_label_join_sample_ratio", "Share of requests the label join keeps: 1 until the predictions waiting reach quality.max_pending, then a hash sample (1/2, 1/4 ...) that prediction and label agree on")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            refused: counter_vec(r, "driftd_health_refused_total", "What the health caps refused or dropped, by what", &["what"])?,
            prev_series: HashSet::new(),
            prev_totals: BTreeMap::new(),
            prev_stats: EngineStats::default(),
            prev_reloads: (0, 0),
            prev_records: [0; RecordKind::ALL.len()],
            prev_join: Default::default(),
            prev_labels: Default::default(),
            prev_refused: Default::default(),
        };
        // Fixed label sets exist from the start, so rates work from zero.
        for k in RecordKind::ALL {
            m.records.with_label_values(&[k.as_str()]);
        }
        for r in Reject::ALL {
            m.rejected.with_label_values(&[r.as_str()]);
        }
        for s in Skip::ALL {
            m.skipped.with_label_values(&[s.as_str()]);
        }
        for i in Issue::ALL {
            m.issues.with_label_values(&[i.as_str()]);
        }
        for s in ["pending", "firing", "resolved", "ok"] {
            m.transitions.with_label_values(&[s]);
        }
        for o in ["ok", "error"] {
            m.reloads.with_label_values(&[o]);
        }
        for o in JOIN_OUTCOMES {
            m.join.with_label_values(&[o]);
        }
        for o in LABEL_OUTCOMES {
            m.labels.with_label_values(&[o]);
        }
        m.label_sample.set(1.0);
        for w in REFUSED {
            m.refused.with_label_values(&[w]);
        }
        Ok(m)
    }

    /// Exports these scores (and no others) as `driftd_feature_drift`,
    /// `driftd_prediction_drift` and `driftd_arm_divergence`.
    pub fn with_scores(mut self, scores: Vec<Metric>) -> Metrics {
        self.scores = scores;
        self
    }

    /// Also exports every feature's scores and states per arm.
    pub fn with_per_arm_scores(mut self, on: bool) -> Metrics {
        self.per_arm_scores = on;
        self
    }

    /// The handle /metrics renders from.
    pub fn exposition(&self) -> Exposition {
        Exposition {
            registry: self.registry.clone(),
            gauges: self.gauges.clone(),
        }
    }

    /// The whole exposition as of the last update.
    pub fn render(&self) -> String {
        self.exposition().render()
    }

    /// Sets every series from a snapshot: the counters now, the gauges'
    /// text when a scrape asks for it.
    pub fn update(&mut self, s: &Arc<Snapshot>) {
        self.gauges.publish(s, &self.scores, self.per_arm_scores);
        let mut seen: HashSet<(&'static str, Vec<String>)> = HashSet::new();
        self.update_per_model(&s.report, &mut seen);
        self.update_engine_counters(&s.stats);
        for t in &s.transitions {
            self.transitions.with_label_values(&[t.to.as_str()]).inc();
        }
        let (ok, err) = self.prev_reloads;
        self.reloads
            .with_label_values(&["ok"])
            .inc_by(s.reloads.0.saturating_sub(ok));
        self.reloads
            .with_label_values(&["error"])
            .inc_by(s.reloads.1.saturating_sub(err));
        self.prev_reloads = s.reloads;
        if s.eval_seconds > 0.0 {
            self.eval_duration.observe(s.eval_seconds);
        }
        self.memory_reserved.set(s.memory.0 as i64);
        self.memory_limit.set(s.memory.1.map_or(-1, |l| l as i64));
        self.update_join(&s.report);
        self.update_labels(&s.report);
        self.update_health_refused(&s.report.health_stats);
        self.remove_gone(seen);
    }

    /// Counters per model (events, requests, errors, batches), from the
    /// report's cumulative totals.
    fn update_per_model(&mut self, r: &Report, seen: &mut HashSet<(&'static str, Vec<String>)>) {
        let totals = &mut self.prev_totals;
        for m in &r.models {
            inc_to(seen, totals, &self.events, "events", &[&m.model], m.events);
        }
        for h in &r.health {
            let model = h.model.as_str();
            inc_to(
                seen,
                totals,
                &self.requests,
                "requests",
                &[model],
                h.requests_total,
            );
            for (ty, n) in &h.errors_by_type {
                inc_to(seen, totals, &self.errors, "errors", &[model, ty], *n);
            }
            if let Some(b) = &h.batch {
                inc_to(seen, totals, &self.batches, "batches", &[model], b.batches);
            }
        }
    }

    /// Decoding and engine counters: increments since the last snapshot.
    fn update_engine_counters(&mut self, st: &EngineStats) {
        let p = &self.prev_stats;
        for r in Reject::ALL {
            let i = r as usize;
            self.rejected
                .with_label_values(&[r.as_str()])
                .inc_by(st.decode.rejected[i].saturating_sub(p.decode.rejected[i]));
        }
        for k in Skip::ALL {
            let i = k as usize;
            self.skipped
                .with_label_values(&[k.as_str()])
                .inc_by(st.decode.skipped[i].saturating_sub(p.decode.skipped[i]));
        }
        for k in Issue::ALL {
            let i = k as usize;
            self.issues
                .with_label_values(&[k.as_str()])
                .inc_by(st.decode.issues[i].saturating_sub(p.decode.issues[i]));
        }
        for k in RecordKind::ALL {
            let i = k as usize;
            self.records
                .with_label_values(&[k.as_str()])
                .inc_by(st.decode.records[i].saturating_sub(self.prev_records[i]));
        }
        self.prev_records = st.decode.records;
        self.late.inc_by(st.late.saturating_sub(p.late));
        self.future
            .inc_by(st.future_clamped.saturating_sub(p.future_clamped));
        self.no_baseline
            .inc_by(st.no_baseline.saturating_sub(p.no_baseline));
        self.models_refused
            .inc_by(st.models_refused.saturating_sub(p.models_refused));
        self.arms_refused
            .inc_by(st.arms_refused.saturating_sub(p.arms_refused));
        self.memory_refused
            .inc_by(st.memory_refused.saturating_sub(p.memory_refused));
        self.prev_stats = st.clone();
    }

    /// What the label join did, what waits in it, and its sample.
    fn update_labels(&mut self, r: &Report) {
        let (j, pj) = (&r.label_stats, &self.prev_labels);
        for (o, now, before) in [
            ("matched", j.matched, pj.matched),
            ("matched_early", j.matched_early, pj.matched_early),
            ("late", j.late, pj.late),
            ("orphan", j.orphan, pj.orphan),
            ("duplicate", j.duplicate, pj.duplicate),
            ("unlabelled", j.unlabelled, pj.unlabelled),
            (
                "evicted_prediction",
                j.evicted_predictions,
                pj.evicted_predictions,
            ),
            ("evicted_label", j.evicted_labels, pj.evicted_labels),
            ("sampled_out", j.sampled_out, pj.sampled_out),
            ("refused", j.refused, pj.refused),
            ("before_labels", j.before_labels, pj.before_labels),
            ("mismatched_kind", j.mismatched_kind, pj.mismatched_kind),
        ] {
            self.labels
                .with_label_values(&[o])
                .inc_by(now.saturating_sub(before));
        }
        self.prev_labels = j.clone();
        let (preds, labels) = r.label_waiting;
        self.labels_waiting
            .with_label_values(&["predictions"])
            .set(preds as i64);
        self.labels_waiting
            .with_label_values(&["labels"])
            .set(labels as i64);
        self.label_sample.set(r.label_sample_rate);
    }

    /// What the feedback join did, and what waits in it.
    fn update_join(&mut self, r: &Report) {
        let j = &r.join_stats;
        let pj = &self.prev_join;
        for (o, now, before) in [
            ("joined", j.joined, pj.joined),
            ("joined_early", j.joined_early, pj.joined_early),
            (
                "duplicate_feedback",
                j.duplicate_feedback,
                pj.duplicate_feedback,
            ),
            (
                "duplicate_prediction",
                j.duplicate_predictions,
                pj.duplicate_predictions,
            ),
            ("pending_evicted", j.pending_evicted, pj.pending_evicted),
            ("early_evicted", j.early_evicted, pj.early_evicted),
            ("early_expired", j.early_expired, pj.early_expired),
            ("late_feedback", j.late_feedback, pj.late_feedback),
            ("refused", j.refused, pj.refused),
            ("before_feedback", j.before_feedback, pj.before_feedback),
        ] {
            self.join
                .with_label_values(&[o])
                .inc_by(now.saturating_sub(before));
        }
        self.prev_join = j.clone();
        self.join_waiting
            .with_label_values(&["predictions"])
            .set(r.join_waiting.0 as i64);
        self.join_waiting
            .with_label_values(&["feedback"])
            .set(r.join_waiting.1 as i64);
    }

    /// What the health caps refused.
    fn update_health_refused(&mut self, hs: &crate::engine::health::HealthStats) {
        let ph = &self.prev_refused;
        for (w, now, before) in [
            ("models", hs.models_refused, ph.models_refused),
            ("stages", hs.stages_refused, ph.stages_refused),
            (
                "batch_stats",
                hs.batch_stats_refused,
                ph.batch_stats_refused,
            ),
            ("late", hs.late, ph.late),
            ("lineages", hs.lineages_refused, ph.lineages_refused),
        ] {
            self.refused
                .with_label_values(&[w])
                .inc_by(now.saturating_sub(before));
        }
        self.prev_refused = hs.clone();
    }

    /// Removes the counters of models that went away.
    fn remove_gone(&mut self, seen: HashSet<(&'static str, Vec<String>)>) {
        for (family, labels) in self.prev_series.difference(&seen) {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.prev_totals.remove(&(*family, labels.clone()));
            let _ = match *family {
                "events" => self.events.remove_label_values(&l),
                "requests" => self.requests.remove_label_values(&l),
                "errors" => self.errors.remove_label_values(&l),
                _ => self.batches.remove_label_values(&l),
            };
        }
        self.prev_series = seen;
    }
}

/// Advances a counter to a cumulative total (the engine counts; the
/// exporter turns totals into increments).
fn inc_to(
    seen: &mut HashSet<(&'static str, Vec<String>)>,
    prev: &mut BTreeMap<(&'static str, Vec<String>), u64>,
    c: &IntCounterVec,
    family: &'static str,
    labels: &[&str],
    total: u64,
) {
    let key = (
        family,
        labels.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
    );
    let before = prev.insert(key.clone(), total).unwrap_or(0);
    c.with_label_values(labels)
        .inc_by(total.saturating_sub(before));
    seen.insert(key);
}

/// One gauge family being written: its samples, then HELP and TYPE when it
/// is emitted (families without samples are left out, like the registry's).
struct Family {
    name: &'static str,
    /// The family's HELP and TYPE lines, then its samples: handed over
    /// whole as one chunk of the exposition, never copied.
    body: String,
    header: usize,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        let mut body = String::new();
        let _ = writeln!(body, "# HELP {name} {help}");
        let _ = writeln!(body, "# TYPE {name} gauge");
        Family {
            name,
            header: body.len(),
            body,
        }
    }

    /// Labels must be given sorted by name (the registry's order).
    fn sample(&mut self, labels: &[(&str, &str)], v: f64) {
        self.body.push_str(self.name);
        if !labels.is_empty() {
            self.body.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.body.push(',');
                }
                self.body.push_str(k);
                self.body.push_str("=\"");
                escape_label(&mut self.body, val);
                self.body.push('"');
            }
            self.body.push('}');
        }
        self.body.push(' ');
        push_value(&mut self.body, v);
        self.body.push('\n');
    }

    /// The family as a chunk of the exposition; none without samples.
    fn emit(self, out: &mut Vec<Bytes>) {
        if self.body.len() > self.header {
            out.push(Bytes::from(self.body));
        }
    }
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// The per-window gauges of one evaluation, as exposition text.
/// The per-window gauges as chunks of the exposition, one per family: each
/// family's text is built once and served as it is, so an evaluation holds
/// the new text and the one still served, and nothing more (a thousand
/// models make 40 MB of it).
fn gauges_text(r: &Report, scores: &[Metric], per_arm: bool) -> Vec<Bytes> {
    let mut feature = Family::new("driftd_feature_drift", "Drift score of an input feature's window against its baseline (arm=\"\" is the whole model; latency stages are features latency.<stage>)");
    let mut prediction = Family::new(
        "driftd_prediction_drift",
        "Drift score of the predicted class (or output) distribution against its baseline",
    );
    let mut threshold = Family::new(
        "driftd_drift_threshold",
        "Threshold in use for a metric and severity",
    );
    let mut state = Family::new(
        "driftd_drift_state",
        "Verdict state: 0 ok, 1 pending, 2 firing",
    );
    let mut samples = Family::new("driftd_window_samples", "Events in the current window");
    let mut unseen = Family::new(
        "driftd_unseen_share",
        "Share of the window in values the baseline never saw (underflow, overflow, __other__)",
    );
    let mut info = Family::new(
        "driftd_baseline_info",
        "Baseline loaded for a model; the value is always 1",
    );
    let mut divergence = Family::new(
        "driftd_arm_divergence",
        "Divergence of a variant arm's window (arm_b) from the control arm's (arm_a)",
    );
    for m in &r.models {
        let model = m.model.as_str();
        let mut windows: Vec<(&str, &WindowReport, bool)> = vec![("", &m.all, true)];
        if let Some(l) = &m.latency {
            // Stage distributions of the model's window; their size is
            // driftd_latency_window_samples.
            windows.push(("", l, false));
        }
        for (arm, w) in &m.arms {
            samples.sample(&[("arm", arm), ("model", model)], w.samples as f64);
            if per_arm {
                windows.push((arm, w, false));
            }
        }
        for (arm, w, with_samples) in windows {
            if with_samples {
                samples.sample(&[("arm", arm), ("model", model)], w.samples as f64);
            }
            for f in &w.features {
                if let Some(x) = f.metrics.metric(Metric::UnseenShare) {
                    unseen.sample(&[("arm", arm), ("feature", &f.name), ("model", model)], x);
                }
                for metric in scores {
                    if let Some(x) = f.metrics.metric(*metric) {
                        feature.sample(
                            &[
                                ("arm", arm),
                                ("feature", &f.name),
                                ("metric", metric.name()),
                                ("model", model),
                            ],
                            x,
                        );
                    }
                }
            }
            if let Some(p) = &w.prediction {
                for metric in scores {
                    if let Some(x) = p.metrics.metric(*metric) {
                        prediction.sample(
                            &[("arm", arm), ("metric", metric.name()), ("model", model)],
                            x,
                        );
                    }
                }
            }
            for f in w.distributions() {
                for v in &f.verdicts {
                    state.sample(
                        &[
                            ("arm", arm),
                            ("feature", &f.name),
                            ("metric", v.metric.name()),
                            ("model", model),
                        ],
                        v.state.gauge() as f64,
                    );
                    if arm.is_empty() {
                        for (sev, t) in [("critical", v.critical), ("warning", v.warning)] {
                            threshold.sample(
                                &[
                                    ("feature", &f.name),
                                    ("metric", v.metric.name()),
                                    ("model", model),
                                    ("severity", sev),
                                ],
                                t,
                            );
                        }
                    }
                }
            }
        }
        info.sample(&[("model", model), ("version", &m.baseline_version)], 1.0);
        for div in &m.arm_divergence {
            for metric in scores {
                if let Some(x) = div.metrics.metric(*metric) {
                    divergence.sample(
                        &[
                            ("arm_a", &div.arm_a),
                            ("arm_b", &div.arm_b),
                            ("feature", &div.feature),
                            ("metric", metric.name()),
                            ("model", model),
                        ],
                        x,
                    );
                }
            }
        }
    }
    let mut out = Vec::new();
    for f in [
        feature, prediction, threshold, state, samples, unseen, info, divergence,
    ] {
        f.emit(&mut out);
    }
    health_text(r, &mut out);
    quality_text(r, &mut out);
    out
}

/// Realized and estimated quality per (model, arm); `arm=""` is the model
/// as a whole. Class names come from the baseline's bounded class set.
fn quality_text(r: &Report, out: &mut Vec<Bytes>) {
    let mut labelled = Family::new("driftd_quality_labelled_predictions", "Predictions in the quality window (quality.window, by prediction time) joined to their label");
    let mut coverage = Family::new("driftd_quality_label_coverage_ratio", "Share of the quality window's predictions with a request id that have their label (within the join's sample)");
    let mut accuracy = Family::new(
        "driftd_quality_accuracy_ratio",
        "Realized accuracy of the labelled predictions in the quality window",
    );
    let mut recent = Family::new("driftd_quality_recent_accuracy_ratio", "Realized accuracy of the newest labelled predictions adding up to quality.min_labels (what AccuracyDrop judges)");
    let mut precision = Family::new(
        "driftd_quality_precision_ratio",
        "Realized precision per class (the baseline's classes) in the quality window",
    );
    let mut recall = Family::new(
        "driftd_quality_recall_ratio",
        "Realized recall per class (the baseline's classes) in the quality window",
    );
    let mut mae = Family::new("driftd_quality_mean_absolute_error", "Realized mean absolute error of a regression's labelled predictions, in the prediction's unit");
    let mut rmse = Family::new("driftd_quality_root_mean_squared_error", "Realized root mean squared error of a regression's labelled predictions, in the prediction's unit");
    let mut ece = Family::new("driftd_quality_calibration_error_ratio", "Expected calibration error (10 equal-width confidence bins) of the labelled predictions (of=\"window\") and of the labelled reference (of=\"reference\")");
    let mut estimated = Family::new("driftd_quality_estimated_accuracy_ratio", "Accuracy estimated without labels from the drift window's confidences (CBPE), with its interval (bound=\"lower\"/\"upper\", quality.interval)");
    let mut reference = Family::new("driftd_quality_reference_accuracy_ratio", "The baseline's accuracy: realized on its labelled reference (kind=\"realized\"), and the estimate applied to its confidences (kind=\"estimated\", what EstimatedAccuracyDrop compares with)");
    let mut calibrated = Family::new("driftd_quality_estimate_calibrated", "1 when the estimate's confidences are calibrated by a labelled reference, 0 when they are raw");
    let mut state = Family::new(
        "driftd_quality_state",
        "State of AccuracyDrop and EstimatedAccuracyDrop: 0 ok, 1 pending, 2 firing",
    );
    for q in &r.quality {
        let (m, arm) = (q.model.as_str(), q.arm.as_deref().unwrap_or(""));
        let base = [("arm", arm), ("model", m)];
        labelled.sample(&base, q.labelled as f64);
        if q.predictions > 0 {
            coverage.sample(&base, (q.labelled as f64 / q.predictions as f64).min(1.0));
        }
        let put = |f: &mut Family, v: Option<f64>| {
            if let Some(v) = v {
                f.sample(&base, v);
            }
        };
        put(&mut accuracy, q.accuracy);
        put(&mut recent, q.recent.map(|x| x.accuracy));
        put(&mut mae, q.mae);
        put(&mut rmse, q.rmse);
        for c in &q.classes {
            let l = [("arm", arm), ("class", c.class.as_str()), ("model", m)];
            if let Some(v) = c.precision {
                precision.sample(&l, v);
            }
            if let Some(v) = c.recall {
                recall.sample(&l, v);
            }
        }
        if let Some(v) = q.ece {
            ece.sample(&[("arm", arm), ("model", m), ("of", "window")], v);
        }
        if let Some(e) = q.estimate {
            for (bound, v) in [
                ("estimate", e.accuracy),
                ("lower", e.lower),
                ("upper", e.upper),
            ] {
                estimated.sample(&[("arm", arm), ("bound", bound), ("model", m)], v);
            }
            calibrated.sample(&base, f64::from(u8::from(e.calibrated)));
        }
        if q.arm.is_none() {
            if let Some(x) = q.reference {
                for (kind, v) in [("estimated", x.estimated), ("realized", x.accuracy)] {
                    if let Some(v) = v {
                        reference.sample(&[("kind", kind), ("model", m)], v);
                    }
                }
                if let Some(v) = x.ece {
                    ece.sample(&[("arm", ""), ("model", m), ("of", "reference")], v);
                }
            }
        }
        for (name, s) in [
            (crate::engine::quality::ACCURACY_DROP, q.accuracy_drop),
            (
                crate::engine::quality::ESTIMATED_ACCURACY_DROP,
                q.estimated_accuracy_drop,
            ),
        ] {
            state.sample(
                &[("arm", arm), ("condition", name), ("model", m)],
                s.gauge() as f64,
            );
        }
    }
    for f in [
        labelled, coverage, accuracy, recent, precision, recall, mae, rmse, ece, estimated,
        reference, calibrated, state,
    ] {
        f.emit(out);
    }
}

/// The health and experiment gauges.
fn health_text(r: &Report, out: &mut Vec<Bytes>) {
    let mut error_rate = Family::new(
        "driftd_error_rate",
        "Share of the window's requests (inference and ERROR/CRITICAL records) that are errors",
    );
    let mut reference = Family::new("driftd_error_rate_reference", "The model's error rate over the windows before the current one (the reference of ErrorRateHigh)");
    let mut first_seen = Family::new("driftd_model_first_seen_timestamp_seconds", "Event time a model version was first seen, per service (a deploy when a lineage gains a version)");
    let mut condition = Family::new(
        "driftd_health_state",
        "State of a health condition (named as driftd's alert for it): 0 ok, 1 pending, 2 firing",
    );
    let mut latency = Family::new(
        "driftd_latency_seconds",
        "Window percentile of a stage's latency (DDSketch, 1% relative error)",
    );
    let mut latency_samples = Family::new(
        "driftd_latency_window_samples",
        "Latency values of a stage in the window",
    );
    let mut batch_stat = Family::new(
        "driftd_batch_stat",
        "Latest value of a batch statistics line's input_stats entry",
    );
    let mut batch_shift = Family::new(
        "driftd_batch_stat_shift",
        "A <feature>_mean batch statistic minus the baseline mean, in baseline standard deviations",
    );
    let mut batch_conf = Family::new(
        "driftd_batch_avg_confidence",
        "Latest avg_confidence of a batch statistics line",
    );
    let mut arm_predictions = Family::new(
        "driftd_arm_window_predictions",
        "Predictions with a request id in the window, per arm (the feedback rate's denominator)",
    );
    let mut feedback = Family::new(
        "driftd_feedback_rate",
        "Share of the window's predictions that got feedback (action=\"any\") or a given action",
    );
    let mut feedback_p = Family::new(
        "driftd_arm_feedback_p_value",
        "Two-sided two-proportion test of a variant's feedback rate against the control's",
    );
    for h in &r.health {
        health_model(
            h,
            &mut error_rate,
            &mut reference,
            &mut condition,
            &mut latency,
            &mut latency_samples,
            &mut batch_stat,
            &mut batch_shift,
            &mut batch_conf,
        );
    }
    for (service, model, t) in &r.versions {
        first_seen.sample(
            &[("model", model), ("service", service)],
            *t as f64 / 1000.0,
        );
    }
    for a in &r.experiments.arms {
        arm_predictions.sample(
            &[("arm", &a.arm), ("model", &a.model)],
            a.predictions as f64,
        );
        if a.predictions == 0 {
            continue;
        }
        for (action, n) in &a.feedback {
            feedback.sample(
                &[("action", action), ("arm", &a.arm), ("model", &a.model)],
                *n as f64 / a.predictions as f64,
            );
        }
    }
    for c in &r.experiments.comparisons {
        if let Some(p) = c.p_value {
            feedback_p.sample(
                &[
                    ("action", &c.action),
                    ("arm_a", &c.control),
                    ("arm_b", &c.variant),
                    ("model", &c.model),
                ],
                p,
            );
        }
    }
    for f in [
        error_rate,
        reference,
        first_seen,
        condition,
        latency,
        latency_samples,
        batch_stat,
        batch_shift,
        batch_conf,
        arm_predictions,
        feedback,
        feedback_p,
    ] {
        f.emit(out);
    }
}

#[allow(clippy::too_many_arguments)]
fn health_model(
    h: &HealthReport,
    error_rate: &mut Family,
    reference: &mut Family,
    condition: &mut Family,
    latency: &mut Family,
    latency_samples: &mut Family,
    batch_stat: &mut Family,
    batch_shift: &mut Family,
    batch_conf: &mut Family,
) {
    let model = h.model.as_str();
    if let Some(x) = h.error_rate {
        error_rate.sample(&[("model", model)], x);
    }
    if let Some(x) = h.reference_error_rate {
        reference.sample(&[("model", model)], x);
    }
    for (name, feature, st) in &h.conditions {
        condition.sample(
            &[("condition", name), ("feature", feature), ("model", model)],
            st.gauge() as f64,
        );
    }
    for st in &h.latency {
        latency_samples.sample(&[("model", model), ("stage", &st.stage)], st.samples as f64);
        for (q, v) in [("50", st.p50_ms), ("90", st.p90_ms), ("99", st.p99_ms)] {
            if let Some(v) = v {
                latency.sample(
                    &[("model", model), ("percentile", q), ("stage", &st.stage)],
                    v / 1000.0,
                );
            }
        }
    }
    if let Some(b) = &h.batch {
        if let Some(c) = b.avg_confidence {
            batch_conf.sample(&[("model", model)], c);
        }
        for (k, v) in &b.stats {
            batch_stat.sample(&[("model", model), ("stat", k)], *v);
        }
        for (k, v) in &b.shifts {
            batch_shift.sample(&[("model", model), ("stat", k)], *v);
        }
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render(r: &Registry) -> String {
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&r.gather(), &mut buf) {
        tracing::error!(error = %e, "could not encode metrics");
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig};

    fn snapshot_for(lines: &[String], engine: &mut Engine) -> Snapshot {
        for l in lines {
            engine.ingest(l.as_bytes(), 1_000);
        }
        let transitions = engine.evaluate(1_000);
        Snapshot {
            at_ms: 1_000,
            report: engine.report(),
            stats: engine.stats.clone(),
            transitions,
            ..Snapshot::default()
        }
    }

    /// An engine that learns model `m`'s baseline from its first 100 of
    /// these 300 lines.
    fn one_model() -> (Engine, Vec<String>) {
        let cfg = EngineConfig {
            auto_baseline: Some(crate::engine::AutoBaseline { after_events: 100 }),
            ..EngineConfig::default()
        };
        let lines = (0..300)
            .map(|i| format!(r#"{{"model_id":"m","prediction":"a","timestamp":1,"input_features":{{"x":{}}}}}"#, i % 7))
            .collect();
        (Engine::new(cfg, vec![]), lines)
    }

    /// The snapshot once every model has gone idle and been dropped.
    fn after_idle(engine: &mut Engine) -> Arc<Snapshot> {
        engine.expire_idle(10_000_000, 1);
        Arc::new(Snapshot {
            report: engine.report(),
            stats: engine.stats.clone(),
            ..Snapshot::default()
        })
    }

    #[test]
    fn the_first_scrape_builds_the_gauges_and_the_next_evaluation_drops_them() {
        let (mut engine, lines) = one_model();
        let reg = Registry::new();
        let mut m = Metrics::new(&reg).unwrap();
        let built = |m: &Metrics| m.gauges.rendered.lock().unwrap().is_some();
        m.update(&Arc::new(snapshot_for(&lines, &mut engine)));
        assert!(!built(&m), "an evaluation builds no text");
        let (a, b) = (m.exposition().chunks(), m.exposition().chunks());
        assert!(built(&m));
        assert!(a.len() > 2 && a.len() == b.len());
        // The registry's chunk is rendered per scrape; the gauges' are one
        // text, shared.
        for (x, y) in a[1..].iter().zip(&b[1..]) {
            assert_eq!(x.as_ptr(), y.as_ptr());
        }
        drop((a, b));
        m.update(&after_idle(&mut engine));
        assert!(!built(&m), "the evaluation dropped the old text");
        let text = m.render();
        assert!(!text.contains("driftd_feature_drift{"), "{text}");
    }

    #[test]
    fn series_appear_and_go_away_with_their_model() {
        let (mut engine, lines) = one_model();
        let reg = Registry::new();
        let mut m = Metrics::new(&reg).unwrap();
        let s = Arc::new(snapshot_for(&lines, &mut engine));
        m.update(&s);
        let text = m.render();
        assert!(
            text.contains(r#"driftd_feature_drift{arm="",feature="x",metric="psi",model="m"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"driftd_events_total{model="m"} 200"#),
            "{text}"
        );
        assert!(
            text.contains(r#"driftd_window_samples{arm="",model="m"} 200"#),
            "{text}"
        );
        assert!(text.contains(r#"metric="js_distance""#), "a default score");
        assert!(!text.contains(r#"metric="kl""#), "not exported by default");
        // A narrower list exports only what it names.
        let reg2 = Registry::new();
        let mut only_psi = Metrics::new(&reg2).unwrap().with_scores(vec![Metric::Psi]);
        only_psi.update(&s);
        let text2 = only_psi.render();
        assert!(
            text2.contains(r#"driftd_feature_drift{arm="",feature="x",metric="psi",model="m"}"#)
        );
        assert!(
            !text2.contains(r#"driftd_feature_drift{arm="",feature="x",metric="js_distance""#),
            "{text2}"
        );
        assert!(
            text2.contains("driftd_unseen_share{"),
            "unseen share is its own series"
        );
        m.update(&after_idle(&mut engine));
        let text = m.render();
        assert!(!text.contains(r#"model="m""#), "{text}");
        assert!(!text.contains("driftd_feature_drift{"), "{text}");
        assert!(!text.contains("driftd_window_samples{"), "{text}");
    }

    /// What the daemon reserves for publishing a model covers what the
    /// exposition really holds for it: the sample baselines over the
    /// drifted sample, with arms, every score and per-arm scores exported.
    #[test]
    fn published_cost_covers_each_models_series() {
        use crate::engine::baseline::{load_dir, Layout};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples");
        let baselines: Vec<_> = load_dir(&root.join("baselines"))
            .unwrap()
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        for per_arm_scores in [false, true] {
            let mc = MetricsConfig {
                scores: Metric::ALL.to_vec(),
                per_arm_scores,
            };
            let cfg = EngineConfig::default();
            let published = mc.published(cfg.detect.rules.len());
            let mut engine = Engine::new(cfg.clone(), baselines.clone());
            let text = std::fs::read_to_string(root.join("drifted.jsonl")).unwrap();
            let lines: Vec<String> = text.lines().take(20_000).map(str::to_owned).collect();
            for l in &lines {
                engine.ingest(l.as_bytes(), i64::MAX / 4);
            }
            let report = engine.summary(per_arm_scores);
            let body: String = gauges_text(&report, &mc.scores, per_arm_scores)
                .iter()
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            for b in &baselines {
                let m = report.models.iter().find(|m| m.model == b.model).unwrap();
                let label = format!("model=\"{}\"", b.model);
                let held: usize = body
                    .lines()
                    .filter(|l| l.contains(&label))
                    .map(|l| l.len() + 1)
                    .sum();
                assert!(
                    held > 0 && !m.arms.is_empty(),
                    "{}: a model with arms and series",
                    b.model
                );
                let layout = Layout::new(b.clone());
                // The lines alone, without the report entries.
                let with = EngineConfig {
                    published: Published {
                        report_bytes_per_distribution: 0,
                        ..published
                    },
                    ..cfg.clone()
                };
                let reserved = (with.model_bytes(&layout) - cfg.model_bytes(&layout))
                    + m.arms.len() * (with.arm_bytes(&layout) - cfg.arm_bytes(&layout));
                assert!(
                    held * published.copies <= reserved,
                    "{}: {held} B of series ({} arms), reserved {reserved} for {} copies",
                    b.model,
                    m.arms.len(),
                    published.copies
                );
            }
        }
    }
}
