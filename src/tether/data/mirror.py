"""`tether data`: list the named sets, mirror them into a data directory, verify a directory against recorded hashes.

A mirror is a data directory in the canonical layout (each set's file at its registry path) plus a manifest,
`tether-data.json`, recording each file's sha256, size, the sets it serves and where it came from (a local data
directory, or a Hub repo at a revision). `--data_dir MIRROR` then serves those sets offline. A file from the Hub is
written in the local file's format from the records `tether.data.hub` returns, so that the local reader gives the
same rows. A mirror is written whole or not at all (`atomic_dir`): everything is fetched and checked before the
staging folder is renamed into place. Writing into a previous mirror keeps its other files, after checking them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from tether.data.registry import LOCAL_SHA256, REGISTRY, HubSource, NamedSet
from tether.data.sources import data_dir_choice, file_records, load_named, locate_named, named_records
from tether.errors import TetherInputError
from tether.run_files import atomic_dir, locks_output

MANIFEST = "tether-data.json"


def describe_sets(data_dir: str | None = None) -> list[dict]:
    """One dict per named set: `name`, `role`, `path` (the local file, None if absent), `bytes`, `hub` (repo@revision,
    None without a Hub copy) and `differs` (how the Hub copy differs from the local file)."""
    folder = data_dir_choice(data_dir)[0]
    described = []
    for name, entry in REGISTRY.items():
        path = folder / entry.path
        described.append(
            {
                "name": name,
                "role": entry.role or "training",
                "path": str(path) if path.is_file() else None,
                "bytes": path.stat().st_size if path.is_file() else None,
                "hub": entry.hub.label if entry.hub else None,
                "differs": entry.hub.differs if entry.hub else "",
            }
        )
    return described


@locks_output("out", "--out")
def mirror_sets(out: str, names: list[str] | None = None, data_dir: str | None = None) -> list[dict]:
    """Write the files of `names` (default: every set with a local file or a Hub copy) into the data directory `out`,
    from the data directory (`data_dir`, `$TETHER_DATA_DIR`, the default) or the Hub, plus the manifest; returns the
    manifest's entries of the files written now. `out` must be absent, empty or a previous mirror (whose files are
    checked and kept). Everything is checked before anything is written."""
    names = _mirror_names(names, data_dir)
    final = Path(out)
    previous = _previous_mirror(final)
    by_path: dict[str, list[str]] = {}
    for name in names:
        by_path.setdefault(REGISTRY[name].path, []).append(name)
    written = {path: _fetch(group[0], path, data_dir) for path, group in by_path.items()}  # (entry, bytes)
    kept = {path: entry for path, entry in previous.items() if path not in written}
    with atomic_dir(final, replace=final.exists()) as staging:
        for path in kept:
            _write(staging / path, (final / path).read_bytes())
        for path, (_, data) in written.items():
            _write(staging / path, data)
        for path in written:  # what a reader of the mirror will see: every set it serves loads
            for name in _sets_of(path):
                load_named(name, str(staging))
        manifest = {"files": [*kept.values(), *(entry for entry, _ in written.values())]}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return [entry for entry, _ in written.values()]


def verify_dir(data_dir: str) -> tuple[str, list[str]]:
    """Check every file of the data directory against its recorded sha256: the manifest's for a mirror, the registry's
    `LOCAL_SHA256` for the canonical data directory. Returns (what the hashes came from, the files checked); any file
    missing or changed is a one-line error naming all of them."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise TetherInputError(f"data directory {folder} not found; pass --data_dir DIR, an existing folder")
    if (folder / MANIFEST).is_file():
        expected, origin = {p: e["sha256"] for p, e in _read_manifest(folder).items()}, f"its {MANIFEST}"
    else:
        expected, origin = LOCAL_SHA256, "the registry (the canonical data directory)"
    problems = []
    for path, sha256 in expected.items():
        file = folder / path
        if not file.is_file():
            problems.append(f"{path} (missing)")
        elif _sha256(file.read_bytes()) != sha256:
            problems.append(f"{path} (changed)")
    if problems:
        raise TetherInputError(
            f"{len(problems)} of {len(expected)} files in {folder} do not match the sha256 recorded in {origin}: "
            f"{', '.join(problems)}; restore them, or mirror into a new folder (`tether data mirror --out NEWDIR`)"
        )
    return origin, list(expected)


# ---- the parts
def _mirror_names(names: list[str] | None, data_dir: str | None) -> list[str]:
    unknown = [name for name in names or [] if name not in REGISTRY]
    if unknown:
        raise TetherInputError(
            f"unknown named set {unknown[0]!r}; choose among {', '.join(REGISTRY)} (whole sets: no selection)"
        )
    if names:
        return list(dict.fromkeys(names))
    folder = data_dir_choice(data_dir)[0]
    return [name for name, entry in REGISTRY.items() if (folder / entry.path).is_file() or entry.hub is not None]


def _previous_mirror(final: Path) -> dict[str, dict]:
    """The manifest entries of the mirror at `final` (checked against its files), {} when `final` is absent or empty;
    anything else there is refused."""
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return {}
    if not (final / MANIFEST).is_file():
        raise TetherInputError(
            f"{final} is not empty and is not a tether data mirror (no {MANIFEST}); pass another --out"
        )
    verify_dir(str(final))
    return _read_manifest(final)


def _fetch(name: str, path: str, data_dir: str | None) -> tuple[dict, bytes]:
    """The file at `path` (which serves `name`) as bytes, and its manifest entry."""
    where = locate_named(name, data_dir)
    if isinstance(where, HubSource):
        data = _render(REGISTRY[name], named_records(name, data_dir))
        source = {"source": "hub", "repo": where.repo, "revision": where.revision, "config": where.config}
        source |= {"split": where.split} if where.file is None else {"file": where.file}
        source |= {"differs": where.differs} if where.differs else {}
    else:
        data = where.read_bytes()
        file_records(REGISTRY[name], where)  # a local file that does not parse is refused before anything is written
        source = {"source": "local", "directory": str(data_dir_choice(data_dir)[0].resolve()), "revision": None}
    entry = {"path": path, "sha256": _sha256(data), "bytes": len(data), "sets": _sets_of(path), **source}
    return entry, data


def _render(entry: NamedSet, records: list[dict]) -> bytes:
    """Records in the local file's format, so that `file_records` reads them back."""
    if entry.reader in ("csv", "pairs"):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    elif entry.reader == "instructions":
        columns = {"instructions": [r["instruction"] for r in records], "inputs": [r["input"] for r in records]}
        text = json.dumps(columns, ensure_ascii=False, indent=1) + "\n"
    elif entry.path.endswith(".jsonl"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    return text.encode("utf-8")


def _read_manifest(folder: Path) -> dict[str, dict]:
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {entry["path"]: entry for entry in files if isinstance(entry["sha256"], str)}
    except (ValueError, KeyError, TypeError) as error:
        raise TetherInputError(
            f"{folder / MANIFEST} is not a tether data manifest ({type(error).__name__}: {error}); write a fresh "
            "mirror with `tether data mirror --out DIR`"
        ) from None


def _sets_of(path: str) -> list[str]:
    return [name for name, entry in REGISTRY.items() if entry.path == path]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
