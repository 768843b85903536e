"""`run_training`: data -> model -> TetherTrainer -> a complete run directory, or nothing at all.

Run directory: `config.yaml` (resolved), `data_summary.json` (counts, mixing), `env.json` (versions),
`metrics.jsonl`, and `adapter/` (LoRA) or `model/` (full fine-tuning). Training writes into
`<output_dir>.incomplete` and renames it when it is done. The checkpoints transformers saves there (`save_strategy`)
carry tether's own state too (`TetherTrainer.save_tether_state`); a rerun of a killed or interrupted run resumes from
the last one, and nothing but `--restart` removes them. One process at a time holds `<output_dir>.lock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import signal
import sys
from pathlib import Path

import yaml
from transformers.trainer import TRAINER_STATE_NAME  # transformers' own, written last into a checkpoint
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tether.baselines import trainer_class_for
from tether.config import DataArgs, ModelArgs
from tether.critics import PreparesRows, ScoresPrompts, critic_from_config
from tether.critics.refusal import refusal_start_ids
from tether.data.chat import tokenize_rows
from tether.data.mixing import mix_harmful
from tether.data.prompts import load_prompts
from tether.data.sources import load_examples
from tether.errors import Interrupted, TetherInputError
from tether.model_card import run_card
from tether.modeling import load_model_and_tokenizer
from tether.run_files import environment, run_lock, staging_path
from tether.trainer import CanaryCallback, JudgeGenerationsCallback, MetricsFileCallback, TetherConfig
from tether.trainer.tether_trainer import REFERENCE_CACHE, TETHER_STATE


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


def calibration_prompts_for(critic, config: TetherConfig, data_dir: str | None) -> list[list[dict]] | None:
    """The benign prompts of `risk_calibration`, read and checked before the model is loaded; None without it."""
    if not config.risk_calibration:
        return None
    if not isinstance(critic, ScoresPrompts):
        raise TetherInputError(
            f"risk_calibration needs a critic that scores bare prompts (refusal, probe); critic {config.critic!r} "
            "does not: drop risk_calibration or set risk_saturation by hand"
        )
    return load_prompts(config.risk_calibration, data_dir)


def calibrate_risk(critic, model, tokenizer, prompts: list[list[dict]], config: TetherConfig) -> dict:
    """Set `config.risk_saturation` to the `risk_calibration_quantile` of the critic's scores on the benign
    prompts (scored by the reference); returns what `data_summary.json` records."""
    import numpy as np

    scores = np.asarray(critic.score_prompts(model, tokenizer, prompts))
    saturation = float(np.quantile(scores, config.risk_calibration_quantile))
    if not saturation > 0.0:
        raise TetherInputError(
            f"critic {critic.name!r} scores the {config.risk_calibration_quantile} quantile of risk_calibration "
            f"{config.risk_calibration} at 0, which cannot scale a risk; raise risk_calibration_quantile"
        )
    config.risk_saturation = min(saturation, 1.0)
    return {
        "set": config.risk_calibration,
        "n": len(scores),
        "quantile": config.risk_calibration_quantile,
        "risk_saturation": config.risk_saturation,
        "mean": float(scores.mean()),
    }


def run_training(model_args: ModelArgs, data_args: DataArgs, config: TetherConfig) -> Path:
    """Train and return the finished run directory. Bad input raises `TetherInputError` before anything is written.
    The trainer is `TetherTrainer`, or the baseline of `tether.baselines` that the config turns on; the critic is
    asked what it needs (a risk column, a pass over the rows before training).

    One process at a time: the main process holds `<output_dir>.lock` for the whole run (another gets a one-line
    error). A run left in `<output_dir>.incomplete` with checkpoints is resumed from the last one (`config.restart`
    starts over instead); a failure or an interrupt keeps that folder and its checkpoints."""
    final_dir = Path(config.output_dir)
    with run_lock(final_dir) if config.process_index == 0 else contextlib.nullcontext():
        return _run_training(final_dir, model_args, data_args, config)


def _run_training(final_dir: Path, model_args: ModelArgs, data_args: DataArgs, config: TetherConfig) -> Path:
    if final_dir.exists() and any(final_dir.iterdir()):
        raise TetherInputError(f"output_dir {final_dir} already exists and is not empty; pass another --output_dir")
    trainer_class = trainer_class_for(config)
    rows, summary = load_training_rows(data_args, config.seed)
    extra_rows, extra_summary = trainer_class.load_extra_rows(config, data_args.data_dir)
    summary |= extra_summary
    rows, prepared_summary = trainer_class.prepare_rows(config, rows)
    summary |= prepared_summary
    critic = critic_from_config(config) if trainer_class.uses_critic(config) else None
    critic_records = None
    if isinstance(critic, PreparesRows):  # e.g. a judge: scores every row once, before the model is loaded
        from tether.critics.judge import JudgeFailure

        try:
            rows, critic_records = critic.prepare(rows)
        except JudgeFailure as error:
            raise TetherInputError(f"{critic.name} critic: {error}") from None
        summary[critic.name] = critic.summary(rows)
    calibration_prompts = calibration_prompts_for(critic, config, data_args.data_dir)
    canary_prompts = load_prompts(config.canary_prompts, data_args.data_dir) if config.canary_prompts else None
    unlabelled = sum("risk" not in row for row in rows)
    if critic is not None and "risk" in critic.needs and unlabelled:
        raise TetherInputError(
            f"critic {critic.name!r} reads a {data_args.risk_column!r} column that {unlabelled} of {len(rows)} "
            f"examples of dataset {data_args.dataset} lack; add the column, mix in --harmful_dataset, or choose "
            "another critic"
        )
    staging = staging_path(final_dir)
    resolved = {
        "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args),
        "training": {**config.to_dict(), "output_dir": str(final_dir)},
    }
    checkpoint = resume_checkpoint(staging, resolved, config)
    resuming_here = checkpoint is not None and staging.resolve() in checkpoint.resolve().parents
    config.output_dir = str(staging)  # transformers writes its checkpoints here
    try:
        model, tokenizer = load_model_and_tokenizer(
            model_args.model_name_or_path, model_args.dtype, config.trust_remote_code
        )
        if model_args.use_peft:
            check_lora_targets(model, model_args.lora_target_modules)
        if canary_prompts is not None:  # one line if the template renders no refusal opening
            canary_ids = refusal_start_ids(tokenizer, user="canary_prompts")
        if calibration_prompts is not None:  # the model is still the reference: no adapter, no step taken
            summary["risk_calibration"] = calibrate_risk(critic, model, tokenizer, calibration_prompts, config)
        dataset, summary["dropped_long_prompts"] = tokenize_rows(rows, tokenizer, config.max_length)
        extra_kwargs = trainer_class.extra_trainer_kwargs(extra_rows, tokenizer, config)
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
        if trainer.is_world_process_zero() and resuming_here:
            note = f"resuming {final_dir} from {checkpoint.name} (pass --restart to start over)"
            print(f"tether: {note}", file=sys.stderr)
        elif trainer.is_world_process_zero():
            if config.restart and complete_checkpoints(staging):
                print(f"tether: starting over (--restart): removing {staging} and its checkpoints", file=sys.stderr)
            if staging.exists():
                shutil.rmtree(staging)  # no checkpoint to resume from in it, or `restart`
            staging.mkdir(parents=True)
            (staging / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
            (staging / "data_summary.json").write_text(json.dumps(summary, indent=2))
            (staging / "env.json").write_text(json.dumps(environment(), indent=2))
            if critic_records is not None:
                lines = [json.dumps(record) for record in critic_records]
                (staging / "critic_scores.jsonl").write_text("\n".join(lines) + "\n")
            if checkpoint is not None:
                print(f"tether: resuming {final_dir} from {checkpoint}", file=sys.stderr)
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
        if canary_prompts is not None:
            trainer.add_callback(CanaryCallback(trainer, canary_prompts, config.canary_every, canary_ids))
        if checkpoint is not None:
            trainer.load_tether_state(checkpoint)
        trainer.accelerator.wait_for_everyone()
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        trainer.save_model(str(staging / ("adapter" if model_args.use_peft else "model")))
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            weights_dir = staging / ("adapter" if model_args.use_peft else "model")
            tokenizer.save_pretrained(weights_dir)
            card = run_card(resolved, summary, environment(), model_args.use_peft)
            for folder in (staging, weights_dir):  # the run's card; the weights folder is what push_to_hub uploads
                (folder / "README.md").write_text(card)
            if not config.reference_cache_dir:  # the run's own cache: only a resumed run reads it
                shutil.rmtree(staging / REFERENCE_CACHE, ignore_errors=True)
            staging.rename(final_dir)
        trainer.accelerator.wait_for_everyone()
    except BaseException as error:
        kept = complete_checkpoints(staging)
        if not kept and config.process_index == 0:
            shutil.rmtree(staging, ignore_errors=True)  # nothing to resume from in it
        rerun = "rerun the same command" + (" without --restart" if config.restart else "")
        hint = f"{rerun} to resume from {kept[-1].name}" if kept else "no checkpoint was saved, nothing is kept"
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C, or SIGTERM under the CLI: one line, no traceback
            signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
            raise Interrupted(signum, f"interrupted; {hint}") from None
        if kept and not isinstance(error, TetherInputError):
            print(f"tether: the run failed; {staging} keeps its checkpoints: {hint}", file=sys.stderr)
        raise
    finally:
        config.output_dir = str(final_dir)
    return final_dir


def check_lora_targets(model, targets: list[str]) -> None:
    """Every named LoRA target is a module of the model (PEFT would otherwise fail with a traceback)."""
    if targets == ["all-linear"]:
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise TetherInputError(
            f"lora_target_modules {', '.join(missing)}: no such module in the model; choose from "
            f"{', '.join(linear)}, or all-linear"
        )


def complete_checkpoints(staging: Path) -> list[Path]:
    """The complete checkpoints in a staging folder, oldest first: those with transformers' `trainer_state.json` and
    tether's state (written after it), so that a checkpoint cut short by a kill is never resumed from."""
    found = [c for c in staging.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if is_complete_checkpoint(c)]
    steps = {c: c.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-") for c in found}
    return sorted((c for c in found if steps[c].isdigit()), key=lambda c: int(steps[c]))


def is_complete_checkpoint(folder: Path) -> bool:
    return (folder / TRAINER_STATE_NAME).is_file() and (folder / TETHER_STATE).is_file()


def resume_checkpoint(staging: Path, resolved: dict, config: TetherConfig) -> Path | None:
    """The checkpoint this run starts from: `--resume_from_checkpoint`, else the last complete one in the staging
    folder a killed run left, unless `config.restart`. Refuses (one line) to resume a staging folder made with
    another config, or to start over past its checkpoints without `--restart`."""
    given = Path(config.resume_from_checkpoint) if config.resume_from_checkpoint else None
    if given is not None and not is_complete_checkpoint(given):
        raise TetherInputError(
            f"--resume_from_checkpoint {given} is not a complete checkpoint ({TRAINER_STATE_NAME} and "
            f"{TETHER_STATE}); pass a {PREFIX_CHECKPOINT_DIR}-N folder of a tether run"
        )
    inside = given is not None and staging.resolve() in given.resolve().parents
    if config.restart:
        if inside:
            raise TetherInputError(f"--restart discards {staging}, which holds --resume_from_checkpoint; drop one")
        return given
    found = complete_checkpoints(staging) if staging.is_dir() else []
    if not found and not inside:
        return given  # a staging folder without a checkpoint has nothing to resume: it is replaced
    if found and given is not None and not inside:
        raise TetherInputError(
            f"{staging} holds checkpoints of a killed run ({found[-1].name}); pass --restart to discard them, or "
            "resume from one of them"
        )
    recorded = _flat(yaml.safe_load((staging / "config.yaml").read_text()))
    now = _flat(yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False)))
    # how a run starts and where its reference cache lives, not what it trains
    ignored = {"training.restart", "training.resume_from_checkpoint"}
    ignored |= {"training.reference_cache", "training.reference_cache_dir"}
    differing = sorted(k for k in (recorded.keys() | now.keys()) - ignored if recorded.get(k) != now.get(k))
    if differing:
        first, more = differing[0], f" and {len(differing) - 1} more" if len(differing) > 1 else ""
        raise TetherInputError(
            f"{staging} holds a killed run of another config ({first}: {recorded.get(first)!r} there, "
            f"{now.get(first)!r} now{more}); pass --restart to start over, or another --output_dir"
        )
    return given or found[-1]


def _flat(config: dict) -> dict:
    return {f"{section}.{key}": value for section, fields in config.items() for key, value in (fields or {}).items()}


def train_from_settings(settings: dict) -> Path:
    """`tether train` from a mapping of its fields (what a YAML `--config` holds), validated as the CLI validates it;
    returns the finished run directory. The bench trains through this."""
    from tether.cli.train import make_parser

    model_args, data_args, config = make_parser().parse_settings(settings)
    return run_training(model_args, data_args, config)
