"""What standardization, class balance and the training mix do to the layer-11 probe (features from the cache that
`benchmarks/probe_sweep.py --features_cache` wrote; nothing is recomputed).

    python benchmarks/probe_ablation.py --features_cache /tmp/probe_features.pt --out docs/probe/ablation.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tether.critics.probe import fit_probe, probe_metrics

sys.path.insert(0, str(Path(__file__).parent))
from probe_sweep import EVAL_BENIGN, EVAL_HARMFUL  # noqa: E402

VARIANTS = {
    "default (standardized, balanced, full mix)": ({}, ["advbench", "safety-llamas:1000"], ["alpaca", "gsm8k:500"]),
    "no standardization": ({"standardize": False}, ["advbench", "safety-llamas:1000"], ["alpaca", "gsm8k:500"]),
    "no class balancing": ({"class_weight": None}, ["advbench", "safety-llamas:1000"], ["alpaca", "gsm8k:500"]),
    "harmful = AdvBench only": ({}, ["advbench"], ["alpaca", "gsm8k:500"]),
    "benign = Alpaca only": ({}, ["advbench", "safety-llamas:1000"], ["alpaca"]),
    "AdvBench vs Alpaca only": ({}, ["advbench"], ["alpaca"]),
    **{
        f"harmful = AdvBench + first {n} safety-llamas": (
            {"harmful_rows": n},
            ["advbench", "safety-llamas:1000"],
            ["alpaca", "gsm8k:500"],
        )
        for n in (100, 250, 500)
    },
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--features_cache", required=True)
    parser.add_argument("--layer", type=int, default=11)
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cache = torch.load(args.features_cache)
    layer = [args.layer]

    def feats(sources, rows_of_last=None):
        parts = [cache[s][:, layer] for s in sources]
        if rows_of_last is not None:
            parts[-1] = parts[-1][:rows_of_last]
        return torch.cat(parts)

    rows = []
    for name, (options, harmful, benign) in VARIANTS.items():
        options = dict(options)
        harmful_feats = feats(harmful, options.pop("harmful_rows", None))
        probe = fit_probe(harmful_feats, feats(benign), layer, "last-layer", C=args.C, **options)
        benign_scores = torch.cat([probe.score(cache[s][:, layer]) for s in EVAL_BENIGN]).numpy()
        aurocs = {
            s: probe_metrics(probe.score(cache[s][:, layer]).numpy(), benign_scores)["auroc"] for s in EVAL_HARMFUL
        }
        fpr = {s: float((probe.score(cache[s][:, layer]) >= 0.5).float().mean()) for s in EVAL_BENIGN}
        rows.append({"variant": name, "auroc": aurocs, "flagged_share": fpr})
        print(f"{name:45s}", " ".join(f"{v:.3f}" for v in aurocs.values()), f"xstest-safe FPR {fpr['xstest-safe']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
