import math

import pytest
import torch

from tests.conftest import make_config, make_trainer, target_logprobs_of
from tether.baselines.constrained_sft import ConstrainedSFTTrainer, constrained_weights
from tether.errors import TetherInputError
from tether.losses import response_depth
from tether.trainer.tether_trainer import ResponsePositions


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_weights_by_hand():
    """β_1 = 0.5, β_2..5 = 2, then 0.1 (the official defaults with β = 0.1), a bias of 2 on the prefix; clamped."""
    depth = torch.tensor([0, 1, 4, 5, 9, 1])
    delta = torch.tensor([0.0, 1.0, -1.0, 0.0, 3.0, 10.0])
    weights = constrained_weights(delta, depth, 0.1, 5, 20.0, 5.0, 2.0)
    expected = [
        2 * (1 - sigmoid(0.5 * 0 + 2)),
        2 * (1 - sigmoid(2 * 1 + 2)),
        2 * (1 - sigmoid(2 * -1 + 2)),
        1.0,  # Δ = 0 after the prefix: the plain NLL's weight
        2 * (1 - sigmoid(0.1 * 3)),
        1e-3,  # far above the reference: clamped
    ]
    assert weights.tolist() == pytest.approx(expected, rel=1e-5)


def test_loss_is_the_weighted_nll_with_weights_from_policy_and_reference(tiny_model, tokenizer, rows, tmp_path):
    """After the adapter moves, the loss equals Σ w_t·nll_t / N with w_t from Δ_t = log π_θ − log π_ref of the
    target, recomputed here from two plain forwards (adapter on and off)."""
    config = make_config(tmp_path, regularizer="none", constrained_sft=True)
    trainer = make_trainer(tiny_model, tokenizer, rows[-6:], config)
    assert isinstance(trainer, ConstrainedSFTTrainer) and trainer.reference is not None
    for param in (p for n, p in trainer.model.named_parameters() if "lora_" in n):
        param.data.normal_(0, 0.05)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    positions = ResponsePositions.of(batch)
    targets = positions.targets[positions.rows, positions.cols]

    def logp(model):
        return target_logprobs_of(model, batch)[0]

    with torch.no_grad():
        trainer.model.eval()
        policy = logp(trainer.model)
        with trainer.reference.active() as reference:
            ref = logp(reference)
    weights = constrained_weights(policy - ref, response_depth(positions.rows), 0.1, 5, 20.0, 5.0, 2.0)
    assert weights.std() > 0  # tokens weighted differently
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx((weights * -policy).sum().item() / targets.numel(), rel=1e-4)
    metrics = trainer._metrics["eval"]
    assert metrics["loss/kl"] and metrics["weights/beta_max"] == [0.0]  # no KL weight
    assert metrics["constrained/weight_prefix_mean"] and metrics["constrained/weight_rest_mean"]


def test_trains_and_needs_regularizer_none(tiny_model, tokenizer, rows, tmp_path):
    trainer = make_trainer(
        tiny_model, tokenizer, rows, make_config(tmp_path, regularizer="none", constrained_sft=True, max_steps=2)
    )
    trainer.train()
    assert [log for log in trainer.state.log_history if "constrained/weight_prefix_mean" in log]
    with pytest.raises(TetherInputError, match="constrained_sft replaces the loss; it needs regularizer none"):
        make_config(tmp_path, regularizer="adaptive", constrained_sft=True)
    with pytest.raises(TetherInputError, match="constrained_sft_beta must be a positive number"):
        make_config(tmp_path, regularizer="none", constrained_sft=True, constrained_sft_beta=0)
    with pytest.raises(TetherInputError, match="baselines constrained_sft and lisa are both turned on"):
        make_config(tmp_path, regularizer="none", constrained_sft=True, lisa_data="advbench-refusals")
