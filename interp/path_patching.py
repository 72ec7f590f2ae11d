"""Path patching: a sender head's clean output delivered along one path only.

Activation patching a head's output changes everything downstream of it. Path patching
(Wang et al. 2022, "Interpretability in the Wild") asks about one *edge*: does the previous-token
head matter to the induction head's keys? The senders' clean-minus-corrupted write (what the head
writes: :meth:`~interp.HookedGPT2.head_write`) reaches the chosen input of each receiver — its own
copy of the residual stream entering its layer, before ``ln1``, for its queries, keys or values
(or the final residual stream, for ``"logits"``) — and nothing else: every other head reads the
corrupted run.

Wang et al.'s three steps, which the default follows exactly:

1. run the clean and the corrupted inputs, keeping the senders' outputs;
2. on the corrupted run, patch the senders' clean outputs in, freeze every other head at its
   corrupted output, recompute the MLPs (``mlps="recomputed"``), and cache each receiver's input;
3. rerun the corrupted input with each receiver's input replaced by its cached one, everything
   downstream recomputed, and read the metric.

So with receivers in several layers, each sees the senders' path only — not what an earlier
receiver changed (that receiver is frozen in step 2). ``cascade=True`` lets a later receiver see
the live stream of step 3 instead, earlier receivers' changes included (the rule interp used
before); with receivers in one layer the two are the same. ``mlps="frozen"`` delivers only the
senders' write itself — the direct path, TransformerLens's ``get_act_patch_direct_path`` (a test
matches it).

It is cheap: nothing before the first receiver's layer changes, so every variant resumes from the
corrupted run there (:class:`interp.engine.Engine`; the MLPs on the way cost one MLP pass per
layer); for ``"logits"`` only the MLPs are rerun.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from . import select
from .engine import Engine, Stacked, Start, check_span, paired_batches
from .errors import InterpError
from .metrics import pair_metric
from .model import HookedGPT2

__all__ = ["path_patch", "path_patch_scan", "MLPS"]

MLPS = {"recomputed": "the MLPs between senders and receivers rerun on the changed stream (Wang et al.)",
        "frozen": "the MLPs keep their corrupted outputs: the direct path only"}


def _label(receivers: Any) -> str:
    return "logits" if receivers == "logits" else ",".join(f"L{l}H{h}.{x}" for l, h, x in receivers)


def _check(model: HookedGPT2, recv: Any, senders: list, mlps: Any) -> int:
    """The first receiver layer, after checking that every sender comes before it."""
    if mlps not in MLPS:
        raise InterpError(f"mlps must be 'recomputed' (Wang et al.: MLPs in between rerun) or 'frozen' "
                          f"(the direct path only), not {mlps!r}")
    first = model.cfg.n_layers if recv == "logits" else min(l for l, _, _ in recv)
    late = [f"{l}.{h}" for l, h in senders if l >= first]
    if late:
        raise InterpError(f"sender {late[0]} is not before every receiver ({_label(recv)}): a path runs forward, "
                          "from an earlier layer to a later one")
    return first


def _values(engine: Engine, cb, kb, metric, variants: list[list], recv: Any, mlps: str, cascade: bool, bar=None):
    """The metric with each variant's senders delivered to the receivers, and the clean and corrupted values."""
    model, cfg = engine.model, engine.cfg
    L = cfg.n_layers
    first = L if recv == "logits" else min(l for l, _, _ in recv)
    upto = L if recv == "logits" else max(l for l, _, _ in recv)
    layers = sorted({l for hs in variants for l, _ in hs})
    recv_layers = [] if recv == "logits" else sorted({l for l, _, _ in recv})
    clean = engine.record(cb, [("z", l) for l in layers])
    corrupt = engine.record(kb, [("z", l) for l in layers] + [("resid_mid", l) for l in range(upto)]
                            + [("mlp_out", l) for l in range(upto)] + [("resid_pre", l) for l in recv_layers])
    clean_v = float(metric.from_resid(model, clean.final, cb))
    corrupt_v = float(metric.from_resid(model, corrupt.final, kb))
    check_span(metric, clean_v, corrupt_v)
    change = {l: model.head_write(l, clean[("z", l)] - corrupt[("z", l)]) for l in layers}  # [B, P, head, d_model]
    B, P = kb.tokens.shape

    def build(chunk: list[list], start: Start) -> Stacked:
        V = len(chunk)
        writes = {}
        for k, senders in enumerate(chunk):  # each variant's senders write in its own block of rows
            for l, h in senders:
                w = writes.setdefault(l, corrupt.final.new_zeros(V * B, P, cfg.d_model))
                w[k * B : (k + 1) * B] += change[l][:, :, h]
        delta_at = _stream_deltas(model, writes, upto, mlps, corrupt, V)
        if recv == "logits":
            return Stacked(delta=delta_at[upto].view(V, B, P, -1))
        hooks, live = [], {}
        for layer in recv_layers:
            if cascade:  # the live stream of this run, earlier receivers' changes included
                hooks.append((f"blocks.{layer}.hook_resid_pre", lambda x, name, layer=layer: live.__setitem__(layer, x)))
                stream = lambda rows, layer=layer: (live[layer] + delta_at[layer])[rows]  # noqa: E731
            else:  # Wang et al.'s step 2: the corrupted stream with the senders' path only
                base = corrupt[("resid_pre", layer)].repeat(V, 1, 1) + delta_at[layer]
                stream = lambda rows, base=base: base[rows]  # noqa: E731
            hooks += engine.feed(layer, [(x, h, slice(None)) for l, h, x in recv if l == layer], stream)
        return Stacked(hooks=hooks)

    values = engine.sweep(corrupt, variants, lambda _: Start(first), build, metric, bar)
    return values, clean_v, corrupt_v


def _stream_deltas(model: HookedGPT2, writes: dict[int, Tensor], upto: int, mlps: str, corrupt, V: int) -> dict[int, Tensor]:
    """How the senders change the residual stream entering each layer ``0 … upto``, every other head frozen.

    ``writes[l]`` is what the senders of layer ``l`` add (``[rows, pos, d_model]``); with
    ``mlps="recomputed"`` each MLP in between is rerun on the changed stream (against the corrupted
    run's ``resid_mid`` and ``mlp_out``), with ``"frozen"`` it keeps its corrupted output.
    """
    delta, out, started = torch.zeros_like(next(iter(writes.values()))), {}, False
    for layer in range(upto):
        out[layer] = delta
        if layer in writes:
            delta, started = delta + writes[layer], True
        if mlps == "recomputed" and started:  # before the first sender nothing has changed
            mid, mlp_out = (corrupt[(x, layer)].repeat(V, 1, 1) for x in ("resid_mid", "mlp_out"))
            delta = delta + model.mlp(layer, mid + delta) - mlp_out
    out[upto] = delta
    return out


def _table(model, values, clean_v, corrupt_v, metric, senders: list[list], recv, mlps: str, cascade: bool):
    import pandas as pd

    span = clean_v - corrupt_v
    one = [len(s) == 1 for s in senders]
    df = pd.DataFrame({
        "sender": ["+".join(select.head_label(h) for h in s) for s in senders],
        "sender_layer": [s[0][0] if ok else pd.NA for s, ok in zip(senders, one)],
        "sender_head": [s[0][1] if ok else pd.NA for s, ok in zip(senders, one)],
        "receiver": _label(recv), "value": values, "effect": [(v - corrupt_v) / span for v in values],
    })
    df.attrs.update(metric=metric.name, clean=clean_v, corrupted=corrupt_v, model=model.cfg.name,
                    fold_ln=model.cfg.fold_ln, mlps=mlps, cascade=cascade)
    return select.tidy(df)


def path_patch(
    model: HookedGPT2, clean: Any, corrupted: Any, senders: Any, receivers: Any, metric: Any = None, *,
    mlps: str = "recomputed", cascade: bool = False,
):
    """The metric with the senders' clean outputs delivered only to the receivers' chosen inputs.

    Args:
        senders: heads, in :mod:`interp.select`'s grammar (``[(0, 4)]``, ``"0.4,0.5"``), all delivered at once.
        receivers: ``"logits"`` or ``(layer, head, "q"|"k"|"v")`` triples (``"1.0.k,1.2.k"``,
            :func:`interp.select.receivers`); every receiver must be in a later layer than every sender.
        metric: as :func:`interp.patching.patch` (default: :func:`interp.metrics.contrast`).
        mlps: ``"recomputed"`` (Wang et al.) or ``"frozen"`` (the direct path); see the module docs.
        cascade: let a later receiver see what earlier receivers changed (see the module docs).

    Returns:
        A one-row DataFrame as :func:`path_patch_scan`'s: ``sender`` (``L0H4+L0H5``), ``receiver``,
        ``value`` and ``effect`` (normalised as in patching: 0 = corrupted, 1 = clean); ``df.attrs``
        holds ``metric``, ``clean``, ``corrupted``, ``mlps``, ``cascade``.

    >>> from interp.testing import planted_model
    >>> from interp.metrics import LogitDiff
    >>> m = planted_model()
    >>> clean, corrupted = "a b c d e a b c d", "a b c x e a b c d"   # the earlier 'd' replaced
    >>> df = path_patch(m, clean, corrupted, senders="0.0", receivers="1.0.k", metric=LogitDiff("e", "a"))
    >>> round(float(df.loc[0, "effect"]), 2)   # the previous-token head, into the induction head's keys: all of it
    1.0
    """
    cb, kb = paired_batches(model, clean, corrupted)
    send = select.heads(model, senders)
    recv = select.receivers(model, receivers)
    _check(model, recv, send, mlps)
    metric = pair_metric(model, cb, kb, metric)
    with torch.no_grad():
        values, c, k = _values(Engine(model), cb, kb, metric, [send], recv, mlps, bool(cascade))
    return _table(model, values, c, k, metric, [send], recv, mlps, bool(cascade))


def path_patch_scan(
    model: HookedGPT2,
    clean: Any,
    corrupted: Any,
    receivers: Any,
    metric: Any = None,
    *,
    senders: Any = None,
    mlps: str = "recomputed",
    cascade: bool = False,
    chunk_tokens: int = 8192,
    progress: Optional[bool] = None,
):
    """Path patching from each sender head in turn into a fixed set of receivers.

    Args:
        receivers, mlps, cascade: as :func:`path_patch`.
        senders: the heads to try, each alone (default: every head before the receivers' first layer).
        chunk_tokens: how many tokens (senders × prompts × positions) one stacked pass may hold.

    Returns:
        One row per sender: ``sender, sender_layer, sender_head, receiver`` (the receivers, e.g.
        ``L1H0.k``), ``value`` and ``effect``; ``df.attrs`` as :func:`path_patch`'s.
    """
    from tqdm.auto import tqdm

    engine = Engine(model, chunk_tokens)
    cb, kb = paired_batches(model, clean, corrupted)
    recv = select.receivers(model, receivers)
    first = model.cfg.n_layers if recv == "logits" else min(l for l, _, _ in recv)
    if senders is None:
        if first == 0:
            raise InterpError(f"no head is before the receivers ({_label(recv)}): they are in layer 0")
        send = [(l, h) for l in range(first) for h in range(model.cfg.n_heads)]
    else:
        send = select.heads(model, senders)
    _check(model, recv, send, mlps)
    metric = pair_metric(model, cb, kb, metric)
    variants = [[s] for s in send]
    with torch.no_grad(), tqdm(total=len(send), desc="path patch", unit="sender",
                               disable=None if progress is None else not progress) as bar:
        values, c, k = _values(engine, cb, kb, metric, variants, recv, mlps, bool(cascade), bar)
    return _table(model, values, c, k, metric, variants, recv, mlps, bool(cascade))
