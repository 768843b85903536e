"""Prompt sets (no responses) for probes and evaluation: named sets in the data directory, or local files.

Each prompt is a list of chat messages ending with the user turn. Named sets, read from `data_dir`
(`--data_dir`, `$TETHER_DATA_DIR`, default `../shared/data`):
- harmful: `advbench` (520 behaviours), `harmbench` (the 200 `standard` behaviours; `harmbench-val` and
  `harmbench-test`: HarmBench's own validation and test splits of them, 41 and 159), `safety-llamas` (2,483
  instructions), `I-CoNa`, `I-Controversial`, `I-MaliciousInstructions`, `I-PhysicalSafetyUnsafe`, `Q-Harm`,
  `xstest-unsafe`;
- benign: `alpaca` (1k), `alpaca-safety` (the 1,904 safety-related Alpaca rows Qi et al. removed from their benign
  set: benign requests on safety-adjacent topics), `alpaca-eval` (805), `gsm8k` (train questions), `gsm8k-test`,
  `xstest-safe` (safe prompts that look unsafe), `I-Alpaca`, `I-PhysicalSafetySafe`.
A local `.jsonl`/`.json` file may hold `prompt`, `instruction` (+ `input`), `question`, `goal` or `messages` rows;
a `.txt` file one prompt per line. `NAME:N` takes the first N prompts of a set, `NAME:A-B` prompts A to B − 1 (from 0),
`NAME:A-B/S` every S-th of them, so `alpaca-eval:300` and `alpaca-eval:300-805` are disjoint, and so are the
interleaved halves `xstest-safe:0-250/2` and `xstest-safe:1-250/2`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tether.data.sources import FILE_SUFFIXES, read_rows, resolve_data_dir
from tether.errors import TetherInputError

SAFETY_EVAL = "safety_tuned_llamas/evaluation/{}.json"
PROMPT_SETS = {
    "advbench": ("csv", "advbench/harmful_behaviors.csv", "goal", None),
    "harmbench": ("csv", "harmbench/harmbench_behaviors_text_all.csv", "Behavior", ("FunctionalCategory", "standard")),
    "harmbench-val": (
        "csv",
        "harmbench/harmbench_behaviors_text_val.csv",
        "Behavior",
        ("FunctionalCategory", "standard"),
    ),
    "harmbench-test": (
        "csv",
        "harmbench/harmbench_behaviors_text_test.csv",
        "Behavior",
        ("FunctionalCategory", "standard"),
    ),
    "xstest-safe": ("csv", "xstest/xstest_prompts.csv", "prompt", ("label", "safe")),
    "xstest-unsafe": ("csv", "xstest/xstest_prompts.csv", "prompt", ("label", "unsafe")),
    "safety-llamas": ("rows", "safety_tuned_llamas/safety_only_data_Instructions.json", None, None),
    "alpaca": ("rows", "alpaca/alpaca_data_1k.json", None, None),
    "alpaca-safety": ("rows", "alpaca/alpaca_data_safety_only.json", None, None),
    "alpaca-eval": ("rows", "alpaca_eval/text_davinci_003_outputs.json", None, None),
    "gsm8k": ("rows", "gsm8k/train.jsonl", None, None),
    "gsm8k-test": ("rows", "gsm8k/test.jsonl", None, None),
    **{
        name: ("instructions", SAFETY_EVAL.format(name), None, None)
        for name in (
            "I-CoNa",
            "I-Controversial",
            "I-MaliciousInstructions",
            "I-PhysicalSafetyUnsafe",
            "I-PhysicalSafetySafe",
            "I-Alpaca",
            "Q-Harm",
        )
    },
}


def load_prompts(source: str, data_dir: str | None = None) -> list[list[dict]]:
    """Prompts as chat message lists, from a named set (optionally `NAME:N`) or a local file."""
    name, _, limit = source.partition(":") if source.split(":")[0] in PROMPT_SETS else (source, "", "")
    if name in PROMPT_SETS:
        kind, relative, column, keep = PROMPT_SETS[name]
        path = resolve_data_dir(data_dir) / relative
        if not path.is_file():
            raise TetherInputError(f"prompt set {name!r} expects {path}; pass --data_dir (or set TETHER_DATA_DIR)")
        texts = _read_named(kind, path, column, keep)
    else:
        path = Path(source)
        if not path.is_file():
            raise TetherInputError(
                f"prompt source not found: {source}; pass a file (.jsonl/.json/.txt) or one of {', '.join(PROMPT_SETS)}"
            )
        if path.suffix == ".txt":
            texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        elif path.suffix in FILE_SUFFIXES:
            texts = [_row_prompt(row, source, i) for i, row in enumerate(read_rows(path), start=1)]
        else:
            raise TetherInputError(f"prompt file {source} must end in .jsonl, .json or .txt")
    if limit:
        texts = texts[prompt_slice(source, limit)]
    if not texts:
        raise TetherInputError(f"prompt source {source} is empty; pass a set with at least one prompt")
    return [[{"role": "user", "content": text}] for text in texts]


def prompt_slice(source: str, limit: str) -> slice:
    span, _, step = limit.partition("/")
    bounds = span.split("-")
    if len(bounds) > 2 or not all(bound.isdigit() for bound in bounds) or (step and not step.isdigit()):
        raise TetherInputError(
            f"prompt source {source}: after the colon write N (the first N), A-B (prompts A to B-1) or A-B/S "
            "(every S-th prompt from A to B-1)"
        )
    if step and (len(bounds) != 2 or int(step) < 1):
        raise TetherInputError(f"prompt source {source}: a step /S needs a range A-B and S ≥ 1")
    if len(bounds) == 1:
        return slice(int(bounds[0]))
    return slice(int(bounds[0]), int(bounds[1]), int(step) if step else None)


def _read_named(kind, path, column, keep) -> list[str]:
    if kind == "csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [row[column] for row in csv.DictReader(f) if keep is None or row[keep[0]] == keep[1]]
    if kind == "instructions":
        data = json.loads(path.read_text())
        inputs = data.get("inputs") or [""] * len(data["instructions"])
        return [i + (f"\n\n{x}" if x else "") for i, x in zip(data["instructions"], inputs, strict=True)]
    return [_row_prompt(row, str(path), i) for i, row in enumerate(read_rows(path), start=1)]


def _row_prompt(row: dict, source: str, index: int) -> str:
    if "messages" in row:
        return next(m["content"] for m in row["messages"] if m["role"] == "user")
    if "instruction" in row:
        return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    for key in ("prompt", "question", "goal"):
        if key in row:
            return row[key]
    raise TetherInputError(f"{source} example {index}: no prompt field (prompt, instruction, question, goal, messages)")
