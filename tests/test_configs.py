"""Every shipped config parses: training configs into the three dataclasses, bench configs into a BenchConfig whose
every run's settings parse as a `tether train` config."""

from pathlib import Path

import pytest

from tether.cli.train import make_parser

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
BENCH_CONFIGS = sorted((ROOT / "configs" / "bench").glob("*.yaml")) + [ROOT / "src/tether/bench/demo.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses(path):
    model_args, data_args, config = make_parser().parse(["--config", str(path)])
    assert model_args.model_name_or_path and data_args.dataset
    assert config.regularizer in ("none", "fixed", "adaptive")


def test_configs_exist():
    assert {"tiny.yaml", "demo.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=[p.name for p in BENCH_CONFIGS])
def test_bench_config_parses(path, tmp_path):
    import yaml

    from tether.bench.config import load_bench_config

    bench = load_bench_config(path)
    for scenario, method, seed in bench.runs():
        trained = bench.trained(method)  # an Antidote method: the run it prunes
        settings = {**bench.train, **scenario.train, **trained.train, "seed": seed, "dataset": "tiny-synthetic"}
        if settings.get("critic") == "probe":
            settings["probe_path"] = "probe"
        if settings.get("critic") == "judge":
            continue
        config_file = tmp_path / "run.yaml"
        config_file.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "run")}))
        make_parser().parse(["--config", str(config_file)])


@pytest.mark.parametrize("verb", ["train", "bench"])
def test_a_key_written_twice_is_an_error(verb, tmp_path, capsys):
    """PyYAML keeps the last of two equal keys silently; tether names the key and its line instead."""
    from tether.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(
        "seed: 1\nlearning_rate: 1.0e-4\nseed: 2\n" if verb == "train" else "base: demo\nseeds: [0]\nseeds: [1]\n"
    )
    argv = ["train", "--config", str(config)] if verb == "train" else ["bench", "--config", str(config)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "duplicate key" in err[0] and "(line 3)" in err[0], err


def test_tether_defaults_are_the_validated_choice(tmp_path):
    """`regularizer: adaptive` with nothing else set runs the settings chosen on validation prompts, which the
    safe-reference bench writes out; `fixed` (C-SFT) keeps the published uniform KL and no drift control."""
    from tether.bench.config import load_bench_config
    from tether.trainer import TetherConfig

    bench = load_bench_config(ROOT / "configs" / "bench" / "safe-reference.yaml")
    chosen = next(m for m in bench.methods if m.name == "A-Reg refusal + depth KL + canary").train
    config = TetherConfig(output_dir=str(tmp_path))
    assert {name: getattr(config, name) for name in chosen} == chosen
    fixed = TetherConfig(output_dir=str(tmp_path), regularizer="fixed")
    assert (fixed.kl_prefix_tokens, fixed.kl_prefix_scale, fixed.canary_prompts) == (0, 1.0, None)
    assert TetherConfig(output_dir=str(tmp_path), canary_every=0).canary_prompts is None
