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
//! - at a saved position that still holds: this member's own from before a
//!   rebalance, or one the caller offered (a restored checkpoint, or another
//!   replica's state claimed from the checkpoint topic). Every saved
//!   position goes through one judgment ([`judge`]): the same cluster, an
//!   offset within the partition's watermarks, and the same message just
//!   before it ([`Anchor`]). Offers come in sets that stand or fall
//!   together; an accepted set's partitions stay paused until the caller
//!   has restored its state and calls [`KafkaSource::resume_paused`], and
//!   every decision is reported ([`Placed`]);
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

/// librdkafka's prefetch queue unless `kafka.properties` says otherwise
/// (`queued.max.messages.kbytes`), in KiB. 4 MB: measured with driftd
/// bench, 16 MB drained no faster (334k vs 337k events/s) and cost the
/// daemon 10 MB more RSS.
pub const QUEUED_KBYTES: usize = 4096;
/// The most one fetch response holds unless configured (`fetch.max.bytes`):
/// librdkafka's default, 50 MB, would make each broker's response in flight
/// the biggest buffer of the process. A single larger message is still
/// fetched (Kafka returns at least one).
pub const FETCH_MAX_BYTES: usize = 4 << 20;

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
        // Bound librdkafka's prefetch buffers so they cannot dominate memory
        // (see QUEUED_KBYTES, FETCH_MAX_BYTES and daemon::plan).
        .set("queued.max.messages.kbytes", QUEUED_KBYTES.to_string())
        .set("fetch.max.bytes", FETCH_MAX_BYTES.to_string())
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

/// What identifies the message just before a position. Another cluster, or
/// the same topic deleted and recreated, has other messages at the same
/// offsets: a saved position whose anchor no longer matches describes
/// something that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The message's Kafka timestamp (producer or broker time).
    pub timestamp_ms: Option<i64>,
    /// A hash of the start of the message's payload and its length.
    pub fingerprint: u64,
}

impl Anchor {
    fn of(timestamp_ms: Option<i64>, payload: &[u8]) -> Anchor {
        // The start of a line holds its timestamp and model: enough to tell
        // two messages apart, for a few nanoseconds a message.
        let head = &payload[..payload.len().min(128)];
        Anchor {
            timestamp_ms,
            fingerprint: xxhash_rust::xxh3::xxh3_64(head) ^ payload.len() as u64,
        }
    }
}

/// A partition's next offset, and the message just before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub anchor: Option<Anchor>,
}

/// A saved position offered for a partition: resume there if it still
/// describes this cluster and topic. Offers with the same `set` stand or
/// fall together (their windows cover all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub position: Position,
    /// The cluster the position was saved on (`None`: unknown, not checked).
    pub cluster_id: Option<String>,
    pub set: u64,
}

/// Why a saved position was not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Discard {
    /// Saved on another Kafka cluster.
    Cluster,
    /// The message before the position is another one: the topic was
    /// deleted and recreated (or the partition's data replaced).
    Topic,
    /// The offset is outside the partition's [low, high] watermarks.
    OutOfRange,
    /// The broker could not tell (watermarks or the anchor unreadable).
    Unverifiable,
    /// Another position of the same set failed, or is not assigned here.
    SetIncomplete,
}

impl Discard {
    pub const ALL: [Discard; 5] = [
        Discard::Cluster,
        Discard::Topic,
        Discard::OutOfRange,
        Discard::Unverifiable,
        Discard::SetIncomplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Cluster => "cluster",
            Discard::Topic => "topic",
            Discard::OutOfRange => "offset_out_of_range",
            Discard::Unverifiable => "unverifiable",
            Discard::SetIncomplete => "set_incomplete",
        }
    }
}

/// Whether a saved position still holds, given what the broker says now:
/// its cluster id, the partition's watermarks and the anchor it finds at
/// `offset - 1`. A position is trusted only when everything that can be
/// checked agrees.
pub fn judge(
    saved: &Position,
    saved_cluster: Option<&str>,
    cluster: Option<&str>,
    watermarks: Option<(i64, i64)>,
    found: Option<Anchor>,
) -> Result<i64, Discard> {
    if let (Some(a), Some(b)) = (saved_cluster, cluster) {
        if a != b {
            return Err(Discard::Cluster);
        }
    }
    let Some((low, high)) = watermarks else {
        return Err(Discard::Unverifiable);
    };
    if saved.offset < low || saved.offset > high {
        return Err(Discard::OutOfRange);
    }
    // The message before the position still exists: it must be the same.
    if let (Some(want), true) = (saved.anchor, saved.offset > low) {
        match found {
            Some(got) if got == want => {}
            Some(_) => return Err(Discard::Topic),
            None => return Err(Discard::Unverifiable),
        }
    }
    Ok(saved.offset)
}

/// What an assignment did with the saved positions, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// The set's positions all held: its partitions start there, paused
    /// until the caller restores the set's state and calls
    /// [`KafkaSource::resume_paused`].
    SetAccepted { set: u64 },
    /// The set's positions are not used; its assigned partitions start at
    /// the committed offset (or the rewind).
    SetDiscarded {
        set: u64,
        reason: Discard,
        partitions: Vec<(String, i32, Discard)>,
    },
    /// This member's own position on a partition it had before no longer
    /// holds: what it counted from that partition describes something gone.
    OwnDiscarded {
        topic: String,
        partition: i32,
        reason: Discard,
    },
}

/// Offers positions for partitions this member knows nothing of: another
/// replica's state for them (the checkpoint topic). Called from the
/// rebalance callback with the unknown partitions, so it may block briefly.
pub type Claim = Box<dyn Fn(&[(String, i32)]) -> Vec<Offer> + Send + Sync>;

/// Where partitions start (see the module documentation).
#[derive(Default)]
pub struct Start {
    /// Saved positions (a restored checkpoint), judged at assignment.
    pub offers: Vec<Offer>,
    /// Without a usable position, start `now - rewind_ms` by event time.
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
    next: HashMap<(String, i32), (i64, Option<Anchor>)>,
    assigned: Vec<(String, i32)>,
}

/// librdkafka callbacks: rebalances, statistics, errors and logs.
struct Ctx {
    positions: Mutex<Positions>,
    lag: Mutex<Vec<(String, i32, i64)>>,
    readiness: Arc<Readiness>,
    rewind_ms: Option<i64>,
    claim: Option<Claim>,
    /// Saved positions not yet judged: judged at the first assignment of
    /// any partition of their set.
    offers: Mutex<HashMap<(String, i32), Offer>>,
    /// Partitions of accepted sets, paused until the caller resumes them.
    paused: Mutex<Vec<(String, i32)>>,
    /// What assignments did with saved positions, for the caller.
    placed: Mutex<Vec<Placed>>,
    /// Reaches the cluster outside the group, to read anchors.
    side: ClientConfig,
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

/// Messages between a partition's position and its end: the stored offset
/// (lines counted), else the committed one, against the high watermark.
/// Negative when the position is past the end: the topic was recreated or
/// the broker lost data, and "0" would say all is well. librdkafka's own
/// `consumer_lag_stored` reports -1 (unknown) then, which a gauge would
/// drop; `None` only when nothing is known yet.
fn honest_lag(hi: i64, stored: i64, committed: i64) -> Option<i64> {
    if hi < 0 {
        return None;
    }
    let position = if stored >= 0 { stored } else { committed };
    (position >= 0).then_some(hi - position)
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
        let assigned = self
            .positions
            .lock()
            .map(|p| p.assigned.clone())
            .unwrap_or_default();
        let mut lag = Vec::new();
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                if !assigned.iter().any(|(at, ap)| at == topic && ap == p) {
                    continue;
                }
                let l = honest_lag(part.hi_offset, part.stored_offset, part.committed_offset);
                if let Some(l) = l {
                    lag.push((topic.clone(), *p, l));
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
        // Partitions of accepted sets wait until the caller has restored
        // the state that covers them.
        let paused = self.paused.lock().expect("not poisoned").clone();
        if !paused.is_empty() {
            if let Err(e) = c.pause(&partition_list(&paused)) {
                tracing::warn!(error = %e, "pausing partitions for their restore failed");
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

    /// Sets each assigned partition's start offset: a saved position that
    /// still holds (this member's own, or an offer), else the rewind, else
    /// the committed offset.
    fn place(&self, c: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let candidates = self.candidates(&assigned);
        let starts = self.judge_all(c, &candidates);
        let unknown: Vec<(String, i32)> = assigned
            .iter()
            .filter(|k| !starts.contains_key(*k))
            .cloned()
            .collect();
        let (lookups, committed) = match self.rewind_ms {
            Some(rewind_ms) if !unknown.is_empty() => rewind_lookup(c, &unknown, rewind_ms),
            _ => Default::default(),
        };
        for (t, p) in &assigned {
            let key = (t.clone(), *p);
            let known = starts.get(&key).copied();
            let lookup = lookups.get(&key).copied().unwrap_or(TimeLookup::NotAsked);
            match start_offset(known, lookup, committed.get(&key).copied()) {
                StartAt::Offset(o) => {
                    let _ = tpl.set_partition_offset(t, *p, Offset::Offset(o));
                    tracing::debug!(topic = %t, partition = p, offset = o, known = known.is_some(), "partition start");
                }
                StartAt::Committed => {
                    let _ = tpl.set_partition_offset(t, *p, Offset::Stored);
                }
            }
        }
    }

    /// The saved positions that may apply to these partitions: this
    /// member's own, the offers (whole sets, or the set is incomplete), and
    /// what the claim finds for the rest.
    fn candidates(&self, assigned: &[(String, i32)]) -> Candidates {
        let mut out = Candidates::default();
        {
            let pos = self.positions.lock().expect("not poisoned");
            for key in assigned {
                if let Some((offset, anchor)) = pos.next.get(key) {
                    out.own.push(Position {
                        topic: key.0.clone(),
                        partition: key.1,
                        offset: *offset,
                        anchor: *anchor,
                    });
                }
            }
        }
        let mut offers = self.offers.lock().expect("not poisoned");
        let mut unknown = Vec::new();
        for key in assigned {
            if out
                .own
                .iter()
                .any(|p| p.topic == key.0 && p.partition == key.1)
            {
                continue;
            }
            match offers.remove(key) {
                Some(o) => out.offers.push(o),
                None => unknown.push(key.clone()),
            }
        }
        // A set is judged once, at its first assignment: its partitions
        // that went to other members make it incomplete.
        let sets: Vec<u64> = out.offers.iter().map(|o| o.set).collect();
        let stranded: Vec<Offer> = offers
            .values()
            .filter(|o| sets.contains(&o.set))
            .cloned()
            .collect();
        for o in &stranded {
            offers.remove(&(o.position.topic.clone(), o.position.partition));
        }
        out.incomplete = stranded.iter().map(|o| o.set).collect();
        drop(offers);
        if let (Some(claim), false) = (&self.claim, unknown.is_empty()) {
            out.offers.extend(
                claim(&unknown).into_iter().filter(|o| {
                    unknown.contains(&(o.position.topic.clone(), o.position.partition))
                }),
            );
        }
        out
    }

    /// Judges every candidate against the broker; returns the offsets that
    /// hold, pauses accepted sets and reports what was decided.
    fn judge_all(
        &self,
        c: &BaseConsumer<Self>,
        candidates: &Candidates,
    ) -> HashMap<(String, i32), i64> {
        let mut starts = HashMap::new();
        if candidates.own.is_empty() && candidates.offers.is_empty() {
            return starts;
        }
        let positions: Vec<&Position> = candidates
            .own
            .iter()
            .chain(candidates.offers.iter().map(|o| &o.position))
            .collect();
        let facts = BrokerFacts::read(c, &self.side, &positions);
        let mut placed = Vec::new();
        for p in &candidates.own {
            match facts.judge(p, None) {
                Ok(o) => {
                    starts.insert((p.topic.clone(), p.partition), o);
                }
                Err(reason) => {
                    self.positions
                        .lock()
                        .expect("not poisoned")
                        .next
                        .remove(&(p.topic.clone(), p.partition));
                    placed.push(Placed::OwnDiscarded {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        reason,
                    });
                }
            }
        }
        let mut sets: Vec<u64> = candidates.offers.iter().map(|o| o.set).collect();
        sets.sort_unstable();
        sets.dedup();
        for set in sets {
            let members: Vec<&Offer> = candidates.offers.iter().filter(|o| o.set == set).collect();
            let verdicts: Vec<(&Offer, Result<i64, Discard>)> = members
                .iter()
                .map(|o| (*o, facts.judge(&o.position, o.cluster_id.as_deref())))
                .collect();
            let failed = verdicts.iter().find_map(|(_, v)| v.err());
            let reason = match (failed, candidates.incomplete.contains(&set)) {
                (Some(r), _) => Some(r),
                (None, true) => Some(Discard::SetIncomplete),
                (None, false) => None,
            };
            match reason {
                None => {
                    let mut paused = self.paused.lock().expect("not poisoned");
                    for (o, v) in &verdicts {
                        let key = (o.position.topic.clone(), o.position.partition);
                        starts.insert(key.clone(), v.unwrap_or(o.position.offset));
                        paused.push(key);
                    }
                    placed.push(Placed::SetAccepted { set });
                }
                Some(reason) => placed.push(Placed::SetDiscarded {
                    set,
                    reason,
                    partitions: verdicts
                        .iter()
                        .map(|(o, v)| {
                            let why = v.err().unwrap_or(Discard::SetIncomplete);
                            (o.position.topic.clone(), o.position.partition, why)
                        })
                        .collect(),
                }),
            }
        }
        self.placed.lock().expect("not poisoned").extend(placed);
        starts
    }
}

/// Saved positions that may apply to an assignment.
#[derive(Default)]
struct Candidates {
    own: Vec<Position>,
    offers: Vec<Offer>,
    /// Sets with partitions that were not in this assignment.
    incomplete: Vec<u64>,
}

/// What the broker says about the partitions of saved positions.
struct BrokerFacts {
    cluster: Option<String>,
    watermarks: HashMap<(String, i32), (i64, i64)>,
    anchors: HashMap<(String, i32), Anchor>,
}

/// How long each question to the broker may take at assignment.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl BrokerFacts {
    fn read(c: &BaseConsumer<Ctx>, side: &ClientConfig, positions: &[&Position]) -> BrokerFacts {
        let cluster = c.client().fetch_cluster_id(ASK_TIMEOUT);
        let mut watermarks = HashMap::new();
        for p in positions {
            match c.fetch_watermarks(&p.topic, p.partition, ASK_TIMEOUT) {
                Ok(w) => {
                    watermarks.insert((p.topic.clone(), p.partition), w);
                }
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "watermarks not readable")
                }
            }
        }
        // The message before each position, where one should still exist.
        let wanted: Vec<(String, i32, i64)> = positions
            .iter()
            .filter(|p| p.anchor.is_some())
            .filter(|p| {
                watermarks
                    .get(&(p.topic.clone(), p.partition))
                    .is_some_and(|(lo, hi)| p.offset > *lo && p.offset <= *hi)
            })
            .map(|p| (p.topic.clone(), p.partition, p.offset - 1))
            .fold(Vec::new(), |mut v: Vec<(String, i32, i64)>, w| {
                // Sets that share a partition offer it once each.
                if !v.iter().any(|x| x.0 == w.0 && x.1 == w.1) {
                    v.push(w);
                }
                v
            });
        let anchors = read_anchors(side, &wanted).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "anchors not readable");
            HashMap::new()
        });
        BrokerFacts {
            cluster,
            watermarks,
            anchors,
        }
    }

    fn judge(&self, p: &Position, saved_cluster: Option<&str>) -> Result<i64, Discard> {
        let key = (p.topic.clone(), p.partition);
        judge(
            p,
            saved_cluster,
            self.cluster.as_deref(),
            self.watermarks.get(&key).copied(),
            self.anchors.get(&key).copied(),
        )
    }
}

/// Reads the message at each `(topic, partition, offset)` with a consumer
/// outside the group, and returns its anchor.
fn read_anchors(
    side: &ClientConfig,
    wanted: &[(String, i32, i64)],
) -> Result<HashMap<(String, i32), Anchor>, KafkaError> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let reader: BaseConsumer = side
        .clone()
        .set("group.id", "driftd-anchor-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in wanted {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    reader.assign(&tpl)?;
    let deadline = std::time::Instant::now() + ASK_TIMEOUT;
    while out.len() < wanted.len() && std::time::Instant::now() < deadline {
        let Some(r) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = r?;
        let key = (m.topic().to_owned(), m.partition());
        let want = wanted
            .iter()
            .any(|(t, p, o)| *t == key.0 && *p == key.1 && *o == m.offset());
        if want {
            let a = Anchor::of(m.timestamp().to_millis(), m.payload().unwrap_or_default());
            out.insert(key, a);
        }
    }
    Ok(out)
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
    /// Positions reached by the current batch.
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
        let offers = start
            .offers
            .into_iter()
            .map(|o| ((o.position.topic.clone(), o.position.partition), o))
            .collect();
        let ctx = Ctx {
            positions: Mutex::new(Positions::default()),
            lag: Mutex::new(Vec::new()),
            readiness,
            rewind_ms: start.rewind_ms,
            claim: start.claim,
            offers: Mutex::new(offers),
            paused: Mutex::new(Vec::new()),
            placed: Mutex::new(Vec::new()),
            side: side_client_config(cfg),
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
            let payload = msg.payload().unwrap_or_default();
            let source = source_id(&mut self.sources, topic, partition);
            let mut any = false;
            for l in payload.split(|b| *b == b'\n') {
                if !l.iter().all(u8::is_ascii_whitespace) {
                    line(source, l);
                    any = true;
                }
            }
            if !any {
                line(source, b"");
            }
            let anchor = Some(Anchor::of(msg.timestamp().to_millis(), payload));
            match self
                .batch
                .iter_mut()
                .find(|b| b.partition == partition && b.topic == topic)
            {
                Some(b) => {
                    b.offset = next;
                    b.anchor = anchor;
                }
                None => self.batch.push(Position {
                    topic: topic.to_owned(),
                    partition,
                    offset: next,
                    anchor,
                }),
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
        for b in self.batch.drain(..) {
            let _ = tpl.add_partition_offset(&b.topic, b.partition, Offset::Offset(b.offset));
            pos.next
                .insert((b.topic, b.partition), (b.offset, b.anchor));
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

    /// The next offset of every partition whose lines were counted, with
    /// the message before it.
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
            .map(|((t, p), (o, a))| Position {
                topic: t.clone(),
                partition: *p,
                offset: *o,
                anchor: *a,
            })
            .collect();
        v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        v
    }

    /// What assignments decided about saved positions since the last call.
    pub fn take_placed(&self) -> Vec<Placed> {
        std::mem::take(&mut *self.consumer.context().placed.lock().expect("not poisoned"))
    }

    /// The cluster's id, if the broker says within `timeout` (a
    /// checkpoint records it).
    pub fn cluster_id(&self, timeout: Duration) -> Option<String> {
        self.consumer.client().fetch_cluster_id(timeout)
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
    pub fn resume_paused(&self) {
        let paused: Vec<(String, i32)> =
            std::mem::take(&mut *self.consumer.context().paused.lock().expect("not poisoned"));
        if paused.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.resume(&partition_list(&paused)) {
            tracing::error!(error = %e, "resuming restored partitions failed");
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

    fn at(offset: i64, anchor: Option<Anchor>) -> Position {
        Position {
            topic: "t".into(),
            partition: 0,
            offset,
            anchor,
        }
    }

    const A: Anchor = Anchor {
        timestamp_ms: Some(1_700_000_000_000),
        fingerprint: 42,
    };

    #[test]
    fn a_saved_position_holds_only_when_everything_checkable_agrees() {
        let p = at(3000, Some(A));
        assert_eq!(
            judge(&p, Some("c"), Some("c"), Some((0, 3000)), Some(A)),
            Ok(3000)
        );
        // Another cluster.
        assert_eq!(
            judge(&p, Some("old"), Some("new"), Some((0, 3000)), Some(A)),
            Err(Discard::Cluster)
        );
        // The topic was recreated and refilled to the same length: the
        // offset is in range, the message before it is another one.
        let other = Anchor {
            fingerprint: 43,
            ..A
        };
        assert_eq!(
            judge(&p, Some("c"), Some("c"), Some((0, 3000)), Some(other)),
            Err(Discard::Topic)
        );
        let later = Anchor {
            timestamp_ms: Some(1_800_000_000_000),
            ..A
        };
        assert_eq!(
            judge(&p, Some("c"), Some("c"), Some((0, 3000)), Some(later)),
            Err(Discard::Topic)
        );
        // Past the end, or before the start after retention.
        assert_eq!(
            judge(&p, None, None, Some((0, 1200)), Some(A)),
            Err(Discard::OutOfRange)
        );
        assert_eq!(
            judge(&p, None, None, Some((3500, 9000)), None),
            Err(Discard::OutOfRange)
        );
        // The broker could not tell.
        assert_eq!(
            judge(&p, None, None, None, Some(A)),
            Err(Discard::Unverifiable)
        );
        assert_eq!(
            judge(&p, None, None, Some((0, 3000)), None),
            Err(Discard::Unverifiable)
        );
    }

    #[test]
    fn what_cannot_be_checked_is_not_held_against_a_position() {
        // Retention removed the message before it: the range still holds.
        assert_eq!(
            judge(&at(3000, Some(A)), None, None, Some((3000, 3100)), None),
            Ok(3000)
        );
        // No anchor saved (nothing counted before it), no cluster id known.
        assert_eq!(
            judge(&at(10, None), None, Some("c"), Some((0, 10)), None),
            Ok(10)
        );
    }

    #[test]
    fn lag_past_the_end_is_negative_never_zero() {
        assert_eq!(honest_lag(3000, 1000, 900), Some(2000));
        assert_eq!(honest_lag(3000, 3000, -1001), Some(0));
        // A position beyond the end: the topic was recreated under us.
        assert_eq!(honest_lag(1200, 3000, 3000), Some(-1800));
        // Nothing stored yet: the committed offset stands in.
        assert_eq!(honest_lag(500, -1001, 200), Some(300));
        assert_eq!(honest_lag(-1, 10, 10), None);
        assert_eq!(honest_lag(10, -1001, -1001), None);
    }

    #[test]
    fn anchors_tell_messages_apart_by_time_and_content() {
        let a = Anchor::of(
            Some(5),
            b"{\"timestamp\": \"2025-12-14 10:00:00,123\", \"model_id\": \"a\"}",
        );
        let b = Anchor::of(
            Some(5),
            b"{\"timestamp\": \"2025-12-14 10:00:00,124\", \"model_id\": \"a\"}",
        );
        assert_ne!(a, b);
        assert_ne!(
            a,
            Anchor::of(
                Some(6),
                b"{\"timestamp\": \"2025-12-14 10:00:00,123\", \"model_id\": \"a\"}"
            )
        );
        assert_eq!(
            a,
            Anchor::of(
                Some(5),
                b"{\"timestamp\": \"2025-12-14 10:00:00,123\", \"model_id\": \"a\"}"
            )
        );
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
