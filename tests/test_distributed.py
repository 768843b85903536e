"""More than one process: on CPU (gloo), and on 2 GPUs behind the `gpu` marker.

`accelerate launch --multi_gpu --num_processes 2 ... --use_cpu true`: DDP trains the tiny config to the end, saves
one adapter, and logs risk, β and KL averaged over the global batch (both processes). (`accelerate launch --cpu
--num_processes 2` starts one process in accelerate 1.15: its multi-CPU path needs MPI.)

FSDP2 through `accelerate launch --config_file configs/accelerate/fsdp.yaml`: accelerate runs FSDP on GPUs only, so
on CPU `tests/fsdp_on_cpu.py` flips that one decision of accelerate's and runs `tether train` under accelerate's own
FSDP2 preparation; the shipped config launched on CPU as it is is refused in one line. A torch-only test shards the LM
head into a unit that reshards after its forward, where the head's weight outside the forward is a shard. On 2 GPUs
the shipped configs run as they are (the DeepSpeed ones when DeepSpeed is installed).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def test_ddp_reads_the_reference_cache_in_the_second_epoch(tmp_path):
    """Two processes, two epochs, the refusal critic (its score is cached with the reference states): each process
    writes its own shards, reads the other's after the first epoch, and every step of the second epoch runs no
    reference forward; the named cache folder is kept."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tether.cli", "train"]
    settings = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(run), "--critic", "refusal"]
    settings += ["--num_train_epochs", "2", "--reference_cache_dir", str(cache), "--per_device_train_batch_size", "4"]
    run_ok([*launch, *settings, "--disable_tqdm", "true", "--use_cpu", "true"])
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cached = [log["reference/cached"] for log in logs if "reference/cached" in log]
    assert cached == [0.0] * 4 + [1.0] * 4  # 32 rows, 2 processes x 4 rows a step: 4 steps an epoch
    (folder,) = cache.iterdir()
    assert len(list(folder.glob("part-*.safetensors"))) == 2  # one shard per process, written at the epoch's end


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


# ---------------------------------------------------------------------------------------------------------------------
# FSDP2


def train_steps(run: Path, *overrides: str, launch: tuple[str, ...] = ()) -> tuple[list[dict], str]:
    """`tether train --config configs/tiny.yaml` for two optimizer steps, in one process or under `launch`: the logged
    steps and stdout. No LoRA dropout: the processes of a sharded run draw other dropout masks than one process."""
    command = [*launch, "train"] if launch else [str(BIN / "tether"), "train"]
    settings = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(run), "--max_steps", "2"]
    result = run_ok([*command, *settings, "--lora_dropout", "0", "--disable_tqdm", "true", *overrides])
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [log for log in logs if "loss/nll" in log], result.stdout


def run_ok(command: list[str]) -> subprocess.CompletedProcess:
    """Run a command to its end (10 minutes at most); it must succeed."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def accelerate_launch(config: str, *options: str) -> tuple[str, ...]:
    """2 processes under a shipped accelerate config, on a free port (not the default 29500 another launch may hold)."""
    config_file = str(ROOT / "configs" / "accelerate" / config)
    port = ("--main_process_port", str(free_port()))
    return (str(BIN / "accelerate"), "launch", "--config_file", config_file, "--num_processes", "2", *port, *options)


def assert_same_training(tmp_path, tuning: str, sharded: list[dict], single: list[dict], atol: float = 1e-6) -> None:
    """The first step's loss, NLL, KL and gradient norm (a gradient summed instead of averaged over the processes would
    double it; Adam's step would not show it) and the second step's loss agree within 1e-5; the saved weights within
    `atol`."""
    from safetensors.torch import load_file

    assert len(single) == len(sharded) == 2
    for key in ("loss", "loss/nll", "loss/kl", "grad_norm"):
        assert abs(single[0][key] - sharded[0][key]) < 1e-5, key
    assert abs(single[1]["loss"] - sharded[1]["loss"]) < 1e-5
    assert sharded[1]["loss/kl"] > 0.0
    weights = "model/model.safetensors" if tuning == "full" else "adapter/adapter_model.safetensors"
    expected, saved = load_file(tmp_path / "single" / weights), load_file(tmp_path / "sharded" / weights)
    assert expected.keys() == saved.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor.to(saved[name].device), rtol=0, atol=atol, msg=name)


TUNING = {"lora": (), "full": ("--use_peft", "false")}


@pytest.mark.slow
@pytest.mark.parametrize("tuning", TUNING)
def test_fsdp_two_processes_on_cpu(tmp_path, tuning):
    """2 processes × batch 2 under FSDP2 see the global batch of 1 process × batch 4 (the same sampler order): the
    same first-step loss, NLL and KL; the same second-step loss, after one sharded optimizer step; the same saved
    weights. Full fine-tuning trains the LM head (its gradient reduce-scattered) against a replicated frozen copy."""
    single, _ = train_steps(tmp_path / "single", *TUNING[tuning])
    launch = accelerate_launch("fsdp.yaml", "--mixed_precision", "no", str(ROOT / "tests" / "fsdp_on_cpu.py"))
    options = ("--per_device_train_batch_size", "2", "--use_cpu", "true", *TUNING[tuning])
    sharded, stdout = train_steps(tmp_path / "sharded", *options, launch=launch)
    assert stdout.count("fully_shard units: 5") == 2  # per process: 2 decoder layers, embeddings, norm + head, root
    assert_same_training(tmp_path, tuning, sharded, single)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize(
    "config, tuning",
    [
        ("fsdp.yaml", "lora"),
        ("fsdp.yaml", "full"),
        pytest.param("deepspeed-zero2.yaml", "lora", marks=pytest.mark.skipif(not DEEPSPEED, reason="no DeepSpeed")),
        pytest.param("deepspeed-zero2.yaml", "full", marks=pytest.mark.skipif(not DEEPSPEED, reason="no DeepSpeed")),
        pytest.param("deepspeed-zero3.yaml", "lora", marks=pytest.mark.skipif(not DEEPSPEED, reason="no DeepSpeed")),
    ],
)
def test_sharded_two_gpus(tmp_path, config, tuning):
    """The shipped accelerate configs as they are, on 2 GPUs, against one GPU (float32, no mixed precision)."""
    single, _ = train_steps(tmp_path / "single", *TUNING[tuning])
    launch = accelerate_launch(config, "--mixed_precision", "no", "-m", "tether.cli")
    sharded, _ = train_steps(tmp_path / "sharded", "--per_device_train_batch_size", "2", *TUNING[tuning], launch=launch)
    assert_same_training(tmp_path, tuning, sharded, single, atol=1e-4)


@pytest.mark.slow
def test_the_fsdp_config_on_cpu_is_refused(tmp_path):
    """accelerate keeps DDP (MULTI_CPU) when an FSDP config runs on CPU processes: tether says so in one line instead
    of training as something the config did not ask for."""
    command = [*accelerate_launch("fsdp.yaml", "--mixed_precision", "no", "-m", "tether.cli"), "train"]
    settings = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(tmp_path / "run")]
    result = subprocess.run(
        [*command, *settings, "--use_cpu", "true"], capture_output=True, text=True, timeout=600, env=ENV
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("tether: error:")]
    assert errors and "asks for FSDP" in errors[0] and "MULTI_CPU" in errors[0], result.stderr[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_head_loss_inside_a_resharded_fsdp2_unit():
    """torch's FSDP2 alone, 2 processes: the LM head is its own unit that reshards after its forward, so after the
    forward `lm_head.weight` is this process's (V/2, d) shard; the loss run inside the head's forward
    (`capture_head_inputs(at_head=...)`) still equals the one-process loss, and so do its gradients."""
    import torch.multiprocessing as mp

    from tether.modeling import build_tiny_model

    model = build_tiny_model(64)
    inputs = head_loss_inputs()
    loss = head_loss_step(model, *inputs)
    loss.backward()
    expected = (loss.detach(), model.lm_head.weight.grad, model.model.layers[0].mlp.up_proj.weight.grad)
    mp.spawn(sharded_head_loss, args=(free_port(), expected), nprocs=2, join=True)


def head_loss_inputs():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (2, 9), generator=generator)  # (B, T)
    rows, cols = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([3, 4, 7, 2, 5])  # (N,), (N,)
    return ids, rows, cols, ids[rows, cols + 1]


def head_loss_step(model, ids, rows, cols, targets):
    """A reference pass (no grad) and a policy pass of the same model, the fused loss inside the head's forward."""
    from tether.losses import ResponseLoss
    from tether.modeling import capture_head_inputs

    with torch.no_grad(), capture_head_inputs(model, rows, cols) as reference:
        model(input_ids=(ids + 1) % 64)  # another input, so that the KL is not 0

    def loss(hidden, head):
        ones = torch.ones(len(rows))
        w = head.weight
        return ResponseLoss.apply(hidden, w, None, targets, ones, ones / 2, reference["hidden"], w, None)[0]

    with capture_head_inputs(model, rows, cols, at_head=loss) as policy:
        model(input_ids=ids)
    return policy["at_head"]


def sharded_head_loss(rank, port, expected):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from tether.modeling import build_tiny_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = build_tiny_model(64)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model.lm_head, reshard_after_forward=True)
        fully_shard(model)
        loss = head_loss_step(model, *head_loss_inputs())
        assert isinstance(model.lm_head.weight, DTensor) and model.lm_head.weight.to_local().shape == (32, 32)
        loss.backward()
        expected_loss, expected_head, expected_up = expected
        torch.testing.assert_close(loss.detach(), expected_loss)
        torch.testing.assert_close(model.lm_head.weight.grad.full_tensor(), expected_head)
        torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad.full_tensor(), expected_up)
        del model, loss  # FSDP's modules hold the process group: let it go before the group is torn down
        dist.barrier()  # neither rank tears its group down while the other still reads from it
    finally:
        dist.destroy_process_group()
    # An ordinary interpreter exit can run gloo's thread destructors after the group's own and abort the process
    # ("terminate called without an active exception"): once every check passed, leave without that teardown.
    os._exit(0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
