"""`tether safelora --model RUN --unaligned MODEL --out DIR`: the Safe LoRA baseline, a data-free projection of a
LoRA run's adapter onto the alignment directions after fine-tuning (`tether.baselines.safe_lora`). Writes a plain
transformers model directory plus `safe_lora.json`."""

from __future__ import annotations

import argparse

from tether.errors import ArgumentParser

EXAMPLES = """examples:
  tether safelora --model runs/my-finetune --unaligned smollm2-135m-instruct --out runs/safelora
  tether safelora --model runs/my-finetune --unaligned smollm2-135m-instruct --threshold 0.35 --out runs/safelora
  tether eval --model runs/safelora --benchmark harmbench:~50 --out evals/safelora"""


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tether safelora", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a tether LoRA run directory whose base is the safe reference")
    p.add_argument("--unaligned", required=True, help="the model the reference was aligned from (same architecture)")
    p.add_argument("--out", required=True, help="output model directory (must not exist or be empty)")
    p.add_argument("--num_layers", type=int, default=None, help="project the N least aligned layers (default 10)")
    p.add_argument("--threshold", type=float, default=None, help="or: project every layer with cosine <= this")
    return p


def main(argv: list[str]) -> int:
    from tether.baselines.safe_lora import safe_lora_to_dir

    args = make_parser().parse_args(argv)
    safe_lora_to_dir(args.model, args.unaligned, args.out, num_layers=args.num_layers, threshold=args.threshold)
    return 0
