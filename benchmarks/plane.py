"""The plane of HarmBench keyword ASR against utility kept, one plot per scenario, from one or more bench reports'
`results.json` (a later file's row replaces an earlier file's row of the same scenario and method), each method a
point with its 95% interval and the methods sharing a `dial` in the bench config one curve: what `tether bench report`
draws (`asr_vs_utility_<scenario>.png`), for rows measured in more than one bench directory.

    python benchmarks/plane.py --results docs/bench/safe_reference/results.json \
        runs/safe-reference/report/results.json --config configs/bench/safe-reference.yaml \
        --out docs/bench/safe_reference
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tether.bench.config import load_bench_config  # noqa: E402
from tether.bench.report import plot_planes  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", nargs="+", required=True, help="results.json files, later ones win")
    parser.add_argument("--config", required=True, help="the bench config whose methods' dials join points")
    parser.add_argument("--out", required=True, help="folder for asr_vs_utility_<scenario>.png")
    args = parser.parse_args()

    dials = {method.name: method.dial for method in load_bench_config(args.config).methods}
    reports = [json.loads(Path(path).read_text()) for path in args.results]
    rows = {}
    for report in reports:
        for row in report["rows"]:
            rows[row["scenario"], row["method"]] = {**row, "dial": dials.get(row["method"])}
    data = {"initial": reports[0]["initial"]}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in plot_planes(data, list(rows.values()), Path(args.out), plt):
        print(Path(args.out) / name)


if __name__ == "__main__":
    main()
