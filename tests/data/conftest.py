"""A stand-in Hub for the named sets: the Hub-backed sets' repos (placeholder rows) on a fake Hub server, and the same
rows written as local files in the data directory's formats, to compare the two readers."""

import csv
import io
import json

import pytest

from tests.fake_hub import FakeHub, dataset_card, parquet_bytes
from tether.data import sources
from tether.data.registry import REGISTRY

ADVBENCH = [{"prompt": f"placeholder behaviour {i}", "target": f"Sure, here is placeholder {i}"} for i in range(4)]
HARMBENCH = [{"prompt": f"placeholder standard behaviour {i}", "category": "placeholder"} for i in range(3)]
XSTEST = [  # labels interleaved, as in the XSTest file: the reader lists the safe prompts first
    {"prompt": f"placeholder {label} prompt {i}", "focus": "f", "type": "t", "note": "n", "label": label}
    for i, label in enumerate(["safe", "safe", "unsafe", "safe", "unsafe"])
]
ALPACA = [
    {"instruction": f"placeholder task {i}", "input": "with input" if i % 2 else "", "output": f"done {i}", "text": "t"}
    for i in range(5)
]
ALPACA_EVAL = [
    {
        "dataset": "d",
        "instruction": f"placeholder question {i}",
        "output": "" if i == 2 else f"reply {i}",
        "generator": "g",
    }
    for i in range(4)
]
GSM8K = {
    split: [{"question": f"{split} sum {i}?", "answer": f"{i} + 1\n#### {i + 1}"} for i in range(3)]
    for split in ("train", "test")
}
SAFETY = {config: [{"prompt": f"placeholder {config} prompt {i}"} for i in range(3)] for config in ("CoNa", "QHarm")}


def standin_repos() -> dict[str, dict[str, bytes]]:
    """The files of each stand-in repo at its pinned revision."""
    return {
        "walledai/AdvBench": {
            "README.md": dataset_card({None: {"train": "data/train-*"}}),
            "data/train-00000-of-00001.parquet": parquet_bytes(ADVBENCH),
        },
        "walledai/HarmBench": {
            "README.md": dataset_card(
                {"standard": {"train": "standard/train-*"}, "contextual": {"train": "contextual/train-*"}}
            ),
            "standard/train-00000-of-00001.parquet": parquet_bytes(HARMBENCH),
            "contextual/train-00000-of-00001.parquet": parquet_bytes(
                [{"prompt": "placeholder contextual", "category": "c"}]
            ),
        },
        "walledai/XSTest": {
            "README.md": dataset_card({None: {"test": "data/train-*"}}),
            "data/train-00000-of-00001.parquet": parquet_bytes(XSTEST),
        },
        "tatsu-lab/alpaca": {
            "README.md": dataset_card({None: {"train": "data/train-*"}}),
            "data/train-00000-of-00001-a.parquet": parquet_bytes(ALPACA),
        },
        # a repo with a loading script, which `datasets` no longer runs: its JSON file is read directly
        "tatsu-lab/alpaca_eval": {
            "README.md": b"a card",
            "alpaca_eval.py": b"# a loading script\n",
            "alpaca_eval.json": json.dumps(ALPACA_EVAL).encode(),
        },
        "openai/gsm8k": {
            "README.md": dataset_card(
                {"main": {"train": "main/train-*", "test": "main/test-*"}, "socratic": {"train": "socratic/train-*"}}
            ),
            **{f"main/{split}-00000-of-00001.parquet": parquet_bytes(rows) for split, rows in GSM8K.items()},
            "socratic/train-00000-of-00001.parquet": parquet_bytes([{"question": "other", "answer": "#### 0"}]),
        },
        "walledai/SafetyDatasets": {
            "README.md": dataset_card({config: {"train": f"{config}/train-*"} for config in SAFETY}),
            **{f"{config}/train-00000-of-00001.parquet": parquet_bytes(rows) for config, rows in SAFETY.items()},
        },
    }


def later_commit(files: dict[str, bytes]) -> dict[str, bytes]:
    """A commit after the pinned one, whose every data file holds other rows: loading must not see it."""
    later = {}
    for path, data in files.items():
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data)).to_pylist()
            data = parquet_bytes([{key: f"later {value}" for key, value in row.items()} for row in table])
        later[path] = data
    return later


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_local_copies(folder) -> None:
    """The stand-in rows as local files, in the data directory's layout and formats (as the upstream files are)."""
    files = {
        "advbench/harmful_behaviors.csv": csv_text([{"goal": r["prompt"], "target": r["target"]} for r in ADVBENCH]),
        "harmbench/harmbench_behaviors_text_all.csv": csv_text(
            [{"Behavior": r["prompt"], "FunctionalCategory": "standard", "BehaviorID": "x"} for r in HARMBENCH]
            + [{"Behavior": "placeholder contextual", "FunctionalCategory": "contextual", "BehaviorID": "y"}]
        ),
        "xstest/xstest_prompts.csv": csv_text(
            [{"id": i, **{k: r[k] for k in ("prompt", "type", "label", "focus", "note")}} for i, r in enumerate(XSTEST)]
        ),
        "alpaca/alpaca_data_1k.json": json.dumps(
            [{k: r[k] for k in ("instruction", "input", "output")} for r in ALPACA]
        ),
        "alpaca_eval/text_davinci_003_outputs.json": json.dumps(ALPACA_EVAL, indent=2),
        "gsm8k/train.jsonl": "".join(json.dumps(r) + "\n" for r in GSM8K["train"]),
        "gsm8k/test.jsonl": "".join(json.dumps(r) + "\n" for r in GSM8K["test"]),
        **{
            f"safety_tuned_llamas/evaluation/{name}.json": json.dumps(
                {"instructions": [r["prompt"] for r in SAFETY[c]], "inputs": []}
            )
            for name, c in (("I-CoNa", "CoNa"), ("Q-Harm", "QHarm"))
        },
    }
    for path, text in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)


# The Hub-backed sets the stand-in serves (walledai/SafetyDatasets only with two of its configs)
STANDIN_SETS = [
    n
    for n, e in REGISTRY.items()
    if e.hub and e.hub.config not in ("ControversialInstructions", "MaliciousInstructions")
]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub serving the stand-in repos at their pinned revisions (and a later commit on main), with the
    default data directory absent and TETHER_DATA_DIR unset: what a user without a data directory has. The endpoint,
    caches and offline switches of `huggingface_hub` and `datasets` are read when they are imported, so the test
    sets their module values (and the environment, for whatever reads it later)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    pinned = {e.hub.repo: e.hub.revision for e in REGISTRY.values() if e.hub}
    with FakeHub() as fake:
        for repo, files in standin_repos().items():
            fake.add(repo, files, sha=pinned[repo])
            fake.add(repo, later_commit(files))
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
        monkeypatch.setattr(hub_constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(
            hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache" / "hub"))
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", fake.url)
        monkeypatch.setattr(
            datasets.config, "HUB_DATASETS_URL", fake.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache" / "datasets")
        monkeypatch.delenv("TETHER_DATA_DIR", raising=False)
        monkeypatch.setattr(sources, "DEFAULT_DATA_DIR", str(tmp_path / "no-default-data"))
        yield fake
