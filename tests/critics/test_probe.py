import json

import numpy as np
import pytest
import torch

from tests.conftest import make_config, make_trainer
from tether.cli import main
from tether.critics.probe import (
    LinearProbe,
    ProbeCritic,
    check_layers,
    fit_probe,
    model_fingerprint,
    pool,
    pool_positions,
    probe_metrics,
    prompt_features,
    template_span,
)
from tether.errors import TetherInputError
from tether.modeling import build_tiny_model

LAYERS = [1, 2]


def prompts_of(rows):
    return [row["messages"][:-1] for row in rows]


@pytest.fixture
def tiny_probe(tiny_model, tokenizer, rows):
    """A probe on the tiny model: flagged placeholder prompts against arithmetic prompts."""
    flagged, benign = rows[-8:], rows[:24]
    probe = fit_probe(
        prompt_features(tiny_model, tokenizer, prompts_of(flagged), LAYERS),
        prompt_features(tiny_model, tokenizer, prompts_of(benign), LAYERS),
        LAYERS,
        "mean",
        C=1.0,
    )
    probe.metadata["model"] = model_fingerprint(tiny_model, tokenizer)
    return probe


def test_pooling_shapes():
    features = torch.randn(5, 3, 8)  # (n, L, d)
    assert pool(features, "last-layer").shape == (5, 8)
    assert pool(features, "mean").shape == (5, 8)
    assert pool(features, "max").shape == (5, 8)
    assert pool(features, "concat").shape == (5, 24)
    torch.testing.assert_close(pool(features, "weighted", torch.tensor([0.0, 0.0, 1.0])), features[:, 2])
    both = torch.randn(5, 6, 8)  # (n, 2L, d): the prompt's 3 layers, then the response's
    torch.testing.assert_close(pool_positions(both, "last-layer", position="both"), both[:, [2, 5]].flatten(1))
    assert pool_positions(both, "concat", position="both").shape == (5, 48)
    with pytest.raises(TetherInputError, match="does not combine with position 'both'"):
        fit_probe(both, both, [1, 2, 3], "weighted", position="both")


def test_auroc_on_a_separable_synthetic_set():
    """Two Gaussians 1.5 σ apart along one direction: held-out AUROC well above chance, near the Bayes 0.86."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.zeros(16)
    direction[3] = 1.5
    harmful = torch.randn(400, 2, 16, generator=generator) + direction
    benign = torch.randn(400, 2, 16, generator=generator)
    probe = fit_probe(harmful[:300], benign[:300], [1, 2], "mean")
    metrics = probe_metrics(probe.score(harmful[300:]).numpy(), probe.score(benign[300:]).numpy())
    assert metrics["auroc"] > 0.9  # mean pooling of 2 layers: 1.5 σ · √2 apart
    scores = probe.score(torch.cat([harmful[300:], benign[300:]])).numpy()
    assert 0.3 < scores.mean() < 0.7  # calibrated on a balanced set


@pytest.mark.parametrize("tokens", ["last", "mean", "template"])
def test_left_and_right_padding_give_the_same_features(tokens, tiny_model, tokenizer, rows):
    prompts = prompts_of(rows[::5])  # different lengths in one batch
    right = prompt_features(tiny_model, tokenizer, prompts, LAYERS, padding_side="right", tokens=tokens)
    left = prompt_features(tiny_model, tokenizer, prompts, LAYERS, padding_side="left", tokens=tokens)
    alone = torch.cat([prompt_features(tiny_model, tokenizer, [p], LAYERS, tokens=tokens) for p in prompts])
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, right, rtol=1e-4, atol=1e-5)
    if tokens == "mean":  # not the last token's state
        assert not torch.allclose(right, prompt_features(tiny_model, tokenizer, prompts, LAYERS))
    if tokens == "template":  # the span's states side by side, the last prompt token's state last
        assert right.shape[-1] == template_span(tokenizer) * tiny_model.config.hidden_size
        last = prompt_features(tiny_model, tokenizer, prompts, LAYERS)
        torch.testing.assert_close(right[..., -last.shape[-1] :], last)


def test_template_span_starts_at_the_last_token_of_the_users_message(tokenizer):
    """ChatML: `<|im_end|>`, a newline, `<|im_start|>`, `assistant`, a newline follow the user's text, so the span is
    those template tokens and the message's own last token; it does not depend on the message."""
    span = template_span(tokenizer)
    for text in ("add 2 and 3", "placeholder request number 7?"):
        prompt = [{"role": "user", "content": text}]
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
        ids = list(ids["input_ids"])
        assert text.endswith(tokenizer.decode(ids[-span]).strip())  # the message's last token
        assert tokenizer.decode(ids[-span + 1 :]).replace(" ", "") == "<|im_end|>\n<|im_start|>assistant\n"


def test_features_stop_after_the_deepest_layer_and_match_a_full_forward(tiny_model, tokenizer, rows):
    """Reading layer 1 of 2 skips block 2 and the LM head; the states equal those of a full forward."""
    prompts = prompts_of(rows[:3])
    calls = []
    handles = [
        tiny_model.lm_head.register_forward_hook(lambda *a: calls.append("head")),
        tiny_model.model.layers[1].register_forward_hook(lambda *a: calls.append("block 2")),
    ]
    try:
        early = prompt_features(tiny_model, tokenizer, prompts, [1])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    full = prompt_features(tiny_model, tokenizer, prompts, [1, 2])[:, :1]
    torch.testing.assert_close(early, full)


def test_save_load_scores_identically(tiny_probe, tiny_model, tokenizer, rows, tmp_path):
    tiny_probe.save(tmp_path / "probe")
    loaded = LinearProbe.load(tmp_path / "probe")
    features = prompt_features(tiny_model, tokenizer, prompts_of(rows), LAYERS)
    assert torch.equal(loaded.score(features), tiny_probe.score(features))
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["layers"] == LAYERS


def test_probe_from_another_model_is_refused(tiny_probe, tokenizer):
    other = build_tiny_model(len(tokenizer), seed=1)
    with pytest.raises(TetherInputError, match="fit on another model"):
        tiny_probe.check_model(other, tokenizer)


def test_corrupted_probe_file(tiny_probe, tmp_path):
    tiny_probe.save(tmp_path / "probe")
    (tmp_path / "probe" / "probe.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TetherInputError, match="corrupted"):
        LinearProbe.load(tmp_path / "probe")


def test_empty_set_and_layer_out_of_range(tiny_model):
    with pytest.raises(TetherInputError, match="non-empty"):
        fit_probe(torch.zeros(0, 1, 4), torch.zeros(3, 1, 4), [1])
    with pytest.raises(TetherInputError, match=r"layers are 0 \(embeddings\) to 2"):
        check_layers(tiny_model, [3])


@pytest.mark.parametrize("tokens", ["last", "mean", "template"])
def test_in_training_risk_equals_probe_score(tokens, tiny_probe, tiny_model, tokenizer, rows, tmp_path):
    """The risk read from the reference pass (prompt + response, right-padded batch) equals scoring the prompts
    alone, example by example; with `tokens: mean` too (the mean over the prompt's tokens, not the response's) and
    `tokens: template` (the instruction's last token and the template's tokens after it)."""
    if tokens == "template":  # features span·d wide: fit a probe on them
        flagged, benign = prompts_of(rows[-8:]), prompts_of(rows[:24])
        tiny_probe = fit_probe(
            prompt_features(tiny_model, tokenizer, flagged, LAYERS, tokens=tokens),
            prompt_features(tiny_model, tokenizer, benign, LAYERS, tokens=tokens),
            LAYERS,
            "mean",
            C=1.0,
        )
        tiny_probe.metadata["model"] = model_fingerprint(tiny_model, tokenizer)
    tiny_probe.tokens = tokens
    tiny_probe.save(tmp_path / "probe")
    batch_rows = [rows[0], rows[-1], rows[7], rows[-4]]
    features = prompt_features(tiny_model, tokenizer, prompts_of(batch_rows), LAYERS, tokens=tokens)
    expected = tiny_probe.score(features)
    assert expected.std() > 0.01  # the four examples score differently
    config = make_config(tmp_path, regularizer="adaptive", critic="probe", probe_path=str(tmp_path / "probe"))
    trainer = make_trainer(tiny_model, tokenizer, batch_rows, config)
    seen = []
    score = trainer.critic.score
    trainer.critic.score = lambda batch: seen.append(score(batch)) or seen[-1]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-5)
    assert isinstance(trainer.critic, ProbeCritic)


def test_probe_critic_needs_a_probe_path(tmp_path):
    with pytest.raises(TetherInputError, match="needs probe_path"):
        make_config(tmp_path, regularizer="adaptive", critic="probe")


def test_cli_fit_eval_score(tmp_path, capsys):
    """The real verbs on the tiny model with prompt files: fit writes a probe, eval prints AUROC, score writes one
    risk per example."""
    harmful = tmp_path / "harmful.txt"
    benign = tmp_path / "benign.txt"
    harmful.write_text("\n".join(f"placeholder request number {i}" for i in range(12)))
    benign.write_text("\n".join(f"add {i} and {i + 1}" for i in range(12)))
    probe_dir = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "fit",
                "--model",
                "tiny-llama",
                "--harmful",
                str(harmful),
                "--benign",
                str(benign),
                "--layers",
                "1",
                "2",
                "--pooling",
                "mean",
                "--C",
                "1.0",
                "--out",
                str(probe_dir),
            ]
        )
        == 0
    )
    assert (probe_dir / "probe.safetensors").is_file()
    assert main(["probe", "eval", "--probe", str(probe_dir), "--harmful", str(harmful), "--benign", str(benign)]) == 0
    assert "AUROC" in capsys.readouterr().out
    sweep_dir = tmp_path / "sweep"
    assert (
        main(
            [
                "probe",
                "eval",
                "--probe",
                str(probe_dir),
                "--harmful",
                str(harmful),
                "--benign",
                str(benign),
                "--sweep",
                "--out",
                str(sweep_dir),
            ]
        )
        == 0
    )
    rows = json.loads((sweep_dir / "sweep.json").read_text())
    # 3 one-layer probes (0 = embeddings, 1, 2) + the window 0–2 under mean, max, concat, weighted.
    assert len(rows) == 3 + 4 and (sweep_dir / "sweep.png").is_file()
    assert "| 0–2 | concat |" in (sweep_dir / "sweep.md").read_text()
    out = tmp_path / "risk.jsonl"
    assert main(["probe", "score", "--probe", str(probe_dir), "--data", "tiny-synthetic", "--out", str(out)]) == 0
    risks = [json.loads(line)["risk"] for line in out.read_text().splitlines()]
    assert len(risks) == 32 and all(0.0 <= r <= 1.0 for r in risks)
    assert np.mean(risks[-8:]) > np.mean(risks[:24])  # the flagged rows score higher
    code = main(
        [
            "probe",
            "fit",
            "--model",
            "tiny-llama",
            "--harmful",
            str(harmful),
            "--benign",
            str(benign),
            "--layers",
            "9",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    assert code == 2 and "out of range" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("position", ["response", "both"])
def test_response_position_in_training_equals_chat_row_features(position, tiny_model, tokenizer, rows, tmp_path):
    """`position: response` (or `both`): the risk read at each example's last response token (and last prompt token)
    in the reference pass equals scoring `chat_row_features` of the same rows (prompt + response) one batch apart."""
    from tether.critics.probe import chat_row_features

    flagged, benign = rows[-8:], rows[:24]
    probe = fit_probe(
        chat_row_features(tiny_model, tokenizer, flagged, LAYERS, position),
        chat_row_features(tiny_model, tokenizer, benign, LAYERS, position),
        LAYERS,
        "mean",
        C=1.0,
        position=position,
    )
    assert probe.coef.shape == (tiny_model.config.hidden_size * (2 if position == "both" else 1),)
    probe.metadata["model"] = model_fingerprint(tiny_model, tokenizer)
    probe.save(tmp_path / "probe")
    assert LinearProbe.load(tmp_path / "probe").position == position
    batch_rows = [rows[0], rows[-1], rows[7], rows[-4]]
    expected = probe.score(chat_row_features(tiny_model, tokenizer, batch_rows, LAYERS, position))
    config = make_config(tmp_path, regularizer="adaptive", critic="probe", probe_path=str(tmp_path / "probe"))
    trainer = make_trainer(tiny_model, tokenizer, batch_rows, config)
    seen = []
    score = trainer.critic.score
    trainer.critic.score = lambda batch: seen.append(score(batch)) or seen[-1]
    trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("position", ["response", "both"])
def test_cli_fit_response_position(position, tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    benign = tmp_path / "benign.jsonl"
    harmful.write_text(
        "\n".join(json.dumps({"prompt": f"question {i}", "completion": f"placeholder reply {i}"}) for i in range(12))
    )
    benign.write_text(
        "\n".join(json.dumps({"prompt": f"question {i}", "completion": f"{i} + 1 = {i + 1}"}) for i in range(12))
    )
    probe_dir = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "fit",
                "--model",
                "tiny-llama",
                "--position",
                position,
                "--harmful",
                str(harmful),
                "--benign",
                str(benign),
                "--layers",
                "2",
                "--pooling",
                "last-layer",
                "--C",
                "1.0",
                "--out",
                str(probe_dir),
            ]
        )
        == 0
    )
    assert json.loads((probe_dir / "probe.json").read_text())["position"] == position
    out = tmp_path / "risk.jsonl"
    assert main(["probe", "score", "--probe", str(probe_dir), "--data", str(harmful), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 12


@pytest.mark.parametrize("tokens", ["mean", "template"])
def test_cli_fit_over_other_prompt_tokens(tokens, tmp_path, capsys):
    """`--tokens mean` or `template` is recorded in the probe and used by `score`; it needs position prompt."""
    harmful, benign = tmp_path / "harmful.txt", tmp_path / "benign.txt"
    harmful.write_text("\n".join(f"placeholder request number {i}" for i in range(12)))
    benign.write_text("\n".join(f"add {i} and {i + 1}" for i in range(12)))
    fit = ["probe", "fit", "--model", "tiny-llama", "--harmful", str(harmful), "--benign", str(benign)]
    fit += ["--layers", "2", "--pooling", "last-layer", "--C", "1.0", "--tokens", tokens]
    assert main([*fit, "--out", str(tmp_path / "probe")]) == 0
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["tokens"] == tokens
    out = tmp_path / "risk.jsonl"
    assert (
        main(["probe", "score", "--probe", str(tmp_path / "probe"), "--data", "tiny-synthetic", "--out", str(out)]) == 0
    )
    risks = [json.loads(line)["risk"] for line in out.read_text().splitlines()]
    assert len(risks) == 32 and np.mean(risks[-8:]) > np.mean(risks[:24])  # the flagged rows score higher
    capsys.readouterr()
    assert main([*fit, "--position", "response", "--out", str(tmp_path / "bad")]) == 2
    assert "`mean` or `template` with position prompt" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_fit_selects_the_layer_on_validation_sets(tmp_path, capsys):
    """`--val_harmful/--val_benign`: a one-layer probe per candidate, the best mean validation AUROC kept and every
    candidate's AUROCs recorded. The embeddings (layer 0) see only the generation prompt's token: AUROC 0.5, never
    chosen. Half a selection request or a multi-layer pooling is a one-line error."""
    sets = {}
    for name, text in [("harmful", "placeholder request number {}"), ("benign", "add {} and {}")]:
        for split, numbers in [("fit", range(12)), ("val", range(20, 28))]:
            sets[name, split] = tmp_path / f"{name}-{split}.txt"
            sets[name, split].write_text("\n".join(text.format(i, i + 1) for i in numbers))
    fit = ["probe", "fit", "--model", "tiny-llama", "--harmful", str(sets["harmful", "fit"])]
    fit += ["--benign", str(sets["benign", "fit"]), "--layers", "0", "1", "2", "--C", "1.0"]
    selection = ["--val_harmful", str(sets["harmful", "val"]), "--val_benign", str(sets["benign", "val"])]
    limit = ["--val_max_flagged", f"{sets['benign', 'val']}=1.0"]
    assert main([*fit, *selection, *limit, "--out", str(tmp_path / "probe")]) == 0
    meta = json.loads((tmp_path / "probe" / "probe.json").read_text())
    table = meta["layer_selection"]["candidates"]
    assert [row["layer"] for row in table] == [0, 1, 2] and table[0]["val_mean_auroc"] == 0.5
    best = max(table, key=lambda row: row["val_mean_auroc"])
    assert best["layer"] != 0 and best["val_mean_auroc"] > 0.5
    assert meta["layers"] == [best["layer"]] == [meta["layer_selection"]["chosen"]] and meta["pooling"] == "last-layer"
    assert "validation AUROC mean" in capsys.readouterr().out
    for extra, message in [
        (selection[:2], "both --val_harmful and --val_benign"),
        (["--val_max_flagged", "x=0.1"], "constrains the layer selection"),
        ([*selection, "--val_max_flagged", "0.1"], "write SET=SHARE"),
        ([*selection, "--val_max_flagged", "other=0.1"], "names other, not one of --val_benign"),
        ([*selection, "--pooling", "mean"], "drop --pooling mean"),
    ]:
        assert main([*fit, *extra, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_best_candidate_respects_the_flagged_share_limit():
    """The best mean validation AUROC among layers that flag at most `max_flagged` of every validation benign set;
    none allowed is a one-line error naming the lowest share."""
    from types import SimpleNamespace

    from tether.critics.probe_sweep import best_candidate

    def candidate(layer, auroc, flagged):
        row = {"layer": layer, "val_mean_auroc": auroc, "val_flagged": {"easy": 0.0, "hard": flagged}}
        return SimpleNamespace(metadata={}), row

    candidates = [candidate(5, 0.90, 0.02), candidate(11, 0.93, 0.08), candidate(21, 0.97, 0.22)]
    assert best_candidate(candidates, ["h"], ["easy", "hard"]).metadata["layer_selection"]["chosen"] == 21
    chosen = best_candidate(candidates, ["h"], ["easy", "hard"], max_flagged={"hard": 0.1})
    assert chosen is candidates[1][0] and chosen.metadata["layer_selection"]["max_flagged"] == {"hard": 0.1}
    with pytest.raises(TetherInputError, match=r"hard ≤ 1.0% \(lowest: 2.0%\)"):
        best_candidate(candidates, ["h"], ["easy", "hard"], max_flagged={"hard": 0.01})
    with pytest.raises(TetherInputError, match="'other', which is not a validation benign set"):
        best_candidate(candidates, ["h"], ["easy", "hard"], max_flagged={"other": 0.1})


def test_score_prompts_equals_the_in_training_risk(tiny_probe, tiny_model, tokenizer, rows, tmp_path):
    """What `risk_calibration` reads (`score_prompts`, bare prompts) is the probe's score of those prompts; a probe of
    the response position is refused."""
    tiny_probe.save(tmp_path / "probe")
    critic = ProbeCritic(tmp_path / "probe")
    prompts = prompts_of([rows[0], rows[-1], rows[7]])
    expected = tiny_probe.score(prompt_features(tiny_model, tokenizer, prompts, LAYERS)).tolist()
    assert critic.score_prompts(tiny_model, tokenizer, prompts) == pytest.approx(expected, rel=1e-5)
    critic.position = "response"
    with pytest.raises(TetherInputError, match="calibrate with a prompt probe"):
        critic.score_prompts(tiny_model, tokenizer, prompts)
