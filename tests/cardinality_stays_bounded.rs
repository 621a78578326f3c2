//! A flood of distinct identifiers grows neither memory nor series without
//! bound. Straight through the engine (no Kafka, fast): a million model ids
//! stop at `max_models` (and the process' resident memory stays put), a
//! million arm names at `max_arms_per_model`, a million categories all land
//! in one `__other__` bin, and lines of ten thousand feature names each are
//! cut at `max_features`. Then the daemon itself, through Kafka, with
//! automatic baselines: 200 models against `max_models = 5` give at most 5
//! `model` label values in /metrics, and the rest are counted as refused.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::common::*;
use driftd::daemon::metrics::Metrics;
use driftd::daemon::snapshot::Snapshot;
use driftd::engine::baseline::{Baseline, BaselineBuilder, Binning, OTHER};
use driftd::engine::decode::{DecodeConfig, Decoded, Decoder, Issue};
use driftd::engine::{AutoBaseline, Engine, EngineConfig, Outcome};

/// Arrival time of every engine line (they carry no timestamp).
const NOW: i64 = 1_800_000_000_000;

/// Resident set size of this process, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// A baseline for model `m` with a numeric feature `x` and a categorical
/// feature `c` (categories k0..k4), built by the library from 500 lines.
fn reference_baseline() -> Baseline {
    let d = Decoder::new(DecodeConfig::default());
    let mut b = BaselineBuilder::new("m");
    for i in 0..500 {
        let l = format!(
            r#"{{"model_id":"m","prediction":"{}","input_features":{{"x":{},"c":"k{}"}}}}"#,
            if i % 3 == 0 { "a" } else { "b" },
            i % 37,
            i % 5
        );
        match d.decode(l.as_bytes()) {
            Decoded::Event(e) => b.add(&e),
            other => panic!("reference line not an event: {other:?}"),
        }
    }
    b.finish(&Binning::default(), "test", 0).unwrap()
}

/// Feeds `n` lines made by `make` (into a reused buffer) and returns how
/// many had each outcome that matters here, and the time taken.
fn flood(
    e: &mut Engine,
    n: usize,
    mut make: impl FnMut(usize, &mut String),
) -> (u64, u64, Duration) {
    let started = Instant::now();
    let mut buf = String::with_capacity(256);
    let (mut counted, mut refused) = (0, 0);
    for i in 0..n {
        buf.clear();
        make(i, &mut buf);
        match e.ingest(buf.as_bytes(), NOW) {
            Outcome::Counted => counted += 1,
            Outcome::Refused => refused += 1,
            _ => {}
        }
    }
    (counted, refused, started.elapsed())
}

/// Distinct `model` label values over every driftd series.
fn model_labels(samples: &[Sample]) -> std::collections::BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.name.starts_with("driftd_"))
        .filter_map(|s| s.labels.get("model").cloned())
        .collect()
}

/// The memory bound reads the whole process' RSS, which every other test of
/// this binary (daemons, mock clusters) would disturb: the flood runs in a
/// process of its own.
#[test]
fn floods_of_identifiers_stop_at_the_caps() {
    if !in_a_process_of_its_own(&format!(
        "{}::floods_of_identifiers_stop_at_the_caps",
        test_module(module_path!())
    )) {
        return;
    }

    // (a) A million model ids, automatic baselines on, max_models = 50.
    let cfg = EngineConfig {
        max_models: 50,
        auto_baseline: Some(AutoBaseline { after_events: 100 }),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, vec![]);
    // 30 real models first: 100 events each give a baseline, 10 more are
    // counted into a window.
    let (counted, _, _) = flood(&mut e, 30 * 110, |i, b| {
        write!(
            b,
            r#"{{"model_id":"real-{:02}","prediction":"a","input_features":{{"x":{}}}}}"#,
            i % 30,
            i % 17
        )
        .unwrap()
    });
    assert_eq!(counted, 30 * 10);
    assert_eq!(e.stats.auto_baselines, 30);
    assert_eq!(e.baselines().count(), 30);
    assert_eq!(e.models().count(), 30);

    let before = rss_bytes();
    let (counted, refused, took) = flood(&mut e, 1_000_000, |i, b| {
        write!(
            b,
            r#"{{"model_id":"flood-{i:07}","prediction":"a","input_features":{{"x":1.5}}}}"#
        )
        .unwrap()
    });
    let grew = rss_bytes().saturating_sub(before);
    eprintln!(
        "(a) 1,000,000 model ids in {took:?}; RSS {} MiB -> grew {} KiB",
        before >> 20,
        grew >> 10
    );
    // The 20 slots left under the cap collect (one event each, never enough
    // for a baseline); every other flood line is refused and counted.
    assert_eq!(counted, 0);
    assert_eq!(refused, 1_000_000 - 20);
    assert_eq!(e.stats.models_refused, 1_000_000 - 20);
    assert_eq!(e.baselines().count(), 30);
    assert_eq!(e.models().count(), 30);
    assert_eq!(e.stats.auto_baselines, 30);
    assert!(
        grew < 64 << 20,
        "a million model ids grew the RSS by {} MiB",
        grew >> 20
    );
    // Those 20 slots really are held by flood models: one of them completes
    // its baseline, and a newcomer still finds the cap full.
    let (_, refused, _) = flood(&mut e, 99, |_, b| {
        b.push_str(r#"{"model_id":"flood-0000000","prediction":"a","input_features":{"x":1.5}}"#)
    });
    assert_eq!(refused, 0);
    assert_eq!(e.baselines().count(), 31);
    let late = r#"{"model_id":"late-comer","prediction":"a","input_features":{"x":1.5}}"#;
    assert_eq!(e.ingest(late.as_bytes(), NOW), Outcome::Refused);
    assert!(e.models().count() <= 50);
    // And what would be exported names at most 50 models.
    e.evaluate(NOW);
    let registry = prometheus::Registry::new();
    let mut metrics = Metrics::new(&registry).unwrap();
    metrics.update(&std::sync::Arc::new(Snapshot {
        at_ms: NOW,
        report: e.report(),
        stats: e.stats.clone(),
        ..Snapshot::default()
    }));
    let samples = parse_exposition(&metrics.render());
    let models = model_labels(&samples);
    assert!(models.len() <= 50, "{} model label values", models.len());
    assert_eq!(
        value(&samples, "driftd_models_refused_total", &[]) as u64,
        e.stats.models_refused
    );
    drop(e);

    // (b) One model, a million arm names, max_arms_per_model = 8.
    let base = reference_baseline();
    let cfg = EngineConfig {
        max_arms_per_model: 8,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, vec![base.clone()]);
    let n = 1_000_000;
    let (counted, _, took) = flood(&mut e, n, |i, b| {
        write!(
            b,
            r#"{{"model_id":"m","experiment_assignment":"arm-{i:07}","prediction":"a","input_features":{{"x":3,"c":"k1"}}}}"#
        )
        .unwrap()
    });
    eprintln!("(b) {n} arm names in {took:?}");
    let m = e.model("m").unwrap();
    assert_eq!(m.arms.len(), 8);
    assert_eq!(e.stats.arms_refused, n as u64 - 8);
    // Refused arms' events still count in the model's window.
    assert_eq!(counted, n as u64);
    assert_eq!(m.all.window.samples(), n as u64);
    for (_, t) in &m.arms {
        assert_eq!(t.window.samples(), 1);
    }
    drop(e);

    // (c) A million distinct values of the categorical feature `c`.
    let mut e = Engine::new(EngineConfig::default(), vec![base.clone()]);
    let slot = |e: &Engine| -> (usize, usize) {
        let layout = e.model("m").unwrap().all.window.layout().clone();
        let s = layout.index["c"] as usize;
        (s, layout.slots[s].len)
    };
    e.ingest(
        br#"{"model_id":"m","prediction":"a","input_features":{"x":3,"c":"k1"}}"#,
        NOW,
    );
    let (c, bins) = slot(&e);
    assert_eq!(bins, 5 + 2, "k0..k4, __other__, missing");
    let total_bins = e.model("m").unwrap().all.window.totals().len();
    let n = 1_000_000;
    let (counted, _, took) = flood(&mut e, n, |i, b| {
        write!(
            b,
            r#"{{"model_id":"m","prediction":"a","input_features":{{"x":3,"c":"value-{i:07}"}}}}"#
        )
        .unwrap()
    });
    eprintln!("(c) {n} categories in {took:?}");
    assert_eq!(counted, n as u64);
    let w = &e.model("m").unwrap().all.window;
    assert_eq!(slot(&e), (c, bins), "the feature's bins never change");
    assert_eq!(w.totals().len(), total_bins);
    let counts = w.slot_counts(c);
    assert_eq!(counts.len(), bins);
    let other = base.features.iter().find(|f| f.name == "c").unwrap();
    let driftd::engine::baseline::Bins::Categorical { categories } = &other.bins else {
        panic!("c is categorical: {:?}", other.bins)
    };
    let other_bin = categories.len();
    assert_eq!(
        w.layout().baseline.features[c].bins.labels()[other_bin],
        OTHER
    );
    assert_eq!(counts[other_bin], n as u64, "every new value is __other__");
    assert_eq!(counts.iter().sum::<u64>(), n as u64 + 1);
    e.evaluate(NOW);
    let report = e.report();
    let f = report.models[0]
        .all
        .features
        .iter()
        .find(|f| f.name == "c")
        .unwrap();
    assert_eq!(f.bins.len(), bins);
    assert!(f.metrics.get("unseen_share").unwrap() > 0.99);
    drop(e);

    // (d) Lines of 10,000 distinct feature names each (never seen before,
    // never seen again): max_features (512) cuts each line, the known
    // features are still binned, the unknown ones are only counted.
    let max_features = DecodeConfig::default().max_features;
    let mut e = Engine::new(EngineConfig::default(), vec![base]);
    let lines = 200;
    let (counted, _, took) = flood(&mut e, lines, |j, b| {
        b.push_str(r#"{"model_id":"m","prediction":"a","input_features":{"x":3,"c":"k2""#);
        for k in 0..10_000 - 2 {
            write!(b, r#","u{j}_{k}":{k}"#).unwrap();
        }
        b.push_str("}}");
    });
    eprintln!("(d) {lines} lines of 10,000 feature names in {took:?}");
    assert_eq!(counted, lines as u64);
    assert_eq!(
        e.stats.decode.issues[Issue::TooManyFeatures as usize],
        lines as u64
    );
    let w = &e.model("m").unwrap().all.window;
    assert_eq!(w.samples(), lines as u64);
    assert_eq!(
        w.counters.unknown_features,
        (lines * (max_features - 2)) as u64,
        "the unknown features kept by the decoder are counted, the rest cut"
    );
    assert_eq!(w.layout().slots.len(), 3, "x, c and the prediction");
    assert_eq!(w.totals().len(), total_bins);
    let (c, _) = slot(&e);
    assert_eq!(w.slot_counts(c)[2], lines as u64, "k2 is still binned");
}

#[test]
fn the_daemon_exports_at_most_max_models() {
    let kafka = Kafka::new(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(&kafka.brokers(), dir.path(), "bounded", "127.0.0.1:0")
        .replace("[baselines]\n", "[baselines]\nauto_after_events = 100\n")
        + "\n[limits]\nmax_models = 5\n";
    let cfg = driftd::config::Config::from_toml(&toml, "test").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.engine.max_models, 5);
    assert!(cfg.engine.auto_baseline.is_some());
    let running = Running::start(cfg);
    let addr = running.addr.clone();

    // 200 models, 120 events each (enough for a baseline and 20 more),
    // interleaved.
    let (models, per_model) = (200, 120);
    let t = now_ms();
    let lines: Vec<String> = (0..models * per_model)
        .map(|i| {
            format!(
                r#"{{"timestamp":{},"model_id":"model-{:03}","prediction":"{}","confidence":0.9,"input_features":{{"x":{},"c":"k{}"}}}}"#,
                t + i as i64,
                i % models,
                if i % 3 == 0 { "a" } else { "b" },
                (i / models) % 23,
                (i / models) % 4
            )
        })
        .collect();
    kafka.produce(&lines);

    let s = wait_for(
        Duration::from_secs(60),
        "every message consumed and 5 baselines captured",
        || {
            let s = scrape(&addr);
            (value(&s, "driftd_kafka_messages_total", &[]) as usize == lines.len()
                && value(&s, "driftd_baseline_info", &[]) == 5.0
                && events_total(&s) == 5.0 * 20.0)
                .then_some(s)
        },
    );
    let tracked = model_labels(&s);
    assert_eq!(tracked.len(), 5, "model label values: {tracked:?}");
    // Exactly five models were admitted, all of their events counted or
    // collected; every event of the other 195 was refused.
    assert_eq!(
        value(&s, "driftd_models_refused_total", &[]) as usize,
        (models - 5) * per_model
    );
    for m in &tracked {
        assert_eq!(value(&s, "driftd_events_total", &[("model", m)]), 20.0);
    }
    // The automatic baselines written to disk: five.
    let saved = wait_for(Duration::from_secs(10), "5 baselines saved", || {
        let n = std::fs::read_dir(dir.path().join("baselines"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count();
        (n == 5).then_some(n)
    });
    assert_eq!(saved, 5);
    // And the API lists the same five.
    let (status, body) = http_get(&format!("http://{addr}/api/v1/drift"));
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["models"].as_array().unwrap().len(), 5);
    // Still five, a few evaluations later.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(model_labels(&scrape(&addr)), tracked);

    running.stop();
}
