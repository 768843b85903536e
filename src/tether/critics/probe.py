"""Activation-probe critic: logistic regression on the reference model's hidden states at the last prompt token.

The last prompt token is the final token of the chat template's generation prompt, whose output predicts the first
response token (`docs/method.md` §2). Layer index ℓ means the output of block ℓ, 0 the embeddings. The features of
the selected layers are pooled (`last-layer`, `mean`, `max`, `weighted`, `concat`), standardized, and scored by an
L2-regularized, class-balanced logistic regression whose output is calibrated by Platt scaling on a held-out split:
risk s = calibrated P(harmful | prompt).

In training (`critic: probe`), the features come from the reference forward pass that the KL term already runs:
with causal attention the hidden state at the last prompt position depends only on the prompt, so the probe costs a
gather and a dot product. The probe is saved without pickle: `probe.safetensors` (numbers) + `probe.json` (metadata,
including a fingerprint of the model it was fit on; loading it onto another model is an error).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tether.errors import TetherInputError
from tether.run_files import atomic_dir

POOLINGS = ("last-layer", "mean", "max", "weighted", "concat")
POSITIONS = ("prompt", "response", "both")
# which of a prompt's tokens: its last one, the mean of all of them, or the template span (the instruction's last token
# and every chat-template token after it, side by side)
TOKEN_POOLINGS = ("last", "mean", "template")
PROBE_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------------------
# Features


def decoder_of(model):
    """The decoder stack (with `embed_tokens` and `layers`) of a causal LM, under PEFT or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def num_blocks(model) -> int:
    return len(decoder_of(model).layers)


def layer_module(model, layer: int):
    """The module whose output is hidden_states[layer]: the embeddings for 0, else block `layer`."""
    decoder = decoder_of(model)
    return decoder.embed_tokens if layer == 0 else decoder.layers[layer - 1]


def check_layers(model, layers: list[int]) -> None:
    n = num_blocks(model)
    bad = [layer for layer in layers if not 0 <= layer <= n]
    if bad or not layers:
        raise TetherInputError(
            f"probe layer(s) {bad or layers} out of range: the model has {n} blocks, "
            f"so layers are 0 (embeddings) to {n}"
        )


@contextlib.contextmanager
def capture_layer_states(
    model, layers: list[int], rows: torch.Tensor, cols: torch.Tensor, token_weights: torch.Tensor | None = None
):
    """While active, a forward of `model` stores hidden_states[ℓ] at (rows, cols) in `captured[ℓ]` (n, d) float32;
    with 2-D rows and cols (n, P), the P states of each row side by side, (n, P·d); with `token_weights` (n, T), the
    weighted sum over positions of batch row `rows` instead (`cols` unused)."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        module = layer_module(model, layer)

        def keep(module, args, output, layer=layer):
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, d)
            if token_weights is None:
                captured[layer] = hidden[rows, cols].detach().float().flatten(1)  # (n, d), or (n, P·d)
            else:
                captured[layer] = torch.einsum("nt,ntd->nd", token_weights, hidden[rows].detach().float())

        handles.append(module.register_forward_hook(keep))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by `stop_after_layer` once the deepest layer a probe reads has run."""


@contextlib.contextmanager
def stop_after_layer(model, layer: int):
    """While active, a forward of `model` stops (raises `StopForward`) right after hidden_states[layer] is computed:
    the blocks above it and the LM head, unused by a probe, are skipped. Register after `capture_layer_states`."""
    module = layer_module(model, layer)

    def stop(module, args, output):
        raise StopForward

    handle = module.register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


def stack_layers(captured: dict[int, torch.Tensor], layers: list[int]) -> torch.Tensor:
    return torch.stack([captured[layer] for layer in layers], dim=1)  # (n, L, d)


def template_span(tokenizer) -> int:
    """How many positions `tokens: template` reads: the last token of the user's message and every token the chat
    template puts after it (end of turn, generation prompt). The template's tokens are the longest common suffix of
    two prompts whose messages end differently."""
    a, b = (
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
        for text in ("Name a colour.", "Count to three!")
    )
    common = 0
    while common < min(len(a), len(b)) and a[-1 - common] == b[-1 - common]:
        common += 1
    if common >= min(len(a), len(b)):
        raise TetherInputError("the chat template hides the user's message; use `tokens: last` for this model")
    return common + 1


def template_positions(rows: torch.Tensor, last: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows (B,) batch rows and last (B,) index of each one's last prompt token -> the template span's (rows, cols),
    (B, span) each, in order: index a (B, T, d) hidden state with them for (B, span, d)."""
    cols = last[:, None] - torch.arange(span - 1, -1, -1, device=last.device)[None]  # (B, span)
    return rows[:, None].expand(-1, span), cols


def prompt_features(
    model,
    tokenizer,
    prompts: list[list[dict]],
    layers: list[int],
    batch_size: int = 16,
    desc: str = "features",
    padding_side: str = "right",
    tokens: str = "last",
) -> torch.Tensor:
    """Hidden states of `layers` at each prompt's last token (after the generation prompt), their mean over the
    prompt's tokens (`tokens="mean"`): (n, L, d) float32, or the template span's states side by side
    (`tokens="template"`, `template_span`): (n, L, span·d)."""
    ids = [
        list(tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
        for p in prompts
    ]
    span = template_span(tokenizer) if tokens == "template" else 1
    return last_token_features(model, tokenizer.pad_token_id, ids, layers, batch_size, desc, padding_side, tokens, span)


def response_features(
    model,
    tokenizer,
    rows: list[dict],
    layers: list[int],
    batch_size: int = 16,
    desc: str = "features",
    max_length: int | None = None,
) -> torch.Tensor:
    """Hidden states of `layers` at the last token of each chat row's response (prompt + response): (n, L, d).

    The same tokens as in training (`tokenize_example`), so the state equals the one the trainer reads at the end of
    the (possibly truncated) response."""
    from tether.data.chat import tokenize_example

    ids = [tokenize_example(row["messages"], tokenizer, max_length)["input_ids"] for row in rows]
    return last_token_features(model, tokenizer.pad_token_id, ids, layers, batch_size, desc)


def chat_row_features(
    model,
    tokenizer,
    rows: list[dict],
    layers: list[int],
    position: str,
    batch_size: int = 16,
    desc: str = "features",
    max_length: int | None = None,
) -> torch.Tensor:
    """Features of chat rows for a `response` probe, (n, L, d), or a `both` probe, (n, 2L, d): the L states at the
    last prompt token followed by the L states at the last response token."""
    response = response_features(model, tokenizer, rows, layers, batch_size, desc, max_length)
    if position == "response":
        return response
    prompt = prompt_features(model, tokenizer, [row["messages"][:-1] for row in rows], layers, batch_size, desc)
    return torch.cat([prompt, response], dim=1)  # (n, 2L, d)


@torch.no_grad()
def last_token_features(
    model,
    pad_token_id: int,
    ids: list[list[int]],
    layers: list[int],
    batch_size: int = 16,
    desc: str = "features",
    padding_side: str = "right",
    tokens: str = "last",
    span: int = 1,
) -> torch.Tensor:
    """Hidden states of `layers` at the last token of each token sequence (or their mean over the sequence's tokens,
    `tokens="mean"`): (n, L, d) float32; with `tokens="template"`, the last `span` tokens' states side by side,
    (n, L, span·d).

    With right padding the last token of row i sits at len_i − 1; with left padding at T − 1, and position ids are
    counted over the attention mask so that padding does not shift them.
    """
    from tqdm.auto import tqdm

    from tether.data.chat import pad_token_ids

    check_layers(model, layers)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in tqdm(range(0, len(ids), batch_size), desc=desc, unit="batch", leave=False):
            chunk = ids[start : start + batch_size]
            input_ids, attention_mask = pad_token_ids(chunk, pad_token_id, padding_side)  # (B, T), (B, T)
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, T)
            rows = torch.arange(len(chunk))
            cols = attention_mask.cumsum(1).argmax(1)  # (B,) index of the last real token
            if tokens == "template":
                if min(map(len, chunk)) < span:
                    raise TetherInputError(f"a prompt is shorter than the template's {span} tokens; use tokens last")
                rows, cols = template_positions(rows, cols, span)  # (B, span) each
            weights = (attention_mask / attention_mask.sum(1, keepdim=True)).to(device) if tokens == "mean" else None
            with (
                capture_layer_states(model, layers, rows.to(device), cols.to(device), weights) as captured,
                stop_after_layer(model, max(layers)),
            ):
                try:
                    model(
                        input_ids=input_ids.to(device),
                        attention_mask=attention_mask.to(device),
                        position_ids=position_ids.to(device),
                        use_cache=False,
                    )
                except StopForward:
                    pass
            out.append(stack_layers(captured, layers).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def pool(features: torch.Tensor, pooling: str, layer_weights: torch.Tensor | None = None) -> torch.Tensor:
    """features (n, L, d) -> (n, F): F = d, or L·d for `concat`."""
    if pooling == "last-layer":
        return features[:, -1]
    if pooling == "mean":
        return features.mean(1)
    if pooling == "max":
        return features.amax(1)
    if pooling == "weighted":
        return torch.einsum("nld,l->nd", features, layer_weights)
    if pooling == "concat":
        return features.flatten(1)
    raise TetherInputError(f"probe pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def pool_positions(
    features: torch.Tensor, pooling: str, layer_weights: torch.Tensor | None = None, position: str = "prompt"
) -> torch.Tensor:
    """`pool`, except for `position: both`: (n, 2L, d) -> (n, 2F), each position's layers pooled on their own."""
    if position != "both":
        return pool(features, pooling, layer_weights)
    prompt, response = features.chunk(2, dim=1)  # (n, L, d) each
    return torch.cat([pool(prompt, pooling, layer_weights), pool(response, pooling, layer_weights)], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Model fingerprint


def model_fingerprint(model, tokenizer) -> dict:
    """Architecture, a hash of a few weight tensors and of the chat template: what a probe must match."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    base_params = [p for name, p in decoder_of(model).named_parameters() if "lora_" not in name]  # not the adapter
    digest = hashlib.sha256()
    for tensor in base_params[:3] + base_params[-1:]:
        digest.update(tensor.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return {
        "name": getattr(config, "_name_or_path", ""),
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "weights_sha256": digest.hexdigest()[:16],
        "chat_template_sha256": hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16],
    }


# ---------------------------------------------------------------------------------------------------------------------
# The probe


@dataclass
class LinearProbe:
    """A fitted probe: pool -> standardize -> logistic regression -> Platt calibration. All tensors float32."""

    layers: list[int]
    pooling: str
    mean: torch.Tensor  # (F,)
    std: torch.Tensor  # (F,)
    coef: torch.Tensor  # (F,)
    intercept: float
    platt_scale: float
    platt_bias: float
    layer_weights: torch.Tensor | None = None  # (L,), for `weighted`
    metadata: dict = field(default_factory=dict)
    position: str = "prompt"  # `prompt`: last prompt token; `response`: last response token; `both`: the two
    tokens: str = "last"  # `position: prompt` only: `mean` over the prompt's tokens, `template` the template span

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        """features (n, L, d) ((n, L, span·d) for `tokens: template`), or (n, 2L, d) for `position: both` ->
        uncalibrated logit (n,)."""
        x = pool_positions(features.float(), self.pooling, self.layer_weights, self.position)  # (n, F)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x @ self.coef.to(x.device) + self.intercept

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """features (n, L, d) -> calibrated P(harmful) (n,) in [0, 1]."""
        return torch.sigmoid(self.platt_scale * self.logit(features) + self.platt_bias)

    def save(self, directory: str | Path) -> None:
        """`probe.safetensors` + `probe.json`, written to a staging folder and renamed: never half-written."""
        from safetensors.torch import save_file

        directory = Path(directory)
        if directory.exists():
            raise TetherInputError(f"probe output {directory} already exists; pass another --out")
        with atomic_dir(directory) as staging:
            tensors = {"mean": self.mean, "std": self.std, "coef": self.coef}
            if self.layer_weights is not None:
                tensors["layer_weights"] = self.layer_weights
            save_file({k: v.contiguous().float() for k, v in tensors.items()}, staging / "probe.safetensors")
            meta = {
                "format": PROBE_FORMAT,
                "layers": self.layers,
                "pooling": self.pooling,
                "position": self.position,
                "tokens": self.tokens,
                "intercept": self.intercept,
                "platt_scale": self.platt_scale,
                "platt_bias": self.platt_bias,
                **self.metadata,
            }
            (staging / "probe.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> LinearProbe:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "probe.json").is_file() or not (directory / "probe.safetensors").is_file():
            raise TetherInputError(f"{directory} is not a probe: it needs probe.json and probe.safetensors")
        try:
            meta = json.loads((directory / "probe.json").read_text())
            tensors = load_file(directory / "probe.safetensors")
            probe = cls(
                layers=[int(layer) for layer in meta.pop("layers")],
                pooling=meta.pop("pooling"),
                mean=tensors["mean"],
                std=tensors["std"],
                coef=tensors["coef"],
                intercept=float(meta.pop("intercept")),
                platt_scale=float(meta.pop("platt_scale")),
                platt_bias=float(meta.pop("platt_bias")),
                layer_weights=tensors.get("layer_weights"),
                position=meta.pop("position", "prompt"),
                tokens=meta.pop("tokens", "last"),
                metadata=meta,
            )
        except (json.JSONDecodeError, SafetensorError, KeyError, ValueError, TypeError) as error:
            raise TetherInputError(
                f"probe {directory} is corrupted ({type(error).__name__}: {error}); refit it"
            ) from None
        if (
            not probe.coef.shape == probe.mean.shape == probe.std.shape
            or probe.position not in POSITIONS
            or probe.tokens not in TOKEN_POOLINGS
        ):
            raise TetherInputError(f"probe {directory} is corrupted (tensor shapes, position or tokens); refit it")
        return probe

    def check_model(self, model, tokenizer) -> None:
        """Refuse a model (or chat template) other than the one the probe was fit on."""
        expected = self.metadata.get("model", {})
        actual = model_fingerprint(model, tokenizer)
        diffs = [
            key
            for key in ("hidden_size", "num_hidden_layers", "weights_sha256", "chat_template_sha256")
            if expected.get(key) != actual[key]
        ]
        if diffs:
            raise TetherInputError(
                f"the probe was fit on another model ({expected.get('name') or '?'}: {', '.join(diffs)} differ); "
                "refit it with `tether probe fit` on this model"
            )


# ---------------------------------------------------------------------------------------------------------------------
# Fitting and metrics


MIN_PROMPTS, MIN_PROMPTS_CV = 3, 10  # per class: a 20% stratified calibration split; then 5 folds of the other 80%


def check_probe_size(n_harmful: int, n_benign: int, C: float | None) -> None:
    """A stratified calibration split, and with C=None 5-fold cross-validation on the rest, need a few of each class."""
    least = MIN_PROMPTS_CV if C is None else MIN_PROMPTS
    if min(n_harmful, n_benign) < least:
        how = "C is chosen by 5-fold cross-validation after a calibration split" if C is None else "calibration split"
        raise TetherInputError(
            f"a probe needs at least {least} harmful and {least} benign prompts ({how}); got {n_harmful} harmful "
            f"and {n_benign} benign: pass more prompts" + (", or a fixed C (--C)" if C is None else "")
        )


def fit_probe(
    harmful: torch.Tensor,
    benign: torch.Tensor,
    layers: list[int],
    pooling: str = "mean",
    C: float | None = None,
    calibration_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    class_weight: str | None = "balanced",
    position: str = "prompt",
) -> LinearProbe:
    """Fit on features (n, L, d) of harmful and benign prompts ((n, 2L, d) for `position: both`, see
    `chat_row_features`). C=None picks it by 5-fold cross-validation.

    A stratified `calibration_fraction` is held out: the logistic regression is fit on the rest, Platt scaling on it.
    `standardize=False` and `class_weight=None` exist for ablations (`benchmarks/probe_ablation.py`).
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import train_test_split

    if len(harmful) == 0 or len(benign) == 0:
        raise TetherInputError("a probe needs at least one harmful and one benign prompt; both sets must be non-empty")
    if pooling not in POOLINGS:
        raise TetherInputError(f"probe pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    if position not in POSITIONS:
        raise TetherInputError(f"probe position must be one of {', '.join(POSITIONS)}; got {position!r}")
    if position == "both" and pooling == "weighted":
        raise TetherInputError("pooling 'weighted' does not combine with position 'both'; use mean, max or concat")
    check_probe_size(len(harmful), len(benign), C)
    features = torch.cat([harmful, benign]).float()  # (n, L, d)
    labels = np.r_[np.ones(len(harmful)), np.zeros(len(benign))]
    train, calib = train_test_split(
        np.arange(len(labels)), test_size=calibration_fraction, stratify=labels, random_state=seed
    )
    layer_weights = None
    if pooling == "weighted":  # w_ℓ ∝ max(AUROC_ℓ − 0.5, 0) of one-layer probes, measured on the held-out split
        aurocs = torch.tensor(
            [
                auroc(
                    labels[calib],
                    fit_probe(
                        features[train][labels[train] == 1][:, [i]],
                        features[train][labels[train] == 0][:, [i]],
                        [layers[i]],
                        "last-layer",
                        C=1.0,
                        seed=seed,
                    )
                    .logit(features[calib][:, [i]])
                    .numpy(),
                )
                for i in range(len(layers))
            ]
        )
        layer_weights = (aurocs - 0.5).clamp(min=0)
        layer_weights = (
            layer_weights / layer_weights.sum()
            if layer_weights.sum() > 0
            else torch.full_like(layer_weights, 1 / len(layers))
        )
    x = pool_positions(features, pooling, layer_weights, position).numpy()  # (n, F)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    if not standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    z = (x - mean) / std
    if C is None:
        model = LogisticRegressionCV(
            Cs=[1e-3, 1e-2, 1e-1, 1.0, 10.0],
            cv=5,
            class_weight=class_weight,
            max_iter=3000,
            scoring="roc_auc",
            random_state=seed,
        )
    else:
        model = LogisticRegression(C=C, class_weight=class_weight, max_iter=3000, random_state=seed)
    model.fit(z[train], labels[train])
    logits = z[calib] @ model.coef_[0] + model.intercept_[0]
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(logits[:, None], labels[calib])
    return LinearProbe(
        layers=list(layers),
        pooling=pooling,
        mean=torch.tensor(mean, dtype=torch.float32),
        std=torch.tensor(std, dtype=torch.float32),
        coef=torch.tensor(model.coef_[0], dtype=torch.float32),
        intercept=float(model.intercept_[0]),
        platt_scale=float(platt.coef_[0, 0]),
        platt_bias=float(platt.intercept_[0]),
        layer_weights=layer_weights,
        position=position,
        metadata={
            "C": float(np.atleast_1d(getattr(model, "C_", [C]))[0]),
            "n_harmful": len(harmful),
            "n_benign": len(benign),
            "calibration_fraction": calibration_fraction,
            "seed": seed,
        },
    )


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def probe_metrics(harmful_scores: np.ndarray, benign_scores: np.ndarray, threshold: float = 0.5) -> dict:
    """AUROC, accuracy at `threshold`, recall at 1% and 5% false-positive rate, false-positive rate at `threshold`."""
    from sklearn.metrics import roc_curve

    labels = np.r_[np.ones(len(harmful_scores)), np.zeros(len(benign_scores))]
    scores = np.r_[harmful_scores, benign_scores]
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": auroc(labels, scores),
        "accuracy": float(((scores >= threshold) == labels).mean()),
        "recall_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "recall_at_5pct_fpr": float(np.interp(0.05, fpr, tpr)),
        "fpr_at_threshold": float((benign_scores >= threshold).mean()),
        "recall_at_threshold": float((harmful_scores >= threshold).mean()),
        "n_harmful": int(len(harmful_scores)),
        "n_benign": int(len(benign_scores)),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The critic


@dataclass
class ProbeReads:
    """Where `ProbeCritic` reads the reference pass (`tether.critics.base.ReferenceReads`): the probe's `layers`, at
    the last prompt token (`position: prompt`; `tokens: mean` averages the prompt's tokens, `tokens: template` takes
    the template span), at the last response token (`response`), or at both side by side (`both`)."""

    layers: list[int]
    position: str = "prompt"
    tokens: str = "last"
    span: int = 1  # positions of `tokens: template`

    def locate(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Batch rows and columns to read (1-D, or (B, span) for `template`), or token weights (B, T) for `mean`."""
        input_ids = inputs["input_ids"]  # (B, T), right padding
        batch_rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # (B,)
        last_prompt = inputs["prompt_length"] - 1  # (B,): causal, so this state depends on the prompt only
        last_response = inputs["attention_mask"].sum(1) - 1  # (B,) the last response token
        rows, cols = {
            "prompt": (batch_rows, last_prompt),
            "response": (batch_rows, last_response),
            "both": (batch_rows.repeat(2), torch.cat([last_prompt, last_response])),  # (2B,), (2B,)
        }[self.position]
        if self.tokens == "template":  # the instruction's last token and the template after it: (B, span) each
            rows, cols = template_positions(batch_rows, last_prompt, self.span)
        token_weights = None
        if self.tokens == "mean":  # the mean over each prompt's tokens
            in_prompt = torch.arange(input_ids.shape[1], device=input_ids.device) < inputs["prompt_length"][:, None]
            token_weights = in_prompt.float() / inputs["prompt_length"][:, None]  # (B, T)
        return rows, cols, token_weights

    def features(self, captured: dict[int, torch.Tensor]) -> torch.Tensor:
        """(B, L, d), (B, L, span·d) for `template`, or (B, 2L, d) for `both`: prompt states, then response."""
        features = stack_layers(captured, self.layers)  # (B, L, ·) or (2B, L, d)
        if self.position == "both":
            features = torch.cat(features.chunk(2), dim=1)  # (B, 2L, d)
        return features


class ProbeCritic:
    """`critic: probe`: risk = the probe's calibrated P(harmful) from the reference pass's states.

    `reference_reads` tells the trainer which states to capture in the reference forward pass (`ProbeReads`); the
    trainer puts them in the batch as `reference_features`, (B, L, d), (B, L, span·d) or (B, 2L, d).
    """

    name = "probe"
    needs = frozenset({"reference_features"})

    def __init__(self, probe_path: str | Path | None = None, probe: LinearProbe | None = None):
        if probe is None and probe_path is None:
            raise TetherInputError("critic 'probe' needs probe_path; fit one with `tether probe fit`")
        self.probe = probe or LinearProbe.load(probe_path)
        self.layers = self.probe.layers
        self.position = self.probe.position
        self.tokens = self.probe.tokens

    @classmethod
    def from_config(cls, config) -> ProbeCritic:
        return cls(config.probe_path)

    def reference_reads(self, model, tokenizer) -> ProbeReads:
        """The states this probe reads; the probe must have been fit on this model and its layers must exist."""
        self.probe.check_model(model, tokenizer)
        check_layers(model, self.layers)
        span = template_span(tokenizer) if self.tokens == "template" else 1
        return ProbeReads(list(self.layers), self.position, self.tokens, span)

    def score_prompts(self, model, tokenizer, prompts: list[list[dict]]) -> list[float]:
        """The probe's risk of bare prompts; a probe that reads response tokens cannot score them."""
        if self.position != "prompt":
            raise TetherInputError(
                f"this probe reads the {self.position} position, which bare prompts lack; calibrate with a prompt probe"
            )
        self.reference_reads(model, tokenizer)  # the probe must fit this model
        features = prompt_features(model, tokenizer, prompts, list(self.layers), tokens=self.tokens, desc="calibration")
        return self.probe.score(features).tolist()

    def score(self, batch: dict) -> torch.Tensor:
        return self.probe.score(batch["reference_features"])  # (B,)
