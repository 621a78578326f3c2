#!/usr/bin/env bash
# driftd against Evidently on equal work: the same generated rows and
# columns, Evidently's DataDriftPreset (one comparison of every column)
# against `driftd baseline build` plus one comparison (`replay --every`
# longer than the data). Installs Evidently from PyPI into a virtual
# environment under target/ the first time. Not run by CI.
#
#   benchmarks/evidently/run.sh                 # 50k + 50k lines, 20 features
#   ROWS=200000 FEATURES=50 benchmarks/evidently/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rows=${ROWS:-50000}
features=${FEATURES:-20}
venv=${VENV:-$root/target/evidently-venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

driftd=${DRIFTD:-$root/target/release/driftd}
if [[ -z ${DRIFTD:-} ]]; then
    (cd "$root" && cargo build --release --quiet)
fi
if [[ ! -x $venv/bin/python ]]; then
    echo "installing Evidently into $venv (once) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "evidently>=0.7,<0.8" "pandas<3"
fi
evidently_version=$("$venv/bin/python" -c 'import evidently; print(evidently.__version__)')

echo "generating $rows reference and $rows current lines, 1 model x $features features ..." >&2
"$driftd" generate --models 1 --features "$features" --lines "$rows" --seed 42 --stream-seed 1 -o "$work/ref.jsonl" 2>/dev/null
"$driftd" generate --models 1 --features "$features" --lines "$rows" --seed 42 --stream-seed 7 -o "$work/cur.jsonl" 2>/dev/null

now() { date +%s.%N; }
# driftd: build the baseline, then one comparison of the current file.
t0=$(now)
"$driftd" baseline build --input "$work/ref.jsonl" --output "$work/baselines" --quiet
t1=$(now)
"$driftd" replay --baselines "$work/baselines" --input "$work/cur.jsonl" --window 3650d --every 3650d --format json >"$work/replay.json"
t2=$(now)
evaluations=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d.get("models", [])))' "$work/replay.json")

# Evidently: load the same lines into DataFrames, then DataDriftPreset.
ev=$("$venv/bin/python" "$here/evidently_drift.py" "$work/ref.jsonl" "$work/cur.jsonl")

python3 - "$t0" "$t1" "$t2" "$ev" "$evidently_version" "$rows" "$features" <<'PY'
import json, sys
t0, t1, t2 = map(float, sys.argv[1:4])
ev = json.loads(sys.argv[4])
version, rows, features = sys.argv[5], sys.argv[6], sys.argv[7]
build, compare = t1 - t0, t2 - t1
driftd = build + compare
evidently = ev["load_s"] + ev["drift_s"]
print(f"{rows} + {rows} lines, {features} features ({ev['columns']} columns, "
      f"{ev['rows_reference']} + {ev['rows_current']} rows as Evidently loads them)")
print("| | load | drift | total |")
print("|---|---|---|---|")
print(f"| driftd (baseline build + one comparison) | - | - | {driftd:.3f} s (build {build:.3f} s, compare {compare:.3f} s) |")
print(f"| Evidently {version} DataDriftPreset | {ev['load_s']:.3f} s | {ev['drift_s']:.3f} s | {evidently:.3f} s |")
print(f"ratio, Evidently / driftd: {evidently / driftd:.1f}x in all, {ev['drift_s'] / driftd:.1f}x against Evidently's drift step alone")
PY
