"""The activations a run kept: only the ones asked for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Iterator, Union

from torch import Tensor

from . import hooks
from .errors import InterpError
from .tokens import Batch

Key = Union[str, tuple]


class Cache(Mapping):
    """Activations of one run, keyed by hook name, with the batch they came from.

    Index by full name (``cache["blocks.3.attn.hook_pattern"]``) or short form
    (``cache["pattern", 3]``, ``cache["embed"]``). Read-only: analyses that need to
    change an activation clone it first.
    """

    def __init__(self, activations: dict[str, Tensor], batch: Batch):
        self._acts = activations
        self.batch = batch

    @property
    def tokens(self) -> Tensor:
        return self.batch.tokens

    @property
    def attention_mask(self) -> Tensor:
        return self.batch.attention_mask

    def _key(self, key: Key) -> str:
        if isinstance(key, tuple):
            return hooks.name(*key)
        if key in hooks.GLOBAL_HOOKS:
            return hooks.GLOBAL_HOOKS[key]
        return key

    def __getitem__(self, key: Key) -> Tensor:
        full = self._key(key)
        if full not in self._acts:
            cached = ", ".join(self._acts) or "nothing"
            raise InterpError(f"{full!r} was not cached by this run (it cached: {cached}); ask for it with names=")
        return self._acts[full]

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._acts  # type: ignore[arg-type]
        except InterpError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._acts.items())
        return f"Cache({shapes})"
