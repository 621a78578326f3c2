//! `driftd demo` shows drift within a minute with nothing to install: the
//! injected drift turns a verdict to firing, printed as a line, and the
//! demo's /metrics (valid for promtool) has a firing state. The other
//! analyses show too: the bad deploy raises ErrorSpikeAfterDeploy (errors and
//! latency), its p99 raises LatencyP99High, and the arm with the lower
//! click-through a significant ArmFeedbackDifference. And quality: the
//! accuracy drop of recsys-v3 raises EstimatedAccuracyDrop from its
//! confidences, and AccuracyDrop once its labels (20 s late) come.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

/// Recognises one line the demo must print.
type LinePredicate = dyn Fn(&str) -> bool;

/// The demo binary, killed when dropped (also on a panic).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn injected_drift_fires_and_is_exported() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_driftd"))
        .args([
            "demo",
            "--no-table",
            "--duration",
            "75s",
            "--drift-after",
            "10s",
            "--deploy-after",
            "15s",
            "--rate",
            "2000",
            "--listen",
            &listen,
        ])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("driftd demo starts");
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let deadline = started + Duration::from_secs(70);
    let mut seen = Vec::new();
    // Every one of these must be printed as a line before the deadline.
    let wanted: [(&str, &LinePredicate); 7] = [
        ("f00_amount or f01_country firing", &|l: &str| {
            l.contains("-> firing") && (l.contains("f00_amount") || l.contains("f01_country"))
        }),
        ("ErrorSpikeAfterDeploy on errors", &|l: &str| {
            l.contains("ErrorSpikeAfterDeploy fraud-v2 -> firing") && l.contains("fraud-v1")
        }),
        ("ErrorSpikeAfterDeploy on inference latency", &|l: &str| {
            l.contains("ErrorSpikeAfterDeploy fraud-v2 inference_ms -> firing")
        }),
        ("LatencyP99High", &|l: &str| {
            l.contains("LatencyP99High fraud-v2 inference_ms -> firing")
        }),
        ("ArmFeedbackDifference on clicks", &|l: &str| {
            l.contains("ArmFeedbackDifference")
                && l.contains("arm variant clicked_on_item -> firing")
        }),
        ("EstimatedAccuracyDrop before the labels", &|l: &str| {
            l.contains(" EstimatedAccuracyDrop recsys-v3 -> firing")
        }),
        ("AccuracyDrop from the labels", &|l: &str| {
            l.contains(" AccuracyDrop recsys-v3 -> firing")
        }),
    ];
    let mut found: Vec<Option<String>> = vec![None; wanted.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                for (i, (_, hit)) in wanted.iter().enumerate() {
                    if found[i].is_none() && hit(&line) {
                        found[i] = Some(line.clone());
                    }
                }
                seen.push(line);
            }
            Err(e) => {
                let missing: Vec<&str> = wanted
                    .iter()
                    .zip(&found)
                    .filter(|(_, f)| f.is_none())
                    .map(|(w, _)| w.0)
                    .collect();
                if e == mpsc::RecvTimeoutError::Disconnected {
                    let status = demo.0.wait().unwrap();
                    panic!(
                        "the demo ended ({status}) before {missing:?}; it printed:\n{}",
                        seen.join("\n")
                    );
                }
                panic!(
                    "no {missing:?} within 70 s; the demo printed:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    let firing = found[0].clone().unwrap();
    eprintln!("{:?} after the start: {firing}", started.elapsed());
    assert!(
        seen.iter().any(|l| l.contains("embedded Kafka")),
        "{}",
        seen.join("\n")
    );
    // Drift starts 10 s in: nothing about these features fires before.
    let t: u64 = firing
        .trim_start_matches("t+")
        .split('s')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a t+Ns prefix: {firing}"));
    assert!((9..=60).contains(&t), "fired at t+{t}s: {firing}");

    let (status, text) = http_get(&format!("http://{listen}/metrics"));
    assert_eq!(status, 200, "{text}");
    promtool_check_metrics(&text);
    let s = parse_exposition(&text);
    let firing_series: Vec<&Sample> = s
        .iter()
        .filter(|x| x.name == "driftd_drift_state" && x.value == 2.0)
        .collect();
    assert!(
        firing_series.iter().any(|x| {
            let f = x.labels.get("feature").map(String::as_str);
            f == Some("f00_amount") || f == Some("f01_country")
        }),
        "no firing driftd_drift_state for f00_amount or f01_country: {firing_series:?}"
    );
    assert!(events_total(&s) > 0.0);
    // The health and experiment conditions are on /metrics too.
    let state = |alertname: &str, model: &str, feature: &str| {
        s.iter()
            .find(|x| {
                x.name == "driftd_health_state"
                    && x.labels.get("condition").map(String::as_str) == Some(alertname)
                    && x.labels.get("model").map(String::as_str) == Some(model)
                    && x.labels.get("feature").map(String::as_str) == Some(feature)
            })
            .map(|x| x.value)
    };
    assert_eq!(state("ErrorSpikeAfterDeploy", "fraud-v2", ""), Some(2.0));
    assert_eq!(
        state("LatencyP99High", "fraud-v2", "inference_ms"),
        Some(2.0)
    );
    let p: Vec<f64> = s
        .iter()
        .filter(|x| {
            x.name == "driftd_arm_feedback_p_value"
                && x.labels.get("action").map(String::as_str) == Some("clicked_on_item")
        })
        .map(|x| x.value)
        .collect();
    assert!(
        p.iter().any(|p| *p < 0.001),
        "click-through p-values: {p:?}"
    );
    drop(demo);
}
