//! A checkpoint is trusted only for the cluster, topic and offsets it was
//! written against. Restarted against a new cluster, a topic whose messages
//! were replaced under the same name, offsets past the partition's end, or
//! baselines that changed, the daemon discards that part of the checkpoint
//! with a counted reason, starts those partitions over, and consumes every
//! message produced: nothing skipped, nothing counted twice. The same rule
//! holds for the state another replica left on the checkpoint topic.
//!
//! librdkafka's mock cluster cannot delete a topic (it has no DeleteTopics
//! handler), so "the same topic recreated" is played by a second cluster
//! whose id the checkpoint is rewritten to carry: the names and offsets are
//! the same, the messages are not.

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;

const PARTITIONS: i32 = 2;
const GROUP: &str = "bound";
const STATE_TOPIC: &str = "driftd-state";

fn config(kafka: &Kafka, dir: &Path, state_topic: bool) -> driftd::config::Config {
    // Nothing is committed but at shutdown: a partition that falls back to
    // the committed offset on a new cluster starts at its beginning.
    let mut toml = config_toml(&kafka.brokers(), dir, GROUP, "127.0.0.1:0")
        .replace("commit_interval = \"500ms\"", "commit_interval = \"1h\"");
    if state_topic {
        toml = toml.replace(
            "[checkpoint]\n",
            &format!("[checkpoint]\nkafka_topic = \"{STATE_TOPIC}\"\n"),
        );
    }
    toml += "\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n";
    driftd::config::Config::from_toml(&toml, "test").unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a daemon until it has counted `sent` and written a checkpoint after
/// that, then stops it cleanly. Returns its last scrape.
fn count_then_stop(kafka: &Kafka, dir: &Path, sent: &Lines, state_topic: bool) -> Vec<Sample> {
    let d = Running::start(config(kafka, dir, state_topic));
    kafka.produce(&sent.lines);
    let s = counted(&d.addr, sent);
    let before = checkpoints_ok(&s);
    let s = wait_for(
        Duration::from_secs(30),
        "a checkpoint after counting",
        || try_scrape(&d.addr).filter(|s| checkpoints_ok(s) > before),
    );
    d.stop();
    s
}

/// Waits until the daemon has read exactly `sent`'s messages and holds
/// exactly its events in its windows.
fn counted(addr: &str, sent: &Lines) -> Vec<Sample> {
    eventually(
        Duration::from_secs(60),
        "every message counted once",
        || {
            let s = try_scrape(addr).ok_or("no scrape")?;
            let read = value(&s, "driftd_kafka_messages_total", &[]) as usize;
            let windows: Vec<(String, u64)> = sent
                .events
                .keys()
                .map(|m| (m.clone(), window_samples(&s, m)))
                .collect();
            let want: Vec<(String, u64)> =
                sent.events.iter().map(|(m, n)| (m.clone(), *n)).collect();
            if read == sent.lines.len() && windows == want {
                Ok(s)
            } else {
                Err(format!(
                    "read {read} of {} messages; windows {windows:?}, want {want:?}",
                    sent.lines.len()
                ))
            }
        },
    )
}

fn discarded(s: &[Sample], reason: &str) -> u64 {
    value(
        s,
        "driftd_checkpoint_discarded_total",
        &[("reason", reason)],
    ) as u64
}

fn traffic(seed: u64, n: usize) -> Lines {
    let mut cfg = GeneratorConfig::default().with_seed(42);
    cfg.stream_seed = Some(seed);
    lines(cfg, n, now_ms(), 1)
}

fn cluster_id(kafka: &Kafka) -> String {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .create()
        .unwrap();
    c.client()
        .fetch_cluster_id(Duration::from_secs(10))
        .expect("the mock cluster has an id")
}

/// Rewrites the checkpoint file as if it had been written against `kafka`.
fn claim_cluster(dir: &Path, kafka: &Kafka) {
    let path = dir.join("state/driftd-checkpoint.json");
    let mut cp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_ne!(cp["cluster_id"], serde_json::json!(null), "{cp}");
    cp["cluster_id"] = cluster_id(kafka).into();
    std::fs::write(&path, cp.to_string()).unwrap();
}

/// Restarts against `kafka` (already holding `sent`) with the old
/// checkpoint, and checks that exactly `sent` is counted and that every
/// partition's part of the checkpoint was discarded for `reason`.
fn restart_counts_only(kafka: &Kafka, dir: &Path, sent: &Lines, reason: &str) {
    let d = Running::start(config(kafka, dir, false));
    let s = counted(&d.addr, sent);
    assert_eq!(discarded(&s, reason), PARTITIONS as u64, "reason {reason}");
    let others: u64 = [
        "cluster",
        "topic",
        "offset_out_of_range",
        "baseline_changed",
    ]
    .iter()
    .filter(|r| **r != reason)
    .map(|r| discarded(&s, r))
    .sum();
    assert_eq!(others, 0, "only {reason} discards");
    // Everything produced is read: the lag of every partition comes to 0
    // exactly (not below: a position past the end shows as negative). The
    // gauge follows librdkafka's statistics, so a scrape just after the
    // last line may still show the lag of a moment before: wait for it.
    eventually(Duration::from_secs(20), "lag 0 on every partition", || {
        let s = try_scrape(&d.addr).ok_or("no scrape")?;
        let lag: Vec<(String, f64)> = s
            .iter()
            .filter(|x| x.name == "driftd_kafka_consumer_lag")
            .map(|x| {
                (
                    x.labels.get("partition").cloned().unwrap_or_default(),
                    x.value,
                )
            })
            .collect();
        match lag.len() == PARTITIONS as usize && lag.iter().all(|(_, v)| *v == 0.0) {
            true => Ok(()),
            false => Err(format!("lag by partition: {lag:?}")),
        }
    });
    d.stop();
}

#[test]
fn a_checkpoint_from_another_cluster_is_discarded_and_the_new_one_read_whole() {
    let a = Kafka::new(1, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(20_000));
    count_then_stop(&a, dir.path(), &traffic(1, 3000), false);

    // A fresh cluster (the old one still up, so the ids differ), the topic
    // created again, 3,000 new lines at offsets 0-2999: the checkpoint says
    // 1,500 per partition were read.
    let b = Kafka::new(1, PARTITIONS);
    let sent = traffic(2, 3000);
    b.produce(&sent.lines);
    restart_counts_only(&b, dir.path(), &sent, "cluster");
}

#[test]
fn a_checkpoint_of_a_topic_whose_messages_were_replaced_is_discarded() {
    let a = Kafka::new(1, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(20_000));
    count_then_stop(&a, dir.path(), &traffic(1, 3000), false);

    // Same cluster id, same topic, same offsets (1,500 per partition, within
    // the watermarks): only the messages before the positions differ.
    let b = Kafka::new(1, PARTITIONS);
    let sent = traffic(3, 3000);
    b.produce(&sent.lines);
    claim_cluster(dir.path(), &b);
    restart_counts_only(&b, dir.path(), &sent, "topic");
}

#[test]
fn a_checkpoint_past_the_end_of_the_partitions_is_discarded() {
    let a = Kafka::new(1, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(20_000));
    count_then_stop(&a, dir.path(), &traffic(1, 3000), false);

    let b = Kafka::new(1, PARTITIONS);
    let sent = traffic(4, 1000);
    b.produce(&sent.lines);
    claim_cluster(dir.path(), &b);
    restart_counts_only(&b, dir.path(), &sent, "offset_out_of_range");
}

#[test]
fn windows_of_a_changed_baseline_go_with_their_positions() {
    let kafka = Kafka::new(1, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(20_000));
    count_then_stop(&kafka, dir.path(), &traffic(1, 3000), false);

    // New baselines (other versions), then more traffic. The old windows
    // cannot be restored on them, so their positions are not used either:
    // the partitions start at the offset committed at the clean stop, and
    // the windows hold the new lines once.
    let _ = std::fs::remove_dir_all(dir.path().join("baselines"));
    write_baselines(dir.path(), &baselines(15_000));
    let sent = traffic(5, 1000);
    kafka.produce(&sent.lines);
    restart_counts_only(&kafka, dir.path(), &sent, "baseline_changed");
}

/// The records on a cluster's checkpoint topic.
fn state_records(kafka: &Kafka) -> Vec<(Vec<u8>, serde_json::Value)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", "reader")
        .create()
        .unwrap();
    let (_, high) = c
        .fetch_watermarks(STATE_TOPIC, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(STATE_TOPIC, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while (out.len() as i64) < high {
        let m = c
            .poll(Duration::from_secs(10))
            .expect("a checkpoint record")
            .unwrap();
        out.push((
            m.key().unwrap_or_default().to_vec(),
            serde_json::from_slice(m.payload().unwrap()).unwrap(),
        ));
    }
    out
}

#[test]
fn a_replica_does_not_take_over_state_that_describes_other_messages() {
    let a = Kafka::new(1, PARTITIONS);
    a.cluster.create_topic(STATE_TOPIC, 1, 1).unwrap();
    let dir_a = tempfile::tempdir().unwrap();
    write_baselines(dir_a.path(), &baselines(20_000));
    count_then_stop(&a, dir_a.path(), &traffic(1, 3000), true);
    let records = state_records(&a);
    assert!(!records.is_empty());

    // The same state lands on a cluster where the topic holds other
    // messages (as after a mirror of the state topic, or a recreated data
    // topic); the replica there has no checkpoint of its own.
    let b = Kafka::new(1, PARTITIONS);
    b.cluster.create_topic(STATE_TOPIC, 1, 1).unwrap();
    let id = cluster_id(&b);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", b.brokers())
        .create()
        .unwrap();
    for (key, mut rec) in records {
        rec["cluster_id"] = id.clone().into();
        let body = rec.to_string();
        p.send(BaseRecord::to(STATE_TOPIC).key(&key).payload(&body))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let sent = traffic(6, 3000);
    b.produce(&sent.lines);

    let dir_b = tempfile::tempdir().unwrap();
    write_baselines(dir_b.path(), &baselines(20_000));
    let d = Running::start(config(&b, dir_b.path(), true));
    let s = counted(&d.addr, &sent);
    assert_eq!(discarded(&s, "topic"), PARTITIONS as u64);
    d.stop();
}
