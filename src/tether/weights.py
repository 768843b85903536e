"""Map per-example risk scores s ∈ [0, 1] to loss weights (α, β). Pure objects, tested without a model.

Every change to a critic's risk happens here, in this order: clamped to [0, 1], raised to a floor (the judge's verdict
on the policy's own generations, when there is one), saturated (s ← min(1, s / risk_saturation)), then, in
`RiskWeights`, smoothed by the EMA (`transform_risk`, then `RiskWeights.smooth`).

`FixedWeights` covers plain SFT (α = 1, β = 0) and C-SFT (constant β). `RiskWeights` is adaptive regularization
(arXiv 2602.17546, `docs/method.md` §1.1):

    s̃ = λ·s̃_prev + (1 − λ)·s          (EMA, λ = 0 disables it)
    β = clamp(β_min + (β_max − β_min)·s̃, clamp_min, clamp_max)      (weight_map "linear")
    β = clamp((r − 2)/3, clamp_min, clamp_max), r = 1 + 4·s̃            (weight_map "official": the paper's code)
    α = 1 − β (alpha_mode "paper"), α = 1 (alpha_mode "one"), or α = 1 − s̃ (alpha_mode "gate":
    a fully risky example is not learned at all and only pulls toward the reference)

Higher s means riskier, so a larger β (pull toward the reference) and a smaller α (less task learning).
"""

from __future__ import annotations

import torch


def transform_risk(scores: torch.Tensor, floor: float | None = None, saturation: float = 1.0) -> torch.Tensor:
    """A critic's scores (B,) -> the risk the weights read (B,): clamped to [0, 1], at least `floor`, and saturated
    (a score at or above `saturation` counts as 1)."""
    scores = scores.clamp(0.0, 1.0)
    if floor is not None:
        scores = scores.clamp(min=floor)
    return (scores / saturation).clamp(max=1.0)


class FixedWeights:
    """Constant weights: plain SFT with `beta=0, alpha_mode="one"`, C-SFT with a fixed β."""

    def __init__(self, beta: float, alpha_mode: str = "paper", saturation: float = 1.0):
        self.beta = beta
        self.alpha = 1.0 if alpha_mode == "one" else 1.0 - beta  # without a risk, "gate" is "paper"
        self.saturation = saturation
        self.state: float | None = None  # no EMA; the attribute `RiskWeights` has, which a checkpoint records

    def transform(self, scores: torch.Tensor, floor: float | None = None) -> torch.Tensor:
        """The risk that is logged (these weights do not read it)."""
        return transform_risk(scores, floor, self.saturation)

    def __call__(self, scores: torch.Tensor, step_scores: torch.Tensor | None = None):
        """scores (B,) -> alpha (B,), beta (B,); the scores are ignored."""
        return torch.full_like(scores, self.alpha), torch.full_like(scores, self.beta)


class RiskWeights:
    """Risk-driven weights, per example or per batch, with an optional EMA on the risk.

    Args:
        beta_min, beta_max: β at s = 0 and s = 1 (linear map).
        clamp_min, clamp_max: β is clamped to this range (the official code's [0.1, 0.9]).
        ema: λ of the EMA on s; 0 disables it.
        granularity: `example` (each example its own α, β) or `batch` (every example gets the batch mean risk, the
            paper's description).
        alpha_mode: `paper` (α = 1 − β), `one` (α = 1) or `gate` (α = 1 − s̃).
        weight_map: `linear` or `official`.
        saturation: a score at or above this counts as 1 (`transform`).

    The EMA state is one number, the smoothed batch-mean risk, updated once per call. Under `batch` granularity,
    s̃ = λ·state + (1 − λ)·mean(s) for every example. Under `example` granularity each example gets
    s̃_i = λ·state + (1 − λ)·s_i, so the history shifts every example's risk by the same amount.
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 0.9,
        clamp_min: float = 0.1,
        clamp_max: float = 0.9,
        ema: float = 0.0,
        granularity: str = "example",
        alpha_mode: str = "paper",
        weight_map: str = "linear",
        saturation: float = 1.0,
    ):
        self.beta_min, self.beta_max = beta_min, beta_max
        self.clamp_min, self.clamp_max = clamp_min, clamp_max
        self.ema = ema
        self.granularity = granularity
        self.alpha_mode = alpha_mode
        self.weight_map = weight_map
        self.saturation = saturation
        self.state: float | None = None  # smoothed batch-mean risk

    def transform(self, scores: torch.Tensor, floor: float | None = None) -> torch.Tensor:
        """A critic's scores (B,) -> risk (B,) before the EMA: `transform_risk` with this map's saturation."""
        return transform_risk(scores, floor, self.saturation)

    def smooth(self, scores: torch.Tensor, step_scores: torch.Tensor | None = None) -> torch.Tensor:
        """scores (B,) of this process; step_scores (M,) of the whole step across devices (default: scores)."""
        step_scores = scores if step_scores is None else step_scores
        batch_mean = float(step_scores.mean())
        previous = batch_mean if self.state is None else self.state
        self.state = self.ema * previous + (1 - self.ema) * batch_mean
        if self.granularity == "batch":
            return torch.full_like(scores, self.state)
        return self.ema * previous + (1 - self.ema) * scores

    def __call__(self, scores: torch.Tensor, step_scores: torch.Tensor | None = None):
        """scores (B,) in [0, 1] -> alpha (B,), beta (B,), without gradient."""
        smoothed = self.smooth(scores.detach().float(), None if step_scores is None else step_scores.float())
        if self.weight_map == "official":
            beta = (4 * smoothed - 1) / 3  # (r − 2)/3 with r = 1 + 4 s
        else:
            beta = self.beta_min + (self.beta_max - self.beta_min) * smoothed
        beta = beta.clamp(self.clamp_min, self.clamp_max)
        if self.alpha_mode == "gate":
            alpha = 1 - smoothed
        elif self.alpha_mode == "one":
            alpha = torch.ones_like(beta)
        else:
            alpha = 1 - beta
        return alpha, beta


class CanaryController:
    """Drift control without a judge: a multiplier m ≥ 1 on every row's KL weight, driven by the policy's refusal on a
    fixed set of harmful canary prompts (`tether.trainer.callbacks.CanaryCallback` measures it).

    At each check, drop = (r_ref − r_policy) / r_ref, the relative fall of the canary refusal mass below the
    reference's. Above `tolerance` the multiplier grows: m ← min(m · gain, max_multiplier); below half the tolerance
    it relaxes: m ← max(1, m / gain); in between it holds. `state` (m) is what a checkpoint records.
    """

    def __init__(self, tolerance: float = 0.1, gain: float = 2.0, max_multiplier: float = 64.0):
        self.tolerance, self.gain, self.max_multiplier = tolerance, gain, max_multiplier
        self.state = 1.0

    def update(self, reference_mass: float, policy_mass: float) -> float:
        """One check: the canary refusal mass of the reference and of the policy -> the new multiplier."""
        drop = (reference_mass - policy_mass) / max(reference_mass, 1e-8)
        if drop > self.tolerance:
            self.state = min(self.state * self.gain, self.max_multiplier)
        elif drop < self.tolerance / 2:
            self.state = max(1.0, self.state / self.gain)
        return self.state
