"""Files a run leaves behind: written whole or not at all, where the cache lives, and the library versions.

A folder is built in `<final>.incomplete` and renamed to `<final>` when complete (`atomic_dir`); a single file is
written to a temporary file beside it and moved over it (`write_text_atomic`). A reader therefore never sees half a
run directory, probe, report or results file, and a killed run leaves only a staging folder that the next one
removes. Low level on purpose: this module imports nothing from tether but `tether.errors`, so any module may use it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path

from tether.errors import TetherInputError


def staging_path(final: str | Path) -> Path:
    """Where `final` is built before it is renamed into place: `<final>.incomplete`."""
    final = Path(final)
    return final.with_name(final.name + ".incomplete")


@contextlib.contextmanager
def atomic_dir(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh, empty staging folder (`staging_path(final)`, whatever a killed run left there removed) and
    rename it to `final` when the block completes; on an exception the staging folder is removed and `final` is left
    as it was. An existing empty `final` folder is always replaced; anything else at `final` only with `replace=True`
    (otherwise a one-line `TetherInputError`, raised before the block runs)."""
    final = Path(final)
    if final.exists() and not replace and not _empty_dir(final):
        raise TetherInputError(f"{final} already exists and is not empty; pass another output path")
    staging = staging_path(final)
    _remove(staging)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        yield staging
        if replace or _empty_dir(final):
            _remove(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it (named with this process's id, so that processes
    writing the same file never share one) moved over `path`: readers see the old or the new text, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Where converted models and judge scores live: `$TETHER_CACHE_DIR`, else `$XDG_CACHE_HOME/tether`, else
    `~/.cache/tether`."""
    if os.environ.get("TETHER_CACHE_DIR"):
        return Path(os.environ["TETHER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tether"


def environment() -> dict:
    """The library versions a run or result records (`env.json`, `versions` in results.json)."""
    import peft
    import torch
    import transformers
    import trl

    import tether  # the package root, for its version: always imported before any of its modules

    return {
        "tether": tether.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
