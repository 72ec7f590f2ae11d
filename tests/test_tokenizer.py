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


# ---------------------------------------------------------------------------- GPT-2's own tokenizer
# A text that exercises GPT-2's pre-tokenizer: contractions, runs of spaces before words and at the end,
# tabs and newlines, digits, punctuation runs, accents, CJK, emoji (4-byte UTF-8), combining marks, code.
VARIED = (
    "The cat sat on the floor. It's what we'd've done -- isn't it?\n\n"
    "  Two spaces,   three, and a tab\there.\r\nWindows line.\n"
    "Numbers: 1732 to 17, 3.14159, 1,000,000 and 2023-12-06T14:20:00Z.\n"
    "Naïve café, Straße, Ærøskøbing; ΑΒΓ αβγ; Москва; 日本語のテキスト; 한국어; عربى.\n"
    "Emoji 🙂👍🏽 and 👩‍💻, symbols ©®™ §¶ ∑∫√ ≤≥ ±, e\u0301 (a combining accent).\n"
    "def f(x):\n    return {'a': x ** 2, \"b\": [1, 2, 3]}  # comment\n"
    "\tif (a && b || !c) { i++; }\n"
    "URL https://example.com/a?b=c&d=e#f and @user #tag $5.00 100% ~/path/to_file.py\n"
    "    trailing spaces    \n   \n"
)
# The ids of the seed (issue 27), as the course notes quote them.
SEED_IDS = {"The cat sat on the floor": [464, 3797, 3332, 319, 262, 4314], " bed": [3996], " couch": [18507],
            " ground": [2323], " edge": [5743], "<|endoftext|>": [50256]}


def js_encode(node, package, texts: list) -> list:
    """The package's own JavaScript encoder (an implementation interp did not write) on each text."""
    import subprocess

    script = ("const enc = require(process.argv[1]); const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(JSON.stringify(texts.map(t => enc.encode(t))));")
    done = subprocess.run([node, "-e", script, str(package / "index.js")], input=json.dumps(texts), capture_output=True,
                          text=True, check=True, timeout=60)
    return json.loads(done.stdout)


def test_gpt2_tokenizer_equals_its_javascript_encoder(gpt2_tokenizer_dir, gpt2_tokenizer_files, node):
    tok = Tokenizer.from_directory(gpt2_tokenizer_dir)
    texts = [VARIED, *VARIED.splitlines(keepends=True), *SEED_IDS.keys() - {"<|endoftext|>"}]
    theirs = js_encode(node, gpt2_tokenizer_files, texts)
    ours = [tok.encode(t, add_special_tokens=False) for t in texts]
    for text, a, b in zip(texts, ours, theirs):
        assert a == b, text
    assert len(ours[0]) > 250 and len(set(ours[0])) > 150  # a text long and varied enough to mean something
    assert tok.decode(ours[0]) == VARIED  # byte-level BPE is lossless


def test_gpt2_tokenizer_gives_the_seed_ids_and_handles_bos_as_gpt2(gpt2_tokenizer_dir, gpt2_tokenizer_files):
    from transformers import GPT2Tokenizer

    tok = Tokenizer.from_directory(gpt2_tokenizer_dir)
    # transformers' pure-Python GPT2Tokenizer over the package's files: another implementation, and its special tokens
    slow = GPT2Tokenizer(str(gpt2_tokenizer_files / "encoder.json"), str(gpt2_tokenizer_files / "vocab.bpe"))
    for text, ids in SEED_IDS.items():
        assert tok.encode(text, add_special_tokens=False) == ids == slow.encode(text), text
        assert tok.decode(ids) == text
    assert len(tok) == tok.vocab_size == 50257
    # One special token, <|endoftext|> (50256): BOS, EOS and unknown alike; no padding token; nothing added by
    # add_special_tokens=True (GPT-2 never adds BOS itself: interp prepends it, as TransformerLens does).
    for key in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        assert getattr(tok, key) == getattr(slow, key), key
    assert tok.bos_token_id == tok.eos_token_id == 50256 and tok.pad_token_id is None
    assert tok("The cat", add_special_tokens=True)["input_ids"] == [464, 3797] == slow("The cat")["input_ids"]
    assert tok.encode("a<|endoftext|>b", add_special_tokens=False) == [64, 50256, 65] == slow.encode("a<|endoftext|>b")
    from interp.tokens import tokenize

    batch = tokenize(tok, ["The cat sat on the floor", " bed"], n_ctx=1024)
    assert batch.tokens.tolist() == [[50256, 464, 3797, 3332, 319, 262, 4314], [50256, 3996, 50256, 50256, 50256,
                                                                                50256, 50256]]
    assert batch.lengths.tolist() == [7, 2]  # padded with <|endoftext|> (GPT-2 has no pad token), masked out
    assert tokenize(tok, "The cat", n_ctx=1024, prepend_bos=False).tokens.tolist() == [[464, 3797]]
