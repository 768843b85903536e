"""One writer per output: `run_files.run_lock`, and two `tether train` processes on one output directory.

The lock helper is raced by forked processes (cheap: no import), 20 trials of two contenders plus a mutual-exclusion
stress; three full trials start two real `tether train` processes on one directory at the same moment."""

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import RUN_DIR_FILES
from tether.errors import TetherInputError
from tether.run_files import atomic_dir, lock_path, run_lock, staging_path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
FORK = multiprocessing.get_context("fork")  # the children inherit the imported modules: no 8 s import each
STEPS = 5


def _contender(final: Path, name: str, barrier) -> None:
    """What `tether train` does with its output, in small: lock, refuse an existing output, build it in the staging
    folder one step at a time, rename it. A refusal exits 2 with its message in `<name>.err`."""
    barrier.wait()
    try:
        with run_lock(final):
            if final.exists():
                raise TetherInputError(f"{final} already exists")
            with atomic_dir(final) as staging:
                (staging / "config.yaml").write_text(yaml.safe_dump({"writer": name}))
                for step in range(1, STEPS + 1):
                    with (staging / "metrics.jsonl").open("a") as f:
                        f.write(json.dumps({"step": step, "writer": name}) + "\n")
                    time.sleep(0.005)
    except TetherInputError as error:
        (final.parent / f"{name}.err").write_text(f"tether: error: {error}\n")
        sys.exit(2)


@pytest.mark.parametrize("trial", range(20))
def test_two_contenders_leave_one_complete_output(trial, tmp_path):
    final = tmp_path / "run"
    barrier = FORK.Barrier(2)
    processes = {name: FORK.Process(target=_contender, args=(final, name, barrier)) for name in ("a", "b")}
    for process in processes.values():
        process.start()
    for process in processes.values():
        process.join(30)
    codes = {name: process.exitcode for name, process in processes.items()}
    assert sorted(codes.values()) == [0, 2], codes
    winner = next(name for name, code in codes.items() if code == 0)
    loser = next(name for name, code in codes.items() if code == 2)
    assert yaml.safe_load((final / "config.yaml").read_text()) == {"writer": winner}
    metrics = [json.loads(line) for line in (final / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [{"step": step, "writer": winner} for step in range(1, STEPS + 1)]
    message = (tmp_path / f"{loser}.err").read_text()
    assert message.count("\n") == 1 and message.startswith(f"tether: error: {final} is being written by another ")
    assert f"(pid {processes[winner].pid}); wait for it or pass another --output_dir" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{loser}.err", "run"]  # no staging, no lock file left


def _hold(final: Path, ready: Path) -> None:
    with run_lock(final):
        ready.write_text("locked")
        time.sleep(120)


def test_a_held_lock_refuses_a_second_holder_and_a_killed_holder_releases_it(tmp_path):
    final = tmp_path / "deep" / "run"
    with run_lock(final) as path:
        assert path == lock_path(final) == tmp_path / "deep" / "run.lock"
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(TetherInputError, match=rf"is being written by another process \(pid {os.getpid()}\)"):
            with run_lock(final, option="--out"):
                pytest.fail("a second holder got the lock")
    assert not (tmp_path / "deep").exists()  # a clean release removes the file and the folders the lock made

    ready = tmp_path / "ready"
    holder = FORK.Process(target=_hold, args=(final, ready))
    holder.start()
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(TetherInputError) as refused:
        with run_lock(final, option="--out"):
            pytest.fail("the lock of a live holder was taken")
    assert str(refused.value) == f"{final} is being written by another process (pid {holder.pid}); wait for it or " + (
        "pass another --out"
    )
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    assert lock_path(final).read_text() == f"{holder.pid}\n"  # left behind, but no longer locked
    with run_lock(final):
        assert lock_path(final).read_text() == f"{os.getpid()}\n"
    assert not lock_path(final).exists()


def _stress(final: Path, inside: Path, rounds: int, seed: int) -> None:
    """Take the lock over and over; while holding it, claim `inside` exclusively (O_EXCL): a second process inside
    at the same time exits 3. Lock files are removed and recreated all the time, which is what could go wrong."""
    rng = random.Random(seed)
    for _ in range(rounds):
        try:
            with run_lock(final):
                try:
                    os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    os._exit(3)
                time.sleep(rng.uniform(0, 0.002))
                os.unlink(inside)
        except TetherInputError:
            time.sleep(rng.uniform(0, 0.001))


def test_the_lock_excludes_under_contention(tmp_path):
    final, inside = tmp_path / "run", tmp_path / "inside"
    processes = [FORK.Process(target=_stress, args=(final, inside, 200, seed)) for seed in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert not lock_path(final).exists() and not inside.exists()


# ---- three full trials: two real `tether train` processes, one output directory
def test_two_tether_train_processes_on_one_directory(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    trials = []
    for trial in range(3):
        run = tmp_path / f"trial{trial}" / "run"
        pair = {}
        for rate in ("0.001", "0.002"):
            argv = ["train", "--config", TINY, "--output_dir", str(run), "--max_steps", "2", "--learning_rate", rate]
            command = [sys.executable, "-m", "tether.cli", *argv, "--disable_tqdm", "true"]
            pair[rate] = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
            )
        trials.append((run, pair))
    for run, pair in trials:
        errors = {rate: process.communicate(timeout=600)[1] for rate, process in pair.items()}
        codes = {rate: process.returncode for rate, process in pair.items()}
        assert sorted(codes.values()) == [0, 2], errors
        winner = next(rate for rate, code in codes.items() if code == 0)
        loser = next(rate for rate, code in codes.items() if code == 2)
        expected = (
            f"tether: error: {run} is being written by another process (pid {pair[winner].pid}); wait for it or "
            "pass another --output_dir"
        )
        assert errors[loser].strip() == expected
        assert sorted(p.name for p in run.iterdir()) == RUN_DIR_FILES
        assert yaml.safe_load((run / "config.yaml").read_text())["training"]["learning_rate"] == float(winner)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if "loss" in m] == [1, 2]  # each step once (the last line: the summary)
        assert "train_loss" in metrics[-1] and len(metrics) == 3
        assert not staging_path(run).exists() and not lock_path(run).exists()


def test_every_verb_that_writes_an_output_takes_its_lock_first(tmp_path, capsys):
    """`tether eval`, `probe fit`, `antidote` and `bench` refuse an output another process is writing, before they
    check, load or write anything else."""
    from tether.baselines.antidote import antidote_to_dir
    from tether.bench.config import load_bench_config
    from tether.bench.pipeline import Bench
    from tether.cli import main
    from tether.critics.probe_tasks import fit_probe_dir
    from tether.evaluation.run import evaluate_to_dir

    out = tmp_path / "out"
    busy = f"{out} is being written by another process (pid {os.getpid()}); wait for it or pass another"
    demo = load_bench_config(str(ROOT / "src" / "tether" / "bench" / "demo.yaml"))
    calls = {
        "--out": [
            lambda: evaluate_to_dir("tiny-llama", ["harmbench:2"], out),
            lambda: fit_probe_dir("tiny-llama", ["advbench"], ["alpaca"], [1], None, out),
            lambda: antidote_to_dir("tiny-llama", ["tiny-synthetic"], out),
        ],
        "--out_dir": [lambda: Bench(demo, out).run()],
    }
    with run_lock(out):
        for option, functions in calls.items():
            for function in functions:
                with pytest.raises(TetherInputError) as refused:
                    function()
                assert str(refused.value) == f"{busy} {option}"
        assert main(["antidote", "--model", "tiny-llama", "--data", "tiny-synthetic", "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"tether: error: {busy} --out\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.lock"]
    assert not any(tmp_path.iterdir())
