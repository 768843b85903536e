"""A ready GPU check: tether on one GPU in under 8 minutes, printing what a user deciding to adopt it wants to know.

1. the machine: GPU, torch, CUDA, bf16;
2. step time of plain SFT, A-Reg as the paper sets it and tether's default (each with the reference cache cold, as
   in a first epoch, and warm, as in later ones) and a naive KL (modes interleaved in one process:
   `benchmarks/train_step.py --device cuda`), and each mode's peak GPU memory in its own process;
3. the demo's pure attack on SmolLM2-135M-Instruct, bf16 on the GPU (`configs/bench/gpu-check.yaml`: the safe
   reference, then SFT, C-SFT and tether's default) and its ASR table;
4. a 2-process FSDP step (`accelerate launch --config_file configs/accelerate/fsdp.yaml`), when the machine has two
   GPUs (on one, a note: FSDP's CPU run is in tests/test_distributed.py).

`--small` runs the same on CPU on the tiny in-process model, a few steps each (tests/test_gpu_check.py runs it).
Everything is written to `--out` (`gpu_check.json`, `train_step.json`, the bench directory).

    python benchmarks/gpu_check.py                      # on a GPU
    python benchmarks/gpu_check.py --small --out /tmp/gpu-check   # CPU, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL_BENCH = {  # the bench of --small: the tiny in-process model, two optimizer steps per run
    "model": "tiny-llama",
    "seeds": [0],
    "reference": {"data": {"advbench-refusals": 8, "alpaca": 8}, "train": {"max_steps": 2}, "eval_base": False},
    "probe": None,
    "train": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 1.0e-3},
    "scenarios": [{"name": "pure-bad", "harmful": "pure-bad", "n_harmful": 8}],
    "methods": [
        {"name": "SFT", "train": {"regularizer": "none"}},
        {"name": "C-SFT", "train": {"regularizer": "fixed", "beta": 0.9}},
        {"name": "tether default", "train": {}},
    ],
    "eval": {"benchmarks": ["harmbench:~4", "xstest-safe:~4"], "utility_limit": 4, "max_new_tokens": 4},
}


ASR_TABLE_KEYS = (
    "scenario",
    "method",
    "harmbench_asr",
    "xstest_over_refusal",
    "alpaca-eval_refusal",
    "harmbench_asr_ci95",
    "seconds_per_step",
    "utility_kept",
)
FAILURES: dict[str, str] = {}  # stage -> the end of its log: a failed stage is reported, the next ones still run


def run(stage: str, command: list[str], log: Path, env: dict | None = None) -> float | None:
    """Run `command` (its output to `log`); the seconds it took, or None when it failed (its log's tail is kept in
    FAILURES and printed, and the check goes on: one short machine loan should bring back every stage that works)."""
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
    if done.returncode:
        FAILURES[stage] = log.read_text()[-3000:]
        print(f"{stage}: {' '.join(command[:4])} ... failed; the end of {log}:\n{FAILURES[stage]}", flush=True)
        return None
    seconds = time.perf_counter() - start
    print(f"{stage}: {seconds:.0f} s", flush=True)
    return seconds


def save(out: Path, summary: dict) -> None:
    """Write what is known so far: a check cut short by its machine's time limit still leaves its finished stages."""
    (out / "gpu_check.json").write_text(json.dumps({**summary, "failed": FAILURES}, indent=2))


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpus": torch.cuda.device_count(),
        "bf16": cuda and torch.cuda.is_bf16_supported(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU, the tiny model, a few steps (a test of the check)")
    parser.add_argument("--out", default="runs/gpu-check", help="results folder")
    parser.add_argument("--data_dir", default=None, help="folder of the named datasets")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python, summary = sys.executable, {"machine": machine(), "seconds": {}}
    if not args.small and not summary["machine"]["gpu"]:
        sys.exit("no GPU found; run with --small for the CPU check")
    data = ["--data_dir", args.data_dir] if args.data_dir else []
    print(json.dumps(summary["machine"]), flush=True)

    # 2. step time, modes interleaved in one process
    device = ["--device", "cpu" if args.small else "cuda"]
    model = ["--model", "tiny-llama" if args.small else "smollm2-135m-instruct"]
    step = [python, "benchmarks/train_step.py", *model, *device, *data]
    modes = ["none", "adaptive", "adaptive-cached", "default", "default-cached", "naive"]
    summary["seconds"]["step_time"] = run(
        "step_time",
        [*step, "--modes", *modes, "--steps", "3" if args.small else "9", "--out", str(out / "train_step.json")],
        out / "train_step.log",
    )
    if summary["seconds"]["step_time"] is not None:
        timing = json.loads((out / "train_step.json").read_text())
        summary["step_ratio_to_sft"] = timing["ratio_to_none"]
        summary["paired_step_ratio_to_sft"] = timing["paired_ratio_to_none"]
    save(out, summary)

    # 3. the demo's pure attack with SFT, C-SFT and tether's default, evaluated
    if args.small:
        config = out / "bench.yaml"
        config.write_text(yaml.safe_dump(SMALL_BENCH, sort_keys=False))
    else:
        config = ROOT / "configs" / "bench" / "gpu-check.yaml"
    bench = out / "bench"
    tether = [python, "-m", "tether.cli", "bench", "--config", str(config), "--out_dir", str(bench), *data]
    summary["seconds"]["bench"] = run("bench", tether, out / "bench.log")
    if summary["seconds"]["bench"] is not None:
        results = json.loads((bench / "report" / "results.json").read_text())
        summary["asr_table"] = [{key: row.get(key) for key in ASR_TABLE_KEYS} for row in results["rows"]]
        summary["reference"] = results["initial"].get("reference")
        summary["bench_stage_times"] = json.loads((bench / "stage_times.json").read_text())
    save(out, summary)

    # 2b. each mode's peak memory, alone in its process (last: the least of what a short loan should bring back)
    summary["peak_memory_mb"] = {}
    for mode in modes:
        result = out / f"memory_{mode}.json"
        alone = [*step, "--modes", mode, "--steps", "1", "--out", str(result)]
        if run(f"memory_{mode}", alone, out / f"memory_{mode}.log"):
            summary["peak_memory_mb"][mode] = json.loads(result.read_text())["peak_memory_mb"]
    save(out, summary)

    # 4. two processes under FSDP need two GPUs here; on CPU, tests/test_distributed.py covers them
    fsdp = ROOT / "configs" / "accelerate" / "fsdp.yaml"
    if summary["machine"]["gpus"] >= 2 and fsdp.is_file():
        accelerate = str(Path(python).parent / "accelerate")
        launch = [accelerate, "launch", "--config_file", str(fsdp), "--num_processes", "2", "-m", "tether.cli"]
        train = ["train", "--config", "configs/tiny.yaml", "--output_dir", str(out / "fsdp"), "--max_steps", "1"]
        summary["seconds"]["fsdp"] = run("fsdp", [*launch, *train], out / "fsdp.log")
    else:
        summary["fsdp"] = "not run: one GPU (FSDP on 2 CPU processes: tests/test_distributed.py)"

    save(out, summary)
    print(json.dumps(summary, indent=2))
    if FAILURES:
        sys.exit(f"failed stages: {', '.join(FAILURES)} (their logs' ends are in {out / 'gpu_check.json'})")


if __name__ == "__main__":
    main()
