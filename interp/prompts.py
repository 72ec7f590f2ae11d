"""Inputs every analysis shares: repeated random tokens, long texts cut into windows, prompt files.

* :func:`repeated_tokens` — the standard induction / duplicate-token input, a random
  sequence followed by its repeat, seeded and reproducible: the default input of
  ``interp heads``, ``ablate``, ``ov --rank`` and ``patch``, so they measure the same thing;
* :func:`text_windows` — one long text tokenized once and cut into windows that fit the
  context window, as a padded :class:`~interp.tokens.Batch` (the one text-to-batch path);
* :func:`read_prompts` — a text file with one prompt per line;
* :func:`sequences` — any input (prompts, token ids, a Batch, repeated tokens) as checked 1-D
  token sequences, for analyses that score prompts one by one (the head detectors).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import InterpError
from .model import HookedGPT2
from .tokens import Batch, from_tokens

#: Probe defaults: 16 prompts of ``[BOS] + r + r`` with ``r`` 50 tokens long (capped by the context window).
DEFAULT_N_PROMPTS = 16
DEFAULT_HALF = 50


def vocabulary(model: HookedGPT2) -> Int[Tensor, " n_tokens"]:
    """Ids of the tokenizer's real tokens: inside the model's vocabulary and not special (BOS, EOS, pad…).

    A model may have more embedding rows than its tokenizer has tokens (the
    offline random GPT-2 small pairs 50257 rows with a 2000-token tokenizer);
    inputs drawn from the rows nobody can type would measure nothing real.

    >>> from interp.testing import planted_model
    >>> vocabulary(planted_model())[:3].tolist()     # id 0 is <|endoftext|>
    [1, 2, 3]
    """
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    ids = sorted({i for i in tok.get_vocab().values() if 0 <= i < model.cfg.d_vocab and i not in special})
    if len(ids) < 2:
        raise InterpError(f"the tokenizer has {len(ids)} ordinary tokens inside the model's vocabulary; need at least 2")
    return torch.tensor(ids, dtype=torch.long)


def repeated_tokens(
    model: HookedGPT2, n_prompts: Any = DEFAULT_N_PROMPTS, half: Any = None, *, seed: Any = 0
) -> Int[Tensor, "batch pos"]:
    """``[BOS] + r + r`` for ``n_prompts`` random sequences ``r`` of ``half`` tokens.

    Tokens come from :func:`vocabulary` (never BOS or another special token),
    drawn without replacement within ``r`` when the vocabulary is big enough: then
    no token of the first half has an earlier copy and every token of the repeat
    has exactly one, so duplicate-token and induction heads have one unambiguous
    target each. The same ``seed`` gives the same tokens on every machine.

    Args:
        model: the model whose tokenizer and context window to use.
        n_prompts: number of sequences (default 16).
        half: length of ``r`` (default ``min(50, (n_ctx - 1) // 2)``).
        seed: seed of the private random generator (the global one is untouched).

    >>> from interp.testing import planted_model
    >>> toks = repeated_tokens(planted_model(), 2, 5, seed=1)
    >>> tuple(toks.shape), bool((toks[:, 1:6] == toks[:, 6:]).all()), toks[:, 0].tolist()
    ((2, 11), True, [0, 0])
    """
    n_ctx = model.cfg.n_ctx
    n_prompts = _positive_int(n_prompts, "n_prompts")
    if half is None:
        half = min(DEFAULT_HALF, (n_ctx - 1) // 2)
    half = _positive_int(half, "half")
    if 1 + 2 * half > n_ctx:
        raise InterpError(
            f"half {half} too long: [BOS] + 2 × {half} = {1 + 2 * half} tokens exceeds the context window of {n_ctx} "
            f"(largest half: {(n_ctx - 1) // 2})"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InterpError(f"seed must be an integer, not {seed!r}")
    vocab = vocabulary(model)
    g = torch.Generator().manual_seed(seed)
    if half <= len(vocab):
        rows = torch.stack([torch.randperm(len(vocab), generator=g)[:half] for _ in range(n_prompts)])
    else:
        rows = torch.randint(0, len(vocab), (n_prompts, half), generator=g)
    r = vocab[rows]
    bos = torch.full((n_prompts, 1), _bos_id(model), dtype=torch.long)
    return torch.cat([bos, r, r], 1).to(model.cfg.device)


def repeated_words(model: HookedGPT2, n_prompts: Any = DEFAULT_N_PROMPTS, half: Any = None, *, seed: Any = 0) -> list[str]:
    """:func:`repeated_tokens` as text that tokenizes back to exactly those tokens (after BOS).

    Random tokens rarely survive decode → encode (neighbours merge into other tokens), so tools
    that take strings only (TransformerLens's ``detect_head``, prompt files) would see other
    tokens. These prompts use only whole-word tokens (a leading space, then letters) that are
    themselves when encoded alone; every prompt is checked to round-trip.

    >>> from interp.testing import random_gpt2_hf
    >>> import interp
    >>> m = interp.load(random_gpt2_hf()[0], tokenizer=random_gpt2_hf()[1])
    >>> text = repeated_words(m, 2, 5)
    >>> [len(m.tokenize(t).tokens[0]) for t in text]    # BOS + 5 + 5
    [11, 11]
    """
    n_prompts = _positive_int(n_prompts, "n_prompts")
    half = min(DEFAULT_HALF, (model.cfg.n_ctx - 1) // 2) if half is None else _positive_int(half, "half")
    tok = model.tokenizer
    words = [i for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
             if t.startswith("Ġ") and t[1:].isalpha() and i < model.cfg.d_vocab
             and tok(tok.decode([i]), add_special_tokens=False)["input_ids"] == [i]]
    if len(words) < half:
        raise InterpError(f"the tokenizer has {len(words)} whole-word tokens; {half} distinct ones are needed")
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(n_prompts):
        r = [words[j] for j in torch.randperm(len(words), generator=g)[:half].tolist()]
        text = tok.decode(r + r)
        if tok(text, add_special_tokens=False)["input_ids"] != r + r:  # a guarantee, not a hope
            raise InterpError("whole-word tokens did not round-trip through this tokenizer; use repeated_tokens")
        prompts.append(text)
    return prompts


def induction_pair(
    model: HookedGPT2, n_prompts: Any = 8, half: Any = None, *, seed: Any = 0
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Clean and corrupted prompts for the induction circuit, paired, for patching.

    Clean: ``[BOS] r r[:-1]`` (:func:`repeated_tokens`, then the repeat up to its last token): the
    model should predict ``r``'s last token by induction. Corrupted: the same with the *first* copy
    of the query token (``r[-2]``) replaced by a token that occurs nowhere in the prompt, so the
    induction head finds no earlier copy to look after. Only that one token differs.

    >>> from interp.testing import planted_model
    >>> clean, corrupted = induction_pair(planted_model(), 2, 5)
    >>> tuple(clean.shape), (clean != corrupted).sum(-1).tolist(), int((clean != corrupted).nonzero()[0, 1])
    ((2, 10), [1, 1], 4)
    """
    half = min(DEFAULT_HALF, (model.cfg.n_ctx - 1) // 2) if half is None else _positive_int(half, "half")
    if half < 2:
        raise InterpError(f"half {half} too short: the query token needs an earlier copy and a successor (half >= 2)")
    clean = repeated_tokens(model, n_prompts, half, seed=seed)[:, : 2 * half]
    corrupted = clean.clone()
    vocab = vocabulary(model).to(clean.device)
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(len(clean)):
        unused = vocab[~torch.isin(vocab, clean[i])]
        if len(unused) == 0:
            raise InterpError("the vocabulary has no token left that the prompt does not use: give a shorter half")
        corrupted[i, half - 1] = unused[torch.randint(0, len(unused), (1,), generator=g)]
    return clean, corrupted


def text_windows(
    model: HookedGPT2, text: Any, window: Any = None, *, max_windows: Any = None, prepend_bos: bool = True
) -> Batch:
    """A long text tokenized once and cut into windows, as a right-padded :class:`~interp.tokens.Batch`.

    Each window is BOS (by default) and ``window - 1`` tokens of text; the last one is padded, and
    dropped if it has fewer than 2 tokens of text. Tokenizing once (rather than line by line)
    keeps every token as the model would see it in the running text.

    Args:
        window: tokens per window, BOS included (default and maximum: the context window).
        max_windows: keep at most this many windows (default: all).

    >>> from interp.testing import planted_model
    >>> text_windows(planted_model(), "a b c d e f g h", window=4).tokens.tolist()
    [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 0]]
    """
    if not isinstance(text, str):
        raise InterpError(f"text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise InterpError("the text is empty")
    n_ctx = model.cfg.n_ctx
    window = n_ctx if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or not 2 + int(prepend_bos) <= window <= n_ctx:
        raise InterpError(f"window {window!r} out of range: {2 + int(prepend_bos)}–{n_ctx} tokens (the context window)")
    if max_windows is not None:
        max_windows = _positive_int(max_windows, "max_windows")
    ids = model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    step = window - int(prepend_bos)
    pieces = [ids[i : i + step] for i in range(0, len(ids), step)]
    pieces = [p for p in pieces if len(p) >= 2][:max_windows]
    if not pieces:
        raise InterpError(f"the text has {len(ids)} token(s); at least 2 are needed")
    bos = [_bos_id(model)] if prepend_bos else []
    width = max(len(p) for p in pieces) + len(bos)
    tokens = torch.full((len(pieces), width), _pad_id(model), dtype=torch.long)
    mask = torch.zeros(len(pieces), width, dtype=torch.bool)
    for i, piece in enumerate(pieces):
        tokens[i, : len(bos) + len(piece)] = torch.tensor(bos + piece)
        mask[i, : len(bos) + len(piece)] = True
    return Batch(tokens.to(model.cfg.device), mask.to(model.cfg.device))


def read_prompts(path: Any) -> list[str]:
    """Prompts from a text file, one per line; blank lines are skipped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InterpError(f"prompts file {path} does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        prompts = [line.rstrip("\r\n") for line in f]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise InterpError(f"prompts file {path} has no prompts (one per line expected)")
    return prompts


def sequences(model: HookedGPT2, inputs: Any = None, *, prepend_bos: bool = True) -> list[Tensor]:
    """Normalise any input the head detectors accept into checked 1-D token sequences.

    ``inputs`` may be None (the default input, :func:`repeated_tokens`), a prompt,
    a list of prompts and/or 1-D token tensors, token ids ``[batch, pos]`` or
    ``[pos]``, or a :class:`~interp.tokens.Batch` (padding on either side is
    removed; e.g. :func:`text_windows`). Strings get BOS unless ``prepend_bos``
    is False; token ids are taken as they are.

    Every sequence must fit the context window and have at least two tokens of
    its own besides a leading BOS: with one, the only scored query's previous
    token *is* BOS, so previous-token and BOS attention cannot be told apart.
    """
    if inputs is None:
        seqs = list(repeated_tokens(model))
    elif isinstance(inputs, str):
        seqs = _rows(model.tokenize(inputs, prepend_bos=prepend_bos))
    elif isinstance(inputs, Batch):
        seqs = _rows(model.to_batch(inputs))
    elif isinstance(inputs, Tensor):
        seqs = _rows(from_tokens(inputs.to(model.cfg.device), None, model.cfg.d_vocab, model.cfg.n_ctx))
    elif isinstance(inputs, (list, tuple)):
        if not inputs:
            raise InterpError("no prompts given: pass a string, a non-empty list of strings, or token ids")
        if all(isinstance(x, str) for x in inputs):
            seqs = _rows(model.tokenize(list(inputs), prepend_bos=prepend_bos))
        else:
            seqs = [_one(model, x, i, prepend_bos) for i, x in enumerate(inputs)]
    else:
        raise InterpError(
            f"cannot score heads on a {type(inputs).__name__}: give a prompt, a list of prompts, token ids or a Batch"
        )
    bos = _bos_id(model)
    for i, s in enumerate(seqs):
        own = len(s) - int(bool(s[0] == bos))
        if own < 2:
            raise InterpError(
                f"prompt {i} has {own} token(s) besides BOS; head scores need at least 2 "
                "(with one, its previous token is BOS and previous-token and BOS heads look alike)"
            )
    return seqs


def _one(model: HookedGPT2, x: Any, i: int, prepend_bos: bool) -> Tensor:
    if isinstance(x, str):
        try:
            return _rows(model.tokenize(x, prepend_bos=prepend_bos))[0]
        except InterpError as e:
            raise InterpError(f"prompt {i}: {e}") from None
    if isinstance(x, Tensor) and x.ndim == 1:
        try:
            return from_tokens(x.to(model.cfg.device), None, model.cfg.d_vocab, model.cfg.n_ctx).tokens[0]
        except InterpError as e:
            raise InterpError(f"prompt {i}: {e}") from None
    raise InterpError(f"prompt {i} is a {type(x).__name__}; a list of prompts holds strings or 1-D token tensors")


def _rows(batch: Batch) -> list[Tensor]:
    return [t[m] for t, m in zip(batch.tokens, batch.attention_mask)]


def rows(batch: Batch) -> list[Tensor]:
    """Each prompt of a batch as a 1-D tensor of its real tokens."""
    return _rows(batch)


def _pad_id(model: HookedGPT2) -> int:
    tok = model.tokenizer
    return int(tok.pad_token_id) if tok.pad_token_id is not None else _bos_id(model)


def _bos_id(model: HookedGPT2) -> int:
    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise InterpError("the tokenizer has no BOS (or EOS) token to start the prompts with")
    return int(bos)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InterpError(f"{what} must be a positive integer, not {value!r}")
    return value


__all__ = ["vocabulary", "repeated_tokens", "repeated_words", "induction_pair", "text_windows", "read_prompts", "sequences", "rows"]
