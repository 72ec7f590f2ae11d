"""Circuit discovery: rank every edge by attribution, verify the best by exact patching, prune, measure.

:func:`circuit` runs :func:`interp.attribution.attribute` over every edge of :mod:`interp.graph`,
keeps the top ``edges`` (or those with ``|attribution| ≥ threshold``), measures each kept edge's
**exact** effect, and then prunes by exact patching (Conmy et al. 2023's ACDC, on the candidates
only): edges are tried from the weakest exact effect up and one is dropped when the circuit
without it is no further from the full model than ``tolerance`` (in units of the clean −
corrupted gap). Edges on no path from the embeddings to the logits (a sender no kept edge feeds, a
receiver that feeds nothing) carry nothing to the logits: they are dropped, here, in
:func:`faithfulness` and in EAP-IG alike (:meth:`interp.graph.Graph.connected`, the one rule).

What the numbers mean
---------------------
*The circuit run* (:mod:`interp.edge_patching`) is the model on the clean prompts in which every edge **outside** the circuit
is ablated: each receiver's input is rebuilt as its kept senders' outputs (as computed in this
run) plus its removed senders' replacement values, plus the biases. ``ablation="corrupted"``
(default) replaces a sender's output by its value on the paired corrupted prompt (EAP-IG's
"patching"); ``ablation="mean"`` by its mean over all corrupted prompts, per token position. With
every edge removed and ``"corrupted"``, the circuit run *is* the corrupted run; with every edge
kept it is the clean run.

``faithfulness = (m(circuit) − m(corrupted)) / (m(clean) − m(corrupted))``: both normalised
against the corrupted baseline, 1 = the circuit alone does what the model does, 0 = no better
than the corrupted run (the gap is the same under mean ablation, so an empty circuit need not
score 0 there).

*An edge's exact effect* is path patching's direct path (:func:`interp.path_patching.path_patch`
with ``mlps="frozen"``), generalised to every sender and receiver of the graph: the corrupted
run with only that receiver's input given the sender's clean-minus-corrupted output, everything
downstream recomputed; normalised the same way. Its ``attribution`` is the same quantity
estimated from gradients: ``score / (clean − corrupted)``.

Saving and reloading
--------------------
:meth:`Circuit.to_json` / :meth:`Circuit.from_json` round-trip a circuit; :meth:`Circuit.to_eap_ig` writes
hannamw/EAP-IG's graph JSON (``cfg``, ``nodes``, ``edges`` with ``score`` and ``in_graph``; nodes
``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``) and :meth:`Circuit.from_eap_ig` reads one, so a circuit
found by either tool can be re-verified by :func:`faithfulness` (which takes a Circuit as ``edges``).
Scores keep interp's sign (denoising, see :mod:`interp.attribution`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .attribution import check_method, compute_scores, edge_table
from .edge_patching import check_ablation, circuit_value, edge_effects, replacements, sender_outputs
from .engine import Engine, check_span, paired_batches
from .errors import InterpError
from .graph import Graph
from .metrics import pair_metric

__all__ = ["circuit", "faithfulness", "Circuit", "EDGE_COLUMNS"]

#: The columns of :attr:`Circuit.edges` (``candidates`` add ``kept``), with their dtypes.
EDGE_COLUMNS = {"edge": "object", "sender": "object", "receiver": "object", "input": "object",
                "score": "float64", "attribution": "float64", "effect": "float64"}


def _edge_frame(rows: Any, kept: bool = False):
    """A table of edges with :data:`EDGE_COLUMNS` (and ``kept``), typed whatever it was built from."""
    import pandas as pd

    cols = {**EDGE_COLUMNS, **({"kept": "bool"} if kept else {})}
    df = pd.DataFrame(rows, columns=list(cols)) if not isinstance(rows, pd.DataFrame) else rows[list(cols)]
    return df.astype(cols).reset_index(drop=True)


@dataclass
class Circuit:
    """A discovered circuit: its edges (attributed and exact), nodes and faithfulness.

    Attributes:
        edges: the kept edges, strongest exact effect first, with :data:`EDGE_COLUMNS`: ``edge``
            (``L0H4->L1H0.k``), ``sender``, ``receiver``, ``input`` (``q``/``k``/``v``, or ``in`` for
            an MLP or the logits), ``score`` (attribution, in metric units), ``attribution``
            (normalised) and ``effect`` (exact, normalised; see the module docs).
        candidates: every edge that was verified, the same columns and ``kept``.
        nodes: the components the kept edges join (``embed``, ``L1H0``, ``MLP0``, ``logits``).
        faithfulness: of the kept edges; ``faithfulness_candidates`` of all candidates.
        value, clean, corrupted: the metric on the circuit run, the clean and the corrupted runs.
        scores: every edge's attribution ``score`` by name (for export), or None.
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
    scores: Optional[dict] = None

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    # ------------------------------------------------------------------ interp's JSON
    def to_json(self) -> dict:
        """The circuit as plain data (:meth:`from_json` reads it back): the run's numbers, ``nodes``, the kept
        ``edges`` and the verified ``candidates`` (``input`` None for an MLP or the logits)."""
        def rows(df, kept: bool) -> list:
            out = []
            for r in df.itertuples():
                row = {"edge": r.edge, "sender": r.sender, "receiver": r.receiver,
                       "input": None if r.input == "in" else r.input, "score": _num(r.score),
                       "attribution": _num(r.attribution), "effect": _num(r.effect)}
                if kept:
                    row["kept"] = bool(r.kept)
                out.append(row)
            return out

        return {
            "format": "interp.circuit/1", "model": self.model, "n_layers": self.n_layers, "n_heads": self.n_heads,
            "metric": self.metric, "method": self.method, "steps": self.steps, "ablation": self.ablation,
            "clean": self.clean, "corrupted": self.corrupted, "value": self.value, "faithfulness": self.faithfulness,
            "faithfulness_candidates": self.faithfulness_candidates, "n_edges": self.n_edges, "n_nodes": self.n_nodes,
            "n_candidates": len(self.candidates), "total_edges": self.attrs.get("total_edges"),
            "attrs": {k: v for k, v in self.attrs.items() if isinstance(v, (bool, int, float, str)) or v is None},
            "nodes": list(self.nodes), "edges": rows(self.edges, False), "candidates": rows(self.candidates, True),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Circuit":
        """A circuit from :meth:`to_json`'s data (e.g. ``json.load`` of ``interp circuit --out``)."""
        if not isinstance(data, dict) or data.get("format") != "interp.circuit/1":
            raise InterpError("not a circuit written by interp (no \"format\": \"interp.circuit/1\"); "
                              "for EAP-IG's graph JSON use Circuit.from_eap_ig")
        try:
            def frame(rows, kept):
                return _edge_frame([{**r, "input": r["input"] or "in"} for r in rows], kept)

            return cls(
                edges=frame(data["edges"], False), candidates=frame(data["candidates"], True), nodes=list(data["nodes"]),
                faithfulness=data["faithfulness"], faithfulness_candidates=data["faithfulness_candidates"],
                value=data["value"], clean=data["clean"], corrupted=data["corrupted"], metric=data["metric"],
                method=data["method"], steps=data["steps"], ablation=data["ablation"], model=data["model"],
                n_layers=data["n_layers"], n_heads=data["n_heads"],
                attrs={**data.get("attrs", {}), "total_edges": data.get("total_edges")},
            )
        except (KeyError, TypeError) as e:
            raise InterpError(f"circuit JSON is missing or mangles {e}: write it with Circuit.to_json") from None

    # ------------------------------------------------------------------ EAP-IG's JSON
    def to_eap_ig(self) -> dict:
        """hannamw/EAP-IG's graph JSON (``Graph.from_json`` reads it): every edge of the graph with its
        ``score`` (interp's sign; 0 where none was computed) and ``in_graph`` (kept here)."""
        g = Graph(self.n_layers, self.n_heads)
        kept = set(self.edges["edge"])
        scores = self.scores or dict(zip(self.candidates["edge"], self.candidates["score"]))
        si, ri = g.valid.nonzero(as_tuple=True)
        edges = {}
        for s, r in zip(si.tolist(), ri.tolist()):
            name = g.edge_name(g.senders[s], *g.receivers[r])
            edges[_to_eap_ig_edge(name)] = {"score": float(scores.get(name, 0.0)), "in_graph": name in kept}
        in_nodes = set(self.nodes)
        nodes = {_EAP_NODE.get(n, n) if n in _EAP_NODE else _eap_node(n): {"in_graph": n in in_nodes or n == "logits"}
                 for n in [*g.senders, "logits"]}
        return {"cfg": {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": False,
                        "d_model": self.attrs.get("d_model")}, "nodes": nodes, "edges": edges}

    @staticmethod
    def from_eap_ig(data: dict) -> list[str]:
        """The edges (interp's names) that an EAP-IG graph JSON has ``in_graph``: give them to :func:`faithfulness`."""
        try:
            return [_from_eap_ig_edge(name) for name, info in data["edges"].items() if info["in_graph"]]
        except (KeyError, TypeError, AttributeError):
            raise InterpError("not an EAP-IG graph JSON: expected {'cfg', 'nodes', 'edges': {name: {'score', "
                              "'in_graph'}}}") from None

    def __repr__(self) -> str:
        return (f"Circuit({self.model}: {self.n_edges} edges, {self.n_nodes} nodes, faithfulness "
                f"{self.faithfulness:.3f}, {self.method}, {self.ablation} ablation)")


def _num(v: Any) -> Optional[float]:
    return None if v is None or v != v else float(v)


_EAP_NODE = {"embed": "input", "logits": "logits"}


def _eap_node(name: str) -> str:
    if name.startswith("MLP"):
        return f"m{name[3:]}"
    layer, head = name[1:].split("H")
    return f"a{layer}.h{head}"


def _to_eap_ig_edge(name: str) -> str:
    sender, receiver = name.split("->")
    receiver, _, what = receiver.partition(".")
    out = f"{_EAP_NODE.get(sender) or _eap_node(sender)}->{_EAP_NODE.get(receiver) or _eap_node(receiver)}"
    return out + (f"<{what}>" if what else "")


def _from_eap_ig_edge(name: str) -> str:
    def node(n: str) -> str:
        if n == "input":
            return "embed"
        if n == "logits":
            return "logits"
        if n.startswith("m"):
            return f"MLP{int(n[1:])}"
        layer, head = n[1:].split(".h")
        return f"L{int(layer)}H{int(head)}"

    sender, receiver = name.split("->")
    receiver, _, what = receiver.partition("<")
    return f"{node(sender)}->{node(receiver)}" + (f".{what.rstrip('>')}" if what else "")


# ---------------------------------------------------------------------------- discovery
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
    ablation: str = "corrupted",
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
        ablation: ``"corrupted"`` or ``"mean"``: what a removed edge carries (see the module docs).
            Under mean ablation edges that carry what the clean and corrupted prompts *share* (the
            current token into an induction head's query) matter too, but attribution, which sees
            only clean − corrupted, ranks them at zero: give a larger ``edges`` (or
            ``threshold=0``) so that they are candidates.
        prune: drop candidates that exact patching finds unnecessary (else keep every candidate on a
            path from the embeddings to the logits).
        tolerance: how much closer to the full model (in units of the clean − corrupted gap) an
            edge must keep the circuit to stay.
        chunk_tokens: tokens one stacked pass may hold. progress: a progress bar (default: on a terminal).

    Returns:
        A :class:`Circuit`. An empty one is refused (one line saying why): no candidate path from the
        embeddings to the logits, or every edge pruned.

    >>> from interp.testing import planted_model
    >>> from interp.metrics import LogitDiff
    >>> m = planted_model()
    >>> c = circuit(m, "a b c d e a b c d", "a b c x e a b c d", LogitDiff("e", "a"), edges=10, progress=False)
    >>> sorted(c.edges["edge"]), round(c.faithfulness, 3)
    (['L0H0->L1H0.k', 'L1H0->logits', 'embed->L0H0.v'], 1.0)
    """
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
    engine = Engine(model, chunk_tokens)
    cb, kb = paired_batches(model, clean, corrupted)
    metric = pair_metric(model, cb, kb, metric)
    scores = compute_scores(model, cb, kb, metric, method=method, steps=steps, chunk_tokens=chunk_tokens,
                            progress=progress)
    span = check_span(metric, scores.clean, scores.corrupted)
    table = edge_table(scores)
    cand = table.head(edges) if edges is not None else table[table["attribution"].abs() >= threshold]
    if len(cand) == 0:
        raise InterpError(f"no edge has |attribution| ≥ {threshold}: the largest is {table['attribution'].abs().max():.3g}")
    g = scores.graph
    pairs = [g.parse_edge(e) for e in cand["edge"]]
    with torch.no_grad():
        clean_out, _, _ = sender_outputs(engine, cb)
        corrupt_out, _, _ = sender_outputs(engine, kb)
    repl = replacements(corrupt_out, kb, ablation)

    def faith(kept: Tensor) -> float:
        return (float(metric.from_resid(model, circuit_value(engine, cb, kept, repl), cb)) - scores.corrupted) / span

    with tqdm(total=len(pairs) * (2 if prune else 1), desc="verify and prune", unit="edge",
              disable=None if progress is None else not progress) as bar:
        exact = edge_effects(engine, kb, metric, pairs, clean_out - corrupt_out, bar)
        cand = cand.assign(effect=[(v - scores.corrupted) / span for v in exact])
        kept = torch.zeros_like(g.valid)
        for si, ri in pairs:
            kept[si, ri] = True
        every = kept.clone()
        f_all = faith(g.connected(kept))
        f_now = f_all
        if prune:
            for k in cand["effect"].abs().sort_values(kind="stable").index:
                si, ri = pairs[cand.index.get_loc(k)]
                kept[si, ri] = False
                f_without = faith(g.connected(kept))
                if abs(1 - f_without) <= abs(1 - f_now) + tolerance:
                    f_now = f_without
                else:
                    kept[si, ri] = True
                bar.update()
    kept = g.connected(kept)
    if not bool(kept.any()):
        why = (f"every edge was pruned (tolerance {tolerance}: the empty circuit is within it of the full model)"
               if bool(g.connected(every).any())
               else f"none of the {len(pairs)} candidate edge(s) lies on a path from the embeddings to the logits")
        raise InterpError(f"the circuit is empty: {why}; verify more edges (edges=, --edges) or lower the tolerance")
    value = float(metric.from_resid(model, circuit_value(engine, cb, kept, repl), cb))
    cand = cand.assign(kept=[bool(kept[si, ri]) for si, ri in pairs])
    chosen = cand[cand["kept"]]
    chosen = chosen.reindex(chosen["effect"].abs().sort_values(ascending=False, kind="stable").index)
    nodes = [n for n in [*g.senders, "logits"] if n in set(chosen["sender"]) | set(chosen["receiver"])]
    return Circuit(
        edges=_edge_frame(chosen), candidates=_edge_frame(cand, kept=True), nodes=nodes,
        faithfulness=(value - scores.corrupted) / span, faithfulness_candidates=f_all, value=value,
        clean=scores.clean, corrupted=scores.corrupted, metric=metric.name, method=method, steps=steps,
        ablation=ablation, model=model.cfg.name, n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
        attrs={"fold_ln": model.cfg.fold_ln, "tolerance": tolerance, "prune": prune, "d_model": model.cfg.d_model,
               "candidates": len(cand), "total_edges": int(g.valid.sum())},
        scores=dict(zip(table["edge"], table["score"].astype(float))),
    )


def faithfulness(model, clean: Any, corrupted: Any, edges: Any, metric: Any = None, *,
                 ablation: str = "corrupted") -> float:
    """The faithfulness of a set of edges, every other edge ablated.

    ``edges``: names such as ``"L0H0->L1H0.k"``, or a :class:`Circuit` (its kept edges). Edges on no path
    from the embeddings to the logits are dropped first, as :func:`circuit` and EAP-IG drop them.
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
    engine = Engine(model)
    cb, kb = paired_batches(model, clean, corrupted)
    metric = pair_metric(model, cb, kb, metric)
    g = Graph(model.cfg.n_layers, model.cfg.n_heads)
    if isinstance(edges, Circuit):
        edges = list(edges.edges["edge"])
    kept = torch.zeros_like(g.valid)
    for e in ([edges] if isinstance(edges, str) else edges):
        kept[g.parse_edge(e)] = True
    with torch.no_grad():
        corrupt_out, _, corrupt_run = sender_outputs(engine, kb)
        clean_run = engine.record(cb)
    c, k = float(metric.from_resid(model, clean_run.final, cb)), float(metric.from_resid(model, corrupt_run.final, kb))
    span = check_span(metric, c, k)
    final = circuit_value(engine, cb, g.connected(kept), replacements(corrupt_out, kb, ablation))
    return (float(metric.from_resid(model, final, cb)) - k) / span
