//! Deterministic synthetic inference-log generator.
//!
//! This module owns the seed-shaped log lines that `driftd generate`, `driftd demo`, the
//! benchmarks and the scenario test suites feed to the monitor. Lines look exactly like what
//! the instrumented Python service writes through `logging` with a JSON formatter (the
//! `extra_data` dict merged at top level, `json.dumps` separators `", "` and `": "`):
//!
//! ```text
//! {"timestamp": "2025-12-14 10:00:00,123", "level": "INFO", "message": "Model inference completed",
//!  "service": "ai_inference_service", "module": "app", "function": "predict", "line": 42,
//!  "request_id": "req_3f9a0c1b2d4e", "model_id": "fraud-v1", "input_hash": -4417022133018651227,
//!  "prediction": "legit", "confidence": 0.9312, "experiment_assignment": "control",
//!  "input_features": {"f00_amount": 412.35, "f01_country": "DE", ..., "f07_is_returning": true}}
//! ```
//!
//! (one physical line, no trailing newline). Besides inference records the stream mixes in
//! `ERROR` records (`"error_type": "InputValidationError"`, no prediction), timing lines
//! (`"Inference timing metrics"`), user feedback lines (`"User feedback received"`), batch
//! statistics lines, malformed lines (each with a configurable share) and, optionally,
//! ground-truth label lines. The fixed logging fields take ~385 bytes, so an inference line
//! with 20 features averages ~840 bytes (8 features: roughly 570).
//!
//! A batch statistics line ([`GeneratorConfig::batch_share`], off by default; never in
//! [`compact`](GeneratorConfig::compact) mode) is what the service's `analyze_and_log_batch`
//! writes after a batch of [`BATCH_SIZE`] requests of one model: per numeric feature the mean
//! over the batch (missing values skipped; `null` if all were missing), the predicted class
//! counts (every class of the model, in config order, zeros included) and the mean confidence,
//! all drawn from the model's distributions at the line's time, drifts included:
//!
//! ```text
//! {"timestamp": "2025-12-14 10:00:00,123", "level": "INFO", "message": "Batch data and prediction statistics",
//!  "service": "ai_inference_service", "module": "app", "function": "analyze_and_log_batch", "line": 131,
//!  "batch_id": "batch_9c4e01ab", "timestamp_end": 1765706400.098512,
//!  "input_stats": {"f00_amount_mean": 401.2731, "f02_balance_mean": 17.9164, ...},
//!  "prediction_stats": {"class_counts": {"fraud": 3, "legit": 61}, "avg_confidence": 0.8643},
//!  "model_id": "fraud-v1"}
//! ```
//!
//! A [`DeploySpec`] ([`GeneratorConfig::deploy`]) replaces one model by a worse version from
//! an event time on: its lines (inference, error, timing, batch) carry the new name, a share
//! of its inference records become `ERROR` records with `"error_type": "ModelRuntimeError"`,
//! and its timing lines' `inference_ms` is multiplied by a latency factor; the feature and
//! class distributions stay as they were (same traffic). [`ArmClickRates`]
//! ([`GeneratorConfig::click_rates`]) gives each experiment arm its own click-through rate on
//! feedback lines (by the arm of the record the feedback refers to); without it 30% of
//! feedback actions are clicks whatever the arm.
//!
//! Ground-truth label lines ([`GeneratorConfig::labels`], a [`LabelSpec`]; off by default)
//! are what the service logs when the true outcome of a request arrives, hours later: a
//! `share` of the inference records get one, `delay_ms` after the record (uniform within
//! `± jitter_ms`, never negative). The label names the request and its true class by name
//! (the `prediction` text of the inference line), and `label_timestamp` is when the label was
//! due, in epoch seconds:
//!
//! ```text
//! {"timestamp": "2025-12-14 16:03:11,500", "level": "INFO", "message": "Ground truth received",
//!  "service": "ai_inference_service", "module": "app", "function": "record_label", "line": 97,
//!  "request_id": "req_3f9a0c1b2d4e", "ground_truth": "legit", "label_timestamp": 1765728191.412000}
//! ```
//!
//! ([`compact`](GeneratorConfig::compact) mode: `{"timestamp": ..., "request_id": ...,
//! "ground_truth": ...}` only.) The simulated classifier is calibrated: a labelled record is
//! right (its true class is the predicted one) with probability equal to its confidence as
//! printed, otherwise its true class is another class of the model, uniformly (a one-class
//! model is always right). So accuracy equals the mean confidence, which is what confidence-
//! based performance estimation (CBPE) relies on. Labels wait in a min-heap by due time (at
//! most [`MAX_PENDING_LABELS`]; more are dropped and counted by
//! [`Generator::labels_dropped`]); [`Generator::next_line`] writes the earliest due label, at
//! the time it is called with, instead of drawing a new line. Label draws come from a random
//! stream of their own, so the other lines are exactly those of the stream without labels,
//! with label lines interleaved. [`Generator::next_event`] draws no labels.
//!
//! A [`DriftEffect::AccuracyDrop`] is a covariate shift the model copes badly with: some
//! numeric features shift (as a mean shift) and every confidence of the model falls by
//! `drop` (clamped to `[0.01, 0.9999]`, then truncated to 4 decimals as always). Labels are
//! drawn from the printed confidence, so the model stays calibrated and its accuracy falls
//! by about `drop`: a drop CBPE sees before the labels arrive.
//!
//! With all of these at their defaults the output is byte for byte what it was before they
//! existed: they add no random draws to the stream unless switched on.
//!
//! The generator is pure: the caller passes the event time (milliseconds since the Unix epoch)
//! and a `String` buffer, so the same seed and the same times always give the same bytes, and
//! a million-line benchmark allocates nothing per line. [`DriftSpec`]s inject distribution
//! shift (mean shift, variance change, unseen categories, class-prior change, outlier bursts,
//! accuracy drops) from a chosen event time on, abruptly or ramped in.
//!
//! An inference record is drawn in one place (request id, feature values, class, confidence,
//! arm) and then written: as a JSON line by [`Generator::next_line`], or, for callers that
//! skip JSON (the scenario suite), straight into the engine's [`Event`] by
//! [`Generator::next_event`], borrowing the model's strings from an [`EventVocabulary`]. So
//! the typed events are exactly what the lines say.
//!
//! Feature *names* depend only on the feature count and categorical share (so scenario files
//! can refer to them stably); distribution parameters and vocabularies depend on the seed and
//! the model name (so adding a model does not perturb the others).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::engine::decode::{Event, EventTime, FeatureValue, Prediction};

/// Features per model when a [`ModelSpec`] does not say otherwise.
pub const DEFAULT_FEATURES: usize = 20;
/// Share of a model's features (excluding the boolean one) that are categorical by default.
pub const DEFAULT_CATEGORICAL_SHARE: f64 = 0.3;

/// Where the model name goes in a line: the seed's A/B example logs `model_used`, everything
/// else `model_id`; the monitor has to accept both, so the generator can emit both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelIdField {
    #[default]
    ModelId,
    ModelUsed,
}

impl ModelIdField {
    /// The JSON key this variant writes.
    pub fn key(self) -> &'static str {
        match self {
            ModelIdField::ModelId => "model_id",
            ModelIdField::ModelUsed => "model_used",
        }
    }
}

/// One simulated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    /// Number of input features (at least 1; with 2 or more the last one is boolean).
    #[serde(default = "default_features")]
    pub features: usize,
    /// Share of the non-boolean features that are categorical, in `[0, 1]`.
    #[serde(default = "default_categorical_share")]
    pub categorical_share: f64,
    /// Predicted class labels.
    #[serde(default = "default_classes")]
    pub classes: Vec<String>,
    /// Class probabilities, same length as `classes`; normalised, need not sum to 1.
    #[serde(default = "default_class_priors")]
    pub class_priors: Vec<f64>,
    #[serde(default)]
    pub id_field: ModelIdField,
    /// Relative share of traffic among models (> 0).
    #[serde(default = "default_traffic_weight")]
    pub traffic_weight: f64,
}

fn default_features() -> usize {
    DEFAULT_FEATURES
}
fn default_categorical_share() -> f64 {
    DEFAULT_CATEGORICAL_SHARE
}
fn default_classes() -> Vec<String> {
    vec!["cat".into(), "dog".into(), "bird".into()]
}
fn default_class_priors() -> Vec<f64> {
    vec![0.5, 0.3, 0.2]
}
fn default_traffic_weight() -> f64 {
    1.0
}

impl ModelSpec {
    /// A model with [`DEFAULT_FEATURES`] features, the default categorical share, classes
    /// `cat`/`dog`/`bird` (priors 0.5/0.3/0.2), `model_id` key and traffic weight 1.
    pub fn new(name: impl Into<String>) -> Self {
        ModelSpec {
            name: name.into(),
            features: DEFAULT_FEATURES,
            categorical_share: DEFAULT_CATEGORICAL_SHARE,
            classes: default_classes(),
            class_priors: default_class_priors(),
            id_field: ModelIdField::ModelId,
            traffic_weight: 1.0,
        }
    }

    pub fn with_features(mut self, features: usize) -> Self {
        self.features = features;
        self
    }

    pub fn with_categorical_share(mut self, share: f64) -> Self {
        self.categorical_share = share;
        self
    }

    /// Sets classes and their priors from `(label, prior)` pairs.
    pub fn with_classes(mut self, classes: &[(&str, f64)]) -> Self {
        self.classes = classes.iter().map(|(c, _)| (*c).to_string()).collect();
        self.class_priors = classes.iter().map(|(_, p)| *p).collect();
        self
    }

    pub fn with_id_field(mut self, id_field: ModelIdField) -> Self {
        self.id_field = id_field;
        self
    }

    pub fn with_traffic_weight(mut self, weight: f64) -> Self {
        self.traffic_weight = weight;
        self
    }

    /// Index of the model's first numeric feature, if it has one (the layout depends only on
    /// the feature count and categorical share, not on the seed).
    pub fn first_numeric_feature(&self) -> Option<usize> {
        feature_layout(self.features, self.categorical_share)
            .iter()
            .position(|(_, kind)| matches!(kind, LayoutKind::Numeric(_)))
    }
}

/// A reference to a feature of a model: by position, or by name. A name matches either the
/// full name (`"f03_balance"`) or the part after the `fNN_` prefix (`"balance"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureRef {
    Index(usize),
    Name(String),
}

impl From<usize> for FeatureRef {
    fn from(i: usize) -> Self {
        FeatureRef::Index(i)
    }
}
impl From<&str> for FeatureRef {
    fn from(s: &str) -> Self {
        FeatureRef::Name(s.to_string())
    }
}
impl From<String> for FeatureRef {
    fn from(s: String) -> Self {
        FeatureRef::Name(s)
    }
}

/// What a drift does while it is active. Magnitudes are scaled by the drift's intensity
/// (see [`DriftSpec::intensity`]) so a ramped drift grows in gradually.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DriftEffect {
    /// Numeric features move by `sds` baseline standard deviations.
    MeanShift { features: Vec<FeatureRef>, sds: f64 },
    /// Numeric features' variance is multiplied by `factor` (> 0) around the baseline mean.
    VarianceScale {
        features: Vec<FeatureRef>,
        factor: f64,
    },
    /// A value outside the vocabulary takes `share` of a categorical feature's values.
    NewCategory {
        feature: FeatureRef,
        value: String,
        share: f64,
    },
    /// Class priors are replaced (blended in proportion to intensity while ramping).
    ClassPriors { priors: Vec<f64> },
    /// A `share` of values become extreme: baseline mean ± `sds` standard deviations. Meant
    /// for short windows (set an end time).
    OutlierBurst {
        features: Vec<FeatureRef>,
        share: f64,
        sds: f64,
    },
    /// A covariate shift the model copes badly with: the numeric `features` move by `sds`
    /// baseline standard deviations (as [`MeanShift`](DriftEffect::MeanShift)) and every
    /// confidence of the model falls by `drop` (in `[0, 0.49]`; clamped to `[0.01, 0.9999]`).
    /// Label lines are drawn from the printed confidence, so the classifier stays calibrated
    /// and its accuracy falls by about `drop`.
    AccuracyDrop {
        features: Vec<FeatureRef>,
        sds: f64,
        drop: f64,
    },
}

/// A drift injected into one model (or all) from `start_ms` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSpec {
    /// Target model name; `None` means every model the effect fits.
    #[serde(default)]
    pub model: Option<String>,
    pub start_ms: i64,
    /// Exclusive end; `None` means the drift persists.
    #[serde(default)]
    pub end_ms: Option<i64>,
    /// Linear ramp-in duration; 0 means abrupt.
    #[serde(default)]
    pub ramp_ms: i64,
    pub effect: DriftEffect,
}

impl DriftSpec {
    /// An abrupt, persistent drift on all models.
    pub fn new(effect: DriftEffect, start_ms: i64) -> Self {
        DriftSpec {
            model: None,
            start_ms,
            end_ms: None,
            ramp_ms: 0,
            effect,
        }
    }

    pub fn mean_shift(feature: impl Into<FeatureRef>, sds: f64, start_ms: i64) -> Self {
        Self::new(
            DriftEffect::MeanShift {
                features: vec![feature.into()],
                sds,
            },
            start_ms,
        )
    }

    pub fn variance_scale(feature: impl Into<FeatureRef>, factor: f64, start_ms: i64) -> Self {
        Self::new(
            DriftEffect::VarianceScale {
                features: vec![feature.into()],
                factor,
            },
            start_ms,
        )
    }

    pub fn new_category(
        feature: impl Into<FeatureRef>,
        value: impl Into<String>,
        share: f64,
        start_ms: i64,
    ) -> Self {
        Self::new(
            DriftEffect::NewCategory {
                feature: feature.into(),
                value: value.into(),
                share,
            },
            start_ms,
        )
    }

    pub fn class_priors(priors: Vec<f64>, start_ms: i64) -> Self {
        Self::new(DriftEffect::ClassPriors { priors }, start_ms)
    }

    /// An outlier burst over `[start_ms, end_ms)`.
    pub fn outlier_burst(
        feature: impl Into<FeatureRef>,
        share: f64,
        sds: f64,
        start_ms: i64,
        end_ms: i64,
    ) -> Self {
        Self::new(
            DriftEffect::OutlierBurst {
                features: vec![feature.into()],
                share,
                sds,
            },
            start_ms,
        )
        .until(end_ms)
    }

    /// An abrupt accuracy drop of `drop` (e.g. 0.05 for 5 points) from `start_ms` on, with a
    /// shift of `sds` standard deviations of the numeric `features` (may be empty).
    pub fn accuracy_drop(features: Vec<FeatureRef>, sds: f64, drop: f64, start_ms: i64) -> Self {
        Self::new(
            DriftEffect::AccuracyDrop {
                features,
                sds,
                drop,
            },
            start_ms,
        )
    }

    /// Restricts the drift to one model.
    pub fn for_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Ends the drift at `end_ms` (exclusive).
    pub fn until(mut self, end_ms: i64) -> Self {
        self.end_ms = Some(end_ms);
        self
    }

    /// Ramps the drift in linearly over `ramp_ms` ("gradual drift").
    pub fn ramp(mut self, ramp_ms: i64) -> Self {
        self.ramp_ms = ramp_ms;
        self
    }

    /// How strongly the drift applies at `t_ms`: 0 outside `[start, end)`, rising linearly
    /// from 0 to 1 over the ramp, 1 afterwards.
    pub fn intensity(&self, t_ms: i64) -> f64 {
        intensity(self.start_ms, self.end_ms, self.ramp_ms, t_ms)
    }
}

fn intensity(start: i64, end: Option<i64>, ramp: i64, t: i64) -> f64 {
    if t < start || end.is_some_and(|e| t >= e) {
        return 0.0;
    }
    if ramp <= 0 {
        return 1.0;
    }
    ((t - start) as f64 / ramp as f64).min(1.0)
}

fn default_latency_factor() -> f64 {
    1.0
}

/// A new, worse version of a model replacing it from `at_ms` on (event time `t >= at_ms`).
///
/// From then on every line about `model` (inference, error, timing, batch statistics) names
/// `new_name` instead, with probability `extra_error_share` an inference record of it becomes
/// an `ERROR` record with `"error_type": "ModelRuntimeError"`, and its timing lines'
/// `inference_ms` (and so `total_latency_ms`) is `latency_factor` times what it was. Feature
/// and class distributions are unchanged: the new version serves the same traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploySpec {
    /// An existing model name, e.g. `fraud-v1`.
    pub model: String,
    /// The name the model is logged under from `at_ms` on, e.g. `fraud-v2`: non-empty and not
    /// the name of another configured model.
    pub new_name: String,
    pub at_ms: i64,
    /// Share of the new version's inference records that fail instead, in `[0, 1)`.
    #[serde(default)]
    pub extra_error_share: f64,
    /// Multiplies the `inference_ms` stage of the new version's timing lines (finite, > 0).
    #[serde(default = "default_latency_factor")]
    pub latency_factor: f64,
}

impl DeploySpec {
    /// `model` becomes `new_name` at `at_ms`, with no extra errors and unchanged latency.
    pub fn new(model: impl Into<String>, new_name: impl Into<String>, at_ms: i64) -> Self {
        DeploySpec {
            model: model.into(),
            new_name: new_name.into(),
            at_ms,
            extra_error_share: 0.0,
            latency_factor: 1.0,
        }
    }

    /// Share of the new version's inference records that become `ModelRuntimeError` records.
    pub fn with_extra_error_share(mut self, share: f64) -> Self {
        self.extra_error_share = share;
        self
    }

    /// Factor on the new version's `inference_ms`.
    pub fn with_latency_factor(mut self, factor: f64) -> Self {
        self.latency_factor = factor;
        self
    }

    /// True if the new version is live at `t_ms`.
    pub fn is_live(&self, t_ms: i64) -> bool {
        t_ms >= self.at_ms
    }
}

/// Click-through rate of feedback lines per experiment arm, each in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArmClickRates {
    pub control: f64,
    pub variant: f64,
}

impl ArmClickRates {
    pub fn new(control: f64, variant: f64) -> Self {
        ArmClickRates { control, variant }
    }
}

/// Ground-truth label lines: a `share` of the inference records get one, `delay_ms` later on
/// average (uniform in `[delay_ms - jitter_ms, delay_ms + jitter_ms]`, at least 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelSpec {
    /// Fraction of inference records that later get a label line, in `[0, 1]`.
    pub share: f64,
    /// Mean delay from the record to its label, in milliseconds (>= 0).
    #[serde(default)]
    pub delay_ms: i64,
    /// Half-width of the uniform spread of the delay, in milliseconds (>= 0).
    #[serde(default)]
    pub jitter_ms: i64,
}

impl LabelSpec {
    pub fn new(share: f64, delay_ms: i64, jitter_ms: i64) -> Self {
        LabelSpec {
            share,
            delay_ms,
            jitter_ms,
        }
    }
}

/// Labels waiting for their due time at most; beyond, new ones are dropped (and counted by
/// [`Generator::labels_dropped`]).
pub const MAX_PENDING_LABELS: usize = 1_000_000;

/// Inference records summarised by one batch statistics line.
pub const BATCH_SIZE: usize = 64;

/// Everything the generator needs. Shares are per line and must sum to at most 1; the rest
/// of the lines are inference records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeneratorConfig {
    pub seed: u64,
    pub models: Vec<ModelSpec>,
    /// Emit `experiment_assignment` ("control"/"variant", 50/50) on inference records.
    pub arms: bool,
    pub malformed_share: f64,
    pub error_share: f64,
    pub timing_share: f64,
    pub feedback_share: f64,
    /// Share of numeric feature values written as `null`.
    pub missing_share: f64,
    pub drifts: Vec<DriftSpec>,
    /// Seed of the line stream only. `seed` fixes the models (distribution
    /// parameters, vocabularies); a different `stream_seed` draws fresh
    /// lines from the same models, e.g. live traffic after a reference file.
    pub stream_seed: Option<u64>,
    /// Lean inference lines: no logging envelope (level, message, service,
    /// module, function, line), no `input_hash`, features named `fNN`. About
    /// 450 bytes with 20 features: the benchmark shape of the engine issue.
    /// No batch statistics lines are written in this mode (their share goes
    /// to inference records).
    pub compact: bool,
    /// Share of batch statistics lines (`"Batch data and prediction statistics"`), each
    /// summarising [`BATCH_SIZE`] records of one model; 0 by default.
    pub batch_share: f64,
    /// A worse version of one model deployed at some time; none by default.
    pub deploy: Option<DeploySpec>,
    /// Per-arm click-through rates of feedback lines; `None` means 30% on either arm.
    pub click_rates: Option<ArmClickRates>,
    /// Ground-truth label lines for a share of the inference records; `None` (the default)
    /// writes none and draws nothing for them.
    pub labels: Option<LabelSpec>,
}

const DEFAULT_MODEL_NAMES: [&str; 8] = [
    "fraud-v1",
    "recsys-v3",
    "churn-v2",
    "credit-v5",
    "vision-v1",
    "pricing-v4",
    "ranker-v2",
    "spam-v7",
];

impl Default for GeneratorConfig {
    /// Seed 42; `fraud-v1` (classes fraud/legit) and `recsys-v3` (five item categories),
    /// 8 features each; arms on; 0.5% malformed, 1% errors, 10% timing, 5% feedback lines,
    /// no batch statistics lines; 1% missing numeric values; no drift, no deploy; 30% clicks
    /// on either arm.
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            models: vec![
                ModelSpec::new("fraud-v1")
                    .with_features(8)
                    .with_classes(&[("fraud", 0.04), ("legit", 0.96)]),
                ModelSpec::new("recsys-v3").with_features(8).with_classes(&[
                    ("electronics", 0.35),
                    ("books", 0.25),
                    ("fashion", 0.2),
                    ("home", 0.12),
                    ("sports", 0.08),
                ]),
            ],
            arms: true,
            malformed_share: 0.005,
            error_share: 0.01,
            timing_share: 0.10,
            feedback_share: 0.05,
            missing_share: 0.01,
            drifts: Vec::new(),
            stream_seed: None,
            compact: false,
            batch_share: 0.0,
            deploy: None,
            click_rates: None,
            labels: None,
        }
    }
}

impl GeneratorConfig {
    /// `models` models with `features` features each and default classes, named `fraud-v1`,
    /// `recsys-v3`, ... then `model-08`, `model-09`, ...; other settings as [`Default`].
    pub fn synthetic(seed: u64, models: usize, features: usize) -> Self {
        let defaults = GeneratorConfig::default().models;
        let models = (0..models)
            .map(|i| match defaults.get(i) {
                // The first two keep their realistic classes (fraud/legit ...).
                Some(spec) => spec.clone().with_features(features),
                None => {
                    let name = DEFAULT_MODEL_NAMES
                        .get(i)
                        .map_or_else(|| format!("model-{i:02}"), |n| (*n).to_string());
                    ModelSpec::new(name).with_features(features)
                }
            })
            .collect();
        GeneratorConfig {
            seed,
            models,
            ..Default::default()
        }
    }

    /// Only inference records: no malformed, error, timing or feedback lines.
    /// Lean ~450-byte lines (see [`GeneratorConfig::compact`]).
    pub fn compact(mut self) -> Self {
        self.compact = true;
        self
    }

    /// Only inference records: no malformed, error, timing, feedback or batch lines.
    pub fn inference_only(mut self) -> Self {
        self.malformed_share = 0.0;
        self.error_share = 0.0;
        self.timing_share = 0.0;
        self.feedback_share = 0.0;
        self.batch_share = 0.0;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the feature count of every model.
    pub fn with_features(mut self, features: usize) -> Self {
        for m in &mut self.models {
            m.features = features;
        }
        self
    }

    /// Sets the categorical share of every model.
    pub fn with_categorical_share(mut self, share: f64) -> Self {
        for m in &mut self.models {
            m.categorical_share = share;
        }
        self
    }

    pub fn with_drift(mut self, drift: DriftSpec) -> Self {
        self.drifts.push(drift);
        self
    }

    /// Sets the share of batch statistics lines.
    pub fn with_batch_share(mut self, share: f64) -> Self {
        self.batch_share = share;
        self
    }

    /// Deploys a worse version of a model (replacing any earlier deploy).
    pub fn with_deploy(mut self, deploy: DeploySpec) -> Self {
        self.deploy = Some(deploy);
        self
    }

    /// Feedback lines click with rate `control` / `variant` by the arm of their record.
    pub fn with_click_rates(mut self, control: f64, variant: f64) -> Self {
        self.click_rates = Some(ArmClickRates { control, variant });
        self
    }

    /// Writes ground-truth label lines for a share of the inference records.
    pub fn with_labels(mut self, spec: LabelSpec) -> Self {
        self.labels = Some(spec);
        self
    }
}

/// Why a [`GeneratorConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid generator config: {0}")]
pub struct GeneratorError(pub String);

/// What [`Generator::next_line`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineKind {
    Inference,
    Error,
    Timing,
    Feedback,
    /// A batch statistics line (`"Batch data and prediction statistics"`).
    BatchStats,
    /// A ground-truth label line (`"Ground truth received"`), with
    /// [`GeneratorConfig::labels`] on.
    Label,
    Malformed(MalformedKind),
}

impl LineKind {
    pub fn is_malformed(self) -> bool {
        matches!(self, LineKind::Malformed(_))
    }
}

/// The ways a malformed line is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MalformedKind {
    /// An inference record cut off mid-way (not valid JSON).
    Truncated,
    /// Valid JSON, but an array rather than an object.
    JsonArray,
    /// A valid inference object with neither `model_id` nor `model_used`.
    MissingModelId,
    /// Plain text (a stray print or traceback line), not JSON.
    PlainText,
}

/// How a feature's values are drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    Normal {
        mean: f64,
        sd: f64,
    },
    LogNormal {
        mu: f64,
        sigma: f64,
    },
    /// `values[i]` has probability `probs[i]` (Zipf-like, most frequent first).
    Categorical {
        values: Vec<String>,
        probs: Vec<f64>,
    },
    Boolean {
        p_true: f64,
    },
}

/// A model input feature as the generator draws it (before drift).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureInfo {
    pub index: usize,
    pub name: String,
    pub kind: FeatureKind,
}

impl FeatureInfo {
    /// True for string-valued features (not the boolean one).
    pub fn is_categorical(&self) -> bool {
        matches!(self.kind, FeatureKind::Categorical { .. })
    }

    pub fn is_numeric(&self) -> bool {
        matches!(
            self.kind,
            FeatureKind::Normal { .. } | FeatureKind::LogNormal { .. }
        )
    }

    /// Baseline mean of a numeric feature.
    pub fn mean(&self) -> Option<f64> {
        match self.kind {
            FeatureKind::Normal { mean, .. } => Some(mean),
            FeatureKind::LogNormal { mu, sigma } => Some((mu + sigma * sigma / 2.0).exp()),
            _ => None,
        }
    }

    /// Baseline standard deviation of a numeric feature: the unit of mean-shift drifts.
    pub fn sd(&self) -> Option<f64> {
        match self.kind {
            FeatureKind::Normal { sd, .. } => Some(sd),
            FeatureKind::LogNormal { mu, sigma } => {
                let s2 = sigma * sigma;
                Some(((s2.exp() - 1.0) * (2.0 * mu + s2).exp()).sqrt())
            }
            _ => None,
        }
    }
}

/// One feature value of a record as drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DrawnValue {
    /// A missing number (`null` in the line).
    Missing,
    /// A number at full precision (the line rounds it to 2 or 3 decimals).
    Num(f64),
    /// The `k`-th value of the feature's vocabulary.
    Category(usize),
    /// The `k`-th value that new-category drifts inject into the model.
    Injected(usize),
    Bool(bool),
}

/// What an inference record holds besides its feature values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RecordHead {
    request_id: u64,
    /// Index into the model's classes.
    class: usize,
    /// Truncated to the 4 decimals the line prints, so it stays below 1.
    confidence: f64,
    arm: Arm,
}

impl Arm {
    fn as_str(self) -> Option<&'static str> {
        match self {
            Arm::None => None,
            Arm::Control => Some("control"),
            Arm::Variant => Some("variant"),
        }
    }
}

/// A record drawn for a line, before it is written.
#[derive(Debug, Clone, Default)]
struct InferenceDraw {
    model: usize,
    head: RecordHead,
    /// One value per feature of the model, in line order.
    values: Vec<DrawnValue>,
}

/// The strings of one model's events, held apart from the generator so that the events
/// [`Generator::next_event`] draws into can borrow them while the generator draws on.
#[derive(Debug, Clone)]
pub struct EventVocabulary {
    /// The model's index in the generator.
    index: usize,
    model: String,
    /// A deployed version's name, and the event time from which lines carry it.
    deployed: Option<(i64, String)>,
    features: Vec<String>,
    /// Per feature, its vocabulary (empty for other kinds).
    categories: Vec<Vec<String>>,
    injected: Vec<String>,
    classes: Vec<String>,
}

impl EventVocabulary {
    /// An event of this model, its features named and missing, for [`Generator::next_event`].
    pub fn event(&self) -> Event<'_> {
        Event {
            model: Cow::Borrowed(&self.model),
            arm: None,
            time: EventTime::Missing,
            features: self
                .features
                .iter()
                .map(|name| (Cow::Borrowed(name.as_str()), FeatureValue::Missing))
                .collect(),
            prediction: None,
            confidence: None,
            level: None,
            service: None,
            error_type: None,
            request_id: None,
            stages: Vec::new(),
            issues: 0,
        }
    }

    /// Feature `i`'s drawn value as the decoder reads it from the line (numbers unrounded).
    fn value(&self, i: usize, v: DrawnValue) -> FeatureValue<'_> {
        match v {
            DrawnValue::Missing => FeatureValue::Missing,
            DrawnValue::Num(x) => FeatureValue::Num(x),
            DrawnValue::Category(k) => FeatureValue::Cat(Cow::Borrowed(&self.categories[i][k])),
            DrawnValue::Injected(k) => FeatureValue::Cat(Cow::Borrowed(&self.injected[k])),
            DrawnValue::Bool(b) => FeatureValue::Cat(Cow::Borrowed(bool_word(b))),
        }
    }

    /// The rest of what the decoder reads from the line at `t_ms`: model (a deployed
    /// version's name once it is live), arm, time, prediction and confidence.
    fn fill_head<'v>(&'v self, head: &RecordHead, t_ms: i64, ev: &mut Event<'v>) {
        ev.model = Cow::Borrowed(match &self.deployed {
            Some((at_ms, name)) if t_ms >= *at_ms => name,
            _ => &self.model,
        });
        ev.arm = head.arm.as_str().map(Cow::Borrowed);
        ev.time = EventTime::Parsed(t_ms);
        ev.prediction = Some(Prediction::Label(Cow::Borrowed(&self.classes[head.class])));
        ev.confidence = Some(head.confidence);
    }
}

fn bool_word(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// Formats `t_ms` (milliseconds since the Unix epoch) the way Python's `logging` formats
/// `asctime` by default, in UTC: `2025-12-14 10:00:00,123`.
pub fn python_log_timestamp(t_ms: i64) -> String {
    let mut s = String::with_capacity(23);
    write_python_log_timestamp(&mut s, t_ms);
    s
}

/// Appends the [`python_log_timestamp`] of `t_ms` to `out`.
pub fn write_python_log_timestamp(out: &mut String, t_ms: i64) {
    let days = t_ms.div_euclid(86_400_000);
    let ms_of_day = t_ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    if (0..=9999).contains(&y) {
        push2(out, (y / 100) as u32);
        push2(out, (y % 100) as u32);
    } else {
        let _ = write!(out, "{y:04}");
    }
    out.push('-');
    push2(out, m);
    out.push('-');
    push2(out, d);
    out.push(' ');
    push2(out, (secs / 3600) as u32);
    out.push(':');
    push2(out, (secs / 60 % 60) as u32);
    out.push(':');
    push2(out, (secs % 60) as u32);
    out.push(',');
    let ms = (ms_of_day % 1000) as u32;
    out.push(char::from(b'0' + (ms / 100) as u8));
    push2(out, ms % 100);
}

fn push2(out: &mut String, v: u32) {
    out.push(char::from(b'0' + (v / 10) as u8));
    out.push(char::from(b'0' + (v % 10) as u8));
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm); done by
/// hand because chrono's formatter is far slower than the rest of a line.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const NUMERIC_WORDS: [&str; 20] = [
    "amount",
    "age_days",
    "balance",
    "txn_count",
    "latency",
    "score",
    "distance_km",
    "duration_s",
    "price",
    "ratio",
    "tenure_m",
    "clicks",
    "sessions",
    "income",
    "debt",
    "velocity",
    "rating",
    "temp",
    "basket_size",
    "page_views",
];

const CATEGORICAL_POOLS: [(&str, &[&str]); 11] = [
    (
        "country",
        &[
            "US", "DE", "GB", "FR", "IN", "BR", "JP", "CA", "ES", "IT", "NL", "SE", "PL", "MX",
            "AU", "KR", "CH", "AT", "BE", "DK", "NO", "FI", "IE", "PT", "CZ", "RO", "HU", "GR",
            "TR", "AR",
        ],
    ),
    (
        "device",
        &[
            "mobile", "desktop", "tablet", "smart_tv", "console", "watch", "kiosk",
        ],
    ),
    (
        "channel",
        &[
            "web",
            "ios",
            "android",
            "api",
            "pos",
            "call_center",
            "partner",
            "email",
        ],
    ),
    (
        "category",
        &[
            "electronics",
            "books",
            "fashion",
            "home",
            "sports",
            "toys",
            "beauty",
            "grocery",
            "garden",
            "auto",
            "music",
            "games",
            "health",
            "office",
            "pets",
            "baby",
            "jewelry",
            "travel",
        ],
    ),
    (
        "browser",
        &[
            "chrome", "safari", "firefox", "edge", "opera", "samsung", "brave", "vivaldi", "uc",
        ],
    ),
    (
        "os",
        &[
            "android", "ios", "windows", "macos", "linux", "chromeos", "tizen",
        ],
    ),
    (
        "currency",
        &[
            "USD", "EUR", "GBP", "JPY", "INR", "BRL", "CAD", "AUD", "CHF", "SEK", "PLN", "MXN",
            "KRW", "NOK", "DKK", "CZK", "HUF", "TRY", "ZAR", "NZD",
        ],
    ),
    (
        "plan",
        &[
            "free",
            "basic",
            "plus",
            "pro",
            "team",
            "enterprise",
            "trial",
            "student",
        ],
    ),
    (
        "merchant",
        &[
            "grocery",
            "fuel",
            "restaurants",
            "airlines",
            "hotels",
            "electronics",
            "apparel",
            "pharmacy",
            "gaming",
            "subscriptions",
            "utilities",
            "telecom",
        ],
    ),
    (
        "language",
        &[
            "en", "de", "fr", "es", "pt", "ja", "it", "nl", "sv", "pl", "ko", "zh", "ru", "tr",
            "ar", "hi",
        ],
    ),
    (
        "segment",
        &["new", "casual", "loyal", "vip", "dormant", "churn_risk"],
    ),
];

const BOOLEAN_WORD: &str = "is_returning";

/// Layout depends only on count and share, never on the seed, so names are stable.
fn feature_layout(n: usize, categorical_share: f64) -> Vec<(String, LayoutKind)> {
    let has_bool = n >= 2;
    let m = n - usize::from(has_bool);
    let k = ((m as f64) * categorical_share).round() as usize;
    let k = k.min(m);
    let (mut num_i, mut cat_i) = (0, 0);
    (0..n)
        .map(|i| {
            // Bresenham-style spread keeps categoricals evenly interleaved with numerics and
            // puts one at index 1 for the usual shares (`f01_country`, like the seed's logs).
            let kind = if has_bool && i == n - 1 {
                LayoutKind::Boolean
            } else if k > 0 && (i * k + (m - k)) % m < k {
                LayoutKind::Categorical(cat_i)
            } else {
                LayoutKind::Numeric(num_i)
            };
            let word = match kind {
                LayoutKind::Boolean => BOOLEAN_WORD,
                LayoutKind::Categorical(j) => {
                    cat_i += 1;
                    CATEGORICAL_POOLS[j % CATEGORICAL_POOLS.len()].0
                }
                LayoutKind::Numeric(j) => {
                    num_i += 1;
                    NUMERIC_WORDS[j % NUMERIC_WORDS.len()]
                }
            };
            (format!("f{i:02}_{word}"), kind)
        })
        .collect()
}

#[derive(Clone, Copy)]
enum LayoutKind {
    Numeric(usize),
    Categorical(usize),
    Boolean,
}

/// Internal sampler for one feature, with everything the hot loop needs pre-rendered.
#[derive(Debug, Clone)]
struct FeatureGen {
    /// `"fNN_word": ` ready to push.
    key: String,
    kind: GenKind,
}

#[derive(Debug, Clone)]
enum GenKind {
    Numeric {
        normal: bool,
        /// Normal: mean/sd; log-normal: mu/sigma of the underlying normal.
        a: f64,
        b: f64,
        /// Baseline mean and sd of the values, the frame drifts are expressed in.
        mean: f64,
        sd: f64,
        decimals: usize,
    },
    Categorical {
        /// Quoted JSON strings.
        values: Vec<String>,
        cum: Vec<f64>,
    },
    Boolean {
        p_true: f64,
    },
}

#[derive(Debug, Clone)]
struct ResolvedDrift {
    start: i64,
    end: Option<i64>,
    ramp: i64,
    effect: ResolvedEffect,
}

#[derive(Debug, Clone)]
enum ResolvedEffect {
    MeanShift {
        features: Vec<usize>,
        sds: f64,
    },
    Variance {
        features: Vec<usize>,
        factor: f64,
    },
    NewCategory {
        feature: usize,
        value: usize,
        share: f64,
    },
    ClassPriors {
        priors: Vec<f64>,
    },
    Outlier {
        features: Vec<usize>,
        share: f64,
        sds: f64,
    },
    AccuracyDrop {
        features: Vec<usize>,
        sds: f64,
        drop: f64,
    },
}

#[derive(Debug, Clone)]
struct ModelState {
    name: String,
    /// `"model_id": "name"` (or `model_used`), pre-rendered.
    model_kv: String,
    /// The worse version replacing this model, if one is deployed.
    deploy: Option<ModelDeploy>,
    info: Vec<FeatureInfo>,
    gens: Vec<FeatureGen>,
    /// Quoted JSON strings.
    classes: Vec<String>,
    class_labels: Vec<String>,
    base_priors: Vec<f64>,
    base_cum: Vec<f64>,
    latency_mu: f64,
    drifts: Vec<ResolvedDrift>,
    /// Drift-injected categories, and the same as quoted JSON strings.
    injected: Vec<String>,
    new_values: Vec<String>,
    // Per-line drift state, reused so drifted lines allocate nothing either.
    shift: Vec<f64>,
    sd_mult: Vec<f64>,
    outlier: Vec<(f64, f64)>,
    newcat: Vec<(f64, usize)>,
    /// What active accuracy drops take off every confidence.
    conf_drop: f64,
    cum_scratch: Vec<f64>,
    prior_scratch: Vec<f64>,
}

#[derive(Debug, Clone)]
struct ModelDeploy {
    at_ms: i64,
    name: String,
    /// `"model_id": "new_name"` (same key as the model's), pre-rendered.
    model_kv: String,
    extra_error_share: f64,
    latency_factor: f64,
}

impl ModelState {
    /// The deployed new version if it is live at `t_ms`.
    fn deployed(&self, t_ms: i64) -> Option<&ModelDeploy> {
        self.deploy.as_ref().filter(|d| t_ms >= d.at_ms)
    }

    /// The pre-rendered model key-value a line at `t_ms` carries.
    fn model_kv_at(&self, t_ms: i64) -> &str {
        match self.deployed(t_ms) {
            Some(d) => &d.model_kv,
            None => &self.model_kv,
        }
    }
}

/// The experiment arm of a recorded request (`None` with arms off or for unknown requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Arm {
    #[default]
    None,
    Control,
    Variant,
}

const RECENT: usize = 64;
const NO_NEWCAT: usize = usize::MAX;

/// The seeded line generator. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Generator {
    rng: SmallRng,
    models: Vec<ModelState>,
    traffic_cum: Vec<f64>,
    /// Cumulative thresholds for malformed, error, timing, feedback, batch statistics.
    kind_cum: [f64; 5],
    arms: bool,
    missing_share: f64,
    /// Feature object of the current record; written first so `input_hash` can hash it.
    features_buf: String,
    /// The record being written.
    record: InferenceDraw,
    /// Numeric values drawn as outliers so far.
    outliers: u64,
    /// Recent inference request ids, models and arms, so timing and feedback lines refer
    /// to requests that exist, as in the real service.
    recent: [(u64, usize, Arm); RECENT],
    recent_len: usize,
    recent_pos: usize,
    latest_untimed: bool,
    last_model: Option<usize>,
    compact: bool,
    click_rates: Option<ArmClickRates>,
    /// Class counts of the current batch statistics line.
    batch_counts: Vec<u32>,
    /// Pending ground-truth labels, with [`GeneratorConfig::labels`] on.
    labels: Option<Labels>,
}

/// Seed offset of the label stream, so that label draws leave the line stream untouched.
const LABEL_SEED: u64 = 0x6c61_6265_6c5f_7275;

/// The state of label lines: their own random stream and the labels not yet due.
#[derive(Debug, Clone)]
struct Labels {
    rng: SmallRng,
    spec: LabelSpec,
    /// Min-heap by due time, then by insertion order.
    pending: BinaryHeap<Reverse<PendingLabel>>,
    seq: u64,
    cap: usize,
    dropped: u64,
}

/// A label waiting for its due time (field order is the heap order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PendingLabel {
    due_ms: i64,
    seq: u64,
    request_id: u64,
    model: u32,
    /// Index into the model's classes.
    class: u32,
}

impl Labels {
    /// Draws whether the record `head` of model `model` (of `classes` classes) at `t_ms`
    /// gets a label and, if so, its true class and due time, and queues it.
    fn draw(&mut self, t_ms: i64, model: usize, classes: usize, head: &RecordHead) {
        let rng = &mut self.rng;
        if rng.random::<f64>() >= self.spec.share {
            return;
        }
        // Calibrated: correct with the probability the record states, as printed.
        let correct = classes <= 1 || rng.random::<f64>() < head.confidence;
        let class = if correct {
            head.class
        } else {
            let other = rng.random_range(0..classes - 1);
            other + usize::from(other >= head.class)
        };
        let (delay, jitter) = (self.spec.delay_ms, self.spec.jitter_ms);
        let delay = if jitter > 0 {
            rng.random_range(delay - jitter..=delay.saturating_add(jitter))
                .max(0)
        } else {
            delay
        };
        if self.pending.len() >= self.cap {
            self.dropped += 1;
            return;
        }
        self.pending.push(Reverse(PendingLabel {
            due_ms: t_ms.saturating_add(delay),
            seq: self.seq,
            request_id: head.request_id,
            model: model as u32,
            class: class as u32,
        }));
        self.seq += 1;
    }

    /// The earliest pending label if it is due at `t_ms`.
    fn pop_due(&mut self, t_ms: i64) -> Option<PendingLabel> {
        match self.pending.peek() {
            Some(Reverse(p)) if p.due_ms <= t_ms => self.pending.pop().map(|Reverse(p)| p),
            _ => None,
        }
    }
}

fn check_labels(spec: Option<&LabelSpec>) -> Result<(), GeneratorError> {
    let Some(l) = spec else {
        return Ok(());
    };
    let err = |s: String| Err(GeneratorError(format!("labels: {s}")));
    if !(0.0..=1.0).contains(&l.share) {
        return err(format!("share {} is outside [0, 1]", l.share));
    }
    if l.delay_ms < 0 {
        return err(format!("delay_ms {} is negative", l.delay_ms));
    }
    if l.jitter_ms < 0 {
        return err(format!("jitter_ms {} is negative", l.jitter_ms));
    }
    Ok(())
}

impl Generator {
    /// Builds a generator.
    ///
    /// # Panics
    /// If the config is invalid; use [`Generator::try_new`] to get the reason as an error.
    pub fn new(cfg: GeneratorConfig) -> Self {
        match Self::try_new(cfg) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    /// Builds a generator, rejecting configs that would produce nonsense: shares outside
    /// `[0, 1]` or summing past 1, no models, duplicate names, bad class priors, drifts
    /// naming unknown models or features, or effects that do not fit the feature kind.
    pub fn try_new(cfg: GeneratorConfig) -> Result<Self, GeneratorError> {
        let kind_cum = line_kind_thresholds(&cfg)?;
        check_click_rates(cfg.click_rates.as_ref())?;
        check_labels(cfg.labels.as_ref())?;
        let mut models = build_models(&cfg)?;
        if let Some(d) = &cfg.deploy {
            attach_deploy(&cfg.models, &mut models, d)?;
        }
        for (di, d) in cfg.drifts.iter().enumerate() {
            attach_drift(&mut models, di, d)?;
        }
        Ok(Generator {
            rng: SmallRng::seed_from_u64(cfg.stream_seed.unwrap_or(cfg.seed)),
            models,
            traffic_cum: traffic_thresholds(&cfg.models),
            kind_cum,
            arms: cfg.arms,
            missing_share: cfg.missing_share,
            features_buf: String::with_capacity(1024),
            record: InferenceDraw::default(),
            outliers: 0,
            recent: [(0, 0, Arm::None); RECENT],
            recent_len: 0,
            recent_pos: 0,
            latest_untimed: false,
            last_model: None,
            compact: cfg.compact,
            click_rates: cfg.click_rates,
            batch_counts: Vec::new(),
            labels: cfg.labels.map(|spec| Labels {
                rng: SmallRng::seed_from_u64(cfg.stream_seed.unwrap_or(cfg.seed) ^ LABEL_SEED),
                spec,
                pending: BinaryHeap::new(),
                seq: 0,
                cap: MAX_PENDING_LABELS,
                dropped: 0,
            }),
        })
    }

    /// Model names, in config order (the index used by the other accessors).
    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    /// The features of model `model`, in line order, with their baseline distributions.
    ///
    /// # Panics
    /// If `model` is out of range.
    pub fn features(&self, model: usize) -> &[FeatureInfo] {
        &self.models[model].info
    }

    /// Feature names of model `model`, in line order.
    pub fn feature_names(&self, model: usize) -> Vec<&str> {
        self.models[model]
            .info
            .iter()
            .map(|f| f.name.as_str())
            .collect()
    }

    /// Names of the categorical (string-valued) features of model `model`.
    pub fn categorical_feature_names(&self, model: usize) -> Vec<&str> {
        self.models[model]
            .info
            .iter()
            .filter(|f| f.is_categorical())
            .map(|f| f.name.as_str())
            .collect()
    }

    /// The model the last line was about (`None` for plain-text and array malformed lines;
    /// for feedback and label lines, the model of the request they name).
    pub fn last_model(&self) -> Option<usize> {
        self.last_model
    }

    /// Draws the next inference record of `vocabulary`'s model at `t_ms` straight into `ev`
    /// (made by [`EventVocabulary::event`]) without writing a line: what an inference line of
    /// that model holds, as the decoder would read it, with the same distributions and drifts
    /// drawn in the same order. For callers that skip the text (the scenario suite). It draws
    /// no line kind, model or deploy failure, so a stream of these is not the stream of
    /// [`Generator::next_line`].
    pub fn next_event<'v>(
        &mut self,
        t_ms: i64,
        vocabulary: &'v EventVocabulary,
        ev: &mut Event<'v>,
    ) {
        debug_assert_eq!(
            ev.features.len(),
            vocabulary.features.len(),
            "not its event"
        );
        let slots = &mut ev.features;
        let head = self.draw_record(t_ms, vocabulary.index, |i, v| {
            slots[i].1 = vocabulary.value(i, v);
        });
        vocabulary.fill_head(&head, t_ms, ev);
    }

    /// The strings of model `model`'s events, drift-injected categories and a deployed
    /// version's name included, for the events [`Generator::next_event`] draws.
    ///
    /// # Panics
    /// If `model` is out of range.
    pub fn vocabulary(&self, model: usize) -> EventVocabulary {
        let m = &self.models[model];
        EventVocabulary {
            index: model,
            model: m.name.clone(),
            deployed: m.deploy.as_ref().map(|d| (d.at_ms, d.name.clone())),
            features: m.info.iter().map(|f| f.name.clone()).collect(),
            categories: m
                .info
                .iter()
                .map(|f| match &f.kind {
                    FeatureKind::Categorical { values, .. } => values.clone(),
                    _ => Vec::new(),
                })
                .collect(),
            injected: m.injected.clone(),
            classes: m.class_labels.clone(),
        }
    }

    /// Numeric values drawn as outliers (by outlier-burst drifts) so far.
    pub fn outliers_injected(&self) -> u64 {
        self.outliers
    }

    /// Labels not written because [`MAX_PENDING_LABELS`] were pending already.
    pub fn labels_dropped(&self) -> u64 {
        self.labels.as_ref().map_or(0, |l| l.dropped)
    }

    /// Labels drawn but not yet due (written by a later [`Generator::next_line`]).
    pub fn labels_pending(&self) -> usize {
        self.labels.as_ref().map_or(0, |l| l.pending.len())
    }

    /// Writes one line (no trailing newline) for event time `t_ms` into `out`, which is
    /// cleared first, and says what kind of line it is.
    ///
    /// With [`GeneratorConfig::labels`] on, a label due at `t_ms` or before is written
    /// instead of drawing a line (the earliest first), so the other lines are those of the
    /// stream without labels, in the same order.
    pub fn next_line(&mut self, t_ms: i64, out: &mut String) -> LineKind {
        out.clear();
        if let Some(label) = self.labels.as_mut().and_then(|l| l.pop_due(t_ms)) {
            self.write_label(t_ms, label, out);
            return LineKind::Label;
        }
        let u: f64 = self.rng.random();
        if u < self.kind_cum[0] {
            LineKind::Malformed(self.write_malformed(t_ms, out))
        } else if u < self.kind_cum[1] {
            let m = self.pick_model();
            self.write_error(t_ms, m, false, out);
            LineKind::Error
        } else if u < self.kind_cum[2] {
            self.write_timing(t_ms, out);
            LineKind::Timing
        } else if u < self.kind_cum[3] {
            self.write_feedback(t_ms, out);
            LineKind::Feedback
        } else if u < self.kind_cum[4] {
            self.write_batch(t_ms, out);
            LineKind::BatchStats
        } else {
            let m = self.pick_model();
            // Only a live deploy with extra errors draws here, so other streams are unchanged.
            let fail = self.models[m]
                .deployed(t_ms)
                .map_or(0.0, |d| d.extra_error_share);
            if fail > 0.0 && self.rng.random::<f64>() < fail {
                self.write_error(t_ms, m, true, out);
                return LineKind::Error;
            }
            self.write_inference(t_ms, m, true, out);
            if let Some(labels) = &mut self.labels {
                let classes = self.models[m].classes.len();
                labels.draw(t_ms, m, classes, &self.record.head);
            }
            LineKind::Inference
        }
    }

    /// A ground-truth label line at `t_ms`: the request's true class, by name, and when the
    /// label was due (`label_timestamp`, epoch seconds; not in compact mode).
    fn write_label(&mut self, t_ms: i64, label: PendingLabel, out: &mut String) {
        let m = label.model as usize;
        self.last_model = Some(m);
        if self.compact {
            write_header(out, t_ms, "\"");
        } else {
            write_header(out, t_ms, LABEL_ENVELOPE);
        }
        write_request_id(out, label.request_id);
        out.push_str(", \"ground_truth\": ");
        out.push_str(&self.models[m].classes[label.class as usize]);
        if !self.compact {
            let us = label.due_ms.saturating_mul(1000);
            let _ = write!(
                out,
                ", \"label_timestamp\": {}.{:06}",
                us.div_euclid(1_000_000),
                us.rem_euclid(1_000_000)
            );
        }
        out.push('}');
    }

    fn pick_model(&mut self) -> usize {
        let m = if self.models.len() == 1 {
            0
        } else {
            pick(&self.traffic_cum, self.rng.random())
        };
        self.last_model = Some(m);
        m
    }

    fn new_request_id(&mut self) -> u64 {
        self.rng.random::<u64>() >> 16
    }

    /// Writes an inference record of model `m` (or, without `with_model`, the malformed one
    /// that names no model).
    fn write_inference(&mut self, t_ms: i64, m: usize, with_model: bool, out: &mut String) {
        let mut draw = std::mem::take(&mut self.record);
        draw.model = m;
        draw.values.clear();
        let values = &mut draw.values;
        draw.head = self.draw_record(t_ms, m, |_, v| values.push(v));
        self.write_inference_line(t_ms, &draw, with_model, out);
        if with_model {
            self.recent[self.recent_pos] = (draw.head.request_id, m, draw.head.arm);
            self.recent_pos = (self.recent_pos + 1) % RECENT;
            self.recent_len = (self.recent_len + 1).min(RECENT);
            self.latest_untimed = true;
        }
        self.record = draw;
    }

    /// Draws a record of model `m` at `t_ms` in the order the lines have always drawn it:
    /// request id, feature values (each handed to `put` with its index), class, confidence,
    /// arm. The one place a record is drawn, for the lines and the typed events alike.
    fn draw_record(
        &mut self,
        t_ms: i64,
        m: usize,
        put: impl FnMut(usize, DrawnValue),
    ) -> RecordHead {
        let request_id = self.new_request_id();
        let model = &mut self.models[m];
        let rng = &mut self.rng;
        let drifted = !model.drifts.is_empty() && apply_drifts(model, t_ms);
        let outliers = &mut self.outliers;
        draw_features(rng, self.missing_share, model, drifted, outliers, put);
        let conf_drop = if drifted { model.conf_drop } else { 0.0 };
        let cum: &[f64] = if model.drifts.is_empty() {
            &model.base_cum
        } else {
            class_cum_at(model, t_ms)
        };
        let class = pick(cum, rng.random());
        // sqrt skews confidence towards 1 like a trained classifier; truncating to 4
        // decimals keeps the printed value strictly below 1.
        let conf = lower_confidence(0.5 + 0.5 * rng.random::<f64>().sqrt(), conf_drop);
        let arm = if !self.arms {
            Arm::None
        } else if rng.random::<bool>() {
            Arm::Variant
        } else {
            Arm::Control
        };
        RecordHead {
            request_id,
            class,
            confidence: (conf * 1e4).floor() / 1e4,
            arm,
        }
    }

    /// The JSON line of `draw`.
    fn write_inference_line(
        &mut self,
        t_ms: i64,
        draw: &InferenceDraw,
        with_model: bool,
        out: &mut String,
    ) {
        let model = &self.models[draw.model];
        write_features(&mut self.features_buf, model, &draw.values);
        let hash = hash64(self.features_buf.as_bytes()) as i64;
        if self.compact {
            write_header(out, t_ms, "\"");
        } else {
            write_header(out, t_ms, INFERENCE_ENVELOPE);
        }
        write_request_id(out, draw.head.request_id);
        if with_model {
            out.push_str(", ");
            out.push_str(model.model_kv_at(t_ms));
        }
        if !self.compact {
            out.push_str(", \"input_hash\": ");
            if hash < 0 {
                out.push('-');
            }
            push_u64(out, hash.unsigned_abs());
        }
        out.push_str(", \"prediction\": ");
        out.push_str(&model.classes[draw.head.class]);
        out.push_str(", \"confidence\": ");
        write_float(out, draw.head.confidence, 4);
        if let Some(arm) = draw.head.arm.as_str() {
            out.push_str(", \"experiment_assignment\": \"");
            out.push_str(arm);
            out.push('"');
        }
        out.push_str(", \"input_features\": ");
        out.push_str(&self.features_buf);
        out.push('}');
    }

    /// An `ERROR` record of model `m`: an input validation failure, or with `runtime` a
    /// `ModelRuntimeError` of a deployed worse version.
    fn write_error(&mut self, t_ms: i64, m: usize, runtime: bool, out: &mut String) {
        let req = self.new_request_id();
        let model = &self.models[m];
        write_header(out, t_ms, ERROR_ENVELOPE);
        write_request_id(out, req);
        out.push_str(", ");
        out.push_str(model.model_kv_at(t_ms));
        if runtime {
            let msg = RUNTIME_ERRORS[self.rng.random_range(0..RUNTIME_ERRORS.len())];
            let _ = write!(
                out,
                ", \"error_type\": \"ModelRuntimeError\", \"error_message\": \"{msg}\"}}"
            );
            return;
        }
        let f = self.rng.random_range(0..model.info.len());
        out.push_str(", \"error_type\": \"InputValidationError\", \"error_message\": ");
        let _ = write!(
            out,
            "\"Input validation failed for feature {}\"}}",
            model.info[f].name
        );
    }

    /// A batch statistics line: [`BATCH_SIZE`] records of one model at `t_ms`, summarised.
    fn write_batch(&mut self, t_ms: i64, out: &mut String) {
        let m = self.pick_model();
        let batch_id: u32 = self.rng.random();
        // The batch closes a little before the analysis is logged.
        let end_us = t_ms * 1000 - self.rng.random_range(0..50_000);
        let model = &mut self.models[m];
        let rng = &mut self.rng;
        let drifted = !model.drifts.is_empty() && apply_drifts(model, t_ms);

        // Predictions first: the drifted class distribution borrows the model mutably.
        let counts = &mut self.batch_counts;
        counts.clear();
        counts.resize(model.classes.len(), 0);
        let conf_drop = if drifted { model.conf_drop } else { 0.0 };
        let cum: &[f64] = if model.drifts.is_empty() {
            &model.base_cum
        } else {
            class_cum_at(model, t_ms)
        };
        let mut conf_sum = 0.0;
        for _ in 0..BATCH_SIZE {
            counts[pick(cum, rng.random())] += 1;
            // As write_inference: skewed towards 1, truncated to 4 decimals.
            let conf = lower_confidence(0.5 + 0.5 * rng.random::<f64>().sqrt(), conf_drop);
            conf_sum += (conf * 1e4).floor() / 1e4;
        }
        let model = &*model;

        write_header(out, t_ms, BATCH_ENVELOPE);
        out.push_str(", \"batch_id\": \"batch_");
        push_hex(out, u64::from(batch_id), 8);
        let _ = write!(
            out,
            "\", \"timestamp_end\": {}.{:06}, \"input_stats\": {{",
            end_us.div_euclid(1_000_000),
            end_us.rem_euclid(1_000_000)
        );
        let mut first = true;
        for (i, info) in model.info.iter().enumerate() {
            if !info.is_numeric() {
                continue;
            }
            let (mut sum, mut n) = (0.0, 0u32);
            for _ in 0..BATCH_SIZE {
                let outliers = &mut self.outliers;
                if let Some(x) = draw_numeric(rng, self.missing_share, model, i, drifted, outliers)
                {
                    sum += x;
                    n += 1;
                }
            }
            if !first {
                out.push_str(", ");
            }
            first = false;
            // Feature names are generated (`fNN_word`), so they need no escaping.
            out.push('"');
            out.push_str(&info.name);
            out.push_str("_mean\": ");
            if n == 0 {
                out.push_str("null");
            } else {
                write_float(out, sum / f64::from(n), 4);
            }
        }
        out.push_str("}, \"prediction_stats\": {\"class_counts\": {");
        for (i, (class, count)) in model.classes.iter().zip(counts.iter()).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(class);
            out.push_str(": ");
            push_u64(out, u64::from(*count));
        }
        out.push_str("}, \"avg_confidence\": ");
        write_float(out, conf_sum / BATCH_SIZE as f64, 4);
        out.push_str("}, ");
        out.push_str(model.model_kv_at(t_ms));
        out.push('}');
    }

    /// A request id, model and arm from recent inference records (or fresh ones, with no
    /// arm, before any); `latest` prefers the newest record if no timing line has used it yet.
    fn recent_request(&mut self, latest: bool) -> (u64, usize, Arm) {
        if self.recent_len == 0 {
            let m = self.pick_model();
            return (self.new_request_id(), m, Arm::None);
        }
        let back = if latest && self.latest_untimed {
            self.latest_untimed = false;
            1
        } else {
            1 + self.rng.random_range(0..self.recent_len)
        };
        let (req, m, arm) = self.recent[(self.recent_pos + RECENT - back) % RECENT];
        self.last_model = Some(m);
        (req, m, arm)
    }

    fn write_timing(&mut self, t_ms: i64, out: &mut String) {
        let (req, m, _) = self.recent_request(true);
        let inference_mu = self.models[m].latency_mu;
        let factor = self.models[m].deployed(t_ms).map(|d| d.latency_factor);
        let mut lognormal = |mu: f64, sigma: f64| {
            let z: f64 = self.rng.sample(StandardNormal);
            (mu + sigma * z).exp()
        };
        let pre = lognormal(0.7, 0.4);
        let mut inf = lognormal(inference_mu, 0.5);
        if let Some(f) = factor {
            inf *= f;
        }
        let post = lognormal(-0.2, 0.4);
        let overhead = lognormal(-1.0, 0.6);
        let total = pre + inf + post + overhead;
        write_header(out, t_ms, TIMING_ENVELOPE);
        write_request_id(out, req);
        for (key, v) in [
            ("total_latency_ms", total),
            ("preprocessing_ms", pre),
            ("inference_ms", inf),
            ("postprocessing_ms", post),
        ] {
            let _ = write!(out, ", \"{key}\": ");
            write_float(out, v, 3);
        }
        out.push_str(", ");
        out.push_str(self.models[m].model_kv_at(t_ms));
        out.push('}');
    }

    fn write_feedback(&mut self, t_ms: i64, out: &mut String) {
        let (req, _, arm) = self.recent_request(false);
        let user: u32 = self.rng.random_range(1..=100_000);
        // Without per-arm rates every arm clicks 30% of the time; with them a request of
        // unknown arm (arms off, or none recorded yet) clicks at the control rate.
        let click_rate = match self.click_rates {
            None => 0.3,
            Some(r) if arm == Arm::Variant => r.variant,
            Some(r) => r.control,
        };
        let action = if self.rng.random::<f64>() < click_rate {
            "clicked_on_item"
        } else {
            "dismissed_recommendation"
        };
        // The client stamps the action a little before the service logs it.
        let fb_us =
            (t_ms - self.rng.random_range(0..30_000)) * 1000 + self.rng.random_range(0..1000);
        write_header(out, t_ms, FEEDBACK_ENVELOPE);
        write_request_id(out, req);
        let _ = write!(
            out,
            ", \"user_id\": \"user_{user}\", \"action\": \"{action}\", \"feedback_timestamp\": {}.{:06}}}",
            fb_us.div_euclid(1_000_000),
            fb_us.rem_euclid(1_000_000)
        );
    }

    fn write_malformed(&mut self, t_ms: i64, out: &mut String) -> MalformedKind {
        match self.rng.random_range(0..4u8) {
            0 => {
                let m = self.pick_model();
                self.write_inference(t_ms, m, true, out);
                // Any proper prefix of an object is invalid JSON: its outer brace is open.
                let mut cut = self.rng.random_range(1..out.len());
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
                MalformedKind::Truncated
            }
            1 => {
                let m = self.pick_model();
                let class = pick(&self.models[m].base_cum, self.rng.random());
                let model = &self.models[m];
                out.push_str("[{\"timestamp\": \"");
                write_python_log_timestamp(out, t_ms);
                out.push_str("\", ");
                out.push_str(model.model_kv_at(t_ms));
                out.push_str(", \"prediction\": ");
                out.push_str(&model.classes[class]);
                out.push_str("}]");
                MalformedKind::JsonArray
            }
            2 => {
                let m = self.pick_model();
                self.write_inference(t_ms, m, false, out);
                MalformedKind::MissingModelId
            }
            _ => {
                self.last_model = None;
                match self.rng.random_range(0..3u8) {
                    0 => {
                        write_python_log_timestamp(out, t_ms);
                        let pct: u32 = self.rng.random_range(80..100);
                        let _ = write!(
                            out,
                            " - ai_inference_service - WARNING - GPU memory usage at {pct}%"
                        );
                    }
                    1 => out.push_str("Traceback (most recent call last):"),
                    _ => out.push_str("  File \"/app/app.py\", line 42, in predict"),
                }
                MalformedKind::PlainText
            }
        }
    }
}

/// Draws the feature values of one record of `model`, with the drift scratch of
/// [`apply_drifts`] applied when `drifted`, and hands each to `put` with its index.
fn draw_features(
    rng: &mut SmallRng,
    missing_share: f64,
    model: &ModelState,
    drifted: bool,
    outliers: &mut u64,
    mut put: impl FnMut(usize, DrawnValue),
) {
    for (i, g) in model.gens.iter().enumerate() {
        let v = match &g.kind {
            GenKind::Numeric { .. } => {
                draw_numeric(rng, missing_share, model, i, drifted, outliers)
                    .map_or(DrawnValue::Missing, DrawnValue::Num)
            }
            GenKind::Categorical { cum, .. } => {
                let (share, v) = if drifted {
                    model.newcat[i]
                } else {
                    (0.0, NO_NEWCAT)
                };
                if v != NO_NEWCAT && rng.random::<f64>() < share {
                    DrawnValue::Injected(v)
                } else {
                    DrawnValue::Category(pick(cum, rng.random()))
                }
            }
            GenKind::Boolean { p_true } => DrawnValue::Bool(rng.random::<f64>() < *p_true),
        };
        put(i, v);
    }
}

/// Writes the `input_features` object of a record of `model` into `buf`.
fn write_features(buf: &mut String, model: &ModelState, values: &[DrawnValue]) {
    buf.clear();
    buf.push('{');
    for (i, (g, v)) in model.gens.iter().zip(values).enumerate() {
        if i > 0 {
            buf.push_str(", ");
        }
        buf.push_str(&g.key);
        match (*v, &g.kind) {
            (DrawnValue::Num(x), GenKind::Numeric { decimals, .. }) => {
                write_float(buf, x, *decimals)
            }
            (DrawnValue::Category(k), GenKind::Categorical { values, .. }) => {
                buf.push_str(&values[k])
            }
            (DrawnValue::Injected(k), _) => buf.push_str(&model.new_values[k]),
            (DrawnValue::Bool(b), _) => buf.push_str(bool_word(b)),
            // Missing (a value of another kind cannot come from this model's draw).
            _ => buf.push_str("null"),
        }
    }
    buf.push('}');
}

/// Draws numeric feature `i` of `model` as a record does (`None`: a missing value), with the
/// drift scratch of [`apply_drifts`] applied when `drifted`.
#[inline]
fn draw_numeric(
    rng: &mut SmallRng,
    missing_share: f64,
    model: &ModelState,
    i: usize,
    drifted: bool,
    outliers: &mut u64,
) -> Option<f64> {
    let GenKind::Numeric {
        normal,
        a,
        b,
        mean,
        sd,
        ..
    } = model.gens[i].kind
    else {
        return None;
    };
    if missing_share > 0.0 && rng.random::<f64>() < missing_share {
        return None;
    }
    let z: f64 = rng.sample(StandardNormal);
    let mut x = a + b * z;
    if !normal {
        x = exp_of(x);
    }
    if drifted {
        let (o_share, o_sds) = model.outlier[i];
        if o_share > 0.0 && rng.random::<f64>() < o_share {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            let jitter = 1.0 + 0.1 * rng.random::<f64>();
            x = mean + sign * o_sds * sd * jitter;
            *outliers += 1;
        } else {
            x = mean + (x - mean) * model.sd_mult[i] + model.shift[i] * sd;
        }
    }
    Some(x)
}

/// `x.exp()`, out of line: inlined, the compiler computes it for normal features too and
/// throws it away (a select instead of a branch), which was a fifth of drawing a record.
#[inline(never)]
fn exp_of(x: f64) -> f64 {
    x.exp()
}

/// `conf` lowered by an accuracy drop's `drop`, kept in `[0.01, 0.9999]`; unchanged (bit for
/// bit) without one.
#[inline]
fn lower_confidence(conf: f64, drop: f64) -> f64 {
    if drop > 0.0 {
        (conf - drop).clamp(0.01, 0.9999)
    } else {
        conf
    }
}

/// Fills the model's per-line drift scratch for `t_ms`; false if nothing is active.
fn apply_drifts(model: &mut ModelState, t_ms: i64) -> bool {
    let mut any = false;
    for d in &model.drifts {
        let w = intensity(d.start, d.end, d.ramp, t_ms);
        if w <= 0.0 {
            continue;
        }
        if !any {
            any = true;
            model.shift.fill(0.0);
            model.sd_mult.fill(1.0);
            model.outlier.fill((0.0, 0.0));
            model.newcat.fill((0.0, NO_NEWCAT));
            model.conf_drop = 0.0;
        }
        match &d.effect {
            ResolvedEffect::MeanShift { features, sds } => {
                for &f in features {
                    model.shift[f] += sds * w;
                }
            }
            ResolvedEffect::AccuracyDrop {
                features,
                sds,
                drop,
            } => {
                for &f in features {
                    model.shift[f] += sds * w;
                }
                model.conf_drop += drop * w;
            }
            ResolvedEffect::Variance { features, factor } => {
                for &f in features {
                    model.sd_mult[f] *= (1.0 + (factor - 1.0) * w).sqrt();
                }
            }
            ResolvedEffect::NewCategory {
                feature,
                value,
                share,
            } => model.newcat[*feature] = (share * w, *value),
            ResolvedEffect::Outlier {
                features,
                share,
                sds,
            } => {
                for &f in features {
                    model.outlier[f] = (share * w, *sds);
                }
            }
            ResolvedEffect::ClassPriors { .. } => {}
        }
    }
    any
}

/// Cumulative class distribution at `t_ms`, with class-prior drifts blended in.
fn class_cum_at(model: &mut ModelState, t_ms: i64) -> &[f64] {
    let mut active = false;
    for d in &model.drifts {
        let ResolvedEffect::ClassPriors { priors } = &d.effect else {
            continue;
        };
        let w = intensity(d.start, d.end, d.ramp, t_ms);
        if w <= 0.0 {
            continue;
        }
        if !active {
            active = true;
            model.prior_scratch.copy_from_slice(&model.base_priors);
        }
        for (p, q) in model.prior_scratch.iter_mut().zip(priors) {
            *p = (1.0 - w) * *p + w * q;
        }
    }
    if !active {
        return &model.base_cum;
    }
    let mut acc = 0.0;
    for (c, p) in model.cum_scratch.iter_mut().zip(&model.prior_scratch) {
        acc += p;
        *c = acc;
    }
    &model.cum_scratch
}

/// Cumulative thresholds of the line kinds (malformed, error, timing, feedback, batch
/// statistics), after checking every share is in `[0, 1]` and they sum to at most 1.
fn line_kind_thresholds(cfg: &GeneratorConfig) -> Result<[f64; 5], GeneratorError> {
    let err = |s: String| Err(GeneratorError(s));
    let shares = [
        ("malformed_share", cfg.malformed_share),
        ("error_share", cfg.error_share),
        ("timing_share", cfg.timing_share),
        ("feedback_share", cfg.feedback_share),
        ("missing_share", cfg.missing_share),
    ];
    for (name, s) in shares {
        if !(0.0..=1.0).contains(&s) {
            return err(format!("{name} {s} is outside [0, 1]"));
        }
    }
    if !(0.0..=1.0).contains(&cfg.batch_share) {
        return err(format!("batch_share {} is outside [0, 1]", cfg.batch_share));
    }
    let mut kind_cum = [0.0; 5];
    let mut acc = 0.0;
    for (c, (_, s)) in kind_cum.iter_mut().zip(&shares[..4]) {
        acc += s;
        *c = acc;
    }
    if acc + cfg.batch_share > 1.0 + 1e-9 {
        return err(format!(
            "line-kind shares sum to {} > 1",
            acc + cfg.batch_share
        ));
    }
    // Compact streams carry no batch lines; with a zero share the batch threshold equals
    // the feedback one, so the kind choice (and the stream) is exactly as without it.
    kind_cum[4] = if cfg.compact {
        acc
    } else {
        acc + cfg.batch_share
    };
    Ok(kind_cum)
}

fn check_click_rates(rates: Option<&ArmClickRates>) -> Result<(), GeneratorError> {
    if let Some(r) = rates {
        for (arm, rate) in [("control", r.control), ("variant", r.variant)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(GeneratorError(format!(
                    "click rate of {arm} {rate} is outside [0, 1]"
                )));
            }
        }
    }
    Ok(())
}

/// The models of `cfg`, uniquely named (features renamed `fNN` in compact streams).
fn build_models(cfg: &GeneratorConfig) -> Result<Vec<ModelState>, GeneratorError> {
    if cfg.models.is_empty() {
        return Err(GeneratorError("no models".into()));
    }
    let mut models = Vec::with_capacity(cfg.models.len());
    for (i, spec) in cfg.models.iter().enumerate() {
        if cfg.models[..i].iter().any(|m| m.name == spec.name) {
            return Err(GeneratorError(format!(
                "duplicate model name {:?}",
                spec.name
            )));
        }
        let mut model = build_model(cfg.seed, spec)?;
        if cfg.compact {
            for (i, (gen, info)) in model.gens.iter_mut().zip(model.info.iter_mut()).enumerate() {
                info.name = format!("f{i:02}");
                gen.key = format!("\"{}\": ", info.name);
            }
        }
        models.push(model);
    }
    Ok(models)
}

/// Gives the model `d` replaces its worse version, after checking the deploy.
fn attach_deploy(
    specs: &[ModelSpec],
    models: &mut [ModelState],
    d: &DeploySpec,
) -> Result<(), GeneratorError> {
    let err = |s: String| Err(GeneratorError(format!("deploy: {s}")));
    let Some(i) = specs.iter().position(|m| m.name == d.model) else {
        return err(format!("unknown model {:?}", d.model));
    };
    if d.new_name.is_empty() {
        return err("empty new_name".into());
    }
    if specs.iter().any(|m| m.name == d.new_name) {
        return err(format!("new_name {:?} is already a model", d.new_name));
    }
    if !(0.0..1.0).contains(&d.extra_error_share) {
        return err(format!(
            "extra_error_share {} is outside [0, 1)",
            d.extra_error_share
        ));
    }
    if !(d.latency_factor.is_finite() && d.latency_factor > 0.0) {
        return err(format!(
            "latency_factor {} is not positive",
            d.latency_factor
        ));
    }
    let mut model_kv = quoted(specs[i].id_field.key());
    model_kv.push_str(": ");
    write_json_string(&mut model_kv, &d.new_name);
    models[i].deploy = Some(ModelDeploy {
        at_ms: d.at_ms,
        name: d.new_name.clone(),
        model_kv,
        extra_error_share: d.extra_error_share,
        latency_factor: d.latency_factor,
    });
    Ok(())
}

/// Cumulative traffic shares of the models.
fn traffic_thresholds(specs: &[ModelSpec]) -> Vec<f64> {
    let total_w: f64 = specs.iter().map(|m| m.traffic_weight).sum();
    let mut acc = 0.0;
    specs
        .iter()
        .map(|m| {
            acc += m.traffic_weight / total_w;
            acc
        })
        .collect()
}

/// Resolves drift number `di` on the models it names (or every model it fits).
fn attach_drift(models: &mut [ModelState], di: usize, d: &DriftSpec) -> Result<(), GeneratorError> {
    let err = |s: String| Err(GeneratorError(s));
    if d.ramp_ms < 0 {
        return err(format!("drift {di}: negative ramp_ms"));
    }
    if d.end_ms.is_some_and(|e| e <= d.start_ms) {
        return err(format!("drift {di}: end_ms is not after start_ms"));
    }
    check_effect_numbers(&d.effect).map_err(|e| GeneratorError(format!("drift {di}: {e}")))?;
    let mut applied = 0usize;
    let mut last_err = String::new();
    for m in models {
        if d.model.as_ref().is_some_and(|n| *n != m.name) {
            continue;
        }
        match resolve_effect(m, &d.effect) {
            Ok(effect) => {
                m.drifts.push(ResolvedDrift {
                    start: d.start_ms,
                    end: d.end_ms,
                    ramp: d.ramp_ms,
                    effect,
                });
                applied += 1;
            }
            // A drift naming its model must fit it; an all-models drift applies
            // wherever it fits, so models of different shapes can share one spec.
            Err(e) if d.model.is_some() => return err(format!("drift {di} on {}: {e}", m.name)),
            Err(e) => last_err = e,
        }
    }
    match (&d.model, applied) {
        (_, 1..) => Ok(()),
        (Some(n), 0) => err(format!("drift {di}: unknown model {n:?}")),
        (None, 0) => err(format!("drift {di} fits no model: {last_err}")),
    }
}

fn check_effect_numbers(e: &DriftEffect) -> Result<(), String> {
    let finite = |name: &str, v: f64| {
        if v.is_finite() {
            Ok(())
        } else {
            Err(format!("{name} {v} is not finite"))
        }
    };
    let share = |s: f64| {
        if (0.0..=1.0).contains(&s) {
            Ok(())
        } else {
            Err(format!("share {s} is outside [0, 1]"))
        }
    };
    match e {
        DriftEffect::MeanShift { sds, .. } => finite("sds", *sds),
        DriftEffect::VarianceScale { factor, .. } => {
            if factor.is_finite() && *factor > 0.0 {
                Ok(())
            } else {
                Err(format!("variance factor {factor} is not positive"))
            }
        }
        DriftEffect::NewCategory { share: s, .. } => share(*s),
        DriftEffect::ClassPriors { priors } => normalise(priors)
            .map(|_| ())
            .ok_or_else(|| "bad priors".to_string()),
        DriftEffect::OutlierBurst { share: s, sds, .. } => share(*s).and(finite("sds", *sds)),
        DriftEffect::AccuracyDrop { sds, drop, .. } => {
            finite("sds", *sds)?;
            if (0.0..=0.49).contains(drop) {
                Ok(())
            } else {
                Err(format!("accuracy drop {drop} is outside [0, 0.49]"))
            }
        }
    }
}

fn resolve_feature(model: &ModelState, r: &FeatureRef) -> Result<usize, String> {
    match r {
        FeatureRef::Index(i) if *i < model.info.len() => Ok(*i),
        FeatureRef::Index(i) => Err(format!("no feature index {i}")),
        FeatureRef::Name(n) => {
            let mut hits = model.info.iter().filter(|f| {
                f.name == *n || f.name.split_once('_').is_some_and(|(_, word)| word == n)
            });
            match (hits.next(), hits.next()) {
                (Some(f), None) => Ok(f.index),
                (Some(_), Some(_)) => Err(format!("feature name {n:?} is ambiguous")),
                (None, _) => Err(format!("no feature named {n:?}")),
            }
        }
    }
}

fn resolve_numeric(model: &ModelState, refs: &[FeatureRef]) -> Result<Vec<usize>, String> {
    refs.iter()
        .map(|r| {
            let i = resolve_feature(model, r)?;
            if model.info[i].is_numeric() {
                Ok(i)
            } else {
                Err(format!("feature {} is not numeric", model.info[i].name))
            }
        })
        .collect()
}

fn resolve_effect(model: &mut ModelState, e: &DriftEffect) -> Result<ResolvedEffect, String> {
    Ok(match e {
        DriftEffect::MeanShift { features, sds } => ResolvedEffect::MeanShift {
            features: resolve_numeric(model, features)?,
            sds: *sds,
        },
        DriftEffect::AccuracyDrop {
            features,
            sds,
            drop,
        } => ResolvedEffect::AccuracyDrop {
            features: resolve_numeric(model, features)?,
            sds: *sds,
            drop: *drop,
        },
        DriftEffect::VarianceScale { features, factor } => ResolvedEffect::Variance {
            features: resolve_numeric(model, features)?,
            factor: *factor,
        },
        DriftEffect::OutlierBurst {
            features,
            share,
            sds,
        } => ResolvedEffect::Outlier {
            features: resolve_numeric(model, features)?,
            share: *share,
            sds: *sds,
        },
        DriftEffect::NewCategory {
            feature,
            value,
            share,
        } => {
            let i = resolve_feature(model, feature)?;
            let FeatureKind::Categorical { values, .. } = &model.info[i].kind else {
                return Err(format!("feature {} is not categorical", model.info[i].name));
            };
            if values.contains(value) {
                return Err(format!("{value:?} is already in the vocabulary"));
            }
            model.new_values.push(quoted(value));
            model.injected.push(value.clone());
            ResolvedEffect::NewCategory {
                feature: i,
                value: model.new_values.len() - 1,
                share: *share,
            }
        }
        DriftEffect::ClassPriors { priors } => {
            if priors.len() != model.classes.len() {
                return Err(format!(
                    "{} priors for {} classes",
                    priors.len(),
                    model.classes.len()
                ));
            }
            ResolvedEffect::ClassPriors {
                priors: normalise(priors).ok_or("bad priors")?,
            }
        }
    })
}

fn normalise(p: &[f64]) -> Option<Vec<f64>> {
    let sum: f64 = p.iter().sum();
    if p.is_empty() || p.iter().any(|x| !x.is_finite() || *x < 0.0) || sum <= 0.0 {
        return None;
    }
    Some(p.iter().map(|x| x / sum).collect())
}

fn cumulative(p: &[f64]) -> Vec<f64> {
    let mut acc = 0.0;
    p.iter()
        .map(|x| {
            acc += x;
            acc
        })
        .collect()
}

/// Index of the first cumulative weight above `u`; the last index absorbs rounding.
fn pick(cum: &[f64], u: f64) -> usize {
    cum.iter()
        .position(|&c| u < c)
        .unwrap_or(cum.len().saturating_sub(1))
}

/// The class priors of `spec`, normalised, after checking the spec.
fn check_model_spec(spec: &ModelSpec) -> Result<Vec<f64>, GeneratorError> {
    let err = |s: String| Err(GeneratorError(format!("model {:?}: {s}", spec.name)));
    if spec.name.is_empty() {
        return Err(GeneratorError("empty model name".into()));
    }
    if spec.features == 0 {
        return err("needs at least one feature".into());
    }
    if !(0.0..=1.0).contains(&spec.categorical_share) {
        return err(format!(
            "categorical_share {} is outside [0, 1]",
            spec.categorical_share
        ));
    }
    if !(spec.traffic_weight.is_finite() && spec.traffic_weight > 0.0) {
        return err(format!(
            "traffic_weight {} is not positive",
            spec.traffic_weight
        ));
    }
    if spec.classes.is_empty() || spec.classes.len() != spec.class_priors.len() {
        return err("classes and class_priors must be non-empty and of equal length".into());
    }
    match normalise(&spec.class_priors) {
        Some(p) => Ok(p),
        None => err("class priors must be non-negative with a positive sum".into()),
    }
}

fn build_model(seed: u64, spec: &ModelSpec) -> Result<ModelState, GeneratorError> {
    let base_priors = check_model_spec(spec)?;
    // Per-model stream so a model's distributions depend on the seed and its own name only.
    let mut rng = SmallRng::seed_from_u64(seed ^ hash64(spec.name.as_bytes()).rotate_left(17));
    let mut info = Vec::with_capacity(spec.features);
    let mut gens = Vec::with_capacity(spec.features);
    for (index, (name, layout)) in feature_layout(spec.features, spec.categorical_share)
        .into_iter()
        .enumerate()
    {
        let (kind, gen) = match layout {
            LayoutKind::Numeric(_) => numeric_feature(&mut rng),
            LayoutKind::Categorical(j) => categorical_feature(&mut rng, j),
            LayoutKind::Boolean => {
                let p_true = rng.random_range(0.2..0.8);
                (FeatureKind::Boolean { p_true }, GenKind::Boolean { p_true })
            }
        };
        let mut key = quoted(&name);
        key.push_str(": ");
        gens.push(FeatureGen { key, kind: gen });
        info.push(FeatureInfo { index, name, kind });
    }

    let mut model_kv = quoted(spec.id_field.key());
    model_kv.push_str(": ");
    write_json_string(&mut model_kv, &spec.name);
    let n = spec.features;
    let k = base_priors.len();
    Ok(ModelState {
        name: spec.name.clone(),
        model_kv,
        deploy: None,
        info,
        gens,
        classes: spec.classes.iter().map(|c| quoted(c)).collect(),
        class_labels: spec.classes.clone(),
        base_cum: cumulative(&base_priors),
        base_priors,
        latency_mu: rng.random_range(1.5..4.0),
        drifts: Vec::new(),
        injected: Vec::new(),
        new_values: Vec::new(),
        shift: vec![0.0; n],
        sd_mult: vec![1.0; n],
        outlier: vec![(0.0, 0.0); n],
        newcat: vec![(0.0, NO_NEWCAT); n],
        conf_drop: 0.0,
        cum_scratch: vec![0.0; k],
        prior_scratch: vec![0.0; k],
    })
}

/// A numeric feature's distribution: normal or log-normal, at a scale from 1 to 1,000.
fn numeric_feature(rng: &mut SmallRng) -> (FeatureKind, GenKind) {
    if rng.random::<bool>() {
        let scale = 10f64.powf(rng.random_range(0.0..3.0));
        let mean = scale * rng.random_range(1.0..3.0);
        let sd = scale * rng.random_range(0.2..0.6);
        let decimals = if scale >= 100.0 { 2 } else { 3 };
        let gen = GenKind::Numeric {
            normal: true,
            a: mean,
            b: sd,
            mean,
            sd,
            decimals,
        };
        return (FeatureKind::Normal { mean, sd }, gen);
    }
    let mu: f64 = rng.random_range(0.0..6.0);
    let sigma = rng.random_range(0.25..0.9);
    let kind = FeatureKind::LogNormal { mu, sigma };
    let probe = FeatureInfo {
        index: 0,
        name: String::new(),
        kind: kind.clone(),
    };
    let (mean, sd) = (probe.mean().unwrap_or(0.0), probe.sd().unwrap_or(1.0));
    let decimals = if mu.exp() >= 100.0 { 2 } else { 3 };
    let gen = GenKind::Numeric {
        normal: false,
        a: mu,
        b: sigma,
        mean,
        sd,
        decimals,
    };
    (kind, gen)
}

/// The `j`-th categorical feature's distribution: 5 to 30 values of its pool, Zipf-like.
fn categorical_feature(rng: &mut SmallRng, j: usize) -> (FeatureKind, GenKind) {
    let pool = CATEGORICAL_POOLS[j % CATEGORICAL_POOLS.len()].1;
    let size = rng.random_range(5..=pool.len().min(30));
    let s: f64 = rng.random_range(0.8..1.4);
    let probs = normalise(
        &(0..size)
            .map(|r| 1.0 / ((r + 1) as f64).powf(s))
            .collect::<Vec<_>>(),
    )
    .expect("Zipf weights are positive");
    let values: Vec<String> = pool[..size].iter().map(|v| (*v).to_string()).collect();
    let gen = GenKind::Categorical {
        values: values.iter().map(|v| quoted(v)).collect(),
        cum: cumulative(&probs),
    };
    (FeatureKind::Categorical { values, probs }, gen)
}

/// `s` as a JSON string.
fn quoted(s: &str) -> String {
    let mut q = String::new();
    write_json_string(&mut q, s);
    q
}

/// The constant part of a line after the timestamp, built at compile time so the hot path
/// is a single copy.
macro_rules! envelope {
    ($level:literal, $message:literal, $function:literal, $line:literal) => {
        concat!(
            "\", \"level\": \"",
            $level,
            "\", \"message\": \"",
            $message,
            "\", \"service\": \"ai_inference_service\", \"module\": \"app\", \"function\": \"",
            $function,
            "\", \"line\": ",
            $line
        )
    };
}

const INFERENCE_ENVELOPE: &str = envelope!("INFO", "Model inference completed", "predict", 42);
const ERROR_ENVELOPE: &str = envelope!("ERROR", "Model inference failed", "predict", 57);
const TIMING_ENVELOPE: &str = envelope!("INFO", "Inference timing metrics", "predict", 61);
const FEEDBACK_ENVELOPE: &str = envelope!("INFO", "User feedback received", "record_feedback", 88);
const LABEL_ENVELOPE: &str = envelope!("INFO", "Ground truth received", "record_label", 97);
const BATCH_ENVELOPE: &str = envelope!(
    "INFO",
    "Batch data and prediction statistics",
    "analyze_and_log_batch",
    131
);

/// `error_message`s of the `ModelRuntimeError` records of a deployed worse version.
const RUNTIME_ERRORS: [&str; 3] = [
    "CUDA out of memory while running the model",
    "Tensor shape mismatch in layer dense_3",
    "Model call timed out after 5000 ms",
];

fn write_header(out: &mut String, t_ms: i64, envelope: &str) {
    out.push_str("{\"timestamp\": \"");
    write_python_log_timestamp(out, t_ms);
    out.push_str(envelope);
}

fn write_request_id(out: &mut String, req: u64) {
    out.push_str(", \"request_id\": \"req_");
    push_hex(out, req, 12);
    out.push('"');
}

/// Appends the low `digits` hex digits of `v`, zero-padded.
fn push_hex(out: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (shift * 4)) & 0xf) as usize]));
    }
}

const POW10: [u64; 7] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000];

/// Writes `x` rounded to `decimals` (at most 6) with trailing zeros trimmed, as Python's
/// `json.dumps(round(x, n))` would. Hand-rolled because `{:.3}` formatting was half the cost
/// of a line.
fn write_float(out: &mut String, x: f64, decimals: usize) {
    let decimals = decimals.min(6);
    let p = POW10[decimals];
    let scaled = (x * p as f64).round();
    // Beyond 2^53 the integer path would lose digits.
    if scaled.is_nan() || scaled.abs() >= 9.0e15 {
        let start = out.len();
        let _ = write!(out, "{x:.decimals$}");
        if out[start..].contains('.') {
            while out.ends_with('0') && !out.ends_with(".0") {
                out.pop();
            }
        }
        return;
    }
    let n = scaled as i64;
    if n < 0 {
        out.push('-');
    }
    let n = n.unsigned_abs();
    push_u64(out, n / p);
    out.push('.');
    let mut frac = n % p;
    if frac == 0 {
        out.push('0');
        return;
    }
    let mut digits = decimals;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    let mut buf = [b'0'; 6];
    for slot in buf[..digits].iter_mut().rev() {
        *slot = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    out.push_str(std::str::from_utf8(&buf[..digits]).expect("ASCII digits"));
}

fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

/// Model names, classes and injected categories come from users, so they are escaped.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Fast 64-bit hash, eight bytes per step (byte-wise FNV was a fifth of a line's cost).
fn hash64(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = 0x9e37_79b9_7f4a_7c15 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    // splitmix64 finaliser, so every output bit depends on every input bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The drifts that `driftd generate --drift-at` and `driftd demo` inject from
/// `start_ms` on: a one-standard-deviation shift of `fraud-v1`'s first
/// numeric feature, a new category taking 20% of `recsys-v3`'s first
/// categorical feature, and `fraud-v1`'s fraud rate rising from 4% to 15%.
pub fn standard_drifts(start_ms: i64) -> Vec<DriftSpec> {
    vec![
        DriftSpec::mean_shift("f00_amount", 1.0, start_ms).for_model("fraud-v1"),
        DriftSpec::new_category("f01_country", "XK", 0.2, start_ms).for_model("recsys-v3"),
        DriftSpec::class_priors(vec![0.15, 0.85], start_ms).for_model("fraud-v1"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decode::{DecodeConfig, Decoded, Decoder};
    use serde_json::Value;

    const T0: i64 = 1_765_706_400_000; // 2025-12-14 10:00:00 UTC

    fn lines(g: &mut Generator, n: usize, start: i64, step: i64) -> Vec<(i64, LineKind, String)> {
        let mut buf = String::new();
        (0..n)
            .map(|i| {
                let t = start + i as i64 * step;
                let k = g.next_line(t, &mut buf);
                (t, k, buf.clone())
            })
            .collect()
    }

    fn parse_obj(line: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => m,
            other => panic!("not a JSON object: {other:?}\n{line}"),
        }
    }

    /// Asserts the keys occur in this order in the raw text (serde_json's map sorts them).
    fn assert_key_order(line: &str, keys: &[&str]) {
        let mut last = 0;
        for k in keys {
            let pat = format!("\"{k}\": ");
            let pos = line[last..]
                .find(&pat)
                .unwrap_or_else(|| panic!("{k} missing or out of order in {line}"));
            last += pos + pat.len();
        }
    }

    fn numeric_values(ls: &[(i64, LineKind, String)], name: &str) -> Vec<f64> {
        ls.iter()
            .filter(|(_, k, _)| *k == LineKind::Inference)
            .filter_map(|(_, _, l)| parse_obj(l)["input_features"][name].as_f64())
            .collect()
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn floats_print_like_python_rounded_repr() {
        let f = |x: f64, d: usize| {
            let mut s = String::new();
            write_float(&mut s, x, d);
            s
        };
        assert_eq!(f(12.5, 3), "12.5");
        assert_eq!(f(12.0, 3), "12.0");
        assert_eq!(f(0.0, 2), "0.0");
        assert_eq!(f(-7.12345, 3), "-7.123");
        assert_eq!(f(-0.0004, 3), "0.0");
        assert_eq!(f(0.05, 3), "0.05");
        assert_eq!(f(1.0e20, 2), "100000000000000000000.0");
        assert_eq!(f(0.99999, 4), "1.0");
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..20_000 {
            let x: f64 = rng.sample::<f64, _>(StandardNormal) * 10f64.powi(rng.random_range(-3..7));
            let d = rng.random_range(1..=4);
            let s = f(x, d);
            let back: f64 = s.parse().unwrap();
            assert!(
                (back - x).abs() <= 0.5 / 10f64.powi(d as i32) + 1e-9,
                "{x} -> {s}"
            );
            assert!(
                s.contains('.') && (s.ends_with(".0") || !s.ends_with('0')),
                "{s}"
            );
        }
    }

    #[test]
    fn timestamp_known_values() {
        assert_eq!(python_log_timestamp(T0 + 123), "2025-12-14 10:00:00,123");
        assert_eq!(python_log_timestamp(0), "1970-01-01 00:00:00,000");
        assert_eq!(python_log_timestamp(-1), "1969-12-31 23:59:59,999");
        assert_eq!(
            python_log_timestamp(1_709_251_199_007),
            "2024-02-29 23:59:59,007"
        );
    }

    #[test]
    fn timestamp_matches_chrono_and_round_trips() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let t: i64 = rng.random_range(-5_000_000_000_000..10_000_000_000_000);
            let s = python_log_timestamp(t);
            let expected = chrono::DateTime::from_timestamp_millis(t)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S,%3f")
                .to_string();
            assert_eq!(s, expected, "t = {t}");
            let back = chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S,%3f")
                .unwrap()
                .and_utc()
                .timestamp_millis();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn every_wellformed_line_has_its_fields() {
        let cfg = GeneratorConfig {
            malformed_share: 0.05,
            error_share: 0.05,
            timing_share: 0.1,
            feedback_share: 0.1,
            ..GeneratorConfig::default()
        };
        let mut g = Generator::new(cfg);
        let names = g.model_names();
        let mut seen = std::collections::HashSet::new();
        let common = [
            "timestamp",
            "level",
            "message",
            "service",
            "module",
            "function",
            "line",
            "request_id",
        ];
        for (t, kind, line) in lines(&mut g, 5000, T0, 137) {
            seen.insert(std::mem::discriminant(&kind));
            if kind.is_malformed() {
                continue;
            }
            let o = parse_obj(&line);
            assert_key_order(&line, &common);
            let ts = o["timestamp"].as_str().unwrap();
            assert_eq!(ts, python_log_timestamp(t));
            assert_eq!(o["service"], "ai_inference_service");
            assert!(o["request_id"].as_str().unwrap().starts_with("req_"));
            let model = o.get("model_id").and_then(Value::as_str);
            match kind {
                LineKind::Inference => {
                    assert_key_order(
                        &line,
                        &[
                            "request_id",
                            "model_id",
                            "input_hash",
                            "prediction",
                            "confidence",
                            "experiment_assignment",
                            "input_features",
                        ],
                    );
                    assert_eq!(o["level"], "INFO");
                    assert_eq!(o["message"], "Model inference completed");
                    assert!(names.contains(&model.unwrap().to_string()));
                    assert!(o["input_hash"].is_i64());
                    assert!(o["prediction"].is_string());
                    let c = o["confidence"].as_f64().unwrap();
                    assert!((0.5..1.0).contains(&c), "confidence {c}");
                    let arm = o["experiment_assignment"].as_str().unwrap();
                    assert!(arm == "control" || arm == "variant");
                    let m = g.model_index(model.unwrap()).unwrap();
                    let feats = o["input_features"].as_object().unwrap();
                    assert_eq!(feats.len(), g.features(m).len());
                    for f in g.features(m) {
                        let v = &feats[&f.name];
                        match &f.kind {
                            FeatureKind::Categorical { values, .. } => {
                                assert!(values.contains(&v.as_str().unwrap().to_string()))
                            }
                            FeatureKind::Boolean { .. } => assert!(v.is_boolean()),
                            _ => assert!(v.is_f64() || v.is_null(), "{v}"),
                        }
                    }
                }
                LineKind::Error => {
                    assert_eq!(o["level"], "ERROR");
                    assert_eq!(o["error_type"], "InputValidationError");
                    assert!(o.get("prediction").is_none());
                    assert!(model.is_some());
                }
                LineKind::Timing => {
                    assert_eq!(o["message"], "Inference timing metrics");
                    assert_key_order(
                        &line,
                        &[
                            "request_id",
                            "total_latency_ms",
                            "preprocessing_ms",
                            "inference_ms",
                            "postprocessing_ms",
                            "model_id",
                        ],
                    );
                    let part: f64 = ["preprocessing_ms", "inference_ms", "postprocessing_ms"]
                        .iter()
                        .map(|k| o[*k].as_f64().unwrap())
                        .sum();
                    assert!(o["total_latency_ms"].as_f64().unwrap() >= part - 0.01);
                }
                LineKind::Feedback => {
                    assert_eq!(o["message"], "User feedback received");
                    assert!(o["user_id"].as_str().unwrap().starts_with("user_"));
                    let a = o["action"].as_str().unwrap();
                    assert!(a == "clicked_on_item" || a == "dismissed_recommendation");
                    let fb = o["feedback_timestamp"].as_f64().unwrap();
                    assert!(fb < t as f64 / 1000.0 + 0.001 && fb > t as f64 / 1000.0 - 31.0);
                }
                // No batch lines at the default batch_share.
                LineKind::BatchStats | LineKind::Label | LineKind::Malformed(_) => unreachable!(),
            }
        }
        assert_eq!(seen.len(), 5, "every line kind should occur");
    }

    #[test]
    fn model_used_option_and_no_arms() {
        let cfg = GeneratorConfig {
            models: vec![ModelSpec::new("ab-model").with_id_field(ModelIdField::ModelUsed)],
            arms: false,
            ..GeneratorConfig::default()
        }
        .inference_only();
        let mut g = Generator::new(cfg);
        for (_, _, l) in lines(&mut g, 200, T0, 10) {
            let o = parse_obj(&l);
            assert_eq!(o["model_used"], "ab-model");
            assert!(o.get("model_id").is_none());
            assert!(o.get("experiment_assignment").is_none());
        }
    }

    /// The typed event is the line: decoding an inference line gives what
    /// `next_event` makes of the same draws (numbers as the line rounds
    /// them), drifts, arms and a deploy included.
    #[test]
    fn typed_records_are_what_the_lines_say() {
        let cfg = GeneratorConfig::synthetic(5, 2, 30)
            .inference_only()
            .with_drift(DriftSpec::mean_shift("amount", 1.0, T0 + 500).for_model("fraud-v1"))
            .with_drift(DriftSpec::new_category("country", "XK", 0.3, T0 + 500))
            .with_drift(DriftSpec::class_priors(vec![0.5, 0.5], T0 + 500).for_model("fraud-v1"))
            .with_drift(DriftSpec::outlier_burst(
                "amount",
                0.2,
                8.0,
                T0 + 500,
                T0 + 1500,
            ))
            .with_deploy(DeploySpec::new("fraud-v1", "fraud-v2", T0 + 1000));
        let mut lines = Generator::new(cfg);
        let mut typed = lines.clone();
        let vocabularies: Vec<EventVocabulary> = (0..2).map(|m| typed.vocabulary(m)).collect();
        let mut events: Vec<Event> = vocabularies.iter().map(|v| v.event()).collect();
        let decoder = Decoder::new(DecodeConfig::default());
        let mut buf = String::new();
        let (mut deployed, mut injected) = (0, 0);
        for i in 0..2_000 {
            let t = T0 + i;
            assert_eq!(lines.next_line(t, &mut buf), LineKind::Inference);
            let Decoded::Event(want) = decoder.decode(buf.as_bytes()) else {
                panic!("not an event: {buf}")
            };
            // A line's kind and model are the draws it makes before its record.
            let _: f64 = typed.rng.random();
            let m = typed.pick_model();
            typed.next_event(t, &vocabularies[m], &mut events[m]);
            let got = &events[m];
            assert_eq!(
                (&got.model, &got.arm, got.time),
                (&want.model, &want.arm, want.time)
            );
            assert_eq!(
                (&got.prediction, got.confidence),
                (&want.prediction, want.confidence)
            );
            assert_eq!(got.features.len(), want.features.len());
            for ((name, value), (want_name, want_value)) in got.features.iter().zip(&want.features)
            {
                assert_eq!(name, want_name);
                match (value, want_value) {
                    (FeatureValue::Num(x), FeatureValue::Num(y)) => {
                        assert!((x - y).abs() <= 0.005 + 1e-12 * x.abs(), "{name}: {x} {y}")
                    }
                    _ => assert_eq!(value, want_value, "{name}"),
                }
                injected += usize::from(matches!(value, FeatureValue::Cat(c) if c == "XK"));
            }
            deployed += usize::from(got.model == "fraud-v2");
        }
        assert!(deployed > 0 && injected > 0 && typed.outliers_injected() > 0);
        assert_eq!(typed.outliers_injected(), lines.outliers_injected());
    }

    #[test]
    fn same_seed_same_lines_different_seed_different() {
        let run = |seed| {
            let mut g = Generator::new(GeneratorConfig::default().with_seed(seed));
            lines(&mut g, 2000, T0, 50)
        };
        let a = run(1);
        assert_eq!(a, run(1));
        let b = run(2);
        let differing = a.iter().zip(&b).filter(|(x, y)| x.2 != y.2).count();
        assert!(differing > 1900, "only {differing} lines differ");
    }

    #[test]
    fn feature_names_stable_and_layout_sane() {
        let g1 = Generator::new(GeneratorConfig::synthetic(1, 1, 20));
        let g2 = Generator::new(GeneratorConfig::synthetic(99, 1, 20));
        assert_eq!(g1.feature_names(0), g2.feature_names(0));
        assert_ne!(
            g1.features(0),
            g2.features(0),
            "parameters depend on the seed"
        );
        let f = g1.features(0);
        assert_eq!(f[0].name, "f00_amount");
        assert_eq!(f[1].name, "f01_country");
        assert_eq!(g1.categorical_feature_names(0).len(), 6);
        assert!(matches!(f[19].kind, FeatureKind::Boolean { .. }));
        assert_eq!(f.iter().filter(|f| f.is_numeric()).count(), 13);
        for fi in f {
            if let FeatureKind::Categorical { values, probs } = &fi.kind {
                assert!((5..=30).contains(&values.len()));
                assert!(probs.windows(2).all(|w| w[0] >= w[1]), "Zipf-like order");
            }
        }
        let one = Generator::new(GeneratorConfig::synthetic(1, 1, 1));
        assert!(one.features(0)[0].is_numeric());
    }

    #[test]
    fn inference_line_size_for_20_features() {
        let mut g = Generator::new(GeneratorConfig::synthetic(5, 1, 20).inference_only());
        let ls = lines(&mut g, 5000, T0, 10);
        let avg = ls.iter().map(|l| l.2.len()).sum::<usize>() as f64 / ls.len() as f64;
        // The logging envelope alone is ~385 bytes and 20 `"fNN_word": value` pairs add
        // ~450, so a realistic 20-feature line is ~840 bytes.
        assert!((780.0..=900.0).contains(&avg), "average line {avg} bytes");
    }

    #[test]
    fn numeric_values_match_declared_distribution_and_missing_share() {
        let mut g = Generator::new(GeneratorConfig::synthetic(11, 1, 20).inference_only());
        let ls = lines(&mut g, 6000, T0, 10);
        let mut nulls = 0usize;
        let mut total = 0usize;
        for f in g.features(0).iter().filter(|f| f.is_numeric()) {
            let v = numeric_values(&ls, &f.name);
            nulls += 6000 - v.len();
            total += 6000;
            let (m, sd) = (f.mean().unwrap(), f.sd().unwrap());
            let z = (mean(&v) - m) / sd;
            assert!(z.abs() < 0.15, "{} off by {z} sd", f.name);
        }
        let share = nulls as f64 / total as f64;
        assert!((0.006..0.014).contains(&share), "missing share {share}");
    }

    #[test]
    fn mean_shift_moves_only_its_feature() {
        let base = GeneratorConfig::synthetic(3, 1, 20).inference_only();
        let g = Generator::new(base.clone());
        let target = g
            .features(0)
            .iter()
            .find(|f| f.is_numeric())
            .unwrap()
            .clone();
        let onset = T0 + 4000 * 10;
        let cfg = base.with_drift(DriftSpec::mean_shift(target.index, 1.0, onset));
        let mut g = Generator::new(cfg);
        let ls = lines(&mut g, 8000, T0, 10);
        let (before, after) = ls.split_at(4000);
        for f in g.features(0).iter().filter(|f| f.is_numeric()) {
            let sd = f.sd().unwrap();
            let d = (mean(&numeric_values(after, &f.name))
                - mean(&numeric_values(before, &f.name)))
                / sd;
            if f.index == target.index {
                assert!((0.8..1.2).contains(&d), "target moved {d} sd");
            } else {
                assert!(d.abs() < 0.15, "{} moved {d} sd", f.name);
            }
        }
    }

    #[test]
    fn new_category_share_after_onset_only() {
        let onset = T0 + 3000 * 10;
        let cfg = GeneratorConfig::synthetic(8, 1, 20)
            .inference_only()
            .with_drift(DriftSpec::new_category("country", "__new_XX", 0.2, onset));
        let mut g = Generator::new(cfg);
        let ls = lines(&mut g, 6000, T0, 10);
        let share = |part: &[(i64, LineKind, String)]| {
            part.iter()
                .filter(|(_, _, l)| parse_obj(l)["input_features"]["f01_country"] == "__new_XX")
                .count() as f64
                / part.len() as f64
        };
        let (before, after) = ls.split_at(3000);
        assert_eq!(share(before), 0.0);
        let s = share(after);
        assert!((0.17..0.23).contains(&s), "new category share {s}");
    }

    #[test]
    fn gradual_ramp_and_end() {
        let d = DriftSpec::mean_shift(0, 2.0, 1000).ramp(1000).until(5000);
        assert_eq!(d.intensity(999), 0.0);
        assert_eq!(d.intensity(1000), 0.0);
        assert!((d.intensity(1500) - 0.5).abs() < 1e-12);
        assert_eq!(d.intensity(2000), 1.0);
        assert_eq!(d.intensity(4999), 1.0);
        assert_eq!(d.intensity(5000), 0.0);
        assert_eq!(DriftSpec::mean_shift(0, 1.0, 10).intensity(10), 1.0);
    }

    #[test]
    fn class_prior_change() {
        let onset = T0 + 4000;
        let cfg = GeneratorConfig::default()
            .inference_only()
            .with_drift(DriftSpec::class_priors(vec![0.5, 0.5], onset).for_model("fraud-v1"));
        let mut g = Generator::new(cfg);
        let ls = lines(&mut g, 8000, T0, 1);
        let fraud_share = |part: &[(i64, LineKind, String)]| {
            let preds: Vec<_> = part
                .iter()
                .map(|(_, _, l)| parse_obj(l))
                .filter(|o| o["model_id"] == "fraud-v1")
                .map(|o| o["prediction"] == "fraud")
                .collect();
            preds.iter().filter(|p| **p).count() as f64 / preds.len() as f64
        };
        let (before, after) = ls.split_at(4000);
        let (b, a) = (fraud_share(before), fraud_share(after));
        assert!(b < 0.07, "baseline fraud share {b}");
        assert!((0.45..0.55).contains(&a), "drifted fraud share {a}");
    }

    #[test]
    fn outlier_burst_and_variance() {
        let cfg = GeneratorConfig::synthetic(4, 1, 20).inference_only();
        let g = Generator::new(cfg.clone());
        // Normal features only: a log-normal tail can legitimately reach 10 sd.
        let mut numeric = g
            .features(0)
            .iter()
            .filter(|f| matches!(f.kind, FeatureKind::Normal { .. }));
        let (o, v) = (
            numeric.next().unwrap().clone(),
            numeric.next().unwrap().clone(),
        );
        let cfg = cfg
            .with_drift(DriftSpec::outlier_burst(
                o.index,
                0.1,
                10.0,
                T0 + 1000,
                T0 + 2000,
            ))
            .with_drift(DriftSpec::variance_scale(v.name.as_str(), 4.0, T0 + 1000));
        let mut g = Generator::new(cfg);
        let ls = lines(&mut g, 3000, T0, 1);
        let extreme = |part: &[(i64, LineKind, String)]| {
            let vals = numeric_values(part, &o.name);
            let (m, sd) = (o.mean().unwrap(), o.sd().unwrap());
            vals.iter().filter(|x| ((*x - m) / sd).abs() >= 9.9).count() as f64 / vals.len() as f64
        };
        assert_eq!(extreme(&ls[..1000]), 0.0);
        let burst = extreme(&ls[1000..2000]);
        assert!((0.07..0.13).contains(&burst), "burst share {burst}");
        assert_eq!(extreme(&ls[2000..]), 0.0, "burst must end");
        let sdev = |part: &[(i64, LineKind, String)]| {
            let vals = numeric_values(part, &v.name);
            let m = mean(&vals);
            (vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64).sqrt()
        };
        let ratio = sdev(&ls[1000..]) / sdev(&ls[..1000]);
        assert!((1.7..2.3).contains(&ratio), "sd ratio {ratio}");
    }

    #[test]
    fn malformed_share_respected_and_really_malformed() {
        let cfg = GeneratorConfig {
            malformed_share: 0.05,
            ..GeneratorConfig::default()
        };
        let mut g = Generator::new(cfg);
        let mut bad = 0;
        let mut kinds = std::collections::HashSet::new();
        for (_, kind, line) in lines(&mut g, 20_000, T0, 5) {
            let usable = match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(o)) => o.contains_key("model_id") || o.contains_key("model_used"),
                _ => false,
            };
            // Feedback lines carry only a request id, by design.
            let usable = usable || kind == LineKind::Feedback;
            assert_eq!(!usable, kind.is_malformed(), "{kind:?}: {line}");
            if let LineKind::Malformed(k) = kind {
                kinds.insert(k);
            }
            bad += usize::from(!usable);
        }
        assert!((900..1100).contains(&bad), "{bad} malformed of 20000");
        assert_eq!(kinds.len(), 4);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let bad = |cfg: GeneratorConfig| Generator::try_new(cfg).is_err();
        let d = GeneratorConfig::default;
        assert!(bad(GeneratorConfig {
            models: vec![],
            ..d()
        }));
        assert!(bad(GeneratorConfig {
            malformed_share: 0.6,
            timing_share: 0.6,
            ..d()
        }));
        assert!(bad(d().with_drift(DriftSpec::mean_shift("nope", 1.0, 0))));
        assert!(bad(
            d().with_drift(DriftSpec::mean_shift(0, 1.0, 0).for_model("x"))
        ));
        assert!(bad(
            d().with_drift(DriftSpec::new_category("country", "US", 0.2, 0))
        ));
        assert!(bad(d().with_drift(DriftSpec::mean_shift("country", 1.0, 0))));
        assert!(bad(d().with_drift(
            DriftSpec::class_priors(vec![1.0], 0).for_model("fraud-v1")
        )));
        assert!(!bad(d().with_drift(DriftSpec::mean_shift("amount", 1.0, 0))));
    }

    #[test]
    fn escapes_user_strings() {
        let cfg = GeneratorConfig {
            models: vec![ModelSpec::new("we\"ird\\name").with_classes(&[("a\"b", 1.0)])],
            ..GeneratorConfig::default()
        }
        .inference_only();
        let mut g = Generator::new(cfg);
        let mut buf = String::new();
        g.next_line(T0, &mut buf);
        let o = parse_obj(&buf);
        assert_eq!(o["model_id"], "we\"ird\\name");
        assert_eq!(o["prediction"], "a\"b");
    }

    /// Hash of the first `n` lines (newline-joined) of `cfg` at 200 ms steps from `T0`.
    fn stream_hash(cfg: GeneratorConfig, n: usize) -> u64 {
        let mut g = Generator::new(cfg);
        let mut buf = String::new();
        let mut all = String::new();
        for i in 0..n {
            g.next_line(T0 + i as i64 * 200, &mut buf);
            all.push_str(&buf);
            all.push('\n');
        }
        hash64(all.as_bytes())
    }

    #[test]
    fn default_settings_keep_the_pinned_bytes() {
        let drift_at = T0 + 10_000 * 200;
        let configs = [
            GeneratorConfig::default(),
            GeneratorConfig {
                drifts: standard_drifts(drift_at),
                stream_seed: Some(7),
                ..GeneratorConfig::default()
            },
            GeneratorConfig::synthetic(9, 4, 20)
                .inference_only()
                .compact(),
            GeneratorConfig::synthetic(3, 3, 12).compact(),
            GeneratorConfig {
                models: vec![ModelSpec::new("ab").with_id_field(ModelIdField::ModelUsed)],
                arms: false,
                malformed_share: 0.05,
                ..GeneratorConfig::default()
            },
        ];
        let got: Vec<u64> = configs
            .into_iter()
            .map(|c| stream_hash(c, 20_000))
            .collect();
        // Computed before batch lines, deploys and click rates existed: at their defaults
        // those settings must not change a single byte (the shipped samples depend on it).
        let pinned: [u64; 5] = [
            0x09d5_38d0_791d_768b,
            0x3022_efc0_22c8_e25c,
            0x74d5_4065_c883_2f48,
            0x9de5_a9c5_6915_37ca,
            0xe154_0dcd_ac09_1016,
        ];
        assert_eq!(got, pinned);
    }

    #[test]
    fn neutral_new_settings_change_no_byte() {
        let base = GeneratorConfig::default();
        let pinned = stream_hash(base.clone(), 5000);
        // Same click rate on both arms as the built-in 30%.
        assert_eq!(
            stream_hash(base.clone().with_click_rates(0.3, 0.3), 5000),
            pinned
        );
        // A deploy that never goes live within the stream.
        let never = DeploySpec::new("fraud-v1", "fraud-v2", i64::MAX)
            .with_extra_error_share(0.5)
            .with_latency_factor(3.0);
        assert_eq!(stream_hash(base.clone().with_deploy(never), 5000), pinned);
        // Compact streams carry no batch lines.
        let compact = GeneratorConfig::synthetic(3, 3, 12).compact();
        assert_eq!(
            stream_hash(compact.clone().with_batch_share(0.3), 5000),
            stream_hash(compact, 5000)
        );
    }

    #[test]
    fn batch_lines_summarise_the_models_distributions() {
        let onset = T0 + 20_000 * 10;
        let cfg = GeneratorConfig::default()
            .with_batch_share(0.1)
            .with_drift(DriftSpec::mean_shift(0, 1.0, onset).for_model("fraud-v1"));
        let mut g = Generator::new(cfg);
        let fraud = g.model_index("fraud-v1").unwrap();
        let mut buf = String::new();
        // (model, after onset, batch) per batch line.
        let mut batches = Vec::new();
        for i in 0..40_000 {
            let t = T0 + i * 10;
            if g.next_line(t, &mut buf) != LineKind::BatchStats {
                continue;
            }
            let o = parse_obj(&buf);
            assert_key_order(
                &buf,
                &[
                    "timestamp",
                    "level",
                    "message",
                    "service",
                    "module",
                    "function",
                    "line",
                    "batch_id",
                    "timestamp_end",
                    "input_stats",
                    "prediction_stats",
                    "model_id",
                ],
            );
            assert_eq!(o["timestamp"], python_log_timestamp(t));
            assert_eq!(o["level"], "INFO");
            assert_eq!(o["message"], "Batch data and prediction statistics");
            assert_eq!(o["service"], "ai_inference_service");
            assert_eq!(o["function"], "analyze_and_log_batch");
            assert!(o["line"].is_u64());
            let id = o["batch_id"].as_str().unwrap();
            let hex = id.strip_prefix("batch_").unwrap();
            assert!(
                hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
            let end = o["timestamp_end"].as_f64().unwrap();
            assert!(end <= t as f64 / 1000.0 && end > t as f64 / 1000.0 - 0.06);
            let frac = buf.split("\"timestamp_end\": ").nth(1).unwrap();
            let frac = frac.split(',').next().unwrap().split('.').nth(1).unwrap();
            assert_eq!(frac.len(), 6, "six decimals: {buf}");
            let name = o["model_id"].as_str().unwrap();
            let m = g.model_index(name).unwrap();
            assert_eq!(g.last_model(), Some(m));
            let stats = o["input_stats"].as_object().unwrap();
            let numeric: Vec<&FeatureInfo> =
                g.features(m).iter().filter(|f| f.is_numeric()).collect();
            assert_eq!(stats.len(), numeric.len());
            let ps = o["prediction_stats"].as_object().unwrap();
            let counts = ps["class_counts"].as_object().unwrap();
            let total: u64 = counts.values().map(|c| c.as_u64().unwrap()).sum();
            assert_eq!(total, BATCH_SIZE as u64);
            let conf = ps["avg_confidence"].as_f64().unwrap();
            assert!((0.75..0.95).contains(&conf), "avg confidence {conf}");
            batches.push((m, t >= onset, o));
        }
        assert!(
            (3000..5000).contains(&batches.len()),
            "{} batch lines",
            batches.len()
        );
        for m in 0..2 {
            let feats: Vec<FeatureInfo> = g
                .features(m)
                .iter()
                .filter(|f| f.is_numeric())
                .cloned()
                .collect();
            let mine: Vec<_> = batches.iter().filter(|b| b.0 == m).collect();
            for f in &feats {
                let key = format!("{}_mean", f.name);
                let means = |after: bool| -> Vec<f64> {
                    mine.iter()
                        .filter(|b| b.1 == after)
                        .map(|b| b.2["input_stats"][&key].as_f64().unwrap())
                        .collect()
                };
                let (sd, base) = (f.sd().unwrap(), f.mean().unwrap());
                let before = means(false);
                // One batch mean has a standard error of sd / 8.
                for x in &before {
                    assert!(((x - base) / sd).abs() < 1.0, "{key}: {x} vs {base}");
                }
                let z = (mean(&before) - base) / sd;
                assert!(z.abs() < 0.1, "{key} batch means off by {z} sd");
                let moved = (mean(&means(true)) - mean(&before)) / sd;
                let want = if m == fraud && f.index == 0 { 1.0 } else { 0.0 };
                assert!((moved - want).abs() < 0.15, "{key} moved {moved} sd");
            }
            // Class shares over all batches near the priors.
            let classes: Vec<String> = if m == fraud {
                vec!["fraud".into(), "legit".into()]
            } else {
                vec![
                    "electronics".into(),
                    "books".into(),
                    "fashion".into(),
                    "home".into(),
                    "sports".into(),
                ]
            };
            let priors: &[f64] = if m == fraud {
                &[0.04, 0.96]
            } else {
                &[0.35, 0.25, 0.2, 0.12, 0.08]
            };
            let n = (mine.len() * BATCH_SIZE) as f64;
            for (c, p) in classes.iter().zip(priors) {
                let k: u64 = mine
                    .iter()
                    .map(|b| {
                        b.2["prediction_stats"]["class_counts"][c.as_str()]
                            .as_u64()
                            .unwrap()
                    })
                    .sum();
                let share = k as f64 / n;
                assert!((share - p).abs() < 0.02, "{c}: {share} vs {p}");
            }
        }
    }

    #[test]
    fn deploy_renames_the_model_fails_more_and_slows_down() {
        let step = 10;
        let n = 50_000;
        let at = T0 + (n / 2) * step;
        let deploy = DeploySpec::new("fraud-v1", "fraud-v2", at)
            .with_extra_error_share(0.08)
            .with_latency_factor(3.0);
        let cfg = GeneratorConfig::default()
            .with_batch_share(0.01)
            .with_deploy(deploy.clone());
        let mut g = Generator::new(cfg);
        let fraud = g.model_index("fraud-v1").unwrap();
        assert!(!deploy.is_live(at - 1) && deploy.is_live(at));
        let ls = lines(&mut g, n as usize, T0, step);
        assert!(ls.iter().any(|l| l.0 == at), "a line exactly at at_ms");
        // (inference, extra errors, other errors) and inference_ms per model and side.
        let mut counts = [[(0usize, 0usize, 0usize); 2]; 2];
        let mut latency: [[Vec<f64>; 2]; 2] = Default::default();
        for (t, kind, line) in &ls {
            let after = *t >= at;
            assert_eq!(
                line.contains("\"fraud-v2\""),
                after && line.contains("fraud-v")
            );
            if kind.is_malformed() || *kind == LineKind::Feedback {
                continue;
            }
            let o = parse_obj(line);
            let name = o["model_id"].as_str().unwrap();
            let m = if name == "fraud-v2" {
                assert!(after, "{line}");
                fraud
            } else {
                g.model_index(name).unwrap()
            };
            if m == fraud {
                assert_eq!(name, if after { "fraud-v2" } else { "fraud-v1" }, "{line}");
            }
            let c = &mut counts[m][usize::from(after)];
            match kind {
                LineKind::Inference => c.0 += 1,
                LineKind::Error if o["error_type"] == "ModelRuntimeError" => {
                    assert!(after && m == fraud, "{line}");
                    assert!(o["error_message"].is_string() && o.get("prediction").is_none());
                    c.1 += 1;
                }
                LineKind::Error => c.2 += 1,
                LineKind::Timing => {
                    latency[m][usize::from(after)].push(o["inference_ms"].as_f64().unwrap());
                    let part: f64 = ["preprocessing_ms", "inference_ms", "postprocessing_ms"]
                        .iter()
                        .map(|k| o[*k].as_f64().unwrap())
                        .sum();
                    assert!(o["total_latency_ms"].as_f64().unwrap() >= part - 0.01);
                }
                _ => {}
            }
        }
        let error_share = |(inf, extra, other): (usize, usize, usize)| {
            (extra + other) as f64 / (inf + extra + other) as f64
        };
        let raised = error_share(counts[fraud][1]) - error_share(counts[fraud][0]);
        // 8% of the inference records fail; errors were ~1.2% of (inference + error) lines.
        assert!((0.06..0.10).contains(&raised), "error share up by {raised}");
        let (inf, extra, _) = counts[fraud][1];
        let fail = extra as f64 / (inf + extra) as f64;
        assert!((0.065..0.095).contains(&fail), "runtime error share {fail}");
        let other = 1 - fraud;
        let unchanged = error_share(counts[other][1]) - error_share(counts[other][0]);
        assert!(
            unchanged.abs() < 0.01,
            "other model's error share moved {unchanged}"
        );
        assert_eq!(counts[other][1].1, 0);

        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [mut fb, mut fa] = std::mem::take(&mut latency[fraud]);
        let ratio = median(&mut fa) / median(&mut fb);
        assert!(
            (2.6..3.4).contains(&ratio),
            "inference_ms median ratio {ratio}"
        );
        let [mut ob, mut oa] = std::mem::take(&mut latency[other]);
        let ratio = median(&mut oa) / median(&mut ob);
        assert!((0.85..1.15).contains(&ratio), "other model's ratio {ratio}");

        // The switch happens exactly at at_ms.
        let cfg = GeneratorConfig {
            models: vec![ModelSpec::new("fraud-v1")],
            ..GeneratorConfig::default()
        }
        .inference_only()
        .with_deploy(DeploySpec::new("fraud-v1", "fraud-v2", at));
        let mut g = Generator::new(cfg);
        let mut buf = String::new();
        for (t, want) in [(at - 1, "fraud-v1"), (at, "fraud-v2"), (at + 1, "fraud-v2")] {
            assert_eq!(g.next_line(t, &mut buf), LineKind::Inference);
            assert_eq!(parse_obj(&buf)["model_id"], want, "at {t}");
        }
    }

    #[test]
    fn click_rates_follow_the_arm_of_the_record() {
        let rates = |cfg: GeneratorConfig| {
            let cfg = GeneratorConfig {
                feedback_share: 0.3,
                ..cfg
            };
            let mut g = Generator::new(cfg);
            let mut arm_of = std::collections::HashMap::new();
            // (clicks, feedback lines) per arm: control, variant.
            let mut n = [(0usize, 0usize); 2];
            for (_, kind, line) in lines(&mut g, 40_000, T0, 10) {
                if !matches!(kind, LineKind::Inference | LineKind::Feedback) {
                    continue;
                }
                let o = parse_obj(&line);
                let req = o["request_id"].as_str().unwrap().to_string();
                if kind == LineKind::Inference {
                    let variant = o["experiment_assignment"] == "variant";
                    arm_of.insert(req, usize::from(variant));
                } else if let Some(&arm) = arm_of.get(&req) {
                    n[arm].0 += usize::from(o["action"] == "clicked_on_item");
                    n[arm].1 += 1;
                }
            }
            assert!(n.iter().all(|a| a.1 > 3000), "{n:?}");
            n.map(|(c, t)| c as f64 / t as f64)
        };
        let [control, variant] = rates(GeneratorConfig::default().with_click_rates(0.1, 0.6));
        assert!((control - 0.1).abs() < 0.03, "control clicks {control}");
        assert!((variant - 0.6).abs() < 0.03, "variant clicks {variant}");
        let [control, variant] = rates(GeneratorConfig::default());
        assert!(
            (control - 0.3).abs() < 0.03,
            "default control clicks {control}"
        );
        assert!(
            (variant - 0.3).abs() < 0.03,
            "default variant clicks {variant}"
        );
    }

    #[test]
    fn bad_new_settings_are_rejected() {
        let bad = |cfg: GeneratorConfig| Generator::try_new(cfg).is_err();
        let d = GeneratorConfig::default;
        let dep = |m: &str, n: &str| DeploySpec::new(m, n, T0);
        assert!(bad(d().with_batch_share(-0.1)));
        assert!(bad(d().with_batch_share(f64::NAN)));
        assert!(bad(d().with_batch_share(0.9)), "shares sum past 1");
        assert!(!bad(d().with_batch_share(0.5)));
        assert!(bad(d().with_click_rates(1.1, 0.5)));
        assert!(bad(d().with_click_rates(0.5, f64::NAN)));
        assert!(!bad(d().with_click_rates(0.0, 1.0)));
        assert!(bad(d().with_deploy(dep("nope", "fraud-v2"))));
        assert!(bad(d().with_deploy(dep("fraud-v1", ""))));
        assert!(bad(d().with_deploy(dep("fraud-v1", "recsys-v3"))));
        assert!(bad(d().with_deploy(dep("fraud-v1", "fraud-v1"))));
        assert!(bad(d().with_deploy(
            dep("fraud-v1", "fraud-v2").with_extra_error_share(1.0)
        )));
        assert!(bad(d().with_deploy(
            dep("fraud-v1", "fraud-v2").with_extra_error_share(-0.1)
        )));
        for f in [0.0, -1.0, f64::INFINITY, f64::NAN] {
            assert!(bad(d().with_deploy(
                dep("fraud-v1", "fraud-v2").with_latency_factor(f)
            )));
        }
        assert!(!bad(d().with_deploy(
            dep("fraud-v1", "fraud-v2")
                .with_extra_error_share(0.08)
                .with_latency_factor(3.0)
        )));
    }

    #[test]
    fn new_settings_round_trip_through_json() {
        let cfg = GeneratorConfig::default()
            .with_batch_share(0.02)
            .with_click_rates(0.2, 0.35)
            .with_deploy(
                DeploySpec::new("fraud-v1", "fraud-v2", T0)
                    .with_extra_error_share(0.08)
                    .with_latency_factor(3.0),
            );
        let json = serde_json::to_string(&cfg).unwrap();
        let back: GeneratorConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cfg, back);
        let minimal: GeneratorConfig = serde_json::from_str(
            r#"{"deploy": {"model": "fraud-v1", "new_name": "fraud-v2", "at_ms": 5}}"#,
        )
        .unwrap();
        assert_eq!(
            minimal.deploy,
            Some(DeploySpec::new("fraud-v1", "fraud-v2", 5))
        );
        assert_eq!(minimal.batch_share, 0.0);
        assert_eq!(minimal.click_rates, None);
        let old: GeneratorConfig = serde_json::from_str(r#"{"seed": 42}"#).unwrap();
        assert_eq!(old, GeneratorConfig::default());
    }

    /// A label joined to its record: record time, confidence, whether the label is the
    /// predicted class.
    type Joined = (i64, f64, bool);

    /// Joins each label line of a stream of `n` lines (at `step` ms from `T0`) to its
    /// inference record: (record time, confidence, correct) per label, plus the inference
    /// lines' `input_features.f00` with their times and models.
    fn labelled(
        cfg: GeneratorConfig,
        n: usize,
        step: i64,
    ) -> (Vec<Joined>, Vec<(i64, usize, f64)>) {
        let mut g = Generator::new(cfg);
        let mut buf = String::new();
        let mut records = std::collections::HashMap::new();
        let (mut joined, mut f00) = (Vec::new(), Vec::new());
        for i in 0..n {
            let t = T0 + i as i64 * step;
            let kind = g.next_line(t, &mut buf);
            let o = parse_obj(&buf);
            let req = o["request_id"].as_str().unwrap().to_string();
            match kind {
                LineKind::Inference => {
                    let conf = o["confidence"].as_f64().unwrap();
                    let pred = o["prediction"].as_str().unwrap().to_string();
                    if let Some(x) = o["input_features"]["f00"].as_f64() {
                        let m = g.model_index(o["model_id"].as_str().unwrap()).unwrap();
                        f00.push((t, m, x));
                    }
                    records.insert(req, (t, conf, pred));
                }
                LineKind::Label => {
                    let (t_rec, conf, pred) = records.remove(&req).expect("label of a record");
                    joined.push((t_rec, conf, o["ground_truth"] == pred.as_str()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(g.labels_dropped(), 0);
        (joined, f00)
    }

    fn correct_share(v: &[Joined]) -> f64 {
        v.iter().filter(|x| x.2).count() as f64 / v.len() as f64
    }

    #[test]
    fn labels_interleave_without_touching_the_other_lines() {
        let busy = GeneratorConfig {
            drifts: standard_drifts(T0 + 3_000 * 100),
            ..GeneratorConfig::default()
        }
        .with_batch_share(0.02)
        .with_click_rates(0.2, 0.4)
        .with_deploy(
            DeploySpec::new("fraud-v1", "fraud-v2", T0 + 5_000 * 100).with_extra_error_share(0.05),
        )
        .with_drift(
            DriftSpec::accuracy_drop(vec![0.into()], 1.0, 0.1, T0 + 4_000 * 100)
                .for_model("recsys-v3"),
        );
        let n = 8_000;
        for cfg in [busy, GeneratorConfig::synthetic(3, 3, 12).compact()] {
            let plain = lines(&mut Generator::new(cfg.clone()), n, T0, 100);
            let mut g = Generator::new(cfg.with_labels(LabelSpec::new(0.5, 20_000, 5_000)));
            let mut buf = String::new();
            let (mut others, mut labels) = (Vec::new(), 0);
            for i in 0..n {
                // A label line takes the place of no other line: the caller asks again at
                // the same time.
                let t = T0 + i as i64 * 100;
                loop {
                    let kind = g.next_line(t, &mut buf);
                    if kind != LineKind::Label {
                        others.push((t, kind, buf.clone()));
                        break;
                    }
                    labels += 1;
                }
            }
            assert!(others == plain, "the other lines changed");
            assert!((2_500..4_000).contains(&labels), "{labels} labels");
            assert!(g.labels_pending() > 0);
        }
    }

    #[test]
    fn label_lines_follow_their_records_by_the_delay() {
        let (step, delay, jitter) = (100, 60_000, 10_000);
        let cfg = GeneratorConfig::default().with_labels(LabelSpec::new(0.3, delay, jitter));
        let classes: std::collections::HashMap<String, Vec<String>> = cfg
            .models
            .iter()
            .map(|m| (m.name.clone(), m.classes.clone()))
            .collect();
        let mut g = Generator::new(cfg);
        let ls = lines(&mut g, 30_000, T0, step);
        let decoder = Decoder::new(DecodeConfig::default());
        // Request id -> (time, model) of the inference records so far.
        let mut records = std::collections::HashMap::new();
        let mut labelled = std::collections::HashSet::new();
        let mut last_due = i64::MIN;
        for (t, kind, line) in &ls {
            match kind {
                LineKind::Inference => {
                    let o = parse_obj(line);
                    let req = o["request_id"].as_str().unwrap().to_string();
                    records.insert(req, (*t, o["model_id"].as_str().unwrap().to_string()));
                }
                LineKind::Label => {
                    assert_key_order(
                        line,
                        &[
                            "timestamp",
                            "level",
                            "message",
                            "service",
                            "module",
                            "function",
                            "line",
                            "request_id",
                            "ground_truth",
                            "label_timestamp",
                        ],
                    );
                    let o = parse_obj(line);
                    assert_eq!(o.len(), 10, "{line}");
                    assert_eq!(o["timestamp"], python_log_timestamp(*t));
                    assert_eq!(o["level"], "INFO");
                    assert_eq!(o["message"], "Ground truth received");
                    assert_eq!(o["service"], "ai_inference_service");
                    assert_eq!(o["module"], "app");
                    assert_eq!(o["function"], "record_label");
                    assert_eq!(o["line"], 97);
                    let req = o["request_id"].as_str().unwrap();
                    let (t_rec, model) = records
                        .get(req)
                        .unwrap_or_else(|| panic!("no earlier record: {line}"));
                    assert!(labelled.insert(req.to_string()), "labelled twice: {req}");
                    let truth = o["ground_truth"].as_str().unwrap();
                    assert!(classes[model].iter().any(|c| c == truth), "{truth}");
                    let frac = line.split("\"label_timestamp\": ").nth(1).unwrap();
                    let frac = frac.trim_end_matches('}').split('.').nth(1).unwrap();
                    assert_eq!(frac.len(), 6, "six decimals: {line}");
                    let due = (o["label_timestamp"].as_f64().unwrap() * 1000.0).round() as i64;
                    let d = due - t_rec;
                    assert!((delay - jitter..=delay + jitter).contains(&d), "delay {d}");
                    // Written at the first line due, unless other labels queue before it.
                    assert!(due <= *t && *t - due < 10 * step, "due {due}, written {t}");
                    assert!(due >= last_due, "labels out of order");
                    last_due = due;
                    let Decoded::Record(r) = decoder.decode(line.as_bytes()) else {
                        panic!("not a record: {line}")
                    };
                    assert_eq!(r.kind, crate::engine::decode::RecordKind::Label);
                    assert_eq!(r.time, EventTime::Parsed(*t));
                }
                _ => {}
            }
        }
        // Every record old enough to have its label due by the end.
        let end = ls.last().unwrap().0;
        let old: Vec<&String> = records
            .iter()
            .filter(|(_, (t, _))| *t + delay + jitter + 10 * step <= end)
            .map(|(req, _)| req)
            .collect();
        let share = old.iter().filter(|r| labelled.contains(**r)).count() as f64 / old.len() as f64;
        assert!((0.28..0.32).contains(&share), "labelled share {share}");
        assert_eq!(g.labels_dropped(), 0);

        // Compact label lines: timestamp, request id, ground truth.
        let cfg = GeneratorConfig::synthetic(3, 2, 4)
            .inference_only()
            .compact()
            .with_labels(LabelSpec::new(1.0, 0, 0));
        let mut g = Generator::new(cfg);
        let ls = lines(&mut g, 10, T0, step);
        for w in ls.windows(2) {
            if w[1].1 != LineKind::Label {
                continue;
            }
            assert_key_order(&w[1].2, &["timestamp", "request_id", "ground_truth"]);
            let (rec, lab) = (parse_obj(&w[0].2), parse_obj(&w[1].2));
            assert_eq!(lab.len(), 3, "{}", w[1].2);
            assert_eq!(lab["timestamp"], python_log_timestamp(w[1].0));
            assert_eq!(lab["request_id"], rec["request_id"]);
            assert!(w[1].2.starts_with("{\"timestamp\": \""));
        }
        assert_eq!(ls.iter().filter(|l| l.1 == LineKind::Label).count(), 5);
    }

    #[test]
    fn labels_are_calibrated() {
        let cfg = GeneratorConfig::synthetic(21, 2, 2)
            .inference_only()
            .compact()
            .with_labels(LabelSpec::new(1.0, 0, 0));
        let (mut joined, _) = labelled(cfg, 400_000, 10);
        assert!(joined.len() >= 199_000, "{} labels", joined.len());
        joined.sort_by(|a, b| a.1.total_cmp(&b.1));
        let decile = joined.len() / 10;
        for part in joined.chunks(decile).take(10) {
            let conf = part.iter().map(|x| x.1).sum::<f64>() / part.len() as f64;
            let acc = correct_share(part);
            assert!(
                (acc - conf).abs() < 0.02,
                "accuracy {acc} at confidence {conf}"
            );
        }
        // A one-class model is always right.
        let cfg = GeneratorConfig {
            models: vec![ModelSpec::new("one")
                .with_features(2)
                .with_classes(&[("only", 1.0)])],
            ..GeneratorConfig::default()
        }
        .inference_only()
        .compact()
        .with_labels(LabelSpec::new(1.0, 0, 0));
        let (joined, _) = labelled(cfg, 2_000, 10);
        assert_eq!(correct_share(&joined), 1.0);
    }

    #[test]
    fn accuracy_drop_lowers_accuracy_and_shifts_the_feature() {
        let (n, step) = (400_000, 10);
        let onset = T0 + (n as i64 / 2) * step;
        let base = GeneratorConfig::synthetic(17, 2, 2)
            .inference_only()
            .compact();
        let probe = Generator::new(base.clone());
        let cfg = base
            .with_labels(LabelSpec::new(1.0, 0, 0))
            .with_drift(DriftSpec::accuracy_drop(vec![0.into()], 1.0, 0.05, onset));
        let (joined, f00) = labelled(cfg, n, step);
        let (before, after): (Vec<_>, Vec<_>) = joined.iter().partition(|x| x.0 < onset);
        let dropped = correct_share(&before) - correct_share(&after);
        assert!(
            (0.04..0.06).contains(&dropped),
            "accuracy fell by {dropped}"
        );
        let mean_conf = |v: &[Joined]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
        let conf_drop = mean_conf(&before) - mean_conf(&after);
        assert!(
            (conf_drop - 0.05).abs() < 0.003,
            "confidence fell by {conf_drop}"
        );
        // Still calibrated after the drop.
        assert!((correct_share(&after) - mean_conf(&after)).abs() < 0.01);
        // f00 moves by one baseline sd on each model.
        for m in 0..2 {
            let side = |after: bool| -> Vec<f64> {
                f00.iter()
                    .filter(|x| x.1 == m && (x.0 >= onset) == after)
                    .map(|x| x.2)
                    .collect()
            };
            let sd = probe.features(m)[0].sd().unwrap();
            let moved = (mean(&side(true)) - mean(&side(false))) / sd;
            assert!(
                (0.9..1.1).contains(&moved),
                "model {m}: f00 moved {moved} sd"
            );
        }
    }

    #[test]
    fn inactive_accuracy_drop_changes_no_byte() {
        let base = GeneratorConfig::default();
        let pinned = stream_hash(base.clone(), 5000);
        let never = DriftSpec::accuracy_drop(vec!["amount".into()], 1.0, 0.2, i64::MAX - 1);
        assert_eq!(stream_hash(base.with_drift(never), 5000), pinned);
    }

    #[test]
    fn labels_beyond_the_cap_are_dropped_and_counted() {
        let cfg = GeneratorConfig::default()
            .inference_only()
            .with_labels(LabelSpec::new(1.0, 1_000_000, 0));
        let mut g = Generator::new(cfg);
        g.labels.as_mut().unwrap().cap = 50;
        let ls = lines(&mut g, 200, T0, 10);
        assert!(ls.iter().all(|l| l.1 == LineKind::Inference));
        assert_eq!(g.labels_pending(), 50);
        assert_eq!(g.labels_dropped(), 150);
        assert_eq!(
            Generator::new(GeneratorConfig::default()).labels_dropped(),
            0
        );
    }

    #[test]
    fn bad_labels_and_accuracy_drops_are_rejected() {
        let why = |cfg: GeneratorConfig| Generator::try_new(cfg).err().map(|e| e.0);
        let d = GeneratorConfig::default;
        let labels = |share, delay, jitter| d().with_labels(LabelSpec::new(share, delay, jitter));
        for share in [-0.1, 1.1, f64::NAN] {
            let e = why(labels(share, 0, 0)).expect("bad share accepted");
            assert!(e.contains("labels") && e.contains("share"), "{e}");
        }
        assert!(why(labels(0.5, -1, 0)).unwrap().contains("delay_ms"));
        assert!(why(labels(0.5, 0, -1)).unwrap().contains("jitter_ms"));
        assert_eq!(why(labels(0.0, 0, 0)), None);
        assert_eq!(why(labels(1.0, 21_600_000, 1_800_000)), None);
        // Jitter beyond the delay clamps at zero.
        assert_eq!(why(labels(1.0, 10, 1_000)), None);

        let drop =
            |sds, drop| d().with_drift(DriftSpec::accuracy_drop(vec![0.into()], sds, drop, T0));
        for bad in [-0.01, 0.5, f64::NAN, f64::INFINITY] {
            let e = why(drop(1.0, bad)).expect("bad drop accepted");
            assert!(e.contains("accuracy drop"), "{e}");
        }
        assert!(why(drop(f64::NAN, 0.05)).unwrap().contains("sds"));
        assert!(why(drop(f64::INFINITY, 0.05)).is_some());
        assert_eq!(why(drop(1.0, 0.0)), None);
        assert_eq!(why(drop(-2.0, 0.49)), None);
        assert!(why(d().with_drift(DriftSpec::accuracy_drop(
            vec!["country".into()],
            1.0,
            0.05,
            T0
        )))
        .is_some());
        assert!(why(d().with_drift(
            DriftSpec::accuracy_drop(vec![0.into()], 1.0, 0.05, T0).for_model("nope")
        ))
        .is_some());
        assert_eq!(
            why(d().with_drift(DriftSpec::accuracy_drop(Vec::new(), 0.0, 0.05, T0))),
            None
        );
    }

    #[test]
    fn labels_and_accuracy_drops_round_trip_through_json() {
        let cfg = GeneratorConfig::default()
            .with_labels(LabelSpec::new(0.4, 21_600_000, 1_800_000))
            .with_drift(
                DriftSpec::accuracy_drop(vec![0.into(), "amount".into()], 1.0, 0.05, T0)
                    .for_model("fraud-v1"),
            );
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"kind\":\"accuracy_drop\""), "{json}");
        let back: GeneratorConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cfg, back);
        let minimal: GeneratorConfig =
            serde_json::from_str(r#"{"labels": {"share": 0.5}}"#).unwrap();
        assert_eq!(minimal.labels, Some(LabelSpec::new(0.5, 0, 0)));
        let d: DriftSpec = serde_json::from_str(
            r#"{"start_ms": 5, "effect": {"kind": "accuracy_drop", "features": ["amount"], "sds": 1.0, "drop": 0.05}}"#,
        )
        .unwrap();
        assert_eq!(
            d,
            DriftSpec::accuracy_drop(vec!["amount".into()], 1.0, 0.05, 5)
        );
    }

    #[test]
    fn first_numeric_feature_follows_the_layout() {
        let g = Generator::new(GeneratorConfig::synthetic(1, 1, 20));
        let spec = ModelSpec::new("m").with_features(20);
        let want = g.features(0).iter().position(FeatureInfo::is_numeric);
        assert_eq!(spec.first_numeric_feature(), want);
        assert_eq!(spec.first_numeric_feature(), Some(0));
        let all_cat = ModelSpec::new("m")
            .with_features(3)
            .with_categorical_share(1.0);
        assert_eq!(all_cat.first_numeric_feature(), None);
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = GeneratorConfig::default().with_drift(
            DriftSpec::new_category("country", "__new_XX", 0.2, T0)
                .for_model("fraud-v1")
                .ramp(60_000),
        );
        let json = serde_json::to_string(&cfg).unwrap();
        let back: GeneratorConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cfg, back);
        let minimal: GeneratorConfig =
            serde_json::from_str(r#"{"seed": 5, "models": [{"name": "m"}]}"#).unwrap();
        assert_eq!(minimal.models[0].features, DEFAULT_FEATURES);
    }
}
