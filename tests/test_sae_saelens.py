"""interp's SAE against SAELens 6.54.12's own files and outputs, both ways (fixtures: tools/saelens_fixtures.py)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.errors import InterpError
from interp.features.sae import SAE, SAEConfig

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
SAELENS = sorted(p.name for p in (FIXTURES / "saelens").iterdir())
INTERP = sorted(p.name for p in (FIXTURES / "interp").iterdir())


def close(got, want, what):
    assert got.shape == want.shape, what
    err = float((got - want).abs().max()) if got.numel() else 0.0
    assert err <= 1e-6, f"{what}: max |diff| {err:.2e}"


def ours(sae: SAE, x: torch.Tensor) -> dict:
    f = sae.encode(x)
    return {"hidden_pre": sae.encode_pre(x), "feature_acts": f, "decoded": sae.decode(f, x_in=x), "out": sae(x)}


def test_fixtures_present():
    assert {"standard", "topk", "batchtopk", "jumprelu", "skip_transcoder", "pre6_standard", "pre6_topk"} <= set(SAELENS)
    assert {"standard", "topk", "batchtopk", "jumprelu", "skip_transcoder"} <= set(INTERP)


@pytest.mark.parametrize("name", SAELENS)
def test_saelens_files_give_saelens_outputs(name):
    """An SAE SAELens made and saved, read by interp: its numbers equal SAELens's to 1e-6."""
    sae = SAE.load(FIXTURES / "saelens" / name)
    want = load_file(str(FIXTURES / "saelens" / name / "outputs.safetensors"))
    got = ours(sae, want["x"])
    for key in ("hidden_pre", "feature_acts", "decoded", "out"):
        close(got[key], want[key], f"{name} {key}")
    # The features must not be trivially all zero or all on (else the check above is weak).
    active = (got["feature_acts"] != 0).float().mean()
    assert 0 < active < 1, name


def test_saelens_architectures_and_modes():
    load = lambda n: SAE.load(FIXTURES / "saelens" / n)  # noqa: E731
    bt = load("batchtopk")
    assert (bt.architecture, bt.cfg.k) == ("batchtopk", 4)  # saved by SAELens as a JumpReLU
    assert torch.allclose(bt.threshold, torch.full((bt.d_sae,), 0.45))
    assert (load("pre6_topk").architecture, load("pre6_topk").cfg.k) == ("topk", 4)
    assert load("pre6_standard").hook_name == "blocks.0.hook_resid_pre"  # from hook_point
    assert load("pre6_standard").cfg.model_name == load("standard").cfg.model_name == "interp-tiny"
    assert load("pre6_standard").cfg.apply_b_dec_to_input is True  # the pre-6.0 default
    st = load("skip_transcoder")
    assert st.is_transcoder and st.hook_name_out == "blocks.0.hook_mlp_out" and st.W_skip.shape == (16, 12)
    assert load("transcoder").W_skip is None
    # Weight modes: SAELens trains on from_pretrained_no_processing(**model_from_pretrained_kwargs).
    assert load("standard").cfg.fold_ln is False  # {"center_writing_weights": False}
    assert load("jumprelu").cfg.fold_ln is True  # fold_ln and centring both on
    assert load("topk").cfg.fold_ln is None  # not recorded
    assert SAE.load(FIXTURES / "saelens" / "topk", fold_ln=False).cfg.fold_ln is False


@pytest.mark.parametrize("name", INTERP)
def test_saelens_reads_what_interp_saved(name):
    """SAELens's outputs on interp's files equal interp's own, and the files round-trip exactly."""
    d = FIXTURES / "interp" / name
    sae = SAE.load(d)
    want = load_file(str(d / "saelens_outputs.safetensors"))
    got = ours(sae, want["x"])
    for key in ("hidden_pre", "feature_acts", "decoded", "out"):
        close(got[key], want[key], f"{name} {key}")
    active = (got["feature_acts"] != 0).float().mean()
    assert 0 < active < 1, name


def test_save_load_round_trip(tmp_path):
    for name in INTERP:
        sae = SAE.load(FIXTURES / "interp" / name)
        back = SAE.load(sae.save(tmp_path / name))
        assert back.cfg == sae.cfg
        for (n, p), (m, q) in zip(sae.named_parameters(), back.named_parameters()):
            assert n == m and torch.equal(p, q), (name, n)
    raw = load_file(str(FIXTURES / "interp" / "skip_transcoder" / "sae_weights.safetensors"))
    assert raw["W_skip"].shape == (12, 16)  # SAELens's [d_out, d_in]


def test_load_refuses_bad_files(tmp_path):
    with pytest.raises(InterpError, match="cfg.json is missing"):
        SAE.load(tmp_path)
    sae = SAE(SAEConfig("standard", d_in=4, d_sae=8, hook_name="blocks.0.hook_resid_pre"))
    d = sae.save(tmp_path / "s")
    (d / "cfg.json").write_text('{"architecture": "gated", "d_in": 4, "d_sae": 8, "metadata": {"sae_lens_version": "6.1.0"}}')
    with pytest.raises(InterpError, match="'gated' is not supported"):
        SAE.load(d)
    (d / "cfg.json").write_text('{"architecture": "standard", "d_in": 4, "d_sae": 9, "metadata": {"sae_lens_version": "6.1.0"}}')
    with pytest.raises(InterpError, match=r"W_enc has shape \(4, 8\), expected \(4, 9\)"):
        SAE.load(d)
    with pytest.raises(InterpError, match="unknown SAEConfig keys"):
        SAEConfig.from_dict({"architecture": "standard", "d_in": 4, "d_sae": 8, "lr": 1})
    with pytest.raises(InterpError, match="k must be"):
        SAEConfig("topk", d_in=4, d_sae=8)
    with pytest.raises(InterpError, match="transcoder cannot apply b_dec"):
        SAEConfig("standard", d_in=4, d_sae=8, d_out=3, hook_name_out="blocks.0.hook_mlp_out")
