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

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .errors import InterpError

__all__ = ["Graph", "INPUTS"]

#: A receiver's inputs: a head's q, k or v, or ``in`` for an MLP's input and the logits.
INPUTS = ("q", "k", "v", "in")


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

    def connected(self, kept: Tensor) -> Tensor:
        """``kept`` (bool ``[sender, receiver]``) less every edge on no path from the embeddings to the logits.

        The one rule of interp (and of EAP-IG's ``Graph.prune``): an edge whose sender nothing kept feeds,
        or whose receiver feeds nothing kept, carries nothing from the input to the output.

        >>> g = Graph(1, 1)
        >>> kept = torch.zeros_like(g.valid)
        >>> kept[g.parse_edge("L0H0->logits")] = True      # L0H0 is fed by nothing kept
        >>> bool(g.connected(kept).any())
        False
        >>> kept[g.parse_edge("embed->L0H0.v")] = True
        >>> int(g.connected(kept).sum())
        2
        """
        kept = kept.clone()
        node_of_receiver = [self.senders.index(r) if r in self.senders else None for r, _ in self.receivers]
        while True:
            fed = kept.any(0)  # per receiver
            alive = torch.zeros(len(self.senders), dtype=torch.bool)
            alive[0] = True
            for ri, si in enumerate(node_of_receiver):
                if si is not None and fed[ri]:
                    alive[si] = True
            useful = torch.zeros(len(self.receivers), dtype=torch.bool)
            useful[-1] = True
            for ri, si in enumerate(node_of_receiver):
                if si is not None and kept[si].any():
                    useful[ri] = True
            new = kept & alive[:, None] & useful[None, :]
            if torch.equal(new, kept):
                return kept
            kept = new

    # ------------------------------------------------------------------ names
    @staticmethod
    def edge_name(sender: str, receiver: str, input: str) -> str:
        """``"L0H0->L1H0.k"``, ``"L1H0->logits"``, ``"embed->MLP0"``."""
        return f"{sender}->{receiver}" + (f".{input}" if input != "in" else "")

    def parse_edge(self, text: str) -> tuple[int, int]:
        """``(sender index, receiver index)`` of an edge written as :meth:`edge_name` writes it (nodes in
        :func:`interp.select.node`'s grammar: ``L0H0``/``0.0``, ``MLP1``, ``embed``, ``logits``)."""
        sender, arrow, receiver = text.partition("->")
        where, dot, what = receiver.strip().rpartition(".")
        if dot and what in ("q", "k", "v"):
            receiver, x = where, what
        else:
            x = "in"
        if not arrow or not sender.strip() or not receiver.strip():
            raise InterpError(f"cannot read edge {text!r}: write sender->receiver, e.g. 'L0H0->L1H0.k' or 'L1H0->logits'")
        try:
            s, r = self.node_name(sender), self.node_name(receiver)
            si, ri = self.senders.index(s), self.receivers.index((r, x))
        except (ValueError, InterpError):
            raise InterpError(f"edge {text!r} is not in this model's graph (senders embed, L0H0 …, MLP0 …; "
                              "receivers LlHh.q|k|v, MLPl, logits)") from None
        if not bool(self.valid[si, ri]):
            raise InterpError(f"edge {text!r} runs backwards: {s} writes after {r} reads")
        return si, ri

    def node_name(self, text: str) -> str:
        """The canonical name (``L3H7``, ``MLP3``, ``embed``, ``logits``) of a node written in the heads grammar."""
        from . import select

        kind, layer, head = select.node(self, text)
        return {"head": f"L{layer}H{head}", "mlp": f"MLP{layer}"}.get(kind, kind)

    @property
    def cfg(self) -> "Graph":
        """The graph's shape, as :mod:`interp.select` reads a model's (``n_layers``, ``n_heads``)."""
        return self

    @cached_property
    def _where(self) -> dict[str, tuple[int | None, int | None]]:
        out = {"embed": (None, None), "logits": (None, None)}
        for l in range(self.n_layers):
            out.update({f"L{l}H{h}": (l, h) for h in range(self.n_heads)}, **{f"MLP{l}": (l, None)})
        return out

    def layer_head(self, name: str) -> tuple[int | None, int | None]:
        """``"L3H7"`` → (3, 7); ``"MLP3"`` → (3, None); ``embed``/``logits`` → (None, None)."""
        if name in self._where:
            return self._where[name]
        from . import select

        _, layer, head = select.node(self, name)
        return layer, head
