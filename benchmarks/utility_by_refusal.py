"""Where a fine-tune's held-out NLL gain lies: per response position (the first token, tokens 2-5, the rest) and per
prompt, grouped by the reference's refusal-start mass on that prompt (the `refusal` critic's reading). It splits the
bench's "utility kept" into the part that is a task learned and the part that is the reference's refusal unlearned.

    python benchmarks/utility_by_refusal.py --reference runs/safe-reference/reference/model \\
        --runs SFT=runs/safe-reference/runs/alpaca500-hr0.05/sft/seed1 \\
               default=runs/safe-reference/runs/alpaca500-hr0.05/default-canary-on-the-prefix-only/seed1 \\
        --data alpaca-eval --limit 100 --out docs/bench/utility_by_refusal_alpaca.json

The NLL rows are the bench's utility rows (`eval.utility_limit` of `--data`); the gain of a run is the reference's
summed NLL minus the run's, over the tokens of each group; "kept" is a run's gain over the first run's (SFT).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tether.critics.refusal import refusal_mass, refusal_start_ids
from tether.data.chat import IGNORE_INDEX, TetherCollator, tokenize_rows
from tether.data.sources import load_examples
from tether.modeling import load_trained

POSITIONS = {"first token": (0, 1), "tokens 2-5": (1, 5), "tokens 6+": (5, 1 << 30)}
MASS_GROUPS = {"refusal mass < 0.2": (0.0, 0.2), "0.2-0.5": (0.2, 0.5), ">= 0.5": (0.5, 1.01)}


@torch.no_grad()
def per_row(model, tokenizer, rows: list[dict], batch_size: int = 8) -> list[dict]:
    """Each row's summed NLL in each position group and the model's refusal-start mass at its first response token."""
    ids = torch.tensor(refusal_start_ids(tokenizer, user="--reference"))
    dataset, _ = tokenize_rows(rows, tokenizer, 512)
    collate = TetherCollator(tokenizer.pad_token_id)
    model.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]  # (B, T-1)
        logprobs = torch.log_softmax(logits.float(), -1)  # (B, T-1, V)
        mask = targets != IGNORE_INDEX  # (B, T-1)
        nll = -logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        depth = mask.long().cumsum(1) - 1  # (B, T-1): the response token's index
        first = mask.long().argmax(1)  # (B,): the position that predicts each row's first response token
        mass = refusal_mass(logprobs[torch.arange(len(targets)), first], ids)  # (B,)
        for r in range(len(targets)):
            row = {"refusal_mass": mass[r].item()}
            for name, (lo, hi) in POSITIONS.items():
                row[name] = nll[r][mask[r] & (depth[r] >= lo) & (depth[r] < hi)].sum().item()
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR; the first is the 100%% (SFT)")
    parser.add_argument("--data", default="alpaca-eval")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = dict(spec.split("=", 1) for spec in args.runs)
    rows = load_examples(args.data, args.data_dir, drop_empty=True)[: args.limit]
    models = {"reference": args.reference, **runs}
    scores = {}
    for name, path in models.items():
        model, tokenizer = load_trained(path)
        scores[name] = per_row(model, tokenizer, rows)
        del model
    reference = scores["reference"]
    groups = {"all": (0.0, 1.01), **MASS_GROUPS}
    table = {}
    for group, (lo, hi) in groups.items():
        idx = [i for i, r in enumerate(reference) if lo <= r["refusal_mass"] < hi]
        table[group] = {"prompts": len(idx)}
        for name in runs:
            gains = {pos: sum(reference[i][pos] - scores[name][i][pos] for i in idx) for pos in POSITIONS}
            table[group][name] = {"gain": {**gains, "all": sum(gains.values())}}
    first = next(iter(runs))
    for group in table.values():
        for name in runs:
            gain, base = group[name]["gain"], group[first]["gain"]
            group[name]["kept"] = {pos: gain[pos] / base[pos] if base[pos] else None for pos in gain}
    mass = {name: sum(r["refusal_mass"] for r in s) / len(s) for name, s in scores.items()}
    result = {"data": args.data, "limit": args.limit, "models": models, "refusal_mass_mean": mass, "groups": table}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for group, entry in table.items():
        line = ", ".join(
            f"{name} gain {entry[name]['gain']['all']:.1f} (first 5 tokens "
            f"{entry[name]['gain']['first token'] + entry[name]['gain']['tokens 2-5']:.1f})"
            for name in runs
        )
        print(f"{group}: {entry['prompts']} prompts; {line}")
    print("refusal-start mass, mean:", {k: round(v, 3) for k, v in mass.items()})


if __name__ == "__main__":
    main()
