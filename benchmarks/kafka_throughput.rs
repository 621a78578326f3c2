//! End-to-end throughput of the daemon through Kafka: librdkafka's mock
//! cluster (the real protocol over loopback, in this process) -> consumer
//! group -> decode -> windows -> evaluation, measured from the outside by the
//! consumer loop's own counters.
//!
//! Run: `cargo bench --bench kafka_throughput` (env `DRIFTD_BENCH_LINES`,
//! default 300000). Prints the events/s over the whole drain and over the
//! steady part (after the group join and the first 10% of messages), the
//! parse-only floor for the same lines on one core, and the ratio.

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use driftd::config::Config;
use driftd::daemon::ingest::KafkaConfig;
use driftd::engine::baseline::{BaselineBuilder, Binning};
use driftd::engine::decode::{Decoded, Decoder};
use driftd::engine::window::WindowSpec;
use driftd::lab::generate::{Generator, GeneratorConfig};

const TOPIC: &str = "bench";

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let n: usize = std::env::var("DRIFTD_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    // `cargo test --benches` runs bench targets once as tests: keep that cheap.
    let n = if std::env::args().any(|a| a == "--bench") {
        n
    } else {
        20_000
    };
    let gen_cfg = GeneratorConfig::synthetic(42, 4, 20).inference_only();
    let now = driftd::clock::now_ms();

    // Baselines from a separate reference stream of the same models.
    let mut reference = Generator::new(GeneratorConfig {
        stream_seed: Some(7),
        ..gen_cfg.clone()
    });
    let decoder = Decoder::new(Default::default());
    let mut builders: std::collections::BTreeMap<String, BaselineBuilder> = Default::default();
    let mut buf = String::new();
    for i in 0..50_000i64 {
        reference.next_line(now - 3_600_000 + i, &mut buf);
        if let Decoded::Event(e) = decoder.decode(buf.as_bytes()) {
            builders
                .entry(e.model.to_string())
                .or_insert_with(|| BaselineBuilder::new(&e.model))
                .add(&e);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bdir = dir.path().join("baselines");
    std::fs::create_dir_all(&bdir).expect("baselines dir");
    for b in builders.into_values() {
        b.finish(&Binning::default(), "bench", now)
            .expect("baseline")
            .save(&bdir)
            .expect("saved");
    }

    // The lines, generated up front so generation is not measured.
    let mut g = Generator::new(gen_cfg);
    let names = g.model_names();
    let mut lines: Vec<(String, String)> = Vec::with_capacity(n);
    for i in 0..n {
        g.next_line(now + (i as i64) / 1000, &mut buf);
        let key = g.last_model().map(|m| names[m].clone()).unwrap_or_default();
        lines.push((key, buf.clone()));
    }
    let bytes: usize = lines.iter().map(|l| l.1.len()).sum();

    // Parse floor: serde_json into IgnoredAny, one core, same lines.
    let t = Instant::now();
    for (_, l) in &lines {
        let _: serde::de::IgnoredAny = serde_json::from_str(l).expect("valid");
    }
    let floor = n as f64 / t.elapsed().as_secs_f64();

    // librdkafka's mock cluster keeps only 5 MB per partition: spread the
    // lines over enough partitions that all of them fit, load them first,
    // then time the daemon draining them (from the moment its partitions
    // are assigned, so the group join is not counted).
    const PARTITIONS: i32 = 64;
    let cap = PARTITIONS as usize * (4 << 20) / (bytes / n).max(1);
    assert!(
        n <= cap,
        "{n} lines do not fit the mock cluster's retention; use at most {cap}"
    );
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create()
        .expect("producer");
    for (i, (k, l)) in lines.iter().enumerate() {
        let mut rec = BaseRecord::to(TOPIC)
            .key(k.as_str())
            .payload(l.as_str())
            .partition(i as i32 % PARTITIONS);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
    drop(producer);

    let mut cfg = Config {
        source: "bench".into(),
        ..Config::default()
    };
    cfg.kafka = Some(KafkaConfig {
        brokers,
        topics: vec![TOPIC.into()],
        group_id: "bench".into(),
        commit_interval: Duration::from_secs(1),
        rewind_on_start: false,
        // Extra librdkafka properties for tuning experiments:
        // DRIFTD_BENCH_PROPS="fetch.queue.backoff.ms=10,queued.min.messages=1000".
        properties: std::env::var("DRIFTD_BENCH_PROPS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    });
    cfg.engine.window = WindowSpec::Time {
        length_ms: 600_000,
        pane_ms: 30_000,
    };
    cfg.engine.max_future_ms = None;
    cfg.every = Duration::from_millis(20);
    cfg.baselines_dir = bdir;
    cfg.checkpoint.dir = dir.path().join("state");
    cfg.http.listen = "127.0.0.1:0".parse().expect("addr");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cancel = CancellationToken::new();
    let joined = Instant::now();
    let daemon = rt
        .block_on(driftd::daemon::app::start(cfg, cancel.clone()))
        .expect("daemon starts");
    let snap = daemon.snapshot.clone();
    while daemon
        .readiness
        .assigned
        .load(std::sync::atomic::Ordering::Relaxed)
        < PARTITIONS as usize
    {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "group join timed out"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let join_s = joined.elapsed().as_secs_f64();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let done = loop {
        std::thread::sleep(Duration::from_millis(5));
        let m = snap.borrow().kafka.messages;
        if m as usize >= n {
            break Instant::now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "timed out at {m} of {n} messages"
        );
    };
    let cpu = cpu_seconds() - cpu0;
    let total_s = done.duration_since(start).as_secs_f64();
    let events: u64 = snap.borrow().report.models.iter().map(|m| m.events).sum();
    let lost = n as u64 - events.min(n as u64);
    cancel.cancel();
    rt.block_on(daemon.wait()).expect("clean shutdown");

    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "kafka_throughput: {n} lines, {:.0} bytes/line, 20 features, 4 models, {PARTITIONS} partitions, {cores} cores",
        bytes as f64 / n as f64
    );
    println!("  group join: {join_s:.2} s (not counted below)");
    println!(
        "  daemon through the mock broker: {total_s:.2} s = {:.0} events/s ({} events counted, {lost} missing)",
        n as f64 / total_s,
        events
    );
    println!(
        "  process CPU (daemon + in-process broker): {cpu:.2} s = {:.2} CPU-s per million events",
        cpu / n as f64 * 1e6
    );
    println!(
        "  parse floor (serde_json IgnoredAny, 1 core): {floor:.0} lines/s; daemon / floor = {:.2}",
        n as f64 / total_s / floor
    );
}

/// User + system CPU of this process, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based) of the whole line.
    (ticks(11) + ticks(12)) / 100.0
}
