"""The real entry point: `tether train` through the console script, the run-directory contract, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import RUN_DIR_FILES
from tether.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_console_script_trains_tiny_config(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "tether"),
            "train",
            "--config",
            TINY,
            "--output_dir",
            str(run),
            "--max_steps",
            "3",
            "--beta_max",
            "0.8",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == RUN_DIR_FILES
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["training"]["beta_max"] == 0.8  # the CLI flag overrides the YAML
    assert resolved["training"]["output_dir"] == str(run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "loss/kl" in s]
    assert len(logged) == 3
    for key in (
        "critic/risk_mean",
        "weights/beta_mean",
        "weights/beta_min",
        "weights/beta_max",
        "weights/alpha_mean",
        "loss/nll",
        "loss/kl",
    ):
        assert key in logged[0]
    assert not (tmp_path / "run.incomplete").exists()


def run_cli(argv, capsys):
    code = main(["train", *argv])
    return code, capsys.readouterr().err.strip()


def write(path, text):
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "missing file": (["--dataset", "{tmp}/absent.jsonl"], "dataset file not found"),
    "malformed line": (["--dataset", "{tmp}/bad.jsonl"], "bad.jsonl:2: malformed JSON"),
    "empty response": (["--dataset", "{tmp}/empty.jsonl"], "example 1: empty response"),
    "unknown config field": (["--config", "{tmp}/unknown.yaml"], "unknown config field(s) betta_max in"),
    "beta_min > beta_max": (["--beta_min", "0.9", "--beta_max", "0.2"], "beta_min (0.9) > beta_max (0.2)"),
    "unknown model": (["--model_name_or_path", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
    "missing config": (["--config", "{tmp}/absent.yaml"], "config file not found"),
    "missing LISA data": (["--lisa_data", "{tmp}/absent.jsonl"], "dataset file not found"),
    "empty LISA data": (["--lisa_data", "{tmp}/none.jsonl"], "none.jsonl: the dataset is empty"),
    "Vaccine while fine-tuning": (["--vaccine_rho", "2", "--regularizer", "fixed"], "use it with regularizer: none"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_run_dir(case, tmp_path, capsys):
    write(tmp_path / "bad.jsonl", '{"prompt": "p", "completion": "c"}\n{"prompt": oops}\n')
    write(tmp_path / "empty.jsonl", '{"prompt": "p", "completion": ""}\n')
    write(tmp_path / "unknown.yaml", "model_name_or_path: tiny-llama\nbetta_max: 0.5\n")
    write(tmp_path / "none.jsonl", "")
    argv, expected = BAD_INPUTS[case]
    expected = expected.format(tmp=tmp_path)
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--output_dir", str(tmp_path / "run")]
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("tether: error: "), err
    assert expected in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.incomplete").exists()


def test_unknown_cli_flag_is_one_line_exit_2(tmp_path, capsys):
    code, err = run_cli(["--no_such_flag", "1"], capsys)
    assert code == 2 and err == "tether: error: unknown argument(s) --no_such_flag; see `tether train --help`"


def test_existing_output_dir_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    code, err = run_cli(["--output_dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "already exists" in err
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_label_critic_without_risk_column(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", '{"prompt": "p", "completion": "c"}\n')
    code, err = run_cli(["--dataset", data, "--critic", "label", "--output_dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "critic 'label' reads a 'risk' column that 1 of 1 examples" in err


def test_lisa_run_records_its_alignment_data_and_phases(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--config", TINY, "--output_dir", str(run), "--max_steps", "3", "--regularizer", "none"]
    assert (
        main([*argv, "--lisa_data", "tiny-synthetic", "--lisa_alignment_steps", "1", "--lisa_finetune_steps", "1"]) == 0
    )
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["lisa"] == {"data": "tiny-synthetic", "n_alignment": 32}
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["lisa/alignment_phase"] for s in steps if "lisa/alignment_phase" in s] == [1.0, 0.0, 1.0]


def test_vaccine_run_logs_its_perturbation_and_saves_an_adapter(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--config", TINY, "--output_dir", str(run), "--max_steps", "2", "--regularizer", "none"]
    assert main([*argv, "--vaccine_rho", "2"]) == 0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([s for s in steps if s.get("vaccine/grad_norm", 0) > 0]) == 2
    assert (run / "adapter" / "adapter_config.json").is_file()


def test_report_to_tensorboard_writes_tethers_metrics_as_scalars(tmp_path):
    """`--report_to tensorboard` (transformers' own callback, offline): the risk, β, α, NLL and KL of each step are
    scalars in the run directory's event file, with the values metrics.jsonl holds."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = ["train", "--config", TINY, "--output_dir", str(run), "--max_steps", "2", "--report_to", "tensorboard"]
    assert main(argv) == 0
    (events,) = run.glob("runs/*/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    for key in ("critic/risk_mean", "weights/beta_mean", "weights/alpha_mean", "loss/nll", "loss/kl"):
        scalars = accumulator.Scalars(f"train/{key}")
        assert [s.step for s in scalars] == [1, 2], key
        assert [s.value for s in scalars] == pytest.approx([entry[key] for entry in logged], rel=1e-6), key
