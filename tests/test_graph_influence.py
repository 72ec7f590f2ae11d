"""Influence, pruning and graph scores (interp.features.influence) against circuit-tracer 0.5.0's own results.

The fixtures (tools/circuit_tracer_fixtures.py) hold circuit-tracer's adjacency matrices, its
``prune_graph`` masks at two threshold pairs and its ``compute_graph_scores``; here interp's
streamed computation (rows one layer at a time, never the dense power series) must give the same
masks exactly and the same scores, and the influence must equal the power series computed
densely in the test.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.errors import InterpError
from interp.features.influence import (NodeKinds, StreamingInfluence, _layer_runs, cumulative_scores, find_threshold,
                                       graph_scores, prune, sparse_graph_scores)

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"
SLUGS = ["relu-induction", "relu-mixed", "skip-induction", "skip-mixed"]
THRESHOLDS = {"": (0.8, 0.98), "_0.6_0.9": (0.6, 0.9)}


def fixture(slug):
    t = load_file(str(FIXTURES / "graphs" / f"{slug}.safetensors"))
    info = json.loads((FIXTURES / "graphs" / f"{slug}.json").read_text())
    nf, nl = t["adjacency_features"].shape[0], t["adjacency_logits"].shape[0]
    kinds = NodeKinds(nf, 3, len(t["input_tokens"]), nl, t["active_features"][:, 0].long())
    A = torch.zeros(kinds.n_nodes, kinds.n_nodes, dtype=torch.float64)
    A[:nf] = t["adjacency_features"].double()
    A[-nl:] = t["adjacency_logits"].double()
    w = torch.zeros(kinds.n_nodes, dtype=torch.float64)
    w[kinds.logit_slice] = t["logit_probabilities"]
    return t, info, kinds, A, w


def streamed(kinds, A, w):
    """interp's order: logits, then features from the last layer down; rows added one layer at a time."""
    order = torch.cat([torch.arange(kinds.n_sources, kinds.n_nodes), torch.argsort(-kinds.feature_layers, stable=True)])
    s = StreamingInfluence(w, kinds.n_sources, kinds.error_slice)
    for a, b in _layer_runs(kinds.layer[order]):
        s.add(order[a:b], A[order[a:b], : kinds.n_sources])
    return s, order


def power_series(A, w):
    """circuit-tracer's definition written out: I = w (Â + Â² + ...), Â = |A| row-normalised."""
    a = A.abs()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    total, term = torch.zeros_like(w), w @ a
    while term.abs().sum() > 0:
        total += term
        term = term @ a
    return total


@pytest.mark.parametrize("slug", SLUGS)
def test_streamed_influence_is_the_power_series_and_scores_are_circuit_tracers(slug):
    t, info, kinds, A, w = fixture(slug)
    s, _ = streamed(kinds, A, w)
    torch.testing.assert_close(s.influence, power_series(A, w), rtol=1e-12, atol=1e-14)
    rep, comp = graph_scores(s.influence, s.error_share, w, kinds)
    # the fixture's adjacency is stored in float32: scores agree to its rounding
    assert rep == pytest.approx(info["replacement_score"], abs=1e-6)
    assert comp == pytest.approx(info["completeness_score"], abs=1e-6)
    torch.testing.assert_close(cumulative_scores(s.influence), t["cumulative_scores"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("slug", SLUGS)
@pytest.mark.parametrize("tag", list(THRESHOLDS))
def test_pruning_equals_circuit_tracers_masks(slug, tag):
    t, info, kinds, A, w = fixture(slug)
    node_threshold, edge_threshold = THRESHOLDS[tag]
    s, order = streamed(kinds, A, w)
    t_node = find_threshold(s.influence, node_threshold)
    mask = s.influence >= t_node
    mask[kinds.token_slice] = True
    mask[kinds.logit_slice] = True
    sub_t = order[mask[order]]
    reads = []
    pr = prune(lambda js: reads.append(len(js)) or A[sub_t[js], : kinds.n_sources], sub_t, mask[: kinds.n_sources], w,
               kinds, mask.clone(), t_node, edge_threshold, chunk=7)
    assert sum(reads) == 2 * len(sub_t) and max(reads) <= 7  # every kept row read twice, in chunks, never stored
    assert torch.equal(pr.node_mask, t["node_mask" + tag].bool())
    assert set(zip(pr.targets.tolist(), pr.sources.tolist())) == set(map(tuple, t["edges" + tag].long().tolist()))
    assert torch.equal(pr.weights, A[pr.targets, pr.sources])
    if tag == "":
        rep, comp = sparse_graph_scores(pr.targets, pr.sources, pr.weights, w, kinds)
        assert rep == pytest.approx(info["pruned_replacement_score"], abs=1e-6)
        assert comp == pytest.approx(info["pruned_completeness_score"], abs=1e-6)


def reference_threshold(scores, threshold):
    """circuit-tracer's find_threshold, written out."""
    v = torch.sort(scores, descending=True).values
    cum = torch.cumsum(v, 0) / torch.sum(v)
    return float(v[min(int(torch.searchsorted(cum, threshold)), len(v) - 1)])


@pytest.mark.parametrize("n", [10, 5000, 300_000])
@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.98])
def test_find_threshold_equals_a_full_sort(n, threshold):
    g = torch.Generator().manual_seed(n)
    scores = torch.rand(n, generator=g, dtype=torch.float64) ** 6  # heavy-tailed, like influence
    scores[torch.rand(n, generator=g) < 0.3] = 0  # and many exact zeros
    assert find_threshold(scores, threshold) == reference_threshold(scores, threshold)


def test_find_threshold_checks_its_fraction():
    with pytest.raises(InterpError, match="threshold 1.5 out of range"):
        find_threshold(torch.ones(3), 1.5)


def dense_prune(A, w, kinds, node_threshold, edge_threshold):
    """circuit-tracer's prune_graph written out on the dense matrix: the specification."""
    n_tok, n_log, nf = kinds.n_pos, kinds.n_logits, kinds.n_features
    influence = power_series(A, w)
    node_mask = influence >= reference_threshold(influence, node_threshold)
    node_mask[-n_log - n_tok:] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    a = pruned.abs()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    scores = a * (power_series(pruned, w) + w)[:, None]
    edge_mask = scores >= reference_threshold(scores.flatten(), edge_threshold)
    old = node_mask.clone()
    node_mask[: -n_log - n_tok] &= edge_mask[:, : -n_log - n_tok].any(0)
    node_mask[:nf] &= edge_mask[:nf].any(1)
    while not torch.equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[: -n_log - n_tok] &= edge_mask[:, : -n_log - n_tok].any(0)
        node_mask[:nf] &= edge_mask[:nf].any(1)
    return node_mask, edge_mask


@pytest.mark.parametrize("seed", range(12))
def test_pruning_equals_the_dense_specification_on_random_graphs(seed):
    """Random DAGs shaped like attribution graphs, heavy-tailed weights: every rule of the pruning gets exercised."""
    g = torch.Generator().manual_seed(seed)
    L, P, n_logits = 3, 4, 3
    feats = torch.randint(0, L, (25,), generator=g).sort().values
    fpos = torch.randint(1, P, (25,), generator=g)
    kinds = NodeKinds(len(feats), L, P, n_logits, feats)
    N, S = kinds.n_nodes, kinds.n_sources
    layer = kinds.layer
    pos = torch.cat([fpos, torch.arange(P).repeat(L), torch.arange(P), torch.full((n_logits,), P - 1)])
    # an edge s -> t exists when s is before t in depth and position (errors at position 0 are empty)
    allowed = (layer[None, :S] < layer[:, None]) & (pos[None, :S] <= pos[:, None])
    allowed[S - P: S, :] = False  # tokens have no inputs
    A = torch.zeros(N, N, dtype=torch.float64)
    A[:, :S] = torch.randn(N, S, generator=g, dtype=torch.float64) * torch.rand(N, S, generator=g, dtype=torch.float64) ** 4
    A[:, :S] *= allowed & (torch.rand(N, S, generator=g) < 0.7)
    A[kinds.error_slice, :] = 0
    w = torch.zeros(N, dtype=torch.float64)
    w[kinds.logit_slice] = torch.tensor([0.6, 0.25, 0.1], dtype=torch.float64)
    nt, et = [(0.8, 0.98), (0.5, 0.7), (0.9, 0.8)][seed % 3]
    ref_nodes, ref_edges = dense_prune(A, w, kinds, nt, et)
    s, order = streamed(kinds, A, w)
    t_node = find_threshold(s.influence, nt)
    mask = s.influence >= t_node
    mask[kinds.token_slice] = True
    mask[kinds.logit_slice] = True
    sub_t = order[mask[order]]
    pr = prune(lambda js: A[sub_t[js], :S], sub_t, mask[:S], w, kinds, mask.clone(), t_node, et)
    assert torch.equal(pr.node_mask, ref_nodes)
    assert set(zip(pr.targets.tolist(), pr.sources.tolist())) == set(map(tuple, ref_edges.nonzero().tolist()))
