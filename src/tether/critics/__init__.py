"""Critic registry: a config string becomes a critic object. Anything that takes a name also takes an instance.

A new critic is one file in this folder (a class with `name`, `needs`, `score`, a `from_config(config)` classmethod,
and optionally `prepare` / `reference_reads` / `use_tokenizer`, see `base.py`) plus one line in `CRITICS`."""

from __future__ import annotations

import importlib

from tether.critics.base import Critic, PreparesRows, ReadsReference, ScoresPrompts, UsesTokenizer

CRITICS = {
    "constant": "tether.critics.constant:ConstantCritic",
    "judge": "tether.critics.judge:JudgeCritic",
    "label": "tether.critics.label:LabelCritic",
    "probe": "tether.critics.probe:ProbeCritic",
    "refusal": "tether.critics.refusal:RefusalCritic",
}


def critic_class(name: str) -> type:
    if name not in CRITICS:
        raise ValueError(f"unknown critic {name!r}; valid critics: {', '.join(sorted(CRITICS))}")
    module, cls = CRITICS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_critic(critic: str | Critic, **kwargs) -> Critic:
    """Build the critic named `critic` with `kwargs`, or return `critic` itself if it is already a critic."""
    if not isinstance(critic, str):
        return critic
    return critic_class(critic)(**kwargs)


def critic_from_config(config, critic: str | Critic | None = None) -> Critic:
    """The critic `critic` (default: the one `config.critic` names), built from the config's fields; an object is
    returned as it is."""
    critic = config.critic if critic is None else critic
    if not isinstance(critic, str):
        return critic
    return critic_class(critic).from_config(config)


__all__ = [
    "CRITICS",
    "Critic",
    "PreparesRows",
    "ReadsReference",
    "ScoresPrompts",
    "UsesTokenizer",
    "critic_from_config",
    "get_critic",
]
