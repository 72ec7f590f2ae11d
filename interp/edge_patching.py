"""Exact interventions on the edges of :mod:`interp.graph`: the circuit run and each edge's direct path.

*The circuit run* (:func:`circuit_value`) is the model on the clean prompts with every edge outside a
set ablated: each receiver's input — its own copy of the stream (the model's split q/k/v inputs,
``hook_mlp_in``, the final stream) — is rebuilt as the live stream minus ``Σ (live − replacement)``
over its removed senders. That is exact: the stream before a LayerNorm is the sum of its writers
(the embeddings, every head, every MLP and the attention biases). :data:`ABLATIONS` says what a
removed sender carries (:func:`replacements`).

*An edge's direct path* (:func:`edge_effects`) is the corrupted run with only that receiver's input
given the sender's clean-minus-corrupted output, everything downstream recomputed: path patching's
``mlps="frozen"`` (:func:`interp.path_patching.path_patch`) for every sender and receiver of the
graph, resumed from the receiver's layer and stacked along the batch (:class:`interp.engine.Engine`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import hooks as hk
from .engine import Engine, Run, Stacked, Start
from .errors import InterpError
from .graph import Graph
from .metrics import Metric
from .tokens import Batch

__all__ = ["circuit_value", "edge_effects", "replacements", "sender_outputs", "ABLATIONS", "check_ablation"]

#: What a removed edge carries: the words of :mod:`interp.ablation` where they mean the same.
ABLATIONS = {"corrupted": "the sender's output on the paired corrupted prompt (EAP-IG's 'patching')",
             "mean": "the sender's mean output over the corrupted prompts, per token position"}


def check_ablation(ablation: Any) -> str:
    if ablation == "resample":
        raise InterpError("ablation='resample' is now called 'corrupted' (the paired corrupted prompt's value); "
                          "'resample' means a random other prompt in interp.ablation")
    if ablation not in ABLATIONS:
        raise InterpError(f"unknown ablation {ablation!r}: use 'corrupted' (the paired corrupted prompt) or 'mean'")
    return ablation


# ---------------------------------------------------------------------------- senders' outputs
def sender_outputs(engine: Engine, batch: Batch) -> tuple[Tensor, Tensor, Run]:
    """Every sender's output in a plain run of ``batch``, in graph order ``[sender, batch, pos, d_model]``
    (the embeddings, each head's write, each MLP's output), its heads' ``z`` ``[layer, batch, pos, head,
    d_head]``, and the run."""
    L = engine.cfg.n_layers
    run = engine.record(batch, ["resid_pre.0"] + [hk.name(s, l) for l in range(L) for s in ("z", "mlp_out")])
    return outputs_of(engine, run.acts), torch.stack([run[("z", l)] for l in range(L)]), run


def outputs_of(engine: Engine, acts: dict) -> Tensor:
    """Every sender's output ``[sender, batch, pos, d_model]`` from a run's ``resid_pre.0``, ``z`` and ``mlp_out``."""
    model, L, H = engine.model, engine.cfg.n_layers, engine.cfg.n_heads
    x0 = acts[hk.name("resid_pre", 0)]
    out = torch.empty(1 + L * (H + 1), *x0.shape, dtype=x0.dtype, device=x0.device)
    out[0] = x0
    for l in range(L):
        first = 1 + l * (H + 1)
        out[first : first + H] = model.head_write(l, acts[hk.name("z", l)]).permute(2, 0, 1, 3)
        out[first + H] = acts[hk.name("mlp_out", l)]
    return out


def replacements(corrupt_out: Tensor, kb: Batch, ablation: str) -> Tensor:
    """What a removed sender carries: ``[sender, batch, pos, d_model]``.

    ``"mean"`` averages over the corrupted prompts at each *token position* (counted within each
    prompt, so left and right padding agree), each prompt then reading the mean at its own positions.
    """
    if ablation == "corrupted":
        return corrupt_out
    pos, real = kb.position_ids, kb.attention_mask
    n = int(kb.lengths.max())
    sums = corrupt_out.new_zeros(corrupt_out.shape[0], n, corrupt_out.shape[-1])
    sums.index_add_(1, pos[real], corrupt_out[:, real])
    counts = torch.zeros(n, dtype=corrupt_out.dtype, device=corrupt_out.device).index_add_(
        0, pos[real], torch.ones_like(pos[real], dtype=corrupt_out.dtype))
    mean = sums / counts[None, :, None].clamp_min(1)
    return mean[:, pos]  # [sender, batch, pos, d_model]: each prompt's positions


# ---------------------------------------------------------------------------- the circuit run
def circuit_value(engine: Engine, cb: Batch, kept: Tensor, repl: Tensor) -> Tensor:
    """The final residual stream of the clean run with every edge outside ``kept`` ablated.

    ``kept`` is bool ``[sender, receiver]`` (:class:`~interp.graph.Graph` order); ``repl`` the removed
    senders' values. Each receiver's input is the live stream minus ``Σ (live − replacement)`` over its
    removed senders: exact, since the stream before a LayerNorm is the sum of its writers.
    """
    model, L, H = engine.model, engine.cfg.n_layers, engine.cfg.n_heads
    g = Graph(L, H)
    removed = (g.valid & ~kept.cpu()).to(repl.dtype).to(repl.device)
    diff = torch.zeros_like(repl)  # live − replacement, filled in as the senders write

    def correction(receivers: slice | int, upto: int) -> Tensor:
        return torch.einsum("sr,sbpm->rbpm", removed[:upto, receivers].reshape(upto, -1), diff[:upto])

    def embed(x: Tensor, name: str) -> None:
        diff[0] = x - repl[0]

    def head_inputs(x: Tensor, name: str) -> Tensor:  # [batch, pos, head, d_model]: each head's own copy
        layer, i = hk.layer_of(name), "qkv".index(name.split(".hook_")[1][0])  # blocks.L.hook_q_input
        first = layer * g.per_layer + i * H
        return x - correction(slice(first, first + H), g.sender_index(layer, 0)).permute(1, 2, 0, 3)

    def writes(z: Tensor, name: str) -> None:
        layer = hk.layer_of(name)
        first = g.sender_index(layer, 0)
        diff[first : first + H] = model.head_write(layer, z).permute(2, 0, 1, 3) - repl[first : first + H]

    def mlp_input(x: Tensor, name: str) -> Tensor:
        layer = hk.layer_of(name)
        return x - correction(layer * g.per_layer + 3 * H, g.sender_index(layer))[0]

    def mlp_out(x: Tensor, name: str) -> None:
        i = g.sender_index(hk.layer_of(name))
        diff[i] = x - repl[i]

    def final(x: Tensor, name: str) -> Tensor:
        return x - correction(len(g.receivers) - 1, len(g.senders))[0]

    # Only receivers with a removed sender are rebuilt: the split q/k/v inputs cost a per-head
    # LayerNorm, paid where an edge into that input is removed.
    cut = removed.bool().any(0).cpu()
    hooks = [(hk.name("resid_pre", 0), embed)]
    for l in range(L):
        for i, x in enumerate("qkv"):
            first = l * g.per_layer + i * H
            if bool(cut[first : first + H].any()):
                hooks.append((hk.name(f"{x}_input", l), head_inputs))
        hooks.append((hk.name("z", l), writes))
        if bool(cut[l * g.per_layer + 3 * H]):
            hooks.append((hk.name("mlp_in", l), mlp_input))
        hooks.append((hk.name("mlp_out", l), mlp_out))
    if bool(cut[-1]):
        hooks.append((hk.name("resid_post", L - 1), final))
    with torch.no_grad():
        return engine.record(cb, hooks=hooks).final


# ---------------------------------------------------------------------------- exact edge effects
def edge_effects(engine: Engine, kb: Batch, metric: Metric, pairs: list[tuple[int, int]], delta: Tensor,
                 bar: Any = None) -> list[float]:
    """The metric of the corrupted run with each edge's receiver given its sender's ``delta`` (direct path)."""
    L, H = engine.cfg.n_layers, engine.cfg.n_heads
    g = Graph(L, H)
    B, P = kb.tokens.shape

    def start_of(pair: tuple[int, int]) -> Start:
        layer = min(pair[1] // g.per_layer, L)
        return Start(layer, mid=layer < L and pair[1] % g.per_layer == 3 * H)

    base = engine.record(kb, [n for s in {start_of(p) for p in pairs} for n in s.names(L)])

    def build(chunk: list[tuple[int, int]], start: Start) -> Stacked:
        V = len(chunk)
        d = torch.stack([delta[si] for si, _ in chunk])  # [V, B, P, d_model]
        if start.layer == L:  # the logits read the final stream
            return Stacked(delta=d)
        fed = (base.stream(start)[None] + d).reshape(V * B, P, -1)
        receivers = []
        for j, (_, ri) in enumerate(chunk):
            r = ri % g.per_layer
            what, head = ("in", None) if r == 3 * H else ("qkv"[r // H], r % H)
            receivers.append((what, head, slice(j * B, (j + 1) * B)))
        return Stacked(hooks=engine.feed(start.layer, receivers, lambda rows: fed[rows]))

    with torch.no_grad():
        return engine.sweep(base, pairs, start_of, build, metric, bar)
