"""Activations to train SAEs on: one forward pass for several hook points, shuffled in a bounded buffer.

:class:`ActivationStore` runs the model over text (:mod:`interp.corpus`: the bundled model's own
training text by default) and yields batches ``{hook_name: [batch_size, d]}`` — every hook point's
rows from the same tokens, so several SAEs train at once from one forward pass, each stopped right
after the last hook point it needs.

The shuffle is by *blocks*: the token windows are cut into blocks of about ``shuffle_buffer``
activations; a block is harvested, permuted (a permutation seeded by ``seed`` and the block's
index) and served in batches. So the order is a function of ``(seed, batch index)`` alone: batch
``i`` can be produced again without replaying the batches before it (only their tokenization),
which is what makes training resumable. Epochs repeat the windows with fresh permutations.

With ``cache_dir`` each block's activations (and tokens) are kept as a safetensors shard, written
atomically, read back memory-mapped (a batch touches only the rows it gathers). A killed run leaves
its complete shards, and the next run starts harvesting at the first missing one; once the
manifest says the cache holds the whole text, later epochs and runs need no tokenizing and no
forward pass. A cache
made for another model, weight mode, text or hook set is refused, naming what differs.

>>> from interp.testing import planted_model
>>> model = planted_model()
>>> store = ActivationStore(model, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"],
...                         ["a b c d e f g h i j"] * 8, n_ctx=8, batch_size=16, shuffle_buffer=64)
>>> batch = next(iter(store))
>>> {name: tuple(x.shape) for name, x in batch.items()}
{'blocks.0.hook_resid_post': (16, 256), 'blocks.1.attn.hook_z': (16, 256)}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import hooks as hk
from ..errors import InterpError

__all__ = ["ActivationStore", "read_safetensors_mmap"]

_UNSTACKABLE = ("hook_pattern", "hook_attn_scores")
_MANIFEST = "manifest.json"
_FORMAT = "interp-activations-1"


class ActivationStore:
    """Batches of activations at one or several hook points, from one forward pass per token batch.

    Args:
        model: a :class:`~interp.model.HookedGPT2`.
        hook_names: a hook name or a list of them (TransformerLens names; ``hook_z`` is flattened to
            ``[n_heads * d_head]`` per token, as SAELens does).
        texts: what :func:`interp.corpus.documents` reads: None (the bundled model's corpus, split
            ``split``), a path (.txt, .jsonl, .json, .parquet, a saved ``datasets`` directory) or a
            list of strings.
        n_ctx: tokens per window (default: the model's context); each window starts with BOS.
        batch_size: activations per batch.
        shuffle_buffer: activations per shuffled block (the bound on memory: one block of every hook).
        seed: the permutations' seed.
        split, column: passed to :func:`interp.corpus.documents`.
        include_bos: keep the BOS position of each window (default False: its activations are
            outliers that no feature should spend capacity on).
        prompts_per_forward: windows per forward pass (default: ~16k tokens).
        cache_dir: keep each block's activations here (see the module docstring).
    """

    def __init__(self, model, hook_names: Union[str, Sequence[str]], texts: Any = None, *, n_ctx: Optional[int] = None,
                 batch_size: int = 4096, shuffle_buffer: int = 1 << 16, seed: int = 0, split: str = "train",
                 column: Optional[str] = None, include_bos: bool = False, prompts_per_forward: Optional[int] = None,
                 cache_dir: Union[str, os.PathLike, None] = None):
        self.model = model
        names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
        if not names:
            raise InterpError("no hook names: give at least one, e.g. 'blocks.0.hook_resid_post'")
        resolved = []
        for name in names:
            if not isinstance(name, str):
                raise InterpError(f"hook names must be strings, not {name!r}")
            found = hk.resolve(name, model.cfg.n_layers)
            if len(found) != 1:
                raise InterpError(f"hook name {name!r} matches {len(found)} hook points: give one name per SAE")
            if found[0].endswith(_UNSTACKABLE):
                raise InterpError(f"{found[0]} has no fixed width per token (it is per query and key): "
                                  "choose another hook point")
            resolved.append(found[0])
        if len(set(resolved)) != len(resolved):
            raise InterpError(f"hook names repeat: {resolved}")
        self.hook_names: list[str] = resolved
        order = {n: i for i, n in enumerate(model.hook_names)}
        self._last_hook = max(resolved, key=lambda n: order.get(n, -1))
        self.n_ctx = _positive(model.cfg.n_ctx if n_ctx is None else n_ctx, "n_ctx", low=2)
        if self.n_ctx > model.cfg.n_ctx:
            raise InterpError(f"n_ctx {self.n_ctx} is longer than the model's context ({model.cfg.n_ctx})")
        self.batch_size = _positive(batch_size, "batch_size")
        self.shuffle_buffer = _positive(shuffle_buffer, "shuffle_buffer")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InterpError(f"seed must be a whole number, not {seed!r}")
        self.seed = seed
        self.include_bos = bool(include_bos)
        self.positions = self.n_ctx - (0 if self.include_bos else 1)  # activations per window
        self.windows_per_block = max(1, math.ceil(self.shuffle_buffer / self.positions))
        self.prompts_per_forward = _positive(prompts_per_forward or max(1, (1 << 14) // self.n_ctx), "prompts_per_forward")
        self._texts, self._split, self._column = texts, split, column
        self._docs: Optional[list[str]] = None
        self._epoch: list[Tensor] = []  # the first epoch's token blocks, [W, n_ctx] int32 each, as they are made
        self._epoch_done = False
        self._dims: Optional[dict[str, int]] = None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self._open_cache()

    # ------------------------------------------------------------------ text
    @property
    def docs(self) -> list[str]:
        if self._docs is None:
            from ..corpus import documents

            self._docs = documents(self._texts, split=self._split, column=self._column)
        return self._docs

    def _token_blocks(self) -> Iterator[tuple[int, Tensor]]:
        """``(block index, tokens [windows, n_ctx])`` for ever: the epoch's blocks, again and again."""
        index = 0
        if not self._epoch_done:
            for index, tokens in enumerate(self._first_epoch()):
                yield index, tokens
            index += 1
        n = len(self._epoch)
        while True:
            yield index, self._epoch[index % n]
            index += 1

    def _first_epoch(self) -> Iterator[Tensor]:
        done = len(self._epoch)
        yield from self._epoch[:done]
        if self._cached_blocks() is not None:
            for j in range(done, self._cached_blocks()):
                self._epoch.append(self._read_shard(j)["tokens"])
                yield self._epoch[-1]
            self._epoch_done = True
            return
        from ..corpus import token_windows

        windows = token_windows(self.model.tokenizer, self.docs, self.n_ctx)
        block: list[Tensor] = []
        made = 0
        for w in windows:
            block.append(w.to(torch.int32))
            if len(block) == self.windows_per_block:
                if made >= done:
                    self._epoch.append(torch.stack(block))
                    yield self._epoch[-1]
                made += 1
                block = []
        if block and made >= done:
            self._epoch.append(torch.stack(block))
            yield self._epoch[-1]
        if not self._epoch:
            raise InterpError(f"the text is shorter than one window of {self.n_ctx} tokens")
        self._epoch_done = True
        if self.cache_dir is not None:
            self._write_manifest(blocks=len(self._epoch))

    # ------------------------------------------------------------------ activations
    @property
    def dims(self) -> dict[str, int]:
        """Each hook point's width per token (``hook_z``: ``n_heads * d_head``), from a one-window probe."""
        if self._dims is None:
            if self.cache_dir is not None and self._manifest_on_disk().get("dims"):
                self._dims = dict(self._manifest_on_disk()["dims"])
            else:
                bos = self.model.tokenizer.bos_token_id
                probe = torch.full((1, 2), bos, dtype=torch.long, device=self.model.cfg.device)
                acts = self._forward(probe)
                self._dims = {n: int(a.shape[-1]) for n, a in acts.items()}
        return self._dims

    def _forward(self, tokens: Tensor) -> dict[str, Tensor]:
        """One forward pass, stopped after the last hook point: ``{hook: [batch, pos, d]}``."""
        got: dict[str, Tensor] = {}

        def keep(x: Tensor, name: str) -> None:
            got[name] = x.flatten(2) if x.dim() > 3 else x

        with torch.no_grad():
            self.model.forward(tokens.to(self.model.cfg.device, torch.long), hooks=[(n, keep) for n in self.hook_names],
                               stop_after=self._last_hook)
        return got

    def _harvest(self, tokens: Tensor) -> dict[str, Tensor]:
        """A block's activations, unshuffled: ``{hook: [windows * positions, d]}``."""
        start = 0 if self.include_bos else 1
        n = len(tokens) * self.positions
        out: dict[str, Tensor] = {}
        row = 0
        for i in range(0, len(tokens), self.prompts_per_forward):
            acts = self._forward(tokens[i:i + self.prompts_per_forward])
            for name, a in acts.items():
                a = a[:, start:]
                flat = a.reshape(-1, a.shape[-1])
                if name not in out:
                    out[name] = torch.empty(n, flat.shape[-1], dtype=flat.dtype)
                out[name][row:row + len(flat)] = flat
            row += len(flat)
        return out

    def _block(self, index: int, tokens: Tensor) -> dict[str, Tensor]:
        if self.cache_dir is None:
            return self._harvest(tokens)
        j = index % len(self._epoch) if self._epoch_done else index
        path = self._shard_path(j)
        if path.exists():
            shard = self._read_shard(j)
            return {n: shard[n] for n in self.hook_names}
        acts = self._harvest(tokens)
        self._write_shard(j, acts, tokens)
        return acts

    def permutation(self, index: int, n: int) -> Tensor:
        """The order block ``index`` (of ``n`` activations) is served in: a function of the seed and the index."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (1 << 63))
        return torch.randperm(n, generator=g)

    def batches(self, start: int = 0) -> Iterator[dict[str, Float[Tensor, "batch d"]]]:
        """Batches ``{hook: [batch_size, d]}`` from batch index ``start`` on, for ever (epochs repeat the text)."""
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InterpError(f"start must be a whole number ≥ 0, not {start!r}")
        skip = start * self.batch_size
        carry: Optional[dict[str, Tensor]] = None
        bs = self.batch_size
        for index, tokens in self._token_blocks():
            n = len(tokens) * self.positions
            if skip >= n:
                skip -= n
                continue
            acts = self._block(index, tokens)
            order = self.permutation(index, n)[skip:]
            skip = 0
            off = 0
            if carry is not None:
                need = bs - len(next(iter(carry.values())))
                take = order[:need]
                carry = {h: torch.cat([carry[h], acts[h][take]]) for h in self.hook_names}
                off = len(take)
                if len(next(iter(carry.values()))) < bs:
                    continue
                yield carry
                carry = None
            while off + bs <= len(order):
                idx = order[off:off + bs]
                yield {h: acts[h][idx] for h in self.hook_names}
                off += bs
            if off < len(order):
                carry = {h: acts[h][order[off:]] for h in self.hook_names}

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.batches(0)

    def contexts(self, batch_size: int = 32, limit: Optional[int] = None
                 ) -> Iterator[tuple[Int[Tensor, "batch pos"], dict[str, Float[Tensor, "batch pos d"]]]]:
        """The unshuffled mode: ``(tokens [batch, n_ctx], {hook: [batch, n_ctx, d]})`` over one pass of the text.

        Every position, BOS included, in text order; ``limit`` stops after that many windows. For
        consumers that need each activation's context (feature pages).
        """
        _positive(batch_size, "batch_size")
        pending: list[Tensor] = []
        seen = 0
        for _, tokens in self._blocks_once():
            for w in tokens:
                if limit is not None and seen >= limit:
                    break
                pending.append(w.long())
                seen += 1
                if len(pending) == batch_size:
                    toks = torch.stack(pending)
                    yield toks, self._forward(toks)
                    pending = []
            if limit is not None and seen >= limit:
                break
        if pending:
            toks = torch.stack(pending)
            yield toks, self._forward(toks)

    def _blocks_once(self) -> Iterator[tuple[int, Tensor]]:
        for index, tokens in self._token_blocks():
            if self._epoch_done and index >= len(self._epoch):
                return
            yield index, tokens

    def n_activations_per_epoch(self) -> int:
        """Activations in one pass over the text (tokenizes it all)."""
        return sum(len(t) for _, t in self._blocks_once()) * self.positions

    # ------------------------------------------------------------------ the disk cache
    def _fingerprint(self) -> dict:
        m = self.model
        weights = hashlib.sha256()
        for t in (m.W_E[:8], m.W_pos[:8], m.W_in[:, :8], m.b_out):  # cheap, and any other model differs here
            weights.update(t.detach().float().contiguous().cpu().numpy().tobytes())
        text = hashlib.sha256()
        for d in self.docs:
            text.update(d.encode("utf-8"))
            text.update(b"\0")
        return {
            "format": _FORMAT, "model": m.cfg.name, "fold_ln": bool(m.cfg.fold_ln), "dtype": str(m.cfg.dtype).replace("torch.", ""),
            "weights": weights.hexdigest()[:16], "hooks": self.hook_names, "n_ctx": self.n_ctx,
            "include_bos": self.include_bos, "windows_per_block": self.windows_per_block,
            "text": text.hexdigest()[:16],
        }

    def _manifest_on_disk(self) -> dict:
        path = self.cache_dir / _MANIFEST
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InterpError(f"cache {self.cache_dir}: {_MANIFEST} is not JSON; remove the directory") from None

    def _cached_complete_on_disk(self) -> bool:
        return self.cache_dir is not None and isinstance(self._manifest_on_disk().get("blocks"), int)

    def _cached_blocks(self) -> Optional[int]:
        return self._manifest_on_disk().get("blocks") if self._cached_complete_on_disk() else None

    def _open_cache(self) -> None:
        d = self.cache_dir
        if d.exists() and not d.is_dir():
            raise InterpError(f"cache {d}: it is a file, not a directory")
        d.mkdir(parents=True, exist_ok=True)
        mine = self._fingerprint()
        theirs = self._manifest_on_disk()
        if theirs:
            for key, value in mine.items():
                if theirs.get(key) != value:
                    raise InterpError(f"cache {d} was made with {key}={theirs.get(key)!r}, this store has {value!r}: "
                                      "use another cache directory")
            return
        if any(d.iterdir()):
            raise InterpError(f"cache {d}: the directory holds other files and no {_MANIFEST}; give an empty or new one")
        self._write_manifest()

    def _write_manifest(self, **extra) -> None:
        manifest = {**self._manifest_on_disk(), **self._fingerprint(), **extra}
        if self._dims is not None or extra:
            manifest["dims"] = self.dims
        _atomic(self.cache_dir / _MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))

    def _shard_path(self, j: int) -> Path:
        return self.cache_dir / f"shard-{j:06d}.safetensors"

    def _write_shard(self, j: int, acts: dict[str, Tensor], tokens: Tensor) -> None:
        from safetensors.torch import save_file

        tensors = {**{n: a.contiguous() for n, a in acts.items()}, "tokens": tokens.to(torch.int32).contiguous()}
        _atomic(self._shard_path(j), lambda tmp: save_file(tensors, str(tmp)))

    def _read_shard(self, j: int) -> dict[str, Tensor]:
        return read_safetensors_mmap(self._shard_path(j))


def read_safetensors_mmap(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """A safetensors file's tensors as views of a memory map (copy-on-write): nothing is read until used.

    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_file({"a": torch.arange(6.0).view(2, 3)}, f"{d}/x.safetensors")
    ...     read_safetensors_mmap(f"{d}/x.safetensors")["a"][1].tolist()
    [3.0, 4.0, 5.0]
    """
    dtypes = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32, "I64": np.int64,
              "U8": np.uint8, "I8": np.int8, "BOOL": np.bool_}
    path = Path(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            raise InterpError(f"{path}: bfloat16 shards are read with safetensors, not memory-mapped")
        shape = tuple(info["shape"])
        if end == begin:
            out[name] = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtypes[info["dtype"]])).dtype)
            continue
        arr = np.memmap(path, dtype=dtypes[info["dtype"]], mode="c", offset=8 + n + begin, shape=shape)
        out[name] = torch.from_numpy(arr)
    return out


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _positive(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InterpError(f"{name} must be a whole number ≥ {low}, not {value!r}")
    return value
