//! A daemon killed with SIGKILL comes back with its windows: the restart
//! restores the last checkpoint and resumes consumption at the offsets the
//! checkpoint records, so after it every event is counted exactly once (none
//! lost, none counted twice). A crash in the middle of a checkpoint write
//! (a torn temporary file) does not spoil the restart.
//!
//! The offsets are committed to Kafka only every hour here, so nothing is
//! committed before the kill: a restart that ignored the checkpoint's
//! offsets would read every message again and count it twice.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;

/// Events per model, summed over batches.
fn sum_events(batches: &[&Lines]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for b in batches {
        for (m, n) in &b.events {
            *out.entry(m.clone()).or_default() += n;
        }
    }
    out
}

fn run(config: &Path, logs: &Path, name: &str) -> Proc {
    Proc::spawn(&["run", "--config", path_str(config)], logs, name)
}

/// Waits until the daemon has counted `events` events out of exactly
/// `messages` Kafka messages.
fn wait_counted(addr: &str, events: u64, messages: usize) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::from("nothing scraped");
    loop {
        if let Some(s) = try_scrape(addr) {
            let got = events_total(&s) as u64;
            let read = value(&s, "driftd_kafka_messages_total", &[]) as usize;
            if got == events && read == messages {
                return s;
            }
            seen = format!("{got} events from {read} messages");
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {events} events from {messages} messages; last seen: {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a checkpoint written after the scrape `s`.
fn wait_next_checkpoint(addr: &str, s: &[Sample]) -> Vec<Sample> {
    let before = checkpoints_ok(s);
    wait_for(Duration::from_secs(30), "a new checkpoint", || {
        try_scrape(addr).filter(|s| checkpoints_ok(s) > before)
    })
}

fn kill_and_restart(torn_tmp: bool) {
    let kafka = Kafka::new(1, 4);
    let dir = tempfile::tempdir().unwrap();
    let group = if torn_tmp { "restart-torn" } else { "restart" };
    write_baselines(dir.path(), &baselines(20_000));
    let addr = format!("127.0.0.1:{}", free_port());
    // The killed member never leaves the group: the coordinator gives its
    // partitions to the new one only when its session expires (45 s by
    // default), so the session is short here.
    let toml = config_toml(&kafka.brokers(), dir.path(), group, &addr)
        .replace("commit_interval = \"500ms\"", "commit_interval = \"1h\"")
        + "\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n";
    assert!(toml.contains("commit_interval = \"1h\""));
    let config = dir.path().join("driftd.toml");
    std::fs::write(&config, toml).unwrap();

    let mut first = run(&config, dir.path(), "first");
    let before = lines(GeneratorConfig::default().with_seed(42), 3000, now_ms(), 1);
    kafka.produce(&before.lines);
    let expected_before: u64 = before.events.values().sum();
    let s = wait_counted(&addr, expected_before, before.lines.len());
    // A checkpoint written after every event was counted.
    wait_next_checkpoint(&addr, &s);
    assert_eq!(
        kafka.committed(group),
        0,
        "nothing is committed before the kill (commit_interval is 1h): the restart must use the checkpoint's offsets"
    );
    first.kill();
    assert!(
        try_scrape(&addr).is_none(),
        "the killed daemon still answers"
    );

    let state = dir.path().join("state");
    let checkpoint = std::fs::read(state.join("driftd-checkpoint.json")).unwrap();
    if torn_tmp {
        // As if the kill had landed in the middle of the next write.
        std::fs::write(
            state.join(".driftd-checkpoint.json.tmp"),
            &checkpoint[..checkpoint.len() / 2],
        )
        .unwrap();
    }

    // Traffic goes on while the daemon is down.
    let mut later_cfg = GeneratorConfig::default().with_seed(42);
    later_cfg.stream_seed = Some(8);
    let during = lines(later_cfg, 2000, now_ms(), 1);
    kafka.produce(&during.lines);

    let second = run(&config, dir.path(), "second");
    let want = sum_events(&[&before, &during]);
    let total: u64 = want.values().sum();
    // The second run reads only the messages produced while it was down.
    let s = wait_counted(&addr, total, during.lines.len());
    // Nothing more arrives later (no message is read twice): a checkpoint
    // and at least one evaluation after, the counts are the same.
    let s = wait_next_checkpoint(&addr, &s);
    let s = wait_next_checkpoint(&addr, &s);
    assert_eq!(events_total(&s) as u64, total);
    assert_eq!(
        value(&s, "driftd_kafka_messages_total", &[]) as usize,
        during.lines.len()
    );
    for (model, n) in &want {
        assert_eq!(
            window_samples(&s, model),
            *n,
            "window of {model} after the restart"
        );
        assert_eq!(
            value(&s, "driftd_events_total", &[("model", model)]) as u64,
            *n,
            "events of {model} after the restart"
        );
    }
    assert_eq!(
        value(&s, "driftd_events_rejected_total", &[]) as u64,
        during.rejected,
        "the second run rejects only the new malformed lines"
    );

    let logs = second.output();
    assert!(logs.contains("restored checkpoint"), "{logs}");
    assert!(!logs.contains("discarded"), "{logs}");
    assert!(
        !state.join("driftd-checkpoint.json.corrupt").exists(),
        "the checkpoint was taken for corrupt"
    );
    if torn_tmp {
        // A later write replaced the torn file and renamed it into place.
        assert!(!state.join(".driftd-checkpoint.json.tmp").exists());
        let text = std::fs::read_to_string(state.join("driftd-checkpoint.json")).unwrap();
        let cp: serde_json::Value = serde_json::from_str(&text).unwrap();
        let next: i64 = cp["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["offset"].as_i64().unwrap())
            .sum();
        assert_eq!(next as usize, before.lines.len() + during.lines.len());
    }
    drop(second);
}

#[test]
fn sigkill_then_restart_counts_every_event_once() {
    kill_and_restart(false);
}

#[test]
fn a_torn_checkpoint_write_is_ignored_on_restart() {
    kill_and_restart(true);
}
