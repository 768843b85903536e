"""Batched generation against one prompt at a time, on the same prompts: speed ratio and identical outputs.

    python benchmarks/generation.py --n 100 --max_new_tokens 64 --batch_size 16 --sequential_n 24

Times `tether.evaluation.generate` on the first `--n` HarmBench standard behaviours (batched, left padding), then
one prompt at a time on the first `--sequential_n` of them; reports seconds per prompt for both, their ratio, and
the share of those prompts whose batched output equals the one-at-a-time output exactly.
"""

from __future__ import annotations

import argparse
import json
import time

from tether.data.prompts import load_prompts
from tether.evaluation.generate import generate
from tether.modeling import load_model_and_tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--sequential_n", type=int, default=24)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    prompts = load_prompts(f"harmbench:{args.n}", args.data_dir)
    start = time.perf_counter()
    batched = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    batched_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sequential = [
        generate(model, tokenizer, [p], args.max_new_tokens, progress=False)[0] for p in prompts[: args.sequential_n]
    ]
    sequential_seconds = time.perf_counter() - start
    per_prompt_batched = batched_seconds / len(prompts)
    per_prompt_sequential = sequential_seconds / args.sequential_n
    result = {
        "model": args.model,
        "n_batched": len(prompts),
        "n_sequential": args.sequential_n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "batched_seconds_total": batched_seconds,
        "seconds_per_prompt_batched": per_prompt_batched,
        "seconds_per_prompt_sequential": per_prompt_sequential,
        "speedup": per_prompt_sequential / per_prompt_batched,
        "identical_outputs": sum(a == b for a, b in zip(batched, sequential, strict=False)) / args.sequential_n,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
