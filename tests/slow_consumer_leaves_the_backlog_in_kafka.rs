//! A consumer slower than its input applies backpressure instead of
//! buffering: the backlog stays in Kafka (its size visible as
//! `driftd_kafka_consumer_lag`), the daemon's memory stays bounded by its
//! prefetch limit (`queued.max.messages.kbytes`, 4 MB) rather than growing
//! with the backlog, and SIGTERM in the middle of that full-load catch-up
//! still exits 0 within the grace period with the offsets of every counted
//! event committed: a restarted daemon consumes exactly the rest.
//!
//! The backlog is made by stopping the daemon (SIGSTOP) while ~70 MB of
//! lines are produced, then letting it go (SIGCONT): from then on the input
//! is, for the daemon, infinitely faster than it is.

use std::time::{Duration, Instant};

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;

const PARTITIONS: i32 = 16;
const LINES: usize = 140_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn backlog_stays_in_kafka_and_sigterm_under_load_commits_what_was_counted() {
    let kafka = Kafka::new(1, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let group = "slow";
    write_baselines(dir.path(), &baselines(20_000));
    let addr = format!("127.0.0.1:{}", free_port());
    let toml = config_toml(&kafka.brokers(), dir.path(), group, &addr);
    // The first member commits only when it stops (a periodic commit could
    // otherwise take everything stored just before SIGTERM, and leave the
    // shutdown nothing to commit); the second commits every 500 ms.
    let first_toml = toml.replace("commit_interval = \"500ms\"", "commit_interval = \"1h\"");
    assert!(first_toml.contains("commit_interval = \"1h\""));
    let first_config = dir.path().join("first.toml");
    std::fs::write(&first_config, first_toml).unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(&config, toml).unwrap();
    let mut daemon = Proc::spawn(
        &["run", "--config", path_str(&first_config)],
        dir.path(),
        "first",
    );
    wait_ready(
        &mut daemon,
        &format!("http://{addr}/readyz"),
        Duration::from_secs(60),
    );
    // Warm: a few lines through, so the idle RSS includes the windows.
    let warm = lines(GeneratorConfig::default().with_seed(1), 2000, now_ms(), 1);
    kafka.produce(&warm.lines);
    wait_for(Duration::from_secs(60), "warm-up consumed", || {
        (consumed(&addr) == warm.lines.len() as u64).then_some(())
    });
    let idle_kib = rss_kib(daemon.pid());

    daemon.signal("STOP");
    let sent = lines(GeneratorConfig::default().with_seed(2), LINES, now_ms(), 1);
    let bytes: usize = sent.lines.iter().map(|l| l.len()).sum();
    kafka.produce(&sent.lines);
    daemon.signal("CONT");
    let total = (warm.lines.len() + sent.lines.len()) as u64;

    // Catching up: lag shows on /metrics, memory stays put.
    let mut peak_kib = idle_kib;
    let mut max_lag = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut counted_before_term = 0;
    while Instant::now() < deadline {
        peak_kib = peak_kib.max(rss_kib(daemon.pid()));
        if let Some(s) = try_scrape(&addr) {
            let lag: f64 = s
                .iter()
                .filter(|x| x.name == "driftd_kafka_consumer_lag")
                .map(|x| x.value)
                .sum();
            max_lag = max_lag.max(lag);
            counted_before_term = value(&s, "driftd_kafka_messages_total", &[]) as u64;
            // Half way through the backlog, under full load: stop it.
            if lag > 0.0 && counted_before_term > total / 3 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        max_lag >= 10_000.0,
        "the backlog was visible as lag (max seen {max_lag})"
    );
    let backlog_mib = bytes as f64 / (1 << 20) as f64;
    let growth_mib = (peak_kib.saturating_sub(idle_kib)) as f64 / 1024.0;
    eprintln!(
        "backlog {backlog_mib:.0} MiB, max lag {max_lag}, RSS idle {} MiB, peak {} MiB",
        idle_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        growth_mib < 32.0 && growth_mib < backlog_mib / 2.0,
        "RSS grew {growth_mib:.1} MiB while catching up on {backlog_mib:.0} MiB"
    );
    assert!(counted_before_term < total, "SIGTERM came under load");

    daemon.signal("TERM");
    let t = Instant::now();
    let status = daemon
        .wait_exit(Duration::from_secs(12))
        .unwrap_or_else(|| panic!("still running 12 s after SIGTERM:\n{}", daemon.output()));
    let took = t.elapsed();
    let logs = daemon.output();
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{logs}");
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    assert!(logs.contains("offsets committed"), "{logs}");
    let committed = kafka.committed(group) as u64;
    assert!(
        committed >= counted_before_term && committed < total,
        "committed {committed}: at least what was counted before SIGTERM ({counted_before_term}), not all of {total}"
    );

    // The next member starts exactly after the last counted message.
    let mut second = Proc::spawn(
        &["run", "--config", path_str(&config)],
        dir.path(),
        "second",
    );
    wait_for(Duration::from_secs(120), "the rest consumed", || {
        (try_scrape(&addr).map(|s| value(&s, "driftd_kafka_messages_total", &[]) as u64)
            == Some(total - committed))
        .then_some(())
    });
    wait_for(Duration::from_secs(30), "committed to the end", || {
        (kafka.committed(group) as u64 == total).then_some(())
    });
    // Nothing more arrives: no message was counted twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        value(&scrape(&addr), "driftd_kafka_messages_total", &[]) as u64,
        total - committed
    );
    second.signal("TERM");
    assert_eq!(
        second
            .wait_exit(Duration::from_secs(12))
            .and_then(|s| s.code()),
        Some(0)
    );
}
