"""Identities of the model's views: factored QK/OV matrices, a head's output as A ⊗ W_OV, the residual decomposition."""

import pytest
import torch
from transformer_lens.FactoredMatrix import FactoredMatrix

from analyses.ov import head_output


def test_qk_and_ov_are_the_products_they_claim(small_folded):
    m = small_folded
    qk, ov = m.qk(1, 2), m.ov(1, 2)
    assert isinstance(qk, FactoredMatrix) and qk.mdim == m.cfg.d_head
    assert torch.allclose(qk.AB, m.W_Q[1, 2] @ m.W_K[1, 2].T, atol=1e-6)
    assert torch.allclose(ov.AB, m.W_V[1, 2] @ m.W_O[1, 2], atol=1e-6)


def test_full_circuits_stay_factored_and_are_right(small_folded):
    m = small_folded
    fov, fqk = m.full_ov(0, 1), m.full_qk(0, 1)
    for f in (fov, fqk):
        assert isinstance(f, FactoredMatrix)
        assert f.A.shape == (m.cfg.d_vocab, m.cfg.d_head)  # the inner dimension is d_head
    assert fov.shape == (m.cfg.d_vocab, m.cfg.d_vocab)
    # small vocabulary here (2000), so the materialised check is affordable
    assert torch.allclose(fov.AB, m.W_E @ m.ov(0, 1).AB @ m.W_U, atol=1e-4)
    assert torch.allclose(fqk.AB, m.W_E @ m.qk(0, 1).AB @ m.W_E.T, atol=1e-4)


@pytest.mark.parametrize("fixture", ["small_raw", "small_folded"])
def test_head_output_is_pattern_tensor_ov(request, fixture):
    m = request.getfixturevalue(fixture)
    batch = m.tokenize(["the same words, the same words", "other text"])
    names = [(n, 1) for n in ("ln1", "pattern", "result")]
    _, cache = m.run(batch, names=names)
    for head in range(m.cfg.n_heads):
        got = head_output(m, 1, head, cache["pattern", 1][:, head], cache["ln1", 1])
        assert torch.allclose(got, cache["result", 1][:, :, head], atol=1e-5)


def test_head_output_as_a_literal_kronecker_product(planted):
    """vec(out) = (A ⊗ W_OVᵀ) · vec(x) on one prompt, built with torch.kron."""
    m = planted
    _, cache = m.run("a b c d a b c d", names=["ln1.1", "pattern.1", "result.1"])
    A, x = cache["pattern", 1][0, 0], cache["ln1", 1][0]
    W_OV = m.ov(1, 0).AB
    vec_out = torch.kron(A.contiguous(), W_OV.T.contiguous()) @ x.reshape(-1)
    bias = m.b_V[1, 0] @ m.W_O[1, 0]
    assert torch.allclose(vec_out.reshape(x.shape) + bias, cache["result", 1][0, :, 0], atol=1e-4)


@pytest.mark.parametrize("fixture", ["small_raw", "small_folded"])
@pytest.mark.parametrize("where", ["pre", "mid", "post"])
def test_residual_decomposition_sums_back(request, fixture, where):
    m = request.getfixturevalue(fixture)
    batch = m.tokenize(["one prompt here", "and a second, longer prompt here"])
    for layer in range(m.cfg.n_layers):
        d = m.decompose_resid(batch, layer, where)
        assert torch.allclose(d.total(), d.resid, atol=1e-4), (layer, where)
        n_heads_in = m.cfg.n_heads * (layer + (where != "pre"))
        assert sum(lab.startswith("L") and "H" in lab for lab in d.labels) == n_heads_in


def test_decomposition_is_not_trivially_true(small_raw):
    """Dropping one head's part breaks the sum: the check can fail."""
    d = small_raw.decompose_resid("some words", 1, "post")
    i = d.labels.index("L0H2")
    assert not torch.allclose(d.total() - d.components[i], d.resid, atol=1e-4)
    padded = small_raw.decompose_resid(["some words", "a longer prompt with more words in it"], 1, "post")
    norms = padded.norms()
    assert list(norms.columns) == ["component", "norm"] and norms["component"].tolist() == padded.labels
    # each component's mean L2 norm over real tokens (padding left out), computed here token by token
    mask = padded.batch.attention_mask
    assert not mask.all()
    for i, label in enumerate(padded.labels):
        want = torch.stack([padded.components[i, b, p].norm() for b, p in mask.nonzero().tolist()]).mean()
        assert norms["norm"].iloc[i] == pytest.approx(float(want), rel=1e-5), label
