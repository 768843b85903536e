"""A named set's rows from its public copy on the Hugging Face Hub (`HubSource` in `tether.data.registry`).

`datasets.load_dataset(repo, name=config, revision=sha, split=split)` reads a parquet-backed repo, through its cache;
`huggingface_hub.hf_hub_download` fetches a repo's single JSON file (a repo whose loading script `datasets` no longer
runs). Both honour `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` and `HF_ENDPOINT` themselves, and both are imported only
here and only when a set is read from the Hub. Whatever fails (offline, unreachable, a revision that does not exist)
becomes one line naming both remedies: a data directory, or a reachable Hub.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tether.data.registry import REGISTRY, HubSource
from tether.errors import TetherInputError


def load_hub_records(name: str, hub: HubSource, local: Path) -> list[dict]:
    """The records of `hub` keyed by the local file's columns (`hub.columns`, plus `hub.constant`); `local` is the file
    the default data directory lacks (for the error). Warns when the Hub copy differs from the local file."""
    try:
        rows = _download(hub)
        records = [{**{ours: row[theirs] for theirs, ours in hub.columns}, **dict(hub.constant)} for row in rows]
    except Exception as error:  # the Hub raises many types: offline, unreachable, missing revision, changed columns
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        top = REGISTRY[name].path.split("/")[0]
        raise TetherInputError(
            f"named set {name!r} is not at {local} and its Hub copy {hub.label} could not be read "
            f"({type(error).__name__}: {detail}); pass --data_dir (or set TETHER_DATA_DIR) to a folder that holds "
            f"{top}/ (`tether data mirror --out DIR {name}` writes one where the Hub is reachable), or reach the Hub "
            "(HF_ENDPOINT, HF_HUB_OFFLINE unset)"
        ) from None
    if not records:
        raise TetherInputError(f"named set {name!r}: its Hub copy {hub.label} is empty; pass --data_dir instead")
    if hub.differs:
        warnings.warn(
            f"named set {name!r} was read from its Hub copy {hub.repo}, which differs from the local file: "
            f"{hub.differs}; pass --data_dir for the local file",
            stacklevel=2,
        )
    return records


def _download(hub: HubSource) -> list[dict]:
    if hub.file is not None:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(hub.repo, hub.file, repo_type="dataset", revision=hub.revision)
        return json.loads(Path(path).read_text(encoding="utf-8"))
    import datasets

    # no progress bars: the sets are small, and a refused command prints only its error line
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return list(datasets.load_dataset(hub.repo, name=hub.config, revision=hub.revision, split=hub.split))
    finally:
        if shown:
            datasets.enable_progress_bars()
