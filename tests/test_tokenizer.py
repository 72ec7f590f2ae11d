"""interp.tokenizer: the same ids, texts and special tokens as transformers' AutoTokenizer on the same directory."""

import json

import pytest

from interp.loading import BUNDLED_DIR
from interp.testing import bpe_tokenizer
from interp.tokenizer import Tokenizer

TEXTS = [
    "The cat sat on the mat.", "  leading spaces and\ttabs\nand newlines\n\n", "def f(x):\n    return x ** 2",
    "<|endoftext|>between<|endoftext|> special tokens", "unicode: naïve café — 日本語 🙂", "a", " ",
    "numbers 12345 and symbols #!$%&*()",
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """interp-tiny; a tokenizer.json directory saved by transformers; GPT-2's old vocab.json + merges.txt format."""
    saved = tmp_path_factory.mktemp("tok_json")
    bpe_tokenizer().save_pretrained(saved)
    old = tmp_path_factory.mktemp("tok_vocab_merges")
    data = json.loads((saved / "tokenizer.json").read_text())
    (old / "vocab.json").write_text(json.dumps(data["model"]["vocab"]))
    merges = data["model"]["merges"]
    (old / "merges.txt").write_text("#version: 0.2\n" + "".join(
        (" ".join(m) if isinstance(m, list) else m) + "\n" for m in merges))
    (old / "config.json").write_text('{"model_type": "gpt2"}')  # as the original GPT-2 repositories
    (old / "tokenizer_config.json").write_text('{"model_max_length": 1024}')
    # As the hub's GPT-2 repositories: tokenizer.json, a tokenizer_config.json without special tokens
    # (transformers picks GPT2Tokenizer from config.json, with its defaults).
    hub = tmp_path_factory.mktemp("tok_hub_like")
    (hub / "tokenizer.json").write_text((saved / "tokenizer.json").read_text())
    (hub / "tokenizer_config.json").write_text('{"model_max_length": 1024}')
    (hub / "config.json").write_text('{"model_type": "gpt2"}')
    return {"interp-tiny": BUNDLED_DIR / "interp-tiny", "tokenizer.json": saved, "vocab+merges": old, "hub-like": hub}


@pytest.mark.parametrize("which", ["interp-tiny", "tokenizer.json", "vocab+merges", "hub-like"])
def test_same_as_transformers(dirs, which):
    from transformers import AutoTokenizer

    ours = Tokenizer.from_directory(dirs[which])
    theirs = AutoTokenizer.from_pretrained(dirs[which], local_files_only=True)
    for text in TEXTS:
        for special in (False, True):
            assert ours(text, add_special_tokens=special)["input_ids"] == \
                theirs(text, add_special_tokens=special)["input_ids"], (text, special)
    assert ours(TEXTS, add_special_tokens=False)["input_ids"] == theirs(TEXTS, add_special_tokens=False)["input_ids"]
    for i in range(len(theirs)):
        assert ours.decode([i]) == theirs.decode([i]), i
    ids = ours(TEXTS[4], add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids) == TEXTS[4]
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_id", "unk_token_id",
                "pad_token_id"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    assert ours.get_vocab() == theirs.get_vocab()
    assert len(ours) == len(theirs)


def test_the_special_token_is_one_token_inside_text(dirs):
    tok = Tokenizer.from_directory(dirs["vocab+merges"])  # registered as special although the files do not say so
    ids = tok("a<|endoftext|>b", add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id in ids and tok.decode(ids) == "a<|endoftext|>b"


def test_to_hf_round_trips(dirs):
    tok = Tokenizer.from_directory(dirs["interp-tiny"])
    hf = tok.to_hf()
    for text in TEXTS:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert hf.bos_token == tok.bos_token and hf.eos_token_id == tok.eos_token_id


def test_unreadable_tokenizer_is_one_line(tmp_path):
    from interp import InterpError

    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InterpError, match=r"cannot read the tokenizer in .*: Exception") as e:
        Tokenizer.from_directory(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(InterpError, match="no tokenizer files"):
        Tokenizer.from_directory(tmp_path)
