import pytest

from tether.data.mixing import harmful_count, mix_harmful
from tether.errors import TetherInputError


def rows(n, tag):
    return [
        {"messages": [{"role": "user", "content": f"{tag}{i}"}, {"role": "assistant", "content": "x"}]}
        for i in range(n)
    ]


@pytest.mark.parametrize("ratio, expected", [(0.01, 10), (0.05, 53), (0.09, 99), (0.0, 0)])
def test_exact_counts(ratio, expected):
    """1000 benign rows: round(hr·1000/(1 − hr)) harmful rows, e.g. hr 0.05 -> round(52.63) = 53."""
    assert harmful_count(1000, ratio) == expected
    mixed, summary = mix_harmful(rows(1000, "b"), rows(200, "h"), ratio, seed=0)
    assert summary["n_harmful"] == expected == sum(r["risk"] == 1.0 for r in mixed)
    assert summary["n_benign"] == 1000 == sum(r["risk"] == 0.0 for r in mixed)
    assert abs(summary["harmful_ratio_actual"] - ratio) < 0.001


def test_seeded():
    a, _ = mix_harmful(rows(50, "b"), rows(50, "h"), 0.2, seed=1)
    b, _ = mix_harmful(rows(50, "b"), rows(50, "h"), 0.2, seed=1)
    c, _ = mix_harmful(rows(50, "b"), rows(50, "h"), 0.2, seed=2)
    assert a == b and a != c


def test_too_few_harmful_rows():
    with pytest.raises(TetherInputError, match="needs 100 harmful"):
        mix_harmful(rows(900, "b"), rows(5, "h"), 0.1)
