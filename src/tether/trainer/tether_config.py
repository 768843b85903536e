"""`TetherConfig`: TRL's `SFTConfig` plus the regularizer, the weight map and the critic (`docs/method.md` §1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from tether.critics import CRITICS
from tether.critics.judge import FAILURE_POLICIES, check_judge_url
from tether.errors import TetherInputError
from tether.weights import CanaryController, FixedWeights, RiskWeights

REGULARIZERS = ("none", "fixed", "adaptive")
# tether's defaults under `regularizer: adaptive` (with `critic: refusal`), chosen on validation prompts
# (configs/bench/default-validation.yaml, docs/bench.md): depth-aware KL on the first 5 response tokens and the canary
# drift control, acting on those first tokens (`canary_scope`, resolved in `tether_defaults`). Under `fixed` (C-SFT)
# and `none` (SFT) the published methods: a uniform KL, no drift control.
ADAPTIVE_DEFAULTS = {"kl_prefix_tokens": 5, "kl_prefix_scale": 10.0, "canary_prompts": "advbench:~16"}
UNIFORM_KL = {"kl_prefix_tokens": 0, "kl_prefix_scale": 1.0}
# the fields that only a risk (`regularizer: adaptive`) reads
CRITIC_FIELDS = frozenset(
    "critic critic_value probe_path risk_ema risk_saturation risk_calibration risk_calibration_quantile granularity "
    "beta_min beta_max weight_map judge_url judge_model judge_api_key_env judge_concurrency judge_failure_policy "
    "judge_max_failure_rate judge_cache_dir judge_generations_every judge_generations_prompts "
    "judge_generations_max_new_tokens".split()
)


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
    risk_calibration (`str`, *optional*), risk_calibration_quantile (`float`, defaults to `0.9`):
        Places the risk scale from benign prompts instead of a hand-set `risk_saturation`: before training the critic
        scores this benign prompt set (a named set such as `alpaca:~200`, or a file) with the reference, and
        `risk_saturation` becomes that quantile of its scores (written to `data_summary.json`). For a critic that
        ranks well but runs low on prompts unlike its fit sets. Needs a critic that scores bare prompts (`refusal`,
        a prompt `probe`); choose a set disjoint from the prompts you evaluate on.
    risk_ema (`float`, defaults to `0.0`):
        λ of an EMA on the risk, updated once per micro-batch; 0 disables it, 0.9 is a sensible value.
    granularity (`str`, defaults to `"example"`):
        `example` (each example its own α, β) or `batch` (every example gets the mean risk of the batch across
        devices, the paper's description).
    kl_direction (`str`, defaults to `"forward"`):
        `forward` KL(π_ref ‖ π_θ) or `reverse` KL(π_θ ‖ π_ref). β values do not transfer between the two.
    kl_scale (`float`, defaults to `1.0`):
        Multiplies the KL term. Set it to the gradient-accumulation steps to mimic the official code's scaling.
    kl_prefix_tokens (`int`, defaults to `5` under `regularizer: adaptive`, else `0`), kl_prefix_scale (`float`,
    defaults to `10.0` under `adaptive`, else `1.0`):
        Depth-aware KL: the KL weight of each response's first `kl_prefix_tokens` tokens is multiplied by
        `kl_prefix_scale` (Qi et al. 2024, arXiv 2406.05946: an aligned model's refusal is decided in the first few
        response tokens, so a fine-tune that keeps those close to the reference keeps its refusals). Combines with the
        per-example β; 0 tokens turns it off. C-SFT (`fixed`) keeps the published uniform KL unless these are set.
    logits_chunk_size (`int`, defaults to `0`):
        Response positions per LM-head chunk; 0 picks the size that keeps one chunk of float32 logits under 24 MiB.
    reference_cache (`bool`, defaults to `True`), reference_cache_dir (`str`, *optional*):
        Keep what the loss reads from the reference pass per training example (its LM-head inputs at the response
        positions and a reading critic's score) on disk, so that a batch of examples seen before, in an earlier epoch
        or an earlier run on the same reference, runs no reference forward. Exact: the KL is recomputed through the
        frozen head. Stored under `reference_cache_dir`, one folder per reference, tokenizer and reading critic (safe
        to delete); by default `reference_cache` in the output directory, which `tether train` keeps while a killed
        run can resume and removes when the run completes. Name a folder to share it between runs on the same data.
        Ignored without a reference pass.

    > Parameters that control the critic

    critic (`str`, defaults to `"refusal"`):
        The safety critic of `regularizer: adaptive`: `label` (risk read from the dataset's risk column, an oracle),
        `refusal` (the reference's probability of starting its reply with a refusal, read from the KL's reference
        pass: needs no fitting), `probe` (an activation probe on the reference model, `probe_path`), `judge` (an LLM
        judge, `judge_url`) or `constant` (`critic_value`).
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

    > Parameters that control drift (`docs/method.md` §4)

    canary_prompts (`str`, defaults to `"advbench:~16"` under `regularizer: adaptive`, else none):
        Harmful prompts (a named set such as `advbench:~32`, or a file) that no evaluation uses. Every
        `canary_every` optimizer steps the policy's refusal mass on them (the probability of a refusal opening as the
        first response token) is compared with the reference's; when it has fallen by more than `canary_tolerance`
        (relative), every row's KL weight is multiplied by `canary_gain`, up to `canary_max_multiplier`, and it
        relaxes by the same factor once the fall is under half the tolerance. Logged as `canary/*` in
        `metrics.jsonl`; the multiplier is restored on resume.
    canary_every (`int`, defaults to `3`; `0` turns drift control off), canary_tolerance (`float`, defaults to
    `0.1`, chosen on validation), canary_gain (`float`, defaults to `2.0`), canary_max_multiplier (`float`,
    defaults to `8.0`; tolerance and ceiling chosen on validation, `docs/bench.md`):
        The controller's period, tolerated relative fall, step factor and ceiling.
    canary_scope (`str`, defaults to `"prefix"` with depth-aware KL, else `"all"`; chosen on validation):
        Which KL weights the controller's multiplier raises: only the depth-aware prefix's, the first
        `kl_prefix_tokens` tokens, where the refusal it measures is decided (`prefix`; needs `kl_prefix_tokens` > 0),
        leaving the later tokens, where a task is learned, at their β; or every response token's (`all`).

    > Parameters that control the run

    restart (`bool`, defaults to `False`):
        A rerun of a killed run resumes from the last checkpoint in `<output_dir>.incomplete` (checkpoints come from
        `save_strategy` / `save_steps`); `restart` discards that folder and its checkpoints and starts over.

    LISA and Vaccine add their fields in their own configs (`tether.baselines`); `tether train` accepts them all.
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
    risk_calibration: str | None = field(
        default=None, metadata={"help": "Benign prompt set whose critic-score quantile sets risk_saturation."}
    )
    risk_calibration_quantile: float = field(
        default=0.9, metadata={"help": "Quantile of the benign scores that becomes risk_saturation."}
    )
    granularity: str = field(default="example", metadata={"help": "example or batch."})
    kl_direction: str = field(default="forward", metadata={"help": "forward KL(ref||policy) or reverse."})
    kl_scale: float = field(default=1.0, metadata={"help": "Multiplier of the KL term."})
    kl_prefix_tokens: int | None = field(
        default=None,
        metadata={"help": "Depth-aware KL: the first N response tokens get kl_prefix_scale x the KL (adaptive: 5)."},
    )
    kl_prefix_scale: float | None = field(
        default=None, metadata={"help": "KL multiplier on the first kl_prefix_tokens (adaptive: 10)."}
    )
    logits_chunk_size: int = field(default=0, metadata={"help": "Response positions per LM-head chunk; 0 = auto."})
    reference_cache: bool = field(
        default=True, metadata={"help": "Reuse the reference pass of examples seen before (exact; on disk)."}
    )
    reference_cache_dir: str | None = field(
        default=None, metadata={"help": "Reference cache folder, kept (default: in output_dir, removed at the end)."}
    )
    critic: str = field(default="refusal", metadata={"help": f"Safety critic: {', '.join(CRITICS)}."})
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
    canary_prompts: str | None = field(
        default=None,
        metadata={"help": "Harmful canary prompts whose refusal drives a KL multiplier (adaptive: advbench:~16)."},
    )
    canary_every: int = field(default=3, metadata={"help": "Optimizer steps between canary checks; 0 turns them off."})
    canary_tolerance: float = field(default=0.1, metadata={"help": "Tolerated relative fall of the canary refusal."})
    canary_gain: float = field(default=2.0, metadata={"help": "Factor of the KL multiplier per check."})
    canary_max_multiplier: float = field(default=8.0, metadata={"help": "Ceiling of the KL multiplier."})
    canary_scope: str | None = field(
        default=None,
        metadata={"help": "Which KL weights the canary multiplier raises: all, or the depth-aware prefix's."},
    )
    restart: bool = field(
        default=False,
        metadata={"help": "Discard a killed run's <output_dir>.incomplete and its checkpoints and start over."},
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
        check_choice("regularizer", self.regularizer, REGULARIZERS)
        canary_prompts_set = self.canary_prompts
        self.resolve_defaults()
        check_choice("alpha_mode", self.alpha_mode, ("gate", "paper", "one"))
        check_choice("weight_map", self.weight_map, ("linear", "official"))
        check_choice("granularity", self.granularity, ("example", "batch"))
        check_choice("kl_direction", self.kl_direction, ("forward", "reverse"))
        check_choice("canary_scope", self.canary_scope, ("all", "prefix"))
        check_choice("critic", self.critic, tuple(CRITICS))
        check_choice("judge_failure_policy", self.judge_failure_policy, FAILURE_POLICIES)
        for name in ("kl_scale", "kl_prefix_scale", "learning_rate"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise TetherInputError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name, least in (
            ("logits_chunk_size", 0),
            ("kl_prefix_tokens", 0),
            ("judge_concurrency", 1),
            ("judge_generations_every", 0),
            ("judge_generations_prompts", 1),
            ("judge_generations_max_new_tokens", 1),
            ("per_device_train_batch_size", 1),
            ("gradient_accumulation_steps", 1),
            ("seed", 0),
        ):
            if getattr(self, name) < least:
                raise TetherInputError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 1:
            raise TetherInputError(f"max_length must be at least 1 (tokens per example), got {self.max_length}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise TetherInputError(
                f"num_train_epochs must be > 0 (got {self.num_train_epochs}) unless max_steps sets the length"
            )
        if not 0.0 <= self.judge_max_failure_rate <= 1.0:
            raise TetherInputError(f"judge_max_failure_rate must be in [0, 1], got {self.judge_max_failure_rate}")
        if self.judge_url:
            check_judge_url(self.judge_url, "judge_url")
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
        if not 0.0 < self.risk_calibration_quantile <= 1.0:
            raise TetherInputError(f"risk_calibration_quantile must be in (0, 1], got {self.risk_calibration_quantile}")
        if self.risk_calibration and self.risk_saturation != 1.0:
            raise TetherInputError(
                "risk_calibration sets risk_saturation from benign prompts; drop one of the two settings"
            )
        if self.risk_calibration and self.regularizer != "adaptive":
            raise TetherInputError("risk_calibration needs regularizer adaptive (it scales a critic's risk)")
        if self.canary_every == 0 and canary_prompts_set:
            raise TetherInputError(
                f"canary_every 0 turns drift control off, but canary_prompts is {canary_prompts_set!r}; drop one"
            )
        if self.canary_every < 0:
            raise TetherInputError(
                f"canary_every must be at least 1, or 0 to turn drift control off; got {self.canary_every}"
            )
        if self.canary_prompts:
            if self.regularizer == "none":
                raise TetherInputError("canary_prompts raises the KL weight; it needs regularizer fixed or adaptive")
            if not 0.0 <= self.canary_tolerance < 1.0:
                raise TetherInputError(f"canary_tolerance must be in [0, 1), got {self.canary_tolerance}")
            if not 1.0 < self.canary_gain < math.inf:
                raise TetherInputError(f"canary_gain must be a finite number > 1, got {self.canary_gain}")
            if not 1.0 <= self.canary_max_multiplier < math.inf:
                raise TetherInputError(
                    f"canary_max_multiplier must be a finite number >= 1, got {self.canary_max_multiplier}"
                )
            if self.canary_scope == "prefix" and not self.kl_prefix_tokens:
                raise TetherInputError(
                    "canary_scope prefix raises the depth-aware prefix's KL; it needs kl_prefix_tokens > 0, got 0"
                )
        if not 0.0 <= self.risk_ema < 1.0:
            raise TetherInputError(f"risk_ema must be in [0, 1), got {self.risk_ema}")
        if self.bf16 is None:  # TRL turns bf16 on by default, which fails on CPU; follow the hardware instead
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()

    def resolve_defaults(self) -> None:
        """Fill the settings left unset with tether's defaults for the regularizer (`ADAPTIVE_DEFAULTS` under
        `adaptive`, chosen on validation prompts: docs/bench.md; the published uniform KL and no drift control under
        `fixed` and `none`), so that the saved config records what ran."""
        names = ("regularizer", "canary_every", "canary_scope", *ADAPTIVE_DEFAULTS)
        for name, value in tether_defaults({name: getattr(self, name) for name in names}).items():
            setattr(self, name, value)

    def make_canary_controller(self) -> CanaryController | None:
        if not self.canary_prompts:
            return None
        return CanaryController(self.canary_tolerance, self.canary_gain, self.canary_max_multiplier)

    def make_weights(self) -> FixedWeights | RiskWeights:
        if self.regularizer == "none":
            return FixedWeights(beta=0.0, alpha_mode="one", saturation=self.risk_saturation)
        if self.regularizer == "fixed":
            return FixedWeights(beta=self.beta, alpha_mode=self.alpha_mode, saturation=self.risk_saturation)
        return RiskWeights(
            saturation=self.risk_saturation,
            beta_min=self.beta_min,
            beta_max=self.beta_max,
            clamp_min=self.beta_clamp_min,
            clamp_max=self.beta_clamp_max,
            ema=self.risk_ema,
            granularity=self.granularity,
            alpha_mode=self.alpha_mode,
            weight_map=self.weight_map,
        )


def tether_defaults(settings: dict) -> dict:
    """The values `resolve_defaults` gives the regularizer-dependent fields that `settings` (TetherConfig fields)
    leaves unset: `ADAPTIVE_DEFAULTS` under `adaptive`, `UNIFORM_KL` otherwise; no canary set with `canary_every` 0;
    the canary multiplier on the depth-aware prefix's KL where there is one, else on every token's."""
    regularizer = settings.get("regularizer", "adaptive")
    defaults = ADAPTIVE_DEFAULTS if regularizer == "adaptive" else UNIFORM_KL
    filled = {name: value for name, value in defaults.items() if settings.get(name) is None}
    if settings.get("canary_scope") is None:
        prefix_tokens = filled.get("kl_prefix_tokens", settings.get("kl_prefix_tokens"))
        filled["canary_scope"] = "prefix" if prefix_tokens else "all"
    if settings.get("canary_every") == 0:  # drift control off
        filled["canary_prompts"] = None
    return filled


def resolved_canary_prompts(settings: dict) -> str | None:
    """The canary set a run of these TetherConfig settings uses, explicit or tether's default."""
    return {**settings, **tether_defaults(settings)}.get("canary_prompts")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TetherInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
