"""The probe's layer chosen on a validation split instead of on the held-out sets, on the safe reference.

    python benchmarks/probe_layer_selection.py --model runs/demo/reference/model --out docs/probe/layer_selection.json

`tether demo`'s probe uses layer 11, picked (on the un-aligned model, `docs/probe.md`) by the mean AUROC of the very
held-out sets it is then reported on. Here every layer is a candidate, fit on the demo's fit sets (AdvBench + 600
safety-tuned-llamas instructions vs Alpaca 1k + 600 GSM8K questions, C by 5-fold CV, Platt-calibrated), the layer is
chosen by the mean validation AUROC (`tether probe fit --val_harmful ... --val_benign ...`), once freely and once
among the layers that flag at most 10% of the validation XSTest safe prompts (`--val_max_flagged
xstest-safe:125=0.1`, the issue's XSTest goal), and only then scored on test sets that share nothing with the
validation sets (every layer with `--test_every_layer`, else the two chosen layers and the default):
- validation: harmful HarmBench's own validation split (41) and the first 100 XSTest unsafe prompts; benign AlpacaEval
  prompts 300–804 and the first 125 XSTest safe prompts (hard negatives);
- test: harmful HarmBench's test split (159), I-CoNa, I-Controversial, I-MaliciousInstructions,
  I-PhysicalSafetyUnsafe; benign the first 300 AlpacaEval prompts, XSTest safe prompts 125–249, I-Alpaca,
  I-PhysicalSafetySafe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tether.bench.config import DEMO_CONFIG, bench_config_from_dict
from tether.critics.probe import num_blocks
from tether.critics.probe_sweep import FeatureBank, best_candidate, evaluate, layer_candidates
from tether.modeling import load_model_and_tokenizer
from tether.yaml_files import load_yaml

DEMO_PROBE = bench_config_from_dict(load_yaml(DEMO_CONFIG.read_text())).probe
FIT_HARMFUL, FIT_BENIGN = DEMO_PROBE.harmful, DEMO_PROBE.benign
VAL_HARMFUL, VAL_BENIGN = ["harmbench-val", "xstest-unsafe:100"], ["alpaca-eval:300-805", "xstest-safe:125"]
HARD_NEGATIVES = "xstest-safe:125"  # the constrained choice: at most --max_flagged of these flagged
TEST_HARMFUL = ["harmbench-test", "I-CoNa", "I-Controversial", "I-MaliciousInstructions", "I-PhysicalSafetyUnsafe"]
TEST_BENIGN = ["alpaca-eval:300", "xstest-safe:125-250", "I-Alpaca", "I-PhysicalSafetySafe"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/demo/reference/model")
    parser.add_argument("--default_layer", type=int, default=DEMO_PROBE.layers[0])
    parser.add_argument("--max_flagged", type=float, default=0.1, help="the constrained choice's limit on XSTest")
    parser.add_argument("--test_every_layer", action="store_true", help="else only the chosen layers and the default")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args.model)
    layers = list(range(1, num_blocks(model) + 1))  # 0 (embeddings) sees only the generation prompt's last token
    bank = FeatureBank(model, tokenizer, batch_size=32, layers=layers)
    start = time.perf_counter()
    for source in FIT_HARMFUL + FIT_BENIGN + VAL_HARMFUL + VAL_BENIGN:
        bank(source)
    feature_seconds = time.perf_counter() - start
    candidates = layer_candidates(bank, FIT_HARMFUL, FIT_BENIGN, layers, VAL_HARMFUL, VAL_BENIGN)
    chosen = best_candidate(candidates, VAL_HARMFUL, VAL_BENIGN).layers[0]
    limit = {HARD_NEGATIVES: args.max_flagged}
    constrained = best_candidate(candidates, VAL_HARMFUL, VAL_BENIGN, limit).layers[0]
    tested = layers if args.test_every_layer else sorted({chosen, constrained, args.default_layer})
    test_bank = FeatureBank(model, tokenizer, batch_size=32, layers=tested)
    rows = []
    for probe, row in candidates:
        if row["layer"] not in tested:
            rows.append(row)
            print(
                f"layer {row['layer']:2d}  validation mean {row['val_mean_auroc']:.3f} flagged "
                f"{row['val_flagged'][HARD_NEGATIVES]:.3f}",
                flush=True,
            )
            continue
        result = evaluate(probe, test_bank, TEST_HARMFUL, TEST_BENIGN)
        aurocs = {s: m["auroc"] for s, m in result["per_harmful_set"].items()}
        held_out = [aurocs[s] for s in TEST_HARMFUL[1:]]
        rows.append(
            {
                **row,
                "test_auroc": aurocs,
                "test_mean_of_four": float(np.mean(held_out)),
                "test_worst_of_four": float(min(held_out)),
                "test_flagged_share": {s: result["flagged_share"][s] for s in TEST_BENIGN},
            }
        )
        marks = [(chosen, "chosen by AUROC"), (constrained, f"chosen with ≤ {args.max_flagged:.0%} flagged")]
        mark = ", ".join(m for layer, m in marks if layer == row["layer"]) or (
            "default" if row["layer"] == args.default_layer else ""
        )
        print(
            f"layer {row['layer']:2d}  validation mean {row['val_mean_auroc']:.3f} flagged "
            f"{row['val_flagged'][HARD_NEGATIVES]:.3f}  test: HarmBench "
            f"{aurocs['harmbench-test']:.3f}  four held-out mean {np.mean(held_out):.3f} worst {min(held_out):.3f}  "
            f"XSTest-safe flagged {result['flagged_share']['xstest-safe:125-250']:.3f}  {mark}",
            flush=True,
        )
    summary = {
        "chosen_by_auroc": chosen,
        "max_flagged": args.max_flagged,
        "chosen_with_max_flagged": constrained,
        "default": args.default_layer,
        "fit_and_validation_feature_seconds": feature_seconds,
        "rows": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
