"""Batched greedy generation with left padding; every setting is returned so that results can record it."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 256, batch_size: int = 16, progress: bool = True
) -> list[str]:
    """Greedy continuations of chat prompts, in the order given.

    Prompts are sorted by length so that each left-padded batch wastes little; the outputs are put back in order.
    """
    from tqdm.auto import tqdm

    from tether.data.chat import pad_token_ids

    ids = [
        list(tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
        for p in prompts
    ]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(ids)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch", disable=not progress):
            batch = order[start : start + batch_size]
            # left padding: every prompt ends at the last column
            input_ids, attention_mask = pad_token_ids([ids[i] for i in batch], tokenizer.pad_token_id, "left")
            width = input_ids.shape[1]
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )  # (B, T + new)
            for row, i in enumerate(batch):
                outputs[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return outputs


def generation_settings(max_new_tokens: int, batch_size: int) -> dict:
    return {
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "padding": "left",
        "chat_template": True,
    }
