//! `driftd replay --html` writes one self-contained file that a real
//! browser (Debian's headless Chromium) opens from disk with the network
//! unreachable: what drifted comes first, every bar is the share the JSON
//! report gives, nothing fails to load.

use crate::common::*;

/// The shares of a count vector.
fn shares(counts: &[serde_json::Value]) -> Vec<f64> {
    let c: Vec<f64> = counts.iter().map(|v| v.as_f64().unwrap()).collect();
    let total: f64 = c.iter().sum::<f64>().max(1.0);
    c.iter().map(|x| x / total).collect()
}

#[test]
fn the_html_report_shows_what_moved_first_and_draws_the_shares_the_json_gives() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let baselines = samples().join("baselines");
    let input = samples().join("drifted.jsonl");
    let o = driftd(&[
        "replay",
        "--baselines",
        path_str(&baselines),
        "--input",
        path_str(&input),
        "--format",
        "json",
        "--html",
        path_str(&html),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let text = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing to fetch.
    for needle in ["http://", "https://", "<script src", "<link "] {
        assert!(!text.contains(needle), "the report refers to {needle}");
    }

    let r = chromium(&format!("file://{}", html.display()), "replay-report");
    for bad in ["Uncaught", "Failed to load resource", "net::ERR_"] {
        assert!(
            !r.log.contains(bad),
            "{bad} while loading the report:\n{}",
            r.log
        );
    }

    // The index puts a model with firing distributions first, and the first
    // distribution drawn is a firing one.
    let rows = elements(&r.dom, "tr");
    let first_model = rows
        .iter()
        .find_map(|a| {
            (a.get("class").map(String::as_str) == Some("model")).then(|| a["data-model"].clone())
        })
        .expect("an index row per model");
    let drifted: Vec<&str> = doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["state"] == "firing")
        })
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert!(
        drifted.contains(&first_model.as_str()),
        "{first_model} first, drifted: {drifted:?}"
    );
    let sections = elements(&r.dom, "section");
    assert_eq!(sections[0]["data-state"], "firing", "{:?}", sections[0]);
    // Within each model's window, firing before pending before ok.
    let rank = |s: &str| match s {
        "firing" => 0,
        "pending" => 1,
        _ => 2,
    };
    let first = doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == first_model.as_str())
        .unwrap();
    let n_all = first["features"].as_array().unwrap().len()
        + usize::from(first["prediction"].is_object())
        + usize::from(first["confidence"].is_object());
    let firsts: Vec<u8> = sections
        .iter()
        .take(n_all)
        .map(|s| rank(&s["data-state"]))
        .collect();
    assert!(firsts.windows(2).all(|w| w[0] <= w[1]), "{firsts:?}");

    // Every bar of every model's window is the share the JSON gives, and
    // its height is that share on the chart's scale (120 px for the
    // largest share of the distribution).
    let rects = elements(&r.dom, "rect");
    let mut checked = 0;
    // The first model drawn: its window's bars come first for each name.
    let m = first;
    let model_rects: Vec<_> = rects
        .iter()
        .filter(|a| a["data-window"].is_empty())
        .collect();
    let w = m;
    let dists = w["features"].as_array().unwrap().iter().chain(
        [&w["prediction"], &w["confidence"]]
            .into_iter()
            .filter(|f| f.is_object()),
    );
    for f in dists {
        let name = f["name"].as_str().unwrap();
        let (b, v) = (
            shares(f["baseline_counts"].as_array().unwrap()),
            shares(f["window_counts"].as_array().unwrap()),
        );
        let max = b.iter().chain(&v).cloned().fold(0.0, f64::max);
        for (cls, want) in [("baseline", &b), ("window", &v)] {
            let drawn: Vec<_> = model_rects
                .iter()
                .filter(|a| a["data-feature"] == name && a["class"].starts_with(cls))
                .take(want.len())
                .collect();
            assert_eq!(drawn.len(), want.len(), "{name} {cls}");
            for (a, s) in drawn.iter().zip(want.iter()) {
                let got: f64 = a["data-share"].parse().unwrap();
                assert!(
                    (got - s).abs() < 1e-5,
                    "{name} {cls} {}: {got} vs {s}",
                    a["data-bin"]
                );
                let h: f64 = a["height"].parse().unwrap();
                assert!(
                    (h - s / max * 120.0).abs() < 0.01,
                    "{name} {cls} height {h}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "{checked} bars checked");
    // Each distribution's kept scores over the replay (PSI and unseen
    // share, the metrics the default rules judge), a point a minute of
    // event time, as the JSON's `score_history` has them.
    let sparks = elements(&r.dom, "svg")
        .into_iter()
        .filter(|a| a.get("class").map(String::as_str) == Some("spark"))
        .collect::<Vec<_>>();
    let history = &first["features"][0]["score_history"];
    let want = history["psi"].as_array().unwrap().len();
    assert!(want >= 10, "20 minutes of replay: {want} points");
    assert_eq!(history["unseen_share"].as_array().unwrap().len(), want);
    for metric in ["psi", "unseen_share"] {
        let of: Vec<_> = sparks
            .iter()
            .filter(|a| a.get("data-metric").map(String::as_str) == Some(metric))
            .collect();
        assert!(!of.is_empty(), "a {metric} sparkline per distribution");
        assert!(
            of.iter().all(|a| a["data-points"] == want.to_string()),
            "every distribution has {want} {metric} points: {of:?}"
        );
    }
    // The bins that moved most are marked, and named as the JSON names them.
    // (marked while the distribution is pending or firing).
    let f00 = m["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["state"] == "firing")
        .expect("a firing feature");
    let moved: Vec<&str> = f00["moved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["bin"].as_str().unwrap())
        .collect();
    assert!(!moved.is_empty(), "{f00}");
    for bin in moved {
        assert!(
            rects
                .iter()
                .any(|a| a["data-feature"] == f00["name"].as_str().unwrap()
                    && a["class"] == "window moved"
                    && a["data-bin"] == bin),
            "{bin} is marked as moved"
        );
    }
}

/// The quality section: a replay of labelled traffic that lost 10 points
/// of accuracy shows, in Chromium, per model the realized accuracy the
/// JSON gives, the estimate flagged calibrated, and the scale that draws
/// them beside the reference.
#[test]
fn the_html_report_shows_realized_and_estimated_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let gen = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "--lines",
            "30000",
            "--rate",
            "20",
            "--models",
            "1",
            "--inference-only",
        ];
        args.extend_from_slice(extra);
        generate_to(std::path::Path::new(out), &args);
    };
    gen(
        path_str(&p("reference.jsonl")),
        &[
            "--labels",
            "1",
            "--label-delay",
            "1s",
            "--label-jitter",
            "0s",
        ],
    );
    gen(
        path_str(&p("live.jsonl")),
        &[
            "--stream-seed",
            "9",
            "--labels",
            "1",
            "--label-delay",
            "30s",
            "--label-jitter",
            "0s",
            "--accuracy-drop-at",
            "0",
            "--accuracy-drop",
            "0.1",
        ],
    );
    let o = driftd(&[
        "baseline",
        "build",
        "--input",
        path_str(&p("reference.jsonl")),
        "--output",
        path_str(&p("baselines")),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(
        p("q.toml"),
        "[quality]\njoin = \"always\"\nmin_labels = 500\n",
    )
    .unwrap();
    let html = p("report.html");
    let o = driftd(&[
        "replay",
        "--baselines",
        path_str(&p("baselines")),
        "--input",
        path_str(&p("live.jsonl")),
        "--config",
        path_str(&p("q.toml")),
        "--format",
        "json",
        "--html",
        path_str(&html),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let q = doc["quality"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q.get("arm").is_none())
        .expect("the model's quality")
        .clone();
    let accuracy = q["accuracy"].as_f64().expect("realized accuracy");
    let reference = q["reference"]["accuracy"]
        .as_f64()
        .expect("a labelled reference");
    assert!(reference - accuracy > 0.05, "{q}");
    assert_eq!(q["estimate"]["calibrated"], true, "{q}");
    assert_eq!(q["accuracy_drop"], "firing", "{q}");

    let r = chromium(&format!("file://{}", html.display()), "replay-quality");
    assert!(!r.log.contains("Uncaught"), "{}", r.log);
    let tables = elements(&r.dom, "table");
    assert!(tables
        .iter()
        .any(|t| t.get("class").map(String::as_str) == Some("quality")));
    // The model's row (data-arm="") with its accuracy as the JSON gives it.
    let row = r
        .dom
        .split("<tr data-arm=\"\">")
        .nth(1)
        .expect("the model's quality row");
    let row = &row[..row.find("</tr>").unwrap()];
    let want = format!("<td class=\"accuracy\">{:.2}%</td>", 100.0 * accuracy);
    assert!(row.contains(&want), "{want} in {row}");
    assert!(!row.contains("uncalibrated"), "{row}");
    for part in [
        "class=\"qscale\"",
        "class=\"realized\"",
        "class=\"reference\"",
        "class=\"interval\"",
    ] {
        assert!(row.contains(part), "{part} in {row}");
    }
    assert!(row.contains("<td class=\"firing\">firing</td>"), "{row}");
}
