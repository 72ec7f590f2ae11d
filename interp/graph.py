"""The computational graph of circuit discovery: who writes into the residual stream, who reads it.

GPT-2's residual stream is a running sum, so every component reads the sum of what was written
before it. Circuit discovery (Syed et al. 2023; Hanna et al. 2024; Conmy et al. 2023) makes that
sum a graph whose edges are (writer, reader) pairs:

Senders (writers)
    ``embed`` (token + position embeddings, what enters block 0), every head ``L{l}H{h}`` (its
    output: its ``z``, value bias included, times ``W_O`` — see :class:`interp.HookedGPT2`) and
    every MLP ``MLP{l}`` (its output, ``b_out`` included).
Receivers (readers)
    every head's query, key and value input (``L{l}H{h}`` with input ``q``/``k``/``v``: the
    head's own copy of the residual stream entering its layer, before ``ln1``), every MLP's input
    (``MLP{l}``, input ``in``: the stream at ``resid_mid`` before ``ln2``) and the ``logits``
    (input ``in``: the final residual stream, before the final LayerNorm).

An edge runs from a sender to every receiver after it: a head of layer l feeds layer l's MLP
and everything in later layers, never a head of its own layer. The attention ``b_O`` of each
layer belongs to no head and is never ablated. GPT-2 small has 157 senders, 445 receivers and
32,491 edges. Edges are not split by position: an edge carries its sender's output at every
position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .errors import InterpError

__all__ = ["Graph", "INPUTS"]

#: A receiver's inputs: a head's q, k or v, or ``in`` for an MLP's input and the logits.
INPUTS = ("q", "k", "v", "in")
_EDGE = re.compile(r"\s*(\S+?)\s*->\s*(\S+?)(?:\.([qkv]))?\s*")


@dataclass(frozen=True)
class Graph:
    """Senders, receivers and which (sender, receiver) pairs are edges, for a model's shape.

    Senders are ordered ``embed``, then per layer its heads and its MLP; receivers per layer
    its heads' q (all heads), k, v, then its MLP, and last the logits.

    >>> g = Graph(n_layers=2, n_heads=4)
    >>> g.senders[:3], g.receivers[:2], g.receivers[-1]
    (['embed', 'L0H0', 'L0H1'], [('L0H0', 'q'), ('L0H1', 'q')], ('logits', 'in'))
    >>> len(g.senders), len(g.receivers), int(g.valid.sum())
    (11, 27, 110)
    """

    n_layers: int
    n_heads: int

    # ------------------------------------------------------------------ senders
    @cached_property
    def senders(self) -> list[str]:
        out = ["embed"]
        for l in range(self.n_layers):
            out += [f"L{l}H{h}" for h in range(self.n_heads)] + [f"MLP{l}"]
        return out

    def sender_index(self, layer: int, head: int | None = None) -> int:
        """Index of head ``(layer, head)`` (or of MLP ``layer`` with ``head=None``) among the senders."""
        base = 1 + layer * (self.n_heads + 1)
        return base + (self.n_heads if head is None else head)

    @cached_property
    def sender_stage(self) -> Tensor:
        """When each sender has written: 0 embed, 2l+1 the heads of layer l, 2l+2 MLP l."""
        st = [0]
        for l in range(self.n_layers):
            st += [2 * l + 1] * self.n_heads + [2 * l + 2]
        return torch.tensor(st)

    # ------------------------------------------------------------------ receivers
    @cached_property
    def receivers(self) -> list[tuple[str, str]]:
        out = []
        for l in range(self.n_layers):
            out += [(f"L{l}H{h}", x) for x in "qkv" for h in range(self.n_heads)] + [(f"MLP{l}", "in")]
        return out + [("logits", "in")]

    @property
    def per_layer(self) -> int:
        """Receivers per layer: 3 inputs per head and the MLP."""
        return 3 * self.n_heads + 1

    def receiver_slice(self, layer: int) -> slice:
        """Layer ``layer``'s receivers (``n_layers``: the logits)."""
        return slice(layer * self.per_layer, (layer + 1) * self.per_layer if layer < self.n_layers else None)

    @cached_property
    def receiver_stage(self) -> Tensor:
        """The latest sender stage each receiver reads: 2l for layer l's heads, 2l+1 its MLP, 2L the logits."""
        st = []
        for l in range(self.n_layers):
            st += [2 * l] * (3 * self.n_heads) + [2 * l + 1]
        return torch.tensor(st + [2 * self.n_layers])

    @cached_property
    def valid(self) -> Tensor:
        """Bool ``[sender, receiver]``: True where the pair is an edge (the sender wrote before the receiver reads)."""
        return self.sender_stage[:, None] <= self.receiver_stage[None, :]

    # ------------------------------------------------------------------ names
    @staticmethod
    def edge_name(sender: str, receiver: str, input: str) -> str:
        """``"L0H0->L1H0.k"``, ``"L1H0->logits"``, ``"embed->MLP0"``."""
        return f"{sender}->{receiver}" + (f".{input}" if input != "in" else "")

    def parse_edge(self, text: str) -> tuple[int, int]:
        """``(sender index, receiver index)`` of an edge written as :meth:`edge_name` writes it."""
        m = _EDGE.fullmatch(text)
        if not m:
            raise InterpError(f"cannot read edge {text!r}: write sender->receiver, e.g. 'L0H0->L1H0.k' or 'L1H0->logits'")
        s, r, x = m.group(1), m.group(2), m.group(3) or "in"
        try:
            si, ri = self.senders.index(s), self.receivers.index((r, x))
        except ValueError:
            raise InterpError(f"edge {text!r} is not in this model's graph (senders embed, L0H0 …, MLP0 …; "
                              "receivers LlHh.q|k|v, MLPl, logits)") from None
        if not bool(self.valid[si, ri]):
            raise InterpError(f"edge {text!r} runs backwards: {s} writes after {r} reads")
        return si, ri

    @staticmethod
    def layer_head(name: str) -> tuple[int | None, int | None]:
        """``"L3H7"`` → (3, 7); ``"MLP3"`` → (3, None); ``embed``/``logits`` → (None, None)."""
        if name.startswith("MLP"):
            return int(name[3:]), None
        m = re.fullmatch(r"L(\d+)H(\d+)", name)
        return (int(m.group(1)), int(m.group(2))) if m else (None, None)
