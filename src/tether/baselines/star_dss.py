"""STAR-DSS (Peng et al. 2025, "Shape it Up! Restoring LLM Safety during Finetuning", arXiv 2505.17196; official code
poloclub/star-dss; `docs/method.md` §6): `StarDssConfig` + `StarDssTrainer`.

A guardrail scores partial responses (STAR: the safety trajectory of each response, one score per chunk of
`star_dss_chunk_words` words; each token takes the score of the first prefix that contains it), and each response token
t with safety s_t = 1 − risk_t is trained on

    s_t · (−log π_θ(y_t)) + λ · (1 − s_t) · ½ (log π_θ(y_t) − log π_ref(y_t))²

(the official `loss.py`: cross-entropy on safe stretches, OpenRLHF's k2 estimator of the KL to the reference on the
target token on unsafe ones, λ = 0.5, a token mean over the batch). The k2 term's gradient with respect to the
logits is −Δ_t · (p − onehot), Δ_t = log π_θ(y_t) − log π_ref(y_t): the NLL's gradient times −Δ_t. So the whole
gradient is the NLL's with the per-token weight w_t = s_t − λ(1 − s_t)·Δ_t (Δ_t detached), which is what this trainer
hands the fused loss; no extra pass, no logits. The logged `loss` is Σ w_t·nll_t / N, not the objective's value; the
k2 term's value is logged as `star/k2`.

Guardrails (`star_dss_guardrail`): `judge`, an LLM judge (`judge_url`, `judge_model`) on every partial response, scored
before the model loads (the disk cache makes reruns free): the official method, with tether's 1–5 rubric judge where
the official code reads a guard model's P(safe); `label`, the data's harmful label on every token of its response
(an oracle with no trajectory: what the loss design does with a perfect per-example critic); `critic`, tether's
`critic` (`refusal` by default, or `probe`) on every token of the response, the example's risk read from the reference
pass the k2 term runs anyway (no trajectory either: these critics score the prompt, not partial responses). Label
against critic separates the loss design from the critic's quality.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from tether.errors import TetherInputError
from tether.trainer import TetherConfig, TetherTrainer

GUARDRAILS = ("judge", "label", "critic")
CRITIC_GUARDRAILS = ("refusal", "probe")  # the critics that read the reference pass


@dataclass
class StarDssConfig(TetherConfig):
    r"""
    [`TetherConfig`] plus STAR-DSS's fields (the official code's defaults).

    star_dss (`bool`, defaults to `False`):
        Turns STAR-DSS on (with `regularizer: none`: its KL term replaces tether's).
    star_dss_guardrail (`str`, defaults to `"judge"`):
        What scores the partial responses: `judge` (the LLM judge of `judge_url`, `judge_model`), `label` (the data's
        risk column on every token of the response) or `critic` (tether's `critic`, `refusal` or `probe`, its risk of
        the example on every token).
    star_dss_kl_scale (`float`, defaults to `0.5`):
        λ, the weight of the k2 KL term on unsafe tokens.
    star_dss_chunk_words (`int`, defaults to `5`):
        Words per chunk of the safety trajectory: the judge scores the first 5, 10, 15, ... words of each response.
    """

    star_dss: bool = field(default=False, metadata={"help": "STAR-DSS (token-level safety shaping) on."})
    star_dss_guardrail: str = field(
        default="judge", metadata={"help": "STAR-DSS: judge (partial responses), label or critic (per example)."}
    )
    star_dss_kl_scale: float = field(default=0.5, metadata={"help": "STAR-DSS: lambda of the k2 KL term."})
    star_dss_chunk_words: int = field(default=5, metadata={"help": "STAR-DSS: words per scored chunk."})

    def __post_init__(self):
        if self.star_dss:
            if self.regularizer != "none":
                raise TetherInputError(
                    f"star_dss brings its own KL term; it needs regularizer none, got {self.regularizer!r}"
                )
            if self.star_dss_guardrail not in GUARDRAILS:
                raise TetherInputError(
                    f"star_dss_guardrail {self.star_dss_guardrail!r} cannot score partial responses; use judge (an "
                    "LLM judge on each partial response), label (the data's risk column on every token) or critic "
                    "(tether's critic, refusal or probe, on every token)"
                )
            if self.star_dss_guardrail == "critic" and self.critic not in CRITIC_GUARDRAILS:
                raise TetherInputError(
                    f"star_dss_guardrail critic reads the reference pass, which critic {self.critic!r} does not; "
                    "set critic refusal or probe, or star_dss_guardrail label or judge"
                )
            if self.star_dss_guardrail == "critic" and self.critic == "probe" and not self.probe_path:
                raise TetherInputError("star_dss_guardrail critic with critic probe needs probe_path")
            if self.star_dss_guardrail == "judge" and not (self.judge_url and self.judge_model):
                raise TetherInputError(
                    "star_dss_guardrail judge needs judge_url and judge_model (an OpenAI-compatible server)"
                )
            if not 0.0 <= self.star_dss_kl_scale < math.inf:
                raise TetherInputError(f"star_dss_kl_scale must be a finite number >= 0, got {self.star_dss_kl_scale}")
            if self.star_dss_chunk_words < 1:
                raise TetherInputError(f"star_dss_chunk_words must be at least 1, got {self.star_dss_chunk_words}")
        super().__post_init__()


def partial_responses(response: str, chunk_words: int) -> list[str]:
    """The prefixes a guardrail scores: the response up to the end of its `chunk_words`-th, 2·`chunk_words`-th, ...
    word, the last one the whole response (the official code splits on whitespace too, and rejoins the words with
    single spaces; tether keeps the text as it is, so that each prefix renders to the response's own tokens)."""
    ends = [match.end() for match in re.finditer(r"\S+", response)]
    cuts = ends[chunk_words - 1 :: chunk_words]
    if not cuts or cuts[-1] != len(response):
        cuts.append(len(response))
    return [response[:cut] for cut in cuts]


def star_weights(safety: torch.Tensor, delta: torch.Tensor, kl_scale: float) -> torch.Tensor:
    """The NLL weight whose gradient is STAR-DSS's: s_t − λ(1 − s_t)·Δ_t. safety (N,) in [0, 1], delta (N,) log π_θ −
    log π_ref of the target (no gradient) -> (N,)."""
    return safety - kl_scale * (1 - safety) * delta


def example_safety(risk: torch.Tensor, inputs: dict) -> torch.Tensor:
    """An example's risk (B,) as the safety of each of its shifted target positions: 1 − risk, (B, T-1)."""
    return (1 - risk[:, None]).clamp(0, 1).expand(-1, inputs["labels"].shape[1] - 1)


class StarDssTrainer(TetherTrainer):
    """`TetherTrainer` whose per-token NLL weight is STAR-DSS's w_t (module docstring); no tether KL."""

    config_class = StarDssConfig
    switch = "star_dss"

    @staticmethod
    def enabled(config) -> bool:
        return bool(config.star_dss)

    @classmethod
    def uses_reference(cls, args) -> bool:
        return True  # π_ref(y_t) of every target token

    @classmethod
    def prepare_rows(cls, config, rows: list[dict]) -> tuple[list[dict], dict]:
        """Before the model loads: every row's safety trajectory (`risk_chunks`: each partial response and its
        risk) from the judge, or a check that every row carries the risk label; and the summary entry."""
        if config.star_dss_guardrail == "critic":
            return rows, {"star_dss": {"guardrail": "critic", "critic": config.critic}}
        if config.star_dss_guardrail == "label":
            unlabelled = sum("risk" not in row for row in rows)
            if unlabelled:
                raise TetherInputError(
                    f"star_dss_guardrail label reads the risk column, which {unlabelled} of {len(rows)} examples "
                    "lack; add the column, mix in --harmful_dataset, or use star_dss_guardrail judge"
                )
            return rows, {"star_dss": {"guardrail": "label"}}
        from tether.critics.judge import judge_from_config, judge_pair

        judge = judge_from_config(config)
        words = config.star_dss_chunk_words
        chunks = [(prompt, partial_responses(response, words)) for prompt, response in map(judge_pair, rows)]
        pairs = list(dict.fromkeys((prompt, part) for prompt, parts in chunks for part in parts))
        risks = {pair: judged.risk for pair, judged in zip(pairs, judge.score_pairs(pairs), strict=True)}
        rows = [
            {**row, "risk_chunks": [[part, risks[prompt, part]] for part in parts]}
            for row, (prompt, parts) in zip(rows, chunks, strict=True)
        ]
        summary = {"guardrail": "judge", "id": judge.backend.id, "partial_responses": len(pairs)}
        return rows, {"star_dss": summary | {"calls": judge.calls, "failures": len(judge.failures)}}

    @classmethod
    def uses_critic(cls, args) -> bool:
        """The `critic` guardrail's critic (its risk comes from the reference pass, as under A-Reg)."""
        return args.star_dss_guardrail == "critic"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # (B, T-1), read by token_weights inside the head's forward; the critic guardrail's is set by `risk`, once the
        # reference pass has scored the batch
        if self.args.star_dss_guardrail != "critic":
            self.token_safety = self.batch_safety(inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def risk(self, inputs, reference, positions):
        scores, step_scores = super().risk(inputs, reference, positions)
        if self.args.star_dss_guardrail == "critic":
            self.token_safety = example_safety(scores, inputs)
        return scores, step_scores

    def batch_safety(self, inputs) -> torch.Tensor:
        """s = 1 − risk at each shifted target position (B, T-1): the trajectory's (`token_risk`), or the example's
        label on every token."""
        if self.args.star_dss_guardrail == "label":
            return example_safety(inputs["risk"], inputs)
        risk = inputs["token_risk"][:, 1:]  # (B, T-1): the risk of the token each position predicts
        return (1 - risk).clamp(0, 1)

    def token_weights(self, positions, reference, alpha, beta):
        """w_t of each response token from the log-probabilities of its target that the fused pass computes."""
        args = self.args
        safety = self.token_safety[positions.rows, positions.cols].float()  # (N,)
        k2 = torch.empty_like(safety)  # (N,), for the metrics

        def weigh(rows: slice, policy: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            delta = policy - ref  # (n,)
            k2[rows] = args.star_dss_kl_scale * (1 - safety[rows]) * delta.square() / 2
            if rows.stop >= len(safety):  # the last chunk
                metrics = self._metrics["train" if self.model.training else "eval"]
                metrics["star/safety_mean"].append(safety.mean().item())
                metrics["star/k2"].append(k2.mean().item())
            return star_weights(safety[rows], delta, args.star_dss_kl_scale)

        return weigh, None  # no tether KL
