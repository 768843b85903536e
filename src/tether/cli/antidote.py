"""`tether antidote --model RUN_OR_MODEL --data HARMFUL_CHAT_DATA --ratio R --out DIR`: the Antidote baseline,
one-shot pruning after fine-tuning (`tether.baselines.antidote`). Writes a plain transformers model directory plus
`antidote.json`."""

from __future__ import annotations

import argparse

from tether.errors import ArgumentParser

EXAMPLES = """examples:
  tether antidote --model runs/my-finetune --data advbench-targets --limit 128 --ratio 0.1 --out runs/pruned
  tether eval --model runs/pruned --benchmark harmbench:~50 --out evals/pruned"""


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
    p.add_argument(
        "--data_dir",
        default=None,
        help="folder of the named sets (default $TETHER_DATA_DIR, else ../shared/data, else the Hub)",
    )
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=256, help="tokens per row (prompt and response)")
    return p


def main(argv: list[str]) -> int:
    from tether.baselines.antidote import antidote_to_dir

    args = make_parser().parse_args(argv)
    antidote_to_dir(
        args.model,
        args.data,
        args.out,
        ratio=args.ratio,
        limit=args.limit,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    return 0
