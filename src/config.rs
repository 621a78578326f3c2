//! Configuration: a TOML file, overridden by `DRIFTD__SECTION__KEY`
//! environment variables, read through the `config` crate.
//!
//! This module owns turning what the user wrote into typed settings. It
//! happens in two steps, like Vector's: raw serde structs that reject unknown
//! keys, then validation into typed values (durations, non-zero counts,
//! parsed pointers). Every problem is collected, each naming its key and the
//! value found, so one edit fixes them all; `driftd` exits 64 (EX_USAGE)
//! before binding any port when there is one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::FixedOffset;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::daemon::admin::HttpConfig;
use crate::daemon::alert::AlertConfig;
use crate::daemon::checkpoint::CheckpointConfig;
use crate::daemon::ingest::KafkaConfig;
use crate::daemon::logging::{LogConfig, LogFormat};
use crate::daemon::metrics::MetricsConfig;
pub use crate::daemon::settings::Config;
use crate::engine::baseline::Binning;
use crate::engine::compare::{CompareOptions, Metric};
use crate::engine::decode::{DecodeConfig, FeatureFilter, FieldMapping, Pointer};
use crate::engine::detect::{AutoThresholds, DetectConfig, Rule, Target, Thresholds};
use crate::engine::experiment::ExperimentConfig;
use crate::engine::health::{ErrorRule, HealthConfig};
use crate::engine::quality::QualityConfig;
use crate::engine::window::WindowSpec;
use crate::engine::{AutoBaseline, EngineConfig};

/// One problem with the configuration: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{} has {} problem{}:\n{}", source_name, problems.len(), if problems.len() == 1 { "" } else { "s" },
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
}

// ---------------------------------------------------------------------------
// Raw structs: what the file may say. Every field optional, unknown keys
// rejected.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecode {
    timestamp_offset: Option<String>,
    max_line_bytes: Option<u64>,
    max_features: Option<u64>,
    max_feature_depth: Option<u64>,
    fields: Option<RawFields>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFields {
    model: Option<StringOrList>,
    timestamp: Option<String>,
    features: Option<String>,
    prediction: Option<String>,
    confidence: Option<String>,
    arm: Option<String>,
    level: Option<String>,
    request_id: Option<String>,
    service: Option<String>,
    error_type: Option<String>,
    action: Option<String>,
    feedback_time: Option<String>,
    ground_truth: Option<String>,
    label_time: Option<String>,
    input_stats: Option<String>,
    class_counts: Option<String>,
    avg_confidence: Option<String>,
    batch_time: Option<String>,
    stages: Option<Vec<String>>,
    any_ms_stage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeatures {
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    hash: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    kind: Option<String>,
    length: Option<String>,
    pane: Option<String>,
    events: Option<u64>,
    panes: Option<u64>,
    max_future: Option<String>,
    per_arm: Option<bool>,
    history: Option<Vec<String>>,
    max_panes: Option<u64>,
    arm_max_panes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvaluation {
    every: Option<String>,
    min_samples: Option<u64>,
    #[serde(rename = "for")]
    for_evaluations: Option<u64>,
    resolve_after: Option<u64>,
    hysteresis: Option<f64>,
    smoothing: Option<f64>,
    thresholds: Option<String>,
    alpha: Option<f64>,
    min_effect: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    metric: String,
    warning: f64,
    critical: f64,
    target: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaselines {
    dir: Option<String>,
    numeric_bins: Option<u64>,
    top_k: Option<u64>,
    hash_buckets: Option<u64>,
    auto_after_events: Option<u64>,
    watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrorRule {
    alpha: Option<f64>,
    min_ratio: Option<f64>,
    min_errors: Option<u64>,
    min_requests: Option<u64>,
    max_rate: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    enabled: Option<bool>,
    reference_windows: Option<u64>,
    max_error_types: Option<u64>,
    max_stages: Option<u64>,
    sketch_relative_error: Option<f64>,
    latency_panes: Option<u64>,
    errors: Option<RawErrorRule>,
    deploy: Option<RawErrorRule>,
    deploy_latency_quantile: Option<f64>,
    deploy_latency_min_ratio: Option<f64>,
    deploy_horizon: Option<String>,
    p99_limit: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiments {
    enabled: Option<bool>,
    join: Option<String>,
    feedback_ttl: Option<String>,
    max_pending: Option<u64>,
    max_early_feedback: Option<u64>,
    max_actions: Option<u64>,
    control_arm: Option<String>,
    alpha: Option<f64>,
    min_predictions: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuality {
    enabled: Option<bool>,
    join: Option<String>,
    label_ttl: Option<String>,
    max_pending: Option<u64>,
    max_early_labels: Option<u64>,
    window: Option<String>,
    pane: Option<String>,
    min_labels: Option<u64>,
    alpha: Option<f64>,
    min_effect: Option<f64>,
    interval: Option<f64>,
    min_estimate_samples: Option<u64>,
    max_classes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_models: Option<u64>,
    max_arms_per_model: Option<u64>,
    model_idle: Option<String>,
    max_memory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: Option<String>,
    topics: Option<StringOrList>,
    group_id: Option<String>,
    commit_interval: Option<String>,
    rewind_on_start: Option<bool>,
    properties: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    enabled: Option<bool>,
    dir: Option<String>,
    kafka_topic: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    metrics_listen: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    resend_interval: Option<String>,
    resolved_resend_for: Option<String>,
    queue_capacity: Option<u64>,
    external_url: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    alertmanagers: Option<Vec<RawHttpTarget>>,
    kafka: Option<RawAlertKafka>,
    webhook: Option<RawHttpTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTarget {
    url: String,
    timeout: Option<String>,
    bearer_token: Option<String>,
    basic_auth_user: Option<String>,
    basic_auth_password: Option<String>,
    ca_file: Option<String>,
    insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertKafka {
    topic: String,
    brokers: Option<String>,
    properties: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    scores: Option<Vec<String>>,
    per_arm_scores: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace: Option<String>,
}

const SECTIONS: &[&str] = &[
    "decode",
    "features",
    "window",
    "evaluation",
    "rules",
    "baselines",
    "limits",
    "kafka",
    "checkpoint",
    "http",
    "log",
    "shutdown",
    "alerts",
    "metrics",
    "health",
    "experiments",
    "quality",
];

/// The file, section by section, as written.
struct RawConfig {
    decode: RawDecode,
    features: RawFeatures,
    window: RawWindow,
    evaluation: RawEvaluation,
    rules: Option<Vec<RawRule>>,
    baselines: RawBaselines,
    limits: RawLimits,
    kafka: Option<RawKafka>,
    checkpoint: RawCheckpoint,
    http: RawHttp,
    log: RawLog,
    shutdown: RawShutdown,
    alerts: RawAlerts,
    metrics: RawMetrics,
    health: RawHealth,
    experiments: RawExperiments,
    quality: RawQuality,
}

impl RawConfig {
    /// Reads every section, recording what does not parse (an unknown
    /// section or key, a value of the wrong type) and carrying on.
    fn parse(value: serde_json::Value, p: &mut Problems) -> RawConfig {
        let mut root = match value {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                p.push(
                    "(file)",
                    format!("must be a table of sections, found {other}"),
                );
                serde_json::Map::new()
            }
        };
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                p.push(
                    key,
                    format!("unknown section; the sections are: {}", SECTIONS.join(", ")),
                );
            }
        }
        RawConfig {
            decode: section(&mut root, "decode", p),
            features: section(&mut root, "features", p),
            window: section(&mut root, "window", p),
            evaluation: section(&mut root, "evaluation", p),
            rules: section(&mut root, "rules", p),
            baselines: section(&mut root, "baselines", p),
            limits: section(&mut root, "limits", p),
            kafka: section(&mut root, "kafka", p),
            checkpoint: section(&mut root, "checkpoint", p),
            http: section(&mut root, "http", p),
            log: section(&mut root, "log", p),
            shutdown: section(&mut root, "shutdown", p),
            alerts: section(&mut root, "alerts", p),
            metrics: section(&mut root, "metrics", p),
            health: section(&mut root, "health", p),
            experiments: section(&mut root, "experiments", p),
            quality: section(&mut root, "quality", p),
        }
    }
}

impl Config {
    /// Reads `path` (if any) and the `DRIFTD__*` environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Read {
                    path: p.to_owned(),
                    message: "no such file (pass --config with the path of a TOML file, e.g. config/driftd.toml)".into(),
                });
            }
            b = b.add_source(config::File::from(p).format(config::FileFormat::Toml));
        }
        b = b.add_source(
            config::Environment::with_prefix("DRIFTD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("kafka.topics")
                .with_list_parse_key("features.allow")
                .with_list_parse_key("features.deny")
                .with_list_parse_key("features.hash")
                .with_list_parse_key("decode.fields.model"),
        );
        let source_name =
            path.map_or_else(|| "environment".to_owned(), |p| p.display().to_string());
        let built = b.build().map_err(|e| ConfigError::Read {
            path: path.map(Path::to_owned).unwrap_or_default(),
            message: e.to_string(),
        })?;
        let value: serde_json::Value = built.try_deserialize().map_err(|e| ConfigError::Read {
            path: path.map(Path::to_owned).unwrap_or_default(),
            message: e.to_string(),
        })?;
        Config::from_value(value, &source_name)
    }

    /// Parses TOML text (tests, `check-config` on stdin).
    pub fn from_toml(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::Invalid {
                source_name: source_name.into(),
                problems: vec![Problem {
                    key: "(file)".into(),
                    message: e.to_string(),
                }],
            })?;
        let value: serde_json::Value =
            built.try_deserialize().map_err(|e| ConfigError::Invalid {
                source_name: source_name.into(),
                problems: vec![Problem {
                    key: "(file)".into(),
                    message: e.to_string(),
                }],
            })?;
        Config::from_value(value, source_name)
    }

    fn from_value(value: serde_json::Value, source_name: &str) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let raw = RawConfig::parse(value, &mut p);
        let mut cfg = Config {
            source: source_name.to_owned(),
            ..Config::default()
        };
        // In the order of the file's documentation, so the problems are too.
        cfg.engine.decode = decode_config(raw.decode, raw.features, &mut p);
        window_settings(raw.window, &mut cfg.engine, &mut p);
        evaluation_settings(raw.evaluation, raw.rules, &mut cfg, &mut p);
        baseline_settings(raw.baselines, &mut cfg, &mut p);
        limit_settings(raw.limits, &mut cfg, &mut p);
        cfg.notes.extend(window_note(&cfg.engine));
        // Health and experiments: their windows and caps follow the engine's.
        cfg.engine.align();
        health_config(raw.health, &mut cfg.engine.health, &mut p);
        experiment_config(raw.experiments, &mut cfg.engine.experiments, &mut p);
        quality_config(raw.quality, &mut cfg.engine.quality, &mut p);
        cfg.kafka = raw.kafka.map(|k| kafka_config(k, &mut p));
        cfg.checkpoint = checkpoint_config(raw.checkpoint);
        http_config(raw.http, &mut cfg.http, &mut p);
        log_config(raw.log, &mut cfg.log, &mut p);
        cfg.grace = shutdown_grace(raw.shutdown, cfg.grace, &mut p);
        // Alerts inherit the evaluation interval and the Kafka connection.
        cfg.alerts = alert_config(raw.alerts, &cfg, &mut p);
        metrics_config(raw.metrics, &mut cfg.metrics, &mut p);
        p.into_result(cfg, source_name)
    }

    /// The settings `driftd run` needs beyond the engine.
    pub fn require_kafka(&self) -> Result<&KafkaConfig, ConfigError> {
        self.kafka.as_ref().ok_or_else(|| ConfigError::Invalid {
            source_name: self.source.clone(),
            problems: vec![Problem {
                key: "kafka".into(),
                message: "missing: `driftd run` needs a [kafka] section with brokers and topics"
                    .into(),
            }],
        })
    }
}

// ---------------------------------------------------------------------------
// Validation: each section into its part of the typed config. A bad value
// is recorded and the default kept, so the next section is still checked.

/// `[decode]` and `[features]`: how a line is read and which features count.
fn decode_config(decode: RawDecode, features: RawFeatures, p: &mut Problems) -> DecodeConfig {
    let mut dec = DecodeConfig::default();
    if let Some(s) = decode.timestamp_offset {
        match parse_offset(&s) {
            Some(o) => dec.local_offset = o,
            None => p.push(
                "decode.timestamp_offset",
                format!("{s:?} is not a UTC offset; write it as \"+02:00\", \"-05:30\" or \"Z\""),
            ),
        }
    }
    if let Some(v) = decode.max_line_bytes {
        dec.max_line_bytes = p.range("decode.max_line_bytes", v, 64, 64 << 20) as usize;
    }
    if let Some(v) = decode.max_features {
        dec.max_features = p.range("decode.max_features", v, 1, 10_000) as usize;
    }
    if let Some(v) = decode.max_feature_depth {
        dec.max_feature_depth = p.range("decode.max_feature_depth", v, 1, 32) as usize;
    }
    if let Some(f) = decode.fields {
        field_mapping(f, &mut dec.mapping, p);
    }
    dec.filter = feature_filter(features, p);
    dec
}

/// `[decode.fields]`: a JSON pointer for each field driftd reads.
fn field_mapping(f: RawFields, m: &mut FieldMapping, p: &mut Problems) {
    let mut ptr = |key: &str, v: Option<String>, slot: &mut Pointer| {
        if let Some(s) = v {
            match Pointer::parse(&s) {
                Ok(ptr) => *slot = ptr,
                Err(e) => p.push(&format!("decode.fields.{key}"), e.to_string()),
            }
        }
    };
    ptr("timestamp", f.timestamp, &mut m.timestamp);
    ptr("features", f.features, &mut m.features);
    ptr("prediction", f.prediction, &mut m.prediction);
    ptr("confidence", f.confidence, &mut m.confidence);
    ptr("arm", f.arm, &mut m.arm);
    ptr("level", f.level, &mut m.level);
    ptr("request_id", f.request_id, &mut m.request_id);
    ptr("service", f.service, &mut m.service);
    ptr("error_type", f.error_type, &mut m.error_type);
    ptr("action", f.action, &mut m.action);
    ptr("feedback_time", f.feedback_time, &mut m.feedback_time);
    ptr("ground_truth", f.ground_truth, &mut m.ground_truth);
    ptr("label_time", f.label_time, &mut m.label_time);
    ptr("input_stats", f.input_stats, &mut m.input_stats);
    ptr("class_counts", f.class_counts, &mut m.class_counts);
    ptr("avg_confidence", f.avg_confidence, &mut m.avg_confidence);
    ptr("batch_time", f.batch_time, &mut m.batch_time);
    if let Some(stages) = f.stages {
        if stages.len() > 16 {
            p.push(
                "decode.fields.stages",
                format!("{} stages; at most 16", stages.len()),
            );
        }
        let mut parsed = Vec::new();
        for st in stages.into_iter().take(16) {
            match Pointer::parse(&st) {
                Ok(x) => parsed.push(x),
                Err(e) => p.push("decode.fields.stages", e.to_string()),
            }
        }
        m.stages = parsed;
    }
    if let Some(b) = f.any_ms_stage {
        m.any_ms_stage = b;
    }
    if let Some(models) = f.model {
        let list = match models {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        };
        if list.is_empty() || list.len() > 4 {
            p.push(
                "decode.fields.model",
                format!("give 1 to 4 pointers tried in order, found {}", list.len()),
            );
        } else {
            let mut parsed = Vec::new();
            for s in list {
                match Pointer::parse(&s) {
                    Ok(x) => parsed.push(x),
                    Err(e) => p.push("decode.fields.model", e.to_string()),
                }
            }
            if !parsed.is_empty() {
                m.model = parsed;
            }
        }
    }
}

/// `[features]`: the allow, deny and hash lists.
fn feature_filter(features: RawFeatures, p: &mut Problems) -> FeatureFilter {
    let mut filter = FeatureFilter::default();
    if let Some(a) = features.allow {
        if !a.is_empty() {
            filter.allow = Some(a.into_iter().collect());
        }
    }
    filter.deny = features.deny.unwrap_or_default().into_iter().collect();
    filter.hash = features.hash.unwrap_or_default().into_iter().collect();
    for h in &filter.hash {
        if filter.deny.contains(h) {
            p.push(
                "features.hash",
                format!("{h:?} is also in features.deny; keep it in one list"),
            );
        }
    }
    filter
}

/// `[window]`: the drift window's shape, how far ahead of arrival an
/// event's time may be, and whether arms get windows of their own.
fn window_settings(window: RawWindow, engine: &mut EngineConfig, p: &mut Problems) {
    match window.kind.as_deref().unwrap_or("time") {
        "time" => engine.window = time_window(&window, p),
        "count" => {
            let events = p.range(
                "window.events",
                window.events.unwrap_or(10_000),
                10,
                100_000_000,
            );
            let panes = p.range("window.panes", window.panes.unwrap_or(20), 1, 1440) as usize;
            engine.window = WindowSpec::Count { events, panes };
        }
        other => p.push(
            "window.kind",
            format!("{other:?} is not a window kind; use \"time\" or \"count\""),
        ),
    }
    let max_future = p.duration(
        "window.max_future",
        window.max_future.as_deref(),
        Duration::from_secs(300),
    );
    engine.max_future_ms = Some(max_future.as_millis() as i64);
    engine.per_arm = window.per_arm.unwrap_or(true);
    if let Some(names) = &window.history {
        for s in names {
            if s.trim().eq_ignore_ascii_case("all") {
                engine.history_extra = Metric::ALL.to_vec();
                continue;
            }
            match s.parse::<Metric>() {
                Ok(m) if !engine.history_extra.contains(&m) => engine.history_extra.push(m),
                Ok(_) => {}
                Err(e) => p.push("window.history", format!("{e}, or \"all\"")),
            }
        }
    }
    if let Some(v) = window.max_panes {
        engine.max_panes = p.range("window.max_panes", v, 1, 1440) as usize;
    }
    if let Some(v) = window.arm_max_panes {
        engine.arm_max_panes = p.range("window.arm_max_panes", v, 1, 1440) as usize;
    }
}

/// `kind = "time"`: a length cut into panes.
fn time_window(window: &RawWindow, p: &mut Problems) -> WindowSpec {
    let length = p.duration(
        "window.length",
        window.length.as_deref(),
        Duration::from_secs(600),
    );
    let pane = p.duration(
        "window.pane",
        window.pane.as_deref(),
        Duration::from_secs(30),
    );
    if pane > length {
        p.push(
            "window.pane",
            format!(
                "{} is longer than window.length {}; a pane is a slice of the window",
                humantime::format_duration(pane),
                humantime::format_duration(length)
            ),
        );
    }
    if pane < Duration::from_millis(100) {
        p.push("window.pane", "must be at least 100ms".into());
    }
    WindowSpec::Time {
        length_ms: length.as_millis() as i64,
        pane_ms: pane.as_millis().max(1) as i64,
    }
}

/// Says so when `window.max_panes` made the panes longer.
pub fn window_note(engine: &EngineConfig) -> Option<String> {
    let before = engine.window;
    let (after, changed) = before.capped(engine.max_panes);
    match (changed, before, after) {
        (true, WindowSpec::Time { pane_ms: was, .. }, WindowSpec::Time { length_ms, pane_ms }) => {
            Some(format!(
                "window: {} in {} panes of {} (window.pane {} would make {} panes; window.max_panes is {})",
                humantime::format_duration(Duration::from_millis(length_ms as u64)),
                after.panes(),
                humantime::format_duration(Duration::from_millis(pane_ms as u64)),
                humantime::format_duration(Duration::from_millis(was as u64)),
                before.panes(),
                engine.max_panes
            ))
        }
        (true, _, _) => Some(format!(
            "window: {} panes (window.max_panes)",
            after.panes()
        )),
        _ => None,
    }
}

/// `[evaluation]` and `[[rules]]`: how often, against which thresholds,
/// and how a verdict is debounced.
fn evaluation_settings(
    evaluation: RawEvaluation,
    rules: Option<Vec<RawRule>>,
    cfg: &mut Config,
    p: &mut Problems,
) {
    cfg.every = p.duration("evaluation.every", evaluation.every.as_deref(), cfg.every);
    if cfg.every < Duration::from_millis(100) {
        p.push("evaluation.every", "must be at least 100ms".into());
    }
    let mut det = DetectConfig::default();
    threshold_mode(&evaluation, &mut det, p);
    if let Some(v) = evaluation.min_samples {
        det.min_samples = p.range("evaluation.min_samples", v, 1, u64::MAX);
    }
    if let Some(v) = evaluation.for_evaluations {
        det.for_evaluations = p.range("evaluation.for", v, 1, 1000) as u32;
    }
    if let Some(v) = evaluation.resolve_after {
        det.resolve_after = p.range("evaluation.resolve_after", v, 1, 1000) as u32;
    }
    if let Some(h) = evaluation.hysteresis {
        if !(h > 0.0 && h <= 1.0) {
            p.push(
                "evaluation.hysteresis",
                format!("{h} must be in (0, 1]; 0.8 clears at 80% of the warning threshold"),
            );
        } else {
            det.hysteresis = h;
        }
    }
    if let Some(s) = evaluation.smoothing {
        if !(s.is_finite() && (0.0..=10.0).contains(&s)) {
            p.push(
                "evaluation.smoothing",
                format!("{s} must be between 0 and 10 (pseudo-counts per bin)"),
            );
        } else {
            cfg.engine.compare = CompareOptions { smoothing: s };
        }
    }
    if let Some(rules) = rules {
        det.rules = typed_rules(rules, p);
    }
    cfg.engine.detect = det;
}

/// `evaluation.thresholds`: automatic (with `alpha` and `min_effect`) or
/// the rules' static values.
fn threshold_mode(evaluation: &RawEvaluation, det: &mut DetectConfig, p: &mut Problems) {
    match evaluation.thresholds.as_deref().unwrap_or("auto") {
        "auto" => {
            let auto = auto_thresholds(evaluation, p);
            // The thresholds account for the sample size, so windows
            // can be judged much earlier than fixed thresholds allow.
            det.min_samples = 100;
            det.thresholds = Thresholds::Auto(auto);
        }
        "static" => {
            for (key, set) in [
                ("evaluation.alpha", evaluation.alpha.is_some()),
                ("evaluation.min_effect", evaluation.min_effect.is_some()),
            ] {
                if set {
                    p.push(
                        key,
                        "applies only with thresholds = \"auto\"; remove it or switch".into(),
                    );
                }
            }
        }
        other => p.push(
            "evaluation.thresholds",
            format!("{other:?} is not a threshold mode; use \"auto\" (from the baseline, by sample size) or \"static\" (the rules' values)"),
        ),
    }
}

/// `evaluation.alpha` and `evaluation.min_effect` of automatic thresholds.
fn auto_thresholds(evaluation: &RawEvaluation, p: &mut Problems) -> AutoThresholds {
    let mut auto = AutoThresholds::default();
    if let Some(a) = evaluation.alpha {
        if !(a > 0.0 && a < 0.5) {
            p.push(
                "evaluation.alpha",
                format!("{a} must be in (0, 0.5); 0.001 is one false alarm in a thousand windows per model"),
            );
        } else {
            auto.alpha = a;
        }
    }
    for (name, &v) in evaluation.min_effect.iter().flatten() {
        let key = format!("evaluation.min_effect.{name}");
        match name.parse::<Metric>() {
            Ok(m) if !m.higher_is_worse() => p.push(
                &key,
                format!(
                    "{m} is a p-value; its effect is that of {} (set that instead)",
                    if m == Metric::KsP { "ks" } else { "psi" }
                ),
            ),
            Ok(_) if !(v.is_finite() && v >= 0.0) => {
                p.push(&key, format!("{v} must be a number >= 0"))
            }
            Ok(m) => {
                auto.min_effect.insert(m, v);
            }
            Err(e) => p.push(&key, e.to_string()),
        }
    }
    auto
}

/// `[[rules]]`: each rule's metric, target and thresholds.
fn typed_rules(rules: Vec<RawRule>, p: &mut Problems) -> Vec<Rule> {
    let mut typed = Vec::new();
    for (i, r) in rules.into_iter().enumerate() {
        let key = format!("rules[{i}]");
        let metric = match r.metric.parse::<Metric>() {
            Ok(m) => m,
            Err(e) => {
                p.push(&format!("{key}.metric"), e.to_string());
                continue;
            }
        };
        let target = match r.target.as_deref().unwrap_or("all") {
            "all" => Target::All,
            "features" => Target::Features,
            "prediction" => Target::Prediction,
            "confidence" => Target::Confidence,
            other => {
                p.push(
                    &format!("{key}.target"),
                    format!(
                        "{other:?} is not a target; use all, features, prediction or confidence"
                    ),
                );
                continue;
            }
        };
        let rule = Rule {
            metric,
            warning: r.warning,
            critical: r.critical,
            target,
        };
        for msg in rule.problems() {
            p.push(&key, msg);
        }
        typed.push(rule);
    }
    typed
}

/// `[baselines]`: where they live, how they are binned, when one is made
/// from live traffic.
fn baseline_settings(baselines: RawBaselines, cfg: &mut Config, p: &mut Problems) {
    if let Some(dir) = baselines.dir {
        cfg.baselines_dir = PathBuf::from(dir);
    }
    let mut binning = Binning::default();
    if let Some(v) = baselines.numeric_bins {
        binning.numeric_bins = p.range("baselines.numeric_bins", v, 2, 64) as usize;
    }
    if let Some(v) = baselines.top_k {
        binning.top_k = p.range("baselines.top_k", v, 1, 10_000) as usize;
    }
    if let Some(v) = baselines.hash_buckets {
        binning.hash_buckets = p.range("baselines.hash_buckets", v, 1, 4096) as usize;
    }
    cfg.engine.binning = binning;
    cfg.engine.auto_baseline = match baselines.auto_after_events {
        None | Some(0) => None,
        Some(n) => Some(AutoBaseline {
            after_events: p.range("baselines.auto_after_events", n, 100, 100_000_000),
        }),
    };
    cfg.watch_baselines = baselines.watch.unwrap_or(true);
}

/// `[limits]`: how many models and arms are tracked, and for how long.
fn limit_settings(limits: RawLimits, cfg: &mut Config, p: &mut Problems) {
    if let Some(v) = limits.max_models {
        cfg.engine.max_models = p.range("limits.max_models", v, 1, 100_000) as usize;
    }
    if let Some(v) = limits.max_arms_per_model {
        cfg.engine.max_arms_per_model = p.range("limits.max_arms_per_model", v, 0, 64) as usize;
    }
    cfg.model_idle = p.duration(
        "limits.model_idle",
        limits.model_idle.as_deref(),
        cfg.model_idle,
    );
    if let Some(v) = limits.max_memory {
        match parse_bytes(&v) {
            Some(b) if (16 << 20..=1 << 40).contains(&b) => cfg.max_memory = b,
            Some(_) => p.push(
                "limits.max_memory",
                format!("{v:?} is outside 16MiB to 1TiB"),
            ),
            None => p.push(
                "limits.max_memory",
                format!("{v:?} is not a size; write it as \"96MiB\", \"512MB\" or \"1GiB\""),
            ),
        }
    }
    cfg.engine.max_memory = Some(cfg.max_memory);
}

/// A size: a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB; k,
/// M, G are powers of 1024 too).
fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "k" | "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let b = n * mult;
    (b.is_finite() && b >= 0.0).then_some(b as usize)
}

/// `[health]`: the error-rate, deploy and latency conditions.
fn health_config(health: RawHealth, h: &mut HealthConfig, p: &mut Problems) {
    if let Some(b) = health.enabled {
        h.enabled = b;
    }
    if let Some(v) = health.reference_windows {
        h.reference_windows = p.range("health.reference_windows", v, 1, 48) as usize;
    }
    if let Some(v) = health.max_error_types {
        h.max_error_types = p.range("health.max_error_types", v, 1, 100) as usize;
    }
    if let Some(v) = health.max_stages {
        h.max_stages = p.range("health.max_stages", v, 1, 16) as usize;
    }
    if let Some(v) = health.sketch_relative_error {
        h.sketch_error = p.fraction("health.sketch_relative_error", v, 0.0001, 0.1);
    }
    if let Some(v) = health.latency_panes {
        h.latency_panes = p.range("health.latency_panes", v, 1, 120) as usize;
    }
    if let Some(r) = health.errors {
        error_rule("health.errors", r, &mut h.errors, p);
    }
    if let Some(r) = health.deploy {
        error_rule("health.deploy", r, &mut h.deploy, p);
    }
    if let Some(v) = health.deploy_latency_quantile {
        h.deploy_latency_quantile = p.fraction("health.deploy_latency_quantile", v, 0.5, 0.999);
    }
    if let Some(v) = health.deploy_latency_min_ratio {
        h.deploy_latency_min_ratio = p.fraction("health.deploy_latency_min_ratio", v, 1.0, 100.0);
    }
    let horizon = p.duration(
        "health.deploy_horizon",
        health.deploy_horizon.as_deref(),
        Duration::from_millis(h.deploy_horizon_ms as u64),
    );
    h.deploy_horizon_ms = horizon.as_millis() as i64;
    for (stage, limit) in health.p99_limit.unwrap_or_default() {
        let key = format!("health.p99_limit.{stage}");
        let d = p.duration(&key, Some(&limit), Duration::ZERO);
        if d.is_zero() {
            p.push(
                &key,
                format!("{limit:?} must be a positive duration, e.g. \"250ms\""),
            );
        } else {
            h.p99_limit_ms.insert(stage, d.as_secs_f64() * 1000.0);
        }
    }
}

/// `health.errors` and `health.deploy`: one error-rate test's settings.
fn error_rule(key: &str, r: RawErrorRule, rule: &mut ErrorRule, p: &mut Problems) {
    if let Some(v) = r.alpha {
        rule.alpha = p.fraction(&format!("{key}.alpha"), v, 1e-12, 0.5);
    }
    if let Some(v) = r.min_ratio {
        rule.min_ratio = p.fraction(&format!("{key}.min_ratio"), v, 1.0, 1000.0);
    }
    if let Some(v) = r.min_errors {
        rule.min_errors = p.range(&format!("{key}.min_errors"), v, 1, u64::MAX);
    }
    if let Some(v) = r.min_requests {
        rule.min_requests = p.range(&format!("{key}.min_requests"), v, 1, u64::MAX);
    }
    if let Some(v) = r.max_rate {
        rule.max_rate = Some(p.fraction(&format!("{key}.max_rate"), v, 0.0, 1.0));
    }
}

/// `[experiments]`: the feedback join and the arm comparison.
fn experiment_config(experiments: RawExperiments, x: &mut ExperimentConfig, p: &mut Problems) {
    if let Some(b) = experiments.enabled {
        x.enabled = b;
    }
    match experiments.join.as_deref() {
        None | Some("auto") => x.join_from_start = false,
        Some("always") => x.join_from_start = true,
        Some(other) => p.push(
            "experiments.join",
            format!("{other:?} is not a join mode; use \"auto\" (from the first feedback line) or \"always\""),
        ),
    }
    let ttl = p.duration(
        "experiments.feedback_ttl",
        experiments.feedback_ttl.as_deref(),
        Duration::from_millis(x.ttl_ms as u64),
    );
    if ttl < Duration::from_secs(1) {
        p.push("experiments.feedback_ttl", "must be at least 1s".into());
    }
    x.ttl_ms = ttl.as_millis() as i64;
    if let Some(v) = experiments.max_pending {
        x.max_pending = p.range("experiments.max_pending", v, 1, 100_000_000) as usize;
    }
    if let Some(v) = experiments.max_early_feedback {
        x.max_early = p.range("experiments.max_early_feedback", v, 1, 100_000_000) as usize;
    }
    if let Some(v) = experiments.max_actions {
        x.max_actions = p.range("experiments.max_actions", v, 1, 14) as usize;
    }
    if let Some(c) = experiments.control_arm {
        if c.is_empty() {
            p.push("experiments.control_arm", "must not be empty".into());
        }
        x.control_arm = c;
    }
    if let Some(v) = experiments.alpha {
        x.alpha = p.fraction("experiments.alpha", v, 1e-12, 0.5);
    }
    if let Some(v) = experiments.min_predictions {
        x.min_predictions = p.range("experiments.min_predictions", v, 1, u64::MAX);
    }
}

/// `[quality]`: the label join, realized quality and the estimate.
fn quality_config(q: RawQuality, x: &mut QualityConfig, p: &mut Problems) {
    if let Some(b) = q.enabled {
        x.enabled = b;
    }
    match q.join.as_deref() {
        None | Some("auto") => x.join_from_start = false,
        Some("always") => x.join_from_start = true,
        Some(other) => p.push(
            "quality.join",
            format!("{other:?} is not a join mode; use \"auto\" (from the first label line) or \"always\""),
        ),
    }
    let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    let ttl = p.duration(
        "quality.label_ttl",
        q.label_ttl.as_deref(),
        Duration::from_millis(x.ttl_ms as u64),
    );
    if ttl < Duration::from_secs(1) {
        p.push("quality.label_ttl", "must be at least 1s".into());
    }
    x.ttl_ms = ms(ttl);
    let window = p.duration(
        "quality.window",
        q.window.as_deref(),
        Duration::from_millis((x.pane_ms as u64) * x.panes as u64),
    );
    let pane = p.duration(
        "quality.pane",
        q.pane.as_deref(),
        Duration::from_millis(x.pane_ms as u64),
    );
    if pane < Duration::from_secs(1) {
        p.push("quality.pane", "must be at least 1s".into());
    } else if window < pane {
        p.push(
            "quality.window",
            format!(
                "{} is shorter than quality.pane ({}); make it a multiple of the pane",
                humantime::format_duration(window),
                humantime::format_duration(pane)
            ),
        );
    } else {
        let panes = window.as_millis().div_ceil(pane.as_millis());
        if panes > 1000 {
            p.push(
                "quality.window",
                format!("{panes} panes of quality.pane; at most 1000 (use a longer pane)"),
            );
        }
        x.pane_ms = ms(pane);
        x.panes = panes.clamp(1, 1000) as usize;
    }
    if let Some(v) = q.max_pending {
        x.max_pending = p.range("quality.max_pending", v, 1, 100_000_000) as usize;
    }
    if let Some(v) = q.max_early_labels {
        x.max_early = p.range("quality.max_early_labels", v, 1, 100_000_000) as usize;
    }
    if let Some(v) = q.min_labels {
        x.min_labels = p.range("quality.min_labels", v, 1, u64::MAX);
    }
    if let Some(v) = q.alpha {
        x.alpha = p.fraction("quality.alpha", v, 1e-12, 0.5);
    }
    if let Some(v) = q.min_effect {
        x.min_effect = p.fraction("quality.min_effect", v, 0.0, 1.0);
    }
    if let Some(v) = q.interval {
        x.interval = p.fraction("quality.interval", v, 0.5, 0.999_999);
    }
    if let Some(v) = q.min_estimate_samples {
        x.min_estimate_samples = p.range("quality.min_estimate_samples", v, 1, u64::MAX);
    }
    if let Some(v) = q.max_classes {
        x.max_classes = p.range("quality.max_classes", v, 0, 64) as usize;
    }
}

/// `[kafka]`: where the lines come from.
fn kafka_config(k: RawKafka, p: &mut Problems) -> KafkaConfig {
    let brokers = k.brokers.unwrap_or_default();
    if brokers.trim().is_empty() {
        p.push(
            "kafka.brokers",
            "missing: set a comma-separated host:port list, or DRIFTD__KAFKA__BROKERS".into(),
        );
    }
    let topics = match k.topics {
        Some(StringOrList::One(s)) => s
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
        Some(StringOrList::Many(v)) => v,
        None => Vec::new(),
    };
    if topics.is_empty() {
        p.push(
            "kafka.topics",
            "missing: name at least one topic to consume".into(),
        );
    }
    let group_id = k.group_id.unwrap_or_else(|| "driftd".into());
    if group_id.is_empty() {
        p.push("kafka.group_id", "must not be empty".into());
    }
    let commit_interval = p.duration(
        "kafka.commit_interval",
        k.commit_interval.as_deref(),
        Duration::from_secs(5),
    );
    KafkaConfig {
        brokers,
        topics,
        group_id,
        commit_interval,
        rewind_on_start: k.rewind_on_start.unwrap_or(true),
        properties: consumer_properties(k.properties.unwrap_or_default(), p),
    }
}

/// `kafka.properties`: librdkafka settings, secrets resolved, minus the
/// ones driftd sets itself.
fn consumer_properties(
    raw: BTreeMap<String, String>,
    p: &mut Problems,
) -> BTreeMap<String, String> {
    let mut properties = BTreeMap::new();
    for (key, v) in raw {
        match resolve_secret(&v) {
            Ok(v) => {
                properties.insert(key, v);
            }
            // The message names the variable or file, never the value.
            Err(msg) => p.push(&format!("kafka.properties.{key}"), msg),
        }
    }
    for reserved in [
        "bootstrap.servers",
        "group.id",
        "enable.auto.offset.store",
        "enable.auto.commit",
    ] {
        if properties.contains_key(reserved) {
            p.push(
                &format!("kafka.properties.{reserved}"),
                "is set by driftd itself (use kafka.brokers / kafka.group_id); remove it".into(),
            );
        }
    }
    properties
}

/// `[checkpoint]`: where the engine's state is saved.
fn checkpoint_config(checkpoint: RawCheckpoint) -> CheckpointConfig {
    let d = CheckpointConfig::default();
    CheckpointConfig {
        enabled: checkpoint.enabled.unwrap_or(true),
        dir: checkpoint.dir.map_or(d.dir, PathBuf::from),
        kafka_topic: checkpoint.kafka_topic.filter(|t| !t.is_empty()),
    }
}

/// `[http]`: the listening addresses and the admin token.
fn http_config(http: RawHttp, cfg: &mut HttpConfig, p: &mut Problems) {
    if let Some(l) = http.listen {
        match l.parse::<SocketAddr>() {
            Ok(a) => cfg.listen = a,
            Err(_) => p.push(
                "http.listen",
                format!("{l:?} is not an address; write it as \"0.0.0.0:9400\""),
            ),
        }
    }
    if let Some(l) = http.metrics_listen {
        match l.parse::<SocketAddr>() {
            Ok(a) if a == cfg.listen && a.port() != 0 => p.push(
                "http.metrics_listen",
                format!("{l:?} is http.listen itself; give it another port, or leave it out (http.listen serves /metrics too)"),
            ),
            Ok(a) => cfg.metrics_listen = Some(a),
            Err(_) => p.push(
                "http.metrics_listen",
                format!("{l:?} is not an address; write it as \"0.0.0.0:9401\""),
            ),
        }
    }
    cfg.admin_token = admin_token(http.admin_token, http.admin_token_file, p);
}

/// `http.admin_token` or `http.admin_token_file`; `None` disables the
/// admin endpoints.
fn admin_token(token: Option<String>, file: Option<String>, p: &mut Problems) -> Option<String> {
    match (token, file) {
        (Some(_), Some(_)) => {
            p.push(
                "http.admin_token",
                "set admin_token or admin_token_file, not both".into(),
            );
            None
        }
        (Some(t), None) => match resolve_secret(&t) {
            Ok(t) if t.len() >= 16 => Some(t),
            Ok(_) => {
                p.push(
                    "http.admin_token",
                    "too short: use at least 16 characters".into(),
                );
                None
            }
            Err(m) => {
                p.push("http.admin_token", m);
                None
            }
        },
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(t) if t.trim().len() >= 16 => Some(t.trim().to_owned()),
            Ok(_) => {
                p.push(
                    "http.admin_token_file",
                    format!("{f}: token too short, use at least 16 characters"),
                );
                None
            }
            Err(e) => {
                p.push("http.admin_token_file", format!("cannot read {f}: {e}"));
                None
            }
        },
        (None, None) => None,
    }
}

/// `[log]`: the format and the filter of driftd's own log.
fn log_config(log: RawLog, cfg: &mut LogConfig, p: &mut Problems) {
    cfg.format = match log.format.as_deref().unwrap_or("auto") {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        "auto" => LogFormat::Auto,
        other => {
            p.push(
                "log.format",
                format!("{other:?} is not a format; use json, text or auto"),
            );
            LogFormat::Auto
        }
    };
    if let Some(level) = log.level {
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            p.push(
                "log.level",
                format!("{level:?} is not a level or filter; use e.g. info, debug, driftd=debug"),
            );
        }
        cfg.level = level;
    }
}

/// `shutdown.grace`: how long a stop may take.
fn shutdown_grace(shutdown: RawShutdown, default: Duration, p: &mut Problems) -> Duration {
    let grace = p.duration("shutdown.grace", shutdown.grace.as_deref(), default);
    if grace > Duration::from_secs(600) {
        p.push(
            "shutdown.grace",
            "at most 10m (Kubernetes kills pods after terminationGracePeriodSeconds)".into(),
        );
    }
    grace
}

/// `[metrics]`: which scores are exported.
fn metrics_config(metrics: RawMetrics, cfg: &mut MetricsConfig, p: &mut Problems) {
    if let Some(scores) = metrics.scores {
        let mut list = Vec::new();
        for s in scores {
            match s.parse::<Metric>() {
                Ok(m) if !list.contains(&m) => list.push(m),
                Ok(_) => {}
                Err(e) => p.push("metrics.scores", e.to_string()),
            }
        }
        cfg.scores = list;
    }
    cfg.per_arm_scores = metrics.per_arm_scores.unwrap_or(false);
}

/// Label names Alertmanager accepts, minus the ones driftd sets itself.
fn check_label_name(name: &str) -> Result<(), String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__");
    if !valid {
        return Err(format!(
            "{name:?} is not a label name (letters, digits, _; not starting with a digit or __)"
        ));
    }
    if ["alertname", "model", "feature", "metric", "severity", "arm"].contains(&name) {
        return Err(format!(
            "{name:?} is set by driftd on every alert; choose another name"
        ));
    }
    Ok(())
}

fn http_target(
    key: &str,
    r: RawHttpTarget,
    p: &mut Problems,
) -> Option<crate::daemon::alert::HttpTarget> {
    use crate::daemon::alert::HttpAuth;
    let mut ok = true;
    if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
        p.push(
            &format!("{key}.url"),
            format!("{:?} must start with http:// or https://", r.url),
        );
        ok = false;
    }
    let timeout = p.duration(
        &format!("{key}.timeout"),
        r.timeout.as_deref(),
        Duration::from_secs(10),
    );
    let mut secret = |k: &str, v: Option<String>| -> Option<String> {
        let v = v?;
        match resolve_secret(&v) {
            Ok(s) => Some(s),
            Err(m) => {
                p.push(&format!("{key}.{k}"), m);
                ok = false;
                None
            }
        }
    };
    let bearer = secret("bearer_token", r.bearer_token);
    let password = secret("basic_auth_password", r.basic_auth_password);
    let auth = match (bearer, r.basic_auth_user, password) {
        (Some(_), Some(_), _) => {
            p.push(key, "set bearer_token or basic_auth_user, not both".into());
            ok = false;
            HttpAuth::None
        }
        (Some(t), None, _) => HttpAuth::Bearer(t),
        (None, Some(user), Some(password)) => HttpAuth::Basic { user, password },
        (None, Some(_), None) => {
            p.push(
                &format!("{key}.basic_auth_password"),
                "missing: basic_auth_user needs a password".into(),
            );
            ok = false;
            HttpAuth::None
        }
        (None, None, _) => HttpAuth::None,
    };
    let ca_file = r.ca_file.map(PathBuf::from);
    if let Some(ca) = &ca_file {
        if !ca.exists() {
            p.push(
                &format!("{key}.ca_file"),
                format!("{} does not exist", ca.display()),
            );
            ok = false;
        }
    }
    ok.then(|| crate::daemon::alert::HttpTarget {
        url: r.url,
        timeout,
        auth,
        ca_file,
        insecure_skip_verify: r.insecure_skip_verify.unwrap_or(false),
    })
}

fn alert_config(a: RawAlerts, cfg: &Config, p: &mut Problems) -> AlertConfig {
    let d = AlertConfig::default();
    let mut out = crate::daemon::alert::AlertConfig {
        resend_interval: p.duration(
            "alerts.resend_interval",
            a.resend_interval.as_deref(),
            d.resend_interval,
        ),
        resolved_resend_for: p.duration(
            "alerts.resolved_resend_for",
            a.resolved_resend_for.as_deref(),
            d.resolved_resend_for,
        ),
        queue_capacity: a.queue_capacity.map_or(d.queue_capacity, |v| {
            p.range("alerts.queue_capacity", v, 1, 10_000_000) as usize
        }),
        // Empty: derived from the bound address when the daemon starts.
        external_url: a.external_url.unwrap_or_default(),
        evaluation_interval: cfg.every,
        ..d
    };
    for (k, v) in a.labels.unwrap_or_default() {
        match check_label_name(&k) {
            Ok(()) => {
                out.labels.insert(k, v);
            }
            Err(m) => p.push(&format!("alerts.labels.{k}"), m),
        }
    }
    for (i, t) in a.alertmanagers.unwrap_or_default().into_iter().enumerate() {
        if let Some(t) = http_target(&format!("alerts.alertmanagers[{i}]"), t, p) {
            out.alertmanagers.push(t);
        }
    }
    out.webhook = a.webhook.and_then(|t| http_target("alerts.webhook", t, p));
    if let Some(k) = a.kafka {
        let brokers = k
            .brokers
            .or_else(|| cfg.kafka.as_ref().map(|k| k.brokers.clone()));
        match brokers {
            Some(b) if !k.topic.is_empty() => {
                let mut properties = cfg
                    .kafka
                    .as_ref()
                    .map(|k| k.properties.clone())
                    .unwrap_or_default();
                // Consumer-only properties would make the producer refuse to start.
                properties.retain(|key, _| {
                    key.starts_with("security.")
                        || key.starts_with("sasl.")
                        || key.starts_with("ssl.")
                });
                for (key, v) in k.properties.unwrap_or_default() {
                    match resolve_secret(&v) {
                        Ok(v) => {
                            properties.insert(key, v);
                        }
                        Err(m) => p.push(&format!("alerts.kafka.properties.{key}"), m),
                    }
                }
                out.kafka = Some(crate::daemon::alert::KafkaSink {
                    topic: k.topic,
                    brokers: b,
                    properties,
                });
            }
            Some(_) => p.push("alerts.kafka.topic", "must not be empty".into()),
            None => p.push(
                "alerts.kafka.brokers",
                "missing: set it, or configure [kafka] brokers".into(),
            ),
        }
    }
    out
}

/// `env:NAME` and `file:PATH` let secrets stay out of the config file.
fn resolve_secret(v: &str) -> Result<String, String> {
    if let Some(name) = v.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
    } else if let Some(path) = v.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("cannot read {path}: {e}"))
    } else {
        Ok(v.to_owned())
    }
}

fn parse_offset(s: &str) -> Option<FixedOffset> {
    if s == "Z" || s == "UTC" || s == "+00:00" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    /// The config, or every problem found, all at once.
    fn into_result(self, cfg: Config, source_name: &str) -> Result<Config, ConfigError> {
        if self.0.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                source_name: source_name.to_owned(),
                problems: self.0,
            })
        }
    }

    fn push(&mut self, key: &str, message: String) {
        self.0.push(Problem {
            key: key.to_owned(),
            message,
        });
    }

    fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.push(key, format!("{s:?} must be longer than zero"));
                    default
                }
                Err(_) => {
                    self.push(
                        key,
                        format!("{s:?} is not a duration; write e.g. \"30s\", \"10m\", \"1h\""),
                    );
                    default
                }
            },
        }
    }

    /// A real number in `[lo, hi]` (probabilities, ratios).
    fn fraction(&mut self, key: &str, v: f64, lo: f64, hi: f64) -> f64 {
        if v.is_finite() && (lo..=hi).contains(&v) {
            v
        } else {
            self.push(key, format!("{v} is out of range {lo} to {hi}"));
            if v.is_finite() {
                v.clamp(lo, hi)
            } else {
                lo
            }
        }
    }

    fn range(&mut self, key: &str, v: u64, lo: u64, hi: u64) -> u64 {
        if v < lo || v > hi {
            self.push(key, format!("{v} is out of range {lo} to {hi}"));
            v.clamp(lo, hi)
        } else {
            v
        }
    }
}

/// Deserialises one section, collecting every error: on an error, the key
/// it names is recorded and removed, and the section is read again, so one
/// bad key does not hide the next.
fn section<T: DeserializeOwned + Default>(
    root: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    p: &mut Problems,
) -> T {
    let Some(mut v) = root.remove(name) else {
        return T::default();
    };
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(&v) {
            Ok(t) => return t,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.inner().to_string();
                let key = if path == "." {
                    name.to_owned()
                } else {
                    format!("{name}.{path}")
                };
                p.push(&key, inner.replace("unknown field", "unknown key"));
                let removed = remove_path(&mut v, &path);
                if !removed {
                    return T::default();
                }
            }
        }
    }
    T::default()
}

/// Removes the value at a serde_path_to_error path (`a.b`, `rules[2].x`).
fn remove_path(v: &mut serde_json::Value, path: &str) -> bool {
    let mut segs: Vec<String> = if path == "." || path.is_empty() {
        Vec::new()
    } else {
        path.split('.').map(str::to_owned).collect()
    };
    let Some(last) = segs.pop() else {
        return false;
    };
    let mut cur = v;
    for s in &segs {
        cur = match index(cur, s) {
            Some(c) => c,
            None => return false,
        };
    }
    match (cur, split_index(&last)) {
        (serde_json::Value::Object(m), (name, None)) => m.remove(name).is_some(),
        (serde_json::Value::Object(m), (name, Some(i))) => match m.get_mut(name) {
            Some(serde_json::Value::Array(a)) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        (serde_json::Value::Array(a), (_, Some(i))) if i < a.len() => {
            a.remove(i);
            true
        }
        _ => false,
    }
}

fn split_index(s: &str) -> (&str, Option<usize>) {
    match s.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (s, None),
    }
}

fn index<'a>(v: &'a mut serde_json::Value, seg: &str) -> Option<&'a mut serde_json::Value> {
    let (name, idx) = split_index(seg);
    let v = if name.is_empty() {
        v
    } else {
        v.as_object_mut()?.get_mut(name)?
    };
    match idx {
        Some(i) => v.as_array_mut()?.get_mut(i),
        None => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/driftd.toml");
        let cfg = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.kafka.is_some());
        assert_eq!(cfg.every, Duration::from_secs(30));
        assert!(!cfg.engine.detect.rules.is_empty());
        assert_eq!(
            cfg.engine.detect.thresholds,
            Thresholds::Auto(AutoThresholds::default()),
            "the example spells out the defaults"
        );
    }

    #[test]
    fn threshold_modes_are_checked() {
        let cfg = Config::from_toml("", "empty.toml").unwrap();
        assert!(matches!(cfg.engine.detect.thresholds, Thresholds::Auto(_)));
        assert_eq!(cfg.engine.detect.min_samples, 100);
        let cfg = Config::from_toml("[evaluation]\nthresholds = \"static\"\n", "s.toml").unwrap();
        assert_eq!(cfg.engine.detect.thresholds, Thresholds::Static);
        assert_eq!(cfg.engine.detect.min_samples, 500);
        let cfg = Config::from_toml(
            "[evaluation]\nalpha = 0.01\nmin_effect = { psi = 0.2 }\n",
            "a.toml",
        )
        .unwrap();
        let Thresholds::Auto(a) = &cfg.engine.detect.thresholds else {
            panic!("auto")
        };
        assert_eq!((a.alpha, a.min_effect[&Metric::Psi]), (0.01, 0.2));
        assert_eq!(
            a.min_effect[&Metric::Kl],
            0.025,
            "others keep their defaults"
        );
        for (text, key) in [
            ("thresholds = \"magic\"", "evaluation.thresholds"),
            ("alpha = 0.7", "evaluation.alpha"),
            (
                "min_effect = { chi2_p = 0.1 }",
                "evaluation.min_effect.chi2_p",
            ),
            ("min_effect = { psx = 0.1 }", "evaluation.min_effect.psx"),
            ("min_effect = { psi = -1 }", "evaluation.min_effect.psi"),
            ("thresholds = \"static\"\nalpha = 0.01", "evaluation.alpha"),
        ] {
            let err = Config::from_toml(&format!("[evaluation]\n{text}\n"), "t.toml").unwrap_err();
            let ConfigError::Invalid { problems, .. } = &err else {
                panic!("{err}")
            };
            assert!(problems.iter().any(|p| p.key == key), "{text}: {err}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[window]
length = "10 parsecs"
pane = "30s"
colour = "blue"

[evaluation]
hysteresis = 1.5
every = 5

[kafka]
topics = []

[[rules]]
metric = "psx"
warning = 0.1
critical = 0.2

[[rules]]
metric = "psi"
warning = 0.3
critical = 0.2

[http]
listen = "everywhere"

[bogus]
x = 1
"#;
        let err = Config::from_toml(text, "test.toml").unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "bogus",
            "window.colour",
            "window.length",
            "evaluation.every",
            "evaluation.hysteresis",
            "kafka.brokers",
            "kafka.topics",
            "rules[0].metric",
            "rules[1]",
            "http.listen",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}\n{err}");
        }
        let text = err.to_string();
        assert!(text.contains("10 parsecs"), "{text}");
        assert!(text.contains("everywhere"), "{text}");
    }

    /// `window.history` adds scores to the history (and to its memory);
    /// "all" keeps every one; an unknown name is a problem with its key.
    #[test]
    fn the_history_keeps_the_scores_asked_for() {
        let cfg = Config::from_toml("[window]\nhistory = [\"ks\", \"hellinger\"]\n", "t").unwrap();
        assert_eq!(
            cfg.engine.history_metrics(),
            vec![
                Metric::Psi,
                Metric::Hellinger,
                Metric::Ks,
                Metric::UnseenShare
            ]
        );
        let all = Config::from_toml("[window]\nhistory = [\"all\"]\n", "t").unwrap();
        assert_eq!(all.engine.history_metrics(), Metric::ALL.to_vec());
        let more = all.engine.model_bytes_of_history(22);
        let fewer = cfg.engine.model_bytes_of_history(22);
        assert!(
            more > fewer,
            "the plan counts what is kept: {more} vs {fewer}"
        );
        let err = Config::from_toml("[window]\nhistory = [\"kss\"]\n", "t").unwrap_err();
        assert!(err.to_string().contains("window.history"), "{err}");
    }

    /// A day window: the model's panes capped at `max_panes`, the arms'
    /// (and their feedback counts') at `arm_max_panes`; zero is refused.
    #[test]
    fn arms_get_coarser_panes_than_the_model() {
        let cfg = Config::from_toml(
            "[window]\nlength = \"1d\"\npane = \"30s\"\narm_max_panes = 6\n",
            "t",
        )
        .unwrap();
        let e = &cfg.engine;
        assert_eq!(e.window.panes(), 60);
        assert_eq!(e.arm_window().panes(), 6);
        assert_eq!(e.experiments.panes, 6);
        assert_eq!(e.experiments.pane_ms, 4 * 3_600_000);
        assert_eq!(e.health.panes, 60);
        let err = Config::from_toml("[window]\narm_max_panes = 0\n", "t").unwrap_err();
        assert!(err.to_string().contains("window.arm_max_panes"), "{err}");
    }

    #[test]
    fn defaults_without_a_file() {
        let cfg = Config::from_toml("", "empty").unwrap();
        assert_eq!(cfg.engine.window, WindowSpec::default());
        assert!(cfg.kafka.is_none());
        assert!(cfg.require_kafka().is_err());
    }

    #[test]
    fn secrets_resolve_from_env_and_never_print() {
        std::env::set_var("DRIFTD_TEST_SECRET_X", "hunter2-very-secret");
        let cfg = Config::from_toml(
            r#"
[kafka]
brokers = "b:9092"
topics = ["t"]
properties = { "sasl.password" = "env:DRIFTD_TEST_SECRET_X", "security.protocol" = "SASL_SSL" }
[http]
admin_token = "env:DRIFTD_TEST_SECRET_X"
"#,
            "t",
        )
        .unwrap();
        let k = cfg.kafka.as_ref().unwrap();
        assert_eq!(k.properties["sasl.password"], "hunter2-very-secret");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let err = Config::from_toml(
            "[kafka]\nbrokers = \"b\"\ntopics = \"t\"\nproperties = { \"sasl.password\" = \"env:DRIFTD_NOT_SET_ANYWHERE\" }\n",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("DRIFTD_NOT_SET_ANYWHERE"));
    }

    #[test]
    fn alert_targets_and_labels_are_validated() {
        std::env::set_var("DRIFTD_TEST_AM_TOKEN", "am-secret-token");
        let cfg = Config::from_toml(
            r#"
[http]
listen = "0.0.0.0:9400"
[alerts]
resend_interval = "10s"
labels = { cluster = "prod" }
[[alerts.alertmanagers]]
url = "http://am-0:9093"
bearer_token = "env:DRIFTD_TEST_AM_TOKEN"
[[alerts.alertmanagers]]
url = "http://am-1:9093"
"#,
            "t",
        )
        .unwrap();
        assert_eq!(cfg.alerts.alertmanagers.len(), 2);
        assert_eq!(cfg.alerts.resend_interval, Duration::from_secs(10));
        assert_eq!(
            cfg.alerts.external_url, "",
            "derived at start from the bound address"
        );
        assert!(!format!("{cfg:?}").contains("am-secret-token"));
        let err = Config::from_toml(
            r#"
[alerts]
labels = { severity = "x", "9bad" = "y" }
[[alerts.alertmanagers]]
url = "am-0:9093"
basic_auth_user = "u"
[alerts.kafka]
topic = "alerts"
"#,
            "t",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "alerts.labels.severity",
            "alerts.labels.9bad",
            "alerts.alertmanagers[0].url",
            "alerts.alertmanagers[0].basic_auth_password",
            "alerts.kafka.brokers",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("+02:00"), FixedOffset::east_opt(7200));
        assert_eq!(parse_offset("-05:30"), FixedOffset::east_opt(-19800));
        assert_eq!(parse_offset("2"), None);
    }
}
