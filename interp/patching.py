"""Activation patching: run the corrupted prompt, paste in one activation from the clean run.

"How much of the clean behaviour does this one activation bring back?" :func:`patch` answers
it for every site of a kind — each layer's residual stream, attention or MLP output, or each
head's output (``z``), queries, keys, values or pattern — optionally one position at a time,
and tabulates the metric with its normalised effect ``(patched − corrupted) / (clean − corrupted)``
(0: as corrupted, 1: as clean).

A head's output is its ``z`` (value bias included) times ``W_O`` in both weight modes (see
:class:`interp.HookedGPT2`), so ``site="z"`` patches exactly what the head writes.

Positions are token positions within each prompt (BOS = 0, negative from its end), so a left- and
a right-padded batch give the same table.

Why it is fast and still exact
------------------------------
Patching an activation of layer L changes nothing before it. So :func:`patch` runs the clean and
the corrupted prompts once each, keeping only the activations the sites need; each patched
variant then resumes from the corrupted residual stream at the patched point — for ``z``,
``attn_out`` and ``resid_mid`` at layer L's MLP, with the head's clean-minus-corrupted write
added in, for ``mlp_out`` and ``resid_post`` at layer L + 1 — and :class:`interp.engine.Engine`
stacks the variants along the batch (in chunks of ``chunk_tokens``); the metric unembeds only the
positions it reads. Patching one position p of the stream or of an output changes nothing before
p (attention is causal), so position-by-position variants recompute positions p … only, attending
over the corrupted run's keys and values before p (about 5× less work than the obvious loop on
every head × position). The numbers equal the obvious loop (one full patched forward per site,
``fast=False``) to float rounding, and TransformerLens's ``get_act_patch_*`` where the sites
coincide (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import hooks as hk
from . import select
from .engine import Engine, Run, Stacked, Start, check_span, paired_batches
from .errors import InterpError
from .metrics import Metric, pair_metric
from .model import HookedGPT2
from .tokens import Batch

__all__ = ["patch", "by_strength", "SITES", "HEAD_SITES", "BY"]

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
    pos: Optional[int]  # index into the table's positions (None: every position)


def _variants(model: HookedGPT2, site: str, by: str, heads: Any, layers: Any, n_positions: int) -> list[_Variant]:
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
        return [_Variant(l, h, p) for l, h in chosen for p in range(n_positions)]
    return [_Variant(l, h, None) for l, h in chosen]


def _positions(batch: Batch, positions: Any) -> tuple[list[int], Int[Tensor, "n_positions batch"]]:
    """The table's positions and, for each, its column in every prompt (-1 where a prompt has no such token).

    ``None``, ``"all"`` or a slice: token positions ``0 … longest − 1`` (sliced), each prompt patched where it
    has that token; ints (negative from each prompt's end): exactly those, every prompt must have them.
    """
    first = batch.attention_mask.int().argmax(-1)
    lengths = batch.lengths
    if positions is None or isinstance(positions, (slice, str)):
        spec = select.parse_positions(positions) if isinstance(positions, str) else positions
        if isinstance(spec, (list, tuple)):
            return _positions(batch, spec)
        labels = list(range(int(lengths.max())))[spec if isinstance(spec, slice) else slice(None)]
        if not labels:
            raise InterpError(f"positions {positions!r} select no token (the longest prompt has {int(lengths.max())})")
        p = torch.tensor(labels, device=first.device)[:, None]
        return labels, torch.where(p < lengths[None], first[None] + p, -1)
    chosen = select.positions(batch, positions)
    if not bool(chosen.valid.all()):
        raise InterpError(f"positions {positions!r} select different numbers of tokens in different prompts")
    labels = [int(x) for x in (positions.tolist() if isinstance(positions, Tensor) else
                               [positions] if isinstance(positions, int) else positions)]
    return labels, chosen.cols.T


def patch(
    model: Any,
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
            ``"layer"``). ``_pos`` patches one token position at a time.
        heads, layers: which sites (default: all), in :mod:`interp.select`'s grammar.
        positions: with ``*_pos``: which token positions, counted within each prompt (negative from
            its end; default: every position of the longest prompt, each prompt patched where it has it).
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
    engine = Engine(model, chunk_tokens)
    cb, kb = paired_batches(model, clean, corrupted)
    if positions is not None and not by.endswith("_pos"):
        raise InterpError(f"positions= goes with by='layer_pos' or 'head_pos', not by={by!r}")
    labels, cols = _positions(kb, positions) if by.endswith("_pos") else ([], None)
    runs = _variants(model, site, by, heads, layers, len(labels))
    metric = pair_metric(model, cb, kb, metric)
    bar = tqdm(total=len(runs), desc=f"patch ({site})", unit="site", disable=None if progress is None else not progress)
    with torch.no_grad(), bar:
        if fast and not model.has_hooks:
            clean_v, corrupt_v, values = _fast(engine, cb, kb, metric, site, runs, cols, bar)
        else:
            clean_v, corrupt_v, values = _naive(model, cb, kb, metric, site, runs, cols, bar)
    span = clean_v - corrupt_v
    df = pd.DataFrame({
        "layer": [v.layer for v in runs], "head": [v.head for v in runs],
        "position": [None if v.pos is None else labels[v.pos] for v in runs],
        "site": site, "value": values, "effect": [(x - corrupt_v) / span for x in values],
    })
    df = select.tidy(df)
    df.attrs.update(metric=metric.name, clean=clean_v, corrupted=corrupt_v, model=model.cfg.name,
                    fold_ln=model.cfg.fold_ln)
    return df


def _where(v: _Variant, cols: Optional[Tensor], B: int, P: int, device) -> Float[Tensor, "batch pos"]:
    """1 where variant ``v`` patches (every position, or its token in each prompt), as floats for blending."""
    m = torch.zeros(B, P, device=device)
    if v.pos is None:
        m[:] = 1
    else:
        c = cols[v.pos]
        rows = (c >= 0).nonzero()[:, 0]
        m[rows, c[rows]] = 1
    return m


# ---------------------------------------------------------------------------- the obvious loop
def _setter(site: str, v: _Variant, clean_act: Tensor, where: Tensor):
    """A hook putting the clean activation in place at one site (all positions, or one per prompt)."""
    def fn(act: Tensor, name: str) -> Tensor:
        w = where.bool()  # [batch, pos]
        if site == "pattern":  # [batch, head, query, key]: the head's query rows
            m = torch.zeros_like(act, dtype=torch.bool)
            m[:, v.head] = w[:, :, None]
        elif site in HEAD_SITES:  # [batch, pos, head, d_head]
            m = torch.zeros_like(act, dtype=torch.bool)
            m[:, :, v.head] = w[..., None]
        else:  # [batch, pos, d_model]
            m = w[..., None].expand_as(act)
        return torch.where(m, clean_act, act)

    return fn


def _naive(model, cb: Batch, kb: Batch, metric: Metric, site: str, runs: list[_Variant], cols, bar):
    layers = sorted({v.layer for v in runs})
    names = [hk.name(site, l) for l in layers]
    clean_logits, clean = model.run(cb, names=names)
    corrupt_logits = model(kb.tokens, attention_mask=kb.attention_mask)
    clean_v = float(metric.from_logits(model, clean_logits, cb))
    corrupt_v = float(metric.from_logits(model, corrupt_logits, kb))
    check_span(metric, clean_v, corrupt_v)
    B, P = kb.tokens.shape
    values = []
    for v in runs:
        name = hk.name(site, v.layer)
        where = _where(v, cols, B, P, kb.tokens.device)
        logits = model(kb.tokens, attention_mask=kb.attention_mask, hooks=[(name, _setter(site, v, clean[name], where))])
        values.append(float(metric.from_logits(model, logits, kb)))
        bar.update()
    return clean_v, corrupt_v, values


# ---------------------------------------------------------------------------- the fast path
#: Where a patched variant resumes: (layer offset, resume at the MLP), by site.
_RESUME = {"resid_pre": (0, False), "q": (0, False), "k": (0, False), "v": (0, False), "pattern": (0, False),
           "z": (0, True), "attn_out": (0, True), "resid_mid": (0, True), "mlp_out": (1, False),
           "resid_post": (1, False)}

#: Sites where patching one position p changes the stream at p only, so later layers need recompute
#: positions >= p alone (the keys and values before p are the corrupted run's).
_SUFFIX_SITES = ("z", "attn_out", "resid_mid", "resid_pre", "resid_post", "mlp_out")


def _fast(engine: Engine, cb: Batch, kb: Batch, metric: Metric, site: str, runs: list[_Variant], cols, bar):
    model, cfg = engine.model, engine.cfg
    layers = sorted({v.layer for v in runs})
    offset, mid = _RESUME[site]
    suffix = site in _SUFFIX_SITES and all(v.pos is not None for v in runs)

    def start_of(v: _Variant) -> Start:
        col = 0
        if suffix:
            c = cols[v.pos]
            col = int(c[c >= 0].min())  # the first column any prompt patches: nothing before it changes
        return Start(min(v.layer + offset, cfg.n_layers), mid and v.layer + offset < cfg.n_layers, col)

    starts = {start_of(v) for v in runs}
    names = [hk.name(site, l) for l in layers]
    clean = engine.record(cb, names)
    corrupt = engine.record(kb, names + [n for s in starts for n in s.names(cfg.n_layers)])
    clean_v = float(metric.from_resid(model, clean.final, cb))
    corrupt_v = float(metric.from_resid(model, corrupt.final, kb))
    check_span(metric, clean_v, corrupt_v)
    change = {l: _change(engine, site, l, clean, corrupt) for l in layers}
    B, P = kb.tokens.shape

    def build(chunk: list[_Variant], start: Start) -> Stacked:
        layer = chunk[0].layer
        w = torch.stack([_where(v, cols, B, P, kb.tokens.device) for v in chunk])[:, :, start.col:]  # [V, B, pos]
        if site in _SUFFIX_SITES:  # the stream at the start changes by the site's clean − corrupted difference
            d = change[layer]
            if site == "z":
                d = d[torch.tensor([v.head for v in chunk], device=d.device)]
            return Stacked(w[..., None] * d[..., start.col:, :])
        return Stacked(hooks=_site_hooks(engine, site, layer, chunk, w, clean, B))

    values = engine.sweep(corrupt, runs, start_of, build, metric, bar)
    return clean_v, corrupt_v, values


def _change(engine: Engine, site: str, layer: int, clean: Run, corrupt: Run) -> Optional[Tensor]:
    """How patching the whole site changes the stream where variants resume, ``[1 or head, batch, pos, d_model]``."""
    if site not in _SUFFIX_SITES:
        return None
    diff = clean[(site, layer)] - corrupt[(site, layer)]
    if site == "z":  # what each head writes, clean minus corrupted: [head, batch, pos, d_model]
        return engine.model.head_write(layer, diff).permute(2, 0, 1, 3)
    return diff[None]


def _site_hooks(engine: Engine, site: str, layer: int, chunk: list[_Variant], w: Tensor, clean: Run, B: int) -> list:
    """A hook putting the clean activation in place inside the attention (q, k, v, pattern), variant by row block."""
    H = engine.cfg.n_heads
    V, P = len(chunk), w.shape[-1]
    heads = torch.zeros(V, B, H, dtype=torch.bool, device=w.device)
    for k, v in enumerate(chunk):
        heads[k, :, v.head] = True
    if site == "pattern":  # [batch, head, query, key]: the head's query rows
        mask = (heads[:, :, :, None] & w.bool()[:, :, None, :])[..., None].reshape(V * B, H, P, 1)
    else:  # q, k, v [batch, pos, head, d_head]
        mask = (w.bool()[:, :, :, None] & heads[:, :, None, :])[..., None].reshape(V * B, P, H, 1)
    clean_act = clean[(site, layer)]
    clean_rep = clean_act.repeat(V, *([1] * (clean_act.ndim - 1)))

    def fn(act: Tensor, name: str) -> Tensor:
        return torch.where(mask, clean_rep, act)

    return [(hk.name(site, layer), fn)]


def by_strength(df: Any, column: str = "effect") -> Any:
    """``df``'s rows strongest first: by ``|column|``, descending, ties in their original order.

    How patching, path patching and ablation scans are read (the command line prints them so).

    >>> import pandas as pd
    >>> by_strength(pd.DataFrame({"effect": [0.1, -0.5, 0.3]}))["effect"].tolist()
    [-0.5, 0.3, 0.1]
    """
    if column not in df.columns:
        raise InterpError(f"no column {column!r} to rank by: the table has {', '.join(map(str, df.columns))}")
    return df.reindex(df[column].abs().sort_values(ascending=False, kind="stable").index)
