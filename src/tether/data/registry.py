"""One registry of the named sets, and the one grammar that selects part of a set.

Each entry says where the set lies in a data directory (`--data_dir`, `$TETHER_DATA_DIR`, default `../shared/data`),
how its rows are read, its role in evaluation, whether its rows have responses (training data) and, where one exists,
its public copy on the Hugging Face Hub at a pinned commit (`HubSource`), read when the default directory lacks the
file (`tether.data.sources.locate_named`). `load_examples` (chat rows with responses), `load_prompts` (prompts) and
`load_benchmark` look names up here; every set with an evaluation role is a prompt set and a benchmark.
`LOCAL_SHA256` records the files of the canonical data directory, for `tether data verify`.

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
class HubSource:
    """A named set's public copy on the Hugging Face Hub, and how its rows become the rows of the local file.

    `repo` at `revision` (a commit sha: the rows cannot change under a recorded result), with `config` and `split` as
    `datasets.load_dataset` takes them; or `file`, a JSON list of rows in the repo, downloaded as it is (for a repo
    whose loading script `datasets` no longer runs). `columns` renames the Hub's columns to the local file's, in the
    local file's order (only these are kept); `constant` adds columns that the local
    file has and the Hub copy holds elsewhere (HarmBench's functional category is a config there). The records are
    then read like the local file's (same filter, same label order), so a set's rows are the same wherever they came
    from. `differs`: how the Hub copy differs from the local file, shown by `tether data list` and warned about on
    loading; empty when it holds the same rows.
    """

    repo: str
    revision: str
    split: str = "train"
    config: str | None = None
    file: str | None = None
    columns: tuple[tuple[str, str], ...] = ()
    constant: tuple[tuple[str, str], ...] = ()
    differs: str = ""

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision}" + (f" ({self.config or self.file})" if self.config or self.file else "")


@dataclass(frozen=True)
class NamedSet:
    """A set in the data directory.

    `reader`: `rows`, a JSON list or JSON Lines of chat, Alpaca or GSM8K rows; `csv`, one prompt per row from
    `column`, only the rows whose column `where[0]` equals `where[1]` when `where` is given; `instructions`, the
    safety-llamas evaluation JSON (`instructions` and `inputs` lists); `pairs`, a prompt/response CSV (`column`,
    `response_column`) with Llama-2 `[INST]` tags stripped, the first row of each distinct prompt.
    `role`: `harmful` or `benign` prompts, `xstest` (prompts labelled safe / unsafe by `label_column`, listed label by
    label), `gsm8k-test` (questions with reference answers); None: training data only, not a prompt set.
    `hub`: its public copy on the Hub, read when the default data directory lacks the file; None where no public copy
    holds these rows (the entry's comment says why), and then only a data directory serves the set.
    """

    path: str  # inside the data directory
    reader: str
    role: str | None
    responses: bool = False  # the rows have responses: usable as training data
    column: str | None = None
    response_column: str | None = None
    where: tuple[str, str] | None = None
    label_column: str | None = None
    hub: HubSource | None = None


# ---- the Hub copies. Sets that share a local file share one source, so that a mirror of one serves the others.
ADVBENCH_HUB = HubSource(
    "walledai/AdvBench", "9d4730540082fa4017450b65ca1c0e1d8d30446e", columns=(("prompt", "goal"), ("target", "target"))
)
# the `standard` config holds the 200 standard behaviours, without HarmBench's BehaviorID (so not its val/test split)
HARMBENCH_HUB = HubSource(
    "walledai/HarmBench",
    "a777536ffc60bc8317b06380da5b2acf8d6491fd",
    config="standard",
    columns=(("prompt", "Behavior"),),
    constant=(("FunctionalCategory", "standard"),),
)
XSTEST_HUB = HubSource(  # the v2 prompts with their labels; no `id` column, which nothing reads
    "walledai/XSTest",
    "f1d713187c61b6ae64e602d74f0b3d812cc2e8e8",
    split="test",
    columns=(("prompt", "prompt"), ("type", "type"), ("label", "label"), ("focus", "focus"), ("note", "note")),
)
GSM8K_COLUMNS = (("question", "question"), ("answer", "answer"))
GSM8K_REVISION = "e53f048856ff4f594e959d75785d2c2d37b678ee"


def _safety_hub(config: str) -> HubSource:
    """Bianchi et al.'s evaluation prompts as walledai/SafetyDatasets holds them: a `prompt` column, no inputs."""
    return HubSource(
        "walledai/SafetyDatasets",
        "466e3d7c68fa4cef183e0cdccd63e2bb9c128dcc",
        config=config,
        columns=(("prompt", "instruction"),),
        constant=(("input", ""),),
    )


def _safety_eval(name: str, role: str, hub: HubSource | None = None) -> NamedSet:
    return NamedSet(f"safety_tuned_llamas/evaluation/{name}.json", "instructions", role, hub=hub)


HARMBENCH_STANDARD = ("FunctionalCategory", "standard")
REGISTRY: dict[str, NamedSet] = {
    # harmful prompts
    "advbench": NamedSet(  # 520 behaviours
        "advbench/harmful_behaviors.csv", "csv", "harmful", column="goal", hub=ADVBENCH_HUB
    ),
    # the 200 `standard` behaviours, and HarmBench's own validation and test splits of them (41 and 159; no Hub copy
    # carries the split)
    "harmbench": NamedSet(
        "harmbench/harmbench_behaviors_text_all.csv",
        "csv",
        "harmful",
        column="Behavior",
        where=HARMBENCH_STANDARD,
        hub=HARMBENCH_HUB,
    ),
    "harmbench-val": NamedSet(
        "harmbench/harmbench_behaviors_text_val.csv", "csv", "harmful", column="Behavior", where=HARMBENCH_STANDARD
    ),
    "harmbench-test": NamedSet(
        "harmbench/harmbench_behaviors_text_test.csv", "csv", "harmful", column="Behavior", where=HARMBENCH_STANDARD
    ),
    # 2,483 harmful instructions with safe replies (no Hub copy of the training file)
    "safety-llamas": NamedSet("safety_tuned_llamas/safety_only_data_Instructions.json", "rows", "harmful", True),
    "I-CoNa": _safety_eval("I-CoNa", "harmful", _safety_hub("CoNa")),
    "I-Controversial": _safety_eval("I-Controversial", "harmful", _safety_hub("ControversialInstructions")),
    "I-MaliciousInstructions": _safety_eval("I-MaliciousInstructions", "harmful", _safety_hub("MaliciousInstructions")),
    # the Hub's `PhysicalSafety` config does not say which of its prompts are the safe and which the unsafe ones
    "I-PhysicalSafetyUnsafe": _safety_eval("I-PhysicalSafetyUnsafe", "harmful"),
    "Q-Harm": _safety_eval("Q-Harm", "harmful", _safety_hub("QHarm")),
    "xstest-unsafe": NamedSet(
        "xstest/xstest_prompts.csv", "csv", "harmful", column="prompt", where=("label", "unsafe"), hub=XSTEST_HUB
    ),
    # benign prompts
    "alpaca": NamedSet(  # 1k
        "alpaca/alpaca_data_1k.json",
        "rows",
        "benign",
        True,
        hub=HubSource(
            "tatsu-lab/alpaca",
            "dce01c9b08f87459cf36a430d809084718273017",
            columns=(("instruction", "instruction"), ("input", "input"), ("output", "output")),
            differs="it holds all 52,002 Alpaca rows, of which the local file is a 1,000-row sample whose selection is "
            "not documented: the same kind of rows, not the same rows",
        ),
    ),
    # the 1,904 Alpaca rows on safety-adjacent topics (benign requests, helpful answers) that Qi et al. removed from
    # their benign set: contrast rows for alignment (a keyword filter's output; no Hub copy)
    "alpaca-safety": NamedSet("alpaca/alpaca_data_safety_only.json", "rows", "benign", True),
    # 805 instructions with text-davinci-003 replies (two of them empty); the Hub repo's loading script is not run:
    # its JSON file is read as it is
    "alpaca-eval": NamedSet(
        "alpaca_eval/text_davinci_003_outputs.json",
        "rows",
        "benign",
        True,
        hub=HubSource(
            "tatsu-lab/alpaca_eval",
            "2edc6fad8be6b14ea7230aabfd08188da6b8b814",
            file="alpaca_eval.json",
            columns=(
                ("dataset", "dataset"),
                ("instruction", "instruction"),
                ("output", "output"),
                ("generator", "generator"),
            ),
        ),
    ),
    "gsm8k": NamedSet(  # 7,473 train questions with worked answers
        "gsm8k/train.jsonl",
        "rows",
        "benign",
        True,
        hub=HubSource("openai/gsm8k", GSM8K_REVISION, "train", "main", columns=GSM8K_COLUMNS),
    ),
    "I-Alpaca": _safety_eval("I-Alpaca", "benign"),  # not in walledai/SafetyDatasets
    "I-PhysicalSafetySafe": _safety_eval("I-PhysicalSafetySafe", "benign"),  # see I-PhysicalSafetyUnsafe
    # special roles: 250 safe prompts that look unsafe (over-refusal) and 200 unsafe contrast prompts; GSM8K test
    "xstest": NamedSet(
        "xstest/xstest_prompts.csv", "csv", "xstest", column="prompt", label_column="label", hub=XSTEST_HUB
    ),
    "xstest-safe": NamedSet(
        "xstest/xstest_prompts.csv",
        "csv",
        "xstest",
        column="prompt",
        where=("label", "safe"),
        label_column="label",
        hub=XSTEST_HUB,
    ),
    "gsm8k-test": NamedSet(  # 1,319 questions, exact match
        "gsm8k/test.jsonl",
        "rows",
        "gsm8k-test",
        True,
        hub=HubSource("openai/gsm8k", GSM8K_REVISION, "test", "main", columns=GSM8K_COLUMNS),
    ),
    # training data only
    # harmful pairs: no public Hub copy (the source repository states no license)
    "pure-bad": NamedSet("harmful_pure_bad_100/pure_bad_100_original.jsonl", "rows", None, True),
    # AdvBench behaviours with Llama-2-7b-chat refusals, the first refusal of each distinct prompt (a GitHub file of
    # Wei et al. 2024; no Hub copy)
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
        "advbench/harmful_behaviors.csv", "pairs", None, True, column="goal", response_column="target", hub=ADVBENCH_HUB
    ),
}

# sha256 of each file of the canonical data directory (its README gives every file's upstream commit)
LOCAL_SHA256 = {
    "advbench/harmful_behaviors.csv": "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1",
    "harmbench/harmbench_behaviors_text_all.csv": "8d81accedd38eaaf8b760618622bb888417d1fd0c86eba65c427a16f1cbb4afc",
    "harmbench/harmbench_behaviors_text_val.csv": "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
    "harmbench/harmbench_behaviors_text_test.csv": "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
    "safety_tuned_llamas/safety_only_data_Instructions.json": (
        "7dde08acf87f10cf74fd1b76f56538eae8e413ae8e6b09e3f7bcd97769058dbe"
    ),
    "safety_tuned_llamas/evaluation/I-CoNa.json": "e07d92e376198e60ac1004902dc3fec46513ac70b08d855b4101288b8270d62a",
    "safety_tuned_llamas/evaluation/I-Controversial.json": (
        "0590fc6ee97a39c6a43adc21fe5a4ccbf546ea52e89a32757db6ea3d46ce65c4"
    ),
    "safety_tuned_llamas/evaluation/I-MaliciousInstructions.json": (
        "7a2bc751d49983800848050282aa2a84b3faa7044c3178228c49dd68df7d679f"
    ),
    "safety_tuned_llamas/evaluation/I-PhysicalSafetyUnsafe.json": (
        "16324a2f1ded933e8c7a9f6c7d3924130f76260d03f9df2205e0a25c02de8aae"
    ),
    "safety_tuned_llamas/evaluation/Q-Harm.json": "ecc1d19030d41ad550a1e69996dc424074e3e45fb2fa5e8e44b46f294aea295a",
    "xstest/xstest_prompts.csv": "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a",
    "alpaca/alpaca_data_1k.json": "308ff96375b5a08f7ebf0c763aaf02f7436beb974a28f868eba9823919e6b74c",
    "alpaca/alpaca_data_safety_only.json": "b061c8b5f6ccbfc9ac0110f2ea1516cdfd45aa73ff9d725f5ab5d2e482fe4c92",
    "alpaca_eval/text_davinci_003_outputs.json": "af0bc112f08c88bf589bbfe6fc1036806d0a0f6fec9c4d5a4db860f5afe73b4b",
    "gsm8k/train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "safety_tuned_llamas/evaluation/I-Alpaca.json": "30db84ee303df15b653566437ccf1a2fc837caac99a570915d720f65f041fe6d",
    "safety_tuned_llamas/evaluation/I-PhysicalSafetySafe.json": (
        "34c874532623e405fb574f0fa8d6b86cbecce0e3340f67b146a6a6bc2453bed6"
    ),
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "harmful_pure_bad_100/pure_bad_100_original.jsonl": (
        "e57ee71e01b37a8744cb7516dcbce516a965d4a9cf27e35a4ad3e5cce275745b"
    ),
    "advbench_llama2_refusals/SFT_aligned_llama2-7b-chat-hf_train_short.csv": (
        "84e1d4fb44adbffb7b2dddd20e967aeaba9702c16b0160920778b8517c284439"
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
