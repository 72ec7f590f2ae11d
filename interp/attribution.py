"""Attribution patching: every node's and every edge's effect estimated from gradients.

Exact patching costs a forward pass per site or per edge. Attribution patching (Nanda 2023;
edge attribution patching, EAP, Syed et al. 2023) estimates them all at once, to first order::

    score(node s)      = (a_s,clean − a_s,corrupted) · ∂metric/∂a_s
    score(edge s → r)  = (a_s,clean − a_s,corrupted) · ∂metric/∂(input of r)

with the gradient taken on the corrupted run: the estimated change of the metric when the
clean value is patched into the corrupted run (the *denoising* direction, as TransformerLens's
``attribution_patch``). A positive score says the clean value pushes the metric up. ``a_s`` is
the sender's output (see :mod:`interp.graph`); the input of a receiver is its own copy of the
residual stream before its LayerNorm, so an edge's score is what the sender's change would do
if only that receiver saw it. Node scores are summed over positions and ``·`` runs over
d_head for heads (their ``z``), d_model for the embeddings and MLPs; a sender's edge scores
sum to its node score (every sender feeds the logits). ``method="atp"`` and ``"eap"`` are two
names of this one estimate.

Signs, against hannamw/EAP-IG: its ``get_scores_eap`` takes the gradient at its *clean* run and
multiplies by ``corrupted − clean`` (the noising direction). So ``attribute(model, A, B)`` equals
EAP-IG's scores with ``clean=B, corrupted=A`` — swap the two to compare (the tests compare that way).

EAP-IG (Hanna et al. 2024) replaces the gradient by its average along the straight line from the
corrupted to the clean input embeddings, which corrects gradients that saturate: interp averages
at ``α = k/steps`` for ``k = 1 … steps`` (a right Riemann sum, ending at the clean input; ``steps=5``
as in the paper). EAP-IG's code used the same sum until February 2025; since then it averages at
``k = 0 … steps − 1`` (a left sum, starting at the corrupted input). The two differ by O(1/steps)
and agree as steps grow. With interp's sum the embeddings' own score tends to
``metric(clean) − metric(corrupted)`` (completeness; a test checks it).

Cost: one clean forward, one corrupted forward + backward (``steps`` of them for EAP-IG, stacked
along the batch by :class:`interp.engine.Engine`), then one matrix product
``[senders, B·P·d_model] × [B·P·d_model, receivers]`` per layer. The gradient at each head's q/k/v
copy of the stream is read at ``hook_q/k/v`` and taken back through ``W_Q/W_K/W_V`` and LayerNorm's
Jacobian in closed form (:meth:`interp.engine.Engine.receiver_grads`): no per-head copies of the
stream in the forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from . import hooks as hk
from .edge_patching import outputs_of, sender_outputs
from .engine import Engine, check_span, paired_batches
from .errors import InterpError
from .gradients import read_gradients
from .graph import Graph
from .metrics import Metric, pair_metric
from .tokens import Batch

__all__ = ["attribute", "METHODS", "LEVELS"]

METHODS = {"atp": "attribution patching: the gradient on the corrupted run (= eap)",
           "eap": "edge attribution patching: the gradient on the corrupted run",
           "eap-ig": "EAP with integrated gradients: the gradient averaged over `steps` interpolated inputs"}
LEVELS = ("node", "edge")


@dataclass
class Scores:
    """What :func:`attribute` computes before tabulating (also the input of :func:`interp.circuit`)."""

    graph: Graph
    node: Tensor  # [sender]
    edge: Optional[Tensor]  # [sender, receiver], 0 where no edge
    clean: float
    corrupted: float
    metric: Metric
    method: str
    steps: int


def check_method(method: Any, steps: Any) -> tuple[str, int]:
    if method not in METHODS:
        raise InterpError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InterpError(f"steps must be a positive int (EAP-IG's interpolation points), not {steps!r}")
    return method, steps if method == "eap-ig" else 1


def compute_scores(model, cb: Batch, kb: Batch, metric: Metric, *, level: str = "edge", method: str = "eap",
                   steps: int = 5, chunk_tokens: int = 8192, progress: Optional[bool] = None) -> Scores:
    """The node (and, at ``level="edge"``, edge) scores of a checked pair of batches."""
    from tqdm.auto import tqdm

    cfg, L = model.cfg, model.cfg.n_layers
    engine = Engine(model, chunk_tokens)
    graph = Graph(L, cfg.n_heads)
    B, P = kb.tokens.shape
    alphas = [k / steps for k in range(1, steps + 1)] if method == "eap-ig" else [None]
    runs = list(engine.chunks(alphas, B * P))  # interpolation steps stacked along the batch
    with torch.no_grad():
        clean_out, clean_z, clean_run = sender_outputs(engine, cb)
        clean_v = float(metric.from_resid(model, clean_run.final, cb))
        if method == "eap-ig":
            corrupt_out, corrupt_z, corrupt_run = sender_outputs(engine, kb)
            corrupt_v = float(metric.from_resid(model, corrupt_run.final, kb))
            check_span(metric, clean_v, corrupt_v)
    names = [hk.name("resid_pre", 0)] + [hk.name(s, l) for l in range(L) for s in ("z", "mlp_out")]
    if level == "edge":
        names += [hk.name(s, l) for l in range(L) for s in ("resid_pre", "q", "k", "v", "mlp_in")]
        names.append(hk.name("resid_post", L - 1))
    names = list(dict.fromkeys(names))
    node_grads: dict[str, Tensor] = {}
    G = [None] * (L + 1)  # per receiver layer: Σ over steps of ∂metric/∂(input) [n_receivers, B, P, d_model]
    bar = tqdm(total=len(runs), desc=f"attribute ({method})", unit="pass", disable=None if progress is None else not progress)
    with bar:
        for run in runs:
            S = len(run)
            tokens, mask = kb.tokens.repeat(S, 1), kb.attention_mask.repeat(S, 1)
            hooks = []
            if run[0] is not None:
                a = torch.tensor(run, dtype=cfg.dtype, device=cfg.device).repeat_interleave(B)[:, None, None]
                e_c, e_k = clean_out[0].repeat(S, 1, 1), corrupt_out[0].repeat(S, 1, 1)
                hooks = [(hk.name("resid_pre", 0), lambda x, name: e_k + a * (e_c - e_k))]

            def metric_of(final: Tensor) -> Tensor:  # the mean over every step of the whole run
                return sum(metric.from_resid(model, final[i * B : (i + 1) * B], kb) for i in range(S)) / len(alphas)

            got = read_gradients(model, Batch(tokens, mask), names, hooks=hooks, metric_of=metric_of)
            acts, grads = got.activations, got.gradients
            if method != "eap-ig":  # the gradient's own run is the corrupted run: its outputs, no second forward
                corrupt_out, corrupt_v = outputs_of(engine, acts), got.value
                corrupt_z = torch.stack([acts[hk.name("z", l)] for l in range(L)])
                check_span(metric, clean_v, corrupt_v)
            for n in names[: 1 + 2 * L]:
                g = grads[n].reshape(S, B, *grads[n].shape[1:]).sum(0)
                node_grads[n] = g if n not in node_grads else node_grads[n] + g
            if level == "edge":
                for l in range(L + 1):
                    g = engine.receiver_grads(acts, grads, l, S)
                    G[l] = g if G[l] is None else G[l] + g
            bar.update()
    delta = clean_out.sub_(corrupt_out)  # [sender, B, P, d_model]; the clean outputs are not needed after this
    node = _node_scores(model, graph, delta, clean_z - corrupt_z, node_grads)
    edge = None
    if level == "edge":
        flat = delta.reshape(len(graph.senders), -1)
        edge = flat.new_zeros(len(graph.senders), len(graph.receivers))
        for l in range(L + 1):  # only the senders before a layer's MLP can feed that layer
            n = graph.sender_index(l) if l < L else len(graph.senders)
            edge[:n, graph.receiver_slice(l)] = flat[:n] @ G[l].reshape(len(G[l]), -1).T
        edge = edge * graph.valid.to(edge.device)
    return Scores(graph, node, edge, clean_v, corrupt_v, metric, method, steps)


def _node_scores(model, graph: Graph, delta: Tensor, dz: Tensor, grads: dict) -> Tensor:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(len(graph.senders), dtype=delta.dtype, device=delta.device)
    out[0] = (delta[0] * grads[hk.name("resid_pre", 0)]).sum()
    for l in range(L):
        # A head's node score is read at its z (d_head), as TransformerLens's: the same number as
        # its write times the gradient at its write, which hook_result would cost to compute.
        first = graph.sender_index(l, 0)
        out[first : first + H] = (dz[l] * grads[hk.name("z", l)]).sum((0, 1, 3))
        out[graph.sender_index(l)] = (delta[graph.sender_index(l)] * grads[hk.name("mlp_out", l)]).sum()
    return out


def attribute(
    model,
    clean: Any,
    corrupted: Any,
    metric: Any = None,
    *,
    level: str = "edge",
    method: str = "eap",
    steps: int = 5,
    chunk_tokens: int = 8192,
    progress: Optional[bool] = None,
):
    """Attribution scores of every node or every edge, ranked by size.

    Args:
        model: the model.
        clean, corrupted: prompts, token ids or Batches of equal lengths, paired by row.
        metric: as :func:`interp.patching.patch` (default :func:`interp.metrics.contrast`: the
            clean run's top token minus the corrupted run's, at the last position).
        level: ``"node"`` (each head's output, each MLP, the embeddings) or ``"edge"`` (every
            sender → receiver pair of :mod:`interp.graph`).
        method: ``"atp"`` / ``"eap"`` (the gradient on the corrupted run) or ``"eap-ig"`` (averaged
            over ``steps`` inputs interpolated from corrupted to clean; see the module docs).
        steps: EAP-IG's interpolation points (default 5, as Hanna et al.); ignored otherwise.
        chunk_tokens: how many tokens (steps × prompts × positions) one stacked pass may hold.
        progress: a progress bar (default: when stderr is a terminal).

    Returns:
        A DataFrame, largest ``|score|`` first. Nodes: ``node, kind`` (embed/head/mlp), ``layer,
        head``, ``score`` (the estimated change of the metric when the node's clean output is
        patched into the corrupted run) and ``attribution`` (the score over ``clean − corrupted``,
        on the scale of patching's normalised effect). Edges: ``edge, sender, receiver, input``
        (q/k/v for a head, ``in`` for an MLP or the logits), ``sender_layer, sender_head,
        receiver_layer, receiver_head, score, attribution``. ``df.attrs``: metric, clean,
        corrupted, method, steps, level, model, fold_ln.

    >>> from interp.testing import planted_model
    >>> from interp.metrics import LogitDiff
    >>> m = planted_model()
    >>> clean, corrupted = "a b c d e a b c d", "a b c x e a b c d"   # the earlier 'd' replaced
    >>> df = attribute(m, clean, corrupted, LogitDiff("e", "a"), progress=False)
    >>> df["edge"].head(3).tolist()
    ['embed->L0H0.v', 'L0H0->L1H0.k', 'L1H0->logits']
    """
    if level not in LEVELS:
        raise InterpError(f"unknown level {level!r}: use 'node' or 'edge'")
    method, steps = check_method(method, steps)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise InterpError(f"chunk_tokens must be a positive int, not {chunk_tokens!r}")
    cb, kb = paired_batches(model, clean, corrupted)
    metric = pair_metric(model, cb, kb, metric)
    s = compute_scores(model, cb, kb, metric, level=level, method=method, steps=steps, chunk_tokens=chunk_tokens,
                       progress=progress)
    df = node_table(s) if level == "node" else edge_table(s)
    df.attrs.update(metric=metric.name, clean=s.clean, corrupted=s.corrupted, method=method, steps=steps,
                    level=level, model=model.cfg.name, fold_ln=model.cfg.fold_ln)
    return df


def _normalised(values, s: Scores):
    span = s.clean - s.corrupted
    return values / span if span else values * float("nan")


def _ranked(df):
    return df.reindex(df["score"].abs().sort_values(ascending=False, kind="stable").index).reset_index(drop=True)


def node_table(s: Scores):
    import pandas as pd

    g = s.graph
    where = [g.layer_head(n) for n in g.senders]
    score = s.node.double().cpu().numpy()
    df = pd.DataFrame({
        "node": g.senders,
        "kind": ["embed" if n == "embed" else "mlp" if n.startswith("MLP") else "head" for n in g.senders],
        "layer": [l for l, _ in where], "head": [h for _, h in where],
        "score": score, "attribution": _normalised(score, s),
    }).astype({"layer": "Int64", "head": "Int64"})
    return _ranked(df)


def edge_table(s: Scores):
    import pandas as pd

    g = s.graph
    si, ri = g.valid.nonzero(as_tuple=True)
    si, ri = si.tolist(), ri.tolist()
    score = s.edge[si, ri].double().cpu().numpy()
    send = [g.senders[i] for i in si]
    recv = [g.receivers[i] for i in ri]
    sl, rl = [g.layer_head(n) for n in send], [g.layer_head(n) for n, _ in recv]
    df = pd.DataFrame({
        "edge": [g.edge_name(a, b, x) for a, (b, x) in zip(send, recv)],
        "sender": send, "receiver": [b for b, _ in recv], "input": [x for _, x in recv],
        "sender_layer": [l for l, _ in sl], "sender_head": [h for _, h in sl],
        "receiver_layer": [l for l, _ in rl], "receiver_head": [h for _, h in rl],
        "score": score, "attribution": _normalised(score, s),
    }).astype({"sender_layer": "Int64", "sender_head": "Int64", "receiver_layer": "Int64", "receiver_head": "Int64"})
    return _ranked(df)
