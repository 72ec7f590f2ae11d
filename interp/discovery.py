"""Circuit discovery: rank every edge by attribution, verify the best by exact patching, prune, measure.

:func:`circuit` runs :func:`interp.attribution.attribute` over every edge of :mod:`interp.graph`,
keeps the top ``edges`` (or those with ``|attribution| ≥ threshold``), measures each kept edge's
**exact** effect, and then prunes by exact patching (Conmy et al. 2023's ACDC, on the candidates
only): edges are tried from the weakest exact effect up and one is dropped when the circuit
without it is no further from the full model than ``tolerance`` (in units of the clean −
corrupted gap). Edges left dangling (a sender no kept edge feeds, a receiver that feeds nothing)
are dropped last.

What the numbers mean
---------------------
*The circuit run* (:mod:`interp.edge_patching`) is the model on the clean prompts in which every edge **outside** the circuit
is ablated: each receiver's input is rebuilt as its kept senders' outputs (as computed in this
run) plus its removed senders' replacement values, plus the biases. ``ablation="resample"``
(default) replaces a sender's output by its value on the paired corrupted prompt;
``ablation="mean"`` by its mean over all corrupted prompts, per position. With every edge removed
and resampling, the circuit run *is* the corrupted run; with every edge kept it is the clean run.

``faithfulness = (m(circuit) − m(corrupted)) / (m(clean) − m(corrupted))``: both normalised
against the corrupted baseline, 1 = the circuit alone does what the model does, 0 = no better
than the corrupted run (the gap is the same under mean ablation, so an empty circuit need not
score 0 there).

*An edge's exact effect* is path patching's direct path (:func:`interp.path_patching.path_patch`
with ``mlps="frozen"``), generalised to every sender and receiver of the graph: the corrupted
run with only that receiver's input given the sender's clean-minus-corrupted output, everything
downstream recomputed; normalised the same way. Its ``attribution`` is the same quantity
estimated from gradients: ``score / (clean − corrupted)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .attribution import check_method, compute_scores, edge_table, sender_outputs
from .edge_patching import check_ablation, circuit_value, edge_effects, replacements
from .errors import InterpError
from .graph import Graph
from .metrics import pair_metric
from .patching import paired_batches

__all__ = ["circuit", "faithfulness", "Circuit"]


@dataclass
class Circuit:
    """A discovered circuit: its edges (attributed and exact), nodes and faithfulness.

    Attributes:
        edges: the kept edges, strongest exact effect first: ``edge, sender, receiver, input,
            score, attribution, effect`` (see the module docs).
        candidates: every edge that was verified, with ``kept``.
        nodes: the components the kept edges join (``embed``, ``L1H0``, ``MLP0``, ``logits``).
        faithfulness: of the kept edges; ``faithfulness_candidates`` of all candidates.
        value, clean, corrupted: the metric on the circuit run, the clean and the corrupted runs.
    """

    edges: Any
    candidates: Any
    nodes: list[str]
    faithfulness: float
    faithfulness_candidates: float
    value: float
    clean: float
    corrupted: float
    metric: str
    method: str
    steps: int
    ablation: str
    model: str
    n_layers: int
    n_heads: int
    attrs: dict = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def to_json(self) -> dict:
        """``{"nodes": [...], "edges": [{"sender", "receiver", "input", "attribution", "effect"}], "faithfulness", …}``."""
        from .report.circuit import circuit_json

        return circuit_json(self)

    def svg(self) -> str:
        """The circuit drawn as a self-contained SVG (see :mod:`interp.report.circuit`)."""
        from .report.circuit import circuit_svg

        return circuit_svg(self)

    def html(self) -> str:
        """The picture and the edge table as one self-contained HTML page."""
        from .report.circuit import circuit_html

        return circuit_html(self)

    def _repr_svg_(self) -> str:
        """Jupyter shows a circuit as its picture."""
        return self.svg()

    def __repr__(self) -> str:
        return (f"Circuit({self.model}: {self.n_edges} edges, {self.n_nodes} nodes, faithfulness "
                f"{self.faithfulness:.3f}, {self.method}, {self.ablation} ablation)")


# ---------------------------------------------------------------------------- discovery
def _connected(g: Graph, kept: Tensor) -> Tensor:
    """``kept`` without dangling edges: only edges on some path from the embeddings to the logits."""
    kept = kept.clone()
    node_of_receiver = [g.senders.index(r) if r in g.senders else None for r, _ in g.receivers]
    while True:
        fed = kept.any(0)  # per receiver
        alive = torch.zeros(len(g.senders), dtype=torch.bool)
        alive[0] = True
        for ri, si in enumerate(node_of_receiver):
            if si is not None and fed[ri]:
                alive[si] = True
        useful = torch.zeros(len(g.receivers), dtype=torch.bool)
        useful[-1] = True
        for ri, si in enumerate(node_of_receiver):
            if si is not None and kept[si].any():
                useful[ri] = True
        new = kept & alive[:, None] & useful[None, :]
        if torch.equal(new, kept):
            return kept
        kept = new


def circuit(
    model,
    clean: Any,
    corrupted: Any,
    metric: Any = None,
    *,
    method: str = "eap-ig",
    steps: int = 5,
    edges: Optional[int] = None,
    threshold: Optional[Union[int, float]] = None,
    ablation: str = "resample",
    prune: bool = True,
    tolerance: Union[int, float] = 0.01,
    chunk_tokens: int = 8192,
    progress: Optional[bool] = None,
) -> Circuit:
    """Find the circuit behind ``metric``: attribution to rank, exact patching to verify and prune.

    Args:
        model: the model.
        clean, corrupted: prompts, token ids or Batches of equal lengths, paired by row.
        metric: as :func:`interp.patching.patch` (default :func:`interp.metrics.contrast`).
        method, steps: how edges are ranked (:func:`interp.attribution.attribute`; default EAP-IG, 5 steps).
        edges: how many top edges (by ``|attribution|``) are candidates (default 50), or
        threshold: keep candidates with ``|attribution| ≥ threshold`` (normalised units) instead.
        ablation: ``"resample"`` or ``"mean"``: what a removed edge carries (see the module docs).
            Under mean ablation edges that carry what the clean and corrupted prompts *share* (the
            current token into an induction head's query) matter too, but attribution, which sees
            only clean − corrupted, ranks them at zero: give a larger ``edges`` (or
            ``threshold=0``) so that they are candidates.
        prune: drop candidates that exact patching finds unnecessary (else keep every candidate,
            less dangling edges).
        tolerance: how much closer to the full model (in units of the clean − corrupted gap) an
            edge must keep the circuit to stay.
        chunk_tokens: tokens one stacked pass may hold. progress: a progress bar (default: on a terminal).

    Returns:
        A :class:`Circuit`.

    >>> from interp.testing import planted_model
    >>> from interp.metrics import LogitDiff
    >>> m = planted_model()
    >>> c = circuit(m, "a b c d e a b c d", "a b c x e a b c d", LogitDiff("e", "a"), edges=10, progress=False)
    >>> sorted(c.edges["edge"]), round(c.faithfulness, 3)
    (['L0H0->L1H0.k', 'L1H0->logits', 'embed->L0H0.v'], 1.0)
    """
    import pandas as pd
    from tqdm.auto import tqdm

    method, steps = check_method(method, steps)
    ablation = check_ablation(ablation)
    if edges is not None and threshold is not None:
        raise InterpError("give edges (the top N) or threshold (|attribution| ≥ T), not both")
    if edges is None and threshold is None:
        edges = 50
    if edges is not None and (isinstance(edges, bool) or not isinstance(edges, int) or edges < 1):
        raise InterpError(f"edges must be a positive int (how many top edges to verify), not {edges!r}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and threshold >= 0):
        raise InterpError(f"threshold must be a number ≥ 0 (|attribution| in units of clean − corrupted), not {threshold!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise InterpError(f"tolerance must be a number ≥ 0, not {tolerance!r}")
    cb, kb = paired_batches(model, clean, corrupted)
    metric = pair_metric(model, cb, kb, metric)
    scores = compute_scores(model, cb, kb, metric, method=method, steps=steps, chunk_tokens=chunk_tokens,
                            progress=progress)
    span = scores.clean - scores.corrupted
    if span == 0:
        raise InterpError(f"the clean and corrupted runs give the same {metric.name} ({scores.clean:.4g}): "
                          "faithfulness is undefined; choose prompts the metric tells apart")
    table = edge_table(scores)
    cand = table.head(edges) if edges is not None else table[table["attribution"].abs() >= threshold]
    if len(cand) == 0:
        raise InterpError(f"no edge has |attribution| ≥ {threshold}: the largest is {table['attribution'].abs().max():.3g}")
    g = scores.graph
    pairs = [g.parse_edge(e) for e in cand["edge"]]
    clean_out, _, _ = sender_outputs(model, cb)
    corrupt_out, _, _ = sender_outputs(model, kb)
    repl = replacements(corrupt_out, kb, ablation)

    def faith(kept: Tensor) -> float:
        return (float(metric.from_resid(model, circuit_value(model, cb, kept, repl), cb)) - scores.corrupted) / span

    with tqdm(total=len(pairs) * (2 if prune else 1), desc="verify and prune", unit="edge",
              disable=None if progress is None else not progress) as bar:
        exact = edge_effects(model, kb, metric, pairs, clean_out - corrupt_out, chunk_tokens, bar)
        cand = cand.assign(effect=[(v - scores.corrupted) / span for v in exact])
        kept = torch.zeros_like(g.valid)
        for si, ri in pairs:
            kept[si, ri] = True
        f_all = faith(kept)
        f_now = f_all
        if prune:
            for k in cand["effect"].abs().sort_values(kind="stable").index:
                si, ri = pairs[cand.index.get_loc(k)]
                kept[si, ri] = False
                f_without = faith(kept)
                if abs(1 - f_without) <= abs(1 - f_now) + tolerance:
                    f_now = f_without
                else:
                    kept[si, ri] = True
                bar.update()
    kept = _connected(g, kept)
    value = float(metric.from_resid(model, circuit_value(model, cb, kept, repl), cb))
    cand = cand.assign(kept=[bool(kept[si, ri]) for si, ri in pairs])
    cols = ["edge", "sender", "receiver", "input", "score", "attribution", "effect"]
    chosen = cand[cand["kept"]][cols]
    chosen = chosen.reindex(chosen["effect"].abs().sort_values(ascending=False, kind="stable").index)
    nodes = [n for n in [*g.senders, "logits"] if n in set(chosen["sender"]) | set(chosen["receiver"])]
    return Circuit(
        edges=chosen.reset_index(drop=True), candidates=cand.reset_index(drop=True), nodes=nodes,
        faithfulness=(value - scores.corrupted) / span, faithfulness_candidates=f_all, value=value,
        clean=scores.clean, corrupted=scores.corrupted, metric=metric.name, method=method, steps=steps,
        ablation=ablation, model=model.cfg.name, n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
        attrs={"fold_ln": model.cfg.fold_ln, "tolerance": tolerance, "prune": prune,
               "candidates": len(cand), "total_edges": int(g.valid.sum())},
    )


def faithfulness(model, clean: Any, corrupted: Any, edges: Any, metric: Any = None, *,
                 ablation: str = "resample") -> float:
    """The faithfulness of a given set of edges (names such as ``"L0H0->L1H0.k"``), every other edge ablated.

    ``(m(circuit) − m(corrupted)) / (m(clean) − m(corrupted))``; see the module docs.

    >>> from interp.testing import planted_model
    >>> from interp.metrics import LogitDiff
    >>> m = planted_model()
    >>> pair = ("a b c d e a b c d", "a b c x e a b c d")
    >>> round(faithfulness(m, *pair, ["embed->L0H0.v", "L0H0->L1H0.k", "L1H0->logits"], LogitDiff("e", "a")), 3)
    1.0
    >>> round(faithfulness(m, *pair, ["L0H0->L1H0.k", "L1H0->logits"], LogitDiff("e", "a")), 3)
    0.0
    """
    ablation = check_ablation(ablation)
    cb, kb = paired_batches(model, clean, corrupted)
    metric = pair_metric(model, cb, kb, metric)
    g = Graph(model.cfg.n_layers, model.cfg.n_heads)
    kept = torch.zeros_like(g.valid)
    for e in ([edges] if isinstance(edges, str) else edges):
        kept[g.parse_edge(e)] = True
    corrupt_out, _, corrupt_final = sender_outputs(model, kb)
    _, _, clean_final = sender_outputs(model, cb)
    c, k = float(metric.from_resid(model, clean_final, cb)), float(metric.from_resid(model, corrupt_final, kb))
    if c == k:
        raise InterpError(f"the clean and corrupted runs give the same {metric.name}: faithfulness is undefined")
    value = float(metric.from_resid(model, circuit_value(model, cb, kept, replacements(corrupt_out, kb, ablation)), cb))
    return (value - k) / (c - k)
