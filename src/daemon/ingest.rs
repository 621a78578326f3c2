//! Kafka in: the consumer group, where each partition starts, and which
//! offsets may be committed.
//!
//! This module owns the Kafka consumer (librdkafka through rdkafka, in a
//! consumer group) and nothing downstream of it. [`KafkaSource`] polls a
//! batch and hands every line over with the partition it came from; the
//! caller counts the lines (into the engine's windows) and only then calls
//! [`KafkaSource::commit_batch`], which stores their offsets. That is the
//! at-least-once contract: `enable.auto.offset.store=false`, stored offsets
//! committed every `kafka.commit_interval`, on revoke and on close, so an
//! offset is never committed before its line is counted.
//!
//! Where an assigned partition starts:
//! - at a known position, when the caller's windows cover the partition up
//!   to it (a restored checkpoint, or this member's own before a rebalance);
//! - else where a claim puts it: another replica's state for the models of
//!   that partition, read by the caller (the checkpoint topic); the
//!   partition stays paused until the caller has restored that state and
//!   calls [`KafkaSource::resume_claimed`];
//! - else, with `kafka.rewind_on_start`, at `now - window` by event time
//!   (offsets-for-times), so the window fills at once; a broker that cannot
//!   answer that lookup falls back to the committed offset;
//! - else at the committed offset.
//!
//! Why a `BaseConsumer` polled from one blocking thread: librdkafka serves
//! rebalance callbacks from `poll` on the calling thread, so positions,
//! windows and checkpoints all change on that one thread, and "a checkpoint
//! holds exactly the events before its offsets" is true by construction.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::clock::now_ms;
use crate::daemon::readiness::Readiness;

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

/// Settings for driftd's other clients of the same cluster (the checkpoint
/// topic's producer and reader): the brokers and how to reach them (TLS,
/// SASL), not the group's consumer settings.
pub fn side_client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, v) in &k.properties {
        if key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") {
            c.set(key, v);
        }
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

/// Errors that stop the consumer before it runs.
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

/// A partition's next offset: `(topic, partition, offset)`.
pub type Position = (String, i32, i64);

/// Hands partitions this member knows nothing of to the state another
/// replica left for them: given those partitions, returns the offsets the
/// ones it claims must start at. Called from the rebalance callback, so it
/// may block briefly (it reads the checkpoint topic); the partitions it
/// claims stay paused until [`KafkaSource::resume_claimed`].
pub type Claim = Box<dyn Fn(&[(String, i32)]) -> Vec<Position> + Send + Sync>;

/// Where partitions start (see the module documentation).
#[derive(Default)]
pub struct Start {
    /// Next offsets the caller's windows already cover.
    pub known: Vec<Position>,
    /// Without a known position or a claim, start `now - rewind_ms` by
    /// event time.
    pub rewind_ms: Option<i64>,
    pub claim: Option<Claim>,
}

/// Which partition a line came from, as a small dense id (the engine keeps
/// a few of them per model, to follow a model's partitions to a replica).
pub type SourceId = u32;

/// What the consumer has done, for the metrics and the status API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KafkaStats {
    /// Messages consumed since start.
    pub messages: u64,
    pub assigned_partitions: usize,
    /// (topic, partition, messages not yet counted) from librdkafka's
    /// statistics: the stored-offset lag, since offsets are stored once the
    /// lines are counted.
    pub lag: Vec<(String, i32, i64)>,
}

/// Next offset to consume per partition, as far as the counted lines go.
#[derive(Debug, Default)]
struct Positions {
    next: HashMap<(String, i32), i64>,
    assigned: Vec<(String, i32)>,
}

/// librdkafka callbacks: rebalances, statistics, errors and logs.
struct Ctx {
    positions: Mutex<Positions>,
    lag: Mutex<Vec<(String, i32, i64)>>,
    readiness: Arc<Readiness>,
    rewind_ms: Option<i64>,
    claim: Option<Claim>,
    /// Partitions claimed and paused until the caller resumes them.
    paused: Mutex<Vec<(String, i32)>>,
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

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut lag = Vec::new();
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's "internal" partition and unassigned ones.
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
        self.readiness.broker_up.store(up, Ordering::Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.readiness.broker_up.store(false, Ordering::Relaxed);
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
                self.assign(c, tpl, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(c, tpl, cooperative)
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = c.unassign();
                self.positions
                    .lock()
                    .expect("not poisoned")
                    .assigned
                    .clear();
                self.readiness.assigned.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl Ctx {
    fn assign(&self, c: &BaseConsumer<Self>, tpl: &mut TopicPartitionList, cooperative: bool) {
        self.place(c, tpl);
        let r = if cooperative {
            c.incremental_assign(tpl)
        } else {
            c.assign(tpl)
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "assigning partitions failed");
        }
        // Claimed partitions wait until the caller has restored their state.
        let paused = self.paused.lock().expect("not poisoned").clone();
        if !paused.is_empty() {
            if let Err(e) = c.pause(&partition_list(&paused)) {
                tracing::warn!(error = %e, "pausing claimed partitions failed");
            }
        }
        let mut pos = self.positions.lock().expect("not poisoned");
        for e in tpl.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if !pos.assigned.contains(&key) {
                pos.assigned.push(key);
            }
        }
        self.readiness
            .assigned
            .store(pos.assigned.len(), Ordering::Relaxed);
        tracing::info!(partitions = %describe(tpl), assigned = pos.assigned.len(), "partitions assigned");
    }

    fn revoke(&self, c: &BaseConsumer<Self>, tpl: &TopicPartitionList, cooperative: bool) {
        // Stored offsets cover only lines already counted: commit them
        // before another member takes the partitions over.
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
        self.readiness
            .assigned
            .store(pos.assigned.len(), Ordering::Relaxed);
        tracing::info!(partitions = %describe(tpl), "partitions revoked");
    }

    /// Offers the partitions nobody here has a position for to the claim;
    /// the claimed ones start where it says, paused.
    fn claim(&self, known: Vec<(String, i32, Option<i64>)>) -> Vec<(String, i32, Option<i64>)> {
        let Some(claim) = &self.claim else {
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
        let claimed: HashMap<(String, i32), i64> = claim(&unknown)
            .into_iter()
            .filter(|(t, p, _)| unknown.iter().any(|u| u.0 == *t && u.1 == *p))
            .map(|(t, p, o)| ((t, p), o))
            .collect();
        if claimed.is_empty() {
            return known;
        }
        self.paused
            .lock()
            .expect("not poisoned")
            .extend(claimed.keys().cloned());
        known
            .into_iter()
            .map(|(topic, p, k)| {
                let o = k.or_else(|| claimed.get(&(topic.clone(), p)).copied());
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
        let known = self.claim(known);
        let unknown: Vec<(String, i32)> = known
            .iter()
            .filter(|k| k.2.is_none())
            .map(|k| (k.0.clone(), k.1))
            .collect();
        let (lookups, committed) = match self.rewind_ms {
            Some(rewind_ms) if !unknown.is_empty() => rewind_lookup(c, &unknown, rewind_ms),
            _ => Default::default(),
        };
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

/// Asks the broker for the first offset at or after `now - rewind_ms` of
/// each partition, and for the group's committed offsets.
#[allow(clippy::type_complexity)]
fn rewind_lookup(
    c: &BaseConsumer<Ctx>,
    partitions: &[(String, i32)],
    rewind_ms: i64,
) -> (
    HashMap<(String, i32), TimeLookup>,
    HashMap<(String, i32), i64>,
) {
    let since = now_ms() - rewind_ms;
    let mut q = TopicPartitionList::new();
    for (t, p) in partitions {
        let _ = q.add_partition_offset(t, *p, Offset::Offset(since));
    }
    let mut lookups = HashMap::new();
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
    let mut committed = HashMap::new();
    if let Ok(ans) = c.committed_offsets(q, Duration::from_secs(5)) {
        for e in ans.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert((e.topic().to_owned(), e.partition()), o);
            }
        }
    }
    (lookups, committed)
}

fn partition_list(partitions: &[(String, i32)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        let _ = tpl.add_partition(t, *p);
    }
    tpl
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Messages taken per batch at most, so the caller's evaluation and
/// checkpoints are never starved by a deep backlog.
pub const MAX_BATCH: usize = 4096;

/// The consumer, subscribed.
pub struct KafkaSource {
    consumer: BaseConsumer<Ctx>,
    topics: Vec<String>,
    /// (topic, partition) of each source id, in order of first sight.
    sources: Vec<(String, i32)>,
    /// Offsets touched by the current batch: (topic, partition, next).
    batch: Vec<Position>,
    messages: u64,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to `kafka.topics`.
    pub fn subscribe(
        cfg: &KafkaConfig,
        start: Start,
        readiness: Arc<Readiness>,
    ) -> Result<KafkaSource, IngestError> {
        let mut positions = Positions::default();
        for (t, p, o) in start.known {
            positions.next.insert((t, p), o);
        }
        let ctx = Ctx {
            positions: Mutex::new(positions),
            lag: Mutex::new(Vec::new()),
            readiness,
            rewind_ms: start.rewind_ms,
            claim: start.claim,
            paused: Mutex::new(Vec::new()),
        };
        let consumer: BaseConsumer<Ctx> = client_config(cfg)
            .create_with_context(ctx)
            .map_err(IngestError::Client)?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| IngestError::Subscribe {
                topics: cfg.topics.clone(),
                source,
            })?;
        Ok(KafkaSource {
            consumer,
            topics: cfg.topics.clone(),
            sources: Vec::new(),
            batch: Vec::new(),
            messages: 0,
        })
    }

    /// Polls one batch: waits up to `wait` for a first message, then takes
    /// what is already fetched, up to [`MAX_BATCH`] messages. Every line of
    /// every message goes to `line` with its partition's source id: some
    /// producers put several lines in one message, and an empty message (or
    /// a tombstone) is handed over as one empty line, to be counted as
    /// malformed rather than ignored. Returns the messages taken.
    pub fn poll_batch(&mut self, wait: Duration, mut line: impl FnMut(SourceId, &[u8])) -> usize {
        let mut taken = 0;
        while taken < MAX_BATCH {
            let timeout = if taken == 0 { wait } else { Duration::ZERO };
            let msg = match self.consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    break;
                }
                Some(Ok(m)) => m,
            };
            taken += 1;
            let (topic, partition, next) = (msg.topic(), msg.partition(), msg.offset() + 1);
            let source = source_id(&mut self.sources, topic, partition);
            let mut any = false;
            for l in msg.payload().unwrap_or_default().split(|b| *b == b'\n') {
                if !l.iter().all(u8::is_ascii_whitespace) {
                    line(source, l);
                    any = true;
                }
            }
            if !any {
                line(source, b"");
            }
            match self
                .batch
                .iter_mut()
                .find(|(t, p, _)| *p == partition && t == topic)
            {
                Some(e) => e.2 = next,
                None => self.batch.push((topic.to_owned(), partition, next)),
            }
        }
        self.messages += taken as u64;
        taken
    }

    /// The lines of the last batch are counted: their offsets may now be
    /// committed, and they are the positions a checkpoint records.
    pub fn commit_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        let ctx = self.consumer.context();
        let mut pos = ctx.positions.lock().expect("not poisoned");
        for (t, p, next) in self.batch.drain(..) {
            let _ = tpl.add_partition_offset(&t, p, Offset::Offset(next));
            pos.next.insert((t, p), next);
        }
        drop(pos);
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // Happens for partitions revoked meanwhile; the next owner reads
            // their lines again.
            tracing::debug!(error = %e, "storing offsets failed");
        }
    }

    /// The id of a partition, given one if it has none yet.
    pub fn source_id(&mut self, topic: &str, partition: i32) -> SourceId {
        source_id(&mut self.sources, topic, partition)
    }

    /// The partition of a source id.
    pub fn source(&self, id: SourceId) -> Option<(&str, i32)> {
        self.sources.get(id as usize).map(|(t, p)| (t.as_str(), *p))
    }

    /// The next offset of every partition whose lines were counted.
    pub fn positions(&self) -> Vec<Position> {
        let pos = self
            .consumer
            .context()
            .positions
            .lock()
            .expect("not poisoned");
        let mut v: Vec<Position> = pos
            .next
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        v.sort();
        v
    }

    pub fn stats(&self) -> KafkaStats {
        let ctx = self.consumer.context();
        KafkaStats {
            messages: self.messages,
            assigned_partitions: ctx.positions.lock().expect("not poisoned").assigned.len(),
            lag: ctx.lag.lock().map(|l| l.clone()).unwrap_or_default(),
        }
    }

    /// Resumes the partitions a claim paused, once their state is restored.
    pub fn resume_claimed(&self) {
        let paused: Vec<(String, i32)> =
            std::mem::take(&mut *self.consumer.context().paused.lock().expect("not poisoned"));
        if paused.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.resume(&partition_list(&paused)) {
            tracing::error!(error = %e, "resuming claimed partitions failed");
        }
    }

    /// Commits what is stored and leaves the group (revoke, commit, close).
    pub fn close(self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            // The periodic commit got there first: everything counted is
            // committed all the same.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {
                tracing::info!("offsets committed (nothing new since the last periodic commit)")
            }
            Err(e) => tracing::warn!(error = %e, "final commit failed"),
        }
        drop(self.consumer);
        tracing::info!(topics = ?self.topics, "consumer closed");
    }
}

fn source_id(sources: &mut Vec<(String, i32)>, topic: &str, partition: i32) -> SourceId {
    match sources
        .iter()
        .position(|(t, p)| *p == partition && t == topic)
    {
        Some(i) => i as SourceId,
        None => {
            sources.push((topic.to_owned(), partition));
            (sources.len() - 1) as SourceId
        }
    }
}

/// The consumer's series: `driftd_kafka_*`. Set once per evaluation from
/// [`KafkaStats`], never per message.
pub struct KafkaMetrics {
    lag: IntGaugeVec,
    assigned: IntGauge,
    messages: IntCounter,
    prev_messages: u64,
    prev_lag: Vec<(String, i32)>,
}

impl KafkaMetrics {
    pub fn new(r: &Registry) -> Result<KafkaMetrics, prometheus::Error> {
        let lag = IntGaugeVec::new(
            Opts::new(
                "driftd_kafka_consumer_lag",
                "Messages between the consumer's position and the partition's end",
            ),
            &["topic", "partition"],
        )?;
        let assigned = IntGauge::new(
            "driftd_kafka_assigned_partitions",
            "Partitions assigned to this consumer",
        )?;
        let messages = IntCounter::new("driftd_kafka_messages_total", "Kafka messages consumed")?;
        r.register(Box::new(lag.clone()))?;
        r.register(Box::new(assigned.clone()))?;
        r.register(Box::new(messages.clone()))?;
        Ok(KafkaMetrics {
            lag,
            assigned,
            messages,
            prev_messages: 0,
            prev_lag: Vec::new(),
        })
    }

    pub fn update(&mut self, s: &KafkaStats) {
        self.messages
            .inc_by(s.messages.saturating_sub(self.prev_messages));
        self.prev_messages = s.messages;
        self.assigned.set(s.assigned_partitions as i64);
        let mut now = Vec::with_capacity(s.lag.len());
        for (topic, partition, lag) in &s.lag {
            self.lag
                .with_label_values(&[topic, &partition.to_string()])
                .set(*lag);
            now.push((topic.clone(), *partition));
        }
        // Partitions that went away (revoked) lose their series.
        for (topic, partition) in &self.prev_lag {
            if !now.contains(&(topic.clone(), *partition)) {
                let _ = self
                    .lag
                    .remove_label_values(&[topic, &partition.to_string()]);
            }
        }
        self.prev_lag = now;
    }
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
}
