//! The daemon: wiring and shutdown. Read this file to know what `driftd run`
//! does.
//!
//! 1. The configuration is already validated (a bad one exited 64 before we
//!    got here). Baselines are loaded from `baselines.dir`; a bad file stops
//!    the start with its name and problem.
//! 2. One Prometheus registry is made and handed to each part that exports
//!    series (metrics, build info).
//! 3. The HTTP listener is bound: /metrics, /livez, /readyz and the API.
//! 4. The alert task starts (see `alert`): verdict transitions out to
//!    Alertmanager, a Kafka topic and a webhook, re-sent while firing.
//! 5. The consumer loop starts on its own thread (see `ingest`): Kafka in,
//!    engine, checkpoints, evaluation, snapshots and transitions out.
//! 6. Then we wait for the cancellation token (SIGTERM or SIGINT in `driftd
//!    run`; the test or the demo otherwise). On cancellation the consumer
//!    loop stops fetching, stores and commits offsets, writes a last
//!    checkpoint and leaves the group; then the alert task flushes what is
//!    pending; the HTTP server finishes in-flight requests. All of it must
//!    fit in `shutdown.grace` (5 s by default, under Kubernetes' 30 s), or
//!    we say so and exit anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::daemon::admin::{self, AdminState};
use crate::daemon::ingest::{self, Control, Health, IngestError, IngestSetup, LoopHandles};
use crate::daemon::metrics::{self, Metrics, Snapshot};
use crate::engine::window::WindowSpec;
use std::path::PathBuf;

use crate::daemon::admin::HttpConfig;
use crate::daemon::alert::AlertConfig;
use crate::daemon::checkpoint::CheckpointConfig;
use crate::daemon::ingest::KafkaConfig;
use crate::daemon::logging::LogConfig;
use crate::daemon::metrics::MetricsConfig;
use crate::engine::detect::{AutoThresholds, Thresholds};
use crate::engine::{Engine, EngineConfig};

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
            source: "defaults".into(),
        }
    }
}

/// A running daemon.
pub struct Daemon {
    /// Where the HTTP server listens (useful with port 0).
    pub addr: SocketAddr,
    /// Where /metrics and the probes are also served (`http.metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub health: Arc<Health>,
    pub control: mpsc::Sender<Control>,
    pub registry: Registry,
    consumer: JoinHandle<Result<(), IngestError>>,
    http: JoinHandle<std::io::Result<()>>,
    alerts: Option<crate::daemon::alert::Alerting>,
    alerts_cancel: CancellationToken,
    cancel: CancellationToken,
    grace: Duration,
}

/// Makes glibc's malloc hand every allocation over 128 KiB back to the
/// system when freed. Each evaluation builds and drops megabytes at once
/// (the exposition text, the snapshot): with glibc's default, adaptive
/// threshold those land on the heap and fragment it, and RSS crept up ~1
/// MiB a minute (driftd bench, 100 models x 50 features, 10 minutes at 20k
/// lines/s: 93 -> 116 MiB; with this: 62-86 MiB, no trend over 5 minutes).
/// A no-op on other allocators and systems.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called once, first
    // thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Starts the daemon; `cancel` stops it.
pub async fn start(mut cfg: Config, cancel: CancellationToken) -> anyhow::Result<Daemon> {
    let kafka = cfg.require_kafka()?.clone();

    // 1. Baselines. A missing directory is fine with automatic baselines.
    let baselines = if cfg.baselines_dir.exists() || cfg.engine.auto_baseline.is_none() {
        crate::replay::load_baselines(&cfg.baselines_dir).map_err(|errs| {
            anyhow::anyhow!(
                "cannot load the baselines in {}:\n{}",
                cfg.baselines_dir.display(),
                errs.iter()
                    .map(|e| format!("  - {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?
    } else {
        std::fs::create_dir_all(&cfg.baselines_dir).with_context(|| {
            format!(
                "cannot create baselines.dir {}",
                cfg.baselines_dir.display()
            )
        })?;
        Vec::new()
    };
    if baselines.is_empty() && cfg.engine.auto_baseline.is_none() {
        tracing::warn!(
            dir = %cfg.baselines_dir.display(),
            "no baselines: events will be counted as without baseline until one is added (or set baselines.auto_after_events)"
        );
    }
    for b in &baselines {
        tracing::info!(model = %b.model, version = %b.version, features = b.features.len(), "baseline loaded");
    }

    // 2. One registry, each part registers its own series.
    let registry = Registry::new();
    metrics::register_build_info(&registry)?;
    let metrics = Metrics::new(&registry)?
        .with_scores(cfg.metrics.scores.clone())
        .with_per_arm_scores(cfg.metrics.per_arm_scores);

    // 3. HTTP.
    let listener = admin::bind(cfg.http.listen, "http.listen").await?;
    let addr = listener.local_addr()?;
    let probes_listener = match cfg.http.metrics_listen {
        Some(a) => Some(admin::bind(a, "http.metrics_listen").await?),
        None => None,
    };
    let metrics_addr = match &probes_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    if cfg.alerts.external_url.is_empty() {
        cfg.alerts.external_url = crate::daemon::alert::external_url_for(addr);
    }
    let health = Arc::new(Health::default());
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (control_tx, control_rx) = mpsc::channel(16);
    let state = AdminState {
        exposition: metrics.exposition(),
        health: health.clone(),
        snapshot: snap_rx.clone(),
        control: control_tx.clone(),
        admin_token: cfg.http.admin_token.as_deref().map(Arc::from),
    };
    tracing::info!(%addr, "serving /metrics, /livez, /readyz and /api/v1");
    // /metrics and the probes on an address of their own, if configured
    // (say, the pod IP for Prometheus while the API stays on loopback).
    let probes = probes_listener.map(|l| {
        tracing::info!(addr = %metrics_addr.unwrap_or(addr), "serving /metrics, /livez and /readyz");
        admin::serve(l, admin::probes_router(state.clone()), cancel.clone())
    });
    let api = admin::serve(listener, admin::router(state), cancel.clone());
    let http = tokio::spawn(async move {
        match probes {
            Some(p) => {
                let (a, b) = tokio::join!(api, p);
                a.and(b)
            }
            None => api.await,
        }
    });

    // 4. Alerts. Their own token: they flush after the consumer has stopped,
    // so the last transitions are not lost.
    let alerts_cancel = CancellationToken::new();
    let alerts = if cfg.alerts.any_sink() {
        let flush = cfg.grace.mul_f64(0.4);
        let a = crate::daemon::alert::start(
            cfg.alerts.clone(),
            &registry,
            alerts_cancel.clone(),
            flush,
        )?;
        tracing::info!(
            alertmanagers = cfg.alerts.alertmanagers.len(),
            kafka = cfg.alerts.kafka.is_some(),
            webhook = cfg.alerts.webhook.is_some(),
            "alerting started"
        );
        Some(a)
    } else {
        tracing::info!("no alert sink configured: transitions are logged only");
        None
    };

    // 5. The consumer loop.
    let window_ms = match cfg.engine.window {
        WindowSpec::Time { length_ms, .. } => length_ms,
        WindowSpec::Count { .. } => 0,
    };
    let setup = IngestSetup {
        kafka,
        every: cfg.every,
        model_idle: cfg.model_idle,
        checkpoint: cfg.checkpoint.clone(),
        baselines_dir: cfg.baselines_dir.clone(),
        watch_baselines: cfg.watch_baselines,
        window_ms,
        arm_features: cfg.metrics.per_arm_scores,
    };
    let engine = Engine::new(cfg.engine.clone(), baselines);
    let handles = LoopHandles {
        health: health.clone(),
        snapshot: snap_tx,
        control: control_rx,
        alerts: alerts.as_ref().map(|a| a.queue.clone()),
        metrics,
    };
    let loop_cancel = cancel.clone();
    let consumer =
        tokio::task::spawn_blocking(move || ingest::run(setup, engine, handles, loop_cancel));

    Ok(Daemon {
        addr,
        metrics_addr,
        snapshot: snap_rx,
        health,
        control: control_tx,
        registry,
        consumer,
        http,
        alerts,
        alerts_cancel,
        cancel,
        grace: cfg.grace,
    })
}

impl Daemon {
    /// Runs until cancelled (or until the consumer loop fails), then drains
    /// within the grace period.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Daemon {
            mut consumer,
            http,
            alerts,
            alerts_cancel,
            cancel,
            grace,
            ..
        } = self;
        let early = tokio::select! {
            _ = cancel.cancelled() => None,
            r = &mut consumer => Some(r),
        };
        if let Some(r) = early {
            // The loop ended without being asked to: stop everything else.
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
        let drained = tokio::time::timeout(grace, consumer).await;
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
