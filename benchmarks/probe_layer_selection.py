"""The probe's layer chosen on a validation split instead of on the held-out sets, on the safe reference.

    python benchmarks/probe_layer_selection.py --model runs/demo/reference/model --out docs/probe/layer_selection.json

`tether demo`'s probe uses layer 11, picked (on the un-aligned model, `docs/probe.md`) by the mean AUROC of the very
held-out sets it is then reported on. Here every layer is a candidate, fit on the demo's fit sets (AdvBench + 600
safety-tuned-llamas instructions vs Alpaca 1k + 600 GSM8K questions, C by 5-fold CV, Platt-calibrated), the layer is
chosen by the mean validation AUROC (`tether probe fit --val_harmful ... --val_benign ...`), once freely and once
among the layers that flag at most 10% of the validation XSTest safe prompts (`--val_max_flagged
xstest-safe:125=0.1`, the XSTest target), and only then scored on test sets that share nothing with the
validation sets (every layer with `--test_every_layer`, else the two chosen layers and the default):
- validation: harmful HarmBench's own validation split (41) and the first 100 XSTest unsafe prompts; benign AlpacaEval
  prompts 300–804 and the first 125 XSTest safe prompts (hard negatives);
- test: harmful HarmBench's test split (159), I-CoNa, I-Controversial, I-MaliciousInstructions,
  I-PhysicalSafetyUnsafe; benign the first 300 AlpacaEval prompts, XSTest safe prompts 125–249, I-Alpaca,
  I-PhysicalSafetySafe.
XSTest lists its prompts by type (homonyms first, ...), so its first and second halves hold different types.
`--split interleaved` takes the even-numbered XSTest prompts for validation (`xstest-safe:0-250/2`,
`xstest-unsafe:0-200/2`) and the odd-numbered safe ones for the test (`xstest-safe:1-250/2`): the same types on
both sides.
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
TEST_HARMFUL = ["harmbench-test", "I-CoNa", "I-Controversial", "I-MaliciousInstructions", "I-PhysicalSafetyUnsafe"]
SPLITS = {  # XSTest: (validation unsafe, validation safe = the hard negatives, test safe)
    "halves": ("xstest-unsafe:100", "xstest-safe:125", "xstest-safe:125-250"),
    "interleaved": ("xstest-unsafe:0-200/2", "xstest-safe:0-250/2", "xstest-safe:1-250/2"),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="runs/demo/reference/model")
    parser.add_argument("--default_layer", type=int, default=DEMO_PROBE.layers[0])
    parser.add_argument("--max_flagged", type=float, default=0.1, help="the constrained choice's limit on XSTest")
    parser.add_argument("--test_every_layer", action="store_true", help="else only the chosen layers and the default")
    parser.add_argument("--split", choices=list(SPLITS), default="halves", help="how XSTest is split (see above)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    xstest_unsafe, hard_negatives, xstest_test = SPLITS[args.split]
    val_harmful, val_benign = ["harmbench-val", xstest_unsafe], ["alpaca-eval:300-805", hard_negatives]
    test_benign = ["alpaca-eval:300", xstest_test, "I-Alpaca", "I-PhysicalSafetySafe"]
    model, tokenizer = load_model_and_tokenizer(args.model)
    layers = list(range(1, num_blocks(model) + 1))  # 0 (embeddings) sees only the generation prompt's last token
    bank = FeatureBank(model, tokenizer, batch_size=32, layers=layers)
    start = time.perf_counter()
    for source in FIT_HARMFUL + FIT_BENIGN + val_harmful + val_benign:
        bank(source)
    feature_seconds = time.perf_counter() - start
    candidates = layer_candidates(bank, FIT_HARMFUL, FIT_BENIGN, layers, val_harmful, val_benign)
    chosen = best_candidate(candidates, val_harmful, val_benign).layers[0]
    limit = {hard_negatives: args.max_flagged}
    constrained = best_candidate(candidates, val_harmful, val_benign, limit).layers[0]
    tested = layers if args.test_every_layer else sorted({chosen, constrained, args.default_layer})
    test_bank = FeatureBank(model, tokenizer, batch_size=32, layers=tested)
    rows = []
    for probe, row in candidates:
        if row["layer"] not in tested:
            rows.append(row)
            print(
                f"layer {row['layer']:2d}  validation mean {row['val_mean_auroc']:.3f} flagged "
                f"{row['val_flagged'][hard_negatives]:.3f}",
                flush=True,
            )
            continue
        result = evaluate(probe, test_bank, TEST_HARMFUL, test_benign)
        aurocs = {s: m["auroc"] for s, m in result["per_harmful_set"].items()}
        held_out = [aurocs[s] for s in TEST_HARMFUL[1:]]
        rows.append(
            {
                **row,
                "test_auroc": aurocs,
                "test_mean_of_four": float(np.mean(held_out)),
                "test_worst_of_four": float(min(held_out)),
                "test_flagged_share": {s: result["flagged_share"][s] for s in test_benign},
            }
        )
        marks = [(chosen, "chosen by AUROC"), (constrained, f"chosen with ≤ {args.max_flagged:.0%} flagged")]
        mark = ", ".join(m for layer, m in marks if layer == row["layer"]) or (
            "default" if row["layer"] == args.default_layer else ""
        )
        print(
            f"layer {row['layer']:2d}  validation mean {row['val_mean_auroc']:.3f} flagged "
            f"{row['val_flagged'][hard_negatives]:.3f}  test: HarmBench "
            f"{aurocs['harmbench-test']:.3f}  four held-out mean {np.mean(held_out):.3f} worst {min(held_out):.3f}  "
            f"XSTest-safe flagged {result['flagged_share'][xstest_test]:.3f}  {mark}",
            flush=True,
        )
    summary = {
        "split": args.split,
        "validation": {"harmful": val_harmful, "benign": val_benign},
        "test": {"harmful": TEST_HARMFUL, "benign": test_benign},
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
