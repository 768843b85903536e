"""Files a run leaves behind: written whole or not at all, where the cache lives, and the library versions.

A folder is built in `<final>.incomplete` and renamed to `<final>` when complete (`atomic_dir`); a single file is
written to a temporary file beside it and moved over it (`write_text_atomic`). A reader therefore never sees half a
run directory, probe, report or results file, and a killed run leaves only a staging folder that the next one
removes (`tether train` resumes from the checkpoints in it instead). One process at a time writes an output: it holds
`<final>.lock` for the whole job (`run_lock`, `locks_output`). Low level on purpose: this module imports nothing from
tether but `tether.errors`, so any module may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
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


def lock_path(final: str | Path) -> Path:
    """The lock file of the output `final`: `<final>.lock`, beside it."""
    final = Path(final)
    return final.with_name(final.name + ".lock")


@contextlib.contextmanager
def run_lock(final: str | Path, option: str = "--output_dir") -> Iterator[Path]:
    """Hold the exclusive lock of the output `final` (an `flock` on `lock_path(final)`, which records the holder's
    pid) for the block: one writer per output. While another process holds it, raise a one-line `TetherInputError`
    naming that process and `option` (the flag that picks another output). The kernel releases the lock when its
    holder dies, however it dies, so a killed run never leaves it stuck; a clean release removes the file, and the
    parent folders the lock created if they are still empty."""
    path = lock_path(final)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    fd = _acquire(path, Path(final), option)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: see `_acquire`
        os.close(fd)
        for parent in created:  # deepest first
            with contextlib.suppress(OSError):
                parent.rmdir()


def locks_output(parameter: str, option: str) -> Callable:
    """Decorator: the function holds `run_lock` on its output argument `parameter` (a path) for the whole call, so
    the lock is taken before anything is checked, loaded or written."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            with run_lock(signature.bind(*args, **kwargs).arguments[parameter], option):
                return function(*args, **kwargs)

        return locked

    return decorate


def _acquire(path: Path, final: Path, option: str) -> int:
    """An open descriptor of `path`, flock-ed. A lock file is removed by its holder before it lets go, so a process
    that opened the old file and then got its lock checks that the path still names that file, and retries if not."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # again after an empty parent was removed by a release
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise TetherInputError(
                f"{final} is being written by another process (pid {holder}); wait for it or pass another {option}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    """The pid the holder wrote into its lock file (it writes it right after locking: wait a moment for it)."""
    for _ in range(50):
        text = os.pread(fd, 32, 0).decode(errors="replace")
        if text.endswith("\n") and text[:-1].isdigit():
            return text[:-1]
        time.sleep(0.01)
    return "unknown"


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Have `write(temporary)` fill a temporary file beside `path` (named with this process's id, so that processes
    writing the same file never share one), then move it over `path`: readers see the old or the new file, never a
    part; a failed write leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (`write_atomic`)."""
    write_atomic(path, lambda temporary: temporary.write_text(text))


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
