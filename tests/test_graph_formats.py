"""Transcoder sets on disk (circuit-tracer's format, SAELens's) and circuit-tracer's frontend JSON read back."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import interp
from interp.errors import InterpError
from interp.features import SAE, SAEConfig
from interp.features.graph import AttributionGraph
from interp.features.transcoders import fold_transcoder, load_transcoders, save_circuit_tracer

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"


@pytest.fixture(scope="module")
def fixture_models():
    raw = interp.load(str(FIXTURES / "model"), fold_ln=False, dtype="float64")
    folded = interp.load(str(FIXTURES / "model"), fold_ln=True, dtype="float64")
    return raw, folded


@pytest.mark.parametrize("tset", ["relu", "skip"])
def test_circuit_tracer_transcoders_compute_what_circuit_tracer_computes(tset, fixture_models):
    """Their file's arithmetic (SingleLayerTranscoder: relu/JumpReLU(x W_encᵀ + b_enc), f W_dec + b_dec + x W_skipᵀ)."""
    raw, _ = fixture_models
    saes = load_transcoders(FIXTURES / f"transcoders-{tset}", dtype="float64")
    assert [s.hook_name for s in saes] == [f"blocks.{i}.ln2.hook_normalized" for i in range(3)]
    assert all(s.hook_name_out == f"blocks.{i}.hook_mlp_out" and s.cfg.fold_ln is False for i, s in enumerate(saes))
    x = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for layer, sae in enumerate(saes):
        t = {k: v.double() for k, v in load_file(str(FIXTURES / f"transcoders-{tset}" / f"layer_{layer}.safetensors")).items()}
        pre = x @ t["W_enc"].T + t["b_enc"]
        thr = t.get("activation_function.threshold")
        acts = pre.relu() if thr is None else pre * (pre > thr)
        out = acts @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if "W_skip" in t else 0)
        torch.testing.assert_close(sae.encode(x), acts)
        torch.testing.assert_close(sae(x), out)


def test_circuit_tracer_format_round_trip(tmp_path):
    saes = load_transcoders(FIXTURES / "transcoders-skip")
    back = load_transcoders(save_circuit_tracer(saes, tmp_path / "tc"))
    for a, b in zip(saes, back):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip"):
            assert torch.equal(getattr(a, name), getattr(b, name))


def test_saelens_directories_are_read_by_layer(tmp_path):
    saes = [SAE(SAEConfig("topk", d_in=8, d_sae=16, k=2, hook_name=f"blocks.{i}.ln2.hook_normalized",
                          hook_name_out=f"blocks.{i}.hook_mlp_out", apply_b_dec_to_input=False, fold_ln=True), seed=i)
            for i in (1, 0)]
    for i, s in enumerate(saes):
        s.save(tmp_path / f"tc-{'ba'[i]}")  # names that do not sort by layer
    back = load_transcoders(tmp_path)
    assert [s.hook_name_out for s in back] == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert torch.equal(back[0].W_enc, saes[1].W_enc)


def test_bad_transcoder_sets_are_one_line_errors(tmp_path):
    with pytest.raises(InterpError, match="not a directory"):
        load_transcoders(tmp_path / "nope")
    with pytest.raises(InterpError, match="neither circuit-tracer's format"):
        load_transcoders(tmp_path)
    (tmp_path / "config.yaml").write_text("model_kind: cross_layer_transcoder\n")
    with pytest.raises(InterpError, match="cross-layer"):
        load_transcoders(tmp_path)
    sae = SAE(SAEConfig("standard", d_in=8, d_sae=16, hook_name="blocks.0.hook_resid_post"))
    with pytest.raises(InterpError, match="an SAE, not a transcoder"):
        save_circuit_tracer([sae], tmp_path / "x")


def test_fold_transcoder_is_the_same_function_on_the_folded_model(fixture_models):
    raw, folded = fixture_models
    tokens = torch.tensor([[0, 5, 9, 3, 5, 9]])
    for sae in load_transcoders(FIXTURES / "transcoders-skip", dtype="float64"):
        f = fold_transcoder(sae, raw)
        names = [sae.hook_name, sae.hook_name_out]
        _, c_raw = raw.run(tokens, names=names)
        _, c_fold = folded.run(tokens, names=names)
        torch.testing.assert_close(f.encode(c_fold[names[0]]), sae.encode(c_raw[names[0]]), rtol=1e-10, atol=1e-10)
        out_raw = sae(c_raw[names[0]])
        # the folded model's MLP output is the raw one centred: so is the folded transcoder's
        torch.testing.assert_close(f(c_fold[names[0]]), out_raw - out_raw.mean(-1, keepdim=True), rtol=1e-10, atol=1e-10)
    with pytest.raises(InterpError, match="needs the raw model"):
        fold_transcoder(sae, folded)


@pytest.mark.parametrize("slug", ["relu-induction", "skip-mixed"])
def test_circuit_tracers_json_reads_back_to_the_same_document(slug):
    path = FIXTURES / "frontend" / f"{slug}.json"
    ref = json.loads(path.read_text())
    g = AttributionGraph.from_json(path)
    assert g.n_layers == 3 and g.n_pos == len(ref["metadata"]["prompt_tokens"])
    assert g.n_edges == len(ref["links"])
    again = g.to_json(slug=slug, scan=ref["metadata"]["scan"])
    assert again["metadata"] == ref["metadata"]
    assert again["qParams"] == ref["qParams"]
    assert again["nodes"] == ref["nodes"]
    assert again["links"] == ref["links"]


def test_bad_json_is_a_one_line_error(tmp_path):
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(InterpError, match="not JSON"):
        AttributionGraph.from_json(tmp_path / "x.json")
    with pytest.raises(InterpError, match="no 'metadata'"):
        AttributionGraph.from_json({"nodes": []})
