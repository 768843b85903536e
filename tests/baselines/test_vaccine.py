import pytest
import torch

from tests.conftest import make_config, make_trainer
from tether.baselines.vaccine import add_to_outputs, attention_blocks, perturbations
from tether.errors import TetherInputError
from tether.modeling import build_tiny_model


def test_perturbations_have_radius_rho_over_all_layers_together():
    grads = [torch.tensor([[[3.0, 0.0]]]), None, torch.tensor([[[0.0, 4.0]]])]  # ‖g‖ = 5 over both layers
    shifts, norm = perturbations(grads, rho=2.0)
    assert norm == pytest.approx(5.0)
    assert shifts[1] is None
    torch.testing.assert_close(shifts[0], torch.tensor([[[1.2, 0.0]]]))
    torch.testing.assert_close(shifts[2], torch.tensor([[[0.0, 1.6]]]))


def test_attention_blocks_are_one_per_decoder_layer(tiny_model, tokenizer, rows, tmp_path):
    trainer = make_trainer(tiny_model, tokenizer, rows, make_config(tmp_path, regularizer="none", vaccine_rho=1.0))
    blocks = attention_blocks(trainer.model)  # under PEFT: the wrapped model
    assert len(blocks) == tiny_model.config.num_hidden_layers
    assert all(type(b).__name__ == "LlamaAttention" for b in blocks)
    with pytest.raises(TetherInputError, match="no attention modules"):
        attention_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def one_batch(trainer, n=4):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    return {k: v.to(trainer.args.device) for k, v in batch.items()}


def test_the_perturbation_is_the_loss_ascent_direction(tiny_model, tokenizer, rows, tmp_path):
    """Shifting the attention outputs by ε = ρ·g/‖g‖ raises the loss by ρ·‖g‖ to first order: ε is the gradient
    direction of the loss with respect to those outputs, and ‖g‖ their joint norm."""
    trainer = make_trainer(tiny_model, tokenizer, rows, make_config(tmp_path, regularizer="none", vaccine_rho=1.0))
    model, batch = trainer.model, one_batch(trainer)
    blocks = attention_blocks(model)
    with torch.no_grad():
        clean = trainer.compute_loss(model, batch).item()
    for rho in (1e-3, 1e-2):
        trainer.args.vaccine_rho = rho
        shifts, _ = trainer.perturbation(model, blocks, batch)
        norm = trainer._metrics["train"]["vaccine/grad_norm"][-1]
        with torch.no_grad(), add_to_outputs(blocks, shifts):
            shifted = trainer.compute_loss(model, batch).item()
        assert shifted - clean == pytest.approx(rho * norm, rel=0.05)


def sgd_update(tokenizer, rows, tmp_path, **overrides):
    config = make_config(
        tmp_path,
        regularizer="none",
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        **overrides,
    )
    torch.manual_seed(0)
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows[:4], config)
    # B = 0 in a fresh adapter: give it a random start so that every LoRA matrix has a gradient
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    update = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters() if n in before}
    return trainer, update


def test_the_applied_gradient_is_the_perturbed_pass_alone(tokenizer, rows, tmp_path):
    """With a vanishing ρ the update is SFT's exactly (the first pass leaves no parameter gradient behind, or the
    update would double); with a finite ρ it differs."""
    _, sft = sgd_update(tokenizer, rows, tmp_path / "sft")
    _, tiny = sgd_update(tokenizer, rows, tmp_path / "tiny", vaccine_rho=1e-9)
    trainer, large = sgd_update(tokenizer, rows, tmp_path / "large", vaccine_rho=5.0)
    assert max(d.abs().max().item() for d in sft.values()) > 1e-4
    for name in sft:
        torch.testing.assert_close(tiny[name], sft[name], rtol=1e-4, atol=1e-7)
    assert max((large[n] - sft[n]).abs().max().item() for n in sft) > 1e-3
    logs = [log for log in trainer.state.log_history if "vaccine/grad_norm" in log]
    assert len(logs) == 1 and logs[0]["vaccine/grad_norm"] > 0


def test_metrics_are_recorded_once_per_micro_batch(tiny_model, tokenizer, rows, tmp_path):
    trainer = make_trainer(tiny_model, tokenizer, rows, make_config(tmp_path, regularizer="none", vaccine_rho=1.0))
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test does not run
    trainer.training_step(trainer.model, one_batch(trainer))
    metrics = trainer._metrics["train"]
    assert len(metrics["loss/nll"]) == 1 and len(metrics["vaccine/grad_norm"]) == 1


def test_vaccine_trains_with_gradient_checkpointing(tiny_model, tokenizer, rows, tmp_path):
    config = make_config(
        tmp_path,
        regularizer="none",
        vaccine_rho=1.0,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = make_trainer(tiny_model, tokenizer, rows, config)
    trainer.train()
    assert [log for log in trainer.state.log_history if "vaccine/grad_norm" in log]
    # reentrant checkpointing runs the first forward without a graph: a clear error, not a silent SFT step
    config = make_config(
        tmp_path / "reentrant",
        regularizer="none",
        vaccine_rho=1.0,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows, config)
    with pytest.raises(TetherInputError, match="use_reentrant: false"):
        trainer.train()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"vaccine_rho": -1.0}, "vaccine_rho must not be negative"),
        ({"vaccine_rho": 2.0, "regularizer": "fixed"}, "use it with regularizer: none"),
        ({"vaccine_rho": 2.0, "regularizer": "none", "lisa_data": "advbench-refusals"}, "no lisa_data"),
    ],
)
def test_bad_vaccine_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(TetherInputError, match=message):
        make_config(tmp_path, **overrides)
