"""The whole bench on the tiny model and a generated data directory: every stage's outputs, the report, the cache."""

import json

import pytest
import yaml

from tether.bench.config import bench_config_from_dict
from tether.bench.report import add_utility_kept, aggregate, targets
from tether.cli import main
from tether.errors import TetherInputError

from .conftest import tiny_bench


@pytest.fixture(scope="module")
def bench_dir(mini_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    config = root / "bench.yaml"
    config.write_text(yaml.safe_dump(tiny_bench(mini_data_dir)))
    out = root / "out"
    # a stage killed half-way leaves a staging folder behind; the run must clean it up and redo the stage
    (out / "evals" / "reference.incomplete").mkdir(parents=True)
    (out / "evals" / "reference.incomplete" / "junk").write_text("half-written")
    assert main(["bench", "--config", str(config), "--out_dir", str(out)]) == 0
    return out


def test_every_stage_writes_its_outputs(bench_dir):
    assert (bench_dir / "reference" / "model" / "config.json").is_file()
    assert (bench_dir / "reference" / "run" / "adapter").is_dir()
    assert (bench_dir / "probe" / "probe.json").is_file()
    assert (bench_dir / "probe_eval" / "eval.json").is_file()
    for key in ("base", "reference"):
        assert (bench_dir / "evals" / key / "results.json").is_file()
    # a scenario with its own utility data: the reference's held-out NLL on it, without generating anything
    own = json.loads((bench_dir / "evals" / "reference__utility-alpaca" / "results.json").read_text())
    assert own["benchmarks"] == {} and own["heldout_nll"]["data"] == "alpaca"
    runs = sorted(p.relative_to(bench_dir / "runs").as_posix() for p in (bench_dir / "runs").glob("*/*/seed0"))
    assert len(runs) == 12 and "mix-0.2/a-reg-probe/seed0" in runs
    for run in runs:
        assert (bench_dir / "runs" / run / "metrics.jsonl").is_file()
        # each run's model card holds its evaluation's numbers
        results = json.loads((bench_dir / "evals" / "__".join(run.split("/")) / "results.json").read_text())
        asr = results["benchmarks"]["harmbench"]["metrics"]["keyword_asr"]
        assert f"| keyword_asr | {asr:.1%} |" in (bench_dir / "runs" / run / "README.md").read_text()
    assert "merged into its base" in (bench_dir / "reference" / "model" / "README.md").read_text()
    assert not list(bench_dir.rglob("*.incomplete"))
    # Antidote prunes SFT's run (no training of its own) and is evaluated on the pruned model
    for scenario in ("pure", "mix-0.2", "mix-0.34"):
        pruned = json.loads(
            (bench_dir / "antidote" / scenario / "sft-antidote" / "seed0" / "antidote.json").read_text()
        )
        assert pruned["model"] == str(bench_dir / "runs" / scenario / "sft" / "seed0") and pruned["ratio"] == 0.2
        assert pruned["rows"] == 6 and pruned["pruned"] > 0
        assert (bench_dir / "evals" / f"{scenario}__sft-antidote__seed0" / "results.json").is_file()
        # Safe LoRA projects SFT's run onto the alignment directions (the reference minus the bench's model)
        projected = json.loads(
            (bench_dir / "safe_lora" / scenario / "sft-safe-lora" / "seed0" / "safe_lora.json").read_text()
        )
        assert projected["model"] == str(bench_dir / "runs" / scenario / "sft" / "seed0")
        assert projected["unaligned"] == "tiny-llama" and len(projected["projected"]) == 3
        assert (bench_dir / "evals" / f"{scenario}__sft-safe-lora__seed0" / "results.json").is_file()
    # the reference data is labelled benign, the pure attack entirely harmful, the mix at its exact ratio
    mixed = [json.loads(line) for line in (bench_dir / "data" / "mix-0.2-seed0.jsonl").read_text().splitlines()]
    assert sum(r["risk"] == 1.0 for r in mixed) == 2 and len(mixed) == 10
    # the probe-critic run trained on the probe fit on the merged reference
    probe_run = yaml.safe_load((bench_dir / "runs/pure/a-reg-probe/seed0/config.yaml").read_text())
    assert probe_run["training"]["probe_path"] == str(bench_dir / "probe")
    assert probe_run["model"]["model_name_or_path"] == str(bench_dir / "reference" / "model")
    probe = json.loads((bench_dir / "probe" / "probe.json").read_text())  # one of the two layers, chosen on validation
    assert [row["layer"] for row in probe["layer_selection"]["candidates"]] == [1, 2]
    assert probe["layers"] == [probe["layer_selection"]["chosen"]] and probe["tokens"] == "template"


def test_report_lists_every_method_and_plot(bench_dir):
    report = (bench_dir / "report" / "report.md").read_text()
    for method in ("Initial (safe reference)", "Base (un-aligned)", "| SFT |", "C-SFT", "A-Reg probe", "A-Reg label"):
        assert method in report
    results = json.loads((bench_dir / "report" / "results.json").read_text())
    assert len(results["rows"]) == 18
    antidote = next(r for r in results["rows"] if r["method"] == "SFT + Antidote" and r["scenario"] == "pure")
    sft = next(r for r in results["rows"] if r["method"] == "SFT" and r["scenario"] == "pure")
    assert antidote["train"] == sft["train"] and antidote["antidote"]["ratio"] == 0.2
    assert "SFT + Antidote: the runs of SFT after Antidote pruning, 20% of each adapter matrix" in report
    assert "SFT + Safe LoRA: the runs of SFT after Safe LoRA, the 3 least aligned LoRA layers projected" in report
    plots = {"asr_vs_hr_gsm8k.png", "beta_risk.png", "asr_vs_utility_mix-0.2.png", "asr_vs_utility_pure.png"}
    assert plots <= {p.name for p in (bench_dir / "report").glob("*.png")}
    targets = [line for line in report.splitlines() if "ASR ≤ reference + 5 points" in line]
    assert any(line.startswith("- mix-0.2: A-Reg") and "utility kept" in line for line in targets)
    assert not any(line.startswith("- pure: A-Reg") and "utility kept" in line for line in targets)  # mixed goal only
    assert "chosen by the mean validation AUROC of xstest-unsafe against xstest-safe (1: " in report
    # utility kept is measured against the reference's NLL on each scenario's own utility data
    nll = {
        key: json.loads((bench_dir / "evals" / key / "results.json").read_text())["heldout_nll"]["nll"]
        for key in ("reference", "reference__utility-alpaca")
    }
    kept = {r["scenario"]: r for r in results["runs"] if r["method"] == "C-SFT"}
    assert kept["mix-0.2"]["reference_utility_nll"] == nll["reference"]
    assert kept["mix-0.34"]["reference_utility_nll"] == nll["reference__utility-alpaca"] != nll["reference"]
    own_nll = nll["reference__utility-alpaca"]
    assert f"mix-0.34: held-out NLL on its own utility data (alpaca); the reference's: {own_nll:.3f}" in report
    label = next(r for r in results["runs"] if r["method"] == "A-Reg label" and r["scenario"] == "pure")
    assert all(t["risk"] == 1.0 and t["beta"] == pytest.approx(0.9) for t in label["trajectory"])


def test_stage_times_follow_the_computation_and_reach_the_report(bench_dir):
    times = json.loads((bench_dir / "stage_times.json").read_text())
    stages = list(times)
    # every computed stage once, in the order computed: the base and the reference alignment before any attack run
    assert stages[:3] == ["eval__base", "reference__run", "reference"]
    assert stages.index("probe") < stages.index("runs__pure__a-reg-probe__seed0")
    assert stages.index("runs__pure__sft__seed0") < stages.index("eval__pure__sft__seed0")
    assert stages.index("antidote__pure__sft-antidote__seed0") < stages.index("eval__pure__sft-antidote__seed0")
    assert len(stages) == len(list((bench_dir / "specs").glob("*.json")))  # one timing per spec record
    assert all(seconds >= 0 for seconds in times.values())  # a merge on the tiny model may round to 0
    assert times["reference__run"] > 0 and times["eval__reference"] > 0
    report = (bench_dir / "report" / "report.md").read_text()
    table = report.split("## Stage times")[1]
    assert "| reference: alignment (training) | 0 min" in table and "| train pure / sft / seed0 |" in table
    assert "| eval pure / sft / seed0 |" in table and "| Safe LoRA pure / sft-safe-lora / seed0 |" in table
    total = sum(times.values())
    assert f"| **all stages** | **{int(total // 60)} min {total % 60:04.1f} s** |" in table
    assert json.loads((bench_dir / "report" / "results.json").read_text())["stage_times"] == times


def test_rerun_skips_finished_stages(bench_dir, capsys):
    times = (bench_dir / "stage_times.json").read_text()
    before = {p: p.stat().st_mtime_ns for p in bench_dir.rglob("results.json") if "report" not in p.parts}
    config = bench_dir.parent / "bench.yaml"
    assert main(["bench", "--config", str(config), "--out_dir", str(bench_dir)]) == 0
    err = capsys.readouterr().err
    assert "training (" not in err and err.count("cached") >= 12 + 14
    assert before == {p: p.stat().st_mtime_ns for p in before}
    assert (bench_dir / "stage_times.json").read_text() == times  # a cached stage keeps the time it took


def test_report_rebuilds_from_disk(bench_dir):
    (bench_dir / "report" / "report.md").unlink()
    assert main(["bench", "report", "--out_dir", str(bench_dir)]) == 0
    assert "A-Reg probe" in (bench_dir / "report" / "report.md").read_text()


def test_utility_kept_and_seed_spread_by_hand():
    runs = [
        {"scenario": "s", "method": "SFT", "seed": 0, "attack": "mixed", "family": None, "x": None, "utility_nll": 1.0},
        {"scenario": "s", "method": "SFT", "seed": 1, "attack": "mixed", "family": None, "x": None, "utility_nll": 1.2},
        {"scenario": "s", "method": "A", "seed": 0, "attack": "mixed", "family": None, "x": None, "utility_nll": 1.5},
        {"scenario": "s", "method": "A", "seed": 1, "attack": "mixed", "family": None, "x": None, "utility_nll": 1.2},
    ]
    add_utility_kept(runs, {"s": 2.0})
    assert [r["utility_kept"] for r in runs] == pytest.approx([1.0, 1.0, 0.5, 1.0])
    a = next(r for r in aggregate(runs) if r["method"] == "A")
    assert a["utility_kept"] == pytest.approx(0.75) and a["utility_kept_sd"] == pytest.approx(0.3535534, abs=1e-6)


def test_anchors_join_the_same_mix_with_risk_one(mini_data_dir):
    """`anchor`/`n_anchor` add refusal rows (risk 1) to the scenario's rows, which stay those of the scenario without
    anchors; too many anchors is a one-line error."""
    from tether.bench.config import Scenario
    from tether.bench.pipeline import scenario_rows

    plain = Scenario(name="mix", benign="gsm8k", n_benign=8, harmful="pure-bad", harmful_ratio=0.2)
    anchored = Scenario(**{**plain.__dict__, "anchor": "advbench-refusals", "n_anchor": 3})
    base, rows = scenario_rows(plain, str(mini_data_dir), 0), scenario_rows(anchored, str(mini_data_dir), 0)
    anchors = [r for r in rows if r not in base]
    assert len(rows) == len(base) + 3 and all(r in rows for r in base)
    assert all(r["risk"] == 1.0 and r["messages"][-1]["content"].startswith("I'm sorry") for r in anchors)
    with pytest.raises(TetherInputError, match="n_anchor 50"):
        scenario_rows(Scenario(**{**anchored.__dict__, "n_anchor": 50}), str(mini_data_dir), 0)


def test_targets_compare_per_example_with_per_batch_and_name_c_sft():
    """A per-batch method is checked against the method that differs from it only in granularity; a mixed A-Reg
    line names C-SFT's ASR and utility kept in the same scenario."""
    adaptive = {"regularizer": "adaptive", "critic": "label", "learning_rate": 2e-4}

    def row(method, train, asr, kept):
        return {"scenario": "hr", "method": method, "attack": "mixed", "train": train, "harmbench_asr": asr} | (
            {"utility_kept": kept}
        )

    rows = [
        row("C-SFT", {"regularizer": "fixed", "beta": 0.9}, 0.24, 0.35),
        row("A-Reg", adaptive, 0.30, 0.95),
        row("A-Reg (batch)", {**adaptive, "granularity": "batch"}, 0.40, 1.0),
        row("A-Reg probe (batch)", {**adaptive, "critic": "probe", "granularity": "batch"}, 0.20, 1.0),
    ]
    lines = targets({"initial": {"reference": {"harmbench_asr": 0.22}}}, rows)
    per_batch = [line for line in lines if "per-example ASR ≤ per-batch" in line]
    assert per_batch == ["hr: per-example ASR ≤ per-batch (A-Reg vs A-Reg (batch)): met (30.0% vs 40.0%)"]
    a_reg = next(line for line in lines if line.startswith("hr: A-Reg ASR"))
    assert "**missed** (30.0% vs 27.0%)" in a_reg and a_reg.endswith("; C-SFT: 24.0%, utility kept 35%")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"epochs": 3}, "unknown key 'epochs'"),
        ({"scenarios": [{"name": "a", "methods": ["nope"]}]}, "names method 'nope'"),
        ({"methods": [{"name": "SFT"}, {"name": "SFT"}]}, "'SFT' is used twice"),
        ({"scenarios": [{"name": "a", "harmful_ratio": 0.1}]}, "no benign dataset"),
        ({"probe": {"val_harmful": ["xstest-unsafe"]}}, "val_harmful and val_benign"),
        ({"probe": {"val_max_flagged": {"xstest-safe": 0.1}}}, "val_max_flagged constrains"),
        ({"probe": {"tokens": "first"}}, "tokens must be one of last, mean, template"),
        ({"scenarios": [{"name": "a", "anchor": "advbench-refusals"}]}, "anchor and n_anchor go together"),
        ({"methods": [{"name": "P", "antidote": {"method": "SFT"}}]}, "antidote.method must name a trained method"),
        (
            {"methods": [{"name": "S"}, {"name": "P", "antidote": {"method": "S", "ratio": 1.5}}]},
            "antidote.ratio must be in [0, 1]",
        ),
        (
            {"methods": [{"name": "S"}, {"name": "P", "train": {"lr": 1}, "antidote": {"method": "S"}}]},
            "repairs 'S''s runs; drop its `train`",
        ),
        ({"methods": [{"name": "P", "safe_lora": {"method": "SFT"}}]}, "safe_lora.method must name a trained method"),
        (
            {"methods": [{"name": "S"}, {"name": "P", "safe_lora": {"method": "S", "threshold": 0.3}}]},
            "safe_lora needs one of num_layers and threshold",
        ),
        (
            {"methods": [{"name": "S", "train": {"use_peft": False}}, {"name": "P", "safe_lora": {"method": "S"}}]},
            "Safe LoRA projects a LoRA run; train with LoRA",
        ),
        ({"methods": [{"name": "S"}, {"name": "P", "antidote": {"of": "S"}}]}, "unknown key 'of'"),
    ],
)
def test_bad_bench_config_is_one_line(change, expected, mini_data_dir, tmp_path, capsys):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(tiny_bench(mini_data_dir, **change)))
    assert main(["bench", "--config", str(config), "--out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_unknown_selection_and_missing_config(mini_data_dir, tmp_path, capsys):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(tiny_bench(mini_data_dir)))
    assert main(["bench", "--config", str(config), "--out_dir", str(tmp_path / "o"), "--methods", "DPO"]) == 2
    assert "unknown method 'DPO'" in capsys.readouterr().err
    assert main(["bench", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "bench config not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_demo_config_is_valid_and_printable(capsys):
    from tether.cli.demo import DEMO_CONFIG

    config = bench_config_from_dict(yaml.safe_load(DEMO_CONFIG.read_text()))
    assert {m.name: m.train for m in config.methods} == {
        "SFT": {"regularizer": "none"},
        "C-SFT": {"regularizer": "fixed", "beta": 0.9},
        "tether default": {},  # nothing set: the defaults, no probe to fit
    }
    assert main(["demo", "--print_config"]) == 0 and "pure-bad" in capsys.readouterr().out


def test_changed_settings_are_not_silently_reused(bench_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(bench_dir, copy)
    config = yaml.safe_load((bench_dir.parent / "bench.yaml").read_text())
    config["methods"][1]["train"]["beta"] = 0.7  # C-SFT's β changed: its cached runs no longer match
    changed = tmp_path / "bench.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert main(["bench", "--config", str(changed), "--out_dir", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "made with other settings" in err[-1] and "c-sft" in err[-1]


def test_run_made_under_another_tether_default_is_not_reused(bench_dir, tmp_path, capsys):
    """A cached run whose config left `alpha_mode` to the default, trained when the default was `paper`, is refused:
    the stage records only the settings the config states."""
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(bench_dir, copy)
    run_config = next((copy / "runs").glob("*/a-reg-probe/seed0/config.yaml"))  # alpha_mode left to the default
    resolved = yaml.safe_load(run_config.read_text())
    assert resolved["training"]["alpha_mode"] == "gate"
    resolved["training"]["alpha_mode"] = "paper"
    run_config.write_text(yaml.safe_dump(resolved))
    assert main(["bench", "--config", str(bench_dir.parent / "bench.yaml"), "--out_dir", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trained with alpha_mode = 'paper'" in err and "now 'gate'" in err


def test_second_config_in_the_same_directory_reuses_stages_and_joins_the_report(bench_dir, tmp_path, capsys):
    """`base:` inherits the first config; its new scenario runs, the reference and probe are reused, and the report
    lists the runs of both configs."""
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(bench_dir, copy)
    shutil.copy(bench_dir.parent / "bench.yaml", tmp_path / "first.yaml")
    second = {
        "base": "first.yaml",
        "scenarios": [
            {"name": "pure-small", "n_harmful": 3, "methods": ["SFT"]},
            {"name": "pure", "harmful": "pure-bad", "n_harmful": 6, "methods": ["C-SFT"]},  # cached; list merged
        ],
    }
    (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
    assert main(["bench", "--config", str(tmp_path / "second.yaml"), "--out_dir", str(copy)]) == 0
    err = capsys.readouterr().err
    # the probe is neither refit nor read: none of these runs has the probe critic
    assert err.count("training (") == 1 and "reference: cached" in err and "probe:" not in err
    rows = json.loads((copy / "report" / "results.json").read_text())["rows"]
    assert len(rows) == 19 and {"pure-small", "pure", "mix-0.2"} <= {r["scenario"] for r in rows}
    # a run with other seeds, then one with the first seeds again: the report keeps every seed's runs
    second_argv = ["bench", "--config", str(tmp_path / "second.yaml"), "--out_dir", str(copy)]
    assert main([*second_argv, "--seeds", "1"]) == 0 and main(second_argv) == 0
    rows = json.loads((copy / "report" / "results.json").read_text())["rows"]
    assert next(r for r in rows if r["scenario"] == "pure-small")["seeds"] == [0, 1]
    assert next(r for r in rows if r["scenario"] == "mix-0.2" and r["method"] == "SFT")["seeds"] == [0]


def test_stages_record_what_the_cli_verbs_would(bench_dir):
    """The bench calls the verbs' library functions: an evaluation records `tether eval`'s settings under the same
    names (and the folder it was written to), and each training run's settings are kept as a `tether train --config`
    file."""
    from tether.cli.eval import make_parser as eval_parser
    from tether.cli.train import make_parser as train_parser

    config = json.loads((bench_dir / "evals" / "reference" / "results.json").read_text())["config"]
    assert list(config) == [action.dest for action in eval_parser()._actions if action.dest != "help"]
    assert config["out"] == str(bench_dir / "evals" / "reference") and config["nll_data"] == "gsm8k-test"
    record = bench_dir / "configs" / "runs__pure__c-sft__seed0.yaml"
    train_parser().check_config_file(str(record))
    settings = yaml.safe_load(record.read_text())
    assert settings["output_dir"] == str(bench_dir / "runs" / "pure" / "c-sft" / "seed0") and settings["beta"] == 0.5


def test_a_killed_run_is_left_to_resume_unless_its_settings_changed(mini_data_dir, tmp_path, monkeypatch):
    """The bench never removes a killed run's staging folder itself: `tether train` resumes it when the run's settings
    are those recorded when it started, and starts over (`restart`) when they are not."""
    from tether.bench import pipeline
    from tether.run_files import staging_path

    bench = pipeline.Bench(bench_config_from_dict(tiny_bench(mini_data_dir)), tmp_path / "bench")
    run_dir = bench.out / "runs" / "pure" / "sft" / "seed0"
    checkpoint = staging_path(run_dir) / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    seen = []

    def train(settings):
        seen.append((settings.get("restart", False), checkpoint.is_dir()))
        return run_dir

    monkeypatch.setattr(pipeline, "train_from_settings", train)
    settings = {"model_name_or_path": "tiny-llama", "dataset": str(data)}
    bench.train_once("run", run_dir, settings)  # no record of the settings it started with
    bench.train_once("run", run_dir, settings)  # the same settings
    bench.train_once("run", run_dir, {**settings, "learning_rate": 0.01})
    assert seen == [(True, True), (False, True), (True, True)]
    assert "restart" not in yaml.safe_load((bench.out / "configs" / "runs__pure__sft__seed0.yaml").read_text())
