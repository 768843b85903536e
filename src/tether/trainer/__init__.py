"""The trainer: `TetherConfig` (its config, `tether_config.py`), `TetherTrainer` (`tether_trainer.py`), and the
callbacks of a `tether train` run (`callbacks.py`). Baselines that change the step subclass these in
`tether.baselines`."""

from tether.trainer.callbacks import CanaryCallback, JudgeGenerationsCallback, MetricsFileCallback, TetherStateCallback
from tether.trainer.tether_config import REGULARIZERS, TetherConfig
from tether.trainer.tether_trainer import TetherTrainer, linear_head

__all__ = [
    "REGULARIZERS",
    "CanaryCallback",
    "JudgeGenerationsCallback",
    "MetricsFileCallback",
    "TetherConfig",
    "TetherStateCallback",
    "TetherTrainer",
    "linear_head",
]
