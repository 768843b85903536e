"""`tether data mirror | verify | list`: a mirror written from the stand-in Hub serves the same rows offline, its
manifest's hashes catch a changed byte, and bad input writes nothing."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.data.conftest import STANDIN_SETS, standin_repos
from tests.data.test_hub import rows_of
from tests.fake_hub import FakeHub
from tether.cli import main
from tether.data.mirror import MANIFEST, describe_sets, mirror_sets, verify_dir
from tether.data.registry import LOCAL_SHA256, REGISTRY
from tether.errors import TetherInputError

ROOT = Path(__file__).resolve().parents[2]


def tree(folder: Path) -> dict:
    """Every path in `folder`'s parent (staging folders and locks lie beside it) with its bytes: what a refusal must
    not change."""
    return {p: p.read_bytes() if p.is_file() else None for p in folder.parent.rglob("*") if "hf-cache" not in p.parts}


def test_mirror_then_verify_round_trip(hub, tmp_path, capsys):
    out = tmp_path / "mirror"
    assert main(["data", "mirror", "--out", str(out), *STANDIN_SETS]) == 0
    written = capsys.readouterr().out
    assert "wrote advbench/harmful_behaviors.csv (advbench, advbench-targets) from walledai/AdvBench@9d47305" in written
    for name in STANDIN_SETS:  # offline now: the mirror serves the same rows as the Hub did
        assert rows_of(name, str(out)) == rows_of(name), name
    manifest = json.loads((out / MANIFEST).read_text())
    files = {entry["path"]: entry for entry in manifest["files"]}
    for name in STANDIN_SETS:
        entry = files[REGISTRY[name].path]
        assert entry["revision"] == REGISTRY[name].hub.revision and entry["repo"] == REGISTRY[name].hub.repo
        assert entry["sha256"] == hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest()
    assert "differs" in files["alpaca/alpaca_data_1k.json"]
    assert main(["data", "verify", "--data_dir", str(out)]) == 0
    assert f"{len(files)} files in {out} match the sha256 recorded in its {MANIFEST}" in capsys.readouterr().out
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["hf-cache", "mirror", "no-default-data"]
        or not (tmp_path / "no-default-data").exists()
    )


def test_verify_detects_a_changed_byte_and_a_missing_file(hub, tmp_path, capsys):
    out = tmp_path / "mirror"
    mirror_sets(str(out), ["advbench", "gsm8k-test"])
    csv_file = out / "advbench" / "harmful_behaviors.csv"
    data = bytearray(csv_file.read_bytes())
    data[10] ^= 1
    csv_file.write_bytes(bytes(data))
    assert main(["data", "verify", "--data_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"tether: error: 1 of 2 files in {out} do not match the sha256 recorded in its {MANIFEST}: "
        "advbench/harmful_behaviors.csv (changed); restore them, or mirror into a new folder "
        "(`tether data mirror --out NEWDIR`)"
    )
    (out / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(
        TetherInputError,
        match=r"2 of 2 files .*: advbench/harmful_behaviors.csv \(changed\), "
        r"gsm8k/test.jsonl \(missing\);",
    ):
        verify_dir(str(out))


def test_the_canonical_data_directory_verifies_against_the_registry(tmp_path):
    origin, files = verify_dir(SHARED_DATA)
    assert origin.startswith("the registry") and sorted(files) == sorted(LOCAL_SHA256)
    (tmp_path / "advbench").mkdir()
    (tmp_path / "advbench" / "harmful_behaviors.csv").write_text("goal,target\nx,y\n")
    with pytest.raises(TetherInputError, match=rf"{len(LOCAL_SHA256)} of {len(LOCAL_SHA256)} files in .* do not match"):
        verify_dir(str(tmp_path))


def test_mirroring_into_a_previous_mirror_keeps_its_files(hub, tmp_path):
    out = tmp_path / "mirror"
    mirror_sets(str(out), ["advbench"])
    mirror_sets(str(out), ["gsm8k-test"])
    assert {e["path"] for e in json.loads((out / MANIFEST).read_text())["files"]} == {
        "advbench/harmful_behaviors.csv",
        "gsm8k/test.jsonl",
    }
    verify_dir(str(out))
    assert rows_of("advbench", str(out)) == rows_of("advbench")


def test_a_local_data_directory_is_copied_byte_for_byte(tmp_path):
    out = tmp_path / "mirror"
    entries = mirror_sets(str(out), ["xstest-safe", "I-CoNa"], data_dir=SHARED_DATA)
    assert [e["source"] for e in entries] == ["local", "local"]
    for entry in entries:
        assert entry["sha256"] == LOCAL_SHA256[entry["path"]]
    assert rows_of("xstest", str(out)) == rows_of("xstest", SHARED_DATA)


@pytest.mark.parametrize(
    "case, words",
    [
        ("unknown name", "unknown named set 'advbench:20'; choose among advbench, harmbench"),
        ("not a mirror", "is not empty and is not a tether data mirror (no tether-data.json); pass another --out"),
        ("changed mirror", "1 of 1 files in"),
        ("missing revision", "its Hub copy walledai/XSTest@" + "0" * 40 + " could not be read"),
        ("unreachable", "named set 'gsm8k-test' is not at"),
    ],
)
def test_bad_input_writes_nothing(case, words, hub, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "mirror"
    names = ["advbench", "xstest", "gsm8k-test"]
    if case == "unknown name":
        names = ["advbench:20"]
    elif case == "not a mirror":
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine\n")
    elif case == "changed mirror":
        mirror_sets(str(out), ["advbench"])
        (out / "advbench" / "harmful_behaviors.csv").write_text("goal,target\nchanged,x\n")
    elif case == "missing revision":
        entry = REGISTRY["xstest"]
        bad = dataclasses.replace(entry.hub, revision="0" * 40)
        for name in ("xstest", "xstest-safe", "xstest-unsafe"):
            monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], hub=bad))
    else:
        hub.repos.pop("openai/gsm8k")  # advbench and xstest are fetched, then this fails: nothing is written
    before = tree(out)
    assert main(["data", "mirror", "--out", str(out), *names]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tether: error: ") and words in err, err
    assert tree(out) == before


def test_list_names_every_set_with_its_local_file_and_hub_copy(tmp_path, capsys):
    described = {s["name"]: s for s in describe_sets(SHARED_DATA)}
    assert set(described) == set(REGISTRY)
    assert described["advbench"]["hub"] == "walledai/AdvBench@9d4730540082fa4017450b65ca1c0e1d8d30446e"
    assert described["pure-bad"]["hub"] is None and described["pure-bad"]["bytes"] > 0
    assert main(["data", "list", "--data_dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "advbench                 harmful    local: -" in listing and "the Hub copy differs" in listing


def test_the_console_script_mirrors_from_the_hub_named_by_hf_endpoint(tmp_path):
    """The real entry point in a fresh process, the Hub given only by the environment (`HF_ENDPOINT`), no data
    directory: mirror, verify, then read the mirror with the Hub switched off."""
    pinned = {e.hub.repo: e.hub.revision for e in REGISTRY.values() if e.hub}
    work = tmp_path / "work"  # its ../shared/data does not exist
    work.mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    env.pop("TETHER_DATA_DIR", None)
    tether = [sys.executable, "-m", "tether.cli"]
    with FakeHub() as fake:
        fake.add("walledai/AdvBench", standin_repos()["walledai/AdvBench"], sha=pinned["walledai/AdvBench"])
        env["HF_ENDPOINT"] = fake.url
        done = subprocess.run(
            [*tether, "data", "mirror", "--out", "m", "advbench"], cwd=work, env=env, text=True, capture_output=True
        )
        assert done.returncode == 0, done.stderr
    assert "wrote advbench/harmful_behaviors.csv" in done.stdout
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # in one process: each start costs seconds
    code = (
        "import sys; from tether.cli import main; from tether.data.prompts import load_prompts\n"
        "print('verify', main(['data', 'verify', '--data_dir', 'm']))\n"
        "print('read', load_prompts('advbench:2', 'm')[1][0]['content'])\n"
        "print('mirror', main(['data', 'mirror', '--out', 'n', 'gsm8k']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=offline, text=True, capture_output=True)
    assert done.stdout.splitlines() == [
        "1 files in m match the sha256 recorded in its tether-data.json",
        "verify 0",
        "read placeholder behaviour 1",
        "mirror 2",
    ], done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "named set 'gsm8k' is not at ../shared/data/gsm8k/train.jsonl and its Hub copy openai/gsm8k@" in done.stderr
    assert not (work / "n").exists() and not (work / "n.incomplete").exists()
