"""The attention side (interp.features.qk): a head's score as query-node × key-node terms, checked by freezing and intervening.

The decomposition comes from gradients; every check here runs the frozen replacement model
forward with nodes removed (patterns and LayerNorm scales set to their values on the prompt), and
reads the model's own query, key and score.
"""

import math
from pathlib import Path

import pytest
import torch

import interp
from interp import hooks as hk
from interp.errors import InterpError
from interp.features.qk import parse_qk, qk_attribution
from interp.features.replacement import Replacement
from interp.features.transcoders import fold_transcoder, load_transcoders

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"
PROMPT = torch.tensor([0, 5, 9, 3, 5, 9])
LAYER, HEAD, Q, K = 2, 1, 5, 2


@pytest.fixture(scope="module", params=[False, True], ids=["raw", "folded"])
def setup(request):
    raw = interp.load(str(FIXTURES / "model"), fold_ln=False, dtype="float64")
    tcs = load_transcoders(FIXTURES / "transcoders-skip", dtype="float64")
    if request.param:
        model, tcs = interp.load(str(FIXTURES / "model"), fold_ln=True, dtype="float64"), [fold_transcoder(t, raw) for t in tcs]
    else:
        model = raw
    d = qk_attribution(model, tcs, PROMPT, (LAYER, HEAD), Q, K)
    return model, tcs, d, Replacement(model, tcs, PROMPT)


def set_at(layer, kind, pos, value):
    """A hook setting head HEAD's query or key at one position to ``value`` [E, d_head]."""
    def fn(x, name):
        x = x.clone()
        x[:, pos, HEAD] = value
        return x
    return (hk.name(kind, layer), fn)


def test_terms_sum_to_the_score_and_the_bias_is_the_frozen_model_without_nodes(setup):
    model, tcs, d, rep = setup
    assert d.total() == pytest.approx(d.score, rel=1e-10)
    assert d.terms().sum().item() == pytest.approx(d.score, rel=1e-10)
    every = [(n, -1.0) for n in range(len(d.labels) - 1)]
    got = rep.frozen([[], every], reads=[("q", LAYER), ("k", LAYER), ("attn_scores", LAYER)])
    assert got["attn_scores"][0, HEAD, Q, K].item() == pytest.approx(d.score, rel=1e-10)  # frozen = the model
    torch.testing.assert_close(d.query[-1], got["q"][1, Q, HEAD], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(d.key[-1], got["k"][1, K, HEAD], rtol=1e-9, atol=1e-10)
    assert (d.query[:-1].abs().sum(1) > 0).sum() > 20  # features, errors and tokens all take part


def test_removing_the_top_pairs_nodes_moves_the_score_by_exactly_their_terms(setup):
    model, tcs, d, rep = setup
    top = d.top_pairs(3)
    top = top[(top.query_node < len(d.labels) - 1) & (top.key_node < len(d.labels) - 1)].iloc[0]
    a, b = int(top.query_node), int(top.key_node)
    runs = rep.frozen([[], [(a, -1.0)], [(b, -1.0)]], reads=[("q", LAYER), ("k", LAYER)])
    q_all, q_no_a = runs["q"][0, Q, HEAD], runs["q"][1, Q, HEAD]
    k_all, k_no_b = runs["k"][0, K, HEAD], runs["k"][2, K, HEAD]

    def score(q, k):  # the model's own score, with the query at Q and the key at K set
        got = rep.frozen([[]], reads=[("attn_scores", LAYER)],
                         extra_hooks=[set_at(LAYER, "q", Q, q), set_at(LAYER, "k", K, k)])
        return got["attn_scores"][0, HEAD, Q, K].item()

    # the key side alone: node b removed from the key moves the score by b's key-side share
    share = d.key_side().set_index("node").loc[b, "share"]
    assert score(q_all, k_all) - score(q_all, k_no_b) == pytest.approx(share, rel=1e-8, abs=1e-12)
    # the pair: by inclusion-exclusion over both sides
    pair = score(q_all, k_all) - score(q_no_a, k_all) - score(q_all, k_no_b) + score(q_no_a, k_no_b)
    assert pair == pytest.approx(top.term, rel=1e-8, abs=1e-12)
    assert top.term == pytest.approx(float(d.query[a] @ d.key[b]) / math.sqrt(d.d_head))


def test_qk_input_is_checked():
    model = interp.load(str(FIXTURES / "model"), fold_ln=False)
    assert parse_qk(model, "L2H1@5,2") == (2, 1, 5, 2)
    assert parse_qk(model, "1.0@-1,-3") == (1, 0, -1, -3)
    for bad, msg in (("L2H1", "HEAD@QUERY,KEY"), ("L2H1@5", "two whole numbers"), ("L9H1@1,0", "out of range")):
        with pytest.raises(InterpError, match=msg):
            parse_qk(model, bad)
    tcs = load_transcoders(FIXTURES / "transcoders-skip")
    with pytest.raises(InterpError, match="key position 4 is after query position 2"):
        qk_attribution(model, tcs, PROMPT, "L2H1", 2, 4)
    with pytest.raises(InterpError, match="query position 9 out of range"):
        qk_attribution(model, tcs, PROMPT, "L2H1", 9, 0)
