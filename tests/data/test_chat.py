import torch

from tether.data.chat import IGNORE_INDEX, TetherCollator, tokenize_example, tokenize_rows

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "add 2 and 3"},
    {"role": "assistant", "content": "2 + 3 = 5"},
]


def test_labels_cover_exactly_the_response(tokenizer):
    tokens = tokenize_example(MESSAGES, tokenizer, max_length=None)
    p = tokens["prompt_length"]
    assert tokens["labels"][:p] == [IGNORE_INDEX] * p
    assert tokens["labels"][p:] == tokens["input_ids"][p:]
    assert tokenizer.decode(tokens["input_ids"][:p]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(tokens["labels"][p:]) == "2 + 3 = 5<|im_end|>\n"


def test_truncation_cuts_the_response_never_the_prompt(tokenizer):
    full = tokenize_example(MESSAGES, tokenizer, max_length=None)
    p = full["prompt_length"]
    cut = tokenize_example(MESSAGES, tokenizer, max_length=p + 2)
    assert cut["input_ids"] == full["input_ids"][: p + 2]
    assert cut["prompt_length"] == p
    assert tokenize_example(MESSAGES, tokenizer, max_length=p) is None  # no room for a response token


def test_tokenize_rows_drops_and_counts_long_prompts(tokenizer):
    long_prompt = [{"role": "user", "content": "one two three " * 40}, {"role": "assistant", "content": "ok"}]
    dataset, dropped = tokenize_rows([{"messages": MESSAGES, "risk": 1.0}, {"messages": long_prompt}], tokenizer, 48)
    assert dropped == 1 and len(dataset) == 1 and dataset[0]["risk"] == 1.0


def test_collator_right_pads(tokenizer):
    a = tokenize_example(MESSAGES, tokenizer, None)
    b = tokenize_example(MESSAGES[1:], tokenizer, None)
    batch = TetherCollator(pad_token_id=tokenizer.pad_token_id)([{**a, "risk": 1.0}, {**b, "risk": 0.0}])
    n_b = len(b["input_ids"])
    assert batch["input_ids"].shape == (2, len(a["input_ids"]))
    assert batch["attention_mask"][1].tolist() == [1] * n_b + [0] * (len(a["input_ids"]) - n_b)
    assert (batch["labels"][1, n_b:] == IGNORE_INDEX).all()
    assert batch["risk"].tolist() == [1.0, 0.0]
    assert batch["prompt_length"].tolist() == [a["prompt_length"], b["prompt_length"]]
    assert batch["input_ids"].dtype == torch.long
