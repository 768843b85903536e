"""Probe sweep on a real model: layers × poolings, fit in distribution, AUROC on held-out harmful sets.

    python benchmarks/probe_sweep.py --out docs/probe --features_cache /tmp/probe_features.pt

Fit: harmful = AdvBench + safety-tuned-llamas instructions, benign = Alpaca 1k + GSM8K questions.
Evaluation (disjoint sets): harmful HarmBench standard, I-CoNa, I-Controversial, I-MaliciousInstructions,
I-PhysicalSafetyUnsafe, each against benign AlpacaEval + XSTest safe + I-Alpaca + I-PhysicalSafetySafe together;
the share of each benign set flagged at risk ≥ 0.5 (XSTest safe: hard negatives) is reported separately.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tether.critics.probe_sweep import FeatureBank, evaluate, fit_from_sources, sweep, write_sweep_report
from tether.modeling import load_model_and_tokenizer

FIT_HARMFUL = ["advbench", "safety-llamas:1000"]
FIT_BENIGN = ["alpaca", "gsm8k:500"]
EVAL_HARMFUL = ["harmbench", "I-CoNa", "I-Controversial", "I-MaliciousInstructions", "I-PhysicalSafetyUnsafe"]
EVAL_BENIGN = ["alpaca-eval", "xstest-safe", "I-Alpaca", "I-PhysicalSafetySafe"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default="docs/probe")
    parser.add_argument("--features_cache", default=None)
    parser.add_argument("--C", type=float, default=0.1, help="fixed C for the layer × pooling sweep")
    parser.add_argument("--window", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    bank = FeatureBank(model, tokenizer, batch_size=32)
    cache = Path(args.features_cache) if args.features_cache else None
    if cache and cache.is_file():
        bank.cache = torch.load(cache)
    start = time.perf_counter()
    for source in FIT_HARMFUL + FIT_BENIGN + EVAL_HARMFUL + EVAL_BENIGN:
        bank(source)
    print(f"features: {sum(len(v) for v in bank.cache.values())} prompts in {time.perf_counter() - start:.0f} s")
    if cache:
        torch.save(bank.cache, cache)

    n = len(bank.all_layers)
    layer_sets = [[layer] for layer in range(n)]
    layer_sets += [list(range(s, s + args.window)) for s in range(1, n - args.window + 1, args.window)]
    rows = sweep(
        bank,
        FIT_HARMFUL,
        FIT_BENIGN,
        EVAL_HARMFUL,
        EVAL_BENIGN,
        layer_sets,
        ["last-layer", "mean", "max", "concat", "weighted"],
        C=args.C,
    )
    for row in rows:
        aurocs = list(row["auroc"].values())
        row["mean_auroc_other_four"] = sum(aurocs[1:]) / 4
        row["worst_auroc_other_four"] = min(aurocs[1:])
    write_sweep_report(rows, args.out, f"probe sweep: {args.model} (C = {args.C})")
    best = max(rows, key=lambda r: r["mean_auroc_other_four"])
    print("best by mean AUROC on the four held-out sets:", json.dumps(best))

    # Regularization strength on the best configuration, C by cross-validation too.
    c_rows = []
    for C in (0.001, 0.01, 0.1, 1.0, None):
        probe = fit_from_sources(
            bank,
            FIT_HARMFUL,
            FIT_BENIGN,
            best["layers"],
            best["pooling"] if best["pooling"] != "one layer" else "last-layer",
            C=C,
        )
        result = evaluate(probe, bank, EVAL_HARMFUL, EVAL_BENIGN)
        c_rows.append(
            {
                "C": C if C is not None else f"cv:{probe.metadata['C']:g}",
                "auroc": {s: m["auroc"] for s, m in result["per_harmful_set"].items()},
                "recall_at_5pct_fpr": {s: m["recall_at_5pct_fpr"] for s, m in result["per_harmful_set"].items()},
                "flagged_share": result["flagged_share"],
            }
        )
    (Path(args.out) / "c_sweep.json").write_text(json.dumps(c_rows, indent=2))
    for row in c_rows:
        print(
            row["C"],
            {k: round(v, 3) for k, v in row["auroc"].items()},
            "xstest-safe FPR",
            round(row["flagged_share"]["xstest-safe"], 3),
        )


if __name__ == "__main__":
    main()
