//! Checkpoints: window state and the partition offsets it covers, on disk
//! and on a compacted Kafka topic.
//!
//! This module owns the checkpoint file and the checkpoint topic, and their
//! series (`driftd_checkpoint*`). The worker writes a checkpoint at pane
//! boundaries, taken at a single instant so that the windows hold exactly the
//! events before the recorded offsets; after a restart (or a crash, even one
//! in the middle of a write) the windows are restored and consumption resumes
//! at those offsets, so no event is counted twice or lost.
//!
//! Writes are atomic: a temporary file, fsync, rename, fsync of the
//! directory. A reader sees the old checkpoint or the new one, never half of
//! one. A checkpoint made with other window settings or against another
//! baseline version is discarded (with a log line), not trusted.
//!
//! The topic (`checkpoint.kafka_topic`) holds each model's state keyed by
//! model, with the offsets of the partitions its lines came from. When the
//! group hands a partition to another replica, that replica claims the
//! states of the models that lived on it (see [`CheckpointTopic::claim`])
//! and resumes the partition exactly where those states end.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{Gauge, IntCounterVec, Opts, Registry};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::engine::window::{WindowSpec, WindowState};
use crate::engine::Engine;

/// Where checkpoints go (`[checkpoint]`).
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    pub kafka_topic: Option<String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            enabled: true,
            dir: PathBuf::from("state"),
            kafka_topic: None,
        }
    }
}

/// File format version.
pub const CHECKPOINT_VERSION: u32 = 1;
const FILE_NAME: &str = "driftd-checkpoint.json";

/// The next offset to consume on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One window's saved panes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedWindow {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    pub baseline_version: String,
    pub state: WindowState,
}

/// A checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub schema_version: u32,
    /// The window settings the panes were counted with.
    pub window: String,
    pub group_id: String,
    pub written_at_ms: i64,
    pub offsets: Vec<PartitionOffset>,
    pub windows: Vec<SavedWindow>,
}

/// One model's state as published to the compacted checkpoint topic (keyed
/// by model), so a replica that takes over the model's partitions takes
/// over its windows: they hold exactly the events before `sources`' offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCheckpoint {
    pub schema_version: u32,
    pub window: String,
    pub group_id: String,
    pub written_at_ms: i64,
    pub model: String,
    pub baseline_version: String,
    /// The partitions the model's events came from, with the next offset.
    pub sources: Vec<PartitionOffset>,
    /// The model's window and its arms' windows.
    pub windows: Vec<SavedWindow>,
}

impl ModelCheckpoint {
    /// Usable by a consumer of `group_id` with these window settings.
    pub fn fits(&self, spec: &WindowSpec, group_id: &str) -> bool {
        self.schema_version == CHECKPOINT_VERSION
            && self.window == window_fingerprint(spec)
            && self.group_id == group_id
    }
}

/// Describes window settings; a checkpoint with another description is stale.
pub fn window_fingerprint(spec: &WindowSpec) -> String {
    match spec {
        WindowSpec::Time { length_ms, pane_ms } => format!("time:{length_ms}:{pane_ms}"),
        WindowSpec::Count { events, panes } => format!("count:{events}:{panes}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write checkpoint {path}: {source} (check that the checkpoint directory is writable, e.g. a mounted volume)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt ({source}); it was moved aside to {moved}")]
    Corrupt {
        path: PathBuf,
        moved: PathBuf,
        source: serde_json::Error,
    },
    #[error("checkpoint {path} is stale: {why}")]
    Stale { path: PathBuf, why: String },
}

/// A directory holding the checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub fn new(dir: &Path) -> CheckpointStore {
        CheckpointStore {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Reads the checkpoint, if there is one usable for these settings.
    pub fn load(
        &self,
        spec: &WindowSpec,
        group_id: &str,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        let cp: Checkpoint = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(source) => {
                // Keep it for a post-mortem, but out of the way of the next start.
                let moved = path.with_extension("json.corrupt");
                let _ = std::fs::rename(&path, &moved);
                return Err(CheckpointError::Corrupt {
                    path,
                    moved,
                    source,
                });
            }
        };
        if cp.schema_version != CHECKPOINT_VERSION {
            return Err(CheckpointError::Stale {
                path,
                why: format!(
                    "schema_version {} (this driftd writes {CHECKPOINT_VERSION})",
                    cp.schema_version
                ),
            });
        }
        let want = window_fingerprint(spec);
        if cp.window != want {
            return Err(CheckpointError::Stale {
                path,
                why: format!(
                    "made with window {} but the window is now {want}",
                    cp.window
                ),
            });
        }
        if cp.group_id != group_id {
            return Err(CheckpointError::Stale {
                path,
                why: format!(
                    "made for consumer group {:?}, not {group_id:?}",
                    cp.group_id
                ),
            });
        }
        Ok(Some(cp))
    }

    /// Writes the checkpoint atomically.
    pub fn save(&self, cp: &Checkpoint) -> Result<u64, CheckpointError> {
        let path = self.path();
        let werr = |source| CheckpointError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(werr)?;
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let body = serde_json::to_vec(cp).map_err(|e| werr(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(werr)?;
        f.write_all(&body).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(werr)?;
        // The rename itself must survive a power cut.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(body.len() as u64)
    }
}

/// Builds the checkpoint of the engine's windows and the positions their
/// lines end at, at one instant.
pub fn checkpoint_of(
    engine: &Engine,
    positions: &[(String, i32, i64)],
    spec: &WindowSpec,
    group: &str,
    now_ms: i64,
) -> Checkpoint {
    Checkpoint {
        schema_version: CHECKPOINT_VERSION,
        window: window_fingerprint(spec),
        group_id: group.to_owned(),
        written_at_ms: now_ms,
        offsets: positions
            .iter()
            .map(|(topic, partition, offset)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect(),
        windows: saved_windows(engine),
    }
}

fn saved_windows(engine: &Engine) -> Vec<SavedWindow> {
    engine
        .window_states()
        .into_iter()
        .map(|(model, arm, baseline_version, state)| SavedWindow {
            model,
            arm,
            baseline_version,
            state,
        })
        .collect()
}

/// Restores saved windows into the engine; returns how many took. A window
/// the engine refuses (its baseline changed or went away) is logged and
/// left out.
pub fn restore_windows(engine: &mut Engine, windows: &[SavedWindow], written_at_ms: i64) -> usize {
    let mut restored = 0;
    for w in windows {
        match engine.restore_window(
            &w.model,
            w.arm.as_deref(),
            &w.baseline_version,
            &w.state,
            written_at_ms,
        ) {
            Ok(()) => restored += 1,
            Err(why) => {
                tracing::warn!(model = %w.model, %why, "checkpointed window discarded")
            }
        }
    }
    restored
}

/// The compacted checkpoint topic: each model's state, keyed by model, so
/// a replica that is assigned a model's partitions takes its windows over.
pub struct CheckpointTopic {
    client: ClientConfig,
    topic: String,
    producer: Option<BaseProducer>,
    spec: WindowSpec,
    group: String,
    /// Model states claimed at assignment, waiting for the worker to
    /// restore them (see [`CheckpointTopic::claim`]).
    claimed: Mutex<Vec<ModelCheckpoint>>,
}

/// Model states read from the checkpoint topic at most (the engine's own
/// cap, `limits.max_models`, is at most this).
const MAX_TAKEOVER_MODELS: usize = 100_000;

impl CheckpointTopic {
    /// `client` reaches the cluster (brokers and security settings).
    pub fn new(
        client: ClientConfig,
        topic: &str,
        spec: WindowSpec,
        group: &str,
    ) -> CheckpointTopic {
        let producer = match client
            .clone()
            .set("linger.ms", "50")
            .create::<BaseProducer>()
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot create the checkpoint topic producer; local checkpoints only");
                None
            }
        };
        CheckpointTopic {
            client,
            topic: topic.to_owned(),
            producer,
            spec,
            group: group.to_owned(),
            claimed: Mutex::new(Vec::new()),
        }
    }

    /// Publishes every model's state. `partition_of` names a model's
    /// sources (the engine's opaque ids) as partitions.
    pub fn publish<'a>(
        &self,
        engine: &Engine,
        positions: &[(String, i32, i64)],
        partition_of: impl Fn(u32) -> Option<(&'a str, i32)>,
        now_ms: i64,
    ) {
        let Some(p) = &self.producer else {
            return;
        };
        let mut windows: HashMap<String, Vec<SavedWindow>> = HashMap::new();
        for w in saved_windows(engine) {
            windows.entry(w.model.clone()).or_default().push(w);
        }
        for m in engine.models() {
            let sources = m
                .sources
                .iter()
                .filter_map(|s| partition_of(*s))
                .filter_map(|(t, part)| {
                    positions
                        .iter()
                        .find(|(pt, pp, _)| *pp == part && pt == t)
                        .map(|(_, _, o)| PartitionOffset {
                            topic: t.to_owned(),
                            partition: part,
                            offset: *o,
                        })
                })
                .collect();
            let rec = ModelCheckpoint {
                schema_version: CHECKPOINT_VERSION,
                window: window_fingerprint(&self.spec),
                group_id: self.group.clone(),
                written_at_ms: now_ms,
                model: m.name.to_string(),
                baseline_version: m.layout.baseline.version.clone(),
                sources,
                windows: windows.remove(m.name.as_ref()).unwrap_or_default(),
            };
            let Ok(body) = serde_json::to_vec(&rec) else {
                continue;
            };
            let r = BaseRecord::to(&self.topic)
                .key(m.name.as_ref())
                .payload(&body);
            if let Err((e, _)) = p.send(r) {
                tracing::warn!(model = %m.name, error = %e, "model state not published to the checkpoint topic");
            }
        }
    }

    /// Serves the producer's delivery callbacks; call often.
    pub fn poll(&self) {
        if let Some(p) = &self.producer {
            p.poll(Duration::ZERO);
        }
    }

    /// Waits for what was published to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Some(p) = &self.producer {
            if let Err(e) = p.flush(timeout) {
                tracing::warn!(error = %e, "model states not all published to the checkpoint topic");
            }
        }
    }

    /// For partitions this replica knows nothing of, finds the states of
    /// the models that lived on them. A model is taken over only if every
    /// partition it came from is among `unknown` and all agree on one
    /// checkpoint; returns the offsets those partitions start at, and keeps
    /// the states for [`CheckpointTopic::take_claimed`].
    pub fn claim(&self, unknown: &[(String, i32)]) -> Vec<(String, i32, i64)> {
        let records = match read_model_checkpoints(
            &self.client,
            &self.topic,
            Duration::from_secs(5),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "checkpoint topic not readable; partitions start without state");
                return Vec::new();
            }
        };
        let (offsets, taken) = claimable(records.into_values(), unknown, &self.spec, &self.group);
        if !taken.is_empty() {
            tracing::info!(
                models = taken.len(),
                partitions = offsets.len(),
                "taking over model state from the checkpoint topic"
            );
            self.claimed.lock().expect("not poisoned").extend(taken);
        }
        offsets
    }

    /// The model states claimed since the last call.
    pub fn take_claimed(&self) -> Vec<ModelCheckpoint> {
        std::mem::take(&mut *self.claimed.lock().expect("not poisoned"))
    }
}

/// Which model states can be taken over when `unknown` partitions come to
/// this replica: those that fit these settings and whose every source is
/// among them, consistently (two models from one partition must agree on
/// its offset). Returns the start offsets and the states.
fn claimable(
    records: impl Iterator<Item = ModelCheckpoint>,
    unknown: &[(String, i32)],
    spec: &WindowSpec,
    group: &str,
) -> (Vec<(String, i32, i64)>, Vec<ModelCheckpoint>) {
    let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
    let mut taken = Vec::new();
    for rec in records {
        if !rec.fits(spec, group) || rec.sources.is_empty() {
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
    let mut offsets: Vec<(String, i32, i64)> =
        offsets.into_iter().map(|((t, p), o)| (t, p, o)).collect();
    offsets.sort();
    (offsets, taken)
}

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

/// Checkpoint writes, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub ok: u64,
    pub failed: u64,
    pub last_ok_ms: Option<i64>,
}

/// The checkpoint series: `driftd_checkpoint*`, set once per evaluation.
pub struct CheckpointMetrics {
    writes: IntCounterVec,
    last_success: Gauge,
    prev: CheckpointStats,
}

impl CheckpointMetrics {
    pub fn new(r: &Registry) -> Result<CheckpointMetrics, prometheus::Error> {
        let writes = IntCounterVec::new(
            Opts::new("driftd_checkpoints_total", "Checkpoint writes, by outcome"),
            &["outcome"],
        )?;
        let last_success = Gauge::new(
            "driftd_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last checkpoint written",
        )?;
        r.register(Box::new(writes.clone()))?;
        r.register(Box::new(last_success.clone()))?;
        for o in ["ok", "error"] {
            writes.with_label_values(&[o]);
        }
        Ok(CheckpointMetrics {
            writes,
            last_success,
            prev: CheckpointStats::default(),
        })
    }

    pub fn update(&mut self, s: &CheckpointStats) {
        self.writes
            .with_label_values(&["ok"])
            .inc_by(s.ok.saturating_sub(self.prev.ok));
        self.writes
            .with_label_values(&["error"])
            .inc_by(s.failed.saturating_sub(self.prev.failed));
        if let Some(t) = s.last_ok_ms {
            self.last_success.set(t as f64 / 1000.0);
        }
        self.prev = *s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::window::WindowCounters;

    fn cp() -> Checkpoint {
        Checkpoint {
            schema_version: CHECKPOINT_VERSION,
            window: window_fingerprint(&WindowSpec::default()),
            group_id: "g".into(),
            written_at_ms: 1,
            offsets: vec![PartitionOffset {
                topic: "t".into(),
                partition: 3,
                offset: 42,
            }],
            windows: vec![SavedWindow {
                model: "m".into(),
                arm: None,
                baseline_version: "v".into(),
                state: WindowState {
                    head: Some(7),
                    seq: 3,
                    counters: WindowCounters::default(),
                    panes: vec![],
                },
            }],
        }
    }

    #[test]
    fn round_trip_and_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&dir.path().join("sub"));
        assert!(store.load(&WindowSpec::default(), "g").unwrap().is_none());
        store.save(&cp()).unwrap();
        assert_eq!(store.load(&WindowSpec::default(), "g").unwrap(), Some(cp()));
        let other = WindowSpec::Time {
            length_ms: 60_000,
            pane_ms: 1000,
        };
        assert!(matches!(
            store.load(&other, "g"),
            Err(CheckpointError::Stale { .. })
        ));
        assert!(matches!(
            store.load(&WindowSpec::default(), "h"),
            Err(CheckpointError::Stale { .. })
        ));
    }

    #[test]
    fn a_torn_write_leaves_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.save(&cp()).unwrap();
        // A crash mid-write leaves only a partial temporary file behind.
        std::fs::write(
            dir.path().join(format!(".{FILE_NAME}.tmp")),
            b"{\"schema_ver",
        )
        .unwrap();
        assert_eq!(store.load(&WindowSpec::default(), "g").unwrap(), Some(cp()));
    }

    #[test]
    fn a_corrupt_checkpoint_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        std::fs::write(store.path(), b"garbage").unwrap();
        assert!(matches!(
            store.load(&WindowSpec::default(), "g"),
            Err(CheckpointError::Corrupt { .. })
        ));
        assert!(store.load(&WindowSpec::default(), "g").unwrap().is_none());
    }
}
