"""Constrained SFT (Qi et al., ICLR 2025, "Safety Alignment Should Be Made More Than Just a Few Tokens Deep", arXiv
2406.05946; `docs/method.md` §6): `ConstrainedSFTConfig` + `ConstrainedSFTTrainer`.

The token-wise constrained objective replaces the NLL of each response token by

    −(2/β_t) · log σ(β_t · Δ_t + b_t),   Δ_t = log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t),

whose gradient is the NLL's times w_t = 2·(1 − σ(β_t·Δ_t + b_t)): once the policy puts more probability on a target
token than the aligned reference did, its weight falls toward 0, and the larger β_t the sooner. β_t is large on the
first response tokens (where refusals are decided) and small after them, so the fine-tune learns the data's later
tokens almost freely and its first tokens only as far as the reference already allows. The official code
(Unispac/shallow-vs-deep-alignment, `ConstrainedSFTTrainer.soft_sft_loss`) computes exactly this weighted NLL with
the weight detached and clamped at 1e-3, β_1 = β·5, β_2..5 = β·20, β_t>5 = β with β = 0.1, and a bias b_t = 2 on the
first five tokens; those are the defaults here. There is no KL term: `regularizer` must be `none`, and the reference
(the adapter-disabled model under LoRA) is read for π_ref(y_t) only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tether.errors import TetherInputError
from tether.losses import response_depth
from tether.trainer import TetherConfig, TetherTrainer


@dataclass
class ConstrainedSFTConfig(TetherConfig):
    r"""
    [`TetherConfig`] plus constrained SFT's fields (the official code's defaults).

    constrained_sft (`bool`, defaults to `False`):
        Turns the token-wise constrained objective on (with `regularizer: none`).
    constrained_sft_beta (`float`, defaults to `0.1`):
        β of the tokens after the prefix.
    constrained_sft_prefix_tokens (`int`, defaults to `5`), constrained_sft_prefix_factor (`float`, defaults to
    `20.0`), constrained_sft_first_token_factor (`float`, defaults to `5.0`), constrained_sft_prefix_bias (`float`,
    defaults to `2.0`):
        β·factor on the first `prefix_tokens` response tokens (β·first_token_factor on the very first), and the bias
        b added inside their sigmoid.
    """

    constrained_sft: bool = field(default=False, metadata={"help": "Constrained SFT (token-wise objective) on."})
    constrained_sft_beta: float = field(default=0.1, metadata={"help": "Constrained SFT: beta after the prefix."})
    constrained_sft_prefix_tokens: int = field(default=5, metadata={"help": "Constrained SFT: prefix length."})
    constrained_sft_prefix_factor: float = field(default=20.0, metadata={"help": "Constrained SFT: prefix beta x."})
    constrained_sft_first_token_factor: float = field(
        default=5.0, metadata={"help": "Constrained SFT: first token's beta factor."}
    )
    constrained_sft_prefix_bias: float = field(default=2.0, metadata={"help": "Constrained SFT: prefix sigmoid bias."})

    def __post_init__(self):
        if self.constrained_sft:
            if self.regularizer != "none":
                raise TetherInputError(
                    f"constrained_sft replaces the loss; it needs regularizer none, got {self.regularizer!r}"
                )
            for name in ("constrained_sft_beta", "constrained_sft_prefix_factor", "constrained_sft_first_token_factor"):
                if not getattr(self, name) > 0:
                    raise TetherInputError(f"{name} must be a positive number, got {getattr(self, name)}")
            if self.constrained_sft_prefix_tokens < 0:
                raise TetherInputError(
                    f"constrained_sft_prefix_tokens must be at least 0, got {self.constrained_sft_prefix_tokens}"
                )
        super().__post_init__()


def constrained_weights(
    delta: torch.Tensor,
    depth: torch.Tensor,
    beta: float,
    prefix_tokens: int,
    prefix_factor: float,
    first_token_factor: float,
    prefix_bias: float,
) -> torch.Tensor:
    """The NLL weight of each token: 2·(1 − σ(β_t·Δ_t + b_t)), clamped at 1e-3. delta (N,) log π_θ − log π_ref of the
    target, depth (N,) the token's index in its response -> (N,)."""
    prefix = depth < prefix_tokens  # (N,)
    betas = torch.where(prefix, beta * prefix_factor, beta)  # (N,)
    betas = torch.where(depth == 0, beta * first_token_factor, betas) if prefix_tokens > 0 else betas
    bias = prefix.float() * prefix_bias  # (N,)
    return (2 * (1 - torch.sigmoid(betas * delta + bias))).clamp(min=1e-3)


class ConstrainedSFTTrainer(TetherTrainer):
    """`TetherTrainer` whose per-token NLL weight is constrained SFT's w_t (module docstring); no KL."""

    config_class = ConstrainedSFTConfig
    switch = "constrained_sft"

    @staticmethod
    def enabled(config) -> bool:
        return bool(config.constrained_sft)

    @classmethod
    def uses_reference(cls, args) -> bool:
        return True  # π_ref(y_t) of every target token

    def token_weights(self, positions, reference, alpha, beta):
        """w_t of each response token from the log-probabilities of its target that the fused pass computes."""
        args = self.args
        depth = response_depth(positions.rows)  # (N,)
        prefix = depth < args.constrained_sft_prefix_tokens  # (N,)
        weights = torch.empty(depth.shape, dtype=torch.float32, device=depth.device)  # (N,), for the metrics

        def weigh(rows: slice, policy: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            weights[rows] = constrained_weights(
                policy - ref,
                depth[rows],
                args.constrained_sft_beta,
                args.constrained_sft_prefix_tokens,
                args.constrained_sft_prefix_factor,
                args.constrained_sft_first_token_factor,
                args.constrained_sft_prefix_bias,
            )
            if rows.stop >= len(depth):  # the last chunk: every weight is known
                metrics = self._metrics["train" if self.model.training else "eval"]
                if prefix.any():
                    metrics["constrained/weight_prefix_mean"].append(weights[prefix].mean().item())
                if (~prefix).any():
                    metrics["constrained/weight_rest_mean"].append(weights[~prefix].mean().item())
            return weights[rows]

        return weigh, None  # no KL term
