"""Path patching: a sender head's clean output delivered along one path only.

Activation patching a head's output changes everything downstream of it. Path patching
(Wang et al. 2022, "Interpretability in the Wild") asks about one *edge*: does the previous-token
head matter to the induction head's keys? The senders' clean-minus-corrupted write
``(z_clean − z_corrupted) · W_O`` reaches the chosen input of each receiver — its own copy of the
residual stream entering its layer, before ``ln1``, for its queries, keys or values (or the final
residual stream, for ``"logits"``) — and nothing else: every other head reads the corrupted run.

``mlps="recomputed"`` (the default) is Wang et al.'s procedure: every other head is frozen at its
corrupted output and the MLPs between the senders and a receiver are recomputed on the changed
stream, so the path sender → receiver includes sender → MLP → receiver (an MLP is part of the
"residual stream" the heads talk through). ``mlps="frozen"`` delivers only the senders' write
itself — the direct path, TransformerLens's ``get_act_patch_direct_path`` (a test matches it).
Downstream of a receiver the run is recomputed as usual, so its changed output reaches the logits;
with several receivers, each gets the senders' path on top of the live stream at its layer.

It is cheap: nothing before the first receiver's layer changes, so every variant resumes from the
corrupted run there (the MLPs on the way cost one MLP pass per layer); for ``"logits"`` only the
MLPs are rerun.
"""

from __future__ import annotations

import re
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
from .patching import paired_batches
from .tokens import Batch

__all__ = ["path_patch", "path_patch_scan", "receivers_of", "INPUTS"]

#: A receiver head's inputs that a path can end in.
INPUTS = ("q", "k", "v")
Receiver = tuple[int, int, str]
_RECEIVER = re.compile(r"\s*L?(\d+)\s*[.:H]\s*(\d+|\*)\s*[.:]\s*([qkv])\s*", re.IGNORECASE)


def receivers_of(model: HookedGPT2, spec: Any) -> Any:
    """``"logits"``, or checked ``(layer, head, input)`` triples from ``"1.0.k,1.0.q"`` / ``[(1, 0, "k")]``.

    ``"1.*.k"`` is every head of layer 1, keys.

    >>> from interp.testing import planted_model
    >>> receivers_of(planted_model(), "1.0.k, 1.1.q")
    [(1, 0, 'k'), (1, 1, 'q')]
    >>> len(receivers_of(planted_model(), "1.*.v"))
    4
    """
    if isinstance(spec, str) and spec.strip() == "logits":
        return "logits"
    items = [s for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[2], str):
        items = [spec]
    out: list[Receiver] = []
    expanded: list = []
    for item in items:
        if isinstance(item, str):
            m = _RECEIVER.fullmatch(item)
            if not m:
                raise InterpError(f"cannot read receiver {item.strip()!r}: write layer.head.input, e.g. '1.0.k' "
                                  "or '1.*.k' (input q, k or v), or 'logits'")
            heads = range(model.cfg.n_heads) if m.group(2) == "*" else [int(m.group(2))]
            expanded += [(int(m.group(1)), h, m.group(3).lower()) for h in heads]
        else:
            expanded.append(item)
    for item in expanded:
        if not (isinstance(item, (tuple, list)) and len(item) == 3) or item[2] not in INPUTS:
            raise InterpError(f"a receiver is (layer, head, 'q'|'k'|'v') or 'layer.head.input', not {item!r}")
        layer, head = select.heads(model, [tuple(item[:2])])[0]
        if (layer, head, item[2]) in out:
            raise InterpError(f"receiver {layer}.{head}.{item[2]} given twice")
        out.append((layer, head, item[2]))
    if not out:
        raise InterpError("no receivers given: e.g. receivers='1.0.k' or 'logits'")
    return out


def _label(receivers: Any) -> str:
    return "logits" if receivers == "logits" else ",".join(f"L{l}H{h}.{x}" for l, h, x in receivers)


def _first_layer(model: HookedGPT2, receivers: Any) -> int:
    return model.cfg.n_layers if receivers == "logits" else min(l for l, _, _ in receivers)


def _writes(model: HookedGPT2, batch: Batch, layers: list[int]) -> dict[int, Tensor]:
    """Each listed layer's per-head writes ``z · W_O`` as ``[head, batch, pos, d_model]``."""
    _, cache = model.run(batch, names=[("z", l) for l in layers], logits=False)
    return {l: torch.einsum("bphd,hdm->hbpm", cache["z", l], model.W_O[l]) for l in layers}


def _stream_deltas(model: HookedGPT2, writes: dict[int, Tensor], upto: int, mlps: str,
                   mids: dict[int, Tensor], mlp_outs: dict[int, Tensor]) -> dict[int, Tensor]:
    """How the senders change the residual stream entering each layer ``0 … upto``, other heads frozen.

    ``writes[l]`` is what the senders of layer ``l`` add (``[rows, pos, d_model]``); with
    ``mlps="recomputed"`` each MLP in between is rerun on the changed stream (``mids``/``mlp_outs``: the
    corrupted run's, repeated to the rows), with ``"frozen"`` it keeps its corrupted output.
    """
    delta, out, started = torch.zeros_like(next(iter(writes.values()))), {}, False
    for layer in range(upto):
        out[layer] = delta
        if layer in writes:
            delta, started = delta + writes[layer], True
        if mlps == "recomputed" and started:  # before the first sender nothing has changed
            delta = delta + model.mlp(layer, mids[layer] + delta) - mlp_outs[layer]
    out[upto] = delta
    return out


def _receiver_hooks(model: HookedGPT2, receivers: list[Receiver], delta_at: dict[int, Tensor]) -> list:
    """Hooks adding ``delta_at[layer]`` to each receiver's own copy of the stream before ln1."""
    cfg, hooks, live = model.cfg, [], {}
    for layer in sorted({l for l, _, _ in receivers}):
        def keep(x: Tensor, name: str, layer: int = layer) -> None:
            live[layer] = x

        hooks.append((hk.name("resid_pre", layer), keep))
        for what in INPUTS:
            heads = [h for l, h, x in receivers if l == layer and x == what]
            if not heads:
                continue
            W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}[what][layer, heads]  # [n, d_model, d_head]
            b = {"q": model.b_Q, "k": model.b_K, "v": model.b_V}[what][layer, heads]  # [n, d_head]

            def edit(act: Tensor, name: str, layer: int = layer, heads: list = heads, W: Tensor = W,
                     b: Tensor = b) -> Tensor:
                x = live[layer] + delta_at[layer]
                x = F.layer_norm(x, (cfg.d_model,), model.ln1_w[layer], model.ln1_b[layer], cfg.eps)
                out = act.clone()
                out[:, :, heads] = torch.einsum("bpm,nmd->bpnd", x, W) + b
                return out

            hooks.append((hk.name(what, layer), edit))
    return hooks


def _corrupted(model: HookedGPT2, kb: Batch, upto: int, first: int) -> tuple[Tensor, dict, dict, Optional[Tensor]]:
    """The corrupted run: final stream, resid_mid and mlp_out of layers < upto, resid_pre of ``first``."""
    names = [("resid_mid", l) for l in range(upto)] + [("mlp_out", l) for l in range(upto)]
    if first < model.cfg.n_layers:
        names.append(("resid_pre", first))
    _, cache = model.run(kb, names=names, logits=False)
    final = model.forward(kb.tokens, attention_mask=kb.attention_mask, unembed=False)
    mids = {l: cache["resid_mid", l] for l in range(upto)}
    outs = {l: cache["mlp_out", l] for l in range(upto)}
    return final, mids, outs, cache["resid_pre", first] if first < model.cfg.n_layers else None


def _check_mlps(mlps: Any) -> str:
    if mlps not in ("recomputed", "frozen"):
        raise InterpError(f"mlps must be 'recomputed' (Wang et al.: MLPs in between rerun) or 'frozen' "
                          f"(the direct path only), not {mlps!r}")
    return mlps


def _value(model, metric: Metric, final: Tensor, batch: Batch) -> float:
    return float(metric.from_resid(model, final, batch))


def path_patch(
    model: HookedGPT2, clean: Any, corrupted: Any, senders: Any, receivers: Any, metric: Any = None, *,
    mlps: str = "recomputed",
) -> dict:
    """The metric with the senders' clean outputs delivered only to the receivers' chosen inputs.

    Args:
        senders: heads, in :mod:`interp.select`'s grammar (``[(0, 4)]``, ``"0.4,0.5"``).
        receivers: ``"logits"`` or ``(layer, head, "q"|"k"|"v")`` triples (``"1.0.k,1.2.k"``); every
            receiver must be in a later layer than every sender.
        metric: as :func:`interp.patching.patch` (default: :func:`interp.metrics.contrast`).
        mlps: ``"recomputed"`` (Wang et al.) or ``"frozen"`` (the direct path); see the module docs.

    Returns:
        ``{"value", "effect", "clean", "corrupted", "metric"}``; ``effect`` is normalised as in
        patching (0 = corrupted, 1 = clean).

    >>> from interp.testing import planted_model
    >>> from interp.metrics import LogitDiff
    >>> m = planted_model()
    >>> clean, corrupted = "a b c d e a b c d", "a b c x e a b c d"   # the earlier 'd' replaced
    >>> r = path_patch(m, clean, corrupted, senders="0.0", receivers="1.0.k", metric=LogitDiff("e", "a"))
    >>> round(r["effect"], 2)   # the previous-token head, into the induction head's keys: all of it
    1.0
    """
    cb, kb = paired_batches(model, clean, corrupted)
    send = select.heads(model, senders)
    recv = receivers_of(model, receivers)
    first = _first_layer(model, recv)
    late = [f"{l}.{h}" for l, h in send if l >= first]
    if late:
        raise InterpError(f"sender {late[0]} is not before every receiver ({_label(recv)}): a path runs forward, "
                          "from an earlier layer to a later one")
    metric = pair_metric(model, cb, kb, metric)
    mlps = _check_mlps(mlps)
    upto = model.cfg.n_layers if recv == "logits" else max(l for l, _, _ in recv)
    with torch.no_grad():
        layers = sorted({l for l, _ in send})
        wc, wk = _writes(model, cb, layers), _writes(model, kb, layers)
        writes = {l: sum(wc[l][h] - wk[l][h] for ll, h in send if ll == l) for l in layers}
        clean_v = _value(model, metric, model.forward(cb.tokens, attention_mask=cb.attention_mask, unembed=False), cb)
        corrupt_final, mids, outs, _ = _corrupted(model, kb, upto, first)
        corrupt_v = _value(model, metric, corrupt_final, kb)
        delta_at = _stream_deltas(model, writes, upto, mlps, mids, outs)
        if recv == "logits":
            final = corrupt_final + delta_at[upto]
        else:
            final = model.forward(kb.tokens, attention_mask=kb.attention_mask, unembed=False,
                                  hooks=_receiver_hooks(model, recv, delta_at))
        value = _value(model, metric, final, kb)
    span = clean_v - corrupt_v
    return {"value": value, "effect": (value - corrupt_v) / span if span else float("nan"), "clean": clean_v,
            "corrupted": corrupt_v, "metric": metric.name}


def path_patch_scan(
    model: HookedGPT2,
    clean: Any,
    corrupted: Any,
    receivers: Any,
    metric: Any = None,
    *,
    senders: Any = None,
    mlps: str = "recomputed",
    chunk_tokens: int = 8192,
    progress: Optional[bool] = None,
):
    """Path patching from each sender head in turn into a fixed set of receivers.

    Args:
        receivers, mlps: as :func:`path_patch`.
        senders: the heads to try (default: every head before the receivers' first layer).
        chunk_tokens: how many tokens (senders × prompts × positions) one stacked pass may hold.

    Returns:
        One row per sender: ``sender_layer, sender_head, receiver`` (the receivers, e.g.
        ``L1H0.k``), ``value`` and ``effect``; ``df.attrs`` holds ``metric``, ``clean``, ``corrupted``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    cb, kb = paired_batches(model, clean, corrupted)
    recv = receivers_of(model, receivers)
    first = _first_layer(model, recv)
    if senders is None:
        if first == 0:
            raise InterpError(f"no head is before the receivers ({_label(recv)}): they are in layer 0")
        send = [(l, h) for l in range(first) for h in range(model.cfg.n_heads)]
    else:
        send = select.heads(model, senders)
        late = [f"{l}.{h}" for l, h in send if l >= first]
        if late:
            raise InterpError(f"sender {late[0]} is not before every receiver ({_label(recv)})")
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise InterpError(f"chunk_tokens must be a positive int, not {chunk_tokens!r}")
    metric = pair_metric(model, cb, kb, metric)
    B, P = kb.tokens.shape
    values = []
    mlps = _check_mlps(mlps)
    upto = model.cfg.n_layers if recv == "logits" else max(l for l, _, _ in recv)
    with torch.no_grad(), tqdm(total=len(send), desc="path patch", unit="sender",
                               disable=None if progress is None else not progress) as bar:
        layers = sorted({l for l, _ in send})
        wc, wk = _writes(model, cb, layers), _writes(model, kb, layers)
        clean_v = _value(model, metric, model.forward(cb.tokens, attention_mask=cb.attention_mask, unembed=False), cb)
        corrupt_final, mids, outs, start = _corrupted(model, kb, upto, first)
        corrupt_v = _value(model, metric, corrupt_final, kb)
        per_chunk = max(1, chunk_tokens // (B * P))
        for c in range(0, len(send), per_chunk):
            chunk, V = send[c : c + per_chunk], len(send[c : c + per_chunk])
            writes = {}
            for k, (l, h) in enumerate(chunk):  # each sender's write in its own block of rows
                w = writes.setdefault(l, torch.zeros(V * B, P, model.cfg.d_model, dtype=corrupt_final.dtype,
                                                     device=corrupt_final.device))
                w[k * B : (k + 1) * B] = wc[l][h] - wk[l][h]
            delta_at = _stream_deltas(model, writes, upto, mlps, {l: x.repeat(V, 1, 1) for l, x in mids.items()},
                                      {l: x.repeat(V, 1, 1) for l, x in outs.items()})
            if recv == "logits":
                final = corrupt_final.repeat(V, 1, 1) + delta_at[upto]
            else:
                final = model.forward(start.repeat(V, 1, 1), start_at_layer=first, unembed=False,
                                      attention_mask=kb.attention_mask.repeat(V, 1),
                                      hooks=_receiver_hooks(model, recv, delta_at))
            values += metric.from_stacked_resid(model, final, kb)
            bar.update(V)
    span = clean_v - corrupt_v
    df = pd.DataFrame({
        "sender_layer": [l for l, _ in send], "sender_head": [h for _, h in send], "receiver": _label(recv),
        "value": values, "effect": [(v - corrupt_v) / span if span else float("nan") for v in values],
    })
    df.attrs.update(metric=metric.name, clean=clean_v, corrupted=corrupt_v, model=model.cfg.name,
                    fold_ln=model.cfg.fold_ln)
    return select.tidy(df)
