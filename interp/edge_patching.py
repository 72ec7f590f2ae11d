"""Exact interventions on the edges of :mod:`interp.graph`: the circuit run and each edge's direct path.

*The circuit run* (:func:`circuit_value`) is the model on the clean prompts with every edge outside a
set ablated: each receiver's input is rebuilt as the live stream minus ``Σ (live − replacement)``
over its removed senders. That is exact: the stream before a LayerNorm is the sum of its writers
(the embeddings, every head, every MLP and the attention biases). ``ablation="resample"`` takes a
removed sender's output on the paired corrupted prompt, ``"mean"`` its mean over the corrupted
prompts, per position (:func:`replacements`).

*An edge's direct path* (:func:`edge_effects`) is the corrupted run with only that receiver's input
given the sender's clean-minus-corrupted output, everything downstream recomputed: path patching's
``mlps="frozen"`` (:func:`interp.path_patching.path_patch`) for every sender and receiver of the
graph, resumed from the receiver's layer and stacked along the batch.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import hooks as hk
from .errors import InterpError
from .graph import Graph
from .metrics import Metric
from .tokens import Batch

__all__ = ["circuit_value", "edge_effects", "replacements", "ABLATIONS", "check_ablation"]

ABLATIONS = {"resample": "a removed sender's output on the paired corrupted prompt",
             "mean": "a removed sender's mean output over the corrupted prompts, per position"}


# ---------------------------------------------------------------------------- replacements
def replacements(corrupt_out: Tensor, kb: Batch, ablation: str) -> Tensor:
    """What a removed sender carries: ``[sender, batch, pos, d_model]``."""
    if ablation == "resample":
        return corrupt_out
    w = kb.attention_mask.to(corrupt_out.dtype)[None, :, :, None]
    mean = (corrupt_out * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
    return mean.expand_as(corrupt_out)


def check_ablation(ablation: Any) -> str:
    if ablation not in ABLATIONS:
        raise InterpError(f"unknown ablation {ablation!r}: use 'resample' (the paired corrupted prompt) or 'mean'")
    return ablation


# ---------------------------------------------------------------------------- the circuit run
def circuit_value(model, cb: Batch, kept: Tensor, repl: Tensor) -> Tensor:
    """The final residual stream of the clean run with every edge outside ``kept`` ablated.

    ``kept`` is bool ``[sender, receiver]`` (:class:`~interp.graph.Graph` order); ``repl`` the removed
    senders' values. Each receiver's input is the live stream minus ``Σ (live − replacement)`` over its
    removed senders: exact, since the stream before a LayerNorm is the sum of its writers.
    """
    cfg, L, H = model.cfg, model.cfg.n_layers, model.cfg.n_heads
    g = Graph(L, H)
    removed = (g.valid & ~kept.cpu()).to(repl.dtype).to(repl.device)
    diff = torch.zeros_like(repl)  # live − replacement, filled in as the senders write
    stream: dict[str, Tensor] = {}
    W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}
    b = {"q": model.b_Q, "k": model.b_K, "v": model.b_V}

    def correction(rows: slice | int, upto: int) -> Optional[Tensor]:
        r = removed[:upto, rows]
        if not bool(r.any()):
            return None
        return torch.einsum("sr,sbpm->rbpm", r.reshape(upto, -1), diff[:upto])

    def pre(x: Tensor, name: str) -> None:
        layer = hk.layer_of(name)
        if layer == 0:
            diff[0] = x - repl[0]
        stream["pre"] = x
        stream["qkv"] = correction(slice(layer * g.per_layer, layer * g.per_layer + 3 * H), g.sender_index(layer, 0))

    def qkv(act: Tensor, name: str) -> Optional[Tensor]:
        c = stream["qkv"]
        if c is None:
            return None
        layer, what = hk.layer_of(name), name.rsplit("_", 1)[1]
        i = "qkv".index(what)
        x = F.layer_norm(stream["pre"][None] - c[i * H : (i + 1) * H], (cfg.d_model,), model.ln1_w[layer],
                         model.ln1_b[layer], cfg.eps)
        return torch.einsum("hbpm,hmd->bphd", x, W[what][layer]) + b[what][layer]

    def z(act: Tensor, name: str) -> None:
        layer = hk.layer_of(name)
        first = g.sender_index(layer, 0)
        diff[first : first + H] = torch.einsum("bphd,hdm->hbpm", act, model.W_O[layer]) - repl[first : first + H]

    def mid(x: Tensor, name: str) -> None:
        stream["mid"] = x

    def ln2(act: Tensor, name: str) -> Optional[Tensor]:
        layer = hk.layer_of(name)
        c = correction(layer * g.per_layer + 3 * H, g.sender_index(layer))
        if c is None:
            return None
        return F.layer_norm(stream["mid"] - c[0], (cfg.d_model,), model.ln2_w[layer], model.ln2_b[layer], cfg.eps)

    def mlp_out(x: Tensor, name: str) -> None:
        i = g.sender_index(hk.layer_of(name))
        diff[i] = x - repl[i]

    def final(x: Tensor, name: str) -> Optional[Tensor]:
        c = correction(len(g.receivers) - 1, len(g.senders))
        return None if c is None else x - c[0]

    hooks = []
    for l in range(L):
        hooks += [(hk.name("resid_pre", l), pre), *((hk.name(x, l), qkv) for x in "qkv"), (hk.name("z", l), z),
                  (hk.name("resid_mid", l), mid), (hk.name("ln2", l), ln2), (hk.name("mlp_out", l), mlp_out)]
    hooks.append((hk.name("resid_post", L - 1), final))
    with torch.no_grad():
        return model.forward(cb.tokens, attention_mask=cb.attention_mask, unembed=False, hooks=hooks)


# ---------------------------------------------------------------------------- exact edge effects
def edge_effects(model, kb: Batch, metric: Metric, pairs: list[tuple[int, int]], delta: Tensor,
                 chunk_tokens: int = 8192, bar=None) -> list[float]:
    """The metric of the corrupted run with each edge's receiver given its sender's ``delta`` (direct path)."""
    cfg, L, H = model.cfg, model.cfg.n_layers, model.cfg.n_heads
    g = Graph(L, H)
    B, P = kb.tokens.shape
    _, cache = model.run(kb, names=[("resid_pre", l) for l in range(L)] + [("resid_mid", l) for l in range(L)],
                         logits=False)
    corrupt_final = model.forward(kb.tokens, attention_mask=kb.attention_mask, unembed=False)
    out: dict[int, float] = {}
    per_chunk = max(1, chunk_tokens // (B * P))
    groups: dict[tuple[int, bool], list[int]] = {}
    for k, (_, ri) in enumerate(pairs):
        layer = min(ri // g.per_layer, L)
        groups.setdefault((layer, layer < L and ri % g.per_layer == 3 * H), []).append(k)
    with torch.no_grad():
        for (layer, is_mlp), todo in groups.items():
            for c in range(0, len(todo), per_chunk):
                chunk = todo[c : c + per_chunk]
                V = len(chunk)
                d = torch.stack([delta[pairs[k][0]] for k in chunk])  # [V, B, P, d_model]
                if layer == L:
                    final = (corrupt_final[None] + d).reshape(V * B, P, -1)
                else:
                    name = "resid_mid" if is_mlp else "resid_pre"
                    start = cache[name, layer].repeat(V, 1, 1)
                    fed = (cache[name, layer][None] + d).reshape(V * B, P, -1)
                    recv = [pairs[k][1] % g.per_layer for k in chunk]
                    final = model.forward(start, start_at_layer=layer, start_at_mid=is_mlp, unembed=False,
                                          attention_mask=kb.attention_mask.repeat(V, 1),
                                          hooks=_feed_hooks(model, layer, is_mlp, recv, fed, B))
                out.update(zip(chunk, metric.from_stacked_resid(model, final, kb)))
                if bar is not None:
                    bar.update(V)
    return [out[k] for k in range(len(pairs))]


def _feed_hooks(model, layer: int, is_mlp: bool, recv: list[int], fed: Tensor, B: int) -> list:
    """Hooks giving variant j's receiver ``recv[j]`` the stream ``fed[j·B:(j+1)·B]`` as its input."""
    cfg, H = model.cfg, model.cfg.n_heads
    if is_mlp:
        x = F.layer_norm(fed, (cfg.d_model,), model.ln2_w[layer], model.ln2_b[layer], cfg.eps)
        return [(hk.name("ln2", layer), lambda act, name: x)]
    x = F.layer_norm(fed, (cfg.d_model,), model.ln1_w[layer], model.ln1_b[layer], cfg.eps)
    W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}
    b = {"q": model.b_Q, "k": model.b_K, "v": model.b_V}
    hooks = []
    for i, what in enumerate("qkv"):
        mine = [(j, r - i * H) for j, r in enumerate(recv) if i * H <= r < (i + 1) * H]
        if not mine:
            continue

        def edit(act: Tensor, name: str, mine=mine, what=what) -> Tensor:
            act = act.clone()
            for j, h in mine:
                rows = slice(j * B, (j + 1) * B)
                act[rows, :, h] = x[rows] @ W[what][layer, h] + b[what][layer, h]
            return act

        hooks.append((hk.name(what, layer), edit))
    return hooks
