//! Metrics: the Prometheus series driftd exports, updated once per evaluation.
//!
//! This module owns every series name and label set. One registry is passed
//! in (no globals); [`Metrics::update`] sets the gauges from a [`Snapshot`]
//! the consumer loop publishes after each evaluation, so nothing on the
//! per-event path touches Prometheus. Series of windows that went away
//! (idle models, removed baselines, arms) are removed, and every label value
//! is bounded: model and feature names from baselines, arms under a cap,
//! reasons from fixed lists. No label ever carries a feature value or a
//! request id.

use std::collections::{BTreeMap, HashSet};

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

use crate::compare::Metric;
use crate::decode::{Issue, RecordKind, Reject, Skip};
use crate::detect::Transition;
use crate::engine::{EngineStats, Report, WindowReport};

/// What the consumer loop knows after an evaluation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub at_ms: i64,
    pub report: Report,
    pub stats: EngineStats,
    /// (topic, partition, lag in messages) from librdkafka statistics.
    pub lag: Vec<(String, i32, i64)>,
    pub assigned_partitions: usize,
    pub messages: u64,
    pub eval_seconds: f64,
    pub transitions: Vec<Transition>,
    pub checkpoints_ok: u64,
    pub checkpoints_failed: u64,
    pub last_checkpoint_ms: Option<i64>,
}

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

/// Every driftd series.
pub struct Metrics {
    scores: Vec<Metric>,
    feature_drift: GaugeVec,
    prediction_drift: GaugeVec,
    threshold: GaugeVec,
    state: IntGaugeVec,
    window_samples: IntGaugeVec,
    unseen_share: GaugeVec,
    events: IntCounterVec,
    rejected: IntCounterVec,
    skipped: IntCounterVec,
    issues: IntCounterVec,
    late: IntCounter,
    future: IntCounter,
    no_baseline: IntCounter,
    models_refused: IntCounter,
    arms_refused: IntCounter,
    lag: IntGaugeVec,
    assigned: IntGauge,
    messages: IntCounter,
    eval_duration: Histogram,
    baseline_info: IntGaugeVec,
    transitions: IntCounterVec,
    checkpoints: IntCounterVec,
    last_checkpoint: Gauge,
    records: IntCounterVec,
    health: HealthMetrics,
    // What was exported last time, to remove series that went away and to
    // turn cumulative totals into counter increments.
    prev_series: HashSet<(&'static str, Vec<String>)>,
    prev_events: BTreeMap<String, u64>,
    prev_stats: EngineStats,
    prev_messages: u64,
    prev_checkpoints: (u64, u64),
    prev_records: [u64; RecordKind::ALL.len()],
}

/// The series of the health and experiment analyses.
struct HealthMetrics {
    error_rate: GaugeVec,
    error_rate_reference: GaugeVec,
    requests: IntCounterVec,
    errors: IntCounterVec,
    first_seen: GaugeVec,
    condition: IntGaugeVec,
    latency: GaugeVec,
    latency_samples: IntGaugeVec,
    batch_stat: GaugeVec,
    batch_shift: GaugeVec,
    batch_confidence: GaugeVec,
    batches: IntCounterVec,
    arm_divergence: GaugeVec,
    arm_predictions: IntGaugeVec,
    feedback_rate: GaugeVec,
    feedback_p: GaugeVec,
    join: IntCounterVec,
    join_waiting: IntGaugeVec,
    refused: IntCounterVec,
    prev_totals: BTreeMap<(&'static str, Vec<String>), u64>,
    prev_join: crate::experiment::JoinStats,
    prev_refused: crate::health::HealthStats,
}

impl HealthMetrics {
    fn new(r: &Registry) -> Result<HealthMetrics, prometheus::Error> {
        let h = HealthMetrics {
            error_rate: gauge_vec(r, "driftd_error_rate", "Share of the window's requests (inference and ERROR/CRITICAL records) that are errors", &["model"])?,
            error_rate_reference: gauge_vec(r, "driftd_error_rate_reference", "The model's error rate over the windows before the current one (the reference of ErrorRateHigh)", &["model"])?,
            requests: counter_vec(r, "driftd_requests_total", "Requests seen per model: inference records and error records", &["model"])?,
            errors: counter_vec(r, "driftd_errors_total", "Error records per model, by error_type (the first health.max_error_types types, then other)", &["model", "error_type"])?,
            first_seen: gauge_vec(r, "driftd_model_first_seen_timestamp_seconds", "Event time a model version was first seen, per service (a deploy when a lineage gains a version)", &["service", "model"])?,
            condition: int_gauge_vec(r, "driftd_health_state", "State of a health or experiment condition (named as driftd's alert for it): 0 ok, 1 pending, 2 firing", &["model", "condition", "feature"])?,
            latency: gauge_vec(r, "driftd_latency_seconds", "Window percentile of a stage's latency (DDSketch, 1% relative error)", &["model", "stage", "percentile"])?,
            latency_samples: int_gauge_vec(r, "driftd_latency_window_samples", "Latency values of a stage in the window", &["model", "stage"])?,
            batch_stat: gauge_vec(r, "driftd_batch_stat", "Latest value of a batch statistics line's input_stats entry", &["model", "stat"])?,
            batch_shift: gauge_vec(r, "driftd_batch_stat_shift", "A <feature>_mean batch statistic minus the baseline mean, in baseline standard deviations", &["model", "stat"])?,
            batch_confidence: gauge_vec(r, "driftd_batch_avg_confidence", "Latest avg_confidence of a batch statistics line", &["model"])?,
            batches: counter_vec(r, "driftd_batches_total", "Batch statistics lines per model", &["model"])?,
            arm_divergence: gauge_vec(r, "driftd_arm_divergence", "Divergence of a variant arm's window (arm_b) from the control arm's (arm_a)", &["model", "arm_a", "arm_b", "feature", "metric"])?,
            arm_predictions: int_gauge_vec(r, "driftd_arm_window_predictions", "Predictions with a request id in the window, per arm (the feedback rate's denominator)", &["model", "arm"])?,
            feedback_rate: gauge_vec(r, "driftd_feedback_rate", "Share of the window's predictions that got feedback (action=\"any\") or a given action", &["model", "arm", "action"])?,
            feedback_p: gauge_vec(r, "driftd_arm_feedback_p_value", "Two-sided two-proportion test of a variant's feedback rate against the control's", &["model", "arm_a", "arm_b", "action"])?,
            join: counter_vec(r, "driftd_feedback_join_total", "What the feedback join did, by outcome", &["outcome"])?,
            join_waiting: int_gauge_vec(r, "driftd_feedback_join_waiting", "Predictions waiting for feedback, and feedback waiting for its prediction", &["side"])?,
            refused: counter_vec(r, "driftd_health_refused_total", "What the health caps refused or dropped, by what", &["what"])?,
            prev_totals: BTreeMap::new(),
            prev_join: Default::default(),
            prev_refused: Default::default(),
        };
        for o in JOIN_OUTCOMES {
            h.join.with_label_values(&[o]);
        }
        for w in REFUSED {
            h.refused.with_label_values(&[w]);
        }
        Ok(h)
    }
}

const JOIN_OUTCOMES: [&str; 9] = [
    "joined",
    "joined_early",
    "duplicate_feedback",
    "duplicate_prediction",
    "pending_evicted",
    "early_evicted",
    "early_expired",
    "late_feedback",
    "refused",
];

const REFUSED: [&str; 5] = ["models", "stages", "batch_stats", "late", "lineages"];

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

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
            feature_drift: gauge_vec(
                r,
                "driftd_feature_drift",
                "Drift score of an input feature's window against its baseline (arm=\"\" is the whole model)",
                &["model", "arm", "feature", "metric"],
            )?,
            prediction_drift: gauge_vec(
                r,
                "driftd_prediction_drift",
                "Drift score of the predicted class (or output) distribution against its baseline",
                &["model", "arm", "metric"],
            )?,
            threshold: gauge_vec(
                r,
                "driftd_drift_threshold",
                "Threshold in use for a metric and severity",
                &["model", "feature", "metric", "severity"],
            )?,
            state: int_gauge_vec(
                r,
                "driftd_drift_state",
                "Verdict state: 0 ok, 1 pending, 2 firing",
                &["model", "arm", "feature", "metric"],
            )?,
            window_samples: int_gauge_vec(
                r,
                "driftd_window_samples",
                "Events in the current window",
                &["model", "arm"],
            )?,
            unseen_share: gauge_vec(
                r,
                "driftd_unseen_share",
                "Share of the window in values the baseline never saw (underflow, overflow, __other__)",
                &["model", "arm", "feature"],
            )?,
            events: counter_vec(
                r,
                "driftd_events_total",
                "Inference events counted into windows",
                &["model"],
            )?,
            rejected: counter_vec(
                r,
                "driftd_events_rejected_total",
                "Lines rejected, by reason",
                &["reason"],
            )?,
            skipped: counter_vec(
                r,
                "driftd_events_skipped_total",
                "Valid lines that are not inference records (timing, feedback, ...), by kind",
                &["reason"],
            )?,
            issues: counter_vec(
                r,
                "driftd_event_field_issues_total",
                "Accepted events with a field that could not be used, by issue",
                &["issue"],
            )?,
            late: counter(r, "driftd_late_events_total", "Events older than their window, dropped")?,
            future: counter(
                r,
                "driftd_future_events_total",
                "Events timestamped too far in the future, clamped to arrival time",
            )?,
            no_baseline: counter(
                r,
                "driftd_events_without_baseline_total",
                "Events of models that have no baseline",
            )?,
            models_refused: counter(
                r,
                "driftd_models_refused_total",
                "Events of new models refused because limits.max_models was reached",
            )?,
            arms_refused: counter(
                r,
                "driftd_arms_refused_total",
                "Events of new arms not tracked because limits.max_arms_per_model was reached",
            )?,
            lag: int_gauge_vec(
                r,
                "driftd_kafka_consumer_lag",
                "Messages between the consumer's position and the partition's end",
                &["topic", "partition"],
            )?,
            assigned: {
                let g = IntGauge::new("driftd_kafka_assigned_partitions", "Partitions assigned to this consumer")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            messages: counter(r, "driftd_kafka_messages_total", "Kafka messages consumed")?,
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
            baseline_info: int_gauge_vec(
                r,
                "driftd_baseline_info",
                "Baseline loaded for a model; the value is always 1",
                &["model", "version"],
            )?,
            transitions: counter_vec(
                r,
                "driftd_verdict_transitions_total",
                "Verdict transitions, by the state entered",
                &["to"],
            )?,
            checkpoints: counter_vec(
                r,
                "driftd_checkpoints_total",
                "Checkpoint writes, by outcome",
                &["outcome"],
            )?,
            last_checkpoint: {
                let g = Gauge::new(
                    "driftd_checkpoint_last_success_timestamp_seconds",
                    "Unix time of the last checkpoint written",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            records: counter_vec(
                r,
                "driftd_records_total",
                "Non-inference records used by the health and experiment analyses, by kind",
                &["kind"],
            )?,
            health: HealthMetrics::new(r)?,
            prev_series: HashSet::new(),
            prev_events: BTreeMap::new(),
            prev_stats: EngineStats::default(),
            prev_messages: 0,
            prev_checkpoints: (0, 0),
            prev_records: [0; RecordKind::ALL.len()],
        };
        for k in RecordKind::ALL {
            m.records.with_label_values(&[k.as_str()]);
        }
        // Fixed label sets exist from the start, so rates work from zero.
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
            m.checkpoints.with_label_values(&[o]);
        }
        Ok(m)
    }

    /// Exports these scores (and no others) as `driftd_feature_drift` and
    /// `driftd_prediction_drift`.
    pub fn with_scores(mut self, scores: Vec<Metric>) -> Metrics {
        self.scores = scores;
        self
    }

    /// Sets every series from a snapshot.
    pub fn update(&mut self, s: &Snapshot) {
        let mut seen: HashSet<(&'static str, Vec<String>)> = HashSet::new();
        for m in &s.report.models {
            self.window(&m.model, "", &m.all, true, &mut seen);
            for (arm, w) in &m.arms {
                self.window(&m.model, arm, w, true, &mut seen);
            }
            set(
                &mut seen,
                &self.baseline_info,
                "baseline_info",
                &[&m.model, &m.baseline_version],
                1,
            );
            if let Some(l) = &m.latency {
                // Latency stages are distributions of the model's window
                // (`latency.<stage>`); its size is driftd_latency_window_samples.
                self.window(&m.model, "", l, false, &mut seen);
            }
            for div in &m.arm_divergence {
                for (name, v) in &div.metrics {
                    let (Some(x), Ok(metric)) = (v.as_f64(), name.parse::<Metric>()) else {
                        continue;
                    };
                    if !self.scores.contains(&metric) {
                        continue;
                    }
                    let labels = [
                        m.model.as_str(),
                        div.arm_a.as_str(),
                        div.arm_b.as_str(),
                        div.feature.as_str(),
                        metric.name(),
                    ];
                    setf(
                        &mut seen,
                        &self.health.arm_divergence,
                        "arm_divergence",
                        &labels,
                        x,
                    );
                }
            }
            for f in m
                .all
                .distributions()
                .chain(m.latency.iter().flat_map(|l| l.features.iter()))
            {
                for v in &f.verdicts {
                    for (sev, t) in [("warning", v.warning), ("critical", v.critical)] {
                        let labels = [m.model.as_str(), f.name.as_str(), v.metric.name(), sev];
                        self.threshold.with_label_values(&labels).set(t);
                        seen.insert(("threshold", labels.iter().map(|x| x.to_string()).collect()));
                    }
                }
            }
            let prev = self
                .prev_events
                .insert(m.model.clone(), m.events)
                .unwrap_or(0);
            self.events
                .with_label_values(&[&m.model])
                .inc_by(m.events.saturating_sub(prev));
            seen.insert(("events", vec![m.model.clone()]));
        }
        // Counters: increments since the last snapshot.
        let st = &s.stats;
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
        self.late.inc_by(st.late.saturating_sub(p.late));
        self.future
            .inc_by(st.future_clamped.saturating_sub(p.future_clamped));
        self.no_baseline
            .inc_by(st.no_baseline.saturating_sub(p.no_baseline));
        self.models_refused
            .inc_by(st.models_refused.saturating_sub(p.models_refused));
        self.arms_refused
            .inc_by(st.arms_refused.saturating_sub(p.arms_refused));
        self.prev_stats = st.clone();
        for k in RecordKind::ALL {
            let i = k as usize;
            self.records
                .with_label_values(&[k.as_str()])
                .inc_by(st.decode.records[i].saturating_sub(self.prev_records[i]));
        }
        self.prev_records = st.decode.records;
        self.update_health(&s.report, &mut seen);
        self.messages
            .inc_by(s.messages.saturating_sub(self.prev_messages));
        self.prev_messages = s.messages;
        for t in &s.transitions {
            self.transitions.with_label_values(&[t.to.as_str()]).inc();
        }
        let (ok, err) = self.prev_checkpoints;
        self.checkpoints
            .with_label_values(&["ok"])
            .inc_by(s.checkpoints_ok.saturating_sub(ok));
        self.checkpoints
            .with_label_values(&["error"])
            .inc_by(s.checkpoints_failed.saturating_sub(err));
        self.prev_checkpoints = (s.checkpoints_ok, s.checkpoints_failed);
        if let Some(t) = s.last_checkpoint_ms {
            self.last_checkpoint.set(t as f64 / 1000.0);
        }
        for (topic, partition, lag) in &s.lag {
            let part = partition.to_string();
            self.lag.with_label_values(&[topic, &part]).set(*lag);
            seen.insert(("lag", vec![topic.clone(), part]));
        }
        self.assigned.set(s.assigned_partitions as i64);
        if s.eval_seconds > 0.0 {
            self.eval_duration.observe(s.eval_seconds);
        }
        // Remove the series of windows, models and partitions that went away.
        for (family, labels) in self.prev_series.difference(&seen) {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            let _ = match *family {
                "feature_drift" => self.feature_drift.remove_label_values(&l),
                "prediction_drift" => self.prediction_drift.remove_label_values(&l),
                "state" => self.state.remove_label_values(&l),
                "window_samples" => self.window_samples.remove_label_values(&l),
                "unseen_share" => self.unseen_share.remove_label_values(&l),
                "threshold" => self.threshold.remove_label_values(&l),
                "baseline_info" => self.baseline_info.remove_label_values(&l),
                "lag" => self.lag.remove_label_values(&l),
                "error_rate" => self.health.error_rate.remove_label_values(&l),
                "error_rate_reference" => self.health.error_rate_reference.remove_label_values(&l),
                "first_seen" => self.health.first_seen.remove_label_values(&l),
                "condition" => self.health.condition.remove_label_values(&l),
                "latency" => self.health.latency.remove_label_values(&l),
                "latency_samples" => self.health.latency_samples.remove_label_values(&l),
                "batch_stat" => self.health.batch_stat.remove_label_values(&l),
                "batch_shift" => self.health.batch_shift.remove_label_values(&l),
                "batch_confidence" => self.health.batch_confidence.remove_label_values(&l),
                "arm_divergence" => self.health.arm_divergence.remove_label_values(&l),
                "arm_predictions" => self.health.arm_predictions.remove_label_values(&l),
                "feedback_rate" => self.health.feedback_rate.remove_label_values(&l),
                "feedback_p" => self.health.feedback_p.remove_label_values(&l),
                "requests" | "errors" | "batches" => {
                    self.health.prev_totals.remove(&(*family, labels.clone()));
                    match *family {
                        "requests" => self.health.requests.remove_label_values(&l),
                        "errors" => self.health.errors.remove_label_values(&l),
                        _ => self.health.batches.remove_label_values(&l),
                    }
                }
                "events" => {
                    self.prev_events.remove(labels[0].as_str());
                    self.events.remove_label_values(&l)
                }
                _ => Ok(()),
            };
        }
        self.prev_series = seen;
    }

    /// The health and experiment series.
    fn update_health(&mut self, r: &Report, seen: &mut HashSet<(&'static str, Vec<String>)>) {
        let h = &mut self.health;
        for m in &r.health {
            let model = m.model.as_str();
            if let Some(x) = m.error_rate {
                setf(seen, &h.error_rate, "error_rate", &[model], x);
            }
            if let Some(x) = m.reference_error_rate {
                setf(
                    seen,
                    &h.error_rate_reference,
                    "error_rate_reference",
                    &[model],
                    x,
                );
            }
            inc_to(
                seen,
                &mut h.prev_totals,
                &h.requests,
                "requests",
                &[model],
                m.requests_total,
            );
            for (ty, n) in &m.errors_by_type {
                inc_to(
                    seen,
                    &mut h.prev_totals,
                    &h.errors,
                    "errors",
                    &[model, ty],
                    *n,
                );
            }
            for (name, feature, state) in &m.conditions {
                set(
                    seen,
                    &h.condition,
                    "condition",
                    &[model, name, feature],
                    state.gauge(),
                );
            }
            for st in &m.latency {
                set(
                    seen,
                    &h.latency_samples,
                    "latency_samples",
                    &[model, &st.stage],
                    st.samples as i64,
                );
                for (q, v) in [("50", st.p50_ms), ("90", st.p90_ms), ("99", st.p99_ms)] {
                    if let Some(v) = v {
                        setf(
                            seen,
                            &h.latency,
                            "latency",
                            &[model, &st.stage, q],
                            v / 1000.0,
                        );
                    }
                }
            }
            if let Some(b) = &m.batch {
                inc_to(
                    seen,
                    &mut h.prev_totals,
                    &h.batches,
                    "batches",
                    &[model],
                    b.batches,
                );
                if let Some(c) = b.avg_confidence {
                    setf(seen, &h.batch_confidence, "batch_confidence", &[model], c);
                }
                for (k, v) in &b.stats {
                    setf(seen, &h.batch_stat, "batch_stat", &[model, k], *v);
                }
                for (k, v) in &b.shifts {
                    setf(seen, &h.batch_shift, "batch_shift", &[model, k], *v);
                }
            }
        }
        for (service, model, t) in &r.versions {
            setf(
                seen,
                &h.first_seen,
                "first_seen",
                &[service, model],
                *t as f64 / 1000.0,
            );
        }
        for a in &r.experiments.arms {
            set(
                seen,
                &h.arm_predictions,
                "arm_predictions",
                &[&a.model, &a.arm],
                a.predictions as i64,
            );
            if a.predictions == 0 {
                continue;
            }
            for (action, n) in &a.feedback {
                let rate = *n as f64 / a.predictions as f64;
                setf(
                    seen,
                    &h.feedback_rate,
                    "feedback_rate",
                    &[&a.model, &a.arm, action],
                    rate,
                );
            }
        }
        for c in &r.experiments.comparisons {
            if let Some(p) = c.p_value {
                setf(
                    seen,
                    &h.feedback_p,
                    "feedback_p",
                    &[&c.model, &c.control, &c.variant, &c.action],
                    p,
                );
            }
        }
        let j = &r.join_stats;
        let pj = &h.prev_join;
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
        ] {
            h.join
                .with_label_values(&[o])
                .inc_by(now.saturating_sub(before));
        }
        h.prev_join = j.clone();
        h.join_waiting
            .with_label_values(&["predictions"])
            .set(r.join_waiting.0 as i64);
        h.join_waiting
            .with_label_values(&["feedback"])
            .set(r.join_waiting.1 as i64);
        let hs = &r.health_stats;
        let ph = &h.prev_refused;
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
            h.refused
                .with_label_values(&[w])
                .inc_by(now.saturating_sub(before));
        }
        h.prev_refused = hs.clone();
    }

    fn window(
        &self,
        model: &str,
        arm: &str,
        w: &WindowReport,
        with_samples: bool,
        seen: &mut HashSet<(&'static str, Vec<String>)>,
    ) {
        if with_samples {
            set(
                seen,
                &self.window_samples,
                "window_samples",
                &[model, arm],
                w.samples as i64,
            );
        }
        for f in &w.features {
            for (name, v) in &f.metrics {
                let (Some(x), Ok(metric)) = (v.as_f64(), name.parse::<Metric>()) else {
                    continue;
                };
                if metric == Metric::UnseenShare {
                    let labels = [model, arm, f.name.as_str()];
                    self.unseen_share.with_label_values(&labels).set(x);
                    seen.insert((
                        "unseen_share",
                        labels.iter().map(|x| x.to_string()).collect(),
                    ));
                }
                if !self.scores.contains(&metric) {
                    continue;
                }
                let labels = [model, arm, f.name.as_str(), metric.name()];
                self.feature_drift.with_label_values(&labels).set(x);
                seen.insert((
                    "feature_drift",
                    labels.iter().map(|x| x.to_string()).collect(),
                ));
            }
        }
        if let Some(p) = &w.prediction {
            for (name, v) in &p.metrics {
                let (Some(x), Ok(metric)) = (v.as_f64(), name.parse::<Metric>()) else {
                    continue;
                };
                if !self.scores.contains(&metric) {
                    continue;
                }
                let labels = [model, arm, metric.name()];
                self.prediction_drift.with_label_values(&labels).set(x);
                seen.insert((
                    "prediction_drift",
                    labels.iter().map(|x| x.to_string()).collect(),
                ));
            }
        }
        for f in w.distributions() {
            for v in &f.verdicts {
                let labels = [model, arm, f.name.as_str(), v.metric.name()];
                set(seen, &self.state, "state", &labels, v.state.gauge());
            }
        }
    }
}

fn set(
    seen: &mut HashSet<(&'static str, Vec<String>)>,
    g: &IntGaugeVec,
    family: &'static str,
    labels: &[&str],
    v: i64,
) {
    g.with_label_values(labels).set(v);
    seen.insert((family, labels.iter().map(|x| x.to_string()).collect()));
}

fn setf(
    seen: &mut HashSet<(&'static str, Vec<String>)>,
    g: &GaugeVec,
    family: &'static str,
    labels: &[&str],
    v: f64,
) {
    g.with_label_values(labels).set(v);
    seen.insert((family, labels.iter().map(|x| x.to_string()).collect()));
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

    #[test]
    fn series_appear_and_go_away_with_their_model() {
        let cfg = EngineConfig {
            auto_baseline: Some(crate::engine::AutoBaseline { after_events: 100 }),
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(cfg, vec![]);
        let lines: Vec<String> = (0..300)
            .map(|i| format!(r#"{{"model_id":"m","prediction":"a","timestamp":1,"input_features":{{"x":{}}}}}"#, i % 7))
            .collect();
        let reg = Registry::new();
        let mut m = Metrics::new(&reg).unwrap();
        let s = snapshot_for(&lines, &mut engine);
        m.update(&s);
        let text = render(&reg);
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
        let text2 = render(&reg2);
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
        engine.expire_idle(10_000_000, 1);
        let s2 = Snapshot {
            report: engine.report(),
            stats: engine.stats.clone(),
            ..Snapshot::default()
        };
        m.update(&s2);
        let text = render(&reg);
        assert!(!text.contains(r#"model="m""#), "{text}");
        assert!(!text.contains("driftd_feature_drift{"), "{text}");
        assert!(!text.contains("driftd_window_samples{"), "{text}");
    }
}
