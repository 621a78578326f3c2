//! Arbitrary bytes through the per-line path: the decoder (default mapping,
//! and a custom mapping with small limits), then the engine that the daemon
//! and `driftd replay` drive (windows, automatic baselines, health, the
//! feedback join, one evaluation and a report).
//!
//! The contract under test (src/decode.rs): the decoder never panics on
//! input, and what it accepts is bounded by its configuration. Any panic,
//! libFuzzer OOM (-malloc_limit_mb) or timeout here is a bug in driftd.
#![no_main]

use std::sync::OnceLock;

use driftd::engine::decode::{
    DecodeConfig, Decoded, Decoder, FeatureFilter, FieldMapping, Pointer, MAX_NAME_LEN,
};
use driftd::engine::{AutoBaseline, Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

/// 2025-12-14T10:00:00Z, the time of the seed's (and `driftd generate`'s) lines.
const NOW_MS: i64 = 1_765_706_400_000;
/// Lines of one input fed to the engine; keeps each run short.
const MAX_ENGINE_LINES: usize = 16;

fn default_decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| Decoder::new(DecodeConfig::default()))
}

/// Non-default everything: nested and escaped pointers, two roles on one
/// field, a filter that allows, denies and hashes, and tiny limits, so the
/// limit paths are reached by short inputs.
fn small_config() -> DecodeConfig {
    let p = |s: &str| Pointer::parse(s).expect("valid pointer");
    let mapping = FieldMapping {
        model: vec![p("/meta/model~1name"), p("/model_id"), p("/m")],
        features: p("/x/feats"),
        timestamp: p("/ts"),
        // Same field as the confidence: the first role wins.
        prediction: p("/out"),
        confidence: p("/out"),
        arm: p("/exp/arm"),
        stages: vec![p("/t/total_ms"), p("/inference_ms")],
        any_ms_stage: true,
        ..FieldMapping::default()
    };
    let mut filter = FeatureFilter::default();
    filter.deny.insert("user_id".into());
    filter.hash.insert("email".into());
    filter.hash.insert("geo.city".into());
    DecodeConfig {
        mapping,
        filter,
        local_offset: chrono::FixedOffset::east_opt(2 * 3600).expect("offset"),
        max_line_bytes: 4096,
        max_features: 4,
        max_feature_depth: 2,
    }
}

fn small_decoder() -> &'static (Decoder, usize, usize) {
    static D: OnceLock<(Decoder, usize, usize)> = OnceLock::new();
    D.get_or_init(|| {
        let cfg = small_config();
        let (max_line, max_features) = (cfg.max_line_bytes, cfg.max_features);
        (Decoder::new(cfg), max_line, max_features)
    })
}

/// What the decoder promises about anything it returns.
fn check(d: &Decoded<'_>, line_len: usize, max_line: usize, max_features: usize) {
    if line_len > max_line {
        assert!(
            matches!(d, Decoded::Rejected(_)),
            "a line over max_line_bytes was not rejected: {d:?}"
        );
    }
    match d {
        Decoded::Event(e) => {
            assert!(
                !e.model.is_empty() && e.model.len() <= MAX_NAME_LEN,
                "event with an invalid model name: {:?}",
                e.model
            );
            assert!(
                e.features.len() <= max_features,
                "{} features over the cap of {max_features}",
                e.features.len()
            );
            if let Some(c) = e.confidence {
                assert!((0.0..=1.0).contains(&c), "confidence {c} kept");
            }
        }
        Decoded::Record(r) => {
            if let Some(m) = &r.model {
                assert!(
                    !m.is_empty() && m.len() <= MAX_NAME_LEN,
                    "record with an invalid model name: {m:?}"
                );
            }
        }
        Decoded::Skipped(_) | Decoded::Rejected(_) => {}
    }
}

fn engine_config() -> EngineConfig {
    let mut cfg = EngineConfig {
        // Two events make a baseline, so a handful of lines reach windows,
        // binning and comparison.
        auto_baseline: Some(AutoBaseline { after_events: 2 }),
        max_models: 4,
        max_arms_per_model: 2,
        ..EngineConfig::default()
    };
    cfg.detect.min_samples = 1;
    cfg.detect.for_evaluations = 1;
    cfg.align();
    cfg
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one line, through both decoders; decoding is pure,
    // so the same bytes must give the same answer twice.
    let d = default_decoder();
    let out = d.decode(data);
    check(
        &out,
        data.len(),
        d.config().max_line_bytes,
        d.config().max_features,
    );
    assert_eq!(out, d.decode(data), "decoding is not deterministic");

    let (small, max_line, max_features) = small_decoder();
    check(&small.decode(data), data.len(), *max_line, *max_features);

    // Each line through the engine, at arrival times around the seed's.
    let mut engine = Engine::new(engine_config(), Vec::new());
    let mut now = NOW_MS;
    for line in data.split(|&b| b == b'\n').take(MAX_ENGINE_LINES) {
        engine.ingest(line, now);
        now += 1_000;
    }
    engine.evaluate(now);
    // Past the window: panes expire, verdicts step again.
    engine.evaluate(now + 15 * 60_000);
    let report = engine.report();
    serde_json::to_vec(&report).expect("a report always serializes");
});
