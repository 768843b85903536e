import pytest

from tests.conftest import SHARED_DATA
from tether.data.prompts import load_prompts
from tether.errors import TetherInputError


def test_ranges_of_a_named_set_are_disjoint_slices():
    every = load_prompts("alpaca-eval", SHARED_DATA)
    first, rest = load_prompts("alpaca-eval:300", SHARED_DATA), load_prompts("alpaca-eval:300-805", SHARED_DATA)
    assert (len(first), len(rest)) == (300, len(every) - 300) and first + rest == every
    assert load_prompts("alpaca-eval:10-12", SHARED_DATA) == every[10:12]


def test_strided_ranges_interleave():
    every = load_prompts("xstest-safe", SHARED_DATA)
    even, odd = load_prompts("xstest-safe:0-250/2", SHARED_DATA), load_prompts("xstest-safe:1-250/2", SHARED_DATA)
    assert even == every[0::2] and odd == every[1::2] and len(even) + len(odd) == len(every) == 250


@pytest.mark.parametrize(
    "source",
    [
        "alpaca-eval:x",
        "alpaca-eval:3-",
        "alpaca-eval:-3",
        "alpaca-eval:900-1000",
        "alpaca-eval:0-10/0",
        "alpaca-eval:10/2",
        "alpaca-eval:0-10/x",
    ],
)
def test_bad_range_is_one_line(source):
    with pytest.raises(TetherInputError, match="alpaca-eval"):
        load_prompts(source, SHARED_DATA)


def test_alpaca_safety_is_the_safety_related_alpaca_rows_with_their_inputs():
    prompts = load_prompts("alpaca-safety", SHARED_DATA)
    assert len(prompts) == 1904 and all(p[-1]["role"] == "user" and p[-1]["content"] for p in prompts)
    with_input = [p for p in prompts if "\n\n" in p[-1]["content"]]  # instruction + input, as for `alpaca`
    assert with_input and len(with_input) < len(prompts)
