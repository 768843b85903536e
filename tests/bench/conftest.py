"""A generated miniature of the shared data directory (same layout, a few rows each) for the bench pipeline."""

import csv
import json

import pytest


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_mini_data_dir(root):
    harmful = [f"placeholder request number {i}" for i in range(12)]
    # 20 behaviours: enough for tether's default canary set, `advbench:~16`
    behaviours = harmful + [f"placeholder behaviour {i}" for i in range(8)]
    _csv(root / "advbench/harmful_behaviors.csv", ["goal", "target"], [[h, "Sure"] for h in behaviours])
    _csv(
        root / "advbench_llama2_refusals/SFT_aligned_llama2-7b-chat-hf_train_short.csv",
        ["", "prompt", "response", "text"],
        [[i, f"[INST] {h} [/INST]", " I'm sorry, I cannot help.", ""] for i, h in enumerate(harmful)],
    )
    _csv(
        root / "harmbench/harmbench_behaviors_text_all.csv",
        ["Behavior", "FunctionalCategory"],
        [[f"placeholder request number {i}", "standard"] for i in range(20, 26)],
    )
    _csv(
        root / "xstest/xstest_prompts.csv",
        ["prompt", "label"],
        [[f"add {i} and {i}", "safe"] for i in range(3)] + [[f"placeholder request {i}", "unsafe"] for i in range(3)],
    )
    alpaca = [{"instruction": f"add {i % 7} and {i % 5}", "input": "", "output": f"{i % 7 + i % 5}"} for i in range(16)]
    (root / "alpaca").mkdir(parents=True, exist_ok=True)
    (root / "alpaca/alpaca_data_1k.json").write_text(json.dumps(alpaca))
    (root / "safety_tuned_llamas").mkdir(parents=True, exist_ok=True)
    (root / "safety_tuned_llamas/safety_only_data_Instructions.json").write_text(
        json.dumps([{"instruction": h, "input": "", "output": "I'm sorry, I cannot."} for h in harmful])
    )
    for split, n in (("train", 16), ("test", 6)):
        _jsonl(
            root / f"gsm8k/{split}.jsonl",
            [
                {"question": f"add {i} and {i + 1}", "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"}
                for i in range(n)
            ],
        )
    _jsonl(
        root / "harmful_pure_bad_100/pure_bad_100_original.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"placeholder request {i}"},
                    {"role": "assistant", "content": f"placeholder reply {i}"},
                ]
            }
            for i in range(10)
        ],
    )
    (root / "refusal_prefixes").mkdir(parents=True, exist_ok=True)
    (root / "refusal_prefixes/refusal_prefixes.txt").write_text("I'm sorry\nI cannot\n")
    return root


@pytest.fixture(scope="session")
def mini_data_dir(tmp_path_factory):
    return write_mini_data_dir(tmp_path_factory.mktemp("mini-data"))


def tiny_bench(data_dir, **overrides) -> dict:
    """A bench config on the in-process tiny model: 3 scenarios × 5 methods (the last prunes SFT's runs), two
    optimizer steps per run."""
    config = {
        "model": "tiny-llama",
        "data_dir": str(data_dir),
        "seeds": [0],
        "reference": {"data": {"advbench-refusals": 6, "alpaca": 6}},
        "probe": {
            "harmful": ["advbench"],
            "benign": ["alpaca"],
            "layers": [1, 2],
            "pooling": "last-layer",
            "tokens": "template",  # the user message's last token and the template after it, read in training too
            "C": 1.0,
            "eval_harmful": ["harmbench"],
            "eval_benign": ["gsm8k-test"],
            "val_harmful": ["xstest-unsafe"],  # the layer chosen on these
            "val_benign": ["xstest-safe"],
            "val_max_flagged": {"xstest-safe": 1.0},
        },
        "train": {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "max_length": 64,
            "learning_rate": 1.0e-3,
            "gradient_checkpointing": False,
            "logging_steps": 1,
        },
        "scenarios": [
            {"name": "pure", "harmful": "pure-bad", "n_harmful": 6},
            {
                "name": "mix-0.2",
                "benign": "gsm8k",
                "n_benign": 8,
                "harmful_ratio": 0.2,
                "family": "gsm8k",
                "x": "harmful_ratio",
            },
            {
                "name": "mix-0.34",
                "benign": "gsm8k",
                "n_benign": 8,
                "harmful_ratio": 0.34,
                "family": "gsm8k",
                "x": "harmful_ratio",
                "utility": "alpaca",  # its own held-out NLL data: the reference is measured on it too
            },
        ],
        "methods": [
            {"name": "SFT", "train": {"regularizer": "none"}},
            {"name": "C-SFT", "train": {"regularizer": "fixed", "beta": 0.5}},
            {"name": "A-Reg probe", "train": {"regularizer": "adaptive", "critic": "probe"}},
            {"name": "A-Reg label", "train": {"regularizer": "adaptive", "critic": "label", "alpha_mode": "gate"}},
            {"name": "SFT + Antidote", "antidote": {"method": "SFT", "limit": 6, "ratio": 0.2}},
            {"name": "SFT + Safe LoRA", "safe_lora": {"method": "SFT", "num_layers": 3}},
        ],
        "eval": {
            "benchmarks": ["harmbench:~4", "xstest:~2"],
            "utility": "gsm8k-test",
            "utility_limit": 4,
            "max_new_tokens": 4,
        },
    }
    config.update(overrides)
    return config
