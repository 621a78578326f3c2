//! Every firing transition is published as one JSON event, keyed by model,
//! on the Kafka alert topic (with delivery confirmation counted) and POSTed
//! to the webhook; neither carries a raw feature value or request id.

use std::time::Duration;

use crate::common::*;
use driftd::lab::generate::{standard_drifts, GeneratorConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

const ALERT_TOPIC: &str = "driftd-alerts";

#[test]
fn firing_transitions_reach_the_alert_topic_and_the_webhook() {
    let kafka = Kafka::new(1, 2);
    kafka.cluster.create_topic(ALERT_TOPIC, 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(20_000));
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A webhook receiver that keeps every body.
    let (hook_addr, hooks) = webhook_receiver(&rt);

    let toml = config_toml(&kafka.brokers(), dir.path(), "alerts", "127.0.0.1:0")
        + &format!(
            "\n[alerts]\nresend_interval = \"1s\"\n[alerts.labels]\ncluster = \"test\"\n[alerts.kafka]\ntopic = \"{ALERT_TOPIC}\"\n[alerts.webhook]\nurl = \"http://{hook_addr}/hook\"\n"
        );
    let cfg = driftd::config::Config::from_toml(&toml, "test").unwrap_or_else(|e| panic!("{e}"));
    let cancel = CancellationToken::new();
    let daemon = rt
        .block_on(driftd::daemon::app::start(cfg, cancel.clone()))
        .unwrap();
    let addr = daemon.addr.to_string();

    let normal = lines(GeneratorConfig::default(), 3000, now_ms(), 1);
    kafka.produce(&normal.lines);
    let t = now_ms();
    let g = GeneratorConfig {
        stream_seed: Some(5),
        drifts: standard_drifts(t),
        ..GeneratorConfig::default()
    };
    kafka.produce(&lines(g, 6000, t, 1).lines);

    let fired = |v: &serde_json::Value| {
        v["to"] == "firing"
            && v["model"] == "fraud-v1"
            && v["feature"] == "f00_amount"
            && v["metric"] == "psi"
    };
    let hook = wait_for(
        Duration::from_secs(60),
        "a firing event at the webhook",
        || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                .find(|v| fired(v))
        },
    );
    assert_eq!(hook["alertname"], "FeatureDrift");
    assert_eq!(hook["labels"]["cluster"], "test");
    assert_eq!(hook["labels"]["model"], "fraud-v1");
    assert!(hook["value"].as_f64().unwrap() >= hook["threshold"].as_f64().unwrap());
    assert!(hook["samples"].as_u64().unwrap() >= 200);

    // The same event on the alert topic, keyed by model.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", "alert-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[ALERT_TOPIC]).unwrap();
    let (key, event) = wait_for(
        Duration::from_secs(60),
        "a firing event on the alert topic",
        || {
            let m = reader.poll(Duration::from_millis(200))?.ok()?;
            let v: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
            fired(&v).then(|| {
                (
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    v,
                )
            })
        },
    );
    assert_eq!(key, "fraud-v1");
    assert_eq!(event["alertname"], "FeatureDrift");
    for text in [event.to_string(), hook.to_string()] {
        assert!(!text.contains("req_"), "request id leaked: {text}");
        assert!(!text.contains("\"XK\""), "raw category leaked: {text}");
    }

    let s = wait_for(
        Duration::from_secs(30),
        "delivery confirmations counted",
        || {
            let s = scrape(&addr);
            (value(
                &s,
                "driftd_alerts_sent_total",
                &[("sink", "kafka"), ("outcome", "success")],
            ) >= 1.0
                && value(
                    &s,
                    "driftd_alerts_sent_total",
                    &[("sink", "webhook"), ("outcome", "success")],
                ) >= 1.0)
                .then_some(s)
        },
    );
    assert!(value(&s, "driftd_alerts_firing", &[]) >= 1.0);
    assert_eq!(value(&s, "driftd_alerts_dropped_total", &[]), 0.0);

    cancel.cancel();
    rt.block_on(daemon.wait()).unwrap();
}
