"""Shared fixtures: a tiny in-process Llama and tokenizer, placeholder chat rows, a trainer factory. No downloads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup fails at once instead of retrying for a minute
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from tether.baselines import train_config_class, trainer_class_for  # noqa: E402
from tether.data.chat import tokenize_rows  # noqa: E402
from tether.data.sources import tiny_synthetic_examples  # noqa: E402
from tether.modeling import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from tether.trainer import TetherConfig, TetherTrainer  # noqa: E402

# what a finished LoRA run directory holds
RUN_DIR_FILES = ["README.md", "adapter", "config.yaml", "data_summary.json", "env.json", "metrics.jsonl"]
SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return build_tiny_model(len(tokenizer))


@pytest.fixture
def rows():
    return tiny_synthetic_examples()


def make_config(tmp_path, **overrides) -> TetherConfig:
    """The config `tether train` would build (`TetherConfig` with every baseline's fields)."""
    settings = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_length=64,
        learning_rate=1e-3,
        gradient_checkpointing=False,
        save_strategy="no",
        max_steps=2,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
    )
    settings.update(overrides)
    return train_config_class()(**settings)


def make_trainer(model, tokenizer, rows, config, peft_config="default", **kwargs) -> TetherTrainer:
    """The trainer `tether train` would pick for `config` (a TetherTrainer, or the baseline the config turns on) on
    the tokenized rows; LoRA r=4 on every projection unless `peft_config=None`."""
    from peft import LoraConfig

    if peft_config == "default":
        peft_config = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    dataset, _ = tokenize_rows(rows, tokenizer, config.max_length)
    return trainer_class_for(config)(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config, **kwargs
    )


def target_logprobs_of(model, batch):
    """log p(y_t) of every response target (N,) from a plain forward over full logits, and the positions."""
    from tether.trainer.tether_trainer import ResponsePositions

    positions = ResponsePositions.of(batch)
    targets = positions.targets[positions.rows, positions.cols]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    return logits.log_softmax(-1)[positions.rows, positions.cols].gather(1, targets[:, None]).squeeze(1), positions
