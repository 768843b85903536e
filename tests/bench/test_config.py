"""The bench config: every `train:` mapping is checked against `tether train`'s fields when the config loads."""

import pytest
import yaml

from tether.bench.config import bench_config_from_dict, load_bench_config
from tether.errors import TetherInputError

from .conftest import tiny_bench


def test_misspelt_train_field_of_a_method_fails_at_load_with_its_name(tmp_path):
    raw = tiny_bench(tmp_path)
    raw["methods"][1]["train"]["betta"] = 0.5  # C-SFT's β, misspelt
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TetherInputError) as error:
        load_bench_config(path)
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert f"unknown config field(s) betta in {path}: method 'C-SFT': train" in message


@pytest.mark.parametrize(
    "change, entry",
    [
        (lambda raw: raw["train"].update(max_stepz=2), "bench config: train"),
        (lambda raw: raw["reference"].update(train={"lr": 1e-4}), "bench config: reference: train"),
        (lambda raw: raw["scenarios"][0].update(train={"epochs": 3}), "bench config: scenario 'pure': train"),
    ],
)
def test_every_train_mapping_is_checked(change, entry, tmp_path):
    raw = tiny_bench(tmp_path)
    change(raw)
    with pytest.raises(TetherInputError, match=f"in {entry};"):
        bench_config_from_dict(raw)


def test_train_mapping_must_be_a_mapping(tmp_path):
    raw = tiny_bench(tmp_path)
    raw["methods"][0]["train"] = ["regularizer", "none"]
    with pytest.raises(TetherInputError, match="method 'SFT': train: expected a mapping"):
        bench_config_from_dict(raw)


def test_fields_the_bench_sets_itself_are_allowed(tmp_path):
    raw = tiny_bench(tmp_path)
    own = {"model_name_or_path": "tiny-llama", "dataset": "x.jsonl", "output_dir": "o", "seed": 1, "probe_path": "p"}
    raw["methods"][2]["train"].update(own)
    assert bench_config_from_dict(raw).methods[2].train["probe_path"] == "p"
