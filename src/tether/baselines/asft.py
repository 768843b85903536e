"""AsFT (Yang et al. 2025, "AsFT: Anchoring Safety During LLM Fine-Tuning Within Narrow Safety Basin", arXiv
2506.08473; `PKU-YuanGroup/AsFT`; `docs/method.md` §6): `AsFTConfig` + `AsFTTrainer`.

The alignment direction of each LoRA-adapted weight is V = W_aligned − W_unaligned (the safe reference minus the model
it was aligned from), with Safe LoRA's projection C = V Vᵀ / ‖V‖_F. AsFT adds to the loss the part of each LoRA update
ΔW = B A that leaves that direction:

    R = λ · Σ_layers ‖(I − C) B A‖_F²

so the fine-tune may move along the alignment direction (where the paper finds a narrow basin in which safety holds)
and pays for every step across it. The official code adds R, unscaled by LoRA's α/r, to each step's mean token NLL
with λ = 1 in every script; those are the defaults here. Computed without any (out × out) or (out × in) matrix per
step: B' = B − V (Vᵀ B) / ‖V‖_F (out, r), and ‖B' A‖_F² = Σ (B'ᵀ B') ⊙ (A Aᵀ) over (r × r) matrices; only V is kept
(the size of the adapted weights, float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tether.baselines.safe_lora import alignment_differences, lora_layers
from tether.errors import TetherInputError
from tether.trainer import TetherConfig, TetherTrainer


@dataclass
class AsFTConfig(TetherConfig):
    r"""
    [`TetherConfig`] plus AsFT's fields.

    asft_unaligned (`str`, *optional*):
        The model the reference (the LoRA base) was aligned from: a hub id, a local directory or a built-in name
        (`smollm2-135m-instruct`). Setting it turns AsFT on (with `regularizer: none`, as in the paper, or with a
        KL).
    asft_lambda (`float`, defaults to `1.0`):
        λ of the penalty (the official scripts' value).
    """

    asft_unaligned: str | None = field(
        default=None, metadata={"help": "AsFT: the model the reference was aligned from; turns AsFT on."}
    )
    asft_lambda: float = field(default=1.0, metadata={"help": "AsFT: lambda of the off-alignment penalty."})

    def __post_init__(self):
        if not 0.0 <= self.asft_lambda < float("inf"):
            raise TetherInputError(f"asft_lambda must be a finite number >= 0, got {self.asft_lambda}")
        if self.asft_unaligned:  # a bad path fails here, before any model is loaded
            from tether.modeling import check_model_files

            check_model_files(self.asft_unaligned)
        super().__post_init__()


def alignment_directions(unaligned, aligned, names: list[str]) -> dict[str, torch.Tensor]:
    """V / ‖V‖_F^{1/2} for each module `name`, V = W_aligned − W_unaligned (out, in), float32: then C B = v (vᵀ B)
    with v the returned tensor. A direction of zero everywhere is refused (nothing to anchor to)."""
    directions = {}
    for name, v in alignment_differences(unaligned, aligned, names, "asft_unaligned").items():  # (out, in)
        norm = torch.linalg.matrix_norm(v)
        directions[name] = v / norm.sqrt() if norm > 0 else v
    if not any(v.any() for v in directions.values()):
        raise TetherInputError(
            "asft_unaligned has the reference's weights: there is no alignment direction; pass the model the "
            "reference was aligned from"
        )
    return directions


def off_alignment_penalty(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖(I − C) B A‖_F² with C = v vᵀ. a (r, in), b (out, r), v (out, in) -> scalar."""
    b_off = b - v @ (v.T @ b)  # (out, r)
    return ((b_off.T @ b_off) * (a @ a.T)).sum()  # (r, r) ⊙ (r, r)


class AsFTTrainer(TetherTrainer):
    """`TetherTrainer` plus AsFT's penalty on the LoRA update's part off the alignment direction (`extra_loss`).

    Args:
        directions: {module name: V/‖V‖_F^{1/2}} (`alignment_directions`); default: computed from
            `args.asft_unaligned` and the policy's base model.
        Everything else as `TetherTrainer`.
    """

    config_class = AsFTConfig
    switch = "asft_unaligned"

    @staticmethod
    def enabled(config) -> bool:
        return bool(config.asft_unaligned)

    def __init__(self, model, args: AsFTConfig, directions: dict[str, torch.Tensor] | None = None, **kwargs):
        super().__init__(model, args, **kwargs)
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._asft_layers = lora_layers(unwrapped)
        if not self._asft_layers:
            raise TetherInputError("AsFT penalizes the LoRA update; it needs use_peft: true")
        if directions is None:
            from tether.modeling import load_model_and_tokenizer

            unaligned, _ = load_model_and_tokenizer(args.asft_unaligned)
            directions = alignment_directions(unaligned, unwrapped.get_base_model(), list(self._asft_layers))
            del unaligned
        device = self.accelerator.device
        self._asft_directions = {name: v.to(device) for name, v in directions.items()}

    def asft_penalty(self) -> torch.Tensor:
        """Σ_layers ‖(I − C) B A‖_F² over the LoRA layers (the official code's unscaled B A)."""
        total = 0.0
        for name, module in self._asft_layers.items():
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight  # (r, in), (out, r)
            total = total + off_alignment_penalty(a.float(), b.float(), self._asft_directions[name])
        return total

    def extra_loss(self, model, mode: str) -> torch.Tensor | float:
        """λ·R, once per optimizer step (divided over the accumulated micro-batches)."""
        if not model.training or not self.args.asft_lambda:
            return 0.0
        penalty = self.args.asft_lambda * self.asft_penalty()
        self._metrics[mode]["asft/penalty"].append(penalty.item())
        return penalty / self.args.gradient_accumulation_steps
