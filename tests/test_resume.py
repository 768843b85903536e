"""A killed run resumes to the result of an uninterrupted one; nothing but `--restart` removes its checkpoints.

The killed run is a real `tether train` subprocess (SIGKILL, SIGINT, SIGTERM after its first checkpoint); the
uninterrupted reference and the reruns go through the same entry point in this process (`tether.cli.main`)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tether.cli import main
from tether.run_files import staging_path
from tether.runner import complete_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
STEPS = 8
LISA = ["--lisa_data", "tiny-synthetic", "--lisa_alignment_steps", "1", "--lisa_finetune_steps", "2"]
LISA += ["--regularizer", "none"]


def train_argv(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        TINY,
        "--output_dir",
        str(out),
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--max_steps",
        str(STEPS),
        "--disable_tqdm",
        "true",
        *extra,
    ]


def interrupt_after_first_checkpoint(out: Path, *extra: str, signum=signal.SIGKILL) -> tuple[int, str]:
    """Start `tether train` in a subprocess, wait for its first complete checkpoint (step 2), send `signum` once it
    has logged a random step from 2 to 6 (so, during steps 3 to 7), and return its exit code and stderr."""
    command = [sys.executable, "-m", "tether.cli", *train_argv(out, *extra)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    staging = staging_path(out)
    target = random.randint(2, STEPS - 2)
    deadline = time.time() + 300
    while not (staging / "checkpoint-2" / "tether_state.json").is_file() or logged_steps(staging) < target:
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.01)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert not out.exists(), f"the run finished before the signal (sent after step {target})"
    return process.returncode, err


def logged_steps(staging: Path) -> int:
    lines = (staging / "metrics.jsonl").read_text().splitlines() if (staging / "metrics.jsonl").is_file() else []
    return sum('"loss"' in line for line in lines)


def train(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def final_results(run: Path) -> tuple[list[int], dict, dict]:
    """The steps metrics.jsonl logs, the last logged metrics and train_loss, and the adapter weights."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss" in line]
    last = [line for line in lines if "loss/nll" in line][-1]
    keys = ["loss/nll", "loss/kl", "weights/beta_mean", "critic/risk_mean", "lisa/proximal", "canary/kl_multiplier"]
    values = {k: last[k] for k in keys if k in last} | {"train_loss": lines[-1]["train_loss"]}
    return steps, values, load_file(run / "adapter" / "adapter_model.safetensors")


def assert_same_results(resumed: Path, reference: Path) -> None:
    steps, values, adapter = final_results(resumed)
    ref_steps, ref_values, ref_adapter = final_results(reference)
    assert steps == ref_steps == list(range(1, STEPS + 1))  # each step once
    assert values.keys() == ref_values.keys()
    for key, value in values.items():
        assert value == pytest.approx(ref_values[key], abs=1e-4), key
    assert adapter.keys() == ref_adapter.keys()
    assert max((adapter[k] - ref_adapter[k]).abs().max().item() for k in adapter) <= 1e-4


CANARY = ["--canary_prompts", "{tmp}/canary.txt", "--canary_every", "1", "--canary_tolerance", "0"]


TWO_EPOCHS = ["--per_device_train_batch_size", "8"]  # 32 rows: 4 steps an epoch, the second read from the cache


@pytest.mark.parametrize(
    "extra",
    [[], ["--risk_ema", "0.9"], CANARY, TWO_EPOCHS],
    ids=["default", "risk_ema", "canary", "reference_cache"],
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(extra, tmp_path, capsys):
    (tmp_path / "canary.txt").write_text("placeholder request one\nplaceholder request two\n")
    extra = [a.format(tmp=tmp_path) for a in extra]
    assert train(train_argv(tmp_path / "reference", *extra), capsys)[0] == 0
    run = tmp_path / "run"
    interrupt_after_first_checkpoint(run, *extra)
    staging = staging_path(run)
    checkpoints = complete_checkpoints(staging)
    assert checkpoints, sorted(p.name for p in staging.iterdir())
    before = sorted(p.relative_to(staging) for p in staging.rglob("*"))

    code, err = train(train_argv(run, *extra, "--learning_rate", "0.002"), capsys)  # another config
    assert code == 2 and err.count("\n") == 1, err
    assert f"{staging} holds a killed run of another config (training.learning_rate: 0.001 there, 0.002 now)" in err
    assert "pass --restart to start over, or another --output_dir" in err
    assert sorted(p.relative_to(staging) for p in staging.rglob("*")) == before

    code, err = train(train_argv(run, *extra), capsys)  # the same command
    assert code == 0
    assert f"tether: resuming {run} from {checkpoints[-1].name} (pass --restart to start over)\n" in err
    assert_same_results(run, tmp_path / "reference")
    assert not (run / "reference_cache").exists()  # the run's own cache goes when the run completes
    if extra == TWO_EPOCHS:  # the resumed run read the second epoch from the cache the killed one left, or refilled
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [log["reference/cached"] for log in logs if "reference/cached" in log][4:] == [1.0] * 4


def test_lisa_resumes_from_a_checkpoint_named_inside_the_staging_folder(tmp_path, capsys):
    """checkpoint-2 is mid-phase (steps 1-2 fine-tune after the alignment step 0), so the proximal anchor and the
    alignment batches drawn come from the checkpoint, not from the resumed weights."""
    assert train(train_argv(tmp_path / "reference", *LISA), capsys)[0] == 0
    run = tmp_path / "run"
    interrupt_after_first_checkpoint(run, *LISA)
    checkpoint = staging_path(run) / "checkpoint-2"
    code, err = train(train_argv(run, *LISA, "--resume_from_checkpoint", str(checkpoint)), capsys)
    assert code == 0 and f"tether: resuming {run} from checkpoint-2 (pass --restart to start over)" in err
    assert_same_results(run, tmp_path / "reference")


def test_ctrl_c_keeps_the_checkpoints_and_restart_starts_over(tmp_path, capsys):
    run = tmp_path / "run"
    staging = staging_path(run)
    code, err = interrupt_after_first_checkpoint(run, signum=signal.SIGINT)
    checkpoints = complete_checkpoints(staging)
    assert code == 130 and checkpoints
    assert (
        err.strip().splitlines()[-1]
        == f"tether: interrupted; rerun the same command to resume from {checkpoints[-1].name}"
    )
    assert "Traceback" not in err

    code, err = train(train_argv(run, "--resume_from_checkpoint", str(tmp_path / "absent")), capsys)
    assert code == 2 and "is not a complete checkpoint" in err and err.count("\n") == 1
    restart_inside = ["--restart", "true", "--resume_from_checkpoint", str(checkpoints[0])]
    code, err = train(train_argv(run, *restart_inside), capsys)
    assert code == 2 and "--restart discards" in err and complete_checkpoints(staging) == checkpoints

    code, err = train(train_argv(run, "--restart", "true"), capsys)
    assert code == 0 and "resuming" not in err
    assert f"tether: starting over (--restart): removing {staging} and its checkpoints" in err
    steps, _, _ = final_results(run)
    assert steps == list(range(1, STEPS + 1))
    assert json.loads((run / "checkpoint-2" / "tether_state.json").read_text())["global_step"] == 2


def test_sigterm_exits_143_with_the_resume_line(tmp_path):
    run = tmp_path / "run"
    code, err = interrupt_after_first_checkpoint(run, signum=signal.SIGTERM)
    last = complete_checkpoints(staging_path(run))[-1].name
    assert code == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"tether: interrupted; rerun the same command to resume from {last}"


def test_a_failure_keeps_the_checkpoints_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    from tether.trainer import TetherTrainer

    log = TetherTrainer.log

    def failing_log(self, logs, start_time=None):
        if self.state.global_step == 5:
            raise RuntimeError("disk on fire")
        log(self, logs, start_time)

    run = tmp_path / "run"
    monkeypatch.setattr(TetherTrainer, "log", failing_log)
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(train_argv(run))
    err = capsys.readouterr().err
    staging = staging_path(run)
    assert [c.name for c in complete_checkpoints(staging)] == ["checkpoint-2", "checkpoint-4"]
    assert f"tether: the run failed; {staging} keeps its checkpoints: rerun the same command to resume from " in err
    monkeypatch.undo()
    code, err = train(train_argv(run), capsys)
    assert code == 0 and "resuming" in err
    assert final_results(run)[0] == list(range(1, STEPS + 1))


def test_an_interrupt_before_any_checkpoint_keeps_nothing(tmp_path, capsys, monkeypatch):
    from tether.trainer import TetherTrainer

    def interrupted_log(self, logs, start_time=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(TetherTrainer, "log", interrupted_log)
    run = tmp_path / "run"
    code, err = train(train_argv(run, "--save_strategy", "no"), capsys)
    assert code == 130 and err == "tether: interrupted; no checkpoint was saved, nothing is kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
