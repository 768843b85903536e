"""The refusal critic (`critic: refusal`) on a safe reference: AUROC of harmful against benign prompts on every
harmful prompt set in the data directory (nothing is fit, so every set is unseen), next to the activation probe's
AUROC on the same sets when its `probe_eval/eval.json` is given; and its risk on the attack's harmful pairs against
the benign rows that the bench's mixes train on.

    python benchmarks/refusal_critic.py --model runs/safe-reference/reference/model \\
        --probe_eval runs/safe-reference/probe_eval/eval.json --out docs/bench/refusal_critic.json

Benign prompts: those of the demo probe's held-out evaluation (AlpacaEval 0-299, XSTest's 250 safe prompts,
I-Alpaca, I-PhysicalSafetySafe: 700), so that both critics face the same benign side. Training rows: the 100
pure-bad prompts (the attack), 200 GSM8K train questions and 200 Alpaca instructions (the mixes' benign rows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tether.critics.probe import auroc
from tether.critics.refusal import refusal_scores
from tether.data.prompts import load_prompts
from tether.data.sources import load_named, to_chat_row
from tether.modeling import load_model_and_tokenizer

HARMFUL = [
    "harmbench",
    "advbench",
    "safety-llamas:~500",
    "I-CoNa",
    "I-Controversial",
    "I-MaliciousInstructions",
    "I-PhysicalSafetyUnsafe",
    "Q-Harm",
    "xstest-unsafe",
]
BENIGN = ["alpaca-eval:300", "xstest-safe", "I-Alpaca", "I-PhysicalSafetySafe"]
TRAINING_ROWS = {
    "pure-bad (harmful pairs)": "pure-bad",
    "gsm8k:~200 (benign)": "gsm8k:~200",
    "alpaca:~200 (benign)": "alpaca:~200",
}


def training_prompts(source: str) -> list[list[dict]]:
    name, _, rows = load_named(source)
    return [to_chat_row(row, name, i)["messages"][:-1] for i, row in enumerate(rows, start=1)]


def distribution(scores: list[float]) -> dict:
    x = np.asarray(scores)
    return {"n": len(x), "mean": float(x.mean()), "median": float(np.median(x)), "p90": float(np.quantile(x, 0.9))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/safe-reference/reference/model")
    parser.add_argument("--probe_eval", default=None, help="a probe's eval.json on the same model, for comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    benign = [s for name in BENIGN for s in refusal_scores(model, tokenizer, load_prompts(name))]
    probe = json.loads(Path(args.probe_eval).read_text())["per_harmful_set"] if args.probe_eval else {}
    result = {"model": args.model, "benign_sets": BENIGN, "benign": distribution(benign), "per_harmful_set": {}}
    print(f"benign ({len(benign)} prompts): mean risk {np.mean(benign):.3f}")
    print("| harmful set | n | refusal critic AUROC | probe AUROC | mean risk |\n|---|---|---|---|---|")
    for name in HARMFUL:
        harmful = refusal_scores(model, tokenizer, load_prompts(name))
        labels = np.r_[np.ones(len(harmful)), np.zeros(len(benign))]
        value = auroc(labels, np.r_[harmful, benign])
        probe_value = probe.get(name, {}).get("auroc")
        result["per_harmful_set"][name] = {"auroc": value, "probe_auroc": probe_value, **distribution(harmful)}
        shown = "" if probe_value is None else f"{probe_value:.3f}"
        print(f"| {name} | {len(harmful)} | {value:.3f} | {shown} | {np.mean(harmful):.3f} |", flush=True)
    scored = {label: refusal_scores(model, tokenizer, training_prompts(src)) for label, src in TRAINING_ROWS.items()}
    harmful = scored[next(iter(TRAINING_ROWS))]
    result["training_rows"] = {}
    for label, scores in scored.items():
        stats = distribution(scores)
        if scores is not harmful:  # the attack's harmful pairs against these benign rows
            labels = np.r_[np.ones(len(harmful)), np.zeros(len(scores))]
            stats["auroc_pure_bad_against_these"] = auroc(labels, np.r_[harmful, scores])
        result["training_rows"][label] = stats
        extra = (
            f", AUROC of pure-bad against them {stats['auroc_pure_bad_against_these']:.3f}"
            if scores is not harmful
            else ""
        )
        print(f"{label}: mean {stats['mean']:.3f}, median {stats['median']:.3f}, p90 {stats['p90']:.3f}{extra}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
