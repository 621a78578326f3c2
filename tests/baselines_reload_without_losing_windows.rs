//! Baselines reload when a file in the directory changes (and on SIGHUP):
//! the new version is in force, and windows on unchanged bins keep their
//! counts; a bad file keeps the old baselines.

use std::time::Duration;

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;

fn version(s: &[Sample], model: &str) -> Option<String> {
    s.iter()
        .find(|x| {
            x.name == "driftd_baseline_info"
                && x.labels.get("model").map(String::as_str) == Some(model)
        })
        .and_then(|x| x.labels.get("version").cloned())
}

#[test]
fn a_changed_file_is_reloaded_and_windows_keep_their_counts() {
    let kafka = Kafka::new(1, 1);
    let dir = tempfile::tempdir().unwrap();
    let bases = baselines(20_000);
    write_baselines(dir.path(), &bases);
    let cfg = daemon_config(&kafka.brokers(), dir.path(), "reload");
    let running = Running::start(cfg);
    let addr = running.addr.clone();

    let normal = lines(GeneratorConfig::default(), 2000, now_ms(), 1);
    kafka.produce(&normal.lines);
    let expected = normal.events["fraud-v1"];
    let before = wait_for(Duration::from_secs(60), "events counted", || {
        let s = scrape(&addr);
        (value(
            &s,
            "driftd_window_samples",
            &[("model", "fraud-v1"), ("arm", "")],
        ) as u64
            == expected)
            .then_some(s)
    });
    let old = version(&before, "fraud-v1").expect("a version");

    // Same bins, other counts: a new version, compatible with the windows.
    let mut b = bases
        .iter()
        .find(|b| b.model == "fraud-v1")
        .unwrap()
        .clone();
    for f in &mut b.features {
        f.counts[1] += 7;
    }
    b.version = "reloaded-v2".into();
    b.save(&dir.path().join("baselines")).unwrap();
    let after = wait_for(Duration::from_secs(30), "the new version in force", || {
        let s = scrape(&addr);
        (version(&s, "fraud-v1").as_deref() == Some("reloaded-v2")).then_some(s)
    });
    assert_ne!(old, "reloaded-v2");
    assert_eq!(
        value(
            &after,
            "driftd_window_samples",
            &[("model", "fraud-v1"), ("arm", "")]
        ) as u64,
        expected,
        "the window survived the reload"
    );
    // Exactly one baseline_info series per model: the old version is gone.
    assert_eq!(
        after
            .iter()
            .filter(|x| x.name == "driftd_baseline_info")
            .count(),
        2
    );

    // A broken file: the baselines in force stay, readiness stays.
    std::fs::write(dir.path().join("baselines/broken.json"), b"{ not json").unwrap();
    let (status, _) = http_post(
        &format!("http://{addr}/api/v1/baselines/reload"),
        Some("test-admin-token-0123456789"),
        None,
    );
    assert_eq!(status, 422);
    let s = scrape(&addr);
    assert_eq!(version(&s, "fraud-v1").as_deref(), Some("reloaded-v2"));
    assert_eq!(http_get(&format!("http://{addr}/readyz")).0, 200);
    // ... and the failure is counted (from the next evaluation on).
    let failed = [("outcome", "error")];
    wait_for(Duration::from_secs(30), "a failed reload counted", || {
        let s = scrape(&addr);
        (value(&s, "driftd_baseline_reloads_total", &failed) >= 1.0).then_some(())
    });

    running.stop();
}
