"""One registry of the named sets in the data directory, and the one grammar that selects part of a set.

Each entry says where the set lies in the data directory (`--data_dir`, `$TETHER_DATA_DIR`, default
`../shared/data`), how its rows are read, its role in evaluation and whether its rows have responses (training
data). `load_examples` (chat rows with responses), `load_prompts` (prompts) and `load_benchmark` look names up here;
every set with an evaluation role is a prompt set and a benchmark.

A selection follows the name after a colon, the same for training data, prompt sets and benchmarks:
- `NAME:N`: the first N items;
- `NAME:A-B`: items A to B − 1 (from 0); `NAME:A-B/S`: every S-th of those, from A;
- `NAME:~N`: N items evenly spread over the set (item i·len // N for i < N): the first item is always kept, and a set
  sorted by category is covered by a small sample.
For `xstest` (safe prompts, then unsafe ones) the selection applies to each label. So `alpaca-eval:300` and
`alpaca-eval:300-805` are disjoint, and so are the interleaved halves `xstest-safe:0-250/2` and `xstest-safe:1-250/2`.
Loading a named set, a selection that reaches past the set's end (`harmbench:300` of its 200) is an error giving the
set's size, and so is one that selects nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from tether.errors import TetherInputError

ROLES = ("harmful", "benign", "xstest", "gsm8k-test")
READERS = ("rows", "csv", "instructions", "pairs")


@dataclass(frozen=True)
class NamedSet:
    """A set in the data directory.

    `reader`: `rows`, a JSON list or JSON Lines of chat, Alpaca or GSM8K rows; `csv`, one prompt per row from
    `column`, only the rows whose column `where[0]` equals `where[1]` when `where` is given; `instructions`, the
    safety-llamas evaluation JSON (`instructions` and `inputs` lists); `pairs`, a prompt/response CSV (`column`,
    `response_column`) with Llama-2 `[INST]` tags stripped, the first row of each distinct prompt.
    `role`: `harmful` or `benign` prompts, `xstest` (prompts labelled safe / unsafe by `label_column`, listed label by
    label), `gsm8k-test` (questions with reference answers); None: training data only, not a prompt set.
    """

    path: str  # inside the data directory
    reader: str
    role: str | None
    responses: bool = False  # the rows have responses: usable as training data
    column: str | None = None
    response_column: str | None = None
    where: tuple[str, str] | None = None
    label_column: str | None = None


def _safety_eval(name: str, role: str) -> NamedSet:
    return NamedSet(f"safety_tuned_llamas/evaluation/{name}.json", "instructions", role)


HARMBENCH_STANDARD = ("FunctionalCategory", "standard")
REGISTRY: dict[str, NamedSet] = {
    # harmful prompts
    "advbench": NamedSet("advbench/harmful_behaviors.csv", "csv", "harmful", column="goal"),  # 520 behaviours
    # the 200 `standard` behaviours, and HarmBench's own validation and test splits of them (41 and 159)
    "harmbench": NamedSet(
        "harmbench/harmbench_behaviors_text_all.csv", "csv", "harmful", column="Behavior", where=HARMBENCH_STANDARD
    ),
    "harmbench-val": NamedSet(
        "harmbench/harmbench_behaviors_text_val.csv", "csv", "harmful", column="Behavior", where=HARMBENCH_STANDARD
    ),
    "harmbench-test": NamedSet(
        "harmbench/harmbench_behaviors_text_test.csv", "csv", "harmful", column="Behavior", where=HARMBENCH_STANDARD
    ),
    # 2,483 harmful instructions with safe replies
    "safety-llamas": NamedSet("safety_tuned_llamas/safety_only_data_Instructions.json", "rows", "harmful", True),
    **{
        name: _safety_eval(name, "harmful")
        for name in ("I-CoNa", "I-Controversial", "I-MaliciousInstructions", "I-PhysicalSafetyUnsafe", "Q-Harm")
    },
    "xstest-unsafe": NamedSet(
        "xstest/xstest_prompts.csv", "csv", "harmful", column="prompt", where=("label", "unsafe")
    ),
    # benign prompts
    "alpaca": NamedSet("alpaca/alpaca_data_1k.json", "rows", "benign", True),  # 1k
    # the 1,904 Alpaca rows on safety-adjacent topics (benign requests, helpful answers) that Qi et al. removed from
    # their benign set: contrast rows for alignment
    "alpaca-safety": NamedSet("alpaca/alpaca_data_safety_only.json", "rows", "benign", True),
    # 805 instructions with text-davinci-003 replies (two of them empty)
    "alpaca-eval": NamedSet("alpaca_eval/text_davinci_003_outputs.json", "rows", "benign", True),
    "gsm8k": NamedSet("gsm8k/train.jsonl", "rows", "benign", True),  # 7,473 train questions with worked answers
    "I-Alpaca": _safety_eval("I-Alpaca", "benign"),
    "I-PhysicalSafetySafe": _safety_eval("I-PhysicalSafetySafe", "benign"),
    # special roles: 250 safe prompts that look unsafe (over-refusal) and 200 unsafe contrast prompts; GSM8K test
    "xstest": NamedSet("xstest/xstest_prompts.csv", "csv", "xstest", column="prompt", label_column="label"),
    "xstest-safe": NamedSet(
        "xstest/xstest_prompts.csv", "csv", "xstest", column="prompt", where=("label", "safe"), label_column="label"
    ),
    "gsm8k-test": NamedSet("gsm8k/test.jsonl", "rows", "gsm8k-test", True),  # 1,319 questions, exact match
    # training data only
    "pure-bad": NamedSet("harmful_pure_bad_100/pure_bad_100_original.jsonl", "rows", None, True),  # harmful pairs
    # AdvBench behaviours with Llama-2-7b-chat refusals, the first refusal of each distinct prompt
    "advbench-refusals": NamedSet(
        "advbench_llama2_refusals/SFT_aligned_llama2-7b-chat-hf_train_short.csv",
        "pairs",
        None,
        True,
        column="prompt",
        response_column="response",
    ),
    # AdvBench behaviours with their affirmative targets ("Sure, here is ..."): harmful compliance, for Antidote
    "advbench-targets": NamedSet(
        "advbench/harmful_behaviors.csv", "pairs", None, True, column="goal", response_column="target"
    ),
}


# ---- the selection grammar
SLICE = re.compile(r"~(?P<spread>\d+)|(?P<start>\d+)(?:-(?P<stop>\d+)(?:/(?P<step>\d+))?)?", re.ASCII)
GRAMMAR = "N (the first N), A-B (items A to B-1), A-B/S (every S-th of those) or ~N (N evenly spread)"


@dataclass(frozen=True)
class Selection:
    """A parsed `NAME:...` selection: items `start` to `stop` − 1 every `step`-th, or `spread` evenly spread items."""

    start: int = 0
    stop: int | None = None
    step: int = 1
    spread: int | None = None

    def apply(self, items: Sequence) -> list:
        if self.spread is None:
            return list(items[self.start : self.stop : self.step])
        if self.spread >= len(items):
            return list(items)
        return [items[i * len(items) // self.spread] for i in range(self.spread)]


def parse_source(source: str, names: Collection[str] = REGISTRY) -> tuple[str, Selection | None]:
    """`NAME:SELECTION` -> (NAME, the parsed selection) when NAME is one of `names`; any other source (a plain name, a
    file, a Hub id, `hexphi:PATH`) -> (source, None)."""
    name, colon, text = source.partition(":")
    if not colon or name not in names:
        return source, None
    match = SLICE.fullmatch(text)
    if match is None:
        raise TetherInputError(f"{source}: after the colon write {GRAMMAR}")
    if match["spread"] is not None:
        return name, Selection(spread=int(match["spread"]))
    if match["step"] is not None and int(match["step"]) < 1:
        raise TetherInputError(f"{source}: the step S of A-B/S must be at least 1")
    if match["stop"] is None:
        return name, Selection(stop=int(match["start"]))
    return name, Selection(int(match["start"]), int(match["stop"]), int(match["step"] or 1))


def check_size(selection: Selection, n: int, source: str, part: str = "") -> None:
    """Refuse a selection that asks for more than the set holds (`NAME:N`, `NAME:~N`, or a range `A-B` that starts
    inside the set and ends past it), naming the set's size; a range that starts past the end selects nothing."""
    name = source.partition(":")[0]
    if selection.spread is not None and 0 < n < selection.spread:
        raise TetherInputError(
            f"{source} asks for {selection.spread} items, but {part}{name} has {n}; ask for at most {n}"
        )
    if selection.spread is None and selection.stop is not None and selection.start < n < selection.stop:
        if selection.start == 0 and selection.step == 1:
            raise TetherInputError(
                f"{source} asks for {selection.stop} items, but {part}{name} has {n}; ask for at most {n}"
            )
        raise TetherInputError(
            f"{source} asks for items up to {selection.stop - 1}, but {part}{name} has {n} (0 to {n - 1}); end the "
            f"range at {n} at most"
        )


def select(
    items: list, source: str, selection: Selection | None, labels: Sequence | None = None, strict: bool = False
) -> list:
    """The items `selection` keeps (all of them without one), applied to each label's items in turn when `labels`
    (one per item) are given; an empty result is an error that names `source`. With `strict` (what the loaders of
    named sets use), a selection reaching past the end of the set is an error too (`check_size`); without it, it keeps
    what there is."""
    if selection is not None and labels is not None:
        groups: dict = {}
        for item, label in zip(items, labels, strict=True):
            groups.setdefault(label, []).append(item)
        for label, group in groups.items():
            if strict:
                check_size(selection, len(group), source, f"the {label!r} items of ")
        items = [item for group in groups.values() for item in selection.apply(group)]
    elif selection is not None:
        if strict:
            check_size(selection, len(items), source)
        items = selection.apply(items)
    if not items:
        raise TetherInputError(
            f"{source} is empty; pass a set with at least one item"
            if selection is None
            else f"{source} selects nothing; ask for at least one item ({GRAMMAR}, inside the set)"
        )
    return items
