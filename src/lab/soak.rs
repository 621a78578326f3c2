//! `driftd soak`: the daemon at a steady rate for a long time, with faults.
//!
//! This module owns the long-running robustness check the README's "Soak"
//! section describes. Like `driftd bench` (whose machinery it reuses) it
//! hosts librdkafka's mock cluster (three brokers, the real protocol over
//! loopback) in this process and runs the real `driftd run` binary as a
//! child, so the daemon is measured from outside: its HTTP API, /metrics
//! and /proc. Generated inference logs are produced at `--rate` lines/s;
//! one model's traffic is drifted against its baseline, so a `FeatureDrift`
//! alert fires and stays firing: there is always something to deliver.
//!
//! The daemon's window is `--window` (default: a twelfth of the run, 20 s
//! to 5 minutes), in the daemon's 30 s panes or a tenth of the window if
//! shorter, as many as `window.max_panes` allows (a day: 60 panes of 24
//! minutes); its memory budget is `--max-memory` (`limits.max_memory`).
//! Before the steady traffic begins, one window of event time is
//! **backfilled**: lines stamped from a window ago to now, at `--rate` in
//! event time (at most [`BACKFILL_MAX_LINES`], spread over the window),
//! produced as fast as the daemon drains them (never more ahead of it than
//! the mock broker keeps), so a day window holds all its panes when the
//! steady phase starts. (Its first lines land in panes that leave the
//! window while the backfill runs: they are counted late, and reported.)
//!
//! Then lines with current timestamps go in at `--rate`; after a warm-up
//! (a twelfth of the run, 20 s to 5 minutes, or the window if shorter, and
//! 5 s; the alert delivered; the daemon caught up) the start is measured;
//! then one fault begins every `--fault-every`, in turn:
//!
//! 1. **broker outage**: every mock broker down (1/3 of the period, at most
//!    60 s); /readyz must turn 503 and come back to 200 after the brokers do;
//! 2. **request errors**: Fetch and OffsetCommit requests fail with
//!    retriable errors and dropped connections (1/3 of the period, at most
//!    60 s);
//! 3. **Alertmanager outage**: the real Alertmanager (Debian's
//!    `prometheus-alertmanager`, or `alertmanager`, or `--alertmanager`)
//!    the daemon sends to is killed, then restarted on the same port after
//!    max(1/3 of the period, 1/6 of the run), at most 5 minutes; the firing
//!    alert must reach it again. Without an Alertmanager binary the soak
//!    still runs and says this fault was not exercised.
//!
//! At the end the producer stops and the daemon must have consumed every
//! message (the group's committed offset equals the high watermark of every
//! partition, and its message counter is at least what the topic holds:
//! at-least-once, so duplicates after faults are allowed and reported), its
//! RSS, open file descriptors and /metrics series must be flat against the
//! start (limits in [`RSS_FACTOR`], [`RSS_SLACK_MIB`], [`FD_SLACK`]), no
//! "panicked" may appear in its output, and SIGTERM must stop it cleanly
//! within its grace period. Every failed check is listed and `driftd soak`
//! exits 1.
//!
//! **Flat RSS**, the rule: the growth over the steady phase (the
//! `--duration` after the warm-up) may be at most 25% of the start's RSS
//! plus 16 MiB, read two ways, both of which must fit: the end's median
//! against the start's, and the trend (the least-squares slope of the
//! one-a-second samples, times the phase's length). The first is robust to
//! a spike at either end, the second to a lucky or unlucky end sample. The
//! report also gives the maximum, the slope in MiB per minute, the peak
//! (VmHWM, backfill included) and the engine's memory budget from
//! /metrics (`driftd_memory_reserved_bytes`, `driftd_memory_limit_bytes`,
//! `driftd_memory_refused_total`) at both ends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, Producer, ProducerContext,
};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use crate::engine::window::WindowSpec;
use crate::lab::generate::{DriftSpec, Generator, GeneratorConfig, DEFAULT_CATEGORICAL_SHARE};
use crate::lab::harness::{
    free_port, machine, open_fds, proc_mem, BlockingHttp, ChildDaemon, DaemonConfig, Scratch,
    Traffic,
};

const TOPIC: &str = "soak";
const MIB: f64 = (1u64 << 20) as f64;
const GROUP: &str = "driftd-soak";
const BROKERS: i32 = 3;
/// The `cluster` label of the soak's alerts.
const CLUSTER: &str = "soak";
/// The daemon's `shutdown.grace`.
const GRACE: Duration = Duration::from_secs(5);
/// The daemon's `alerts.resend_interval`.
const RESEND: Duration = Duration::from_secs(5);

/// End RSS may be at most start x this + [`RSS_SLACK_MIB`]: the exposition
/// text and snapshot are rebuilt every evaluation and RSS swings with them
/// (README, Performance), so a single sample is noise; medians of 5-10 s of
/// samples are compared, and a leak of even 1 MiB a minute fails a 30-minute
/// run of a ~30 MiB daemon.
pub(crate) const RSS_FACTOR: f64 = 1.25;
pub(crate) const RSS_SLACK_MIB: f64 = 16.0;
/// End open file descriptors may be at most start + this (broker and
/// Alertmanager connections come and go; a leak per fault or per retry
/// does not fit).
pub(crate) const FD_SLACK: usize = 16;
/// Brokers down or Alertmanager back: how long recovery may take.
const RECOVERY: Duration = Duration::from_secs(90);
/// The backfill is one window of event time at `--rate`, at most this many
/// lines (a day at 2000 lines/s would be 173M; 2M fill a day's 60 panes
/// with ~30 lines per model per pane at 1000 models).
pub(crate) const BACKFILL_MAX_LINES: u64 = 2_000_000;
/// The baselines' reference stream holds at most this many lines (the
/// bench's 2,000 a model would be 2M lines at 1000 models, their values
/// all held until the baselines are built): 500 a model at 1000 models.
const REFERENCE_MAX_LINES: usize = 500_000;
/// The daemon's `limits.model_idle` default; a model whose last event is
/// older is forgotten, so a long window's backfill needs more.
const MODEL_IDLE: Duration = Duration::from_secs(3600);
/// The daemon's `limits.max_models` default.
const MAX_MODELS: usize = 1000;

/// Flags of `driftd soak`.
#[derive(Debug, Clone)]
pub(crate) struct SoakOptions {
    /// How long faults are injected (after the warm-up).
    pub duration: Duration,
    /// Lines per second.
    pub rate: u64,
    /// One fault starts every this long.
    pub fault_every: Duration,
    pub models: usize,
    pub features: usize,
    /// The daemon's window length (default: [`window_of`]).
    pub window: Option<Duration>,
    /// The daemon's `limits.max_memory`, as written in its config (default:
    /// the daemon's).
    pub max_memory: Option<String>,
    /// Partitions of the topic (default: enough that a minute of backlog
    /// fits in the mock broker's 5 MB per partition).
    pub partitions: Option<i32>,
    /// The Alertmanager binary (default: found on PATH).
    pub alertmanager: Option<PathBuf>,
    /// The faults to cycle through, in this order (default: all three).
    pub faults: Vec<FaultKind>,
    /// Keep the scratch directory (the daemon's and Alertmanager's logs)
    /// even when every check passed.
    pub keep_logs: bool,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            duration: Duration::from_secs(30 * 60),
            rate: 2000,
            fault_every: Duration::from_secs(3 * 60),
            models: 4,
            features: 20,
            window: None,
            max_memory: None,
            partitions: None,
            alertmanager: None,
            faults: FaultKind::ALL.to_vec(),
            keep_logs: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    BrokerOutage,
    RequestErrors,
    AlertmanagerOutage,
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] = [
        FaultKind::BrokerOutage,
        FaultKind::RequestErrors,
        FaultKind::AlertmanagerOutage,
    ];

    /// `broker`, `requests` or `alertmanager` (the `--faults` names).
    pub fn parse(s: &str) -> Result<FaultKind, String> {
        match s.trim() {
            "broker" | "broker_outage" => Ok(FaultKind::BrokerOutage),
            "requests" | "request_errors" => Ok(FaultKind::RequestErrors),
            "alertmanager" | "alertmanager_outage" => Ok(FaultKind::AlertmanagerOutage),
            other => Err(format!(
                "{other:?}: the faults are broker, requests and alertmanager"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::BrokerOutage => "broker_outage",
            FaultKind::RequestErrors => "request_errors",
            FaultKind::AlertmanagerOutage => "alertmanager_outage",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FaultKind::BrokerOutage => "all brokers down",
            FaultKind::RequestErrors => "Fetch/OffsetCommit errors",
            FaultKind::AlertmanagerOutage => "Alertmanager killed",
        }
    }
}

/// One fault and what the daemon did about it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultRecord {
    pub kind: FaultKind,
    /// False for an Alertmanager outage without an Alertmanager.
    pub exercised: bool,
    /// Seconds since the fault phase began.
    pub at_s: f64,
    pub seconds: f64,
    /// First /readyz 503 after the fault began.
    pub ready_down_after_s: Option<f64>,
    /// First /readyz 200 after the fault ended (brokers up).
    pub ready_recovered_after_s: Option<f64>,
    /// Messages the daemon counted while the fault lasted.
    pub consumed_during: u64,
    /// The largest lag the daemon reported while it lasted (and recovered).
    pub max_lag: i64,
    /// Alertmanager outage: failed posts counted by the daemon meanwhile.
    pub failed_sends: Option<u64>,
    /// Alertmanager outage: the firing alert was back in the restarted
    /// Alertmanager this long after it was ready.
    pub alert_back_after_s: Option<f64>,
}

/// RSS, descriptors and series at one end of the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Measure {
    /// Median of one sample a second over 5 to 10 s (a 24th of the run).
    pub rss_mib: f64,
    /// Median of the same samples.
    pub fds: usize,
    pub series: usize,
    /// The engine's memory budget as /metrics says.
    pub memory: Budget,
}

/// The engine's memory budget, from /metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Budget {
    /// `driftd_memory_reserved_bytes`: the bound of every window, health
    /// state and join held (reserved at its worst, not what is touched).
    pub reserved_bytes: f64,
    /// `driftd_memory_limit_bytes`: `limits.max_memory` less the daemon's
    /// own buffers.
    pub limit_bytes: f64,
    /// `driftd_memory_refused_total`: lines whose new model, arm or state
    /// would have passed the budget.
    pub refused: f64,
}

impl Budget {
    fn of(metrics: &str) -> Budget {
        Budget {
            reserved_bytes: sample_sum(metrics, "driftd_memory_reserved_bytes", &[]),
            limit_bytes: sample_sum(metrics, "driftd_memory_limit_bytes", &[]),
            refused: sample_sum(metrics, "driftd_memory_refused_total", &[]),
        }
    }
}

/// What the backfill did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BackfillRecord {
    /// Lines produced (and counted by the daemon before the warm-up).
    pub lines: u64,
    /// Event time they span: the window, ending when the backfill began.
    pub span_s: f64,
    /// Lines per second of event time: `--rate`, or less when capped.
    pub event_rate: f64,
    /// From the first line produced to the daemon having counted the last.
    pub seconds: f64,
    /// Lines the daemon dropped as older than the window
    /// (`driftd_late_events_total` when it had counted them all).
    pub late: u64,
    /// The daemon's RSS then.
    pub rss_after_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Everything one soak measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakReport {
    pub machine: String,
    pub cores: usize,
    pub duration_s: f64,
    pub rate: u64,
    pub fault_every_s: f64,
    pub models: usize,
    pub features: usize,
    pub brokers: i32,
    pub partitions: i32,
    pub window: String,
    /// The window's panes and their length, as the daemon caps them
    /// (`window.max_panes`).
    pub panes: usize,
    pub pane: String,
    /// `--max-memory` as written in the daemon's config (None: its default).
    pub max_memory: Option<String>,
    /// The first line of the daemon's memory plan (`driftd check-config`).
    pub memory_plan: String,
    pub backfill: BackfillRecord,
    /// Steady traffic before the start was measured.
    pub warmup_s: f64,
    pub drifted_model: String,
    /// The Alertmanager binary, or None (its fault not exercised).
    pub alertmanager: Option<String>,
    pub start: Measure,
    pub end: Measure,
    pub rss_limit_mib: f64,
    /// The largest one-a-second RSS sample of the steady phase.
    pub rss_max_mib: f64,
    /// The least-squares slope of those samples, MiB per minute.
    pub rss_slope_mib_per_min: f64,
    /// The daemon's peak RSS (VmHWM) at the end, backfill included.
    pub rss_peak_mib: f64,
    pub fds_limit: usize,
    pub series_added: Vec<String>,
    pub series_removed: Vec<String>,
    /// (seconds since the fault phase began, RSS MiB, open fds).
    pub curve: Vec<(f64, f64, usize)>,
    /// Messages in the topic: the sum of the partitions' high watermarks.
    pub produced: u64,
    /// Messages the producer had acknowledged (a retried produce can put a
    /// message in the log twice, so `produced` may be a little higher).
    pub acked: u64,
    pub producer_failed: u64,
    /// The daemon's message counter (`/api/v1/status` `messages`).
    pub consumed: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Partitions whose committed offset equals the high watermark.
    pub partitions_committed: usize,
    /// When the drift alert first reached Alertmanager (seconds since the
    /// daemon started).
    pub first_alert_s: Option<f64>,
    pub alerts_dropped: f64,
    pub faults: Vec<FaultRecord>,
    /// Faults exercised, by kind.
    pub fault_counts: BTreeMap<String, usize>,
    /// Lines with "panicked" in the daemon's output.
    pub panics: usize,
    pub exit_status: String,
    pub shutdown_s: Option<f64>,
    pub checks: Vec<Check>,
    pub passed: bool,
    /// The daemon's and Alertmanager's logs, kept when a check failed (or
    /// with `--keep-logs`).
    pub logs: Option<String>,
}

impl SoakReport {
    pub(crate) fn failed(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.ok).collect()
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The wall clock (UTC), to find a moment in the daemon's log.
fn wall() -> String {
    chrono::Utc::now().format("%H:%M:%S").to_string()
}

/// `6m05s`, `45s`.
fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The least-squares slope of `(x, y)` points, in y per x (0 when the x
/// do not vary).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

fn median_u(v: &[usize]) -> usize {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The identities (name and labels) of every sample in an exposition.
fn series_set(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(head, _)| head).to_owned())
        .collect()
}

/// Sum of the samples of `name` whose labels include every `k="v"` of `want`.
fn sample_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(head, _)| {
            let (n, labels) = head.split_once('{').unwrap_or((head, ""));
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// The Alertmanager binary: `--alertmanager`, else `prometheus-alertmanager`
/// or `alertmanager` on PATH (or in /usr/bin, /usr/local/bin).
pub(crate) fn find_alertmanager(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--alertmanager {}: no such file", p.display());
        return Ok(Some(p.to_owned()));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    for d in dirs {
        for name in ["prometheus-alertmanager", "alertmanager"] {
            let p = d.join(name);
            if p.is_file() {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Alertmanager on loopback.

struct Alertmanager {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Alertmanager {
    fn new(bin: PathBuf, dir: &Path) -> anyhow::Result<Alertmanager> {
        std::fs::write(
            dir.join("alertmanager.yml"),
            // One route, groups flushed after 1 s, a receiver nobody listens
            // on: the soak reads Alertmanager's API, not notifications.
            "route:\n  receiver: nowhere\n  group_by: [alertname, model, feature]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: nowhere\n    webhook_configs:\n      - url: http://127.0.0.1:1/\n",
        )?;
        Ok(Alertmanager {
            bin,
            dir: dir.to_owned(),
            port: free_port()?,
            child: None,
            starts: 0,
        })
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (on the same port and storage every time) and waits until
    /// it is ready.
    fn start(&mut self, http: &BlockingHttp) -> anyhow::Result<()> {
        self.starts += 1;
        let log = self.dir.join(format!("alertmanager-{}.log", self.starts));
        let mut cmd = Command::new(&self.bin);
        no_inherited_fds(&mut cmd);
        let child = cmd
            .arg(format!(
                "--config.file={}",
                self.dir.join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                self.dir.join("alertmanager-data").display()
            ))
            .arg(format!("--web.listen-address={}", self.addr()))
            // A single instance: no gossip.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = http.get(&format!("http://{}/-/ready", self.addr())) {
                return Ok(());
            }
            if let Some(c) = &mut self.child {
                if let Some(st) = c.try_wait()? {
                    bail!(
                        "Alertmanager exited ({st}) before it was ready:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("Alertmanager not ready after 60 s (log: {})", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: a crash, not a clean stop.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the firing drift alert of `model` from the soak's daemon is
    /// in Alertmanager (None: Alertmanager does not answer).
    fn has_drift_alert(&self, http: &BlockingHttp, model: &str) -> Option<bool> {
        let (status, body) = http
            .get(&format!("http://{}/api/v2/alerts?active=true", self.addr()))
            .ok()?;
        if status != 200 {
            return None;
        }
        let alerts: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(alerts.as_array()?.iter().any(|a| {
            let l = &a["labels"];
            l["alertname"] == "FeatureDrift" && l["model"] == model && l["cluster"] == CLUSTER
        }))
    }
}

/// Lets `cmd` inherit only stdin, stdout and stderr, and kills it if the
/// soak dies. librdkafka's mock broker accepts connections without
/// `CLOEXEC`: a child started while the daemon is connected would hold the
/// broker's end of those connections open, so a later `broker_down` (which
/// closes the mock's copy) would leave them half-alive and the daemon's
/// requests unanswered instead of refused (seen: a 60 s stall after an
/// Alertmanager restart, until librdkafka's request timeout).
fn no_inherited_fds(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sysconf in the parent; the child, between fork and exec, only
    // makes system calls (prctl, fcntl), which are async-signal-safe, and
    // allocates nothing.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(256, 65_536) as libc::c_int;
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            for fd in 3..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            Ok(())
        });
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// The producer: a thread at a steady rate, counting acknowledgements.

#[derive(Default)]
struct ProduceStats {
    queued: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
}

struct Counting(Arc<ProduceStats>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A producer to the soak's topic counting its acknowledgements in `stats`.
fn soak_producer(
    brokers: &str,
    stats: &Arc<ProduceStats>,
) -> anyhow::Result<BaseProducer<Counting>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Few, large message sets: the mock broker finds a fetch's offset
        // by walking every set a partition holds, from the oldest. At 20 ms
        // (one or two lines a set) that walk took 80% of a core at 2000
        // lines/s and drained a backlog at only ~7k lines/s; at 250 ms, a
        // set holds ~20 lines.
        .set("linger.ms", "250")
        // Messages wait out any outage the soak makes.
        .set("message.timeout.ms", "900000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create_with_context(Counting(stats.clone()))
        .context("creating the soak's producer")
}

/// Queues the generator's last line, keyed by its model, for line number
/// `n`'s partition (round-robin: every partition takes its share of a
/// backlog), waiting while the producer's queue is full.
fn send_line(
    p: &BaseProducer<Counting>,
    g: &Generator,
    names: &[String],
    line: &str,
    n: u64,
    partitions: i32,
) {
    let key = g.last_model().map_or("", |m| names[m].as_str());
    let mut rec = BaseRecord::to(TOPIC)
        .key(key)
        .payload(line)
        .partition((n % partitions as u64) as i32);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(5));
            }
            Err(_) => {
                p.context().0.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Waits until everything queued is delivered (or has failed, and is
/// counted so).
fn flush(p: &BaseProducer<Counting>) {
    if p.flush(Duration::from_secs(300)).is_err() {
        p.context()
            .0
            .failed
            .fetch_add(p.in_flight_count().max(0) as u64, Ordering::Relaxed);
    }
}

/// The steady traffic: lines stamped now at `rate` a second until `stop`.
fn start_producer(
    brokers: String,
    partitions: i32,
    rate: u64,
    gcfg: GeneratorConfig,
    stop: Arc<AtomicBool>,
    stats: Arc<ProduceStats>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || -> anyhow::Result<()> {
        let p = soak_producer(&brokers, &stats)?;
        let mut g = Generator::new(gcfg);
        let names = g.model_names();
        let start = Instant::now();
        // The backfill's lines were queued before.
        let before = stats.queued.load(Ordering::Relaxed);
        let mut sent = 0u64;
        let mut buf = String::new();
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                g.next_line(crate::clock::now_ms(), &mut buf);
                send_line(&p, &g, &names, &buf, sent, partitions);
                sent += 1;
            }
            stats.queued.store(before + sent, Ordering::Relaxed);
            p.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_millis(2));
        }
        stats.queued.store(before + sent, Ordering::Relaxed);
        flush(&p);
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The plan.

/// (kind, start since the fault phase began, length).
pub(crate) fn plan(o: &SoakOptions) -> Vec<(FaultKind, Duration, Duration)> {
    let period = o.fault_every;
    let third = period / 3;
    // Every fault is over this long before the end: the end is measured
    // after recovery.
    let latest_end = o
        .duration
        .saturating_sub(third.max(Duration::from_secs(10)));
    let cycle = if o.faults.is_empty() {
        &FaultKind::ALL[..]
    } else {
        &o.faults[..]
    };
    let mut out = Vec::new();
    for k in 0u32.. {
        let at = period * k;
        if at >= latest_end {
            break;
        }
        let kind = cycle[k as usize % cycle.len()];
        let len = match kind {
            FaultKind::BrokerOutage | FaultKind::RequestErrors => {
                third.min(Duration::from_secs(60))
            }
            FaultKind::AlertmanagerOutage => third
                .max(o.duration / 6)
                .min(Duration::from_secs(300))
                .min(period * 5 / 2),
        };
        let len = len.min(latest_end - at);
        if len >= Duration::from_secs(5) {
            out.push((kind, at, len));
        }
    }
    out
}

/// The default window: a twelfth of the run, in whole 10 s, 20 s to 5
/// minutes. (A daemon more than a window behind counts its events late: the
/// windows must outlast a hiccup of a busy machine.)
pub(crate) fn window_of(o: &SoakOptions) -> Duration {
    let w = (o.duration.as_secs() / 12 / 10 * 10).clamp(20, 300);
    Duration::from_secs(w)
}

/// The pane written in the daemon's config: its default (30 s), or a tenth
/// of a window shorter than 5 minutes (the default windows are ten panes);
/// the daemon caps the panes at `window.max_panes` by making them longer.
fn pane_of(window: Duration) -> Duration {
    (window / 10).min(Duration::from_secs(30))
}

/// How long the steady traffic runs before the start is measured: the
/// default window (a twelfth of the run) or the window if shorter, and 5 s.
/// (With the default window that is the window filled once by current
/// lines, as before the backfill existed.)
fn warmup_of(o: &SoakOptions, window: Duration) -> Duration {
    window_of(o).min(window) + Duration::from_secs(5)
}

/// Lines of the backfill: a window at `--rate`, at most
/// [`BACKFILL_MAX_LINES`].
fn backfill_lines(o: &SoakOptions, window: Duration) -> u64 {
    ((window.as_secs_f64() * o.rate as f64) as u64).clamp(1, BACKFILL_MAX_LINES)
}

fn partitions_of(o: &SoakOptions, bytes_per_line: f64) -> i32 {
    if let Some(p) = o.partitions {
        return p.max(1);
    }
    // The mock broker keeps the last 5 MB of each partition: a 60 s backlog
    // at the rate must fit twice over.
    let backlog = o.rate as f64 * bytes_per_line * 60.0 * 2.0;
    ((backlog / (5u64 << 20) as f64).ceil() as i32).clamp(8, 64)
}

/// The `[limits]` the soak sets: `--max-memory`; `max_models` when there
/// are more models than its default; and `model_idle` a window longer than
/// the window (the backfill's first lines are a window old, and a model
/// whose last event is older than `model_idle` is forgotten, its panes
/// with it).
fn limits_section(o: &SoakOptions, window: Duration) -> String {
    let mut limits = String::new();
    if let Some(m) = &o.max_memory {
        limits.push_str(&format!("max_memory = {m:?}\n"));
    }
    if o.models > MAX_MODELS {
        limits.push_str(&format!("max_models = {}\n", o.models));
    }
    if window + Duration::from_secs(15 * 60) > MODEL_IDLE {
        limits.push_str(&format!(
            "model_idle = \"{}\"\n",
            humantime::format_duration(window + MODEL_IDLE)
        ));
    }
    if limits.is_empty() {
        limits
    } else {
        format!("\n[limits]\n{limits}")
    }
}

/// The daemon's config file: the lab's daemon under test, with the soak's
/// window, limits and shutdown grace and, with an Alertmanager, alerts to
/// it.
fn write_config(
    o: &SoakOptions,
    dir: &Path,
    brokers: &str,
    port: u16,
    window: Duration,
    am: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join("soak.toml");
    let mut extra = format!(
        "\n[shutdown]\ngrace = \"{}\"\n",
        humantime::format_duration(GRACE)
    );
    extra.push_str(&limits_section(o, window));
    if let Some(am) = am {
        extra.push_str(&format!(
            r#"
[alerts]
resend_interval = "{resend}"

[alerts.labels]
cluster = "{CLUSTER}"

[[alerts.alertmanagers]]
url = "http://{am}"
timeout = "2s"
"#,
            resend = humantime::format_duration(RESEND),
        ));
    }
    DaemonConfig {
        brokers,
        topic: TOPIC,
        group_id: GROUP,
        commit_interval: Some(Duration::from_secs(1)),
        window,
        pane: pane_of(window),
        // Each evaluation scores every model and renders their series: at
        // a thousand models, once a second would leave no time to consume.
        every: Duration::from_secs((o.models as u64 / 20).clamp(1, 30)),
        baselines_dir: &dir.join("baselines"),
        state_dir: &dir.join("state"),
        port,
        extra: &extra,
    }
    .write(&path)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// The run.

/// A client reading the offsets the daemon's group committed (it does not
/// join the group).
fn group_watcher(brokers: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Per-partition committed offset of the daemon's group (0 before its
/// first commit).
fn committed(c: &BaseConsumer, partitions: i32) -> anyhow::Result<Vec<i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| {
            committed
                .find_partition(TOPIC, p)
                .map_or(0, |e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
        })
        .collect())
}

/// Per-partition (committed, high watermark) of the daemon's group.
fn offsets(c: &BaseConsumer, partitions: i32) -> anyhow::Result<Vec<(i64, i64)>> {
    let done = committed(c, partitions)?;
    let mut out = Vec::with_capacity(partitions as usize);
    for (p, done) in (0..partitions).zip(done) {
        let (_, high) = c.fetch_watermarks(TOPIC, p, Duration::from_secs(10))?;
        out.push((done, high));
    }
    Ok(out)
}

/// How far the most behind partition's committed offset is from the lines
/// queued to it (`sent` lines round-robin over `committed.len()`
/// partitions).
fn most_behind(sent: u64, committed: &[i64]) -> i64 {
    let n = committed.len().max(1) as u64;
    committed
        .iter()
        .enumerate()
        .map(|(p, c)| (sent / n + u64::from((p as u64) < sent % n)) as i64 - c)
        .max()
        .unwrap_or(0)
}

/// Whether the daemon has counted all but the last 2 s of what was produced
/// (its counter is published once per evaluation, every second).
fn caught_up(d: &ChildDaemon, p: &ProduceStats, rate: u64) -> bool {
    let acked = p.acked.load(Ordering::Relaxed);
    d.status()
        .ok()
        .and_then(|s| s["messages"].as_u64())
        .is_some_and(|m| m + 2 * rate >= acked)
}

/// The series of /metrics once they have settled: the daemon caught up (a
/// lagging daemon's windows miss events, and the series of empty arm
/// windows go) and two scrapes 2 s apart agree, or the second equals
/// `want`. After a minute, the last scrape.
fn settled_series(
    d: &ChildDaemon,
    p: &ProduceStats,
    rate: u64,
    want: Option<&BTreeSet<String>>,
) -> anyhow::Result<BTreeSet<String>> {
    let started = Instant::now();
    let mut last = series_set(&d.get("/metrics")?.1);
    loop {
        if want == Some(&last) {
            return Ok(last);
        }
        std::thread::sleep(Duration::from_secs(2));
        let now = series_set(&d.get("/metrics")?.1);
        let settled = caught_up(d, p, rate) && (now == last || want == Some(&now));
        last = now;
        if settled || started.elapsed() > Duration::from_secs(60) {
            return Ok(last);
        }
    }
}

/// A fault being injected or recovered from.
struct Live {
    index: usize,
    ends_at: Duration,
    ended: Option<Instant>,
    started: Instant,
    consumed_at_start: u64,
    errors_at_start: f64,
    /// The Alertmanager restarted and was ready at.
    am_ready: Option<Instant>,
}

/// The soak's traffic: the bench's (compact lines, arms), fresh lines, and
/// the first model's first numeric feature shifted by two standard
/// deviations from the start, so its drift alert fires and stays firing.
struct SoakTraffic {
    shape: Traffic,
    config: GeneratorConfig,
    drifted_model: String,
    feature: String,
    bytes_per_line: f64,
}

impl SoakTraffic {
    fn new(o: &SoakOptions, now: i64) -> anyhow::Result<SoakTraffic> {
        let shape = Traffic {
            models: o.models,
            features: o.features,
            categorical_share: DEFAULT_CATEGORICAL_SHARE,
            compact: true,
            arms: true,
        };
        let mut config = GeneratorConfig {
            stream_seed: Some(11),
            ..shape.generator_config()
        };
        let probe = Generator::new(config.clone());
        let drifted_model = probe.model_names()[0].clone();
        let feature = probe
            .features(0)
            .iter()
            .find(|f| f.is_numeric())
            .map(|f| f.name.clone())
            .context("the first model has no numeric feature to drift; use more --features")?;
        config.drifts =
            vec![DriftSpec::mean_shift(feature.as_str(), 2.0, 0).for_model(&drifted_model)];
        let bytes_per_line = {
            let mut g = Generator::new(config.clone());
            let mut buf = String::new();
            let n = 200;
            (0..n)
                .map(|_| {
                    g.next_line(now, &mut buf);
                    buf.len()
                })
                .sum::<usize>() as f64
                / n as f64
        };
        Ok(SoakTraffic {
            shape,
            config,
            drifted_model,
            feature,
            bytes_per_line,
        })
    }
}

/// What a soak runs, in a scratch directory: the mock brokers, Alertmanager
/// and the daemon. (Fields drop in this order: the daemon before the
/// brokers, the scratch directory last.)
struct Rig {
    d: ChildDaemon,
    am: Option<Alertmanager>,
    cluster: MockCluster<'static, DefaultProducerContext>,
    http: BlockingHttp,
    brokers: String,
    partitions: i32,
    stdout_path: PathBuf,
    daemon_started: Instant,
    /// The window's panes and their length, as the daemon caps them.
    panes: (usize, Duration),
    /// The first line of the daemon's memory plan.
    memory_plan: String,
    scratch: Scratch,
}

/// One look at the daemon, once a second while faults come and go.
struct Tick {
    /// Since the fault phase began.
    t: Duration,
    messages: u64,
    lag: i64,
    ready: u16,
    rss: f64,
    fds: usize,
}

/// What the fault phase saw.
struct FaultPhase {
    faults: Vec<FaultRecord>,
    curve: Vec<(f64, f64, usize)>,
    /// (seconds since the phase began, RSS MiB) once a second until
    /// `--duration`.
    rss: Vec<(f64, f64)>,
    /// RSS and descriptors sampled over the phase's last `sampling`.
    end_rss: Vec<f64>,
    end_fds: Vec<usize>,
}

/// How the daemon ended.
struct LastWords {
    final_ready: u16,
    alerts_dropped: f64,
    /// Its exit status and how long it took after SIGTERM.
    exit: Option<(ExitStatus, Duration)>,
    panic_lines: Vec<String>,
}

/// What the drain found.
struct Drained {
    /// Messages in the topic.
    produced: u64,
    consumed: u64,
    partitions_committed: usize,
    lost: u64,
    duplicates: u64,
}

/// How long the start and the end are sampled: a 24th of the run, 5 to 10 s.
fn sampling_of(o: &SoakOptions) -> Duration {
    (o.duration / 24).clamp(Duration::from_secs(5), Duration::from_secs(10))
}

/// What the daemon will make of its config, before it starts: the window's
/// panes and their length, and the first line of its memory plan; an error
/// naming every problem it would refuse to start with (a `--max-memory`
/// too small for the models, say).
fn preflight(config: &Path) -> anyhow::Result<((usize, Duration), String)> {
    let cfg = crate::config::Config::load(Some(config)).map_err(|e| {
        anyhow::anyhow!("the daemon's config (--window, --max-memory) is not valid: {e}")
    })?;
    let found = crate::daemon::app::preflight(&cfg);
    if !found.problems.is_empty() {
        let problems: Vec<String> = found
            .problems
            .iter()
            .map(|(k, m)| format!("  {k}: {m}"))
            .collect();
        bail!(
            "the daemon would not start with the soak's config (see --max-memory, --models, --features, --window):\n{}",
            problems.join("\n")
        );
    }
    let panes = match cfg.engine.window.capped(cfg.engine.max_panes).0 {
        spec @ WindowSpec::Time { pane_ms, .. } => {
            (spec.panes(), Duration::from_millis(pane_ms as u64))
        }
        spec @ WindowSpec::Count { .. } => (spec.panes(), Duration::ZERO),
    };
    let plan = found.memory.lines().next().unwrap_or_default();
    Ok((panes, plan.trim_end_matches(':').to_owned()))
}

/// A line printed at most once per period.
struct Progress {
    every: Duration,
    last: Instant,
}

impl Progress {
    fn every(every: Duration) -> Progress {
        Progress {
            every,
            last: Instant::now(),
        }
    }

    fn say(&mut self, line: impl FnOnce() -> String) {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            eprintln!("{}", line());
        }
    }
}

/// Failed posts to Alertmanager the daemon counted.
fn alert_errors(d: &ChildDaemon) -> f64 {
    d.get("/metrics").map_or(0.0, |(_, t)| {
        sample_sum(
            &t,
            "driftd_alerts_sent_total",
            &[("sink", "alertmanager"), ("outcome", "error")],
        )
    })
}

impl Rig {
    /// Baselines, brokers, Alertmanager (with `am_bin`) and the daemon,
    /// joined to its group.
    fn start(
        o: &SoakOptions,
        traffic: &SoakTraffic,
        window: Duration,
        am_bin: Option<&Path>,
        now: i64,
    ) -> anyhow::Result<Rig> {
        let http = BlockingHttp::new(Duration::from_secs(5))?;
        let partitions = partitions_of(o, traffic.bytes_per_line);
        let scratch = Scratch::new("soak").context("creating a scratch directory")?;
        let dir = scratch.0.clone();
        std::fs::create_dir_all(dir.join("baselines"))?;
        let reference = traffic.shape.reference_lines(REFERENCE_MAX_LINES);
        let building = Instant::now();
        for b in traffic.shape.baselines_from(now, reference)? {
            b.save(&dir.join("baselines"))?;
        }
        eprintln!(
            "soak: {} baselines built from {reference} reference lines in {:.1} s",
            o.models,
            secs(building.elapsed())
        );

        let cluster = MockCluster::new(BROKERS).context("starting librdkafka's mock cluster")?;
        cluster.create_topic(TOPIC, partitions, 1)?;
        let brokers = cluster.bootstrap_servers();

        let am = match am_bin {
            Some(bin) => {
                let mut a = Alertmanager::new(bin.to_owned(), &dir)?;
                a.start(&http)?;
                Some(a)
            }
            None => {
                eprintln!(
                    "soak: no Alertmanager binary (prometheus-alertmanager or alertmanager on PATH, or --alertmanager): the Alertmanager outage fault is NOT exercised (apt-get install prometheus-alertmanager)"
                );
                None
            }
        };
        let port = free_port()?;
        let config = write_config(
            o,
            &dir,
            &brokers,
            port,
            window,
            am.as_ref().map(|a| a.addr()).as_deref(),
        )?;
        let (panes, memory_plan) = preflight(&config)?;
        let stdout_path = dir.join("daemon.stdout");
        let mut d = ChildDaemon::start(
            &config,
            port,
            dir.join("daemon.log"),
            Stdio::from(std::fs::File::create(&stdout_path)?),
        )?;
        d.wait_joined()?;
        Ok(Rig {
            d,
            am,
            cluster,
            http,
            brokers,
            partitions,
            stdout_path,
            daemon_started: Instant::now(),
            panes,
            memory_plan,
            scratch,
        })
    }

    /// What runs where.
    fn announce(&self, o: &SoakOptions, traffic: &SoakTraffic, window: Duration) {
        eprintln!(
            "soak: driftd run (pid {}) on {} partitions of {BROKERS} mock brokers; {} lines/s, {} models x {} features ({:.0} B/line), {}/{} drifted; window {} in {} panes of {}; {}; logs in {}",
            self.d.pid(),
            self.partitions,
            o.rate,
            o.models,
            o.features,
            traffic.bytes_per_line,
            traffic.drifted_model,
            traffic.feature,
            humantime::format_duration(window),
            self.panes.0,
            humantime::format_duration(self.panes.1),
            self.memory_plan,
            self.scratch.0.display()
        );
    }

    /// The daemon's message counter (None when its API does not answer).
    fn counted(&self) -> Option<u64> {
        self.d.status().ok().and_then(|s| s["messages"].as_u64())
    }

    /// The engine's memory budget, from /metrics.
    fn budget(&self) -> anyhow::Result<Budget> {
        Ok(Budget::of(&self.d.get("/metrics")?.1))
    }

    /// Produces one window of event time (see [`backfill_lines`]) as fast
    /// as the daemon drains it, and waits until the daemon has counted all
    /// of it.
    fn backfill(
        &mut self,
        o: &SoakOptions,
        traffic: &SoakTraffic,
        window: Duration,
        stats: &Arc<ProduceStats>,
    ) -> anyhow::Result<BackfillRecord> {
        let lines = backfill_lines(o, window);
        // Lines queued to a partition past its committed offset: half of
        // what the mock broker keeps of one (5 MB; it drops the oldest
        // message sets beyond), so none is dropped before the daemon reads
        // it. Per partition: the daemon reads some faster than others.
        let room = ((5u64 << 20) as f64 / traffic.bytes_per_line.max(1.0) / 2.0) as i64;
        let began = Instant::now();
        let end_ms = crate::clock::now_ms();
        let step_ms = window.as_millis() as f64 / lines as f64;
        eprintln!(
            "soak: backfilling {lines} lines over the last {} of event time ({:.0} lines/s of event time), at most {room} a partition past the daemon's commits ...",
            humantime::format_duration(window),
            1000.0 / step_ms
        );
        let p = soak_producer(&self.brokers, stats)?;
        let watcher = group_watcher(&self.brokers)?;
        // A stream of its own: the steady phase's lines are not these again.
        let mut g = Generator::new(GeneratorConfig {
            stream_seed: Some(13),
            ..traffic.config.clone()
        });
        let names = g.model_names();
        let (mut sent, mut checked_at) = (0u64, 0u64);
        let mut done = vec![0i64; self.partitions as usize];
        let mut buf = String::new();
        let mut progress = Progress::every(Duration::from_secs(10));
        let mut looked = Instant::now();
        let mut held = false;
        while sent < lines {
            // Look again every 200 ms, before a quarter of the room is
            // queued since the last look, and after every pause: a pause
            // that did not look again before sending let a quarter of the
            // room through each time, until the broker dropped lines.
            let due = held || (sent - checked_at) as i64 * 4 >= room * i64::from(self.partitions);
            if due || looked.elapsed() >= Duration::from_millis(200) {
                self.d.alive().with_context(|| self.d.log())?;
                done = committed(&watcher, self.partitions).unwrap_or(done);
                (looked, checked_at) = (Instant::now(), sent);
                progress.say(|| self.backfill_progress(sent, lines, began));
                held = most_behind(sent, &done) >= room;
                if held {
                    p.poll(Duration::from_millis(100));
                    continue;
                }
            }
            let t = end_ms - window.as_millis() as i64 + (sent as f64 * step_ms) as i64;
            g.next_line(t, &mut buf);
            send_line(&p, &g, &names, &buf, sent, self.partitions);
            sent += 1;
            if sent % 1024 == 0 {
                p.poll(Duration::ZERO);
            }
        }
        stats.queued.store(sent, Ordering::Relaxed);
        flush(&p);
        drop(p);
        self.await_backfill(stats, lines, began, &mut progress)?;
        let metrics = self.d.get("/metrics")?.1;
        Ok(BackfillRecord {
            lines,
            span_s: secs(window),
            event_rate: 1000.0 / step_ms,
            seconds: secs(began.elapsed()),
            late: sample_sum(&metrics, "driftd_late_events_total", &[]) as u64,
            rss_after_mib: self.sample().0,
        })
    }

    /// Waits until the daemon has counted every acknowledged line, at most
    /// 10 minutes and a minute per 100k lines.
    fn await_backfill(
        &mut self,
        stats: &ProduceStats,
        lines: u64,
        began: Instant,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        let deadline = Duration::from_secs(600 + lines / 100_000 * 60);
        loop {
            self.d.alive().with_context(|| self.d.log())?;
            let counted = self.counted().unwrap_or(0);
            let acked = stats.acked.load(Ordering::Relaxed);
            progress.say(|| self.backfill_progress(lines, lines, began));
            if counted >= acked {
                eprintln!(
                    "soak: backfill of {lines} lines counted in {}; RSS {:.1} MiB",
                    clock(secs(began.elapsed())),
                    self.sample().0
                );
                return Ok(());
            }
            if began.elapsed() > deadline {
                bail!(
                    "the daemon had counted {counted} of the backfill's {acked} lines after {}: too slow for this load (fewer --models, or a shorter --window)",
                    clock(secs(began.elapsed()))
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn backfill_progress(&self, sent: u64, lines: u64, began: Instant) -> String {
        let counted = self.counted().unwrap_or(0);
        format!(
            "soak: backfill {}: produced {sent} of {lines}, counted {counted} ({:.0} lines/s), RSS {:.1} MiB",
            clock(secs(began.elapsed())),
            counted as f64 / secs(began.elapsed()).max(0.001),
            self.sample().0
        )
    }

    /// RSS (MiB) and open descriptors of the daemon now.
    fn sample(&self) -> (f64, usize) {
        (proc_mem(self.d.pid()).0, open_fds(self.d.pid()))
    }

    /// Whether the firing drift alert of `model` is in Alertmanager.
    fn alert_in_alertmanager(&self, model: &str) -> bool {
        self.am
            .as_ref()
            .and_then(|a| a.has_drift_alert(&self.http, model))
            == Some(true)
    }

    /// Waits until the steady traffic has run for `warmup` since `steady`,
    /// the drift alert is in Alertmanager (if there is one) and the daemon
    /// has caught up, at most two minutes longer. When the alert arrived, in
    /// seconds since the daemon started.
    fn warm_up(
        &mut self,
        o: &SoakOptions,
        steady: Instant,
        warmup: Duration,
        model: &str,
        p: &ProduceStats,
    ) -> anyhow::Result<Option<f64>> {
        let mut first_alert: Option<f64> = None;
        let deadline = warmup + Duration::from_secs(120);
        loop {
            self.d.alive().with_context(|| self.d.log())?;
            if first_alert.is_none() && self.alert_in_alertmanager(model) {
                let s = secs(self.daemon_started.elapsed());
                first_alert = Some(s);
                eprintln!(
                    "soak: the {model} drift alert reached Alertmanager {s:.1} s after the daemon started"
                );
            }
            let waited = steady.elapsed();
            let current = caught_up(&self.d, p, o.rate);
            if waited >= warmup && (self.am.is_none() || first_alert.is_some()) && current {
                return Ok(first_alert);
            }
            if waited >= deadline {
                if !current {
                    eprintln!(
                        "soak: the daemon has not caught up with the producer after the warm-up"
                    );
                }
                if self.am.is_some() && first_alert.is_none() {
                    eprintln!(
                        "soak: the drift alert did not reach Alertmanager during the warm-up"
                    );
                }
                return Ok(first_alert);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The start: a sample a second for [`sampling_of`], and the series
    /// once settled.
    fn measure_start(
        &mut self,
        o: &SoakOptions,
        p: &ProduceStats,
    ) -> anyhow::Result<(Measure, BTreeSet<String>)> {
        let (mut rss_s, mut fds_s) = (Vec::new(), Vec::new());
        for _ in 0..sampling_of(o).as_secs() {
            self.d.alive().with_context(|| self.d.log())?;
            let (r, f) = self.sample();
            rss_s.push(r);
            fds_s.push(f);
            std::thread::sleep(Duration::from_secs(1));
        }
        let series = settled_series(&self.d, p, o.rate, None)?;
        let start = Measure {
            rss_mib: median_f(&rss_s),
            fds: median_u(&fds_s),
            series: series.len(),
            memory: self.budget()?,
        };
        Ok((start, series))
    }

    /// Counters, readiness and resources of the daemon now (`messages`
    /// holds the last count when the status does not answer).
    fn look(&mut self, t: Duration, messages: u64) -> anyhow::Result<Tick> {
        self.d.alive().with_context(|| self.d.log())?;
        let status = self.d.status().ok();
        let (rss, fds) = self.sample();
        Ok(Tick {
            t,
            messages: status
                .as_ref()
                .and_then(|s| s["messages"].as_u64())
                .unwrap_or(messages),
            lag: status.as_ref().and_then(|s| s["lag"].as_i64()).unwrap_or(0),
            ready: self.d.get("/readyz").map_or(0, |r| r.0),
            rss,
            fds,
        })
    }

    /// One fault every `fault_every` (see [`plan`]), each followed until the
    /// daemon recovered, while sampling RSS and descriptors.
    fn run_faults(
        &mut self,
        o: &SoakOptions,
        model: &str,
        p: &ProduceStats,
    ) -> anyhow::Result<FaultPhase> {
        let schedule = plan(o);
        let mut faults: Vec<FaultRecord> = schedule
            .iter()
            .map(|(kind, at, len)| FaultRecord {
                kind: *kind,
                exercised: *kind != FaultKind::AlertmanagerOutage || self.am.is_some(),
                at_s: secs(*at),
                seconds: secs(*len),
                ready_down_after_s: None,
                ready_recovered_after_s: None,
                consumed_during: 0,
                max_lag: 0,
                failed_sends: None,
                alert_back_after_s: None,
            })
            .collect();
        let sampling = sampling_of(o);
        let phase = Instant::now();
        let progress_every = o.fault_every.min(Duration::from_secs(60));
        let curve_every = (o.duration / 30).clamp(Duration::from_secs(5), Duration::from_secs(60));
        let mut next_progress = progress_every;
        let mut next_curve = Duration::ZERO;
        let (mut curve, mut end_rss, mut end_fds) = (Vec::new(), Vec::new(), Vec::new());
        let mut rss = Vec::new();
        let mut live: Vec<Live> = Vec::new();
        let mut next_fault = 0;
        let mut tick = Instant::now();
        let mut messages = 0u64;
        loop {
            let t = phase.elapsed();
            let now = self.look(t, messages)?;
            messages = now.messages;
            if t >= next_curve {
                curve.push((secs(t), now.rss, now.fds));
                next_curve += curve_every;
            }
            if t <= o.duration {
                rss.push((secs(t), now.rss));
            }
            if t + sampling >= o.duration && t <= o.duration {
                end_rss.push(now.rss);
                end_fds.push(now.fds);
            }
            while next_fault < schedule.len() && schedule[next_fault].1 <= t {
                let (i, of) = (next_fault, schedule.len());
                if let Some(l) = self.begin_fault(i, of, schedule[i], &faults[i], t, messages)? {
                    live.push(l);
                }
                next_fault += 1;
            }
            self.follow_faults(&mut live, &mut faults, &now, phase, model)?;
            if t >= next_progress {
                next_progress += progress_every;
                print_progress(o, &now, p, &live, &faults);
            }
            // Past the end, recoveries are still waited for (each up to RECOVERY).
            if t >= o.duration && (live.is_empty() || t >= o.duration + RECOVERY) {
                break;
            }
            tick += Duration::from_secs(1);
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        }
        Ok(FaultPhase {
            faults,
            curve,
            rss,
            end_rss,
            end_fds,
        })
    }

    /// Starts fault `i` of `of` (planned as `(kind, at, len)`) at `t` into
    /// the phase; None if it cannot be exercised.
    fn begin_fault(
        &mut self,
        i: usize,
        of: usize,
        (kind, at, len): (FaultKind, Duration, Duration),
        f: &FaultRecord,
        t: Duration,
        messages: u64,
    ) -> anyhow::Result<Option<Live>> {
        eprintln!(
            "soak {} ({}): fault {} of {of}: {} for {}{}",
            clock(secs(t)),
            wall(),
            i + 1,
            kind.describe(),
            clock(secs(len)),
            if f.exercised {
                ""
            } else {
                " (NOT exercised: no Alertmanager)"
            }
        );
        if !f.exercised {
            return Ok(None);
        }
        self.inject(kind, len)?;
        Ok(Some(Live {
            index: i,
            ends_at: at + len,
            ended: None,
            started: Instant::now(),
            consumed_at_start: messages,
            errors_at_start: if kind == FaultKind::AlertmanagerOutage {
                alert_errors(&self.d)
            } else {
                0.0
            },
            am_ready: None,
        }))
    }

    /// Makes the fault happen.
    fn inject(&mut self, kind: FaultKind, len: Duration) -> anyhow::Result<()> {
        match kind {
            FaultKind::BrokerOutage => {
                for id in 1..=BROKERS {
                    self.cluster.broker_down(id)?;
                }
            }
            FaultKind::RequestErrors => {
                let n = (len.as_secs() as usize + 1) * 50;
                let fetch: Vec<RDKafkaRespErr> = [
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
                ]
                .into_iter()
                .cycle()
                .take(n)
                .collect();
                let commit: Vec<RDKafkaRespErr> = [
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                ]
                .into_iter()
                .cycle()
                .take(n / 10)
                .collect();
                self.cluster.request_errors(RDKafkaApiKey::Fetch, &fetch);
                self.cluster
                    .request_errors(RDKafkaApiKey::OffsetCommit, &commit);
            }
            FaultKind::AlertmanagerOutage => {
                if let Some(a) = &mut self.am {
                    a.kill();
                }
            }
        }
        Ok(())
    }

    /// Ends the fault: brokers up, request errors cleared, or Alertmanager
    /// restarted (counting the posts that failed meanwhile).
    fn lift(&mut self, f: &mut FaultRecord, l: &mut Live) -> anyhow::Result<()> {
        match f.kind {
            FaultKind::BrokerOutage => {
                for id in 1..=BROKERS {
                    self.cluster.broker_up(id)?;
                }
            }
            FaultKind::RequestErrors => {
                self.cluster.clear_request_errors(RDKafkaApiKey::Fetch);
                self.cluster
                    .clear_request_errors(RDKafkaApiKey::OffsetCommit);
            }
            FaultKind::AlertmanagerOutage => {
                f.failed_sends = Some((alert_errors(&self.d) - l.errors_at_start).max(0.0) as u64);
                if let Some(a) = &mut self.am {
                    a.start(&self.http)?;
                }
                l.am_ready = Some(Instant::now());
            }
        }
        l.ended = Some(Instant::now());
        Ok(())
    }

    /// Records what the daemon does during each live fault, ends the faults
    /// that are due, and drops those the daemon has recovered from.
    fn follow_faults(
        &mut self,
        live: &mut Vec<Live>,
        faults: &mut [FaultRecord],
        now: &Tick,
        phase: Instant,
        model: &str,
    ) -> anyhow::Result<()> {
        let mut done = Vec::new();
        for (i, l) in live.iter_mut().enumerate() {
            let f = &mut faults[l.index];
            f.max_lag = f.max_lag.max(now.lag);
            if l.ended.is_some() {
                if self.recovered(f, l, now.ready, phase, model) {
                    done.push(i);
                }
                continue;
            }
            f.consumed_during = now.messages.saturating_sub(l.consumed_at_start);
            if now.ready != 200 && f.ready_down_after_s.is_none() {
                f.ready_down_after_s = Some(secs(l.started.elapsed()));
            }
            if now.t >= l.ends_at {
                self.lift(f, l)?;
                eprintln!(
                    "soak {} ({}): fault {} over ({}): {} messages counted meanwhile{}",
                    clock(secs(phase.elapsed())),
                    wall(),
                    l.index + 1,
                    f.kind.describe(),
                    f.consumed_during,
                    match (f.kind, f.ready_down_after_s, f.failed_sends) {
                        (FaultKind::AlertmanagerOutage, _, Some(n)) =>
                            format!(", {n} alert posts failed"),
                        (_, Some(s), _) => format!(", /readyz 503 after {s:.1} s"),
                        _ => ", /readyz stayed 200".to_owned(),
                    }
                );
            }
        }
        for i in done.into_iter().rev() {
            live.remove(i);
        }
        Ok(())
    }

    /// Whether the daemon has recovered from the ended fault (or given up
    /// on after [`RECOVERY`]): ready again, or the alert back in the
    /// restarted Alertmanager.
    fn recovered(
        &self,
        f: &mut FaultRecord,
        l: &Live,
        ready: u16,
        phase: Instant,
        model: &str,
    ) -> bool {
        let since = l.ended.map_or(Duration::ZERO, |e| e.elapsed());
        match f.kind {
            FaultKind::BrokerOutage | FaultKind::RequestErrors => {
                if ready == 200 && f.ready_recovered_after_s.is_none() {
                    f.ready_recovered_after_s = Some(secs(since));
                }
                f.ready_recovered_after_s.is_some() || since > RECOVERY
            }
            FaultKind::AlertmanagerOutage => {
                if f.alert_back_after_s.is_none() && self.alert_in_alertmanager(model) {
                    let s = secs(l.am_ready.map_or(since, |r| r.elapsed()));
                    f.alert_back_after_s = Some(s);
                    eprintln!(
                        "soak {}: the firing alert is back in the restarted Alertmanager after {s:.1} s",
                        clock(secs(phase.elapsed()))
                    );
                }
                f.alert_back_after_s.is_some() || since > RECOVERY
            }
        }
    }

    /// Waits (up to 3 minutes) until the daemon has consumed and committed
    /// everything in the topic.
    fn drain(&mut self) -> anyhow::Result<Drained> {
        let watcher = group_watcher(&self.brokers)?;
        let started = Instant::now();
        let (mut offs, mut consumed) = (Vec::new(), 0u64);
        loop {
            self.d.alive().with_context(|| self.d.log())?;
            if let Ok(got) = offsets(&watcher, self.partitions) {
                offs = got;
            }
            if let Ok(s) = self.d.status() {
                consumed = s["messages"].as_u64().unwrap_or(consumed);
            }
            let produced: i64 = offs.iter().map(|o| o.1).sum();
            let all_committed = !offs.is_empty() && offs.iter().all(|(c, h)| c == h);
            if all_committed && consumed >= produced as u64 {
                break;
            }
            if started.elapsed() > Duration::from_secs(180) {
                eprintln!("soak: not drained after 3 minutes");
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let produced = offs.iter().map(|o| o.1.max(0) as u64).sum::<u64>();
        let uncommitted: u64 = offs.iter().map(|(c, h)| (h - c).max(0) as u64).sum();
        Ok(Drained {
            produced,
            consumed,
            partitions_committed: offs.iter().filter(|(c, h)| c == h).count(),
            lost: produced.saturating_sub(consumed).max(uncommitted),
            duplicates: consumed.saturating_sub(produced),
        })
    }

    /// The daemon's last readiness and dropped alerts, then SIGTERM and how
    /// it went; Alertmanager stopped too.
    fn stop(&mut self) -> anyhow::Result<LastWords> {
        let final_ready = self.d.get("/readyz").map_or(0, |r| r.0);
        let alerts_dropped = sample_sum(
            &self.d.get("/metrics")?.1,
            "driftd_alerts_dropped_total",
            &[],
        );
        let exit = self.terminate()?;
        let panic_lines = self.panic_lines();
        if let Some(a) = &mut self.am {
            a.kill();
        }
        Ok(LastWords {
            final_ready,
            alerts_dropped,
            exit,
            panic_lines,
        })
    }

    /// Stops the daemon and the brokers; keeps the scratch directory (the
    /// logs) when `keep`, and says where.
    fn finish(self, keep: bool) -> Option<String> {
        let Rig {
            d,
            cluster,
            scratch,
            ..
        } = self;
        let logs = keep.then(|| {
            let p = scratch.0.display().to_string();
            std::mem::forget(scratch);
            p
        });
        drop(d);
        drop(cluster);
        logs
    }

    /// SIGTERM, then the exit (status and how long it took) if it came
    /// within the grace period and 5 s more.
    fn terminate(&mut self) -> anyhow::Result<Option<(ExitStatus, Duration)>> {
        let stopping = Instant::now();
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe {
            libc::kill(self.d.pid() as libc::pid_t, libc::SIGTERM);
        }
        while stopping.elapsed() < GRACE + Duration::from_secs(5) {
            if let Some(st) = self.d.child.try_wait()? {
                return Ok(Some((st, stopping.elapsed())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    /// The lines of the daemon's output (stdout and log) that say it panicked.
    fn panic_lines(&self) -> Vec<String> {
        let output = format!(
            "{}{}",
            std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            self.d.log()
        );
        output
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }
}

/// The progress line of the fault phase.
fn print_progress(
    o: &SoakOptions,
    now: &Tick,
    p: &ProduceStats,
    live: &[Live],
    faults: &[FaultRecord],
) {
    let now_faults: Vec<String> = live
        .iter()
        .filter(|l| l.ended.is_none())
        .map(|l| faults[l.index].kind.describe().to_owned())
        .collect();
    eprintln!(
        "soak {}/{}: produced {} ({} acknowledged), consumed {} (lag {}), RSS {:.1} MiB, {} fds, /readyz {}{}",
        clock(secs(now.t)),
        clock(secs(o.duration)),
        p.queued.load(Ordering::Relaxed),
        p.acked.load(Ordering::Relaxed),
        now.messages,
        now.lag,
        now.rss,
        now.fds,
        now.ready,
        if now_faults.is_empty() {
            String::new()
        } else {
            format!(" [{}]", now_faults.join(", "))
        }
    );
}

/// The checks of a run, in the order they are listed.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &str, ok: bool, detail: String) {
        self.0.push(Check {
            name: name.to_owned(),
            ok,
            detail,
        });
    }

    /// The drift alert reached Alertmanager during the warm-up.
    fn alert_delivered(&mut self, first_alert: Option<f64>, model: &str, deadline: Duration) {
        self.add(
            "drift alert delivered",
            first_alert.is_some(),
            match first_alert {
                Some(s) => {
                    format!("{model}'s FeatureDrift alert in Alertmanager {s:.1} s after start")
                }
                None => format!(
                    "no FeatureDrift alert of {model} in Alertmanager within {}",
                    clock(secs(deadline))
                ),
            },
        );
    }

    /// RSS, descriptors and series as flat as the limits allow; the RSS and
    /// descriptor limits. RSS: the end, and the start plus the trend's
    /// growth over the phase, both within the limit (the module's doc says
    /// why both).
    fn flatness(
        &mut self,
        start: &Measure,
        end: &Measure,
        trend: &RssTrend,
        added: &[String],
        removed: &[String],
    ) -> (f64, usize) {
        let rss_limit = start.rss_mib * RSS_FACTOR + RSS_SLACK_MIB;
        let by_trend = start.rss_mib + trend.growth_mib;
        self.add(
            "RSS flat",
            end.rss_mib <= rss_limit && by_trend <= rss_limit,
            format!(
                "start {:.1} MiB, end {:.1} MiB, trend {:+.2} MiB/min ({:+.1} MiB over the phase), max {:.1} MiB; limit {rss_limit:.1} (start x {RSS_FACTOR} + {RSS_SLACK_MIB} MiB) for the end and for start + trend",
                start.rss_mib, end.rss_mib, trend.slope_mib_per_min, trend.growth_mib, trend.max_mib
            ),
        );
        let fds_limit = start.fds + FD_SLACK;
        self.add(
            "open fds flat",
            end.fds <= fds_limit,
            format!("start {}, end {}, limit {fds_limit}", start.fds, end.fds),
        );
        self.add(
            "series stable",
            added.is_empty() && removed.is_empty(),
            format!(
                "start {}, end {}; {} added {:?}, {} removed {:?}",
                start.series,
                end.series,
                added.len(),
                &added[..added.len().min(5)],
                removed.len(),
                &removed[..removed.len().min(5)]
            ),
        );
        (rss_limit, fds_limit)
    }

    /// Nothing lost between the producer and the daemon's commits.
    fn delivery(&mut self, dr: &Drained, acked: u64, producer_failed: u64, partitions: i32) {
        self.add(
            "no lost messages",
            dr.lost == 0,
            format!(
                "{} in the topic, {} consumed ({} duplicates), committed = high watermark on {}/{partitions} partitions",
                dr.produced, dr.consumed, dr.duplicates, dr.partitions_committed
            ),
        );
        self.add(
            "producer delivered everything",
            producer_failed == 0 && acked > 0,
            format!("{acked} acknowledged, {producer_failed} failed (the harness's producer, not the daemon)"),
        );
    }

    /// No panic, a clean exit on SIGTERM, and ready until then.
    fn shutdown(
        &mut self,
        panic_lines: &[String],
        exit: Option<&(ExitStatus, Duration)>,
        final_ready: u16,
    ) {
        self.add(
            "no panics",
            panic_lines.is_empty(),
            if panic_lines.is_empty() {
                "no \"panicked\" in the daemon's output".to_owned()
            } else {
                panic_lines[..panic_lines.len().min(3)].join(" | ")
            },
        );
        self.add(
            "clean exit on SIGTERM",
            exit.is_some_and(|(st, t)| st.success() && *t <= GRACE + Duration::from_secs(1)),
            match exit {
                Some((st, t)) => format!(
                    "{st} after {:.2} s (grace {})",
                    secs(*t),
                    humantime::format_duration(GRACE)
                ),
                None => format!(
                    "not stopped {} after SIGTERM",
                    humantime::format_duration(GRACE + Duration::from_secs(5))
                ),
            },
        );
        self.add(
            "ready at the end",
            final_ready == 200,
            format!("/readyz {final_ready}"),
        );
    }

    /// Readiness followed the brokers, and the alert came back after every
    /// Alertmanager outage (`with_am`) with no transition dropped.
    fn fault_recovery(&mut self, faults: &[FaultRecord], with_am: bool, alerts_dropped: f64) {
        let of = |kind| faults.iter().filter(move |f: &&FaultRecord| f.kind == kind);
        let describe = |kind, say: fn(&FaultRecord) -> String| {
            of(kind).map(say).collect::<Vec<_>>().join(", ")
        };
        self.add(
            "not ready while the brokers are down",
            of(FaultKind::BrokerOutage).all(|f| f.ready_down_after_s.is_some()),
            describe(FaultKind::BrokerOutage, |f| match f.ready_down_after_s {
                Some(s) => format!("503 after {s:.1} s"),
                None => format!("stayed 200 for {}", clock(f.seconds)),
            }),
        );
        self.add(
            "ready again after the brokers are back",
            of(FaultKind::BrokerOutage).all(|f| f.ready_recovered_after_s.is_some()),
            describe(FaultKind::BrokerOutage, |f| {
                match f.ready_recovered_after_s {
                    Some(s) => format!("200 after {s:.1} s"),
                    None => format!("not within {}", clock(secs(RECOVERY))),
                }
            }),
        );
        if !with_am {
            return;
        }
        self.add(
            "alert delivered after every Alertmanager outage",
            of(FaultKind::AlertmanagerOutage).all(|f| f.alert_back_after_s.is_some()),
            describe(FaultKind::AlertmanagerOutage, |f| {
                match f.alert_back_after_s {
                    Some(s) => format!(
                        "back after {s:.1} s ({} failed posts during the outage)",
                        f.failed_sends.unwrap_or(0)
                    ),
                    None => format!("not back within {}", clock(secs(RECOVERY))),
                }
            }),
        );
        self.add(
            "no alert transitions dropped",
            alerts_dropped == 0.0,
            format!("driftd_alerts_dropped_total {alerts_dropped}"),
        );
    }
}

/// Faults exercised, by kind.
fn fault_counts(faults: &[FaultRecord]) -> BTreeMap<String, usize> {
    FaultKind::ALL
        .iter()
        .map(|k| {
            let n = faults
                .iter()
                .filter(|f| f.kind == *k && f.exercised)
                .count();
            (k.as_str().to_owned(), n)
        })
        .collect()
}

fn check_options(o: &SoakOptions) -> anyhow::Result<()> {
    anyhow::ensure!(o.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(
        o.models > 0 && o.features > 0,
        "--models and --features must be at least 1"
    );
    anyhow::ensure!(
        o.fault_every >= Duration::from_secs(15),
        "--fault-every must be at least 15s"
    );
    anyhow::ensure!(
        o.duration >= o.fault_every,
        "--duration must be at least --fault-every"
    );
    anyhow::ensure!(
        o.window.is_none_or(|w| w >= Duration::from_secs(10)),
        "--window must be at least 10s"
    );
    Ok(())
}

/// Runs the soak, printing progress to stderr.
pub(crate) fn run(o: &SoakOptions) -> anyhow::Result<SoakReport> {
    check_options(o)?;
    let am_bin = find_alertmanager(o.alertmanager.as_deref())?;
    let began = Instant::now();
    let now = crate::clock::now_ms();
    let traffic = SoakTraffic::new(o, now)?;
    let window = o.window.unwrap_or_else(|| window_of(o));
    let mut rig = Rig::start(o, &traffic, window, am_bin.as_deref(), now)?;
    rig.announce(o, &traffic, window);
    let pstats = Arc::new(ProduceStats::default());

    // ---- Backfill: a window of event time, all counted before the rest.
    let backfill = rig.backfill(o, &traffic, window, &pstats)?;

    // ---- Steady traffic: warm-up, start, faults, end.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = start_producer(
        rig.brokers.clone(),
        rig.partitions,
        o.rate,
        traffic.config.clone(),
        stop.clone(),
        pstats.clone(),
    );
    let mut checks = Checks::default();
    let steady = steady_phase(o, &mut rig, &traffic, window, &pstats, &mut checks)?;
    eprintln!(
        "soak: end: RSS {:.1} MiB, {} open fds, {} series; stopping the producer and draining ...",
        steady.end.rss_mib, steady.end.fds, steady.end.series
    );

    // ---- Drain: everything in the topic consumed and committed.
    stop.store(true, Ordering::Relaxed);
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let acked = pstats.acked.load(Ordering::Relaxed);
    let producer_failed = pstats.failed.load(Ordering::Relaxed);
    let drained = rig.drain()?;
    let peak = proc_mem(rig.d.pid()).1;
    let last = rig.stop()?;

    // ---- Checks.
    let added: Vec<String> = steady
        .end_series
        .difference(&steady.start_series)
        .cloned()
        .collect();
    let removed: Vec<String> = steady
        .start_series
        .difference(&steady.end_series)
        .cloned()
        .collect();
    let trend = RssTrend::of(&steady.phase.rss, o.duration);
    let (rss_limit, fds_limit) =
        checks.flatness(&steady.start, &steady.end, &trend, &added, &removed);
    checks.delivery(&drained, acked, producer_failed, rig.partitions);
    checks.shutdown(&last.panic_lines, last.exit.as_ref(), last.final_ready);
    checks.fault_recovery(&steady.phase.faults, rig.am.is_some(), last.alerts_dropped);

    let passed = checks.0.iter().all(|c| c.ok);
    let (partitions, panes, memory_plan) = (rig.partitions, rig.panes, rig.memory_plan.clone());
    // Keep the logs of a failed run (or when asked to).
    let logs = rig.finish(!passed || o.keep_logs);
    eprintln!("soak: done in {}", clock(secs(began.elapsed())));
    Ok(SoakReport {
        machine: machine(),
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        duration_s: secs(o.duration),
        rate: o.rate,
        fault_every_s: secs(o.fault_every),
        models: o.models,
        features: o.features,
        brokers: BROKERS,
        partitions,
        window: humantime::format_duration(window).to_string(),
        panes: panes.0,
        pane: humantime::format_duration(panes.1).to_string(),
        max_memory: o.max_memory.clone(),
        memory_plan,
        backfill,
        warmup_s: secs(steady.warmup),
        drifted_model: traffic.drifted_model,
        alertmanager: am_bin.map(|p| p.display().to_string()),
        start: steady.start,
        end: steady.end,
        rss_limit_mib: rss_limit,
        rss_max_mib: trend.max_mib,
        rss_slope_mib_per_min: trend.slope_mib_per_min,
        rss_peak_mib: peak,
        fds_limit,
        series_added: added,
        series_removed: removed,
        curve: steady.phase.curve,
        produced: drained.produced,
        acked,
        producer_failed,
        consumed: drained.consumed,
        duplicates: drained.duplicates,
        lost: drained.lost,
        partitions_committed: drained.partitions_committed,
        first_alert_s: steady.first_alert,
        alerts_dropped: last.alerts_dropped,
        fault_counts: fault_counts(&steady.phase.faults),
        faults: steady.phase.faults,
        panics: last.panic_lines.len(),
        exit_status: match &last.exit {
            Some((st, _)) => st.to_string(),
            None => "still running".to_owned(),
        },
        shutdown_s: last.exit.map(|(_, t)| secs(t)),
        checks: checks.0,
        passed,
        logs,
    })
}

/// What the steady traffic showed, from the warm-up to the end.
struct Steady {
    warmup: Duration,
    first_alert: Option<f64>,
    start: Measure,
    start_series: BTreeSet<String>,
    phase: FaultPhase,
    end: Measure,
    end_series: BTreeSet<String>,
}

/// The warm-up (the alert delivered: a check), the start measured, the
/// faults, and the end measured under load after every fault is over.
fn steady_phase(
    o: &SoakOptions,
    rig: &mut Rig,
    traffic: &SoakTraffic,
    window: Duration,
    pstats: &ProduceStats,
    checks: &mut Checks,
) -> anyhow::Result<Steady> {
    let model = traffic.drifted_model.as_str();
    let steady = Instant::now();
    let warmup = warmup_of(o, window);
    eprintln!(
        "soak: warming up for {} ...",
        humantime::format_duration(warmup)
    );
    let first_alert = rig.warm_up(o, steady, warmup, model, pstats)?;
    if rig.am.is_some() {
        checks.alert_delivered(first_alert, model, rig.daemon_started.elapsed());
    }

    // ---- Start: a sample a second for 5 to 10 s (the same at the end).
    let (start, start_series) = rig.measure_start(o, pstats)?;
    eprintln!(
        "soak: start: RSS {:.1} MiB, {} open fds, {} series, engine memory reserved {:.1} of {:.1} MiB; {} of faults every {} ...",
        start.rss_mib,
        start.fds,
        start.series,
        start.memory.reserved_bytes / MIB,
        start.memory.limit_bytes / MIB,
        humantime::format_duration(o.duration),
        humantime::format_duration(o.fault_every)
    );

    let phase = rig.run_faults(o, model, pstats)?;

    // ---- End: measured under load, after every fault is over.
    let end_series = settled_series(&rig.d, pstats, o.rate, Some(&start_series))?;
    let end = Measure {
        rss_mib: median_f(&phase.end_rss),
        fds: median_u(&phase.end_fds),
        series: end_series.len(),
        memory: rig.budget()?,
    };
    Ok(Steady {
        warmup,
        first_alert,
        start,
        start_series,
        phase,
        end,
        end_series,
    })
}

/// RSS over the steady phase: its largest sample and its trend.
struct RssTrend {
    max_mib: f64,
    slope_mib_per_min: f64,
    /// The trend over the phase: the slope times its length.
    growth_mib: f64,
}

impl RssTrend {
    /// From `(seconds, MiB)` samples over a phase of `length`.
    fn of(samples: &[(f64, f64)], length: Duration) -> RssTrend {
        let per_s = slope(samples);
        RssTrend {
            max_mib: samples.iter().map(|s| s.1).fold(f64::NAN, f64::max),
            slope_mib_per_min: per_s * 60.0,
            growth_mib: per_s * secs(length),
        }
    }
}

/// The faults, a row each.
fn write_fault_table(out: &mut String, faults: &[FaultRecord]) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\n| # | at | fault | for | consumed meanwhile | max lag | /readyz | alerts |\n|---|---|---|---|---|---|---|---|"
    );
    for (i, f) in faults.iter().enumerate() {
        let ready = match f.kind {
            FaultKind::AlertmanagerOutage => "-".to_owned(),
            _ => format!(
                "{}; {}",
                f.ready_down_after_s
                    .map_or("stayed 200".to_owned(), |s| format!("503 after {s:.1} s")),
                f.ready_recovered_after_s
                    .map_or("not back".to_owned(), |s| format!("200 {s:.1} s after")),
            ),
        };
        let alerts = match (f.kind, f.exercised) {
            (FaultKind::AlertmanagerOutage, false) => "not exercised".to_owned(),
            (FaultKind::AlertmanagerOutage, true) => format!(
                "{} failed posts; {}",
                f.failed_sends.unwrap_or(0),
                f.alert_back_after_s
                    .map_or("alert NOT back".to_owned(), |s| format!(
                        "alert back {s:.1} s after restart"
                    ))
            ),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {ready} | {alerts} |",
            i + 1,
            clock(f.at_s),
            f.kind.describe(),
            clock(f.seconds),
            f.consumed_during,
            f.max_lag
        );
    }
}

/// The table of what was measured at the start and the end.
fn write_measures(out: &mut String, r: &SoakReport) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\n| measure | start | end | limit |\n|---|---|---|---|"
    );
    let _ = writeln!(
        out,
        "| RSS (MiB, median of 5-10 s) | {:.1} | {:.1} | {:.1} |",
        r.start.rss_mib, r.end.rss_mib, r.rss_limit_mib
    );
    let _ = writeln!(
        out,
        "| RSS max over the steady phase (MiB, 1 s samples) | | {:.1} | |",
        r.rss_max_mib
    );
    let _ = writeln!(
        out,
        "| RSS trend (MiB/min, least squares of 1 s samples) | | {:+.2} | {:+.2} ((limit - start) / minutes) |",
        r.rss_slope_mib_per_min,
        (r.rss_limit_mib - r.start.rss_mib) / (r.duration_s / 60.0)
    );
    let _ = writeln!(
        out,
        "| RSS peak (MiB, VmHWM, backfill included) | | {:.1} | |",
        r.rss_peak_mib
    );
    let mib = |b: f64| b / MIB;
    let _ = writeln!(
        out,
        "| engine memory reserved (MiB, driftd_memory_reserved_bytes) | {:.1} | {:.1} | {:.1} (driftd_memory_limit_bytes) |",
        mib(r.start.memory.reserved_bytes),
        mib(r.end.memory.reserved_bytes),
        mib(r.end.memory.limit_bytes)
    );
    let _ = writeln!(
        out,
        "| refused by the memory budget (driftd_memory_refused_total) | {} | {} | |",
        r.start.memory.refused, r.end.memory.refused
    );
    let _ = writeln!(
        out,
        "| open file descriptors | {} | {} | {} |",
        r.start.fds, r.end.fds, r.fds_limit
    );
    let _ = writeln!(
        out,
        "| /metrics series | {} | {} | the same series |",
        r.start.series, r.end.series
    );
}

/// The report as tables.
pub(crate) fn render(r: &SoakReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "driftd soak: {} at {} lines/s, a fault every {}; {} models x {} features, {} partitions on {} mock brokers, window {} in {} panes of {}; {} ({} cores)",
        clock(r.duration_s),
        r.rate,
        clock(r.fault_every_s),
        r.models,
        r.features,
        r.partitions,
        r.brokers,
        r.window,
        r.panes,
        r.pane,
        r.machine,
        r.cores
    );
    let _ = writeln!(
        out,
        "limits.max_memory: {}; {}",
        r.max_memory.as_deref().unwrap_or("the daemon's default"),
        r.memory_plan
    );
    let b = &r.backfill;
    let _ = writeln!(
        out,
        "backfill: {} lines over {} of event time ({:.0} lines/s of event time), counted in {} ({:.0} lines/s), {} late; RSS then {:.1} MiB; warm-up {} of steady traffic",
        b.lines,
        clock(b.span_s),
        b.event_rate,
        clock(b.seconds),
        b.lines as f64 / b.seconds.max(0.001),
        b.late,
        b.rss_after_mib,
        clock(r.warmup_s)
    );
    match &r.alertmanager {
        Some(p) => {
            let _ = writeln!(out, "Alertmanager: {p}");
        }
        None => {
            let _ = writeln!(
                out,
                "Alertmanager: none found; the Alertmanager outage fault was NOT exercised"
            );
        }
    }
    write_measures(&mut out, r);
    let _ = writeln!(
        out,
        "\nmessages: {} in the topic ({} acknowledged to the producer, {} failed), {} consumed, {} duplicates, {} lost; committed offset = high watermark on {}/{} partitions",
        r.produced, r.acked, r.producer_failed, r.consumed, r.duplicates, r.lost, r.partitions_committed, r.partitions
    );
    let counts: Vec<String> = r
        .fault_counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let _ = writeln!(out, "faults exercised: {}", counts.join(", "));
    write_fault_table(&mut out, &r.faults);
    let curve: Vec<String> = r
        .curve
        .iter()
        .map(|(t, m, f)| format!("{} {m:.1}/{f}", clock(*t)))
        .collect();
    let _ = writeln!(
        out,
        "\nRSS MiB / open fds over the run: {}",
        curve.join(", ")
    );
    if let Some(s) = r.first_alert_s {
        let _ = writeln!(
            out,
            "drift alert of {} first in Alertmanager {s:.1} s after the daemon started",
            r.drifted_model
        );
    }
    let _ = writeln!(
        out,
        "panics: {}; SIGTERM: {}{}",
        r.panics,
        r.exit_status,
        r.shutdown_s
            .map_or(String::new(), |s| format!(" after {s:.2} s"))
    );
    let failed = r.failed();
    let _ = writeln!(
        out,
        "\nchecks: {} passed, {} failed",
        r.checks.len() - failed.len(),
        failed.len()
    );
    for c in &r.checks {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            if c.ok { "ok    " } else { "FAILED" },
            c.name,
            c.detail
        );
    }
    if let Some(l) = &r.logs {
        let _ = writeln!(out, "logs kept in {l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(duration: u64, every: u64) -> SoakOptions {
        SoakOptions {
            duration: Duration::from_secs(duration),
            fault_every: Duration::from_secs(every),
            ..SoakOptions::default()
        }
    }

    #[test]
    fn the_ci_soak_exercises_every_fault_kind() {
        let p = plan(&opts(120, 30));
        let kinds: Vec<FaultKind> = p.iter().map(|f| f.0).collect();
        assert_eq!(
            kinds,
            [
                FaultKind::BrokerOutage,
                FaultKind::RequestErrors,
                FaultKind::AlertmanagerOutage,
                FaultKind::BrokerOutage
            ]
        );
        // Every fault over 10 s before the end.
        for (_, at, len) in &p {
            assert!(*at + *len <= Duration::from_secs(110), "{p:?}");
        }
    }

    #[test]
    fn the_full_soak_has_five_minute_alertmanager_outages_and_minute_broker_outages() {
        let p = plan(&opts(1800, 180));
        assert_eq!(p.len(), 10);
        for (kind, at, len) in &p {
            let want = match kind {
                FaultKind::AlertmanagerOutage => 300,
                _ => 60,
            };
            assert_eq!(len.as_secs(), want, "{kind:?} at {at:?}");
        }
        let am = p
            .iter()
            .filter(|f| f.0 == FaultKind::AlertmanagerOutage)
            .count();
        assert_eq!(am, 3);
        let (_, at, len) = p.last().unwrap();
        assert!(*at + *len <= Duration::from_secs(1740));
    }

    #[test]
    fn series_and_samples_are_read_from_the_exposition() {
        let text = "# HELP x y\n# TYPE x counter\ndriftd_alerts_sent_total{sink=\"alertmanager\",outcome=\"error\"} 3\ndriftd_alerts_sent_total{sink=\"alertmanager\",outcome=\"success\"} 4\nup 1\n";
        assert_eq!(series_set(text).len(), 3);
        assert_eq!(
            sample_sum(
                text,
                "driftd_alerts_sent_total",
                &[("sink", "alertmanager"), ("outcome", "error")]
            ),
            3.0
        );
        assert_eq!(sample_sum(text, "driftd_alerts_sent_total", &[]), 7.0);
        assert_eq!(clock(65.0), "1m05s");
        assert_eq!(clock(9.4), "9s");
    }
}
