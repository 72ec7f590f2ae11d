"""Turning prompts into a padded batch of tokens, with the mask that says which are real."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .errors import InterpError

# str or a list of str; untyped for the runtime checker because tokenize() checks it with clearer errors.
Prompts = Any


@dataclass(frozen=True)
class Batch:
    """Token ids of one or more prompts, padded to a common length.

    ``attention_mask`` is True on real tokens and False on padding. Padding may sit
    on the right (the default: token ``i`` of every prompt is at position ``i``)
    or on the left; position ids are counted over real tokens only, so a prompt
    gets the same positional embeddings wherever its padding is.
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Bool[Tensor, "batch pos"]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Number of real tokens in each prompt."""
        return self.attention_mask.sum(-1)

    @property
    def padded(self) -> bool:
        """Whether any prompt has padding."""
        return not bool(self.attention_mask.all())

    @property
    def last_positions(self) -> Int[Tensor, " batch"]:
        """Index of each prompt's last real token (works for left and right padding)."""
        n = self.attention_mask.shape[-1]
        idx = torch.arange(n, device=self.attention_mask.device).expand_as(self.attention_mask)
        return torch.where(self.attention_mask, idx, -1).max(-1).values

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        """Position of each token counted over real tokens (0 for left padding)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def from_tokens(tokens: Tensor, attention_mask: Tensor | None, d_vocab: int, n_ctx: int) -> Batch:
    """Check a user's token tensor and wrap it as a :class:`Batch`."""
    if not isinstance(tokens, Tensor):
        raise InterpError(f"tokens must be a torch.Tensor of token ids, not {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise InterpError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    if tokens.ndim != 2:
        raise InterpError(f"tokens must have shape [batch, pos] or [pos], got {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InterpError(f"tokens are empty (shape {tuple(tokens.shape)}): give at least one token")
    if tokens.shape[1] > n_ctx:
        raise InterpError(f"sequence of {tokens.shape[1]} tokens is longer than the context window of {n_ctx}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= d_vocab:
        bad = low if low < 0 else high
        raise InterpError(f"token id {bad} out of range: vocabulary has {d_vocab} tokens (0–{d_vocab - 1})")
    if attention_mask is None:
        attention_mask = torch.ones_like(tokens, dtype=torch.bool)
    else:
        if attention_mask.shape != tokens.shape:
            raise InterpError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match tokens shape {tuple(tokens.shape)}"
            )
        attention_mask = attention_mask.to(device=tokens.device, dtype=torch.bool)
        if not bool(attention_mask.any(-1).all()):
            raise InterpError("attention_mask has a row with no real token: every prompt needs at least one")
    return Batch(tokens.long(), attention_mask)


def tokenize(
    tokenizer,
    prompts: Prompts,
    *,
    n_ctx: int,
    prepend_bos: bool = True,
    padding_side: str = "right",
    device: torch.device | str = "cpu",
) -> Batch:
    """Tokenize one prompt or a list of prompts into a padded :class:`Batch`.

    BOS (GPT-2's ``<|endoftext|>``) is prepended by default, as TransformerLens does:
    without it GPT-2 treats the first real token as an attention sink.
    """
    if padding_side not in ("right", "left"):
        raise InterpError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InterpError("no prompts given: pass a string or a non-empty list of strings")
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InterpError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        if not prompt:
            raise InterpError(f"prompt {i} is empty")
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if prepend_bos:
            ids = [tokenizer.bos_token_id, *ids]
        if len(ids) > n_ctx:
            raise InterpError(
                f"prompt {i} is {len(ids)} tokens long (with BOS: {prepend_bos}); the context window is {n_ctx}"
            )
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, ids in enumerate(rows):
        sl = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        tokens[i, sl] = torch.tensor(ids, dtype=torch.long)
        mask[i, sl] = True
    return Batch(tokens.to(device), mask.to(device))


def decoder(tokenizer) -> Callable[[int], str]:
    """``id -> text`` for one token, memoised (tables decode the same few ids many times)."""
    cache: dict[int, str] = {}

    def text(i) -> str:
        i = int(i)
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        return cache[i]

    return text
