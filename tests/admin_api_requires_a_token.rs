//! The admin API changes baselines only for a caller with the configured
//! bearer token (401 otherwise), is closed (403) when no token is
//! configured, and a reload that meets a bad file changes nothing: 422, the
//! baselines in force stay, the daemon stays ready.

use std::time::Duration;

use crate::common::*;
use driftd::lab::generate::GeneratorConfig;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-admin-token-0123456789";

fn baseline_versions(s: &[Sample]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = s
        .iter()
        .filter(|x| x.name == "driftd_baseline_info" && x.value == 1.0)
        .map(|x| (x.labels["model"].clone(), x.labels["version"].clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn capture_and_reload_need_the_token_and_a_bad_reload_keeps_the_baselines() {
    let kafka = Kafka::new(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let initial = baselines(20_000);
    write_baselines(dir.path(), &initial);
    let old_fraud = initial
        .iter()
        .find(|b| b.model == "fraud-v1")
        .unwrap()
        .version
        .clone();
    let cfg = daemon_config(&kafka.brokers(), dir.path(), "admin");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let daemon = rt
        .block_on(driftd::daemon::app::start(cfg, cancel.clone()))
        .unwrap();
    let addr = daemon.addr.to_string();
    let capture = format!("http://{addr}/api/v1/baselines");
    let reload = format!("http://{addr}/api/v1/baselines/reload");
    let body = r#"{"model":"fraud-v1"}"#;

    let sent = lines(GeneratorConfig::default().with_seed(42), 2000, now_ms(), 1);
    let expected: u64 = sent.events.values().sum();
    kafka.produce(&sent.lines);
    let s = wait_for(Duration::from_secs(60), "events counted", || {
        let s = scrape(&addr);
        (events_total(&s) as u64 == expected).then_some(s)
    });
    let before = baseline_versions(&s);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.contains(&("fraud-v1".into(), old_fraud.clone())));

    // No token, a wrong one, a right one without the scheme: 401.
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let (status, text) = http_post(&capture, token, Some(body));
        assert_eq!(status, 401, "capture with {token:?}: {text}");
        let (status, text) = http_post(&reload, token, None);
        assert_eq!(status, 401, "reload with {token:?}: {text}");
    }
    let (status, text) = http_post(&format!("{capture}?token={TOKEN}"), None, Some(body));
    assert_eq!(status, 401, "token in the query string: {text}");
    // A prefix of the token is not the token.
    let (status, _) = http_post(&capture, Some(&TOKEN[..TOKEN.len() - 1]), Some(body));
    assert_eq!(status, 401);
    let path = dir.path().join("baselines/fraud-v1.json");
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        on_disk["version"], old_fraud,
        "a refused call changed the file"
    );

    // The token, a body, a model with events: 200 and a new version, saved.
    let (status, text) = http_post(&capture, Some(TOKEN), Some(body));
    assert_eq!(status, 200, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["model"], "fraud-v1");
    let new_fraud = doc["version"].as_str().unwrap().to_owned();
    assert_ne!(new_fraud, old_fraud);
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(on_disk["version"], new_fraud.as_str());
    assert_eq!(on_disk["model"], "fraud-v1");
    let in_force: Vec<(String, String)> = before
        .iter()
        .map(|(m, v)| {
            let v = if m == "fraud-v1" { &new_fraud } else { v };
            (m.clone(), v.clone())
        })
        .collect();
    wait_for(Duration::from_secs(30), "the new version exported", || {
        (baseline_versions(&scrape(&addr)) == in_force).then_some(())
    });
    // Bad requests with the token are still refused.
    let (status, text) = http_post(&capture, Some(TOKEN), None);
    assert_eq!(status, 400, "no body: {text}");
    let (status, text) = http_post(&capture, Some(TOKEN), Some(r#"{"model":"nope"}"#));
    assert_eq!(status, 409, "a model without a window: {text}");

    // A corrupt file in the directory: the reload is refused, nothing moves.
    std::fs::write(dir.path().join("baselines/zz-broken.json"), b"{ not json").unwrap();
    let (status, text) = http_post(&reload, Some(TOKEN), None);
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("zz-broken.json"), "{text}");
    let (ready, text) = http_get(&format!("http://{addr}/readyz"));
    assert_eq!(ready, 200, "{text}");
    // Still so after evaluations and checkpoints (and the directory watcher,
    // which sees the same bad file).
    let s = scrape(&addr);
    let later = wait_for(Duration::from_secs(30), "two more checkpoints", || {
        let t = scrape(&addr);
        (checkpoints_ok(&t) >= checkpoints_ok(&s) + 2.0).then_some(t)
    });
    assert_eq!(baseline_versions(&later), in_force);
    assert_eq!(http_get(&format!("http://{addr}/readyz")).0, 200);
    for (model, n) in &sent.events {
        assert_eq!(
            window_samples(&later, model),
            *n,
            "the window of {model} survived the failed reload"
        );
    }

    // The bad file gone, the same reload succeeds.
    std::fs::remove_file(dir.path().join("baselines/zz-broken.json")).unwrap();
    let (status, text) = http_post(&reload, Some(TOKEN), None);
    assert_eq!(status, 200, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut reloaded: Vec<&str> = doc["reloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    reloaded.sort();
    assert_eq!(reloaded, ["fraud-v1", "recsys-v3"]);
    assert_eq!(baseline_versions(&scrape(&addr)), in_force);

    cancel.cancel();
    rt.block_on(daemon.wait()).unwrap();
}

#[test]
fn without_a_configured_token_the_admin_api_is_closed() {
    let kafka = Kafka::new(1, 1);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(5_000));
    let mut cfg = daemon_config(&kafka.brokers(), dir.path(), "no-admin");
    cfg.http.admin_token = None;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let daemon = rt
        .block_on(driftd::daemon::app::start(cfg, cancel.clone()))
        .unwrap();
    let addr = daemon.addr.to_string();
    let before = std::fs::read(dir.path().join("baselines/fraud-v1.json")).unwrap();

    for token in [None, Some(TOKEN), Some("")] {
        let (status, text) = http_post(
            &format!("http://{addr}/api/v1/baselines"),
            token,
            Some(r#"{"model":"fraud-v1"}"#),
        );
        assert_eq!(status, 403, "capture with {token:?}: {text}");
        assert!(text.contains("admin_token"), "{text}");
        let (status, text) = http_post(
            &format!("http://{addr}/api/v1/baselines/reload"),
            token,
            None,
        );
        assert_eq!(status, 403, "reload with {token:?}: {text}");
    }
    // Reading stays open.
    assert_eq!(http_get(&format!("http://{addr}/api/v1/baselines")).0, 200);
    assert_eq!(
        std::fs::read(dir.path().join("baselines/fraud-v1.json")).unwrap(),
        before
    );

    cancel.cancel();
    rt.block_on(daemon.wait()).unwrap();
}

/// With `http.metrics_listen`, /metrics and the probes are also served on an
/// address of their own, and only they: the API (and so capture and reload)
/// stays on `http.listen`, which can then stay on loopback.
#[test]
fn metrics_and_probes_listen_apart_from_the_api() {
    let kafka = Kafka::new(1, 1);
    let dir = tempfile::tempdir().unwrap();
    write_baselines(dir.path(), &baselines(5_000));
    let toml = config_toml(&kafka.brokers(), dir.path(), "apart", "127.0.0.1:0")
        .replace("[http]\n", "[http]\nmetrics_listen = \"127.0.0.1:0\"\n");
    let cfg = driftd::config::Config::from_toml(&toml, "test").unwrap_or_else(|e| panic!("{e}"));
    let d = Running::start(cfg);
    let probes = d
        .daemon()
        .metrics_addr
        .expect("metrics_listen gives a second address")
        .to_string();
    assert_ne!(probes, d.addr);
    wait_for(
        Duration::from_secs(30),
        "ready on the probes address",
        || (http_get(&format!("http://{probes}/readyz")).0 == 200).then_some(()),
    );
    let (code, body) = http_get(&format!("http://{probes}/metrics"));
    assert_eq!(code, 200);
    assert!(body.contains("driftd_build_info"), "{body}");
    assert_eq!(http_get(&format!("http://{probes}/livez")).0, 200);
    for path in ["/api/v1/status", "/api/v1/drift", "/api/v1/baselines"] {
        assert_eq!(http_get(&format!("http://{probes}{path}")).0, 404, "{path}");
    }
    let (code, _) = http_post(
        &format!("http://{probes}/api/v1/baselines/reload"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 404, "no admin action on the probes address");
    // The API address keeps everything.
    assert_eq!(http_get(&format!("http://{}/api/v1/status", d.addr)).0, 200);
    assert_eq!(http_get(&format!("http://{}/metrics", d.addr)).0, 200);
    d.stop();
}
