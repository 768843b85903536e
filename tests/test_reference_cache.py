"""The reference cache: a cached batch gives the uncached loss and gradient, a changed example, model, tokenizer or
critic is a miss, a damaged shard is never used, and a run trains as it does without the cache."""

import copy
import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.conftest import make_config, make_trainer
from tether.modeling import build_tiny_model
from tether.trainer.reference_cache import CachedExample, ReferenceCache, example_keys, fingerprint, state_digest


def nonzero_adapter(trainer, seed=0):
    """Move the fresh adapter (B = 0) so that the policy differs from the reference and the KL is not 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize(
    "settings",
    [
        {},  # tether's default: the refusal critic reads the reference pass, its score is cached too
        {"critic": "label", "kl_prefix_tokens": 0},
        {"regularizer": "fixed", "beta": 0.5},
        {"kl_direction": "reverse", "critic": "label"},
    ],
)
def test_a_cached_batch_gives_the_uncached_loss_and_gradient(tokenizer, rows, tmp_path, settings):
    """The second call finds every example cached and runs no reference forward; the loss, its gradient and the
    critic's risk match the first call's, which ran the forward."""
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows, make_config(tmp_path, **settings))
    nonzero_adapter(trainer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1, 30, 31)])
    forwards = []
    hook = trainer.model.get_base_model().model.layers[0].register_forward_hook(lambda *a: forwards.append(1))
    first, first_grads = loss_and_grads(trainer, batch)
    calls_uncached = len(forwards)
    second, second_grads = loss_and_grads(trainer, batch)
    hook.remove()
    assert len(forwards) - calls_uncached == calls_uncached - 1  # the policy's forward only, no reference forward
    metrics = trainer._metrics["train"]
    assert metrics["reference/cached"] == [0.0, 1.0]
    assert metrics["loss/kl"][0] > 0
    assert second == pytest.approx(first, abs=1e-6)
    assert metrics["critic/risk_mean"][1] == pytest.approx(metrics["critic/risk_mean"][0], abs=1e-7)
    for name, grad in first_grads.items():
        torch.testing.assert_close(second_grads[name], grad, atol=1e-6, rtol=1e-5)


def test_a_cached_example_is_read_back_in_another_batch(tokenizer, rows, tmp_path):
    """Entries are per example: a batch of examples cached by two other batches (and written to disk in between)
    is a hit, and its loss equals the loss with the cache off."""
    config = make_config(tmp_path, critic="label")
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows, config)
    nonzero_adapter(trainer)
    collate = trainer.data_collator
    for indices in ((0, 1), (30, 31)):
        trainer.compute_loss(trainer.model, collate([trainer.train_dataset[i] for i in indices]))
    trainer.reference_cache.flush()
    mixed = collate([trainer.train_dataset[i] for i in (31, 0, 30, 1)])
    cached = trainer.compute_loss(trainer.model, mixed).item()
    trainer.reference_cache = None
    uncached = trainer.compute_loss(trainer.model, mixed).item()
    assert trainer._metrics["train"]["reference/cached"] == [0.0, 0.0, 1.0]
    assert cached == pytest.approx(uncached, abs=1e-6)


def test_a_changed_example_is_a_miss(tokenizer, rows, tmp_path):
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows, make_config(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    keys = example_keys(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, 3] += 1  # one token of the first example
    assert example_keys(changed)[0] != keys[0] and example_keys(changed)[1] == keys[1]
    shorter = {k: v.clone() for k, v in batch.items()}
    shorter["labels"][1, (shorter["labels"][1] != -100).nonzero()[0]] = -100  # one response token fewer
    assert example_keys(shorter)[1] != keys[1]
    padded = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1, 2)])  # more right padding
    assert example_keys(padded)[:2] == keys


def test_an_entry_of_the_wrong_length_stops_the_step_with_the_folder_to_delete(tokenizer, rows, tmp_path):
    """A cached entry with fewer positions than its example's response (a damaged or colliding entry) is never used:
    the step stops and names the cache folder."""
    trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows, make_config(tmp_path, critic="label"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.compute_loss(trainer.model, batch)
    key = example_keys(batch)[0]
    entry = trainer.reference_cache.pending[key]
    trainer.reference_cache.pending[key] = CachedExample(entry.hidden[1:], entry.score)
    with pytest.raises(RuntimeError, match=f"reference cache {trainer.reference_cache.folder}: .*delete the folder"):
        trainer.compute_loss(trainer.model, batch)


def test_the_fingerprint_follows_the_reference_tokenizer_and_critic(tokenizer):
    """Another base weight, tokenizer or reading critic is another folder; the adapter's own weights are not part of
    the reference (it runs with the adapter disabled), and a LoRA-wrapped model shares the plain model's folder."""
    model = build_tiny_model(len(tokenizer))
    plain = fingerprint(model, tokenizer, None)
    assert fingerprint(model, tokenizer, None) == plain
    assert fingerprint(model, tokenizer, {"name": "refusal"}) != plain
    peft = get_peft_model(build_tiny_model(len(tokenizer)), LoraConfig(r=4, target_modules=["q_proj"]))
    assert fingerprint(peft, tokenizer, None) == plain
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.add_(1.0)
    assert fingerprint(peft, tokenizer, None) == plain
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    assert fingerprint(model, tokenizer, None) != plain
    tokenizer_plus = copy.deepcopy(tokenizer)  # a tokenizer with one token more
    tokenizer_plus.add_tokens(["<extra-token>"])
    assert fingerprint(build_tiny_model(len(tokenizer)), tokenizer_plus, None) != plain


def test_a_trainer_on_another_model_reads_another_folder(tokenizer, rows, tmp_path):
    shared = str(tmp_path / "cache")
    first = make_trainer(
        build_tiny_model(len(tokenizer)), tokenizer, rows, make_config(tmp_path, reference_cache_dir=shared)
    )
    model = build_tiny_model(len(tokenizer))
    with torch.no_grad():
        model.model.norm.weight.mul_(1.01)
    second = make_trainer(model, tokenizer, rows, make_config(tmp_path, reference_cache_dir=shared))
    assert first.reference_cache.folder != second.reference_cache.folder
    again = make_trainer(
        build_tiny_model(len(tokenizer)), tokenizer, rows, make_config(tmp_path, reference_cache_dir=shared)
    )
    assert again.reference_cache.folder == first.reference_cache.folder


def test_a_truncated_shard_is_reported_deleted_and_recomputed(tmp_path, caplog):
    cache = ReferenceCache.open(tmp_path, "f" * 32)
    for i in range(3):
        cache.add(f"key{i}", CachedExample(torch.randn(4 + i, 8), 0.5))
    shard = cache.flush()
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 40])
    (cache.folder / f"{shard.name}.123.tmp").write_bytes(data[:100])  # a write cut short by a kill
    with caplog.at_level(logging.WARNING):
        reopened = ReferenceCache.open(tmp_path, "f" * 32)
    assert len(reopened) == 0 and not shard.exists()
    assert "unreadable" in caplog.text and shard.name in caplog.text
    intact = ReferenceCache.open(tmp_path, "f" * 32)
    intact.add("key0", CachedExample(torch.ones(2, 8), float("nan")))
    intact.flush()
    assert torch.equal(ReferenceCache.open(tmp_path, "f" * 32).get("key0").hidden, torch.ones(2, 8))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_training_with_the_cache_matches_training_without(tokenizer, rows, tmp_path, accumulation):
    """Three epochs: every step after the first epoch reads the cache, and the adapter ends where it ends with the
    cache off (float rounding of batched matrix products aside); with gradient accumulation too (batches of 2, 2
    micro-batches a step)."""
    finals = {}
    for cache in (False, True):
        config = make_config(
            tmp_path / str(cache),
            reference_cache=cache,
            max_steps=-1,
            num_train_epochs=3,
            logging_steps=1,
            per_device_train_batch_size=4 // accumulation,
            gradient_accumulation_steps=accumulation,
        )
        trainer = make_trainer(build_tiny_model(len(tokenizer)), tokenizer, rows[:16], config)
        trainer.train()
        finals[cache] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
        cached = [log.get("reference/cached") for log in trainer.state.log_history if "loss" in log]
    assert cached == [0.0] * 4 + [1.0] * 8
    for name, value in finals[True].items():
        torch.testing.assert_close(value, finals[False][name], atol=1e-5, rtol=1e-4)
    assert not finals[True].keys() - finals[False].keys()


def test_a_critic_is_identified_by_its_state():
    """Equal states give one digest whatever the object's identity; another token id, another digest; an object that
    cannot be identified is an error (the trainer then turns the cache off)."""
    from tether.critics.refusal import RefusalCritic

    assert state_digest(RefusalCritic([5, 7])) == state_digest(RefusalCritic([5, 7]))
    assert state_digest(RefusalCritic([5, 7])) != state_digest(RefusalCritic([5, 8]))
    with pytest.raises(TypeError, match="cannot identify"):
        state_digest({"handle": object()})
