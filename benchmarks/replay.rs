//! Benchmark `replay`: end-to-end offline replay throughput, and the JSON
//! parse floor over the same file.
//!
//! Data: 1,000,000 inference lines, 20 features each (~500 MB compact, or
//! ~846 MB seed-shaped with `DRIFTD_BENCH_SHAPE=seed`), from
//! `GeneratorConfig::synthetic(42, 4, 20).inference_only()` (four models,
//! arms on), event time 1 ms apart (about 17 minutes of event time, so the
//! default 10-minute window rolls over). The file is written once to
//! `std::env::temp_dir()/driftd-bench-replay-1m.jsonl` and reused by later
//! runs when it has 1,000,000 lines and its first line is what the current
//! generator writes (otherwise it is regenerated). Baselines come from a
//! separate 50,000-line reference drawn from the same models with another
//! line stream (`stream_seed = 7`), built in memory with
//! `replay::build_baselines` and default binning.
//!
//! What it measures (group `replay`, `Throughput::Elements(1_000_000)`, so
//! criterion prints events/s; flat sampling, 10 samples):
//!
//! * `engine`: `driftd::replay::replay(&mut engine, &Input::File(path),
//!   &mut reader, 30_000, |_| {})` with the reader from `Input::open`: read,
//!   decode, window, evaluate every 30 s of event time (compare + detect on
//!   every distribution of every model and arm), final report. The engine is
//!   configured as `driftd replay` does it (defaults, `max_future_ms: None`)
//!   and created fresh for each iteration in untimed setup.
//! * `parse_floor_ignored_any`: the same file through the same
//!   `Input::open` + `replay::for_each_line`, each line only parsed with
//!   `serde_json::from_slice::<serde::de::IgnoredAny>`. It is the cost of
//!   reading and tokenizing, which no replay can beat; `engine` divided by
//!   this is the engine's overhead factor.
//!
//! The file is read through the page cache (it is read once before
//! measuring); on a machine with less free memory than the file, both
//! numbers become disk-bound.
//!
//! Why: replay is how operators backtest thresholds over days of logs, and
//! its events/s is also the single-core ceiling of the live daemon's engine.
//!
//! Run: `cargo bench --bench replay` (a few minutes: one iteration is one
//! pass over the million lines). Run as a test (`cargo test --benches`,
//! which runs each routine once without optimizations) it uses a 10,000-line
//! file instead, so the check stays quick.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufRead, BufReader, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use driftd::engine::baseline::{Baseline, Binning};
use driftd::engine::decode::{DecodeConfig, Decoder};
use driftd::engine::{Engine, EngineConfig};
use driftd::lab::generate::{Generator, GeneratorConfig};
use driftd::replay::{self, Input};
use serde::de::IgnoredAny;

const LINES: u64 = 1_000_000;
/// Lines when run as a test (`cargo test --benches`, no `--bench` flag):
/// criterion then runs each routine once, unoptimized, to check it works.
const TEST_LINES: u64 = 10_000;
const REFERENCE_LINES: u64 = 50_000;
const REFERENCE_STREAM_SEED: u64 = 7;
/// 2025-12-14T10:00:00Z.
const T0_MS: i64 = 1_765_706_400_000;
const EVERY_MS: i64 = 30_000;
const FILE_NAME: &str = "driftd-bench-replay-1m.jsonl";
const TEST_FILE_NAME: &str = "driftd-bench-replay-test-10k.jsonl";

/// `DRIFTD_BENCH_SHAPE=seed` for the full seed-shaped lines (~846 bytes, the
/// logging envelope and long feature names); the default is the compact
/// ~500-byte shape (`GeneratorConfig::compact`), closest to the engine
/// issue's "20 features, about 450 bytes a line".
fn seed_shaped() -> bool {
    std::env::var("DRIFTD_BENCH_SHAPE").is_ok_and(|s| s == "seed")
}

fn generator_config() -> GeneratorConfig {
    let g = GeneratorConfig::synthetic(42, 4, 20).inference_only();
    if seed_shaped() {
        g
    } else {
        g.compact()
    }
}

/// Lines in `path` if it starts with `first_line`; `None` otherwise.
fn existing_lines(path: &Path, first_line: &str) -> Option<u64> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path).ok()?);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    if first.strip_suffix('\n') != Some(first_line) {
        return None;
    }
    let mut n = 1u64;
    loop {
        let buf = r.fill_buf().ok()?;
        if buf.is_empty() {
            return Some(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        r.consume(len);
    }
}

/// The `lines`-line file, generated unless a valid one is already there.
fn data_file(name: &str, lines: u64) -> PathBuf {
    let path = std::env::temp_dir().join(name);
    let mut g = Generator::new(generator_config());
    let mut line = String::with_capacity(2048);
    g.next_line(T0_MS, &mut line);
    if existing_lines(&path, &line) == Some(lines) {
        eprintln!("replay data: reusing {}", path.display());
        return path;
    }
    let started = Instant::now();
    // Write under a private name and rename, so an interrupted run never
    // leaves a truncated file that looks reusable.
    let tmp = path.with_extension(format!("jsonl.{}.tmp", std::process::id()));
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).expect("create data file"));
    w.write_all(line.as_bytes()).expect("write");
    w.write_all(b"\n").expect("write");
    for i in 1..lines as i64 {
        g.next_line(T0_MS + i, &mut line);
        w.write_all(line.as_bytes()).expect("write");
        w.write_all(b"\n").expect("write");
    }
    w.into_inner()
        .expect("flush")
        .sync_all()
        .expect("sync data file");
    std::fs::rename(&tmp, &path).expect("rename data file");
    eprintln!(
        "replay data: wrote {} in {:.1?}",
        path.display(),
        started.elapsed()
    );
    path
}

/// One baseline per model, from a reference stream of the same models.
fn baselines() -> Vec<Baseline> {
    let mut g = Generator::new(GeneratorConfig {
        stream_seed: Some(REFERENCE_STREAM_SEED),
        ..generator_config()
    });
    let mut line = String::with_capacity(2048);
    let mut reference = Vec::with_capacity(REFERENCE_LINES as usize * 900);
    for i in 0..REFERENCE_LINES as i64 {
        g.next_line(T0_MS - 86_400_000 + i, &mut line);
        reference.extend_from_slice(line.as_bytes());
        reference.push(b'\n');
    }
    let built = replay::build_baselines(
        (&Decoder::new(DecodeConfig::default()), 1),
        &Input::File(PathBuf::from("bench-reference.jsonl")),
        &mut Cursor::new(reference),
        None,
        &Binning::default(),
        T0_MS,
        |_| {},
    )
    .expect("baselines");
    assert_eq!(built.baselines.len(), 4, "one baseline per model");
    built.baselines
}

/// Engine settings as `driftd replay` uses them.
fn engine_config() -> EngineConfig {
    EngineConfig {
        max_future_ms: None,
        ..EngineConfig::default()
    }
}

fn run_replay(engine: &mut Engine, input: &Input) -> replay::ReplayResult {
    let (mut reader, _size) = input.open().expect("open data file");
    replay::replay(engine, input, &mut reader, EVERY_MS, 1, |_| {}).expect("replay")
}

fn parse_floor(input: &Input) -> u64 {
    let (mut reader, _size) = input.open().expect("open data file");
    let mut ok = 0u64;
    replay::for_each_line(input, &mut reader, |_, line, _| {
        ok += u64::from(serde_json::from_slice::<IgnoredAny>(line).is_ok());
    })
    .expect("read data file");
    ok
}

fn bench_replay(c: &mut Criterion) {
    let (name, lines) = if std::env::args().any(|a| a == "--bench") {
        (FILE_NAME, LINES)
    } else {
        (TEST_FILE_NAME, TEST_LINES)
    };
    let name = if seed_shaped() {
        name.replace(".jsonl", "-seed.jsonl")
    } else {
        name.to_owned()
    };
    let path = data_file(&name, lines);
    let input = Input::File(path);
    let baselines = baselines();

    // One untimed pass of each: checks that every line is counted against a
    // baseline (so the benchmark measures the full path) and warms the page
    // cache.
    let started = Instant::now();
    let mut engine = Engine::new(engine_config(), baselines.clone());
    let r = run_replay(&mut engine, &input);
    assert_eq!(r.lines, lines);
    assert_eq!(r.stats.decode.events, lines, "every line is an event");
    assert_eq!(r.stats.no_baseline, 0, "every model has a baseline");
    assert_eq!(r.stats.late, 0);
    eprintln!(
        "replay check: {} lines, {} events, {} transitions, {:.2?}",
        r.lines,
        r.stats.decode.events,
        r.transitions.len(),
        started.elapsed()
    );
    assert_eq!(parse_floor(&input), lines, "every line parses");

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(lines));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(35));
    group.bench_function("engine", |b| {
        b.iter_batched(
            || Engine::new(engine_config(), baselines.clone()),
            |mut engine| {
                let r = run_replay(&mut engine, &input);
                // Returned, so dropping the engine and report is not timed.
                (engine, black_box(r))
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("parse_floor_ignored_any", |b| {
        b.iter(|| black_box(parse_floor(&input)))
    });
    group.finish();
}

criterion_group!(benches, bench_replay);
criterion_main!(benches);
