"""Safe LoRA on the tiny model: an "unaligned" model, an "aligned" one that differs from it by a known update on every
projection, a LoRA run trained from the aligned one; the projection, the layer choice and the CLI."""

import json
from pathlib import Path

import pytest
import torch

from tether.baselines.safe_lora import alignment_projections, lora_layers, safe_lora_project
from tether.cli import main
from tether.modeling import build_tiny_model, build_tiny_tokenizer, load_trained, save_model_dir

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("safelora")
    tokenizer = build_tiny_tokenizer()
    unaligned = build_tiny_model(len(tokenizer))
    aligned = build_tiny_model(len(tokenizer))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in aligned.named_parameters():
            if name.endswith("proj.weight"):
                param += 0.05 * torch.randn(param.shape, generator=generator)
    save_model_dir(unaligned, tokenizer, root / "unaligned")
    save_model_dir(aligned, tokenizer, root / "aligned")
    run = root / "run"
    argv = ["train", "--config", TINY, "--model_name_or_path", str(root / "aligned"), "--output_dir", str(run)]
    assert main(argv + ["--max_steps", "3", "--regularizer", "none", "--learning_rate", "0.01"]) == 0
    return root


def test_projection_and_cosines_by_hand(models):
    peft_model, _ = load_trained(str(models / "run"), merge=False)
    unaligned, _ = load_trained(str(models / "unaligned"))
    names = list(lora_layers(peft_model))
    assert len(names) == 14  # 7 projections x 2 layers
    projections = alignment_projections(unaligned, peft_model.get_base_model(), names)
    name = names[0]
    module = lora_layers(peft_model)[name]
    v = module.weight - dict(unaligned.named_modules())[name].weight  # the LoRA layer's weight is its base weight
    c = v @ v.T / torch.linalg.matrix_norm(v)
    torch.testing.assert_close(projections[name], c)
    update = module.lora_B["default"].weight @ module.lora_A["default"].weight
    expected = torch.nn.functional.cosine_similarity((c @ update).reshape(1, -1), update.reshape(1, -1)).item()
    layers = lora_layers(peft_model)
    before = {n: layer.lora_B["default"].weight.clone() for n, layer in layers.items()}
    summary = safe_lora_project(peft_model, projections, num_layers=3)
    assert summary["cosines"][name] == pytest.approx(expected, rel=1e-5)
    lowest = sorted(summary["cosines"], key=summary["cosines"].get)[:3]
    assert summary["projected"] == lowest
    for n, layer in layers.items():  # B <- C B on the chosen layers, untouched elsewhere
        want = projections[n] @ before[n] if n in lowest else before[n]
        torch.testing.assert_close(layer.lora_B["default"].weight, want)


def test_cli_projects_with_a_threshold_and_writes_a_model(models, tmp_path):
    out = tmp_path / "projected"
    argv = ["safelora", "--model", str(models / "run"), "--unaligned", str(models / "unaligned"), "--out", str(out)]
    assert main(argv + ["--threshold", "1.0"]) == 0  # every layer's cosine is <= 1: all projected
    record = json.loads((out / "safe_lora.json").read_text())
    assert len(record["projected"]) == 14 and record["threshold"] == 1.0
    assert "Safe LoRA: 14 of 14 LoRA layers projected" in (out / "README.md").read_text()
    merged, _ = load_trained(str(out))
    plain, _ = load_trained(str(models / "run"))
    q_proj = [m.model.layers[0].self_attn.q_proj.weight for m in (merged, plain)]
    assert not torch.equal(*q_proj)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--num_layers", "2", "--threshold", "0.5"], "pass one of --num_layers"),
        (["--num_layers", "0"], "--num_layers must be at least 1, got 0"),
        (["--threshold", "2"], "--threshold is a cosine in [-1, 1], got 2.0"),
    ],
)
def test_bad_settings_are_refused_before_loading(extra, words, models, tmp_path, capsys):
    argv = ["safelora", "--model", str(models / "run"), "--unaligned", str(models / "unaligned")]
    assert main(argv + ["--out", str(tmp_path / "o"), *extra]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_plain_model_is_refused(models, tmp_path, capsys):
    argv = ["safelora", "--model", str(models / "aligned"), "--unaligned", str(models / "unaligned")]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert "is not a LoRA run directory (no adapter/)" in capsys.readouterr().err
