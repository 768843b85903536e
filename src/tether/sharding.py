"""Sharded training through `accelerate launch --config_file configs/accelerate/<engine>.yaml`: what tether runs
under, and a one-line refusal of what it does not (`docs/method.md` §1.7).

The fused loss reads the LM head's weight only inside the head's forward (`modeling.capture_head_inputs`), where
FSDP2 has unsharded it and DeepSpeed ZeRO-3 has gathered it; so the policy, and under LoRA the reference (the same
model with its adapter off), need nothing engine-specific. The frozen copy of full fine-tuning is replicated on
every process, outside the engine. What remains are launch settings under which a run would silently do something
else, and an engine that is not installed.
"""

from __future__ import annotations

import importlib.util
import os

from tether.errors import TetherInputError

FSDP_LAUNCH = "ACCELERATE_USE_FSDP"  # set by `accelerate launch` from a config with `distributed_type: FSDP`
DEEPSPEED_LAUNCH = "ACCELERATE_USE_DEEPSPEED"  # ... from `distributed_type: DEEPSPEED`


def launched_with(variable: str) -> bool:
    return os.environ.get(variable, "false").lower() == "true"


def check_engine_installed(deepspeed_field: bool) -> None:
    """Before the training config is built (transformers imports DeepSpeed when it is): DeepSpeed, asked for by the
    accelerate launch or by the `deepspeed` field, is installed."""
    if not (launched_with(DEEPSPEED_LAUNCH) or deepspeed_field) or importlib.util.find_spec("deepspeed"):
        return
    asked_by = "the deepspeed setting" if deepspeed_field else "the accelerate config (distributed_type: DEEPSPEED)"
    raise TetherInputError(
        f"{asked_by} asks for DeepSpeed, which is not installed; run `pip install deepspeed` (it needs GPUs), or "
        "drop it and launch with --config_file configs/accelerate/fsdp.yaml"
    )


def check_engine(accelerator, frozen_copy: bool) -> None:
    """Once the trainer's accelerator exists, before the model is sharded: refuse the engine settings under which a
    run would train as something else, save no weights, or make its frozen reference copy (`frozen_copy`: full
    fine-tuning with a KL) from weights it does not hold."""
    from accelerate.utils import DistributedType

    engine = accelerator.distributed_type
    if launched_with(FSDP_LAUNCH) and engine != DistributedType.FSDP:
        # accelerate turns FSDP on only for GPU-like devices; on CPU processes it keeps DDP (MULTI_CPU), and without
        # --use_cpu on a machine without GPUs every process trains alone (NO)
        raise TetherInputError(
            f"the accelerate config asks for FSDP, but accelerate runs FSDP on GPUs only and would train this as "
            f"{engine.value}; on CPUs launch with `--multi_gpu --num_processes N ... --use_cpu true` (DDP)"
        )
    if engine == DistributedType.FSDP:
        check_fsdp(accelerator.state.fsdp_plugin, frozen_copy)
    if engine == DistributedType.DEEPSPEED and frozen_copy and accelerator.state.deepspeed_plugin.zero_stage == 3:
        # transformers loads the model into ZeRO-3 partitions already (`zero.Init`), before the copy is made
        raise TetherInputError(
            "full fine-tuning under DeepSpeed ZeRO-3 is not supported: the frozen reference copy would be copied from "
            "partitioned weights; use LoRA (use_peft true) or configs/accelerate/deepspeed-zero2.yaml"
        )


def check_fsdp(plugin, frozen_copy: bool) -> None:
    """FSDP2, saving full weights; with a frozen copy, every process loads the weights the copy is made of."""
    if plugin.fsdp_version != 2:
        # FSDP1 wraps the model in a module of its own, which the reference pass (the unwrapped model) would bypass
        raise TetherInputError(
            f"fsdp_version {plugin.fsdp_version} in the accelerate config: tether runs FSDP2; set fsdp_version: 2 "
            "(configs/accelerate/fsdp.yaml)"
        )
    state_dict_type = str(plugin.state_dict_type).rsplit(".", 1)[-1]  # an enum: StateDictType.FULL_STATE_DICT
    if state_dict_type != "FULL_STATE_DICT":  # transformers' own test in `Trainer.save_model`
        raise TetherInputError(
            f"fsdp_state_dict_type {state_dict_type} in the accelerate config: transformers then saves no "
            "final weights into the run directory; set fsdp_state_dict_type: FULL_STATE_DICT"
        )
    if frozen_copy and plugin.cpu_ram_efficient_loading:
        raise TetherInputError(
            "fsdp_cpu_ram_efficient_loading in the accelerate config loads the weights on the main process only, "
            "while full fine-tuning copies its frozen reference from every process's weights; set it to false"
        )


def end_process_group() -> None:
    """Destroy the process group of `accelerate launch` once this process's run is done (a no-op in one process).
    transformers never does, and gloo's worker threads then race the interpreter's shutdown: a finished run can
    abort at exit ("terminate called without an active exception", SIGABRT; pytorch/pytorch#179291)."""
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
