"""Every shipped config parses: training configs into the three dataclasses, bench configs into a BenchConfig whose
every run's settings parse as a `tether train` config, accelerate configs (`configs/accelerate/`) as `accelerate
launch` reads them."""

from pathlib import Path

import pytest

from tether.cli.train import make_parser

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
BENCH_CONFIGS = sorted((ROOT / "configs" / "bench").glob("*.yaml")) + [ROOT / "src/tether/bench/demo.yaml"]
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


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


def launch_args(path: Path):
    """The arguments `accelerate launch --config_file PATH script.py` runs with, and the flags it knows."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    known = set(vars(parser.parse_args(["script.py"])))
    args, defaults, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "script.py"]))
    return args, defaults, known


def test_accelerate_configs_exist():
    assert {p.name for p in ACCELERATE_CONFIGS} == {"fsdp.yaml", "deepspeed-zero2.yaml", "deepspeed-zero3.yaml"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_config_parses(path):
    """accelerate copies each engine setting onto a launch flag of the same name, and ignores one it does not know:
    every setting must be a flag."""
    args, defaults, known = launch_args(path)
    settings = {**defaults.fsdp_config, **defaults.deepspeed_config}
    assert settings and not [key for key in settings if key not in known]
    assert args.num_processes == 2 and args.mixed_precision == "bf16"
    if path.name == "fsdp.yaml":
        assert args.use_fsdp and not args.use_deepspeed
    else:
        assert args.use_deepspeed and args.zero_stage == int(path.stem[-1])


def test_the_fsdp_config_passes_the_engine_checks(monkeypatch):
    """The FSDP plugin that accelerate builds from the environment the launch sets: FSDP2, decoder layers as units,
    full state dicts, every process loading the weights (a frozen copy can be made)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    from tether.sharding import check_fsdp

    args, _, _ = launch_args(ROOT / "configs" / "accelerate" / "fsdp.yaml")
    for name, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")  # accelerate refuses it without a GPU
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    check_fsdp(plugin, frozen_copy=True)


def test_tether_defaults_are_the_validated_choice(tmp_path):
    """`regularizer: adaptive` with nothing else set runs the candidate chosen on validation prompts
    (configs/bench/default-validation.yaml); `fixed` (C-SFT) keeps the published uniform KL and no drift control."""
    from tether.bench.config import load_bench_config
    from tether.trainer import TetherConfig

    bench = load_bench_config(ROOT / "configs" / "bench" / "default-validation.yaml")
    chosen = next(m for m in bench.methods if m.name == "default, canary on the prefix only").train
    config = TetherConfig(output_dir=str(tmp_path))
    assert {name: getattr(config, name) for name in chosen} == chosen
    fixed = TetherConfig(output_dir=str(tmp_path), regularizer="fixed")
    assert (fixed.kl_prefix_tokens, fixed.kl_prefix_scale, fixed.canary_prompts) == (0, 1.0, None)
    assert TetherConfig(output_dir=str(tmp_path), canary_every=0).canary_prompts is None
    assert TetherConfig(output_dir=str(tmp_path), kl_prefix_tokens=0).canary_scope == "all"  # no prefix to act on
    assert fixed.canary_scope == "all"
