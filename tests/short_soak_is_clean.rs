//! The CI-sized soak: `driftd soak --duration 2m --fault-every 30s` (the real
//! binary; about 2.5 minutes) with a real Alertmanager (Debian's
//! `prometheus-alertmanager`), and its JSON report read back.
//!
//! The soak runs `driftd run` as a child at 2000 lines/s through
//! librdkafka's mock cluster and injects, one every 30 s: all brokers down,
//! Fetch/OffsetCommit request errors, Alertmanager killed and restarted on
//! the same port, all brokers down again. This proves, over that run:
//!
//! - every fault kind was exercised;
//! - nothing was lost: the group's committed offsets equal the high
//!   watermarks of every partition and the daemon counted at least every
//!   message in the topic (at-least-once: duplicates are allowed);
//! - RSS, open file descriptors and /metrics series are flat (the soak's
//!   limits: RSS <= start x 1.25 + 16 MiB, fds <= start + 16, the same
//!   series);
//! - /readyz turned 503 during each broker outage and 200 after it;
//! - the firing drift alert reached the restarted Alertmanager;
//! - no panic, and a clean exit on SIGTERM.
//!
//! The 30-minute version (one-minute broker outages, five-minute
//! Alertmanager outages) is `driftd soak` with its defaults; see the
//! README's "Soak" section.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// The soak takes about 2.5 minutes; it ends itself on every path (each of
/// its waits has a deadline), this is the backstop.
const DEADLINE: Duration = Duration::from_secs(420);

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_two_minute_soak_with_every_fault_kind_is_clean() {
    let began = Instant::now();
    let alertmanager = require_alertmanager();
    let logs = tempfile::tempdir().unwrap();
    let mut soak = Proc::spawn_group(
        &[
            "soak",
            "--duration",
            "2m",
            "--fault-every",
            "30s",
            "--alertmanager",
            path_str(&alertmanager),
            "--json",
        ],
        logs.path(),
        "soak",
    );
    let Some(status) = soak.wait_exit(DEADLINE) else {
        soak.kill_group();
        panic!(
            "the soak did not finish within {DEADLINE:?}:\n{}",
            soak.output()
        );
    };
    let out = std::fs::read_to_string(&soak.stdout).unwrap();
    let err = std::fs::read_to_string(&soak.stderr).unwrap();
    eprintln!("{err}");
    eprintln!("soak finished in {:?}", began.elapsed());
    assert!(status.success(), "the soak failed ({status}):\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));

    // Every check the soak made passed, and these are among them.
    let checks = r["checks"].as_array().expect("checks");
    for c in checks {
        assert_eq!(c["ok"], true, "{c}");
    }
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "RSS flat",
        "open fds flat",
        "series stable",
        "no lost messages",
        "no panics",
        "clean exit on SIGTERM",
        "not ready while the brokers are down",
        "ready again after the brokers are back",
        "alert delivered after every Alertmanager outage",
    ] {
        assert!(names.contains(&want), "no {want:?} check in {names:?}");
    }
    assert_eq!(r["passed"], true);

    // Every fault kind exercised at least once.
    for kind in ["broker_outage", "request_errors", "alertmanager_outage"] {
        let n = r["fault_counts"][kind].as_u64().unwrap_or(0);
        assert!(n >= 1, "{kind} exercised {n} times: {}", r["fault_counts"]);
    }

    // Nothing lost.
    let produced = r["produced"].as_u64().unwrap();
    let consumed = r["consumed"].as_u64().unwrap();
    assert!(produced >= 200_000, "2 minutes at 2000 lines/s: {produced}");
    assert_eq!(r["lost"], 0);
    assert!(consumed >= produced, "{consumed} consumed < {produced}");
    assert_eq!(r["duplicates"].as_u64().unwrap(), consumed - produced);
    assert_eq!(r["partitions_committed"], r["partitions"]);
    assert_eq!(r["producer_failed"], 0);

    // Flat.
    let (start, end) = (&r["start"], &r["end"]);
    assert!(
        f(&end["rss_mib"]) <= f(&start["rss_mib"]) * 1.25 + 16.0,
        "RSS {start} -> {end}"
    );
    assert!(
        end["fds"].as_u64().unwrap() <= start["fds"].as_u64().unwrap() + 16,
        "fds {start} -> {end}"
    );
    assert_eq!(start["series"], end["series"]);
    assert!(start["series"].as_u64().unwrap() > 100, "{start}");
    assert_eq!(r["series_added"].as_array().unwrap().len(), 0);
    assert_eq!(r["series_removed"].as_array().unwrap().len(), 0);

    // What each fault did.
    for fault in r["faults"].as_array().unwrap() {
        assert_eq!(fault["exercised"], true, "{fault}");
        match fault["kind"].as_str().unwrap() {
            "broker_outage" => {
                assert!(fault["ready_down_after_s"].is_number(), "{fault}");
                assert!(fault["ready_recovered_after_s"].is_number(), "{fault}");
            }
            "alertmanager_outage" => {
                assert!(fault["failed_sends"].as_u64().unwrap() >= 1, "{fault}");
                assert!(fault["alert_back_after_s"].is_number(), "{fault}");
            }
            _ => {}
        }
    }
    assert!(r["first_alert_s"].is_number(), "the drift alert fired");
    assert_eq!(r["panics"], 0);
    assert_eq!(r["exit_status"], "exit status: 0");
}
