"""Vaccine (Huang et al., NeurIPS 2024; `docs/method.md` §6): perturbation-aware alignment, for building a safe
reference: `VaccineConfig` + `VaccineTrainer`.

Each micro-batch runs twice. The first pass finds g_l, the gradient of the loss with respect to the output of every
decoder layer's attention block; the second pass adds ε_l = ρ·g_l/‖g‖ to those outputs (‖g‖ over all layers
together), and only its gradient updates the weights. The model learns to align under the worst small drift of its
hidden states, the drift a later harmful fine-tuning causes. As the official code (`git-disl/Vaccine`), the
perturbed outputs are the attention blocks' (before the residual add), one perturbation per token position.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from tether.errors import TetherInputError
from tether.trainer import TetherConfig, TetherTrainer

ATTENTION_NAMES = ("self_attn", "attn", "attention")  # Llama/Mistral/Qwen/OPT, GPT-2, GPT-NeoX


def attention_blocks(model) -> list[torch.nn.Module]:
    """The attention module of every decoder layer (outermost matches only), in order."""
    blocks, taken = [], []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ATTENTION_NAMES and not any(name.startswith(t + ".") for t in taken):
            blocks.append(module)
            taken.append(name)
    if not blocks:
        raise TetherInputError(
            f"vaccine_rho: found no attention modules named {', '.join(ATTENTION_NAMES)} in "
            f"{type(model).__name__}; Vaccine supports decoder models with such modules, set vaccine_rho: 0"
        )
    return blocks


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def capture_outputs(modules: list[torch.nn.Module]):
    """Collects each module's output tensor (the first element of a tuple) during a forward, in module order."""
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda module, args, output, i=i: captured.__setitem__(i, _first(output)))
        for i, m in enumerate(modules)
    ]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def add_to_outputs(modules: list[torch.nn.Module], shifts: list[torch.Tensor | None]):
    """Adds `shifts[i]` (constant, same shape) to the output of `modules[i]` in every forward inside the block,
    including the recomputation of gradient checkpointing."""

    def shifted(output, shift):
        if isinstance(output, tuple):
            return (output[0] + shift, *output[1:])
        return output + shift

    hooks = [
        m.register_forward_hook(lambda module, args, output, s=s: shifted(output, s))
        for m, s in zip(modules, shifts, strict=True)
        if s is not None
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def perturbations(grads: list[torch.Tensor | None], rho: float) -> tuple[list[torch.Tensor | None], float]:
    """ε_l = ρ·g_l / ‖g‖ with ‖g‖ the L2 norm over every layer's gradient together; returns (ε, ‖g‖).

    grads: one (B, T, d) tensor per layer, None for a layer the loss does not reach."""
    present = [g for g in grads if g is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in present]))
    scale = rho / (norm + 1e-7)
    return [None if g is None else (g * scale).to(g.dtype).detach() for g in grads], float(norm)


@dataclass
class VaccineConfig(TetherConfig):
    r"""
    [`TetherConfig`] plus Vaccine's radius.

    vaccine_rho (`float`, defaults to `0.0`):
        Perturbation-aware alignment, for building a safe reference under `regularizer: none`; 0 turns it off. Each
        micro-batch runs twice: the first pass finds g_l, the gradient of the loss with respect to the output of every
        decoder layer's attention block; the second adds ρ·g_l/‖g‖ to those outputs (‖g‖ over all layers together)
        and only its gradient is applied. About twice the time of an SFT step. The official code's ρ is 2
        (Llama-2-7B).
    """

    vaccine_rho: float = field(
        default=0.0, metadata={"help": "Vaccine: radius of the attention-output perturbation (0: off); alignment only."}
    )

    def __post_init__(self):
        if self.vaccine_rho < 0:
            raise TetherInputError(f"vaccine_rho must not be negative, got {self.vaccine_rho}")
        if self.vaccine_rho and self.regularizer != "none":
            raise TetherInputError(
                "vaccine_rho aligns a model before anyone fine-tunes it: use it with regularizer: none and no "
                "lisa_data, then fine-tune from the merged result"
            )
        super().__post_init__()


class VaccineTrainer(TetherTrainer):
    """`TetherTrainer` whose step runs with the attention outputs shifted by the perturbation a first pass found."""

    config_class = VaccineConfig
    switch = "vaccine_rho"

    @staticmethod
    def enabled(config) -> bool:
        return bool(config.vaccine_rho)

    def training_step(self, model, inputs, num_items_in_batch=None):
        blocks = attention_blocks(self.accelerator.unwrap_model(model))
        shifts, _ = self.perturbation(model, blocks, inputs, num_items_in_batch)
        with add_to_outputs(blocks, shifts):
            return super().training_step(model, inputs, num_items_in_batch)

    def perturbation(self, model, blocks, inputs, num_items_in_batch=None) -> tuple[list[torch.Tensor | None], float]:
        """Vaccine's first pass: (ρ·g_l/‖g‖ for each attention block in `blocks`, ‖g‖); touches no parameter
        gradient, so gradient accumulation is unaffected. Logs only `vaccine/grad_norm` (the second pass the rest)."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        metrics = self._metrics["train"]
        lengths = {key: len(values) for key, values in metrics.items()}
        unwrapped = self.accelerator.unwrap_model(model)  # no DDP forward: this pass has no parameter gradients
        with capture_outputs(blocks) as outputs, self.compute_loss_context_manager():
            loss = self.compute_loss(unwrapped, inputs, num_items_in_batch=num_items_in_batch)
        for key in list(metrics):
            if key in lengths:
                del metrics[key][lengths[key] :]
            else:
                del metrics[key]
        tensors = [outputs.get(i) for i in range(len(blocks))]
        reached = [t for t in tensors if t is not None and t.requires_grad]
        if not reached:
            raise TetherInputError(
                "vaccine_rho: no attention output carries a gradient; train the attention or earlier layers, and with "
                "gradient_checkpointing set gradient_checkpointing_kwargs: {use_reentrant: false}"
            )
        grads = iter(torch.autograd.grad(loss, reached, allow_unused=True))
        shifts, norm = perturbations(
            [next(grads) if t is not None and t.requires_grad else None for t in tensors], self.args.vaccine_rho
        )
        metrics["vaccine/grad_norm"].append(norm)
        return shifts, norm
