import pytest
import torch
from peft import LoraConfig

from tests.conftest import make_config, make_trainer
from tether.errors import TetherInputError
from tether.losses import prefix_kl_weights
from tether.modeling import build_tiny_model
from tether.trainer.tether_trainer import ResponsePositions


def one_batch(trainer, n=4):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    return {k: v.to(trainer.args.device) for k, v in batch.items()}


def lora_params(model):
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def test_kl_and_its_gradient_are_zero_at_step_zero(tiny_model, tokenizer, rows, tmp_path):
    """A fresh adapter (B = 0) makes π_θ = π_ref: KL is exactly 0 and, being at its minimum, has zero gradient.
    With regularizer fixed, β = 1 and α = 1 − β = 0, the loss is the KL alone."""
    config = make_config(tmp_path, regularizer="fixed", beta=1.0)
    trainer = make_trainer(tiny_model, tokenizer, rows[-6:], config)
    loss = trainer.compute_loss(trainer.model, one_batch(trainer))
    assert loss.item() == 0.0
    loss.backward()
    for name, param in lora_params(trainer.model).items():
        assert param.grad is None or param.grad.abs().max().item() < 1e-7, name
    assert trainer._metrics["train"]["loss/kl"] == [0.0]


def test_kl_grows_once_the_adapter_moves(tiny_model, tokenizer, rows, tmp_path):
    config = make_config(tmp_path, regularizer="adaptive", critic="label", max_steps=4)
    trainer = make_trainer(tiny_model, tokenizer, rows, config)
    trainer.train()
    kls = [log["loss/kl"] for log in trainer.state.log_history if "loss/kl" in log]
    assert kls[0] == 0.0 and kls[-1] > 0.0


def test_lora_weights_change_and_base_weights_do_not(tiny_model, tokenizer, rows, tmp_path):
    trainer = make_trainer(tiny_model, tokenizer, rows, make_config(tmp_path, max_steps=3))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all("lora_" in n for n in changed)
    assert all(n in changed for n in lora_params(trainer.model) if "lora_B" in n)


def test_per_example_and_per_batch_weights(tokenizer, rows, tmp_path):
    """Two flagged rows (risk 1) and two benign rows (risk 0) in one batch: per example β ∈ {0.1, 0.9};
    per batch every row gets s = 0.5, β = 0.5."""
    batch_rows = rows[:2] + rows[-2:]
    for granularity, (lo, hi) in (("example", (0.1, 0.9)), ("batch", (0.5, 0.5))):
        config = make_config(tmp_path, regularizer="adaptive", critic="label", granularity=granularity)
        trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, batch_rows, config)
        trainer.compute_loss(trainer.model, one_batch(trainer))
        metrics = trainer._metrics["train"]
        assert metrics["weights/beta_min"][0] == pytest.approx(lo)
        assert metrics["weights/beta_max"][0] == pytest.approx(hi)
        assert metrics["weights/beta_mean"][0] == pytest.approx(0.5)
        assert metrics["critic/risk_mean"][0] == pytest.approx(0.5)


def test_risk_saturation_stretches_the_risk_and_the_default_gate_sets_alpha(tokenizer, rows, tmp_path):
    """critic_value 0.2 with risk_saturation 0.5 -> s = 0.4 -> β = 0.42; the default alpha_mode (gate) gives
    α = 1 − s = 0.6, where the paper's α = 1 − β would be 0.58."""
    config = make_config(tmp_path, regularizer="adaptive", critic="constant", critic_value=0.2, risk_saturation=0.5)
    assert config.alpha_mode == "gate"
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows[:4], config)
    trainer.compute_loss(trainer.model, one_batch(trainer))
    metrics = trainer._metrics["train"]
    assert metrics["critic/risk_mean"][0] == pytest.approx(0.4)
    assert metrics["weights/beta_mean"][0] == pytest.approx(0.42)
    assert metrics["weights/alpha_mean"][0] == pytest.approx(0.6)


def lora_after_one_step(tokenizer, rows, tmp_path, batch_size, accumulation):
    config = make_config(
        tmp_path,
        regularizer="adaptive",
        critic="label",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
    )
    # A random (non-zero) adapter, so that the KL term and its gradient are not zero at the first step.
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows, config, peft_config=peft_config)
    before = {n: p.detach().clone() for n, p in lora_params(trainer.model).items()}
    trainer.train()
    return {n: p.detach() - before[n] for n, p in lora_params(trainer.model).items()}


def test_gradient_accumulation_equivalence(tokenizer, rows, tmp_path):
    """4 accumulation steps of batch 1 give the same SGD update as 1 step of batch 4: both terms share one token
    denominator over the whole optimizer step. Rows of different lengths and risks make a wrong scaling visible."""
    batch_rows = [rows[0], rows[-1], rows[5], rows[-3]]
    one_step = lora_after_one_step(tokenizer, batch_rows, tmp_path / "a", batch_size=4, accumulation=1)
    accumulated = lora_after_one_step(tokenizer, batch_rows, tmp_path / "b", batch_size=1, accumulation=4)
    assert max(d.abs().max().item() for d in one_step.values()) > 1e-4
    for name in one_step:
        torch.testing.assert_close(accumulated[name], one_step[name], rtol=1e-4, atol=1e-6)


def test_full_fine_tuning_uses_a_frozen_copy(tiny_model, tokenizer, rows, tmp_path):
    from tether.modeling import FrozenCopyReference

    config = make_config(tmp_path, regularizer="fixed", beta=0.5, max_steps=3)
    trainer = make_trainer(tiny_model, tokenizer, rows, config, peft_config=None)
    assert isinstance(trainer.reference, FrozenCopyReference)
    frozen = {n: p.clone() for n, p in trainer.reference.model.named_parameters()}
    trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.reference.model.named_parameters())
    kls = [log["loss/kl"] for log in trainer.state.log_history if "loss/kl" in log]
    assert kls[0] == 0.0 and kls[-1] > 0.0


def test_sft_runs_no_reference_pass(tiny_model, tokenizer, rows, tmp_path):
    trainer = make_trainer(tiny_model, tokenizer, rows, make_config(tmp_path, regularizer="none"))
    assert trainer.reference is None and trainer.critic is None


def test_reference_cannot_be_the_policy(tiny_model, tokenizer, rows, tmp_path):
    with pytest.raises(TetherInputError, match="ref_model is the policy"):
        make_trainer(tiny_model, tokenizer, rows, make_config(tmp_path), peft_config=None, ref_model=tiny_model)


def test_beta_min_above_beta_max_is_refused(tmp_path):
    with pytest.raises(TetherInputError, match="beta_min"):
        make_config(tmp_path, beta_min=0.8, beta_max=0.2)


def test_label_critic_refuses_unlabelled_examples(tiny_model, tokenizer, rows, tmp_path):
    """An example without a risk label is an error, not silently risk 0."""
    unlabelled = [{"messages": rows[0]["messages"]}, rows[1]]
    trainer = make_trainer(tiny_model, tokenizer, unlabelled, make_config(tmp_path, critic="label"))
    with pytest.raises(TetherInputError, match="1 example"):
        trainer.compute_loss(trainer.model, one_batch(trainer, n=2))


def test_depth_aware_kl_weights_the_first_response_tokens(tiny_model, tokenizer, rows, tmp_path):
    """With the first 2 response tokens at 10× the KL weight, the loss is the plain per-token sum with those tokens'
    KL terms weighted 10×: recomputed here from the per-token NLL and KL the loss reports."""
    config = make_config(tmp_path, regularizer="fixed", beta=0.5, kl_prefix_tokens=2, kl_prefix_scale=10.0)
    trainer = make_trainer(tiny_model, tokenizer, rows[-6:], config)
    for param in lora_params(trainer.model).values():  # move the adapter so that the KL is not zero
        param.data.normal_(0, 0.05)
    batch = one_batch(trainer)
    positions = ResponsePositions.of(batch)
    reference = trainer.reference_pass(batch, positions)
    beta = torch.full((4,), 0.5)
    _, nll, kl = trainer.response_loss(trainer.model, batch, positions, reference, 1 - beta, beta, None)
    weights = prefix_kl_weights(positions.rows, 2, 10.0)
    assert weights.max() == 10.0 and weights.min() == 1.0
    expected = ((0.5 * nll + 0.5 * weights * kl).sum() / nll.numel()).item()
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected > ((0.5 * nll + 0.5 * kl).sum() / nll.numel()).item()  # the prefix weight mattered


def test_canary_callback_measures_the_refusal_and_scales_the_kl(tiny_model, tokenizer, rows, tmp_path):
    """The reference's canary refusal mass is measured once, the policy's every step; a tolerance of 0 turns any fall
    into a doubled KL weight, which the next loss uses."""
    from tether.critics.refusal import refusal_scores
    from tether.trainer import CanaryCallback
    from tether.weights import CanaryController

    canary = [[{"role": "user", "content": "placeholder request one"}], [{"role": "user", "content": "two"}]]
    config = make_config(
        tmp_path, canary_prompts="canary.txt", canary_every=1, canary_tolerance=0.0, max_steps=3, kl_prefix_tokens=0
    )
    trainer = make_trainer(tiny_model, tokenizer, rows, config)
    callback = CanaryCallback(trainer, canary, every=1)
    trainer.add_callback(callback)
    with trainer.reference.active() as reference:
        expected_reference = sum(refusal_scores(reference, tokenizer, canary)) / 2
    trainer.train()
    logs = [log for log in trainer.state.log_history if "canary/kl_multiplier" in log]
    assert len(logs) == 3
    assert all(log["canary/reference_mass"] == pytest.approx(expected_reference) for log in logs)
    replay = CanaryController(tolerance=0.0, gain=2.0, max_multiplier=config.canary_max_multiplier)
    for log in logs:  # each step's multiplier is the controller's answer to that step's measured masses
        assert log["canary/kl_multiplier"] == replay.update(log["canary/reference_mass"], log["canary/refusal_mass"])
    assert len({log["canary/refusal_mass"] for log in logs}) > 1  # the policy moved
    assert trainer.kl_multiplier == logs[-1]["canary/kl_multiplier"]
    trainer.canary.state = 4.0  # the controller's multiplier is the one kl_weights reads
    beta = torch.full((4,), 0.5)
    rows_index = torch.tensor([0, 0, 1, 2, 3])
    assert trainer.kl_weights(beta, rows_index).tolist() == [2.0] * 5  # kl_scale 1 · 4 · 0.5


def test_canary_scope_prefix_raises_only_the_first_tokens_kl(tiny_model, tokenizer, rows, tmp_path):
    """`canary_scope: prefix` multiplies the depth-aware prefix's KL weight by the controller's multiplier and leaves
    the later tokens at β; `all` multiplies every token's."""
    weights = {}
    for scope in ("all", "prefix"):
        config = make_config(
            tmp_path / scope,
            canary_prompts="canary.txt",
            canary_scope=scope,
            kl_prefix_tokens=2,
            kl_prefix_scale=10.0,
        )
        trainer = make_trainer(tiny_model, tokenizer, rows, config)
        trainer.canary.state = 4.0
        rows_index = torch.tensor([0, 0, 0, 1, 1])  # depths 0 1 2 0 1
        weights[scope] = trainer.kl_weights(torch.tensor([0.5, 0.25]), rows_index).tolist()
    assert weights["all"] == [20.0, 20.0, 2.0, 10.0, 10.0]  # 4 · 0.5 · (10 on the prefix)
    assert weights["prefix"] == [20.0, 20.0, 0.5, 10.0, 10.0]  # the third token of row 0 keeps β


def test_canary_needs_a_kl_term(tmp_path):
    with pytest.raises(TetherInputError, match="canary_prompts raises the KL weight"):
        make_config(tmp_path, regularizer="none", canary_prompts="c.txt")
