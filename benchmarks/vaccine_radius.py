"""How hard Vaccine's perturbation pushes, for each radius ρ: the loss increase on batches of alignment data.

    python benchmarks/vaccine_radius.py --model smollm2-135m-instruct --rho 0.5 1 2 5 10 --batches 3

ρ is a norm over every attention output of every layer and token of a micro-batch together, so the same ρ is a
different push on a different model, batch or sequence length. This measures it on the demo's reference recipe:
batches of 10 rows (the demo's alignment mix: AdvBench refusals, safety-llamas, Alpaca; 128 tokens) on the model with
a fresh LoRA adapter, i.e. the first step of `tether bench`'s reference stage with `vaccine_rho`. For each ρ:
the NLL without and with the shift ρ·g/‖g‖ (mean over batches), the ratio, and ‖g‖; also the RMS of the attention
outputs against the RMS of the shift, per element.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig

from tether.baselines.vaccine import (
    VaccineConfig,
    VaccineTrainer,
    add_to_outputs,
    attention_blocks,
    capture_outputs,
)
from tether.bench.config import DEMO_CONFIG, load_bench_config
from tether.bench.pipeline import reference_rows
from tether.data.chat import tokenize_rows
from tether.modeling import load_model_and_tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0, 10.0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=10)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    demo = load_bench_config(Path(str(DEMO_CONFIG)))  # the demo's reference mix, as the bench samples it
    rows = reference_rows(demo.reference.data, args.data_dir, 0)[: args.batches * args.batch_size]
    config = VaccineConfig(
        output_dir=tempfile.mkdtemp(),
        regularizer="none",
        vaccine_rho=1.0,
        max_length=128,
        per_device_train_batch_size=args.batch_size,
        report_to=[],
        use_cpu=True,
        gradient_checkpointing=False,
    )
    dataset, _ = tokenize_rows(rows, tokenizer, config.max_length)
    peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = VaccineTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft
    )
    model = trainer.model
    blocks = attention_blocks(model)
    results = {rho: {"clean": [], "shifted": [], "grad_norm": [], "shift_rms": []} for rho in args.rho}
    output_rms = []
    for b in range(args.batches):
        batch = trainer.data_collator([dataset[i] for i in range(b * args.batch_size, (b + 1) * args.batch_size)])
        with torch.no_grad(), capture_outputs(blocks) as outputs:
            clean = trainer.compute_loss(model, batch).item()
        output_rms.append(torch.cat([o.flatten() for o in outputs.values()]).pow(2).mean().sqrt().item())
        for rho in args.rho:
            trainer.args.vaccine_rho = rho
            shifts, grad_norm = trainer.perturbation(model, blocks, batch)
            with torch.no_grad(), add_to_outputs(blocks, shifts):
                shifted = trainer.compute_loss(model, batch).item()
            results[rho]["clean"].append(clean)
            results[rho]["shifted"].append(shifted)
            results[rho]["grad_norm"].append(grad_norm)
            results[rho]["shift_rms"].append(torch.cat([s.flatten() for s in shifts]).pow(2).mean().sqrt().item())

    def mean(values):
        return sum(values) / len(values)

    table = {
        "model": args.model,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "attention_output_rms": mean(output_rms),
        "rho": {
            str(rho): {key: mean(values) for key, values in r.items()}
            | {"loss_ratio": mean(r["shifted"]) / mean(r["clean"])}
            for rho, r in results.items()
        },
    }
    print(json.dumps(table, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
