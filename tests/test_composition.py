"""Composition scores: parity with TransformerLens, a brute-force check, planted and learned circuits, the baseline."""

import math
import re

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import interp
from analyses import composition
from analyses.composition import COLUMNS, KINDS, composition_scores
from interp import InterpError, testing

TOL = 1e-5  # TransformerLens computes in the model's dtype (float32 for most fixtures)


def _brute(model, kind, sender, receiver) -> float:
    """‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F) from the materialised d_model × d_model matrices, float64."""
    W_Q, W_K, W_V, W_O = (w.double() for w in (model.W_Q, model.W_K, model.W_V, model.W_O))
    A = W_V[sender] @ W_O[sender]
    B = {"q": W_Q[receiver] @ W_K[receiver].T, "k": W_K[receiver] @ W_Q[receiver].T,
         "v": W_V[receiver] @ W_O[receiver]}[kind]
    return float(torch.linalg.matrix_norm(A @ B) / (torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(B)))


def _pairs(model):
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return [((l1, h1), (l2, h2)) for l1 in range(L) for h1 in range(H) for l2 in range(l1 + 1, L) for h2 in range(H)]


def _row(df, kind, sender, receiver):
    sel = df[(df.kind == kind) & (df.sender_layer == sender[0]) & (df.sender_head == sender[1])
             & (df.receiver_layer == receiver[0]) & (df.receiver_head == receiver[1])]
    assert len(sel) == 1, (kind, sender, receiver, len(sel))
    return sel.iloc[0]


@pytest.fixture(scope="module")
def deep():
    """6 layers × 3 heads, d_model 150: more than one 128-wide Gram tile (ragged) and several layers per
    receiver group; random LayerNorm gains and biases, folded."""
    hf, tok = testing.random_gpt2_hf(seed=5, n_layer=6, n_head=3, n_embd=150, vocab_size=300)
    return interp.load(hf, tokenizer=tok)


# ---------------------------------------------------------------------------- parity with TransformerLens
@pytest.mark.parametrize("fixture", ["small_folded", "small_raw", "noisy", "noisy_raw", "deep"])
@pytest.mark.parametrize("tile", [composition.TILE, 24])
def test_equals_transformer_lens(fixture, tile, request, monkeypatch):
    """Every valid pair equals ``bridge.all_composition_scores`` for Q, K and V, in both weight modes.

    A 24-wide tile cuts d_model (64, 32, 150) into ragged tiles, so off-diagonal tiles are exercised
    on every model, not only the one wider than the default tile."""
    model = request.getfixturevalue(fixture)
    monkeypatch.setattr(composition, "TILE", tile)
    bridge = model.bridge
    for name in ("W_Q", "W_K", "W_V", "W_O"):  # TL's matrices are ours (folded by each side: 1e-6, test_folding)
        torch.testing.assert_close(getattr(bridge, name).detach(), getattr(model, name), rtol=0, atol=1e-6)
    if model.cfg.fold_ln:
        df = composition_scores(model, "all")
    else:
        with pytest.warns(UserWarning, match="fold_ln=True"):
            df = composition_scores(model, "all")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert len(df) == 3 * len(_pairs(model))
    for kind in KINDS:
        tl = bridge.all_composition_scores(kind.upper()).scores.detach().double()
        assert tl.shape == (L, H, L, H)
        layer = torch.arange(L)
        invalid = (layer[:, None, None, None] >= layer[None, None, :, None]).expand(L, H, L, H)
        assert (tl[invalid] == 0).all()  # TL zero-fills receivers not after the sender: we leave those out
        rows = df[df.kind == kind]
        ours = torch.tensor(rows.score.tolist(), dtype=torch.float64)
        ref = tl[tuple(torch.tensor(rows[c].tolist()) for c in COLUMNS[:4])]
        assert ours.isfinite().all() and (ours > 1e-3).all()  # random models: no zero heads, no zero scores
        torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------- an independent implementation
@pytest.mark.parametrize("fixture", ["noisy", "planted"])
def test_equals_brute_force(fixture, request):
    """The Frobenius ratio from materialised matrices, for every pair and kind (NaN where 0/0).

    ``noisy`` is float64 with every weight changed by folding; ``planted`` has d_model 256 (two Gram
    tiles at the default width) and heads with exactly zero OV."""
    model = request.getfixturevalue(fixture)
    df = composition_scores(model, "all")
    assert list(df.columns) == COLUMNS
    assert [str(df[c].dtype) for c in COLUMNS[:4]] == ["int64"] * 4 and df["score"].dtype == "float64"
    assert list(dict.fromkeys(df.kind)) == list(KINDS)
    for kind in KINDS:
        rows = df[df.kind == kind]
        got = {(r.sender_layer, r.sender_head, r.receiver_layer, r.receiver_head): r.score for r in rows.itertuples()}
        assert list(got) == [(*s, *r) for s, r in _pairs(model)]  # exactly the valid pairs, in order
        for s, r in _pairs(model):
            want = _brute(model, kind, s, r)
            if math.isnan(want):
                assert math.isnan(got[(*s, *r)]), (kind, s, r)
            else:
                assert got[(*s, *r)] == pytest.approx(want, abs=1e-9), (kind, s, r)
    assert (df.baseline == 1 / math.sqrt(model.cfg.d_model)).all()


def test_gram_tiles_against_direct_products(monkeypatch):
    """The tiled Gram inner products equal ‖S_a R_bᵀ‖_F² formed directly, on ragged tiles; for circuits
    that are exactly orthogonal (a = b here) they are 0, never a negative rounding error (whose square
    root would be NaN)."""
    monkeypatch.setattr(composition, "TILE", 24)
    g = torch.Generator().manual_seed(0)
    n, d, k = 6, 150, 16
    Q = torch.linalg.qr(torch.randn(n, d, d, generator=g, dtype=torch.float64))[0]
    S, R = Q[:, :k], Q[:, k : 2 * k]  # d_head × d_model factors with orthonormal rows: S_a R_aᵀ = 0
    bar = type("Bar", (), {"update": lambda self: None})()
    got = composition._gram_scores(S, [R], [(n, 0, n)], bar)[0]
    want = (S[:, None] @ R[None].mT).square().sum((-2, -1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    zero = got.diagonal()
    assert (zero >= 0).all() and zero.max() < 1e-14 and got.fill_diagonal_(1).min() > 0.1


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_d_model_squared_matrix_per_pair(planted):
    """Nothing larger than twice the stacked factors (n_senders × d_model × d_head) exists: W_OV of all
    heads (8 × 256²) or a d_model² product per pair (16 × 256²) would be 4-8× that."""
    cfg = planted.cfg
    with LargestTensor() as mode:
        composition_scores(planted, "all")
    assert 0 < mode.largest <= 2 * (cfg.n_layers - 1) * cfg.n_heads * cfg.d_model * cfg.d_head


# ---------------------------------------------------------------------------- planted: ground truth
def test_planted_induction_keys_on_the_previous_token_head(planted):
    """L0H0 writes ``prev[t]``; L1H0's key reads ``prev[t]`` and its query ``tok[t]``. Both maps are
    rank-32 isometries (up to scale) onto the same codes, so K-composition is exactly 1/√32, and
    Q-composition of the same pair is 0: it tells the two sides of W_QK apart."""
    df = composition_scores(planted, "all")
    k = df[df.kind == "k"]
    top = k.loc[k.score.idxmax()]
    assert (top.sender_layer, top.sender_head, top.receiver_layer, top.receiver_head) == (0, 0, 1, 0)
    assert top.score == pytest.approx(1 / math.sqrt(32), abs=1e-6)
    others = k.drop(index=top.name).score.dropna()
    assert len(others) == 3 and (others < top.score - 0.05).all()
    assert _row(df, "q", (0, 0), (1, 0)).score < 1e-6
    assert top.baseline == pytest.approx(1 / 16)
    # L1H2 and L1H3 have random W_Q, W_K: chance level, which is what the baseline says (±1.3 % here)
    for kind in ("q", "k"):
        for h in (2, 3):
            assert _row(df, kind, (0, 0), (1, h)).score == pytest.approx(top.baseline, rel=0.06)


def test_planted_zero_heads_are_nan(planted):
    """L0H1–L0H3 and L1H1–L1H3 have W_V = W_O = 0: as senders (all kinds) and as V-receivers they
    give NaN; every other pair is a number."""
    df = composition_scores(planted, "all")
    silent = {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)}
    for r in df.itertuples():
        sender, receiver = (r.sender_layer, r.sender_head), (r.receiver_layer, r.receiver_head)
        expect_nan = sender in silent or (r.kind == "v" and receiver in silent)
        assert math.isnan(r.score) == expect_nan, r


def test_rounding_zero_ov_is_nan():
    """A head with dense, nonzero W_V and W_O whose product is zero up to float32 rounding (W_V = [A 0]·M,
    W_O = Mᵀ·[0; B] with M orthogonal) writes nothing: NaN, not the ratio of two rounding errors."""
    hf, tok = testing.planted_hf_model()
    d, H = hf.config.n_embd, hf.config.n_head
    dh = d // H
    g = torch.Generator().manual_seed(3)
    codes = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    codes = codes - codes.mean(0)  # nothing along the all-ones direction, which folding removes
    M = torch.linalg.qr(torch.randn(dh, dh, generator=g))[0]
    W_V = torch.cat([codes[:, :8], torch.zeros(d, dh - 8)], 1) @ M
    W_O = M.T @ torch.cat([torch.zeros(8, d), codes[:, 8:dh].T], 0)
    head = 3
    with torch.no_grad():
        hf.transformer.h[0].attn.c_attn.weight[:, 2 * d + head * dh : 2 * d + (head + 1) * dh] = W_V
        hf.transformer.h[0].attn.c_proj.weight[head * dh : (head + 1) * dh] = W_O
    model = interp.load(hf, tokenizer=tok)
    for W in (model.W_V[0, head], model.W_O[0, head]):  # dense, far from zero
        assert (W != 0).all() and W.norm() > 1
    ov = model.W_V[0, head].double() @ model.W_O[0, head].double()
    assert 0 < ov.norm() < 1e-5  # zero up to rounding, not exactly
    df = composition_scores(model, "k")
    assert df[(df.sender_layer == 0) & (df.sender_head == head)].score.isna().all()
    assert _row(df, "k", (0, 0), (1, 0)).score == pytest.approx(1 / math.sqrt(32), abs=1e-6)


# ---------------------------------------------------------------------------- interp-tiny: learned circuit
def test_interp_tiny_previous_token_head_k_composes_with_induction_heads():
    """The bundled model's previous-token head L0H4 K-composes with each layer-1 induction head
    (L1H0–H2, H4–H7, per its card): 0.23–0.29 against a random-matrix baseline of 0.088, whose
    spread at this shape (d_model 128, d_head 16) is ±0.004 — so 2× the baseline is ~35σ out. And
    L0H4 is the strongest K-sender into each of them."""
    model = interp.load("interp-tiny")
    k = composition_scores(model, "k")
    baseline = 1 / math.sqrt(model.cfg.d_model)
    for h in (0, 1, 2, 4, 5, 6, 7):
        into = k[(k.receiver_layer == 1) & (k.receiver_head == h)]
        prev = into[into.sender_head == 4].iloc[0]
        assert prev.baseline == pytest.approx(baseline)
        assert prev.score > 2 * baseline, (h, prev.score)
        assert into.score.idxmax() == prev.name, (h, into.sort_values("score").tail(3))


# ---------------------------------------------------------------------------- the baseline
@pytest.mark.parametrize("d_model, d_head", [(64, 16), (48, 4), (128, 16)])
def test_baseline_is_the_rms_score_of_random_matrices(d_model, d_head):
    """E[score²] = 1/d_model for Gaussian factors of the heads' shapes (module docs): sampled with
    materialised matrices, the mean of score² is within 4 standard errors of the square of the module's
    baseline, and the mean score is within 3 % of the baseline itself."""
    g = torch.Generator().manual_seed(d_model * 100 + d_head)
    n = 400
    V, X = (torch.randn(n, d_model, d_head, generator=g, dtype=torch.float64) for _ in range(2))
    O, Y = (torch.randn(n, d_head, d_model, generator=g, dtype=torch.float64) for _ in range(2))
    A, B = V @ O, X @ Y
    s2 = (torch.linalg.matrix_norm(A @ B) / (torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(B))) ** 2
    se = float(s2.std()) / math.sqrt(n)
    rms = composition._baseline(d_model, d_head)
    assert abs(float(s2.mean()) - rms**2) < 4 * se
    assert abs(float(s2.sqrt().mean()) / rms - 1) < 0.03  # d_head = 4: 1.7 % below; 16 and up: < 0.2 %


# ---------------------------------------------------------------------------- input
def test_kind(planted):
    for bad in ("x", "qk", "QK", ""):
        with pytest.raises(InterpError, match=re.escape(repr(bad))) as e:
            composition_scores(planted, bad)
        assert "'q', 'k', 'v' or 'all'" in str(e.value)
    upper = composition_scores(planted, "K")
    lower = composition_scores(planted, "k")
    assert upper.equals(lower) and set(upper.kind) == {"k"}


def test_cli_compose_writes_the_table(planted_dir, tmp_path, capsys):
    import pandas as pd

    import interp
    from interp.cli import main

    out = tmp_path / "k.csv"
    assert main(["compose", "--model", planted_dir, "--kind", "k", "--top", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out)
    want = composition_scores(interp.load(planted_dir), "k")
    assert list(df.columns) == ["sender_layer", "sender_head", "receiver_layer", "receiver_head", "kind", "score", "baseline"]
    assert len(df) == len(want) == 16 and np.allclose(df["score"], want["score"], equal_nan=True)
    top = df.loc[df["score"].idxmax()]
    assert (top.sender_layer, top.sender_head, top.receiver_layer, top.receiver_head) == (0, 0, 1, 0)
    assert "K-composition: the 3 strongest of 16 pairs" in printed
