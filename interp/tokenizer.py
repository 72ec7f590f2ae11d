"""GPT-2's tokenizer read straight from its files with ``tokenizers``, without ``transformers``.

``transformers`` takes about a second to import, more than the rest of a small command;
tokenizing needs only the Rust ``tokenizers`` library it wraps. :class:`Tokenizer` reads
a model directory's ``tokenizer.json`` (or GPT-2's older ``vocab.json`` + ``merges.txt``)
and the special tokens of ``tokenizer_config.json`` / ``special_tokens_map.json``, and
answers the part of Hugging Face's tokenizer interface that interp uses (``tok(text,
add_special_tokens=False)["input_ids"]``, ``decode``, ``get_vocab``, the special tokens and
their ids). It gives the same ids and text as ``AutoTokenizer.from_pretrained`` on the same
directory (``tests/test_tokenizer.py``); :meth:`Tokenizer.to_hf` builds that Hugging Face
tokenizer when something needs one (the TransformerBridge).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from .errors import InterpError

#: GPT-2's one special token: BOS, EOS and UNK alike (``GPT2Tokenizer``'s defaults).
GPT2_SPECIAL = "<|endoftext|>"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class Tokenizer:
    """A GPT-2 tokenizer over a ``tokenizers.Tokenizer``.

    >>> from interp.loading import BUNDLED_DIR
    >>> tok = Tokenizer.from_directory(BUNDLED_DIR / "interp-tiny")
    >>> ids = tok("def f(x):", add_special_tokens=False)["input_ids"]
    >>> tok.decode(ids), tok.bos_token, tok.bos_token_id
    ('def f(x):', '<|endoftext|>', 0)
    """

    def __init__(self, backend: Any, *, bos_token: Optional[str] = None, eos_token: Optional[str] = None,
                 unk_token: Optional[str] = None, pad_token: Optional[str] = None, name_or_path: str = ""):
        self.backend_tokenizer = backend
        self.name_or_path = name_or_path
        self._special = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
        # Special tokens are matched whole in the text, never split by BPE (as Hugging Face registers them).
        from tokenizers import AddedToken

        present = [t for t in dict.fromkeys(self._special.values()) if t is not None and backend.token_to_id(t) is not None]
        if present:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in present])

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_directory(cls, path: Union[str, os.PathLike]) -> "Tokenizer":
        """Read ``tokenizer.json`` (or ``vocab.json`` + ``merges.txt``) and the special tokens of a directory."""
        from tokenizers import Tokenizer as Backend

        path = Path(path)
        try:
            if (path / "tokenizer.json").is_file():
                backend = Backend.from_file(str(path / "tokenizer.json"))
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                backend = _bpe_from_vocab_and_merges(path / "vocab.json", path / "merges.txt")
            else:
                raise InterpError(f"{path} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
            special, tokenizer_class = _special_tokens(path)
        except InterpError:
            raise
        except Exception as e:  # noqa: BLE001 - tokenizers and json raise many kinds here
            raise InterpError(f"cannot read the tokenizer in {path}: {type(e).__name__}: {_first_line(e)}") from None
        # GPT2Tokenizer's defaults (the class transformers picks for GPT-2 unless tokenizer_config.json
        # names another): every unset special token but pad is <|endoftext|>.
        if tokenizer_class in (None, "GPT2Tokenizer", "GPT2TokenizerFast"):
            for key in ("bos_token", "eos_token", "unk_token"):
                if key not in special and backend.token_to_id(GPT2_SPECIAL) is not None:
                    special[key] = GPT2_SPECIAL
        return cls(backend, **special, name_or_path=str(path))

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: Union[str, list], add_special_tokens: bool = True, **_ignored) -> dict:
        """``{"input_ids": ids}`` for a string, or a list of id lists for a list of strings (as Hugging Face)."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        encodings = self.backend_tokenizer.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        if isinstance(tokens, str):
            return self.backend_tokenizer.token_to_id(tokens)
        return [self.backend_tokenizer.token_to_id(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=False)

    # ------------------------------------------------------------------ special tokens
    def _id(self, key: str) -> Optional[int]:
        token = self._special[key]
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    bos_token = property(lambda self: self._special["bos_token"])
    eos_token = property(lambda self: self._special["eos_token"])
    unk_token = property(lambda self: self._special["unk_token"])
    pad_token = property(lambda self: self._special["pad_token"])
    bos_token_id = property(lambda self: self._id("bos_token"))
    eos_token_id = property(lambda self: self._id("eos_token"))
    unk_token_id = property(lambda self: self._id("unk_token"))
    pad_token_id = property(lambda self: self._id("pad_token"))

    @property
    def all_special_tokens(self) -> list[str]:
        return [t for t in dict.fromkeys(self._special.values()) if t is not None]

    @property
    def all_special_ids(self) -> list[int]:
        ids = (self.backend_tokenizer.token_to_id(t) for t in self.all_special_tokens)
        return [i for i in ids if i is not None]

    # ------------------------------------------------------------------ Hugging Face
    def to_hf(self):
        """The equivalent ``transformers.PreTrainedTokenizerFast`` (imports transformers)."""
        from tokenizers import Tokenizer as Backend
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(
            tokenizer_object=Backend.from_str(self.backend_tokenizer.to_str()), name_or_path=self.name_or_path,
            **{k: v for k, v in self._special.items() if v is not None},
        )

    def __repr__(self) -> str:
        return f"Tokenizer({self.name_or_path!r}, {len(self)} tokens, bos={self.bos_token!r})"


def _special_tokens(path: Path) -> tuple[dict[str, Optional[str]], Optional[str]]:
    """Special tokens from ``special_tokens_map.json`` then ``tokenizer_config.json`` (which wins), and the class named."""
    found: dict[str, Optional[str]] = {}
    tokenizer_class = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            with open(f, encoding="utf-8") as fh:
                data = json.load(fh)
            for key in _SPECIAL_KEYS:
                if key in data:
                    value = data[key]
                    found[key] = value.get("content") if isinstance(value, dict) else value
            tokenizer_class = data.get("tokenizer_class", tokenizer_class)
    return found, tokenizer_class


def _bpe_from_vocab_and_merges(vocab: Path, merges: Path):
    """GPT-2's byte-level BPE from its two original files (as ``GPT2Tokenizer`` builds it)."""
    from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers

    backend = Backend(models.BPE.from_file(str(vocab), str(merges), continuing_subword_prefix="",
                                           end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


@functools.lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet backwards: the printable character that stands for each byte -> the byte."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others take 256, 257, … in order.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    assert set(chars.values()) == set(alphabet)
    return {c: b for b, c in chars.items()}


def token_bytes(tokenizer: Any, token_id: int) -> Optional[bytes]:
    """The bytes a byte-level BPE token (GPT-2's) stands for, or None (a special token, another kind of tokenizer)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    table = _byte_of_char()
    if not isinstance(piece, str) or not piece or any(c not in table for c in piece):
        return None
    return bytes(table[c] for c in piece)


def display_token(tokenizer: Any, token_id: int) -> str:
    r"""A token's text as a person should see it: its decoded text, or, for a token that is only part of a
    character's UTF-8 bytes (GPT-2 writes 日 as two tokens), those bytes as ``\xe6\x97`` instead of "�".

    >>> from interp.loading import BUNDLED_DIR
    >>> tok = Tokenizer.from_directory(BUNDLED_DIR / "interp-tiny")
    >>> [display_token(tok, i) for i in tok.encode("é", add_special_tokens=False)]
    ['\\xc3', '\\xa9']
    """
    text = tokenizer.decode([int(token_id)])
    if "\ufffd" in text:
        raw = token_bytes(tokenizer, token_id)
        if raw is not None:
            return raw.decode("utf-8", errors="backslashreplace")
    return text


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


__all__ = ["Tokenizer", "display_token", "token_bytes"]
