//! `driftd bench`: the end-to-end performance harness.
//!
//! This module owns the measurements the README's performance section
//! quotes, so anyone can rerun them with one command. It generates
//! seed-shaped inference logs (models, features, categorical share and line
//! shape configurable) and measures, on the same lines:
//!
//! 1. **parse floor**: serde_json into a typed, borrowed struct of the line
//!    (what any decoder of this design must at least pay), one core;
//! 2. **decoder**: the engine's decoder alone, one core;
//! 3. **replay**: the engine (decode, bin, window, evaluate) over the lines
//!    in memory, one core; then `driftd replay`'s own path over the lines
//!    as one file: one thread against every core (decoding in parallel,
//!    the engine in order), and 30 s evaluations against one;
//! 4. **daemon**: the real `driftd run` binary as a child process, draining
//!    the lines from librdkafka's mock cluster (the real protocol over
//!    loopback, hosted by this process), timed from its partitions'
//!    assignment; the child's own CPU time and peak RSS (from /proc);
//! 5. **steady** (with `--steady`): the child at a fixed produce rate, with
//!    probe events whose time to show in the daemon's API (event-to-gauge
//!    latency) is measured, and the child's RSS sampled over the run while
//!    /metrics is scraped every 15 s, as the shipped Prometheus
//!    configuration does; its peak RSS at the end;
//! 6. **/metrics**: scrapes of the child's exposition, timed.
//!
//! Each throughput is also given as a ratio to the parse floor measured in
//! the same run. The daemon is measured from outside (its HTTP API and
//! /proc), so nothing here is special-cased inside it.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::engine::baseline::{Baseline, BaselineBuilder, Binning};
use crate::engine::decode::{Decoded, Decoder, Str};
use crate::engine::window::WindowSpec;
use crate::engine::{Engine, EngineConfig};
use crate::lab::generate::{Generator, GeneratorConfig};
use crate::lab::harness::{
    self, free_port, machine, proc_mem, BlockingHttp, ChildDaemon, DaemonConfig, Scratch, Traffic,
};

const TOPIC: &str = "bench";
const PROBE_MODEL: &str = "latency-probe";

/// What to measure (flags of `driftd bench`).
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    pub models: usize,
    pub features: usize,
    pub categorical_share: f64,
    pub lines: usize,
    /// The lean line shape (~450 bytes with 20 features) instead of the
    /// seed's logging envelope (~840).
    pub compact: bool,
    pub replay: bool,
    pub daemon: bool,
    /// The daemon's evaluation interval.
    pub every: Duration,
    /// A steady-rate phase after the drain.
    pub steady: Option<Duration>,
    /// Lines per second in the steady phase.
    pub rate: u64,
    pub scrapes: usize,
    /// librdkafka properties for the daemon under test (tuning experiments).
    pub kafka_properties: Vec<(String, String)>,
    /// Lines carry an experiment arm (per-arm windows, arm comparison).
    pub arms: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            models: 4,
            features: 20,
            categorical_share: crate::lab::generate::DEFAULT_CATEGORICAL_SHARE,
            lines: 1_000_000,
            compact: true,
            replay: true,
            daemon: true,
            every: Duration::from_secs(1),
            steady: None,
            rate: 50_000,
            scrapes: 20,
            kafka_properties: Vec::new(),
            arms: true,
        }
    }
}

/// One throughput measurement.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Throughput {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub cpu_seconds_per_million: f64,
    /// This stage's cost per event over the parse floor's.
    pub ratio_to_floor: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Steady {
    pub seconds: f64,
    pub target_rate: u64,
    pub consumed_per_second: f64,
    pub cpu_seconds_per_million: f64,
    pub probes: usize,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// (seconds since the phase started, RSS MiB) every few seconds.
    pub rss_curve_mib: Vec<(f64, f64)>,
    /// The steady daemon's peak RSS (VmHWM), start-up included.
    pub peak_rss_mib: f64,
    /// Scrapes of /metrics during the phase.
    pub scrapes: usize,
    pub final_lag: i64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scrape {
    pub series: usize,
    pub bytes: usize,
    pub median_ms: f64,
    pub max_ms: f64,
}

/// `driftd replay` of the lines as a file (see [`replay_files`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FileReplays {
    pub threads: usize,
    pub one_thread: Throughput,
    pub parallel: Throughput,
    pub one_evaluation: Throughput,
    /// One thread's time over every core's.
    pub speedup: f64,
    /// 30 s evaluations' time over one evaluation's.
    pub thirty_s_over_one: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BenchReport {
    pub machine: String,
    pub cores: usize,
    pub models: usize,
    pub features: usize,
    pub lines: usize,
    pub bytes_per_line: f64,
    pub floor: Throughput,
    /// The engine's decoder alone, one core.
    pub decoder: Throughput,
    pub replay: Option<Throughput>,
    pub files: Option<FileReplays>,
    pub daemon: Option<Throughput>,
    pub daemon_peak_rss_mib: Option<f64>,
    pub daemon_rss_after_drain_mib: Option<f64>,
    pub steady: Option<Steady>,
    pub scrape: Option<Scrape>,
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    harness::cpu_seconds("/proc/thread-self")
}

/// The parse floor's target: every field the engine reads, typed and
/// borrowed, features as (name, scalar) pairs, nothing binned or counted.
#[derive(Deserialize)]
#[allow(dead_code)] // read by serde only: the point is the parsing
struct FloorLine<'a> {
    #[serde(borrow)]
    model_id: Option<FloorScalar<'a>>,
    #[serde(borrow)]
    timestamp: Option<FloorScalar<'a>>,
    #[serde(borrow)]
    prediction: Option<FloorScalar<'a>>,
    confidence: Option<f64>,
    #[serde(borrow)]
    experiment_assignment: Option<FloorScalar<'a>>,
    #[serde(borrow)]
    level: Option<FloorScalar<'a>>,
    #[serde(borrow)]
    request_id: Option<FloorScalar<'a>>,
    #[serde(borrow, default)]
    input_features: FloorFeatures<'a>,
}

#[allow(dead_code)]
enum FloorScalar<'a> {
    Str(std::borrow::Cow<'a, str>),
    Num(f64),
    Bool(bool),
    Null,
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for FloorScalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FloorScalar<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a scalar")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FloorScalar::Str(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FloorScalar::Str(v.to_owned().into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(FloorScalar::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(FloorScalar::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(FloorScalar::Num(v as f64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(FloorScalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FloorScalar::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FloorScalar::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FloorScalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Default)]
struct FloorFeatures<'a>(#[allow(dead_code)] Vec<(std::borrow::Cow<'a, str>, FloorScalar<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for FloorFeatures<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FloorFeatures<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(16));
                while let Some(k) = m.next_key::<Str<'de>>()? {
                    v.push((k.0, m.next_value::<FloorScalar<'de>>()?));
                }
                Ok(FloorFeatures(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Lines in one buffer, with their models (Kafka keys).
struct Lines {
    text: Vec<u8>,
    ends: Vec<usize>,
    keys: Vec<u16>,
    names: Vec<String>,
}

impl Lines {
    fn iter(&self) -> impl Iterator<Item = (&[u8], &str)> {
        let mut start = 0;
        self.ends.iter().zip(&self.keys).map(move |(&end, &k)| {
            let l = &self.text[start..end];
            // Past the newline.
            start = end + 1;
            (l, self.names[k as usize].as_str())
        })
    }
}

/// The traffic `o` asks for.
fn traffic(o: &BenchOptions) -> Traffic {
    Traffic {
        models: o.models,
        features: o.features,
        categorical_share: o.categorical_share,
        compact: o.compact,
        arms: o.arms,
    }
}

fn generate(o: &BenchOptions, start_ms: i64, span_ms: i64) -> Lines {
    let mut g = Generator::new(traffic(o).generator_config());
    let names = g.model_names();
    let mut text = Vec::with_capacity(o.lines * 600);
    let mut ends = Vec::with_capacity(o.lines);
    let mut keys = Vec::with_capacity(o.lines);
    let mut buf = String::new();
    for i in 0..o.lines {
        let t = start_ms + (i as i64 * span_ms) / o.lines.max(1) as i64;
        g.next_line(t, &mut buf);
        text.extend_from_slice(buf.as_bytes());
        ends.push(text.len());
        // Newline-separated, so `replay` reads the same text as a file.
        text.push(b'\n');
        keys.push(g.last_model().unwrap_or(0) as u16);
    }
    Lines {
        text,
        ends,
        keys,
        names,
    }
}

/// Baselines of the generated models from a separate reference stream, and
/// of the latency probe.
/// With their null fits, as `driftd baseline build` writes them.
fn baselines(o: &BenchOptions, now: i64) -> anyhow::Result<Vec<Baseline>> {
    let mut bases = traffic(o).baselines(now)?;
    let d = Decoder::new(Default::default());
    let mut probe = BaselineBuilder::new(PROBE_MODEL);
    for i in 0..1000 {
        let l = probe_line(i, now);
        if let Decoded::Event(e) = d.decode(l.as_bytes()) {
            probe.add(&e);
        }
    }
    bases.push(probe.finish(&Binning::default(), "bench", now)?);
    crate::replay::fit_nulls(
        &mut bases,
        &Default::default(),
        crate::replay::default_threads(),
    );
    Ok(bases)
}

fn probe_line(i: u64, t_ms: i64) -> String {
    format!(
        r#"{{"model_id":"{PROBE_MODEL}","timestamp":{t_ms},"prediction":"p","input_features":{{"x":{}}}}}"#,
        i % 10
    )
}

fn floor(lines: &Lines) -> anyhow::Result<(f64, f64)> {
    let (t, c) = (Instant::now(), thread_cpu());
    for (l, _) in lines.iter() {
        let parsed: FloorLine<'_> =
            serde_json::from_slice(l).context("the parse floor could not parse a line")?;
        std::hint::black_box(&parsed);
    }
    Ok((t.elapsed().as_secs_f64(), thread_cpu() - c))
}

fn replay(lines: &Lines, bases: Vec<Baseline>, now: i64) -> (f64, f64, u64) {
    let mut cfg = EngineConfig {
        max_future_ms: None,
        ..EngineConfig::default()
    };
    cfg.window = WindowSpec::default();
    let mut e = Engine::new(cfg, bases);
    let (t, c) = (Instant::now(), thread_cpu());
    let mut last_eval = now;
    for (i, (l, _)) in lines.iter().enumerate() {
        e.ingest(l, now);
        // Evaluate as the daemon would, every 30 s of (generated) time.
        if i % 4096 == 0 {
            let at = now + (i as i64);
            if at - last_eval >= 30_000 {
                e.evaluate(at);
                last_eval = at;
            }
        }
    }
    e.evaluate(last_eval + 30_000);
    let events = e.stats.decode.events;
    (t.elapsed().as_secs_f64(), thread_cpu() - c, events)
}

/// The decoder alone over the lines, one core.
fn decode_only(lines: &Lines) -> (f64, f64, u64) {
    let d = Decoder::new(Default::default());
    let (t, c) = (Instant::now(), thread_cpu());
    let mut events = 0u64;
    for (l, _) in lines.iter() {
        events += u64::from(matches!(
            std::hint::black_box(d.decode(l)),
            Decoded::Event(_)
        ));
    }
    (t.elapsed().as_secs_f64(), thread_cpu() - c, events)
}

/// `driftd replay` over the lines as one file: `threads` decoding, an
/// evaluation every `every_ms` of event time. (seconds, process CPU
/// seconds, events)
fn replay_file(
    lines: &Lines,
    bases: &[Baseline],
    threads: usize,
    every_ms: i64,
) -> anyhow::Result<(f64, f64, u64)> {
    let cfg = EngineConfig {
        max_future_ms: None,
        window: WindowSpec::default(),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, bases.to_vec());
    let input = crate::replay::Input::File("bench.jsonl".into());
    let (t, c) = (Instant::now(), harness::cpu_seconds("/proc/self"));
    let r = crate::replay::replay(
        &mut e,
        &input,
        &mut lines.text.as_slice(),
        every_ms,
        threads,
        |_| {},
    )?;
    let cpu = harness::cpu_seconds("/proc/self") - c;
    Ok((t.elapsed().as_secs_f64(), cpu, r.stats.decode.events))
}

/// The file replays of the report: one thread and every core at 30 s
/// evaluations, and every core at one evaluation; the median of three
/// runs each.
fn replay_files(
    lines: &Lines,
    bases: &[Baseline],
    floor_per_event: f64,
) -> anyhow::Result<FileReplays> {
    const EVERY_30S: i64 = 30_000;
    // Longer than any stream: the final evaluation only.
    const ONCE: i64 = 3_650 * 86_400_000;
    let threads = crate::replay::default_threads();
    // The median of three runs: this kind of machine varies by a fifth
    // from one run to the next.
    let run = |threads: usize, every: i64| -> anyhow::Result<Throughput> {
        let mut runs = (0..3)
            .map(|_| replay_file(lines, bases, threads, every))
            .collect::<anyhow::Result<Vec<_>>>()?;
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (s, cpu, events) = runs[1];
        Ok(throughput(events, s, cpu, floor_per_event))
    };
    eprintln!("replay of the lines as a file: 1 thread ...");
    let one_thread = run(1, EVERY_30S)?;
    eprintln!("... {threads} threads ...");
    let parallel = run(threads, EVERY_30S)?;
    eprintln!("... {threads} threads, one evaluation ...");
    let one_evaluation = run(threads, ONCE)?;
    Ok(FileReplays {
        threads,
        speedup: one_thread.seconds / parallel.seconds.max(1e-9),
        thirty_s_over_one: parallel.seconds / one_evaluation.seconds.max(1e-9),
        one_thread,
        parallel,
        one_evaluation,
    })
}

fn throughput(events: u64, secs: f64, cpu: f64, floor_per_event: f64) -> Throughput {
    let per_event = secs / events.max(1) as f64;
    Throughput {
        events,
        seconds: secs,
        events_per_second: events as f64 / secs.max(1e-9),
        cpu_seconds_per_million: cpu / events.max(1) as f64 * 1e6,
        ratio_to_floor: per_event / floor_per_event.max(1e-15),
    }
}

fn producer(brokers: &str) -> anyhow::Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?)
}

fn send(p: &BaseProducer, topic: &str, key: &str, payload: &[u8], partition: Option<i32>) {
    let mut rec = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(part) = partition {
        rec = rec.partition(part);
    }
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(2));
            }
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs every measurement `o` asks for, printing progress to stderr.
pub(crate) fn run(o: &BenchOptions) -> anyhow::Result<BenchReport> {
    let now = crate::clock::now_ms();
    eprintln!(
        "generating {} lines: {} models x {} features ({}% categorical), {} shape",
        o.lines,
        o.models,
        o.features,
        (o.categorical_share * 100.0).round(),
        if o.compact { "compact" } else { "seed" }
    );
    // Event times over the last 10 minutes: all within the daemon's window.
    let lines = generate(o, now - 600_000, 600_000);
    let bytes_per_line = (lines.text.len() - o.lines) as f64 / o.lines.max(1) as f64;
    let bases = baselines(o, now)?;

    eprintln!("parse floor ...");
    let (floor_s, floor_cpu) = floor(&lines)?;
    let floor_per_event = floor_s / o.lines.max(1) as f64;
    let floor_t = throughput(o.lines as u64, floor_s, floor_cpu, floor_per_event);

    eprintln!("decoder ...");
    let (s, c, events) = decode_only(&lines);
    let decoder_t = throughput(events, s, c, floor_per_event);

    let replay_t = if o.replay {
        eprintln!("replay ...");
        let (s, c, events) = replay(&lines, bases.clone(), now);
        Some(throughput(events, s, c, floor_per_event))
    } else {
        None
    };
    let files = if o.replay {
        Some(replay_files(&lines, &bases, floor_per_event)?)
    } else {
        None
    };

    let mut report = BenchReport {
        machine: machine(),
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        models: o.models,
        features: o.features,
        lines: o.lines,
        bytes_per_line,
        floor: floor_t,
        decoder: decoder_t,
        replay: replay_t,
        files,
        daemon: None,
        daemon_peak_rss_mib: None,
        daemon_rss_after_drain_mib: None,
        steady: None,
        scrape: None,
    };
    if !o.daemon {
        return Ok(report);
    }

    // The broker. The mock cluster keeps about 5 MB per partition: spread
    // the lines over enough partitions that all of them fit.
    let partitions = ((lines.text.len() / (3 << 20)) + 1).clamp(4, 256) as i32;
    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    cluster.create_topic(TOPIC, partitions, 1)?;
    let brokers = cluster.bootstrap_servers();
    eprintln!("producing {} lines to {partitions} partitions ...", o.lines);
    produce_all(&brokers, &lines, partitions)?;
    let n = o.lines as u64;
    drop(lines);

    let scratch = Scratch::new("bench").context("creating a scratch directory")?;
    let dir = scratch.0.as_path();
    std::fs::create_dir_all(dir.join("baselines"))?;
    for b in &bases {
        b.save(&dir.join("baselines"))?;
    }
    // Drain: the lines wait in the topic; the daemon (evaluating every
    // 100 ms, so its counters are fresh) drains them.
    let mut d = spawn_daemon(
        dir,
        "drain",
        &brokers,
        TOPIC,
        Duration::from_millis(100),
        &o.kafka_properties,
    )?;
    eprintln!("daemon: draining ...");
    report.daemon = Some(time_drain(&mut d, n, floor_per_event)?);
    let (rss, peak) = proc_mem(d.pid());
    report.daemon_peak_rss_mib = Some(peak);
    report.daemon_rss_after_drain_mib = Some(rss);
    if o.scrapes > 0 {
        report.scrape = Some(scrape(&d, o.scrapes)?);
    }
    drop(d);

    if let Some(dur) = o.steady {
        // A fresh daemon on an empty topic, at the configured interval:
        // its RSS is the daemon's own at this rate, not the drain's.
        const STEADY: &str = "bench-steady";
        cluster.create_topic(STEADY, 4, 1)?;
        let d = spawn_daemon(
            dir,
            "steady",
            &brokers,
            STEADY,
            o.every,
            &o.kafka_properties,
        )?;
        eprintln!(
            "steady: {} lines/s for {} ...",
            o.rate,
            humantime::format_duration(dur)
        );
        report.steady = Some(steady(o, &d, &brokers, STEADY, dur)?);
    }
    drop(cluster);
    drop(scratch);
    Ok(report)
}

/// Puts every line in the topic, spread round-robin over its partitions.
fn produce_all(brokers: &str, lines: &Lines, partitions: i32) -> anyhow::Result<()> {
    let p = producer(brokers)?;
    for (i, (l, k)) in lines.iter().enumerate() {
        send(&p, TOPIC, k, l, Some(i as i32 % partitions));
    }
    p.flush(Duration::from_secs(600))?;
    Ok(())
}

/// The daemon's throughput draining the `n` messages waiting in the topic:
/// timed from its first counted message to its last, CPU over the same span.
fn time_drain(d: &mut ChildDaemon, n: u64, floor_per_event: f64) -> anyhow::Result<Throughput> {
    let t_start = Instant::now();
    let mut first = None;
    let last = loop {
        let s = d.status()?;
        let m = s["messages"].as_u64().unwrap_or(0);
        let at = (Instant::now(), m, d.cpu());
        if m > 0 && first.is_none() {
            first = Some(at);
        }
        if m >= n {
            break at;
        }
        if t_start.elapsed() > Duration::from_secs(3600) {
            bail!("the daemon did not drain within an hour");
        }
        d.alive().with_context(|| d.log())?;
        std::thread::sleep(Duration::from_millis(2));
    };
    let ((t0, m0, c0), (t1, _, c1)) = (first.unwrap_or(last), last);
    let secs = t1.duration_since(t0).as_secs_f64();
    if secs < 0.5 {
        bail!("the drain took {secs:.3} s: too short to time; use more --lines");
    }
    Ok(throughput(n - m0, secs, c1 - c0, floor_per_event))
}

fn scrape(d: &ChildDaemon, n: usize) -> anyhow::Result<Scrape> {
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..n {
        let t = Instant::now();
        let (_, b) = d.get("/metrics")?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        body = b;
    }
    times.sort_by(f64::total_cmp);
    Ok(Scrape {
        series: body.lines().filter(|l| !l.starts_with('#')).count(),
        bytes: body.len(),
        median_ms: percentile(&times, 0.5),
        max_ms: times.last().copied().unwrap_or(f64::NAN),
    })
}

/// Starts `driftd run` on `topic` and waits until it owns partitions.
fn spawn_daemon(
    dir: &Path,
    name: &str,
    brokers: &str,
    topic: &str,
    every: Duration,
    props: &[(String, String)],
) -> anyhow::Result<ChildDaemon> {
    let port = free_port()?;
    // The bench measures what the daemon uses; the worst case it may hold
    // (check-config's plan) passes the default limit at 100 models x 50
    // features, which is not what is measured here.
    let mut extra = String::from("\n[limits]\nmax_memory = \"4GiB\"\n");
    if !props.is_empty() {
        extra.push_str("\n[kafka.properties]\n");
        for (k, v) in props {
            extra.push_str(&format!("{k:?} = {v:?}\n"));
        }
    }
    let config = dir.join(format!("{name}.toml"));
    DaemonConfig {
        brokers,
        topic,
        group_id: &format!("driftd-bench-{name}"),
        commit_interval: None,
        window: Duration::from_secs(600),
        pane: Duration::from_secs(30),
        every,
        baselines_dir: &dir.join("baselines"),
        state_dir: &dir.join(format!("state-{name}")),
        port,
        extra: &extra,
    }
    .write(&config)?;
    let log_path = dir.join(format!("{name}.log"));
    let mut d = ChildDaemon::start(&config, port, log_path, Stdio::null())?;
    d.wait_joined()?;
    Ok(d)
}

/// How often the steady phase scrapes /metrics, as the shipped Prometheus
/// configuration does: the first scrape after an evaluation builds the
/// gauges' text, which the daemon holds until the next evaluation, so RSS
/// is measured with it.
const STEADY_SCRAPE_EVERY: Duration = Duration::from_secs(15);

/// Scrapes `url` every [`STEADY_SCRAPE_EVERY`] until `stop`, on its own
/// client: the phase's loop must not wait for a 10 MB body.
fn scrape_until(url: String, stop: Arc<AtomicBool>) -> anyhow::Result<usize> {
    let http = BlockingHttp::new(Duration::from_secs(30))?;
    let mut scrapes = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let (code, _) = http.get(&url)?;
            anyhow::ensure!(code == 200, "/metrics answered {code}");
            scrapes += 1;
            next += STEADY_SCRAPE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(scrapes)
}

/// The steady phase: lines at `o.rate` per second and a probe event every
/// 20 ms; each probe's latency is the time until the daemon's API counts
/// it (its events are cumulative and in order: one partition, one key).
/// /metrics is scraped every 15 s meanwhile.
fn steady(
    o: &BenchOptions,
    d: &ChildDaemon,
    brokers: &str,
    topic: &'static str,
    dur: Duration,
) -> anyhow::Result<Steady> {
    let probes_before = d.status()?["events"][PROBE_MODEL].as_u64().unwrap_or(0);
    let sent_at: Arc<std::sync::Mutex<Vec<Instant>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let prod = {
        let (sent_at, stop, produced) = (sent_at.clone(), stop.clone(), produced.clone());
        let brokers = brokers.to_owned();
        let mut g = Generator::new(GeneratorConfig {
            stream_seed: Some(11),
            ..traffic(o).generator_config()
        });
        let names = g.model_names();
        let rate = o.rate.max(1);
        std::thread::spawn(move || -> anyhow::Result<()> {
            let p = producer(&brokers)?;
            let start = Instant::now();
            let mut sent = 0u64;
            let mut probes = 0u64;
            let mut buf = String::new();
            while !stop.load(Ordering::Relaxed) {
                let el = start.elapsed().as_secs_f64();
                let due = (el * rate as f64) as u64;
                while sent < due {
                    let t = crate::clock::now_ms();
                    g.next_line(t, &mut buf);
                    let k = g.last_model().map_or("", |m| names[m].as_str());
                    send(&p, topic, k, buf.as_bytes(), None);
                    sent += 1;
                }
                let probes_due = (el * 50.0) as u64;
                while probes < probes_due {
                    let l = probe_line(probes, crate::clock::now_ms());
                    send(&p, topic, PROBE_MODEL, l.as_bytes(), Some(0));
                    // The clock starts when the producer hands it to librdkafka.
                    sent_at.lock().expect("not poisoned").push(Instant::now());
                    probes += 1;
                }
                produced.store(sent, Ordering::Relaxed);
                p.poll(Duration::ZERO);
                std::thread::sleep(Duration::from_millis(1));
            }
            p.flush(Duration::from_secs(30))?;
            Ok(())
        })
    };
    let scraper = {
        let (url, stop) = (d.url("/metrics"), stop.clone());
        std::thread::spawn(move || scrape_until(url, stop))
    };
    let start = Instant::now();
    let (m0, c0) = (d.status()?["messages"].as_u64().unwrap_or(0), d.cpu());
    let mut latencies = Vec::new();
    let mut seen = 0usize;
    let mut curve = Vec::new();
    let mut next_sample = Duration::ZERO;
    while start.elapsed() < dur {
        let s = d.status()?;
        let at = Instant::now();
        let count = s["events"][PROBE_MODEL]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(probes_before) as usize;
        {
            let sent = sent_at.lock().expect("not poisoned");
            while seen < count.min(sent.len()) {
                latencies.push(at.duration_since(sent[seen]).as_secs_f64() * 1000.0);
                seen += 1;
            }
        }
        if start.elapsed() >= next_sample {
            let (rss, _) = proc_mem(d.pid());
            curve.push((start.elapsed().as_secs_f64(), rss));
            next_sample += (dur / 20).max(Duration::from_secs(1));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    let s = d.status()?;
    let consumed = s["messages"].as_u64().unwrap_or(0).saturating_sub(m0);
    let cpu = d.cpu() - c0;
    stop.store(true, Ordering::Relaxed);
    prod.join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let scrapes = scraper
        .join()
        .map_err(|_| anyhow::anyhow!("the scraping thread panicked"))??;
    let peak_rss_mib = proc_mem(d.pid()).1;
    latencies.sort_by(f64::total_cmp);
    let _ = produced;
    Ok(Steady {
        seconds: secs,
        target_rate: o.rate,
        consumed_per_second: consumed as f64 / secs,
        cpu_seconds_per_million: cpu / consumed.max(1) as f64 * 1e6,
        probes: latencies.len(),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        latency_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        rss_curve_mib: curve,
        peak_rss_mib,
        scrapes,
        final_lag: s["lag"].as_i64().unwrap_or(0),
    })
}

/// The report as the README's table.
pub(crate) fn render(r: &BenchReport, o: &BenchOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "driftd bench: {} ({} cores); {} lines, {} models x {} features, {:.0} bytes/line",
        r.machine, r.cores, r.lines, r.models, r.features, r.bytes_per_line
    );
    let _ = writeln!(
        out,
        "| stage | events/s | CPU s per 1M events | x parse floor |\n|---|---|---|---|"
    );
    let row = |out: &mut String, name: &str, t: &Throughput| {
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.2} | {:.2} |",
            t.events_per_second, t.cpu_seconds_per_million, t.ratio_to_floor
        );
    };
    row(
        &mut out,
        "parse floor (serde_json into a typed struct, 1 core)",
        &r.floor,
    );
    row(&mut out, "decoder alone (1 core)", &r.decoder);
    if let Some(t) = &r.replay {
        row(&mut out, "replay (engine, 1 core)", t);
    }
    if let Some(f) = &r.files {
        row(
            &mut out,
            "`replay` of a file, 1 thread, 30 s evaluations",
            &f.one_thread,
        );
        let name = format!(
            "`replay` of a file, {} threads, 30 s evaluations",
            f.threads
        );
        row(&mut out, &name, &f.parallel);
        let name = format!("`replay` of a file, {} threads, one evaluation", f.threads);
        row(&mut out, &name, &f.one_evaluation);
    }
    if let Some(t) = &r.daemon {
        row(&mut out, "daemon through the mock broker (driftd run)", t);
    }
    if let Some(f) = &r.files {
        let mb = |t: &Throughput| t.events_per_second * r.bytes_per_line / 1e6;
        let _ = writeln!(
            out,
            "file replay: {:.2}x on {} threads over 1 ({:.0} vs {:.0} MB/s); 30 s evaluations take {:.2}x one evaluation's time",
            f.speedup,
            f.threads,
            mb(&f.parallel),
            mb(&f.one_thread),
            f.thirty_s_over_one
        );
    }
    if let (Some(peak), Some(after)) = (r.daemon_peak_rss_mib, r.daemon_rss_after_drain_mib) {
        let _ = writeln!(
            out,
            "daemon RSS: {after:.1} MiB after the drain, peak {peak:.1} MiB"
        );
    }
    if let Some(s) = &r.steady {
        let _ = writeln!(
            out,
            "steady {:.0} s at {} lines/s: consumed {:.0}/s, {:.2} CPU s per 1M, final lag {}; event-to-API latency over {} probes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (evaluation every {})",
            s.seconds,
            s.target_rate,
            s.consumed_per_second,
            s.cpu_seconds_per_million,
            s.final_lag,
            s.probes,
            s.latency_p50_ms,
            s.latency_p99_ms,
            s.latency_max_ms,
            humantime::format_duration(o.every)
        );
        let curve: Vec<String> = s
            .rss_curve_mib
            .iter()
            .map(|(t, m)| format!("{t:.0}s {m:.1}"))
            .collect();
        let _ = writeln!(out, "steady RSS (MiB): {}", curve.join(", "));
        let _ = writeln!(
            out,
            "steady RSS peak {:.1} MiB, with /metrics scraped every {} ({} scrapes)",
            s.peak_rss_mib,
            humantime::format_duration(STEADY_SCRAPE_EVERY),
            s.scrapes
        );
    }
    if let Some(s) = &r.scrape {
        let _ = writeln!(
            out,
            "/metrics: {} series, {} bytes, scrape median {:.1} ms, max {:.1} ms",
            s.series, s.bytes, s.median_ms, s.max_ms
        );
    }
    out
}

use std::fmt::Write as _;

/// Writes the JSON report.
pub(crate) fn write_json(r: &BenchReport, w: &mut dyn std::io::Write) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *w, r)?;
    w.write_all(b"\n")?;
    Ok(())
}
