"""Baselines that change the training step, each a Config + Trainer pair in its own file, registered here.

`tether train` accepts every registered config's fields (`train_config_class`) and trains with the trainer whose
fields turn it on (`trainer_class_for`), or `TetherTrainer`. A new baseline is one file (a `XConfig(TetherConfig)`
and an `XTrainer(TetherTrainer)` with `config_class`, `switch` (the field that turns it on) and
`enabled(config)`) plus one line in `BASELINES`. SFT and
C-SFT are settings of `TetherTrainer` (`regularizer: none | fixed`); Antidote prunes after training
(`tether.baselines.antidote`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

from tether.errors import TetherInputError

BASELINES = {
    "asft": "tether.baselines.asft:AsFTTrainer",
    "constrained_sft": "tether.baselines.constrained_sft:ConstrainedSFTTrainer",
    "lisa": "tether.baselines.lisa:LisaTrainer",
    "star_dss": "tether.baselines.star_dss:StarDssTrainer",
    "vaccine": "tether.baselines.vaccine:VaccineTrainer",
}


def baseline_trainer(name: str) -> type:
    module, cls = BASELINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


@functools.cache
def train_config_class() -> type:
    """`TetherConfig` with every registered baseline's fields: what `tether train` parses. At most one baseline may
    be turned on."""
    trainers = {name: baseline_trainer(name) for name in BASELINES}
    bases = tuple(trainer.config_class for trainer in trainers.values())

    def __post_init__(self):
        on = [name for name, trainer in trainers.items() if trainer.enabled(self)]
        if len(on) > 1:
            switches = [trainers[name].switch for name in on]
            raise TetherInputError(
                f"baselines {' and '.join(on)} are both turned on ({', '.join(switches)}); keep one: set "
                + ", or ".join(f"no {switch}" for switch in switches)
            )
        super(TrainConfig, self).__post_init__()

    doc = "Every field of `tether train`: `TetherConfig` and the fields of each baseline in `tether.baselines`."
    TrainConfig = dataclasses.dataclass(
        type("TrainConfig", bases, {"__post_init__": __post_init__, "__doc__": doc, "__module__": __name__})
    )
    return TrainConfig


def __getattr__(name: str):
    """`tether.baselines.TrainConfig`, built on first use (so that pickling a config, as the Trainer does, finds it)."""
    if name == "TrainConfig":
        return train_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trainer_class_for(config) -> type:
    """The trainer of `config`: the baseline whose fields turn it on, else `TetherTrainer`."""
    from tether.trainer import TetherTrainer

    for name in BASELINES:
        trainer = baseline_trainer(name)
        if isinstance(config, trainer.config_class) and trainer.enabled(config):
            return trainer
    return TetherTrainer


def settings_use_critic(settings: dict) -> bool:
    """Whether `tether train` with these settings scores its examples with the critic (`uses_critic` of the trainer
    they pick), asked of the settings alone: a caller may ask before what the config would check exists (the bench
    asks before fitting the probe that `critic: probe` reads)."""
    cls = train_config_class()
    view = object.__new__(cls)  # the fields' values, unvalidated: enough for `enabled` and `uses_critic`
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            setattr(view, f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            setattr(view, f.name, f.default_factory())
    for name, value in settings.items():
        setattr(view, name, value)
    return trainer_class_for(view).uses_critic(view)
