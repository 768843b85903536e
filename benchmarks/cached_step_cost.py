"""What a step with the reference cache warm still pays beyond SFT's, part by part, on one model.

1. The reference's LM-head product and log-softmax at the batch's response positions ((N, d) @ (d, V), no grad): the
   cache keeps the head's input so that the KL stays exact, and recomputes the reference's logits from it.
2. tether's default's canary check (`CanaryCallback`: the policy's refusal mass on the canary prompts, one no-grad
   forward), run every `canary_every` steps: with the chat template's shared opening as a key/value cache (as tether
   runs it) and without (every prompt's every token).

Each the median of `--repeats` timed runs after a warm-up. Run it with nothing else on the machine.

    python benchmarks/cached_step_cost.py --model smollm2-135m-instruct --positions 885
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest import mock

import torch


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    from tether.critics.refusal import refusal_scores, refusal_start_ids
    from tether.data.prompts import load_prompts
    from tether.modeling import load_model_and_tokenizer
    from tether.trainer.tether_config import ADAPTIVE_DEFAULTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--positions", type=int, default=885, help="response tokens per batch (train_step.py's)")
    parser.add_argument("--canary_prompts", default=ADAPTIVE_DEFAULTS["canary_prompts"])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="a JSON file for the results")
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    head = model.get_output_embeddings().weight.detach()  # (V, d)
    hidden = torch.randn(args.positions, head.shape[1]) * head.std()  # (N, d)

    def reference_head():
        with torch.no_grad():
            return (hidden @ head.T).log_softmax(-1)  # (N, V)

    prompts = load_prompts(args.canary_prompts, args.data_dir)
    token_ids = refusal_start_ids(tokenizer, user="canary_prompts")

    def canary_check():
        return refusal_scores(model, tokenizer, prompts, batch_size=32, token_ids=token_ids)

    results = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "positions": args.positions,
        "vocab": head.shape[0],
        "hidden": head.shape[1],
        "reference_head_seconds": median_seconds(reference_head, args.repeats),
        "canary_prompts": len(prompts),
        "canary_check_seconds": median_seconds(canary_check, args.repeats),
    }
    with mock.patch("tether.modeling.shared_prefix_length", return_value=0):
        results["canary_check_without_prefix_cache_seconds"] = median_seconds(canary_check, args.repeats)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
