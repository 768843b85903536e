"""Critic registry: a config string becomes a critic object. Anything that takes a name also takes an instance."""

from __future__ import annotations

import importlib

from tether.critics.base import Critic

CRITICS = {
    "constant": "tether.critics.constant:ConstantCritic",
    "judge": "tether.critics.judge:JudgeCritic",
    "label": "tether.critics.label:LabelCritic",
    "probe": "tether.critics.probe:ProbeCritic",
}


def get_critic(critic: str | Critic, **kwargs) -> Critic:
    """Build the critic named `critic` with `kwargs`, or return `critic` itself if it is already a critic."""
    if not isinstance(critic, str):
        return critic
    if critic not in CRITICS:
        raise ValueError(f"unknown critic {critic!r}; valid critics: {', '.join(sorted(CRITICS))}")
    module, cls = CRITICS[critic].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["CRITICS", "Critic", "get_critic"]
