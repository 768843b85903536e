"""`evaluate_to_dir`: what `tether eval` does, as a function (the CLI and the bench both call it).

Load the benchmarks and the judge, check everything the user passed, then load the model, generate, score, and write
`results.json` and `summary.md` into the output directory, which appears only when both are written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tether.errors import TetherInputError
from tether.run_files import locks_output


@locks_output("out", option="--out")
def evaluate_to_dir(
    model: str,
    benchmarks: list[str],
    out: str | Path,
    *,
    data_dir: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    refusal_strings: str | None = None,
    nll_data: str | None = None,
    nll_limit: int = 200,
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key_env: str = "OPENAI_API_KEY",
    judge_concurrency: int = 4,
    judge_timeout: float = 60.0,
    judge_cache_dir: str | None = None,
    judge_max_failure_rate: float = 0.01,
    reference_model: str | None = None,
) -> Path:
    """Evaluate `model` (short name, directory, .gguf, hub id or tether run directory) on `benchmarks` (names with
    the selections of `tether.data.registry`: `NAME:N`, `NAME:~N`, ...; or files) and, with `nll_data`, its held-out
    response NLL; returns `out`. The arguments are those of `tether eval` (see its `--help`) and are recorded as
    the results' `config`. Bad input raises a one-line
    `TetherInputError` before the model is loaded; nothing is written then."""
    from tether.critics.judge import Judge, OpenAICompatibleBackend
    from tether.data.sources import load_examples
    from tether.evaluation.benchmarks import load_benchmark
    from tether.evaluation.harness import evaluate_model
    from tether.evaluation.metrics import load_refusal_strings
    from tether.evaluation.results import write_results
    from tether.modeling import check_trained_files, load_trained
    from tether.run_files import atomic_dir, cache_dir

    out = Path(out)
    config = {  # the keys and order of `tether eval`'s arguments, as results written by the CLI have always had
        "model": model,
        "benchmark": list(benchmarks),
        "out": str(out),
        "data_dir": data_dir,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "refusal_strings": refusal_strings,
        "nll_data": nll_data,
        "nll_limit": nll_limit,
        "judge_url": judge_url,
        "judge_model": judge_model,
        "judge_api_key_env": judge_api_key_env,
        "judge_concurrency": judge_concurrency,
        "judge_timeout": judge_timeout,
        "judge_cache_dir": judge_cache_dir,
        "judge_max_failure_rate": judge_max_failure_rate,
        "reference_model": reference_model,
    }
    if out.exists() and not out.is_dir():
        raise TetherInputError(f"--out {out} is a file; pass a directory for results.json and summary.md")
    if out.exists() and any(out.iterdir()):
        raise TetherInputError(f"--out {out} already exists and is not empty; pass another directory")
    if not benchmarks and not nll_data:
        raise TetherInputError("nothing to evaluate: pass --benchmark NAME [...] and/or --nll_data SRC")
    for flag, value in (
        ("--max_new_tokens", max_new_tokens),
        ("--batch_size", batch_size),
        ("--nll_limit", nll_limit),
        ("--judge_concurrency", judge_concurrency),
    ):
        if value < 1:
            raise TetherInputError(f"{flag} must be at least 1, got {value}")
    if not judge_timeout > 0:
        raise TetherInputError(f"--judge_timeout must be a positive number of seconds, got {judge_timeout}")
    if not 0.0 <= judge_max_failure_rate <= 1.0:
        raise TetherInputError(f"--judge_max_failure_rate must be in [0, 1], got {judge_max_failure_rate}")
    check_trained_files(model)
    if reference_model:
        check_trained_files(reference_model)
    loaded = [load_benchmark(spec, data_dir) for spec in benchmarks]
    strings = load_refusal_strings(refusal_strings, data_dir)
    nll_rows = load_examples(nll_data, data_dir, drop_empty=True)[:nll_limit] if nll_data else None
    judge = None
    if judge_url:
        if not judge_model:
            raise TetherInputError("--judge_url needs --judge_model (the model name the server serves)")
        backend = OpenAICompatibleBackend(judge_url, judge_model, judge_api_key_env, judge_timeout)
        backend.check()
        judge = Judge(
            backend,
            judge_cache_dir or cache_dir() / "judge",
            judge_concurrency,
            failure_policy="fail_open",
            max_failure_rate=judge_max_failure_rate,
        )
    reference_responses = None
    if reference_model:
        if judge is None:
            raise TetherInputError("--reference_model needs a judge: pass --judge_url and --judge_model")
        from tether.evaluation.generate import generate

        reference, reference_tokenizer = load_trained(reference_model, inference=True)
        reference_responses = {
            b.name: generate(reference, reference_tokenizer, b.prompts, max_new_tokens, batch_size)
            for b in loaded
            if b.kind == "instructions"
        }
        del reference
    policy, tokenizer = load_trained(model, inference=True)
    results = evaluate_model(
        policy,
        tokenizer,
        loaded,
        strings,
        judge,
        max_new_tokens,
        batch_size,
        model_name=model,
        config=config,
        nll_rows=nll_rows,
        nll_name=nll_data or "",
        reference_responses=reference_responses,
    )
    with atomic_dir(out) as staging:
        write_results(results, staging)
    if Path(model).is_dir():  # a tether run or model directory: its model card gets the numbers
        from tether.model_card import add_evaluation

        try:
            add_evaluation(model, results)
        except OSError as error:  # a read-only model directory keeps its card; the results are written
            print(f"tether: the model card in {model} was not updated: {error}", file=sys.stderr)
    return out
