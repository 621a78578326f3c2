"""Times Evidently's DataDriftPreset on the input features of two JSONL files
of inference logs: the same rows and columns driftd compares.

Usage: python evidently_drift.py REFERENCE.jsonl CURRENT.jsonl
Prints one JSON object: rows, columns, load_s, drift_s, drifted columns.
"""

import json
import sys
import time

import pandas as pd


def load(path):
    """The input features of every inference line, as driftd decodes them:
    a line that is a JSON object with an `input_features` object."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            feats = doc.get("input_features")
            if isinstance(feats, dict) and doc.get("model_id"):
                rows.append(feats)
    return pd.DataFrame(rows)


def main():
    ref_path, cur_path = sys.argv[1], sys.argv[2]
    began = time.perf_counter()
    ref = load(ref_path)
    cur = load(cur_path)
    cols = [c for c in ref.columns if c in cur.columns]
    ref, cur = ref[cols], cur[cols]
    loaded = time.perf_counter()

    from evidently import Report
    from evidently.presets import DataDriftPreset

    imported = time.perf_counter()
    result = Report([DataDriftPreset()]).run(cur, ref)
    done = time.perf_counter()
    drifted = None
    try:
        for m in result.dict().get("metrics", []):
            name = str(m.get("metric_name", m.get("metric_id", "")))
            if name.startswith("DriftedColumnsCount"):
                drifted = m.get("value", {}).get("count")
    except Exception:  # the summary is a courtesy; the timing is the point
        pass
    print(
        json.dumps(
            {
                "rows_reference": len(ref),
                "rows_current": len(cur),
                "columns": len(cols),
                "load_s": round(loaded - began, 3),
                "import_s": round(imported - loaded, 3),
                "drift_s": round(done - imported, 3),
                "drifted_columns": drifted,
            }
        )
    )


if __name__ == "__main__":
    main()
