"""tether: fine-tune safety-aligned LLMs on user data while keeping their refusals (adaptive regularization)."""

__version__ = "0.1.0"

from tether.critics import get_critic  # noqa: E402
from tether.errors import TetherInputError  # noqa: E402
from tether.trainer import TetherConfig, TetherTrainer  # noqa: E402

__all__ = ["TetherConfig", "TetherInputError", "TetherTrainer", "get_critic"]
