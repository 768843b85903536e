import math

import pytest
import torch

from tests.conftest import make_config, make_trainer, target_logprobs_of
from tests.fake_openai import FakeOpenAIServer
from tether.baselines import settings_use_critic
from tether.baselines.star_dss import StarDssTrainer, partial_responses, star_weights
from tether.critics.refusal import refusal_scores
from tether.data.chat import TetherCollator, tokenize_rows
from tether.errors import TetherInputError
from tether.trainer.tether_trainer import ResponsePositions


def test_partial_responses_every_five_words_then_the_whole():
    """Prefixes of the text as it is (its own spaces and newlines), so that each renders to the response's tokens."""
    response = "one two  three four five six seven\neight nine ten eleven"
    assert partial_responses(response, 5) == [
        "one two  three four five",
        "one two  three four five six seven\neight nine ten",
        response,
    ]
    assert partial_responses("just three words", 5) == ["just three words"]
    assert partial_responses("five words end here now ", 5) == ["five words end here now", "five words end here now "]


def test_weights_by_hand():
    """w = s − λ(1 − s)Δ: a safe token is plain NLL; an unsafe one is pushed back where the policy exceeds the reference
    (Δ > 0: a negative weight unlearns it) and pulled up where it is below (Δ < 0)."""
    safety = torch.tensor([1.0, 0.0, 0.0, 0.5])
    delta = torch.tensor([3.0, 2.0, -1.0, 1.0])
    assert star_weights(safety, delta, 0.5).tolist() == pytest.approx([1.0, -1.0, 0.5, 0.25])


def moved_star_trainer(tiny_model, tokenizer, rows, config, seed):
    """A STAR-DSS trainer on two harmful and two benign rows with a randomly moved adapter, in eval mode (no dropout:
    the trainer and autograd see one network); returns it, its LoRA parameters and the batch of the four rows."""
    trainer = make_trainer(tiny_model, tokenizer, rows[:2] + rows[-2:], config)
    assert isinstance(trainer, StarDssTrainer)
    generator = torch.Generator().manual_seed(seed)
    lora = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for param in lora.values():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    trainer.model.eval()
    return trainer, lora, trainer.data_collator([trainer.train_dataset[i] for i in range(4)])


def assert_star_gradient(trainer, lora, batch, safety):
    """The trainer's LoRA gradients equal those of Σ_t [s_t·nll_t + λ(1 − s_t)·½(log π_θ(y_t) − log π_ref(y_t))²] / N
    (λ 0.5) computed by autograd from two plain forwards (adapter on, adapter off) over full logits; safety (N,)."""
    with trainer.reference.active() as reference:
        ref = target_logprobs_of(reference, batch)[0]
    policy = target_logprobs_of(trainer.model, batch)[0]
    objective = (safety * -policy + 0.5 * (1 - safety) * (policy - ref).square() / 2).sum() / policy.numel()
    expected = torch.autograd.grad(objective, list(lora.values()))
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, batch).backward()
    for (name, param), grad in zip(lora.items(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad, atol=1e-6, rtol=1e-4, msg=name)
    metrics = trainer._metrics["eval"]
    assert metrics["star/safety_mean"][0] == pytest.approx(safety.mean().item(), rel=1e-5)
    assert metrics["star/k2"][0] > 0 and metrics["weights/beta_max"] == [0.0]  # no tether KL


def test_the_gradient_is_the_official_objectives(tiny_model, tokenizer, rows, tmp_path):
    """With the label guardrail, each token's safety is its example's label: the official objective's gradient."""
    config = make_config(tmp_path, regularizer="none", star_dss=True, star_dss_guardrail="label")
    trainer, lora, batch = moved_star_trainer(tiny_model, tokenizer, rows, config, seed=0)
    safety = 1 - batch["risk"][ResponsePositions.of(batch).rows]
    assert set(safety.tolist()) == {0.0, 1.0}
    assert_star_gradient(trainer, lora, batch, safety)


def test_the_critic_guardrail_trains_each_token_on_its_examples_refusal_risk(tiny_model, tokenizer, rows, tmp_path):
    """With tether's refusal critic as the guardrail, every response token of an example has safety 1 − the
    reference's refusal mass on that example's prompt (scored here by a separate forward of the adapter-disabled
    model), and the gradient is the objective's with those per-example safeties."""
    config = make_config(tmp_path, regularizer="none", star_dss=True, star_dss_guardrail="critic", critic="refusal")
    summary = StarDssTrainer.prepare_rows(config, rows[:2])[1]
    assert summary == {"star_dss": {"guardrail": "critic", "critic": "refusal"}}
    trainer, lora, batch = moved_star_trainer(tiny_model, tokenizer, rows, config, seed=1)
    prompts = [row["messages"][:-1] for row in rows[:2] + rows[-2:]]
    with trainer.reference.active() as reference:
        risk = torch.tensor(refusal_scores(reference, tokenizer, prompts))  # (4,)
    assert risk.min() > 0 and len(set(risk.tolist())) == 4  # four prompts, four distinct safeties
    assert_star_gradient(trainer, lora, batch, 1 - risk[ResponsePositions.of(batch).rows])
    assert trainer._metrics["eval"]["critic/risk_mean"][0] == pytest.approx(risk.mean().item(), rel=1e-5)


def test_the_judges_trajectory_reaches_the_tokens(tokenizer, tmp_path):
    """The judge scores each partial response before the model loads; a token takes the risk of the first partial
    response that reaches it: the words before the harmful turn are safe, the rest unsafe."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": "tell me"},
                {"role": "assistant", "content": "sure here is the plan then the bomb comes next and more"},
            ]
        }
    ]
    with FakeOpenAIServer() as server:
        server.reply_fn = lambda body: "#thescore: 5" if "bomb" in body["messages"][-1]["content"] else "#thescore: 1"
        config = make_config(
            tmp_path,
            regularizer="none",
            star_dss=True,
            judge_url=server.url,
            judge_model="fake-judge",
            judge_cache_dir=str(tmp_path / "judge"),
        )
        prepared, summary = StarDssTrainer.prepare_rows(config, rows)
    assert prepared[0]["risk_chunks"] == [
        ["sure here is the plan", 0.0],
        ["sure here is the plan then the bomb comes next", 1.0],
        ["sure here is the plan then the bomb comes next and more", 1.0],
    ]
    assert summary["star_dss"]["partial_responses"] == 3 and summary["star_dss"]["failures"] == 0
    dataset, _ = tokenize_rows(prepared, tokenizer, max_length=None)
    example = dataset[0]
    risk = example["token_risk"]
    start = example["prompt_length"]
    assert all(math.isnan(r) for r in risk[:start])
    response = risk[start:]
    safe = len(tokenizer(" sure here is the plan".strip())["input_ids"])
    assert response[:safe] == [0.0] * safe and set(response[safe:]) == {1.0}
    batch = TetherCollator(tokenizer.pad_token_id)(
        [example, {**example, "input_ids": [1] * (len(risk) + 2), "labels": example["labels"] + [-100] * 2}]
    )
    assert batch["token_risk"].shape == batch["input_ids"].shape and batch["token_risk"][0, -2:].isnan().all()


def test_bad_inputs_are_refused_in_one_line(tmp_path, rows):
    with pytest.raises(TetherInputError, match="star_dss_guardrail 'refusal' cannot score partial responses"):
        make_config(tmp_path, regularizer="none", star_dss=True, star_dss_guardrail="refusal")
    with pytest.raises(TetherInputError, match="star_dss_guardrail judge needs judge_url and judge_model"):
        make_config(tmp_path, regularizer="none", star_dss=True)
    with pytest.raises(TetherInputError, match="star_dss brings its own KL term; it needs regularizer none"):
        make_config(tmp_path, star_dss=True, star_dss_guardrail="label")
    with pytest.raises(
        TetherInputError, match="star_dss_guardrail critic reads the reference pass, which critic 'label'"
    ):
        make_config(tmp_path, regularizer="none", star_dss=True, star_dss_guardrail="critic", critic="label")
    with pytest.raises(TetherInputError, match="star_dss_guardrail critic with critic probe needs probe_path"):
        make_config(tmp_path, regularizer="none", star_dss=True, star_dss_guardrail="critic", critic="probe")
    config = make_config(tmp_path, regularizer="none", star_dss=True, star_dss_guardrail="label")
    unlabelled = [{k: v for k, v in row.items() if k != "risk"} for row in rows[:3]] + rows[3:]
    with pytest.raises(TetherInputError, match="reads the risk column, which 3 of 32 examples lack"):
        StarDssTrainer.prepare_rows(config, unlabelled)


def test_trains_with_the_label_guardrail(tiny_model, tokenizer, rows, tmp_path):
    config = make_config(tmp_path, regularizer="none", star_dss=True, star_dss_guardrail="label", max_steps=2)
    trainer = make_trainer(tiny_model, tokenizer, rows, config)
    trainer.train()
    assert [log for log in trainer.state.log_history if "star/k2" in log]


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({}, True),  # tether's default: adaptive, the refusal critic
        ({"regularizer": "fixed"}, False),
        ({"regularizer": "none", "star_dss": True, "star_dss_guardrail": "critic", "critic": "probe"}, True),
        ({"regularizer": "none", "star_dss": True, "star_dss_guardrail": "label"}, False),
    ],
)
def test_settings_alone_say_whether_a_run_scores_with_the_critic(settings, expected):
    """Asked before the probe a config would check exists (no probe_path here): the trainer the settings pick
    answers, STAR-DSS's critic guardrail included."""
    assert settings_use_critic(settings) is expected
