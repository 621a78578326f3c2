//! Kafka ingestion: the consumer loop that feeds the engine.
//!
//! This module owns the Kafka consumer (librdkafka through rdkafka, in a
//! consumer group) and the one thread that drives the engine: it polls
//! messages, counts them into windows, stores their offsets only once they
//! are in a window (at-least-once: `enable.auto.offset.store=false`, stored
//! offsets committed periodically, on revoke and on shutdown), evaluates
//! every `evaluation.every`, writes checkpoints at pane boundaries, and
//! publishes a [`Snapshot`] for /metrics and the API.
//!
//! Why one blocking thread rather than async tasks: the engine is
//! synchronous and single-owner, librdkafka's `BaseConsumer` serves its
//! rebalance callbacks from `poll` on the calling thread, and keeping the
//! windows, positions and checkpoints on one thread makes "the checkpoint
//! holds exactly the events before its offsets" true by construction.
//!
//! Warm restarts: on assignment, a partition whose position is known (from
//! the checkpoint restored at start, or from before a rebalance) is resumed
//! exactly there. Otherwise, when `kafka.rewind_on_start` is on, the start is
//! looked up by event time (`now - window length`, offsets-for-times) so the
//! window fills at once; a broker that cannot answer that lookup falls back
//! to the committed offset.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::daemon::checkpoint::CheckpointConfig;
use crate::daemon::checkpoint::{
    window_fingerprint, Checkpoint, CheckpointStore, ModelCheckpoint, PartitionOffset, SavedWindow,
};
use crate::daemon::metrics::{Metrics, Snapshot};
use crate::engine::baseline::Baseline;
use crate::engine::detect::Transition;
use crate::engine::window::WindowSpec;
use crate::engine::Engine;

/// Kafka consumer settings.
#[derive(Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub commit_interval: Duration,
    /// Without a checkpoint, start from `now - window` by offsets-for-times.
    pub rewind_on_start: bool,
    /// Passed to librdkafka as they are (TLS, SASL, queue limits ...).
    /// Values `env:NAME` and `file:PATH` are resolved at load time.
    pub properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    // Properties may hold secrets: print their keys only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("commit_interval", &self.commit_interval)
            .field("rewind_on_start", &self.rewind_on_start)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Requests from the admin API to the consumer loop.
#[derive(Debug)]
pub enum Control {
    /// Reload baselines from the directory (SIGHUP, or a file change).
    Reload {
        reply: Option<oneshot::Sender<Result<Vec<String>, String>>>,
    },
    /// Make the current window of `model` its new baseline.
    Capture {
        model: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The detailed report (bins and counts) of one model, now: the
    /// per-evaluation snapshot leaves those out.
    Detail {
        model: String,
        reply: oneshot::Sender<crate::engine::Report>,
    },
}

/// What readiness is made of; shared with the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    pub baselines: AtomicUsize,
    pub auto_baseline: AtomicBool,
    pub assigned: AtomicUsize,
    pub broker_up: AtomicBool,
    pub running: AtomicBool,
    /// Baseline reloads that took, and that failed (the old baselines
    /// stayed in force).
    pub reloads_ok: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
}

impl Health {
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

/// Errors that stop the consumer loop before it runs.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create the Kafka consumer: {0} (check kafka.properties: every key must be a librdkafka consumer property)")]
    Client(#[source] KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
}

/// Where a partition starts after assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Exactly here (a known position or an event-time lookup).
    Offset(i64),
    /// The group's committed offset (or `auto.offset.reset` without one).
    Committed,
}

/// The broker's answer to "first offset at or after now - window".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLookup {
    Offset(i64),
    /// No message at or after that time, or a broker that answers "end" for
    /// everything (librdkafka's mock cluster does).
    End,
    Failed,
    NotAsked,
}

/// Decides where a newly assigned partition starts.
///
/// A known position wins: the windows hold exactly the events before it.
/// Without one the windows know nothing of this partition, so re-reading the
/// last window of event time fills them; but only an offset the broker
/// actually found is trusted, and never one past the committed offset (that
/// would skip messages). "End" or an error means the broker cannot answer:
/// fall back to the committed offset rather than skip to the end.
pub fn start_offset(known: Option<i64>, lookup: TimeLookup, committed: Option<i64>) -> StartAt {
    if let Some(k) = known {
        return StartAt::Offset(k);
    }
    match (lookup, committed) {
        (TimeLookup::Offset(o), Some(c)) if o <= c => StartAt::Offset(o),
        (TimeLookup::Offset(o), None) => StartAt::Offset(o),
        _ => StartAt::Committed,
    }
}

/// Next offset to consume per partition, as far as the windows know.
#[derive(Debug, Default)]
struct Positions {
    next: HashMap<(String, i32), i64>,
    assigned: Vec<(String, i32)>,
}

/// librdkafka callbacks: rebalances, statistics, errors and logs.
struct Ctx {
    positions: Mutex<Positions>,
    lag: Mutex<Vec<(String, i32, i64)>>,
    health: Arc<Health>,
    rewind_ms: Option<i64>,
    takeover: Option<Takeover>,
    /// Model states read from the checkpoint topic at assignment, for the
    /// loop to restore before the partitions they cover are resumed.
    pending: Mutex<Vec<ModelCheckpoint>>,
    /// Partitions paused until `pending` is restored.
    paused: Mutex<Vec<(String, i32)>>,
}

/// A broker not heard from for this long is not "up", whatever its
/// connection state says. A broker host that died without closing its
/// connections (or a silent middlebox) leaves the socket open and the state
/// `UP` while nothing arrives; a healthy consumer hears from its brokers at
/// least every `fetch.wait.max.ms` (50 ms) and heartbeat (3 s). Found by
/// `driftd soak`: a connection kept open but silent held /readyz at 200
/// through a minute without consumption.
const SILENT_BROKER_US: i64 = 30_000_000;

/// Whether some broker is connected and talking, from librdkafka's
/// statistics: (state, microseconds since the last bytes received, -1 for
/// never).
fn any_broker_up<'a>(brokers: impl Iterator<Item = (&'a str, i64)>) -> bool {
    brokers
        .into_iter()
        .any(|(state, rxidle)| state == "UP" && rxidle < SILENT_BROKER_US)
}

/// Reading other replicas' model states from the compacted topic.
struct Takeover {
    client: ClientConfig,
    topic: String,
    spec: WindowSpec,
    group: String,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut lag = Vec::new();
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's "internal" partition and unassigned ones.
                // The stored-offset lag: driftd stores an offset once its
                // event is in a window, so this is "not yet counted".
                if *p >= 0 && part.consumer_lag_stored >= 0 {
                    lag.push((topic.clone(), *p, part.consumer_lag_stored));
                }
            }
        }
        lag.sort();
        if let Ok(mut l) = self.lag.lock() {
            *l = lag;
        }
        let up = any_broker_up(s.brokers.values().map(|b| (b.state.as_str(), b.rxidle)));
        self.health.broker_up.store(up, Ordering::Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.broker_up.store(false, Ordering::Relaxed);
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, "librdkafka: {msg}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(facility = fac, "librdkafka: {msg}")
            }
            RDKafkaLogLevel::Debug => tracing::trace!(facility = fac, "librdkafka: {msg}"),
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.place(c, tpl);
                let r = if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
                // Partitions whose models are being taken over wait until
                // the loop has restored those models.
                let paused = self.paused.lock().expect("not poisoned").clone();
                if !paused.is_empty() {
                    let mut p = TopicPartitionList::new();
                    for (t, part) in &paused {
                        let _ = p.add_partition(t, *part);
                    }
                    if let Err(e) = c.pause(&p) {
                        tracing::warn!(error = %e, "pausing partitions for takeover failed");
                    }
                }
                let mut pos = self.positions.lock().expect("not poisoned");
                for e in tpl.elements() {
                    let key = (e.topic().to_owned(), e.partition());
                    if !pos.assigned.contains(&key) {
                        pos.assigned.push(key);
                    }
                }
                self.health
                    .assigned
                    .store(pos.assigned.len(), Ordering::Relaxed);
                tracing::info!(partitions = %describe(tpl), assigned = pos.assigned.len(), "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Stored offsets cover only events already in windows: commit
                // them before another member takes the partitions over.
                if let Err(e) = c.commit_consumer_state(CommitMode::Sync) {
                    if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                        tracing::warn!(error = %e, "commit on revoke failed");
                    }
                }
                let r = if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
                let mut pos = self.positions.lock().expect("not poisoned");
                if cooperative {
                    let gone: Vec<(String, i32)> = tpl
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition()))
                        .collect();
                    pos.assigned.retain(|k| !gone.contains(k));
                } else {
                    pos.assigned.clear();
                }
                self.health
                    .assigned
                    .store(pos.assigned.len(), Ordering::Relaxed);
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = c.unassign();
                self.positions
                    .lock()
                    .expect("not poisoned")
                    .assigned
                    .clear();
                self.health.assigned.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl Ctx {
    /// For partitions this replica knows nothing of, looks for the states of
    /// the models that lived on them in the checkpoint topic. A model is
    /// taken over only if every partition it came from is now ours and all
    /// agree on one checkpoint; its partitions then start at the offsets
    /// that checkpoint covers, paused until the loop has restored it.
    fn take_over(&self, known: Vec<(String, i32, Option<i64>)>) -> Vec<(String, i32, Option<i64>)> {
        let Some(t) = &self.takeover else {
            return known;
        };
        let unknown: Vec<(String, i32)> = known
            .iter()
            .filter(|k| k.2.is_none())
            .map(|k| (k.0.clone(), k.1))
            .collect();
        if unknown.is_empty() {
            return known;
        }
        let records = match read_model_checkpoints(&t.client, &t.topic, Duration::from_secs(5)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic = %t.topic, error = %e, "checkpoint topic not readable; partitions start without state");
                return known;
            }
        };
        let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
        let mut taken = Vec::new();
        for rec in records.into_values() {
            if !rec.fits(&t.spec, &t.group) || rec.sources.is_empty() {
                continue;
            }
            let all_ours = rec
                .sources
                .iter()
                .all(|s| unknown.contains(&(s.topic.clone(), s.partition)));
            let consistent = rec.sources.iter().all(|s| {
                offsets
                    .get(&(s.topic.clone(), s.partition))
                    .is_none_or(|o| *o == s.offset)
            });
            if !all_ours || !consistent {
                continue;
            }
            for s in &rec.sources {
                offsets.insert((s.topic.clone(), s.partition), s.offset);
            }
            taken.push(rec);
        }
        if taken.is_empty() {
            return known;
        }
        let mut pause = TopicPartitionList::new();
        let mut paused = self.paused.lock().expect("not poisoned");
        for (topic, partition) in offsets.keys() {
            let _ = pause.add_partition(topic, *partition);
            paused.push((topic.clone(), *partition));
        }
        tracing::info!(models = taken.len(), partitions = %describe(&pause), "taking over model state from the checkpoint topic");
        self.pending.lock().expect("not poisoned").extend(taken);
        known
            .into_iter()
            .map(|(topic, p, k)| {
                let o = k.or_else(|| offsets.get(&(topic.clone(), p)).copied());
                (topic, p, o)
            })
            .collect()
    }

    /// Sets each assigned partition's start offset.
    fn place(&self, c: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let known: Vec<(String, i32, Option<i64>)> = {
            let pos = self.positions.lock().expect("not poisoned");
            tpl.elements()
                .iter()
                .map(|e| {
                    let k = (e.topic().to_owned(), e.partition());
                    let off = pos.next.get(&k).copied();
                    (k.0, k.1, off)
                })
                .collect()
        };
        let known = self.take_over(known);
        let unknown: Vec<&(String, i32, Option<i64>)> =
            known.iter().filter(|k| k.2.is_none()).collect();
        let mut lookups: HashMap<(String, i32), TimeLookup> = HashMap::new();
        let mut committed: HashMap<(String, i32), i64> = HashMap::new();
        if let (Some(rewind_ms), false) = (self.rewind_ms, unknown.is_empty()) {
            let since = now_ms() - rewind_ms;
            let mut q = TopicPartitionList::new();
            for (t, p, _) in &unknown {
                let _ = q.add_partition_offset(t, *p, Offset::Offset(since));
            }
            match c.offsets_for_times(q.clone(), Duration::from_secs(5)) {
                Ok(ans) => {
                    for e in ans.elements() {
                        let l = match e.offset() {
                            Offset::Offset(o) if e.error().is_ok() => TimeLookup::Offset(o),
                            Offset::End => TimeLookup::End,
                            _ => TimeLookup::Failed,
                        };
                        lookups.insert((e.topic().to_owned(), e.partition()), l);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "offsets-for-times lookup failed; starting from committed offsets")
                }
            }
            if let Ok(ans) = c.committed_offsets(q, Duration::from_secs(5)) {
                for e in ans.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.insert((e.topic().to_owned(), e.partition()), o);
                    }
                }
            }
        }
        for (t, p, k) in &known {
            let key = (t.clone(), *p);
            let lookup = lookups.get(&key).copied().unwrap_or(TimeLookup::NotAsked);
            match start_offset(*k, lookup, committed.get(&key).copied()) {
                StartAt::Offset(o) => {
                    let _ = tpl.set_partition_offset(t, *p, Offset::Offset(o));
                    tracing::debug!(topic = %t, partition = p, offset = o, known = k.is_some(), "partition start");
                }
                StartAt::Committed => {
                    let _ = tpl.set_partition_offset(t, *p, Offset::Stored);
                }
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// librdkafka settings driftd owns, then the user's properties.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        // Offsets are stored by hand, once an event is in a window; librdkafka
        // commits what is stored every commit_interval, on revoke and on close.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            k.commit_interval.as_millis().to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "1000")
        // Bound librdkafka's prefetch buffers so they cannot dominate memory.
        // 4 MB: measured with driftd bench, 16 MB drained no faster (334k
        // vs 337k events/s) and cost the daemon 10 MB more RSS.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "10000")
        // When that bound is reached librdkafka waits this long before
        // fetching again; its default (1 s) idles the consumer for most of
        // every second at high rates (measured: 14k events/s at 1000 ms,
        // 166k at 10 ms, benchmarks/kafka_throughput.rs).
        .set("fetch.queue.backoff.ms", "10")
        // The longest a fetch waits for data. Brokers answer as soon as
        // data arrives, but a partition that was empty at the request waits
        // this long on some brokers (librdkafka's mock cluster among them):
        // at the default 500 ms that was most of the event-to-gauge latency
        // (driftd bench: p50 360 ms at 100 ms evaluations; 70 ms at 20 ms).
        // Idle, it costs 20 small requests a second per broker.
        .set("fetch.wait.max.ms", "50");
    for (key, v) in &k.properties {
        c.set(key, v);
    }
    c
}

/// Checks that librdkafka accepts every property, without connecting.
pub fn validate_properties(k: &KafkaConfig) -> Result<(), String> {
    client_config(k)
        .create::<BaseConsumer>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Everything the consumer loop needs.
pub struct IngestSetup {
    pub kafka: KafkaConfig,
    pub every: Duration,
    pub model_idle: Duration,
    pub checkpoint: CheckpointConfig,
    pub baselines_dir: std::path::PathBuf,
    pub watch_baselines: bool,
    pub window_ms: i64,
    /// Publish the arms' feature scores (`[metrics] per_arm_scores`).
    pub arm_features: bool,
}

/// Handles the loop shares with the rest of the daemon.
pub struct LoopHandles {
    pub health: Arc<Health>,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub control: mpsc::Receiver<Control>,
    pub alerts: Option<Arc<crate::daemon::alert::AlertQueue>>,
    pub metrics: Metrics,
}

/// Runs the consumer loop until `cancel`; then stores and commits offsets,
/// writes a last checkpoint and closes the consumer.
pub fn run(
    setup: IngestSetup,
    mut engine: Engine,
    mut h: LoopHandles,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let spec = engine.config().window;
    let store = setup
        .checkpoint
        .enabled
        .then(|| CheckpointStore::new(&setup.checkpoint.dir));
    let mut positions = Positions::default();
    // Warm start: windows and the offsets they cover.
    if let Some(store) = &store {
        match store.load(&spec, &setup.kafka.group_id) {
            Ok(Some(cp)) => {
                let mut restored = 0;
                for w in &cp.windows {
                    match engine.restore_window(
                        &w.model,
                        w.arm.as_deref(),
                        &w.baseline_version,
                        &w.state,
                        cp.written_at_ms,
                    ) {
                        Ok(()) => restored += 1,
                        Err(why) => {
                            tracing::warn!(model = %w.model, %why, "checkpointed window discarded")
                        }
                    }
                }
                for o in &cp.offsets {
                    positions
                        .next
                        .insert((o.topic.clone(), o.partition), o.offset);
                }
                tracing::info!(
                    windows = restored,
                    partitions = cp.offsets.len(),
                    path = %store.path().display(),
                    "restored checkpoint"
                );
            }
            Ok(None) => {
                tracing::info!(path = %store.path().display(), "no checkpoint; starting with empty windows")
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint not used; starting with empty windows")
            }
        }
    }
    let takeover_client = setup.checkpoint.kafka_topic.as_ref().map(|topic| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &setup.kafka.brokers);
        for (k, v) in &setup.kafka.properties {
            if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                c.set(k, v);
            }
        }
        (c, topic.clone())
    });
    let ctx = Ctx {
        positions: Mutex::new(positions),
        lag: Mutex::new(Vec::new()),
        health: h.health.clone(),
        rewind_ms: setup.kafka.rewind_on_start.then_some(setup.window_ms),
        takeover: takeover_client.as_ref().map(|(c, topic)| Takeover {
            client: c.clone(),
            topic: topic.clone(),
            spec,
            group: setup.kafka.group_id.clone(),
        }),
        pending: Mutex::new(Vec::new()),
        paused: Mutex::new(Vec::new()),
    };
    // Publishes each model's state to the checkpoint topic, keyed by model.
    let publisher: Option<(BaseProducer, String)> = match &takeover_client {
        Some((c, topic)) => match c.clone().set("linger.ms", "50").create::<BaseProducer>() {
            Ok(p) => Some((p, topic.clone())),
            Err(e) => {
                tracing::error!(error = %e, "cannot create the checkpoint topic producer; local checkpoints only");
                None
            }
        },
        None => None,
    };
    let mut sources: Vec<(String, i32)> = Vec::new();
    let consumer: BaseConsumer<Ctx> = client_config(&setup.kafka)
        .create_with_context(ctx)
        .map_err(IngestError::Client)?;
    let topics: Vec<&str> = setup.kafka.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| IngestError::Subscribe {
            topics: setup.kafka.topics.clone(),
            source,
        })?;
    h.health.running.store(true, Ordering::Relaxed);
    h.health
        .baselines
        .store(engine.baselines().count(), Ordering::Relaxed);
    h.health
        .auto_baseline
        .store(engine.config().auto_baseline.is_some(), Ordering::Relaxed);

    let every = setup.every;
    let pane_ms = match spec {
        WindowSpec::Time { pane_ms, .. } => pane_ms,
        WindowSpec::Count { .. } => every.as_millis() as i64,
    };
    let mut next_eval = Instant::now() + every;
    let mut last_pane = now_ms().div_euclid(pane_ms);
    let mut messages: u64 = 0;
    let mut checkpointer = Checkpointer {
        store,
        publisher,
        ok: 0,
        failed: 0,
        last_ok_ms: None,
    };
    let mut saved_auto: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut dir_stamp = dir_fingerprint(&setup.baselines_dir);
    // Offsets touched in this batch: (topic, partition) -> next offset.
    let mut batch: Vec<(String, i32, i64)> = Vec::new();

    while !cancel.is_cancelled() {
        // One batch: wait briefly for the first message, then take what is
        // already fetched, up to a bound so evaluation is never starved.
        let arrival = now_ms();
        let mut first = true;
        for _ in 0..4096 {
            let timeout = if first {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            first = false;
            let Some(r) = consumer.poll(timeout) else {
                break;
            };
            let msg = match r {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    break;
                }
            };
            messages += 1;
            let (t, part) = (msg.topic(), msg.partition());
            let source = match sources.iter().position(|(st, sp)| *sp == part && st == t) {
                Some(i) => i,
                None => {
                    sources.push((t.to_owned(), part));
                    sources.len() - 1
                }
            };
            engine.set_source(Some(source as u32));
            // Some producers batch several lines into one message; an empty
            // message (or a tombstone) is counted as malformed, not ignored.
            let mut any = false;
            for line in msg.payload().unwrap_or_default().split(|b| *b == b'\n') {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    engine.ingest(line, arrival);
                    any = true;
                }
            }
            if !any {
                engine.ingest(b"", arrival);
            }
            let (t, part, next) = (msg.topic(), msg.partition(), msg.offset() + 1);
            match batch.iter_mut().find(|(bt, bp, _)| *bp == part && bt == t) {
                Some(e) => e.2 = next,
                None => batch.push((t.to_owned(), part, next)),
            }
        }
        if !batch.is_empty() {
            // The events are in windows: now their offsets may be committed.
            let mut tpl = TopicPartitionList::new();
            let mut pos = consumer.context().positions.lock().expect("not poisoned");
            for (t, p, next) in batch.drain(..) {
                let _ = tpl.add_partition_offset(&t, p, Offset::Offset(next));
                pos.next.insert((t, p), next);
            }
            drop(pos);
            if let Err(e) = consumer.store_offsets(&tpl) {
                // Happens for partitions revoked meanwhile; their events
                // will be read again by the next owner.
                tracing::debug!(error = %e, "storing offsets failed");
            }
        }
        take_over_pending(&consumer, &mut engine, &mut sources);
        while let Ok(c) = h.control.try_recv() {
            handle_control(c, &mut engine, &setup, &h.health);
        }
        if let Some((p, _)) = &checkpointer.publisher {
            p.poll(Duration::ZERO);
        }
        let now = now_ms();
        let pane = now.div_euclid(pane_ms);
        if pane != last_pane {
            last_pane = pane;
            let at = CheckpointAt {
                engine: &engine,
                consumer: &consumer,
                sources: &sources,
                spec: &spec,
                group: &setup.kafka.group_id,
                now,
            };
            checkpointer.write(&at);
        }
        if Instant::now() >= next_eval {
            next_eval += every;
            if next_eval < Instant::now() {
                // We fell behind (a slow evaluation): skip, don't pile up.
                next_eval = Instant::now() + every;
            }
            if setup.watch_baselines {
                let stamp = dir_fingerprint(&setup.baselines_dir);
                if stamp != dir_stamp {
                    dir_stamp = stamp;
                    handle_control(
                        Control::Reload { reply: None },
                        &mut engine,
                        &setup,
                        &h.health,
                    );
                }
            }
            let started = Instant::now();
            for gone in engine.expire_idle(now, setup.model_idle.as_millis() as i64) {
                tracing::info!(model = %gone, "model idle; its windows and series are dropped");
            }
            let transitions = engine.evaluate(now);
            let eval_seconds = started.elapsed().as_secs_f64();
            for t in &transitions {
                log_transition(t);
                if let Some(q) = &h.alerts {
                    // Never blocks: a full queue drops its oldest (counted).
                    q.push(t.clone());
                }
            }
            save_auto_baselines(&engine, &setup.baselines_dir, &mut saved_auto);
            let lag = consumer
                .context()
                .lag
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            let snap = Snapshot {
                at_ms: now,
                report: engine.summary(setup.arm_features),
                stats: engine.stats.clone(),
                lag,
                assigned_partitions: h.health.assigned.load(Ordering::Relaxed),
                messages,
                eval_seconds,
                transitions,
                checkpoints_ok: checkpointer.ok,
                checkpoints_failed: checkpointer.failed,
                reloads: (
                    h.health.reloads_ok.load(Ordering::Relaxed),
                    h.health.reloads_failed.load(Ordering::Relaxed),
                ),
                last_checkpoint_ms: checkpointer.last_ok_ms,
            };
            h.metrics.update(&snap);
            h.health
                .baselines
                .store(engine.baselines().count(), Ordering::Relaxed);
            let _ = h.snapshot.send(Arc::new(snap));
        }
    }

    // Drain: everything counted is stored; commit, checkpoint, close.
    tracing::info!("consumer stopping: committing offsets and writing a last checkpoint");
    let at = CheckpointAt {
        engine: &engine,
        consumer: &consumer,
        sources: &sources,
        spec: &spec,
        group: &setup.kafka.group_id,
        now: now_ms(),
    };
    checkpointer.write(&at);
    if let Some((p, _)) = &checkpointer.publisher {
        if let Err(e) = p.flush(Duration::from_secs(1)) {
            tracing::warn!(error = %e, "model states not all published to the checkpoint topic");
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        Err(e) => tracing::warn!(error = %e, "final commit failed"),
    }
    h.health.running.store(false, Ordering::Relaxed);
    // Dropping the consumer leaves the group cleanly (revoke, commit, close).
    drop(consumer);
    tracing::info!("consumer closed");
    Ok(())
}

fn checkpoint(
    engine: &Engine,
    consumer: &BaseConsumer<Ctx>,
    spec: &WindowSpec,
    group: &str,
    now: i64,
) -> Checkpoint {
    let pos = consumer.context().positions.lock().expect("not poisoned");
    let mut offsets: Vec<PartitionOffset> = pos
        .next
        .iter()
        .map(|((t, p), o)| PartitionOffset {
            topic: t.clone(),
            partition: *p,
            offset: *o,
        })
        .collect();
    offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Checkpoint {
        schema_version: crate::daemon::checkpoint::CHECKPOINT_VERSION,
        window: window_fingerprint(spec),
        group_id: group.to_owned(),
        written_at_ms: now,
        offsets,
        windows: engine
            .window_states()
            .into_iter()
            .map(|(model, arm, baseline_version, state)| SavedWindow {
                model,
                arm,
                baseline_version,
                state,
            })
            .collect(),
    }
}

/// Restores the model states read at assignment, then resumes the
/// partitions that waited for them.
fn take_over_pending(
    consumer: &BaseConsumer<Ctx>,
    engine: &mut Engine,
    sources: &mut Vec<(String, i32)>,
) {
    let ctx = consumer.context();
    let pending: Vec<ModelCheckpoint> =
        std::mem::take(&mut *ctx.pending.lock().expect("not poisoned"));
    if pending.is_empty() {
        return;
    }
    for rec in pending {
        if engine.model(&rec.model).is_some() {
            // Tracked here already: its windows are ours, not to be doubled.
            tracing::warn!(model = %rec.model, "model already tracked here; its checkpointed state is not taken over");
            continue;
        }
        let mut ok = true;
        for w in &rec.windows {
            if let Err(why) = engine.restore_window(
                &w.model,
                w.arm.as_deref(),
                &w.baseline_version,
                &w.state,
                rec.written_at_ms,
            ) {
                tracing::warn!(model = %rec.model, %why, "checkpointed window not taken over");
                ok = false;
            }
        }
        let ids: Vec<u32> = rec
            .sources
            .iter()
            .map(|s| {
                match sources
                    .iter()
                    .position(|(t, p)| *p == s.partition && *t == s.topic)
                {
                    Some(i) => i as u32,
                    None => {
                        sources.push((s.topic.clone(), s.partition));
                        (sources.len() - 1) as u32
                    }
                }
            })
            .collect();
        engine.add_sources(&rec.model, &ids);
        if ok {
            tracing::info!(model = %rec.model, windows = rec.windows.len(), "model state taken over");
        }
    }
    let paused: Vec<(String, i32)> = std::mem::take(&mut *ctx.paused.lock().expect("not poisoned"));
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &paused {
        let _ = tpl.add_partition(t, *p);
    }
    if let Err(e) = consumer.resume(&tpl) {
        tracing::error!(error = %e, "resuming partitions after takeover failed");
    }
}

/// Where checkpoints go: the local directory and the checkpoint topic.
struct Checkpointer {
    store: Option<CheckpointStore>,
    publisher: Option<(BaseProducer, String)>,
    ok: u64,
    failed: u64,
    last_ok_ms: Option<i64>,
}

/// The state a checkpoint is taken of, at one instant.
struct CheckpointAt<'a> {
    engine: &'a Engine,
    consumer: &'a BaseConsumer<Ctx>,
    sources: &'a [(String, i32)],
    spec: &'a WindowSpec,
    group: &'a str,
    now: i64,
}

impl Checkpointer {
    fn write(&mut self, at: &CheckpointAt<'_>) {
        if let Some((p, topic)) = &self.publisher {
            publish_models(p, topic, at);
        }
        if let Some(store) = &self.store {
            let cp = checkpoint(at.engine, at.consumer, at.spec, at.group, at.now);
            match store.save(&cp) {
                Ok(_) => {
                    self.ok += 1;
                    self.last_ok_ms = Some(at.now);
                }
                Err(e) => {
                    self.failed += 1;
                    tracing::error!(error = %e, "checkpoint failed");
                }
            }
        }
    }
}

/// Publishes every model's state to the compacted checkpoint topic.
fn publish_models(p: &BaseProducer, topic: &str, at: &CheckpointAt<'_>) {
    let CheckpointAt {
        engine,
        consumer,
        sources,
        spec,
        group,
        now,
    } = *at;
    let pos = consumer.context().positions.lock().expect("not poisoned");
    let mut windows: HashMap<String, Vec<SavedWindow>> = HashMap::new();
    for (model, arm, baseline_version, state) in engine.window_states() {
        windows.entry(model.clone()).or_default().push(SavedWindow {
            model,
            arm,
            baseline_version,
            state,
        });
    }
    for m in engine.models() {
        let rec = ModelCheckpoint {
            schema_version: crate::daemon::checkpoint::CHECKPOINT_VERSION,
            window: window_fingerprint(spec),
            group_id: group.to_owned(),
            written_at_ms: now,
            model: m.name.to_string(),
            baseline_version: m.layout.baseline.version.clone(),
            sources: m
                .sources
                .iter()
                .filter_map(|s| sources.get(*s as usize))
                .filter_map(|(t, part)| {
                    pos.next.get(&(t.clone(), *part)).map(|o| PartitionOffset {
                        topic: t.clone(),
                        partition: *part,
                        offset: *o,
                    })
                })
                .collect(),
            windows: windows.remove(m.name.as_ref()).unwrap_or_default(),
        };
        let Ok(body) = serde_json::to_vec(&rec) else {
            continue;
        };
        let r = BaseRecord::to(topic).key(m.name.as_ref()).payload(&body);
        if let Err((e, _)) = p.send(r) {
            tracing::warn!(model = %m.name, error = %e, "model state not published to the checkpoint topic");
        }
    }
}

/// Model states read from the checkpoint topic at most (the engine's own
/// cap, `limits.max_models`, is at most this).
const MAX_TAKEOVER_MODELS: usize = 100_000;

/// Reads the latest state of every model from the checkpoint topic (a
/// consumer outside any group, from the start to the high watermark).
fn read_model_checkpoints(
    client: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<HashMap<String, ModelCheckpoint>, KafkaError> {
    let reader: BaseConsumer = client
        .clone()
        .set("group.id", "driftd-checkpoint-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let md = reader.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = reader.fetch_watermarks(topic, p.id(), timeout)?;
            if hi > lo {
                ends.insert(p.id(), hi);
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
    }
    let mut out: HashMap<String, ModelCheckpoint> = HashMap::new();
    if ends.is_empty() {
        return Ok(out);
    }
    reader.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(r) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = r?;
        if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(0) {
            ends.remove(&m.partition());
        }
        let Some(rec) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<ModelCheckpoint>(p).ok())
        else {
            continue;
        };
        match out.get(&rec.model) {
            Some(old) if old.written_at_ms > rec.written_at_ms => {}
            // Bounded like the engine: never more models than it may track.
            None if out.len() >= MAX_TAKEOVER_MODELS => {}
            _ => {
                out.insert(rec.model.clone(), rec);
            }
        }
    }
    Ok(out)
}

/// A cheap signature of the baseline directory (names, sizes, times).
fn dir_fingerprint(dir: &std::path::Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().ok(),
            ))
        })
        .collect();
    v.sort();
    v
}

fn handle_control(c: Control, engine: &mut Engine, setup: &IngestSetup, health: &Health) {
    match c {
        Control::Reload { reply } => {
            let r = reload(engine, &setup.baselines_dir);
            let counter = if r.is_ok() {
                &health.reloads_ok
            } else {
                &health.reloads_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match &r {
                Ok(models) => tracing::info!(models = models.len(), "baselines reloaded"),
                // The old baselines stay in force; readiness is unaffected.
                Err(e) => {
                    tracing::error!(error = %e, "baseline reload failed; keeping the baselines in force")
                }
            }
            health
                .baselines
                .store(engine.baselines().count(), Ordering::Relaxed);
            if let Some(tx) = reply {
                let _ = tx.send(r);
            }
        }
        Control::Capture { model, reply } => {
            let r = engine
                .capture(&model, now_ms())
                .and_then(|b| {
                    b.save(&setup.baselines_dir)
                        .map_err(|e| e.to_string())
                        .map(|_| b)
                })
                .map(|b| {
                    let v = b.version.clone();
                    engine.set_baseline(b);
                    v
                });
            match &r {
                Ok(v) => {
                    tracing::info!(model = %model, version = %v, "baseline captured from the current window")
                }
                Err(e) => tracing::warn!(model = %model, error = %e, "baseline capture failed"),
            }
            let _ = reply.send(r);
        }
        Control::Detail { model, reply } => {
            let _ = reply.send(engine.report_with(true, Some(&model)));
        }
    }
}

/// Loads every baseline; on any problem nothing changes.
fn reload(engine: &mut Engine, dir: &std::path::Path) -> Result<Vec<String>, String> {
    let loaded = crate::engine::baseline::load_dir(dir).map_err(|errs| {
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let names: Vec<String> = loaded.iter().map(|(_, b)| b.model.clone()).collect();
    let current: Vec<String> = engine
        .baselines()
        .filter(|b| b.source != "auto")
        .map(|b| b.model.clone())
        .collect();
    for (_, b) in loaded {
        let unchanged = engine
            .baselines()
            .any(|x| x.model == b.model && x.version == b.version);
        if !unchanged {
            engine.set_baseline(b);
        }
    }
    for m in current {
        if !names.contains(&m) {
            engine.remove_baseline(&m);
        }
    }
    Ok(names)
}

fn save_auto_baselines(
    engine: &Engine,
    dir: &std::path::Path,
    saved: &mut std::collections::HashSet<String>,
) {
    let new: Vec<&Baseline> = engine
        .auto_captured()
        .filter(|b| !saved.contains(&b.version))
        .collect();
    for b in new {
        match b.save(dir) {
            Ok(p) => {
                tracing::info!(model = %b.model, path = %p.display(), "automatic baseline saved")
            }
            Err(e) => tracing::warn!(error = %e, "automatic baseline not saved"),
        }
        saved.insert(b.version.clone());
    }
}

/// One structured log line per transition. Names only: no feature values.
pub fn log_transition(t: &Transition) {
    tracing::info!(
        model = %t.model,
        arm = t.arm.as_deref().unwrap_or(""),
        feature = %t.feature,
        metric = %t.metric,
        from = %t.from,
        to = %t.to,
        severity = t.severity.map(|s| s.as_str()).unwrap_or(""),
        value = t.value,
        threshold = t.threshold,
        samples = t.samples,
        "drift verdict changed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connected_but_silent_broker_is_not_up() {
        assert!(any_broker_up([("UP", 40_000)].into_iter()));
        assert!(any_broker_up([("DOWN", 10), ("UP", -1)].into_iter()));
        assert!(!any_broker_up([("UP", 31_000_000)].into_iter()));
        assert!(!any_broker_up([("DOWN", 10), ("CONNECT", 10)].into_iter()));
        assert!(any_broker_up(
            [("UP", 60_000_000), ("UP", 2_000)].into_iter()
        ));
        assert!(!any_broker_up(std::iter::empty()));
    }

    #[test]
    fn a_known_position_always_wins() {
        assert_eq!(
            start_offset(Some(7), TimeLookup::Offset(3), Some(5)),
            StartAt::Offset(7)
        );
        assert_eq!(
            start_offset(Some(7), TimeLookup::Failed, None),
            StartAt::Offset(7)
        );
    }

    #[test]
    fn rewind_uses_a_found_offset_but_never_skips_past_the_committed_one() {
        assert_eq!(
            start_offset(None, TimeLookup::Offset(3), Some(5)),
            StartAt::Offset(3)
        );
        assert_eq!(
            start_offset(None, TimeLookup::Offset(3), None),
            StartAt::Offset(3)
        );
        assert_eq!(
            start_offset(None, TimeLookup::Offset(9), Some(5)),
            StartAt::Committed
        );
    }

    #[test]
    fn brokers_that_cannot_answer_fall_back_to_committed() {
        // The mock cluster answers End for any timestamp.
        assert_eq!(
            start_offset(None, TimeLookup::End, Some(5)),
            StartAt::Committed
        );
        assert_eq!(
            start_offset(None, TimeLookup::Failed, Some(5)),
            StartAt::Committed
        );
        assert_eq!(
            start_offset(None, TimeLookup::NotAsked, None),
            StartAt::Committed
        );
    }

    /// TLS and SCRAM need librdkafka built with OpenSSL (rdkafka's `ssl`
    /// feature); without it these properties are refused at start.
    #[test]
    fn tls_and_sasl_properties_are_accepted() {
        let mut properties = std::collections::BTreeMap::new();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "driftd"),
            ("sasl.password", "secret"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            properties.insert(k.to_owned(), v.to_owned());
        }
        let k = KafkaConfig {
            brokers: "127.0.0.1:9093".into(),
            topics: vec!["t".into()],
            group_id: "g".into(),
            commit_interval: Duration::from_secs(5),
            rewind_on_start: true,
            properties,
        };
        validate_properties(&k).unwrap();
        let mut bad = k.clone();
        bad.properties.insert("no.such.property".into(), "1".into());
        let err = validate_properties(&bad).unwrap_err();
        assert!(err.contains("no.such.property"), "{err}");
    }

    #[test]
    fn readiness_lists_every_reason() {
        let h = Health::default();
        assert_eq!(h.ready().unwrap_err().len(), 4);
        h.running.store(true, Ordering::Relaxed);
        h.baselines.store(1, Ordering::Relaxed);
        h.assigned.store(2, Ordering::Relaxed);
        h.broker_up.store(true, Ordering::Relaxed);
        assert!(h.ready().is_ok());
    }
}
