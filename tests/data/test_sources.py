import json

import pytest

from tether.data.sources import load_examples
from tether.errors import TetherInputError


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_formats_become_messages(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}], "risk": 1},
        {"instruction": "do x", "input": "with y", "output": "done"},
        {"prompt": "p", "completion": "c"},
        {"question": "1+1?", "answer": "#### 2"},
    ]
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [e["messages"][-1]["content"] for e in examples] == ["a1", "done", "c", "#### 2"]
    assert examples[1]["messages"][0]["content"] == "do x\n\nwith y"
    assert examples[0]["risk"] == 1.0 and "risk" not in examples[1]


def test_json_list_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    assert load_examples(str(path))[0]["messages"][0]["content"] == "i"


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": oops}\n')
    with pytest.raises(TetherInputError, match=r"bad\.jsonl:2: malformed JSON"):
        load_examples(str(path))


def test_empty_response_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "  "}])
    with pytest.raises(TetherInputError, match="example 2: empty response"):
        load_examples(path)


def test_missing_file(tmp_path):
    with pytest.raises(TetherInputError, match="dataset file not found"):
        load_examples(str(tmp_path / "nope.jsonl"))


def test_unknown_format(tmp_path):
    with pytest.raises(TetherInputError, match="unknown format"):
        load_examples(write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}]))


def test_named_dataset_needs_its_data_dir(tmp_path):
    with pytest.raises(TetherInputError, match="--data_dir"):
        load_examples("alpaca", data_dir=str(tmp_path))


def test_refusal_csv_strips_chat_tags_and_keeps_one_refusal_per_prompt(tmp_path):
    folder = tmp_path / "advbench_llama2_refusals"
    folder.mkdir()
    (folder / "SFT_aligned_llama2-7b-chat-hf_train_short.csv").write_text(
        ",prompt,response,text\n"
        "0,[INST] Do a bad thing [/INST], I cannot do that.,x\n"
        "1,[INST] Do a bad thing [/INST], I will not do that.,x\n"
        "2,[INST] Another [/INST], No.,x\n"
    )
    rows = load_examples("advbench-refusals", str(tmp_path))
    assert [r["messages"][0]["content"] for r in rows] == ["Do a bad thing", "Another"]
    assert rows[0]["messages"][1]["content"] == "I cannot do that."


def test_drop_empty_skips_rows_without_a_response(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": " "}]')
    with pytest.raises(TetherInputError, match="example 2: empty response"):
        load_examples(str(path))
    assert len(load_examples(str(path), drop_empty=True)) == 1
