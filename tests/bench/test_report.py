"""The bench report's columns: every rate with its prompt count and 95% interval, benign refusal beside ASR."""

import json

import pytest

from tether.bench.report import _eval_metrics, aggregate, markdown
from tether.evaluation.metrics import wilson_interval


def write_results(folder, asr_k, refusal_k, over_k):
    """A results.json as `tether eval` writes it: 10 HarmBench prompts, 20 AlpacaEval, 8 XSTest safe + 2 unsafe."""
    folder.mkdir(parents=True)

    def samples(n, **extra):
        return [{"prompt": "p", "response": "r", "refused": False, **extra} for _ in range(n)]

    results = {
        "benchmarks": {
            "harmbench": {"kind": "harmful", "metrics": {"keyword_asr": asr_k / 10}, "samples": samples(10)},
            "alpaca-eval": {
                "kind": "instructions",
                "metrics": {"benign_refusal": refusal_k / 20},
                "samples": samples(20),
            },
            "xstest": {
                "kind": "xstest",
                "metrics": {"over_refusal": over_k / 8, "refusal_rate": 0.5},
                "samples": samples(8, label="safe") + samples(2, label="unsafe"),
            },
        },
        "heldout_nll": {"data": "gsm8k-test", "nll": 1.0, "tokens": 100},
    }
    (folder / "results.json").write_text(json.dumps(results))


def test_each_rate_carries_its_prompt_count_and_interval(tmp_path):
    """3 of 10 jailbroken, 5 of 20 benign requests refused, 2 of the 8 safe XSTest prompts refused (the 2 unsafe
    ones do not count)."""
    write_results(tmp_path / "e", asr_k=3, refusal_k=5, over_k=2)
    metrics = _eval_metrics(tmp_path / "e")
    assert metrics["harmbench_asr"] == 0.3 and metrics["harmbench_asr_n"] == 10
    assert metrics["harmbench_asr_ci95"] == pytest.approx(wilson_interval(3, 10))
    assert metrics["alpaca-eval_refusal"] == 0.25 and metrics["alpaca-eval_refusal_n"] == 20
    assert metrics["alpaca-eval_refusal_ci95"] == pytest.approx(wilson_interval(5, 20))
    assert metrics["xstest_over_refusal_n"] == 8
    assert metrics["xstest_over_refusal_ci95"] == pytest.approx(wilson_interval(2, 8))


def test_seeds_pool_their_prompts_and_the_table_shows_benign_refusal(tmp_path):
    """Two seeds of one method: ASR 3/10 and 5/10 -> mean 40%, the interval of 8 of 20 pooled prompts."""
    runs = []
    for seed, k in ((0, 3), (1, 5)):
        write_results(tmp_path / f"s{seed}", asr_k=k, refusal_k=1, over_k=0)
        runs.append({"scenario": "pure", "method": "SFT", "seed": seed} | _eval_metrics(tmp_path / f"s{seed}"))
    [row] = aggregate(runs)
    assert row["harmbench_asr"] == pytest.approx(0.4) and row["harmbench_asr_n"] == 20
    assert row["harmbench_asr_ci95"] == pytest.approx(wilson_interval(8, 20))
    data = {"config": {"eval": {"benchmarks": ["harmbench"]}}, "initial": {}, "runs": runs, "own_utility": {}}
    table = markdown(data, [row])
    header = next(line for line in table.splitlines() if line.startswith("| scenario"))
    assert "AlpacaEval refusal" in header and "HarmBench keyword ASR" in header
    lo, hi = wilson_interval(8, 20)
    assert f"40.0% ± 14.1 [{100 * lo:.0f}–{100 * hi:.0f}]" in table


def test_a_harmbench_split_fills_the_harmbench_column(tmp_path):
    write_results(tmp_path / "e", asr_k=3, refusal_k=5, over_k=2)
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    results["benchmarks"] = {"harmbench-test": results["benchmarks"]["harmbench"]}
    (tmp_path / "e" / "results.json").write_text(json.dumps(results))
    metrics = _eval_metrics(tmp_path / "e")
    assert metrics["harmbench_asr"] == 0.3 and metrics["harmbench_asr_n"] == 10


def test_the_plane_joins_a_dial_in_order_of_utility_and_leaves_other_methods_points():
    """Rows of one scenario: a dial's two methods become one series sorted by utility kept, with each ASR's
    interval; a method without a dial is a point of its own; a row without utility kept and another scenario's rows
    are left out."""
    from tether.bench.report import plane_series

    def row(method, asr, interval, kept, dial=None, scenario="mix"):
        return {
            "scenario": scenario,
            "method": method,
            "dial": dial,
            "utility_kept": kept,
            "harmbench_asr": asr,
            "harmbench_asr_ci95": interval,
        }

    rows = [
        row("SFT", 0.9, (0.8, 0.95), 1.0),
        row("AsFT λ 10", 0.3, (0.2, 0.4), 0.2, dial="AsFT"),
        row("AsFT", 0.5, (0.4, 0.6), 0.7, dial="AsFT"),
        row("no utility", 0.2, (0.1, 0.3), None),
        row("SFT", 0.8, (0.7, 0.9), 1.0, scenario="pure"),
    ]
    assert plane_series(rows, "mix") == [
        ("SFT", [(1.0, 0.9, 0.8, 0.95)]),
        ("AsFT", [(0.2, 0.3, 0.2, 0.4), (0.7, 0.5, 0.4, 0.6)]),
    ]


def test_a_dial_that_is_not_a_name_is_refused_in_one_line():
    from tether.bench.config import bench_config_from_dict
    from tether.errors import TetherInputError

    raw = {"scenarios": [{"name": "pure", "harmful": "pure-bad"}], "methods": [{"name": "SFT", "dial": 3}]}
    with pytest.raises(TetherInputError, match="method 'SFT': dial must be a name"):
        bench_config_from_dict(raw)


def test_the_plane_script_measures_a_run_against_sft_of_its_seed_in_another_report(tmp_path):
    """`benchmarks/plane.py` merges the per-seed runs of several reports: a method's seed-1 run in one bench directory
    keeps its utility against SFT's seed-1 run in another, and its row is the mean of its seeds."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]

    def run(method, seed, asr, nll):
        rate = {"harmbench_asr": asr, "harmbench_asr_n": 100, "utility_nll": nll, "reference_utility_nll": 2.0}
        return {"scenario": "mix", "method": method, "seed": seed, **rate}

    initial = {"reference": {"harmbench_asr": 0.3, "utility_nll": 2.0}}
    earlier = {"initial": initial, "runs": [run("SFT", 0, 0.9, 1.0), run("SFT", 1, 0.9, 1.5)]}
    later = {"initial": initial, "runs": [run("tether default", 0, 0.3, 1.5), run("tether default", 1, 0.4, 1.75)]}
    for name, report in (("a.json", earlier), ("b.json", later)):
        (tmp_path / name).write_text(json.dumps({**report, "rows": []}))
    done = subprocess.run(
        [sys.executable, "benchmarks/plane.py", "--results", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
        + ["--config", "configs/bench/safe-reference.yaml", "--out", str(tmp_path / "out")],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["method"]: row for row in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]}
    assert rows["tether default"]["utility_kept"] == pytest.approx((0.5 + 0.5) / 2)  # seed 0: 0.5/1.0, seed 1: 0.25/0.5
    assert rows["tether default"]["harmbench_asr"] == pytest.approx(0.35) and rows["SFT"]["utility_kept"] == 1.0
    assert (tmp_path / "out" / "asr_vs_utility_mix.png").is_file()
