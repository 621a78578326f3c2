//! `driftd demo`: the whole daemon on an embedded Kafka, with nothing to
//! install.
//!
//! This module owns the demo's set-up: librdkafka's in-process mock cluster
//! (the real Kafka protocol over loopback), baselines built from a reference
//! phase, a generator writing seed-shaped inference logs for two models
//! (features, classes, confidences, arms, timing, error, batch-statistics and
//! feedback lines, a few malformed lines) that injects drift after a while,
//! deploys a worse version of one model later (more errors, slower), and
//! gives the variant arm a lower click-through; a live table of scores,
//! error rates, latencies, arms and states on the terminal. The daemon itself is the real one
//! (`app::start`), serving /metrics like in production.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::Config;
use crate::daemon::ingest::KafkaConfig;
use crate::daemon::snapshot::Snapshot;
use crate::engine::decode::Decoder;
use crate::engine::decode::{Decoded, RecordKind};
use crate::engine::detect::State;
use crate::engine::time::rfc3339;
use crate::engine::window::WindowSpec;
use crate::engine::AutoBaseline;
use crate::lab::generate::{
    standard_drifts, DeploySpec, DriftSpec, FeatureRef, Generator, GeneratorConfig, LabelSpec,
};
use crate::lab::harness::Scratch;
use crate::replay::{build_baselines, Input};

pub(crate) const TOPIC: &str = "inference-logs";

/// Demo settings (flags of `driftd demo`).
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    pub listen: SocketAddr,
    /// Inference-log lines per second.
    pub rate: u32,
    pub drift_after: Duration,
    /// When `fraud-v2` replaces `fraud-v1`.
    pub deploy_after: Duration,
    /// Stop after this long (default: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Redraw a table on the terminal (else print changes as lines).
    pub live_table: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            listen: "127.0.0.1:9400".parse().expect("valid"),
            rate: 2000,
            drift_after: Duration::from_secs(20),
            deploy_after: Duration::from_secs(40),
            duration: None,
            live_table: std::io::stdout().is_terminal(),
        }
    }
}

/// Runs the demo until `cancel` or the duration ends.
pub(crate) async fn run(opts: DemoOptions, cancel: CancellationToken) -> anyhow::Result<()> {
    let scratch = Scratch::new("demo").context("creating the demo's scratch directory")?;
    let baselines_dir = scratch.0.join("baselines");
    std::fs::create_dir_all(&baselines_dir)?;

    // The broker: in-process, real protocol, three brokers, four partitions.
    let cluster = MockCluster::new(3).context("starting the in-process Kafka mock cluster")?;
    cluster
        .create_topic(TOPIC, 4, 1)
        .context("creating the demo topic")?;
    let brokers = cluster.bootstrap_servers();
    println!("embedded Kafka (librdkafka mock cluster) at {brokers}, topic {TOPIC}");

    // Half the predictions get their ground truth 20 s later: the
    // reference's labels calibrate the confidences, the live ones show the
    // realized accuracy (in production labels are hours late; the estimate
    // is what sees a drop first).
    let gen_cfg = GeneratorConfig::default()
        .with_batch_share(0.01)
        .with_click_rates(0.30, 0.22)
        .with_labels(LabelSpec::new(0.5, LABEL_DELAY_MS, 2_000));
    let reference = Reference::build(&gen_cfg, &baselines_dir)?;
    let cfg = daemon_config(
        &opts,
        &brokers,
        &scratch,
        baselines_dir,
        reference.p99_limit,
    );
    let daemon = crate::daemon::app::start(cfg, cancel.clone()).await?;
    println!(
        "serving http://{}/metrics (also /readyz, /api/v1/drift)",
        daemon.addr
    );
    let drift_at = now_ms() + opts.drift_after.as_millis() as i64;
    let deploy_at = now_ms() + opts.deploy_after.as_millis() as i64;
    let factor = reference.deploy_latency_factor();
    println!(
        "generating {} lines/s for fraud-v1 and recsys-v3; drift starts at {} (in {}s): fraud-v1 f00_amount +1 sd, fraud-v1 fraud rate 4% -> 15%, recsys-v3 f01_country new category on 20%, recsys-v3 accuracy 10 points lower (labels come 20 s late)",
        opts.rate,
        rfc3339(drift_at),
        opts.drift_after.as_secs()
    );
    println!(
        "fraud-v2 replaces fraud-v1 at {} (in {}s) with 8% more errors and {factor:.1}x the inference latency (p99 limit {:.1} ms); arm variant clicks 22% of feedback, control 30%",
        rfc3339(deploy_at),
        opts.deploy_after.as_secs(),
        reference.p99_limit
    );

    // The producer runs on its own thread, paced to the rate.
    let produced = Arc::new(AtomicU64::new(0));
    let producer_stop = CancellationToken::new();
    let producer = {
        let produced = produced.clone();
        let stop = producer_stop.clone();
        let rate = opts.rate.max(1);
        let mut live_cfg = gen_cfg.with_deploy(
            DeploySpec::new("fraud-v1", "fraud-v2", deploy_at)
                .with_extra_error_share(0.08)
                .with_latency_factor(factor),
        );
        live_cfg.stream_seed = Some(1);
        live_cfg.drifts = standard_drifts(drift_at);
        live_cfg.drifts.push(accuracy_drop(&live_cfg, drift_at));
        std::thread::spawn(move || produce(&brokers, live_cfg, rate, &produced, &stop))
    };

    let started = Instant::now();
    show(&opts, &daemon, &cancel, &produced, started, drift_at).await;
    producer_stop.cancel();
    let _ = producer.join();
    let r = daemon.wait().await;
    drop(cluster);
    println!("demo stopped after {}s", started.elapsed().as_secs());
    r
}

/// How late the demo's labels come.
const LABEL_DELAY_MS: i64 = 20_000;

/// recsys-v3 gets 10 points less accurate: a 1 sd shift of its first
/// numeric feature, its confidences lower with it.
fn accuracy_drop(cfg: &GeneratorConfig, at: i64) -> DriftSpec {
    let spec = cfg.models.iter().find(|m| m.name == "recsys-v3");
    let feature = spec.and_then(|m| m.first_numeric_feature()).unwrap_or(0);
    DriftSpec::accuracy_drop(vec![FeatureRef::from(feature)], 1.0, 0.10, at).for_model("recsys-v3")
}

/// The reference phase: an hour of normal traffic, made up front, and what
/// it gives the daemon.
struct Reference {
    /// The p99 of `inference_ms` of the slowest model, and of fraud-v1.
    slowest_p99: f64,
    fraud_p99: f64,
    /// The daemon's p99 limit on inference: 1.5x the slowest model's.
    p99_limit: f64,
}

impl Reference {
    /// Makes the reference lines and saves the baselines built from them in
    /// `dir`.
    fn build(gen_cfg: &GeneratorConfig, dir: &Path) -> anyhow::Result<Reference> {
        let mut reference = Generator::new(gen_cfg.clone());
        let start = now_ms();
        let mut text = Vec::with_capacity(20_000 * 600);
        let mut buf = String::new();
        for i in 0..20_000i64 {
            reference.next_line(start - 3_600_000 + i * 180, &mut buf);
            text.extend_from_slice(buf.as_bytes());
            text.push(b'\n');
        }
        let decoder = Decoder::new(Default::default());
        let built = build_baselines(
            (&decoder, crate::replay::default_threads()),
            &Input::Stdin,
            &mut text.as_slice(),
            None,
            &Default::default(),
            start,
            |_| {},
        )?;
        let mut built = built;
        let threads = crate::replay::default_threads();
        crate::replay::fit_nulls(&mut built.baselines, &Default::default(), threads);
        for b in &built.baselines {
            b.save(dir)?;
        }
        println!(
            "built baselines for {} from 20000 reference lines",
            built
                .baselines
                .iter()
                .map(|b| b.model.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let p99 = reference_p99(&decoder, &text, "inference_ms");
        let slowest = p99.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        let fraud_p99 = p99
            .iter()
            .find(|(m, _)| m == "fraud-v1")
            .map_or(slowest, |(_, v)| *v);
        Ok(Reference {
            slowest_p99: slowest,
            fraud_p99,
            p99_limit: (1.5 * slowest).max(1.0),
        })
    }

    /// How much slower fraud-v2 is: enough that its p99 clears the limit
    /// whatever the seed's latencies, 2.5x the limit's base at least, 3x
    /// its own at least.
    fn deploy_latency_factor(&self) -> f64 {
        (2.5 * self.slowest_p99 / self.fraud_p99.max(0.001)).max(3.0)
    }
}

/// The daemon, configured as in production but with short windows so the
/// demo shows drift within a minute.
fn daemon_config(
    opts: &DemoOptions,
    brokers: &str,
    scratch: &Scratch,
    baselines_dir: PathBuf,
    p99_limit: f64,
) -> Config {
    let mut cfg = Config {
        source: "demo".into(),
        ..Config::default()
    };
    cfg.kafka = Some(KafkaConfig {
        brokers: brokers.to_owned(),
        topics: vec![TOPIC.into()],
        group_id: "driftd-demo".into(),
        commit_interval: Duration::from_secs(1),
        rewind_on_start: false,
        properties: Default::default(),
    });
    cfg.engine.window = WindowSpec::Time {
        length_ms: 120_000,
        pane_ms: 5_000,
    };
    // The deployed version has no baseline file: capture one from its
    // first events, as a production daemon can.
    cfg.engine.auto_baseline = Some(AutoBaseline {
        after_events: 5_000,
    });
    cfg.engine
        .health
        .p99_limit_ms
        .insert("inference_ms".into(), p99_limit);
    cfg.engine.align();
    // Quality over the last 10 minutes in 10 s panes, labels joined from
    // the first prediction: the demo's labels are seconds late, not hours.
    cfg.engine.quality.join_from_start = true;
    cfg.engine.quality.pane_ms = 10_000;
    cfg.engine.quality.panes = 60;
    cfg.engine.quality.ttl_ms = 600_000;
    cfg.every = Duration::from_secs(2);
    cfg.engine.detect.min_samples = 300;
    cfg.baselines_dir = baselines_dir;
    cfg.watch_baselines = false;
    cfg.checkpoint.dir = scratch.0.join("state");
    cfg.http.listen = opts.listen;
    cfg
}

/// The live view: a table redrawn (or changes printed) at every snapshot,
/// until `cancel` or the duration ends.
async fn show(
    opts: &DemoOptions,
    daemon: &crate::daemon::app::Daemon,
    cancel: &CancellationToken,
    produced: &AtomicU64,
    started: Instant,
    drift_at: i64,
) {
    let mut snapshots = daemon.snapshot.clone();
    let mut last_states: std::collections::HashMap<(String, String), State> = Default::default();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                cancel.cancel();
                break;
            }
            changed = snapshots.changed() => {
                if changed.is_err() { break; }
                let snap = snapshots.borrow_and_update().clone();
                let sent = produced.load(Ordering::Relaxed);
                if opts.live_table {
                    draw_table(&snap, started.elapsed(), sent, drift_at);
                } else {
                    print_changes(&snap, &mut last_states, started.elapsed());
                }
            }
        }
    }
}

fn produce(
    brokers: &str,
    cfg: GeneratorConfig,
    rate: u32,
    produced: &AtomicU64,
    stop: &CancellationToken,
) {
    let producer: BaseProducer = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("demo producer failed to start: {e}");
            return;
        }
    };
    let mut g = Generator::new(cfg);
    let names = g.model_names();
    let mut buf = String::new();
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !stop.is_cancelled() {
        // Keep to the rate: send what is due, then sleep a little.
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            g.next_line(now_ms(), &mut buf);
            // Keyed by model, as the README recommends, so one model's
            // window lives in one replica.
            let key = g
                .last_model()
                .and_then(|i| names.get(i))
                .map_or("", String::as_str);
            let rec = BaseRecord::to(TOPIC).key(key).payload(buf.as_str());
            if producer.send(rec).is_err() {
                producer.poll(Duration::from_millis(10));
                break;
            }
            sent += 1;
        }
        produced.store(sent, Ordering::Relaxed);
        producer.poll(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = producer.flush(Duration::from_secs(2));
}

/// p99 of a stage per model over the reference lines (the demo's limit).
fn reference_p99(decoder: &Decoder, text: &[u8], stage: &str) -> Vec<(String, f64)> {
    let mut by_model: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in text.split(|b| *b == b'\n') {
        if let Decoded::Record(r) = decoder.decode(line) {
            if r.kind != RecordKind::Timing {
                continue;
            }
            if let (Some(m), Some((_, v))) = (&r.model, r.stages.iter().find(|(k, _)| k == stage)) {
                by_model.entry(m.to_string()).or_default().push(*v);
            }
        }
    }
    by_model
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(m, mut v)| {
            v.sort_by(f64::total_cmp);
            let i = ((v.len() - 1) as f64 * 0.99).round() as usize;
            (m, v[i])
        })
        .collect()
}

fn state_word(s: State) -> &'static str {
    match s {
        State::Ok | State::Resolved => "ok",
        State::Pending => "PENDING",
        State::Firing => "FIRING",
    }
}

fn draw_table(snap: &Snapshot, elapsed: Duration, sent: u64, drift_at: i64) {
    let mut out = String::new();
    out.push_str("\x1b[2J\x1b[H");
    let drifting = if snap.at_ms >= drift_at {
        "drift injected"
    } else {
        "no drift yet"
    };
    out.push_str(&format!(
        "driftd demo  t+{}s  produced {}  consumed {}  rejected {}  ({drifting}; Ctrl-C to stop)\n\n",
        elapsed.as_secs(),
        sent,
        snap.kafka.messages,
        snap.stats.decode.rejected_total()
    ));
    for m in &snap.report.models {
        out.push_str(&format!(
            "{}  ({} events in window)\n",
            m.model, m.all.samples
        ));
        out.push_str(&format!(
            "  {:<18} {:>8} {:>10} {:>8}  {}\n",
            "distribution", "psi", "js_dist", "unseen", "state"
        ));
        for f in m.all.distributions() {
            let g = |k: &str| f.metrics.get(k).map_or("-".into(), |x| format!("{x:.3}"));
            out.push_str(&format!(
                "  {:<18} {:>8} {:>10} {:>8}  {}\n",
                f.name,
                g("psi"),
                g("js_distance"),
                g("unseen_share"),
                state_word(f.state)
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "  {:<12} {:>9} {:>8} {:>12} {:>12}  {}\n",
        "model", "requests", "errors", "p50 infer", "p99 infer", "conditions"
    ));
    for h in &snap.report.health {
        let lat = h.latency.iter().find(|s| s.stage == "inference_ms");
        let ms = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1} ms"));
        let firing: Vec<String> = h
            .conditions
            .iter()
            .filter(|c| c.2 != State::Ok)
            .map(|c| format!("{} {} {}", c.0, c.1, state_word(c.2)).replace("  ", " "))
            .collect();
        out.push_str(&format!(
            "  {:<12} {:>9} {:>8} {:>12} {:>12}  {}\n",
            h.model,
            h.requests,
            h.error_rate
                .map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
            ms(lat.and_then(|s| s.p50_ms)),
            ms(lat.and_then(|s| s.p99_ms)),
            firing.join(", ")
        ));
    }
    out.push('\n');
    for c in snap
        .report
        .experiments
        .comparisons
        .iter()
        .filter(|c| c.action == "clicked_on_item")
    {
        let pct = |r: Option<f64>| r.map_or("-".into(), |x| format!("{:.2}%", x * 100.0));
        out.push_str(&format!(
            "  {} clicks: {} {} vs {} {}  p = {}  {}\n",
            c.model,
            c.control,
            pct(c.control_rate),
            c.variant,
            pct(c.variant_rate),
            c.p_value.map_or("-".into(), |p| format!("{p:.1e}")),
            state_word(c.state)
        ));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

fn print_changes(
    snap: &Snapshot,
    last: &mut std::collections::HashMap<(String, String), State>,
    elapsed: Duration,
) {
    // Health and experiment conditions: their transitions say it all.
    for t in snap.transitions.iter().filter(|t| t.distribution.is_none()) {
        if matches!(t.to, State::Firing | State::Resolved) {
            println!(
                "t+{:>3}s {} {}{}{} -> {}: {}",
                elapsed.as_secs(),
                t.alertname,
                t.model,
                t.arm
                    .as_ref()
                    .map(|a| format!(" arm {a}"))
                    .unwrap_or_default(),
                if t.feature.is_empty() {
                    String::new()
                } else {
                    format!(" {}", t.feature)
                },
                t.to,
                t.details.get("summary").map_or("", String::as_str)
            );
        }
    }
    for m in &snap.report.models {
        for f in m.all.distributions() {
            let key = (m.model.clone(), f.name.clone());
            let prev = last.insert(key, f.state).unwrap_or(State::Ok);
            if prev != f.state {
                let psi = f.metrics.get("psi").unwrap_or(f64::NAN);
                println!(
                    "t+{:>3}s {} {} {} -> {} (psi {:.3}, {} events in window)",
                    elapsed.as_secs(),
                    m.model,
                    f.name,
                    prev,
                    f.state,
                    psi,
                    m.all.samples
                );
            }
        }
    }
}
