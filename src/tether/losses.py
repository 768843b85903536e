"""Per-token NLL and KL at response positions, computed from gathered hidden states in chunks.

Adaptive regularization (Goel, Maji, Mazumder, arXiv 2602.17546):

    L = (1/N) Σ_i Σ_{t ∈ R_i} [ α_i · nll_{i,t} + β_i · kl_{i,t} ]

with R_i the response positions of example i and N the response-token count of the whole optimizer step, the same
denominator for both terms (`docs/method.md` §1.3). Higher risk means a larger β_i: the KL pulls π_θ back to the
frozen safe reference π_ref.

The functions here only ever see the N response positions, never batch × sequence × vocabulary logits. The caller
gathers the hidden states that feed the LM head at those positions; `response_token_losses` projects them through
the head chunk by chunk. Past one chunk, each chunk runs under activation checkpointing, so at most one chunk of
(chunk, V) logits is alive in the forward and in the backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Head = Callable[[torch.Tensor], torch.Tensor]  # hidden (n, d) -> logits (n, V)


def token_nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each target token. logp (n, V) log-probabilities, targets (n,) -> (n,)."""
    return -logp.gather(1, targets[:, None]).squeeze(1)


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, direction: str = "forward") -> torch.Tensor:
    """Exact full-vocabulary KL per position. logp, ref_logp (n, V) log-probabilities -> (n,).

    `forward`: KL(π_ref ‖ π_θ) = Σ_v p_ref (log p_ref − log p_θ), soft-label distillation toward the reference (the
    official code's direction). `reverse`: KL(π_θ ‖ π_ref) = Σ_v p_θ (log p_θ − log p_ref), mode-seeking.
    """
    if direction == "forward":
        return (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    if direction == "reverse":
        return (logp.exp() * (logp - ref_logp)).sum(-1)
    raise ValueError(f"kl_direction must be 'forward' or 'reverse', got {direction!r}")


def response_token_losses(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Head,
    ref_hidden: torch.Tensor | None = None,
    ref_head: Head | None = None,
    kl_direction: str = "forward",
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token NLL and (when a reference is given) KL at the N gathered response positions.

    Args:
        hidden: (N, d) policy hidden states that feed the LM head, position t predicting `targets[t]`.
        targets: (N,) next-token ids.
        head: policy LM head, (n, d) -> (n, V) logits.
        ref_hidden: (N, d) reference hidden states at the same positions, computed without gradient.
        ref_head: reference LM head; called under `torch.no_grad()`.
        kl_direction: `forward` KL(π_ref ‖ π_θ) or `reverse` KL(π_θ ‖ π_ref).
        chunk_size: positions per chunk; past one chunk, chunks are checkpointed.

    Returns:
        nll (N,) and kl (N,) (None without a reference), in float32.
    """

    def chunk_losses(h: torch.Tensor, t: torch.Tensor, h_ref: torch.Tensor | None):
        logp = F.log_softmax(head(h).float(), dim=-1)  # (n, V)
        nll = token_nll(logp, t)  # (n,)
        if h_ref is None:
            return nll, None
        with torch.no_grad():
            ref_logp = F.log_softmax(ref_head(h_ref).float(), dim=-1)  # (n, V)
        return nll, token_kl(logp, ref_logp, kl_direction)

    n = hidden.shape[0]
    if n <= chunk_size:
        return chunk_losses(hidden, targets, ref_hidden)
    nlls, kls = [], []
    for start in range(0, n, chunk_size):
        piece = slice(start, start + chunk_size)
        h_ref = None if ref_hidden is None else ref_hidden[piece]
        nll, kl = checkpoint(chunk_losses, hidden[piece], targets[piece], h_ref, use_reentrant=False)
        nlls.append(nll)
        kls.append(kl)
    return torch.cat(nlls), (None if ref_hidden is None else torch.cat(kls))


def weighted_loss(
    nll: torch.Tensor,
    kl: torch.Tensor | None,
    example_index: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    num_tokens: torch.Tensor | int,
    kl_scale: float = 1.0,
) -> torch.Tensor:
    """Σ_t [α_i(t)·nll_t + kl_scale·β_i(t)·kl_t] / num_tokens, one shared denominator for both terms.

    nll, kl (N,) per token; example_index (N,) the example of each token; alpha, beta (B,) per example, constants;
    num_tokens the response-token count of the whole optimizer step (all micro-batches and devices).
    """
    per_token = alpha[example_index] * nll  # (N,)
    if kl is not None:
        per_token = per_token + kl_scale * beta[example_index] * kl
    return per_token.sum() / torch.as_tensor(num_tokens, device=per_token.device).clamp(min=1)
