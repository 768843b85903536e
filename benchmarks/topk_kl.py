"""What a top-k summary of the reference would cost in exactness, against the LM-head inputs the reference cache keeps.

For each response token of the attack data, the exact forward KL(π_ref ‖ π_θ) and its gradient with respect to the
policy's logits (q − p, q the policy's and p the reference's distribution) against a top-k cache: the reference's k
largest probabilities with their ids plus the tail's mass m, the tail treated as one outcome (the KL over the k tokens
and the lumped tail) and its gradient q − p̃, where p̃ spreads m over the tail in proportion to the policy's q (the
closed form of that coarsened KL). Reported per k: the relative error of the mean KL and the mean relative error of
the gradient (‖g̃ − g‖ / ‖g‖ per token), and the tail mass. The reference cache keeps the head's input instead, so
its KL is exact (0 error) at d numbers per token.

    python benchmarks/topk_kl.py --run runs/safe-reference/runs/pure-bad/sft/seed0 --data pure-bad --limit 100
"""

from __future__ import annotations

import argparse
import json

import torch

from tether.data.chat import TetherCollator, tokenize_rows
from tether.data.sources import load_examples
from tether.modeling import load_trained
from tether.trainer.tether_trainer import ResponsePositions


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a tether LoRA run directory (the policy; its base is π_ref)")
    parser.add_argument("--data", default="pure-bad")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load_trained(args.run, merge=False)
    model.eval()
    rows = load_examples(args.data, args.data_dir)[: args.limit]
    dataset, _ = tokenize_rows(rows, tokenizer, args.max_length)
    collate = TetherCollator(tokenizer.pad_token_id)
    totals = {k: {"kl": 0.0, "grad_error": 0.0, "tail": 0.0} for k in args.ks}
    exact_kl, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), 10):
            batch = collate([dataset[i] for i in range(start, min(start + 10, len(dataset)))])
            positions = ResponsePositions.of(batch)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logq = model(**inputs).logits[:, :-1][positions.rows, positions.cols].float().log_softmax(-1)  # (N, V)
            with model.disable_adapter():
                logp = model(**inputs).logits[:, :-1][positions.rows, positions.cols].float().log_softmax(-1)
            p, q = logp.exp(), logq.exp()
            exact = (p * (logp - logq)).sum(-1)  # (N,)
            grad = q - p  # (N, V)
            exact_kl += exact.sum().item()
            tokens += exact.numel()
            for k in args.ks:
                top_logp, ids = logp.topk(k, dim=-1)  # (N, k)
                top_p, top_q = top_logp.exp(), q.gather(1, ids)
                tail_p = (1 - top_p.sum(-1)).clamp(min=1e-12)  # (N,)
                tail_q = (1 - top_q.sum(-1)).clamp(min=1e-12)
                approx = (top_p * (top_logp - logq.gather(1, ids))).sum(-1) + tail_p * (tail_p.log() - tail_q.log())
                spread = q * (tail_p / tail_q)[:, None]  # (N, V): the tail's mass spread like the policy's
                p_tilde = spread.scatter(1, ids, top_p)
                error = ((q - p_tilde) - grad).norm(dim=-1) / grad.norm(dim=-1).clamp(min=1e-12)
                totals[k]["kl"] += approx.sum().item()
                totals[k]["grad_error"] += error.sum().item()
                totals[k]["tail"] += tail_p.sum().item()
    mean_kl = exact_kl / tokens
    result = {
        "run": args.run,
        "data": args.data,
        "examples": len(dataset),
        "response_tokens": tokens,
        "exact_mean_kl": mean_kl,
        "top_k": {
            k: {
                "mean_kl_relative_error": (t["kl"] / tokens - mean_kl) / mean_kl,
                "gradient_relative_error": t["grad_error"] / tokens,
                "mean_tail_mass": t["tail"] / tokens,
            }
            for k, t in totals.items()
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
