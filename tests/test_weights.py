import pytest
import torch

from tether.weights import CanaryController, FixedWeights, RiskWeights


def test_linear_map_table():
    """β = 0.1 + 0.8·s: s = 0, 0.25, 0.5, 1 -> 0.1, 0.3, 0.5, 0.9; α = 1 − β."""
    alpha, beta = RiskWeights()(torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert beta.tolist() == pytest.approx([0.1, 0.3, 0.5, 0.9])
    assert alpha.tolist() == pytest.approx([0.9, 0.7, 0.5, 0.1])


def test_clamp_bounds_beta():
    """β_min = 0, β_max = 1 would give 0 and 1 at the ends; the clamp keeps β in [0.1, 0.9]."""
    _, beta = RiskWeights(beta_min=0.0, beta_max=1.0)(torch.tensor([0.0, 0.5, 1.0]))
    assert beta.tolist() == pytest.approx([0.1, 0.5, 0.9])
    _, unclamped = RiskWeights(beta_min=0.0, beta_max=1.0, clamp_min=0.0, clamp_max=1.0)(torch.tensor([0.0, 1.0]))
    assert unclamped.tolist() == pytest.approx([0.0, 1.0])


def test_official_map_table():
    """The official code: β = clip((r − 2)/3, 0.1, 0.9) for judge scores r = 1..5, s = (r − 1)/4 (method.md §1.1)."""
    scores = (torch.arange(1, 6, dtype=torch.float) - 1) / 4
    _, beta = RiskWeights(weight_map="official")(scores)
    assert beta.tolist() == pytest.approx([0.1, 0.1, 1 / 3, 2 / 3, 0.9], abs=1e-6)


def test_alpha_one_mode():
    alpha, beta = RiskWeights(alpha_mode="one")(torch.tensor([0.0, 1.0]))
    assert alpha.tolist() == [1.0, 1.0]
    assert beta.tolist() == pytest.approx([0.1, 0.9])


def test_gate_mode_stops_learning_risky_examples():
    """α = 1 − s: a risk-1 example has α = 0 (only the KL pulls it), a risk-0 example α = 1; β keeps its map."""
    alpha, beta = RiskWeights(alpha_mode="gate")(torch.tensor([0.0, 0.25, 1.0]))
    assert alpha.tolist() == pytest.approx([1.0, 0.75, 0.0])
    assert beta.tolist() == pytest.approx([0.1, 0.3, 0.9])


def test_example_vs_batch_granularity():
    """Risks [0, 1]: per example β = [0.1, 0.9]; per batch both get s = 0.5, β = 0.5."""
    scores = torch.tensor([0.0, 1.0])
    _, per_example = RiskWeights(granularity="example")(scores)
    _, per_batch = RiskWeights(granularity="batch")(scores)
    assert per_example.tolist() == pytest.approx([0.1, 0.9])
    assert per_batch.tolist() == pytest.approx([0.5, 0.5])


def test_batch_granularity_uses_step_scores_across_devices():
    """This process sees [1, 1], the whole step [1, 1, 0, 0]: the batch risk is 0.5, not 1."""
    _, beta = RiskWeights(granularity="batch")(torch.tensor([1.0, 1.0]), step_scores=torch.tensor([1.0, 1.0, 0, 0]))
    assert beta.tolist() == pytest.approx([0.5, 0.5])


def test_ema_by_hand():
    """λ = 0.5, batch means 1, 0, 0: s̃ = 1, 0.5·1 + 0.5·0 = 0.5, 0.25 -> β = 0.9, 0.5, 0.3."""
    weights = RiskWeights(ema=0.5, granularity="batch")
    betas = [weights(torch.tensor([s, s]))[1][0].item() for s in (1.0, 0.0, 0.0)]
    assert betas == pytest.approx([0.9, 0.5, 0.3])


def test_ema_per_example_shifts_by_history():
    """λ = 0.5, first batch mean 1 (state 1); then risks [0, 1]: s̃ = 0.5·1 + 0.5·[0, 1] = [0.5, 1] -> β [0.5, 0.9]."""
    weights = RiskWeights(ema=0.5)
    weights(torch.tensor([1.0]))
    _, beta = weights(torch.tensor([0.0, 1.0]))
    assert beta.tolist() == pytest.approx([0.5, 0.9])


def test_ema_zero_is_memoryless():
    weights = RiskWeights(ema=0.0, granularity="batch")
    weights(torch.tensor([1.0]))
    assert weights(torch.tensor([0.0]))[1].item() == pytest.approx(0.1)


def test_fixed_weights():
    alpha, beta = FixedWeights(beta=0.3)(torch.tensor([0.0, 1.0]))
    assert alpha.tolist() == pytest.approx([0.7, 0.7]) and beta.tolist() == pytest.approx([0.3, 0.3])
    alpha, beta = FixedWeights(beta=0.0, alpha_mode="one")(torch.tensor([0.5]))
    assert alpha.tolist() == [1.0] and beta.tolist() == [0.0]


def test_canary_controller_raises_holds_and_relaxes_the_kl_multiplier():
    controller = CanaryController(tolerance=0.2, gain=2.0, max_multiplier=4.0)
    assert controller.update(0.5, 0.5) == 1.0  # no fall: stays at 1, never below
    assert controller.update(0.5, 0.3) == 2.0  # fell 40% > 20%: doubles
    assert controller.update(0.5, 0.3) == 4.0
    assert controller.update(0.5, 0.1) == 4.0  # the ceiling
    assert controller.update(0.5, 0.43) == 4.0  # fell 14%: between half the tolerance and the tolerance, holds
    assert controller.update(0.5, 0.48) == 2.0  # fell 4% < 10%: relaxes
    assert controller.update(0.5, 0.6) == 1.0
    assert controller.update(0.0, 0.0) == 1.0  # a reference that never refuses gives no signal
