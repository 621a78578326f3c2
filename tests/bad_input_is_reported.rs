//! Bad files and flags get an error naming the file, the place and the
//! problem, with the documented exit codes: 2 for usage, 64 for config.

use crate::common::*;

#[test]
fn a_corrupt_baseline_names_file_feature_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(samples().join("baselines/fraud-v1.json")).unwrap();
    let mut b: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Break the edges of one numeric feature and the counts of another.
    let feats = b["features"].as_array_mut().unwrap();
    let amount = feats
        .iter_mut()
        .find(|f| f["name"] == "f00_amount")
        .unwrap();
    amount["edges"][2] = amount["edges"][1].clone();
    let country = feats
        .iter_mut()
        .find(|f| f["name"] == "f01_country")
        .unwrap();
    country["counts"].as_array_mut().unwrap().pop();
    std::fs::write(
        dir.path().join("fraud-v1.json"),
        serde_json::to_vec(&b).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("other.json"), b"{ not json").unwrap();

    let o = driftd(&[
        "replay",
        "--baselines",
        path_str(dir.path()),
        "--input",
        path_str(&samples().join("drifted.jsonl")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("2 problems"), "{err}");
    assert!(err.contains("fraud-v1.json"), "{err}");
    assert!(
        err.contains("\"f00_amount\"") && err.contains("strictly increasing"),
        "{err}"
    );
    assert!(
        err.contains("\"f01_country\"") && err.contains("counts for"),
        "{err}"
    );
    assert!(
        err.contains("other.json") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn a_missing_input_is_a_usage_error_naming_the_path() {
    let o = driftd(&[
        "replay",
        "--baselines",
        path_str(&samples().join("baselines")),
        "--input",
        "/nonexistent/logs.jsonl",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/logs.jsonl"),
        "{}",
        stderr(&o)
    );
    let o = driftd(&[
        "baseline",
        "build",
        "--input",
        "/nonexistent/ref.jsonl",
        "--output",
        "/tmp",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/ref.jsonl"));
}

#[test]
fn an_empty_baseline_directory_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let o = driftd(&[
        "replay",
        "--baselines",
        path_str(dir.path()),
        "--input",
        path_str(&samples().join("drifted.jsonl")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("driftd baseline build"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unknown_flags_are_usage_errors() {
    let o = driftd(&[
        "replay",
        "--baselines",
        "x",
        "--input",
        "y",
        "--colour",
        "red",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = driftd(&[
        "baseline", "build", "--input", "x", "--output", "y", "--bins", "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "bins must be 2 to 64");
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[window]\nlength = \"ten minutes\"\n[evaluation]\nmin_samples = 0\nfor = 0\n[[rules]]\nmetric = \"entropy\"\nwarning = 1\ncritical = 2\n[http]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let o = driftd(&["check-config", "--config", path_str(&cfg)]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    let err = stderr(&o);
    for key in [
        "window.length",
        "evaluation.min_samples",
        "evaluation.for",
        "rules[0].metric",
        "http.listen",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(err.contains("5 problems"), "{err}");
    let ok = driftd(&[
        "check-config",
        "--config",
        path_str(&root().join("config/driftd.toml")),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn a_file_of_garbage_builds_no_baseline_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("garbage.jsonl");
    std::fs::write(&input, b"not json\n[1,2]\n\xff\xfe\n{\"no_model\": 1}\n").unwrap();
    let o = driftd(&[
        "baseline",
        "build",
        "--input",
        path_str(&input),
        "--output",
        path_str(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no inference events"), "{}", stderr(&o));
}
