"""Influence on the logits, pruning and the graph scores of an attribution graph, as circuit-tracer defines them.

circuit-tracer 0.5 (``circuit_tracer/graph.py``) works on the dense adjacency ``A`` ``[n_nodes,
n_nodes]`` (targets × sources). With ``Â = |A|`` row-normalised and ``w`` the logit nodes'
probabilities, a node's *influence* is ``I = w·(Â + Â² + …)``; ``prune_graph`` keeps the nodes
holding ``node_threshold`` of the total influence (tokens and logits always), renormalises the
rows of the matrix restricted to them, recomputes the influence there, scores each edge by
``Â'[t, s]·(I'_t + w_t)``, keeps the edges holding ``edge_threshold`` of the total score, then drops
feature and error nodes left without an outgoing edge and features without an incoming one, until
nothing changes. ``compute_graph_scores`` gives the *replacement score* (the influence of the
tokens over that of tokens and error nodes) and the *completeness score* (each node's share of
non-error input, weighted by its influence plus its logit weight).

The same numbers without the dense matrix: the graph is a DAG whose targets can be visited so
that every node's outgoing edges are seen before its own row (logits, then features from the last
layer down), so ``I_t = Σ_s … `` is final when row ``t`` is computed and
``I += (w_t + I_t)·Â[t]`` accumulates the influence row by row (:class:`StreamingInfluence`);
nothing of the row needs to be kept. Edge pruning (:func:`prune`) reads the kept targets' rows
twice in the same order — once for the pruned influence and a histogram of the edge scores, once
to keep the edges above the threshold found there — so it holds only the kept edges.
:func:`find_threshold` finds circuit-tracer's threshold without sorting everything (a histogram,
then a sort of one bin): circuit-tracer's sort of ``n_nodes²`` scores is what runs out of memory
on long prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import InterpError

__all__ = ["find_threshold", "StreamingInfluence", "prune", "graph_scores", "cumulative_scores", "Pruned"]

#: circuit-tracer's floor for a row's sum when normalising (``normalize_matrix``).
ROW_FLOOR = 1e-10


def find_threshold(scores: Float[Tensor, " n"], threshold: Union[int, float], *, bins: int = 4096) -> float:
    """The smallest score circuit-tracer keeps so that the kept scores hold ``threshold`` of the total.

    circuit-tracer sorts the scores in descending order and returns the first whose cumulative
    sum reaches ``threshold`` of the total; every score ``≥`` it is kept. Equivalently: the largest
    score ``v`` with ``Σ_{s ≥ v} s ≥ threshold · Σ s``. Found here with one histogram pass over
    the scores (log-spaced bins) and a sort of the one bin the answer is in.

    >>> find_threshold(torch.tensor([5.0, 3.0, 1.0, 1.0]), 0.8)   # 5 + 3 = 8 ≥ 0.8 · 10
    3.0
    """
    if not 0.0 <= threshold <= 1.0:
        raise InterpError(f"threshold {threshold} out of range: give a fraction in [0, 1]")
    s = scores.reshape(-1)
    if s.numel() == 0:
        raise InterpError("no scores to threshold")
    if s.numel() <= 1 << 16:  # small: circuit-tracer's own sort
        return _sorted_threshold(s, threshold)
    pos = s[s > 0]
    if pos.numel() == 0 or threshold == 1.0:
        return _sorted_threshold(s, threshold)
    total = s.sum(dtype=torch.float64)
    lo, hi = float(pos.min()), float(pos.max())
    edges = torch.logspace(torch.log10(torch.tensor(lo, dtype=torch.float64)), torch.log10(torch.tensor(hi, dtype=torch.float64)),
                           bins + 1, dtype=torch.float64)
    b = torch.bucketize(pos.to(torch.float64), edges[1:-1])
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, b, pos.to(torch.float64))
    above = mass.flip(0).cumsum(0).flip(0)  # mass in this bin and those above
    target = threshold * float(total)
    k = int((above >= target * (1 - 1e-12)).nonzero().max())  # the highest bin whose mass from it up reaches the target
    rest = float(above[k + 1]) if k + 1 < bins else 0.0
    inside = torch.sort(pos[b == k], descending=True).values
    cum = inside.to(torch.float64).cumsum(0) + rest
    idx = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64)))
    return float(inside[min(idx, len(inside) - 1)])


def _sorted_threshold(s: Tensor, threshold: float) -> float:
    values = torch.sort(s, descending=True).values
    cum = torch.cumsum(values, 0) / torch.sum(values)
    idx = int(torch.searchsorted(cum, torch.tensor([threshold], dtype=cum.dtype)))
    return float(values[min(idx, len(values) - 1)])


class StreamingInfluence:
    """Node influence accumulated one target row at a time, in an order where each row's own influence is final.

    ``weights``: the logit weights over all ``n_nodes`` (zero but for the logit nodes). Feed rows
    with :meth:`add` (target indices and their rows over the ``n_sources`` first nodes), logits
    first, then features from the last layer down. Also keeps each row's share of error input
    (for the completeness score).
    """

    def __init__(self, weights: Float[Tensor, " n_nodes"], n_sources: int, error_slice: slice):
        self.w = weights.to(torch.float64)
        self.influence = torch.zeros_like(self.w)
        self.n_sources = n_sources
        self.error_slice = error_slice
        self.error_share = torch.zeros_like(self.w)
        self.seen = torch.zeros(len(self.w), dtype=torch.bool)

    def coefficient(self, targets: Tensor) -> Tensor:
        """``w_t + I_t`` of the given targets (final once every row that reads them has been added)."""
        return self.w[targets] + self.influence[targets]

    def add(self, targets: Tensor, rows: Float[Tensor, "k n_sources"]) -> Tensor:
        """Add rows whose targets do not feed one another (one layer's features, or the logits).

        Returns the rows normalised, ``|row| / Σ|row|``.
        """
        if bool(self.seen[targets].any()):
            raise InterpError("a target row was added twice")
        a = rows.abs().to(torch.float64)
        a /= a.sum(1, keepdim=True).clamp(min=ROW_FLOOR)
        self.influence[: self.n_sources] += self.coefficient(targets) @ a
        self.error_share[targets] = a[:, self.error_slice].sum(1)
        self.seen[targets] = True
        return a


def cumulative_scores(influence: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Each node's place in the cumulative influence, as circuit-tracer's ``prune_graph`` returns it (its JSON's ``influence``)."""
    values, order = torch.sort(influence, descending=True)
    out = torch.zeros_like(influence)
    out[order] = torch.cumsum(values, 0) / torch.sum(values)
    return out


@dataclass
class Pruned:
    """The result of :func:`prune`: masks over all nodes, the kept edges (global indices) and the pruned influence."""

    node_mask: Bool[Tensor, " n_nodes"]
    targets: Tensor  # kept edges' target node indices
    sources: Tensor  # … and source node indices
    weights: Tensor  # … and their adjacency entries
    node_threshold_value: float
    edge_threshold_value: float


#: Edge scores are binned by their log10, BINS_PER_DECADE to a decade between 10**LOG_LO and 10**LOG_HI.
LOG_LO, LOG_HI, BINS_PER_DECADE = -40.0, 10.0, 256


def _score_bins(scores: Tensor) -> Tensor:
    n = int((LOG_HI - LOG_LO) * BINS_PER_DECADE)
    return ((torch.log10(scores) - LOG_LO) * BINS_PER_DECADE).floor().clamp(0, n - 1).long()


def prune(rows, sub_targets: Tensor, kept_sources: Tensor, weights: Tensor, kinds: "NodeKinds", node_mask: Tensor,
          node_threshold_value: float, edge_threshold: float, chunk: int = 256) -> Pruned:
    """circuit-tracer's edge pruning without its matrix: the kept targets' rows are read twice, never stored.

    ``rows(js)`` returns the adjacency rows ``[len(js), n_sources]`` of targets ``sub_targets[js]``;
    ``sub_targets`` are the targets kept by node pruning in the streaming order (logits, then
    features from the last layer down) and ``kept_sources`` the kept source nodes (a mask).
    ``node_mask`` is the node pruning's result (modified in place as nodes lose their edges).

    First pass: each row restricted to the kept sources and normalised gives the pruned influence
    (final for a target when its row comes) and its edges' scores ``Â'[t, s]·(I'_t + w_t)``, counted
    in a histogram of their log. The histogram says in which bin the edge threshold lies; the second
    pass keeps the edges above that bin and sorts the few inside it. Memory: the kept edges.
    """
    w = weights.to(torch.float64)
    inf2 = torch.zeros(len(w), dtype=torch.float64)
    coef = torch.zeros(len(sub_targets), dtype=torch.float64)
    n_bins = int((LOG_HI - LOG_LO) * BINS_PER_DECADE)
    mass = torch.zeros(n_bins, dtype=torch.float64)
    keep = kept_sources.to(torch.float64)
    runs = [(a + i, min(a + i + chunk, b)) for a, b in _layer_runs(kinds.layer[sub_targets]) for i in range(0, b - a, chunk)]

    def normalised(a: int, b: int) -> tuple[Tensor, Tensor]:
        r = rows(torch.arange(a, b)).to(torch.float64)
        x = r.abs() * keep
        return r, x / x.sum(1, keepdim=True).clamp(min=ROW_FLOOR)

    for a, b in runs:  # pruned influence, row by row (each row's coefficient is final when its turn comes)
        _, x = normalised(a, b)
        c = w[sub_targets[a:b]] + inf2[sub_targets[a:b]]
        coef[a:b] = c
        inf2[: x.shape[1]] += c @ x
        sc = x * c[:, None]
        pos = sc > 0
        mass.index_add_(0, _score_bins(sc[pos]), sc[pos])
    # circuit-tracer thresholds every entry of the n² matrix (zeros included, which change nothing below 1).
    total = float(mass.sum())
    target = edge_threshold * total
    above = mass.flip(0).cumsum(0).flip(0)
    if total <= 0:
        raise InterpError("the pruned graph has no edges left")
    k = int((above >= target).nonzero().max()) if bool((above >= target).any()) else 0
    rest = float(above[k + 1]) if k + 1 < n_bins else 0.0
    sure_t, sure_s, sure_w, cand = [], [], [], []
    for a, b in runs:
        r, x = normalised(a, b)
        sc = x * coef[a:b, None]
        pos = sc > 0
        bins = torch.full_like(sc, -1, dtype=torch.long)
        bins[pos] = _score_bins(sc[pos])
        ti, si = (bins > k).nonzero(as_tuple=True)
        sure_t.append(sub_targets[a + ti]), sure_s.append(si), sure_w.append(r[ti, si])
        ti, si = (bins == k).nonzero(as_tuple=True)
        cand.append((sub_targets[a + ti], si, r[ti, si], sc[ti, si]))
    ct, cs, cw, cv = (torch.cat(x) for x in zip(*cand)) if cand else [torch.zeros(0)] * 4
    order = torch.sort(cv, descending=True).indices
    cum = cv[order].cumsum(0) + rest
    idx = int(torch.searchsorted(cum, torch.tensor([target], dtype=cum.dtype))) if len(cum) else 0
    t_edge = float(cv[order][min(idx, len(cv) - 1)]) if len(cv) else float("inf")
    inside = cv >= t_edge
    T = torch.cat([*sure_t, ct[inside].long()])
    S = torch.cat([*sure_s, cs[inside].long()])
    W = torch.cat([*sure_w, cw[inside].to(torch.float64)])
    # Features and errors keep an outgoing edge, features an incoming one, until nothing changes.
    prunable, feature = kinds.prunable_source, kinds.is_feature
    while True:
        before = node_mask.clone()
        has_out = torch.zeros_like(node_mask)
        has_out[S] = True
        has_in = torch.zeros_like(node_mask)
        has_in[T] = True
        node_mask &= ~prunable | has_out
        node_mask &= ~feature | has_in
        if torch.equal(before, node_mask):
            break
        alive = node_mask[T] & node_mask[S]
        T, S, W = T[alive], S[alive], W[alive]
    order = torch.argsort(T * len(w) + S)
    return Pruned(node_mask, T[order], S[order], W[order], node_threshold_value, t_edge)


def _layer_runs(layers: Tensor) -> list[tuple[int, int]]:
    """Consecutive runs of equal layer in ``layers`` (the streaming order's groups)."""
    if len(layers) == 0:
        return []
    change = (layers[1:] != layers[:-1]).nonzero().squeeze(1) + 1
    bounds = [0, *change.tolist(), len(layers)]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class NodeKinds:
    """What each node is, over the circuit-tracer node order: features, errors (layer-major), tokens, logits."""

    n_features: int
    n_layers: int
    n_pos: int
    n_logits: int
    feature_layers: Tensor

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_sources(self) -> int:
        return self.n_features + self.n_errors + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.n_sources + self.n_logits

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_errors)

    @property
    def token_slice(self) -> slice:
        return slice(self.n_features + self.n_errors, self.n_sources)

    @property
    def logit_slice(self) -> slice:
        return slice(self.n_sources, self.n_nodes)

    @property
    def layer(self) -> Tensor:
        """Each node's layer: features and errors theirs, tokens -1, logits n_layers."""
        err = torch.arange(self.n_layers).repeat_interleave(self.n_pos)
        return torch.cat([self.feature_layers.long(), err, torch.full((self.n_pos,), -1),
                          torch.full((self.n_logits,), self.n_layers)])

    @property
    def is_feature(self) -> Tensor:
        m = torch.zeros(self.n_nodes, dtype=torch.bool)
        m[: self.n_features] = True
        return m

    @property
    def prunable_source(self) -> Tensor:
        """Features and errors (they must keep an outgoing edge); tokens and logits are always kept."""
        m = torch.zeros(self.n_nodes, dtype=torch.bool)
        m[: self.n_features + self.n_errors] = True
        return m


def graph_scores(influence: Tensor, error_share: Tensor, weights: Tensor, kinds: NodeKinds) -> tuple[float, float]:
    """circuit-tracer's ``compute_graph_scores`` from the streamed influence and each row's error share."""
    token = influence[kinds.token_slice].sum()
    error = influence[kinds.error_slice].sum()
    replacement = token / (token + error)
    out = influence.to(torch.float64) + weights.to(torch.float64)
    completeness = ((1 - error_share) * out).sum() / out.sum()
    return float(replacement), float(completeness)


def sparse_graph_scores(targets: Tensor, sources: Tensor, values: Tensor, weights: Tensor,
                        kinds: NodeKinds, order: Optional[Tensor] = None) -> tuple[float, float]:
    """:func:`graph_scores` of the graph whose only edges are ``(targets, sources, values)`` (a pruned graph)."""
    n = kinds.n_nodes
    a = values.abs().to(torch.float64)
    rowsum = torch.zeros(n, dtype=torch.float64).index_add_(0, targets, a)
    a = a / rowsum[targets].clamp(min=ROW_FLOOR)
    w = weights.to(torch.float64)
    inf = torch.zeros(n, dtype=torch.float64)
    layer = kinds.layer
    # Visit targets from the top layer down: a row's influence is final when its layer is reached.
    for lay in sorted(set(layer[targets].tolist()), reverse=True):
        sel = (layer[targets] == lay).nonzero().squeeze(1)
        t, s = targets[sel], sources[sel]
        inf.index_add_(0, s, (w[t] + inf[t]) * a[sel])
    is_err = torch.zeros(n, dtype=torch.bool)
    is_err[kinds.error_slice] = True
    err_share = torch.zeros(n, dtype=torch.float64).index_add_(0, targets, a * is_err[sources])
    return graph_scores(inf, err_share, w, kinds)
