import pytest
import torch

from tests.conftest import make_config, make_trainer
from tether.critics import critic_from_config
from tether.critics.refusal import RefusalCritic, refusal_mass, refusal_scores, refusal_start_ids
from tether.data.chat import tokenize_example
from tether.errors import TetherInputError


def test_refusal_start_ids_are_the_first_reply_tokens_of_the_openings(tokenizer):
    ids = refusal_start_ids(tokenizer, ("I cannot", "Sorry"))
    for opening in ("I cannot", "Sorry"):
        tokens = tokenize_example(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": opening}], tokenizer, None
        )
        assert tokens["input_ids"][tokens["prompt_length"]] in ids
    assert tokenizer.decode(ids[0])[:1] in ("I", "S")
    assert len(refusal_start_ids(tokenizer, ("I cannot", "I'm sorry", "I apologize"))) == 1  # all start with "I"


def test_a_tokenizer_without_a_chat_template_is_refused(tokenizer):
    bare = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>")
    bare.chat_template = None
    with pytest.raises(TetherInputError, match="critic 'refusal' found no refusal-start token"):
        refusal_start_ids(bare)
    with pytest.raises(TetherInputError, match="canary_prompts found no refusal-start token.*drop canary_prompts"):
        refusal_start_ids(bare, user="canary_prompts")


def test_refusal_mass_sums_the_probability_of_the_tokens():
    probs = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    mass = refusal_mass(probs.log(), torch.tensor([0, 2]))
    assert mass.tolist() == pytest.approx([0.8, 0.9])


def test_risk_is_the_references_first_token_refusal_mass(tiny_model, tokenizer, rows, tmp_path):
    """The risk the trainer gives each example equals the refusal mass of a separate forward of the reference on the
    prompt alone: the first-token distribution read from the KL's reference pass is the prompt's next-token one."""
    config = make_config(tmp_path, regularizer="adaptive", critic="refusal")
    trainer = make_trainer(tiny_model, tokenizer, rows[:4], config)
    assert isinstance(trainer.critic, RefusalCritic) and trainer.critic.token_ids is not None
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    from tether.trainer.tether_trainer import ResponsePositions

    positions = ResponsePositions.of(batch)
    scores, _ = trainer.risk(batch, trainer.reference_pass(batch, positions), positions)
    expected = []
    with trainer.reference.active() as reference:
        for i in range(4):
            prompt = torch.tensor([trainer.train_dataset[i]["input_ids"][: trainer.train_dataset[i]["prompt_length"]]])
            logprobs = reference(input_ids=prompt).logits[:, -1].float().log_softmax(-1)  # (1, V)
            expected.append(refusal_mass(logprobs, trainer.critic.token_ids).item())
    assert scores.tolist() == pytest.approx(expected, rel=1e-4)
    prompts = [rows[i]["messages"][:-1] for i in range(4)]  # the adapter is fresh: the policy is the reference
    assert refusal_scores(trainer.model, tokenizer, prompts, batch_size=3) == pytest.approx(expected, rel=1e-4)
    # batches of one run every token; batches of three run the template's shared opening once, as a cache
    assert refusal_scores(trainer.model, tokenizer, prompts, batch_size=1) == pytest.approx(expected, rel=1e-4)
    assert len(set(round(x, 6) for x in expected)) > 1  # the prompts differ, so do their risks


def test_refusal_critic_trains(tiny_model, tokenizer, rows, tmp_path):
    config = make_config(tmp_path, regularizer="adaptive", critic="refusal", max_steps=2)
    trainer = make_trainer(tiny_model, tokenizer, rows, config)
    trainer.train()
    risks = [log["critic/risk_mean"] for log in trainer.state.log_history if "critic/risk_mean" in log]
    assert len(risks) == 2 and all(0.0 < r < 1.0 for r in risks)


def test_from_config():
    assert isinstance(critic_from_config(type("C", (), {"critic": "refusal"})()), RefusalCritic)


def test_risk_calibration_sets_the_saturation_from_benign_prompts(tmp_path):
    """`tether train --critic refusal --risk_calibration FILE`: risk_saturation becomes the 0.5 quantile of the
    reference's refusal mass on the file's prompts, recorded in data_summary.json, and the run trains with it."""
    import json
    from pathlib import Path

    import numpy as np

    from tether.cli import main
    from tether.modeling import load_model_and_tokenizer

    prompts = ["add 1 and 2", "name a colour", "write a short poem about the sea", "what is the capital of France"]
    (tmp_path / "benign.txt").write_text("\n".join(prompts) + "\n")
    tiny = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    argv = ["train", "--config", tiny, "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--critic", "refusal"]
    argv += ["--risk_calibration", str(tmp_path / "benign.txt"), "--risk_calibration_quantile", "0.5"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())["risk_calibration"]
    model, tokenizer = load_model_and_tokenizer("tiny-llama")
    scores = refusal_scores(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts])
    assert summary["n"] == 4 and summary["quantile"] == 0.5
    assert summary["risk_saturation"] == pytest.approx(float(np.quantile(scores, 0.5)), rel=1e-5)
