//! End to end against the real Prometheus and Alertmanager (Debian's
//! `prometheus` and `prometheus-alertmanager` packages), all on loopback:
//!
//! 1. Prometheus scrapes driftd's /metrics: the drift gauges it stores have
//!    driftd's labels and values, and the window sizes are the event counts
//!    we produced.
//! 2. Drift fed through Kafka becomes a FeatureDrift alert in Alertmanager's
//!    API v2 with driftd's labels, the static labels of the config,
//!    annotations and a generatorURL that answers; when the drift ends (the
//!    20 s window fills with normal traffic) the alert is resolved.
//! 3. With Alertmanager down, a new drift fires, sends fail and are counted,
//!    driftd stays alive; Alertmanager back on the same port and storage
//!    gets the firing alert from driftd's re-sends, and
//!    `driftd_alerts_firing` agrees with what Alertmanager holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use driftd::lab::generate::{standard_drifts, GeneratorConfig};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

/// [`crate::common::eventually`] with this test's deadline.
fn eventually<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    crate::common::eventually(DEADLINE, what, f)
}

// ---------------------------------------------------------------------------
// Prometheus' HTTP API.

/// One series of an instant query: labels (`__name__` removed) and value.
#[derive(Debug)]
struct PromSample {
    labels: BTreeMap<String, String>,
    value: f64,
}

fn prom_query(prom: &str, q: &str) -> Result<Vec<PromSample>, String> {
    let (status, body) = http_get(&format!(
        "http://{prom}/api/v1/query?query={}",
        driftd::daemon::alert::urlencode(q)
    ));
    if status != 200 {
        return Err(format!("query {q}: {status} {body}"));
    }
    let doc: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    assert_eq!(doc["status"], "success", "{body}");
    assert_eq!(doc["data"]["resultType"], "vector", "{body}");
    let out = doc["data"]["result"]
        .as_array()
        .expect("result array")
        .iter()
        .map(|r| {
            let mut labels: BTreeMap<String, String> =
                serde_json::from_value(r["metric"].clone()).expect("label map");
            labels.remove("__name__");
            let value = r["value"][1]
                .as_str()
                .expect("value as string")
                .parse()
                .expect("numeric value");
            PromSample { labels, value }
        })
        .collect();
    Ok(out)
}

/// Every series of `name` that driftd serves is in Prometheus (job and
/// instance added, `arm=""` stored as no arm label) with the same value, and
/// Prometheus has no other. Returns how many.
fn prom_agrees_with_driftd(prom: &str, addr: &str, name: &str) -> Result<usize, String> {
    let ours: Vec<Sample> = scrape(addr)
        .into_iter()
        .filter(|s| s.name == name)
        .collect();
    let theirs = prom_query(prom, &format!("{name}{{job=\"driftd\"}}"))?;
    if ours.is_empty() {
        return Err(format!("driftd serves no {name}"));
    }
    if ours.len() != theirs.len() {
        return Err(format!(
            "{name}: driftd serves {} series, Prometheus has {}",
            ours.len(),
            theirs.len()
        ));
    }
    for s in &ours {
        let mut want: BTreeMap<String, String> = s
            .labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        want.insert("job".into(), "driftd".into());
        want.insert("instance".into(), addr.into());
        let Some(p) = theirs.iter().find(|p| p.labels == want) else {
            return Err(format!("{name}{want:?} is not in Prometheus"));
        };
        let same = p.value == s.value || (p.value - s.value).abs() <= 1e-12 * s.value.abs();
        if !same {
            return Err(format!(
                "{name}{want:?}: Prometheus has {}, driftd serves {}",
                p.value, s.value
            ));
        }
    }
    Ok(ours.len())
}

// ---------------------------------------------------------------------------
// Alertmanager's API v2.

/// The whole-model (no arm label) alerts with these labels.
fn whole_model<'a>(alerts: &'a [Value], want: &[(&str, &str)]) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| {
            let l = &a["labels"];
            l.get("arm").is_none() && want.iter().all(|(k, v)| l[*k] == *v)
        })
        .collect()
}

/// An RFC 3339 time of Alertmanager's JSON.
fn time_of(v: &Value) -> SystemTime {
    let s = v.as_str().expect("a time string");
    humantime::parse_rfc3339_weak(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A counter of Alertmanager's own /metrics.
fn am_counter(am: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    let (status, body) = http_get(&format!("http://{am}/metrics"));
    assert_eq!(status, 200, "Alertmanager /metrics: {body}");
    value(&parse_exposition(&body), name, want)
}

// ---------------------------------------------------------------------------
// Traffic: generated lines, timestamped now, produced in the background.

const NORMAL: u8 = 0;
const FRAUD_DRIFT: u8 = 1;
const RECSYS_DRIFT: u8 = 2;

/// A thread producing a batch every 100 ms: 30 normal lines (about 250
/// events/s, so a 20 s window holds a few thousand), or 300 lines with the
/// standard drifts of one model, so drift soon dominates the window.
struct Traffic {
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(brokers: String, partitions: i32) -> Traffic {
        let mode = Arc::new(AtomicU8::new(NORMAL));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "2")
                .set("message.timeout.ms", "30000")
                .create()
                .expect("producer");
            let mut batch = 0u64;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let t = now_ms();
                let mut cfg = GeneratorConfig::default().with_seed(42);
                // Fresh lines from the same models every batch.
                cfg.stream_seed = Some(1_000 + batch);
                let (n, drifted) = match m.load(Ordering::Relaxed) {
                    FRAUD_DRIFT => (300, Some("fraud-v1")),
                    RECSYS_DRIFT => (300, Some("recsys-v3")),
                    _ => (30, None),
                };
                if let Some(model) = drifted {
                    cfg.drifts = standard_drifts(t)
                        .into_iter()
                        .filter(|d| d.model.as_deref() == Some(model))
                        .collect();
                }
                send_round_robin(&p, partitions, &lines(cfg, n, t, 1).lines);
                p.flush(Duration::from_secs(30))
                    .expect("background traffic acknowledged");
                batch += 1;
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        });
        Traffic {
            mode,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the traffic thread did not panic");
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------

#[test]
fn prometheus_scrapes_and_alertmanager_gets_fired_resolved_and_resent_alerts() {
    let began = Instant::now();
    let prometheus = require_binary("prometheus", "prometheus");
    let alertmanager = require_alertmanager();

    let kafka = Kafka::new(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    write_baselines(tmp, &baselines(20_000));

    // Alertmanager: one route, groups flushed after 1 s, a receiver nobody
    // listens on (failed notifications are fine: we read its API).
    let am_port = free_port();
    let am = format!("127.0.0.1:{am_port}");
    write_alertmanager_config(tmp);
    let mut am_proc = start_alertmanager(&alertmanager, tmp, am_port, "alertmanager");

    // driftd: a 20 s window of 1 s panes judged every 500 ms, so drift can
    // end within the test; firing alerts re-sent every second. A real port
    // (not 0), so the default external_url, and with it generatorURL, is
    // where the daemon listens.
    let addr = format!("127.0.0.1:{}", free_port());
    let toml = config_toml(&kafka.brokers(), tmp, "e2e", &addr);
    assert!(toml.contains("length = \"10m\""), "{toml}");
    let toml = toml.replace("length = \"10m\"", "length = \"20s\"")
        + &format!(
            r#"
[alerts]
resend_interval = "1s"

[alerts.labels]
cluster = "e2e"
service = "driftd-e2e"

[[alerts.alertmanagers]]
url = "http://{am}"
timeout = "2s"
"#
        );
    let cfg = driftd::config::Config::from_toml(&toml, "e2e").unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = CancellationToken::new();
    let daemon = rt
        .block_on(driftd::daemon::app::start(cfg, cancel.clone()))
        .unwrap();
    assert_eq!(daemon.addr.to_string(), addr);

    // Prometheus: scrape driftd every second. The shipped rules go in too
    // when they are there and valid (another test owns their checks).
    let prom_port = free_port();
    let prom = format!("127.0.0.1:{prom_port}");
    let rules = root().join("config/prometheus/driftd-rules.yml");
    let rules_ok = rules.exists()
        && std::process::Command::new(require_binary("promtool", "prometheus"))
            .args(["check", "rules", path_str(&rules)])
            .output()
            .is_ok_and(|o| o.status.success());
    if !rules_ok {
        eprintln!(
            "note: {} missing or not valid; Prometheus runs without rules",
            rules.display()
        );
    }
    let rule_files = if rules_ok {
        format!("rule_files:\n  - {}\n", rules.display())
    } else {
        String::new()
    };
    std::fs::write(
        tmp.join("prometheus.yml"),
        format!(
            r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
{rule_files}
scrape_configs:
  - job_name: driftd
    static_configs:
      - targets: ["{addr}"]
"#
        ),
    )
    .unwrap();
    let prom_args = [
        format!("--config.file={}", tmp.join("prometheus.yml").display()),
        format!(
            "--storage.tsdb.path={}",
            tmp.join("prometheus-data").display()
        ),
        format!("--web.listen-address={prom}"),
    ];
    let prom_args: Vec<&str> = prom_args.iter().map(String::as_str).collect();
    let mut prom_proc = Proc::spawn_program(&prometheus, &prom_args, tmp, "prometheus");
    wait_ready(&mut prom_proc, &format!("http://{prom}/-/ready"), DEADLINE);

    // ---- 1. Prometheus stores driftd's gauges, labels and values intact.
    let up = eventually("up{job=\"driftd\"} == 1", || {
        let r = prom_query(&prom, "up{job=\"driftd\"}")?;
        match r.as_slice() {
            [s] if s.value == 1.0 => Ok(s.labels.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(up["instance"], addr);

    let mut normal_cfg = GeneratorConfig::default().with_seed(42);
    normal_cfg.stream_seed = Some(1);
    let normal = lines(normal_cfg, 3000, now_ms(), 1);
    kafka.produce(&normal.lines);
    let expected: u64 = normal.events.values().sum();
    wait_for(DEADLINE, "driftd counted every event", || {
        (events_total(&scrape(&addr)) as u64 == expected).then_some(())
    });
    // The window holds these events for 20 s: Prometheus sees them after
    // its next scrape of a finished evaluation.
    eventually("Prometheus' window sizes are the events produced", || {
        let r = prom_query(&prom, "driftd_window_samples{job=\"driftd\"}")?;
        for (model, n) in &normal.events {
            let whole: Vec<&PromSample> = r
                .iter()
                .filter(|s| s.labels["model"] == *model && !s.labels.contains_key("arm"))
                .collect();
            match whole.as_slice() {
                [s] if s.value == *n as f64 => {}
                other => return Err(format!("{model}: want {n}, have {other:?}")),
            }
            let arms: f64 = r
                .iter()
                .filter(|s| s.labels["model"] == *model && s.labels.contains_key("arm"))
                .map(|s| s.value)
                .sum();
            if arms != *n as f64 {
                return Err(format!("{model}: arms sum to {arms}, want {n}"));
            }
        }
        Ok(())
    });
    for name in [
        "driftd_window_samples",
        "driftd_feature_drift",
        "driftd_drift_state",
    ] {
        let n = eventually(&format!("Prometheus' {name} equal driftd's"), || {
            prom_agrees_with_driftd(&prom, &addr, name)
        });
        assert!(n >= 2, "{name}: {n} series");
    }
    let psi = prom_query(
        &prom,
        r#"driftd_feature_drift{job="driftd",model="fraud-v1",arm="",feature="f00_amount",metric="psi"}"#,
    )
    .unwrap();
    assert_eq!(psi.len(), 1, "{psi:?}");
    let l = &psi[0].labels;
    let keys: Vec<&str> = l.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["feature", "instance", "job", "metric", "model"],
        "{l:?}"
    );
    assert!(psi[0].value < 0.1, "no drift yet: {psi:?}");
    let state = prom_query(
        &prom,
        r#"driftd_drift_state{job="driftd",model="fraud-v1",arm="",feature="f00_amount",metric="psi"}"#,
    )
    .unwrap();
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!(state[0].value, 0.0, "not firing before the drift");
    if rules_ok {
        let (status, body) = http_get(&format!("http://{prom}/api/v1/rules"));
        assert_eq!(status, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        let groups = doc["data"]["groups"].as_array().unwrap();
        assert!(!groups.is_empty(), "driftd-rules.yml loaded: {body}");
    }
    eprintln!("phase 1 done at {:?}", began.elapsed());

    // ---- 2. Drift fires an alert in Alertmanager; its end resolves it.
    let traffic = Traffic::start(kafka.brokers(), kafka.partitions);
    traffic.set(FRAUD_DRIFT);
    let amount = [
        ("alertname", "FeatureDrift"),
        ("model", "fraud-v1"),
        ("feature", "f00_amount"),
        ("metric", "psi"),
    ];
    let alert = eventually("the FeatureDrift alert in Alertmanager", || {
        let alerts = am_alerts(&am).ok_or("Alertmanager does not answer")?;
        match whole_model(&alerts, &amount).as_slice() {
            [a] => Ok((*a).clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let labels = &alert["labels"];
    let severity = labels["severity"].as_str().unwrap().to_owned();
    assert!(
        ["warning", "critical"].contains(&severity.as_str()),
        "{alert}"
    );
    assert_eq!(labels["cluster"], "e2e", "{alert}");
    assert_eq!(labels["service"], "driftd-e2e", "{alert}");
    let mut names: Vec<&str> = labels
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "alertname",
            "cluster",
            "feature",
            "metric",
            "model",
            "service",
            "severity"
        ],
        "only driftd's labels and the configured ones: {alert}"
    );
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["receivers"][0]["name"], "nowhere", "{alert}");
    // A firing alert holds for 4 x max(evaluation.every, resend_interval)
    // = 4 s past each send, so a lost send or two never resolves it.
    let ends = time_of(&alert["endsAt"]);
    assert!(time_of(&alert["startsAt"]) < ends, "{alert}");
    let now = SystemTime::now();
    assert!(
        ends > now - Duration::from_secs(1) && ends <= now + Duration::from_secs(5),
        "endsAt about 4 s ahead: {alert}"
    );
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("fraud-v1") && summary.contains("f00_amount") && summary.contains("psi"),
        "{summary}"
    );
    let description = alert["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("fraud-v1") && description.contains("baseline"),
        "{description}"
    );
    // generatorURL opens the model's page, which shows the feature firing
    // and the bins that moved, as the annotation names them.
    let generator = alert["generatorURL"].as_str().unwrap();
    assert_eq!(generator, format!("http://{addr}/model/fraud-v1"));
    let (status, body) = http_get(generator);
    assert_eq!(status, 200, "the generatorURL answers: {body}");
    assert!(body.contains("<h2>fraud-v1</h2>"), "{body}");
    let feature = alert["labels"]["feature"].as_str().unwrap();
    assert!(
        body.contains(&format!("data-feature=\"{feature}\" data-state=\"firing\"")),
        "{feature} firing on the page: {body}"
    );
    let moved = alert["annotations"]["moved"].as_str().unwrap();
    assert!(moved.starts_with(feature), "{moved}");
    assert!(body.contains("moved most: "), "{body}");
    let (status, body) = http_get(&format!("http://{addr}/api/v1/drift?model=fraud-v1"));
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["models"][0]["model"], "fraud-v1");
    // driftd agrees: the verdict is firing and counted under its severity.
    let s = scrape(&addr);
    let amount_state = [
        ("model", "fraud-v1"),
        ("arm", ""),
        ("feature", "f00_amount"),
        ("metric", "psi"),
    ];
    assert_eq!(value(&s, "driftd_drift_state", &amount_state), 2.0);
    // Under a severity, not necessarily the one Alertmanager got: the drift
    // may have moved between warning and critical since.
    assert!(
        ["warning", "critical"].iter().any(|sev| value(
            &s,
            "driftd_alerts_firing",
            &[("severity", sev)]
        ) >= 1.0),
        "driftd holds the alert as firing (Alertmanager got it as {severity})"
    );
    assert!(
        value(
            &s,
            "driftd_alerts_sent_total",
            &[("sink", "alertmanager"), ("outcome", "success")]
        ) >= 1.0
    );
    eprintln!(
        "phase 2: {severity} alert in Alertmanager at {:?}",
        began.elapsed()
    );

    // Normal traffic again: after one window the drift is gone, driftd
    // resolves and sends endsAt = now. Alertmanager 0.25 then lists the
    // alert no more (GET /api/v2/alerts leaves out every alert whose endsAt
    // has passed, whatever the active/silenced/inhibited filters), and
    // counts a resolved alert received.
    traffic.set(NORMAL);
    eventually("the FeatureDrift alert resolved in Alertmanager", || {
        let alerts = am_alerts(&am).ok_or("Alertmanager does not answer")?;
        let left = whole_model(&alerts, &amount);
        if !left.is_empty() {
            return Err(format!("still listed: {left:?}"));
        }
        Ok(())
    });
    // It went because driftd resolved it, not because re-sends stopped.
    let s = scrape(&addr);
    assert_eq!(value(&s, "driftd_drift_state", &amount_state), 0.0);
    assert!(
        value(
            &s,
            "driftd_verdict_transitions_total",
            &[("to", "resolved")]
        ) >= 1.0
    );
    assert!(
        am_counter(
            &am,
            "alertmanager_alerts_received_total",
            &[("status", "resolved")]
        ) >= 1.0
    );
    eprintln!("phase 2: resolved at {:?}", began.elapsed());

    // ---- 3. Alertmanager down: sends fail, driftd carries on; back up, it
    // gets the alert that fired meanwhile.
    am_proc.kill();
    assert_ne!(http_get(&format!("http://{am}/-/ready")).0, 200);
    let errors = |s: &[Sample]| {
        value(
            s,
            "driftd_alerts_sent_total",
            &[("sink", "alertmanager"), ("outcome", "error")],
        )
    };
    let before = errors(&scrape(&addr));
    traffic.set(RECSYS_DRIFT);
    let country_state = [
        ("model", "recsys-v3"),
        ("arm", ""),
        ("feature", "f01_country"),
        ("metric", "psi"),
    ];
    let failed = eventually("recsys-v3 firing and its sends failing", || {
        let s = scrape(&addr);
        let firing = value(&s, "driftd_drift_state", &country_state) == 2.0;
        let e = errors(&s);
        if firing && e > before {
            Ok(e)
        } else {
            Err(format!("firing: {firing}, errors {before} -> {e}"))
        }
    });
    // And they keep being retried while it is down.
    eventually("more failed sends", || {
        let e = errors(&scrape(&addr));
        if e > failed {
            Ok(())
        } else {
            Err(format!("errors still {e}"))
        }
    });
    let (live, body) = http_get(&format!("http://{addr}/livez"));
    assert_eq!(live, 200, "driftd alive with Alertmanager down: {body}");
    eprintln!(
        "phase 3: Alertmanager down, sends failing at {:?}",
        began.elapsed()
    );

    drop(am_proc);
    let restarted = SystemTime::now();
    let _am_proc = start_alertmanager(&alertmanager, tmp, am_port, "alertmanager-again");
    let country = [
        ("alertname", "FeatureDrift"),
        ("model", "recsys-v3"),
        ("feature", "f01_country"),
        ("metric", "psi"),
    ];
    let alert = eventually("the recsys-v3 alert re-sent to Alertmanager", || {
        let alerts = am_alerts(&am).ok_or("Alertmanager does not answer")?;
        match whole_model(&alerts, &country).as_slice() {
            [a] => Ok((*a).clone()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["labels"]["cluster"], "e2e", "{alert}");
    // It fired while Alertmanager was down (the restarted one persists
    // silences and its notification log, not alerts): the re-send carried it.
    assert!(
        time_of(&alert["startsAt"]) < restarted,
        "startsAt before the restart: {alert}"
    );
    let severity = alert["labels"]["severity"].as_str().unwrap().to_owned();
    assert!(
        ["warning", "critical"].contains(&severity.as_str()),
        "{alert}"
    );
    assert_eq!(
        alert["generatorURL"],
        format!("http://{addr}/model/recsys-v3")
    );
    // driftd_alerts_firing is what Alertmanager holds from driftd, by
    // severity (per-arm and other alerts included).
    eventually(
        "driftd_alerts_firing equal to Alertmanager's alerts",
        || {
            let alerts = am_alerts(&am).ok_or("Alertmanager does not answer")?;
            let s = scrape(&addr);
            let mut mismatch = Vec::new();
            for sev in ["warning", "critical"] {
                let held = alerts
                    .iter()
                    .filter(|a| a["labels"]["cluster"] == "e2e" && a["labels"]["severity"] == sev)
                    .count() as f64;
                let firing = value(&s, "driftd_alerts_firing", &[("severity", sev)]);
                if held != firing {
                    mismatch.push(format!("{sev}: driftd {firing}, Alertmanager {held}"));
                }
            }
            if mismatch.is_empty() {
                Ok(())
            } else {
                Err(mismatch.join(", "))
            }
        },
    );
    let s = scrape(&addr);
    // Under a severity, not necessarily the one Alertmanager got: the drift
    // may have moved between warning and critical since.
    assert!(
        ["warning", "critical"].iter().any(|sev| value(
            &s,
            "driftd_alerts_firing",
            &[("severity", sev)]
        ) >= 1.0),
        "driftd holds the alert as firing (Alertmanager got it as {severity})"
    );
    assert_eq!(value(&s, "driftd_drift_state", &country_state), 2.0);
    // Prometheus saw the outage too.
    eventually("Prometheus has the failed sends", || {
        let r = prom_query(
            &prom,
            r#"driftd_alerts_sent_total{job="driftd",sink="alertmanager",outcome="error"}"#,
        )?;
        match r.as_slice() {
            [s] if s.value > 0.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!(
        "phase 3: alert re-sent after the outage at {:?}",
        began.elapsed()
    );

    traffic.finish();
    cancel.cancel();
    rt.block_on(daemon.wait()).unwrap();
    eprintln!("done in {:?}", began.elapsed());
}
