//! SIGTERM is a clean stop: the daemon stops fetching, commits the offsets
//! of every event it counted and exits 0 within the grace period, so the
//! next member of the group starts exactly after the last counted message.
//!
//! The periodic commit is set to an hour here, so what is committed at the
//! end can only come from the shutdown.

use std::time::{Duration, Instant};

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;

#[test]
fn sigterm_commits_every_consumed_offset_and_exits_0() {
    let kafka = Kafka::new(1, 4);
    let dir = tempfile::tempdir().unwrap();
    let group = "sigterm";
    write_baselines(dir.path(), &baselines(20_000));
    let addr = format!("127.0.0.1:{}", free_port());
    let toml = config_toml(&kafka.brokers(), dir.path(), group, &addr)
        .replace("commit_interval = \"500ms\"", "commit_interval = \"1h\"");
    assert!(toml.contains("commit_interval = \"1h\""));
    let config = dir.path().join("driftd.toml");
    std::fs::write(&config, toml).unwrap();

    let mut daemon = Proc::spawn(
        &["run", "--config", path_str(&config)],
        dir.path(),
        "driftd",
    );
    let sent = lines(GeneratorConfig::default().with_seed(42), 3000, now_ms(), 1);
    let expected: u64 = sent.events.values().sum();
    kafka.produce(&sent.lines);
    wait_for(Duration::from_secs(60), "every message consumed", || {
        let s = try_scrape(&addr)?;
        (events_total(&s) as u64 == expected
            && value(&s, "driftd_kafka_messages_total", &[]) as usize == sent.lines.len())
        .then_some(())
    });
    assert_eq!(
        kafka.committed(group),
        0,
        "nothing committed before SIGTERM (commit_interval is 1h)"
    );

    daemon.signal("TERM");
    let t = Instant::now();
    // shutdown.grace is 10 s; allow a little for the process to exit after.
    let status = daemon
        .wait_exit(Duration::from_secs(12))
        .unwrap_or_else(|| panic!("still running 12 s after SIGTERM:\n{}", daemon.output()));
    let took = t.elapsed();
    let logs = daemon.output();
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{logs}");
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(logs.contains("offsets committed"), "{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(!logs.contains("final commit failed"), "{logs}");

    // Every partition's committed offset is its end: the sum is the count.
    assert_eq!(kafka.committed(group), sent.lines.len() as i64);
    assert!(
        try_scrape(&addr).is_none(),
        "/metrics still answers after exit"
    );
}
