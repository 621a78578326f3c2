//! The engine: pure, synchronous, time as a parameter.
//!
//! Everything here turns lines into verdicts without touching the outside
//! world: no clock, no network, no async runtime, no logging, no metrics
//! registry. The daemon and `driftd replay` drive the same code, so what a
//! replay shows is what the daemon would have done. `tests/` holds a test
//! that fails when a file under `src/engine/` uses the daemon, the lab or an
//! I/O crate.

pub mod baseline;
pub mod compare;
pub mod decode;
pub mod detect;
pub(crate) mod experiment;
pub mod health;
pub mod history;
pub(crate) mod memory;
mod pipeline;
pub mod quality;
pub mod threshold;
pub(crate) mod time;
pub mod window;

pub use pipeline::{
    ArmDivergence, AutoBaseline, Engine, EngineConfig, EngineStats, FeatureReport, ModelReport,
    ModelState, MovedBin, Outcome, Published, Report, ScoreHistory, ScoreMap, Tracked,
    VerdictReport, WindowReport, DEFAULT_MAX_PANES, SIMULATIONS_PER_EVALUATION,
};
