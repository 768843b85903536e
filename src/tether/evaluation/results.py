"""The results schema (one JSON per evaluation) and its Markdown summary. Schema version 1:

{
  "schema_version": 1,
  "model": str, "created": ISO time,
  "config": {...},                     # the command's settings
  "generation": {...},                 # decoding settings
  "versions": {"tether", "torch", "transformers", ...},
  "rubric_version": str | None,        # hash of the judge rubric, when a judge scored
  "judge": str | None,                 # judge backend id
  "benchmarks": {
    name: {
      "version": str,                  # hash of the benchmark's prompts
      "kind": "harmful" | "xstest" | "gsm8k" | "instructions",
      "metrics": {metric: value},
      "higher_is_better": {metric: bool},
      "samples": [{"prompt", "response", "refused", "label"?, "answer"?, "judge_score"?}]
    }
  },
  "heldout_nll": {"data": str, "nll": float, "tokens": int} | None
}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from tether.run_files import write_text_atomic

SCHEMA_VERSION = 1


class BenchmarkResult(TypedDict):
    version: str
    kind: str
    metrics: dict
    higher_is_better: dict
    samples: list[dict]


class EvalResults(TypedDict):
    schema_version: int
    model: str
    created: str
    config: dict
    generation: dict
    versions: dict
    rubric_version: str | None
    judge: str | None
    benchmarks: dict[str, BenchmarkResult]
    heldout_nll: dict | None


def write_results(results: EvalResults, out_dir: str | Path) -> Path:
    """`results.json` and `summary.md` in `out_dir`, each written to a temporary file and renamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    write_text_atomic(out / "summary.md", summary_markdown(results))
    return out / "results.json"


def summary_markdown(results: EvalResults) -> str:
    lines = [f"# Evaluation of {results['model']}", "", f"Generation: {results['generation']}", ""]
    lines += ["| benchmark | n | metric | value |", "|---|---|---|---|"]
    for name, bench in results["benchmarks"].items():
        for metric, value in bench["metrics"].items():
            if isinstance(value, float):
                shown = f"{value:.1%}" if metric not in ("judge_mean_score", "heldout_nll") else f"{value:.3f}"
                lines.append(f"| {name} | {len(bench['samples'])} | {metric} | {shown} |")
    if results.get("heldout_nll"):
        lines.append(
            f"| {results['heldout_nll']['data']} | {results['heldout_nll']['tokens']} tokens | heldout_nll | "
            f"{results['heldout_nll']['nll']:.4f} |"
        )
    return "\n".join(lines) + "\n"
