//! Two replicas in one consumer group split the partitions between them:
//! each gets some, together they hold all, and every message is consumed by
//! exactly one of them.

use std::time::Duration;

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;
use tokio_util::sync::CancellationToken;

/// The mock coordinator waits `session.timeout.ms - 1 s` for more members
/// whenever one joins an existing generation (a real broker waits for the
/// known members only): 44 s with the default session. Six seconds here.
fn short_session(cfg: &mut driftd::config::Config) {
    cfg.kafka
        .as_mut()
        .unwrap()
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
}

#[test]
fn two_members_split_partitions_and_every_message_is_read_once() {
    let kafka = Kafka::new(1, 4);
    let group = "shared";
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let start = |d: &tempfile::TempDir| {
        write_baselines(d.path(), &baselines(20_000));
        let mut cfg = daemon_config(&kafka.brokers(), d.path(), group);
        short_session(&mut cfg);
        rt.block_on(driftd::daemon::app::start(cfg, cancel.clone()))
            .unwrap()
    };
    // The first member takes every partition; the second joins an existing
    // generation, so the partitions are revoked and split.
    let mut daemons = vec![start(&dirs[0])];
    let first = daemons[0].addr.to_string();
    wait_for(
        Duration::from_secs(30),
        "the first member owns all 4",
        || (value(&scrape(&first), "driftd_kafka_assigned_partitions", &[]) == 4.0).then_some(()),
    );
    daemons.push(start(&dirs[1]));
    let addrs: Vec<String> = daemons.iter().map(|d| d.addr.to_string()).collect();

    // Both members in, the group settled: produce only now, so no message
    // is read by one member before a rebalance hands it to the other.
    let assigned = wait_for(
        Duration::from_secs(60),
        "both members assigned, 4 partitions in all",
        || {
            let a: Vec<f64> = addrs
                .iter()
                .map(|a| value(&scrape(a), "driftd_kafka_assigned_partitions", &[]))
                .collect();
            (a.iter().all(|n| *n >= 1.0) && a.iter().sum::<f64>() == 4.0).then_some(a)
        },
    );
    eprintln!("assigned partitions per member: {assigned:?}");

    let sent = lines(GeneratorConfig::default().with_seed(42), 2000, now_ms(), 1);
    let expected: u64 = sent.events.values().sum();
    kafka.produce(&sent.lines);
    let per_member = wait_for(
        Duration::from_secs(60),
        "every event counted by one member or the other",
        || {
            let s: Vec<Vec<Sample>> = addrs.iter().map(|a| scrape(a)).collect();
            let events: f64 = s.iter().map(|x| events_total(x)).sum();
            let messages: f64 = s
                .iter()
                .map(|x| value(x, "driftd_kafka_messages_total", &[]))
                .sum();
            (events as u64 == expected && messages as usize == sent.lines.len()).then_some(s)
        },
    );

    let mut messages = Vec::new();
    for (s, addr) in per_member.iter().zip(&addrs) {
        let assigned = value(s, "driftd_kafka_assigned_partitions", &[]);
        let m = value(s, "driftd_kafka_messages_total", &[]) as usize;
        assert!(assigned >= 1.0, "{addr} has no partition");
        assert!(m > 0, "{addr} read nothing");
        assert!(m < sent.lines.len(), "{addr} read every message alone");
        // Round-robin production: each partition holds a quarter.
        assert_eq!(
            m,
            sent.lines.len() / 4 * assigned as usize,
            "{addr}: messages of its {assigned} partitions"
        );
        messages.push(m);
    }
    assert_eq!(messages.iter().sum::<usize>(), sent.lines.len());
    // Each model's events are split between the members, not doubled.
    for (model, n) in &sent.events {
        let sum: f64 = per_member
            .iter()
            .map(|s| value(s, "driftd_events_total", &[("model", model)]))
            .sum();
        assert_eq!(sum as u64, *n, "events of {model}");
    }

    // Both commit what they counted, so a next member would start after
    // the last message of every partition.
    wait_for(Duration::from_secs(30), "every offset committed", || {
        (kafka.committed(group) == sent.lines.len() as i64).then_some(())
    });

    cancel.cancel();
    for d in daemons {
        rt.block_on(d.wait()).unwrap();
    }
}
