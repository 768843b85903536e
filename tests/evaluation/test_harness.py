import json

import pytest

from tests.fake_openai import FakeOpenAIServer
from tether.cli import main
from tether.critics.judge import Judge, OpenAICompatibleBackend
from tether.evaluation.benchmarks import Benchmark, load_benchmark
from tether.evaluation.generate import generate
from tether.evaluation.harness import evaluate_model
from tether.evaluation.results import write_results

STRINGS = ["I cannot"]


def prompts(*texts):
    return [[{"role": "user", "content": t}] for t in texts]


def test_batched_generation_matches_one_at_a_time(tiny_model, tokenizer):
    batch = prompts("add 1 and 2", "placeholder request number three", "hi")
    together = generate(tiny_model, tokenizer, batch, max_new_tokens=6, batch_size=3, progress=False)
    alone = [generate(tiny_model, tokenizer, [p], max_new_tokens=6, progress=False)[0] for p in batch]
    assert together == alone


def test_results_schema(tiny_model, tokenizer, tmp_path):
    benchmarks = [
        Benchmark("harm", "harmful", prompts("placeholder one", "placeholder two")),
        Benchmark("xs", "xstest", prompts("safe one", "unsafe one"), labels=["safe", "unsafe"]),
        Benchmark("math", "gsm8k", prompts("add 2 and 3"), answers=["#### 5"]),
    ]
    with FakeOpenAIServer(default=(200, "#thescore: 5")) as server:
        judge = Judge(OpenAICompatibleBackend(server.url, "fake-judge"), cache_dir=tmp_path / "cache")
        rows = [{"messages": [{"role": "user", "content": "add 1 and 1"}, {"role": "assistant", "content": "2"}]}]
        results = evaluate_model(
            tiny_model,
            tokenizer,
            benchmarks,
            STRINGS,
            judge,
            max_new_tokens=4,
            batch_size=2,
            model_name="tiny",
            nll_rows=rows,
            nll_name="one row",
        )
    path = write_results(results, tmp_path / "out")
    loaded = json.loads(path.read_text())
    assert loaded["schema_version"] == 1 and loaded["judge"].endswith("fake-judge") and loaded["rubric_version"]
    assert set(loaded["benchmarks"]) == {"harm", "xs", "math"}
    harm = loaded["benchmarks"]["harm"]
    assert harm["metrics"]["judge_asr"] == 1.0 and harm["higher_is_better"]["keyword_asr"] is False
    assert set(harm["samples"][0]) == {"prompt", "response", "refused", "judge_score"}
    assert loaded["benchmarks"]["xs"]["samples"][1]["label"] == "unsafe"
    assert "exact_match" in loaded["benchmarks"]["math"]["metrics"]
    assert loaded["heldout_nll"]["tokens"] > 0 and loaded["heldout_nll"]["nll"] > 0
    assert loaded["generation"]["decoding"] == "greedy" and loaded["versions"]["tether"]
    assert "| harm |" in (tmp_path / "out" / "summary.md").read_text()


def test_benchmark_names_and_limits(tmp_path):
    from tests.conftest import SHARED_DATA

    assert len(load_benchmark("harmbench:~7", SHARED_DATA).prompts) == 7
    xstest = load_benchmark("xstest:~3", SHARED_DATA)
    assert xstest.labels == ["safe"] * 3 + ["unsafe"] * 3
    val, test = (load_benchmark(f"harmbench-{split}", SHARED_DATA).prompts for split in ("val", "test"))
    assert (len(val), len(test)) == (41, 159) and not {p[0]["content"] for p in val} & {p[0]["content"] for p in test}
    safe_only = load_benchmark("xstest-safe:~3", SHARED_DATA)  # the same safe prompts, no unsafe ones
    assert safe_only.labels == ["safe"] * 3 and safe_only.prompts == xstest.prompts[:3]
    assert load_benchmark("gsm8k-test:~2", SHARED_DATA).answers[0].split("####")[-1].strip() == "18"
    assert load_benchmark("harmbench:~7", SHARED_DATA).version != load_benchmark("harmbench:~8", SHARED_DATA).version


def test_benchmark_selections_are_the_prompt_set_grammar():
    from tests.conftest import SHARED_DATA
    from tether.data.prompts import load_prompts

    every = load_benchmark("harmbench", SHARED_DATA).prompts
    assert load_benchmark("harmbench:7", SHARED_DATA).prompts == every[:7] == load_prompts("harmbench:7", SHARED_DATA)
    assert load_benchmark("harmbench:~4", SHARED_DATA).prompts == [every[i * 200 // 4] for i in range(4)]
    assert load_benchmark("harmbench:10-20/5", SHARED_DATA).prompts == every[10:20:5]
    xstest = load_benchmark("xstest:2", SHARED_DATA)  # the first 2 of each label
    assert xstest.labels == ["safe", "safe", "unsafe", "unsafe"]
    assert xstest.prompts == load_prompts("xstest-safe:2", SHARED_DATA) + load_prompts("xstest-unsafe:2", SHARED_DATA)
    from tether.errors import TetherInputError

    with pytest.raises(TetherInputError, match="harmbench:300-400 selects nothing"):
        load_benchmark("harmbench:300-400", SHARED_DATA)
    with pytest.raises(TetherInputError, match="harmbench:x: after the colon write"):
        load_benchmark("harmbench:x", SHARED_DATA)


def test_one_name_per_set():
    """`alpaca-eval` is the AlpacaEval benchmark, `gsm8k-test` the GSM8K test questions with exact match; `gsm8k`
    is the train split everywhere (as a benchmark: benign prompts)."""
    from tests.conftest import SHARED_DATA
    from tether.data.prompts import load_prompts
    from tether.errors import TetherInputError

    alpaca = load_benchmark("alpaca-eval:0-300/2", SHARED_DATA)
    assert (alpaca.name, alpaca.kind, len(alpaca.prompts)) == ("alpaca-eval", "instructions", 150)
    math = load_benchmark("gsm8k-test", SHARED_DATA)
    assert (math.name, math.kind, len(math.prompts), len(math.answers)) == ("gsm8k-test", "gsm8k", 1319, 1319)
    train = load_benchmark("gsm8k:3", SHARED_DATA)
    assert (train.kind, train.answers, train.prompts) == ("instructions", [], load_prompts("gsm8k:3", SHARED_DATA))
    with pytest.raises(TetherInputError, match="unknown benchmark 'alpaca_eval'; did you mean alpaca-eval\\?"):
        load_benchmark("alpaca_eval", SHARED_DATA)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("I-CoNa", "harmful"),
        ("xstest-unsafe", "harmful"),
        ("safety-llamas", "harmful"),
        ("alpaca", "instructions"),
        ("I-Alpaca", "instructions"),
        ("I-PhysicalSafetySafe", "instructions"),
        ("xstest-safe", "xstest"),
        ("gsm8k-test", "gsm8k"),
    ],
)
def test_a_prompt_set_is_a_benchmark_of_its_role(name, kind):
    from tests.conftest import SHARED_DATA
    from tether.data.prompts import load_prompts
    from tether.evaluation.benchmarks import BENCHMARKS

    bench = load_benchmark(f"{name}:~5", SHARED_DATA)
    assert (bench.name, bench.kind, BENCHMARKS[name]) == (name, kind, kind)
    assert bench.prompts == load_prompts(f"{name}:~5", SHARED_DATA)
    assert (len(bench.labels), len(bench.answers)) == (5 if kind == "xstest" else 0, 5 if kind == "gsm8k" else 0)


@pytest.mark.parametrize(
    "case", ["unknown benchmark", "empty file", "unreachable judge", "wrong judge model", "nothing to evaluate"]
)
def test_eval_bad_input(case, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    argv = ["eval", "--model", "tiny-llama", "--out", str(tmp_path / "out"), "--refusal_strings", str(empty)]
    with FakeOpenAIServer(model="served") as server:
        extra, expected = {
            "unknown benchmark": (["--benchmark", "no-such-bench"], "unknown benchmark 'no-such-bench'"),
            "empty file": (["--benchmark", str(empty)], "is empty"),
            "nothing to evaluate": ([], "nothing to evaluate: pass --benchmark"),
            "unreachable judge": (
                ["--benchmark", "harmbench:2", "--judge_url", "http://127.0.0.1:9/v1", "--judge_model", "m"],
                "unreachable",
            ),
            "wrong judge model": (
                ["--benchmark", "harmbench:2", "--judge_url", server.url, "--judge_model", "other"],
                "HTTP 404",
            ),
        }[case]
        code = main(argv + extra + ["--data_dir", "../shared/data"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_eval_cli_on_a_run_directory(tmp_path, capsys):
    """Train the tiny config, then evaluate its run directory (adapter merged into the base) on a prompt file."""
    from tests.conftest import SHARED_DATA

    run = tmp_path / "run"
    assert main(["train", "--config", "configs/tiny.yaml", "--output_dir", str(run), "--max_steps", "2"]) == 0
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("placeholder request number 1\nadd 2 and 3\n")
    assert (
        main(
            [
                "eval",
                "--model",
                str(run),
                "--benchmark",
                str(prompt_file),
                "--max_new_tokens",
                "4",
                "--data_dir",
                SHARED_DATA,
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["benchmarks"]["prompts"]["metrics"]["n"] == 2


def test_hexphi_from_a_local_folder(tmp_path):
    """HEx-PHI is gated: the user passes its folder of category_*.csv files, one prompt per line."""
    for i in (1, 2):
        (tmp_path / f"category_{i}.csv").write_text(f"placeholder {i}a\nplaceholder {i}b\n")
    bench = load_benchmark(f"hexphi:{tmp_path}")
    assert [p[0]["content"] for p in bench.prompts] == [
        "placeholder 1a",
        "placeholder 1b",
        "placeholder 2a",
        "placeholder 2b",
    ]
    from tether.errors import TetherInputError

    with pytest.raises(TetherInputError, match="hexphi needs its local path"):
        load_benchmark("hexphi")


def test_win_rate_against_reference_replies(tiny_model, tokenizer, tmp_path):
    bench = Benchmark("alpaca-eval", "instructions", prompts("write a haiku", "list three fruits"))
    with FakeOpenAIServer(default=(200, "#thewinner: tie")) as server:
        judge = Judge(OpenAICompatibleBackend(server.url, "fake-judge"), max_failure_rate=1.0)
        results = evaluate_model(
            tiny_model,
            tokenizer,
            [bench],
            STRINGS,
            judge,
            max_new_tokens=3,
            reference_responses={"alpaca-eval": ["ref 1", "ref 2"]},
        )
    metrics = results["benchmarks"]["alpaca-eval"]["metrics"]
    assert metrics["judge_win_rate"] == 0.5 and metrics["judge_win_failures"] == 0
    assert results["benchmarks"]["alpaca-eval"]["samples"][0]["reference_response"] == "ref 1"


def test_the_utility_split_partitions_the_heldout_nll_by_position(tiny_model, tokenizer, rows):
    """`benchmarks/utility_by_refusal.py` splits each row's NLL into the first token, tokens 2-5 and the rest: summed
    over rows and groups it is the held-out NLL times its token count; each row has a refusal-start mass in [0, 1]."""
    import importlib.util
    from pathlib import Path

    from tether.evaluation.harness import heldout_nll

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "utility_by_refusal.py"
    spec = importlib.util.spec_from_file_location("utility_by_refusal", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    split = script.per_row(tiny_model, tokenizer, rows[:6], batch_size=4)
    nll, tokens = heldout_nll(tiny_model, tokenizer, rows[:6], batch_size=4)
    total = sum(row[pos] for row in split for pos in script.POSITIONS)
    assert len(split) == 6 and all(0.0 <= row["refusal_mass"] <= 1.0 for row in split)
    assert total == pytest.approx(nll * tokens, rel=1e-4)
    assert all(row["tokens 6+"] > 0 for row in split)  # the tiny rows' responses are longer than five tokens
