//! With `checkpoint.kafka_topic`, each model's windows are published to a
//! compacted topic keyed by model, so a replica that takes over the model's
//! partitions (with no local checkpoint of its own) takes over its windows
//! too, and resumes exactly where they end: nothing lost, nothing twice.

use std::time::Duration;

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;
use tokio_util::sync::CancellationToken;

fn config(brokers: &str, dir: &std::path::Path) -> driftd::config::Config {
    // The mock coordinator waits most of a session timeout for members of
    // the previous generation: keep that short.
    let toml = config_toml(brokers, dir, "takeover", "127.0.0.1:0").replace(
        "[checkpoint]\n",
        "[checkpoint]\nkafka_topic = \"driftd-state\"\n",
    ) + "\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n";
    driftd::config::Config::from_toml(&toml, "test").unwrap_or_else(|e| panic!("{e}"))
}

fn windows(addr: &str) -> (u64, u64) {
    let s = scrape(addr);
    (
        value(
            &s,
            "driftd_window_samples",
            &[("model", "fraud-v1"), ("arm", "")],
        ) as u64,
        value(
            &s,
            "driftd_window_samples",
            &[("model", "recsys-v3"), ("arm", "")],
        ) as u64,
    )
}

#[test]
fn a_new_replica_continues_the_windows_of_the_one_it_replaces() {
    let kafka = Kafka::new(1, 2);
    kafka.cluster.create_topic("driftd-state", 1, 1).unwrap();
    let bases = baselines(20_000);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_baselines(dir_a.path(), &bases);
    write_baselines(dir_b.path(), &bases);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Replica A counts the first lines, then goes away (a scale-down).
    let first = lines(GeneratorConfig::default(), 2000, now_ms(), 1);
    let cancel_a = CancellationToken::new();
    let a = rt
        .block_on(driftd::daemon::app::start(
            config(&kafka.brokers(), dir_a.path()),
            cancel_a.clone(),
        ))
        .unwrap();
    let addr_a = a.addr.to_string();
    kafka.produce(&first.lines);
    let want_first = (first.events["fraud-v1"], first.events["recsys-v3"]);
    wait_for(
        Duration::from_secs(60),
        "replica A counted the first lines",
        || (windows(&addr_a) == want_first).then_some(()),
    );
    cancel_a.cancel();
    rt.block_on(a.wait()).unwrap();

    // More traffic while nobody consumes.
    let second = lines(GeneratorConfig::default().with_seed(42), 1000, now_ms(), 1);
    kafka.produce(&second.lines);

    // Replica B has no local checkpoint: its windows come from the topic.
    let cancel_b = CancellationToken::new();
    let b = rt
        .block_on(driftd::daemon::app::start(
            config(&kafka.brokers(), dir_b.path()),
            cancel_b.clone(),
        ))
        .unwrap();
    let addr_b = b.addr.to_string();
    let want = (
        want_first.0 + second.events["fraud-v1"],
        want_first.1 + second.events["recsys-v3"],
    );
    let got = wait_for(
        Duration::from_secs(60),
        "replica B holds every event once",
        || {
            let w = windows(&addr_b);
            (w.0 + w.1 >= want.0 + want.1).then_some(w)
        },
    );
    assert_eq!(
        got, want,
        "B's windows = A's windows + the lines B consumed itself"
    );
    let s = scrape(&addr_b);
    // B read only the lines A had not counted.
    assert_eq!(
        value(&s, "driftd_kafka_messages_total", &[]) as usize,
        second.lines.len()
    );

    cancel_b.cancel();
    rt.block_on(b.wait()).unwrap();
}
