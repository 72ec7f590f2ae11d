"""Attribution graphs (interp.features.graph): exact edges, planted transcoders, weight modes, bad input.

Every kept edge is checked against the freeze-and-intervene oracle (forward runs with attention
patterns, LayerNorm scales and MLP outputs set to their values on the prompt, the source node
added once more: no gradients), in both weight modes, on models with random LayerNorm gains and
biases and every bias random; the parity with circuit-tracer itself is tests/test_graph_parity.py.
"""

from pathlib import Path

import pandas as pd
import pytest
import torch

import interp
from interp.errors import InterpError
from interp.features import SAE, SAEConfig
from interp.features.graph import attribution_graph, verify_edges
from interp.features.replacement import Replacement
from interp.features.transcoders import fold_transcoder, load_transcoders
from interp.testing import word_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"
PROMPT = [0, 5, 9, 3, 5, 9]
LONG = [0, 5, 9, 3, 5, 9, 12, 7, 30, 2, 21, 5]  # ≥ 8 tokens: backward passes over the prompt's prefixes too


@pytest.fixture(scope="module")
def fixture_models():
    raw = interp.load(str(FIXTURES / "model"), fold_ln=False, dtype="float64")
    folded = interp.load(str(FIXTURES / "model"), fold_ln=True, dtype="float64")
    tcs = load_transcoders(FIXTURES / "transcoders-skip", dtype="float64")
    return {False: (raw, tcs), True: (folded, [fold_transcoder(t, raw) for t in tcs])}


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "folded"])
def test_every_kept_edge_equals_the_freeze_and_intervene_oracle(fold, fixture_models):
    model, tcs = fixture_models[fold]
    g = attribution_graph(model, tcs, torch.tensor(LONG), node_threshold=0.7, edge_threshold=0.95, progress=False)
    df = verify_edges(model, tcs, g)
    assert len(df) == g.n_edges > 100
    assert set(g.edge_targets.tolist()) & set(range(g.n_features)) and (g.features[:, 1] < 6).any()
    big = df["oracle"].abs() > 1e-9
    assert df.loc[big, "rel_error"].max() < 1e-5
    assert (df.loc[~big, "abs_error"] < 1e-12).all()


def test_edges_and_constants_add_up_to_every_target(fixture_models):
    """The replacement is exact: a target's pre-activation = the sum of its incoming edges from every node + what is
    left with every node removed (the frozen model run without features, errors and token embeddings)."""
    model, tcs = fixture_models[False]
    g = attribution_graph(model, tcs, torch.tensor(PROMPT), keep_all=True, progress=False)
    rep = Replacement(model, tcs, torch.tensor(PROMPT))
    every = [(n, -1.0) for n in range(g.kinds.n_sources)]
    runs = rep.frozen([[], every], logit_ids=g.logit_ids)
    # the unedited frozen run is the model itself
    names = [t.hook_name for t in tcs]
    logits, cache = model.run(torch.tensor([PROMPT]), names=names)
    f = g.features
    pre = torch.stack([tcs[l].encode_pre(cache[names[l]][0, p]).squeeze()[k] for l, p, k in f.tolist()])
    torch.testing.assert_close(runs["pre"][0], pre, rtol=1e-10, atol=1e-10)
    nf, nl = g.n_features, g.n_logits
    torch.testing.assert_close(g.adjacency[:nf].sum(1) + runs["pre"][1], pre, rtol=1e-9, atol=1e-9)
    last = logits[0, -1]
    centred = last[g.logit_ids] - last.mean()
    torch.testing.assert_close(g.adjacency[-nl:].sum(1) + runs["logits"][1], centred, rtol=1e-9, atol=1e-9)


def relu_model_and_exact_transcoders(fold_ln: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=32,
                                    activation_function="relu", bos_token_id=0, eos_token_id=0)).double().eval()
    with torch.no_grad():  # random LayerNorm gains and biases, every bias random
        for name, p in hf.named_parameters():
            if name.endswith((".bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype))
    model = interp.load(hf, tokenizer=word_tokenizer(), fold_ln=fold_ln, dtype="float64")
    tcs = []
    for layer in range(2):
        cfg = SAEConfig("standard", d_in=16, d_sae=64, hook_name=f"blocks.{layer}.ln2.hook_normalized",
                        hook_name_out=f"blocks.{layer}.hook_mlp_out", apply_b_dec_to_input=False, fold_ln=fold_ln,
                        dtype="float64")
        sae = SAE(cfg)
        with torch.no_grad():  # the MLP itself: relu(x W_in + b_in) W_out + b_out, a ReLU transcoder
            sae.W_enc.copy_(model.W_in[layer])
            sae.b_enc.copy_(model.b_in[layer])
            sae.W_dec.copy_(model.W_out[layer])
            sae.b_dec.copy_(model.b_out[layer])
        tcs.append(sae)
    return model, tcs


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "folded"])
def test_transcoders_that_are_the_mlps_leave_no_error(fold):
    model, tcs = relu_model_and_exact_transcoders(fold)
    prompt = torch.tensor([0, 3, 17, 22, 3, 17, 8, 11, 5])
    rep = Replacement(model, tcs, prompt)
    assert rep.errors.abs().max() < 1e-12
    g = attribution_graph(model, tcs, prompt, progress=False)
    assert g.replacement_score == pytest.approx(1.0, abs=1e-9)
    assert g.completeness_score == pytest.approx(1.0, abs=1e-9)
    assert not g.node_mask[g.kinds.error_slice].any()


def test_the_graph_is_the_same_in_both_weight_modes():
    raw, tcs = relu_model_and_exact_transcoders(False)
    folded, tcs_folded = relu_model_and_exact_transcoders(True)
    prompt = torch.tensor([0, 3, 17, 22, 3, 17, 8, 11, 5])
    # the transcoders in each mode compute the same function; perturb both alike so that errors are not zero
    for a, b in zip(tcs, tcs_folded):
        with torch.no_grad():
            a.b_enc.sub_(0.3)
            b.b_enc.sub_(0.3)
    ga = attribution_graph(raw, tcs, prompt, keep_all=True, progress=False)
    gb = attribution_graph(folded, tcs_folded, prompt, keep_all=True, progress=False)
    assert torch.equal(ga.features, gb.features) and torch.equal(ga.node_mask, gb.node_mask)
    torch.testing.assert_close(ga.adjacency, gb.adjacency, rtol=1e-9, atol=1e-11)
    assert ga.replacement_score == pytest.approx(gb.replacement_score, rel=1e-10)


def test_batch_size_and_row_cache_do_not_change_the_graph(fixture_models):
    model, tcs = fixture_models[True]
    a = attribution_graph(model, tcs, torch.tensor(PROMPT), batch_size=64, progress=False)
    b = attribution_graph(model, tcs, torch.tensor(PROMPT), batch_size=3, cache_mb=0, progress=False)
    assert b.info["rows_recomputed"] > a.info["rows_recomputed"] == 0
    assert torch.equal(a.node_mask, b.node_mask) and torch.equal(a.edge_sources, b.edge_sources)
    torch.testing.assert_close(a.edge_weights, b.edge_weights, rtol=1e-12, atol=1e-14)


def test_the_edge_table_names_each_end_and_its_position(fixture_models):
    model, tcs = fixture_models[False]
    g = attribution_graph(model, tcs, torch.tensor(PROMPT), progress=False)
    edges, nodes = g.edges(), g.nodes(kept=False).set_index("node")
    assert len(edges) == g.n_edges
    for end in ("source", "target"):
        for i, pos, label in zip(edges[end], edges[f"{end}_pos"], edges[f"{end}_label"]):
            node = nodes.loc[i]
            if node["kind"] == "logit":
                assert pd.isna(pos) and label == f"logit {node['token']!r}"
            else:
                assert pos == node["pos"] and label.endswith(f" @{pos}")
                assert label.startswith("token " if node["kind"] == "token" else node["label"])
    assert {"feature", "token", "logit"} <= set(nodes.loc[edges["source"].tolist() + edges["target"].tolist(), "kind"])


def test_logit_nodes_are_the_likeliest_tokens_until_the_wanted_probability(fixture_models):
    model, tcs = fixture_models[False]
    probs = model(torch.tensor([PROMPT]))[0, -1].softmax(-1)
    top = probs.sort(descending=True)
    for wanted, most in ((0.95, 10), (0.5, 10), (0.99, 3)):
        g = attribution_graph(model, tcs, torch.tensor(PROMPT), desired_logit_prob=wanted, max_n_logits=most,
                              progress=False)
        n = min(int((top.values.cumsum(0) < wanted).sum()) + 1, most)
        assert g.logit_ids.tolist() == top.indices[:n].tolist()


def test_bad_input_is_a_one_line_error(fixture_models):
    model, tcs = fixture_models[False]
    with pytest.raises(InterpError, match="node_threshold 1.5 out of range"):
        attribution_graph(model, tcs, torch.tensor(PROMPT), node_threshold=1.5)
    with pytest.raises(InterpError, match="edge_threshold 1 out of range"):
        attribution_graph(model, tcs, torch.tensor(PROMPT), edge_threshold=1)
    with pytest.raises(InterpError, match="no transcoder for MLP 2"):
        attribution_graph(model, tcs[:2], torch.tensor(PROMPT))
    with pytest.raises(InterpError, match="an SAE, not a transcoder"):
        attribution_graph(model, [SAE(SAEConfig("standard", d_in=16, d_sae=8, hook_name="blocks.0.hook_resid_pre"))],
                          torch.tensor(PROMPT))
    with pytest.raises(InterpError, match="the prompt is empty"):
        attribution_graph(model, tcs, "")
    with pytest.raises(InterpError, match="trained with fold_ln=False"):
        attribution_graph(fixture_models[True][0], tcs, torch.tensor(PROMPT))
