"""Benchmarks: a name (or a local file) -> prompts, with labels or reference answers where the metric needs them.

- `harmbench` (200 standard behaviours; `harmbench-val` / `harmbench-test`: its own 41 / 159 split), `advbench`
  (520), local prompt files: harmful; keyword ASR, judge scores;
- `hexphi:PATH`: HEx-PHI, gated, so the user supplies its folder of `category_*.csv` files (one prompt per line);
- `xstest`: 250 safe prompts that look unsafe (over-refusal) and 200 unsafe contrast prompts; `xstest-safe`: the
  safe prompts only (over-refusal without generating the unsafe contrast prompts);
- `gsm8k`: test questions, exact match of the final number;
- `alpaca_eval` (805 instructions), `I-Alpaca` (100): ordinary requests; benign refusal (the share of replies with a
  refusal string), and judge scores when a judge is given. `gsm8k` reports its benign refusal too.
`NAME:N` keeps N prompts evenly spread over the set (per label for `xstest`), so that a small sample covers every
category of a set that is sorted by category; the first prompt is always kept. `NAME:A-B` keeps prompts A to B − 1
(from 0) and `NAME:A-B/S` every S-th of them, as for prompt sets: `alpaca_eval:300-805` (validation) and
`alpaca_eval:0-300` (test) are disjoint, and so are the halves `xstest-safe:0-250/2` and `xstest-safe:1-250/2`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tether.data.prompts import PROMPT_SETS, load_prompts, prompt_slice
from tether.data.sources import read_rows, resolve_data_dir
from tether.errors import TetherInputError

BENCHMARKS = {
    "harmbench": "harmful",
    "harmbench-val": "harmful",
    "harmbench-test": "harmful",
    "advbench": "harmful",
    "hexphi": "harmful",
    "xstest": "xstest",
    "xstest-safe": "xstest",
    "gsm8k": "gsm8k",
    "alpaca_eval": "instructions",
    "I-Alpaca": "instructions",
}


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
    name, _, arg = spec.partition(":")
    if name == "hexphi":
        return _hexphi(arg)
    if arg and not arg.isdigit() and name == "xstest":
        raise TetherInputError(f"benchmark {spec}: a range needs one label; use xstest-safe:{arg}")

    def select(items: list) -> list:
        chosen = spread(items, int(arg)) if arg.isdigit() else items[prompt_slice(spec, arg)] if arg else items
        if not chosen:
            raise TetherInputError(f"benchmark {spec} selects no prompt; ask for at least one (NAME:N with N ≥ 1)")
        return chosen

    if name in ("harmbench", "harmbench-val", "harmbench-test", "advbench"):
        return Benchmark(name, "harmful", select(load_prompts(name, data_dir)))
    if name in ("alpaca_eval", "I-Alpaca"):
        return Benchmark(name, "instructions", select(load_prompts(name.replace("_", "-"), data_dir)))
    if name in ("xstest", "xstest-safe"):
        safe = select(load_prompts("xstest-safe", data_dir))
        unsafe = select(load_prompts("xstest-unsafe", data_dir)) if name == "xstest" else []
        return Benchmark(name, "xstest", safe + unsafe, labels=["safe"] * len(safe) + ["unsafe"] * len(unsafe))
    if name == "gsm8k":
        path = resolve_data_dir(data_dir) / "gsm8k" / "test.jsonl"
        if not path.is_file():
            raise TetherInputError(f"benchmark gsm8k expects {path}; pass --data_dir")
        rows = select(read_rows(path))
        return Benchmark(
            name,
            "gsm8k",
            [[{"role": "user", "content": r["question"]}] for r in rows],
            answers=[r["answer"] for r in rows],
        )
    if Path(spec).suffix in (".jsonl", ".json", ".txt") or Path(spec).exists():
        return Benchmark(Path(spec).stem, "harmful", load_prompts(spec, data_dir))
    raise TetherInputError(
        f"unknown benchmark {spec!r}; choose one of {', '.join(BENCHMARKS)} (hexphi:PATH), or pass a prompt file"
    )


def spread(items: list, limit: int | None) -> list:
    """`limit` items at evenly spaced positions (all of them when `limit` is None or not smaller)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


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
