import pytest

from tests.conftest import SHARED_DATA
from tether.data.prompts import PROMPT_SETS, load_prompts
from tether.data.registry import READERS, REGISTRY, ROLES, Selection, parse_source, select
from tether.data.sources import NAMED_DATASETS, load_examples
from tether.errors import TetherInputError

# Every named set as it loaded before the registry: (prompts, chat rows); None where it is not one of those.
COUNTS = {
    "advbench": (520, None),
    "harmbench": (200, None),
    "harmbench-val": (41, None),
    "harmbench-test": (159, None),
    "safety-llamas": (2483, 2483),
    "I-CoNa": (178, None),
    "I-Controversial": (40, None),
    "I-MaliciousInstructions": (100, None),
    "I-PhysicalSafetyUnsafe": (100, None),
    "Q-Harm": (100, None),
    "xstest-unsafe": (200, None),
    "alpaca": (1000, 1000),
    "alpaca-safety": (1904, 1904),
    "alpaca-eval": (805, 803),  # two replies are empty: chat rows with drop_empty
    "gsm8k": (7473, 7473),
    "I-Alpaca": (50, None),
    "I-PhysicalSafetySafe": (100, None),
    "xstest": (450, None),  # new as a prompt set: the xstest benchmark's prompts
    "xstest-safe": (250, None),
    "gsm8k-test": (1319, 1319),
    "pure-bad": (None, 100),
    "advbench-refusals": (None, 361),
    "advbench-targets": (None, 520),
}


def old_spread(items, limit):
    """The benchmarks' `NAME:N` before the one grammar, copied: `limit` items at evenly spaced positions."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", list(range(3))),  # the first N
        ("2-5", [2, 3, 4]),  # A to B - 1
        ("1-8/3", [1, 4, 7]),  # every S-th from A
        ("~4", [0, 2, 5, 7]),  # i * 10 // 4 for i < 4
        ("~1", [0]),
        ("~30", list(range(10))),  # more than the set: all of it
        ("30", list(range(10))),
    ],
)
def test_grammar(text, expected):
    name, selection = parse_source(f"alpaca:{text}")
    assert name == "alpaca" and select(list(range(10)), f"alpaca:{text}", selection) == expected


@pytest.mark.parametrize("n", [1, 3, 7, 49, 50, 51, 200, 250])
def test_spread_equals_the_old_spread(n):
    items = list(range(123))
    assert Selection(spread=n).apply(items) == old_spread(items, n)


def test_selection_applies_per_label():
    items, labels = ["s0", "s1", "s2", "s3", "u0", "u1"], ["safe"] * 4 + ["unsafe"] * 2
    assert select(items, "x", parse_source("xstest:~2")[1], labels) == ["s0", "s2", "u0", "u1"]
    assert select(items, "x", parse_source("xstest:1")[1], labels) == ["s0", "u0"]


def test_only_registered_names_take_a_selection():
    assert parse_source("alpaca") == ("alpaca", None)
    assert parse_source("hexphi:/data/HEx-PHI") == ("hexphi:/data/HEx-PHI", None)
    assert parse_source("my/file.jsonl") == ("my/file.jsonl", None)


@pytest.mark.parametrize(
    "text", ["x", "3-", "-3", "10/2", "0-10/x", "~", "~3-5", "~3/2", "1-2-3", "+3", " 3", "3.5", "²"]
)
def test_bad_selection_is_one_line(text):
    with pytest.raises(TetherInputError, match=r"alpaca:.*: after the colon write N \(the first N\)") as error:
        parse_source(f"alpaca:{text}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["0", "~0", "5-5", "7-3", "20-30"])
def test_empty_selection_is_one_line(text):
    with pytest.raises(TetherInputError, match=f"alpaca:{text} selects nothing") as error:
        select(list(range(10)), f"alpaca:{text}", parse_source(f"alpaca:{text}")[1])
    assert "\n" not in str(error.value)
    with pytest.raises(TetherInputError, match="step S of A-B/S must be at least 1"):
        parse_source("alpaca:0-10/0")


def test_registry_entries_are_well_formed():
    assert set(COUNTS) == set(REGISTRY)
    for name, entry in REGISTRY.items():
        assert entry.reader in READERS and entry.role in (*ROLES, None), name
        assert (entry.column is not None) == (entry.reader in ("csv", "pairs")), name
        assert entry.role is not None or entry.responses, f"{name}: neither a prompt set nor training data"
    assert set(PROMPT_SETS) == {n for n, (prompts, _) in COUNTS.items() if prompts is not None}
    assert set(NAMED_DATASETS) == {n for n, (_, rows) in COUNTS.items() if rows is not None}


@pytest.mark.parametrize("name", list(COUNTS))
def test_every_name_loads_with_its_old_count(name):
    n_prompts, n_rows = COUNTS[name]
    if n_prompts is not None:
        prompts = load_prompts(name, SHARED_DATA)
        assert len(prompts) == n_prompts and all(p[-1]["role"] == "user" and p[-1]["content"] for p in prompts)
        assert load_prompts(f"{name}:~5", SHARED_DATA) == old_spread(prompts, 5) or name == "xstest"  # per label
    else:
        with pytest.raises(TetherInputError, match=f"named set '{name}' is training data, not a prompt set"):
            load_prompts(name, SHARED_DATA)
    if n_rows is not None:
        rows = load_examples(name, SHARED_DATA, drop_empty=True)
        assert len(rows) == n_rows and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    else:
        with pytest.raises(TetherInputError, match=f"named set '{name}' holds prompts without responses"):
            load_examples(name, SHARED_DATA)


def test_xstest_lists_safe_then_unsafe_prompts():
    every = load_prompts("xstest", SHARED_DATA)
    assert every == load_prompts("xstest-safe", SHARED_DATA) + load_prompts("xstest-unsafe", SHARED_DATA)
    assert load_prompts("xstest:2", SHARED_DATA) == every[:2] + every[250:252]


def test_training_data_takes_the_grammar():
    every = load_examples("alpaca", SHARED_DATA)
    assert load_examples("alpaca:10", SHARED_DATA) == every[:10]
    assert load_examples("alpaca:10-20/5", SHARED_DATA) == every[10:20:5]
    assert load_examples("alpaca:~4", SHARED_DATA) == old_spread(every, 4)
    assert len(load_examples("tiny-synthetic:5")) == 5
    # a selection counts the rows with empty replies (items 247 and 504), so it names the same items as for prompts
    rows = load_examples("alpaca-eval:300-805", SHARED_DATA, drop_empty=True)
    prompts = load_prompts("alpaca-eval:300-805", SHARED_DATA)
    assert [r["messages"][:1] for r in rows] == prompts[:204] + prompts[205:]
    with pytest.raises(TetherInputError, match="alpaca:0-10/0"):
        load_examples("alpaca:0-10/0", SHARED_DATA)


def test_missing_named_set_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(
        TetherInputError, match=r"named set 'harmbench' expects .*; pass --data_dir .* holds harmbench/"
    ):
        load_prompts("harmbench:3", str(tmp_path))
