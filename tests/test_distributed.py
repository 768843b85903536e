"""`accelerate launch --multi_gpu --num_processes 2 ... --use_cpu true`: DDP on CPU (gloo) trains the tiny config
to the end, saves one adapter, and logs risk, β and KL averaged over the global batch (both processes).

(`accelerate launch --cpu --num_processes 2` starts one process in accelerate 1.15: its multi-CPU path needs MPI.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_processes_on_cpu(tmp_path):
    run = tmp_path / "run"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    result = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "tether.cli",
            "train",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--output_dir",
            str(run),
            "--per_device_train_batch_size",
            "2",
            "--disable_tqdm",
            "true",
            "--use_cpu",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run.incomplete").exists()
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [log for log in logs if "critic/num_examples" in log]
    # 32 rows, 2 processes × batch 2 = 4 rows a step: 8 steps, each logged once, over 4 examples (both processes).
    assert len(steps) == 8
    assert all(log["critic/num_examples"] == 4.0 for log in steps)
    # Across the epoch every row is seen once: the mean of the per-step global risks is the dataset's 8/32.
    assert sum(log["critic/risk_mean"] for log in steps) / len(steps) == 0.25
    assert all(0.1 - 1e-6 <= log["weights/beta_mean"] <= 0.9 + 1e-6 for log in steps)
    assert steps[-1]["loss/kl"] > 0.0
    # The first global batch equals the first batch of 4 of a one-process run: same loss, since the token
    # denominator is global.
    single = tmp_path / "single"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "tether"),
            "train",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--output_dir",
            str(single),
            "--max_steps",
            "1",
            "--disable_tqdm",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first = json.loads((single / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["loss"] - steps[0]["loss"]) < 1e-5
    assert first["critic/risk_mean"] == steps[0]["critic/risk_mean"]
