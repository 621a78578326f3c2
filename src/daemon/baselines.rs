//! The baselines directory: loaded at start, watched, reloaded, written.
//!
//! This module owns the daemon's side of `baselines.dir`: reading every
//! baseline file at start (a bad one stops the start with its name), a cheap
//! fingerprint to notice edits, and writing the baselines the daemon makes
//! itself (captured from a window, or collected automatically). What a
//! reload does to the windows is the engine's business
//! ([`Engine::replace_baselines`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::engine::baseline::{load_dir, Baseline, BaselineError};
use crate::engine::Engine;

/// Why the baselines could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BaselinesError {
    #[error("cannot load the baselines in {dir}:\n{}", problems.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Load {
        dir: PathBuf,
        problems: Vec<BaselineError>,
    },
    #[error("cannot create baselines.dir {dir}: {source} (check that the directory is writable, e.g. a mounted volume)")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// A fingerprint of the directory: names, sizes and times of its `.json`
/// files. Comparing two tells whether anything changed without reading them.
type Stamp = Vec<(String, u64, Option<SystemTime>)>;

/// The baselines directory.
pub(crate) struct BaselineDir {
    dir: PathBuf,
    stamp: Stamp,
    /// Versions of automatic baselines already written.
    saved_auto: HashSet<String>,
}

impl BaselineDir {
    /// Loads every baseline in `dir`. A missing directory is fine when
    /// baselines are captured automatically (it is created); otherwise, and
    /// for any bad file, the start stops with every problem named.
    pub(crate) fn open(
        dir: &Path,
        auto_baseline: bool,
    ) -> Result<(BaselineDir, Vec<Baseline>), BaselinesError> {
        let baselines = if dir.exists() || !auto_baseline {
            load_dir(dir)
                .map_err(|problems| BaselinesError::Load {
                    dir: dir.to_owned(),
                    problems,
                })?
                .into_iter()
                .map(|(_, b)| b)
                .collect()
        } else {
            std::fs::create_dir_all(dir).map_err(|source| BaselinesError::Create {
                dir: dir.to_owned(),
                source,
            })?;
            Vec::new()
        };
        let d = BaselineDir {
            dir: dir.to_owned(),
            stamp: stamp(dir),
            saved_auto: HashSet::new(),
        };
        Ok((d, baselines))
    }

    /// Whether a file was added, removed or changed since the last call.
    pub(crate) fn changed(&mut self) -> bool {
        let now = stamp(&self.dir);
        if now == self.stamp {
            return false;
        }
        self.stamp = now;
        true
    }

    /// Every baseline in the directory, or every problem (then nothing
    /// should change: the baselines in force stay).
    pub(crate) fn load(&self) -> Result<Vec<Baseline>, String> {
        let loaded = load_dir(&self.dir).map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(loaded.into_iter().map(|(_, b)| b).collect())
    }

    /// Writes a baseline (captured from a window) to the directory.
    pub(crate) fn save(&self, b: &Baseline) -> Result<PathBuf, String> {
        b.save(&self.dir).map_err(|e| e.to_string())
    }

    /// Writes the automatic baselines the engine made since the last call.
    pub(crate) fn save_automatic(&mut self, engine: &Engine) {
        let new: Vec<&Baseline> = engine
            .auto_captured()
            .filter(|b| !self.saved_auto.contains(&b.version))
            .collect();
        for b in new {
            match b.save(&self.dir) {
                Ok(p) => {
                    tracing::info!(model = %b.model, path = %p.display(), "automatic baseline saved")
                }
                Err(e) => tracing::warn!(error = %e, "automatic baseline not saved"),
            }
            self.saved_auto.insert(b.version.clone());
        }
    }
}

fn stamp(dir: &Path) -> Stamp {
    let mut v: Stamp = std::fs::read_dir(dir)
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
