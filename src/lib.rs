//! driftd: a drift monitor that runs as a sidecar beside ML inference services.
//!
//! ```text
//!  Kafka topic(s)        ingest        decode         window            compare          detect
//!  JSON log lines ──▶ consumer group ──▶ Event ──▶ panes per model ──▶ scores vs ──▶ ok/pending/firing
//!  (or a file:          (at-least-     (field     (and per arm),       baseline         (thresholds,
//!   `replay`)            once)          mapping)   O(1) per event       (KL, PSI, JS,    min samples,
//!                                                                       KS, chi², ...)   debounce)
//!                                                                             │               │
//!                                              /metrics ◀── metrics ◀────────┘               │
//!                                              Alertmanager, Kafka ◀── alert ◀───────────────┘
//!
//!  the same lines, other records ──▶ health: error rates, deploys, latency sketches, batch stats
//!  (timing, error, feedback, batch)  experiment: feedback joined by request id, arms compared
//!                                    (both also end in metrics and alerts)
//! ```
//!
//! The engine (decode, window, baseline, compare, detect, engine) is pure and
//! synchronous and takes time as a parameter; I/O stays at the edges
//! (ingest, checkpoint, admin, alert), wired together in `app`.
//!
//! - [`decode`]: one JSON line to one event, through configurable JSON Pointers; every rejection has a reason.
//! - [`window`]: event-time sliding windows of bin counts, in panes; bounded memory.
//! - [`baseline`]: the stored, versioned, binned reference distributions; building, loading, validating.
//! - [`compare`]: divergences between a window and its baseline (KL, JS, PSI, Hellinger, chi², KS, Wasserstein).
//! - [`detect`]: rules and the ok → pending → firing → resolved state machine.
//! - [`threshold`]: automatic thresholds: each metric's no-drift level at the window's sample size, from the baseline.
//! - [`health`]: error rates, deploy regressions, latency quantiles (DDSketch) and batch statistics per model.
//! - [`experiment`]: the bounded feedback join by request id; arms compared by feedback rate.
//! - [`engine`]: decode → window → compare → detect for every model, plus health and experiments, with the caps that bound them.
//! - [`ingest`]: the Kafka consumer loop: consumer group, offsets stored once counted, rebalances, evaluation.
//! - [`checkpoint`]: window state with the offsets it covers, on disk and on a compacted topic.
//! - [`metrics`]: every Prometheus series, set once per evaluation from a snapshot.
//! - [`admin`]: the HTTP server: /metrics, /livez, /readyz, the drift and baseline API.
//! - [`alert`]: transitions out to Alertmanager (API v2), a Kafka topic and a webhook.
//! - [`app`]: the daemon's wiring and shutdown; read it to know what `driftd run` does.
//! - [`demo`]: the whole daemon on an in-process Kafka with generated, drifting traffic.
//! - [`replay`]: a log file through the engine in event time; baseline builds; reports.
//! - [`generate`]: seed-shaped synthetic inference logs with injectable drift.
//! - [`bench`]: `driftd bench`, the performance harness (parse floor, replay, the daemon through Kafka).
//! - [`soak`]: `driftd soak`, the daemon for a long time at a steady rate with broker, request and Alertmanager faults; flat RSS, fds and series, nothing lost.
//! - [`scenario`]: `driftd scenarios`, the verdict-quality suite: false alarms per 24 h without drift, detection delay with it.
//! - [`config`]: TOML + environment configuration, validated with every problem reported.
//! - [`cli`]: subcommands, exit codes, error printing.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod lab;
pub mod replay;
