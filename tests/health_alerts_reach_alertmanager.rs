//! Service-health and experiment alerts, end to end: the real daemon reading
//! the real Kafka protocol (librdkafka's mock cluster) and posting to a real
//! Alertmanager (Debian's `prometheus-alertmanager`), all on loopback.
//!
//! Seeded traffic of `fraud-v1` and `recsys-v3` (arms `control` and
//! `variant`, the variant clicking 15% of feedback against the control's
//! 30%) is produced in two phases, timestamped in the last 50 seconds:
//!
//! 1. 30 s of normal traffic, so `fraud-v1` has thousands of requests and
//!    timing lines before the deploy. The `inference_ms` p99 limit is 1.5x
//!    the slowest model's p99 over these lines (as `driftd demo` computes it).
//! 2. once the daemon has consumed phase 1, 20 s in which `fraud-v2`
//!    replaces `fraud-v1` with 8% more errors and an `inference_ms` slow
//!    enough that its p99 clears the limit.
//!
//! Then, on driftd's /metrics and in Alertmanager's API v2:
//!
//! - `ErrorSpikeAfterDeploy` for `fraud-v2` against `fraud-v1` on the error
//!   rate (critical), with `driftd_error_rate` exactly the share of failed
//!   requests we produced;
//! - `LatencyP99High` for `fraud-v2` `inference_ms`, its window p99 above the
//!   limit;
//! - `ArmFeedbackDifference` for `recsys-v3`'s variant on `clicked_on_item`,
//!   with a p-value under 0.001;
//!
//! and not for what did not change: no `ErrorSpikeAfterDeploy` for
//! `recsys-v3` (never deployed) or `fraud-v1` (the old version), whose error
//! rate stays low, and `LatencyP99High` for `fraud-v2` only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::*;
use driftd::engine::decode::{Decoded, Decoder, RecordKind};
use driftd::lab::generate::{DeploySpec, GeneratorConfig};
use serde_json::Value;

/// How long any one condition may take (it takes a few seconds here).
const DEADLINE: Duration = Duration::from_secs(90);
const STAGE: &str = "inference_ms";
const PHASE1_LINES: usize = 30_000;
const PHASE2_LINES: usize = 20_000;

/// The seeded generator both phases share: the default models, arms and
/// line mix, with the variant clicking half as often as the control.
fn generator(stream_seed: u64) -> GeneratorConfig {
    let mut cfg = GeneratorConfig::default()
        .with_seed(42)
        .with_click_rates(0.30, 0.15);
    cfg.stream_seed = Some(stream_seed);
    cfg
}

/// Per model, the p99 of `stage` over the timing lines, decoded as driftd
/// decodes them (the exact sample quantile, nearest rank).
fn p99_by_model(lines: &[String], stage: &str) -> BTreeMap<String, f64> {
    let d = Decoder::new(Default::default());
    let mut by_model: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in lines {
        if let Decoded::Record(r) = d.decode(line.as_bytes()) {
            if r.kind != RecordKind::Timing {
                continue;
            }
            if let (Some(m), Some((_, v))) = (&r.model, r.stages.iter().find(|(k, _)| k == stage)) {
                by_model.entry(m.to_string()).or_default().push(*v);
            }
        }
    }
    by_model
        .into_iter()
        .map(|(m, mut v)| {
            v.sort_by(f64::total_cmp);
            let i = ((v.len() - 1) as f64 * 0.99).round() as usize;
            (m, v[i])
        })
        .collect()
}

/// Per model, (requests, errors) as driftd's health counts them: every
/// inference record (errors by level) and every ERROR record.
fn requests_by_model<'a>(
    lines: impl IntoIterator<Item = &'a String>,
) -> BTreeMap<String, (u64, u64)> {
    let d = Decoder::new(Default::default());
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in lines {
        match d.decode(line.as_bytes()) {
            Decoded::Event(e) => {
                let c = out.entry(e.model.to_string()).or_default();
                c.0 += 1;
                c.1 += u64::from(e.level.is_some_and(|l| l.is_error()));
            }
            Decoded::Record(r) if r.kind == RecordKind::Error => {
                if let Some(m) = &r.model {
                    let c = out.entry(m.to_string()).or_default();
                    c.0 += 1;
                    c.1 += 1;
                }
            }
            _ => {}
        }
    }
    out
}

/// The value of the one series of `name` whose labels include `want`.
fn series(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut hits = samples.iter().filter(|s| {
        s.name == name
            && want
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    });
    let first = hits.next()?;
    assert!(hits.next().is_none(), "more than one {name}{want:?}");
    Some(first.value)
}

/// The health and experiment series, one a line (what a failure shows).
fn health_series(samples: &[Sample]) -> String {
    samples
        .iter()
        .filter(|s| {
            [
                "driftd_health_state",
                "driftd_error_rate",
                "driftd_requests_total",
                "driftd_latency_seconds",
                "driftd_arm_",
            ]
            .iter()
            .any(|p| s.name.starts_with(p))
        })
        .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `config_toml` with `from` (present exactly once) replaced by `to`.
fn replace_once(toml: &str, from: &str, to: &str) -> String {
    assert_eq!(toml.matches(from).count(), 1, "{from:?} once in:\n{toml}");
    toml.replace(from, to)
}

/// The alerts whose labels include all of `want`.
fn labelled<'a>(alerts: &'a [Value], want: &[(&str, &str)]) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| want.iter().all(|(k, v)| a["labels"][*k] == *v))
        .collect()
}

/// The one alert with these labels, or why not.
fn one<'a>(alerts: &'a [Value], want: &[(&str, &str)]) -> Result<&'a Value, String> {
    match labelled(alerts, want).as_slice() {
        [a] => Ok(*a),
        other => Err(format!("{want:?}: {} alerts: {other:?}", other.len())),
    }
}

/// An alert's label names, sorted.
fn label_names(alert: &Value) -> Vec<String> {
    let names: BTreeSet<String> = alert["labels"]
        .as_object()
        .expect("labels object")
        .keys()
        .cloned()
        .collect();
    names.into_iter().collect()
}

#[test]
fn deploy_latency_and_arm_alerts_reach_alertmanager() {
    let began = Instant::now();
    let alertmanager = require_alertmanager();

    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    write_alertmanager_config(tmp);
    let am_port = free_port();
    let am = format!("127.0.0.1:{am_port}");
    let _am_proc = start_alertmanager(&alertmanager, tmp, am_port, "alertmanager");

    let kafka = Kafka::new(1, 2);
    write_baselines(tmp, &baselines(20_000));

    // ---- Traffic, made up front: deterministic lines, event times in the
    // last 50 s (the windows are event time, judged at the wall clock).
    let t0 = now_ms();
    let deploy_at = t0 - 20_000;
    let phase1 = lines(generator(1), PHASE1_LINES, t0 - 50_000, 1);
    assert_eq!(
        phase1.events.keys().collect::<Vec<_>>(),
        ["fraud-v1", "recsys-v3"]
    );
    let reference_p99 = p99_by_model(&phase1.lines, STAGE);
    assert_eq!(reference_p99.len(), 2, "{reference_p99:?}");
    let slowest = reference_p99.values().copied().fold(0.0, f64::max);
    // Whole microseconds, as the config carries it.
    let limit_us = (1.5 * slowest * 1000.0).round() as u64;
    let limit_ms = limit_us as f64 / 1000.0;
    // fraud-v2's p99 is then at least 2.5x the slowest reference p99, well
    // clear of the 1.5x limit whatever the sampling.
    let factor = (2.5 * slowest / reference_p99["fraud-v1"]).max(4.0);
    let phase2 = lines(
        generator(2).with_deploy(
            DeploySpec::new("fraud-v1", "fraud-v2", deploy_at)
                .with_extra_error_share(0.08)
                .with_latency_factor(factor),
        ),
        PHASE2_LINES,
        deploy_at,
        1,
    );
    assert_eq!(
        phase2.events.keys().collect::<Vec<_>>(),
        ["fraud-v2", "recsys-v3"]
    );
    let new_p99 = p99_by_model(&phase2.lines, STAGE)["fraud-v2"];
    assert!(
        new_p99 > 1.3 * limit_ms,
        "{new_p99} ms vs limit {limit_ms} ms"
    );
    // What driftd's health must count over the window (both phases).
    let counts = requests_by_model(phase1.lines.iter().chain(&phase2.lines));
    let (v1_requests, v1_errors) = counts["fraud-v1"];
    let (v2_requests, v2_errors) = counts["fraud-v2"];
    let (rec_requests, rec_errors) = counts["recsys-v3"];
    assert!(
        v1_requests >= 5 * 200 && v2_requests >= 5 * 200,
        "both sides of the deploy well above min_requests: {counts:?}"
    );
    let v1_rate = v1_errors as f64 / v1_requests as f64;
    let v2_rate = v2_errors as f64 / v2_requests as f64;
    let rec_rate = rec_errors as f64 / rec_requests as f64;
    assert!(v2_rate > 3.0 * v1_rate, "{counts:?}");
    eprintln!(
        "traffic made at {:?}: reference p99 {reference_p99:?} ms, limit {limit_ms} ms, \
         latency factor {factor:.2}, fraud-v2 p99 {new_p99:.1} ms; error rates fraud-v1 \
         {v1_rate:.4}, fraud-v2 {v2_rate:.4}, recsys-v3 {rec_rate:.4}",
        began.elapsed()
    );

    // ---- driftd: a 5 min window of 5 s panes (everything produced stays in
    // it however slow the machine), judged every second, two breaching
    // evaluations to fire; firing alerts re-sent every 2 s.
    let toml = config_toml(&kafka.brokers(), tmp, "health-e2e", "127.0.0.1:0");
    let toml = replace_once(&toml, "length = \"10m\"", "length = \"5m\"");
    let toml = replace_once(&toml, "pane = \"1s\"", "pane = \"5s\"");
    let toml = replace_once(&toml, "every = \"500ms\"", "every = \"1s\"\nfor = 2");
    let toml = toml
        + &format!(
            r#"
[health.p99_limit]
{STAGE} = "{limit_us}us"

[experiments]
control_arm = "control"
alpha = 0.001
min_predictions = 500

[alerts]
resend_interval = "2s"

[alerts.labels]
cluster = "health-e2e"

[[alerts.alertmanagers]]
url = "http://{am}"
timeout = "2s"
"#
        );
    let cfg = driftd::config::Config::from_toml(&toml, "health-e2e")
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let configured = cfg.engine.health.p99_limit_ms[STAGE];
    assert!((configured - limit_ms).abs() < 1e-6, "{configured} ms");
    let daemon = Running::start(cfg);
    let addr = daemon.addr.clone();
    // Phase 1 all consumed before fraud-v2's first line: the deploy check
    // freezes fraud-v1 as the reference when it first sees fraud-v2.
    produce_consumed(&kafka, &addr, &phase1.lines, DEADLINE);
    let s = scrape(&addr);
    assert_eq!(
        value(&s, "driftd_requests_total", &[("model", "fraud-v1")]),
        v1_requests as f64
    );
    assert_eq!(
        value(&s, "driftd_requests_total", &[("model", "fraud-v2")]),
        0.0
    );
    produce_consumed(&kafka, &addr, &phase2.lines, DEADLINE);
    assert_eq!(consumed(&addr), (PHASE1_LINES + PHASE2_LINES) as u64);
    eprintln!("both phases consumed at {:?}", began.elapsed());

    // ---- 1. /metrics: the three conditions firing, with their numbers.
    // driftd_health_state names the condition (its alert's name) in the
    // `condition` label, as the README and the shipped rules read it.
    let deploy_state = [
        ("model", "fraud-v2"),
        ("condition", "ErrorSpikeAfterDeploy"),
        ("feature", ""),
    ];
    let p99_state = [
        ("model", "fraud-v2"),
        ("condition", "LatencyP99High"),
        ("feature", STAGE),
    ];
    let clicks_p = [
        ("model", "recsys-v3"),
        ("arm_a", "control"),
        ("arm_b", "variant"),
        ("action", "clicked_on_item"),
    ];
    let s = eventually(DEADLINE, "the three conditions firing on /metrics", || {
        let s = scrape(&addr);
        let mut missing = Vec::new();
        for (name, want) in [("deploy", &deploy_state[..]), ("p99", &p99_state[..])] {
            let v = series(&s, "driftd_health_state", want);
            if v != Some(2.0) {
                missing.push(format!("{name} state {v:?}"));
            }
        }
        match series(&s, "driftd_arm_feedback_p_value", &clicks_p) {
            Some(p) if p < 0.001 => {}
            p => missing.push(format!("clicks p-value {p:?}")),
        }
        if missing.is_empty() {
            Ok(s)
        } else {
            Err(format!("{}\n{}", missing.join(", "), health_series(&s)))
        }
    });
    eprintln!("conditions firing on /metrics at {:?}", began.elapsed());

    // The window holds every request we produced: the error rates are
    // exactly ours.
    let rate = |model: &str| value(&s, "driftd_error_rate", &[("model", model)]);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(
        close(rate("fraud-v2"), v2_rate),
        "driftd_error_rate fraud-v2 {} vs produced {v2_rate}",
        rate("fraud-v2")
    );
    assert!(
        close(rate("recsys-v3"), rec_rate),
        "driftd_error_rate recsys-v3 {} vs produced {rec_rate}",
        rate("recsys-v3")
    );
    let p99_of = |model: &str| {
        value(
            &s,
            "driftd_latency_seconds",
            &[("model", model), ("stage", STAGE), ("percentile", "99")],
        )
    };
    let v2_p99 = p99_of("fraud-v2");
    assert!(
        v2_p99 > limit_ms / 1000.0,
        "fraud-v2 p99 {v2_p99} s, limit {limit_ms} ms"
    );
    // DDSketch (1% relative error) against the exact sample quantile.
    assert!(
        (v2_p99 * 1000.0 / new_p99 - 1.0).abs() < 0.1,
        "fraud-v2 p99: driftd {v2_p99} s, produced {new_p99} ms"
    );
    for model in ["fraud-v1", "recsys-v3"] {
        let p = p99_of(model);
        assert!(
            p > 0.0 && p < limit_ms / 1000.0,
            "{model} p99 {p} s, limit {limit_ms} ms"
        );
    }

    // ---- 2. Alertmanager: the same three alerts, with driftd's labels.
    let deploy_labels = [
        ("alertname", "ErrorSpikeAfterDeploy"),
        ("model", "fraud-v2"),
        ("signal", "error_rate"),
    ];
    let p99_labels = [
        ("alertname", "LatencyP99High"),
        ("model", "fraud-v2"),
        ("feature", STAGE),
    ];
    let arm_labels = [
        ("alertname", "ArmFeedbackDifference"),
        ("model", "recsys-v3"),
        ("arm", "variant"),
        ("feature", "clicked_on_item"),
    ];
    let alerts = eventually(DEADLINE, "the three alerts in Alertmanager", || {
        let alerts = am_alerts(&am).ok_or("Alertmanager does not answer")?;
        let ours: Vec<Value> = labelled(&alerts, &[("cluster", "health-e2e")])
            .into_iter()
            .cloned()
            .collect();
        let mut missing = Vec::new();
        for want in [&deploy_labels[..], &p99_labels[..], &arm_labels[..]] {
            if let Err(e) = one(&ours, want) {
                missing.push(e);
            }
        }
        if missing.is_empty() {
            Ok(ours)
        } else {
            Err(missing.join("; "))
        }
    });
    eprintln!("alerts in Alertmanager at {:?}", began.elapsed());

    let deploy = one(&alerts, &deploy_labels).unwrap();
    let l = &deploy["labels"];
    assert_eq!(l["previous_model"], "fraud-v1", "{deploy}");
    assert_eq!(l["severity"], "critical", "{deploy}");
    assert_eq!(l["metric"], "error_rate", "{deploy}");
    assert_eq!(l["service"], "ai_inference_service", "{deploy}");
    assert_eq!(
        label_names(deploy),
        [
            "alertname",
            "cluster",
            "metric",
            "model",
            "previous_model",
            "service",
            "severity",
            "signal"
        ],
        "the error-rate signal has no feature label: {deploy}"
    );
    let summary = deploy["annotations"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(
        summary.contains("fraud-v2") && summary.contains("fraud-v1"),
        "{deploy}"
    );

    let p99 = one(&alerts, &p99_labels).unwrap();
    let l = &p99["labels"];
    assert_eq!(l["metric"], "p99_ms", "{p99}");
    assert_eq!(l["severity"], "warning", "{p99}");
    assert_eq!(
        label_names(p99),
        [
            "alertname",
            "cluster",
            "feature",
            "metric",
            "model",
            "service",
            "severity"
        ],
        "{p99}"
    );

    let arm = one(&alerts, &arm_labels).unwrap();
    let l = &arm["labels"];
    assert_eq!(l["control_arm"], "control", "{arm}");
    assert_eq!(l["metric"], "feedback_rate_p_value", "{arm}");
    assert_eq!(l["severity"], "warning", "{arm}");
    assert_eq!(
        label_names(arm),
        [
            "alertname",
            "arm",
            "cluster",
            "control_arm",
            "feature",
            "metric",
            "model",
            "severity"
        ],
        "{arm}"
    );
    for a in [deploy, p99, arm] {
        assert_eq!(a["status"]["state"], "active", "{a}");
    }

    // ---- 3. What did not change raised nothing. Checked after the alerts
    // arrived, so every model went through the same evaluations.
    let s = scrape(&addr);
    for model in ["recsys-v3", "fraud-v1"] {
        let firing: Vec<&Sample> = s
            .iter()
            .filter(|x| {
                x.name == "driftd_health_state"
                    && x.labels["model"] == model
                    && x.labels["condition"] == "ErrorSpikeAfterDeploy"
                    && x.value != 0.0
            })
            .collect();
        assert!(firing.is_empty(), "{model} was never deployed: {firing:?}");
    }
    // The arms get feedback equally often; only what they click differs.
    let any_p = series(
        &s,
        "driftd_arm_feedback_p_value",
        &[
            ("model", "recsys-v3"),
            ("arm_a", "control"),
            ("arm_b", "variant"),
            ("action", "any"),
        ],
    );
    assert!(
        any_p.is_some_and(|p| p > 0.001),
        "any feedback: p {any_p:?}"
    );
    let rec = value(&s, "driftd_error_rate", &[("model", "recsys-v3")]);
    assert!(rec > 0.0 && rec < 0.05, "recsys-v3 error rate {rec}");
    let alerts = am_alerts(&am).expect("Alertmanager answers");
    let spikes: Vec<&Value> = labelled(&alerts, &[("alertname", "ErrorSpikeAfterDeploy")])
        .into_iter()
        .filter(|a| a["labels"]["model"] != "fraud-v2")
        .collect();
    assert!(spikes.is_empty(), "only fraud-v2 was deployed: {spikes:?}");
    let slow: Vec<&Value> = labelled(&alerts, &[("alertname", "LatencyP99High")])
        .into_iter()
        .filter(|a| a["labels"]["model"] != "fraud-v2")
        .collect();
    assert!(slow.is_empty(), "only fraud-v2 got slower: {slow:?}");
    let any: Vec<&Value> = labelled(
        &alerts,
        &[
            ("alertname", "ArmFeedbackDifference"),
            ("model", "recsys-v3"),
            ("feature", "any"),
        ],
    );
    assert!(any.is_empty(), "{any:?}");

    daemon.stop();
    eprintln!("done in {:?}", began.elapsed());
}
