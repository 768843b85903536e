"""Load training examples as chat `messages` from local files, named sets (a data directory or their Hub copy), or
any Hub dataset.

Accepted row formats, detected per row:
- `messages`: a list of {"role", "content"}; the last message is the assistant response that is trained on;
- Alpaca: `instruction`, optional `input`, `output`;
- `prompt` / `completion`: strings, or lists of messages;
- `question` / `answer` (GSM8K).
A `risk` column (name configurable; a number in [0, 1], anything else refused) is carried along for the `label`
critic.

A named set is read from the first of: `data_dir` (`--data_dir`), `$TETHER_DATA_DIR`, the default `../shared/data`,
its Hub copy at the registry's pinned revision (`locate_named`). A directory the user named (either of the first two)
that lacks the file is an error naming it, since the user asked for that directory; only the default falls back to
the Hub. The Hub copy's records are read like the local file's (`file_records`, `shape_rows`), so the rows are the
same wherever they came from.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from tether.data.hub import load_hub_records
from tether.data.registry import REGISTRY, HubSource, NamedSet, parse_source, select
from tether.errors import TetherInputError

DEFAULT_DATA_DIR = "../shared/data"
# The named sets `load_examples` takes (those with responses); the sets themselves are in `tether.data.registry`.
NAMED_DATASETS = {name: entry.path for name, entry in REGISTRY.items() if entry.responses}
GENERATED_DATASETS = ("tiny-synthetic",)
FILE_SUFFIXES = (".json", ".jsonl")


def resolve_data_dir(data_dir: str | None) -> Path:
    return data_dir_choice(data_dir)[0]


def data_dir_choice(data_dir: str | None) -> tuple[Path, str | None]:
    """The data directory and who chose it: `--data_dir`, `TETHER_DATA_DIR`, or None for the default."""
    if data_dir:
        return Path(data_dir), "--data_dir"
    if os.environ.get("TETHER_DATA_DIR"):
        return Path(os.environ["TETHER_DATA_DIR"]), "TETHER_DATA_DIR"
    return Path(DEFAULT_DATA_DIR), None


def locate_named(name: str, data_dir: str | None = None) -> Path | HubSource:
    """Where the named set's rows come from: its file in the data directory, or its Hub copy when the directory is the
    default one and lacks the file. Anything else is an error naming the directory and the remedies."""
    entry = REGISTRY[name]
    folder, chosen = data_dir_choice(data_dir)
    path = folder / entry.path
    if path.is_file():
        return path
    if chosen is None and entry.hub is not None:
        return entry.hub
    top = entry.path.split("/")[0]
    where = f"{chosen} {folder}" if chosen else "the default data directory"
    hub = (
        f", or leave both unset to read its Hub copy {entry.hub.repo}" if entry.hub else " (it has no public Hub copy)"
    )
    raise TetherInputError(
        f"named set {name!r} expects {path} ({where}); pass --data_dir (or set TETHER_DATA_DIR) to the folder that "
        f"holds {top}/{hub}"
    )


def load_examples(
    source: str, data_dir: str | None = None, risk_column: str = "risk", split: str = "train", drop_empty: bool = False
):
    """Rows `{"messages": [...], "risk": float (if present)}` from a file, a named dataset (`NAME:SELECTION` keeps
    part of it, see `tether.data.registry`) or a Hub dataset id. `drop_empty` skips Alpaca rows with an empty
    `output` (evaluation data) instead of calling them an error; a selection counts them."""
    name, selection = parse_source(source, [*REGISTRY, *GENERATED_DATASETS])
    if name == "tiny-synthetic":
        return select(tiny_synthetic_examples(), source, selection, strict=True)
    if name in REGISTRY:
        if not REGISTRY[name].responses:
            raise TetherInputError(
                f"named set {name!r} holds prompts without responses, so it cannot be training data; pass a "
                f"named dataset ({', '.join(NAMED_DATASETS)}), a file or a Hugging Face dataset id"
            )
        raw = load_named(source, data_dir)[2]
    elif source.endswith(FILE_SUFFIXES) or os.sep in source or Path(source).exists():
        path = Path(source)
        if not path.is_file():
            raise TetherInputError(
                f"dataset file not found: {source}; pass an existing .json/.jsonl file, a named dataset "
                f"({', '.join([*NAMED_DATASETS, *GENERATED_DATASETS])}) or a Hugging Face dataset id"
            )
        raw = read_rows(path)
    else:
        raw = _load_hub_rows(source, split)
    if drop_empty:
        raw = [row for row in raw if not isinstance(row, dict) or str(row.get("output", "x")).strip()]
    return [to_chat_row(row, source, i, risk_column) for i, row in enumerate(raw, start=1)]


def load_named(source: str, data_dir: str | None = None) -> tuple[str, NamedSet, list[dict]]:
    """`NAME` or `NAME:SELECTION` of the registry -> (NAME, its entry, the selected rows, in file order). Rows are
    dicts that `to_chat_row` reads when the set has responses: as in the file for `rows`; `{"prompt"}` (+ `"label"`)
    for `csv`; `{"instruction", "input"}` for `instructions`; `{"instruction", "output"}` for `pairs`."""
    name, selection = parse_source(source)
    entry = REGISTRY[name]
    rows = shape_rows(entry, named_records(name, data_dir))
    labels = [row["label"] for row in rows] if entry.label_column else None
    return name, entry, select(rows, source, selection, labels, strict=True)


def named_records(name: str, data_dir: str | None = None) -> list[dict]:
    """The records of a named set's file, from the data directory or the Hub (`locate_named`), before `shape_rows`."""
    where = locate_named(name, data_dir)
    if isinstance(where, HubSource):
        return load_hub_records(name, where, data_dir_choice(data_dir)[0] / REGISTRY[name].path)
    return file_records(REGISTRY[name], where)


def file_records(entry: NamedSet, path: Path) -> list[dict]:
    """A named set's file as records: the CSV's rows (`csv`, `pairs`), `{"instruction", "input"}` (`instructions`), or
    the JSON rows (`rows`)."""
    if entry.reader in ("csv", "pairs"):
        return read_csv(path)
    if entry.reader == "instructions":
        data = json.loads(read_text(path))
        inputs = data.get("inputs") or [""] * len(data["instructions"])
        return [{"instruction": i, "input": x} for i, x in zip(data["instructions"], inputs, strict=True)]
    return read_rows(path)


def shape_rows(entry: NamedSet, records: list[dict]) -> list[dict]:
    """A named set's records -> its rows: the `csv` prompts (filtered, label by label) and the `pairs` rows; the
    records of `instructions` and `rows` sets are their rows."""
    if entry.reader == "csv":
        return prompt_rows(records, entry.column, entry.where, entry.label_column)
    if entry.reader == "pairs":
        return pair_rows(records, entry.column, entry.response_column)
    return records


def read_rows(path: Path) -> list[dict]:
    """JSON Lines (one object per line) or a JSON list of objects; errors name the file and line."""
    text = read_text(path)
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise TetherInputError(
                    f"{path}:{lineno}: malformed JSON line ({error.msg}); fix or remove it"
                ) from None
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise TetherInputError(f"{path}:{error.lineno}: malformed JSON ({error.msg}); fix the file") from None
        if not isinstance(rows, list):
            raise TetherInputError(f"{path}: expected a JSON list of examples, got {type(rows).__name__}")
    if not rows:
        raise TetherInputError(f"{path}: the dataset is empty; pass a file with at least one example")
    return rows


def read_text(path: Path) -> str:
    """The file's text as UTF-8; a byte that is not UTF-8 is an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TetherInputError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8"
        ) from None


def read_csv(path: Path) -> list[dict]:
    """A CSV file's rows as dicts keyed by its header."""
    with io.StringIO(read_text(path), newline="") as f:
        return list(csv.DictReader(f))


def prompt_rows(
    records: list[dict], column: str, where: tuple[str, str] | None = None, label_column: str | None = None
) -> list[dict]:
    """`{"prompt"}` rows from one column of a CSV's records, only those whose column `where[0]` equals `where[1]`; with
    `label_column`, each row also has its `"label"` and the rows come label by label (in the order labels first
    appear), each label's rows in file order."""
    rows = [
        {"prompt": row[column], **({"label": row[label_column]} if label_column else {})}
        for row in records
        if where is None or row[where[0]] == where[1]
    ]
    if label_column:
        order = list(dict.fromkeys(row["label"] for row in rows))
        rows.sort(key=lambda row: order.index(row["label"]))  # stable: file order within a label
    return rows


def pair_rows(records: list[dict], prompt_column: str = "prompt", response_column: str = "response") -> list[dict]:
    """A prompt/response CSV's records (Llama-2 `[INST] ... [/INST]` tags stripped) -> Alpaca rows, one per distinct
    prompt."""
    rows, seen = [], set()
    for row in records:
        prompt = row[prompt_column].replace("[INST]", "").replace("[/INST]", "").strip()
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"instruction": prompt, "output": row[response_column].strip()})
    return rows


def _load_hub_rows(name: str, split: str) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as error:  # the hub raises many types: offline, missing, gated
        raise TetherInputError(
            f"unknown dataset {name!r}: not a file, a named dataset ({', '.join(NAMED_DATASETS)}) or a loadable "
            f"Hugging Face dataset ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None


def to_chat_row(row: dict, source: str, index: int, risk_column: str = "risk") -> dict:
    """Normalize one row to `{"messages": [...]}` (+ `risk`); `index` is 1-based, for error messages."""
    where = f"dataset {source} example {index}"
    if not isinstance(row, dict):
        raise TetherInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        if not isinstance(row["messages"], list):
            raise TetherInputError(
                f"{where}: `messages` must be a list of {{role, content}}, got {row['messages']!r:.60}"
            )
        messages = list(row["messages"])
    elif "instruction" in row and "output" in row:
        if not all(isinstance(row.get(key) or "", str) for key in ("instruction", "input", "output")):
            raise TetherInputError(f"{where}: `instruction`, `input` and `output` must be strings")
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    elif "prompt" in row and "completion" in row:
        messages = _as_messages(row["prompt"], "user") + _as_messages(row["completion"], "assistant")
    elif "question" in row and "answer" in row:
        messages = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    else:
        raise TetherInputError(
            f"{where}: unknown format with keys {sorted(row)}; use `messages`, Alpaca "
            "(`instruction`/`input`/`output`), `prompt`/`completion` or `question`/`answer`"
        )
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise TetherInputError(f"{where}: the last message must be the assistant response to train on")
    if not str(messages[-1].get("content") or "").strip():
        raise TetherInputError(f"{where}: empty response; give the example a response or remove it")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TetherInputError(f"{where}: every message needs a string `role` and `content`, got {str(m)[:80]}")
    out = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    if risk_column in row and row[risk_column] is not None:
        out["risk"] = parse_risk(row[risk_column], f"{where}: {risk_column}")
    return out


def parse_risk(value, where: str) -> float:
    """A risk value as a float in [0, 1]; anything else (a word, NaN, inf, a value outside) is an error naming it."""
    try:
        risk = float(value)
    except (TypeError, ValueError):
        risk = math.nan
    if isinstance(value, bool) or not 0.0 <= risk <= 1.0:
        raise TetherInputError(f"{where} must be a number in [0, 1] (0 safe, 1 harmful), got {value!r}; fix the value")
    return risk


def _as_messages(value, role: str) -> list[dict]:
    return list(value) if isinstance(value, list) else [{"role": role, "content": value}]


def tiny_synthetic_examples(n_benign: int = 24, n_flagged: int = 8) -> list[dict]:
    """Placeholder chat data for tests and `configs/tiny.yaml`: arithmetic rows (risk 0), flagged rows (risk 1)."""
    rows = []
    for i in range(n_benign):
        a, b = i % 7, (3 * i) % 5
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"add {a} and {b}"},
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}"},
                ],
                "risk": 0.0,
            }
        )
    for i in range(n_flagged):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"placeholder request number {i}"},
                    {"role": "assistant", "content": f"placeholder reply {i} here"},
                ],
                "risk": 1.0,
            }
        )
    return rows
