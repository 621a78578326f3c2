//! Benchmark `decode`: one JSON inference line to one [`driftd::engine::decode::Event`].
//!
//! What it measures:
//!
//! * `decoder`: [`Decoder::decode`] with the default [`DecodeConfig`] (the
//!   default field mapping, no feature filter) over 2,000 seed-shaped
//!   inference lines of 20 features each (~840 bytes a line), made by
//!   [`Generator`] with `GeneratorConfig::synthetic(42, 4, 20).inference_only()`
//!   (four models, event time 1 ms apart). The returned event is dropped
//!   inside the measurement, as the engine drops it after counting it.
//! * `floor_value`: `serde_json::from_slice::<serde_json::Value>` on the same
//!   lines: what a naive "parse then look up" decoder would pay at least.
//! * `floor_ignored_any`: `serde_json::from_slice::<serde::de::IgnoredAny>`
//!   on the same lines: serde_json's tokenizer validating every byte and
//!   building nothing. No decoder built on serde_json can be faster, so
//!   `decoder / floor_ignored_any` is the overhead of everything the decoder
//!   actually does (pointer matching, flattening, timestamp parsing, the
//!   event's allocations).
//!
//! Why: decoding is the per-line hot path (every line of every model goes
//! through it, and in `driftd replay` it dominates), so its speed, quoted as
//! a ratio to the parse floor, says how much room is left.
//!
//! Each benchmark runs twice, in groups `decode_bytes` (throughput in
//! decimal MB of input, newlines excluded) and `decode_lines` (throughput in lines),
//! because a criterion group reports a single throughput unit.
//!
//! Run: `cargo bench --bench decode` (add `-- --quick` while developing).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftd::engine::decode::{DecodeConfig, Decoded, Decoder};
use driftd::lab::generate::{Generator, GeneratorConfig};
use serde::de::IgnoredAny;

/// Lines decoded per iteration.
const LINES: usize = 2_000;
/// 2025-12-14T10:00:00Z, the generator's usual epoch.
const T0_MS: i64 = 1_765_706_400_000;

fn corpus() -> Vec<String> {
    let mut g = Generator::new(GeneratorConfig::synthetic(42, 4, 20).inference_only());
    let mut line = String::with_capacity(2048);
    (0..LINES)
        .map(|i| {
            g.next_line(T0_MS + i as i64, &mut line);
            line.clone()
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let lines = corpus();
    let bytes: usize = lines.iter().map(String::len).sum();
    let decoder = Decoder::new(DecodeConfig::default());

    // Measure the path that matters: every line must decode into an event
    // with all 20 features, and parse as JSON for the floors.
    for l in &lines {
        match decoder.decode(l.as_bytes()) {
            Decoded::Event(ev) => assert_eq!(ev.features.len(), 20, "line: {l}"),
            other => panic!("not an event ({other:?}): {l}"),
        }
        serde_json::from_str::<serde_json::Value>(l).expect("valid JSON");
    }
    eprintln!(
        "decode corpus: {LINES} lines, {bytes} bytes ({:.0} bytes/line)",
        bytes as f64 / LINES as f64
    );

    for (group_name, throughput) in [
        ("decode_bytes", Throughput::BytesDecimal(bytes as u64)),
        ("decode_lines", Throughput::Elements(LINES as u64)),
    ] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(throughput);
        // The Value floor takes ~6.5 ms an iteration: 100 samples need ~6 s.
        group.measurement_time(Duration::from_secs(8));
        group.bench_function("decoder", |b| {
            b.iter(|| {
                for l in &lines {
                    black_box(decoder.decode(black_box(l.as_bytes())));
                }
            })
        });
        group.bench_function("floor_value", |b| {
            b.iter(|| {
                for l in &lines {
                    let v = serde_json::from_slice::<serde_json::Value>(black_box(l.as_bytes()));
                    black_box(v.is_ok());
                }
            })
        });
        group.bench_function("floor_ignored_any", |b| {
            b.iter(|| {
                for l in &lines {
                    let v = serde_json::from_slice::<IgnoredAny>(black_box(l.as_bytes()));
                    black_box(v.is_ok());
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
