import math

import pytest
import torch

from tether.losses import response_token_losses, token_kl, token_nll, weighted_loss


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


def test_weighted_loss_by_hand():
    """Tokens of examples [0, 0, 1]; α = [1, 0.5], β = [0, 2]; nll = [1, 2, 3], kl = [4, 5, 6]; N = 3:
    (1·1 + 1·2 + 0.5·3 + 0·4 + 0·5 + 2·6) / 3 = 16.5 / 3."""
    loss = weighted_loss(
        torch.tensor([1.0, 2.0, 3.0]),
        torch.tensor([4.0, 5.0, 6.0]),
        torch.tensor([0, 0, 1]),
        alpha=torch.tensor([1.0, 0.5]),
        beta=torch.tensor([0.0, 2.0]),
        num_tokens=3,
    )
    assert loss.item() == pytest.approx(16.5 / 3)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_chunked_equals_unchunked(direction):
    """Chunking (with checkpointing) changes neither the values nor the gradients."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(10, 8, requires_grad=True)
    ref_hidden = torch.randn(10, 8)
    targets = torch.randint(0, 50, (10,))
    results = []
    for chunk in (1000, 3):
        hidden.grad = None
        nll, kl = response_token_losses(hidden, targets, head, ref_hidden, head, direction, chunk_size=chunk)
        (nll.sum() + kl.sum()).backward()
        results.append((nll.detach(), kl.detach(), hidden.grad.clone()))
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b)


def test_no_reference_gives_no_kl():
    head = torch.nn.Linear(4, 6)
    nll, kl = response_token_losses(torch.randn(3, 4), torch.tensor([0, 1, 2]), head)
    assert kl is None and nll.shape == (3,)
