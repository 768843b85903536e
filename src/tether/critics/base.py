"""The safety-critic interface: a per-example risk score in [0, 1], higher means less safe.

A critic declares what it needs and the trainer asks; the trainer never looks inside a critic:
- `needs`: the batch fields `score` reads (`risk`: a column of the data; `reference_features`: states of the
  reference pass, declared by `reference_reads`; `reference_first_logprobs`: the reference's log-probabilities
  (B, V) of each example's first response token, from the LM head of the pass the KL already runs);
- `prepare(rows)` (optional, `PreparesRows`): runs once over the training rows before the model is loaded, e.g. a judge
  that writes each row's risk; returns the rows and one record per row for `critic_scores.jsonl`, raises
  `TetherInputError` when it cannot; `summary(rows)` says what it did, for `data_summary.json`;
- `reference_reads(model, tokenizer)` (optional, `ReadsReference`): which hidden states of the reference pass the
  critic reads (layers, positions); the trainer captures them in the pass the KL already runs and puts them in the
  batch as `reference_features`;
- `use_tokenizer(tokenizer)` (optional, `UsesTokenizer`): reads what it needs from the model's tokenizer (token ids)
  before training, raises `TetherInputError` when it cannot;
- `score_prompts(model, tokenizer, prompts)` (optional, `ScoresPrompts`): the risk of bare prompts under the
  reference, as training would score them: what `risk_calibration` places the risk scale with.
Every change to the risk after `score` (clamp, floor, saturation, EMA) happens in one place: `tether.weights`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Critic(Protocol):
    """Scores a training batch: `score(batch)` returns a float tensor (B,) in [0, 1], higher = riskier, computed
    without gradient; `needs` names the batch fields it reads."""

    name: str
    needs: frozenset[str]

    def score(self, batch: dict) -> torch.Tensor: ...


@runtime_checkable
class PreparesRows(Protocol):
    """A critic that scores the training rows once, before training (and the model), and writes their `risk`."""

    def prepare(self, rows: list[dict]) -> tuple[list[dict], list[dict]]: ...

    def summary(self, rows: list[dict]) -> dict: ...


class ReferenceReads(Protocol):
    """Hidden states a critic reads from the reference pass.

    `layers`: hidden-state indices (0 = embeddings). `locate(inputs)` -> (rows, cols, token_weights): the batch
    positions to capture (1-D or 2-D index tensors), or per-row token weights (B, T) to average over instead.
    `features(captured)` -> the tensor the critic's `score` reads as `batch["reference_features"]`, from the
    {layer: states} that `tether.critics.probe.capture_layer_states` filled."""

    layers: list[int]

    def locate(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...

    def features(self, captured: dict[int, torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class ReadsReference(Protocol):
    """A critic that reads hidden states of the reference pass; checks that it fits `model` and `tokenizer`."""

    def reference_reads(self, model, tokenizer) -> ReferenceReads: ...


@runtime_checkable
class UsesTokenizer(Protocol):
    """A critic that reads token ids from the model's tokenizer before training."""

    def use_tokenizer(self, tokenizer) -> None: ...


@runtime_checkable
class ScoresPrompts(Protocol):
    """A critic that can score prompts (chat messages ending with the user turn) with the reference model alone."""

    def score_prompts(self, model, tokenizer, prompts: list[list[dict]]) -> list[float]: ...
