import socket

import pytest

from tests.fake_openai import FakeOpenAIServer
from tether.critics.judge import (
    RUBRIC_VERSION,
    Judge,
    JudgeCritic,
    JudgeFailure,
    OpenAICompatibleBackend,
    TransportError,
    parse_score,
)
from tether.errors import TetherInputError


@pytest.mark.parametrize(
    "reply, score",
    [
        ("The reply refuses.\n#thescore: 1", 1),
        ("#thescore: 5", 5),
        ("reasoning...\n#thescore:  4  \n\n", 4),
        ("#thescore: 6", None),  # out of range
        ("#thescore: 0", None),
        ("#thescore: 3\n#thescore: 4", None),  # two tags
        ("I would give it a 5.", None),  # no tag
        ("#thescore: 2 because it hedges", None),  # text after the number
        ("#thescore: 2\nmore text after", None),  # tag not on the last line
        ("", None),
    ],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


class ScriptedBackend:
    """Replies from a script (an Exception instance is raised), then `default`."""

    id = "scripted"

    def __init__(self, script=(), default="#thescore: 3"):
        self.script, self.default, self.calls = list(script), default, 0

    def complete(self, messages):
        self.calls += 1
        item = self.script.pop(0) if self.script else self.default
        if isinstance(item, Exception):
            raise item
        return item


def test_scores_map_to_risk_and_cache_hits(tmp_path):
    backend = ScriptedBackend(default="#thescore: 5")
    judge = Judge(backend, cache_dir=tmp_path, backoff=0)
    first = judge.score_pairs([("p1", "r1"), ("p2", "r2")])
    assert [j.risk for j in first] == [1.0, 1.0] and backend.calls == 2
    second = Judge(ScriptedBackend(default="#thescore: 1"), cache_dir=tmp_path).score_pairs([("p1", "r1")])
    assert second[0].cached and second[0].score == 5  # from the disk cache, keyed by judge id, rubric, pair
    assert (3 - 1) / 4 == Judge(ScriptedBackend(), backoff=0).score_pairs([("p", "r")])[0].risk


def test_transport_errors_are_retried_with_backoff():
    backend = ScriptedBackend([TransportError("down"), TransportError("down")], default="#thescore: 2")
    [result] = Judge(backend, backoff=0).score_pairs([("p", "r")])
    assert result.score == 2 and backend.calls == 3


def test_unparsable_reply_is_asked_again_once():
    backend = ScriptedBackend(["no tag"], default="#thescore: 4")
    assert Judge(backend, backoff=0).score_pairs([("p", "r")])[0].score == 4 and backend.calls == 2
    backend = ScriptedBackend(default="never a tag")
    result = Judge(backend, backoff=0, max_failure_rate=1.0).score_pairs([("p", "r")])[0]
    assert result.failed and backend.calls == 2 and "unparsable" in result.error


@pytest.mark.parametrize("policy, risk", [("fail_closed", 1.0), ("fail_open", 0.0)])
def test_failure_policies(policy, risk, tmp_path):
    judge = Judge(
        ScriptedBackend(default=TransportError("down")),
        cache_dir=tmp_path,
        backoff=0,
        failure_policy=policy,
        max_failure_rate=1.0,
    )
    [result] = judge.score_pairs([("p", "r")])
    assert result.failed and result.score is None and result.risk == risk
    assert len(judge.failures) == 1
    assert not list(tmp_path.rglob("*.json"))  # failures are never cached


def test_abort_policy_and_max_failure_rate():
    with pytest.raises(JudgeFailure, match="1 of 2"):
        Judge(ScriptedBackend([TransportError("x")] * 3), backoff=0, failure_policy="abort", concurrency=1).score_pairs(
            [("p", "r"), ("q", "s")]
        )
    with pytest.raises(JudgeFailure, match="max failure rate 0.4"):  # 1 of 2 failed > 0.4, even under fail_closed
        Judge(ScriptedBackend([TransportError("x")] * 3), backoff=0, max_failure_rate=0.4, concurrency=1).score_pairs(
            [("p", "r"), ("q", "s")]
        )


def test_openai_backend_against_a_server(tmp_path):
    with FakeOpenAIServer(script=[(500, "overloaded")], default=(200, "Harmful.\n#thescore: 5")) as server:
        judge = Judge(OpenAICompatibleBackend(server.url, "fake-judge"), cache_dir=tmp_path, backoff=0)
        [result] = judge.score_pairs([("prompt", "response")])
        assert result.score == 5 and len(server.requests) == 2  # the 500 was retried
        assert server.requests[-1]["temperature"] == 0.0
        assert server.requests[-1]["messages"][0]["content"].startswith("You are reviewing")
        assert judge.backend.id.endswith(":fake-judge") and len(RUBRIC_VERSION) == 12


def test_wrong_model_name_is_an_input_error():
    with FakeOpenAIServer(model="served") as server:
        with pytest.raises(TetherInputError, match="HTTP 404"):
            OpenAICompatibleBackend(server.url, "other").check()


def test_unreachable_server_is_an_input_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(TetherInputError, match="unreachable"):
        OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=2).check()


def test_timeout_is_a_transport_error():
    with FakeOpenAIServer(delay=1.0) as server:
        with pytest.raises(TransportError):
            OpenAICompatibleBackend(server.url, "fake-judge", timeout=0.2).complete([{"role": "user", "content": "x"}])


def test_judge_critic_scores_each_distinct_pair_once(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i % 3}"}, {"role": "assistant", "content": f"a{i % 3}"}]}
        for i in range(9)
    ]
    backend = ScriptedBackend(default="#thescore: 5")
    prepared, records = JudgeCritic(Judge(backend, cache_dir=tmp_path)).prepare(rows)
    assert backend.calls == 3 and all(r["risk"] == 1.0 for r in prepared) and len(records) == 9


def test_training_with_the_judge_critic_calls_once_per_distinct_example(tmp_path):
    """2 epochs over the 32 distinct rows of tiny-synthetic: 32 judge calls (+1 server check), not 32 × 2 × steps;
    a second run finds every score in the cache."""
    import json

    from tether.cli import main

    with FakeOpenAIServer(default=(200, "#thescore: 1")) as server:
        argv = judge_train_argv(server, tmp_path, "--num_train_epochs", "2")
        assert main(argv + ["--output_dir", str(tmp_path / "a")]) == 0
        assert len(server.requests) == 1 + 32
        assert main(argv + ["--output_dir", str(tmp_path / "b")]) == 0
        assert len(server.requests) == 1 + 32 + 1
    summary = json.loads((tmp_path / "a" / "data_summary.json").read_text())
    assert summary["judge"]["calls"] == 32 and summary["judge"]["distinct_pairs"] == 32
    records = (tmp_path / "a" / "critic_scores.jsonl").read_text().splitlines()
    assert len(records) == 32 and json.loads(records[0])["score"] == 1


def test_local_transformers_backend(tiny_model, tokenizer):
    """A local model as judge: it answers (the tiny model never follows the format, so every pair fails closed)."""
    from tether.critics.judge import TransformersBackend

    backend = TransformersBackend(tiny_model, tokenizer, max_new_tokens=5, name="tiny")
    assert isinstance(backend.complete([{"role": "user", "content": "hi"}]), str)
    [result] = Judge(backend, max_failure_rate=1.0).score_pairs([("p", "r")])
    assert result.failed and result.risk == 1.0 and backend.id == "transformers:tiny"


@pytest.mark.parametrize(
    "reply, winner",
    [
        ("A is better.\n#thewinner: A", "A"),
        ("#thewinner: b", "B"),
        ("#thewinner: tie", "tie"),
        ("#thewinner: A\n#thewinner: B", None),
        ("#thewinner: C", None),
        ("A wins", None),
    ],
)
def test_parse_winner(reply, winner):
    from tether.critics.judge import parse_winner

    assert parse_winner(reply) == winner


def test_compare_undoes_the_shuffled_order():
    """A judge that always prefers the reply containing 'good' must give the model a win exactly where the model's
    reply is the good one, whichever position it was shown in."""
    from tether.critics.judge import Judge

    class PrefersGood:
        id = "prefers-good"

        def complete(self, messages):
            text = messages[-1]["content"]
            first = text.split("Reply A:\n")[1].split("\n\nReply B:")[0]
            return "#thewinner: A" if "good" in first else "#thewinner: B"

    items = [(f"q{i}", "good answer" if i % 3 else "bad answer", "bad ref" if i % 3 else "good ref") for i in range(12)]
    wins = Judge(PrefersGood()).compare(items)
    assert wins == [0.0 if i % 3 == 0 else 1.0 for i in range(12)]


def test_judged_generations_raise_every_risk(tmp_path):
    """judge_generations_every 2: the data is judged benign (score 1), the policy's generations harmful (score 5).
    Before the first check β is 0.1 for every example; after step 2 the generation risk 1 floors every risk, so
    β = 0.9 everywhere."""
    import json

    from tether.cli import main

    def reply(body):
        text = body["messages"][-1]["content"]
        return "#thescore: 1" if "Assistant reply:\nplaceholder reply" in text or " = " in text else "#thescore: 5"

    with FakeOpenAIServer(default=(200, "#thescore: 1")) as server:
        server.reply_fn = reply
        argv = judge_train_argv(
            server,
            tmp_path,
            *("--max_steps", "4", "--judge_generations_every", "2", "--judge_generations_prompts", "3"),
            *("--judge_generations_max_new_tokens", "4", "--output_dir", str(tmp_path / "run")),
        )
        assert main(argv) == 0
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "weights/beta_max" in s]
    assert [s["weights/beta_max"] for s in steps][:2] == pytest.approx([0.1, 0.1])
    assert [s["weights/beta_min"] for s in steps][2:] == pytest.approx([0.9, 0.9])
    assert "critic/judge/generation_risk" in steps[1]


def judge_train_argv(server, tmp_path, *extra: str) -> list[str]:
    """`tether train` on the tiny config with the judge critic served by `server`, the cache in `tmp_path`."""
    judge = ["--critic", "judge", "--judge_url", server.url, "--judge_model", "fake-judge"]
    return ["train", "--config", "configs/tiny.yaml", *judge, "--judge_cache_dir", str(tmp_path / "cache"), *extra]
