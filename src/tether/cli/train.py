"""`tether train --config FILE.yaml [--any_field value ...]`: YAML config plus CLI overrides, TRL style."""

from __future__ import annotations

import argparse

from tether.baselines import train_config_class
from tether.config import DataArgs, ModelArgs, TetherParser

EXAMPLES = """examples:
  tether train --config configs/tiny.yaml --output_dir runs/tiny
  tether train --config configs/demo.yaml --regularizer fixed --beta 0.5 --output_dir runs/csft"""


def make_parser() -> TetherParser:
    return TetherParser(
        (ModelArgs, DataArgs, train_config_class()), prog="tether train", epilog=EXAMPLES, formatter_class=HelpFormatter
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Field defaults in the help, and the examples kept as written."""


def main(argv: list[str]) -> int:
    from tether.runner import run_training
    from tether.sharding import end_process_group

    model_args, data_args, config = make_parser().parse(argv)
    run_dir = run_training(model_args, data_args, config)
    end_process_group()
    print(f"run directory: {run_dir}")
    return 0
