"""Fit a probe from named prompt sources, evaluate it on named sets, and sweep layers × poolings.

Features of every block are extracted once per prompt set (n × (L+1) × d, float32), so a sweep costs one forward
pass per prompt and a logistic regression per configuration.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tether.critics.probe import (
    TOKEN_POOLINGS,
    LinearProbe,
    chat_row_features,
    fit_probe,
    model_fingerprint,
    num_blocks,
    probe_metrics,
    prompt_features,
)
from tether.data.prompts import PROMPT_SETS, load_prompts
from tether.data.sources import NAMED_DATASETS
from tether.errors import TetherInputError


class FeatureBank:
    """Features of every layer for named sources, extracted once each (at the last prompt or response token)."""

    def __init__(
        self,
        model,
        tokenizer,
        data_dir: str | None = None,
        batch_size: int = 16,
        position: str = "prompt",
        layers: list[int] | None = None,
        tokens: str = "last",
    ):
        """`position`: `prompt` reads prompt sets at the last prompt token; `response` reads chat data (prompt and
        response) at the last response token, `both` at the two (`chat_row_features`). `layers`: extract only these
        (default every layer), so the forward stops after the deepest one; `bank(source, layers)` then indexes
        hidden-state numbers, not positions. `tokens`: `last`, or `mean` over the prompt's tokens, or `template` (the
        instruction's last token and the chat template's tokens after it, side by side), `prompt` only."""
        if tokens not in TOKEN_POOLINGS or (tokens != "last" and position != "prompt"):
            raise TetherInputError(
                f"probe tokens must be `last`, or `mean` or `template` with position prompt; got {tokens!r} with "
                f"{position!r}"
            )
        self.tokens = tokens
        self.model, self.tokenizer, self.data_dir, self.batch_size = model, tokenizer, data_dir, batch_size
        self.position = position
        self.all_layers = sorted(layers) if layers else list(range(num_blocks(model) + 1))
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, source: str, layers: list[int] | None = None) -> torch.Tensor:
        """(n, len(layers), d) features of `source` (every layer if `layers` is None)."""
        if source not in self.cache:
            if self.position in ("response", "both"):
                rows = read_source(source, self.position, self.data_dir)
                self.cache[source] = chat_row_features(
                    self.model, self.tokenizer, rows, self.all_layers, self.position, self.batch_size, desc=source
                )
            else:
                self.cache[source] = prompt_features(
                    self.model,
                    self.tokenizer,
                    read_source(source, self.position, self.data_dir),
                    self.all_layers,
                    self.batch_size,
                    desc=source,
                    tokens=self.tokens,
                )
        features = self.cache[source]  # (n, L, d), or (n, 2L, d) for `both`: the prompt's layers, then the response's
        if layers is None:
            return features
        index = [self.all_layers.index(layer) for layer in layers]
        if self.position == "both":
            index += [len(self.all_layers) + i for i in index]
        return features[:, index]

    def many(self, sources: list[str], layers: list[int] | None = None) -> torch.Tensor:
        return torch.cat([self(source, layers) for source in sources])


def fit_from_sources(
    bank: FeatureBank,
    harmful: list[str],
    benign: list[str],
    layers: list[int],
    pooling: str,
    C: float | None = None,
    seed: int = 0,
) -> LinearProbe:
    probe = fit_probe(
        bank.many(harmful, layers), bank.many(benign, layers), layers, pooling, C=C, seed=seed, position=bank.position
    )
    probe.tokens = bank.tokens
    probe.metadata.update(
        model=model_fingerprint(bank.model, bank.tokenizer),
        fit_sets={"harmful": harmful, "benign": benign},
        fit_sizes={
            "harmful": int(sum(len(bank(s)) for s in harmful)),
            "benign": int(sum(len(bank(s)) for s in benign)),
        },
    )
    return probe


def evaluate(
    probe: LinearProbe, bank: FeatureBank, harmful: list[str], benign: list[str], threshold: float = 0.5
) -> dict:
    """Metrics of each harmful set against all benign sets together, plus every set's flagged share."""
    benign_scores = np.concatenate([probe.score(bank(s, probe.layers)).numpy() for s in benign])
    result = {"threshold": threshold, "per_harmful_set": {}, "flagged_share": {}}
    for source in harmful:
        scores = probe.score(bank(source, probe.layers)).numpy()
        result["per_harmful_set"][source] = probe_metrics(scores, benign_scores, threshold)
        result["flagged_share"][source] = float((scores >= threshold).mean())
    for source in benign:
        result["flagged_share"][source] = float((probe.score(bank(source, probe.layers)).numpy() >= threshold).mean())
    return result


def layer_candidates(
    bank: FeatureBank,
    harmful: list[str],
    benign: list[str],
    layers: list[int],
    val_harmful: list[str],
    val_benign: list[str],
    C: float | None = None,
    seed: int = 0,
) -> list[tuple[LinearProbe, dict]]:
    """A one-layer probe at each layer, fit on `harmful` vs `benign`, with its AUROC on each validation harmful set
    (against the validation benign sets together), their mean, and the share of each validation benign set flagged
    at risk ≥ 0.5."""
    candidates = []
    for layer in layers:
        probe = fit_from_sources(bank, harmful, benign, [layer], "last-layer", C=C, seed=seed)
        result = evaluate(probe, bank, val_harmful, val_benign)
        aurocs = {s: m["auroc"] for s, m in result["per_harmful_set"].items()}
        flagged = {s: result["flagged_share"][s] for s in val_benign}
        row = {"layer": layer, "C": probe.metadata["C"], "val_auroc": aurocs, "val_flagged": flagged}
        candidates.append((probe, {**row, "val_mean_auroc": float(np.mean(list(aurocs.values())))}))
    return candidates


def best_candidate(
    candidates: list[tuple[LinearProbe, dict]],
    val_harmful: list[str],
    val_benign: list[str],
    max_flagged: dict[str, float] | None = None,
):
    """The candidate with the best mean validation AUROC (the first on a tie) among those that flag at most
    `max_flagged[s]` of each validation benign set `s` named there (say the hard negatives); its metadata records
    every candidate's row under `layer_selection`."""
    limits = max_flagged or {}
    unknown = sorted(set(limits) - set(val_benign))
    if unknown:
        raise TetherInputError(f"flagged-share limit on {unknown[0]!r}, which is not a validation benign set")
    allowed = [c for c in candidates if all(c[1]["val_flagged"][s] <= limit for s, limit in limits.items())]
    if not allowed:
        lowest = {s: min(row["val_flagged"][s] for _, row in candidates) for s in limits}
        raise TetherInputError(
            "no candidate layer meets the flagged-share limits "
            + ", ".join(f"{s} ≤ {limit:.1%} (lowest: {lowest[s]:.1%})" for s, limit in limits.items())
            + "; relax --val_max_flagged or add layers"
        )
    probe, row = max(allowed, key=lambda candidate: candidate[1]["val_mean_auroc"])
    probe.metadata["layer_selection"] = {
        "val_harmful": val_harmful,
        "val_benign": val_benign,
        "max_flagged": max_flagged,
        "chosen": row["layer"],
        "candidates": [row for _, row in candidates],
    }
    return probe


def sweep(
    bank: FeatureBank,
    fit_harmful,
    fit_benign,
    eval_harmful,
    eval_benign,
    layer_sets: list[list[int]],
    poolings: list[str],
    C: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """One row per (layers, pooling): AUROC per harmful evaluation set and the flagged shares of benign sets."""
    rows = []
    for layers in layer_sets:
        for pooling in poolings:
            if (len(layers) == 1) != (pooling == "last-layer"):
                continue  # one layer: every pooling is the same; several: last-layer is a one-layer probe
            if bank.position == "both" and pooling == "weighted":
                continue
            probe = fit_from_sources(bank, fit_harmful, fit_benign, layers, pooling, C=C, seed=seed)
            result = evaluate(probe, bank, eval_harmful, eval_benign)
            aurocs = {s: m["auroc"] for s, m in result["per_harmful_set"].items()}
            rows.append(
                {
                    "layers": layers,
                    "pooling": pooling if len(layers) > 1 else "one layer",
                    "C": probe.metadata["C"],
                    "auroc": aurocs,
                    "flagged_share": result["flagged_share"],
                }
            )
    return rows


def write_sweep_report(rows: list[dict], out_dir: str | Path, title: str) -> None:
    """`sweep.json`, `sweep.md` (a table) and `sweep.png` (AUROC against layer, one-layer probes) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    sets = list(rows[0]["auroc"])
    benign = [s for s in rows[0]["flagged_share"] if s not in sets]
    lines = [
        f"# {title}",
        "",
        "| layers | pooling | C | "
        + " | ".join(f"AUROC {s}" for s in sets)
        + " | "
        + " | ".join(f"FPR {s}" for s in benign)
        + " |",
        "|" + "---|" * (3 + len(sets) + len(benign)),
    ]
    for row in rows:
        layers = f"{row['layers'][0]}" if len(row["layers"]) == 1 else f"{row['layers'][0]}–{row['layers'][-1]}"
        lines.append(
            f"| {layers} | {row['pooling']} | {row['C']:g} | "
            + " | ".join(f"{row['auroc'][s]:.3f}" for s in sets)
            + " | "
            + " | ".join(f"{row['flagged_share'][s]:.1%}" for s in benign)
            + " |"
        )
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    single = [r for r in rows if len(r["layers"]) == 1]
    if single:
        try:
            import matplotlib
        except ImportError as error:
            raise TetherInputError("the sweep plot needs matplotlib: pip install 'tether[plots]'") from error

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for s in sets:
            ax.plot([r["layers"][0] for r in single], [r["auroc"][s] for r in single], marker="o", label=s)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("AUROC")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=120)
        plt.close(fig)


def read_source(source: str, position: str, data_dir: str | None = None) -> list:
    """What a probe reads of `source`: chat rows with responses (`position` response or both), else prompts (a prompt
    set or file, or the prompts of a named chat dataset such as `pure-bad`)."""
    if position in ("response", "both"):
        return load_chat_rows(source, data_dir)
    if source.split(":")[0] in NAMED_DATASETS.keys() - PROMPT_SETS.keys():
        return prompts_of(source, data_dir)
    return load_prompts(source, data_dir)


def load_chat_rows(
    source: str,
    data_dir: str | None = None,
) -> list[dict]:
    """Chat rows with responses; `NAME:N` keeps the first N (any source `load_examples` takes)."""
    from tether.data.sources import load_examples

    name, _, limit = source.rpartition(":") if source.rpartition(":")[2].isdigit() else (source, "", "")
    rows = load_examples(name, data_dir)
    if limit and int(limit) > len(rows):
        raise TetherInputError(
            f"{source} asks for {limit} rows, but {name} has {len(rows)}; ask for at most {len(rows)}"
        )
    return rows[: int(limit)] if limit else rows


def prompts_of(source: str, data_dir: str | None = None) -> list[list[dict]]:
    """The prompts (every message but the response) of training data, or the prompts of a prompt set."""
    from tether.data.prompts import PROMPT_SETS
    from tether.data.sources import load_examples

    if source.split(":")[0] in PROMPT_SETS:
        return load_prompts(source, data_dir)
    return [row["messages"][:-1] for row in load_examples(source, data_dir)]
