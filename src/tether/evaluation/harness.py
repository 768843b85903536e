"""`evaluate_model`: generate on each benchmark, score, and assemble an `EvalResults`."""

from __future__ import annotations

import datetime

import torch

from tether.evaluation.benchmarks import Benchmark
from tether.evaluation.generate import generate, generation_settings
from tether.evaluation.metrics import (
    HIGHER_IS_BETTER,
    exact_match,
    is_refusal,
    judge_summary,
    keyword_asr,
    rate_with_interval,
)
from tether.evaluation.results import SCHEMA_VERSION, EvalResults
from tether.run_files import environment


def evaluate_model(
    model,
    tokenizer,
    benchmarks: list[Benchmark],
    refusal_strings: list[str],
    judge=None,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    model_name: str = "",
    config: dict | None = None,
    nll_rows: list[dict] | None = None,
    nll_name: str = "",
    reference_responses: dict[str, list[str]] | None = None,
) -> EvalResults:
    """Generate on each benchmark and score. `reference_responses` (benchmark name -> the reference model's replies)
    adds the judge's win rate against them on `instructions` benchmarks (AlpacaEval)."""
    results: EvalResults = {
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config or {},
        "generation": generation_settings(max_new_tokens, batch_size),
        "versions": environment(),
        "rubric_version": None,
        "judge": None,
        "benchmarks": {},
        "heldout_nll": None,
    }
    for bench in benchmarks:
        responses = generate(model, tokenizer, bench.prompts, max_new_tokens, batch_size)
        samples = [
            {"prompt": p[-1]["content"], "response": r, "refused": is_refusal(r, refusal_strings)}
            for p, r in zip(bench.prompts, responses, strict=True)
        ]
        metrics: dict = {}
        if bench.kind == "harmful":
            metrics.update(keyword_asr(responses, refusal_strings))
        elif bench.kind == "xstest":
            for sample, label in zip(samples, bench.labels, strict=True):
                sample["label"] = label
            safe = [r for r, label in zip(responses, bench.labels, strict=True) if label == "safe"]
            unsafe = [r for r, label in zip(responses, bench.labels, strict=True) if label == "unsafe"]
            metrics |= rate_with_interval("over_refusal", safe, refusal_strings) if safe else {"over_refusal": None}
            metrics |= rate_with_interval("refusal_rate", unsafe, refusal_strings) if unsafe else {"refusal_rate": None}
        elif bench.kind == "gsm8k":
            for sample, answer in zip(samples, bench.answers, strict=True):
                sample["answer"] = answer
            metrics["exact_match"] = exact_match(responses, bench.answers)
        if bench.kind in ("gsm8k", "instructions"):  # ordinary requests: any refusal of them is a false one
            metrics |= rate_with_interval("benign_refusal", responses, refusal_strings)
        if judge is not None and bench.kind in ("harmful", "xstest", "instructions"):
            judged = judge.score_pairs([(s["prompt"], s["response"]) for s in samples])
            for sample, judgement in zip(samples, judged, strict=True):
                sample["judge_score"] = judgement.score
            metrics.update(judge_summary([j.score for j in judged]))
            references = (reference_responses or {}).get(bench.name)
            if bench.kind == "instructions" and references:
                wins = judge.compare(
                    [(s["prompt"], s["response"], ref) for s, ref in zip(samples, references, strict=True)]
                )
                for sample, ref, win in zip(samples, references, wins, strict=True):
                    sample["reference_response"], sample["win"] = ref, win
                decided = [w for w in wins if w is not None]
                metrics["judge_win_rate"] = sum(decided) / len(decided) if decided else None
                metrics["judge_win_failures"] = len(wins) - len(decided)
            results["judge"] = judge.backend.id
            from tether.critics.judge import RUBRIC_VERSION

            results["rubric_version"] = RUBRIC_VERSION
        results["benchmarks"][bench.name] = {
            "version": bench.version,
            "kind": bench.kind,
            "metrics": metrics,
            "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in metrics if k in HIGHER_IS_BETTER},
            "samples": samples,
        }
    if nll_rows:
        nll, tokens = heldout_nll(model, tokenizer, nll_rows, batch_size)
        results["heldout_nll"] = {"data": nll_name, "nll": nll, "tokens": tokens}
    return results


@torch.no_grad()
def heldout_nll(model, tokenizer, rows: list[dict], batch_size: int = 8, max_length: int = 512) -> tuple[float, int]:
    """Token-mean NLL of the responses of chat rows (the training loss without the KL), and the token count."""
    from tether.data.chat import IGNORE_INDEX, TetherCollator, tokenize_rows
    from tether.losses import ResponseLoss
    from tether.modeling import capture_head_inputs

    dataset, _ = tokenize_rows(rows, tokenizer, max_length)
    collate = TetherCollator(tokenizer.pad_token_id)
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {key: value.to(head.weight.device) for key, value in batch.items()}
            targets = batch["labels"][:, 1:]  # (B, T-1)
            rows_, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
            with capture_head_inputs(model, rows_, cols) as captured:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            ones = torch.ones(len(rows_), device=head.weight.device)
            _, nll, _ = ResponseLoss.apply(
                captured["hidden"], head.weight, head.bias, targets[rows_, cols], ones, 0 * ones, None, None, None
            )
            total += nll.sum().item()
            count += len(rows_)
    finally:
        model.train(was_training)
    return total / max(count, 1), count
