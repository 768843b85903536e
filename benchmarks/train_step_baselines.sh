#!/usr/bin/env bash
# Step-time ratios of the baselines that change the step (constrained SFT, STAR-DSS, AsFT, LISA) against SFT and the
# paper's A-Reg, on an aligned reference (AsFT needs the model it was aligned from), then each mode's peak memory alone.
# Usage: benchmarks/train_step_baselines.sh REFERENCE_MODEL_DIR [results-dir]
#   e.g. benchmarks/train_step_baselines.sh runs/safe-reference/reference/model
set -euo pipefail
cd "$(dirname "$0")/.."
reference=$1
out=${2:-benchmarks/results}
mkdir -p "$out"
step=(.venv/bin/python benchmarks/train_step.py --model "$reference" --unaligned smollm2-135m-instruct)
"${step[@]}" --modes none adaptive constrained star-dss star-dss-critic asft lisa --steps 9 --out "$out/train_step_baselines.json"
for mode in constrained star-dss star-dss-critic asft lisa; do
  /usr/bin/time -v "${step[@]}" --modes "$mode" --steps 2 > "$out/memory_$mode.log" 2> "$out/memory_$mode.time"
  echo "$mode peak RSS (MB): $(awk '/Maximum resident set size/ {print int($6/1024)}' "$out/memory_$mode.time")"
done | tee "$out/memory_baselines.txt"
