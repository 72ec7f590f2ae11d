"""interp.corpus: the shipped text is the text interp-tiny was trained on; user text in every format."""

import gzip
import json
import zlib

import pytest
import torch

from interp.corpus import HELDOUT_MOD, documents, token_windows
from interp.errors import InterpError
from interp.loading import BUNDLED_DIR, load


@pytest.fixture(scope="module")
def tiny():
    return load("interp-tiny")


def test_the_shipped_splits_are_those_the_training_run_recorded(tiny):
    """Document and token counts as training.json recorded them when the model was trained."""
    record = json.loads((BUNDLED_DIR / "interp-tiny" / "training.json").read_text())["corpus"]
    train, held = documents(split="train"), documents(split="heldout")
    assert (len(train), len(held)) == (record["train_docs"], record["heldout_docs"])
    assert all(zlib.crc32(d.encode()) % HELDOUT_MOD == 0 for d in held)
    assert not any(zlib.crc32(d.encode()) % HELDOUT_MOD == 0 for d in train)
    n_held = sum(len(tiny.tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in held)
    assert n_held == record["heldout_tokens"]


def test_token_windows_are_the_stream_cut_after_bos(tiny):
    tok = tiny.tokenizer
    docs = ["def f(x):\n    return x", "import os", "a b c d e f g h"]
    stream = []
    for d in docs:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.bos_token_id]
    windows = list(token_windows(tok, docs, n_ctx=4))
    assert len(windows) == len(stream) // 3
    for i, w in enumerate(windows):
        assert w.tolist() == [tok.bos_token_id, *stream[3 * i : 3 * i + 3]]
    assert len(list(token_windows(tok, docs, n_ctx=4, limit=2))) == 2
    with pytest.raises(InterpError, match="n_ctx must be an int ≥ 2"):
        next(token_windows(tok, docs, n_ctx=1))


def test_user_text_in_each_format(tmp_path):
    (tmp_path / "a.txt").write_text("one document\nover two lines")
    assert documents(tmp_path / "a.txt") == ["one document\nover two lines"]
    (tmp_path / "b.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n')
    assert documents(tmp_path / "b.jsonl") == ["first", "second"]
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"body": "x"}\n'))
    assert documents(tmp_path / "c.jsonl.gz", column="body") == ["x"]
    (tmp_path / "d.json").write_text('["p", "q"]')
    assert documents(tmp_path / "d.json") == ["p", "q"]
    assert documents(["s", "", "t"]) == ["s", "t"]


@pytest.mark.parametrize("name, content, match", [
    ("missing.txt", None, "does not exist"),
    ("e.jsonl", '{"body": "x"}\n', "no text column"),
    ("f.jsonl", '{"text": 3}\n', "row 0's 'text' is int"),
    ("g.jsonl", '{"text": \n', "not JSON lines"),
    ("h.csv", "a,b\n", "cannot read"),
    ("i.txt", "", "every document is empty"),
])
def test_bad_text_sources_get_one_line(tmp_path, name, content, match):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(InterpError, match=match):
        documents(tmp_path / name)
    with pytest.raises(InterpError, match="unknown split"):
        documents(split="test")
    with pytest.raises(InterpError, match="document 1 is a int"):
        documents(["a", 1])
    assert torch.is_tensor(next(token_windows(load("interp-tiny").tokenizer, ["abc"] * 20, 8)))
