"""`tests/fsdp_on_cpu.py train ...` under `accelerate launch --config_file configs/accelerate/fsdp.yaml`: `tether
train` through accelerate's FSDP2 on CPU processes (gloo), as the same launch runs it on GPUs.

accelerate 1.16 turns FSDP on only for GPU-like distributed types (`AcceleratorState.__init__`: MULTI_GPU, MULTI_XPU,
...); on CPU processes (`--use_cpu true`) it keeps MULTI_CPU and wraps the model in DDP, which tether refuses
(`tether.sharding.check_engine`). This script changes that one decision and nothing else: the FSDP plugin comes from
the launch config, accelerate's `fsdp2_prepare_model` shards the model with torch's `fully_shard`, and FSDP2 runs on
the gloo group. It prints `fully_shard units: N`, the units it sharded, so that a test sees FSDP did run.
"""

import sys

import torch.distributed.fsdp
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from tether.cli import main

accelerator_state_init = AcceleratorState.__init__
fully_shard = torch.distributed.fsdp.fully_shard
units = []


def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


def counted_fully_shard(module, **kwargs):  # accelerate imports `fully_shard` from the module when it shards
    units.append(module)
    return fully_shard(module, **kwargs)


AcceleratorState.__init__ = fsdp_on_cpu
torch.distributed.fsdp.fully_shard = counted_fully_shard

if __name__ == "__main__":
    code = main()
    print(f"fully_shard units: {len(units)}")
    sys.exit(code)
