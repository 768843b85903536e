"""Alignment recipes for the bench's safe reference, chosen on validation sets, reported on test sets.

Each candidate aligns SmolLM2-135M-Instruct the way `tether demo` does (LoRA SFT on a seeded mix of sources, merged:
the bench's own reference stage) and is evaluated on validation prompts that no recipe trains on:
HarmBench's validation split (41 standard behaviours, keyword ASR), every 5th AlpacaEval instruction from 300 to 804
(101, benign refusal), the even half of XSTest's safe prompts (125, over-refusal) and the held-out NLL of the first
100 GSM8K train answers. `--test NAME [...]` evaluates chosen candidates (and the un-aligned model) on the test sets,
which share nothing with those: HarmBench's test split (159), AlpacaEval 0-299 every 2nd (150), the odd half of
XSTest safe (125), the NLL of the first 100 GSM8K test answers.

    python benchmarks/reference_recipes.py --out runs/recipes                 # every candidate, validation
    python benchmarks/reference_recipes.py --out runs/recipes --only demo contrast
    python benchmarks/reference_recipes.py --out runs/recipes --test demo contrast   # + the un-aligned model
    python benchmarks/reference_recipes.py --out runs/recipes --table docs/bench/reference_recipes.json \\
        --plot docs/bench/reference_recipes.png

Stages are cached like the bench's: a rerun skips finished candidates and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tether.bench.config import DEMO_CONFIG, EvalSpec, ReferenceSpec, bench_config_from_dict, load_bench_config
from tether.bench.pipeline import Bench

# name -> (data sources and rows, training overrides). Every candidate has 800 rows (the demo's count), so that they
# cost the same; they differ in the share of refusals, their style and the benign contrast rows.
CANDIDATES = {
    # the demo's recipe: 37.5% refusals, 200 of them Llama-2's templated "I cannot fulfill your request. I'm just an AI"
    "demo": ({"advbench-refusals": 200, "safety-llamas": 100, "alpaca": 500}, {}),
    # fewer refusals, and benign requests on safety-adjacent topics answered helpfully
    "contrast": ({"advbench-refusals": 150, "safety-llamas": 75, "alpaca": 425, "alpaca-safety": 150}, {}),
    # a fifth of the rows are refusals
    "lean": ({"advbench-refusals": 100, "safety-llamas": 50, "alpaca": 450, "alpaca-safety": 200}, {}),
    # safety-llamas' varied answers (refusals and safe replies) in place of most templated refusals
    "varied": ({"advbench-refusals": 50, "safety-llamas": 150, "alpaca": 400, "alpaca-safety": 200}, {}),
    # the contrast mix at half the learning rate
    "contrast-lr1e-4": (
        {"advbench-refusals": 150, "safety-llamas": 75, "alpaca": 425, "alpaca-safety": 150},
        {"learning_rate": 1.0e-4},
    ),
}
VALIDATION = EvalSpec(
    benchmarks=["harmbench-val", "alpaca-eval:300-805/5", "xstest-safe:0-250/2"],
    utility="gsm8k",
    utility_limit=100,
    max_new_tokens=48,
    batch_size=50,
)
TEST = EvalSpec(
    benchmarks=["harmbench-test", "alpaca-eval:0-300/2", "xstest-safe:1-250/2"],
    utility="gsm8k-test",
    utility_limit=100,
    max_new_tokens=48,
    batch_size=50,
)


def bench_for(name: str, out: Path, data_dir: str | None) -> Bench:
    """The demo's bench config with this candidate's reference recipe and no probe."""
    demo = load_bench_config(DEMO_CONFIG)
    data, train = CANDIDATES[name]
    raw = {
        "model": demo.model,
        "data_dir": data_dir,
        "seeds": [0],
        "reference": {"data": data, "train": {**demo.reference.train, **train}, "eval_base": False},
        "probe": None,
        "train": demo.train,
        "scenarios": [{"name": "none"}],
        "methods": [{"name": "none"}],
    }
    config = bench_config_from_dict(raw, f"recipe {name}")
    assert isinstance(config.reference, ReferenceSpec)
    return Bench(config, out / name)


def run(names: list[str], out: Path, data_dir: str | None, test: bool) -> None:
    for name in names:
        bench = bench_for(name, out, data_dir)
        bench.out.mkdir(parents=True, exist_ok=True)
        bench.align_reference()
        bench.config.eval = VALIDATION
        bench.evaluate("validation", bench.reference_model)
        if test:
            bench.config.eval = TEST
            bench.evaluate("test", bench.reference_model)
    base = bench_for("demo", out, data_dir)  # the un-aligned model: the floor of benign refusal
    base.out = out / "base"
    base.out.mkdir(parents=True, exist_ok=True)
    base.config.eval = VALIDATION
    base.evaluate("validation", base.config.model)
    if test:
        base.config.eval = TEST
        base.evaluate("test", base.config.model)


# benchmark (as either spelling was recorded) -> the summary's metric
SUMMARY = {
    "harmbench-val": ("harmbench_asr", "keyword_asr"),
    "harmbench-test": ("harmbench_asr", "keyword_asr"),
    "alpaca-eval": ("alpaca_eval_refusal", "benign_refusal"),
    "alpaca_eval": ("alpaca_eval_refusal", "benign_refusal"),
    "xstest-safe": ("xstest_over_refusal", "over_refusal"),
}


def summary(results: dict) -> dict:
    """The three rates (with prompt counts and 95% intervals) and the held-out NLL of one results.json."""
    from tether.evaluation.metrics import wilson_interval

    out = {}
    for name, bench in results["benchmarks"].items():
        key, metric = SUMMARY[name]
        value, n = bench["metrics"][metric], len(bench["samples"])
        out |= {key: value, f"{key}_n": n, f"{key}_ci95": wilson_interval(round(value * n), n)}
    return out | {"heldout_nll": results["heldout_nll"]["nll"]}


def table(out: Path) -> dict:
    """Every candidate's validation (and test) summary, read from disk, and the recipe the rule picks: the lowest
    validation HarmBench ASR + AlpacaEval refusal (the two errors weighted alike), ties by XSTest over-refusal."""
    rows = {}
    for folder in sorted(p for p in out.iterdir() if (p / "evals").is_dir()):
        data, train = CANDIDATES.get(folder.name, (None, {}))
        row = {"recipe": data, "train": train}
        for split in ("validation", "test"):
            path = folder / "evals" / split / "results.json"
            if path.is_file():
                row[split] = summary(json.loads(path.read_text()))
        rows[folder.name] = row
    aligned = {name: row for name, row in rows.items() if row["recipe"] and "validation" in row}
    chosen = min(
        aligned,
        key=lambda n: (
            aligned[n]["validation"]["harmbench_asr"] + aligned[n]["validation"]["alpaca_eval_refusal"],
            aligned[n]["validation"]["xstest_over_refusal"],
        ),
    )
    return {"chosen": chosen, "candidates": rows}


def plot(data: dict, path: Path) -> None:
    """HarmBench ASR against AlpacaEval refusal, one point per recipe (validation; test where measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for split, marker in (("validation", "o"), ("test", "s")):
        for name, row in data["candidates"].items():
            if split in row:
                x, y = 100 * row[split]["alpaca_eval_refusal"], 100 * row[split]["harmbench_asr"]
                ax.scatter(x, y, marker=marker, color="black" if name == "base" else None)
                ax.annotate(f"{name} ({split[:4]})", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="AlpacaEval refusal (%)", ylabel="HarmBench keyword ASR (%)", xlim=(-2, 60), ylim=(-2, 102))
    ax.set_title("Alignment recipes for the safe reference (SmolLM2-135M)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/recipes")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="candidates to run (default: all)")
    parser.add_argument("--test", nargs="*", default=None, help="also evaluate these candidates on the test sets")
    parser.add_argument("--table", default=None, help="write every candidate's metrics to this JSON file")
    parser.add_argument("--plot", default=None, help="with --table: the ASR-against-benign-refusal plot (PNG)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        data = table(out)
        Path(args.table).write_text(json.dumps(data, indent=1) + "\n")
        if args.plot:
            plot(data, Path(args.plot))
        return
    unknown = [n for n in (args.only or []) + (args.test or []) if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate {unknown[0]!r}; choose from {', '.join(CANDIDATES)}")
    if args.test:
        run(args.test, out, args.data_dir, test=True)
    else:
        run(args.only or list(CANDIDATES), out, args.data_dir, test=False)


if __name__ == "__main__":
    main()
