"""Benchmarks: a name (or a local file) -> prompts, with labels or reference answers where the metric needs them.

Every prompt set of `tether.data.registry` is a benchmark, its kind set by the set's role:
- harmful sets (`harmbench`: 200 standard behaviours, `harmbench-val` / `harmbench-test`: its own 41 / 159 split;
  `advbench`: 520; `I-CoNa`, `xstest-unsafe`, ...) and local prompt files: kind `harmful`, keyword ASR and judge scores;
- `hexphi:PATH`: HEx-PHI, gated, so the user supplies its folder of `category_*.csv` files (one prompt per line);
- `xstest`: 250 safe prompts that look unsafe (over-refusal) and 200 unsafe contrast prompts; `xstest-safe`: the
  safe prompts only (over-refusal without generating the unsafe contrast prompts); kind `xstest`;
- `gsm8k-test`: GSM8K test questions, exact match of the final number (kind `gsm8k`, which reports its benign
  refusal too);
- benign sets (`alpaca-eval`: 805 instructions, `I-Alpaca`: 50, `gsm8k`: the train questions, `alpaca`, ...): kind
  `instructions`, benign refusal (the share of replies with a refusal string), and judge scores when a judge is given.
A selection follows the name as for every named set: `NAME:N` the first N prompts, `NAME:A-B` prompts A to B − 1
(from 0), `NAME:A-B/S` every S-th of them, `NAME:~N` N prompts evenly spread over the set, so that a small sample
covers every category of a set sorted by category (the first prompt is always kept). For `xstest` a selection
applies to each label. `alpaca-eval:300-805` (validation) and `alpaca-eval:0-300` (test) are disjoint, and so are
the halves `xstest-safe:0-250/2` and `xstest-safe:1-250/2`.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tether.data.prompts import PROMPT_SETS, load_prompts, row_prompt
from tether.data.sources import load_named
from tether.errors import TetherInputError

KINDS = {"harmful": "harmful", "benign": "instructions", "xstest": "xstest", "gsm8k-test": "gsm8k"}  # role -> kind
BENCHMARKS = {**{name: KINDS[entry.role] for name, entry in PROMPT_SETS.items()}, "hexphi": "harmful"}


@dataclass
class Benchmark:
    name: str
    kind: str  # harmful | xstest | gsm8k | instructions
    prompts: list[list[dict]]
    labels: list[str] = field(default_factory=list)  # xstest: safe / unsafe
    answers: list[str] = field(default_factory=list)  # gsm8k reference answers

    @property
    def version(self) -> str:
        """Hash of the prompts (and labels, answers): results name exactly what was evaluated."""
        text = json.dumps([self.prompts, self.labels, self.answers])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_benchmark(spec: str, data_dir: str | None = None) -> Benchmark:
    """A registered prompt set (`NAME` or `NAME:SELECTION`), `hexphi:PATH` or a local prompt file (harmful)."""
    name, _, arg = spec.partition(":")
    if name == "hexphi":
        return _hexphi(arg)
    if name in PROMPT_SETS:
        name, entry, rows = load_named(spec, data_dir)
        prompts = [[{"role": "user", "content": row_prompt(row, name, i)}] for i, row in enumerate(rows, start=1)]
        labels = [row["label"] for row in rows] if entry.role == "xstest" else []
        answers = [row["answer"] for row in rows] if entry.role == "gsm8k-test" else []
        return Benchmark(name, KINDS[entry.role], prompts, labels, answers)
    if Path(spec).suffix in (".jsonl", ".json", ".txt") or Path(spec).exists():
        return Benchmark(Path(spec).stem, "harmful", load_prompts(spec, data_dir))
    close = difflib.get_close_matches(name, BENCHMARKS, n=1)
    raise TetherInputError(
        f"unknown benchmark {spec!r}; {f'did you mean {close[0]}? ' if close else ''}choose one of "
        f"{', '.join(BENCHMARKS)} (hexphi:PATH), or pass a prompt file"
    )


def _hexphi(path: str) -> Benchmark:
    folder = Path(path)
    files = sorted(folder.glob("category_*.csv")) if folder.is_dir() else [folder]
    if not path or not all(f.is_file() for f in files) or not files:
        raise TetherInputError(
            "benchmark hexphi needs its local path (it is gated): --benchmark hexphi:/path/to/HEx-PHI"
        )
    texts = []
    for file in files:
        with file.open(newline="", encoding="utf-8") as f:
            texts += [row[0] for row in csv.reader(f) if row and row[0].strip()]
    return Benchmark("hexphi", "harmful", [[{"role": "user", "content": t}] for t in texts])


__all__ = ["BENCHMARKS", "PROMPT_SETS", "Benchmark", "load_benchmark"]
