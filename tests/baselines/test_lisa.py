"""LISA (`tether.baselines.lisa`): phases, alignment batches, the proximal term, bad settings."""

import pytest

from tests.conftest import make_config, make_trainer
from tether.errors import TetherInputError
from tether.modeling import build_tiny_model


def test_lisa_phases_cycle_alignment_first():
    from tether.baselines.lisa import lisa_phase

    assert [lisa_phase(step, 2, 3) for step in range(7)] == ["alignment"] * 2 + ["finetune"] * 3 + ["alignment"] * 2
    assert {lisa_phase(step, 0, 4) for step in range(9)} == {"finetune"}
    assert {lisa_phase(step, 3, 0) for step in range(9)} == {"alignment"}


def _lisa_trainer(tokenizer, rows, tmp_path, **overrides):
    from tether.data.chat import tokenize_rows

    settings = dict(regularizer="none", lisa_data="alignment", lisa_alignment_steps=1, lisa_finetune_steps=2)
    config = make_config(tmp_path, max_steps=6, learning_rate=1e-2, **{**settings, **overrides})
    alignment, _ = tokenize_rows([{**r, "risk": 0.0} for r in rows[24:]], tokenizer, config.max_length)
    return make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows[:24], config, alignment_dataset=alignment)


def test_lisa_alignment_steps_train_on_alignment_data(tokenizer, rows, tmp_path):
    """Steps 0 and 3 (alignment) see only alignment rows, the others only the user's; the proximal term is exactly 0
    on the first step of each phase (the anchor is the current weights) and positive later in the phase."""
    trainer = _lisa_trainer(tokenizer, rows, tmp_path)
    alignment_ids = {tuple(ids) for ids in trainer.alignment_dataset["input_ids"]}
    seen = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        pairs = zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ids = {tuple(row[mask.bool()].tolist()) for row, mask in pairs}
        seen.append((trainer.state.global_step, ids <= alignment_ids, not ids & alignment_ids))
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    assert [step for step, _, _ in seen] == list(range(6))
    assert all(only_alignment for step, only_alignment, _ in seen if step % 3 == 0)
    assert all(only_user for step, _, only_user in seen if step % 3 != 0)
    logs = [log for log in trainer.state.log_history if "lisa/proximal" in log]
    assert [log["lisa/alignment_phase"] for log in logs] == [1.0, 0.0, 0.0] * 2
    proximal = [log["lisa/proximal"] for log in logs]
    assert proximal[0] == proximal[1] == proximal[3] == proximal[4] == 0.0
    assert proximal[2] > 0.0 and proximal[5] > 0.0


def test_lisa_proximal_term_holds_the_weights_near_the_last_switch(tokenizer, rows, tmp_path):
    def drift(rho):
        trainer = _lisa_trainer(tokenizer, rows, tmp_path / str(rho), lisa_rho=rho, lisa_finetune_steps=5)
        trainer.train()
        anchor = trainer._lisa_anchor  # the weights at the switch into the fine-tuning phase (after step 0)
        return sum((p - anchor[n]).pow(2).sum().item() for n, p in trainer.model.named_parameters() if n in anchor)

    assert drift(1e4) < 0.5 * drift(0.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lisa_rho": -1.0}, "must not be negative"),
        ({"lisa_alignment_steps": 0, "lisa_finetune_steps": 0}, "LISA needs lisa_alignment_steps"),
    ],
)
def test_bad_lisa_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(TetherInputError, match=message):
        make_config(tmp_path, lisa_data="advbench-refusals", **overrides)
