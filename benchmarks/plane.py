"""The plane of HarmBench keyword ASR against utility kept, one plot per scenario, from one or more bench reports'
`results.json`, each method a point with its 95% interval and the methods sharing a `dial` in the bench config one
curve: what `tether bench report` draws (`asr_vs_utility_<scenario>.png`), for runs measured in more than one bench
directory of the same reference. The reports' per-seed runs are merged (a later file's run replaces an earlier file's
run of the same scenario, method and seed), so that a run's utility kept is measured against SFT's run of its own seed
whichever directory holds it, and rows are the seeds' means as in the report; `--out` also gets the merged rows
(`results.json`).

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
from tether.bench.report import add_utility_kept, aggregate, plot_planes  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", nargs="+", required=True, help="results.json files, later ones win")
    parser.add_argument("--config", required=True, help="the bench config whose methods' dials join points")
    parser.add_argument("--out", required=True, help="folder for asr_vs_utility_<scenario>.png")
    args = parser.parse_args()

    dials = {method.name: method.dial for method in load_bench_config(args.config).methods}
    reports = [json.loads(Path(path).read_text()) for path in args.results]
    runs = {}
    for report in reports:
        for run in report["runs"]:
            runs[run["scenario"], run["method"], run["seed"]] = {**run, "dial": dials.get(run["method"])}
    reference_nll = {scenario: run.get("reference_utility_nll") for (scenario, _, _), run in runs.items()}
    merged = list(runs.values())
    add_utility_kept(merged, reference_nll)
    rows = aggregate(merged)
    data = {"initial": reports[0]["initial"], "rows": rows, "runs": merged}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    for name in plot_planes(data, rows, out, plt):
        print(out / name)


if __name__ == "__main__":
    main()
