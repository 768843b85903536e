"""`run_training`: data -> model -> TetherTrainer -> a complete run directory, or nothing at all.

Run directory: `config.yaml` (resolved), `data_summary.json` (counts, mixing), `env.json` (versions),
`metrics.jsonl`, and `adapter/` (LoRA) or `model/` (full fine-tuning). Training writes into
`<output_dir>.incomplete` and renames it when it is done; on an error that staging folder is removed.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import yaml

from tether.baselines import trainer_class_for
from tether.config import DataArgs, ModelArgs
from tether.critics import PreparesRows, critic_from_config
from tether.data.chat import tokenize_rows
from tether.data.mixing import mix_harmful
from tether.data.sources import load_examples
from tether.errors import TetherInputError
from tether.modeling import load_model_and_tokenizer
from tether.run_files import environment, staging_path
from tether.trainer import JudgeGenerationsCallback, MetricsFileCallback, TetherConfig


def load_training_rows(data: DataArgs, seed: int) -> tuple[list[dict], dict]:
    """The training rows (subsampled, mixed) and a summary of what went in."""
    rows = load_examples(data.dataset, data.data_dir, data.risk_column, data.dataset_split)
    summary = {"dataset": data.dataset, "n_dataset": len(rows)}
    if data.max_train_examples is not None and data.max_train_examples < len(rows):
        rows = random.Random(seed).sample(rows, data.max_train_examples)
    if data.harmful_dataset is not None:
        harmful = load_examples(data.harmful_dataset, data.data_dir, data.risk_column, data.dataset_split)
        rows, mixing = mix_harmful(rows, harmful, data.harmful_ratio, seed=seed)
        summary["mixing"] = {"harmful_dataset": data.harmful_dataset, **mixing}
    summary["n_train"] = len(rows)
    return rows, summary


def run_training(model_args: ModelArgs, data_args: DataArgs, config: TetherConfig) -> Path:
    """Train and return the finished run directory. Bad input raises `TetherInputError` before anything is written.
    The trainer is `TetherTrainer`, or the baseline of `tether.baselines` that the config turns on; the critic is
    asked what it needs (a risk column, a pass over the rows before training)."""
    final_dir = Path(config.output_dir)
    if final_dir.exists() and any(final_dir.iterdir()):
        raise TetherInputError(f"output_dir {final_dir} already exists and is not empty; pass another --output_dir")
    trainer_class = trainer_class_for(config)
    rows, summary = load_training_rows(data_args, config.seed)
    extra_rows, extra_summary = trainer_class.load_extra_rows(config, data_args.data_dir)
    summary |= extra_summary
    critic = critic_from_config(config) if config.regularizer == "adaptive" else None
    critic_records = None
    if isinstance(critic, PreparesRows):  # e.g. a judge: scores every row once, before the model is loaded
        from tether.critics.judge import JudgeFailure

        try:
            rows, critic_records = critic.prepare(rows)
        except JudgeFailure as error:
            raise TetherInputError(f"{critic.name} critic: {error}") from None
        summary[critic.name] = critic.summary(rows)
    unlabelled = sum("risk" not in row for row in rows)
    if critic is not None and "risk" in critic.needs and unlabelled:
        raise TetherInputError(
            f"critic {critic.name!r} reads a {data_args.risk_column!r} column that {unlabelled} of {len(rows)} "
            f"examples of dataset {data_args.dataset} lack; add the column, mix in --harmful_dataset, or choose "
            "another critic"
        )
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path, model_args.dtype, config.trust_remote_code
    )
    dataset, summary["dropped_long_prompts"] = tokenize_rows(rows, tokenizer, config.max_length)
    extra_kwargs = trainer_class.extra_trainer_kwargs(extra_rows, tokenizer, config)

    staging = staging_path(final_dir)
    resolved = {
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "training": {**config.to_dict(), "output_dir": str(final_dir)},
    }
    config.output_dir = str(staging)
    trainer = None
    try:
        trainer = trainer_class(
            model=model,
            args=config,
            critic=critic,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=model_args.lora_config() if model_args.use_peft else None,
            callbacks=[MetricsFileCallback(staging / "metrics.jsonl")],
            **extra_kwargs,
        )
        if trainer.is_world_process_zero():
            if staging.exists():
                shutil.rmtree(staging)  # left by a killed run
            staging.mkdir(parents=True)
            (staging / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
            (staging / "data_summary.json").write_text(json.dumps(summary, indent=2))
            (staging / "env.json").write_text(json.dumps(environment(), indent=2))
            if critic_records is not None:
                lines = [json.dumps(record) for record in critic_records]
                (staging / "critic_scores.jsonl").write_text("\n".join(lines) + "\n")
        if config.judge_generations_every:
            prompts = [
                r["messages"][:-1]
                for r in random.Random(config.seed).sample(rows, min(config.judge_generations_prompts, len(rows)))
            ]
            trainer.add_callback(
                JudgeGenerationsCallback(
                    trainer,
                    critic.judge,
                    prompts,
                    config.judge_generations_every,
                    config.judge_generations_max_new_tokens,
                )
            )
        trainer.accelerator.wait_for_everyone()
        trainer.train()
        trainer.save_model(str(staging / ("adapter" if model_args.use_peft else "model")))
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(staging / ("adapter" if model_args.use_peft else "model"))
            staging.rename(final_dir)
        trainer.accelerator.wait_for_everyone()
    except BaseException:
        if trainer is None or trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        config.output_dir = str(final_dir)
    return final_dir


def train_from_settings(settings: dict) -> Path:
    """`tether train` from a mapping of its fields (what a YAML `--config` holds), validated as the CLI validates it;
    returns the finished run directory. The bench trains through this."""
    from tether.cli.train import make_parser

    model_args, data_args, config = make_parser().parse_settings(settings)
    return run_training(model_args, data_args, config)
