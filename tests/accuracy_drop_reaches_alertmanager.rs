//! Model quality end to end: labels that come six hours after their
//! predictions are joined by request id, and a realized accuracy drop
//! reaches a real Alertmanager as `AccuracyDrop`, through the real daemon on
//! librdkafka's mock cluster.
//!
//! The model `scorer-v1` is a calibrated classifier on its reference: each
//! prediction is right with the probability of its confidence. Its baseline
//! is built from a labelled reference file by the same code as `driftd
//! baseline build`, so it carries the calibration and the reference
//! accuracy (about 83%).
//!
//! Live, the model keeps its confidences but is right 13 points less often
//! (its confidences no longer mean what they did). The predictions are
//! timestamped six hours ago and their labels now. So:
//!
//! - `AccuracyDrop` fires, in Alertmanager and on /metrics, and
//!   `driftd_quality_accuracy_ratio` is exactly the share of right
//!   predictions we produced, over exactly the labelled predictions;
//! - `EstimatedAccuracyDrop` does not: the confidences did not move, so the
//!   estimate stays at the reference (this is what an estimate cannot see,
//!   and why the labels matter);
//! - the label join counts every label as matched, none orphaned.

use std::time::{Duration, Instant};

use crate::common::*;
use driftd::engine::decode::Decoder;
use driftd::replay::{build_baselines, Input};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const MODEL: &str = "scorer-v1";
const DEADLINE: Duration = Duration::from_secs(90);
const HOUR_MS: i64 = 3_600_000;

/// One prediction and its label line: (prediction, label, right).
fn pair(
    rng: &mut SmallRng,
    i: u64,
    t_ms: i64,
    label_ms: i64,
    worse: f64,
) -> (String, String, bool) {
    let x: f64 = rng.random::<f64>() * 4.0 - 2.0;
    let conf = ((0.5 + 0.5 * rng.random::<f64>().sqrt()) * 1e4).floor() / 1e4;
    let class = if rng.random::<bool>() {
        "approve"
    } else {
        "decline"
    };
    let right = rng.random::<f64>() < conf - worse;
    let truth = match (right, class) {
        (true, c) => c,
        (false, "approve") => "decline",
        (false, _) => "approve",
    };
    let req = format!("req_{i:08x}");
    let p = json!({"timestamp": t_ms as f64 / 1000.0, "model_id": MODEL, "request_id": req,
        "input_features": {"x": x}, "prediction": class, "confidence": conf});
    let l = json!({"timestamp": label_ms as f64 / 1000.0, "message": "Ground truth received",
        "request_id": req, "ground_truth": truth});
    (p.to_string(), l.to_string(), right)
}

fn alerts_named<'a>(alerts: &'a [Value], name: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"]["model"] == MODEL)
        .collect()
}

#[test]
fn late_labels_raise_accuracy_drop_in_alertmanager() {
    let began = Instant::now();
    let alertmanager = require_alertmanager();
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    write_alertmanager_config(tmp);
    let am_port = free_port();
    let am = format!("127.0.0.1:{am_port}");
    let _am_proc = start_alertmanager(&alertmanager, tmp, am_port, "alertmanager");
    let kafka = Kafka::new(1, 2);

    // ---- The baseline, from 20,000 labelled reference predictions (each
    // label right after its prediction).
    let mut rng = SmallRng::seed_from_u64(7);
    let t0 = now_ms() - 3 * 24 * HOUR_MS;
    let mut reference = String::new();
    let mut right = 0u64;
    for i in 0..20_000u64 {
        let t = t0 + i as i64 * 10;
        let (p, l, r) = pair(&mut rng, i, t, t + 5, 0.0);
        reference.push_str(&p);
        reference.push('\n');
        reference.push_str(&l);
        reference.push('\n');
        right += u64::from(r);
    }
    let built = build_baselines(
        (&Decoder::new(Default::default()), 2),
        &Input::File("reference.jsonl".into()),
        &mut std::io::Cursor::new(reference.into_bytes()),
        None,
        &Default::default(),
        now_ms(),
        |_| {},
    )
    .unwrap();
    let baseline = &built.baselines[0];
    let q = baseline.quality.as_ref().expect("a quality baseline");
    assert!(q.calibrated(), "{q:?}");
    assert_eq!(q.labelled, 20_000);
    let ref_acc = right as f64 / 20_000.0;
    assert!((q.accuracy.unwrap() - ref_acc).abs() < 1e-12, "{q:?}");
    write_baselines(tmp, &built.baselines);

    // ---- Live: 6,000 predictions six hours ago, right 13 points less
    // often, and their labels now; 1,000 unlabelled predictions now, so
    // the drift window (10 min) holds the confidences of today.
    let now = now_ms();
    let mut predictions = Vec::new();
    let mut labels = Vec::new();
    let mut live_right = 0u64;
    for i in 0..6_000u64 {
        let t = now - 6 * HOUR_MS - 60_000 + i as i64 * 8;
        let (p, l, r) = pair(&mut rng, 1_000_000 + i, t, t + 6 * HOUR_MS, 0.13);
        predictions.push(p);
        labels.push(l);
        live_right += u64::from(r);
    }
    for i in 0..1_000u64 {
        let t = now - 30_000 + i as i64 * 20;
        predictions.push(pair(&mut rng, 2_000_000 + i, t, t, 0.0).0);
    }
    let live_acc = live_right as f64 / 6_000.0;
    assert!(ref_acc - live_acc > 0.08, "{ref_acc} vs {live_acc}");

    let toml = config_toml(&kafka.brokers(), tmp, "quality-e2e", "127.0.0.1:0");
    assert_eq!(toml.matches("every = \"500ms\"").count(), 1);
    let toml = toml.replace("every = \"500ms\"", "every = \"1s\"\nfor = 2")
        + &format!(
            r#"
[quality]
# The stream's first label line comes six hours after the predictions it
# labels: join from the first prediction ("auto" would start at that line).
join = "always"
min_labels = 1000

[alerts]
resend_interval = "2s"

[[alerts.alertmanagers]]
url = "http://{am}"
timeout = "2s"
"#
        );
    let cfg = driftd::config::Config::from_toml(&toml, "quality-e2e")
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let daemon = Running::start(cfg);
    let addr = daemon.addr.clone();
    // Predictions first, then labels: the join holds the predictions.
    produce_consumed(&kafka, &addr, &predictions, DEADLINE);
    produce_consumed(&kafka, &addr, &labels, DEADLINE);
    eprintln!("consumed at {:?}", began.elapsed());

    // ---- /metrics: realized accuracy exactly ours, AccuracyDrop firing,
    // the estimate unmoved.
    let model = [("arm", ""), ("model", MODEL)];
    let s = eventually(
        DEADLINE,
        "AccuracyDrop firing on /metrics over every label",
        || {
            let s = scrape(&addr);
            let state = value(
                &s,
                "driftd_quality_state",
                &[("condition", "AccuracyDrop"), ("model", MODEL), ("arm", "")],
            );
            // Fired, and an evaluation has seen every label.
            let labelled = value(&s, "driftd_quality_labelled_predictions", &model);
            if state == 2.0 && labelled == 6_000.0 {
                Ok(s)
            } else {
                let quality: Vec<String> = s
                    .iter()
                    .filter(|x| x.name.contains("quality") || x.name.contains("label_join"))
                    .map(|x| format!("{}{:?} {}", x.name, x.labels, x.value))
                    .collect();
                Err(format!("state {state}\n{}", quality.join("\n")))
            }
        },
    );
    assert_eq!(
        value(&s, "driftd_quality_labelled_predictions", &model),
        6_000.0
    );
    let acc = value(&s, "driftd_quality_accuracy_ratio", &model);
    assert!((acc - live_acc).abs() < 1e-9, "{acc} vs {live_acc}");
    let realized_ref = value(
        &s,
        "driftd_quality_reference_accuracy_ratio",
        &[("kind", "realized"), ("model", MODEL)],
    );
    assert!((realized_ref - ref_acc).abs() < 1e-9);
    assert_eq!(
        value(
            &s,
            "driftd_quality_state",
            &[
                ("condition", "EstimatedAccuracyDrop"),
                ("model", MODEL),
                ("arm", "")
            ],
        ),
        0.0,
        "the confidences did not move"
    );
    let est = value(
        &s,
        "driftd_quality_estimated_accuracy_ratio",
        &[("bound", "estimate"), ("model", MODEL), ("arm", "")],
    );
    assert!(
        (est - ref_acc).abs() < 0.03,
        "estimate {est} vs reference {ref_acc}"
    );
    assert_eq!(
        value(&s, "driftd_label_join_total", &[("outcome", "matched")]),
        6_000.0
    );
    for o in ["orphan", "late", "duplicate", "sampled_out"] {
        assert_eq!(
            value(&s, "driftd_label_join_total", &[("outcome", o)]),
            0.0,
            "{o}"
        );
    }

    // ---- Alertmanager: AccuracyDrop, critical, with the numbers; no
    // EstimatedAccuracyDrop.
    let alerts = eventually(DEADLINE, "AccuracyDrop in Alertmanager", || {
        let alerts = am_alerts(&am).ok_or("alertmanager not answering")?;
        if alerts_named(&alerts, "AccuracyDrop").len() == 1 {
            Ok(alerts)
        } else {
            Err(format!("{alerts:?}"))
        }
    });
    let a = alerts_named(&alerts, "AccuracyDrop")[0];
    assert_eq!(a["labels"]["severity"], "critical");
    let summary = a["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains(MODEL) && summary.contains("labelled"),
        "{summary}"
    );
    let value_ann: f64 = a["annotations"]["value"].as_str().unwrap().parse().unwrap();
    assert!(value_ann < ref_acc - 0.02, "{value_ann}");
    assert!(alerts_named(&alerts, "EstimatedAccuracyDrop").is_empty());
    // No label value or request id leaves the daemon.
    let text = serde_json::to_string(&alerts).unwrap();
    assert!(!text.contains("req_"), "{text}");
    daemon.stop();
}
