"""`tether.sharding`: an engine the accelerate launch asks for but that is not installed stops `tether train` in one
line before the model loads; engine settings under which a run would silently train, save or copy its reference
otherwise are refused. (The sharded runs themselves: tests/test_distributed.py.)"""

import importlib.util
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from tether.cli import main
from tether.errors import TetherInputError
from tether.sharding import check_engine

TINY = "configs/tiny.yaml"
NO_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed")


@NO_DEEPSPEED
@pytest.mark.parametrize("asked_by", ["launch", "flag", "config"])
def test_deepspeed_not_installed_is_one_line_before_the_model_loads(asked_by, tmp_path, monkeypatch, capsys):
    argv = ["train", "--config", TINY, "--output_dir", str(tmp_path / "run")]
    if asked_by == "launch":  # what `accelerate launch` sets from a `distributed_type: DEEPSPEED` config
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    elif asked_by == "flag":
        argv += ["--deepspeed", str(tmp_path / "ds.json")]
    else:
        (tmp_path / "run.yaml").write_text(f"dataset: tiny-synthetic\ndeepspeed: {tmp_path / 'ds.json'}\n")
        argv[2] = str(tmp_path / "run.yaml")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DeepSpeed, which is not installed" in err[0] and "pip install deepspeed" in err[0], err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.incomplete").exists()


def accelerator(engine, fsdp=None, zero_stage=None):
    """The attributes of an `Accelerator` that `check_engine` reads."""
    state = SimpleNamespace(fsdp_plugin=fsdp, deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage))
    return SimpleNamespace(distributed_type=engine, state=state)


def fsdp_plugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False):
    # sync_module_states (accelerate's default, and forced by cpu_ram_efficient_loading) refuses to build on a machine
    # without GPUs: cpu_ram_efficient_loading is set after
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp_version, state_dict_type=state_dict_type, sync_module_states=False
    )
    plugin.cpu_ram_efficient_loading = cpu_ram_efficient_loading
    return plugin


@pytest.mark.parametrize("frozen_copy", [False, True])
def test_supported_engines_pass(frozen_copy):
    for engine in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_engine(accelerator(engine), frozen_copy)
    check_engine(accelerator(DistributedType.FSDP, fsdp_plugin()), frozen_copy)
    check_engine(accelerator(DistributedType.DEEPSPEED, zero_stage=2), frozen_copy)
    check_engine(accelerator(DistributedType.DEEPSPEED, zero_stage=3), frozen_copy=False)


@pytest.mark.parametrize(
    "engine, frozen_copy, match",
    [
        (accelerator(DistributedType.FSDP, fsdp_plugin(fsdp_version=1)), False, "fsdp_version 1 .*set fsdp_version: 2"),
        (
            accelerator(DistributedType.FSDP, fsdp_plugin(state_dict_type="SHARDED_STATE_DICT")),
            False,
            "fsdp_state_dict_type SHARDED_STATE_DICT .*saves no final weights",
        ),
        (
            accelerator(DistributedType.FSDP, fsdp_plugin(cpu_ram_efficient_loading=True)),
            True,
            "fsdp_cpu_ram_efficient_loading .*set it to false",
        ),
        (accelerator(DistributedType.DEEPSPEED, zero_stage=3), True, "full fine-tuning under DeepSpeed ZeRO-3"),
    ],
    ids=["fsdp1", "sharded-state-dict", "ram-efficient-loading-with-a-frozen-copy", "zero3-with-a-frozen-copy"],
)
def test_engine_settings_that_would_misbehave_are_refused(engine, frozen_copy, match):
    with pytest.raises(TetherInputError, match=match):
        check_engine(engine, frozen_copy)


def test_ram_efficient_loading_under_lora_passes():
    check_engine(accelerator(DistributedType.FSDP, fsdp_plugin(cpu_ram_efficient_loading=True)), frozen_copy=False)


@pytest.mark.parametrize("engine", [DistributedType.MULTI_CPU, DistributedType.NO])
def test_an_fsdp_launch_that_accelerate_runs_otherwise_is_refused(engine, monkeypatch):
    """accelerate turns FSDP on for GPU-like devices only: on CPU processes it trains DDP (MULTI_CPU), and without
    --use_cpu on a machine without GPUs every process alone (NO)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(TetherInputError, match=f"asks for FSDP, .*would train this as {engine.value}"):
        check_engine(accelerator(engine), frozen_copy=False)
