"""interp's attribution graph equals circuit-tracer 0.5.0's on the same model, transcoders and prompts, in both weight modes.

tools/circuit_tracer_fixtures.py ran circuit-tracer (float64) on a random 3-layer GPT-2 with
random LayerNorm gains and biases and every bias random, and two transcoder sets in its format
(ReLU; JumpReLU with skip connections); its files and outputs are the fixtures. interp reads the
same files: raw, and folded (the transcoders rewritten by ``fold_transcoder``). Two 6-token prompts
with each set, and the model's whole 16-token context with the second (251 features, so interp's
16-row batches, its row cache and the pruning see many rows).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import interp
from interp.features.graph import attribution_graph
from interp.features.transcoders import fold_transcoder, load_transcoders

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"
SLUGS = ["relu-induction", "relu-mixed", "skip-induction", "skip-mixed", "skip-long"]


@pytest.fixture(scope="module")
def models():
    raw = interp.load(str(FIXTURES / "model"), fold_ln=False, dtype="float64")
    return {False: raw, True: interp.load(str(FIXTURES / "model"), fold_ln=True, dtype="float64")}


@pytest.fixture(scope="module")
def graphs(models):
    """Each fixture graph computed by interp in both modes (keep_all: the whole matrix)."""
    out = {}
    for slug in SLUGS:
        tset = slug.split("-")[0]
        tcs = load_transcoders(FIXTURES / f"transcoders-{tset}", dtype="float64")
        info = json.loads((FIXTURES / "graphs" / f"{slug}.json").read_text())
        for fold in (False, True):
            saes = [fold_transcoder(t, models[False]) for t in tcs] if fold else tcs
            out[slug, fold] = attribution_graph(models[fold], saes, torch.tensor(info["tokens"]), keep_all=True,
                                                progress=False, batch_size=16)
    return out


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "folded"])
@pytest.mark.parametrize("slug", SLUGS)
def test_graph_equals_circuit_tracers(slug, fold, graphs):
    t = load_file(str(FIXTURES / "graphs" / f"{slug}.safetensors"))
    info = json.loads((FIXTURES / "graphs" / f"{slug}.json").read_text())
    g = graphs[slug, fold]
    # nodes: the same active features in the same order, the same logit targets
    assert torch.equal(g.features, t["active_features"].long())
    torch.testing.assert_close(g.activations, t["activation_values"], rtol=1e-10, atol=1e-12)
    assert torch.equal(g.logit_ids, t["logit_ids"].long())
    torch.testing.assert_close(g.logit_probs, t["logit_probabilities"], rtol=1e-10, atol=1e-12)
    # edges: every entry of the adjacency matrix (the fixture stores circuit-tracer's float64 matrix in float32)
    nf, nl = g.n_features, g.n_logits
    ref = torch.zeros_like(g.adjacency)
    ref[:nf] = t["adjacency_features"].double()
    ref[-nl:] = t["adjacency_logits"].double()
    scale = ref.abs().max()
    assert (g.adjacency - ref).abs().max() <= 1e-6 * scale
    big = ref.abs() > 1e-3 * scale
    assert ((g.adjacency - ref).abs()[big] / ref.abs()[big]).max() < 1e-5
    # pruning and scores
    assert torch.equal(g.node_mask, t["node_mask"].bool())
    assert set(zip(g.edge_targets.tolist(), g.edge_sources.tolist())) == set(map(tuple, t["edges"].long().tolist()))
    assert g.replacement_score == pytest.approx(info["replacement_score"], abs=1e-9)
    assert g.completeness_score == pytest.approx(info["completeness_score"], abs=1e-9)
    assert g.pruned_replacement_score == pytest.approx(info["pruned_replacement_score"], abs=1e-9)
    assert g.pruned_completeness_score == pytest.approx(info["pruned_completeness_score"], abs=1e-9)
    torch.testing.assert_close(g.cumulative, t["cumulative_scores"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("slug", SLUGS)
def test_frontend_json_equals_circuit_tracers(slug, graphs):
    ref = json.loads((FIXTURES / "frontend" / f"{slug}.json").read_text())
    mine = graphs[slug, True].to_json(slug=slug, scan=ref["metadata"]["scan"])
    assert mine["metadata"] == ref["metadata"] and mine["qParams"] == ref["qParams"]
    assert [n["node_id"] for n in mine["nodes"]] == [n["node_id"] for n in ref["nodes"]]
    for a, b in zip(mine["nodes"], ref["nodes"]):
        for key, value in b.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            else:
                assert a[key] == value, key
    assert [(x["source"], x["target"]) for x in mine["links"]] == [(x["source"], x["target"]) for x in ref["links"]]
    assert [x["weight"] for x in mine["links"]] == pytest.approx([x["weight"] for x in ref["links"]], rel=1e-6)


def test_memory_is_kept_edges_not_nodes_squared(models, graphs):
    """Without keep_all the graph holds only its kept edges; with no row cache every kept row is recomputed, same graph."""
    info = json.loads((FIXTURES / "graphs" / "skip-induction.json").read_text())
    tcs = load_transcoders(FIXTURES / "transcoders-skip", dtype="float64")
    lean = attribution_graph(models[False], tcs, torch.tensor(info["tokens"]), cache_mb=0, batch_size=5, progress=False)
    full = graphs["skip-induction", False]
    assert lean.adjacency is None
    assert lean.info["rows_recomputed"] >= int(lean.node_mask[: lean.n_features].sum()) + lean.n_logits
    assert torch.equal(lean.node_mask, full.node_mask)
    assert torch.equal(lean.edge_targets, full.edge_targets) and torch.equal(lean.edge_sources, full.edge_sources)
    torch.testing.assert_close(lean.edge_weights, full.edge_weights, rtol=1e-12, atol=1e-14)
    assert lean.n_edges < lean.n_nodes**2 / 20
