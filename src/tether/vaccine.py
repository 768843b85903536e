"""Vaccine (Huang et al., NeurIPS 2024): perturbation-aware alignment, for building a safe reference.

Each micro-batch runs twice. The first pass finds g_l, the gradient of the loss with respect to the output of every
decoder layer's attention block; the second pass adds ε_l = ρ·g_l/‖g‖ to those outputs (‖g‖ over all layers
together), and only its gradient updates the weights. The model learns to align under the worst small drift of its
hidden states, the drift a later harmful fine-tuning causes. As the official code (`git-disl/Vaccine`), the
perturbed outputs are the attention blocks' (before the residual add), one perturbation per token position.
"""

from __future__ import annotations

import contextlib

import torch

from tether.errors import TetherInputError

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
