#!/usr/bin/env bash
# The README's performance report in one run, on one machine (not run by
# CI; about 17 minutes on 2 cores):
#
#   1. `driftd bench --no-daemon` on compact and on seed-shaped lines: the
#      serde_json parse floor, the decoder alone, and `driftd replay` of the
#      lines as a file on one thread and on every core, at 30 s evaluations
#      and at one;
#   2. Evidently's DataDriftPreset against `baseline build` plus one
#      comparison (benchmarks/evidently/run.sh; installs Evidently once);
#   3. the daemon's RSS at 100 models x 50 features with two arms each,
#      11 minutes at 20,000 lines/s.
#
#   benchmarks/report.sh            # LINES=1000000 by default
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lines=${LINES:-1000000}
cd "$root"
cargo build --release --quiet
driftd=$root/target/release/driftd

echo "# driftd performance report, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "## Compact lines"
"$driftd" bench --no-daemon --lines "$lines" 2>/dev/null
echo
echo "## Seed-shaped lines"
"$driftd" bench --no-daemon --seed-shape --lines "$lines" 2>/dev/null
echo
echo "## Against Evidently"
DRIFTD=$driftd "$root/benchmarks/evidently/run.sh" 2>/dev/null
echo
echo "## RSS at 100 models x 50 features with arms"
"$driftd" bench --models 100 --features 50 --lines 100000 --steady 11m --rate 20000 --no-replay 2>/dev/null
