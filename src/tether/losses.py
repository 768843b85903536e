"""The adaptive-regularization loss at response positions, fused with the LM head and computed in chunks.

Adaptive regularization (Goel, Maji, Mazumder, arXiv 2602.17546):

    L = (1/N) Σ_i Σ_{t ∈ R_i} [ α_i · nll_{i,t} + β_i · kl_{i,t} ]

with R_i the response positions of example i and N the response-token count of the whole optimizer step, the same
denominator for both terms (`docs/method.md` §1.3). Higher risk means a larger β_i: the KL pulls π_θ back to the
frozen safe reference π_ref.

`ResponseLoss` takes the hidden states that feed the LM head at the N response positions, never batch × sequence ×
vocabulary logits. It projects them through the head a chunk of positions at a time, computes NLL, the exact
full-vocabulary KL and the gradient of the weighted sum with respect to the logits in closed form, and keeps only
the (N, d) gradient of the hidden states for the backward pass. Since α and β are constants, the gradient is known
in the forward pass, so no (chunk, V) tensor outlives its chunk and nothing is recomputed.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_BYTES = 24 * 2**20  # one chunk of float32 logits stays under glibc's 32 MiB mmap threshold


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


def response_depth(rows: torch.Tensor) -> torch.Tensor:
    """The index of each response position within its example's response. rows (N,) example index of each position,
    sorted (as `nonzero` returns them) -> (N,): 0 at each example's first response token, 1 at its second, ..."""
    starts = torch.ones_like(rows, dtype=torch.bool)  # (N,): where a new example's positions begin
    starts[1:] = rows[1:] != rows[:-1]
    index = torch.arange(rows.numel(), device=rows.device)  # (N,)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(0).values  # (N,): index of the row's first
    return index - first


def prefix_kl_weights(rows: torch.Tensor, prefix_tokens: int, prefix_scale: float) -> torch.Tensor:
    """Per-position multipliers of the KL weight: `prefix_scale` on each example's first `prefix_tokens` response
    tokens, 1 after them (Qi et al. 2024, arXiv 2406.05946: alignment lives in the first few tokens, so keep those
    closest to the aligned model). rows (N,) -> (N,) float32."""
    depth = response_depth(rows)  # (N,)
    weights = torch.ones(rows.shape, dtype=torch.float32, device=rows.device)
    return weights.masked_fill_(depth < prefix_tokens, prefix_scale)


def auto_chunk_size(vocab_size: int) -> int:
    """Positions per chunk so that one float32 (chunk, V) buffer stays under `DEFAULT_CHUNK_BYTES`."""
    return max(16, DEFAULT_CHUNK_BYTES // (4 * vocab_size))


class ResponseLoss(torch.autograd.Function):
    """Σ_t [α_t·nll_t + β_t·kl_t] from hidden states through a linear LM head, with per-token NLL and KL for logging.

    forward(hidden (N, d), weight (V, d), bias (V,) or None, targets (N,), alpha (N,) or a function, beta (N,) or None,
            ref_hidden (N, d) or None, ref_weight (V, d) or None, ref_bias, kl_direction, chunk_size, softcap)
        -> loss (), nll (N,), kl (N,)   (nll and kl are float32 and carry no gradient)

    Gradients with respect to the logits z (p = softmax(z), onehot = the target):
        NLL:          p − onehot
        forward KL:   p − p_ref
        reverse KL:   p ⊙ (log p − log p_ref − KL)
    `softcap` c applies z = c·tanh(z₀/c) (Gemma 2) and its derivative 1 − tanh². With no reference, kl is 0.

    A baseline whose NLL weight depends on the targets' log-probabilities (constrained SFT, STAR-DSS) passes `alpha`
    as a function `alpha(rows, logp_target (n,), ref_logp_target (n,) or None) -> (n,)`, called on each chunk's
    `rows` slice with the values this pass computes anyway (no gradient), and `beta` None: no KL term, the reference
    read for its targets' log-probabilities only. One head product per model and chunk, as for the KL.
    """

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        targets,
        alpha,
        beta,
        ref_hidden,
        ref_weight,
        ref_bias,
        kl_direction="forward",
        chunk_size=0,
        softcap=None,
    ):
        if bias is not None and bias.requires_grad:
            raise NotImplementedError("a trainable LM-head bias is not supported; freeze it")
        n = hidden.shape[0]
        chunk_size = chunk_size or auto_chunk_size(weight.shape[0])
        grad_hidden = torch.empty_like(hidden)  # (N, d)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        nll = hidden.new_empty(n, dtype=torch.float32)
        kl = hidden.new_zeros(n, dtype=torch.float32)
        weigh = alpha if callable(alpha) else None
        if weigh is not None:
            alpha = hidden.new_empty(n, dtype=torch.float32)  # filled chunk by chunk
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            t = targets[rows]
            logp, tanh = head_log_softmax(hidden[rows], weight, bias, softcap)  # (n, V) each
            probs = logp.exp()  # (n, V)
            nll[rows] = -logp.gather(1, t[:, None]).squeeze(1)
            ref_logp = None
            if ref_hidden is not None:
                ref_logp, _ = head_log_softmax(ref_hidden[rows], ref_weight, ref_bias, softcap)  # (n, V)
            if weigh is not None:
                ref_target = None if ref_logp is None else ref_logp.gather(1, t[:, None]).squeeze(1)  # (n,)
                alpha[rows] = weigh(rows, -nll[rows], ref_target)
            a = alpha[rows].float()[:, None]
            if ref_logp is None or beta is None:
                grad_logits = probs.mul_(a)  # α (p − onehot), the onehot below
            else:
                b = beta[rows].float()[:, None]
                if kl_direction == "forward":
                    ref_probs = ref_logp.exp()  # (n, V)
                    kl[rows] = _rowdot(ref_probs, ref_logp) - _rowdot(ref_probs, logp)
                    grad_logits = probs.mul_(a + b).sub_(ref_probs.mul_(b))  # α (p − onehot) + β (p − p_ref)
                else:
                    chunk_kl = _rowdot(probs, logp) - _rowdot(probs, ref_logp)  # (n,)
                    kl[rows] = chunk_kl
                    reverse = logp.sub_(ref_logp).sub_(chunk_kl[:, None]).mul_(probs)  # p (log p − log p_ref − KL)
                    grad_logits = probs.mul_(a).add_(reverse.mul_(b))
            grad_logits.scatter_add_(1, t[:, None], -a)
            if tanh is not None:
                grad_logits.mul_(1 - tanh.square_())
            grad_logits = grad_logits.to(weight.dtype)
            grad_hidden[rows] = grad_logits @ weight  # (n, d)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T.float(), hidden[rows].float())  # (V, d)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(nll, kl)
        loss = (alpha.float() * nll).sum() + (0.0 if beta is None else (beta.float() * kl).sum())
        return loss, nll, kl

    @staticmethod
    def backward(ctx, grad_loss, grad_nll, grad_kl):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_weight = None if grad_weight is None else (grad_loss * grad_weight).to(ctx.weight_dtype)
        return (grad_loss * grad_hidden, grad_weight) + (None,) * 10


def head_log_softmax(hidden, weight, bias, softcap):
    """log_softmax of hidden (n, d) @ weight.T (+ bias, softcapped), in float32 -> logp (n, V), tanh (n, V) or None."""
    logits = (hidden @ weight.T).float()  # (n, V)
    if bias is not None:
        logits += bias.float()
    tanh = None
    if softcap is not None:
        tanh = torch.tanh(logits.div_(softcap))
        logits = torch.mul(tanh, softcap, out=logits)
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True)), tanh


def _rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of (n, V) tensors -> (n,), without an (n, V) temporary."""
    return torch.bmm(x[:, None, :], y[:, :, None]).view(-1)
