//! Checkpoints: window state and the partition offsets it covers, on disk.
//!
//! This module owns the checkpoint file. The consumer loop writes one at pane
//! boundaries, taken at a single instant so that the windows hold exactly the
//! events before the recorded offsets; after a restart (or a crash, even one
//! in the middle of a write) the windows are restored and consumption resumes
//! at those offsets, so no event is counted twice or lost.
//!
//! Writes are atomic: a temporary file, fsync, rename, fsync of the
//! directory. A reader sees the old checkpoint or the new one, never half of
//! one. A checkpoint made with other window settings or against another
//! baseline version is discarded (with a log line), not trusted.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::window::{WindowSpec, WindowState};

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
