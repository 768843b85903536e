"""Mix a harmful set into a benign set at a harmful ratio hr: seeded, exact counts, recorded in the run."""

from __future__ import annotations

import random

from tether.errors import TetherInputError


def harmful_count(n_benign: int, harmful_ratio: float) -> int:
    """Harmful rows to add so that they make up `harmful_ratio` of the mixed set: round(hr·n_benign / (1 − hr))."""
    return round(harmful_ratio * n_benign / (1.0 - harmful_ratio))


def mix_harmful(benign: list[dict], harmful: list[dict], harmful_ratio: float, seed: int = 0):
    """All benign rows plus `harmful_count` harmful rows drawn without replacement, shuffled with `seed`.

    Rows without a risk label get risk 0 (benign) or 1 (harmful), which the `label` critic reads. Returns the mixed
    rows and a summary with the exact counts.
    """
    if not 0.0 <= harmful_ratio < 1.0:
        raise TetherInputError(f"harmful_ratio must be in [0, 1), got {harmful_ratio}")
    n_harmful = harmful_count(len(benign), harmful_ratio)
    if n_harmful > len(harmful):
        raise TetherInputError(
            f"harmful_ratio {harmful_ratio} needs {n_harmful} harmful examples but the harmful set has {len(harmful)}; "
            "lower harmful_ratio or max_train_examples"
        )
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(harmful)), n_harmful))
    rows = [{**row, "risk": row.get("risk", 0.0)} for row in benign]
    rows += [{**harmful[i], "risk": harmful[i].get("risk", 1.0)} for i in picked]
    rng.shuffle(rows)
    summary = {
        "n_benign": len(benign),
        "n_harmful": n_harmful,
        "harmful_ratio": harmful_ratio,
        "harmful_ratio_actual": n_harmful / len(rows) if rows else 0.0,
        "harmful_indices": picked,
        "seed": seed,
    }
    return rows, summary
