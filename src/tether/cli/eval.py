"""`tether eval --model MODEL_OR_RUN_DIR --benchmark NAME_OR_FILE [...] --out DIR`."""

from __future__ import annotations

import argparse

from tether.errors import ArgumentParser

EXAMPLES = """examples:
  tether eval --model smollm2-135m-instruct --benchmark harmbench:~100 xstest --max_new_tokens 64 --out evals/base
  tether eval --model runs/demo --benchmark harmbench gsm8k:200 --nll_data gsm8k-test \\
      --judge_url http://127.0.0.1:8000/v1 --judge_model gpt-oss-20b --out evals/demo"""


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tether eval", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="short name, directory, .gguf, hub id, or a tether run directory")
    p.add_argument(
        "--benchmark",
        nargs="*",
        default=[],
        help="a prompt set (harmbench, advbench, xstest, xstest-safe, gsm8k-test, alpaca-eval, I-Alpaca, ...), "
        "hexphi:PATH or a file; NAME:N keeps the first N, NAME:A-B items A to B-1, NAME:A-B/S every S-th of those, "
        "NAME:~N N evenly spread; may be left out with --nll_data (held-out NLL only)",
    )
    p.add_argument("--out", required=True, help="output directory (results.json, summary.md)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--refusal_strings", default=None, help="refusal keyword file (default: the llm-attacks list)")
    p.add_argument("--nll_data", default=None, help="benign chat data for held-out response NLL")
    p.add_argument("--nll_limit", type=int, default=200)
    p.add_argument("--judge_url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge_model", default=None)
    p.add_argument("--judge_api_key_env", default="OPENAI_API_KEY")
    p.add_argument("--judge_concurrency", type=int, default=4)
    p.add_argument("--judge_timeout", type=float, default=60.0)
    p.add_argument("--judge_cache_dir", default=None, help="default: <cache>/judge")
    p.add_argument("--judge_max_failure_rate", type=float, default=0.01)
    p.add_argument(
        "--reference_model",
        default=None,
        help="with a judge: win rate on alpaca-eval against this model's replies (e.g. the safe reference)",
    )
    return p


def main(argv: list[str]) -> int:
    from tether.evaluation.run import evaluate_to_dir

    args = make_parser().parse_args(argv)
    out = evaluate_to_dir(
        args.model,
        args.benchmark,
        args.out,
        data_dir=args.data_dir,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        refusal_strings=args.refusal_strings,
        nll_data=args.nll_data,
        nll_limit=args.nll_limit,
        judge_url=args.judge_url,
        judge_model=args.judge_model,
        judge_api_key_env=args.judge_api_key_env,
        judge_concurrency=args.judge_concurrency,
        judge_timeout=args.judge_timeout,
        judge_cache_dir=args.judge_cache_dir,
        judge_max_failure_rate=args.judge_max_failure_rate,
        reference_model=args.reference_model,
    )
    print((out / "summary.md").read_text())
    print(f"results: {out / 'results.json'}")
    return 0
