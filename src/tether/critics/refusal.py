"""A critic that needs no fitting: the safe reference's own inclination to refuse.

The risk of a training pair is the probability the reference gives to starting its reply with a refusal: the mass of
its next-token distribution, at the position that predicts the first response token, on the first tokens of refusal
openings ("I cannot", "I'm sorry", "Sorry", "My apologies", ...). An aligned reference puts much of that mass there
for a harmful request and little for an ordinary one. It is read from the reference pass that the KL already runs
(the LM head's input at the response positions), so it costs no forward pass: one (B, d) @ (d, V) product per
batch. A user with an aligned model needs no probe data, no judge and no calibration set.

The openings are those of the llm-attacks refusal list (`refusal_prefixes.txt` in the data directory, which the
keyword ASR reads) that begin a reply; their first tokens are found with the model's own chat template, so that a
tokenizer that marks word starts (SentencePiece's "▁I") gets its own ids.
"""

from __future__ import annotations

import torch

from tether.errors import TetherInputError

# Refusal openings of the llm-attacks list that begin a reply (the list's other entries, "illegal", "unethical",
# "OpenAI", "Hello!", occur anywhere in a reply).
REFUSAL_OPENINGS = (
    "I'm sorry",
    "I am sorry",
    "I apologize",
    "I cannot",
    "I can't",
    "I do not",
    "I'm not able",
    "I'm just",
    "I'm an",
    "Sorry",
    "My apologies",
    "As an AI",
)


def refusal_start_ids(
    tokenizer, openings: tuple[str, ...] = REFUSAL_OPENINGS, user: str = "critic 'refusal'"
) -> list[int]:
    """The distinct ids of the first response token of each opening, as the model's chat template renders a reply
    that starts with it. Raises `TetherInputError`, naming `user` (what needs them), when none can be found."""
    from tether.data.chat import tokenize_example

    ids = set()
    for opening in openings:
        messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": opening}]
        try:
            tokens = tokenize_example(messages, tokenizer, None)
        except Exception:  # a tokenizer without a usable chat template
            continue
        if tokens is None:
            continue
        response = tokens["input_ids"][tokens["prompt_length"] :]
        if response:
            ids.add(int(response[0]))
    if not ids:
        fix = "choose critic probe, judge or label" if "critic" in user else f"drop {user}"
        raise TetherInputError(
            f"{user} found no refusal-start token with this tokenizer's chat template (it renders no reply starting "
            f"with 'I cannot' or 'Sorry'); {fix}"
        )
    return sorted(ids)


def refusal_mass(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Probability mass on `token_ids`. logprobs (B, V) log-probabilities of the first response token, token_ids (K,)
    -> (B,) in [0, 1]."""
    return logprobs[:, token_ids].logsumexp(-1).exp()


class RefusalCritic:
    """Risk = the reference's probability of starting its reply with a refusal (module docstring)."""

    name = "refusal"
    needs = frozenset({"reference_first_logprobs"})

    def __init__(self, token_ids: list[int] | None = None):
        self.token_ids = None if token_ids is None else torch.tensor(token_ids)

    @classmethod
    def from_config(cls, config) -> RefusalCritic:
        return cls()

    def use_tokenizer(self, tokenizer) -> None:
        """Find the refusal-start tokens of this tokenizer (called by the trainer before training)."""
        self.token_ids = torch.tensor(refusal_start_ids(tokenizer))

    def score_prompts(self, model, tokenizer, prompts: list[list[dict]]) -> list[float]:
        token_ids = None if self.token_ids is None else self.token_ids.tolist()
        return refusal_scores(model, tokenizer, prompts, token_ids=token_ids)

    def score(self, batch: dict) -> torch.Tensor:
        logprobs = batch["reference_first_logprobs"]  # (B, V)
        if self.token_ids is None:
            raise RuntimeError("RefusalCritic.use_tokenizer must be called before score")
        return refusal_mass(logprobs, self.token_ids.to(logprobs.device))  # (B,)


def refusal_scores(
    model, tokenizer, prompts: list[list[dict]], batch_size: int = 16, token_ids: list[int] | None = None
) -> list[float]:
    """The critic's risk of each prompt (chat messages ending with the user turn) read by a forward of `model`
    alone, as the trainer reads it from the reference pass: the refusal mass of the first-response-token
    distribution. For measuring the critic (AUROC) and scoring data outside training. `token_ids`: the refusal-start
    ids when already found (`refusal_start_ids`)."""
    from tether.data.chat import chat_ids, pad_token_ids
    from tether.losses import head_log_softmax
    from tether.modeling import capture_head_inputs, prefix_cache, shared_prefix_length

    token_ids = torch.tensor(token_ids or refusal_start_ids(tokenizer))
    device = next(model.parameters()).device
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def first_token_logp(hidden, head):  # inside the head's forward, where a sharding engine holds its full weight
        return head_log_softmax(hidden, head.weight, head.bias, softcap)[0]  # (B, V)

    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        ids = [
            chat_ids(tokenizer, messages, add_generation_prompt=True)
            for messages in prompts[start : start + batch_size]
        ]
        # the template's shared opening (system turn, user header) runs once, as a key/value cache for every row
        shared = shared_prefix_length(ids) if len(ids) > 1 else 0
        if shared < 2:
            shared = 0
        cache = {"use_cache": False}
        if shared:
            keyword, key_values = prefix_cache(model, ids[0][:shared], len(ids), device)
            cache = {keyword: key_values, "use_cache": True}
        ids = [x[shared:] for x in ids]
        input_ids, attention_mask = pad_token_ids(ids, tokenizer.pad_token_id, "right")  # (B, T), (B, T)
        attention_mask = torch.cat([attention_mask.new_ones(len(ids), shared), attention_mask], 1)  # (B, P + T)
        rows = torch.arange(len(ids))
        cols = torch.tensor([len(x) - 1 for x in ids])  # the last prompt token predicts the first response token
        with torch.no_grad(), capture_head_inputs(model, rows, cols, first_token_logp) as captured:
            model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **cache)
        logp = captured["at_head"]  # (B, V)
        scores += refusal_mass(logp, token_ids.to(logp.device)).tolist()
    return scores
