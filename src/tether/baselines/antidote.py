"""Antidote (Huang et al., ICML 2025, `docs/method.md` §6): after fine-tuning, zero the weights that matter most to
harmful text, by a Wanda-style importance |W_ij| · ‖X_j‖₂ measured on a small harmful re-alignment set.

X_j is input feature j of a linear layer over every real (non-padding) token of the harmful rows, prompt and
response. In each weight matrix the `ratio` share of entries with the highest importance is set to zero.
Under LoRA only the adapter (the fine-tuning update: `lora_A`, `lora_B`) is pruned, so the safe reference's own
weights are never touched; for a fully fine-tuned model every linear layer of the decoder is (not the output head).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from tether.errors import TetherInputError
from tether.run_files import locks_output


def prunable_linears(model) -> dict[str, nn.Linear]:
    """The linear layers Antidote may prune, by module name: the LoRA adapter's if there is one, else every linear
    layer except the output head."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    adapter = {name: m for name, m in linears.items() if ".lora_A." in name or ".lora_B." in name}
    if adapter:
        return adapter
    head = model.get_output_embeddings()
    return {name: m for name, m in linears.items() if m is not head}


@contextlib.contextmanager
def record_input_norms(layers: dict[str, nn.Linear]):
    """While active, accumulates Σ x_j² over the real tokens of every forward pass into `sums[name]` (d_in,).
    Set `mask[0]` to the batch's attention mask (B, T) before each forward pass."""
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}
    mask: list[torch.Tensor | None] = [None]

    def hook(module, args, name):
        x = args[0].detach().to(torch.float64)  # (B, T, d_in)
        weights = mask[0].to(x.device, x.dtype).unsqueeze(-1)  # (B, T, 1): 0 on padding
        sums[name] += (x.square() * weights).sum(dim=(0, 1)).cpu()

    handles = [
        layer.register_forward_pre_hook(lambda m, a, name=name: hook(m, a, name)) for name, layer in layers.items()
    ]
    try:
        yield sums, mask
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def input_norms(model, pad_token_id: int, ids: list[list[int]], layers: dict[str, nn.Linear], batch_size: int = 8):
    """‖X_j‖₂ over every real token of the token sequences `ids`, per layer: {name: (d_in,) float64}. Independent
    of the batch size (padding is masked out)."""
    from tqdm.auto import tqdm

    from tether.data.chat import pad_token_ids

    if not ids:
        raise TetherInputError("Antidote needs at least one harmful row to measure activations on")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with record_input_norms(layers) as (sums, mask):
            for start in tqdm(range(0, len(ids), batch_size), desc="antidote activations", unit="batch", leave=False):
                input_ids, attention_mask = pad_token_ids(ids[start : start + batch_size], pad_token_id)  # (B, T)
                mask[0] = attention_mask
                model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    finally:
        model.train(was_training)
    return {name: total.sqrt() for name, total in sums.items()}


def harmful_weight_mask(weight: torch.Tensor, norms: torch.Tensor, ratio: float) -> torch.Tensor:
    """weight (d_out, d_in), norms (d_in,) -> bool (d_out, d_in): the round(ratio · numel) entries of highest
    |W_ij| · ‖X_j‖ (ties broken by position)."""
    check_ratio(ratio)
    importance = weight.detach().abs().to(torch.float64) * norms.to(weight.device, torch.float64).unsqueeze(0)
    k = round(ratio * importance.numel())
    mask = torch.zeros(importance.numel(), dtype=torch.bool, device=weight.device)
    if k:
        mask[importance.flatten().topk(k).indices] = True
    return mask.view_as(weight)


def check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise TetherInputError(
            f"Antidote ratio must be in [0, 1] (the share of each weight matrix pruned), got {ratio}"
        )


@torch.no_grad()
def antidote_prune(model, tokenizer, rows: list[dict], ratio: float, batch_size: int = 8, max_length: int = 256):
    """Prune `model` in place (see the module doc); returns {"pruned": n, "total": n, "layers": {name: n}}."""
    from tether.data.chat import tokenize_example

    check_ratio(ratio)
    ids = [tokens["input_ids"] for row in rows if (tokens := tokenize_example(row["messages"], tokenizer, max_length))]
    layers = prunable_linears(model)
    norms = input_norms(model, tokenizer.pad_token_id, ids, layers, batch_size)
    counts = {}
    for name, layer in layers.items():
        mask = harmful_weight_mask(layer.weight, norms[name], ratio)
        layer.weight[mask] = 0.0
        counts[name] = int(mask.sum())
    total = sum(layer.weight.numel() for layer in layers.values())
    return {"pruned": sum(counts.values()), "total": total, "rows": len(ids), "layers": counts}


@locks_output("out", option="--out")
def antidote_to_dir(
    model: str,
    data: list[str],
    out: str | Path,
    *,
    ratio: float = 0.1,
    limit: int | None = None,
    data_dir: str | None = None,
    batch_size: int = 8,
    max_length: int = 256,
) -> Path:
    """What `tether antidote` does: prune `model` (a tether run directory, whose LoRA adapter is pruned, or a model)
    on the first `limit` rows of the harmful chat `data` and save it as the plain model directory `out`, with
    `antidote.json` (these arguments and the counts); returns `out`. Bad input raises a one-line `TetherInputError`
    before the model is loaded; `out` appears only when complete."""
    from tether.data.sources import load_examples
    from tether.model_card import derived_card
    from tether.modeling import check_trained_files, load_trained, save_model_dir

    check_ratio(ratio)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TetherInputError(f"--out {out} already exists and is not empty; pass another directory")
    if limit is not None and limit < 1:
        raise TetherInputError(f"--limit must be at least 1, got {limit}")
    for flag, value in (("--batch_size", batch_size), ("--max_length", max_length)):
        if value < 1:
            raise TetherInputError(f"{flag} must be at least 1, got {value}")
    check_trained_files(model)
    rows = [row for source in data for row in load_examples(source, data_dir)][:limit]
    if not rows:
        raise TetherInputError(f"--data {' '.join(data)} holds no rows; pass harmful chat data")
    pruned, tokenizer = load_trained(model, merge=False)
    summary = antidote_prune(pruned, tokenizer, rows, ratio, batch_size, max_length)
    if hasattr(pruned, "merge_and_unload"):  # a LoRA run: the pruned adapter joins the base weights
        pruned = pruned.merge_and_unload()
    record = {"model": str(model), "data": list(data), "limit": limit, "ratio": ratio, **summary}
    how = f"Antidote: {ratio:.1%} of the adapter's weights pruned by |W|·‖X‖ on {limit} rows of {', '.join(data)}"
    card = derived_card(Path(out).name, str(model), how, {"pruned": summary["pruned"], "of": summary["total"]})
    save_model_dir(pruned, tokenizer, out, {"antidote.json": json.dumps(record, indent=1), "README.md": card})
    share = summary["pruned"] / summary["total"]
    print(
        f"pruned {summary['pruned']:,} of {summary['total']:,} weights ({share:.1%}) in {len(summary['layers'])} "
        f"matrices, measured on {summary['rows']} rows; model: {out}"
    )
    return out
