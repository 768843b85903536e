"""The probe on the safe reference: the last prompt token's state against the mean over the prompt's tokens, at a few
layers, with the bench's fit sets; AUROC on the held-out sets and the calibrated risk of the attack's prompts.

    python benchmarks/probe_tokens.py --model runs/demo/reference/model --out docs/probe/tokens.json

Fit and held-out sets are those of `tether demo`'s probe (`src/tether/bench/demo.yaml`): harmful AdvBench + 600
safety-tuned-llamas instructions, benign Alpaca 1k + 600 GSM8K questions; C by 5-fold CV, Platt-calibrated on a
held-out 20%; evaluation as in `benchmarks/probe_sweep.py` with AlpacaEval limited to 300. `pure-bad`: the 100
prompts of the attack set (never fitted on): mean and median risk.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tether.bench.config import DEMO_CONFIG, bench_config_from_dict
from tether.critics.probe_sweep import FeatureBank, evaluate, fit_from_sources
from tether.modeling import load_model_and_tokenizer
from tether.yaml_files import load_yaml

DEMO_PROBE = bench_config_from_dict(load_yaml(DEMO_CONFIG.read_text())).probe
FIT_HARMFUL, FIT_BENIGN = DEMO_PROBE.harmful, DEMO_PROBE.benign
EVAL_HARMFUL, EVAL_BENIGN = DEMO_PROBE.eval_harmful, DEMO_PROBE.eval_benign


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/demo/reference/model")
    parser.add_argument("--layers", nargs="+", type=int, default=[5, 8, 11, 14])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args.model)
    rows = []
    for tokens in ("last", "mean"):
        bank = FeatureBank(model, tokenizer, batch_size=32, layers=args.layers, tokens=tokens)
        start = time.perf_counter()
        for source in FIT_HARMFUL + FIT_BENIGN + EVAL_HARMFUL + EVAL_BENIGN + ["pure-bad"]:
            bank(source)
        seconds = time.perf_counter() - start
        for layer in args.layers:
            probe = fit_from_sources(bank, FIT_HARMFUL, FIT_BENIGN, [layer], "last-layer")
            result = evaluate(probe, bank, EVAL_HARMFUL, EVAL_BENIGN)
            aurocs = {s: m["auroc"] for s, m in result["per_harmful_set"].items()}
            attack = probe.score(bank("pure-bad", [layer])).numpy()
            row = {
                "tokens": tokens,
                "layer": layer,
                "C": probe.metadata["C"],
                "auroc": aurocs,
                "flagged_share": {s: result["flagged_share"][s] for s in EVAL_BENIGN},
                "pure_bad_risk_mean": float(attack.mean()),
                "pure_bad_risk_median": float(np.median(attack)),
                "feature_seconds": seconds,
            }
            rows.append(row)
            held_out = [aurocs[s] for s in EVAL_HARMFUL[1:]]
            print(
                f"{tokens:4s} layer {layer:2d}  HarmBench {aurocs['harmbench']:.3f}  four held-out mean "
                f"{np.mean(held_out):.3f} worst {min(held_out):.3f}  XSTest-safe flagged "
                f"{row['flagged_share']['xstest-safe']:.3f}  pure-bad risk mean {row['pure_bad_risk_mean']:.3f}",
                flush=True,
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
