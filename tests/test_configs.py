"""Every shipped config parses into the three dataclasses."""

from pathlib import Path

import pytest

from tether.cli.train import make_parser

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses(path):
    model_args, data_args, config = make_parser().parse(["--config", str(path)])
    assert model_args.model_name_or_path and data_args.dataset
    assert config.regularizer in ("none", "fixed", "adaptive")


def test_configs_exist():
    assert {"tiny.yaml", "demo.yaml"} <= {p.name for p in CONFIGS}
