//! The daemon's settings: everything `driftd run` needs, validated.
//!
//! This module owns the shape of the daemon's configuration: the engine's
//! settings and each edge's (defined beside their edges), side by side.
//! `crate::config` makes one from a file and the environment; the daemon
//! never reads the file itself.

use std::path::PathBuf;
use std::time::Duration;

use crate::daemon::admin::HttpConfig;
use crate::daemon::alert::AlertConfig;
use crate::daemon::checkpoint::CheckpointConfig;
use crate::daemon::ingest::KafkaConfig;
use crate::daemon::logging::LogConfig;
use crate::daemon::metrics::MetricsConfig;
use crate::engine::detect::{AutoThresholds, Thresholds};
use crate::engine::EngineConfig;

/// The default of `limits.max_memory`. The Kubernetes examples limit the
/// sidecar to 128 MiB; this leaves a quarter of that for what no budget
/// sees (allocator slack, stacks, pages the kernel counts).
pub(crate) const DEFAULT_MAX_MEMORY: usize = 96 << 20;

/// Everything `driftd run` needs, validated: the engine's settings and each
/// edge's, side by side. `crate::config` makes one from a file and the
/// environment; the daemon never reads the file itself.
#[derive(Debug, Clone)]
pub struct Config {
    pub engine: EngineConfig,
    pub every: Duration,
    pub baselines_dir: PathBuf,
    pub watch_baselines: bool,
    pub model_idle: Duration,
    pub kafka: Option<KafkaConfig>,
    pub checkpoint: CheckpointConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub grace: Duration,
    pub alerts: AlertConfig,
    pub metrics: MetricsConfig,
    /// What the whole process may take (`limits.max_memory`): the engine's
    /// state gets what the daemon's own buffers leave (see `daemon::plan`).
    pub max_memory: usize,
    /// What validation adjusted, said at start and by `check-config` (a
    /// window given longer panes, say).
    pub notes: Vec<String>,
    /// Where it came from, for messages.
    pub source: String,
}

impl Default for Config {
    fn default() -> Self {
        // The daemon judges with automatic thresholds unless told otherwise
        // (the engine's own default stays static: fixed numbers for tests
        // and benchmarks that set their thresholds by hand).
        let mut engine = EngineConfig::default();
        engine.detect.thresholds = Thresholds::Auto(AutoThresholds::default());
        engine.detect.min_samples = 100;
        engine.max_memory = Some(DEFAULT_MAX_MEMORY);
        Config {
            engine,
            every: Duration::from_secs(30),
            baselines_dir: PathBuf::from("baselines"),
            watch_baselines: true,
            model_idle: Duration::from_secs(3600),
            kafka: None,
            checkpoint: CheckpointConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            grace: Duration::from_secs(5),
            alerts: AlertConfig::default(),
            metrics: MetricsConfig::default(),
            max_memory: DEFAULT_MAX_MEMORY,
            notes: Vec::new(),
            source: "defaults".into(),
        }
    }
}
