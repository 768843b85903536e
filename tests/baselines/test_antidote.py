"""Antidote pruning: the importance mask, padding-independent activation norms, adapter-only pruning, the CLI."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tether.baselines.antidote import antidote_prune, harmful_weight_mask, input_norms, prunable_linears
from tether.cli import main
from tether.data.chat import tokenize_example
from tether.modeling import load_trained

ROOT = Path(__file__).resolve().parents[2]


def test_mask_takes_the_highest_weight_times_input_norm():
    weight = torch.tensor([[1.0, -4.0, 0.5], [2.0, 0.1, -3.0]])  # (d_out 2, d_in 3)
    norms = torch.tensor([10.0, 1.0, 2.0])  # importance: [[10, 4, 1], [20, .1, 6]]
    mask = harmful_weight_mask(weight, norms, ratio=0.5)  # 3 of 6 entries
    assert mask.tolist() == [[True, False, False], [True, False, True]]
    assert not harmful_weight_mask(weight, norms, ratio=0.0).any()
    assert harmful_weight_mask(weight, norms, ratio=1.0).all()


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match="ratio must be in"):
        harmful_weight_mask(torch.ones(2, 2), torch.ones(2), ratio)


def _lora(model):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():  # a trained adapter: B is not zero
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    return model


def test_input_norms_do_not_depend_on_padding(tiny_model, tokenizer, rows):
    model = _lora(tiny_model)
    ids = [tokenize_example(row["messages"], tokenizer, 64)["input_ids"] for row in rows[10:16] + rows[24:27]]
    assert len({len(i) for i in ids}) > 1  # rows of several lengths: batches are padded
    layers = prunable_linears(model)
    one_by_one = input_norms(model, tokenizer.pad_token_id, ids, layers, batch_size=1)
    batched = input_norms(model, tokenizer.pad_token_id, ids, layers, batch_size=9)
    for name in layers:
        torch.testing.assert_close(batched[name], one_by_one[name], rtol=1e-5, atol=1e-7)
    # and they are the norms of the real tokens' inputs: the first adapter sees the embeddings' RMS-normed states
    first = next(iter(layers))
    assert one_by_one[first].shape == (layers[first].in_features,) and (one_by_one[first] > 0).all()


def test_under_lora_only_the_adapter_is_pruned(tiny_model, tokenizer, rows):
    model = _lora(tiny_model)
    layers = prunable_linears(model)
    assert layers and all(".lora_A." in n or ".lora_B." in n for n in layers)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    summary = antidote_prune(model, tokenizer, rows[:8], ratio=0.25, batch_size=4, max_length=64)
    for name, param in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name]), name
    expected = sum(round(0.25 * layer.weight.numel()) for layer in layers.values())
    assert summary["pruned"] == expected
    assert sum(int((layer.weight == 0).sum()) for layer in layers.values()) >= expected
    assert summary["rows"] == 8


def test_without_an_adapter_every_decoder_linear_but_the_head_is_prunable(tiny_model):
    layers = prunable_linears(tiny_model)
    assert tiny_model.get_output_embeddings() not in layers.values()
    assert len(layers) == 7 * tiny_model.config.num_hidden_layers  # q, k, v, o, gate, up, down


def test_cli_prunes_a_lora_run_into_a_plain_model(tmp_path, capsys):
    run = tmp_path / "run"
    config = str(ROOT / "configs" / "tiny.yaml")
    assert main(["train", "--config", config, "--output_dir", str(run), "--max_steps", "2"]) == 0
    out = tmp_path / "pruned"
    argv = ["antidote", "--model", str(run), "--data", "tiny-synthetic", "--limit", "8", "--ratio", "0.2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "pruned" in capsys.readouterr().out
    record = json.loads((out / "antidote.json").read_text())
    assert record["ratio"] == 0.2 and record["rows"] == 8 and record["pruned"] > 0
    assert (out / "config.json").is_file() and not (tmp_path / "pruned.incomplete").exists()
    card = (out / "README.md").read_text()  # the pruned model's card says where it comes from
    assert f"base_model: {run}" in card and "Antidote: 20.0% of the adapter's weights pruned" in card
    pruned, _ = load_trained(str(out))
    merged, _ = load_trained(str(run))
    changed = [n for n, p in pruned.state_dict().items() if not torch.equal(p, merged.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only adapted projections moved
    assert main([*argv, "--out", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ratio", "2"], "ratio must be in"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--data", "missing.jsonl"], "dataset file not found"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    argv = ["antidote", "--model", "tiny-llama", "--data", "tiny-synthetic", "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_library_function_prunes_a_plain_model_and_checks_first(tmp_path, capsys):
    """`antidote_to_dir`, which the CLI and the bench call: without an adapter every decoder linear is pruned; bad
    input is refused before anything is loaded or written."""
    from tether.baselines.antidote import antidote_to_dir
    from tether.errors import TetherInputError

    out = antidote_to_dir("tiny-llama", ["tiny-synthetic"], tmp_path / "pruned", ratio=0.1, limit=4)
    assert out == tmp_path / "pruned" and "pruned" in capsys.readouterr().out
    record = json.loads((out / "antidote.json").read_text())
    assert record["model"] == "tiny-llama" and record["data"] == ["tiny-synthetic"] and record["limit"] == 4
    assert record["rows"] == 4 and record["pruned"] > 0 and (out / "config.json").is_file()
    with pytest.raises(TetherInputError, match="already exists"):
        antidote_to_dir("tiny-llama", ["tiny-synthetic"], out)
    with pytest.raises(TetherInputError, match="--limit must be at least 1"):
        antidote_to_dir("tiny-llama", ["tiny-synthetic"], tmp_path / "other", limit=0)
    assert not (tmp_path / "other").exists()
