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
        settings = {**bench.train, **scenario.train, **method.train, "seed": seed, "dataset": "tiny-synthetic"}
        if settings.get("critic") == "probe":
            settings["probe_path"] = "probe"
        if settings.get("critic") == "judge":
            continue
        config_file = tmp_path / "run.yaml"
        config_file.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "run")}))
        make_parser().parse(["--config", str(config_file)])
