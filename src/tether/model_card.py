"""Model cards: a `README.md` in the Hugging Face Hub's model-card format (YAML metadata, then markdown) in every run
directory, its `adapter/` or `model/` folder (what `push_to_hub` uploads), and every merged or pruned model.

The card says what the model was trained from, on what, with which method and critic, by which tether version; when
the model is evaluated (`tether eval`, the bench), its "Evaluation" section is replaced by the results, with each
benchmark's version, prompt count and 95% interval. A folder whose `README.md` is not a tether card is never touched.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tether.run_files import write_text_atomic

MARKER = "<!-- tether model card -->"
EVALUATION = "## Evaluation"
NOT_EVALUATED = "Not evaluated yet: `tether eval --model <this directory> --benchmark ...` writes the results here.\n"
METHOD_KEYS = (  # the settings that say what the method did, in this order, when present
    "regularizer",
    "critic",
    "beta",
    "beta_min",
    "beta_max",
    "alpha_mode",
    "kl_scale",
    "kl_prefix_tokens",
    "kl_prefix_scale",
    "risk_saturation",
    "risk_calibration",
    "canary_prompts",
    "lisa_data",
    "vaccine_rho",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "seed",
)


def card_text(title: str, base_model: str, library: str, sections: dict[str, str], tags: list[str]) -> str:
    """A card: metadata, the title, each section (heading -> markdown), then the evaluation placeholder."""
    metadata = {"base_model": base_model, "library_name": library, "tags": ["tether", "safety", *tags]}
    parts = [f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n", MARKER, f"# {title}\n"]
    parts += [f"## {heading}\n\n{body}" for heading, body in sections.items()]
    parts.append(f"{EVALUATION}\n\n{NOT_EVALUATED}")
    return "\n".join(parts)


def settings_table(settings: dict) -> str:
    rows = [(key, settings[key]) for key in METHOD_KEYS if settings.get(key) not in (None, "")]
    return "| setting | value |\n|---|---|\n" + "".join(f"| `{k}` | {v} |\n" for k, v in rows)


def run_card(resolved: dict, summary: dict, environment: dict, use_peft: bool) -> str:
    """The card of a `tether train` run, from its resolved config, data summary and environment."""
    model, data, training = resolved["model"], resolved["data"], resolved["training"]
    base = model["model_name_or_path"]
    method = {"none": "plain SFT", "fixed": "C-SFT (constant KL weight)", "adaptive": "A-Reg (risk-weighted KL)"}
    lora = f"LoRA r={model.get('lora_r')}, alpha={model.get('lora_alpha')}" if use_peft else "full fine-tuning"
    data_lines = [f"- dataset: `{data.get('dataset')}`"]
    if data.get("harmful_dataset"):
        data_lines.append(f"- mixed in: `{data['harmful_dataset']}` at ratio {data.get('harmful_ratio')}")
    for key, value in summary.items():
        if isinstance(value, (int, float, str)):
            data_lines.append(f"- {key}: {value}")
    versions = ", ".join(
        f"{k} {v}" for k, v in (environment.get("versions") or environment).items() if isinstance(v, str)
    )
    sections = {
        "Training": (
            f"Fine-tuned from `{base}` with [tether](https://pypi.org/project/tether/): "
            f"{method.get(training.get('regularizer'), training.get('regularizer'))}, {lora}.\n\n"
            + settings_table(training)
        ),
        "Data": "\n".join(data_lines) + "\n",
        "Software": f"{versions}\n" if versions else "not recorded\n",
    }
    tags = [str(training.get("regularizer")), "lora" if use_peft else "full-fine-tuning"]
    return card_text(Path(training["output_dir"]).name, base, "peft" if use_peft else "transformers", sections, tags)


def derived_card(title: str, source: str, how: str, details: dict) -> str:
    """The card of a model made from another one (a merged adapter, a pruned model)."""
    body = f"{how} from `{source}`.\n\n" + "".join(f"- {k}: {v}\n" for k, v in details.items())
    return card_text(title, source, "transformers", {"Provenance": body}, ["derived"])


def is_tether_card(path: Path) -> bool:
    return path.is_file() and MARKER in path.read_text(encoding="utf-8", errors="replace")


def evaluation_markdown(results: dict) -> str:
    """The results of `tether eval` as the card's evaluation section body."""
    lines = [
        f"`tether eval` ({results['generation']['decoding']}, {results['generation']['max_new_tokens']} new tokens):\n"
    ]
    lines += ["| benchmark | version | metric | value | n | 95% interval |", "|---|---|---|---|---|---|"]
    for name, bench in results["benchmarks"].items():
        metrics = bench["metrics"]
        for metric, value in metrics.items():
            if not isinstance(value, float) or metric.endswith("_ci95"):
                continue
            interval = metrics.get(f"{metric}_ci95")
            shown_ci = f"[{interval[0]:.1%}, {interval[1]:.1%}]" if interval else ""
            count = metrics.get(f"{metric}_n", metrics.get("n", len(bench.get("samples", []))))
            lines.append(f"| {name} | {bench.get('version', '')} | {metric} | {value:.1%} | {count} | {shown_ci} |")
    if results.get("heldout_nll"):
        nll = results["heldout_nll"]
        lines.append(f"| {nll['data']} | | held-out NLL | {nll['nll']:.4f} | {nll['tokens']} tokens | |")
    return "\n".join(lines) + "\n"


def add_evaluation(model_dir: str | Path, results: dict) -> list[Path]:
    """Replace the evaluation section of the tether cards in `model_dir` (and its `adapter/` or `model/`) with
    `results`; returns the cards written. Other README files are left alone."""
    written = []
    for card in (
        Path(model_dir) / "README.md",
        Path(model_dir) / "adapter" / "README.md",
        Path(model_dir) / "model" / "README.md",
    ):
        if not is_tether_card(card):
            continue
        text = card.read_text(encoding="utf-8")
        head = text.split(f"\n{EVALUATION}\n", 1)[0]
        write_text_atomic(card, f"{head}\n{EVALUATION}\n\n{evaluation_markdown(results)}")
        written.append(card)
    return written
