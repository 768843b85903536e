"""LISA (Huang et al., NeurIPS 2024, "Lazy Safety Alignment"; `docs/method.md` §6): `LisaConfig` + `LisaTrainer`.

Optimizer steps alternate between `lisa_alignment_steps` steps on alignment data (harmful prompts with refusals) and
`lisa_finetune_steps` steps on the user's data, starting with alignment; every step adds the proximal term
(ρ/2)·‖θ − θ_switch‖² over the trainable weights, θ_switch being the weights at the last phase switch. The user
batches of alignment steps are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tether.data.chat import IGNORE_INDEX, tokenize_rows
from tether.errors import TetherInputError
from tether.trainer import TetherConfig, TetherTrainer

ANCHOR = "lisa_anchor/"  # the prefix of the proximal anchor's tensors in a checkpoint's tether state


@dataclass
class LisaConfig(TetherConfig):
    r"""
    [`TetherConfig`] plus LISA's fields.

    lisa_data (`str`, *optional*):
        Alignment chat data (harmful prompts with refusals, e.g. `advbench-refusals`). Setting it turns LISA on.
    lisa_alignment_steps, lisa_finetune_steps (`int`, defaults to `2`, `8`):
        The phase lengths, in optimizer steps (`docs/method.md` §6 quotes 100 / 900; scaled to short runs).
    lisa_rho (`float`, defaults to `1.0`):
        ρ of the proximal term.
    """

    lisa_data: str | None = field(
        default=None, metadata={"help": "LISA: alignment chat data (harmful prompts with refusals); turns LISA on."}
    )
    lisa_alignment_steps: int = field(default=2, metadata={"help": "LISA: optimizer steps per alignment phase."})
    lisa_finetune_steps: int = field(default=8, metadata={"help": "LISA: optimizer steps per fine-tuning phase."})
    lisa_rho: float = field(default=1.0, metadata={"help": "LISA: rho of the proximal term to the last switch."})

    def __post_init__(self):
        if self.lisa_alignment_steps < 0 or self.lisa_finetune_steps < 0 or self.lisa_rho < 0:
            raise TetherInputError("lisa_alignment_steps, lisa_finetune_steps and lisa_rho must not be negative")
        if self.lisa_data and self.lisa_alignment_steps + self.lisa_finetune_steps == 0:
            raise TetherInputError("LISA needs lisa_alignment_steps + lisa_finetune_steps > 0")
        super().__post_init__()


class LisaTrainer(TetherTrainer):
    """`TetherTrainer` with LISA's alternating phases and proximal term.

    Args:
        alignment_dataset: the alignment data, tokenized like the training data (`tether train` loads `lisa_data`).
        Everything else as `TetherTrainer`.
    """

    config_class = LisaConfig
    switch = "lisa_data"

    @staticmethod
    def enabled(config) -> bool:
        return bool(config.lisa_data)

    def __init__(self, model, args: LisaConfig, alignment_dataset=None, **kwargs):
        super().__init__(model, args, **kwargs)
        if alignment_dataset is None:
            raise TetherInputError("LISA needs its alignment data: pass alignment_dataset (tokenized lisa_data)")
        self.alignment_dataset = alignment_dataset
        self._alignment_batches = None  # an endless iterator over shuffled alignment batches
        self._alignment_drawn = 0  # batches taken from it: a resumed run rebuilds it and skips as many
        self._lisa_phase: str | None = None
        self._lisa_anchor: dict[str, torch.Tensor] | None = None  # θ at the last phase switch

    @classmethod
    def load_extra_rows(cls, config: LisaConfig, data_dir: str | None) -> tuple[dict, dict]:
        """The alignment rows, learned as safe rows (risk 0) in the alignment phases."""
        from tether.data.sources import load_examples

        rows = [{**row, "risk": 0.0} for row in load_examples(config.lisa_data, data_dir)]
        return {"alignment": rows}, {"lisa": {"data": config.lisa_data, "n_alignment": len(rows)}}

    @classmethod
    def extra_trainer_kwargs(cls, extra_rows: dict, tokenizer, config: LisaConfig) -> dict:
        dataset, _ = tokenize_rows(extra_rows["alignment"], tokenizer, config.max_length)
        return {"alignment_dataset": dataset}

    def training_step(self, model, inputs, num_items_in_batch=None):
        """On an alignment step the micro-batch is replaced by one of alignment data; at each phase switch the
        proximal anchor moves to the current weights."""
        args = self.args
        phase = lisa_phase(self.state.global_step, args.lisa_alignment_steps, args.lisa_finetune_steps)
        if phase != self._lisa_phase:
            self._lisa_phase = phase
            trainable = self.accelerator.unwrap_model(self.model).named_parameters()
            self._lisa_anchor = {n: p.detach().clone() for n, p in trainable if p.requires_grad}
        if phase == "alignment":
            inputs = self._next_alignment_batch()
            count = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            # this micro-batch's response tokens stand for each micro-batch of the step, on every process
            num_items_in_batch = count * args.gradient_accumulation_steps * self.accelerator.num_processes
        self._metrics["train"]["lisa/alignment_phase"].append(float(phase == "alignment"))
        return super().training_step(model, inputs, num_items_in_batch)

    def extra_loss(self, model, mode: str) -> torch.Tensor | float:
        """(ρ/2)·‖θ − θ_switch‖², once per optimizer step (divided over the accumulated micro-batches)."""
        if self._lisa_anchor is None or not model.training or not self.args.lisa_rho:
            return 0.0
        unwrapped = self.accelerator.unwrap_model(model)
        drift = sum(
            (p - self._lisa_anchor[n]).pow(2).sum() for n, p in unwrapped.named_parameters() if n in self._lisa_anchor
        )
        proximal = self.args.lisa_rho / 2 * drift
        self._metrics[mode]["lisa/proximal"].append(proximal.item())
        return proximal / self.args.gradient_accumulation_steps

    def tether_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """`TetherTrainer`'s, plus the phase, the batches drawn from the alignment data, and the proximal anchor."""
        values, tensors = super().tether_state()
        values["lisa"] = {"phase": self._lisa_phase, "alignment_batches": self._alignment_drawn}
        tensors |= {ANCHOR + name: p for name, p in (self._lisa_anchor or {}).items()}
        return values, tensors

    def set_tether_state(self, values: dict, tensors: dict[str, torch.Tensor]) -> None:
        super().set_tether_state(values, tensors)
        self._lisa_phase = values["lisa"]["phase"]
        self._alignment_drawn = values["lisa"]["alignment_batches"]
        self._alignment_batches = None
        device = self.accelerator.device
        anchor = {n.removeprefix(ANCHOR): t.to(device) for n, t in tensors.items() if n.startswith(ANCHOR)}
        self._lisa_anchor = anchor or None

    def _next_alignment_batch(self) -> dict:
        if self._alignment_batches is None:
            self._alignment_batches = _endless_batches(
                self.alignment_dataset,
                self._train_batch_size,
                self.data_collator,
                self.args.seed + self.accelerator.process_index,
            )
            for _ in range(self._alignment_drawn):  # a resumed run: continue where the checkpoint stopped
                next(self._alignment_batches)
        self._alignment_drawn += 1
        return next(self._alignment_batches)


def lisa_phase(step: int, alignment_steps: int, finetune_steps: int) -> str:
    """The LISA phase of optimizer step `step` (from 0): cycles of `alignment_steps` then `finetune_steps`."""
    return "alignment" if step % (alignment_steps + finetune_steps) < alignment_steps else "finetune"


def _endless_batches(dataset, batch_size: int, collate, seed: int):
    """Shuffled, collated batches of `dataset`, reshuffled at each pass, forever."""
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=generator)
    while True:
        yield from loader
