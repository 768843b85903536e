"""A critic that gives every example the same risk: C-SFT through the adaptive path, and tests."""

from __future__ import annotations

import torch


class ConstantCritic:
    name = "constant"
    needs = frozenset()

    def __init__(self, value: float = 0.0):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"critic_value must be in [0, 1], got {value}")
        self.value = value

    @classmethod
    def from_config(cls, config) -> ConstantCritic:
        return cls(config.critic_value)

    def score(self, batch: dict) -> torch.Tensor:
        input_ids = batch["input_ids"]  # (B, T)
        return torch.full((input_ids.shape[0],), self.value, device=input_ids.device)
