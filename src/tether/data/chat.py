"""Render chat examples with the tokenizer's chat template; loss only on the final assistant response.

Each example becomes `input_ids`, `labels` (-100 on the prompt, the token ids on the response), `prompt_length`
(the index of the first response token: the last prompt token, whose hidden state the probe reads, is
`prompt_length - 1`) and `risk` (NaN for an example without a risk label). Responses are truncated to
`max_length`; prompts never are. A row with `risk_chunks` (a guardrail's risk of each partial response, STAR-DSS)
also gets `token_risk`, one risk per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from datasets import Dataset

from tether.errors import TetherInputError

IGNORE_INDEX = -100


def tokenize_example(messages: list[dict], tokenizer, max_length: int | None) -> dict | None:
    """One chat example -> `input_ids`, `labels`, `prompt_length`; None if the prompt leaves no room for a response."""
    prompt_ids = chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    full_ids = chat_ids(tokenizer, messages, add_generation_prompt=False)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise TetherInputError(
            "the chat template renders the prompt differently alone and with its response, so response tokens "
            "cannot be located; use a chat template whose generation prompt is a prefix of the full conversation"
        )
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            return None
        full_ids = full_ids[:max_length]
    labels = [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids) :]
    return {"input_ids": full_ids, "labels": labels, "prompt_length": len(prompt_ids)}


def token_risks(messages: list[dict], risk_chunks: list, tokenizer, tokens: dict) -> list[float]:
    """The risk of each token of a tokenized example (NaN on the prompt) from `risk_chunks`, [partial response, risk]
    pairs in order: a response token takes the risk of the first partial response whose rendering reaches it (the
    template's tokens after the response excluded), and tokens past the last one take the last one's."""
    prompt_length, length = tokens["prompt_length"], len(tokens["input_ids"])
    prompt = messages[:-1]
    tail = len(chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": ""}], False)) - prompt_length
    ends = [
        len(chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": part}], False)) - tail
        for part, _ in risk_chunks
    ]
    risks = [math.nan] * prompt_length
    chunk = 0
    for position in range(prompt_length, length):
        while chunk < len(ends) - 1 and position >= ends[chunk]:
            chunk += 1
        risks.append(float(risk_chunks[chunk][1]))
    return risks


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def tokenize_rows(rows: list[dict], tokenizer, max_length: int | None) -> tuple[Dataset, int]:
    """Tokenize chat rows into a `Dataset`; returns it and how many rows were dropped (prompt ≥ max_length)."""
    records, dropped = [], 0
    for row in rows:
        tokens = tokenize_example(row["messages"], tokenizer, max_length)
        if tokens is None:
            dropped += 1
            continue
        record = {**tokens, "risk": float(row.get("risk", "nan"))}  # NaN: no risk label
        if "risk_chunks" in row:  # a safety trajectory of the response (STAR-DSS's guardrail)
            record["token_risk"] = token_risks(row["messages"], row["risk_chunks"], tokenizer, tokens)
        records.append(record)
    if not records:
        raise TetherInputError(f"every prompt is at least max_length={max_length} tokens long; raise max_length")
    return Dataset.from_list(records), dropped


def pad_token_ids(rows: list[list[int]], pad_token_id: int, side: str = "right"):
    """Token id lists -> `input_ids` (B, T) padded with `pad_token_id` on `side`, and `attention_mask` (B, T)."""
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(row)
        attention_mask[i, span] = 1
    return input_ids, attention_mask


@dataclass
class TetherCollator:
    """Right-pads `input_ids` (pad id), `labels` (-100) and builds `attention_mask`; stacks `risk` and
    `prompt_length` as (B,) tensors. Right padding keeps every real token's position id equal to its index."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
        for i, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[i, :n] = torch.tensor(example["input_ids"])
            labels[i, :n] = torch.tensor(example["labels"])
            attention_mask[i, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "risk": torch.tensor([float(e.get("risk", "nan")) for e in examples]),  # (B,), NaN where unlabelled
            "prompt_length": torch.tensor([e["prompt_length"] for e in examples]),  # (B,)
        } | self.token_risk(examples, width)

    @staticmethod
    def token_risk(examples: list[dict], width: int) -> dict[str, torch.Tensor]:
        """`token_risk` (B, T), NaN-padded, when the examples carry a per-token risk (a safety trajectory)."""
        if "token_risk" not in examples[0]:
            return {}
        risk = torch.full((len(examples), width), math.nan)  # (B, T)
        for i, example in enumerate(examples):
            risk[i, : len(example["token_risk"])] = torch.tensor(example["token_risk"])
        return {"token_risk": risk}
