//! driftd: a drift monitor that runs as a sidecar beside ML inference services.
//!
//! ```text
//!  Kafka topic(s)        ingest        decode         window            compare          detect
//!                        (daemon)      (engine ──────────────────────────────────────────────────)
//!  JSON log lines ──▶ consumer group ──▶ Event ──▶ panes per model ──▶ scores vs ──▶ ok/pending/firing
//!  (or a file:          (at-least-     (field     (and per arm),       baseline         (thresholds,
//!   `replay`)            once)          mapping)   O(1) per event       (KL, PSI, JS,    min samples,
//!                                                                       KS, chi², ...)   debounce)
//!                                                                             │               │
//!                                              /metrics ◀── metrics ◀────────┘               │
//!                                              Alertmanager, Kafka ◀── alert ◀───────────────┘
//!
//!  the same lines, other records ──▶ health: error rates, deploys, latency sketches, batch stats
//!  (timing, error, feedback, batch,  experiment: feedback joined by request id, arms compared
//!   label)                             quality: labels joined by request id; accuracy, and its estimate
//!                                    (both also end in metrics and alerts)
//! ```
//!
//! The tree shows the architecture. Arrows go one way, and
//! `tests/architecture.rs` fails on an import circle or on I/O in the engine:
//!
//! ```text
//!  cli ──▶ lab ──▶ daemon ──▶ engine        cli ──▶ config ──▶ daemon, engine
//!   │               ▲                        cli ──▶ replay ──▶ engine
//!   └───────────────┘                        daemon, replay ──▶ view ──▶ engine
//!                                            daemon, lab, cli ──▶ clock
//! ```
//!
//! - [`engine`]: pure and synchronous, time as a parameter: lines in,
//!   verdicts out. No clock, network, runtime, logging or metrics.
//!   - [`engine::decode`]: one JSON line to one event, through configurable JSON Pointers; every rejection has a reason.
//!   - [`engine::window`]: event-time sliding windows of bin counts, in panes; bounded memory.
//!   - [`engine::baseline`]: the stored, versioned, binned reference distributions; building, loading, validating.
//!   - [`engine::compare`]: divergences between a window and its baseline (KL, JS, PSI, Hellinger, chi², KS, Wasserstein).
//!   - [`engine::detect`]: rules and the ok → pending → firing → resolved state machine.
//!   - [`engine::threshold`]: automatic thresholds: each metric's no-drift level at the window's sample size, from the baseline.
//!   - [`engine::health`]: error rates, deploy regressions, latency quantiles (DDSketch) and batch statistics per model.
//!   - [`engine::experiment`]: the bounded feedback join by request id; arms compared by feedback rate.
//!   - [`engine::quality`]: labels joined to predictions (bounded, hash-sampled); realized accuracy, precision, recall, MAE, RMSE, ECE; the calibrated-confidence estimate; `AccuracyDrop`, `EstimatedAccuracyDrop`.
//!   - [`engine::history`]: each distribution's score over the last day, in two fixed rings.
//!   - `engine::memory`: the budget the engine reserves from before it allocates, and the plan's terms.
//!   - [`engine::time`]: event time as reports show it.
//!   - [`Engine`](engine::Engine) (`engine/pipeline.rs`): decode → window → compare → detect for every model, plus health and experiments, with the caps that bound them.
//! - [`daemon`]: the edges, and [`daemon::app`], the one place they meet the engine.
//!   - [`daemon::app`]: wiring, the worker loop and shutdown; read it to know what `driftd run` does.
//!   - [`daemon::ingest`]: the Kafka consumer: consumer group, where partitions start, offsets stored once counted; `driftd_kafka_*`.
//!   - [`daemon::checkpoint`]: window state with the offsets it covers, on disk and on a compacted topic; `driftd_checkpoint*`.
//!   - [`daemon::baselines`]: the baselines directory: loaded, watched, written.
//!   - [`daemon::metrics`]: the engine's Prometheus series, set once per evaluation from the snapshot.
//!   - [`daemon::snapshot`]: what the worker publishes after each evaluation, for the metrics and the API.
//!   - [`daemon::readiness`]: what `/readyz` is made of.
//!   - `daemon::plan`: the memory plan `check-config` prints and `run` keeps: the daemon's terms and the engine's.
//!   - [`daemon::admin`]: the HTTP server: /metrics, /livez, /readyz, the drift and baseline API.
//!   - [`daemon::alert`]: transitions out to Alertmanager (API v2), a Kafka topic and a webhook; `driftd_alerts_*`.
//!   - [`daemon::logging`]: structured logs on stderr.
//! - [`lab`]: synthetic traffic and the tools that measure driftd with it.
//!   - [`lab::generate`]: seed-shaped synthetic inference logs with injectable drift; the one sampler of synthetic traffic.
//!   - [`lab::demo`]: the whole daemon on an in-process Kafka with generated, drifting traffic.
//!   - [`lab::bench`]: `driftd bench`, the performance harness (parse floor, replay, the daemon through Kafka).
//!   - `lab::label_join`: `driftd bench --label-join-hours`, the label join at a steady rate with late labels: its sample rate and RSS.
//!   - [`lab::soak`]: `driftd soak`, the daemon for a long time at a steady rate with broker, request and Alertmanager faults; flat RSS, fds and series, nothing lost.
//!   - [`lab::scenario`]: `driftd scenarios`, the verdict-quality suite: false alarms per 24 h without drift, detection delay with it.
//!   - [`lab::quality_suite`]: the suite's model-quality part: the accuracy estimate against realized accuracy, `EstimatedAccuracyDrop` and `AccuracyDrop` delays, false alarms.
//! - [`replay`]: a log file through the engine in event time, decoded on every core; baseline builds; reports.
//! - [`view`]: drift as HTML and SVG, baseline and window side by side: the daemon's page and `replay --html`.
//! - [`config`]: TOML + environment configuration, validated into the daemon's [`Config`](daemon::app::Config) with every problem reported.
//! - [`clock`]: the wall clock, read in one place.
//! - [`cli`]: subcommands, exit codes, error printing.

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod lab;
pub mod replay;
pub mod view;
