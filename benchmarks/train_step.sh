#!/usr/bin/env bash
# Step-time ratios (one process, modes interleaved), then each mode's peak memory in its own process.
# Usage: benchmarks/train_step.sh [results-dir]   (needs the data dir: ../shared/data or $TETHER_DATA_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
.venv/bin/python benchmarks/train_step.py --modes none adaptive adaptive-cached default default-cached naive --steps 9 --out "$out/train_step.json"
for mode in none adaptive adaptive-cached default default-cached naive; do
  /usr/bin/time -v .venv/bin/python benchmarks/train_step.py --modes "$mode" --steps 2 \
    > "$out/memory_$mode.log" 2> "$out/memory_$mode.time"
  echo "$mode peak RSS (MB): $(awk '/Maximum resident set size/ {print int($6/1024)}' "$out/memory_$mode.time")"
done | tee "$out/memory.txt"
