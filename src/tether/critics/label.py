"""An oracle critic: the risk is read from a dataset column (`risk_column`, default `risk`).

For experiments where the harmful rows are known, e.g. a harmful set mixed into a benign one (each mixed-in row gets
risk 1, each benign row risk 0). The collator carries the column as `batch["risk"]`.
"""

from __future__ import annotations

import torch


class LabelCritic:
    name = "label"
    needs = frozenset({"risk"})

    def score(self, batch: dict) -> torch.Tensor:
        return batch["risk"].float().clamp(0.0, 1.0)  # (B,)
