"""The GPU check (`benchmarks/gpu_check.py`) in its CPU form: every stage runs and the summary holds the step-time
ratios against SFT, each mode's peak memory and the ASR table of SFT, C-SFT and tether's default."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_small_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--small", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    modes = {"none", "adaptive", "adaptive-cached", "default", "default-cached", "naive"}
    assert set(summary["step_ratio_to_sft"]) == modes and summary["step_ratio_to_sft"]["none"] == 1.0
    assert all(
        summary["paired_step_ratio_to_sft"][m]["min"] <= summary["paired_step_ratio_to_sft"][m]["max"] for m in modes
    )
    assert set(summary["peak_memory_mb"]) == modes and all(v > 0 for v in summary["peak_memory_mb"].values())
    assert [row["method"] for row in summary["asr_table"]] == ["SFT", "C-SFT", "tether default"]
    assert all(0.0 <= row["harmbench_asr"] <= 1.0 for row in summary["asr_table"])
    # tether's default ran with its defaults: the refusal critic, depth-aware KL and the canary checks
    trained = (tmp_path / "bench" / "runs" / "pure-bad" / "tether-default" / "seed0" / "config.yaml").read_text()
    assert (
        "critic: refusal" in trained and "kl_prefix_tokens: 5" in trained and "canary_prompts: advbench:~16" in trained
    )
