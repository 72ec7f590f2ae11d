"""Text to run a model over: the user's files, or by default the text ``interp-tiny`` was trained on.

Tools that learn from the model's own activations (sparse autoencoders, the tuned lens) or
summarise them (feature pages) need text. :func:`documents` reads it from a text file, a JSON-lines
file, a Parquet file or a saved Hugging Face ``datasets`` directory, or, with no source, returns
the bundled model's corpus — Python's ``help()`` topics and the standard library's docstrings,
exactly the documents ``tools/train_tiny`` trained on, split the same way (one document in 20, by
a CRC of its text, is held out). The corpus ships with the package (``bundled/interp-tiny/text``,
~0.8 MB compressed), so the default works offline and does not depend on which Python is installed.

:func:`token_windows` turns documents into model inputs: one token stream (each document followed
by ``<|endoftext|>``) cut into windows of ``n_ctx`` tokens that each start with BOS, as the bundled
model was trained and evaluated.

>>> docs = documents(split="heldout")
>>> len(docs)
458
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import InterpError

__all__ = ["documents", "token_windows", "collect_corpus", "split_corpus", "SPLITS", "HELDOUT_MOD"]

#: The bundled corpus's splits.
SPLITS = ("train", "heldout")
#: One document in ``HELDOUT_MOD`` (``crc32(text) % HELDOUT_MOD == 0``) is held out.
HELDOUT_MOD = 20
_BUNDLED_TEXT = Path(__file__).parent / "bundled" / "interp-tiny" / "text"
_TEXT_COLUMNS = ("text", "content", "document")


# ---------------------------------------------------------------------------- the bundled corpus
def collect_corpus() -> list[str]:
    """The bundled model's corpus, collected afresh from this Python's standard library.

    The pydoc topics (sorted by topic name), then every docstring of the standard library's ``.py``
    files (sorted paths, ``ast.walk`` order; ``site-packages`` excluded; nothing is imported), exact
    duplicates and docstrings under 40 characters dropped. Slow (it parses the whole standard
    library): :func:`documents` reads the shipped copy instead; ``tools/train_tiny`` uses this.
    """
    import ast
    import sysconfig

    import pydoc_data.topics

    docs: list[str] = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    node_types = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # the standard library ships a few deliberately broken files (test fixtures)
        for node in ast.walk(tree):
            if isinstance(node, node_types):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= 40:
                    docs.append(doc)
    return list(dict.fromkeys(docs))


def split_corpus(docs: list[str], mod: int = HELDOUT_MOD) -> tuple[list[str], list[str]]:
    """Split documents into ``(train, held_out)`` by a CRC of their text: one in ``mod`` is held out.

    >>> split_corpus(["a", "b", "c", "d"], 4)
    (['a', 'b', 'c'], ['d'])
    """
    train, held = [], []
    for d in docs:
        (held if zlib.crc32(d.encode("utf-8")) % mod == 0 else train).append(d)
    return train, held


def write_bundled_text(docs: list[str], out_dir: Union[str, os.PathLike], mod: int = HELDOUT_MOD) -> None:
    """Write the two splits as ``train.jsonl.gz`` and ``heldout.jsonl.gz`` (byte-for-byte reproducible)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in zip(SPLITS, split_corpus(docs, mod)):
        data = "".join(json.dumps(d) + "\n" for d in part).encode("utf-8")
        (out / f"{name}.jsonl.gz").write_bytes(gzip.compress(data, 9, mtime=0))


# ---------------------------------------------------------------------------- documents
def documents(source: Any = None, *, split: str = "train", column: Optional[str] = None) -> list[str]:
    """Documents to run the model over.

    Args:
        source: ``None`` — the bundled model's corpus (``split`` chooses ``"train"`` or
            ``"heldout"``); a path to a ``.txt`` file (one document), a ``.jsonl``/``.json`` file
            (one JSON object per line, or a JSON list, with a text field), a ``.parquet`` file or a
            directory saved by ``datasets.Dataset.save_to_disk`` (both need their libraries); or an
            iterable of strings, returned as a list.
        split: with the bundled corpus: ``"train"`` or ``"heldout"`` (kept apart for evaluation).
        column: the text field of JSON lines, Parquet and datasets (default: the first of
            ``text``, ``content``, ``document`` present).

    Returns:
        A list of non-empty strings.
    """
    # ``source`` is untyped for the runtime checker: it is user input, checked here with messages that name it.
    if source is None:
        if split not in SPLITS:
            raise InterpError(f"unknown split {split!r}: the bundled corpus has {', '.join(SPLITS)}")
        with gzip.open(_BUNDLED_TEXT / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    if isinstance(source, (str, os.PathLike)):
        docs = _read_path(Path(source), column)
    else:
        try:
            docs = list(source)
        except TypeError:
            raise InterpError(f"text source must be a path or an iterable of strings, not {type(source).__name__}") from None
        bad = next((i for i, d in enumerate(docs) if not isinstance(d, str)), None)
        if bad is not None:
            raise InterpError(f"document {bad} is a {type(docs[bad]).__name__}, not a string")
    docs = [d for d in docs if d]
    if not docs:
        raise InterpError(f"no text in {source}: every document is empty")
    return docs


def _read_path(path: Path, column: Optional[str]) -> list[str]:
    if not path.exists():
        raise InterpError(f"text source {str(path)!r} does not exist")
    if path.is_dir():
        try:
            import datasets
        except ImportError:
            raise InterpError(f"{path} is a directory: reading a saved datasets directory needs "
                              "`pip install datasets` (or give a .txt, .jsonl or .parquet file)") from None
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the user needs one line
            raise InterpError(f"cannot read {path} as a saved datasets directory: {e}") from None
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        return _column(list(ds.column_names), column, path, lambda c: ds[c])
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        if suffix in (".txt", ".txt.gz", ".md", ".py"):
            with opener(path, "rt", encoding="utf-8") as f:
                return [f.read()]
        if suffix in (".jsonl", ".jsonl.gz", ".json", ".json.gz"):
            with opener(path, "rt", encoding="utf-8") as f:
                text = f.read()
            rows = _json_rows(text, path)
            if all(isinstance(r, str) for r in rows):
                return rows
            keys = list(rows[0]) if rows and isinstance(rows[0], dict) else []
            return _column(keys, column, path, lambda c: [r.get(c) if isinstance(r, dict) else None for r in rows])
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise InterpError(f"reading {path} needs `pip install pyarrow`") from None
            table = pq.read_table(path)
            return _column(table.column_names, column, path, lambda c: table.column(c).to_pylist())
    except UnicodeDecodeError:
        raise InterpError(f"{path} is not UTF-8 text") from None
    raise InterpError(f"cannot read {path}: give a .txt, .jsonl, .json or .parquet file or a datasets directory")


def _json_rows(text: str, path: Path) -> list:
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            return json.loads(stripped)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InterpError(f"{path}: not JSON lines (line {e.lineno}: {e.msg})") from None


def _column(columns: list[str], column: Optional[str], path: Path, get) -> list[str]:
    if column is None:
        column = next((c for c in _TEXT_COLUMNS if c in columns), None)
        if column is None:
            raise InterpError(f"{path} has no text column ({', '.join(_TEXT_COLUMNS)}); its columns are "
                              f"{', '.join(map(str, columns)) or 'none'}: name one with column=")
    elif column not in columns:
        raise InterpError(f"{path} has no column {column!r}; its columns are {', '.join(map(str, columns))}")
    values = get(column)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise InterpError(f"{path}: row {bad}'s {column!r} is {type(values[bad]).__name__}, not text")
    return list(values)


# ---------------------------------------------------------------------------- tokens
def token_windows(tokenizer, docs: Iterable[str], n_ctx: int, *, bos_id: Optional[int] = None,
                  limit: Optional[int] = None) -> Iterator[Int[Tensor, " n_ctx"]]:
    """Windows of ``n_ctx`` token ids, each ``[BOS] + n_ctx - 1`` tokens of one stream of the documents.

    The stream is every document followed by ``<|endoftext|>`` (the tokenizer's BOS), in order; a
    final partial window is dropped. ``limit`` stops after that many windows. Documents are
    tokenized lazily, so the first window comes at once on a long corpus.

    >>> from interp.loading import load
    >>> tok = load("interp-tiny").tokenizer
    >>> w = next(token_windows(tok, ["print(1)", "x = 2"], n_ctx=4))
    >>> w.tolist()[0] == tok.bos_token_id, len(w)
    (True, 4)
    """
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 2:
        raise InterpError(f"n_ctx must be an int ≥ 2 (BOS and one token), not {n_ctx!r}")
    bos = tokenizer.bos_token_id if bos_id is None else bos_id
    step = n_ctx - 1
    buffer: list[int] = []
    made = 0
    for doc in docs:
        buffer += tokenizer(doc, add_special_tokens=False)["input_ids"]
        buffer.append(bos)
        while len(buffer) >= step:
            if limit is not None and made >= limit:
                return
            yield torch.tensor([bos, *buffer[:step]], dtype=torch.long)
            del buffer[:step]
            made += 1
