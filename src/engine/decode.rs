//! Decoding: one JSON log line in, one [`Event`] (or a counted reason) out.
//!
//! This module owns the field mapping (which JSON Pointer holds which role),
//! timestamp parsing, feature flattening and the fixed vocabulary of reasons a
//! line is rejected or skipped. It never panics on input and never logs: the
//! caller counts what it returns (see [`DecodeStats`]) in one place.
//!
//! Speed matters here more than anywhere else (every line of every model goes
//! through it), so the decoder does not build a `serde_json::Value`. The
//! mapping's pointers are compiled into a small trie, and a `DeserializeSeed`
//! walks the document once with sonic-rs's deserializer: keys that no
//! pointer names are skipped by a validating scan (no allocation, no number
//! conversion), strings are borrowed from the input whenever they contain no
//! escapes, and the features object is flattened in place. The seeds are
//! plain serde, and a property test holds the walk to serde_json's answers.
//!
//! Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity` bare, which
//! is not JSON. Rather than lose the whole line, a line that fails to parse and
//! contains such a token is rewritten once with the tokens replaced by a marker
//! string, and the affected feature is then counted as invalid.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Marker substituted for Python's bare non-finite number tokens.
const NONFINITE_MARKER: &str = "__driftd_nonfinite__";

/// Longest model id or arm name accepted; longer ones are not identifiers but
/// payload, and would blow up label values.
pub const MAX_NAME_LEN: usize = 128;

/// Why a line was not decoded into an event. A small fixed set: these are
/// metric label values (`driftd_events_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    TooLarge,
    MalformedJson,
    NotAnObject,
    MissingModel,
    InvalidModel,
}

impl Reject {
    pub const ALL: [Reject; 5] = [
        Reject::TooLarge,
        Reject::MalformedJson,
        Reject::NotAnObject,
        Reject::MissingModel,
        Reject::InvalidModel,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::MalformedJson => "malformed_json",
            Reject::NotAnObject => "not_an_object",
            Reject::MissingModel => "missing_model",
            Reject::InvalidModel => "invalid_model",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Valid log records that no analysis uses. They are recognised and skipped,
/// not errors: the seed's services write all kinds of lines to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// A model but neither prediction, features, timings, batch statistics,
    /// feedback nor an error level (e.g. a startup message).
    NoInferenceFields,
    /// A feedback line without a request id: nothing to join it to.
    FeedbackWithoutRequestId,
    /// A label line (ground truth) without a request id.
    LabelWithoutRequestId,
}

impl Skip {
    pub const ALL: [Skip; 3] = [
        Skip::NoInferenceFields,
        Skip::FeedbackWithoutRequestId,
        Skip::LabelWithoutRequestId,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoInferenceFields => "no_inference_fields",
            Skip::FeedbackWithoutRequestId => "feedback_without_request_id",
            Skip::LabelWithoutRequestId => "label_without_request_id",
        }
    }
}

/// The other records the seed's services log beside inference records, each
/// feeding one of the analyses beside drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// `"Inference timing metrics"`: stage latencies (`total_latency_ms` ...).
    Timing,
    /// An ERROR or CRITICAL record without prediction or features.
    Error,
    /// `"User feedback received"`: a request id and an action.
    Feedback,
    /// `"Batch data and prediction statistics"`: `input_stats`, `prediction_stats`.
    BatchStats,
    /// Ground truth for a request: a request id and the true outcome.
    Label,
}

impl RecordKind {
    pub const ALL: [RecordKind; 5] = [
        RecordKind::Timing,
        RecordKind::Error,
        RecordKind::Feedback,
        RecordKind::BatchStats,
        RecordKind::Label,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Timing => "timing",
            RecordKind::Error => "error",
            RecordKind::Feedback => "feedback",
            RecordKind::BatchStats => "batch_stats",
            RecordKind::Label => "label",
        }
    }
}

/// Problems inside an accepted event: the event is kept, the field is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Issue {
    TimestampMissing,
    TimestampInvalid,
    FeatureArray,
    FeatureNonFinite,
    FeaturesNotObject,
    FeatureTooDeep,
    TooManyFeatures,
    ConfidenceInvalid,
    PredictionInvalid,
    ArmInvalid,
}

impl Issue {
    pub const COUNT: usize = 10;
    pub const ALL: [Issue; Issue::COUNT] = [
        Issue::TimestampMissing,
        Issue::TimestampInvalid,
        Issue::FeatureArray,
        Issue::FeatureNonFinite,
        Issue::FeaturesNotObject,
        Issue::FeatureTooDeep,
        Issue::TooManyFeatures,
        Issue::ConfidenceInvalid,
        Issue::PredictionInvalid,
        Issue::ArmInvalid,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Issue::TimestampMissing => "timestamp_missing",
            Issue::TimestampInvalid => "timestamp_invalid",
            Issue::FeatureArray => "feature_array",
            Issue::FeatureNonFinite => "feature_non_finite",
            Issue::FeaturesNotObject => "features_not_object",
            Issue::FeatureTooDeep => "feature_too_deep",
            Issue::TooManyFeatures => "too_many_features",
            Issue::ConfidenceInvalid => "confidence_invalid",
            Issue::PredictionInvalid => "prediction_invalid",
            Issue::ArmInvalid => "arm_invalid",
        }
    }
}

/// A string borrowed from the input line when it has no escapes.
///
/// serde's own `Cow<str>` always allocates; this one does not.
#[derive(Debug, Clone, PartialEq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One feature's value as the window will bin it.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue<'a> {
    Num(f64),
    Cat(Cow<'a, str>),
    /// A value of a feature configured as `hash`: only its hash survives.
    Hashed(u64),
    /// `null`: counted in the feature's missing bucket.
    Missing,
    /// NaN or an infinity: never reaches a histogram.
    NonFinite,
}

/// The model's output on this line.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction<'a> {
    /// A string, bool or integer: a class label.
    Label(Cow<'a, str>),
    /// A float: a regression output.
    Value(f64),
}

/// The ground truth of a request: a class (by hash, like a predicted class
/// is compared), a value, or an integer, which is either.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Truth {
    Class(u64),
    Value(f64),
    /// An integer: class `"3"` to a classifier, 3.0 to a regression.
    Number(u64, f64),
    /// Neither (an object, a string that is no usable name): matches nothing.
    Unusable,
}

impl Truth {
    pub fn class_hash(self) -> Option<u64> {
        match self {
            Truth::Class(h) | Truth::Number(h, _) => Some(h),
            Truth::Value(_) | Truth::Unusable => None,
        }
    }
    pub fn value(self) -> Option<f64> {
        match self {
            Truth::Value(v) | Truth::Number(_, v) => Some(v),
            Truth::Class(_) | Truth::Unusable => None,
        }
    }
}

/// Log level, reduced to what the analyses need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    Other,
}

impl LogLevel {
    fn parse(s: &str) -> LogLevel {
        match s {
            "INFO" | "info" | "Info" => LogLevel::Info,
            "DEBUG" | "debug" | "Debug" => LogLevel::Debug,
            "WARNING" | "WARN" | "warning" | "warn" => LogLevel::Warning,
            "ERROR" | "error" | "Error" => LogLevel::Error,
            "CRITICAL" | "FATAL" | "critical" | "fatal" => LogLevel::Critical,
            _ => LogLevel::Other,
        }
    }
    pub fn is_error(self) -> bool {
        matches!(self, LogLevel::Error | LogLevel::Critical)
    }
}

/// Where the event's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTime {
    /// Parsed from the line, milliseconds since the Unix epoch.
    Parsed(i64),
    /// The line had no timestamp (the caller uses arrival time).
    Missing,
    /// The line had a timestamp that did not parse (the caller uses arrival time).
    Invalid,
}

/// A decoded inference record. Strings borrow from the line where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub model: Cow<'a, str>,
    pub arm: Option<Cow<'a, str>>,
    pub time: EventTime,
    pub features: Vec<(Cow<'a, str>, FeatureValue<'a>)>,
    pub prediction: Option<Prediction<'a>>,
    pub confidence: Option<f64>,
    pub level: Option<LogLevel>,
    /// The `service` that logged the line (groups a model's versions).
    pub service: Option<Cow<'a, str>>,
    /// `error_type` of an ERROR record.
    pub error_type: Option<Cow<'a, str>>,
    /// A stable hash of the request id: enough to join feedback to its
    /// prediction, useless to recover the id (which is never kept).
    pub request_id: Option<u64>,
    /// Stage latencies in milliseconds on the same line (`inference_ms` ...).
    pub stages: Vec<(Cow<'a, str>, f64)>,
    /// Per-field problems, as a bitset over [`Issue`] (each counted once per line).
    pub issues: u32,
}

impl Event<'_> {
    pub fn has_issue(&self, i: Issue) -> bool {
        self.issues & (1 << i as u32) != 0
    }
}

/// A non-inference record (see [`RecordKind`]). Only the fields its kind
/// uses are filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    pub kind: RecordKind,
    /// Absent only on feedback lines, which name their request instead.
    pub model: Option<Cow<'a, str>>,
    pub service: Option<Cow<'a, str>>,
    pub arm: Option<Cow<'a, str>>,
    pub time: EventTime,
    pub level: Option<LogLevel>,
    pub error_type: Option<Cow<'a, str>>,
    /// Hash of the request id (see [`Event::request_id`]).
    pub request_id: Option<u64>,
    /// The feedback's action (`clicked_on_item` ...).
    pub action: Option<Cow<'a, str>>,
    pub stages: Vec<(Cow<'a, str>, f64)>,
    /// `input_stats`: numeric batch statistics (`feature_A_mean` ...).
    pub input_stats: Vec<(Cow<'a, str>, f64)>,
    /// `prediction_stats.class_counts`.
    pub class_counts: Vec<(Cow<'a, str>, u64)>,
    /// `prediction_stats.avg_confidence`.
    pub avg_confidence: Option<f64>,
    /// A label line's true outcome: a class by its hash (the raw value is
    /// never kept) or a value.
    pub truth: Option<Truth>,
}

/// What [`Decoder::decode`] makes of a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<'a> {
    Event(Event<'a>),
    Record(Record<'a>),
    Skipped(Skip),
    Rejected(Reject),
}

/// An RFC 6901 JSON Pointer, as a list of reference tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer(Vec<String>);

/// A pointer that does not follow RFC 6901.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("JSON Pointer {0:?} must start with '/' (RFC 6901), e.g. \"/model_id\"")]
    NoLeadingSlash(String),
    #[error(
        "JSON Pointer {0:?} has a '~' not followed by 0 or 1 (write '~0' for '~' and '~1' for '/')"
    )]
    BadEscape(String),
    #[error("JSON Pointer \"\" names the whole document; name a field, e.g. \"/model_id\"")]
    Root,
}

impl Pointer {
    pub fn parse(s: &str) -> Result<Pointer, PointerError> {
        if s.is_empty() {
            return Err(PointerError::Root);
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(PointerError::NoLeadingSlash(s.to_owned()));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut tok = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => tok.push('~'),
                        Some('1') => tok.push('/'),
                        _ => return Err(PointerError::BadEscape(s.to_owned())),
                    }
                } else {
                    tok.push(c);
                }
            }
            tokens.push(tok);
        }
        Ok(Pointer(tokens))
    }

    pub fn tokens(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.0 {
            write!(f, "/{}", t.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// Which role each JSON Pointer plays. Validated config, see `config.rs`.
#[derive(Debug, Clone)]
pub struct FieldMapping {
    /// Tried in order: the first present one wins (`/model_id`, then `/model_used`).
    pub model: Vec<Pointer>,
    pub timestamp: Pointer,
    pub features: Pointer,
    pub prediction: Pointer,
    pub confidence: Pointer,
    pub arm: Pointer,
    pub level: Pointer,
    pub request_id: Pointer,
    pub service: Pointer,
    pub error_type: Pointer,
    /// The action of a feedback line; its presence makes a line feedback.
    pub action: Pointer,
    /// Time of a feedback line without the envelope's timestamp.
    pub feedback_time: Pointer,
    /// The true outcome of a request; its presence makes a line a label.
    pub ground_truth: Pointer,
    /// Time of a label line without the envelope's timestamp.
    pub label_time: Pointer,
    pub input_stats: Pointer,
    pub class_counts: Pointer,
    pub avg_confidence: Pointer,
    /// Time of a batch-statistics line without the envelope's timestamp.
    pub batch_time: Pointer,
    /// Stage latencies in milliseconds; the stage is the pointer's last token.
    pub stages: Vec<Pointer>,
    /// Also take any other top-level number whose key ends in `_ms` as a stage.
    pub any_ms_stage: bool,
}

/// Stage fields read by default: the seed's timing line, and the database
/// stage its text names.
pub const DEFAULT_STAGES: [&str; 5] = [
    "total_latency_ms",
    "preprocessing_ms",
    "inference_ms",
    "postprocessing_ms",
    "database_query_ms",
];

impl Default for FieldMapping {
    fn default() -> Self {
        let p = |s: &str| Pointer::parse(s).expect("default pointers are valid");
        FieldMapping {
            model: vec![p("/model_id"), p("/model_used")],
            timestamp: p("/timestamp"),
            features: p("/input_features"),
            prediction: p("/prediction"),
            confidence: p("/confidence"),
            arm: p("/experiment_assignment"),
            level: p("/level"),
            request_id: p("/request_id"),
            service: p("/service"),
            error_type: p("/error_type"),
            action: p("/action"),
            feedback_time: p("/feedback_timestamp"),
            ground_truth: p("/ground_truth"),
            label_time: p("/label_timestamp"),
            input_stats: p("/input_stats"),
            class_counts: p("/prediction_stats/class_counts"),
            avg_confidence: p("/prediction_stats/avg_confidence"),
            batch_time: p("/timestamp_end"),
            stages: DEFAULT_STAGES.iter().map(|s| p(&format!("/{s}"))).collect(),
            any_ms_stage: false,
        }
    }
}

/// Which features are kept, dropped, or kept only as a hash.
#[derive(Debug, Clone, Default)]
pub struct FeatureFilter {
    /// When set, only these features are kept.
    pub allow: Option<HashSet<String>>,
    pub deny: HashSet<String>,
    /// Categorical values of these features are replaced by a hash at decode
    /// time, so the raw value never leaves this module.
    pub hash: HashSet<String>,
}

impl FeatureFilter {
    fn is_noop(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty() && self.hash.is_empty()
    }
}

/// Everything the decoder needs to know; built from config.
#[derive(Debug, Clone)]
pub struct DecodeConfig {
    pub mapping: FieldMapping,
    pub filter: FeatureFilter,
    /// Offset applied to timestamps without one (Python logging's default format).
    pub local_offset: FixedOffset,
    pub max_line_bytes: usize,
    pub max_features: usize,
    /// Nesting below the features object beyond which values are skipped.
    pub max_feature_depth: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            mapping: FieldMapping::default(),
            filter: FeatureFilter::default(),
            local_offset: FixedOffset::east_opt(0).expect("zero offset"),
            max_line_bytes: 1 << 20,
            max_features: 512,
            max_feature_depth: 4,
        }
    }
}

/// The stable hash used for `hash` features (and by the binner for hashed
/// baselines). xxh3 with a fixed seed: the same value hashes the same across
/// restarts and machines, so baselines stay valid.
pub fn feature_hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(s.as_bytes(), 0x6472_6966_7464)
}

/// Hash of a numeric value of a hashed feature: by its shortest decimal form,
/// so `12` and `12.0` agree.
fn num_hash(v: f64) -> u64 {
    let mut buf = ryu_like(v);
    if buf.ends_with(".0") {
        buf.truncate(buf.len() - 2);
    }
    feature_hash(&buf)
}

fn ryu_like(v: f64) -> String {
    format!("{v:?}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Model(u8),
    Timestamp,
    Features,
    Prediction,
    Confidence,
    Arm,
    Level,
    RequestId,
    Service,
    ErrorType,
    Action,
    FeedbackTime,
    GroundTruth,
    LabelTime,
    InputStats,
    ClassCounts,
    AvgConfidence,
    BatchTime,
    Stage,
}

#[derive(Debug, Default, Clone)]
struct Node {
    children: Vec<(Box<str>, Node)>,
    role: Option<Role>,
}

impl Node {
    fn insert(&mut self, tokens: &[String], role: Role) {
        match tokens.split_first() {
            None => {
                // First mapping wins when two roles name the same field.
                self.role.get_or_insert(role);
            }
            Some((head, rest)) => {
                let idx = match self.children.iter().position(|(k, _)| **k == **head) {
                    Some(i) => i,
                    None => {
                        self.children.push((head.as_str().into(), Node::default()));
                        self.children.len() - 1
                    }
                };
                self.children[idx].1.insert(rest, role);
            }
        }
    }

    fn child(&self, key: &str) -> Option<&Node> {
        // Every key of every line comes through here: reject on length and
        // first byte before comparing whole strings.
        let first = key.as_bytes().first();
        self.children
            .iter()
            .find(|(k, _)| k.len() == key.len() && k.as_bytes().first() == first && **k == *key)
            .map(|(_, n)| n)
    }
}

/// Decodes lines according to a [`DecodeConfig`]. Cheap to clone the config
/// into; holds no per-line state.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: DecodeConfig,
    trie: Node,
}

/// Fields collected during the single pass, before they are judged.
#[derive(Default)]
struct Collect<'a> {
    models: [Option<Result<Cow<'a, str>, ()>>; 4],
    time: Option<EventTime>,
    features: Option<Vec<(Cow<'a, str>, FeatureValue<'a>)>>,
    prediction: Option<Result<Prediction<'a>, ()>>,
    confidence: Option<Result<f64, ()>>,
    arm: Option<Result<Cow<'a, str>, ()>>,
    level: Option<LogLevel>,
    service: Option<Cow<'a, str>>,
    error_type: Option<Cow<'a, str>>,
    request_id: Option<u64>,
    /// `Some(None)`: an action that is not a usable name.
    action: Option<Option<Cow<'a, str>>>,
    feedback_time: Option<EventTime>,
    /// `Some(None)`: a truth that is no usable class or value.
    truth: Option<Option<Truth>>,
    label_time: Option<EventTime>,
    batch_time: Option<EventTime>,
    stages: Vec<(Cow<'a, str>, f64)>,
    input_stats: Option<Vec<(Cow<'a, str>, f64)>>,
    class_counts: Option<Vec<(Cow<'a, str>, u64)>>,
    avg_confidence: Option<f64>,
    issues: u32,
}

impl Decoder {
    pub fn new(cfg: DecodeConfig) -> Decoder {
        let mut trie = Node::default();
        let m = &cfg.mapping;
        for (i, p) in m.model.iter().take(4).enumerate() {
            trie.insert(p.tokens(), Role::Model(i as u8));
        }
        trie.insert(m.timestamp.tokens(), Role::Timestamp);
        trie.insert(m.features.tokens(), Role::Features);
        trie.insert(m.prediction.tokens(), Role::Prediction);
        trie.insert(m.confidence.tokens(), Role::Confidence);
        trie.insert(m.arm.tokens(), Role::Arm);
        trie.insert(m.level.tokens(), Role::Level);
        trie.insert(m.request_id.tokens(), Role::RequestId);
        trie.insert(m.service.tokens(), Role::Service);
        trie.insert(m.error_type.tokens(), Role::ErrorType);
        trie.insert(m.action.tokens(), Role::Action);
        trie.insert(m.feedback_time.tokens(), Role::FeedbackTime);
        trie.insert(m.ground_truth.tokens(), Role::GroundTruth);
        trie.insert(m.label_time.tokens(), Role::LabelTime);
        trie.insert(m.input_stats.tokens(), Role::InputStats);
        trie.insert(m.class_counts.tokens(), Role::ClassCounts);
        trie.insert(m.avg_confidence.tokens(), Role::AvgConfidence);
        trie.insert(m.batch_time.tokens(), Role::BatchTime);
        for st in &m.stages {
            trie.insert(st.tokens(), Role::Stage);
        }
        Decoder { cfg, trie }
    }

    pub fn config(&self) -> &DecodeConfig {
        &self.cfg
    }

    /// Decodes one line. `Decoded::Event` may borrow from `line`; a line that
    /// needed the non-finite rewrite comes back fully owned.
    pub fn decode<'a>(&self, line: &'a [u8]) -> Decoded<'a> {
        if line.len() > self.cfg.max_line_bytes {
            return Decoded::Rejected(Reject::TooLarge);
        }
        let line = trim_ascii(line);
        match self.parse(line) {
            Ok(c) => self.judge(c),
            Err(ParseFail::NotAnObject) => Decoded::Rejected(Reject::NotAnObject),
            Err(ParseFail::Malformed) => match rewrite_nonfinite(line) {
                Some(fixed) => match self.parse(fixed.as_bytes()) {
                    Ok(c) => into_owned(self.judge(c)),
                    Err(ParseFail::NotAnObject) => Decoded::Rejected(Reject::NotAnObject),
                    Err(ParseFail::Malformed) => Decoded::Rejected(Reject::MalformedJson),
                },
                None => Decoded::Rejected(Reject::MalformedJson),
            },
        }
    }

    fn parse<'a>(&self, line: &'a [u8]) -> Result<Collect<'a>, ParseFail> {
        // Cheap pre-check so arrays, numbers and plain text get a precise reason.
        match line.first() {
            Some(b'{') => {}
            Some(b'[') | Some(b'"') | Some(b'0'..=b'9') | Some(b'-') | Some(b't') | Some(b'f')
            | Some(b'n') => {
                if serde_json::from_slice::<IgnoredAny>(line).is_ok() {
                    return Err(ParseFail::NotAnObject);
                }
                return Err(ParseFail::Malformed);
            }
            _ => return Err(ParseFail::Malformed),
        }
        // Validate UTF-8 once for the whole line (a fast, mostly-ASCII scan)
        // rather than string by string inside the parser.
        let Ok(text) = std::str::from_utf8(line) else {
            return Err(ParseFail::Malformed);
        };
        self.walk(text)
    }

    /// The single pass over a line's JSON. sonic-rs rather than serde_json:
    /// the same seeds, but values no pointer names (`message`, `module`,
    /// `input_hash` ...) are skipped by a validating scan that builds
    /// nothing, and strings and numbers are read faster. A test holds it
    /// to serde_json's answers (`sonic_rs_and_serde_json_agree`).
    fn walk<'a>(&self, text: &'a str) -> Result<Collect<'a>, ParseFail> {
        let mut c = Collect::default();
        let mut de = sonic_rs::Deserializer::from_str(text);
        self.seed(&mut c)
            .deserialize(&mut de)
            .map_err(|_| ParseFail::Malformed)?;
        de.end().map_err(|_| ParseFail::Malformed)?;
        Ok(c)
    }

    fn seed<'t, 'c, 'a>(&'t self, out: &'c mut Collect<'a>) -> NodeSeed<'t, 'c, 'a> {
        NodeSeed {
            node: &self.trie,
            root: true,
            cfg: &self.cfg,
            out,
        }
    }

    fn judge<'a>(&self, c: Collect<'a>) -> Decoded<'a> {
        let mut issues = c.issues;
        let mut model = None;
        let mut invalid_model = false;
        for m in c.models.into_iter().flatten() {
            match m {
                Ok(s) => {
                    model = Some(s);
                    break;
                }
                Err(()) => invalid_model = true,
            }
        }
        let has_action = c.action.is_some();
        let time = c.time.unwrap_or(EventTime::Missing);
        let prediction = match c.prediction {
            Some(Ok(p)) => Some(p),
            Some(Err(())) => {
                issues |= 1 << Issue::PredictionInvalid as u32;
                None
            }
            None => None,
        };
        let inference = prediction.is_some() || c.features.is_some();
        let arm = match c.arm {
            Some(Ok(a)) => Some(a),
            Some(Err(())) => {
                issues |= 1 << Issue::ArmInvalid as u32;
                None
            }
            None => None,
        };
        // What a record (any line that is not an inference record) is, in
        // order of precedence: feedback names an action, batch lines carry
        // statistics, error lines an error level, timing lines stages.
        let kind = if inference {
            None
        } else if c.truth.is_some() {
            Some(RecordKind::Label)
        } else if has_action {
            Some(RecordKind::Feedback)
        } else if c.input_stats.is_some() || c.class_counts.is_some() || c.avg_confidence.is_some()
        {
            Some(RecordKind::BatchStats)
        } else if c.level.is_some_and(LogLevel::is_error) {
            Some(RecordKind::Error)
        } else if !c.stages.is_empty() {
            Some(RecordKind::Timing)
        } else {
            None
        };
        let model = match model {
            Some(m) => m,
            // The seed's feedback lines carry a request id and an action but
            // no model: they are joined to their prediction by request id.
            None if kind == Some(RecordKind::Feedback) => {
                return self.feedback(None, c.request_id, c.action, time, c.feedback_time);
            }
            // Labels, likewise, name their request; a model is optional.
            None if kind == Some(RecordKind::Label) => {
                return label(None, c.request_id, c.truth, time, c.label_time);
            }
            None if invalid_model => return Decoded::Rejected(Reject::InvalidModel),
            None => return Decoded::Rejected(Reject::MissingModel),
        };
        if let Some(kind) = kind {
            if kind == RecordKind::Feedback {
                return self.feedback(Some(model), c.request_id, c.action, time, c.feedback_time);
            }
            if kind == RecordKind::Label {
                return label(Some(model), c.request_id, c.truth, time, c.label_time);
            }
            let time = match (time, c.batch_time) {
                (EventTime::Parsed(_), _) | (_, None) => time,
                (_, Some(t)) if kind == RecordKind::BatchStats => t,
                _ => time,
            };
            return Decoded::Record(Record {
                kind,
                model: Some(model),
                service: c.service,
                arm,
                time,
                level: c.level,
                error_type: c.error_type,
                request_id: c.request_id,
                action: None,
                stages: c.stages,
                input_stats: c.input_stats.unwrap_or_default(),
                class_counts: c.class_counts.unwrap_or_default(),
                avg_confidence: c.avg_confidence,
                truth: None,
            });
        }
        if !inference {
            return Decoded::Skipped(Skip::NoInferenceFields);
        }
        let confidence = match c.confidence {
            Some(Ok(v)) => Some(v),
            Some(Err(())) => {
                issues |= 1 << Issue::ConfidenceInvalid as u32;
                None
            }
            None => None,
        };
        match time {
            EventTime::Missing => issues |= 1 << Issue::TimestampMissing as u32,
            EventTime::Invalid => issues |= 1 << Issue::TimestampInvalid as u32,
            EventTime::Parsed(_) => {}
        }
        Decoded::Event(Event {
            model,
            arm,
            time,
            features: c.features.unwrap_or_default(),
            prediction,
            confidence,
            level: c.level,
            service: c.service,
            error_type: c.error_type,
            request_id: c.request_id,
            stages: c.stages,
            issues,
        })
    }

    fn feedback<'a>(
        &self,
        model: Option<Cow<'a, str>>,
        request_id: Option<u64>,
        action: Option<Option<Cow<'a, str>>>,
        time: EventTime,
        feedback_time: Option<EventTime>,
    ) -> Decoded<'a> {
        let skip = Skip::FeedbackWithoutRequestId;
        match request_record(
            RecordKind::Feedback,
            skip,
            model,
            request_id,
            time,
            feedback_time,
        ) {
            Ok(mut r) => {
                // An action that is no usable name still is feedback.
                r.action = Some(action.flatten().unwrap_or(Cow::Borrowed("other")));
                Decoded::Record(r)
            }
            Err(skip) => Decoded::Skipped(skip),
        }
    }
}

/// A label line: one whose truth is unusable (an object, a string that is
/// no valid name) is still a label, of a truth that matches nothing.
fn label<'a>(
    model: Option<Cow<'a, str>>,
    request_id: Option<u64>,
    truth: Option<Option<Truth>>,
    time: EventTime,
    label_time: Option<EventTime>,
) -> Decoded<'a> {
    let skip = Skip::LabelWithoutRequestId;
    match request_record(RecordKind::Label, skip, model, request_id, time, label_time) {
        Ok(mut r) => {
            // An unusable truth is counted (`mismatched_kind`), never credited.
            r.truth = Some(truth.flatten().unwrap_or(Truth::Unusable));
            Decoded::Record(r)
        }
        Err(skip) => Decoded::Skipped(skip),
    }
}

/// A record about a request (feedback, a label): joined to its prediction
/// by request id, so one without an id is skipped as `skip`; timed by its
/// own time field (`own_time`) when the envelope's timestamp is unusable.
fn request_record<'a>(
    kind: RecordKind,
    skip: Skip,
    model: Option<Cow<'a, str>>,
    request_id: Option<u64>,
    time: EventTime,
    own_time: Option<EventTime>,
) -> Result<Record<'a>, Skip> {
    let Some(request_id) = request_id else {
        return Err(skip);
    };
    let time = match (time, own_time) {
        (EventTime::Parsed(_), _) | (_, None) => time,
        (_, Some(t)) => t,
    };
    Ok(Record {
        kind,
        model,
        service: None,
        arm: None,
        time,
        level: None,
        error_type: None,
        request_id: Some(request_id),
        action: None,
        stages: Vec::new(),
        input_stats: Vec::new(),
        class_counts: Vec::new(),
        avg_confidence: None,
        truth: None,
    })
}

enum ParseFail {
    Malformed,
    NotAnObject,
}

fn trim_ascii(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

fn into_owned(d: Decoded<'_>) -> Decoded<'static> {
    match d {
        Decoded::Skipped(s) => Decoded::Skipped(s),
        Decoded::Rejected(r) => Decoded::Rejected(r),
        Decoded::Event(e) => Decoded::Event(e.into_owned()),
        Decoded::Record(r) => Decoded::Record(r.into_owned()),
    }
}

fn own_pairs<T: Copy>(v: Vec<(Cow<'_, str>, T)>) -> Vec<(Cow<'static, str>, T)> {
    v.into_iter().map(|(k, x)| (own(k), x)).collect()
}

impl Record<'_> {
    /// Copies every borrowed string, so the record outlives its line.
    pub fn into_owned(self) -> Record<'static> {
        Record {
            kind: self.kind,
            model: self.model.map(own),
            service: self.service.map(own),
            arm: self.arm.map(own),
            time: self.time,
            level: self.level,
            error_type: self.error_type.map(own),
            request_id: self.request_id,
            action: self.action.map(own),
            stages: own_pairs(self.stages),
            input_stats: own_pairs(self.input_stats),
            class_counts: own_pairs(self.class_counts),
            avg_confidence: self.avg_confidence,
            truth: self.truth,
        }
    }
}

fn own(c: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(c.into_owned())
}

impl Event<'_> {
    /// Copies every borrowed string, so the event outlives its line.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            model: own(self.model),
            arm: self.arm.map(own),
            time: self.time,
            features: self
                .features
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        FeatureValue::Cat(c) => FeatureValue::Cat(own(c)),
                        FeatureValue::Num(n) => FeatureValue::Num(n),
                        FeatureValue::Hashed(h) => FeatureValue::Hashed(h),
                        FeatureValue::Missing => FeatureValue::Missing,
                        FeatureValue::NonFinite => FeatureValue::NonFinite,
                    };
                    (own(k), v)
                })
                .collect(),
            prediction: self.prediction.map(|p| match p {
                Prediction::Label(l) => Prediction::Label(own(l)),
                Prediction::Value(v) => Prediction::Value(v),
            }),
            confidence: self.confidence,
            level: self.level,
            service: self.service.map(own),
            error_type: self.error_type.map(own),
            request_id: self.request_id,
            stages: own_pairs(self.stages),
            issues: self.issues,
        }
    }
}

/// Replaces bare `NaN`, `Infinity` and `-Infinity` tokens outside strings by
/// a marker string. Returns None when there is nothing to replace.
fn rewrite_nonfinite(line: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(line).ok()?;
    if !(s.contains("NaN") || s.contains("Infinity")) {
        return None;
    }
    let marker = format!("\"{NONFINITE_MARKER}\"");
    let mut out = String::with_capacity(s.len() + 32);
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    let mut changed = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            if b == b'\\' {
                // Copy the escape pair verbatim (both bytes are ASCII or the
                // start of a UTF-8 sequence we copy below).
                let end = (i + 2).min(bytes.len());
                out.push_str(s.get(i..end)?);
                i = end;
                continue;
            }
            if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        } else {
            for tok in ["-Infinity", "Infinity", "NaN"] {
                if s[i..].starts_with(tok) {
                    out.push_str(&marker);
                    i += tok.len();
                    changed = true;
                    break;
                }
            }
            if changed && i < bytes.len() && !s.is_char_boundary(i) {
                return None;
            }
        }
        // Copy one whole UTF-8 character.
        let ch_len = s[i..].chars().next().map_or(0, char::len_utf8);
        if ch_len == 0 {
            break;
        }
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    changed.then_some(out)
}

/// The scalar `visit_*` methods of a visitor that wanted an object, all
/// doing `$body` and accepting the value (a scalar where the mapping points
/// into an object is not a reason to lose the line).
macro_rules! on_scalar {
    ($this:ident => $($body:tt)*) => {
        fn visit_bool<E: de::Error>($this, _: bool) -> Result<(), E> {
            $($body)*
            Ok(())
        }
        fn visit_i64<E: de::Error>($this, _: i64) -> Result<(), E> {
            $($body)*
            Ok(())
        }
        fn visit_u64<E: de::Error>($this, _: u64) -> Result<(), E> {
            $($body)*
            Ok(())
        }
        fn visit_f64<E: de::Error>($this, _: f64) -> Result<(), E> {
            $($body)*
            Ok(())
        }
        fn visit_str<E: de::Error>($this, _: &str) -> Result<(), E> {
            $($body)*
            Ok(())
        }
    };
}

struct NodeSeed<'t, 'c, 'a> {
    node: &'t Node,
    /// The document's top level, where `any_ms_stage` looks.
    root: bool,
    cfg: &'t DecodeConfig,
    out: &'c mut Collect<'a>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    // Intermediate nodes that are not objects are simply not what the mapping
    // points into: ignore them.
    on_scalar!(self =>);
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let Some(child) = self.node.child(&key.0) else {
                if self.root && self.cfg.mapping.any_ms_stage && key.0.ends_with("_ms") {
                    let v = map.next_value::<Scalar<'de>>()?;
                    push_stage(self.out, self.cfg, key.0, v);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
                continue;
            };
            match child.role {
                None => map.next_value_seed(NodeSeed {
                    node: child,
                    root: false,
                    cfg: self.cfg,
                    out: &mut *self.out,
                })?,
                // The stage is named by its key, borrowed from the line.
                Some(Role::Stage) => {
                    let v = map.next_value::<Scalar<'de>>()?;
                    push_stage(self.out, self.cfg, key.0, v);
                }
                Some(role) => map.next_value_seed(RoleSeed {
                    role,
                    cfg: self.cfg,
                    out: &mut *self.out,
                })?,
            }
        }
        Ok(())
    }
}

/// Most stages a line may carry; more are payload, not timings.
const MAX_STAGES: usize = 16;

fn push_stage<'a>(out: &mut Collect<'a>, _cfg: &DecodeConfig, name: Cow<'a, str>, v: Scalar<'a>) {
    let ms = match v {
        Scalar::Float(f) => f,
        Scalar::Int(i) => i as f64,
        Scalar::UInt(u) => u as f64,
        _ => return,
    };
    // A negative or non-finite duration is a broken clock, not a latency.
    if ms.is_finite() && ms >= 0.0 && out.stages.len() < MAX_STAGES && valid_name(&name) {
        out.stages.push((name, ms));
    }
}

/// Any JSON scalar, borrowed; containers are skipped and reported as such.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    Container,
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Container)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Container)
            }
        }
        d.deserialize_any(V)
    }
}

/// An identifier fit to be a label value (`error_type`, `action`): a
/// class name, not free text that could carry a user's data.
fn label_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// Whether a batch statistic (`<feature>_<stat>`, e.g. `user_id_mean`) may
/// be kept: not when the feature it summarises is denied, hashed, or
/// outside the allow list. The feature is any prefix ending at a `_`.
fn stat_allowed(f: &FeatureFilter, stat: &str) -> bool {
    if f.is_noop() {
        return true;
    }
    let candidates = std::iter::once(stat).chain(
        stat.match_indices('_')
            .map(|(i, _)| &stat[..i])
            .filter(|p| !p.is_empty()),
    );
    let mut allowed = f.allow.is_none();
    for c in candidates {
        if f.deny.contains(c) || f.hash.contains(c) {
            return false;
        }
        if f.allow.as_ref().is_some_and(|a| a.contains(c)) {
            allowed = true;
        }
    }
    allowed
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control)
}

struct RoleSeed<'t, 'c, 'a> {
    role: Role,
    cfg: &'t DecodeConfig,
    out: &'c mut Collect<'a>,
}

impl<'de> DeserializeSeed<'de> for RoleSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.role {
            Role::Features => self.features(d),
            Role::InputStats | Role::ClassCounts => self.batch_numbers(d),
            role => {
                let v = <Scalar<'de> as de::Deserialize>::deserialize(d)?;
                self.out.keep_scalar(role, v, self.cfg);
                Ok(())
            }
        }
    }
}

impl<'de> RoleSeed<'_, '_, 'de> {
    /// The features object, flattened into `out.features`.
    fn features<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let out = self.out;
        // Sized for a typical line at once: growing it 4, 8, 16, 32 was
        // 6% of a replay (realloc).
        let mut feats = out
            .features
            .take()
            .unwrap_or_else(|| Vec::with_capacity(self.cfg.max_features.min(32)));
        let mut issues = out.issues;
        let seed = FeaturesSeed {
            prefix: None,
            depth: 0,
            cfg: self.cfg,
            out: &mut feats,
            issues: &mut issues,
        };
        d.deserialize_any(seed)?;
        out.issues = issues;
        out.features = Some(feats);
        Ok(())
    }

    /// `input_stats` or `class_counts`: a batch's numbers by name.
    fn batch_numbers<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let out = self.out;
        let max = self.cfg.max_features;
        let pairs = d.deserialize_any(NumberMap { max })?;
        if self.role == Role::InputStats {
            // Statistics of a denied or hashed feature are that
            // feature's values, summarised: the filter applies to them.
            let f = &self.cfg.filter;
            out.input_stats = Some(
                pairs
                    .into_iter()
                    .filter(|(k, _)| stat_allowed(f, k))
                    .collect(),
            );
        } else {
            // Counts are whole and not absurd; anything else is not a count.
            out.class_counts = Some(
                pairs
                    .into_iter()
                    .filter(|(_, v)| *v >= 0.0 && v.fract() == 0.0 && *v <= 1e12)
                    .map(|(k, v)| (k, v as u64))
                    .collect(),
            );
        }
        Ok(())
    }
}

impl<'a> Collect<'a> {
    /// Keeps the value of a field that holds a scalar, judged by its role:
    /// an unusable value is kept as such (to be counted) or dropped.
    fn keep_scalar(&mut self, role: Role, v: Scalar<'a>, cfg: &DecodeConfig) {
        match role {
            Role::Model(i) => {
                let r = match v {
                    Scalar::Str(s) if valid_name(&s) => Ok(s),
                    Scalar::Null => return,
                    _ => Err(()),
                };
                self.models[i as usize] = Some(r);
            }
            Role::Timestamp => {
                self.time = Some(event_time(v, cfg.local_offset, EventTime::Missing));
            }
            Role::Prediction => {
                self.prediction = match v {
                    Scalar::Str(s) if valid_name(&s) => Some(Ok(Prediction::Label(s))),
                    Scalar::Bool(b) => Some(Ok(Prediction::Label(Cow::Borrowed(bool_str(b))))),
                    Scalar::Int(i) => Some(Ok(Prediction::Label(Cow::Owned(i.to_string())))),
                    Scalar::UInt(u) => Some(Ok(Prediction::Label(Cow::Owned(u.to_string())))),
                    Scalar::Float(f) if f.is_finite() => Some(Ok(Prediction::Value(f))),
                    Scalar::Null => None,
                    _ => Some(Err(())),
                };
            }
            Role::Confidence => {
                self.confidence = match v {
                    Scalar::Null => None,
                    v => Some(probability(&v).ok_or(())),
                };
            }
            Role::Arm => {
                self.arm = match v {
                    Scalar::Str(s) if valid_name(&s) => Some(Ok(s)),
                    Scalar::Null => None,
                    _ => Some(Err(())),
                };
            }
            Role::Level => {
                if let Scalar::Str(s) = v {
                    self.level = Some(LogLevel::parse(&s));
                }
            }
            Role::RequestId => {
                self.request_id = match v {
                    Scalar::Str(s) if !s.is_empty() => Some(feature_hash(&s)),
                    Scalar::Int(i) => Some(feature_hash(&i.to_string())),
                    Scalar::UInt(u) => Some(feature_hash(&u.to_string())),
                    _ => None,
                }
            }
            Role::Service => {
                if let Scalar::Str(s) = v {
                    if valid_name(&s) {
                        self.service = Some(s);
                    }
                }
            }
            Role::ErrorType => {
                if let Scalar::Str(s) = v {
                    if label_safe(&s) {
                        self.error_type = Some(s);
                    }
                }
            }
            Role::Action => {
                self.action = match v {
                    Scalar::Str(s) if label_safe(&s) => Some(Some(s)),
                    Scalar::Null => None,
                    _ => Some(None),
                }
            }
            Role::FeedbackTime => {
                self.feedback_time = Some(event_time(v, cfg.local_offset, EventTime::Invalid));
            }
            Role::BatchTime => {
                self.batch_time = Some(event_time(v, cfg.local_offset, EventTime::Invalid));
            }
            Role::LabelTime => {
                self.label_time = Some(event_time(v, cfg.local_offset, EventTime::Invalid));
            }
            Role::GroundTruth => {
                // Compared like a prediction: a class by the hash of its
                // name (an integer or bool by its text), a float as a value.
                self.truth = match v {
                    Scalar::Str(s) if valid_name(&s) => Some(Some(Truth::Class(feature_hash(&s)))),
                    Scalar::Bool(b) => Some(Some(Truth::Class(feature_hash(bool_str(b))))),
                    Scalar::Int(i) => {
                        Some(Some(Truth::Number(feature_hash(&i.to_string()), i as f64)))
                    }
                    Scalar::UInt(u) => {
                        Some(Some(Truth::Number(feature_hash(&u.to_string()), u as f64)))
                    }
                    // An integral float (`1.0`, as pandas writes labels) is
                    // also the class "1", as `num_hash` makes 1 and 1.0 agree.
                    Scalar::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => {
                        Some(Some(Truth::Number(
                            feature_hash(&(f as i64).to_string()),
                            f,
                        )))
                    }
                    Scalar::Float(f) if f.is_finite() => Some(Some(Truth::Value(f))),
                    Scalar::Null => None,
                    _ => Some(None),
                };
            }
            Role::AvgConfidence => self.avg_confidence = probability(&v),
            Role::Features | Role::InputStats | Role::ClassCounts | Role::Stage => {
                unreachable!("read whole by RoleSeed, or by NodeSeed for stages")
            }
        }
    }
}

/// A time field's value (`timestamp`, `feedback_time`, `batch_time`): an
/// RFC 3339-ish string or epoch seconds or milliseconds; `null` is `null_is`.
fn event_time(v: Scalar<'_>, local_offset: FixedOffset, null_is: EventTime) -> EventTime {
    let parsed = match v {
        Scalar::Str(s) => parse_timestamp(&s, local_offset),
        Scalar::Float(f) => epoch_number(f),
        Scalar::Int(i) => epoch_number(i as f64),
        Scalar::UInt(u) => epoch_number(u as f64),
        Scalar::Null => return null_is,
        _ => return EventTime::Invalid,
    };
    parsed.map_or(EventTime::Invalid, EventTime::Parsed)
}

/// A probability (`confidence`, `avg_confidence`): a number in [0, 1].
fn probability(v: &Scalar<'_>) -> Option<f64> {
    match *v {
        Scalar::Float(f) if (0.0..=1.0).contains(&f) => Some(f),
        Scalar::Int(0) | Scalar::UInt(0) => Some(0.0),
        Scalar::Int(1) | Scalar::UInt(1) => Some(1.0),
        _ => None,
    }
}

/// An object of `name: number` pairs (batch statistics): other values and
/// names that are not usable names are skipped, and at most `max` are kept.
struct NumberMap {
    max: usize,
}

impl<'de> Visitor<'de> for NumberMap {
    type Value = Vec<(Cow<'de, str>, f64)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of numbers")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Vec::new())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let v = map.next_value::<Scalar<'de>>()?;
            let x = match v {
                Scalar::Float(f) if f.is_finite() => f,
                Scalar::Int(i) => i as f64,
                Scalar::UInt(u) => u as f64,
                _ => continue,
            };
            if out.len() < self.max && valid_name(&key.0) {
                out.push((key.0, x));
            }
        }
        Ok(out)
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

struct FeaturesSeed<'t, 'c, 'a> {
    prefix: Option<&'t str>,
    depth: usize,
    cfg: &'t DecodeConfig,
    out: &'c mut Vec<(Cow<'a, str>, FeatureValue<'a>)>,
    issues: &'c mut u32,
}

impl<'de> Visitor<'de> for FeaturesSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of features")
    }
    on_scalar!(self => *self.issues |= 1 << Issue::FeaturesNotObject as u32;);
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // `"input_features": null` is an event without features, not an error.
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        *self.issues |= 1 << Issue::FeaturesNotObject as u32;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let filter = &self.cfg.filter;
        let noop = filter.is_noop();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let name: Cow<'de, str> = match self.prefix {
                None => key.0,
                Some(p) => Cow::Owned(format!("{p}.{}", key.0)),
            };
            if self.out.len() >= self.cfg.max_features {
                *self.issues |= 1 << Issue::TooManyFeatures as u32;
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let mut hashed = false;
            if !noop {
                if filter.deny.contains(name.as_ref())
                    || filter
                        .allow
                        .as_ref()
                        .is_some_and(|a| !a.contains(name.as_ref()) && !is_prefix_of_any(a, &name))
                {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                hashed = filter.hash.contains(name.as_ref());
            }
            map.next_value_seed(FeatureValueSeed {
                name,
                hashed,
                depth: self.depth,
                cfg: self.cfg,
                out: &mut *self.out,
                issues: &mut *self.issues,
            })?;
        }
        Ok(())
    }
}

/// One feature's value: scalars are pushed, nested objects recurse with the
/// name as prefix, arrays are drained and counted.
struct FeatureValueSeed<'t, 'c, 'a> {
    name: Cow<'a, str>,
    hashed: bool,
    depth: usize,
    cfg: &'t DecodeConfig,
    out: &'c mut Vec<(Cow<'a, str>, FeatureValue<'a>)>,
    issues: &'c mut u32,
}

impl<'de> DeserializeSeed<'de> for FeatureValueSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> FeatureValueSeed<'_, '_, 'de> {
    fn push(self, v: FeatureValue<'de>) {
        self.out.push((self.name, v));
    }
    fn num(self, n: f64) {
        let v = if self.hashed {
            FeatureValue::Hashed(num_hash(n))
        } else {
            FeatureValue::Num(n)
        };
        self.push(v);
    }
    fn string(self, s: Cow<'de, str>) {
        let v = if s == NONFINITE_MARKER {
            FeatureValue::NonFinite
        } else if self.hashed {
            FeatureValue::Hashed(feature_hash(&s))
        } else {
            FeatureValue::Cat(s)
        };
        self.push(v);
    }
}

impl<'de> Visitor<'de> for FeatureValueSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a feature value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.string(Cow::Borrowed(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.string(Cow::Owned(v.to_owned()));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.num(v as f64);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.num(v as f64);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.num(v);
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.string(Cow::Borrowed(bool_str(v)));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(FeatureValue::Missing);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        *self.issues |= 1 << Issue::FeatureArray as u32;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth + 1 >= self.cfg.max_feature_depth {
            *self.issues |= 1 << Issue::FeatureTooDeep as u32;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        // Nested objects flatten with dots (`geo.country`).
        FeaturesSeed {
            prefix: Some(&self.name),
            depth: self.depth + 1,
            cfg: self.cfg,
            out: self.out,
            issues: self.issues,
        }
        .visit_map(map)
    }
}

fn is_prefix_of_any(allow: &HashSet<String>, name: &str) -> bool {
    // Lets `allow = ["geo.country"]` reach inside a nested `geo` object.
    allow
        .iter()
        .any(|a| a.len() > name.len() && a.starts_with(name) && a.as_bytes()[name.len()] == b'.')
}

/// Epoch seconds (as `time.time()` writes them) or milliseconds, told apart
/// by magnitude: 1e11 seconds is the year 5138, 1e11 ms is 1973.
fn epoch_number(v: f64) -> Option<i64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let ms = if v >= 1e11 { v } else { v * 1000.0 };
    if ms > 32_503_680_000_000.0 {
        // After the year 3000: not a timestamp.
        return None;
    }
    Some(ms.round() as i64)
}

/// Parses RFC 3339, Python logging's `2025-12-14 10:00:00,123` (in
/// `local_offset`), ISO without an offset, and epoch numbers given as strings.
pub fn parse_timestamp(s: &str, local_offset: FixedOffset) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && b[13] == b':' && b[16] == b':' {
        if b[10] == b' ' || b[10] == b'T' {
            // Offset-carrying forms go through chrono's RFC 3339 parser.
            // Bytes 0-17 were checked as ASCII only where it matters; byte 18
            // can start a multi-byte character (found by cargo fuzz).
            let tail = s.get(19..)?;
            let has_offset = tail.ends_with('Z')
                || tail.ends_with('z')
                || tail
                    .rfind(['+', '-'])
                    .is_some_and(|i| i > 0 || tail.starts_with(['+', '-']));
            if has_offset {
                let normalized;
                let text = if b[10] == b' ' {
                    normalized = format!("{}T{}", &s[..10], &s[11..]).replace(',', ".");
                    normalized.as_str()
                } else if s.contains(',') {
                    normalized = s.replace(',', ".");
                    normalized.as_str()
                } else {
                    s
                };
                return chrono::DateTime::parse_from_rfc3339(text)
                    .ok()
                    .map(|d| d.timestamp_millis());
            }
            return parse_naive(s, local_offset);
        }
        return None;
    }
    if let Ok(v) = s.parse::<f64>() {
        return epoch_number(v);
    }
    None
}

/// `YYYY-MM-DD[ T]HH:MM:SS[,.]fff` without an offset, read digit by digit:
/// this is the hot path for Python's default format.
fn parse_naive(s: &str, offset: FixedOffset) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut millis = 0u32;
    if b.len() > 19 {
        if b[19] != b',' && b[19] != b'.' {
            return None;
        }
        let frac = &b[20..];
        if frac.is_empty() || frac.len() > 9 || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for (i, &c) in frac.iter().take(3).enumerate() {
            millis += u32::from(c - b'0') * 10u32.pow(2 - i as u32);
        }
    }
    let date = NaiveDate::from_ymd_opt(y as i32, mo, d)?;
    let naive: NaiveDateTime = date.and_hms_milli_opt(h, mi, sec, millis)?;
    offset
        .from_local_datetime(&naive)
        .single()
        .map(|dt| dt.timestamp_millis())
}

/// Counters for everything the decoder can say about a line. Plain integers:
/// the caller adds them up per line and exports them per evaluation, so the
/// per-event path never touches Prometheus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub events: u64,
    /// Non-inference records by [`RecordKind`].
    pub records: [u64; RecordKind::ALL.len()],
    pub rejected: [u64; Reject::ALL.len()],
    pub skipped: [u64; Skip::ALL.len()],
    pub issues: [u64; Issue::COUNT],
}

impl DecodeStats {
    /// Counts one decode result.
    pub fn record(&mut self, d: &Decoded<'_>) {
        match d {
            Decoded::Event(e) => {
                self.events += 1;
                let mut bits = e.issues;
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    if let Some(c) = self.issues.get_mut(i) {
                        *c += 1;
                    }
                    bits &= bits - 1;
                }
            }
            Decoded::Record(r) => self.records[r.kind as usize] += 1,
            Decoded::Skipped(s) => self.skipped[*s as usize] += 1,
            Decoded::Rejected(r) => self.rejected[*r as usize] += 1,
        }
    }

    pub fn merge(&mut self, other: &DecodeStats) {
        self.events += other.events;
        for (a, b) in self.records.iter_mut().zip(other.records) {
            *a += b;
        }
        for (a, b) in self.rejected.iter_mut().zip(other.rejected) {
            *a += b;
        }
        for (a, b) in self.skipped.iter_mut().zip(other.skipped) {
            *a += b;
        }
        for (a, b) in self.issues.iter_mut().zip(other.issues) {
            *a += b;
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED_LINE: &str = r#"{"timestamp": "2025-12-14 10:00:00,123", "level": "INFO", "message": "Model inference completed", "service": "ai_inference_service", "module": "app", "function": "predict", "line": 42, "request_id": "req_12345", "model_id": "v1.2.3", "input_hash": -91234, "prediction": "cat", "confidence": 0.95, "input_features": {"amount": 12.5, "country": "DE", "is_new_user": true}}"#;

    fn dec() -> Decoder {
        Decoder::new(DecodeConfig::default())
    }

    /// [`Decoder::walk`] with serde_json, the reference the sonic-rs walk
    /// is held to: the decoded line, or `None` where it fails to parse.
    fn serde_json_walk(d: &Decoder, text: &str) -> Option<String> {
        let mut c = Collect::default();
        let mut de = serde_json::Deserializer::from_str(text);
        d.seed(&mut c).deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(format!("{:?}", d.judge(c)))
    }

    fn event(line: &str) -> Event<'_> {
        match dec().decode(line.as_bytes()) {
            Decoded::Event(e) => e,
            other => panic!("expected an event from {line}, got {other:?}"),
        }
    }

    #[test]
    fn decodes_the_seed_line() {
        let d = dec();
        let Decoded::Event(e) = d.decode(SEED_LINE.as_bytes()) else {
            panic!("not an event")
        };
        assert_eq!(e.model, "v1.2.3");
        assert_eq!(e.time, EventTime::Parsed(1_765_706_400_123));
        assert_eq!(e.prediction, Some(Prediction::Label("cat".into())));
        assert_eq!(e.confidence, Some(0.95));
        assert_eq!(e.level, Some(LogLevel::Info));
        assert_eq!(e.request_id, Some(feature_hash("req_12345")));
        assert_eq!(e.service.as_deref(), Some("ai_inference_service"));
        assert_eq!(e.issues, 0);
        assert_eq!(
            e.features,
            vec![
                ("amount".into(), FeatureValue::Num(12.5)),
                ("country".into(), FeatureValue::Cat("DE".into())),
                ("is_new_user".into(), FeatureValue::Cat("true".into())),
            ]
        );
        // Borrowed, not copied: the hot path allocates no strings.
        assert!(matches!(e.model, Cow::Borrowed(_)));
        assert!(matches!(
            e.features[1].1,
            FeatureValue::Cat(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn model_falls_back_to_model_used_and_arm_is_read() {
        let e = event(
            r#"{"model_used": "model_B", "experiment_assignment": "variant", "prediction": 3}"#,
        );
        assert_eq!(e.model, "model_B");
        assert_eq!(e.arm.as_deref(), Some("variant"));
        assert_eq!(e.prediction, Some(Prediction::Label("3".into())));
        assert!(e.has_issue(Issue::TimestampMissing));
    }

    #[test]
    fn model_id_wins_over_model_used_whatever_the_order() {
        let e = event(r#"{"model_used": "b", "model_id": "a", "prediction": "x"}"#);
        assert_eq!(e.model, "a");
    }

    #[test]
    fn timestamps_with_a_multibyte_character_at_byte_18_are_rejected_not_panics() {
        // Found by cargo fuzz: slicing at byte 19 panicked inside 'é'.
        let utc = FixedOffset::east_opt(0).unwrap();
        assert_eq!(parse_timestamp("2025-12-14 10:00:0é", utc), None);
        assert_eq!(parse_timestamp("2025-12-14T10:00:0😀Z", utc), None);
        let d = Decoder::new(DecodeConfig::default());
        let line = r#"{"model_id":"m","timestamp":"2025-12-14 10:00:0é"}"#;
        assert!(!matches!(d.decode(line.as_bytes()), Decoded::Event(_)));
    }

    #[test]
    fn timestamps_in_every_documented_form() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let want = 1_765_706_400_123;
        for s in [
            "2025-12-14 10:00:00,123",
            "2025-12-14T10:00:00.123Z",
            "2025-12-14T11:00:00.123+01:00",
            "2025-12-14 10:00:00.123",
            "1765706400.123",
            "1765706400123",
        ] {
            assert_eq!(parse_timestamp(s, utc), Some(want), "{s}");
        }
        let plus2 = FixedOffset::east_opt(7200).unwrap();
        assert_eq!(
            parse_timestamp("2025-12-14 12:00:00,123", plus2),
            Some(want)
        );
        for bad in [
            "",
            "yesterday",
            "2025-13-14 10:00:00,123",
            "2025-12-14 10:00:00,12x",
            "-5",
        ] {
            assert_eq!(parse_timestamp(bad, utc), None, "{bad}");
        }
        let e = event(r#"{"model_id":"m","prediction":"a","timestamp":1765706400.123}"#);
        assert_eq!(e.time, EventTime::Parsed(want));
        let e = event(r#"{"model_id":"m","prediction":"a","timestamp":1765706400123}"#);
        assert_eq!(e.time, EventTime::Parsed(want));
        let e = event(r#"{"model_id":"m","prediction":"a","timestamp":"soon"}"#);
        assert_eq!(e.time, EventTime::Invalid);
        assert!(e.has_issue(Issue::TimestampInvalid));
    }

    #[test]
    fn feature_values_by_kind() {
        let e = event(
            r#"{"model_id":"m","input_features":{"n":1,"f":2.5,"s":"x","b":false,"z":null,"arr":[1,2],"geo":{"country":"DE","lat":52.5,"deep":{"x":1}}}}"#,
        );
        let names: Vec<&str> = e.features.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [
                "n",
                "f",
                "s",
                "b",
                "z",
                "geo.country",
                "geo.lat",
                "geo.deep.x"
            ]
        );
        assert_eq!(e.features[0].1, FeatureValue::Num(1.0));
        assert_eq!(e.features[3].1, FeatureValue::Cat("false".into()));
        assert_eq!(e.features[4].1, FeatureValue::Missing);
        assert_eq!(e.features[5].1, FeatureValue::Cat("DE".into()));
        assert!(e.has_issue(Issue::FeatureArray));
    }

    #[test]
    fn nesting_beyond_the_depth_limit_is_skipped_and_counted() {
        let cfg = DecodeConfig {
            max_feature_depth: 2,
            ..DecodeConfig::default()
        };
        let d = Decoder::new(cfg);
        let line = br#"{"model_id":"m","input_features":{"a":{"b":{"c":1}},"x":1}}"#;
        let Decoded::Event(e) = d.decode(line) else {
            panic!()
        };
        let names: Vec<&str> = e.features.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(names, ["x"]);
        assert!(e.has_issue(Issue::FeatureTooDeep));
    }

    #[test]
    fn python_nan_and_infinity_are_invalid_features_not_lost_lines() {
        let e = event(
            r#"{"model_id":"m","prediction":"a","input_features":{"x":NaN,"y":-Infinity,"z":1.5,"s":"NaN inside a string"}}"#,
        );
        assert_eq!(e.features[0].1, FeatureValue::NonFinite);
        assert_eq!(e.features[1].1, FeatureValue::NonFinite);
        assert_eq!(e.features[2].1, FeatureValue::Num(1.5));
        assert_eq!(
            e.features[3].1,
            FeatureValue::Cat("NaN inside a string".into())
        );
    }

    fn record(line: &str) -> Record<'_> {
        match dec().decode(line.as_bytes()) {
            Decoded::Record(r) => r,
            other => panic!("expected a record from {line}, got {other:?}"),
        }
    }

    #[test]
    fn the_seeds_other_lines_are_records_of_their_kind() {
        // Timing: every stage, the model, no request id kept in clear.
        let r = record(
            r#"{"timestamp": "2025-12-14 10:00:00,123", "level": "INFO", "message": "Inference timing metrics", "service": "ai_inference_service", "request_id": "some_id", "total_latency_ms": 12.5, "preprocessing_ms": 2, "inference_ms": 8.1, "postprocessing_ms": 1.4, "model_id": "v1.2.3"}"#,
        );
        assert_eq!(r.kind, RecordKind::Timing);
        assert_eq!(r.model.as_deref(), Some("v1.2.3"));
        assert_eq!(r.service.as_deref(), Some("ai_inference_service"));
        assert_eq!(r.time, EventTime::Parsed(1_765_706_400_123));
        assert_eq!(
            r.stages,
            vec![
                ("total_latency_ms".into(), 12.5),
                ("preprocessing_ms".into(), 2.0),
                ("inference_ms".into(), 8.1),
                ("postprocessing_ms".into(), 1.4),
            ]
        );
        assert_eq!(r.request_id, Some(feature_hash("some_id")));
        // Error records carry their type.
        let r = record(
            r#"{"model_id":"m","level":"ERROR","error_type":"InputValidationError","exception_message":"bad value 42"}"#,
        );
        assert_eq!(r.kind, RecordKind::Error);
        assert_eq!(r.error_type.as_deref(), Some("InputValidationError"));
        // A label: an integral float is the integer's class too; an object
        // is an unusable truth, still a label.
        for (truth, want) in [
            ("1.0", Truth::Number(feature_hash("1"), 1.0)),
            ("\"fraud\"", Truth::Class(feature_hash("fraud"))),
            ("0.25", Truth::Value(0.25)),
            ("{\"a\": 1}", Truth::Unusable),
        ] {
            let line = format!(r#"{{"request_id":"r","ground_truth":{truth}}}"#);
            let r = record(&line);
            assert_eq!((r.kind, r.truth), (RecordKind::Label, Some(want)), "{line}");
        }
        assert_eq!(
            Decoder::new(DecodeConfig::default()).decode(br#"{"ground_truth":"fraud"}"#),
            Decoded::Skipped(Skip::LabelWithoutRequestId)
        );
        // Feedback, with or without a model; its own timestamp when the
        // envelope has none.
        let r = record(
            r#"{"message":"User feedback received","request_id":"req_1","user_id":"u","action":"clicked_on_item","feedback_timestamp":1765706400.5}"#,
        );
        assert_eq!(r.kind, RecordKind::Feedback);
        assert_eq!(r.model, None);
        assert_eq!(r.action.as_deref(), Some("clicked_on_item"));
        assert_eq!(r.request_id, Some(feature_hash("req_1")));
        assert_eq!(r.time, EventTime::Parsed(1_765_706_400_500));
        // Batch statistics, timed by timestamp_end.
        let r = record(
            r#"{"message":"Batch data and prediction statistics","batch_id":"b","timestamp_end":1765706400.0,"input_stats":{"feature_A_mean":3.5,"feature_B_mode":"x"},"prediction_stats":{"class_counts":{"cat":30,"dog":12,"bad":-1,"half":0.5},"avg_confidence":0.83},"model_id":"v1.2.3"}"#,
        );
        assert_eq!(r.kind, RecordKind::BatchStats);
        assert_eq!(r.input_stats, vec![("feature_A_mean".into(), 3.5)]);
        assert_eq!(r.class_counts, vec![("cat".into(), 30), ("dog".into(), 12)]);
        assert_eq!(r.avg_confidence, Some(0.83));
        assert_eq!(r.time, EventTime::Parsed(1_765_706_400_000));
        // Stages on an inference line stay with the event.
        let e = event(r#"{"model_id":"m","prediction":"a","inference_ms":4,"request_id":17}"#);
        assert_eq!(e.stages, vec![("inference_ms".into(), 4.0)]);
        assert_eq!(e.request_id, Some(feature_hash("17")));
    }

    #[test]
    fn lines_no_analysis_uses_are_skipped_with_a_reason() {
        let d = dec();
        for (line, want) in [
            (
                r#"{"model_id":"m","message":"hello"}"#,
                Skip::NoInferenceFields,
            ),
            (
                r#"{"model_id":"m","total_latency_ms":-3}"#,
                Skip::NoInferenceFields,
            ),
            (
                r#"{"message":"User feedback received","action":"clicked_on_item"}"#,
                Skip::FeedbackWithoutRequestId,
            ),
        ] {
            assert_eq!(d.decode(line.as_bytes()), Decoded::Skipped(want), "{line}");
        }
    }

    #[test]
    fn batch_statistics_of_filtered_features_and_free_text_labels_are_dropped() {
        let mut cfg = DecodeConfig::default();
        cfg.filter.deny.insert("user_id".into());
        cfg.filter.hash.insert("email".into());
        let d = Decoder::new(cfg);
        let Decoded::Record(r) = d.decode(
            br#"{"model_id":"m","input_stats":{"user_id_mean":123.0,"email_len_mean":20,"amount_mean":5.5}}"#,
        ) else {
            panic!()
        };
        assert_eq!(r.input_stats, vec![("amount_mean".into(), 5.5)]);
        let mut cfg = DecodeConfig::default();
        cfg.filter.allow = Some(["amount".to_owned()].into_iter().collect());
        let d = Decoder::new(cfg);
        let Decoded::Record(r) =
            d.decode(br#"{"model_id":"m","input_stats":{"user_id_mean":1,"amount_mean":5.5}}"#)
        else {
            panic!()
        };
        assert_eq!(r.input_stats, vec![("amount_mean".into(), 5.5)]);
        // Free text is not a label value.
        let r = record(
            r#"{"model_id":"m","level":"ERROR","error_type":"bad value for jane@example.com"}"#,
        );
        assert_eq!(r.error_type, None);
        let r = record(r#"{"request_id":"r","action":"clicked item 42 of Jane"}"#);
        assert_eq!(r.action.as_deref(), Some("other"));
    }

    #[test]
    fn any_ms_field_is_a_stage_when_enabled() {
        let mut cfg = DecodeConfig::default();
        cfg.mapping.any_ms_stage = true;
        let d = Decoder::new(cfg);
        let Decoded::Record(r) =
            d.decode(br#"{"model_id":"m","gpu_queue_ms":3,"inference_ms":5,"note_ms":"x"}"#)
        else {
            panic!()
        };
        assert_eq!(
            r.stages,
            vec![("gpu_queue_ms".into(), 3.0), ("inference_ms".into(), 5.0)]
        );
    }

    #[test]
    fn rejections_have_precise_reasons() {
        let cfg = DecodeConfig {
            max_line_bytes: 100,
            ..DecodeConfig::default()
        };
        let d = Decoder::new(cfg);
        let cases: [(&[u8], Reject); 8] = [
            (b"{\"model_id\": \"m\", \"predic", Reject::MalformedJson),
            (b"plain text", Reject::MalformedJson),
            (b"[1,2,3]", Reject::NotAnObject),
            (b"42", Reject::NotAnObject),
            (b"{\"prediction\": \"a\"}", Reject::MissingModel),
            (
                b"{\"model_id\": 7, \"prediction\": \"a\"}",
                Reject::InvalidModel,
            ),
            (
                b"{\"model_id\": \"\", \"prediction\": \"a\"}",
                Reject::InvalidModel,
            ),
            (&[b' '; 101], Reject::TooLarge),
        ];
        for (line, want) in cases {
            assert_eq!(
                d.decode(line),
                Decoded::Rejected(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            d.decode(b"{\"model_id\":\"m\xff\"}"),
            Decoded::Rejected(Reject::MalformedJson)
        );
    }

    #[test]
    fn confidence_outside_unit_interval_is_an_issue() {
        let e = event(r#"{"model_id":"m","prediction":"a","confidence":1.5}"#);
        assert_eq!(e.confidence, None);
        assert!(e.has_issue(Issue::ConfidenceInvalid));
        let e = event(r#"{"model_id":"m","prediction":0.25}"#);
        assert_eq!(e.prediction, Some(Prediction::Value(0.25)));
    }

    #[test]
    fn filter_allows_denies_and_hashes() {
        let mut filter = FeatureFilter::default();
        filter.deny.insert("user_id".into());
        filter.hash.insert("email".into());
        let d = Decoder::new(DecodeConfig {
            filter,
            ..DecodeConfig::default()
        });
        let line = br#"{"model_id":"m","input_features":{"user_id":"u1","email":"a@b.c","x":1}}"#;
        let Decoded::Event(e) = d.decode(line) else {
            panic!()
        };
        assert_eq!(
            e.features,
            vec![
                ("email".into(), FeatureValue::Hashed(feature_hash("a@b.c"))),
                ("x".into(), FeatureValue::Num(1.0)),
            ]
        );
        let filter = FeatureFilter {
            allow: Some(["geo.country".to_owned()].into_iter().collect()),
            ..FeatureFilter::default()
        };
        let d = Decoder::new(DecodeConfig {
            filter,
            ..DecodeConfig::default()
        });
        let line =
            br#"{"model_id":"m","input_features":{"geo":{"country":"DE","city":"Berlin"},"x":1}}"#;
        let Decoded::Event(e) = d.decode(line) else {
            panic!()
        };
        assert_eq!(
            e.features,
            vec![("geo.country".into(), FeatureValue::Cat("DE".into()))]
        );
    }

    #[test]
    fn too_many_features_keeps_the_first_and_counts() {
        let d = Decoder::new(DecodeConfig {
            max_features: 2,
            ..DecodeConfig::default()
        });
        let Decoded::Event(e) =
            d.decode(br#"{"model_id":"m","input_features":{"a":1,"b":2,"c":3}}"#)
        else {
            panic!()
        };
        assert_eq!(e.features.len(), 2);
        assert!(e.has_issue(Issue::TooManyFeatures));
    }

    #[test]
    fn custom_pointers_with_escapes() {
        let m = FieldMapping {
            model: vec![Pointer::parse("/meta/model~1name").unwrap()],
            features: Pointer::parse("/x/feats").unwrap(),
            ..FieldMapping::default()
        };
        let d = Decoder::new(DecodeConfig {
            mapping: m,
            ..DecodeConfig::default()
        });
        let Decoded::Event(e) =
            d.decode(br#"{"meta":{"model/name":"mm"},"x":{"feats":{"a":1}},"prediction":"p"}"#)
        else {
            panic!()
        };
        assert_eq!(e.model, "mm");
        assert_eq!(e.features.len(), 1);
        assert_eq!(
            Pointer::parse("/a~0b/c~1d").unwrap().to_string(),
            "/a~0b/c~1d"
        );
        assert!(Pointer::parse("model").is_err());
        assert!(Pointer::parse("/a~2").is_err());
    }

    #[test]
    fn stats_count_each_outcome_once() {
        let d = dec();
        let mut st = DecodeStats::default();
        for l in [SEED_LINE, "nope", "[1]", r#"{"model_id":"m","action":"x"}"#] {
            st.record(&d.decode(l.as_bytes()));
        }
        assert_eq!(st.events, 1);
        assert_eq!(st.rejected[Reject::MalformedJson as usize], 1);
        assert_eq!(st.rejected[Reject::NotAnObject as usize], 1);
        assert_eq!(st.records[RecordKind::Feedback as usize], 0);
        assert_eq!(st.skipped[Skip::FeedbackWithoutRequestId as usize], 1);
        assert_eq!(st.rejected_total(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = dec().decode(&bytes);
        }

        #[test]
        fn mutated_seed_lines_never_panic(
            edits in proptest::collection::vec((0usize..400, any::<u8>(), 0u8..3), 1..8)
        ) {
            let mut line = SEED_LINE.as_bytes().to_vec();
            for (pos, byte, op) in edits {
                let pos = pos % (line.len() + 1);
                match op {
                    0 if pos < line.len() => line[pos] = byte,
                    1 => line.insert(pos, byte),
                    _ if pos < line.len() => { line.remove(pos); }
                    _ => {}
                }
            }
            let d = dec();
            let out = d.decode(&line);
            // Whatever came out, an event always has a valid model name.
            if let Decoded::Event(e) = out {
                prop_assert!(valid_name(&e.model));
            }
        }

        #[test]
        fn sonic_rs_and_serde_json_agree(
            edits in proptest::collection::vec((0usize..400, 0usize..12, 0u8..3), 0..6),
            noise in r#"\{("[a-z_]{1,12}": ?(-?[0-9]{1,20}(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?|"[^"\\]{0,10}"|"\\u00e9\\n"|true|null|\{|\[|\]|\}),? ?){0,12}\}?"#
        ) {
            // JSON-ish bytes spliced into the seed line: what breaks, and
            // what merely changes, must come out the same from both.
            const PIECES: [&str; 12] = ["{", "}", "[", "]", ",", ":", "\"", "\\", "1e999", "-0.5", "null", " "];
            let mut line = SEED_LINE.to_owned();
            for (pos, piece, op) in edits {
                let mut pos = pos % (line.len() + 1);
                while !line.is_char_boundary(pos) { pos -= 1; }
                match op {
                    0 => line.insert_str(pos, PIECES[piece]),
                    _ if pos < line.len() => { line.remove(pos); }
                    _ => {}
                }
            }
            let d = dec();
            for text in [line.as_str(), noise.as_str()] {
                prop_assert_eq!(
                    d.walk(text).map(|c| format!("{:?}", d.judge(c))).ok(),
                    serde_json_walk(&d, text),
                    "line: {}", text
                );
            }
        }

        #[test]
        fn json_structured_noise_never_panics(
            s in r#"\{("[a-z_]{1,12}": ?(-?[0-9]{1,20}(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?|"[^"\\]{0,10}"|true|null|NaN|\{|\[|\]|\}),? ?){0,12}\}?"#
        ) {
            let _ = dec().decode(s.as_bytes());
        }
    }
}
