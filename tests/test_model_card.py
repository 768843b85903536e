"""Model cards: written into every run directory and its adapter folder, filled in by `tether eval`, carried by merged
and pruned models; a README that is not a tether card is never touched."""

import json
from pathlib import Path

import pytest
import yaml

from tether.cli import main
from tether.model_card import MARKER, NOT_EVALUATED, add_evaluation

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def metadata(card: Path) -> dict:
    text = card.read_text()
    assert text.startswith("---\n") and MARKER in text
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("card") / "run"
    argv = ["train", "--config", TINY, "--output_dir", str(run), "--max_steps", "1", "--kl_prefix_tokens", "3"]
    assert main(argv + ["--kl_prefix_scale", "5"]) == 0
    return run


def test_a_run_carries_its_card_in_the_run_and_adapter_folders(run):
    for card in (run / "README.md", run / "adapter" / "README.md"):
        meta = metadata(card)
        assert meta["base_model"] == "tiny-llama" and meta["library_name"] == "peft"
        assert {"tether", "safety", "adaptive", "lora"} <= set(meta["tags"])
        text = card.read_text()
        assert "A-Reg (risk-weighted KL), LoRA r=8, alpha=16" in text
        assert "| `critic` | label |" in text and "| `kl_prefix_scale` | 5.0 |" in text
        assert "dataset: `tiny-synthetic`" in text and NOT_EVALUATED in text


def test_tether_eval_writes_its_numbers_into_the_card(run, tmp_path, monkeypatch):
    data = tmp_path / "data" / "harmbench"
    data.mkdir(parents=True)
    (data / "harmbench_behaviors_text_all.csv").write_text(
        "Behavior,FunctionalCategory\n" + "".join(f"placeholder request {i},standard\n" for i in range(4))
    )
    (tmp_path / "data" / "refusal_prefixes").mkdir()
    (tmp_path / "data" / "refusal_prefixes" / "refusal_prefixes.txt").write_text("I cannot\n")
    argv = ["eval", "--model", str(run), "--benchmark", "harmbench", "--data_dir", str(tmp_path / "data")]
    assert main(argv + ["--out", str(tmp_path / "eval"), "--max_new_tokens", "4"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    metrics = results["benchmarks"]["harmbench"]["metrics"]
    for card in (run / "README.md", run / "adapter" / "README.md"):
        text = card.read_text()
        assert NOT_EVALUATED not in text and "## Evaluation" in text and "## Training" in text
        row = f"| harmbench | {results['benchmarks']['harmbench']['version']} | keyword_asr | "
        assert f"{row}{metrics['keyword_asr']:.1%} | 4 |" in text
        assert text.count("## Evaluation") == 1


def test_a_readme_that_is_not_a_tether_card_is_left_alone(tmp_path):
    (tmp_path / "README.md").write_text("# my model\n")
    assert add_evaluation(tmp_path, {"generation": {}, "benchmarks": {}}) == []
    assert (tmp_path / "README.md").read_text() == "# my model\n"
