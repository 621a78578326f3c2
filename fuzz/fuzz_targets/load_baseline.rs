//! Arbitrary bytes as a baseline file: `Baseline::load` (read, parse,
//! validate), then everything the daemon does with a baseline it accepted:
//! compile it into a `Layout` (and the latency layout), label its bins,
//! install it in an engine, count a few lines against it, evaluate (compare
//! and detect), report, and capture a new baseline from the window.
//!
//! `Baseline::load` takes a path, so each input is written to one file per
//! process in the temporary directory (/dev/shm when there is one). A
//! baseline that passes `validate()` must never make the engine panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use driftd::engine::baseline::{Baseline, Layout};
use driftd::engine::{Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

/// 2025-12-14T10:00:00Z.
const NOW_MS: i64 = 1_765_706_400_000;

fn scratch_file() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("driftd-fuzz-baseline-{}.json", std::process::id()))
    })
}

/// Lines for the baseline's model: one per bin kind the baseline can have
/// (numbers, strings, a hashed-looking value, missing values, a regression
/// prediction), plus a timing line for the latency layout.
fn lines_for(b: &Baseline) -> Vec<Vec<u8>> {
    let mut feats = serde_json::Map::new();
    let mut odd = serde_json::Map::new();
    for (i, f) in b.features.iter().enumerate() {
        let v = match i % 3 {
            0 => serde_json::json!(1.5),
            1 => serde_json::json!("DE"),
            _ => serde_json::Value::Null,
        };
        feats.insert(f.name.clone(), v);
        odd.insert(f.name.clone(), serde_json::json!(-1e300));
    }
    let ts = "2025-12-14 10:00:00,000";
    let mut out = vec![
        serde_json::json!({"timestamp": ts, "model_id": b.model, "prediction": "cat",
            "confidence": 0.9, "experiment_assignment": "control", "request_id": "r1",
            "input_features": feats}),
        serde_json::json!({"timestamp": ts, "model_id": b.model, "prediction": 0.25,
            "confidence": 0, "experiment_assignment": "variant", "request_id": "r2",
            "input_features": odd}),
        serde_json::json!({"timestamp": ts, "model_id": b.model, "prediction": 7,
            "input_features": {}}),
    ];
    let mut timing = serde_json::json!({"timestamp": ts, "model_id": b.model,
        "message": "Inference timing metrics"});
    for (i, l) in b.latency.iter().enumerate() {
        timing[l.name.as_str()] = serde_json::json!(i as f64 * 3.5);
    }
    out.push(timing);
    out.push(
        serde_json::json!({"model_id": b.model, "message": "Batch data and prediction statistics",
        "timestamp_end": 1765706401.0, "prediction_stats": {"class_counts": {"cat": 3, "dog": 1}}}),
    );
    out.into_iter()
        .map(|v| serde_json::to_vec(&v).expect("serializes"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let path = scratch_file();
    std::fs::write(path, data).expect("write the scratch baseline");
    let Ok(b) = Baseline::load(path) else {
        return;
    };
    // Accepted: it must be usable.
    assert!(b.validate().is_empty(), "load accepted an invalid baseline");
    for f in b
        .features
        .iter()
        .chain(b.prediction.iter())
        .chain(b.confidence.iter())
        .chain(b.latency.iter())
    {
        assert_eq!(
            f.bins.labels().len(),
            f.bins.len(),
            "labels of {:?}",
            f.name
        );
    }
    let layout = Layout::new(b.clone());
    assert_eq!(layout.baseline_counts.len(), layout.total_bins);
    let _ = Layout::for_latency(&b);
    // What is written back reads back.
    let text = serde_json::to_vec(&b).expect("a baseline serializes");
    serde_json::from_slice::<Baseline>(&text).expect("a saved baseline parses");

    let mut cfg = EngineConfig::default();
    cfg.detect.min_samples = 1;
    cfg.detect.for_evaluations = 1;
    cfg.align();
    let lines = lines_for(&b);
    let model = b.model.clone();
    let mut engine = Engine::new(cfg, vec![b.clone()]);
    for (i, l) in lines.iter().enumerate() {
        engine.ingest(l, NOW_MS + i as i64 * 1_000);
    }
    engine.evaluate(NOW_MS + 10_000);
    serde_json::to_vec(&engine.report()).expect("a report serializes");
    if let Ok(captured) = engine.capture(&model, NOW_MS + 20_000) {
        // A capture keeps the bins: it must be as valid as its source and
        // install again (what `POST /api/v1/baselines` does).
        let problems = captured.validate();
        assert!(
            problems.is_empty(),
            "captured baseline invalid: {problems:?}"
        );
        engine.set_baseline(captured);
    }
    // Reload with the same baseline (a SIGHUP without changes).
    engine.set_baseline(b);
    engine.evaluate(NOW_MS + 30_000);
});
