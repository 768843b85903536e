"""`tether antidote --model RUN_OR_MODEL --data HARMFUL_CHAT_DATA --ratio R --out DIR`: the Antidote baseline, one-shot
pruning after fine-tuning (`tether.antidote`). Writes a plain transformers model directory plus `antidote.json`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tether.errors import ArgumentParser, TetherInputError

EXAMPLES = """examples:
  tether antidote --model runs/my-finetune --data advbench-targets --limit 128 --ratio 0.1 --out runs/pruned
  tether eval --model runs/pruned --benchmark harmbench:50 --out evals/pruned"""


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tether antidote", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a tether run directory (LoRA: its adapter is pruned) or a model")
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="harmful chat data (prompt and harmful response) to measure activations on, e.g. advbench-targets",
    )
    p.add_argument("--limit", type=int, default=None, help="use the first N rows of the data (default: all)")
    p.add_argument("--ratio", type=float, default=0.1, help="share of each weight matrix set to zero (default 0.1)")
    p.add_argument("--out", required=True, help="output model directory (must not exist or be empty)")
    p.add_argument("--data_dir", default=None, help="folder of the named datasets (default ../shared/data)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=256, help="tokens per row (prompt and response)")
    return p


def main(argv: list[str]) -> int:
    from tether.antidote import antidote_prune, check_ratio
    from tether.data.sources import load_examples
    from tether.modeling import load_trained, save_model_dir

    args = make_parser().parse_args(argv)
    check_ratio(args.ratio)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TetherInputError(f"--out {out} already exists and is not empty; pass another directory")
    if args.limit is not None and args.limit < 1:
        raise TetherInputError(f"--limit must be at least 1, got {args.limit}")
    rows = [row for source in args.data for row in load_examples(source, args.data_dir)][: args.limit]
    if not rows:
        raise TetherInputError(f"--data {' '.join(args.data)} holds no rows; pass harmful chat data")
    model, tokenizer = load_trained(args.model, merge=False)
    summary = antidote_prune(model, tokenizer, rows, args.ratio, args.batch_size, args.max_length)
    if hasattr(model, "merge_and_unload"):  # a LoRA run: the pruned adapter joins the base weights
        model = model.merge_and_unload()
    record = {"model": args.model, "data": args.data, "limit": args.limit, "ratio": args.ratio, **summary}
    save_model_dir(model, tokenizer, out, {"antidote.json": json.dumps(record, indent=1)})
    share = summary["pruned"] / summary["total"]
    print(
        f"pruned {summary['pruned']:,} of {summary['total']:,} weights ({share:.1%}) in {len(summary['layers'])} "
        f"matrices, measured on {summary['rows']} rows; model: {out}"
    )
    return 0
