"""Seconds per training step of plain SFT, tether's adaptive regularization and a naive KL implementation.

All modes train the same LoRA adapter (r 16, every projection) on the same batch (8 Alpaca rows, max 160 tokens):
- `none`: `TetherTrainer` with `regularizer: none` (NLL only, no reference pass);
- `adaptive`: `TetherTrainer` with `regularizer: adaptive`, label critic (half the rows flagged): one extra no-grad
  reference pass with the adapter disabled, KL at response positions only;
- `probe`: as `adaptive`, with `critic: probe` (`--probe PATH`): the probe reads the reference pass's states;
- `naive`: a second full copy of the model as the reference, and NLL + KL over every position's full logits
  (B × T × V), masked afterwards: how a straightforward implementation does it.

Modes are interleaved step by step so that machine drift hits all of them alike; the ratio is of median step times.
Peak memory needs one process per mode: `benchmarks/train_step.sh` runs each under `/usr/bin/time -v`.

    python benchmarks/train_step.py --modes none adaptive naive --steps 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from peft import get_peft_model

from tether.config import ModelArgs
from tether.data.chat import IGNORE_INDEX, TetherCollator, tokenize_rows
from tether.data.sources import load_examples
from tether.modeling import load_model_and_tokenizer
from tether.trainer import TetherConfig, TetherTrainer


def make_batch(tokenizer, data_dir, batch_size, max_length):
    rows = load_examples("alpaca", data_dir)
    rows = [r for r in rows if len(r["messages"][-1]["content"]) > 600][:batch_size]  # long answers: ~max_length
    for i, row in enumerate(rows):
        row["risk"] = float(i % 2)
    dataset, _ = tokenize_rows(rows, tokenizer, max_length)
    return dataset, TetherCollator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])


def tether_step_fn(mode, model_name, dataset, tokenizer, batch, probe_path=None):
    model, _ = load_model_and_tokenizer(model_name)
    config = TetherConfig(
        output_dir="/tmp/tether-bench",
        regularizer="adaptive" if mode == "probe" else mode,
        critic="probe" if mode == "probe" else "label",
        probe_path=probe_path,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = TetherTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=ModelArgs().lora_config(),
    )
    trainer.model.train()
    optimizer = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step


def naive_step_fn(model_name, batch):
    base, _ = load_model_and_tokenizer(model_name)
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
    args = parser.parse_args()

    _, tokenizer = load_model_and_tokenizer(args.model)
    dataset, batch = make_batch(tokenizer, args.data_dir, args.batch_size, args.max_length)
    steps = {
        mode: naive_step_fn(args.model, batch)
        if mode == "naive"
        else tether_step_fn(mode, args.model, dataset, tokenizer, batch, args.probe)
        for mode in args.modes
    }
    times = {mode: [] for mode in args.modes}
    for mode in args.modes:
        steps[mode]()  # warm-up
    for _ in range(args.steps):
        for mode in args.modes:
            start = time.perf_counter()
            steps[mode]()
            times[mode].append(time.perf_counter() - start)
    median = {mode: statistics.median(t) for mode, t in times.items()}
    result = {
        "model": args.model,
        "batch": list(batch["input_ids"].shape),
        "response_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "threads": torch.get_num_threads(),
        "seconds_per_step_median": median,
        "seconds_per_step_all": times,
    }
    if "none" in median:
        result["ratio_to_none"] = {mode: median[mode] / median["none"] for mode in median}
    if "probe" in median and "adaptive" in median:
        result["probe_over_adaptive"] = median["probe"] / median["adaptive"]
    if "naive" in median and "adaptive" in median:
        result["adaptive_over_naive"] = median["adaptive"] / median["naive"]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
