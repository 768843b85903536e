"""`tether.run_files`: a folder appears whole or not at all, a file is replaced in one step, where the cache lives."""

import os

import pytest

from tether.errors import TetherInputError
from tether.run_files import atomic_dir, cache_dir, staging_path, write_text_atomic


def test_atomic_dir_renames_the_staging_folder_on_success(tmp_path):
    final = tmp_path / "sub" / "run"
    with atomic_dir(final) as staging:
        assert staging == staging_path(final) == tmp_path / "sub" / "run.incomplete"
        assert staging.is_dir() and not any(staging.iterdir()) and not final.exists()
        (staging / "a.txt").write_text("a")
    assert (final / "a.txt").read_text() == "a" and not staging.exists()


def test_atomic_dir_removes_the_staging_folder_on_an_error(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert not final.exists() and not staging_path(final).exists()


def test_atomic_dir_clears_what_a_killed_run_left(tmp_path):
    final = tmp_path / "run"
    staging_path(final).mkdir()
    (staging_path(final) / "junk").write_text("half-written")
    with atomic_dir(final) as staging:
        assert not any(staging.iterdir())
        (staging / "a.txt").write_text("a")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]


def test_atomic_dir_replaces_a_full_folder_only_when_asked(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    with atomic_dir(final) as staging:  # an empty folder is always replaced
        (staging / "first").write_text("1")
    with pytest.raises(TetherInputError, match="already exists and is not empty"):
        with atomic_dir(final):
            pytest.fail("the block must not run")
    assert (final / "first").is_file() and not staging_path(final).exists()
    with atomic_dir(final, replace=True) as staging:
        (staging / "second").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["second"]
    with pytest.raises(RuntimeError):  # a failed replacement leaves the old folder as it was
        with atomic_dir(final, replace=True):
            raise RuntimeError
    assert sorted(p.name for p in final.iterdir()) == ["second"]


def test_write_text_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "results.json"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and os.listdir(path.parent) == ["results.json"]


def test_write_text_atomic_keeps_the_old_text_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_text_atomic(path, "old")

    def full_disk(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TETHER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tether"


def test_old_import_paths_still_work():
    from tether import modeling, run_files, runner

    assert modeling.cache_dir is run_files.cache_dir
    assert set(runner.environment()) == {"tether", "torch", "transformers", "trl", "peft", "python"}
