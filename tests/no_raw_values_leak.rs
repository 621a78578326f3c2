//! Raw values never leave the daemon. Inference lines carry recognisable
//! canaries (request ids, user ids at the top level and as a denied feature,
//! e-mail addresses as a hashed feature, plan names as a plain categorical
//! feature), the real binary consumes them from Kafka until drift fires and
//! an alert reaches a webhook, and then every output is searched for them:
//! /metrics, the captured logs (at debug level), the webhook bodies, the
//! checkpoint files, the baseline file and the drift API.
//!
//! What is allowed, and why: a non-hashed categorical feature's baseline
//! categories are its bin labels. They are stored in the baseline file and
//! shown in `GET /api/v1/drift` (under that feature's `bins`) so that an
//! operator can see *which* category moved. That is the documented exception
//! and the only place a canary may appear: a category the baseline never saw
//! ("canary-plan-new") lands in `__other__` and is never named anywhere, and
//! hashed (`email`) and denied (`user_id`) values and request ids appear
//! nowhere at all, the drift API and the baseline file included.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

const MODEL: &str = "shop-v1";
/// The plan categories of the reference traffic (the baseline's bins).
const BASELINE_PLANS: [&str; 3] = [
    "canary-plan-gold",
    "canary-plan-silver",
    "canary-plan-bronze",
];
/// A plan the baseline never saw: must never be named anywhere.
const NEW_PLAN: &str = "canary-plan-new";

/// Substrings that no output may contain (except the baseline plan labels,
/// see the module comment). Every canary value starts with one of these.
const SECRETS: [&str; 4] = [
    "canary-req-5e21",
    "canary-user-91bd",
    "canary-email-7f3a",
    "@example.com",
];

/// One inference line. `drifted` switches most lines to a plan the baseline
/// never saw (and to e-mail addresses it never saw).
fn line(i: usize, t_ms: i64, drifted: bool) -> String {
    let plan = if drifted {
        if i % 5 == 0 {
            BASELINE_PLANS[0]
        } else {
            NEW_PLAN
        }
    } else {
        // gold 50%, silver 30%, bronze 20%
        match i % 10 {
            0..=4 => BASELINE_PLANS[0],
            5..=7 => BASELINE_PLANS[1],
            _ => BASELINE_PLANS[2],
        }
    };
    let email = if drifted {
        format!("canary-email-7f3a-new{i}@example.com")
    } else {
        format!("canary-email-7f3a-{}@example.com", i % 53)
    };
    let user = format!("canary-user-91bd-{}", i % 97);
    let amount = ((i * 7919) % 1000) as f64 / 10.0;
    let prediction = if (i * 31) % 7 < 3 { "buy" } else { "skip" };
    let confidence = 0.5 + ((i * 13) % 50) as f64 / 100.0;
    format!(
        r#"{{"timestamp": {t_ms}, "level": "INFO", "message": "Model inference completed", "request_id": "canary-req-5e21-{i:06}", "user_id": "{user}", "model_id": "{MODEL}", "prediction": "{prediction}", "confidence": {confidence}, "input_features": {{"email": "{email}", "user_id": "{user}", "plan": "{plan}", "amount": {amount}}}}}"#
    )
}

/// Lines that are not inference records but carry canaries all the same:
/// they are counted and skipped, and must not be echoed into the logs.
fn odd_lines() -> Vec<String> {
    vec![
        // Malformed (truncated) JSON.
        r#"{"model_id": "shop-v1", "request_id": "canary-req-5e21-bad", "input_features": {"email": "canary-email-7f3a-bad@example.com""#.to_owned(),
        // A feedback record: a request id and a user id, no model.
        r#"{"request_id": "canary-req-5e21-fb", "user_id": "canary-user-91bd-fb", "action": "click"}"#.to_owned(),
        // No model at all.
        r#"{"request_id": "canary-req-5e21-nomodel", "prediction": "buy", "input_features": {"plan": "canary-plan-new"}}"#.to_owned(),
        // A model id of the wrong type.
        r#"{"model_id": 7, "request_id": "canary-req-5e21-badmodel", "input_features": {"email": "canary-email-7f3a-x@example.com"}}"#.to_owned(),
        // Not an object.
        r#"["canary-req-5e21-array", "canary-user-91bd-array"]"#.to_owned(),
        // A non-finite amount (Python's json.dumps writes NaN bare).
        format!(
            r#"{{"model_id": "{MODEL}", "request_id": "canary-req-5e21-nan", "prediction": "buy", "input_features": {{"email": "canary-email-7f3a-nan@example.com", "plan": "canary-plan-new", "amount": NaN}}}}"#
        ),
    ]
}

/// Panics naming the first secret found in `text` (`what` says where).
fn assert_no_secrets(what: &str, text: &str, extra: &[&str]) {
    for needle in SECRETS.iter().chain(extra) {
        if let Some(at) = text.find(needle) {
            let from = text[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            let to = (at + needle.len() + 200).min(text.len());
            let to = (to..=text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            panic!("{needle:?} leaked into {what}:\n...{}...", &text[from..to]);
        }
    }
}

/// Every string (keys included) in a JSON document, with its path.
fn strings(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::String(s) => out.push((path.to_owned(), s.clone())),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                strings(x, &format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                out.push((format!("{path} (key)"), k.clone()));
                strings(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// All files under `dir`, recursively, as text (lossy).
fn files_text(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_text(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    out
}

#[test]
fn canaries_never_reach_metrics_logs_alerts_or_files() {
    let kafka = Kafka::new(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A webhook receiver that keeps every body as it came over the wire.
    let (hook_addr, hooks) = webhook_receiver(&rt);

    // The test configuration, at debug level (stricter: nothing may leak at
    // any level), with the privacy filter and a webhook.
    let listen = format!("127.0.0.1:{}", free_port());
    let toml = config_toml(&kafka.brokers(), dir.path(), "noleak", &listen)
        .replace("level = \"info\"", "level = \"debug\"")
        + &format!(
            r#"
[features]
hash = ["email"]
deny = ["user_id"]

[alerts]
resend_interval = "1s"

[alerts.webhook]
url = "http://{hook_addr}/hook"
"#
        );
    let config = dir.path().join("driftd.toml");
    std::fs::write(&config, &toml).unwrap();
    let baselines_dir = dir.path().join("baselines");

    // Baselines built by the binary, with the same config (so the same
    // filter: `email` hashed, `user_id` dropped) from a reference file.
    let reference = dir.path().join("reference.jsonl");
    let ref_lines: Vec<String> = (0..3000)
        .map(|i| line(i, 1_700_000_000_000 + i as i64 * 100, false))
        .collect();
    std::fs::write(&reference, ref_lines.join("\n") + "\n").unwrap();
    let built = driftd(&[
        "baseline",
        "build",
        "--config",
        path_str(&config),
        "--input",
        path_str(&reference),
        "--output",
        path_str(&baselines_dir),
        "--quiet",
    ]);
    assert!(built.status.success(), "baseline build: {}", stderr(&built));
    let build_output = format!("{}{}", stdout(&built), stderr(&built));
    assert_no_secrets("`driftd baseline build` output", &build_output, &[NEW_PLAN]);

    // The baseline file: `email` as hash buckets only, no `user_id`, no
    // request id; `plan` keeps its categories (the documented exception).
    let baseline_path = baselines_dir.join(format!("{MODEL}.json"));
    let baseline_text = std::fs::read_to_string(&baseline_path).unwrap();
    assert_no_secrets("the baseline file", &baseline_text, &[NEW_PLAN]);
    let baseline: serde_json::Value = serde_json::from_str(&baseline_text).unwrap();
    let features = baseline["features"].as_array().unwrap();
    let feature = |name: &str| features.iter().find(|f| f["name"] == name);
    let email = feature("email").expect("email is in the baseline");
    assert_eq!(
        email["kind"], "hashed",
        "email must be stored hashed: {email}"
    );
    assert!(
        email.get("categories").is_none(),
        "a hashed feature keeps no categories: {email}"
    );
    assert!(feature("user_id").is_none(), "user_id is denied");
    let plan = feature("plan").expect("plan is in the baseline");
    assert_eq!(plan["kind"], "categorical");
    let mut plan_categories: Vec<String> = plan["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    plan_categories.sort();
    let mut want: Vec<String> = BASELINE_PLANS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(plan_categories, want);
    assert_eq!(feature("amount").expect("amount")["kind"], "numeric");

    // The real binary, its stdout and stderr captured to files.
    let mut daemon = Proc::spawn(
        &["run", "--config", path_str(&config)],
        dir.path(),
        "driftd",
    );
    wait_ready(
        &mut daemon,
        &format!("http://{listen}/readyz"),
        Duration::from_secs(60),
    );

    // Normal traffic, then drifted traffic and lines that are no inference
    // records, all timestamped now.
    let t = now_ms();
    let mut live: Vec<String> = (0..1500).map(|i| line(i, t + i as i64, false)).collect();
    let t = now_ms();
    live.extend((0..3000).map(|i| line(100_000 + i, t + i as i64, true)));
    live.extend(odd_lines());
    kafka.produce(&live);

    // Drift fires (plan's unseen share, among others) and reaches the webhook.
    wait_for(
        Duration::from_secs(60),
        "a firing alert at the webhook",
        || {
            let hooks = hooks.lock().unwrap();
            hooks
                .iter()
                .any(|b| {
                    serde_json::from_str::<serde_json::Value>(b)
                        .is_ok_and(|v| v["to"] == "firing" && v["model"] == MODEL)
                })
                .then_some(())
        },
    );
    // Everything consumed and counted, so every line went through the engine.
    wait_for(Duration::from_secs(30), "every message counted", || {
        let s = scrape(&listen);
        (value(&s, "driftd_kafka_messages_total", &[]) as usize == live.len()).then_some(())
    });
    // Give the re-send interval (1 s) a chance to send more bodies.
    std::thread::sleep(Duration::from_millis(2500));

    // /metrics: no canary at all, not even the baseline plan labels.
    let (status, text) = http_get(&format!("http://{listen}/metrics"));
    assert_eq!(status, 200);
    let mut every_plan: Vec<&str> = BASELINE_PLANS.to_vec();
    every_plan.push(NEW_PLAN);
    every_plan.push("canary");
    assert_no_secrets("/metrics", &text, &every_plan);
    let metrics = parse_exposition(&text);
    // The hashed feature is tracked; the denied one has no series at all.
    let email_psi = [
        ("model", MODEL),
        ("arm", ""),
        ("feature", "email"),
        ("metric", "psi"),
    ];
    assert!(
        metrics.iter().any(|s| s.name == "driftd_feature_drift"
            && email_psi
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))),
        "driftd_feature_drift{{feature=\"email\"}} is missing:\n{text}"
    );
    let user_series: Vec<_> = metrics
        .iter()
        .filter(|s| s.labels.values().any(|v| v.contains("user_id")))
        .collect();
    assert!(
        user_series.is_empty(),
        "user_id is denied but has series: {user_series:?}"
    );
    // The drift is real: most of plan's window is a category the baseline
    // never saw.
    assert!(
        value(
            &metrics,
            "driftd_unseen_share",
            &[("model", MODEL), ("arm", ""), ("feature", "plan")]
        ) > 0.2
    );
    // The odd lines were counted (malformed, missing and invalid model, not
    // an object), not echoed.
    assert_eq!(value(&metrics, "driftd_events_rejected_total", &[]), 4.0);

    // The drift API: a canary may appear only as one of plan's baseline
    // categories, in plan's `bins`.
    // Every model's summary, then one model's detail (its bins and counts,
    // where baseline category labels are shown): neither may leak.
    // The summary names only the bins that moved (plan is firing); the
    // detail every bin.
    let (status, body) = http_get(&format!("http://{listen}/api/v1/drift"));
    assert_eq!(status, 200, "{body}");
    assert_no_secrets("GET /api/v1/drift", &body, &[NEW_PLAN]);
    let (bins, moved) = plan_labels("GET /api/v1/drift", &body);
    assert_eq!(bins, 0, "the summary has no bins: {body}");
    assert!(moved >= 1, "plan's moved bins are named: {body}");
    let (status, body) = http_get(&format!("http://{listen}/api/v1/drift?model=shop-v1"));
    assert_eq!(status, 200, "{body}");
    assert_no_secrets("GET /api/v1/drift?model=shop-v1", &body, &[NEW_PLAN]);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (bins, _) = plan_labels("GET /api/v1/drift?model=shop-v1", &body);
    assert_eq!(
        bins, 3,
        "plan's three baseline categories are its bin labels: {body}"
    );
    let email_bins = doc["models"][0]["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "email")
        .expect("email in the drift API");
    assert_eq!(email_bins["kind"], "hashed");
    assert!(
        doc["models"][0]["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"] != "user_id"),
        "user_id is denied: {body}"
    );
    // The drift page, in a real browser: the model's page puts what fires
    // first, draws the shares the API gives, shows a hashed feature's
    // buckets only, and names no raw value; the index lists the model as
    // firing.
    // The first view shows the scores and asks for the bars; the next
    // evaluation's snapshot has them.
    let (status, page) = http_get(&format!("http://{listen}/model/{MODEL}"));
    assert_eq!(status, 200, "{page}");
    assert_no_secrets("the model's first page", &page, &[NEW_PLAN]);
    wait_for(Duration::from_secs(30), "the page's bars", || {
        let (_, page) = http_get(&format!("http://{listen}/model/{MODEL}"));
        page.contains("<rect ").then_some(())
    });
    let r = chromium(
        &format!("http://{listen}/model/{MODEL}"),
        "daemon-model-page",
    );
    for bad in ["Uncaught", "Failed to load resource", "net::ERR_"] {
        assert!(!r.log.contains(bad), "{bad} on the page:\n{}", r.log);
    }
    assert_no_secrets("the model's page", &r.dom, &[NEW_PLAN]);
    let sections = elements(&r.dom, "section");
    let states: Vec<&str> = sections.iter().map(|s| s["data-state"].as_str()).collect();
    assert_eq!(states[0], "firing", "{states:?}");
    let order = |s: &str| u8::from(s != "firing") + u8::from(s == "ok");
    let main = &states[..states.len().min(5)];
    assert!(
        main.windows(2).all(|w| order(w[0]) <= order(w[1])),
        "{states:?}"
    );
    let rects = elements(&r.dom, "rect");
    let email: Vec<_> = rects
        .iter()
        .filter(|a| a["data-feature"] == "email" && a["data-window"].is_empty())
        .collect();
    assert!(!email.is_empty(), "email's buckets are drawn");
    assert!(
        email
            .iter()
            .all(|a| a["data-bin"].starts_with('#') || a["data-bin"] == "__missing__"),
        "a hashed feature shows buckets only"
    );
    let plan = doc["models"][0]["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "plan")
        .unwrap();
    let counts: Vec<f64> = plan["window_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let total: f64 = counts.iter().sum();
    let drawn: Vec<f64> = rects
        .iter()
        .filter(|a| a["data-feature"] == "plan" && a["data-window"].is_empty())
        .filter(|a| a["class"].starts_with("window"))
        .take(counts.len())
        .map(|a| a["data-share"].parse().unwrap())
        .collect();
    assert_eq!(drawn.len(), counts.len());
    for (d, c) in drawn.iter().zip(&counts) {
        // The page is drawn a moment after the API answered: a few more
        // lines may have been counted, not a different distribution.
        assert!(
            (d - c / total).abs() < 0.02,
            "plan share {d} vs {}",
            c / total
        );
    }
    let index = chromium(&format!("http://{listen}/?q=shop"), "daemon-index");
    let rows: Vec<_> = elements(&index.dom, "tr")
        .into_iter()
        .filter(|a| a.get("data-model").is_some())
        .collect();
    assert_eq!(rows.len(), 1, "{}", index.dom);
    assert_eq!(rows[0]["data-model"], MODEL);
    assert!(
        index.dom.contains("class=\"firing\">firing<"),
        "{}",
        index.dom
    );
    assert_no_secrets("the index page", &index.dom, &every_plan);

    let (status, body) = http_get(&format!("http://{listen}/api/v1/baselines"));
    assert_eq!(status, 200);
    assert_no_secrets("GET /api/v1/baselines", &body, &every_plan);

    // The webhook bodies: names, scores and counts only.
    let bodies = hooks.lock().unwrap().clone();
    assert!(!bodies.is_empty());
    for b in &bodies {
        assert_no_secrets("a webhook body", b, &every_plan);
    }

    // A clean stop, so the logs are complete; then the logs and the
    // checkpoint files.
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("driftd exits on SIGTERM");
    assert!(status.success(), "driftd exited with {status}");
    let logs = daemon.output();
    assert!(
        logs.contains("drift verdict changed"),
        "the transitions are logged: {logs}"
    );
    assert_no_secrets("the daemon's logs", &logs, &every_plan);
    let checkpoints = files_text(&dir.path().join("state"));
    assert!(!checkpoints.is_empty(), "a checkpoint was written");
    for (path, text) in &checkpoints {
        assert_no_secrets(path, text, &every_plan);
    }
    // The baseline directory still holds only the built file, unchanged.
    let after = files_text(&baselines_dir);
    assert_eq!(
        after.len(),
        1,
        "{:?}",
        after.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(after[0].1, baseline_text);
}

/// Where a canary appears in a drift API answer: only as one of plan's
/// baseline categories, as a bin label (`bins`) or a moved bin's name
/// (`moved[].bin`) of the feature `plan`. Returns how many of each.
fn plan_labels(what: &str, body: &str) -> (usize, usize) {
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    let mut found = Vec::new();
    strings(&doc, "", &mut found);
    let (mut bins, mut moved) = (0, 0);
    for (path, s) in &found {
        if !s.contains("canary") {
            continue;
        }
        let container = ["].bins[", "].moved["]
            .into_iter()
            .find(|c| path.contains(c));
        let allowed = BASELINE_PLANS.contains(&s.as_str())
            && path.starts_with(".models[0].features[")
            && container.is_some_and(|c| {
                // The feature that holds this bin is `plan`.
                let feat = &path[..path.find(c).unwrap() + 1];
                found
                    .iter()
                    .any(|(p, v)| *p == format!("{feat}.name") && v == "plan")
            });
        assert!(allowed, "{s:?} at {path} in {what}: {body}");
        match container {
            Some("].bins[") => bins += 1,
            _ => moved += 1,
        }
    }
    (bins, moved)
}
