"""Callbacks of `TetherTrainer` runs: the metrics file of the run directory, tether's state in each checkpoint, the
judge's model-state mode and the canary drift control."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class JudgeGenerationsCallback(TrainerCallback):
    """Every `every` optimizer steps: greedy replies of the policy to `prompts`, scored by `judge`; their mean risk
    s_gen becomes `trainer.generation_risk`, a floor on every example's risk (`docs/method.md` §3, "What is
    scored"). Each process generates and judges the same prompts, so all hold the same s_gen; the judge's cache
    answers repeated replies."""

    def __init__(self, trainer, judge, prompts: list[list[dict]], every: int, max_new_tokens: int = 64):
        self.trainer, self.judge, self.prompts, self.every = trainer, judge, prompts, every
        self.max_new_tokens = max_new_tokens

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        from tether.evaluation.generate import generate

        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        replies = generate(model, self.trainer.processing_class, self.prompts, self.max_new_tokens, progress=False)
        judged = self.judge.score_pairs([(p[-1]["content"], r) for p, r in zip(self.prompts, replies, strict=True)])
        self.trainer.generation_risk = sum(j.risk for j in judged) / len(judged)
        self.trainer._metrics["train"]["critic/judge/generation_risk"].append(self.trainer.generation_risk)


class CanaryCallback(TrainerCallback):
    """Drift control (`docs/method.md` §4): every `every` optimizer steps, the policy's refusal mass on the canary
    prompts (the `refusal` critic's measure: the first-response-token probability of a refusal opening, adapter on)
    against the reference's (adapter off, measured once); `trainer.canary` turns the fall into a multiplier on every
    row's KL weight, `trainer.kl_multiplier`. Logged as `canary/*`; restored on resume with tether's state.
    `token_ids`: the tokenizer's refusal-start ids (default: found from the trainer's tokenizer)."""

    def __init__(self, trainer, prompts: list[list[dict]], every: int, token_ids: list[int] | None = None):
        from tether.critics.refusal import refusal_start_ids

        self.trainer, self.prompts, self.every = trainer, prompts, every
        self.token_ids = token_ids or refusal_start_ids(trainer.processing_class, user="canary_prompts")

    def masses(self, model) -> float:
        from tether.critics.refusal import refusal_scores

        tokenizer = self.trainer.processing_class
        scores = refusal_scores(model, tokenizer, self.prompts, batch_size=32, token_ids=self.token_ids)
        return sum(scores) / len(scores)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.canary_reference_mass is None:
            with self.trainer.reference.active() as reference:
                self.trainer.canary_reference_mass = self.masses(reference)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        start = time.perf_counter()
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        was_training = model.training
        model.eval()  # no dropout in the measurement
        try:
            policy_mass = self.masses(model)
        finally:
            model.train(was_training)
        reference_mass = self.trainer.canary_reference_mass
        self.trainer.canary.update(reference_mass, policy_mass)
        metrics = self.trainer._metrics["train"]
        metrics["canary/refusal_mass"].append(policy_mass)
        metrics["canary/reference_mass"].append(reference_mass)
        metrics["canary/kl_multiplier"].append(self.trainer.kl_multiplier)
        metrics["canary/seconds"].append(time.perf_counter() - start)


class MetricsFileCallback(TrainerCallback):
    """Appends every log entry, with its step, to a JSON Lines file (main process only). A run resumed from
    checkpoint-N first drops the lines after step N (and a line cut short by a kill), so each step is there once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry["step"] <= state.global_step:
                kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class TetherStateCallback(TrainerCallback):
    """Writes `trainer.save_tether_state` into each checkpoint transformers saves (main process): the state a resumed
    run needs besides the weights, optimizer, scheduler and RNG states (the risk EMA, the judge's floor, a baseline's
    own), so that a killed and resumed run ends where an uninterrupted one does."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            self.trainer.save_tether_state(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class ReferenceCacheCallback(TrainerCallback):
    """Writes the reference cache's pending entries as a shard at each checkpoint, epoch end and the end of training;
    at an epoch's end every process then indexes the shards the others wrote, so the next epoch finds every example
    whichever process saw it (`docs/method.md` §1.8)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.reference_cache.flush()
        if self.trainer.accelerator.num_processes > 1:
            self.trainer.accelerator.wait_for_everyone()
            self.trainer.reference_cache.refresh()

    def on_save(self, args, state, control, **kwargs):
        self.trainer.reference_cache.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.reference_cache.flush()
