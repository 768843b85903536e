"""Safe LoRA (Hsu et al., NeurIPS 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large
Language Models"; `IBM/SafeLoRA`): after fine-tuning, data-free, per LoRA layer.

The alignment direction of each adapted weight is V = W_aligned − W_unaligned, the difference between the safe
reference (the adapter's base) and the model it was aligned from; its projection is C = V Vᵀ / ‖V‖_F (the official
code's normalization). For each LoRA layer with update ΔW = B A, the cosine between C ΔW and ΔW (flattened) says how
much of the update lies along the alignment direction; the layers with the lowest cosine (`num_layers`, the official
default 10) or every layer at or below `threshold` get B ← C B, the rest keep their update. The projected adapter is
merged into the reference and saved as a plain model directory with `safe_lora.json` (each layer's cosine, which
were projected).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tether.errors import TetherInputError
from tether.run_files import locks_output


def alignment_differences(unaligned, aligned, names: list[str], option: str) -> dict[str, torch.Tensor]:
    """V = W_aligned − W_unaligned (out, in), float32, for each module `name` ("model.layers.0.self_attn.q_proj"); a
    weight `unaligned` lacks or shapes otherwise is an error naming `option`, the input that gave it."""
    base, safe = dict(unaligned.named_modules()), dict(aligned.named_modules())
    differences = {}
    for name in names:
        if name not in base or base[name].weight.shape != safe[name].weight.shape:
            raise TetherInputError(
                f"{option} has no weight {name} of the aligned model's shape; pass the model the reference was "
                "aligned from (same architecture)"
            )
        differences[name] = (safe[name].weight - base[name].weight).detach().float()  # (out, in)
    return differences


def alignment_projections(unaligned, aligned, names: list[str]) -> dict[str, torch.Tensor]:
    """C = V Vᵀ / ‖V‖_F, V = W_aligned − W_unaligned, for each module `name` (`alignment_differences`)."""
    projections = {}
    for name, v in alignment_differences(unaligned, aligned, names, "--unaligned").items():
        norm = torch.linalg.matrix_norm(v)
        projections[name] = v @ v.T / norm if norm > 0 else torch.zeros(v.shape[0], v.shape[0])  # (out, out)
    return projections


def lora_layers(peft_model) -> dict[str, torch.nn.Module]:
    """The LoRA-adapted linear layers of a `PeftModel`, by the name of the module they wrap in the base model."""
    layers = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            layers[name.removeprefix("base_model.model.")] = module
    return layers


@torch.no_grad()
def safe_lora_project(
    peft_model, projections: dict[str, torch.Tensor], num_layers: int | None = 10, threshold: float | None = None
) -> dict:
    """Project the chosen LoRA layers in place (module docstring); returns {name: cosine} and the projected names."""
    layers = lora_layers(peft_model)
    cosines = {}
    for name, module in layers.items():
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight  # (r, in), (out, r)
        update = (b @ a).float()  # (out, in)
        projected = projections[name].to(update.device) @ update
        if not update.any():  # an update of zero has nothing to project
            cosines[name] = 1.0
            continue
        cosines[name] = float(torch.nn.functional.cosine_similarity(projected.reshape(1, -1), update.reshape(1, -1)))
    order = sorted(cosines, key=cosines.get)
    chosen = order[:num_layers] if threshold is None else [n for n in order if cosines[n] <= threshold]
    for name in chosen:
        b = layers[name].lora_B["default"].weight
        b.copy_((projections[name].to(b.device) @ b.float()).to(b.dtype))
    return {"cosines": cosines, "projected": chosen}


@locks_output("out", option="--out")
def safe_lora_to_dir(
    model: str,
    unaligned: str,
    out: str | Path,
    *,
    num_layers: int | None = None,
    threshold: float | None = None,
) -> Path:
    """What `tether safelora` does: project the LoRA adapter of the tether run `model` (whose base is the safe
    reference) with the alignment directions from `unaligned` to that reference, merge, and save as the plain model
    directory `out`. Bad input raises a one-line `TetherInputError` before a model is loaded."""
    from tether.model_card import derived_card
    from tether.modeling import check_trained_files, load_model_and_tokenizer, load_trained, save_model_dir

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TetherInputError(f"--out {out} already exists and is not empty; pass another directory")
    if num_layers is not None and threshold is not None:
        raise TetherInputError("pass one of --num_layers (project the N least aligned layers) and --threshold")
    if num_layers is None and threshold is None:
        num_layers = 10  # the official default
    if num_layers is not None and num_layers < 1:
        raise TetherInputError(f"--num_layers must be at least 1, got {num_layers}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise TetherInputError(f"--threshold is a cosine in [-1, 1], got {threshold}")
    if not (Path(model) / "adapter").is_dir():
        raise TetherInputError(f"--model {model} is not a LoRA run directory (no adapter/); Safe LoRA needs one")
    reference = check_trained_files(model)
    check_trained_files(unaligned)
    peft_model, tokenizer = load_trained(model, merge=False)
    names = list(lora_layers(peft_model))
    base, _ = load_model_and_tokenizer(unaligned)
    projections = alignment_projections(base, peft_model.get_base_model(), names)
    del base
    summary = safe_lora_project(peft_model, projections, num_layers, threshold)
    merged = peft_model.merge_and_unload()
    record = {"model": str(model), "reference": reference, "unaligned": unaligned, "num_layers": num_layers}
    record |= {"threshold": threshold, **summary}
    how = f"Safe LoRA: {len(summary['projected'])} of {len(names)} LoRA layers projected onto the alignment directions"
    card = derived_card(out.name, str(model), how, {"unaligned model": unaligned, "reference": reference})
    save_model_dir(merged, tokenizer, out, {"safe_lora.json": json.dumps(record, indent=1), "README.md": card})
    print(f"projected {len(summary['projected'])} of {len(names)} LoRA layers; model: {out}")
    return out
