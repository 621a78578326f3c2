//! Checkpoints: window state and the partition positions it covers, on disk
//! and on a compacted Kafka topic.
//!
//! This module owns the checkpoint file and the checkpoint topic, and their
//! series (`driftd_checkpoint*`). The worker writes a checkpoint at pane
//! boundaries, taken at a single instant so that the windows hold exactly the
//! events before the recorded positions. After a restart (or a crash, even
//! one in the middle of a write) the windows are restored and consumption
//! resumes at those positions, so no event is counted twice or lost.
//!
//! A checkpoint is bound to what it describes, and checked before it is
//! trusted:
//! - the Kafka cluster (its id) it was written against;
//! - each partition's position, with the message just before it (its Kafka
//!   timestamp and a hash of its start): the broker must still have that
//!   message there, and the position must lie within the partition's
//!   watermarks. Another cluster, a topic deleted and recreated, or a
//!   partition whose data was replaced all fail this;
//! - the window settings, the consumer group and the baseline versions.
//!
//! Windows and the positions they cover are restored together or not at
//! all: a [`RestoreSet`] is the smallest group of models and partitions that
//! cover each other (a model's windows cover every partition its lines came
//! from; a partition's position covers every model on it). A set is judged
//! when the group first assigns one of its partitions; if any check fails,
//! or a partition went to another member, the whole set is discarded,
//! loudly (a warning naming the reason and `driftd_checkpoint_discarded_total
//! {reason}`), and its partitions start at the committed offset or the
//! rewind. Restart, takeover and rebalance all go through that one judgment
//! (`ingest::judge`).
//!
//! Writes are atomic: a temporary file, fsync, rename, fsync of the
//! directory. A reader sees the old checkpoint or the new one, never half of
//! one.
//!
//! The topic (`checkpoint.kafka_topic`) holds each model's state keyed by
//! model, with the positions of the partitions its lines came from. When the
//! group hands a partition to another replica, that replica claims the
//! states of the models that lived on it (see [`CheckpointTopic::claim`])
//! and, once they are judged, resumes the partition exactly where they end.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::engine::{Engine, ModelState};

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

/// Format version of the file and of the topic's records. Version 1 had no
/// cluster id, anchors or per-model sources: such a checkpoint is stale.
pub(crate) const CHECKPOINT_VERSION: u32 = 2;
const FILE_NAME: &str = "driftd-checkpoint.json";

/// A partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct PartitionRef {
    pub topic: String,
    pub partition: i32,
}

/// The next offset to consume on one partition, and the message before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka timestamp of the message at `offset - 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_timestamp_ms: Option<i64>,
    /// A hash of that message (see `ingest::Anchor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_fingerprint: Option<u64>,
}

impl PartitionOffset {
    fn key(&self) -> PartitionRef {
        PartitionRef {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }
}

/// One window's saved panes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedWindow {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    pub baseline_version: String,
    pub state: WindowState,
}

/// One model's windows and the partitions they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedModel {
    pub model: String,
    pub baseline_version: String,
    /// The partitions the model's lines came from; `None` when that is not
    /// known (more partitions than the engine remembers, or none seen since
    /// a restore): then every partition of the checkpoint.
    pub sources: Option<Vec<PartitionRef>>,
    pub windows: Vec<SavedWindow>,
}

/// A checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub schema_version: u32,
    /// The Kafka cluster the positions are on (`None` if the broker did not
    /// say).
    pub cluster_id: Option<String>,
    /// The window settings the panes were counted with.
    pub window: String,
    pub group_id: String,
    pub written_at_ms: i64,
    pub partitions: Vec<PartitionOffset>,
    pub models: Vec<SavedModel>,
}

/// One model's state as published to the compacted checkpoint topic (keyed
/// by model), so a replica that takes over the model's partitions takes
/// over its windows: they hold exactly the events before `sources`' offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelCheckpoint {
    pub schema_version: u32,
    pub cluster_id: Option<String>,
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
    pub(crate) fn fits(&self, spec: &WindowSpec, group_id: &str) -> bool {
        self.schema_version == CHECKPOINT_VERSION
            && self.window == window_fingerprint(spec)
            && self.group_id == group_id
    }
}

/// Describes window settings; a checkpoint with another description is stale.
pub(crate) fn window_fingerprint(spec: &WindowSpec) -> String {
    match spec {
        WindowSpec::Time { length_ms, pane_ms } => format!("time:{length_ms}:{pane_ms}"),
        WindowSpec::Count { events, panes } => format!("count:{events}:{panes}"),
    }
}

/// Models and partitions restored together or not at all (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RestoreSet {
    pub id: u64,
    pub cluster_id: Option<String>,
    pub written_at_ms: i64,
    pub partitions: Vec<PartitionOffset>,
    pub models: Vec<SavedModel>,
}

impl RestoreSet {
    pub(crate) fn model_names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.model.as_str()).collect()
    }
}

impl Checkpoint {
    /// Splits the checkpoint into the sets that must be restored together:
    /// partitions joined by the models that came from more than one of
    /// them. Set ids count from `first_id`.
    pub(crate) fn into_sets(self, first_id: u64) -> Vec<RestoreSet> {
        let n = self.partitions.len();
        let index: HashMap<PartitionRef, usize> = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key(), i))
            .collect();
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        // Each model joins the partitions it covers; a model whose sources
        // are unknown, or not among the checkpoint's positions, covers all.
        let covers: Vec<Vec<usize>> = self
            .models
            .iter()
            .map(|m| {
                let known: Option<Vec<usize>> = m.sources.as_ref().and_then(|s| {
                    s.iter()
                        .map(|p| index.get(p).copied())
                        .collect::<Option<Vec<_>>>()
                });
                match known {
                    Some(v) if !v.is_empty() => v,
                    _ => (0..n).collect(),
                }
            })
            .collect();
        for c in &covers {
            for w in c.windows(2) {
                let (a, b) = (root(&mut parent, w[0]), root(&mut parent, w[1]));
                parent[a] = b;
            }
        }
        let mut sets: Vec<RestoreSet> = Vec::new();
        let mut set_of_root: HashMap<usize, usize> = HashMap::new();
        for (i, p) in self.partitions.iter().enumerate() {
            let r = root(&mut parent, i);
            let s = *set_of_root.entry(r).or_insert_with(|| {
                sets.push(RestoreSet {
                    id: first_id + sets.len() as u64,
                    cluster_id: self.cluster_id.clone(),
                    written_at_ms: self.written_at_ms,
                    partitions: Vec::new(),
                    models: Vec::new(),
                });
                sets.len() - 1
            });
            sets[s].partitions.push(p.clone());
        }
        for (m, c) in self.models.into_iter().zip(covers) {
            // A checkpoint without positions cannot bind its windows to
            // anything: they are not restored.
            if let Some(&first) = c.first() {
                let r = root(&mut parent, first);
                sets[set_of_root[&r]].models.push(m);
            }
        }
        sets
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
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
pub(crate) struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub(crate) fn new(dir: &Path) -> CheckpointStore {
        CheckpointStore {
            dir: dir.to_owned(),
        }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Reads the checkpoint, if there is one usable for these settings.
    pub(crate) fn load(
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
        // The version first: an older format is stale, not corrupt.
        #[derive(Deserialize)]
        struct Header {
            schema_version: u32,
        }
        let parsed = serde_json::from_slice::<Header>(&bytes).and_then(|h| {
            if h.schema_version == CHECKPOINT_VERSION {
                serde_json::from_slice::<Checkpoint>(&bytes).map(Ok)
            } else {
                Ok(Err(h.schema_version))
            }
        });
        let cp = match parsed {
            Ok(Ok(cp)) => cp,
            Ok(Err(version)) => {
                return Err(CheckpointError::Stale {
                    path,
                    why: format!(
                        "schema_version {version} (this driftd writes {CHECKPOINT_VERSION})"
                    ),
                })
            }
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

    /// Writes the checkpoint atomically: a [`Checkpoint`], or one
    /// [`Streamed`] from the engine.
    pub(crate) fn save(&self, cp: &impl Serialize) -> Result<u64, CheckpointError> {
        let path = self.path();
        let werr = |source| CheckpointError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(werr)?;
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        // Streamed to the file: a checkpoint as big as the windows is never
        // held a second time as text.
        let f = std::fs::File::create(&tmp).map_err(werr)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        serde_json::to_writer(&mut w, cp).map_err(|e| werr(std::io::Error::other(e)))?;
        w.flush().map_err(werr)?;
        let f = w.into_inner().map_err(|e| werr(e.into_error()))?;
        let written = f.metadata().map(|m| m.len()).unwrap_or(0);
        f.sync_all().map_err(werr)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(werr)?;
        // The rename itself must survive a power cut.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(written)
    }
}

/// The checkpoint of the engine's windows and the positions their lines
/// end at, at one instant, ready to be written: each model's windows are
/// copied and serialized in turn while it is written ([`Streamed`]), so
/// writing holds one model's panes beside the engine's, not every model's.
/// At 100 models x 50 features with arms a whole copy was 35 MB: the
/// daemon's RSS peaked at 80 MiB at each pane boundary, against 40 to 47
/// between them. `partition_of` names the engine's source ids (see
/// `Engine::set_source`) as partitions.
pub(crate) fn checkpoint_of<'a, 'e>(
    engine: &'e Engine,
    positions: Vec<PartitionOffset>,
    partition_of: &'e dyn Fn(u32) -> Option<(&'a str, i32)>,
    cluster_id: Option<String>,
    spec: &WindowSpec,
    group: &str,
    now_ms: i64,
) -> Streamed<'a, 'e> {
    Streamed {
        header: Checkpoint {
            schema_version: CHECKPOINT_VERSION,
            cluster_id,
            window: window_fingerprint(spec),
            group_id: group.to_owned(),
            written_at_ms: now_ms,
            partitions: positions,
            models: Vec::new(),
        },
        engine,
        partition_of,
    }
}

/// A [`Checkpoint`] whose models are read from the engine as it is
/// serialized: the same JSON as the checkpoint with every model in it.
pub(crate) struct Streamed<'a, 'e> {
    /// Everything but the models.
    header: Checkpoint,
    engine: &'e Engine,
    partition_of: &'e dyn Fn(u32) -> Option<(&'a str, i32)>,
}

impl Streamed<'_, '_> {
    /// The whole checkpoint in memory (tests).
    #[cfg(test)]
    pub(crate) fn collect(&self) -> Checkpoint {
        Checkpoint {
            models: saved_models(self.engine, self.partition_of).collect(),
            ..self.header.clone()
        }
    }
}

impl Serialize for Streamed<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// The models, one at a time.
        struct Models<'x, 'a, 'e>(&'x Streamed<'a, 'e>);
        impl Serialize for Models<'_, '_, '_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(saved_models(self.0.engine, self.0.partition_of))
            }
        }
        // The fields of `Checkpoint`, in its order.
        let h = &self.header;
        let mut st = s.serialize_struct("Checkpoint", 7)?;
        st.serialize_field("schema_version", &h.schema_version)?;
        st.serialize_field("cluster_id", &h.cluster_id)?;
        st.serialize_field("window", &h.window)?;
        st.serialize_field("group_id", &h.group_id)?;
        st.serialize_field("written_at_ms", &h.written_at_ms)?;
        st.serialize_field("partitions", &h.partitions)?;
        st.serialize_field("models", &Models(self))?;
        st.end()
    }
}

/// Every model's windows, with the partitions they came from, in the
/// models' name order, each built when it is asked for.
fn saved_models<'a, 'e>(
    engine: &'e Engine,
    partition_of: &'e dyn Fn(u32) -> Option<(&'a str, i32)>,
) -> impl Iterator<Item = SavedModel> + use<'a, 'e> {
    let mut models: Vec<&ModelState> = engine.models().collect();
    models.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    models.into_iter().map(move |m| {
        let sources: Option<Vec<PartitionRef>> = if m.sources_complete() {
            m.sources
                .iter()
                .map(|s| {
                    partition_of(*s).map(|(t, p)| PartitionRef {
                        topic: t.to_owned(),
                        partition: p,
                    })
                })
                .collect()
        } else {
            None
        };
        let version = &m.layout.baseline.version;
        SavedModel {
            model: m.name.to_string(),
            baseline_version: version.clone(),
            sources: sources.filter(|s| !s.is_empty()),
            windows: m
                .window_states()
                .into_iter()
                .map(|(arm, state)| SavedWindow {
                    model: m.name.to_string(),
                    arm,
                    baseline_version: version.clone(),
                    state,
                })
                .collect(),
        }
    })
}

/// Restores a set's windows into the engine; returns the windows that took.
/// A window the engine refuses (its baseline changed since) is logged and
/// left out; a model already tracked here keeps its own windows (they hold
/// lines counted since the start, which a restore would overwrite).
pub(crate) fn restore_set(engine: &mut Engine, set: &RestoreSet) -> usize {
    let mut restored = 0;
    for m in &set.models {
        if engine.model(&m.model).is_some() {
            tracing::warn!(model = %m.model, "model already tracked here; its checkpointed windows are not restored");
            continue;
        }
        for w in &m.windows {
            match engine.restore_window(
                &w.model,
                w.arm.as_deref(),
                &w.baseline_version,
                &w.state,
                set.written_at_ms,
            ) {
                Ok(()) => restored += 1,
                Err(why) => {
                    tracing::warn!(model = %w.model, %why, "checkpointed window discarded")
                }
            }
        }
    }
    restored
}

/// The models of a set whose baseline is not the one their windows were
/// counted against (or that have none any more): their windows cannot be
/// restored, so neither can the set's positions.
pub(crate) fn changed_baselines<'s>(engine: &Engine, set: &'s RestoreSet) -> Vec<&'s str> {
    set.models
        .iter()
        .filter(|m| engine.baseline_version(&m.model) != Some(m.baseline_version.as_str()))
        .map(|m| m.model.as_str())
        .collect()
}

/// The compacted checkpoint topic: each model's state, keyed by model, so
/// a replica that is assigned a model's partitions takes its windows over.
pub(crate) struct CheckpointTopic {
    client: ClientConfig,
    topic: String,
    producer: Option<BaseProducer>,
    spec: WindowSpec,
    group: String,
    /// Each model's baseline version here: a state counted against another
    /// version is not claimed.
    versions: Mutex<HashMap<String, String>>,
    /// Sets claimed at an assignment, waiting for the judgment and the
    /// worker's restore.
    claimed: Mutex<HashMap<u64, RestoreSet>>,
    next_set: AtomicU64,
    /// Records not claimed because their baseline changed, for the worker
    /// to count.
    stale: AtomicU64,
}

/// Model states read from the checkpoint topic at most (the engine's own
/// cap, `limits.max_models`, is at most this).
const MAX_TAKEOVER_MODELS: usize = 100_000;

/// Set ids of claims start here, far from those of a checkpoint file.
const FIRST_CLAIM_SET: u64 = 1 << 40;

impl CheckpointTopic {
    /// `client` reaches the cluster (brokers and security settings).
    pub(crate) fn new(
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
            versions: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashMap::new()),
            next_set: AtomicU64::new(FIRST_CLAIM_SET),
            stale: AtomicU64::new(0),
        }
    }

    /// Publishes every model's state. `positions` are the partitions'
    /// positions now; `partition_of` names the engine's source ids.
    pub(crate) fn publish<'a>(
        &self,
        engine: &Engine,
        positions: &[PartitionOffset],
        partition_of: &dyn Fn(u32) -> Option<(&'a str, i32)>,
        cluster_id: Option<&str>,
        now_ms: i64,
    ) {
        let Some(p) = &self.producer else {
            return;
        };
        for m in saved_models(engine, partition_of) {
            let sources = match &m.sources {
                Some(s) => positions
                    .iter()
                    .filter(|p| s.contains(&p.key()))
                    .cloned()
                    .collect(),
                // Spread over more partitions than are remembered: another
                // replica could never take all of them over at once.
                None => Vec::new(),
            };
            let rec = ModelCheckpoint {
                schema_version: CHECKPOINT_VERSION,
                cluster_id: cluster_id.map(str::to_owned),
                window: window_fingerprint(&self.spec),
                group_id: self.group.clone(),
                written_at_ms: now_ms,
                model: m.model,
                baseline_version: m.baseline_version,
                sources,
                windows: m.windows,
            };
            let Ok(body) = serde_json::to_vec(&rec) else {
                continue;
            };
            let r = BaseRecord::to(&self.topic)
                .key(rec.model.as_str())
                .payload(&body);
            if let Err((e, _)) = p.send(r) {
                tracing::warn!(model = %rec.model, error = %e, "model state not published to the checkpoint topic");
            }
        }
    }

    /// Serves the producer's delivery callbacks; call often.
    pub(crate) fn poll(&self) {
        if let Some(p) = &self.producer {
            p.poll(Duration::ZERO);
        }
    }

    /// Waits for what was published to be delivered (at shutdown).
    pub(crate) fn flush(&self, timeout: Duration) {
        if let Some(p) = &self.producer {
            if let Err(e) = p.flush(timeout) {
                tracing::warn!(error = %e, "model states not all published to the checkpoint topic");
            }
        }
    }

    /// Remembers the baseline versions in force (after a load or reload).
    pub(crate) fn set_versions(&self, engine: &Engine) {
        let v = engine
            .baselines()
            .map(|b| (b.model.clone(), b.version.clone()))
            .collect();
        *self.versions.lock().expect("not poisoned") = v;
    }

    /// For partitions this replica knows nothing of, finds the states of
    /// the models that lived on them: each becomes a set (a model taken
    /// over only if every partition it came from is among `unknown`), kept
    /// for [`CheckpointTopic::take_claimed`]. Returns each set's positions,
    /// to be judged: `(set, cluster id, position)`.
    pub(crate) fn claim(
        &self,
        unknown: &[(String, i32)],
    ) -> Vec<(u64, Option<String>, PartitionOffset)> {
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
        let versions = self.versions.lock().expect("not poisoned").clone();
        let (taken, stale) = claimable(
            records.into_values(),
            unknown,
            &self.spec,
            &self.group,
            &versions,
        );
        self.stale.fetch_add(stale, Ordering::Relaxed);
        if taken.is_empty() {
            return Vec::new();
        }
        tracing::info!(
            models = taken.len(),
            "model states found on the checkpoint topic for newly assigned partitions"
        );
        // Models that share a partition stand or fall together, as in a file.
        let first = self
            .next_set
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        let mut out = Vec::new();
        let mut claimed = self.claimed.lock().expect("not poisoned");
        for set in claimed_checkpoint(taken).into_sets(first) {
            for p in &set.partitions {
                out.push((set.id, set.cluster_id.clone(), p.clone()));
            }
            claimed.insert(set.id, set);
        }
        out
    }

    /// A claimed set, once judged (accepted or not).
    pub(crate) fn take_claimed(&self, set: u64) -> Option<RestoreSet> {
        self.claimed.lock().expect("not poisoned").remove(&set)
    }

    /// Records not claimed because the baseline changed, since the last call.
    pub(crate) fn take_stale(&self) -> u64 {
        self.stale.swap(0, Ordering::Relaxed)
    }
}

/// Claimed model states as one checkpoint: their partitions (claimable
/// already checked that they agree on the offsets) and their models.
fn claimed_checkpoint(records: Vec<ModelCheckpoint>) -> Checkpoint {
    let mut partitions: Vec<PartitionOffset> = Vec::new();
    let mut models = Vec::new();
    let first = &records[0];
    let mut cp = Checkpoint {
        schema_version: CHECKPOINT_VERSION,
        cluster_id: first.cluster_id.clone(),
        window: first.window.clone(),
        group_id: first.group_id.clone(),
        written_at_ms: records.iter().map(|r| r.written_at_ms).min().unwrap_or(0),
        partitions: Vec::new(),
        models: Vec::new(),
    };
    for rec in records {
        for s in &rec.sources {
            if !partitions.iter().any(|p| p.key() == s.key()) {
                partitions.push(s.clone());
            }
        }
        models.push(SavedModel {
            model: rec.model,
            baseline_version: rec.baseline_version,
            sources: Some(rec.sources.iter().map(PartitionOffset::key).collect()),
            windows: rec.windows,
        });
    }
    cp.partitions = partitions;
    cp.models = models;
    cp
}

/// Which model states can be taken over when `unknown` partitions come to
/// this replica: those that fit these settings and baselines and whose every
/// source is among them, consistently (two models from one partition must
/// agree on its offset). Returns them, and how many were passed over for a
/// changed baseline.
fn claimable(
    records: impl Iterator<Item = ModelCheckpoint>,
    unknown: &[(String, i32)],
    spec: &WindowSpec,
    group: &str,
    versions: &HashMap<String, String>,
) -> (Vec<ModelCheckpoint>, u64) {
    let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
    let mut taken = Vec::new();
    let mut stale = 0;
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
        if versions.get(&rec.model) != Some(&rec.baseline_version) {
            stale += 1;
            tracing::warn!(model = %rec.model, "checkpointed model state not taken over: it was counted against another baseline version");
            continue;
        }
        for s in &rec.sources {
            offsets.insert((s.topic.clone(), s.partition), s.offset);
        }
        taken.push(rec);
    }
    (taken, stale)
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

/// Why a part of a checkpoint was not restored: the labels of
/// `driftd_checkpoint_discarded_total{reason}`. The first five are the
/// broker's judgment (`ingest::Discard`), then this module's own.
pub(crate) const DISCARD_REASONS: [&str; 8] = [
    "cluster",
    "topic",
    "offset_out_of_range",
    "unverifiable",
    "set_incomplete",
    "baseline_changed",
    "stale",
    "corrupt",
];

/// Checkpoint writes and discards, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub ok: u64,
    pub failed: u64,
    pub last_ok_ms: Option<i64>,
    /// Per [`DISCARD_REASONS`]: partitions (or whole files, for `stale` and
    /// `corrupt`) not restored.
    pub discarded: [u64; DISCARD_REASONS.len()],
}

impl CheckpointStats {
    /// Counts `n` discarded parts for `reason` (one of [`DISCARD_REASONS`]).
    pub fn discard(&mut self, reason: &str, n: u64) {
        if let Some(i) = DISCARD_REASONS.iter().position(|r| *r == reason) {
            self.discarded[i] += n;
        }
    }

    pub fn discarded(&self, reason: &str) -> u64 {
        DISCARD_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.discarded[i])
    }
}

/// The checkpoint series: `driftd_checkpoint*`, set once per evaluation.
pub(crate) struct CheckpointMetrics {
    writes: IntCounterVec,
    discarded: IntCounterVec,
    last_success: Gauge,
    prev: CheckpointStats,
}

impl CheckpointMetrics {
    pub(crate) fn new(r: &Registry) -> Result<CheckpointMetrics, prometheus::Error> {
        let writes = IntCounterVec::new(
            Opts::new("driftd_checkpoints_total", "Checkpoint writes, by outcome"),
            &["outcome"],
        )?;
        let discarded = IntCounterVec::new(
            Opts::new(
                "driftd_checkpoint_discarded_total",
                "Parts of a checkpoint not restored (partitions, or whole files for stale and corrupt), by reason",
            ),
            &["reason"],
        )?;
        let last_success = Gauge::new(
            "driftd_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last checkpoint written",
        )?;
        r.register(Box::new(writes.clone()))?;
        r.register(Box::new(discarded.clone()))?;
        r.register(Box::new(last_success.clone()))?;
        for o in ["ok", "error"] {
            writes.with_label_values(&[o]);
        }
        for reason in DISCARD_REASONS {
            discarded.with_label_values(&[reason]);
        }
        Ok(CheckpointMetrics {
            writes,
            discarded,
            last_success,
            prev: CheckpointStats::default(),
        })
    }

    pub(crate) fn update(&mut self, s: &CheckpointStats) {
        self.writes
            .with_label_values(&["ok"])
            .inc_by(s.ok.saturating_sub(self.prev.ok));
        self.writes
            .with_label_values(&["error"])
            .inc_by(s.failed.saturating_sub(self.prev.failed));
        for (i, reason) in DISCARD_REASONS.iter().enumerate() {
            self.discarded
                .with_label_values(&[reason])
                .inc_by(s.discarded[i].saturating_sub(self.prev.discarded[i]));
        }
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

    fn at(topic: &str, partition: i32, offset: i64) -> PartitionOffset {
        PartitionOffset {
            topic: topic.into(),
            partition,
            offset,
            anchor_timestamp_ms: Some(1),
            anchor_fingerprint: Some(7),
        }
    }

    fn model(name: &str, sources: Option<&[i32]>) -> SavedModel {
        SavedModel {
            model: name.into(),
            baseline_version: "v".into(),
            sources: sources.map(|s| {
                s.iter()
                    .map(|p| PartitionRef {
                        topic: "t".into(),
                        partition: *p,
                    })
                    .collect()
            }),
            windows: vec![SavedWindow {
                model: name.into(),
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

    fn cp() -> Checkpoint {
        Checkpoint {
            schema_version: CHECKPOINT_VERSION,
            cluster_id: Some("c1".into()),
            window: window_fingerprint(&WindowSpec::default()),
            group_id: "g".into(),
            written_at_ms: 1,
            partitions: vec![at("t", 3, 42)],
            models: vec![model("m", Some(&[3]))],
        }
    }

    #[test]
    fn a_streamed_checkpoint_is_the_whole_one_and_loads_back() {
        use crate::engine::EngineConfig;
        let mut e = Engine::new(
            EngineConfig {
                auto_baseline: Some(crate::engine::AutoBaseline { after_events: 50 }),
                ..EngineConfig::default()
            },
            vec![],
        );
        let now = 1_800_000_000_000i64;
        for (i, model) in ["b", "a", "c"].iter().enumerate() {
            e.set_source(Some(i as u32));
            for k in 0..120 {
                let line = format!(
                    r#"{{"model_id":"{model}","prediction":"p{}","timestamp":{},"experiment_assignment":"{}","input_features":{{"x":{},"y":"{}"}}}}"#,
                    k % 3,
                    now / 1000,
                    if k % 2 == 0 { "control" } else { "variant" },
                    k % 7,
                    k % 4
                );
                e.ingest(line.as_bytes(), now);
            }
        }
        let partition_of = |id: u32| Some(("t", id as i32));
        let streamed = checkpoint_of(
            &e,
            vec![at("t", 0, 120), at("t", 1, 120), at("t", 2, 120)],
            &partition_of,
            Some("c1".into()),
            &WindowSpec::default(),
            "g",
            now,
        );
        let whole = streamed.collect();
        // Three models, in name order, each with its arms' windows.
        let names: Vec<&str> = whole.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(whole.models.iter().all(|m| m.windows.len() == 3));
        assert!(whole.models[0].windows[0]
            .state
            .panes
            .iter()
            .any(|p| !p.counts.is_empty()));
        assert_eq!(
            serde_json::to_string(&streamed).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.save(&streamed).unwrap();
        assert_eq!(
            store.load(&WindowSpec::default(), "g").unwrap(),
            Some(whole)
        );
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
    fn a_version_1_checkpoint_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let v1 = r#"{"schema_version":1,"window":"time:600000:30000","group_id":"g","written_at_ms":1,"offsets":[{"topic":"t","partition":0,"offset":3000}],"windows":[]}"#;
        std::fs::write(store.path(), v1).unwrap();
        match store.load(&WindowSpec::default(), "g") {
            Err(CheckpointError::Stale { why, .. }) => {
                assert!(why.contains("schema_version 1"), "{why}")
            }
            other => panic!("{other:?}"),
        }
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

    fn partitions_of(s: &RestoreSet) -> Vec<i32> {
        s.partitions.iter().map(|p| p.partition).collect()
    }

    #[test]
    fn sets_join_partitions_through_the_models_that_span_them() {
        let c = Checkpoint {
            partitions: (0..5).map(|p| at("t", p, 10)).collect(),
            models: vec![
                model("a", Some(&[0])),
                model("b", Some(&[1, 2])),
                model("c", Some(&[2, 3])),
                model("d", Some(&[0])),
            ],
            ..cp()
        };
        let sets = c.into_sets(1);
        let shape: Vec<(Vec<i32>, Vec<&str>)> = sets
            .iter()
            .map(|s| (partitions_of(s), s.model_names()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (vec![0], vec!["a", "d"]),
                (vec![1, 2, 3], vec!["b", "c"]),
                // A partition no model came from is a set of its own.
                (vec![4], vec![]),
            ]
        );
        assert_eq!(sets.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_model_of_unknown_sources_joins_every_partition() {
        let c = Checkpoint {
            partitions: (0..3).map(|p| at("t", p, 10)).collect(),
            models: vec![model("a", Some(&[0])), model("spread", None)],
            ..cp()
        };
        let sets = c.into_sets(1);
        assert_eq!(sets.len(), 1);
        assert_eq!(partitions_of(&sets[0]), vec![0, 1, 2]);
        // Sources naming a partition the checkpoint has no position for are
        // as good as unknown.
        let c = Checkpoint {
            partitions: (0..2).map(|p| at("t", p, 10)).collect(),
            models: vec![model("a", Some(&[0, 9]))],
            ..cp()
        };
        assert_eq!(partitions_of(&c.into_sets(1)[0]), vec![0, 1]);
    }

    #[test]
    fn windows_without_any_position_are_not_restored() {
        let c = Checkpoint {
            partitions: vec![],
            models: vec![model("a", Some(&[0]))],
            ..cp()
        };
        assert!(c.into_sets(1).is_empty());
    }

    fn record(model: &str, sources: &[(i32, i64)], version: &str) -> ModelCheckpoint {
        ModelCheckpoint {
            schema_version: CHECKPOINT_VERSION,
            cluster_id: Some("c1".into()),
            window: window_fingerprint(&WindowSpec::default()),
            group_id: "g".into(),
            written_at_ms: 1,
            model: model.into(),
            baseline_version: version.into(),
            sources: sources.iter().map(|(p, o)| at("t", *p, *o)).collect(),
            windows: vec![],
        }
    }

    #[test]
    fn claims_take_models_whose_every_partition_is_new_here_and_whose_baseline_holds() {
        let versions: HashMap<String, String> = ["a", "b", "c", "d"]
            .iter()
            .map(|m| (m.to_string(), "v".to_string()))
            .collect();
        let unknown = vec![("t".to_string(), 0), ("t".to_string(), 1)];
        let records = vec![
            record("a", &[(0, 5)], "v"),
            // One of its partitions is not ours.
            record("b", &[(1, 5), (2, 5)], "v"),
            // Counted against another baseline.
            record("c", &[(1, 7)], "old"),
            // Disagrees with a about partition 0's offset.
            record("d", &[(0, 6)], "v"),
        ];
        let (taken, stale) = claimable(
            records.into_iter(),
            &unknown,
            &WindowSpec::default(),
            "g",
            &versions,
        );
        assert_eq!(
            taken.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(stale, 1);
    }

    #[test]
    fn discards_are_counted_by_a_bounded_reason() {
        let mut s = CheckpointStats::default();
        s.discard("cluster", 3);
        s.discard("not a reason", 1);
        assert_eq!(s.discarded("cluster"), 3);
        assert_eq!(s.discarded.iter().sum::<u64>(), 3);
    }
}
