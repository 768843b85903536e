"""Prompt sets (no responses) for probes and evaluation: named sets in the data directory, or local files.

Each prompt is a list of chat messages ending with the user turn. Named sets (`tether.data.registry`), read from
`data_dir` (`--data_dir`, `$TETHER_DATA_DIR`, default `../shared/data`) or, without one, from their Hub copy
(`tether.data.sources.locate_named`):
- harmful: `advbench` (520 behaviours), `harmbench` (the 200 `standard` behaviours; `harmbench-val` and
  `harmbench-test`: HarmBench's own validation and test splits of them, 41 and 159), `safety-llamas` (2,483
  instructions), `I-CoNa`, `I-Controversial`, `I-MaliciousInstructions`, `I-PhysicalSafetyUnsafe`, `Q-Harm`,
  `xstest-unsafe`;
- benign: `alpaca` (1k), `alpaca-safety` (the 1,904 safety-related Alpaca rows Qi et al. removed from their benign
  set: benign requests on safety-adjacent topics), `alpaca-eval` (805), `gsm8k` (train questions), `I-Alpaca`,
  `I-PhysicalSafetySafe`;
- `xstest-safe` (safe prompts that look unsafe), `xstest` (its 250 safe prompts, then its 200 unsafe ones),
  `gsm8k-test` (test questions).
A local `.jsonl`/`.json` file may hold `prompt`, `instruction` (+ `input`), `question`, `goal` or `messages` rows;
a `.txt` file one prompt per line. A named set takes a selection (`tether.data.registry`): `NAME:N` the first N
prompts, `NAME:A-B` prompts A to B − 1 (from 0), `NAME:A-B/S` every S-th of them, `NAME:~N` N prompts evenly
spread; so `alpaca-eval:300` and `alpaca-eval:300-805` are disjoint, and so are the interleaved halves
`xstest-safe:0-250/2` and `xstest-safe:1-250/2`.
"""

from __future__ import annotations

from pathlib import Path

from tether.data.registry import REGISTRY, parse_source
from tether.data.sources import FILE_SUFFIXES, load_named, read_rows, read_text
from tether.errors import TetherInputError

# The named prompt sets: every registered set with an evaluation role (read by `tether.critics.probe_sweep`).
PROMPT_SETS = {name: entry for name, entry in REGISTRY.items() if entry.role is not None}


def load_prompts(source: str, data_dir: str | None = None) -> list[list[dict]]:
    """Prompts as chat message lists, from a named set (optionally `NAME:SELECTION`) or a local file."""
    name, _ = parse_source(source)
    if name in PROMPT_SETS:
        texts = [row_prompt(row, name, i) for i, row in enumerate(load_named(source, data_dir)[2], start=1)]
    elif name in REGISTRY:
        raise TetherInputError(
            f"named set {name!r} is training data, not a prompt set; pass one of {', '.join(PROMPT_SETS)} or a file"
        )
    else:
        path = Path(source)
        if not path.is_file():
            raise TetherInputError(
                f"prompt source not found: {source}; pass a file (.jsonl/.json/.txt) or one of {', '.join(PROMPT_SETS)}"
            )
        if path.suffix == ".txt":
            texts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        elif path.suffix in FILE_SUFFIXES:
            texts = [row_prompt(row, source, i) for i, row in enumerate(read_rows(path), start=1)]
        else:
            raise TetherInputError(f"prompt file {source} must end in .jsonl, .json or .txt")
        if not texts:
            raise TetherInputError(f"prompt source {source} is empty; pass a set with at least one prompt")
    return [[{"role": "user", "content": text}] for text in texts]


def row_prompt(row: dict, source: str, index: int) -> str:
    if not isinstance(row, dict):
        raise TetherInputError(f"{source} example {index}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        users = [m.get("content") for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[0], str):
            raise TetherInputError(f"{source} example {index}: `messages` holds no user message with string content")
        return users[0]
    if "instruction" in row:
        return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    for key in ("prompt", "question", "goal"):
        if key in row:
            if not isinstance(row[key], str):
                raise TetherInputError(f"{source} example {index}: `{key}` must be a string, got {row[key]!r:.60}")
            return row[key]
    raise TetherInputError(f"{source} example {index}: no prompt field (prompt, instruction, question, goal, messages)")
