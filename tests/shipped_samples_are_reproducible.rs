//! The sample data in data/samples is exactly what the documented
//! `driftd generate` and `driftd baseline build` commands produce, so anyone
//! can regenerate (or vary) it.

use crate::common::*;

fn generate(args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut full = vec!["generate", "--output", path_str(&out)];
    full.extend_from_slice(args);
    let o = driftd(&full);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read(out).unwrap()
}

#[test]
fn reference_and_drifted_files_regenerate_byte_for_byte() {
    // The commands in data/samples/README.md.
    let reference = generate(&["--lines", "6000", "--rate", "5"]);
    assert!(reference == std::fs::read(samples().join("reference.jsonl")).unwrap());
    let drifted = generate(&[
        "--lines",
        "6000",
        "--rate",
        "5",
        "--stream-seed",
        "7",
        "--drift-at",
        "0.3",
        "--start",
        "2025-12-15T10:00:00Z",
    ]);
    assert!(drifted == std::fs::read(samples().join("drifted.jsonl")).unwrap());
}

#[test]
fn shipped_baselines_are_built_from_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let o = driftd(&[
        "baseline",
        "build",
        "--input",
        path_str(&samples().join("reference.jsonl")),
        "--output",
        path_str(dir.path()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for model in ["fraud-v1", "recsys-v3"] {
        let fresh: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{model}.json"))).unwrap(),
        )
        .unwrap();
        let shipped: serde_json::Value = serde_json::from_slice(
            &std::fs::read(samples().join(format!("baselines/{model}.json"))).unwrap(),
        )
        .unwrap();
        // Everything but the creation time (and the version, which starts with its date).
        for k in [
            "model",
            "samples",
            "binning",
            "features",
            "prediction",
            "confidence",
            "quality",
            "schema_version",
        ] {
            assert_eq!(fresh[k], shipped[k], "{model}: {k}");
        }
    }
}
