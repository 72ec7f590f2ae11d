"""Gradients through the hooked model and attribution patching: finite differences, TransformerLens, identities."""

import gc
import weakref

import pytest
import torch

from interp import InterpError, attribute
from interp.attribution import compute_scores
from interp.gradients import read_gradients
from interp.hooks import resolve
from interp.graph import Graph
from interp.metrics import LogitDiff, Loss
from test_patching import induction_pair, pair

MODES = [True, False]


@pytest.fixture(scope="module")
def models(noisy, noisy_raw):
    return {True: noisy, False: noisy_raw}


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("point", ["resid_pre.0", "z.1", "mlp_out.0", "pattern.1", "q.2", "ln2.2", "resid_post.2"])
def test_gradients_equal_finite_differences(noisy, point):
    clean, _ = pair(noisy, n=2, P=6)
    metric = LogitDiff(5, 9)
    # Read a second point too: a read must not cut the paths through it to the points before it.
    got = read_gradients(noisy, clean, [point, "resid_pre.2"], metric)
    (name,) = resolve(point, noisy.cfg.n_layers)
    g, act = got.gradients[name], got.activations[name]
    direction = torch.randn(act.shape, generator=torch.Generator().manual_seed(1), dtype=act.dtype)
    eps = 1e-5

    def value(sign):
        logits = noisy(clean, hooks=[(name, lambda x, n: x + sign * eps * direction)])
        return float(metric.bind(noisy).from_logits(noisy, logits, noisy.to_batch(clean)))

    numeric = (value(1) - value(-1)) / (2 * eps)
    assert abs(numeric) > 1e-3  # the metric moves: the comparison can fail
    assert float((g * direction).sum()) == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    assert got.value == pytest.approx(value(0), abs=1e-12)


def test_gradient_reads_leave_nothing_behind_after_an_error(noisy):
    clean, _ = pair(noisy, n=1, P=5)
    seen = []

    def boom(final):
        raise RuntimeError("metric failed")

    with noisy.hooks([("z.1", lambda x, n: seen.append(weakref.ref(x)))]):  # the user's own hook survives
        with pytest.raises(RuntimeError, match="metric failed") as info:
            read_gradients(noisy, clean, ["resid_pre.1", "z.1"], metric_of=boom)
        assert noisy.has_hooks
    assert not noisy.has_hooks
    gc.collect()
    # The traceback is still held (as a notebook holds its last error), yet no activation with a graph is.
    assert info.value is not None and seen and seen[0]() is None
    assert not torch.is_grad_enabled()  # autograd is off again (the test runs under no_grad)
    with pytest.raises(InterpError, match="no hook points named"):
        read_gradients(noisy, clean, [], Loss())


# ---------------------------------------------------------------------------- TransformerLens
def _tl_names(node):
    return {"embed": "embed", "attn_head_out": f"L{node.layer}H{node.head}", "mlp_out": f"MLP{node.layer}",
            "q_input": f"L{node.layer}H{node.head}.q", "k_input": f"L{node.layer}H{node.head}.k",
            "v_input": f"L{node.layer}H{node.head}.v", "mlp_in": f"MLP{node.layer}", "logits": "logits"}[node.kind]


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
def test_equal_to_transformer_lens_attribution_patch(models, fold):
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    m = models[fold]
    clean, corrupted = pair(m, n=2, P=6)
    with torch.enable_grad():
        fn = lambda logits: logits[0, -1, 5] - logits[0, -1, 9]  # noqa: E731  (one pair at a time)
        tl_node = attribution_patch(m.bridge, clean, corrupted, fn, config=EdgeAttributionConfig(granularity="node"))
        tl_edge = attribution_patch(m.bridge, clean, corrupted, fn, config=EdgeAttributionConfig(granularity="edge"))
    theirs_node, theirs_edge = {}, {}
    for node, v in tl_node.node_scores.items():  # theirs per position, ours summed over positions
        theirs_node[_tl_names(node)] = theirs_node.get(_tl_names(node), 0.0) + v
    for (a, b), v in tl_edge.edge_scores.items():
        k = f"{_tl_names(a)}->{_tl_names(b)}"
        theirs_edge[k] = theirs_edge.get(k, 0.0) + v
    nodes = attribute(m, clean, corrupted, LogitDiff(5, 9), level="node", progress=False).set_index("node")["score"]
    edges = attribute(m, clean, corrupted, LogitDiff(5, 9), progress=False).set_index("edge")["score"]
    assert set(edges.index) == set(theirs_edge) and len(edges) == int(Graph(3, 4).valid.sum()) == 262
    tol = 1e-6 if fold else 1e-9  # TransformerLens folds float64 weights in float32 (~1e-7, test_folding)
    assert max(abs(edges[k] - v) for k, v in theirs_edge.items()) < tol
    assert max(abs(nodes[k] - v) for k, v in theirs_node.items()) < tol
    assert edges.abs().max() > 1e-2 and nodes.abs().max() > 1e-2  # scores that matter: the comparison can fail


# ---------------------------------------------------------------------------- identities
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_a_senders_edges_sum_to_its_node_score(noisy, method):
    clean, corrupted = pair(noisy, n=3, P=7)
    s = compute_scores(noisy, noisy.to_batch(clean), noisy.to_batch(corrupted), LogitDiff(5, 9).bind(noisy),
                       method=method, steps=3, chunk_tokens=30, progress=False)  # steps in two stacked passes
    assert torch.allclose(s.edge.sum(1), s.node, atol=1e-10, rtol=0)
    assert s.node.abs().max() > 1e-2
    one_pass = compute_scores(noisy, noisy.to_batch(clean), noisy.to_batch(corrupted), LogitDiff(5, 9).bind(noisy),
                              method=method, steps=3, progress=False)
    assert torch.allclose(one_pass.edge, s.edge, atol=1e-10, rtol=0)  # stacking the steps changes nothing


def test_eap_ig_integrates_the_gradient_along_the_path(noisy):
    """Completeness: the embeddings' EAP-IG score tends to metric(clean) − metric(corrupted), error O(1/steps)."""
    clean, corrupted = pair(noisy, n=2, P=6)
    errors = {}
    for steps in (4, 32):
        df = attribute(noisy, clean, corrupted, LogitDiff(5, 9), level="node", method="eap-ig", steps=steps,
                       progress=False).set_index("node")
        gap = df.attrs["clean"] - df.attrs["corrupted"]
        errors[steps] = abs(df.loc["embed", "score"] - gap) / abs(gap)
    assert errors[32] < 0.1 and errors[32] < errors[4] / 5  # O(1/steps): 8 times smaller
    eap = attribute(noisy, clean, corrupted, LogitDiff(5, 9), level="node", method="eap", progress=False)
    assert abs(eap.set_index("node").loc["embed", "attribution"] - 1) > 0.05  # plain EAP is not exact here


def test_one_step_of_eap_ig_is_the_gradient_at_the_clean_input(noisy):
    """α = k/steps for k = 1 … steps: one step is the clean end, i.e. EAP with the roles swapped, sign flipped."""
    clean, corrupted = pair(noisy, n=2, P=6)
    ig = attribute(noisy, clean, corrupted, LogitDiff(5, 9), method="eap-ig", steps=1, progress=False).set_index("edge")
    swapped = attribute(noisy, corrupted, clean, LogitDiff(5, 9), method="eap", progress=False).set_index("edge")
    assert (ig["score"] + swapped["score"].reindex(ig.index)).abs().max() < 1e-10
    assert ig["score"].abs().max() > 1e-2


def test_atp_and_eap_are_one_estimate_and_steps_only_matter_for_ig(planted):
    clean, corrupted = induction_pair(planted, n=2)
    a = attribute(planted, clean, corrupted, level="node", method="atp", steps=3, progress=False)
    b = attribute(planted, clean, corrupted, level="node", method="eap", progress=False)
    assert a["score"].tolist() == b["score"].tolist() and a.attrs["steps"] == 1


# ---------------------------------------------------------------------------- planted truth
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_the_planted_induction_edges_rank_first(planted, method):
    clean, corrupted = induction_pair(planted)
    df = attribute(planted, clean, corrupted, method=method, progress=False)
    assert set(df["edge"].head(3)) == {"embed->L0H0.v", "L0H0->L1H0.k", "L1H0->logits"}
    assert df["attribution"].head(3).min() > 0.5 and df["attribution"].iloc[3:].abs().max() < 0.05
    nodes = attribute(planted, clean, corrupted, level="node", method=method, progress=False)
    assert set(nodes["node"].head(3)) == {"embed", "L0H0", "L1H0"}


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(level="head"), "unknown level 'head'"),
    (dict(method="acdc"), "unknown method 'acdc'"),
    (dict(method="eap-ig", steps=0), "steps must be a positive int"),
    (dict(chunk_tokens=0), "chunk_tokens must be a positive int"),
])
def test_bad_attribution_arguments(planted, kwargs, message):
    with pytest.raises(InterpError, match=message):
        attribute(planted, "a b c", "a b d", LogitDiff("a", "b"), progress=False, **kwargs)
    with pytest.raises(InterpError, match="differ in length"):
        attribute(planted, "a b c", "a b c d", LogitDiff("a", "b"), progress=False)
    assert not planted.has_hooks


def test_the_bench_section_prints_its_ratios(capsys, monkeypatch):
    from interp import bench, testing

    # The section on a small random model instead of GPT-2 small (same code path, less time).
    monkeypatch.setattr(testing, "random_gpt2_small_hf", lambda seed=0: testing.random_gpt2_hf(seed, vocab_size=50257))
    rows = bench.run(["attribute"], n_prompts=2, n_pos=16)
    out = capsys.readouterr().out
    assert [r.what.split(" (")[0] for r in rows[:2]] == ["EAP, every edge / one forward+backward",
                                                         "EAP-IG 5 steps, every edge / one forward+backward"]
    # Which one is faster is the bench's to print, not a unit test's to assert (timings on a loaded machine).
    assert all(r.line() in out for r in rows) and rows[0].value > 0 and rows[1].value > 0
    assert -1 <= rows[3].value <= 1 and "Spearman(EAP-IG head scores" in rows[4].what
