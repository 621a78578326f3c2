//! `driftd demo` shows drift within a minute with nothing to install: the
//! injected drift turns a verdict to firing, printed as a line, and the
//! demo's /metrics (valid for promtool) has a firing state.

mod common;

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

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
    let firing = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains("-> firing")
                    && (line.contains("f00_amount") || line.contains("f01_country"));
                seen.push(line);
                if hit {
                    break seen.last().unwrap().clone();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "no f00_amount or f01_country firing within 70 s; the demo printed:\n{}",
                    seen.join("\n")
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = demo.0.wait().unwrap();
                panic!(
                    "the demo ended ({status}) before any drift fired; it printed:\n{}",
                    seen.join("\n")
                )
            }
        }
    };
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
    drop(demo);
}
