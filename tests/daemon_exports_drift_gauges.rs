//! The daemon consumes a topic through a consumer group and exports what it
//! saw: known events give known gauges (parsed from the exposition, which
//! promtool accepts), malformed messages are counted by reason and skipped,
//! and injected drift turns the verdict to firing.

use std::time::Duration;

use crate::common::*;
use driftd::lab::generate::{standard_drifts, GeneratorConfig};

#[test]
fn known_events_give_known_gauges_and_drift_fires() {
    let kafka = Kafka::new(1, 2);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(20_000));
    let cfg = daemon_config(&kafka.brokers(), dir.path(), "gauges");
    // The daemon runs on the runtime's workers; this thread plays producer
    // and Prometheus, blocking as they would.
    let running = Running::start(cfg);
    let addr = running.addr.clone();

    // Normal traffic, timestamped now: every event lands in the window.
    let normal = lines(GeneratorConfig::default().with_seed(42), 3000, now_ms(), 1);
    let expected: u64 = normal.events.values().sum();
    kafka.produce(&normal.lines);
    let s = wait_for(Duration::from_secs(60), "all events counted", || {
        let s = scrape(&addr);
        (events_total(&s) as u64 == expected).then_some(s)
    });

    for (model, n) in &normal.events {
        assert_eq!(window_samples(&s, model), *n, "window of {model}");
        assert_eq!(
            value(&s, "driftd_events_total", &[("model", model)]) as u64,
            *n
        );
        assert_eq!(value(&s, "driftd_baseline_info", &[("model", model)]), 1.0);
    }
    // The arms split the model's window.
    let fraud = normal.events["fraud-v1"];
    let arms = value(
        &s,
        "driftd_window_samples",
        &[("model", "fraud-v1"), ("arm", "control")],
    ) + value(
        &s,
        "driftd_window_samples",
        &[("model", "fraud-v1"), ("arm", "variant")],
    );
    assert_eq!(arms as u64, fraud);
    // Every malformed line was counted under a reason, and only those.
    assert!(
        normal.rejected > 0,
        "the generator writes some malformed lines"
    );
    assert_eq!(
        value(&s, "driftd_events_rejected_total", &[]) as u64,
        normal.rejected
    );
    assert_eq!(
        value(&s, "driftd_kafka_messages_total", &[]) as usize,
        normal.lines.len()
    );
    assert_eq!(value(&s, "driftd_kafka_assigned_partitions", &[]), 2.0);
    assert_eq!(
        value(
            &s,
            "driftd_drift_threshold",
            &[
                ("model", "fraud-v1"),
                ("feature", "f00_amount"),
                ("metric", "psi"),
                ("severity", "critical")
            ]
        ),
        0.25
    );

    // The container health check: `driftd probe` (the image has no curl).
    let probe = driftd(&["probe", &format!("http://{addr}/livez")]);
    assert!(probe.status.success(), "{}", stderr(&probe));
    let probe = driftd(&["probe", &format!("http://{addr}/no-such-route")]);
    assert_eq!(probe.status.code(), Some(1), "a 404 is not healthy");
    let (ready, body) = http_get(&format!("http://{addr}/readyz"));
    assert_eq!(ready, 200, "{body}");
    let (status, body) = http_get(&format!("http://{addr}/api/v1/drift?model=fraud-v1"));
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["models"][0]["model"], "fraud-v1");
    assert_eq!(doc["models"][0]["samples"].as_u64(), Some(fraud));
    let (status, _) = http_get(&format!("http://{addr}/api/v1/drift?model=nope"));
    assert_eq!(status, 404);

    // Now drift: fraud-v1's f00_amount moves by one standard deviation.
    let t = now_ms();
    let mut cfg = GeneratorConfig::default().with_seed(42);
    cfg.stream_seed = Some(9);
    cfg.drifts = standard_drifts(t);
    let drifted = lines(cfg, 6000, t, 1);
    kafka.produce(&drifted.lines);
    let psi = [
        ("model", "fraud-v1"),
        ("arm", ""),
        ("feature", "f00_amount"),
        ("metric", "psi"),
    ];
    let s = wait_for(Duration::from_secs(60), "f00_amount psi firing", || {
        let s = scrape(&addr);
        (value(&s, "driftd_drift_state", &psi) == 2.0).then_some(s)
    });
    // It fired at the threshold in use (automatic: the no-drift level at
    // this window's size, never under the minimum effect of 0.05).
    let warning = value(
        &s,
        "driftd_drift_threshold",
        &[
            ("model", "fraud-v1"),
            ("feature", "f00_amount"),
            ("metric", "psi"),
            ("severity", "warning"),
        ],
    );
    assert!(warning >= 0.05, "threshold {warning}");
    assert!(value(&s, "driftd_feature_drift", &psi) >= warning);
    // A feature that did not drift stays ok.
    let balance = [
        ("model", "fraud-v1"),
        ("arm", ""),
        ("feature", "f03_balance"),
        ("metric", "psi"),
    ];
    assert_eq!(value(&s, "driftd_drift_state", &balance), 0.0);
    assert!(value(&s, "driftd_verdict_transitions_total", &[("to", "firing")]) >= 1.0);

    // The exposition is valid for Prometheus.
    let (_, text) = http_get(&format!("http://{addr}/metrics"));
    promtool_check_metrics(&text);
    // No raw feature value or request id in any label.
    for needle in ["req_", "\"DE\"", "XK", "user_"] {
        assert!(!text.contains(needle), "{needle} leaked into /metrics");
    }

    running.stop();
}
