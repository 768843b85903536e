"""`TetherConfig` and `TetherTrainer`: TRL's SFT with a risk-weighted KL to a frozen safe reference.

Only `compute_loss` and `log` are overridden (and `training_step`, to swap in LISA's alignment batches and to run
Vaccine's perturbed step); the training loop is TRL's and transformers'. See `docs/method.md` §1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from tether.critics import CRITICS, Critic, get_critic
from tether.critics.probe import capture_layer_states, check_layers, stack_layers, template_positions, template_span
from tether.data.chat import IGNORE_INDEX, TetherCollator
from tether.errors import TetherInputError
from tether.losses import ResponseLoss
from tether.modeling import AdapterDisabledReference, FrozenCopyReference, capture_head_inputs
from tether.vaccine import add_to_outputs, attention_blocks, capture_outputs, perturbations
from tether.weights import FixedWeights, RiskWeights

REGULARIZERS = ("none", "fixed", "adaptive")


@dataclass
class TetherConfig(SFTConfig):
    r"""
    Configuration for [`TetherTrainer`]: every field of TRL's `SFTConfig`, plus the ones below.

    > Parameters that control the regularizer

    regularizer (`str`, defaults to `"adaptive"`):
        `none` (plain SFT: α = 1, no reference pass), `fixed` (C-SFT: constant `beta`) or `adaptive`
        (β = β_min + (β_max − β_min)·s from the critic's risk s).
    beta (`float`, defaults to `0.5`):
        The constant β of `regularizer: fixed`.
    beta_min, beta_max (`float`, defaults to `0.1`, `0.9`):
        β at risk 0 and risk 1 (`weight_map: linear`).
    beta_clamp_min, beta_clamp_max (`float`, defaults to `0.1`, `0.9`):
        β is clamped to this range (the official code's clamp).
    alpha_mode (`str`, defaults to `"gate"`):
        `gate` (α = 1 − s: a risk-1 example is not learned at all, only pulled toward the reference), `paper`
        (α = 1 − β, the paper's parameterization, which still teaches a risk-1 example with α = 0.1), or `one`
        (α = 1). Under `regularizer: fixed` there is no risk, and `gate` means `paper` (α = 1 − β).
    weight_map (`str`, defaults to `"linear"`):
        `linear`, or `official`: β = clamp((r − 2)/3) with r = 1 + 4s, the official code's map.
    risk_saturation (`float`, defaults to `1.0`):
        A critic's risk at or above this value counts as fully risky: s ← min(1, s / risk_saturation). For a
        critic whose scores are ranked well but run low on the data at hand (a probe's calibrated P(harmful) on
        prompts unlike its fit set); set it from benign data, e.g. the critic's 95th percentile on the benign task.
    risk_ema (`float`, defaults to `0.0`):
        λ of an EMA on the risk, updated once per micro-batch; 0 disables it, 0.9 is a sensible value.
    granularity (`str`, defaults to `"example"`):
        `example` (each example its own α, β) or `batch` (every example gets the mean risk of the batch across
        devices, the paper's description).
    kl_direction (`str`, defaults to `"forward"`):
        `forward` KL(π_ref ‖ π_θ) or `reverse` KL(π_θ ‖ π_ref). β values do not transfer between the two.
    kl_scale (`float`, defaults to `1.0`):
        Multiplies the KL term. Set it to the gradient-accumulation steps to mimic the official code's scaling.
    logits_chunk_size (`int`, defaults to `0`):
        Response positions per LM-head chunk; 0 picks the size that keeps one chunk of float32 logits under 24 MiB.

    > Parameters that control the critic

    critic (`str`, defaults to `"label"`):
        The safety critic of `regularizer: adaptive`: `label` (risk read from the dataset's risk column, an oracle),
        `probe` (an activation probe on the reference model, `probe_path`), `judge` (an LLM judge, `judge_url`) or
        `constant` (`critic_value`).
    critic_value (`float`, defaults to `0.0`):
        The risk given by the `constant` critic.
    probe_path (`str`, *optional*):
        The probe directory (`tether probe fit --out`) of `critic: probe`.
    judge_url, judge_model, judge_api_key_env (`str`):
        The OpenAI-compatible judge of `critic: judge` (base URL ending in `/v1`, served model name, the environment
        variable holding the API key). Each distinct (prompt, response) pair is judged once before training and
        cached on disk (`judge_cache_dir`); during training the risk is read back from the data.
    judge_concurrency (`int`, defaults to `4`), judge_failure_policy (`str`, defaults to `"fail_closed"`),
    judge_max_failure_rate (`float`, defaults to `0.01`):
        Requests in flight; what a failed judgement becomes (`fail_closed`: risk 1, `fail_open`: risk 0, `abort`);
        the run aborts above the failure rate whatever the policy.
    judge_generations_every (`int`, defaults to `0`), judge_generations_prompts (`int`, defaults to `8`),
    judge_generations_max_new_tokens (`int`, defaults to `64`):
        The paper's model-state mode: every N optimizer steps, the policy answers `judge_generations_prompts`
        training prompts (seeded sample, greedy), the judge scores those replies, and their mean risk becomes a
        floor on every example's risk until the next check: s_i ← max(s_i, s_gen). 0 turns it off.

    > Parameters of the LISA baseline (Huang et al., NeurIPS 2024; `docs/method.md` §6)

    lisa_data (`str`, *optional*):
        Alignment chat data (harmful prompts with refusals, e.g. `advbench-refusals`). Setting it turns LISA on:
        optimizer steps alternate between `lisa_alignment_steps` steps on this data and `lisa_finetune_steps` on the
        user's, starting with alignment, and every step adds (ρ/2)·‖θ − θ_switch‖² over the trainable weights,
        θ_switch being the weights at the last phase switch. The user batches of alignment steps are skipped.
    lisa_alignment_steps, lisa_finetune_steps (`int`, defaults to `2`, `8`):
        The phase lengths, in optimizer steps (`docs/method.md` §6 quotes 100 / 900; scaled to short runs).
    lisa_rho (`float`, defaults to `1.0`):
        ρ of the proximal term.

    > Parameters of the Vaccine baseline (Huang et al., NeurIPS 2024; `docs/method.md` §6)

    vaccine_rho (`float`, defaults to `0.0`):
        Perturbation-aware alignment, for building a safe reference under `regularizer: none`; 0 turns it off. Each
        micro-batch runs twice: the first pass finds g_l, the gradient of the loss with respect to the output of every
        decoder layer's attention block; the second adds ρ·g_l/‖g‖ to those outputs (‖g‖ over all layers together)
        and only its gradient is applied. About twice the time of an SFT step. The official code's ρ is 2
        (Llama-2-7B).
    """

    regularizer: str = field(default="adaptive", metadata={"help": "none (SFT), fixed (C-SFT) or adaptive."})
    beta: float = field(default=0.5, metadata={"help": "Constant beta of regularizer=fixed."})
    beta_min: float = field(default=0.1, metadata={"help": "Beta at risk 0."})
    beta_max: float = field(default=0.9, metadata={"help": "Beta at risk 1."})
    beta_clamp_min: float = field(default=0.1, metadata={"help": "Lower clamp of beta."})
    beta_clamp_max: float = field(default=0.9, metadata={"help": "Upper clamp of beta."})
    alpha_mode: str = field(default="gate", metadata={"help": "gate (1 - risk), paper (1 - beta) or one."})
    weight_map: str = field(default="linear", metadata={"help": "linear or official (the paper's code)."})
    risk_ema: float = field(default=0.0, metadata={"help": "EMA lambda on the risk; 0 disables it."})
    risk_saturation: float = field(
        default=1.0, metadata={"help": "Risk at or above this counts as 1: s <- min(1, s / risk_saturation)."}
    )
    granularity: str = field(default="example", metadata={"help": "example or batch."})
    kl_direction: str = field(default="forward", metadata={"help": "forward KL(ref||policy) or reverse."})
    kl_scale: float = field(default=1.0, metadata={"help": "Multiplier of the KL term."})
    logits_chunk_size: int = field(default=0, metadata={"help": "Response positions per LM-head chunk; 0 = auto."})
    critic: str = field(default="label", metadata={"help": f"Safety critic: {', '.join(CRITICS)}."})
    critic_value: float = field(default=0.0, metadata={"help": "Risk given by the constant critic."})
    probe_path: str | None = field(default=None, metadata={"help": "Probe directory for critic=probe."})
    judge_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL for critic=judge."})
    judge_model: str | None = field(default=None, metadata={"help": "Model name the judge server serves."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Env variable with the API key."})
    judge_concurrency: int = field(default=4, metadata={"help": "Judge requests in flight."})
    judge_failure_policy: str = field(default="fail_closed", metadata={"help": "fail_closed, fail_open or abort."})
    judge_max_failure_rate: float = field(default=0.01, metadata={"help": "Abort above this failure rate."})
    judge_cache_dir: str | None = field(default=None, metadata={"help": "Judge score cache (default: user cache)."})
    judge_generations_every: int = field(
        default=0, metadata={"help": "Every N steps, judge the policy's greedy replies to training prompts (0: off)."}
    )
    judge_generations_prompts: int = field(default=8, metadata={"help": "Training prompts judged each time."})
    judge_generations_max_new_tokens: int = field(default=64, metadata={"help": "Length of those replies."})
    lisa_data: str | None = field(
        default=None, metadata={"help": "LISA: alignment chat data (harmful prompts with refusals); turns LISA on."}
    )
    lisa_alignment_steps: int = field(default=2, metadata={"help": "LISA: optimizer steps per alignment phase."})
    lisa_finetune_steps: int = field(default=8, metadata={"help": "LISA: optimizer steps per fine-tuning phase."})
    lisa_rho: float = field(default=1.0, metadata={"help": "LISA: rho of the proximal term to the last switch."})
    vaccine_rho: float = field(
        default=0.0, metadata={"help": "Vaccine: radius of the attention-output perturbation (0: off); alignment only."}
    )

    # Defaults that differ from SFTConfig: tether prepares and collates its own data (response-only labels, risk),
    # and logs every step.
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the risk and prompt_length columns."})
    dataset_kwargs: dict | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "tether tokenizes the data itself."},
    )

    def __post_init__(self):
        _check_choice("regularizer", self.regularizer, REGULARIZERS)
        _check_choice("alpha_mode", self.alpha_mode, ("gate", "paper", "one"))
        _check_choice("weight_map", self.weight_map, ("linear", "official"))
        _check_choice("granularity", self.granularity, ("example", "batch"))
        _check_choice("kl_direction", self.kl_direction, ("forward", "reverse"))
        _check_choice("critic", self.critic, tuple(CRITICS))
        if self.beta_min > self.beta_max:
            raise TetherInputError(
                f"beta_min ({self.beta_min}) > beta_max ({self.beta_max}); swap them or set beta_min <= beta_max"
            )
        if self.beta_clamp_min > self.beta_clamp_max:
            raise TetherInputError(f"beta_clamp_min ({self.beta_clamp_min}) > beta_clamp_max ({self.beta_clamp_max})")
        for name in ("beta", "beta_min", "beta_max", "beta_clamp_min", "beta_clamp_max", "critic_value"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TetherInputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.regularizer == "adaptive" and self.critic == "probe" and not self.probe_path:
            raise TetherInputError("critic 'probe' needs probe_path; fit one with `tether probe fit`")
        if self.judge_generations_every and not (self.regularizer == "adaptive" and self.critic == "judge"):
            raise TetherInputError("judge_generations_every needs regularizer adaptive with critic judge")
        if self.regularizer == "adaptive" and self.critic == "judge" and not (self.judge_url and self.judge_model):
            raise TetherInputError("critic 'judge' needs judge_url and judge_model (an OpenAI-compatible server)")
        if not 0.0 < self.risk_saturation <= 1.0:
            raise TetherInputError(f"risk_saturation must be in (0, 1], got {self.risk_saturation}")
        if not 0.0 <= self.risk_ema < 1.0:
            raise TetherInputError(f"risk_ema must be in [0, 1), got {self.risk_ema}")
        if self.lisa_alignment_steps < 0 or self.lisa_finetune_steps < 0 or self.lisa_rho < 0:
            raise TetherInputError("lisa_alignment_steps, lisa_finetune_steps and lisa_rho must not be negative")
        if self.lisa_data and self.lisa_alignment_steps + self.lisa_finetune_steps == 0:
            raise TetherInputError("LISA needs lisa_alignment_steps + lisa_finetune_steps > 0")
        if self.vaccine_rho < 0:
            raise TetherInputError(f"vaccine_rho must not be negative, got {self.vaccine_rho}")
        if self.vaccine_rho and (self.regularizer != "none" or self.lisa_data):
            raise TetherInputError(
                "vaccine_rho aligns a model before anyone fine-tunes it: use it with regularizer: none and no "
                "lisa_data, then fine-tune from the merged result"
            )
        if self.bf16 is None:  # TRL turns bf16 on by default, which fails on CPU; follow the hardware instead
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()

    def make_weights(self) -> FixedWeights | RiskWeights:
        if self.regularizer == "none":
            return FixedWeights(beta=0.0, alpha_mode="one")
        if self.regularizer == "fixed":
            return FixedWeights(beta=self.beta, alpha_mode=self.alpha_mode)
        return RiskWeights(
            beta_min=self.beta_min,
            beta_max=self.beta_max,
            clamp_min=self.beta_clamp_min,
            clamp_max=self.beta_clamp_max,
            ema=self.risk_ema,
            granularity=self.granularity,
            alpha_mode=self.alpha_mode,
            weight_map=self.weight_map,
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TetherInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class TetherTrainer(SFTTrainer):
    """SFT whose loss is Σ_t [α_i·nll_t + β_i·kl_t] / N over response tokens (`docs/method.md` §1).

    Args:
        critic: a critic name or object (default: `args.critic`); used by `regularizer: adaptive`.
        ref_model: the frozen reference for full fine-tuning (default: a frozen copy of `model`). Under PEFT the
            reference is `model` with its adapter disabled, and `ref_model` must be None.
        alignment_dataset: LISA's alignment data, tokenized like the training data; turns LISA on (see
            `TetherConfig.lisa_data`).
        Everything else as `SFTTrainer`; the data must be tokenized by `tether.data.chat.tokenize_rows`.
    """

    def __init__(
        self,
        model,
        args: TetherConfig,
        critic: str | Critic | None = None,
        ref_model=None,
        alignment_dataset=None,
        **kwargs,
    ):
        if ref_model is not None and ref_model is model:
            raise TetherInputError("ref_model is the policy model itself; pass a separate frozen copy or None")
        kwargs.setdefault("data_collator", TetherCollator(pad_token_id=kwargs["processing_class"].pad_token_id))
        uses_peft = kwargs.get("peft_config") is not None or hasattr(model, "disable_adapter")
        if uses_peft and ref_model is not None:
            raise TetherInputError("under LoRA the reference is the adapter-disabled model; do not pass ref_model")
        frozen_copy = None
        if args.regularizer != "none" and not uses_peft:
            # Copied before SFTTrainer patches `model.forward`: a copy made after would call the original's forward.
            frozen_copy = FrozenCopyReference(model if ref_model is None else ref_model)
        super().__init__(model=model, args=args, **kwargs)
        # Our loss divides by `num_items_in_batch` itself, so the Trainer must not divide by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.weights = args.make_weights()
        self.critic = None
        if args.regularizer == "adaptive":
            critic_kwargs = {"constant": {"value": args.critic_value}, "probe": {"probe_path": args.probe_path}}
            self.critic = get_critic(critic or args.critic, **({} if critic else critic_kwargs.get(args.critic, {})))
        if "reference_features" in getattr(self.critic, "needs", ()):
            self.critic.probe.check_model(self.model, kwargs["processing_class"])
            check_layers(self.model, self.critic.layers)
        self.template_span = (  # `tokens: template`: positions read per example (instruction end + template)
            template_span(kwargs["processing_class"]) if getattr(self.critic, "tokens", "last") == "template" else 1
        )
        self.generation_risk: float | None = None  # set by JudgeGenerationsCallback
        self.reference = None
        if args.regularizer != "none":
            self.reference = frozen_copy or AdapterDisabledReference(self.model)
        if frozen_copy is not None:
            frozen_copy.model.to(self.accelerator.device)
        self.alignment_dataset = alignment_dataset
        self._alignment_batches = None  # an endless iterator over shuffled alignment batches
        self._lisa_phase: str | None = None
        self._lisa_anchor: dict[str, torch.Tensor] | None = None  # θ at the last phase switch

    def training_step(self, model, inputs, num_items_in_batch=None):
        """LISA: on an alignment step, the micro-batch is replaced by one of alignment data; at each phase switch the
        proximal anchor moves to the current weights. Vaccine: the Trainer's step runs with the attention outputs
        shifted by the perturbation a first pass found. Otherwise this is the Trainer's step."""
        if self.args.vaccine_rho:
            blocks = attention_blocks(self.accelerator.unwrap_model(model))
            shifts = self._vaccine_perturbations(model, blocks, inputs, num_items_in_batch)
            with add_to_outputs(blocks, shifts):
                return super().training_step(model, inputs, num_items_in_batch)
        if self.alignment_dataset is not None:
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

    def _vaccine_perturbations(self, model, blocks, inputs, num_items_in_batch) -> list[torch.Tensor | None]:
        """Vaccine's first pass: ρ·g_l/‖g‖ for each attention block; touches no parameter gradient, so gradient
        accumulation is unaffected, and records no metrics (the second pass does)."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        metrics = self._metrics["train"]
        lengths = {key: len(values) for key, values in metrics.items()}
        unwrapped = self.accelerator.unwrap_model(model)  # no DDP forward: this pass has no parameter gradients
        with capture_outputs(blocks) as outputs, self.compute_loss_context_manager():
            loss = self.compute_loss(unwrapped, inputs, num_items_in_batch=num_items_in_batch)
        for key in list(metrics):
            if key in lengths:
                del metrics[key][lengths[key] :]
            else:
                del metrics[key]
        tensors = [outputs.get(i) for i in range(len(blocks))]
        reached = [t for t in tensors if t is not None and t.requires_grad]
        if not reached:
            raise TetherInputError(
                "vaccine_rho: no attention output carries a gradient; train the attention or earlier layers, and with "
                "gradient_checkpointing set gradient_checkpointing_kwargs: {use_reentrant: false}"
            )
        grads = iter(torch.autograd.grad(loss, reached, allow_unused=True))
        shifts, norm = perturbations(
            [next(grads) if t is not None and t.requires_grad else None for t in tensors], self.args.vaccine_rho
        )
        metrics["vaccine/grad_norm"].append(norm)
        return shifts

    def _next_alignment_batch(self) -> dict:
        if self._alignment_batches is None:
            self._alignment_batches = _endless_batches(
                self.alignment_dataset,
                self._train_batch_size,
                self.data_collator,
                self.args.seed + self.accelerator.process_index,
            )
        return next(self._alignment_batches)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        targets = inputs["labels"][:, 1:]  # (B, T-1): the token each position predicts
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)  # (N,), (N,) response positions
        forward_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        unwrapped = self.accelerator.unwrap_model(model)

        probe_layers = getattr(self.critic, "layers", None) if self.critic else None
        ref_hidden = ref_head = None
        if self.reference is not None:
            position = getattr(self.critic, "position", "prompt")
            batch_rows = torch.arange(inputs["input_ids"].shape[0], device=rows.device)  # (B,)
            last_prompt = inputs["prompt_length"] - 1  # (B,): causal, so this state depends on the prompt only
            last_response = inputs["attention_mask"].sum(1) - 1  # (B,) the last response token (right padding)
            probe_rows, probe_at = {
                "prompt": (batch_rows, last_prompt),
                "response": (batch_rows, last_response),
                "both": (batch_rows.repeat(2), torch.cat([last_prompt, last_response])),  # (2B,), (2B,)
            }[position]
            token_weights = None
            tokens = getattr(self.critic, "tokens", "last")
            if tokens == "template":  # the instruction's last token and the template after it: (B, span) each
                probe_rows, probe_at = template_positions(batch_rows, last_prompt, self.template_span)
            if tokens == "mean":  # the mean over each prompt's tokens
                in_prompt = (
                    torch.arange(inputs["input_ids"].shape[1], device=rows.device) < inputs["prompt_length"][:, None]
                )
                token_weights = in_prompt.float() / inputs["prompt_length"][:, None]  # (B, T)
            with (
                self.reference.active() as ref_model,
                capture_head_inputs(ref_model, rows, cols) as reference,
                capture_layer_states(
                    ref_model, probe_layers or [], probe_rows, probe_at, token_weights
                ) as layer_states,
            ):
                ref_model(**forward_inputs, use_cache=False)
            ref_hidden, ref_head = reference["hidden"], linear_head(ref_model)  # (N, d)
            if probe_layers:
                features = stack_layers(layer_states, probe_layers)  # (B, L, d), (B, L, span·d), (2B, L, d) `both`
                if position == "both":
                    features = torch.cat(features.chunk(2), dim=1)  # (B, 2L, d): prompt states, then response
                inputs = {**inputs, "reference_features": features}

        with torch.no_grad():
            batch_size = inputs["input_ids"].shape[0]
            scores = self.critic.score(inputs) if self.critic else torch.zeros(batch_size, device=rows.device)
            if self.generation_risk is not None:  # the judge's verdict on the policy's own generations
                scores = scores.clamp(min=self.generation_risk)
            scores = (scores / self.args.risk_saturation).clamp(max=1.0)  # (B,)
            step_scores = self.accelerator.gather(scores)  # (B · processes,)
            alpha, beta = self.weights(scores, step_scores)  # (B,), (B,)

        with capture_head_inputs(unwrapped, rows, cols) as policy:
            model(**forward_inputs, use_cache=False)

        head = linear_head(unwrapped)
        loss_sum, nll, kl = ResponseLoss.apply(
            policy["hidden"],  # (N, d)
            head.weight,
            head.bias,
            targets[rows, cols],  # (N,)
            alpha[rows],  # (N,) per-token weights from per-example ones
            self.args.kl_scale * beta[rows],
            ref_hidden,
            None if ref_head is None else ref_head.weight,
            None if ref_head is None else ref_head.bias,
            self.args.kl_direction,
            self.args.logits_chunk_size,
            getattr(unwrapped.config, "final_logit_softcapping", None),
        )
        num_tokens = rows.numel() if num_items_in_batch is None else num_items_in_batch
        loss = loss_sum / torch.as_tensor(num_tokens, device=loss_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the denominator is global already

        if self._lisa_anchor is not None and model.training and self.args.lisa_rho:
            drift = sum(
                (p - self._lisa_anchor[n]).pow(2).sum()
                for n, p in unwrapped.named_parameters()
                if n in self._lisa_anchor
            )
            proximal = self.args.lisa_rho / 2 * drift  # (ρ/2)·‖θ − θ_switch‖², once per optimizer step
            loss = loss + proximal / self.args.gradient_accumulation_steps
            self._metrics[mode]["lisa/proximal"].append(proximal.item())

        self._record_metrics(mode, step_scores, alpha, beta, nll, kl)
        return (loss, None) if return_outputs else loss

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
        super().log(logs, start_time)


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


def linear_head(model) -> torch.nn.Linear:
    """The model's LM head, which the fused loss multiplies by directly."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TetherInputError(
            f"the LM head is a {type(head).__name__}, not a plain linear layer; do not adapt lm_head with LoRA"
        )
    return head


class JudgeGenerationsCallback(TrainerCallback):
    """Every `every` optimizer steps: greedy replies of the policy to `prompts`, scored by `judge`; their mean risk
    s_gen becomes `trainer.generation_risk`, a floor on every example's risk (`docs/method.md` §3, "What is
    scored"). Each process generates and judges the same prompts, so all hold the same s_gen; the judge's cache
    answers repeated replies."""

    def __init__(self, trainer: TetherTrainer, judge, prompts: list[list[dict]], every: int, max_new_tokens: int = 64):
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


class MetricsFileCallback(TrainerCallback):
    """Appends every log entry, with its step, to a JSON Lines file (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
