//! Alerts: verdict transitions out to Alertmanager, a Kafka topic and a
//! webhook.
//!
//! This module owns everything after a verdict changes. The consumer loop
//! pushes transitions into an [`AlertQueue`] (bounded; when full the oldest
//! is dropped and counted), which never blocks evaluation. One task turns
//! them into alerts, Prometheus-style:
//!
//! - A verdict entering `firing` becomes an alert with labels `alertname`
//!   (`FeatureDrift`, `PredictionDrift`, `ConfidenceDrift`), `model`,
//!   `feature`, `metric`, `severity`, `arm` (when present) and the static
//!   labels from config. Labels are Alertmanager's dedup key, so they are
//!   stable: no value or count ever goes in a label.
//! - Firing alerts are re-sent every `resend_interval` with `endsAt = now +
//!   4 x max(evaluation interval, resend interval)`, so one or two lost sends
//!   never resolve an alert by accident.
//! - A resolve is sent at once with `endsAt = now`, then re-sent for
//!   `resolved_resend_for` (15 min) in case Alertmanager missed it.
//! - A severity change while firing resolves the old alert and fires the new.
//!
//! Each Alertmanager instance gets its own sender (send to each instance,
//! not through a balancer: they deduplicate among themselves). A sender
//! always posts the latest set of alerts, retrying with jittered
//! exponential backoff; a newer set replaces an unsent older one, so an
//! Alertmanager that is down for an hour costs no memory and gets the
//! current state when it comes back. The Kafka topic and the webhook get one
//! JSON event per transition (firing, resolved).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::detect::{Severity, State, Transition};
use crate::engine::time::rfc3339;

/// How to authenticate to an HTTP receiver.
#[derive(Clone, Default)]
pub enum HttpAuth {
    #[default]
    None,
    Bearer(String),
    Basic {
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for HttpAuth {
    // Never print credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::None => f.write_str("None"),
            HttpAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            HttpAuth::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
        }
    }
}

/// One HTTP receiver (an Alertmanager, or the webhook).
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// Base URL: `http://alertmanager-0:9093` (the API path is added).
    pub url: String,
    pub timeout: Duration,
    pub auth: HttpAuth,
    /// PEM file of a CA to trust in addition to the system's.
    pub ca_file: Option<std::path::PathBuf>,
    pub insecure_skip_verify: bool,
}

/// The Kafka alert topic.
#[derive(Debug, Clone)]
pub struct KafkaSink {
    pub topic: String,
    pub brokers: String,
    pub properties: BTreeMap<String, String>,
}

/// Validated alerting settings.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub resend_interval: Duration,
    pub resolved_resend_for: Duration,
    pub queue_capacity: usize,
    /// The daemon's URL as Alertmanager users reach it, for `generatorURL`
    /// (empty: derived from the bound address, see [`external_url_for`]).
    pub external_url: String,
    /// The evaluation interval (for `endsAt`).
    pub evaluation_interval: Duration,
    /// Static labels on every alert (cluster, namespace, service ...).
    pub labels: BTreeMap<String, String>,
    pub alertmanagers: Vec<HttpTarget>,
    pub kafka: Option<KafkaSink>,
    pub webhook: Option<HttpTarget>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            resend_interval: Duration::from_secs(60),
            resolved_resend_for: Duration::from_secs(15 * 60),
            queue_capacity: 10_000,
            external_url: "http://127.0.0.1:9400".into(),
            evaluation_interval: Duration::from_secs(30),
            labels: BTreeMap::new(),
            alertmanagers: Vec::new(),
            kafka: None,
            webhook: None,
        }
    }
}

impl AlertConfig {
    pub fn any_sink(&self) -> bool {
        !self.alertmanagers.is_empty() || self.kafka.is_some() || self.webhook.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("cannot build the HTTP client for {url}: {source}")]
    Client {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot read CA file {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the Kafka alert producer: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
}

/// A URL for the daemon when none is configured: the bound port, and the
/// host name when bound to every address (0.0.0.0 is no place to click).
pub fn external_url_for(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("http://{host}:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Transitions waiting for the alert task. Pushing never blocks; when full,
/// the oldest transition is dropped and counted.
pub struct AlertQueue {
    items: Mutex<VecDeque<Transition>>,
    capacity: usize,
    notify: Notify,
    dropped: AtomicU64,
}

impl AlertQueue {
    pub fn new(capacity: usize) -> AlertQueue {
        AlertQueue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn push(&self, t: Transition) {
        if let Ok(mut q) = self.items.lock() {
            if q.len() >= self.capacity {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(t);
        }
        self.notify.notify_one();
    }

    fn drain(&self) -> Vec<Transition> {
        self.items
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One alert as Alertmanager's API v2 takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

#[derive(Debug, Clone)]
struct Tracked {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_ms: i64,
    /// Set once resolved.
    resolved_ms: Option<i64>,
    severity: Severity,
}

/// The alert set: pure, time passed in (tested without a clock or network).
#[derive(Debug, Default)]
pub struct AlertBook {
    alerts: HashMap<BTreeMap<String, String>, Tracked>,
    /// [`AlertKey`] -> labels of its firing alert.
    firing: HashMap<AlertKey, BTreeMap<String, String>>,
}

/// (alertname, model, arm, feature, metric): what one condition is about,
/// whatever its severity.
type AlertKey = (&'static str, String, String, String, &'static str);

fn alert_key(t: &Transition) -> AlertKey {
    (
        t.alertname,
        t.model.clone(),
        t.arm.clone().unwrap_or_default(),
        t.feature.clone(),
        t.metric,
    )
}

impl AlertBook {
    /// Applies one transition. Returns true if the set of alerts changed.
    pub fn apply(&mut self, t: &Transition, cfg: &AlertConfig) -> bool {
        let key = alert_key(t);
        match t.to {
            State::Firing => {
                let Some(severity) = t.severity else {
                    return false;
                };
                let mut labels = cfg.labels.clone();
                labels.insert("alertname".into(), t.alertname.into());
                labels.insert("model".into(), t.model.clone());
                if !t.feature.is_empty() {
                    labels.insert("feature".into(), t.feature.clone());
                }
                labels.insert("metric".into(), t.metric.into());
                labels.insert("severity".into(), severity.as_str().into());
                if let Some(a) = &t.arm {
                    labels.insert("arm".into(), a.clone());
                }
                // A condition's own labels (service, previous_model ...)
                // never override the static ones routing depends on.
                for (k, v) in &t.labels {
                    labels.entry((*k).into()).or_insert_with(|| v.clone());
                }
                // A different severity is a different alert: resolve the old one.
                if let Some(old) = self.firing.insert(key, labels.clone()) {
                    if old != labels {
                        if let Some(a) = self.alerts.get_mut(&old) {
                            a.resolved_ms.get_or_insert(t.at_ms);
                        }
                    }
                }
                let annotations = annotations(t, severity);
                let entry = self.alerts.entry(labels.clone()).or_insert(Tracked {
                    labels,
                    annotations: annotations.clone(),
                    starts_ms: t.at_ms,
                    resolved_ms: None,
                    severity,
                });
                if entry.resolved_ms.is_some() {
                    // Fired again after a resolve: a new alert instance.
                    entry.starts_ms = t.at_ms;
                    entry.resolved_ms = None;
                }
                entry.annotations = annotations;
                true
            }
            State::Resolved => match self.firing.remove(&key) {
                Some(labels) => {
                    if let Some(a) = self.alerts.get_mut(&labels) {
                        a.resolved_ms = Some(t.at_ms);
                        a.annotations
                            .insert("resolved_value".into(), format!("{:.6}", t.value));
                    }
                    true
                }
                None => false,
            },
            State::Ok | State::Pending => false,
        }
    }

    /// Forgets resolved alerts older than `resolved_resend_for`.
    pub fn prune(&mut self, now_ms: i64, cfg: &AlertConfig) {
        let keep = cfg.resolved_resend_for.as_millis() as i64;
        self.alerts
            .retain(|_, a| a.resolved_ms.is_none_or(|r| now_ms - r <= keep));
    }

    /// Every alert to post now.
    pub fn postable(&self, now_ms: i64, cfg: &AlertConfig) -> Vec<PostableAlert> {
        let hold = 4 * cfg.evaluation_interval.max(cfg.resend_interval).as_millis() as i64;
        let mut v: Vec<PostableAlert> = self
            .alerts
            .values()
            .map(|a| PostableAlert {
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                starts_at: rfc3339(a.starts_ms),
                ends_at: rfc3339(a.resolved_ms.unwrap_or(now_ms + hold)),
                // The model's page: the scores, thresholds and bins that
                // moved, drawn (the JSON is `/api/v1/drift?model=`).
                generator_url: format!(
                    "{}/model/{}",
                    cfg.external_url.trim_end_matches('/'),
                    urlencode(&a.labels["model"])
                ),
            })
            .collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// Firing alerts by severity (for `driftd_alerts_firing`).
    pub fn firing_by_severity(&self) -> [(Severity, i64); 2] {
        let mut w = 0;
        let mut c = 0;
        for a in self.alerts.values().filter(|a| a.resolved_ms.is_none()) {
            match a.severity {
                Severity::Warning => w += 1,
                Severity::Critical => c += 1,
            }
        }
        [(Severity::Warning, w), (Severity::Critical, c)]
    }
}

/// Alerts link to the model's page, encoded as the page's links are.
pub use crate::view::urlencode;

fn annotations(t: &Transition, severity: Severity) -> BTreeMap<String, String> {
    let window = match (t.window_start_ms, t.window_end_ms) {
        (Some(a), Some(b)) => format!("{} to {}", rfc3339(a), rfc3339(b)),
        _ => "count window".into(),
    };
    let arm = t
        .arm
        .as_ref()
        .map(|a| format!(" (arm {a})"))
        .unwrap_or_default();
    let cmp = if t.higher_is_worse { ">=" } else { "<=" };
    let mut m = BTreeMap::new();
    if t.distribution.is_some() {
        m.insert(
            "summary".into(),
            format!(
                "{} drift on {}{arm}: {} {} = {:.4} {cmp} {} threshold {}",
                t.model, t.feature, t.feature, t.metric, t.value, severity, t.threshold
            ),
        );
        m.insert(
            "description".into(),
            format!(
                "The window of model {}{arm} ({} events, {window}) compared with baseline {} gives {} = {:.6} for {} (the {} threshold is {}).{} See generatorURL for every score and bin.",
                t.model,
                t.samples,
                t.baseline_version,
                t.metric,
                t.value,
                t.feature,
                severity,
                t.threshold,
                t.details
                    .get("moved")
                    .map(|m| format!(" Moved most: {m}."))
                    .unwrap_or_default()
            ),
        );
        m.insert("baseline_version".into(), t.baseline_version.clone());
    } else {
        m.insert(
            "summary".into(),
            format!(
                "{} on {}{arm}: {} = {:.4} {cmp} {}",
                t.alertname, t.model, t.metric, t.value, t.threshold
            ),
        );
    }
    // Health conditions explain themselves (the versions and rates
    // compared, the p-value); their summary, if any, replaces the generic one.
    for (k, v) in &t.details {
        m.insert((*k).into(), v.clone());
    }
    m.insert("value".into(), format!("{:.6}", t.value));
    m.insert("threshold".into(), t.threshold.to_string());
    m.insert("window_samples".into(), t.samples.to_string());
    m.insert("window".into(), window);
    m
}

/// The JSON event for the Kafka topic and the webhook.
pub fn event_json(t: &Transition, labels: &BTreeMap<String, String>) -> serde_json::Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("at".into(), json!(rfc3339(t.at_ms)));
        o.insert("alertname".into(), json!(t.alertname));
        o.insert("labels".into(), json!(labels));
        if !t.value.is_finite() {
            o.insert("value".into(), serde_json::Value::Null);
        }
    }
    v
}

struct AlertMetrics {
    sent: IntCounterVec,
    dropped: IntCounter,
    firing: IntGaugeVec,
}

impl AlertMetrics {
    fn new(r: &Registry) -> Result<AlertMetrics, prometheus::Error> {
        let sent = IntCounterVec::new(
            Opts::new(
                "driftd_alerts_sent_total",
                "Alert sends (one POST, one Kafka message), by sink and outcome",
            ),
            &["sink", "outcome"],
        )?;
        let dropped = IntCounter::new(
            "driftd_alerts_dropped_total",
            "Verdict transitions dropped because the alert queue was full",
        )?;
        let firing = IntGaugeVec::new(
            Opts::new(
                "driftd_alerts_firing",
                "Alerts currently firing, by severity",
            ),
            &["severity"],
        )?;
        r.register(Box::new(sent.clone()))?;
        r.register(Box::new(dropped.clone()))?;
        r.register(Box::new(firing.clone()))?;
        for sink in ["alertmanager", "kafka", "webhook"] {
            for outcome in ["success", "error"] {
                sent.with_label_values(&[sink, outcome]);
            }
        }
        for s in ["warning", "critical"] {
            firing.with_label_values(&[s]);
        }
        Ok(AlertMetrics {
            sent,
            dropped,
            firing,
        })
    }
}

fn http_client(t: &HttpTarget) -> Result<reqwest::Client, AlertError> {
    let mut b = reqwest::Client::builder()
        .timeout(t.timeout)
        .danger_accept_invalid_certs(t.insecure_skip_verify);
    if let Some(path) = &t.ca_file {
        let pem = std::fs::read(path).map_err(|source| AlertError::Ca {
            path: path.clone(),
            source,
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|source| AlertError::Client {
            url: t.url.clone(),
            source,
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|source| AlertError::Client {
        url: t.url.clone(),
        source,
    })
}

fn authorize(req: reqwest::RequestBuilder, auth: &HttpAuth) -> reqwest::RequestBuilder {
    match auth {
        HttpAuth::None => req,
        HttpAuth::Bearer(t) => req.bearer_auth(t),
        HttpAuth::Basic { user, password } => req.basic_auth(user, Some(password)),
    }
}

/// Jittered exponential backoff: 0.5 s doubling to 30 s, times 0.5 to 1.5,
/// so many replicas do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = 0.5f64 * 2f64.powi(attempt.min(6) as i32);
    let jitter = 0.5 + rand::random::<f64>();
    Duration::from_secs_f64(base.min(30.0) * jitter)
}

/// One Alertmanager: posts the latest alert set until it is accepted. On
/// shutdown it makes one last attempt if the latest set was not accepted.
async fn alertmanager_sender(
    target: HttpTarget,
    client: reqwest::Client,
    mut rx: watch::Receiver<Arc<Vec<PostableAlert>>>,
    metrics: Arc<AlertMetrics>,
    cancel: CancellationToken,
) {
    let url = format!("{}/api/v2/alerts", target.url.trim_end_matches('/'));
    let post = |batch: Arc<Vec<PostableAlert>>| {
        let req = authorize(client.post(&url).json(&*batch), &target.auth);
        let metrics = metrics.clone();
        let url = url.clone();
        async move {
            match req.send().await.and_then(|r| r.error_for_status()) {
                Ok(_) => {
                    metrics
                        .sent
                        .with_label_values(&["alertmanager", "success"])
                        .inc();
                    true
                }
                Err(e) => {
                    metrics
                        .sent
                        .with_label_values(&["alertmanager", "error"])
                        .inc();
                    // The URL is config, not data: fine to log. Never the body.
                    tracing::warn!(url = %url, error = %e, "alert post failed; will retry");
                    false
                }
            }
        }
    };
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => {
                if rx.has_changed().unwrap_or(false) {
                    let latest = rx.borrow_and_update().clone();
                    post(latest).await;
                }
                return;
            }
        }
        let mut attempt = 0;
        loop {
            let batch = rx.borrow_and_update().clone();
            if batch.is_empty() || post(batch).await {
                break;
            }
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep(backoff(attempt)) => {}
                // A newer alert set is sent at once.
                r = rx.changed() => if r.is_err() { return },
                _ = cancel.cancelled() => {
                    let latest = rx.borrow_and_update().clone();
                    post(latest).await;
                    return;
                }
            }
        }
    }
}

/// Handles to the running alert task.
pub struct Alerting {
    pub queue: Arc<AlertQueue>,
    task: JoinHandle<()>,
}

impl Alerting {
    /// Waits for the final flush.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts the alert task. It stops when `cancel` fires, after one last
/// flush of pending transitions (bounded by `flush_timeout`).
pub fn start(
    cfg: AlertConfig,
    registry: &Registry,
    cancel: CancellationToken,
    flush_timeout: Duration,
) -> Result<Alerting, AlertError> {
    let metrics = Arc::new(AlertMetrics::new(registry)?);
    let queue = Arc::new(AlertQueue::new(cfg.queue_capacity));
    let (tx, rx) = watch::channel(Arc::new(Vec::<PostableAlert>::new()));
    let senders_cancel = CancellationToken::new();
    let mut senders = Vec::new();
    for t in &cfg.alertmanagers {
        let client = http_client(t)?;
        senders.push(tokio::spawn(alertmanager_sender(
            t.clone(),
            client,
            rx.clone(),
            metrics.clone(),
            senders_cancel.clone(),
        )));
    }
    let webhook = match &cfg.webhook {
        Some(t) => Some((t.clone(), http_client(t)?)),
        None => None,
    };
    let producer: Option<(FutureProducer, String)> = match &cfg.kafka {
        Some(k) => {
            let mut c = rdkafka::ClientConfig::new();
            c.set("bootstrap.servers", &k.brokers)
                .set("message.timeout.ms", "30000")
                .set("queue.buffering.max.messages", "10000");
            for (key, v) in &k.properties {
                c.set(key, v);
            }
            Some((c.create().map_err(AlertError::Kafka)?, k.topic.clone()))
        }
        None => None,
    };
    let q = queue.clone();
    let task = tokio::spawn(async move {
        let mut book = AlertBook::default();
        let mut tick = tokio::time::interval(cfg.resend_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_dropped = 0;
        let mut stopping = false;
        loop {
            let mut changed = false;
            tokio::select! {
                _ = q.notify.notified() => {}
                _ = tick.tick() => changed = true,
                _ = cancel.cancelled(), if !stopping => stopping = true,
            }
            let now = crate::clock::now_ms();
            for t in q.drain() {
                changed |= book.apply(&t, &cfg);
                if matches!(t.to, State::Firing | State::Resolved) {
                    let labels = book.firing.get(&alert_key(&t));
                    let ev = event_json(&t, labels.unwrap_or(&cfg.labels));
                    if let Some((p, topic)) = &producer {
                        send_kafka(p, topic, &t.model, &ev, &metrics);
                    }
                    if let Some((target, client)) = &webhook {
                        send_webhook(target, client, &ev, &metrics);
                    }
                }
            }
            let d = q.dropped();
            metrics.dropped.inc_by(d - last_dropped);
            last_dropped = d;
            book.prune(now, &cfg);
            for (s, n) in book.firing_by_severity() {
                metrics.firing.with_label_values(&[s.as_str()]).set(n);
            }
            if changed {
                let _ = tx.send(Arc::new(book.postable(now, &cfg)));
            }
            if stopping {
                // The senders post the latest set once more if it was not
                // accepted, within the budget.
                if let Some((p, _)) = &producer {
                    let _ = p.flush(flush_timeout);
                }
                senders_cancel.cancel();
                for s in senders {
                    let _ = tokio::time::timeout(flush_timeout, s).await;
                }
                return;
            }
        }
    });
    Ok(Alerting { queue, task })
}

fn send_kafka(
    p: &FutureProducer,
    topic: &str,
    model: &str,
    ev: &serde_json::Value,
    m: &Arc<AlertMetrics>,
) {
    let payload = ev.to_string();
    let record = FutureRecord::to(topic).key(model).payload(&payload);
    match p.send_result(record) {
        Ok(delivery) => {
            let m = m.clone();
            // Delivery confirmation arrives later; count it when it does.
            tokio::spawn(async move {
                match delivery.await {
                    Ok(Ok(_)) => m.sent.with_label_values(&["kafka", "success"]).inc(),
                    Ok(Err((e, _))) => {
                        tracing::warn!(error = %e, "alert event not delivered to Kafka");
                        m.sent.with_label_values(&["kafka", "error"]).inc()
                    }
                    Err(_) => m.sent.with_label_values(&["kafka", "error"]).inc(),
                }
            });
        }
        Err((e, _)) => {
            tracing::warn!(error = %e, "alert event not queued for Kafka");
            m.sent.with_label_values(&["kafka", "error"]).inc();
        }
    }
}

fn send_webhook(
    target: &HttpTarget,
    client: &reqwest::Client,
    ev: &serde_json::Value,
    m: &Arc<AlertMetrics>,
) {
    let (client, target, ev, m) = (client.clone(), target.clone(), ev.clone(), m.clone());
    tokio::spawn(async move {
        // A few attempts: the webhook gets events, not state, so a long
        // outage loses events (counted); Alertmanager is the reliable path.
        for attempt in 1..=4u32 {
            let req = authorize(client.post(&target.url).json(&ev), &target.auth);
            match req.send().await.and_then(|r| r.error_for_status()) {
                Ok(_) => {
                    m.sent.with_label_values(&["webhook", "success"]).inc();
                    return;
                }
                Err(e) => {
                    m.sent.with_label_values(&["webhook", "error"]).inc();
                    tracing::warn!(url = %target.url, error = %e, attempt, "webhook post failed");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::compare::Metric;
    use crate::engine::detect::Distribution;

    fn t(to: State, sev: Option<Severity>, at: i64) -> Transition {
        Transition {
            alertname: "FeatureDrift",
            model: "fraud-v1".into(),
            arm: None,
            feature: "amount".into(),
            distribution: Some(Distribution::Feature),
            metric: Metric::Psi.name(),
            higher_is_worse: true,
            labels: Default::default(),
            details: Default::default(),
            from: State::Pending,
            to,
            severity: sev,
            value: 0.3,
            threshold: 0.25,
            samples: 1000,
            at_ms: at,
            baseline_version: "v1".into(),
            window_start_ms: Some(0),
            window_end_ms: Some(600_000),
        }
    }

    fn cfg() -> AlertConfig {
        let mut c = AlertConfig::default();
        c.labels.insert("cluster".into(), "prod".into());
        c
    }

    #[test]
    fn firing_alerts_hold_for_four_intervals_and_resolve_at_once() {
        let cfg = cfg();
        let mut b = AlertBook::default();
        assert!(b.apply(&t(State::Firing, Some(Severity::Critical), 1_000), &cfg));
        let p = b.postable(61_000, &cfg);
        assert_eq!(p.len(), 1);
        let a = &p[0];
        assert_eq!(a.labels["alertname"], "FeatureDrift");
        assert_eq!(a.labels["severity"], "critical");
        assert_eq!(a.labels["cluster"], "prod");
        assert!(!a.labels.contains_key("arm"));
        // now + 4 x max(30 s, 60 s)
        assert_eq!(a.ends_at, rfc3339(61_000 + 240_000));
        assert_eq!(a.starts_at, rfc3339(1_000));
        assert!(a.generator_url.ends_with("/model/fraud-v1"));
        assert!(a.annotations["description"].contains("1000 events"));
        // Labels hold no value or count: they are the dedup key.
        assert!(!a
            .labels
            .values()
            .any(|v| v.contains("0.3") || v.contains("1000")));

        assert!(b.apply(&t(State::Resolved, Some(Severity::Critical), 90_000), &cfg));
        let p = b.postable(91_000, &cfg);
        assert_eq!(p[0].ends_at, rfc3339(90_000));
        assert_eq!(b.firing_by_severity()[1].1, 0);
        // Re-sent for 15 minutes, then forgotten.
        b.prune(90_000 + 15 * 60_000, &cfg);
        assert_eq!(b.postable(0, &cfg).len(), 1);
        b.prune(90_001 + 15 * 60_000, &cfg);
        assert!(b.postable(0, &cfg).is_empty());
    }

    #[test]
    fn a_severity_change_resolves_the_old_alert() {
        let cfg = cfg();
        let mut b = AlertBook::default();
        b.apply(&t(State::Firing, Some(Severity::Warning), 1_000), &cfg);
        let mut up = t(State::Firing, Some(Severity::Critical), 2_000);
        up.from = State::Firing;
        b.apply(&up, &cfg);
        let p = b.postable(3_000, &cfg);
        assert_eq!(p.len(), 2);
        let warn = p
            .iter()
            .find(|a| a.labels["severity"] == "warning")
            .unwrap();
        let crit = p
            .iter()
            .find(|a| a.labels["severity"] == "critical")
            .unwrap();
        assert_eq!(warn.ends_at, rfc3339(2_000));
        assert!(crit.ends_at > rfc3339(3_000));
        assert_eq!(
            b.firing_by_severity(),
            [(Severity::Warning, 0), (Severity::Critical, 1)]
        );
    }

    #[test]
    fn pending_and_ok_make_no_alert_and_arms_are_labels() {
        let cfg = cfg();
        let mut b = AlertBook::default();
        assert!(!b.apply(&t(State::Pending, Some(Severity::Warning), 1), &cfg));
        assert!(
            !b.apply(&t(State::Resolved, None, 2), &cfg),
            "nothing to resolve"
        );
        let mut a = t(State::Firing, Some(Severity::Warning), 3);
        a.arm = Some("variant".into());
        a.distribution = Some(Distribution::Prediction);
        a.alertname = Distribution::Prediction.alertname();
        b.apply(&a, &cfg);
        let p = b.postable(4, &cfg);
        assert_eq!(p[0].labels["arm"], "variant");
        assert_eq!(p[0].labels["alertname"], "PredictionDrift");
    }

    #[test]
    fn the_queue_drops_the_oldest_when_full() {
        let q = AlertQueue::new(2);
        for i in 0..5 {
            q.push(t(State::Firing, Some(Severity::Warning), i));
        }
        assert_eq!(q.dropped(), 3);
        let left: Vec<i64> = q.drain().iter().map(|t| t.at_ms).collect();
        assert_eq!(left, vec![3, 4]);
    }

    #[test]
    fn generator_urls_point_somewhere_reachable() {
        assert_eq!(
            external_url_for("127.0.0.1:9400".parse().unwrap()),
            "http://127.0.0.1:9400"
        );
        let any = external_url_for("0.0.0.0:9400".parse().unwrap());
        assert!(
            any.starts_with("http://") && any.ends_with(":9400"),
            "{any}"
        );
        assert!(!any.contains("0.0.0.0"), "{any}");
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        for a in 1..20 {
            let d = backoff(a).as_secs_f64();
            let base = (0.5 * 2f64.powi(a.min(6) as i32)).min(30.0);
            assert!(d >= base * 0.5 && d <= base * 1.5, "{a}: {d}");
        }
    }
}
