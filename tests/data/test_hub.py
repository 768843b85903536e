"""Named sets from their Hub copy when there is no local one, through the real `datasets.load_dataset` path against a
fake Hub (`tests/fake_hub.py`, stand-in repos in `conftest.py`); the load order; the errors."""

import dataclasses
import warnings

import pytest

from tests.data.conftest import ADVBENCH, STANDIN_SETS, XSTEST, write_local_copies
from tether.data import registry
from tether.data.prompts import load_prompts
from tether.data.registry import REGISTRY
from tether.data.sources import load_examples, load_named
from tether.errors import TetherInputError


def rows_of(name: str, data_dir: str | None = None) -> tuple:
    """What every reader of a named set gives: its prompts and its chat rows (None where the set has none)."""
    entry = REGISTRY[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alpaca's Hub copy differs from the local file, and says so
        prompts = load_prompts(name, data_dir) if entry.role else None
        examples = load_examples(name, data_dir, drop_empty=True) if entry.responses else None
    return prompts, examples


@pytest.mark.parametrize("name", STANDIN_SETS)
def test_hub_copy_gives_the_local_readers_rows(name, hub, tmp_path):
    """The column mapping turns the Hub's rows into the records of the local file: same rows, same order, same
    filter (HarmBench's standard behaviours, XSTest's labels listed safe first)."""
    write_local_copies(tmp_path / "local")
    from_hub = rows_of(name)
    assert from_hub == rows_of(name, str(tmp_path / "local"))
    assert any(from_hub)


def test_the_stand_in_is_read_at_the_pinned_revision(hub):
    prompts = load_prompts("advbench")  # main has a later commit with other rows
    assert [p[0]["content"] for p in prompts] == [r["prompt"] for r in ADVBENCH]
    xstest = [p[0]["content"] for p in load_prompts("xstest")]
    assert xstest == [r["prompt"] for r in XSTEST if r["label"] == "safe"] + [
        r["prompt"] for r in XSTEST if r["label"] == "unsafe"
    ]
    assert [p[0]["content"] for p in load_prompts("xstest:1")] == [xstest[0], xstest[3]]  # per label


def test_probe_style_loading_needs_no_data_directory(hub):
    """What `tether probe fit --harmful advbench:2 --benign alpaca:3` and training data read, with no data directory."""
    harmful, benign = load_prompts("advbench:2"), load_prompts("alpaca:3")
    assert [p[0]["content"] for p in harmful] == ["placeholder behaviour 0", "placeholder behaviour 1"]
    assert len(benign) == 3 and benign[1][0]["content"] == "placeholder task 1\n\nwith input"
    assert load_examples("gsm8k-test:2")[1]["messages"][1]["content"] == "1 + 1\n#### 2"
    assert load_examples("advbench-targets:1")[0]["messages"][1]["content"] == "Sure, here is placeholder 0"


def test_a_hub_copy_that_differs_from_the_local_file_says_so(hub):
    with pytest.warns(UserWarning, match="'alpaca' was read from its Hub copy tatsu-lab/alpaca, which differs"):
        load_prompts("alpaca:1")


def test_load_order(hub, tmp_path, monkeypatch):
    """--data_dir, then TETHER_DATA_DIR, then the default directory, then the Hub."""
    for folder in ("explicit", "env", "default"):
        (tmp_path / folder / "advbench").mkdir(parents=True)
        (tmp_path / folder / "advbench" / "harmful_behaviors.csv").write_text(f"goal,target\nfrom {folder},t\n")
    first = lambda data_dir=None: load_prompts("advbench", data_dir)[0][0]["content"]  # noqa: E731
    assert first() == "placeholder behaviour 0"  # the default directory lacks the file: the Hub
    served = len(hub.requests)
    monkeypatch.setattr("tether.data.sources.DEFAULT_DATA_DIR", str(tmp_path / "default"))
    assert first() == "from default"
    monkeypatch.setenv("TETHER_DATA_DIR", str(tmp_path / "env"))
    assert first() == "from env"
    assert first(str(tmp_path / "explicit")) == "from explicit"
    assert len(hub.requests) == served  # a local file is read without asking the Hub


@pytest.mark.parametrize("chosen", ["--data_dir", "TETHER_DATA_DIR"])
def test_a_chosen_directory_without_the_file_is_an_error_not_the_hub(chosen, hub, tmp_path, monkeypatch):
    """The user asked for that directory: reading the Hub instead would hide a mistake (a typo in the path)."""
    data_dir = str(tmp_path / "chosen")
    if chosen == "TETHER_DATA_DIR":
        monkeypatch.setenv("TETHER_DATA_DIR", data_dir)
    served = len(hub.requests)
    with pytest.raises(TetherInputError) as error:
        load_prompts("advbench", data_dir if chosen == "--data_dir" else None)
    message = str(error.value)
    assert f"named set 'advbench' expects {data_dir}/advbench/harmful_behaviors.csv ({chosen} {data_dir})" in message
    assert "leave both unset to read its Hub copy walledai/AdvBench" in message and "\n" not in message
    assert len(hub.requests) == served


def test_a_set_without_a_hub_copy_names_the_data_directory_only(hub):
    with pytest.raises(
        TetherInputError,
        match=r"named set 'pure-bad' expects .*\(the default data directory\); pass "
        r"--data_dir \(or set TETHER_DATA_DIR\) to the folder that holds harmful_pure_bad_100/ \(it has "
        r"no public Hub copy\)$",
    ):
        load_examples("pure-bad")


def test_unreachable_hub_names_both_remedies(hub, monkeypatch):
    import datasets
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(TetherInputError) as error:
        load_prompts("harmbench:5")
    message = str(error.value)
    assert "\n" not in message, message
    assert message.startswith("named set 'harmbench' is not at ") and "its Hub copy walledai/HarmBench@" in message
    for remedy in (
        "pass --data_dir (or set TETHER_DATA_DIR) to a folder that holds harmbench/",
        "`tether data mirror --out DIR harmbench`",
        "reach the Hub",
    ):
        assert remedy in message, message


def test_a_revision_that_does_not_exist_is_one_line(hub, monkeypatch):
    missing = "0" * 40
    for name in ("advbench", "alpaca-eval"):  # through `datasets` and through a single-file download
        entry = REGISTRY[name]
        monkeypatch.setitem(
            REGISTRY, name, dataclasses.replace(entry, hub=dataclasses.replace(entry.hub, revision=missing))
        )
        with pytest.raises(TetherInputError) as error:
            load_named(name)
        message = str(error.value)
        assert "\n" not in message and f"its Hub copy {entry.hub.repo}@{missing}" in message, message
        assert "Revision" in message or "revision" in message, message


def test_every_hub_source_is_pinned_and_maps_its_columns():
    for name, entry in REGISTRY.items():
        if entry.hub is None:
            continue
        assert len(entry.hub.revision) == 40 and int(entry.hub.revision, 16) >= 0, name
        assert entry.hub.columns, name
        assert (entry.hub.file is None) or entry.hub.config is None, name
    for a in REGISTRY.values():  # a mirror of one set's file must serve every set that reads that file
        for b in REGISTRY.values():
            assert a.path != b.path or a.hub == b.hub, (a.path, b.path)
    assert set(registry.LOCAL_SHA256) == {entry.path for entry in REGISTRY.values()}
