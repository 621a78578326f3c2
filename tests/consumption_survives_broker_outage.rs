//! When every broker goes away the daemon says so (/readyz 503) and keeps
//! running; when they come back it reconnects by itself and consumes what
//! was produced meanwhile: every message exactly once, every offset
//! committed, ready again.

use std::time::{Duration, Instant};

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;

const BROKERS: i32 = 3;

fn readyz(addr: &str) -> (u16, String) {
    http_get(&format!("http://{addr}/readyz"))
}

#[test]
fn all_brokers_down_then_up_loses_and_repeats_nothing() {
    let kafka = Kafka::new(BROKERS, 4);
    let dir = tempfile::tempdir().unwrap();
    let group = "outage";
    write_baselines(dir.path(), &baselines(20_000));
    let cfg = daemon_config(&kafka.brokers(), dir.path(), group);
    let running = Running::start(cfg);
    let addr = running.addr.clone();

    let first = lines(GeneratorConfig::default().with_seed(42), 1000, now_ms(), 1);
    kafka.produce(&first.lines);
    let first_events: u64 = first.events.values().sum();
    wait_for(Duration::from_secs(60), "the first events counted", || {
        (events_total(&scrape(&addr)) as u64 == first_events).then_some(())
    });
    assert_eq!(readyz(&addr).0, 200, "ready before the outage");

    for id in 1..=BROKERS {
        kafka.cluster.broker_down(id).unwrap();
    }
    let down_at = Instant::now();
    let body = wait_for(Duration::from_secs(30), "/readyz 503", || {
        let (status, body) = readyz(&addr);
        (status == 503).then_some(body)
    });
    eprintln!("/readyz 503 after {:?}: {body}", down_at.elapsed());
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["ready"], false);
    assert!(
        doc["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "no broker reachable"),
        "{body}"
    );
    // /livez never depends on Kafka.
    assert_eq!(http_get(&format!("http://{addr}/livez")).0, 200);

    let mut more_cfg = GeneratorConfig::default().with_seed(42);
    more_cfg.stream_seed = Some(5);
    let second = lines(more_cfg, 1000, now_ms(), 1);
    let total_lines = first.lines.len() + second.lines.len();
    let total_events = first_events + second.events.values().sum::<u64>();
    std::thread::scope(|scope| {
        // The producer buffers while the brokers are down and delivers once
        // they are back (its message.timeout.ms is two minutes).
        let (brokers, partitions) = (kafka.brokers(), kafka.partitions);
        let producer = scope.spawn(move || produce_to(&brokers, partitions, &second.lines));
        std::thread::sleep(Duration::from_secs(5));
        let s = scrape(&addr);
        assert_eq!(
            events_total(&s) as u64,
            first_events,
            "nothing new while down"
        );
        assert_eq!(readyz(&addr).0, 503, "still not ready while down");
        for id in 1..=BROKERS {
            kafka.cluster.broker_up(id).unwrap();
        }
        let up_at = Instant::now();
        producer.join().expect("the producer delivered everything");
        wait_for(
            Duration::from_secs(90),
            "every event counted after the outage",
            || (events_total(&scrape(&addr)) as u64 == total_events).then_some(()),
        );
        eprintln!(
            "caught up {:?} after the brokers came back",
            up_at.elapsed()
        );
    });

    wait_for(Duration::from_secs(30), "every offset committed", || {
        (kafka.committed(group) == total_lines as i64).then_some(())
    });
    let s = wait_for(Duration::from_secs(30), "ready again", || {
        (readyz(&addr).0 == 200).then(|| scrape(&addr))
    });
    assert_eq!(
        value(&s, "driftd_kafka_messages_total", &[]) as usize,
        total_lines,
        "a message was consumed twice"
    );
    assert_eq!(events_total(&s) as u64, total_events);
    for (model, n) in &first.events {
        let want = n + second.events.get(model).copied().unwrap_or(0);
        assert_eq!(window_samples(&s, model), want, "window of {model}");
    }

    running.stop();
}
