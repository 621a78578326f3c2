//! `replay` and `baseline build` decode on every core and hand the lines to
//! the engine in input order, so the number of threads changes nothing:
//! the same baselines (null fits included) and the same report, byte for
//! byte, on a stream of several chunks with drift, feedback, labels,
//! timing, error and malformed lines.

use crate::common::*;
use serde_json::Value;

/// A baseline file without the build's clock.
fn baseline_without_time(path: &std::path::Path) -> Value {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("created_at");
    v
}

#[test]
fn any_number_of_threads_gives_the_one_thread_result() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let gen = |out: &str, extra: &[&str]| {
        let mut args = vec!["--lines", "12000", "--rate", "20", "--features", "12"];
        args.extend_from_slice(extra);
        generate_to(std::path::Path::new(out), &args);
    };
    gen(
        path_str(&p("reference.jsonl")),
        &["--labels", "0.3", "--label-delay", "5s"],
    );
    gen(
        path_str(&p("live.jsonl")),
        &[
            "--stream-seed",
            "5",
            "--drift-at",
            "0.5",
            "--labels",
            "0.3",
            "--label-delay",
            "5s",
        ],
    );
    // Two of the pipeline's 4 MB chunks, and lines of every kind.
    let live = std::fs::read_to_string(p("live.jsonl")).unwrap();
    assert!(live.len() > 4 << 20, "{} bytes", live.len());
    for kind in [
        "Ground truth received",
        "feedback",
        "latency",
        "ERROR",
        "GPU memory",
    ] {
        assert!(live.contains(kind), "the stream has no {kind:?} line");
    }

    for threads in ["1", "2", "3"] {
        let o = driftd(&[
            "baseline",
            "build",
            "--input",
            path_str(&p("reference.jsonl")),
            "--output",
            path_str(&p(&format!("b{threads}"))),
            "--threads",
            threads,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for model in ["fraud-v1", "recsys-v3"] {
        let one = baseline_without_time(&p("b1").join(format!("{model}.json")));
        assert!(
            one["features"][0]["null"]["anchors"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "the build stores the null fits"
        );
        for threads in ["2", "3"] {
            let other =
                baseline_without_time(&p(&format!("b{threads}")).join(format!("{model}.json")));
            assert!(
                one == other,
                "{model}: {threads} threads built another baseline"
            );
        }
    }

    let replay = |threads: &str| {
        let o = driftd(&[
            "replay",
            "--baselines",
            path_str(&p("b1")),
            "--input",
            path_str(&p("live.jsonl")),
            "--window",
            "10m",
            "--every",
            "30s",
            "--format",
            "json",
            "--threads",
            threads,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        (o.stdout, err)
    };
    let (one, one_err) = replay("1");
    let doc: Value = serde_json::from_slice(&one).unwrap();
    let fired = doc["models"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["transitions"].as_array().unwrap())
        .filter(|t| t["to"] == "firing")
        .count();
    assert!(
        fired > 0,
        "the drift fires: the comparison is not of two empty reports"
    );
    assert!(one_err.contains("malformed_json"), "{one_err}");
    for threads in ["2", "3"] {
        let (other, other_err) = replay(threads);
        assert!(
            one == other,
            "{threads} threads gave another report than one thread"
        );
        assert_eq!(one_err, other_err, "the warnings name the same lines");
    }
}
