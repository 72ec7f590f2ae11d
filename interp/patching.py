"""Activation patching: run the corrupted prompt, paste in one activation from the clean run.

"How much of the clean behaviour does this one activation bring back?" :func:`patch` answers
it for every site of a kind — each layer's residual stream, attention or MLP output, or each
head's output (``z``), queries, keys, values or pattern — optionally one position at a time,
and tabulates the metric with its normalised effect ``(patched − corrupted) / (clean − corrupted)``
(0: as corrupted, 1: as clean).

A head's output is its ``z`` (value bias included) times ``W_O`` in both weight modes (see
:class:`interp.HookedGPT2`), so ``site="z"`` patches exactly what the head writes.

Why it is fast and still exact
------------------------------
Patching an activation of layer L changes nothing before it. So :func:`patch` runs the clean and
the corrupted prompts once each, keeping only the activations the sites need; each patched
variant then resumes from the corrupted residual stream at the patched point — for ``z``,
``attn_out`` and ``resid_mid`` at layer L's MLP (``start_at_mid``), with the head's clean-minus-
corrupted write added in, for ``mlp_out`` and ``resid_post`` at layer L + 1 — variants are stacked
along the batch (in chunks of ``chunk_tokens``), and the metric unembeds only the positions it
reads. Patching one position p of the stream or of an output changes nothing before p (attention is
causal), so position-by-position variants recompute positions p … only, attending over the
corrupted run's keys and values before p (about 5× less work than the obvious loop on every head ×
position). The numbers equal the obvious loop (one full patched forward per site, ``fast=False``) to
float rounding, and TransformerLens's ``get_act_patch_*`` where the sites coincide (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from . import hooks as hk
from . import select
from .errors import InterpError
from .metrics import Metric, pair_metric
from .model import HookedGPT2
from .tokens import Batch

__all__ = ["patch", "paired_batches", "SITES", "HEAD_SITES", "BY"]

#: Patchable sites and what each is.
SITES: dict[str, str] = {
    "resid_pre": "the residual stream entering block L",
    "resid_mid": "the residual stream between block L's attention and its MLP",
    "resid_post": "the residual stream leaving block L",
    "attn_out": "attention layer L's output (every head and b_O)",
    "mlp_out": "MLP L's output",
    "z": "a head's output (its z, value bias included, times W_O)",
    "q": "a head's queries",
    "k": "a head's keys",
    "v": "a head's values (bias included)",
    "pattern": "a head's attention pattern (by position: one query's row)",
}
HEAD_SITES = ("z", "q", "k", "v", "pattern")
#: ``by=`` values: one site per layer (or per layer and position) for the residual stream and the
#: attention and MLP outputs; per head (or per head and position) for the head sites.
BY = {"layer": "each layer", "layer_pos": "each layer and position", "head": "each head",
      "head_pos": "each head and position"}


@dataclass(frozen=True)
class _Variant:
    layer: int
    head: Optional[int]
    pos: Optional[int]


def paired_batches(model: HookedGPT2, clean: Any, corrupted: Any) -> tuple[Batch, Batch]:
    """Clean and corrupted inputs as two batches of the same shape and padding, or a one-line error.

    Patching pastes activations position by position, so every clean prompt must have as many
    tokens as its corrupted partner (they may differ in content, which is the point).
    """
    c, k = model.to_batch(clean), model.to_batch(corrupted)
    if len(c) != len(k):
        raise InterpError(f"{len(c)} clean prompt(s) but {len(k)} corrupted: give them in pairs")
    for i in range(len(c)):
        a, b = int(c.lengths[i]), int(k.lengths[i])
        if a != b:
            ta, tb = c.tokens[i][c.attention_mask[i]].tolist(), k.tokens[i][k.attention_mask[i]].tolist()
            first = next((p for p, (x, y) in enumerate(zip(ta, tb)) if x != y), min(a, b))
            raise InterpError(
                f"clean and corrupted prompt {i} differ in length ({a} vs {b} tokens, first different token "
                f"at position {first}): patching pairs positions, so each pair must tokenize to the same length"
            )
    if not torch.equal(c.attention_mask, k.attention_mask):
        raise InterpError("clean and corrupted prompts are padded differently: pad both on the same side")
    return c, k


def _variants(model: HookedGPT2, site: str, by: str, heads: Any, layers: Any, positions: list[int]) -> list[_Variant]:
    per_head = site in HEAD_SITES
    allowed = ("head", "head_pos") if per_head else ("layer", "layer_pos")
    if by not in allowed:
        raise InterpError(f"by={by!r} does not fit site {site!r}: use one of {', '.join(allowed)}")
    if per_head:
        if layers is not None and heads is not None:
            raise InterpError("give layers (every head of each) or heads (those heads), not both")
        chosen = select.heads(model, heads) if heads is not None else [
            (l, h) for l in select.layers(model, layers) for h in range(model.cfg.n_heads)]
    else:
        if heads is not None:
            raise InterpError(f"site {site!r} is per layer: choose with layers=, not heads=")
        chosen = [(l, None) for l in select.layers(model, layers)]
    if by.endswith("_pos"):
        return [_Variant(l, h, p) for l, h in chosen for p in positions]
    return [_Variant(l, h, None) for l, h in chosen]


def patch(
    model: HookedGPT2,
    clean: Any,
    corrupted: Any,
    metric: Any = None,
    *,
    site: str = "z",
    by: Optional[str] = None,
    heads: Any = None,
    layers: Any = None,
    positions: Any = None,
    fast: bool = True,
    chunk_tokens: int = 8192,
    progress: Optional[bool] = None,
):
    """Activation patching: each site's clean activation pasted into the corrupted run, in turn.

    Args:
        model: the model.
        clean, corrupted: prompts, token ids or Batches of equal lengths, paired by row.
        metric: a :class:`~interp.metrics.Metric` (default: :func:`interp.metrics.contrast`, the
            logit difference between the clean run's top token and the corrupted run's at the
            last position), ``"loss"``, or a function of the logits.
        site: one of :data:`SITES`.
        by: ``"layer"`` / ``"layer_pos"`` for the residual stream and the attention and MLP
            outputs, ``"head"`` / ``"head_pos"`` for the head sites (default ``"head"`` or
            ``"layer"``). ``_pos`` patches one position at a time (columns of the right-padded
            batch: the tokens' positions).
        heads, layers: which sites (default: all), in :mod:`interp.select`'s grammar.
        positions: with ``*_pos``: which positions (default: all).
        fast: resume each variant from the corrupted run at the patched point (exact; see the
            module docs); ``False`` runs one full patched forward per site.
        chunk_tokens: how many tokens (variants × prompts × positions) one stacked pass may hold.
        progress: a progress bar (default: when stderr is a terminal).

    Returns:
        One row per site: ``layer, head, position`` (nullable), ``site``, ``value`` (the metric with
        that site patched) and ``effect`` (normalised: 0 = corrupted, 1 = clean). ``df.attrs`` holds
        ``metric``, ``clean`` and ``corrupted`` (the metric on the two unpatched runs).

    >>> from interp.testing import planted_model
    >>> from interp.metrics import LogitDiff
    >>> model = planted_model()
    >>> clean, corrupted = "a b c d e a b c d", "a b c d e f g h i"
    >>> df = patch(model, clean, corrupted, LogitDiff("e", "j"), progress=False)
    >>> print(df.nlargest(2, "effect")[["layer", "head", "effect"]].round(2).to_string(index=False))
     layer  head  effect
         1     0     1.0
         0     0     0.0
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if site not in SITES:
        raise InterpError(f"unknown site {site!r}: use one of {', '.join(SITES)}")
    by = by or ("head" if site in HEAD_SITES else "layer")
    if by not in BY:
        raise InterpError(f"unknown by={by!r}: use one of {', '.join(BY)}")
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise InterpError(f"chunk_tokens must be a positive int, not {chunk_tokens!r}")
    cb, kb = paired_batches(model, clean, corrupted)
    if positions is not None and not by.endswith("_pos"):
        raise InterpError(f"positions= goes with by='layer_pos' or 'head_pos', not by={by!r}")
    P = kb.tokens.shape[1]
    cols = list(range(P)) if positions is None else sorted(set(
        select.positions(Batch(kb.tokens[:1], torch.ones_like(kb.tokens[:1], dtype=torch.bool)), positions,
                         default="all").cols[0].tolist()))
    runs = _variants(model, site, by, heads, layers, cols)
    metric = pair_metric(model, cb, kb, metric)
    bar = tqdm(total=len(runs), desc=f"patch ({site})", unit="site", disable=None if progress is None else not progress)
    with torch.no_grad(), bar:
        if fast and not model.has_hooks:
            clean_v, corrupt_v, values = _fast(model, cb, kb, metric, site, runs, chunk_tokens, bar)
        else:
            clean_v, corrupt_v, values = _naive(model, cb, kb, metric, site, runs, bar)
    span = clean_v - corrupt_v
    df = pd.DataFrame({
        "layer": [v.layer for v in runs], "head": [v.head for v in runs], "position": [v.pos for v in runs],
        "site": site, "value": values,
        "effect": [(x - corrupt_v) / span if span != 0 else float("nan") for x in values],
    })
    df = select.tidy(df)
    df.attrs.update(metric=metric.name, clean=clean_v, corrupted=corrupt_v, model=model.cfg.name,
                    fold_ln=model.cfg.fold_ln)
    return df


# ---------------------------------------------------------------------------- the obvious loop
def _setter(site: str, v: _Variant, clean_act: Tensor):
    """A hook putting the clean activation in place at one site (all positions, or one)."""
    def fn(act: Tensor, name: str) -> Tensor:
        out = act.clone()
        if site == "pattern":  # [batch, head, query, key]
            idx = (slice(None), v.head, slice(None) if v.pos is None else v.pos)
        elif site in HEAD_SITES:  # [batch, pos, head, d_head]
            idx = (slice(None), slice(None) if v.pos is None else v.pos, v.head)
        else:  # [batch, pos, d_model]
            idx = (slice(None), slice(None) if v.pos is None else v.pos)
        out[idx] = clean_act[idx]
        return out

    return fn


def _naive(model, cb: Batch, kb: Batch, metric: Metric, site: str, runs: list[_Variant], bar):
    layers = sorted({v.layer for v in runs})
    names = [hk.name(site, l) for l in layers]
    clean_logits, clean = model.run(cb, names=names)
    corrupt_logits = model(kb.tokens, attention_mask=kb.attention_mask)
    clean_v = float(metric.from_logits(model, clean_logits, cb))
    corrupt_v = float(metric.from_logits(model, corrupt_logits, kb))
    values = []
    for v in runs:
        name = hk.name(site, v.layer)
        logits = model(kb.tokens, attention_mask=kb.attention_mask, hooks=[(name, _setter(site, v, clean[name]))])
        values.append(float(metric.from_logits(model, logits, kb)))
        bar.update()
    return clean_v, corrupt_v, values


# ---------------------------------------------------------------------------- the fast path
#: Where a patched variant resumes: (layer offset, start_at_mid), by site.
_RESUME = {"resid_pre": (0, False), "q": (0, False), "k": (0, False), "v": (0, False), "pattern": (0, False),
           "z": (0, True), "attn_out": (0, True), "resid_mid": (0, True), "mlp_out": (1, False),
           "resid_post": (1, False)}


#: Sites where patching one position p changes the stream at p only, so later layers need recompute
#: positions >= p alone (the keys and values before p are the corrupted run's).
_SUFFIX_SITES = ("z", "attn_out", "resid_mid", "resid_pre", "resid_post", "mlp_out")


def _fast(model, cb: Batch, kb: Batch, metric: Metric, site: str, runs: list[_Variant], chunk_tokens: int, bar):
    cfg, B, P = model.cfg, len(kb), kb.tokens.shape[1]
    layers = sorted({v.layer for v in runs})
    offset, mid = _RESUME[site]
    start_name = "resid_mid" if mid else "resid_pre"
    suffix = site in _SUFFIX_SITES and all(v.pos is not None for v in runs) and not kb.padded
    names = [hk.name(site, l) for l in layers]
    resume = [hk.name(start_name, l + offset) for l in layers if l + offset < cfg.n_layers]
    if suffix:  # every layer's keys and values, for the positions before each patched one
        resume += [hk.name(x, l) for l in range(min(layers) + offset, cfg.n_layers) for x in ("k", "v")]
    finals = [l for l in layers if l + offset == cfg.n_layers]
    clean_final, clean = _final_and_cache(model, cb, names)
    corrupt_final, corrupt = _final_and_cache(model, kb, names + resume)
    clean_v = float(metric.from_resid(model, clean_final, cb))
    corrupt_v = float(metric.from_resid(model, corrupt_final, kb))
    if suffix:
        values = _fast_suffix(model, kb, metric, site, runs, chunk_tokens, bar, clean, corrupt, corrupt_final)
        return clean_v, corrupt_v, values
    values: dict[int, float] = {}
    per_chunk = max(1, chunk_tokens // (B * P))
    for layer in layers:
        todo = [i for i, v in enumerate(runs) if v.layer == layer]
        base = corrupt_final if layer in finals else corrupt[hk.name(start_name, layer + offset)]
        clean_act, corrupt_act = clean[hk.name(site, layer)], corrupt[hk.name(site, layer)]
        if site == "z":  # what each head writes, clean minus corrupted: [head, batch, pos, d_model]
            delta = torch.einsum("bphd,hdm->hbpm", clean_act - corrupt_act, model.W_O[layer])
        for c in range(0, len(todo), per_chunk):
            chunk = [runs[i] for i in todo[c : c + per_chunk]]
            resid, hooks = _inputs(model, site, layer, chunk, base, clean_act, corrupt_act,
                                   delta if site == "z" else None)
            if layer in finals:
                out = resid
            else:
                out = model.forward(resid, attention_mask=kb.attention_mask.repeat(len(chunk), 1), hooks=hooks,
                                    start_at_layer=layer + offset, start_at_mid=mid, unembed=False)
            values.update(zip(todo[c : c + per_chunk], metric.from_stacked_resid(model, out, kb)))
            bar.update(len(chunk))
    return clean_v, corrupt_v, [values[i] for i in range(len(runs))]


def _fast_suffix(model, kb: Batch, metric: Metric, site: str, runs: list[_Variant], chunk_tokens: int, bar,
                 clean: dict, corrupt: dict, corrupt_final: Tensor) -> list[float]:
    """Position-by-position patching, recomputing only the positions from the patched one on."""
    cfg, B, P = model.cfg, len(kb), kb.tokens.shape[1]
    offset, mid = _RESUME[site]
    start_name = "resid_mid" if mid else "resid_pre"
    values: dict[int, float] = {}
    read = metric.positions(kb)  # None: every position
    for layer in sorted({v.layer for v in runs}):
        start = layer + offset
        base = corrupt_final if start == cfg.n_layers else corrupt[hk.name(start_name, start)]
        clean_act, corrupt_act = clean[hk.name(site, layer)], corrupt[hk.name(site, layer)]
        if site == "z":  # what each head writes, clean minus corrupted: [head, batch, pos, d_model]
            change = torch.einsum("bphd,hdm->hbpm", clean_act - corrupt_act, model.W_O[layer])
        elif site in ("attn_out", "mlp_out"):
            change = (clean_act - corrupt_act)[None]
        else:  # the residual stream itself
            change = (clean_act - base)[None]
        kv = {l: (corrupt[hk.name("k", l)], corrupt[hk.name("v", l)]) for l in range(start, cfg.n_layers)}
        for p in sorted({v.pos for v in runs if v.layer == layer}):
            todo = [i for i, v in enumerate(runs) if v.layer == layer and v.pos == p]
            per_chunk = max(1, chunk_tokens // (B * (P - p)))
            for c in range(0, len(todo), per_chunk):
                chunk = todo[c : c + per_chunk]
                V = len(chunk)
                which = torch.tensor([runs[i].head if site == "z" else 0 for i in chunk], device=base.device)
                x = base[:, p:].repeat(V, 1, 1)  # [V·B, P - p, d_model]
                x[:, 0] += change[which][:, :, p].reshape(V * B, -1)
                x = _suffix_forward(model, x, start, mid, p, kv, V)
                if read is None:  # the metric reads every position: the whole stream of each variant
                    out = corrupt_final.repeat(V, 1, 1)
                    out[:, p:] = x
                    got = metric.from_stacked_resid(model, out, kb)
                else:  # only the rows it reads: from the suffix where they are in it, else the corrupted run's
                    rows = corrupt_final[torch.arange(B), read].repeat(V, 1)
                    late = (read >= p).repeat(V)
                    rows[late] = x[torch.arange(V * B, device=x.device)[late], read.repeat(V)[late] - p]
                    got = metric.from_stacked_rows(model, rows, kb)
                values.update(zip(chunk, got))
                bar.update(V)
    return [values[i] for i in range(len(runs))]


def _suffix_forward(model: HookedGPT2, x: Float[Tensor, "rows suffix d_model"], start: int, mid: bool, p: int,
                    kv: dict, repeats: int) -> Float[Tensor, "rows suffix d_model"]:
    """Blocks ``start …`` for positions ``p …`` only, with the earlier positions' keys and values given.

    Causal attention makes position ``q`` depend only on positions ``<= q``: when the stream differs
    from a run only from position ``p`` on, the keys and values before ``p`` are that run's, and
    queries from ``p`` on attend over them and over their own. With ``mid`` the first block starts
    at its MLP. Same arithmetic as the model's forward pass (checked against it to float rounding).
    """
    cfg = model.cfg
    H, D, S = cfg.n_heads, cfg.d_head, x.shape[1]
    allowed = torch.ones(S, p + S, dtype=torch.bool, device=x.device).tril(p)  # query p+i sees keys <= p+i
    for layer in range(start, cfg.n_layers):
        if not (mid and layer == start):
            h = F.layer_norm(x, (cfg.d_model,), model.ln1_w[layer], model.ln1_b[layer], cfg.eps)
            q, k, v = (h @ model._W_qkv[layer] + model._b_qkv[layer]).view(*x.shape[:2], 3, H, D).unbind(2)
            k0, v0 = (t[:, :p].repeat(repeats, 1, 1, 1) for t in kv[layer])
            k, v = torch.cat([k0, k], 1), torch.cat([v0, v], 1)
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=allowed).transpose(1, 2)
            x = x + z.reshape(*x.shape[:2], H * D) @ model.W_O[layer].reshape(H * D, -1) + model.b_O[layer]
        x = x + model.mlp(layer, x)
    return x


def _final_and_cache(model: HookedGPT2, batch: Batch, names: list) -> tuple[Tensor, dict]:
    """The final residual stream (no unembedding) and the named activations of one run."""
    kept: dict[str, Tensor] = {}
    final = model.forward(batch.tokens, attention_mask=batch.attention_mask, unembed=False,
                          hooks=[(n, lambda x, name: kept.__setitem__(name, x)) for n in dict.fromkeys(names)])
    return final, kept


def _pos_mask(chunk: list[_Variant], P: int, device) -> Float[Tensor, "variant pos"]:
    """1 where each variant patches (every position, or its one), as floats for blending."""
    m = torch.zeros(len(chunk), P, device=device)
    for k, v in enumerate(chunk):
        if v.pos is None:
            m[k] = 1
        else:
            m[k, v.pos] = 1
    return m


def _inputs(model, site: str, layer: int, chunk: list[_Variant], base: Tensor, clean_act: Tensor,
            corrupt_act: Tensor, delta: Optional[Tensor]):
    """The stacked residual stream to resume from, and hooks for sites inside the attention."""
    V = len(chunk)
    B, P = base.shape[:2]
    m = _pos_mask(chunk, P, base.device)  # [variant, pos]
    if site in ("resid_pre", "resid_mid", "resid_post"):  # the stream itself: clean where patched
        w = m[:, None, :, None]
        return (base[None] + w * (clean_act - corrupt_act)[None]).reshape(V * B, P, -1), []
    if site in ("attn_out", "mlp_out"):  # the layer's write, clean instead of corrupted
        return (base[None] + m[:, None, :, None] * (clean_act - corrupt_act)[None]).reshape(V * B, P, -1), []
    if site == "z":  # the head's write, clean instead of corrupted
        heads = torch.tensor([v.head for v in chunk], device=base.device)
        return (base[None] + m[:, None, :, None] * delta[heads]).reshape(V * B, P, -1), []
    resid = base.repeat(V, 1, 1)
    if site == "pattern":  # [batch, head, query, key]: the head's rows (one query's row by position)
        mask = torch.zeros(V, B, model.cfg.n_heads, P, 1, dtype=torch.bool, device=base.device)
        for k, v in enumerate(chunk):
            mask[k, :, v.head] = m[k][:, None].bool()
        mask = mask.reshape(V * B, model.cfg.n_heads, P, 1)
    else:  # q, k, v [batch, pos, head, d_head]
        mask = torch.zeros(V, B, P, model.cfg.n_heads, 1, dtype=torch.bool, device=base.device)
        for k, v in enumerate(chunk):
            mask[k, :, :, v.head] = m[k][:, None].bool()
        mask = mask.reshape(V * B, P, model.cfg.n_heads, 1)
    clean_rep = clean_act.repeat(V, *([1] * (clean_act.ndim - 1)))

    def fn(act: Tensor, name: str) -> Tensor:
        return torch.where(mask, clean_rep, act)

    return resid, [(hk.name(site, layer), fn)]
