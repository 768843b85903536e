import math

import pytest
import torch

from tether.losses import ResponseLoss, auto_chunk_size, prefix_kl_weights, response_depth, token_kl, token_nll


def test_kl_by_hand():
    """p_ref = [0.5, 0.5], p_θ = [0.25, 0.75].
    forward KL(ref‖θ) = 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75); reverse KL(θ‖ref) = 0.25·ln(0.5) + 0.75·ln(1.5)."""
    logp = torch.tensor([[0.25, 0.75]]).log()
    ref_logp = torch.tensor([[0.5, 0.5]]).log()
    forward = 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert token_kl(logp, ref_logp, "forward").item() == pytest.approx(forward)
    assert token_kl(logp, ref_logp, "reverse").item() == pytest.approx(reverse)
    assert token_kl(ref_logp, ref_logp).item() == 0.0


def test_nll_by_hand():
    logp = torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log()
    assert token_nll(logp, torch.tensor([1, 0])).tolist() == pytest.approx([-math.log(0.75), -math.log(0.5)])


def reference_loss(hidden, weight, targets, alpha, beta, ref_hidden, ref_weight, direction, softcap=None):
    """Plain autograd over full log_softmax: what ResponseLoss must equal."""

    def logp(h, w):
        z = h @ w.T
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        return torch.log_softmax(z, -1)

    policy = logp(hidden, weight)
    nll = token_nll(policy, targets)
    kl = token_kl(policy, logp(ref_hidden, ref_weight).detach(), direction) if ref_hidden is not None else 0 * nll
    return (alpha * nll + beta * kl).sum(), nll, kl


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("chunk_size", [0, 3])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("with_reference", [True, False])
def test_response_loss_matches_autograd(direction, chunk_size, softcap, with_reference):
    """Values of loss, per-token NLL and KL, and the gradients of the hidden states and of the head weight equal
    autograd through a full log_softmax: for both KL directions, in chunks or not, with softcapping or not, with
    distinct per-token α and β."""
    torch.manual_seed(0)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    ref_hidden = torch.randn(10, 8) if with_reference else None
    ref_weight = weight.detach() + 0.3 * torch.randn(50, 8)
    targets = torch.randint(0, 50, (10,))
    alpha, beta = torch.rand(10), torch.rand(10)

    loss, nll, kl = ResponseLoss.apply(
        hidden, weight, None, targets, alpha, beta, ref_hidden, ref_weight, None, direction, chunk_size, softcap
    )
    (2.0 * loss).backward()
    fused = (loss.detach(), nll, kl, hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None

    expected_loss, expected_nll, expected_kl = reference_loss(
        hidden, weight, targets, alpha, beta, ref_hidden, ref_weight, direction, softcap
    )
    (2.0 * expected_loss).backward()
    expected = (expected_loss.detach(), expected_nll.detach(), expected_kl.detach(), hidden.grad, weight.grad)
    for got, want in zip(fused, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_a_weight_function_sees_the_targets_log_probabilities_and_weighs_the_nll(chunk_size):
    """α as a function of the targets' log-probabilities (constrained SFT, STAR-DSS) with β None: it is called once per
    chunk with that chunk's rows, log π_θ(y_t) and log π_ref(y_t), there is no KL term, and the loss and gradients are
    those of the NLL weighted by what it returned."""
    torch.manual_seed(0)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    ref_hidden = torch.randn(10, 8)
    targets = torch.randint(0, 50, (10,))
    policy = torch.log_softmax(hidden.detach() @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    ref = torch.log_softmax(ref_hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    calls = []

    def weigh(rows, logp_target, ref_logp_target):
        calls.append(rows)
        torch.testing.assert_close(logp_target, policy[rows])
        torch.testing.assert_close(ref_logp_target, ref[rows])
        return torch.sigmoid(logp_target - ref_logp_target)

    loss, nll, kl = ResponseLoss.apply(
        hidden, weight, None, targets, weigh, None, ref_hidden, weight, None, "forward", chunk_size
    )
    loss.backward()
    assert [(rows.start, min(rows.stop, 10)) for rows in calls] == (
        [(0, 3), (3, 6), (6, 9), (9, 10)] if chunk_size == 3 else [(0, 10)]
    )
    assert kl.abs().max().item() == 0.0
    got = (loss.detach(), hidden.grad.clone())
    hidden.grad = None
    expected_loss, _, _ = reference_loss(
        hidden, weight, targets, torch.sigmoid(policy - ref), torch.zeros(10), None, None, "forward"
    )
    expected_loss.backward()
    torch.testing.assert_close(got, (expected_loss.detach(), hidden.grad), rtol=1e-4, atol=1e-5)


def test_identical_reference_gives_zero_kl_and_no_kl_gradient():
    """π_θ = π_ref: KL is exactly 0 and, at its minimum, contributes no gradient (α = 0 isolates it)."""
    torch.manual_seed(0)
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(30, 8)
    loss, _, kl = ResponseLoss.apply(
        hidden, weight, None, torch.randint(0, 30, (6,)), torch.zeros(6), torch.ones(6), hidden.detach(), weight, None
    )
    loss.backward()
    assert kl.abs().max().item() < 1e-6
    assert hidden.grad.abs().max().item() < 1e-6


def test_auto_chunk_size():
    """24 MiB of float32 logits: 128 positions for SmolLM2's 49,152-token vocabulary."""
    assert auto_chunk_size(49152) == 128
    assert auto_chunk_size(10**7) == 16


def test_response_depth_counts_from_each_examples_first_response_token():
    rows = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])
    assert response_depth(rows).tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert response_depth(rows[:0]).tolist() == []


def test_prefix_kl_weights_scale_only_the_first_tokens():
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    assert prefix_kl_weights(rows, 2, 5.0).tolist() == [5.0, 5.0, 1.0, 5.0, 5.0, 1.0, 1.0]
    assert prefix_kl_weights(rows, 0, 5.0).tolist() == [1.0] * 7
