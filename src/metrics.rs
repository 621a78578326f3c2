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
use crate::decode::{Issue, Reject, Skip};
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
    // What was exported last time, to remove series that went away and to
    // turn cumulative totals into counter increments.
    prev_series: HashSet<(&'static str, Vec<String>)>,
    prev_events: BTreeMap<String, u64>,
    prev_stats: EngineStats,
    prev_messages: u64,
    prev_checkpoints: (u64, u64),
}

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
            prev_series: HashSet::new(),
            prev_events: BTreeMap::new(),
            prev_stats: EngineStats::default(),
            prev_messages: 0,
            prev_checkpoints: (0, 0),
        };
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
            self.window(&m.model, "", &m.all, &mut seen);
            for (arm, w) in &m.arms {
                self.window(&m.model, arm, w, &mut seen);
            }
            set(
                &mut seen,
                &self.baseline_info,
                "baseline_info",
                &[&m.model, &m.baseline_version],
                1,
            );
            for f in m.all.distributions() {
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
                "events" => {
                    self.prev_events.remove(labels[0].as_str());
                    self.events.remove_label_values(&l)
                }
                _ => Ok(()),
            };
        }
        self.prev_series = seen;
    }

    fn window(
        &self,
        model: &str,
        arm: &str,
        w: &WindowReport,
        seen: &mut HashSet<(&'static str, Vec<String>)>,
    ) {
        set(
            seen,
            &self.window_samples,
            "window_samples",
            &[model, arm],
            w.samples as i64,
        );
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
