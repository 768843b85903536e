"""`tether eval --model MODEL_OR_RUN_DIR --benchmark NAME_OR_FILE [...] --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tether.errors import ArgumentParser, TetherInputError

EXAMPLES = """examples:
  tether eval --model smollm2-135m-instruct --benchmark harmbench:100 xstest --max_new_tokens 64 --out evals/base
  tether eval --model runs/demo --benchmark harmbench gsm8k:200 --nll_data gsm8k-test \\
      --judge_url http://127.0.0.1:8000/v1 --judge_model gpt-oss-20b --out evals/demo"""


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="tether eval", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="short name, directory, .gguf, hub id, or a tether run directory")
    p.add_argument(
        "--benchmark",
        nargs="*",
        default=[],
        help="harmbench, advbench, hexphi:PATH, xstest, gsm8k, alpaca_eval (NAME:N keeps N), or a file; may be "
        "left out with --nll_data (held-out NLL only)",
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
        help="with a judge: win rate on alpaca_eval against this model's replies (e.g. the safe reference)",
    )
    return p


def main(argv: list[str]) -> int:
    from tether.critics.judge import Judge, OpenAICompatibleBackend
    from tether.data.sources import load_examples
    from tether.evaluation.benchmarks import load_benchmark
    from tether.evaluation.harness import evaluate_model
    from tether.evaluation.metrics import load_refusal_strings
    from tether.evaluation.results import write_results
    from tether.modeling import cache_dir, load_trained

    args = make_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise TetherInputError(f"--out {out} already exists and is not empty; pass another directory")
    if not args.benchmark and not args.nll_data:
        raise TetherInputError("nothing to evaluate: pass --benchmark NAME [...] and/or --nll_data SRC")
    benchmarks = [load_benchmark(spec, args.data_dir) for spec in args.benchmark]
    refusal_strings = load_refusal_strings(args.refusal_strings, args.data_dir)
    nll_rows = load_examples(args.nll_data, args.data_dir, drop_empty=True)[: args.nll_limit] if args.nll_data else None
    judge = None
    if args.judge_url:
        if not args.judge_model:
            raise TetherInputError("--judge_url needs --judge_model (the model name the server serves)")
        backend = OpenAICompatibleBackend(args.judge_url, args.judge_model, args.judge_api_key_env, args.judge_timeout)
        backend.check()
        judge = Judge(
            backend,
            args.judge_cache_dir or cache_dir() / "judge",
            args.judge_concurrency,
            failure_policy="fail_open",
            max_failure_rate=args.judge_max_failure_rate,
        )
    reference_responses = None
    if args.reference_model:
        if judge is None:
            raise TetherInputError("--reference_model needs a judge: pass --judge_url and --judge_model")
        from tether.evaluation.generate import generate

        reference, reference_tokenizer = load_trained(args.reference_model)
        reference_responses = {
            b.name: generate(reference, reference_tokenizer, b.prompts, args.max_new_tokens, args.batch_size)
            for b in benchmarks
            if b.kind == "instructions"
        }
        del reference
    model, tokenizer = load_trained(args.model)
    results = evaluate_model(
        model,
        tokenizer,
        benchmarks,
        refusal_strings,
        judge,
        args.max_new_tokens,
        args.batch_size,
        model_name=args.model,
        config=vars(args),
        nll_rows=nll_rows,
        nll_name=args.nll_data or "",
        reference_responses=reference_responses,
    )
    path = write_results(results, out)
    print((out / "summary.md").read_text())
    print(f"results: {path}")
    return 0
