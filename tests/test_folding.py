"""interp.folding against TransformerLens's processing and against exact arithmetic; raw weights are Hugging Face's."""

import pytest
import torch

import interp
from interp.folding import fold_layer_norm
from interp.bridge import TL_NAMES, bridge_weights

from conftest import noisy_hf_model


def boot_reference(hf_model, tok, fold_ln: bool):
    """A TransformerBridge booted here, independently of interp's own lazy ``model.bridge``."""
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    from interp.loading import _prepare_tokenizer

    bridge = TransformerBridge.boot_transformers(
        "reference", hf_model=copy.deepcopy(hf_model), tokenizer=_prepare_tokenizer(tok), device="cpu",
        dtype=next(hf_model.parameters()).dtype,
    )
    if fold_ln:
        bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=False)
    return bridge_weights(bridge, len(hf_model.transformer.h))


def exact_fold(hf_model) -> dict:
    """The folded weights in float64 from the raw ones, written as matrix products (another formulation)."""
    sd = {k.removeprefix("transformer."): v.detach().double() for k, v in hf_model.state_dict().items()}
    L = len(hf_model.transformer.h)
    M = sd["wte.weight"].shape[1]
    H = hf_model.config.n_head
    D = M // H
    C = torch.eye(M, dtype=torch.float64) - 1.0 / M      # centring over d_model: x ↦ x C
    out = {k: [] for k in TL_NAMES}
    for i in range(L):
        h = lambda n: sd[f"h.{i}.{n}"]  # noqa: E731
        w1, b1, w2, b2 = h("ln_1.weight"), h("ln_1.bias"), h("ln_2.weight"), h("ln_2.bias")
        Wqkv, bqkv = h("attn.c_attn.weight"), h("attn.c_attn.bias")
        bqkv = bqkv + b1 @ Wqkv
        Wqkv = C @ torch.diag(w1) @ Wqkv
        for j, x in enumerate("QKV"):
            out[f"W_{x}"].append(Wqkv[:, j * M:(j + 1) * M].reshape(M, H, D).permute(1, 0, 2))
            out[f"b_{x}"].append(bqkv[j * M:(j + 1) * M].reshape(H, D))
        out["W_O"].append((h("attn.c_proj.weight") @ C).reshape(H, D, M))
        out["b_O"].append(h("attn.c_proj.bias") @ C)
        out["b_in"].append(h("mlp.c_fc.bias") + b2 @ h("mlp.c_fc.weight"))
        out["W_in"].append(C @ torch.diag(w2) @ h("mlp.c_fc.weight"))
        out["W_out"].append(h("mlp.c_proj.weight") @ C)
        out["b_out"].append(h("mlp.c_proj.bias") @ C)
        for k in ("ln1_w", "ln2_w"):
            out[k].append(torch.ones(M, dtype=torch.float64))
        for k in ("ln1_b", "ln2_b"):
            out[k].append(torch.zeros(M, dtype=torch.float64))
    out = {k: torch.stack(v) for k, v in out.items() if v}
    W_U = (sd["lm_head.weight"] if "lm_head.weight" in sd else sd["wte.weight"]).T
    out["W_E"], out["W_pos"] = sd["wte.weight"] @ C, sd["wpe.weight"] @ C
    W_U = C @ torch.diag(sd["ln_f.weight"]) @ W_U
    out["W_U"] = W_U - W_U.mean(1, keepdim=True)         # centred over the vocabulary (a d_vocab² matrix is 20 GB)
    b_U = sd["ln_f.bias"] @ (sd["lm_head.weight"] if "lm_head.weight" in sd else sd["wte.weight"]).T
    out["b_U"] = b_U - b_U.mean()
    out["lnf_w"], out["lnf_b"] = torch.ones(M, dtype=torch.float64), torch.zeros(M, dtype=torch.float64)
    return out


def max_diffs(a: dict, b: dict) -> dict:
    return {k: float((a[k].double() - b[k].double()).abs().max()) for k in TL_NAMES}


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory, gpt2_small_hf):
    hf, tok = gpt2_small_hf
    d = tmp_path_factory.mktemp("gpt2_small_shape")
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("which", ["gpt2_small_shape", "noisy_float64", "noisy_float32"])
def test_folded_weights_equal_transformerlens_and_exact_arithmetic(which, gpt2_small_hf, small_dir):
    """Every folded parameter equals the bridge's enable_compatibility_mode() weights to 1e-6, and exact float64
    arithmetic as closely as TransformerLens does for float32 models, far more closely for float64 ones."""
    if which == "gpt2_small_shape":  # GPT-2 small's exact shape, random LayerNorm; loaded from a directory
        hf, tok = gpt2_small_hf
        model = interp.load(str(small_dir))
    else:  # random LayerNorm gains/biases and random biases everywhere (conftest.noisy_hf_model)
        hf, tok = noisy_hf_model()
        if which == "noisy_float32":
            hf = hf.float()
        model = interp.load(hf, tokenizer=tok, dtype=next(hf.parameters()).dtype)
    ours = model.weights()
    theirs = boot_reference(hf, tok, fold_ln=True)
    diffs = max_diffs(ours, theirs)
    assert max(diffs.values()) <= 1e-6, diffs
    # The folding really changed things (a no-op fold would fail here): the raw weights differ.
    raw = interp.load(hf, tokenizer=tok, fold_ln=False, dtype=model.cfg.dtype).weights()
    assert max_diffs(raw, theirs)["W_Q"] > 1e-3 and max_diffs(raw, theirs)["b_in"] > 1e-3
    # Which is closer to exact (float64, another formulation of the same algebra)?
    exact = exact_fold(hf)
    ours_err, theirs_err = max(max_diffs(ours, exact).values()), max(max_diffs(theirs, exact).values())
    print(f"\n{which}: max |ours − exact| = {ours_err:.2e}, max |TransformerLens − exact| = {theirs_err:.2e}")
    if model.cfg.dtype == torch.float64:
        assert ours_err < 1e-12 < theirs_err  # float64 throughout; TransformerLens folds in float32 (~1e-7 here)
    else:
        assert ours_err <= 1.5 * theirs_err  # both float32 arithmetic: the same accuracy


def test_raw_weights_are_hugging_faces_exactly(small_dir, gpt2_small_hf):
    """fold_ln=False: every weight bit-for-bit the checkpoint's, in TransformerLens's layout."""
    hf, tok = gpt2_small_hf
    model = interp.load(str(small_dir), fold_ln=False)
    ref = boot_reference(hf, tok, fold_ln=False)
    for k in TL_NAMES:
        assert torch.equal(getattr(model, k), ref[k]), k


def test_fold_is_in_place_and_breaks_the_tie(gpt2_small_hf):
    """Folding a tied model gives W_U a tensor of its own before centring W_E (W_U was W_E.T)."""
    from interp.checkpoint import attention_views

    hf, tok = gpt2_small_hf
    raw = interp.load(hf, tokenizer=tok, fold_ln=False).weights()
    assert raw["W_U"].data_ptr() == raw["W_E"].data_ptr()  # tied: a view
    assert raw["W_Q"].data_ptr() == raw["W_qkv"].data_ptr()  # W_Q, W_K, W_V: views of the fused c_attn
    w = {k: v.clone() for k, v in raw.items() if k not in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V")}
    w["W_U"] = w["W_E"].T
    qkv = w["W_qkv"].data_ptr()
    fold_layer_norm(attention_views(w, hf.config.n_head))
    assert w["W_qkv"].data_ptr() == qkv  # in place
    assert w["W_U"].data_ptr() != w["W_E"].data_ptr()
    # W_U = centred(diag(ln_f.w) · W_Eᵀ) computed from W_E before W_E itself was centred
    expected = exact_fold(hf)["W_U"]
    assert torch.allclose(w["W_U"].double(), expected, atol=1e-6)


def test_model_bridge_holds_the_models_weights(small_folded):
    """The lazily booted bridge is checked against the model: changing the source afterwards is caught."""
    from interp.bridge import check_same_weights

    assert check_same_weights(small_folded, small_folded.bridge) < 1e-6


def test_changed_source_is_caught_when_the_bridge_boots(small_hf):
    import copy

    hf, tok = small_hf
    hf = copy.deepcopy(hf)
    model = interp.load(hf, tokenizer=tok)
    with torch.no_grad():
        hf.transformer.h[1].attn.c_attn.weight.mul_(2)
    with pytest.raises(interp.InterpError, match=r"model\.bridge does not hold the model's weights: W_Q"):
        model.bridge
