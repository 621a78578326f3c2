//! The daemon: wiring, the worker loop and shutdown. Read this file to know
//! what `driftd run` does; it is the only place where the edges meet the
//! engine.
//!
//! 1. The configuration is already validated (a bad one exited 64 before we
//!    got here). Baselines are loaded from `baselines.dir` (`baselines`); a
//!    bad file stops the start with its name and problem.
//! 2. One Prometheus registry is made; each part registers its own series:
//!    the engine's (`metrics`), the consumer's (`ingest`), the checkpoints'
//!    (`checkpoint`), the alerts' (`alert`).
//! 3. The HTTP listener is bound (`admin`): /metrics, /livez, /readyz and
//!    the API, which reads the last [`Snapshot`] and asks the worker
//!    ([`Control`]) for what only it knows.
//! 4. The alert task starts (`alert`): verdict transitions out to
//!    Alertmanager, a Kafka topic and a webhook, re-sent while firing.
//! 5. The worker starts on its own thread. It restores the last checkpoint
//!    (`checkpoint`), subscribes (`ingest`), and then loops: a batch of lines
//!    from Kafka into the engine, their offsets stored once counted; state
//!    claimed from other replicas restored; the API's requests answered; a
//!    checkpoint at each pane boundary; and every `evaluation.every` an
//!    evaluation, whose transitions go to the log and the alert queue and
//!    whose snapshot goes to the metrics and the API.
//! 6. Then we wait for the cancellation token (SIGTERM or SIGINT in `driftd
//!    run`; the test or the demo otherwise). On cancellation the worker stops
//!    fetching, writes a last checkpoint, commits offsets and leaves the
//!    group; then the alert task flushes what is pending; the HTTP server
//!    finishes in-flight requests. All of it must fit in `shutdown.grace`
//!    (5 s by default, under Kubernetes' 30 s), or we say so and exit anyway.
//!
//! Why one blocking thread for the worker rather than async tasks: the
//! engine is synchronous and single-owner, librdkafka serves rebalances from
//! `poll` on the calling thread, and keeping windows, positions and
//! checkpoints on one thread makes "a checkpoint holds exactly the events
//! before its offsets" true by construction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::daemon::admin::{self, AdminState, Control, HttpConfig};
use crate::daemon::alert::{self, AlertQueue, Alerting};
use crate::daemon::baselines::BaselineDir;
use crate::daemon::checkpoint::{
    self, CheckpointConfig, CheckpointError, CheckpointMetrics, CheckpointStats, CheckpointStore,
    CheckpointTopic, PartitionOffset, RestoreSet,
};
use crate::daemon::ingest::{
    self, Anchor, Discard, IngestError, KafkaConfig, KafkaMetrics, KafkaSource, Offer, Placed,
    Start,
};
use crate::daemon::metrics::{self, Metrics};
use crate::daemon::plan;
use crate::daemon::readiness::Readiness;
use crate::daemon::snapshot::{Snapshot, Watched, DETAIL_BYTES};
use crate::engine::detect::Transition;
use crate::engine::memory::human;
use crate::engine::window::WindowSpec;
use crate::engine::Engine;

pub use crate::daemon::settings::Config;

/// Makes glibc's malloc hand every allocation over 128 KiB back to the
/// system when freed. Each evaluation builds and drops megabytes at once
/// (the snapshot; and a scrape, the exposition text): with glibc's
/// default, adaptive threshold those land on the heap and fragment it,
/// and RSS crept up ~1 MiB a minute (driftd bench, 100 models x 50
/// features, 10 minutes at 20k lines/s: 93 -> 116 MiB; with this: 62-86
/// MiB, no trend over 5 minutes).
/// A no-op on other allocators and systems.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called once, first
    // thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hands the heap's free pages back to the system, in every arena: what an
/// evaluation dropped under the mmap threshold (the old snapshot, the
/// old exposition text) otherwise stays in RSS until reused, and the
/// peaks of one evaluation become the sidecar's footprint. Called once
/// per evaluation, after the old snapshot is dropped. Measured with `driftd
/// bench --models 100 --features 50 --steady 11m --rate 20000` (2-core
/// Xeon), when each evaluation still built the exposition text: steady
/// RSS 46-65 MiB over two runs, one sample of 38 over 64,
/// against 56-71 MiB and six to eight of 19 over without it; the pages
/// given back are faulted in again by the next evaluation, about 1 CPU s
/// per 1M events more (14.6-14.8 against 13.3-13.7). It runs on the
/// worker's own blocking thread, never on the runtime's.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What `driftd run` would stop on that validating the file cannot see:
/// a property librdkafka refuses (it only says so when a client is made)
/// and a baseline file that does not load. `(key, problem)` pairs, found
/// without binding a port or connecting; `check-config` and `run` report
/// them like any other config problem.
pub fn preflight(cfg: &Config) -> Preflight {
    let mut problems = Vec::new();
    if let Some(k) = &cfg.kafka {
        if let Err(e) = ingest::validate_properties(k) {
            problems.push(("kafka.properties".to_owned(), e));
        }
    }
    let mut baselines = Vec::new();
    if cfg.baselines_dir.exists() {
        match crate::engine::baseline::load_dir(&cfg.baselines_dir) {
            Ok(b) => baselines = b.into_iter().map(|(_, b)| b).collect(),
            Err(errs) => problems.extend(
                errs.iter()
                    .map(|e| ("baselines.dir".to_owned(), e.to_string())),
            ),
        }
    }
    let (memory, too_big) = plan::report(cfg, &baselines);
    if let Some(p) = too_big {
        problems.push(("limits.max_memory".to_owned(), p));
    }
    Preflight { problems, memory }
}

/// What [`preflight`] found.
pub struct Preflight {
    /// `(key, problem)`: the configuration cannot run.
    pub problems: Vec<(String, String)>,
    /// The memory plan, term by term (`daemon::plan`).
    pub memory: String,
}

/// A running daemon.
pub struct Daemon {
    /// Where the HTTP server listens (useful with port 0).
    pub addr: SocketAddr,
    /// Where /metrics and the probes are also served (`http.metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub readiness: Arc<Readiness>,
    pub control: mpsc::Sender<Control>,
    pub registry: Registry,
    worker: JoinHandle<Result<(), IngestError>>,
    http: JoinHandle<std::io::Result<()>>,
    alerts: Option<Alerting>,
    alerts_cancel: CancellationToken,
    cancel: CancellationToken,
    /// Dropping the handle without [`Daemon::wait`] (a panicking test, an
    /// early return) stops the daemon: otherwise its worker thread would
    /// run on, and the runtime's drop would wait for it forever.
    stop_on_drop: tokio_util::sync::DropGuard,
    grace: Duration,
}

/// Starts the daemon; `cancel` stops it.
pub async fn start(mut cfg: Config, cancel: CancellationToken) -> anyhow::Result<Daemon> {
    let Some(kafka) = cfg.kafka.clone() else {
        anyhow::bail!("driftd run needs a [kafka] section with brokers and topics");
    };

    // 1. Baselines.
    let auto = cfg.engine.auto_baseline.is_some();
    let (dir, baselines) = BaselineDir::open(&cfg.baselines_dir, auto)?;
    if baselines.is_empty() && !auto {
        tracing::warn!(
            dir = %cfg.baselines_dir.display(),
            "no baselines: events will be counted as without baseline until one is added (or set baselines.auto_after_events)"
        );
    }
    for b in &baselines {
        tracing::info!(model = %b.model, version = %b.version, features = b.features.len(), "baseline loaded");
    }
    for note in &cfg.notes {
        tracing::info!("{note}");
    }
    // The engine gets what the daemon's own buffers leave of the limit, and
    // reserves with each model what publishing it costs.
    cfg.engine = plan::engine_config(&cfg);
    let memory = plan::plan(&cfg, &baselines);
    tracing::info!(
        limit = %human(cfg.max_memory),
        at_most = %human(memory.total()),
        engine = %human(plan::engine_limit(&cfg)),
        terms = %memory.terms.iter().map(|t| format!("{} {}", t.what, human(t.bytes))).collect::<Vec<_>>().join(", "),
        "memory plan"
    );

    // 2. One registry, each part registers its own series.
    let registry = Registry::new();
    metrics::register_build_info(&registry)?;
    let series = Series {
        engine: Metrics::new(&registry)?
            .with_scores(cfg.metrics.scores.clone())
            .with_per_arm_scores(cfg.metrics.per_arm_scores),
        kafka: KafkaMetrics::new(&registry)?,
        checkpoints: CheckpointMetrics::new(&registry)?,
    };

    // 3. HTTP.
    let readiness = Arc::new(Readiness::default());
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (control_tx, control_rx) = mpsc::channel(16);
    let watched = Arc::new(Watched::default());
    let state = AdminState {
        exposition: series.engine.exposition(),
        readiness: readiness.clone(),
        snapshot: snap_rx.clone(),
        watched: watched.clone(),
        control: control_tx.clone(),
        admin_token: cfg.http.admin_token.as_deref().map(Arc::from),
    };
    let (addr, metrics_addr, http) = serve_http(&cfg.http, state, cancel.clone()).await?;
    if cfg.alerts.external_url.is_empty() {
        cfg.alerts.external_url = alert::external_url_for(addr);
    }

    // 4. Alerts. Their own token: they flush after the worker has stopped,
    // so the last transitions are not lost.
    let alerts_cancel = CancellationToken::new();
    let alerts = start_alerts(&cfg, &registry, alerts_cancel.clone())?;

    // 5. The worker.
    let worker = Worker {
        engine: Engine::new(cfg.engine.clone(), baselines),
        baselines: dir,
        alerts: alerts.as_ref().map(|a| a.queue.clone()),
        series,
        readiness: readiness.clone(),
        snapshot: snap_tx,
        watched,
        control: control_rx,
        checkpoints: CheckpointStats::default(),
        reloads: (0, 0),
        settings: WorkerSettings::of(&cfg),
        pending: HashMap::new(),
        cluster_id: None,
        pending_checks: 0,
    };
    let (checkpoint, worker_cancel) = (cfg.checkpoint.clone(), cancel.clone());
    let worker =
        tokio::task::spawn_blocking(move || worker.run(&kafka, &checkpoint, worker_cancel));

    Ok(Daemon {
        addr,
        metrics_addr,
        snapshot: snap_rx,
        readiness,
        control: control_tx,
        registry,
        worker,
        http,
        alerts,
        alerts_cancel,
        stop_on_drop: cancel.clone().drop_guard(),
        cancel,
        grace: cfg.grace,
    })
}

/// Binds `http.listen` (and `http.metrics_listen`) and serves until
/// `cancel`. Returns the bound addresses and the server task.
async fn serve_http(
    http: &HttpConfig,
    state: AdminState,
    cancel: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    Option<SocketAddr>,
    JoinHandle<std::io::Result<()>>,
)> {
    let listener = admin::bind(http.listen, "http.listen").await?;
    let addr = listener.local_addr()?;
    let probes_listener = match http.metrics_listen {
        Some(a) => Some(admin::bind(a, "http.metrics_listen").await?),
        None => None,
    };
    let metrics_addr = match &probes_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    tracing::info!(%addr, "serving /metrics, /livez, /readyz and /api/v1");
    // /metrics and the probes on an address of their own, if configured
    // (say, the pod IP for Prometheus while the API stays on loopback).
    let probes = probes_listener.map(|l| {
        tracing::info!(addr = %metrics_addr.unwrap_or(addr), "serving /metrics, /livez and /readyz");
        admin::serve(l, admin::probes_router(state.clone()), cancel.clone())
    });
    let api = admin::serve(listener, admin::router(state), cancel);
    let task = tokio::spawn(async move {
        match probes {
            Some(p) => {
                let (a, b) = tokio::join!(api, p);
                a.and(b)
            }
            None => api.await,
        }
    });
    Ok((addr, metrics_addr, task))
}

fn start_alerts(
    cfg: &Config,
    registry: &Registry,
    cancel: CancellationToken,
) -> anyhow::Result<Option<Alerting>> {
    if !cfg.alerts.any_sink() {
        tracing::info!("no alert sink configured: transitions are logged only");
        return Ok(None);
    }
    let flush = cfg.grace.mul_f64(0.4);
    let a = alert::start(cfg.alerts.clone(), registry, cancel, flush)?;
    tracing::info!(
        alertmanagers = cfg.alerts.alertmanagers.len(),
        kafka = cfg.alerts.kafka.is_some(),
        webhook = cfg.alerts.webhook.is_some(),
        "alerting started"
    );
    Ok(Some(a))
}

impl Daemon {
    /// Runs until cancelled (or until the worker fails), then drains
    /// within the grace period.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Daemon {
            mut worker,
            http,
            alerts,
            alerts_cancel,
            cancel,
            stop_on_drop,
            grace,
            ..
        } = self;
        // From here on this function stops the daemon itself.
        let _ = stop_on_drop.disarm();
        let early = tokio::select! {
            _ = cancel.cancelled() => None,
            r = &mut worker => Some(r),
        };
        if let Some(r) = early {
            // The worker ended without being asked to: stop everything else.
            cancel.cancel();
            alerts_cancel.cancel();
            if let Some(a) = alerts {
                let _ = tokio::time::timeout(grace, a.join()).await;
            }
            let _ = http.await;
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(anyhow::anyhow!("consumer loop panicked: {e}")),
            };
        }
        tracing::info!(grace = %humantime::format_duration(grace), "shutting down");
        let started = tokio::time::Instant::now();
        let drained = tokio::time::timeout(grace, worker).await;
        // Then the alerts, with what is left of the grace period.
        alerts_cancel.cancel();
        if let Some(a) = alerts {
            let left = grace.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, a.join()).await.is_err() {
                tracing::warn!("pending alerts not flushed within the grace period");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
        match drained {
            Ok(Ok(Ok(()))) => {
                tracing::info!("shutdown complete");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(e)) => Err(anyhow::anyhow!("consumer loop panicked: {e}")),
            Err(_) => Err(anyhow::anyhow!(
                "the consumer did not stop within shutdown.grace ({}); offsets after the last commit will be read again",
                humantime::format_duration(grace)
            )),
        }
    }
}

/// Cancels `cancel` on SIGTERM or SIGINT; asks for a baseline reload on SIGHUP.
pub fn handle_signals(
    cancel: CancellationToken,
    control: mpsc::Sender<Control>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); cancel.cancel(); break; }
                _ = int.recv() => { tracing::info!("SIGINT"); cancel.cancel(); break; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading baselines");
                    let _ = control.send(Control::Reload { reply: None }).await;
                }
                _ = cancel.cancelled() => break,
            }
        }
    });
    Ok(())
}

/// Every series the worker sets, once per evaluation.
struct Series {
    engine: Metrics,
    kafka: KafkaMetrics,
    checkpoints: CheckpointMetrics,
}

/// The worker's settings, from the config.
struct WorkerSettings {
    every: Duration,
    model_idle_ms: i64,
    watch_baselines: bool,
    spec: WindowSpec,
    /// The window's length (0 for a count window), for the rewind.
    window_ms: i64,
    /// How often a checkpoint is written: each pane (each evaluation for a
    /// count window).
    checkpoint_ms: i64,
    /// Publish the arms' feature scores (`[metrics] per_arm_scores`).
    arm_features: bool,
}

impl WorkerSettings {
    fn of(cfg: &Config) -> WorkerSettings {
        let spec = cfg.engine.window;
        let (window_ms, checkpoint_ms) = match spec {
            WindowSpec::Time { length_ms, pane_ms } => (length_ms, pane_ms),
            WindowSpec::Count { .. } => (0, cfg.every.as_millis() as i64),
        };
        WorkerSettings {
            every: cfg.every,
            model_idle_ms: cfg.model_idle.as_millis() as i64,
            watch_baselines: cfg.watch_baselines,
            spec,
            window_ms,
            checkpoint_ms: checkpoint_ms.max(1),
            arm_features: cfg.metrics.per_arm_scores,
        }
    }
}

/// The worker: the one thread that owns the engine.
struct Worker {
    engine: Engine,
    baselines: BaselineDir,
    alerts: Option<Arc<AlertQueue>>,
    series: Series,
    readiness: Arc<Readiness>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The models whose pages are open: their details go in the snapshot.
    watched: Arc<Watched>,
    control: mpsc::Receiver<Control>,
    checkpoints: CheckpointStats,
    /// Baseline reloads: (took, failed).
    reloads: (u64, u64),
    settings: WorkerSettings,
    /// Checkpointed sets waiting for the first assignment of their
    /// partitions (see `checkpoint`).
    pending: HashMap<u64, RestoreSet>,
    /// The cluster's id, once the broker has said (checkpoints record it).
    cluster_id: Option<String>,
    /// Evaluations since partitions were assigned while sets were pending.
    pending_checks: u32,
}

/// The edges the worker drives: Kafka in, checkpoints out.
struct Edges {
    source: KafkaSource,
    store: Option<CheckpointStore>,
    topic: Option<Arc<CheckpointTopic>>,
    group: String,
}

impl Worker {
    /// Restores, subscribes, loops until `cancel`, then drains: a last
    /// checkpoint, a commit, and the group left.
    fn run(
        mut self,
        kafka: &KafkaConfig,
        checkpoint: &CheckpointConfig,
        cancel: CancellationToken,
    ) -> Result<(), IngestError> {
        let store = checkpoint
            .enabled
            .then(|| CheckpointStore::new(&checkpoint.dir));
        let offers = self.load_checkpoint(store.as_ref(), &kafka.group_id);
        let topic = checkpoint.kafka_topic.as_ref().map(|t| {
            let client = ingest::side_client_config(kafka);
            let topic = CheckpointTopic::new(client, t, self.settings.spec, &kafka.group_id);
            topic.set_versions(&self.engine);
            Arc::new(topic)
        });
        let claim: Option<ingest::Claim> = topic.clone().map(|t| {
            Box::new(move |unknown: &[(String, i32)]| {
                t.claim(unknown)
                    .into_iter()
                    .map(|(set, cluster_id, p)| offer(set, cluster_id, &p))
                    .collect()
            }) as ingest::Claim
        });
        let start = Start {
            offers,
            rewind_ms: kafka.rewind_on_start.then_some(self.settings.window_ms),
            claim,
        };
        let source = KafkaSource::subscribe(kafka, start, self.readiness.clone())?;
        let mut io = Edges {
            source,
            store,
            topic,
            group: kafka.group_id.clone(),
        };
        self.readiness.running.store(true, Ordering::Relaxed);
        self.readiness.auto_baseline.store(
            self.engine.config().auto_baseline.is_some(),
            Ordering::Relaxed,
        );
        self.count_baselines();

        let every = self.settings.every;
        let mut next_eval = Instant::now() + every;
        let mut last_pane = now_ms().div_euclid(self.settings.checkpoint_ms);
        while !cancel.is_cancelled() {
            self.consume_batch(&mut io);
            self.apply_placements(&mut io);
            while let Ok(c) = self.control.try_recv() {
                self.answer(c);
            }
            if let Some(t) = &io.topic {
                t.poll();
            }
            let now = now_ms();
            let pane = now.div_euclid(self.settings.checkpoint_ms);
            if pane != last_pane {
                last_pane = pane;
                self.write_checkpoint(&io, now);
            }
            if Instant::now() >= next_eval {
                next_eval += every;
                if next_eval < Instant::now() {
                    // We fell behind (a slow evaluation): skip, don't pile up.
                    next_eval = Instant::now() + every;
                }
                self.evaluate(&io, now);
            }
        }
        self.drain(io);
        Ok(())
    }

    /// Reads the last checkpoint into sets that wait for their partitions'
    /// assignment; returns their positions, offered to the consumer. A set
    /// whose windows were counted against another baseline version is
    /// discarded here, positions and all.
    fn load_checkpoint(&mut self, store: Option<&CheckpointStore>, group: &str) -> Vec<Offer> {
        let Some(store) = store else {
            return Vec::new();
        };
        let cp = match store.load(&self.settings.spec, group) {
            Ok(Some(cp)) => cp,
            Ok(None) => {
                tracing::info!(path = %store.path().display(), "no checkpoint; starting with empty windows");
                return Vec::new();
            }
            Err(e) => {
                let reason = match e {
                    CheckpointError::Corrupt { .. } => "corrupt",
                    _ => "stale",
                };
                self.checkpoints.discard(reason, 1);
                tracing::warn!(error = %e, reason, "checkpoint discarded; starting with empty windows");
                return Vec::new();
            }
        };
        let mut offers = Vec::new();
        let (windows, partitions) = (
            cp.models.iter().map(|m| m.windows.len()).sum::<usize>(),
            cp.partitions.len(),
        );
        for set in cp.into_sets(1) {
            let changed = checkpoint::changed_baselines(&self.engine, &set);
            if !changed.is_empty() {
                self.checkpoints
                    .discard("baseline_changed", set.partitions.len() as u64);
                tracing::warn!(
                    reason = "baseline_changed",
                    models = ?changed,
                    partitions = %describe(&set.partitions),
                    "checkpoint part discarded: its windows were counted against another baseline version; its partitions start at the committed offset or the rewind"
                );
                continue;
            }
            offers.extend(
                set.partitions
                    .iter()
                    .map(|p| offer(set.id, set.cluster_id.clone(), p)),
            );
            self.pending.insert(set.id, set);
        }
        tracing::info!(
            path = %store.path().display(),
            windows,
            partitions,
            sets = self.pending.len(),
            "checkpoint read; each part is restored once its partitions are assigned and the broker confirms them"
        );
        offers
    }

    /// One batch from Kafka into the engine; then its offsets may be
    /// committed (the lines are counted).
    fn consume_batch(&mut self, io: &mut Edges) {
        let arrival = now_ms();
        let engine = &mut self.engine;
        io.source
            .poll_batch(Duration::from_millis(100), |source, line| {
                engine.set_source(Some(source));
                engine.ingest(line, arrival);
            });
        io.source.commit_batch();
    }

    /// Acts on what the last assignments decided about saved positions:
    /// restores the sets that were confirmed (then resumes their paused
    /// partitions), and says loudly what was discarded and why.
    fn apply_placements(&mut self, io: &mut Edges) {
        if let Some(t) = &io.topic {
            let stale = t.take_stale();
            self.checkpoints.discard("baseline_changed", stale);
        }
        let placed = io.source.take_placed();
        if placed.is_empty() {
            return;
        }
        let mut resume = false;
        for p in placed {
            match p {
                Placed::SetAccepted { set } => {
                    if let Some(set) = self.take_set(io, set) {
                        self.restore(io, &set);
                    }
                    resume = true;
                }
                Placed::SetDiscarded {
                    set,
                    reason,
                    partitions,
                } => {
                    let models = self
                        .take_set(io, set)
                        .map(|s| s.model_names().join(","))
                        .unwrap_or_default();
                    for (_, _, why) in &partitions {
                        self.checkpoints.discard(why.as_str(), 1);
                    }
                    let partitions: Vec<String> = partitions
                        .iter()
                        .map(|(t, p, _)| format!("{t}/{p}"))
                        .collect();
                    tracing::warn!(
                        reason = reason.as_str(),
                        partitions = %partitions.join(","),
                        models = %models,
                        "checkpoint part discarded: {}; its partitions start at the committed offset or the rewind",
                        explain(reason)
                    );
                }
                Placed::OwnDiscarded {
                    topic,
                    partition,
                    reason,
                } => {
                    self.checkpoints.discard(reason.as_str(), 1);
                    let id = io.source.source_id(&topic, partition);
                    let why = format!(
                        "partition {topic}/{partition} was reset ({})",
                        reason.as_str()
                    );
                    let gone = self.engine.forget_source(id, now_ms(), &why);
                    tracing::warn!(
                        reason = reason.as_str(),
                        %topic,
                        partition,
                        models = ?gone,
                        "position discarded: {}; the models counted from it start again empty",
                        explain(reason)
                    );
                }
            }
        }
        if resume {
            io.source.resume_paused();
        }
    }

    /// Checkpointed sets none of whose partitions came here by the second
    /// evaluation after an assignment went to other members: their windows
    /// are not this replica's to keep.
    fn drop_unassigned_sets(&mut self, io: &Edges) {
        if self.pending.is_empty() || io.source.stats().assigned_partitions == 0 {
            return;
        }
        self.pending_checks += 1;
        if self.pending_checks < 2 {
            return;
        }
        for (_, set) in self.pending.drain() {
            self.checkpoints
                .discard("set_incomplete", set.partitions.len() as u64);
            tracing::info!(
                reason = "set_incomplete",
                partitions = %describe(&set.partitions),
                models = %set.model_names().join(","),
                "checkpoint part not restored: its partitions were assigned to other members"
            );
        }
    }

    fn take_set(&mut self, io: &Edges, set: u64) -> Option<RestoreSet> {
        self.pending
            .remove(&set)
            .or_else(|| io.topic.as_ref().and_then(|t| t.take_claimed(set)))
    }

    /// Restores a confirmed set's windows, and the partitions they came from.
    fn restore(&mut self, io: &mut Edges, set: &RestoreSet) {
        let restored = checkpoint::restore_set(&mut self.engine, set);
        for m in &set.models {
            let ids: Vec<u32> = match &m.sources {
                Some(s) => s
                    .iter()
                    .map(|p| io.source.source_id(&p.topic, p.partition))
                    .collect(),
                None => set
                    .partitions
                    .iter()
                    .map(|p| io.source.source_id(&p.topic, p.partition))
                    .collect(),
            };
            self.engine.add_sources(&m.model, &ids);
        }
        tracing::info!(
            windows = restored,
            models = set.models.len(),
            partitions = %describe(&set.partitions),
            "restored checkpoint"
        );
    }

    /// Writes the checkpoint file and publishes the models' states.
    fn write_checkpoint(&mut self, io: &Edges, now: i64) {
        if self.cluster_id.is_none() {
            // Asked once the broker has answered; never long at a pane
            // boundary (a checkpoint without it is checked without it).
            self.cluster_id = io.source.cluster_id(Duration::from_millis(200));
        }
        let positions: Vec<PartitionOffset> = io.source.positions().iter().map(saved).collect();
        let cluster = self.cluster_id.clone();
        let partition_of = |id| io.source.source(id);
        if let Some(t) = &io.topic {
            t.publish(
                &self.engine,
                &positions,
                &partition_of,
                cluster.as_deref(),
                now,
            );
        }
        let Some(store) = &io.store else {
            return;
        };
        let cp = checkpoint::checkpoint_of(
            &self.engine,
            positions,
            &partition_of,
            cluster,
            &self.settings.spec,
            &io.group,
            now,
        );
        match store.save(&cp) {
            Ok(_) => {
                self.checkpoints.ok += 1;
                self.checkpoints.last_ok_ms = Some(now);
            }
            Err(e) => {
                self.checkpoints.failed += 1;
                tracing::error!(error = %e, "checkpoint failed");
            }
        }
    }

    /// Forgets idle models, evaluates, hands the transitions to the log and
    /// the alert queue, and publishes the snapshot.
    fn evaluate(&mut self, io: &Edges, now: i64) {
        if self.settings.watch_baselines && self.baselines.changed() {
            self.answer(Control::Reload { reply: None });
        }
        if let Some(t) = &io.topic {
            t.set_versions(&self.engine);
        }
        self.drop_unassigned_sets(io);
        let started = Instant::now();
        for gone in self.engine.expire_idle(now, self.settings.model_idle_ms) {
            tracing::info!(model = %gone, "model idle; its windows and series are dropped");
        }
        let transitions = self.engine.evaluate(now);
        let eval_seconds = started.elapsed().as_secs_f64();
        for t in &transitions {
            log_transition(t);
            if let Some(q) = &self.alerts {
                // Never blocks: a full queue drops its oldest (counted).
                q.push(t.clone());
            }
        }
        self.baselines.save_automatic(&self.engine);
        let snap = Snapshot {
            at_ms: now,
            report: self.engine.summary(self.settings.arm_features),
            stats: self.engine.stats.clone(),
            kafka: io.source.stats(),
            checkpoints: self.checkpoints,
            eval_seconds,
            transitions,
            reloads: self.reloads,
            memory: self.engine.memory(),
            details: self
                .watched
                .current()
                .iter()
                .filter_map(|m| self.engine.page_report(m, DETAIL_BYTES))
                .collect(),
        };
        let snap = Arc::new(snap);
        self.series.engine.update(&snap);
        self.series.kafka.update(&snap.kafka);
        self.series.checkpoints.update(&snap.checkpoints);
        self.count_baselines();
        let _ = self.snapshot.send(snap);
        release_freed_memory();
    }

    fn count_baselines(&self) {
        self.readiness
            .baselines
            .store(self.engine.baselines().count(), Ordering::Relaxed);
    }

    /// Answers a request of the API (or a reload the directory asked for).
    fn answer(&mut self, c: Control) {
        match c {
            Control::Reload { reply } => {
                let r = self
                    .baselines
                    .load()
                    .map(|loaded| self.engine.replace_baselines(loaded));
                match &r {
                    Ok(models) => {
                        self.reloads.0 += 1;
                        tracing::info!(models = models.len(), "baselines reloaded")
                    }
                    // The old baselines stay in force; readiness is unaffected.
                    Err(e) => {
                        self.reloads.1 += 1;
                        tracing::error!(error = %e, "baseline reload failed; keeping the baselines in force")
                    }
                }
                self.count_baselines();
                if let Some(tx) = reply {
                    let _ = tx.send(r);
                }
            }
            Control::Capture { model, reply } => {
                let r = self.capture(&model);
                match &r {
                    Ok(v) => {
                        tracing::info!(model = %model, version = %v, "baseline captured from the current window")
                    }
                    Err(e) => tracing::warn!(model = %model, error = %e, "baseline capture failed"),
                }
                let _ = reply.send(r);
            }
            Control::Detail { model, reply } => {
                let _ = reply.send(self.engine.report_with(true, Some(&model)));
            }
        }
    }

    /// Makes the model's current window its new baseline, written to the
    /// directory first; returns the new version.
    fn capture(&mut self, model: &str) -> Result<String, String> {
        let b = self.engine.capture(model, now_ms())?;
        self.baselines.save(&b)?;
        let v = b.version.clone();
        self.engine.set_baseline(b);
        Ok(v)
    }

    /// Everything counted is stored: checkpoint, commit, leave the group.
    fn drain(&mut self, io: Edges) {
        tracing::info!("consumer stopping: committing offsets and writing a last checkpoint");
        self.write_checkpoint(&io, now_ms());
        if let Some(t) = &io.topic {
            t.flush(Duration::from_secs(1));
        }
        self.readiness.running.store(false, Ordering::Relaxed);
        io.source.close();
    }
}

/// One structured log line per transition. Names only: no feature values.
fn log_transition(t: &Transition) {
    tracing::info!(
        model = %t.model,
        arm = t.arm.as_deref().unwrap_or(""),
        feature = %t.feature,
        metric = %t.metric,
        from = %t.from,
        to = %t.to,
        severity = t.severity.map(|s| s.as_str()).unwrap_or(""),
        value = t.value,
        threshold = t.threshold,
        samples = t.samples,
        "drift verdict changed"
    );
}

/// A position as the checkpoint saves it.
fn saved(p: &ingest::Position) -> PartitionOffset {
    PartitionOffset {
        topic: p.topic.clone(),
        partition: p.partition,
        offset: p.offset,
        anchor_timestamp_ms: p.anchor.and_then(|a| a.timestamp_ms),
        anchor_fingerprint: p.anchor.map(|a| a.fingerprint),
    }
}

/// A saved position offered to the consumer, to be judged at assignment.
fn offer(set: u64, cluster_id: Option<String>, p: &PartitionOffset) -> Offer {
    Offer {
        position: ingest::Position {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: p.offset,
            anchor: p.anchor_fingerprint.map(|fingerprint| Anchor {
                timestamp_ms: p.anchor_timestamp_ms,
                fingerprint,
            }),
        },
        cluster_id,
        set,
    }
}

fn describe(partitions: &[PartitionOffset]) -> String {
    partitions
        .iter()
        .map(|p| format!("{}/{}@{}", p.topic, p.partition, p.offset))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a discard reason means, for the log line that reports it.
fn explain(reason: Discard) -> &'static str {
    match reason {
        Discard::Cluster => "it was written against another Kafka cluster",
        Discard::Topic => "the broker has another message before its position: the topic was recreated or its data replaced",
        Discard::OutOfRange => "its offset is outside the partition's watermarks",
        Discard::Unverifiable => "the broker could not confirm it",
        Discard::SetIncomplete => "windows that cover it also cover a partition that failed its check or went to another member",
    }
}
