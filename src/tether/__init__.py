"""tether: fine-tune safety-aligned LLMs on user data while keeping their refusals (adaptive regularization)."""

__version__ = "0.1.0"

from tether.baselines import train_config_class, trainer_class_for  # noqa: E402
from tether.critics import critic_from_config, get_critic  # noqa: E402
from tether.errors import TetherInputError  # noqa: E402
from tether.trainer import TetherConfig, TetherTrainer  # noqa: E402

__all__ = [
    "TetherConfig",
    "TetherInputError",
    "TetherTrainer",
    "critic_from_config",
    "get_critic",
    "train_config_class",
    "trainer_class_for",
]
