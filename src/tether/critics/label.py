"""An oracle critic: the risk is read from a dataset column (`risk_column`, default `risk`).

For experiments where the harmful rows are known, e.g. a harmful set mixed into a benign one (each mixed-in row gets
risk 1, each benign row risk 0). The collator carries the column as `batch["risk"]`.
"""

from __future__ import annotations

import torch

from tether.errors import TetherInputError


class LabelCritic:
    name = "label"
    needs = frozenset({"risk"})

    @classmethod
    def from_config(cls, config) -> LabelCritic:
        return cls()

    def score(self, batch: dict) -> torch.Tensor:
        return labelled_risk(batch, self.name)


def labelled_risk(batch: dict, critic: str) -> torch.Tensor:
    """The batch's `risk` column (B,); an example without a label is an error, not risk 0. (The weights clamp the risk
    to [0, 1], `tether.weights.transform_risk`.)"""
    risk = batch["risk"].float()  # (B,)
    missing = int(torch.isnan(risk).sum())
    if missing:
        raise TetherInputError(
            f"critic {critic!r} reads each example's risk, but {missing} example(s) in this batch have none; "
            "label every example or choose another critic"
        )
    return risk
