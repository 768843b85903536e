"""The reference cache: what the loss reads from the reference pass, kept per training example, so that a later epoch
(or a later run on the same rows, reference and critic) runs no reference forward (`docs/method.md` §1.8).

Kept per example: the reference's LM-head inputs at its response positions (n, d), in the dtype the pass produced,
and the critic's raw score when the critic reads the reference (probe features, the first-token refusal mass). The
reference's LM head is frozen (under LoRA it is the policy's own head, which tether never adapts; under full
fine-tuning the frozen copy's), so the logits recomputed from cached inputs are the reference's logits: the KL from
the cache is the exact full-vocabulary KL with the same closed-form gradient, not a top-k approximation. The price is
d numbers per response token on disk (SmolLM2-135M: 576 × 4 bytes) instead of 2k for a top-k summary.

Layout: `<root>/<fingerprint>/part-<id>.safetensors`, each shard holding `hidden` (M, d), `lengths` (E,), `scores`
(E,) (NaN where the critic does not read the reference) and its E example keys in the metadata. The fingerprint
hashes the reference's weights and config, the tokenizer's vocabulary and the reading critic's identity: another
model, tokenizer, probe or critic setting is another folder, never a stale hit. An example's key hashes its token
ids, response mask and prompt length. A shard is written to a temporary name and renamed, so a killed run leaves
whole shards or none; a shard that fails to read is reported in one line, deleted and its examples recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tether.run_files import write_atomic

FORMAT = "1"
FLUSH_BYTES = 256 * 2**20  # pending entries written to a shard beyond this size
logger = logging.getLogger(__name__)


def fingerprint(model, tokenizer, settings: dict) -> str | None:
    """A hex digest of what the cached values depend on besides the example: the reference's parameters and buffers
    (names, dtypes, shapes, bytes; a LoRA adapter's own weights excluded, since the reference runs with it disabled),
    its config and attention implementation, the tokenizer's vocabulary and `settings` (the run's autocast, the
    reading critic's identity). None when a weight is not in this process (partitioned, as under DeepSpeed ZeRO-3):
    the weights cannot be hashed, so nothing may be cached."""
    digest = hashlib.sha256(f"tether reference cache {FORMAT}\n".encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(str(getattr(model.config, "_attn_implementation", None)).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0]):
        if "lora_" in name or "modules_to_save" in name:
            continue
        if tensor.numel() == 0 or tensor.is_meta:
            return None
        # a LoRA-wrapped layer's frozen weight and the plain model's have one name, so LoRA and full runs share
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode() + tensor_bytes(tensor))
    return digest.hexdigest()[:32]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes, whatever its dtype and device."""
    return tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()


def state_digest(value, depth: int = 4) -> str:
    """sha256 of an object's state, the same for equal states: tensors and arrays by dtype, shape and bytes, mappings
    by sorted key, sequences in order, other objects by their class and attributes (`depth` levels down), scalars by
    `repr`. What identifies a critic object whatever its class (probe weights, refusal token ids)."""
    import numpy as np

    digest = hashlib.sha256(type(value).__qualname__.encode())
    if isinstance(value, torch.Tensor):
        digest.update(f"{value.dtype} {tuple(value.shape)}".encode() + tensor_bytes(value))
    elif isinstance(value, np.ndarray):
        digest.update(f"{value.dtype} {value.shape}".encode() + np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode() + state_digest(value[key], depth).encode())
    elif isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        for item in items:
            digest.update(state_digest(item, depth).encode())
    elif isinstance(value, str | bytes | int | float | bool | type(None) | Path):
        digest.update(repr(value).encode())
    elif depth > 0 and hasattr(value, "__dict__"):  # an object of its own: its attributes
        digest.update(state_digest(vars(value), depth - 1).encode())
    else:
        raise TypeError(f"cannot identify a {type(value).__qualname__}")
    return digest.hexdigest()


def example_keys(inputs: dict) -> list[str]:
    """One key per example of a right-padded batch: sha256 of its token ids, its response mask and its prompt length
    (what fixes the reference's states at the positions the loss and the critic read)."""
    lengths = inputs["attention_mask"].sum(1).tolist()  # (B,)
    ids = inputs["input_ids"].cpu()
    response = (inputs["labels"] != -100).cpu()
    prompt_lengths = inputs["prompt_length"].tolist() if "prompt_length" in inputs else [-1] * len(lengths)
    keys = []
    for row, (length, prompt_length) in enumerate(zip(lengths, prompt_lengths, strict=True)):
        digest = hashlib.sha256(ids[row, :length].to(torch.int64).numpy().tobytes())
        digest.update(response[row, :length].numpy().tobytes())
        digest.update(str(prompt_length).encode())
        keys.append(digest.hexdigest())
    return keys


@dataclass
class CachedExample:
    hidden: torch.Tensor  # (n, d): the reference's LM-head inputs at the example's response positions
    score: float  # the critic's raw score, NaN when the critic does not read the reference


@dataclass
class ReferenceCache:
    """Cached reference outputs in `folder` (`<root>/<fingerprint>`). `get` answers from disk or from this process's
    pending entries; `add` keeps entries until `flush` writes them as one shard; `refresh` indexes the shards other
    processes (or earlier runs) wrote since."""

    folder: Path
    index: dict[str, tuple[Path, int, int, float]] = field(default_factory=dict)  # key -> (shard, start, n, score)
    pending: dict[str, CachedExample] = field(default_factory=dict)
    pending_bytes: int = 0
    _shards: dict[Path, object] = field(default_factory=dict)  # open safetensors handles

    @classmethod
    def open(cls, root: str | Path, fingerprint_hex: str) -> ReferenceCache:
        cache = cls(Path(root) / fingerprint_hex)  # the folder is made at the first flush
        cache.refresh()
        return cache

    def refresh(self) -> None:
        """Index the shards in the folder not indexed yet. A shard that cannot be parsed (truncated, foreign) is
        deleted and one that cannot be opened is skipped, each with one warning: their examples are recomputed."""
        from safetensors import safe_open

        for path in sorted(self.folder.glob("part-*.safetensors")):
            if path in self._shards:
                continue
            try:
                handle = safe_open(str(path), framework="pt")
                metadata = handle.metadata() or {}
                keys = json.loads(metadata["keys"])
                lengths = handle.get_tensor("lengths").tolist()
                scores = handle.get_tensor("scores").tolist()
                rows = handle.get_slice("hidden").get_shape()[0]
                if metadata.get("format") != FORMAT or not len(keys) == len(lengths) == len(scores):
                    raise ValueError("inconsistent shard")
                if sum(lengths) != rows:
                    raise ValueError(f"{sum(lengths)} positions listed, {rows} stored")
            except OSError as error:  # the system's trouble (no file handle left, a vanished file), not the file's
                logger.warning("reference cache: %s cannot be opened (%s); its examples are recomputed", path, error)
                continue
            except Exception as error:  # a truncated or foreign file: never used, rebuilt from the reference
                logger.warning("reference cache: %s is unreadable (%s); deleted, recomputed", path, error)
                path.unlink(missing_ok=True)
                continue
            self._shards[path] = handle
            start = 0
            for key, n, score in zip(keys, lengths, scores, strict=True):
                self.index.setdefault(key, (path, start, n, score))
                start += n

    def __contains__(self, key: str) -> bool:
        return key in self.pending or key in self.index

    def __len__(self) -> int:
        return len(self.index.keys() | self.pending.keys())

    def positions(self, key: str) -> int:
        """The number of response positions cached for `key`, read from the index (no tensor is loaded)."""
        return self.pending[key].hidden.shape[0] if key in self.pending else self.index[key][2]

    def get(self, key: str) -> CachedExample:
        if key in self.pending:
            return self.pending[key]
        path, start, n, score = self.index[key]
        return CachedExample(self._shards[path].get_slice("hidden")[start : start + n], score)

    def add(self, key: str, example: CachedExample) -> None:
        if key in self:
            return
        example = CachedExample(example.hidden.detach().cpu().clone(), float(example.score))
        self.pending[key] = example
        self.pending_bytes += example.hidden.numel() * example.hidden.element_size()
        if self.pending_bytes > FLUSH_BYTES:
            self.flush()

    def flush(self) -> Path | None:
        """Write the pending entries as one shard (temporary name, then an atomic rename); returns its path."""
        from safetensors.torch import save_file

        if not self.pending:
            return None
        keys = list(self.pending)
        entries = [self.pending[key] for key in keys]
        tensors = {
            "hidden": torch.cat([e.hidden for e in entries]).contiguous(),  # (M, d)
            "lengths": torch.tensor([e.hidden.shape[0] for e in entries], dtype=torch.int64),  # (E,)
            "scores": torch.tensor([e.score for e in entries], dtype=torch.float32),  # (E,)
        }
        path = self.folder / f"part-{uuid.uuid4().hex}.safetensors"
        metadata = {"format": FORMAT, "keys": json.dumps(keys)}
        write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
        self.pending.clear()
        self.pending_bytes = 0
        self.refresh()
        return path
