"""The safety-critic interface: a per-example risk score in [0, 1], higher means less safe."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Critic(Protocol):
    """Scores a training batch.

    `needs` names what the critic reads from the batch (a subset of {"risk", "prompt", "response",
    "reference_hidden"}); the trainer checks it before training. `score(batch)` returns a float tensor (B,) in
    [0, 1], higher = riskier, computed without gradient.
    """

    name: str
    needs: frozenset[str]

    def score(self, batch: dict) -> torch.Tensor: ...
