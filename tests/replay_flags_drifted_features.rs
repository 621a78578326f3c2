//! `driftd replay` on the shipped samples flags the drifted distributions and
//! only those, and writes the documented JSON report.

use crate::common::*;
use serde_json::Value;

fn replay_json(input: &str) -> Value {
    let out = driftd(&[
        "replay",
        "--baselines",
        path_str(&samples().join("baselines")),
        "--input",
        path_str(&samples().join(input)),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "replay failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("replay --format json prints one JSON document")
}

fn state(doc: &Value, model: &str, name: &str) -> String {
    let m = doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("model {model} in report"));
    let f = if name == "prediction" {
        &m["prediction"]
    } else {
        m["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("feature {name} of {model}"))
    };
    f["state"].as_str().unwrap().to_owned()
}

#[test]
fn drifted_features_fire_and_the_others_stay_ok() {
    let doc = replay_json("drifted.jsonl");
    // The three drifts `driftd generate --drift-at` injects.
    let drifted = [
        ("fraud-v1", "f00_amount"),
        ("fraud-v1", "prediction"),
        ("recsys-v3", "f01_country"),
    ];
    for (model, f) in drifted {
        assert_eq!(state(&doc, model, f), "firing", "{model}/{f}");
    }
    for m in doc["models"].as_array().unwrap() {
        let model = m["model"].as_str().unwrap();
        let names = m["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .chain(["prediction".to_owned()]);
        for name in names {
            if !drifted.contains(&(model, name.as_str())) {
                assert_eq!(
                    state(&doc, model, &name),
                    "ok",
                    "{model}/{name} should not fire"
                );
            }
        }
    }
}

#[test]
fn the_reference_itself_raises_nothing() {
    let doc = replay_json("reference.jsonl");
    for m in doc["models"].as_array().unwrap() {
        assert!(
            m["transitions"].as_array().unwrap().is_empty(),
            "no transition replaying the reference: {}",
            m["transitions"]
        );
    }
}

#[test]
fn json_report_has_the_documented_shape() {
    let doc = replay_json("drifted.jsonl");
    let models = doc["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        assert!(m["model"].is_string());
        assert!(m["transitions"].is_array());
        for f in m["features"]
            .as_array()
            .unwrap()
            .iter()
            .chain([&m["prediction"]])
        {
            assert!(f["name"].is_string());
            let kind = f["kind"].as_str().unwrap();
            assert!(kind == "numeric" || kind == "categorical", "{kind}");
            let bins = f["bins"].as_array().unwrap();
            let base = f["baseline_counts"].as_array().unwrap();
            let win = f["window_counts"].as_array().unwrap();
            assert_eq!(bins.len(), base.len(), "one label per bin");
            assert_eq!(bins.len(), win.len(), "one label per bin");
            // Documented order: missing last; numeric starts with underflow.
            assert_eq!(bins.last().unwrap(), "__missing__");
            if kind == "numeric" {
                assert!(bins[0].as_str().unwrap().starts_with('<'));
            } else {
                assert_eq!(bins[bins.len() - 2], "__other__");
            }
            for k in [
                "kl",
                "psi",
                "js_divergence",
                "js_distance",
                "hellinger",
                "chi2_p",
            ] {
                let v = f["metrics"][k]
                    .as_f64()
                    .unwrap_or_else(|| panic!("metric {k} in {f}"));
                assert!(v.is_finite() && v >= 0.0, "{k} = {v}");
            }
            // js_distance is the square root of js_divergence.
            let jsd = f["metrics"]["js_divergence"].as_f64().unwrap();
            let dist = f["metrics"]["js_distance"].as_f64().unwrap();
            assert!((dist * dist - jsd).abs() < 1e-12);
        }
    }
    let fraud = &models.iter().find(|m| m["model"] == "fraud-v1").unwrap();
    let t = fraud["transitions"].as_array().unwrap();
    let first_fire = t
        .iter()
        .find(|t| t["feature"] == "f00_amount" && t["to"] == "firing" && t.get("arm").is_none())
        .expect("a firing transition for f00_amount");
    for k in ["metric", "from", "value", "threshold", "samples", "at"] {
        assert!(first_fire.get(k).is_some(), "transition field {k}");
    }
    // The drift starts 30% into a 20-minute file: it must fire after that,
    // within a window length.
    let at = first_fire["at"].as_str().unwrap();
    assert!(
        at > "2025-12-15T10:06:00" && at < "2025-12-15T10:16:00",
        "{at}"
    );
}

#[test]
fn table_names_models_features_and_verdicts() {
    let out = driftd(&[
        "replay",
        "--baselines",
        path_str(&samples().join("baselines")),
        "--input",
        path_str(&samples().join("drifted.jsonl")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("f00_amount") && l.contains("firing"))
        .unwrap_or_else(|| panic!("a firing f00_amount row in:\n{text}"));
    assert!(line.contains("psi"), "{line}");
    assert!(text.contains("model recsys-v3"));
    assert!(text.contains("pending -> firing"));
    // Malformed lines in the sample are reported with a line number.
    assert!(stderr(&out).contains("drifted.jsonl:"), "{}", stderr(&out));
}
