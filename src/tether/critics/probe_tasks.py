"""What `tether probe fit | eval | score` do, as functions (the CLI and the bench both call them).

Each checks its arguments first, with a one-line `TetherInputError` that names the flag to fix, then loads the model,
reads activations, and prints what the verb prints. Nothing is written before every check has passed, and a probe
directory or score file appears only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

from tether.errors import TetherInputError
from tether.run_files import locks_output

FLAGGED_LIMIT_FORMAT = "write SET=SHARE with SHARE in [0, 1], e.g. xstest-safe=0.1"
SWEEP_POOLINGS = ("mean", "max", "concat", "weighted")


def parse_flagged_limits(items: list[str]) -> dict[str, float]:
    """`SET=SHARE` items (`--val_max_flagged`) -> {set: share}."""
    limits = {}
    for item in items:
        name, _, share = item.rpartition("=")
        try:
            limits[name] = float(share)
        except ValueError:
            name = ""
        if not name or not 0.0 <= limits[name] <= 1.0:
            raise TetherInputError(f"--val_max_flagged {item}: {FLAGGED_LIMIT_FORMAT}")
    return limits


@locks_output("out", option="--out")
def fit_probe_dir(
    model: str | None,
    harmful: list[str],
    benign: list[str],
    layers: list[int],
    pooling: str | None,
    out: str | Path,
    *,
    val_harmful: list[str] | None = None,
    val_benign: list[str] | None = None,
    val_max_flagged: dict[str, float] | None = None,
    C: float | None = None,
    seed: int = 0,
    position: str = "prompt",
    tokens: str = "last",
    data_dir: str | None = None,
    batch_size: int = 16,
) -> Path:
    """Fit a probe of `model` on the `harmful` vs `benign` sources at hidden states `layers` (pooled by `pooling`,
    default `mean`) and save it as the directory `out`; returns `out`. With `val_harmful` and `val_benign`, a
    one-layer probe is fitted at each of `layers` and the best by mean validation AUROC kept (among those flagging at
    most `val_max_flagged[s]` of each validation benign set `s`). The arguments are `tether probe fit`'s."""
    from tether.critics.probe import POOLINGS, check_layers, check_probe_size
    from tether.critics.probe_sweep import (
        FeatureBank,
        best_candidate,
        evaluate,
        fit_from_sources,
        layer_candidates,
    )
    from tether.modeling import check_model_files, load_model_and_tokenizer

    if not model:
        raise TetherInputError("pass --model (the model to read activations from)")
    if Path(out).exists():
        raise TetherInputError(f"probe output {out} already exists; pass another --out")
    check_batch_size(batch_size)
    if not layers or min(layers) < 0 or len(set(layers)) < len(layers):
        raise TetherInputError(
            f"--layers {' '.join(map(str, layers))}: pass distinct hidden-state indices >= 0 (0 = embeddings)"
        )
    if pooling is not None and pooling not in POOLINGS:
        raise TetherInputError(f"--pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    if C is not None and not 0 < C < float("inf"):
        raise TetherInputError(f"--C (inverse L2 strength) must be a positive number, got {C}")
    if tokens != "last" and position != "prompt":  # as `FeatureBank` says it, before the sources are read
        raise TetherInputError(
            f"probe tokens must be `last`, or `mean` or `template` with position prompt; got {tokens!r} with "
            f"{position!r}"
        )
    if (val_harmful is None) != (val_benign is None):
        raise TetherInputError("layer selection needs both --val_harmful and --val_benign; pass both or neither")
    if val_max_flagged and not val_harmful:
        raise TetherInputError("--val_max_flagged constrains the layer selection; pass --val_harmful and --val_benign")
    for name, share in (val_max_flagged or {}).items():
        if not name or not 0.0 <= share <= 1.0:
            raise TetherInputError(f"--val_max_flagged {name}={share}: {FLAGGED_LIMIT_FORMAT}")
    unknown = sorted(set(val_max_flagged or {}) - set(val_benign or []))
    if unknown:
        raise TetherInputError(f"--val_max_flagged names {unknown[0]}, not one of --val_benign; limit those sets")
    if val_harmful and pooling not in (None, "last-layer"):
        raise TetherInputError(f"layer selection (--val_harmful) fits one-layer probes; drop --pooling {pooling}")
    check_model_files(model)
    counts = check_sources([*harmful, *benign, *(val_harmful or []), *(val_benign or [])], position, data_dir)
    check_probe_size(sum(counts[s] for s in harmful), sum(counts[s] for s in benign), C)
    policy, tokenizer = load_model_and_tokenizer(model, inference=True)
    bank = FeatureBank(policy, tokenizer, data_dir, batch_size, position, layers, tokens)
    check_layers(policy, layers)
    if val_harmful is None:
        probe = fit_from_sources(bank, harmful, benign, layers, pooling or "mean", C, seed)
    else:
        candidates = layer_candidates(bank, harmful, benign, layers, val_harmful, val_benign, C, seed)
        probe = best_candidate(candidates, val_harmful, val_benign, val_max_flagged or None)
        for row in probe.metadata["layer_selection"]["candidates"]:
            aurocs = "  ".join(f"{s} {a:.3f}" for s, a in row["val_auroc"].items())
            flagged = "  ".join(f"{s} {share:.1%}" for s, share in row["val_flagged"].items())
            print(
                f"layer {row['layer']:3d}  validation AUROC mean {row['val_mean_auroc']:.3f}  ({aurocs}); "
                f"flagged {flagged}"
            )
    probe.metadata["model"]["name"] = model
    probe.metadata["fit_metrics"] = evaluate(probe, bank, harmful, benign)
    probe.save(out)
    print(f"probe: {out} (layers {probe.layers}, {probe.pooling}, C {probe.metadata['C']:g})")
    return Path(out)


def evaluate_probe_dir(
    probe: str | Path,
    harmful: list[str],
    benign: list[str],
    *,
    model: str | None = None,
    threshold: float = 0.5,
    sweep: bool = False,
    poolings: list[str] | tuple[str, ...] = SWEEP_POOLINGS,
    window: int = 3,
    out: str | Path | None = None,
    data_dir: str | None = None,
    batch_size: int = 16,
) -> dict:
    """AUROC and recall at low FPR of the probe directory `probe` on named sets (read from `model`, default the one
    the probe was fitted on), printed and, with `out`, written to `<out>/eval.json`; with `sweep`, also fit every
    layer × pooling on the probe's own fit sets and write the sweep report (to `out`, default the current folder).
    Returns the evaluation. The arguments are `tether probe eval`'s."""
    from tether.critics.probe import POOLINGS
    from tether.critics.probe_sweep import FeatureBank, evaluate, write_sweep_report
    from tether.critics.probe_sweep import sweep as sweep_layers

    check_batch_size(batch_size)
    check_threshold(threshold)
    if window < 1:
        raise TetherInputError(f"--window must be at least 1 (consecutive layers pooled), got {window}")
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown:
        raise TetherInputError(f"--poolings {unknown[0]!r}: choose among {', '.join(POOLINGS)}")
    if out and Path(out).exists() and not Path(out).is_dir():
        raise TetherInputError(f"--out {out} is a file; pass a directory for eval.json")
    loaded, model_name = _probe_and_name(probe, model)
    check_sources([*harmful, *benign], loaded.position, data_dir)
    policy, tokenizer = _model_for(loaded, model_name)
    bank = FeatureBank(
        policy, tokenizer, data_dir, batch_size, loaded.position, None if sweep else loaded.layers, loaded.tokens
    )
    result = evaluate(loaded, bank, harmful, benign, threshold)
    for source, metrics in result["per_harmful_set"].items():
        print(
            f"{source:28s} AUROC {metrics['auroc']:.3f}  recall@1%FPR {metrics['recall_at_1pct_fpr']:.3f}  "
            f"recall@5%FPR {metrics['recall_at_5pct_fpr']:.3f}  accuracy {metrics['accuracy']:.3f}"
        )
    for source, share in result["flagged_share"].items():
        print(f"{source:28s} flagged at {threshold}: {share:.1%}")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "eval.json").write_text(json.dumps(result, indent=2))
    if sweep:
        fit_sets = loaded.metadata["fit_sets"]
        n = len(bank.all_layers)
        layer_sets = [[layer] for layer in range(n)] + [
            list(range(s, s + window)) for s in range(0, n - window + 1, window)
        ]
        rows = sweep_layers(
            bank,
            fit_sets["harmful"],
            fit_sets["benign"],
            harmful,
            benign,
            layer_sets,
            ["last-layer", *poolings],
            seed=loaded.metadata.get("seed", 0),
        )
        write_sweep_report(rows, out or ".", f"probe sweep: {model_name}")
        print(f"sweep: {Path(out or '.') / 'sweep.md'}")
    return result


def score_data(
    probe: str | Path,
    data: str,
    out: str | Path,
    *,
    model: str | None = None,
    threshold: float = 0.5,
    data_dir: str | None = None,
    batch_size: int = 16,
) -> Path:
    """The per-example risk of `data` (training data, a named dataset or a prompt set) under the probe directory
    `probe`, read from `model` (default the probe's), written as JSONL to `out` (index, risk, flagged at
    `threshold`, the start of the last message); returns `out`. The arguments are `tether probe score`'s."""
    from tether.critics.probe import chat_row_features, prompt_features
    from tether.critics.probe_sweep import load_chat_rows, prompts_of
    from tether.run_files import write_text_atomic

    check_batch_size(batch_size)
    check_threshold(threshold)
    if Path(out).is_dir():
        raise TetherInputError(f"--out {out} is a directory; pass a file name for the JSONL of risks")
    loaded, model_name = _probe_and_name(probe, model)
    if loaded.position in ("response", "both"):
        rows = load_chat_rows(data, data_dir)  # read once, before the model; features of the probe's layers only
        prompts = [row["messages"] for row in rows]
    else:
        prompts = prompts_of(data, data_dir)
    policy, tokenizer = _model_for(loaded, model_name)
    if loaded.position in ("response", "both"):
        features = chat_row_features(policy, tokenizer, rows, loaded.layers, loaded.position, batch_size)
    else:
        features = prompt_features(policy, tokenizer, prompts, loaded.layers, batch_size, tokens=loaded.tokens)
    risks = loaded.score(features).tolist()
    records = [
        {"index": i, "risk": risk, "flagged": risk >= threshold, "text": prompt[-1]["content"][:200]}
        for i, (prompt, risk) in enumerate(zip(prompts, risks, strict=True))
    ]
    out = Path(out)
    write_text_atomic(out, "".join(json.dumps(record) + "\n" for record in records))
    flagged = sum(r >= threshold for r in risks)
    print(f"{len(risks)} examples, {flagged} ({flagged / len(risks):.1%}) at risk >= {threshold}; wrote {out}")
    return out


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise TetherInputError(f"--batch_size must be at least 1, got {batch_size}")


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise TetherInputError(f"--threshold must be in [0, 1] (a risk), got {threshold}")


def check_sources(sources: list[str], position: str, data_dir: str | None) -> dict[str, int]:
    """Every source reads (named sets present, files parse) before the model is loaded: reading is cheap next to it.
    Returns each source's item count."""
    from tether.critics.probe_sweep import read_source

    return {source: len(read_source(source, position, data_dir)) for source in dict.fromkeys(sources)}


def _probe_and_name(probe: str | Path, model: str | None):
    """The probe directory loaded, and the model's name (`model`, else the one the probe records), its files
    checked."""
    from tether.critics.probe import LinearProbe
    from tether.modeling import check_model_files

    loaded = LinearProbe.load(probe)
    model_name = model or loaded.metadata.get("model", {}).get("name")
    if not model_name:
        raise TetherInputError("pass --model (the model to read activations from)")
    check_model_files(model_name)
    return loaded, model_name


def _model_for(loaded, model_name: str):
    """The model and its tokenizer, checked to be the model the probe was fitted on."""
    from tether.modeling import load_model_and_tokenizer

    policy, tokenizer = load_model_and_tokenizer(model_name, inference=True)
    loaded.check_model(policy, tokenizer)
    return policy, tokenizer
