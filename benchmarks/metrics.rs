//! Benchmark `metrics`: the cost of exporting, for 100 models x 20 features
//! (about 100 x 22 x 10 score series plus states, samples and thresholds).
//!
//! * `update`: `Metrics::update` from one evaluation's snapshot (what the
//!   consumer loop does once per `evaluation.every`): the counters; the
//!   gauges' text waits for a scrape.
//! * `first_scrape`: an update and the scrape after it, which builds the
//!   gauges' exposition text. Issue target: under 20 ms.
//! * `render`: a later scrape of the same evaluation (the registry's
//!   families, plus the gauges' text the first scrape built).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use driftd::daemon::metrics::Metrics;
use driftd::daemon::snapshot::Snapshot;
use driftd::engine::baseline::{BaselineBuilder, Binning};
use driftd::engine::decode::{Decoded, Decoder};
use driftd::engine::{Engine, EngineConfig};
use driftd::lab::generate::{Generator, GeneratorConfig};
use prometheus::Registry;

fn snapshot() -> Snapshot {
    let models = 100;
    let g = GeneratorConfig::synthetic(42, models, 20)
        .inference_only()
        .compact();
    let mut reference = Generator::new(GeneratorConfig {
        stream_seed: Some(7),
        ..g.clone()
    });
    let d = Decoder::new(Default::default());
    let mut builders: BTreeMap<String, BaselineBuilder> = BTreeMap::new();
    let mut buf = String::new();
    for i in 0..(models as i64 * 300) {
        reference.next_line(i, &mut buf);
        if let Decoded::Event(e) = d.decode(buf.as_bytes()) {
            builders
                .entry(e.model.to_string())
                .or_insert_with(|| BaselineBuilder::new(&e.model))
                .add(&e);
        }
    }
    let bases = builders
        .into_values()
        .map(|b| b.finish(&Binning::default(), "bench", 0).expect("baseline"))
        .collect();
    let mut engine = Engine::new(
        EngineConfig {
            max_future_ms: None,
            ..EngineConfig::default()
        },
        bases,
    );
    let mut live = Generator::new(g);
    for i in 0..(models as i64 * 300) {
        live.next_line(1_000_000 + i, &mut buf);
        engine.ingest(buf.as_bytes(), 1_000_000 + i);
    }
    let transitions = engine.evaluate(1_000_000 + models as i64 * 300);
    Snapshot {
        report: engine.report(),
        stats: engine.stats.clone(),
        transitions,
        ..Snapshot::default()
    }
}

fn bench_metrics(c: &mut Criterion) {
    let snap = std::sync::Arc::new(snapshot());
    let registry = Registry::new();
    let mut m = Metrics::new(&registry).expect("metrics");
    m.update(&snap);
    let text = m.render();
    eprintln!(
        "metrics: {} models, {} series, {} bytes of exposition",
        snap.report.models.len(),
        text.lines().filter(|l| !l.starts_with('#')).count(),
        text.len()
    );
    let mut g = c.benchmark_group("metrics");
    g.sample_size(20);
    g.bench_function("update_100_models_20_features", |b| {
        b.iter(|| m.update(black_box(&snap)))
    });
    g.bench_function("first_scrape_100_models_20_features", |b| {
        b.iter(|| {
            m.update(black_box(&snap));
            black_box(m.render())
        })
    });
    g.bench_function("render_100_models_20_features", |b| {
        b.iter(|| black_box(m.render()))
    });
    g.finish();
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);
