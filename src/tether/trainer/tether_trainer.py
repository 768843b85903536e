"""`TetherTrainer`: TRL's SFT with a risk-weighted KL to a frozen safe reference (`docs/method.md` §1).

Only `compute_loss` and `log` are overridden; the training loop is TRL's and transformers'. `compute_loss` dispatches
to three steps, each its own method: the reference pass (`reference_pass`: the reference's LM-head inputs at the
response positions, and the states the critic declared it reads), the risk (`risk`), and the loss (`response_loss`).
A baseline that changes the step subclasses this trainer in `tether.baselines` and overrides `training_step` or
`extra_loss`.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from trl import SFTTrainer

from tether.critics import Critic, critic_from_config
from tether.critics.base import ReadsReference, ReferenceReads, UsesTokenizer
from tether.critics.probe import capture_layer_states
from tether.data.chat import IGNORE_INDEX, TetherCollator
from tether.errors import TetherInputError
from tether.losses import ResponseLoss, head_log_softmax, prefix_kl_weights, response_depth
from tether.modeling import AdapterDisabledReference, FrozenCopyReference, capture_head_inputs
from tether.run_files import write_text_atomic
from tether.sharding import check_engine
from tether.trainer.callbacks import ReferenceCacheCallback, TetherStateCallback
from tether.trainer.reference_cache import (
    CachedExample,
    ReferenceCache,
    example_keys,
    fingerprint,
    state_digest,
)
from tether.trainer.tether_config import TetherConfig

TETHER_STATE = "tether_state.json"  # in each checkpoint folder, beside transformers' trainer_state.json
TETHER_TENSORS = "tether_state.safetensors"
REFERENCE_CACHE = "reference_cache"  # the reference cache's default folder in the output directory


@dataclass
class ResponsePositions:
    """The response tokens of a batch: `rows`, `cols` (N,) index the (B, T-1) shifted targets."""

    targets: torch.Tensor  # (B, T-1): the token each position predicts
    rows: torch.Tensor  # (N,)
    cols: torch.Tensor  # (N,)

    @classmethod
    def of(cls, inputs: dict) -> ResponsePositions:
        targets = inputs["labels"][:, 1:]  # (B, T-1)
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)  # (N,), (N,)
        return cls(targets, rows, cols)


@dataclass
class ReferenceOutputs:
    """What the loss and the critic read from the reference pass."""

    hidden: torch.Tensor  # (N, d): the LM head's input at the response positions
    head: torch.nn.Linear  # under LoRA the policy's own head; read its weight only inside a head forward
    features: torch.Tensor | None = None  # the critic's `reference_features`, when it declared reads
    softcap: float | None = None  # the model's final logit soft-capping, if any
    first_logprobs: torch.Tensor | None = None  # (B, V): the critic's `reference_first_logprobs`, when it needs them
    scores: torch.Tensor | None = None  # (B,): the raw score of a critic that reads the reference


class TetherTrainer(SFTTrainer):
    """SFT whose loss is Σ_t [α_i·nll_t + β_i·kl_t] / N over response tokens (`docs/method.md` §1).

    Args:
        critic: a critic name or object (default: the one `args` names); used by `regularizer: adaptive`.
        ref_model: the frozen reference for full fine-tuning (default: a frozen copy of `model`). Under PEFT the
            reference is `model` with its adapter disabled, and `ref_model` must be None.
        Everything else as `SFTTrainer`; the data must be tokenized by `tether.data.chat.tokenize_rows`.
    """

    def __init__(self, model, args: TetherConfig, critic: str | Critic | None = None, ref_model=None, **kwargs):
        if ref_model is not None and ref_model is model:
            raise TetherInputError("ref_model is the policy model itself; pass a separate frozen copy or None")
        kwargs.setdefault("data_collator", TetherCollator(pad_token_id=kwargs["processing_class"].pad_token_id))
        uses_peft = kwargs.get("peft_config") is not None or hasattr(model, "disable_adapter")
        if uses_peft and ref_model is not None:
            raise TetherInputError("under LoRA the reference is the adapter-disabled model; do not pass ref_model")
        frozen_copy = None
        if self.uses_reference(args) and not uses_peft:
            # Copied before SFTTrainer patches `model.forward`: a copy made after would call the original's forward.
            frozen_copy = FrozenCopyReference(model if ref_model is None else ref_model)
        super().__init__(model=model, args=args, **kwargs)
        check_engine(self.accelerator, frozen_copy is not None)  # before `train()` shards the model
        # Our loss divides by `num_items_in_batch` itself, so the Trainer must not divide by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.weights = args.make_weights()
        self.critic = critic_from_config(args, critic) if self.uses_critic(args) else None
        self.reads: ReferenceReads | None = None  # the reference states the critic reads
        if isinstance(self.critic, ReadsReference):
            self.reads = self.critic.reference_reads(self.model, kwargs["processing_class"])
        if isinstance(self.critic, UsesTokenizer):
            self.critic.use_tokenizer(kwargs["processing_class"])
        self.generation_risk: float | None = None  # set by JudgeGenerationsCallback
        self.canary = args.make_canary_controller()  # None unless canary_prompts is set; CanaryCallback updates it
        self.canary_reference_mass: float | None = None  # the reference's canary refusal mass, measured once
        self._resumed_at: tuple[int, float] | None = None  # (step, loss sum up to it) of the checkpoint resumed from
        self.add_callback(TetherStateCallback(self))
        self.reference = None
        if self.uses_reference(args):
            self.reference = frozen_copy or AdapterDisabledReference(self.model)
        self.reference_cache: ReferenceCache | None = None
        if self.reference is not None and args.reference_cache:
            self.reference_cache = self.open_reference_cache(args, kwargs["processing_class"])
        if self.reference_cache is not None:
            self.add_callback(ReferenceCacheCallback(self))
        if frozen_copy is not None:
            # Replicated on every process, outside DDP, FSDP or DeepSpeed: the reference pass needs no collective
            # and the head weight it hands the fused loss is whole (docs/method.md §1.7)
            frozen_copy.model.to(self.accelerator.device)

    @classmethod
    def uses_critic(cls, args: TetherConfig) -> bool:
        """Whether this run scores its examples with the safety critic `args.critic`: under `regularizer: adaptive`.
        A baseline whose loss reads a critic's risk without tether's KL overrides this."""
        return args.regularizer == "adaptive"

    @property
    def kl_multiplier(self) -> float:
        """The canary controller's multiplier on every row's KL weight (1 without drift control)."""
        return 1.0 if self.canary is None else self.canary.state

    @property
    def critic_reads_reference(self) -> bool:
        """Whether the critic's score reads the reference pass (probe features, first-token log-probabilities)."""
        return self.reads is not None or (self.critic is not None and "reference_first_logprobs" in self.critic.needs)

    def open_reference_cache(self, args: TetherConfig, tokenizer) -> ReferenceCache | None:
        """The cache folder of this reference, tokenizer, autocast and reading critic under `reference_cache_dir`
        (default: `<output_dir>/reference_cache`), hashed before training shards or changes the model; None (with a
        warning) when the weights or the critic cannot be identified."""
        settings = {"bf16": args.bf16, "fp16": args.fp16, "critic": None}
        if self.critic_reads_reference:
            critic = self.critic
            try:  # the critic's whole state (probe weights, refusal token ids), whatever object it is
                state = state_digest(critic)
            except TypeError as error:
                warnings.warn(f"reference_cache is off: the critic cannot be identified ({error})", stacklevel=2)
                return None
            settings["critic"] = {"class": f"{type(critic).__module__}.{type(critic).__qualname__}", "state": state}
        root = args.reference_cache_dir or Path(args.output_dir) / REFERENCE_CACHE
        digest = [None]
        if self.accelerator.is_main_process:  # the others may hold meta tensors (cpu-ram-efficient loading)
            digest = [fingerprint(self.reference.model, tokenizer, settings)]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(digest)
        if digest[0] is None:
            warnings.warn("reference_cache is off: the reference's weights are partitioned (ZeRO-3)", stacklevel=2)
            return None
        return ReferenceCache.open(root, digest[0])

    @classmethod
    def uses_reference(cls, args: TetherConfig) -> bool:
        """Whether the loss reads the reference (a KL term); a baseline that reads it otherwise says so."""
        return args.regularizer != "none"

    # ---- the loss, in three steps
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        positions = ResponsePositions.of(inputs)
        reference = self.reference_pass(inputs, positions)
        scores, step_scores = self.risk(inputs, reference, positions)
        with torch.no_grad():
            alpha, beta = self.weights(scores, step_scores)  # (B,), (B,)
        loss, nll, kl = self.response_loss(model, inputs, positions, reference, alpha, beta, num_items_in_batch)
        loss = loss + self.extra_loss(model, mode)
        self._record_metrics(mode, step_scores, alpha, beta, nll, kl)
        return (loss, None) if return_outputs else loss

    def reference_pass(self, inputs: dict, positions: ResponsePositions) -> ReferenceOutputs | None:
        """One no-grad forward of the reference: its LM-head inputs at the response positions, and the score of a
        critic that reads the reference (`self.reads`, first-token log-probabilities). None under plain SFT. With the
        reference cache, a batch whose every example is cached runs no forward; a computed one is added."""
        if self.reference is None:
            return None
        keys = None
        if self.reference_cache is not None:
            keys = example_keys(inputs)
            cached = self.cached_reference(keys, positions)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["reference/cached"].append(float(cached is not None))
            if cached is not None:
                return cached
        reads = self.reads
        rows, cols, token_weights = reads.locate(inputs) if reads else (positions.rows[:0], positions.cols[:0], None)
        softcap = getattr(self.reference.model.config, "final_logit_softcapping", None)
        at_head = None
        if self.critic is not None and "reference_first_logprobs" in self.critic.needs:
            at_head = functools.partial(
                first_token_logprobs, positions=positions, batch_size=len(inputs["input_ids"]), softcap=softcap
            )
        with (
            self.reference.active() as ref_model,
            capture_head_inputs(ref_model, positions.rows, positions.cols, at_head) as reference,
            capture_layer_states(ref_model, reads.layers if reads else [], rows, cols, token_weights) as states,
        ):
            ref_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        features = reads.features(states) if reads else None
        outputs = ReferenceOutputs(
            reference["hidden"], linear_head(ref_model), features, softcap, reference.get("at_head")
        )
        if self.critic_reads_reference:
            batch = dict(inputs)
            if features is not None:
                batch["reference_features"] = features
            if outputs.first_logprobs is not None:
                batch["reference_first_logprobs"] = outputs.first_logprobs  # (B, V)
            with torch.no_grad():
                outputs.scores = self.critic.score(batch)  # (B,)
        if keys is not None:
            counts = torch.bincount(positions.rows, minlength=len(keys)).tolist()  # response tokens per example
            scores = [math.nan] * len(keys) if outputs.scores is None else outputs.scores.tolist()
            for key, hidden, score in zip(keys, outputs.hidden.split(counts), scores, strict=True):
                self.reference_cache.add(key, CachedExample(hidden, score))
        return outputs

    def cached_reference(self, keys: list[str], positions: ResponsePositions) -> ReferenceOutputs | None:
        """The reference's outputs for a batch whose every example is cached (on every process: under FSDP the
        reference forward gathers weights, so all processes run it or none), else None. An entry whose position
        count differs from its example's stops every process, not one while the others wait at a collective."""
        device = positions.rows.device
        hit = all(key in self.reference_cache for key in keys)
        damaged = hit and sum(map(self.reference_cache.positions, keys)) != positions.rows.numel()
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.gather(torch.tensor([[float(hit), float(damaged)]], device=device))  # (P, 2)
            hit, damaged = bool(flags[:, 0].min().item()), bool(flags[:, 1].max().item())
        if damaged:
            raise RuntimeError(
                f"reference cache {self.reference_cache.folder}: a cached entry's position count differs from its "
                "example's (on this process or another); delete the folder to rebuild it"
            )
        if not hit:
            return None
        entries = [self.reference_cache.get(key) for key in keys]  # loaded once every process has them all
        hidden = torch.cat([entry.hidden for entry in entries]).to(device)  # (N, d): rows in order, as `nonzero`
        scores = None
        if self.critic_reads_reference:
            scores = torch.tensor([entry.score for entry in entries], dtype=torch.float32, device=device)  # (B,)
        model = self.reference.model
        softcap = getattr(model.config, "final_logit_softcapping", None)
        return ReferenceOutputs(hidden, linear_head(model), softcap=softcap, scores=scores)

    def risk(
        self, inputs: dict, reference: ReferenceOutputs | None, positions: ResponsePositions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic's risk (B,) of this process's examples and (B · processes,) of the whole step, transformed by
        the weights (clamp, generation floor, saturation); zeros without a critic."""
        with torch.no_grad():
            if self.critic is None:
                scores = torch.zeros(inputs["input_ids"].shape[0], device=positions.rows.device)
            elif self.critic_reads_reference:
                scores = reference.scores  # (B,), scored in the reference pass or read from its cache
            else:
                scores = self.critic.score(dict(inputs))
            scores = self.weights.transform(scores, floor=self.generation_risk)  # (B,)
            return scores, self.accelerator.gather(scores)

    def response_loss(self, model, inputs, positions, reference, alpha, beta, num_items_in_batch):
        """The policy forward and Σ_t [α·nll_t + β·kl_t] over response tokens / the token count of the step, without
        building batch × sequence × vocabulary logits; returns (loss, nll (N,), kl (N,)). The fused loss runs inside
        the LM head's forward (`head_loss`), where a sharding engine holds the head's full weight."""
        unwrapped = self.accelerator.unwrap_model(model)
        linear_head(unwrapped)  # refuse a head the fused loss cannot multiply by, before the forward
        at_head = functools.partial(
            self.head_loss,
            positions=positions,
            reference=reference,
            alpha=alpha,
            beta=beta,
            softcap=getattr(unwrapped.config, "final_logit_softcapping", None),
        )
        with capture_head_inputs(unwrapped, positions.rows, positions.cols, at_head) as policy:
            model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        loss_sum, nll, kl = policy["at_head"]
        num_tokens = positions.rows.numel() if num_items_in_batch is None else num_items_in_batch
        loss = loss_sum / torch.as_tensor(num_tokens, device=loss_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP and FSDP average gradients; the denominator is global
        return loss, nll, kl

    def head_loss(self, hidden, head, positions, reference, alpha, beta, softcap):
        """Σ_t [α·nll_t + β·kl_t] of the policy's LM-head inputs `hidden` (N, d), run by `capture_head_inputs` inside
        the forward of `head`: (loss sum, nll (N,), kl (N,)). Under LoRA `reference.head` is `head` itself."""
        alpha_tokens, beta_tokens = self.token_weights(positions, reference, alpha, beta)
        return ResponseLoss.apply(
            hidden,  # (N, d)
            head.weight,
            head.bias,
            positions.targets[positions.rows, positions.cols],  # (N,)
            alpha_tokens,  # (N,)
            beta_tokens,  # (N,)
            None if reference is None else reference.hidden,
            None if reference is None else reference.head.weight,
            None if reference is None else reference.head.bias,
            self.args.kl_direction,
            self.args.logits_chunk_size,
            softcap,
        )

    def token_weights(self, positions, reference, alpha, beta) -> tuple[torch.Tensor | Callable, torch.Tensor | None]:
        """The NLL and KL weight of each response position (N,), (N,): α of its example, and `kl_weights`. A baseline
        whose NLL weight depends on the targets' log-probabilities returns a function of them in place of the NLL
        weights and None in place of the KL weights (`ResponseLoss`: the fused pass hands it the log-probabilities it
        computes anyway, chunk by chunk)."""
        return alpha[positions.rows], self.kl_weights(beta, positions.rows)

    def kl_weights(self, beta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The KL weight of each response position: kl_scale · (the canary controller's multiplier) · β of its
        example (B,) -> (N,), times `kl_prefix_scale` on each response's first `kl_prefix_tokens` tokens; under
        `canary_scope: prefix` the multiplier acts on those first tokens only."""
        args = self.args
        if args.canary_scope == "prefix":  # kl_prefix_tokens > 0 (TetherConfig)
            every, prefix_scale = 1.0, args.kl_prefix_scale * self.kl_multiplier
        else:
            every, prefix_scale = self.kl_multiplier, args.kl_prefix_scale
        weights = args.kl_scale * every * beta[rows]  # (N,)
        if args.kl_prefix_tokens and prefix_scale != 1.0:
            weights = weights * prefix_kl_weights(rows, args.kl_prefix_tokens, prefix_scale)
        return weights

    def extra_loss(self, model, mode: str) -> torch.Tensor | float:
        """A baseline's term added to the loss (LISA's proximal term); none here."""
        return 0.0

    # ---- logging
    def _record_metrics(self, mode, step_scores, alpha, beta, nll, kl):
        """Scalars averaged over the whole global batch: `step_scores` is already gathered from all processes, the
        other tensors are gathered here."""
        gather = self.accelerator.gather
        with torch.no_grad():
            scores, alpha, beta = step_scores, gather(alpha), gather(beta)
            nll_sum = gather(nll.sum()[None]).sum()
            kl_sum = gather(kl.sum()[None]).sum()
            count = gather(torch.tensor([nll.numel()], device=nll.device)).sum().clamp(min=1)
        metrics = self._metrics[mode]
        metrics["critic/risk_mean"].append(scores.mean().item())
        metrics["critic/num_examples"].append(float(scores.numel()))
        metrics["weights/beta_mean"].append(beta.mean().item())
        metrics["weights/beta_min"].append(beta.min().item())
        metrics["weights/beta_max"].append(beta.max().item())
        metrics["weights/alpha_mean"].append(alpha.mean().item())
        metrics["loss/nll"].append((nll_sum / count).item())
        metrics["loss/kl"].append((kl_sum / count).item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # SFTTrainer.log averages each metric list; a minimum or maximum over the logging window is kept as one.
        mode = "train" if self.model.training else "eval"
        for key, values in self._metrics[mode].items():
            if key.endswith("_min") and values:
                self._metrics[mode][key] = [min(values)]
            elif key.endswith("_max") and values:
                self._metrics[mode][key] = [max(values)]
        if "train_loss" in logs and self._resumed_at is not None:
            # transformers averages the loss over this `train()` call's steps only; a resumed run reports the mean
            # over all the steps, as an uninterrupted run does
            step, loss_sum = self._resumed_at
            steps = self.state.global_step
            logs["train_loss"] = (loss_sum + logs["train_loss"] * (steps - step)) / max(steps, 1)
        super().log(logs, start_time)

    # ---- tether's state in a checkpoint: what transformers' checkpoint does not hold (a baseline adds its own)
    def tether_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """JSON values and tensors that a run resumed from a checkpoint needs to continue as if never stopped."""
        # transformers 5's running loss sums (its train_loss is their mean); this call's part plus the earlier calls'
        loss_sum = self._total_loss_scalar + float(self._tr_loss)
        if self._resumed_at is not None:
            loss_sum += self._resumed_at[1]
        values = {
            "global_step": self.state.global_step,
            "risk_ema": self.weights.state,
            "generation_risk": self.generation_risk,
            "loss_sum": loss_sum,
            "kl_multiplier": self.kl_multiplier,
            "canary_reference_mass": self.canary_reference_mass,
        }
        return values, {}

    def set_tether_state(self, values: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `tether_state` returned."""
        self.weights.state = values["risk_ema"]
        self.generation_risk = values["generation_risk"]
        self._resumed_at = (values["global_step"], values["loss_sum"])
        self.canary_reference_mass = values.get("canary_reference_mass")
        if self.canary is not None:
            self.canary.state = values.get("kl_multiplier", 1.0)

    def save_tether_state(self, checkpoint: str | Path) -> None:
        """`tether_state.json` (+ `tether_state.safetensors` for tensors) in the checkpoint folder. The JSON file is
        written last and atomically: a checkpoint that has it is complete."""
        from safetensors.torch import save_file

        values, tensors = self.tether_state()
        checkpoint = Path(checkpoint)
        if tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, checkpoint / TETHER_TENSORS)
        write_text_atomic(checkpoint / TETHER_STATE, json.dumps(values, indent=1))

    def load_tether_state(self, checkpoint: str | Path) -> None:
        """Restore the state `save_tether_state` wrote into `checkpoint`."""
        from safetensors.torch import load_file

        checkpoint = Path(checkpoint)
        tensors = load_file(checkpoint / TETHER_TENSORS) if (checkpoint / TETHER_TENSORS).is_file() else {}
        self.set_tether_state(json.loads((checkpoint / TETHER_STATE).read_text()), tensors)

    # ---- what a run needs besides the training data (a baseline overrides these)
    @classmethod
    def prepare_rows(cls, config: TetherConfig, rows: list[dict]) -> tuple[list[dict], dict]:
        """The training rows as this trainer needs them, checked or scored before the model loads, and their summary
        entries (for `data_summary.json`); unchanged here."""
        return rows, {}

    @classmethod
    def load_extra_rows(cls, config: TetherConfig, data_dir: str | None) -> tuple[dict, dict]:
        """Rows this trainer needs besides the training data, loaded before the model, and their summary entries."""
        return {}, {}

    @classmethod
    def extra_trainer_kwargs(cls, extra_rows: dict, tokenizer, config: TetherConfig) -> dict:
        """Constructor arguments made from `load_extra_rows`' rows once the tokenizer is loaded."""
        return {}


def first_token_logprobs(
    hidden: torch.Tensor, head: torch.nn.Linear, positions: ResponsePositions, batch_size: int, softcap: float | None
) -> torch.Tensor:
    """The reference's log-probabilities of each example's first response token, from its LM-head inputs at the
    response positions `hidden` (N, d), inside the forward of `head` (`capture_head_inputs`): (B, V) float32; an
    example without a response token gets -inf everywhere."""
    first = response_depth(positions.rows) == 0  # (N,)
    logp, _ = head_log_softmax(hidden[first], head.weight, head.bias, softcap)  # (B', V)
    out = logp.new_full((batch_size, logp.shape[-1]), -torch.inf)  # (B, V)
    out[positions.rows[first]] = logp
    return out


def linear_head(model) -> torch.nn.Linear:
    """The model's LM head, which the fused loss multiplies by directly."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TetherInputError(
            f"the LM head is a {type(head).__name__}, not a plain linear layer; do not adapt lm_head with LoRA"
        )
    return head
