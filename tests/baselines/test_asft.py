"""AsFT on the tiny model: the penalty ‖(I − C) B A‖_F² by hand, zero for an untrained adapter and added to the loss
with λ, a training run through the CLI that logs it, and the inputs it refuses."""

from pathlib import Path

import pytest
import torch

from tether.baselines.asft import AsFTTrainer, alignment_directions, off_alignment_penalty
from tether.cli import main
from tether.errors import TetherInputError
from tether.modeling import build_tiny_model, build_tiny_tokenizer, save_model_dir

from ..conftest import make_config, make_trainer

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


def test_penalty_is_the_off_alignment_part_of_the_update_by_hand():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 12, generator=generator), torch.randn(10, 4, generator=generator)  # (r, in), (out, r)
    v = torch.randn(10, 12, generator=generator)  # W_aligned − W_unaligned
    c = v @ v.T / torch.linalg.matrix_norm(v)  # Safe LoRA's and AsFT's C, (out, out)
    want = torch.linalg.matrix_norm((torch.eye(10) - c) @ b @ a) ** 2
    got = off_alignment_penalty(a, b, v / torch.linalg.matrix_norm(v).sqrt())
    torch.testing.assert_close(got, want)


def directions_from_a_perturbed_copy(model) -> dict[str, torch.Tensor]:
    """Directions as if `model` had been aligned from a copy of itself with every projection moved."""
    unaligned = build_tiny_model(model.config.vocab_size)
    unaligned.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in unaligned.named_parameters():
            if name.endswith("proj.weight"):
                param += 0.05 * torch.randn(param.shape, generator=generator)
    names = [n for n, m in model.named_modules() if n.endswith("proj")]
    return alignment_directions(unaligned, model, names)


def test_penalty_is_added_to_the_loss_with_lambda(tiny_model, tokenizer, rows, tmp_path):
    directions = directions_from_a_perturbed_copy(tiny_model)
    config = make_config(tmp_path, regularizer="none", asft_unaligned="tiny-llama", asft_lambda=2.0)
    trainer = make_trainer(tiny_model, tokenizer, rows, config, directions=directions)
    assert isinstance(trainer, AsFTTrainer)
    assert trainer.asft_penalty() == 0.0  # LoRA starts with B = 0: no update yet
    with torch.no_grad():  # an update with a part off the alignment direction
        for layer in trainer._asft_layers.values():
            layer.lora_B["default"].weight.normal_(0, 0.1)
    trainer.model.train()
    penalty = trainer.asft_penalty()
    assert penalty > 0
    assert trainer.extra_loss(trainer.model, "train").item() == pytest.approx(2.0 * penalty.item())
    assert trainer._metrics["train"]["asft/penalty"] == [pytest.approx(2.0 * penalty.item())]


def test_cli_trains_with_the_penalty_logged(tmp_path):
    tokenizer = build_tiny_tokenizer()
    aligned, unaligned = build_tiny_model(len(tokenizer)), build_tiny_model(len(tokenizer))
    with torch.no_grad():
        for name, param in unaligned.named_parameters():
            if name.endswith("proj.weight"):
                param += 0.05
    save_model_dir(aligned, tokenizer, tmp_path / "aligned")
    save_model_dir(unaligned, tokenizer, tmp_path / "unaligned")
    run = tmp_path / "run"
    argv = ["train", "--config", TINY, "--model_name_or_path", str(tmp_path / "aligned"), "--output_dir", str(run)]
    argv += ["--regularizer", "none", "--asft_unaligned", str(tmp_path / "unaligned"), "--max_steps", "2"]
    assert main(argv) == 0
    assert '"asft/penalty"' in (run / "metrics.jsonl").read_text()


def test_refuses_a_reference_without_an_alignment_direction(tiny_model):
    names = [n for n, m in tiny_model.named_modules() if n.endswith("proj")]
    with pytest.raises(TetherInputError, match="there is no alignment direction"):
        alignment_directions(tiny_model, tiny_model, names)
