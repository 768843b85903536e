"""Seconds per training step of plain SFT, tether's adaptive regularization and a naive KL implementation.

All modes train the same LoRA adapter (r 16, every projection) on the same batch (8 Alpaca rows, max 160 tokens):
- `none`: `TetherTrainer` with `regularizer: none` (NLL only, no reference pass);
- `adaptive`: `TetherTrainer` with `regularizer: adaptive`, label critic (half the rows flagged): one extra no-grad
  reference pass with the adapter disabled, KL at response positions only;
- `probe`: as `adaptive`, with `critic: probe` (`--probe PATH`): the probe reads the reference pass's states;
- `default`: tether's defaults (`refusal` critic read from the reference pass, depth-aware KL) with the canary drift
  check (16 AdvBench prompts, one no-grad forward) run after every third step, as `tether train` runs it;
- `adaptive-cached`, `default-cached`: the same with the reference cache warm (an epoch after the first: every
  example was seen, so no reference forward runs); `adaptive` and `default` run with the cache off (a first epoch);
- `constrained`, `star-dss`, `star-dss-critic`, `asft`: the baselines that change the step (constrained SFT, STAR-DSS
  with the label guardrail and with the refusal critic as guardrail, AsFT: `--model` the aligned reference,
  `--unaligned` the model it was aligned from), official settings;
- `lisa`: LISA's fine-tuning step, SFT plus the proximal term to the weights at the last phase switch (its alignment
  steps replace user steps with a batch of alignment data, so they cost an SFT step on that batch);
- `naive`: a second full copy of the model as the reference, and NLL + KL over every position's full logits
  (B × T × V), masked afterwards: how a straightforward implementation does it.

Modes are interleaved step by step so that machine drift hits all of them alike. Reported: the ratio of median step
times, and the spread of the paired ratios (step i of a mode over step i of `none`: median, quartiles, extremes).
Peak memory needs one process per mode: `benchmarks/train_step.sh` runs each under `/usr/bin/time -v`.

    python benchmarks/train_step.py --modes none adaptive default naive --steps 9
    python benchmarks/train_step.py --modes none adaptive adaptive-cached default default-cached --steps 9
    python benchmarks/train_step.py --model runs/safe-reference/reference/model --unaligned smollm2-135m-instruct \
        --modes none constrained star-dss star-dss-critic asft lisa --steps 9
    python benchmarks/train_step.py --device cuda --modes none default   # on a GPU, bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from peft import get_peft_model

from tether.baselines import train_config_class, trainer_class_for
from tether.config import ModelArgs
from tether.data.chat import IGNORE_INDEX, TetherCollator, tokenize_rows
from tether.data.sources import load_examples
from tether.modeling import load_model_and_tokenizer


def make_batch(tokenizer, data_dir, batch_size, max_length):
    rows = load_examples("alpaca", data_dir)
    rows = [r for r in rows if len(r["messages"][-1]["content"]) > 600][:batch_size]  # long answers: ~max_length
    for i, row in enumerate(rows):
        row["risk"] = float(i % 2)
    dataset, _ = tokenize_rows(rows, tokenizer, max_length)
    return dataset, TetherCollator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])


BASELINE_MODES = {  # baselines that change the step, with their official settings
    "constrained": {"regularizer": "none", "constrained_sft": True},
    "star-dss": {"regularizer": "none", "star_dss": True, "star_dss_guardrail": "label"},
    "star-dss-critic": {"regularizer": "none", "star_dss": True, "star_dss_guardrail": "critic", "critic": "refusal"},
    "lisa": {"regularizer": "none", "lisa_data": "the timed batch"},  # the anchor is set below
    "asft": {"regularizer": "none"},  # asft_unaligned from --unaligned
}


def tether_step_fn(
    mode,
    model_name,
    dataset,
    tokenizer,
    batch,
    probe_path=None,
    device="cpu",
    data_dir=None,
    unaligned=None,
    checkpointing=False,
):
    model, _ = load_model_and_tokenizer(model_name)
    cached = mode.endswith("-cached")  # the warm-up step fills the cache, every timed step reads it
    mode = mode.removesuffix("-cached")
    paper = {"critic": "probe" if mode == "probe" else "label", "kl_prefix_tokens": 0, "canary_every": 0}
    if mode in BASELINE_MODES:
        settings = {**BASELINE_MODES[mode], **({"asft_unaligned": unaligned} if mode == "asft" else {})}
    else:
        settings = {"regularizer": "adaptive" if mode in ("probe", "default") else mode}
        settings |= {} if mode == "default" else paper
    config = train_config_class()(
        output_dir=tempfile.mkdtemp(prefix="tether-bench-"),  # each mode its own reference cache
        reference_cache=cached,
        **settings,
        probe_path=probe_path,
        gradient_checkpointing=checkpointing,
        use_cpu=device == "cpu",
        bf16=device != "cpu",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = trainer_class_for(config)(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=ModelArgs().lora_config(),
        **({"alignment_dataset": dataset} if mode == "lisa" else {}),
    )
    trainer.model.train()
    if checkpointing:  # as `Trainer.train` does before its first step
        trainer.model.activation_checkpointing_enable()
    if mode == "lisa":  # a fine-tuning phase: the proximal term to the weights at its start
        trainer._lisa_anchor = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-4)
    batch = {key: value.to(trainer.model.device) for key, value in batch.items()}
    canary, state = None, SimpleNamespace(global_step=0)
    if config.canary_prompts:  # the drift check `tether train` runs after every `canary_every`-th step
        from tether.data.prompts import load_prompts
        from tether.trainer.callbacks import CanaryCallback

        canary = CanaryCallback(trainer, load_prompts(config.canary_prompts, data_dir), config.canary_every)
        canary.on_train_begin(config, state, None)  # the reference's mass, measured once before training

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device != "cpu"):
            loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        state.global_step += 1
        if canary is not None:
            canary.on_step_end(config, state, None)
        return loss.item()

    return step


def naive_step_fn(model_name, batch, device="cpu"):
    base, _ = load_model_and_tokenizer(model_name)
    base.to(device)
    batch = {key: value.to(device) for key, value in batch.items()}
    reference = copy.deepcopy(base).eval().requires_grad_(False)  # a second full copy of the weights
    model = get_peft_model(base, ModelArgs().lora_config())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    beta = 0.1 + 0.8 * batch["risk"]  # (B,)
    alpha = 1 - beta

    def step():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        with torch.no_grad():
            ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            ref_logp = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        nll = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (B, T-1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T-1)
        per_token = (alpha[:, None] * nll + beta[:, None] * kl) * mask
        loss = per_token.sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--modes", nargs="+", default=["none", "adaptive", "naive"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode, after one warm-up step")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=160)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--probe", default=None, help="probe directory for the `probe` mode")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast)")
    parser.add_argument("--unaligned", default=None, help="asft mode: the model --model was aligned from")
    parser.add_argument(
        "--gradient_checkpointing", action="store_true", help="tether modes recompute activations in the backward"
    )
    args = parser.parse_args()

    _, tokenizer = load_model_and_tokenizer(args.model)
    dataset, batch = make_batch(tokenizer, args.data_dir, args.batch_size, args.max_length)
    steps = {
        mode: naive_step_fn(args.model, batch, args.device)
        if mode == "naive"
        else tether_step_fn(
            mode,
            args.model,
            dataset,
            tokenizer,
            batch,
            args.probe,
            args.device,
            args.data_dir,
            args.unaligned,
            args.gradient_checkpointing,
        )
        for mode in args.modes
    }
    times = {mode: [] for mode in args.modes}
    for mode in args.modes:
        steps[mode]()  # warm-up
    for _ in range(args.steps):
        for mode in args.modes:
            if args.device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[mode]()
            if args.device != "cpu":
                torch.cuda.synchronize()
            times[mode].append(time.perf_counter() - start)
    median = {mode: statistics.median(t) for mode, t in times.items()}
    result = {
        "model": args.model,
        "batch": list(batch["input_ids"].shape),
        "response_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": args.gradient_checkpointing,
        "seconds_per_step_median": median,
        "seconds_per_step_all": times,
    }
    # the process's peak: GPU memory allocated, or resident memory on CPU (one mode per process to compare modes)
    if args.device == "cpu":
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if "none" in median:
        result["ratio_to_none"] = {mode: median[mode] / median["none"] for mode in median}
        result["paired_ratio_to_none"] = {mode: spread(times[mode], times["none"]) for mode in median}
        # the whole run's cost: a periodic check (the canary's) lands on some steps only
        result["total_ratio_to_none"] = {mode: sum(times[mode]) / sum(times["none"]) for mode in median}
    if "probe" in median and "adaptive" in median:
        result["probe_over_adaptive"] = median["probe"] / median["adaptive"]
    if "naive" in median and "adaptive" in median:
        result["adaptive_over_naive"] = median["adaptive"] / median["naive"]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


def spread(times: list[float], baseline: list[float]) -> dict:
    """The paired ratios times[i] / baseline[i]: their median, quartiles and extremes."""
    ratios = sorted(t / b for t, b in zip(times, baseline, strict=True))
    q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"median": q2, "q1": q1, "q3": q3, "min": ratios[0], "max": ratios[-1]}


if __name__ == "__main__":
    main()
