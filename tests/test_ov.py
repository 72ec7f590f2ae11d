"""Low-rank OV circuits: identities of the factorisation, planted copying heads, rank-k replacement, CLI."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformer_lens.FactoredMatrix import FactoredMatrix

import interp
from interp import prompts
from analyses import ov, ov_rank
from interp.threads import one_thread
from interp import testing
from analyses.ov import head_output
from interp.cli import main
from interp.errors import InterpError

# Planted in layer 1 of the planted model (heads 2 and 3 have zero OV there): a rank-5 copying map
# with distinct strengths, and a rank-3 anti-copying map.
COPY_WORDS, COPY_ALPHAS = ["c", "h", "q", "x", "2"], [5.0, 4.0, 3.0, 2.0, 1.0]
ANTI_WORDS = ["a", "m", "z"]


@pytest.fixture(scope="module")
def copier():
    """The planted model with L1H2 a rank-5 copying head (x @ W_OV = α_t · out[t] for its five tokens t)
    and L1H3 a rank-3 anti-copying head (−out[t]). Built through Hugging Face weights, so it runs too."""
    hf, tok = testing.planted_hf_model()
    d, H = hf.config.n_embd, hf.config.n_head
    dh = d // H
    codes = hf.transformer.wte.weight  # orthonormal token codes tok[t]
    out = hf.lm_head.weight / hf.lm_head.weight.norm(dim=1, keepdim=True)  # the out[t] codes W_U reads
    attn = hf.transformer.h[1].attn
    vocab = tok.get_vocab()
    with torch.no_grad():
        for head, words, alphas in ((2, COPY_WORDS, COPY_ALPHAS), (3, ANTI_WORDS, [-1.0] * len(ANTI_WORDS))):
            v0 = 2 * d + head * dh  # c_attn columns: q | k | v, each n_heads × d_head
            for j, (w, a) in enumerate(zip(words, alphas)):
                t = vocab[w]
                attn.c_attn.weight[:, v0 + j] = codes[t]
                attn.c_proj.weight[head * dh + j] = a * out[t]
    return interp.load(hf, tokenizer=tok)


class NoHugeTensors(TorchDispatchMode):
    """Fails any op that would produce a tensor of ``limit`` elements or more.

    Matrix products are checked *before* they run, so a d_vocab × d_vocab product is caught even
    where it would not fit in memory."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.largest = limit, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        shapes = {
            aten.mm.default: lambda a, b: a.shape[0] * b.shape[1],
            aten.bmm.default: lambda a, b: a.shape[0] * a.shape[1] * b.shape[2],
            aten.addmm.default: lambda c, a, b: a.shape[0] * b.shape[1],
            aten.baddbmm.default: lambda c, a, b: a.shape[0] * a.shape[1] * b.shape[2],
        }
        if func in shapes and shapes[func](*args[:3]) >= self.limit:
            raise AssertionError(f"{func} would produce {shapes[func](*args[:3])} elements (limit {self.limit})")
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                assert t.numel() < self.limit, f"{func} produced shape {tuple(t.shape)}"
                self.largest = max(self.largest, t.numel())
        return out


def _no_ab(self):
    raise AssertionError("FactoredMatrix.AB materialised a product during the analysis")


# ---------------------------------------------------------------------------- identities of the factorisation
def test_svd_reconstructs_the_materialised_ov(small_folded):
    m = small_folded
    U, S, V = ov.ov_svd(m)  # all heads at once
    L, H, D = m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_head
    assert U.shape == (L, H, m.cfg.d_model, D) and S.shape == (L, H, D) and V.shape == U.shape
    eye = torch.eye(D).expand(L, H, D, D)
    assert torch.allclose(U.mT @ U, eye, atol=1e-5) and torch.allclose(V.mT @ V, eye, atol=1e-5)
    for layer in range(L):
        for head in range(H):
            W = m.W_V[layer, head] @ m.W_O[layer, head]
            u, s, v = U[layer, head], S[layer, head], V[layer, head]
            assert torch.allclose(u @ torch.diag(s) @ v.T, W, atol=1e-6), (layer, head)
            assert torch.allclose(s, torch.linalg.svdvals(W)[:D], rtol=1e-4, atol=1e-7)
    # one head and one layer select the same numbers
    u1, s1, v1 = ov.ov_svd(m, 1, 2)
    assert torch.allclose(s1, S[1, 2]) and torch.allclose(u1 @ torch.diag(s1) @ v1.T, m.ov(1, 2).AB, atol=1e-6)
    assert torch.allclose(ov.ov_svd(m, 1)[1], S[1])


def test_rank_k_errors_from_the_spectrum_match_the_materialised_approximation(small_folded):
    m = small_folded
    sp = ov.ov_spectrum(m, 0, 3)
    assert list(sp["k"]) == list(range(1, m.cfg.d_head + 1))
    W = m.ov(0, 3).AB.double()
    U, S, V = torch.linalg.svd(W)
    for k in (1, 4, 9, m.cfg.d_head - 1, m.cfg.d_head):
        W_k = U[:, :k] @ torch.diag(S[:k]) @ V[:k]
        want = float((W - W_k).norm() / W.norm())
        assert sp.loc[sp["k"] == k, "rel_error"].item() == pytest.approx(want, abs=1e-6), k
    assert sp["cum_energy"].iloc[-1] == pytest.approx(1.0)
    assert sp["energy"].sum() == pytest.approx(1.0)
    assert sp["rel_error"].iloc[-1] == pytest.approx(0.0, abs=1e-6)  # rank d_head: exact


def test_factored_eigenvalues_equal_those_of_the_materialised_full_circuit(small_folded, copier):
    # vocabulary 2000: the 2000 × 2000 full circuit is affordable here, and one head is enough
    m = small_folded
    ev = ov.full_ov_eigenvalues(m, 1, 1)
    full = m.full_ov(1, 1).AB
    assert full.shape == (m.cfg.d_vocab, m.cfg.d_vocab)
    with one_thread():  # LAPACK's threads crawl on a busy 2-core machine (see interp.threads.one_thread)
        ref = torch.linalg.eigvals(full)
    ref = ref[ref.abs().argsort(descending=True)][: m.cfg.d_head].to(torch.complex128)
    scale = float(ref.abs().max())
    for lam in ev:  # each factored eigenvalue is one of the materialised ones (they come unordered)
        assert float((ref - lam).abs().min()) < 1e-3 * scale, lam
    assert float(ev.abs().sum()) == pytest.approx(float(ref.abs().sum()), rel=1e-3)
    # every head of the planted model with copying heads (vocabulary 32)
    evs = ov.full_ov_eigenvalues(copier)
    for layer in range(2):
        for head in range(4):
            ref = torch.linalg.eigvals(copier.full_ov(layer, head).AB.double())
            got = evs[layer, head]
            assert float(got.real.clamp_min(0).sum()) == pytest.approx(float(ref.real.clamp_min(0).sum()), abs=1e-4)
            assert float(got.abs().sum()) == pytest.approx(float(ref.abs().sum()), abs=1e-4)


# ---------------------------------------------------------------------------- planted heads are found
def test_planted_copying_heads_have_their_rank_and_score(copier, planted):
    df = ov.ov_summary(copier)
    row = lambda l, h: df[(df["layer"] == l) & (df["head"] == h)].iloc[0]  # noqa: E731
    copy, anti, induction = row(1, 2), row(1, 3), row(1, 0)
    # rank-5 copying head with singular values 5, 4, 3, 2, 1
    assert (copy["rank"], copy["rank90"], copy["rank99"]) == (5, 3, 5)  # energy 25 16 9 4 1 of 55
    assert [copy[f"sigma_{i}"] for i in (1, 2, 3)] == pytest.approx([5.0, 4.0, 3.0], rel=1e-4)
    p = torch.tensor(COPY_ALPHAS) / sum(COPY_ALPHAS)
    assert copy["erank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-4)
    assert copy["frob"] == pytest.approx(math.sqrt(55), rel=1e-4)
    assert copy["copying_score"] == pytest.approx(1.0, abs=1e-4)
    assert copy["copying_signed"] == pytest.approx(1.0, abs=1e-4)
    # the anti-copying head: rank 3, no positive mass
    assert anti["rank"] == 3 and anti["rank99"] == 3 and anti["erank"] == pytest.approx(3.0, rel=1e-4)
    assert anti["copying_score"] == pytest.approx(0.0, abs=1e-4)
    assert anti["copying_signed"] == pytest.approx(-1.0, abs=1e-4)
    # the induction head copies all 32 tokens equally: rank 32 (of d_head 64), effective rank 32
    assert (induction["rank"], induction["rank99"]) == (32, 32)
    assert induction["erank"] == pytest.approx(32.0, rel=1e-4)
    assert induction["copying_score"] == pytest.approx(1.0, abs=1e-4)
    # heads with zero OV have rank 0 and no copying score; the previous-token head writes only where
    # the unembedding does not read, so its full circuit is zero and its score undefined too
    for l, h in [(0, 1), (0, 2), (0, 3), (1, 1)]:
        assert row(l, h)["rank"] == 0 and math.isnan(row(l, h)["copying_score"])
    assert row(0, 0)["rank"] == 32 and math.isnan(row(0, 0)["copying_score"])
    # the same model untouched (the session fixture) has no copying head at L1H2
    plain = ov.ov_summary(planted)
    assert plain.loc[(plain["layer"] == 1) & (plain["head"] == 2), "rank"].item() == 0


def test_singular_directions_read_and_write_the_copied_words(copier):
    tokens = ov.ov_tokens(copier, 1, 2, n_directions=5, top=3)
    plus = tokens[(tokens["end"] == "+") & (tokens["rank"] == 1)].sort_values("direction")
    # direction i belongs to the word with the i-th largest strength, on both sides
    assert list(plus["read_token"]) == COPY_WORDS
    assert list(plus["write_token"]) == COPY_WORDS
    assert list(plus["sigma"]) == pytest.approx(COPY_ALPHAS, rel=1e-4)
    assert list(plus["read_score"]) == pytest.approx([1.0] * 5, abs=1e-4)  # W_E[t] · u = 1
    assert (plus["write_score"] > 0).all()
    # the anti-copying head: attending to its word lowers that word's logit (the '-' end writes it)
    anti = ov.ov_tokens(copier, 1, 3, n_directions=1, top=1)
    word = anti.loc[anti["end"] == "+", "read_token"].item()
    assert word in ANTI_WORDS
    assert anti.loc[anti["end"] == "-", "write_token"].item() == word
    assert anti.loc[anti["end"] == "+", "write_token"].item() != word


# ---------------------------------------------------------------------------- rank-k replacement
@pytest.mark.parametrize("fixture", ["biased", "small_folded"])
def test_full_rank_replacement_reproduces_the_clean_run(request, fixture):
    m = request.getfixturevalue(fixture)
    batch = m.tokenize(["the same words, the same words again", "other text"])
    clean = m(batch)
    every = [(l, h) for l in range(m.cfg.n_layers) for h in range(m.cfg.n_heads)]
    with ov_rank.low_rank_ov(m, every, m.cfg.d_head):
        same = m(batch)
    assert torch.allclose(same, clean, atol=1e-5)
    with ov_rank.low_rank_ov(m, [(0, 1), (1, 2)], 2):
        cut = m(batch)
    assert not torch.allclose(cut, clean, atol=1e-3)  # a real cut changes the logits
    assert not m.has_hooks


@pytest.fixture(scope="module")
def biased():
    """A small random GPT-2 with nonzero attention biases, unfolded (folding moves b_V into b_O)."""
    hf, tok = testing.random_gpt2_hf(seed=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_attn.bias.copy_(0.5 * torch.randn(block.attn.c_attn.bias.shape, generator=g))
    return interp.load(hf, tokenizer=tok, fold_ln=False)


@pytest.mark.parametrize("fixture", ["biased", "small_folded"])
def test_rank_k_hook_output_is_the_rank_k_circuit(request, fixture):
    """The hooked head writes pattern · n · W_k + b_V' W_O, n the normalised stream, W_k the rank-k cut of
    ``W = C diag(γ) W_V W_O C`` (materialised here); its neighbours are untouched.

    Folded, that is the model's own ``W_V W_O``; raw, γ and β are taken in and the head's mean over
    d_model (which the next LayerNorm removes) is left as it was.
    """
    m, k = request.getfixturevalue(fixture), 3
    assert (m.b_V[1, 2].abs().max() > 0.1) == (fixture == "biased")
    names = ["ln1.1", "pattern.1", "result.1"]
    _, clean = m.run("a prompt with some words in it", names=names)
    with ov_rank.low_rank_ov(m, (1, 2), k):
        _, cut = m.run("a prompt with some words in it", names=names)
    gamma, beta = m.ln1_w[1], m.ln1_b[1]
    C = torch.eye(m.cfg.d_model) - 1 / m.cfg.d_model
    U, S, Vh = torch.linalg.svd(C @ (gamma[:, None] * m.W_V[1, 2]) @ m.W_O[1, 2] @ C)
    W_k = U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]
    n = (cut["ln1", 1] - beta) / gamma
    want = cut["pattern", 1][:, 2] @ n @ W_k + ((m.b_V[1, 2] + beta @ m.W_V[1, 2]) @ m.W_O[1, 2]) @ C
    got = cut["result", 1][:, :, 2]
    assert torch.allclose(got @ C, want, atol=1e-5)
    assert torch.allclose(got.mean(-1), clean["result", 1][:, :, 2].mean(-1), atol=1e-6)
    full = head_output(m, 1, 2, clean["pattern", 1][:, 2], clean["ln1", 1])
    assert not torch.allclose(got, full, atol=1e-3)
    others = [0, 1, 3]
    assert torch.equal(cut["result", 1][:, :, others], clean["result", 1][:, :, others])


def test_replacement_hooks_are_removed_after_an_exception(small_folded):
    m = small_folded
    with pytest.raises(RuntimeError, match="boom"):
        with ov_rank.low_rank_ov(m, [(0, 1), (1, 2)], 2):
            assert m.has_hooks
            raise RuntimeError("boom")
    assert not m.has_hooks
    with pytest.raises(InterpError, match="rank 99 out of range"):
        with ov_rank.low_rank_ov(m, (0, 1), 99):
            pass
    assert not m.has_hooks


def test_rank_k_loss_finds_the_rank_the_induction_head_uses(planted):
    m = planted
    tokens = prompts.repeated_tokens(m, n_prompts=4, half=12)
    df = ov_rank.rank_k_loss(m, tokens, heads=[(1, 0), (0, 0)], ks=[0, 16, 32, 64], progress=False)
    assert list(df.columns) == ["layer", "head", "k", "loss", "clean_loss", "delta"]
    logits = m(tokens)
    clean = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, m.cfg.d_vocab), tokens[:, 1:].reshape(-1))
    assert df["clean_loss"].iloc[0] == pytest.approx(float(clean), abs=1e-5)
    delta = df.set_index(["layer", "head", "k"])["delta"]
    for head in [(1, 0), (0, 0)]:  # both have rank 32: exact from k = 32 on, worse without them
        assert abs(delta[(*head, 32)]) < 1e-5 and abs(delta[(*head, 64)]) < 1e-5
        assert delta[(*head, 0)] > 0.2
    # with k = 0 the induction head writes nothing: the model is uniform over the 32 tokens
    assert df.query("layer == 1 and head == 0 and k == 0")["loss"].item() == pytest.approx(math.log(32), abs=1e-3)


def test_rank_k_loss_in_prompt_groups_with_padding(small_folded, monkeypatch):
    m = small_folded
    batch = m.tokenize(["a short one", "a much longer prompt, with more words in it than the others", "mid length text"])
    logits = m(batch)
    keep = batch.attention_mask[:, 1:] & batch.attention_mask[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch.tokens[:, 1:], reduction="none")
    want = float((ce * keep).sum() / keep.sum())
    whole = ov_rank.rank_k_loss(m, batch, heads=[(0, 2), (1, 3)], ks=[1, 16], progress=False)
    monkeypatch.setattr(ov_rank, "_LOGITS_BUDGET", 1)  # one prompt per group
    grouped = ov_rank.rank_k_loss(m, batch, heads=[(0, 2), (1, 3)], ks=[1, 16], progress=False)
    assert whole["clean_loss"].iloc[0] == pytest.approx(want, abs=1e-5)
    pd.testing.assert_frame_equal(whole, grouped, atol=1e-5)
    assert (whole.loc[whole["k"] == 16, "delta"].abs() < 1e-5).all()  # d_head 16: exact
    assert (whole.loc[whole["k"] == 1, "delta"].abs() > 1e-4).all()


def test_bad_arguments_name_the_culprit(small_folded):
    m = small_folded
    cases = [
        (lambda: ov.ov_svd(m, 0, 99), "head 99 out of range"),
        (lambda: ov.ov_svd(m, 7), "layer 7 out of range"),
        (lambda: ov.ov_spectrum(m, None, 1), "head 1 given without a layer"),
        (lambda: ov.ov_summary(m, n_top=99), "n_top 99 out of range"),
        (lambda: ov.ov_tokens(m, 0, 0, top=0), "top 0 out of range"),
        (lambda: ov_rank.rank_k_loss(m, "some text", heads=[(0, 1), (0, 1)]), "head 0.1 given twice"),
        (lambda: ov_rank.rank_k_loss(m, "some text", heads=[(0, 1)], ks=[17]), "rank 17 out of range"),
        (lambda: ov_rank.rank_k_loss(m, "some text", heads=[(0, 1)], ks=[]), "no ranks given"),
        (lambda: ov_rank.rank_k_loss(m, "some text", heads="L0-H1"), "cannot read head"),
        (lambda: ov_rank.rank_k_loss(m, torch.tensor([[5]]), heads=[(0, 1)], ks=[1]), "fewer than 2 tokens"),
    ]
    for fn, msg in cases:
        with pytest.raises(InterpError, match=msg):
            fn()
    assert not m.has_hooks


# ---------------------------------------------------------------------------- never d_vocab²
def test_no_vocab_squared_matrix_is_ever_formed(small_folded, monkeypatch):
    m = small_folded
    monkeypatch.setattr(FactoredMatrix, "AB", property(_no_ab))
    guard = NoHugeTensors(m.cfg.d_vocab**2)
    with guard:
        ov.ov_summary(m)
        ov.ov_spectrum(m)
        ov.ov_tokens(m, 1, 1)
        ov.full_ov_eigenvalues(m)
    assert 0 < guard.largest < m.cfg.d_vocab * m.cfg.d_model * 2
    # the guard itself works: the materialised full circuit is caught before it is formed
    with pytest.raises(AssertionError, match="would produce"):
        with NoHugeTensors(m.cfg.d_vocab**2):
            (m.W_E @ m.W_V[0, 0]) @ (m.W_O[0, 0] @ m.W_U)


def test_gpt2_small_shape_all_heads_within_memory_and_exact(gpt2_small_hf):
    from interp.bench import peak_memory

    hf, tok = gpt2_small_hf
    m = interp.load(hf, tokenizer=tok)
    with NoHugeTensors(m.cfg.d_vocab**2):  # 50257²: caught before a 10 GB product is attempted
        df, mb = peak_memory(lambda: ov.ov_summary(m))
        ov.ov_tokens(m, 5, 1, n_directions=2, top=5)
    assert len(df) == 144 and df["copying_score"].between(0, 1).all()
    assert mb < 2048, f"ov_summary used {mb:.0f} MB above the loaded model"
    # one head: U S Vᵀ is the 768 × 768 W_OV, and the eigenvalues are TransformerLens's (its
    # FactoredMatrix.eigenvalues forms (W_O W_U)(W_E W_V), d_head × d_head, for that head)
    U, S, V = ov.ov_svd(m, 5, 1)
    assert torch.allclose(U @ torch.diag(S) @ V.T, m.ov(5, 1).AB, atol=1e-6)
    ours = ov.full_ov_eigenvalues(m, 5, 1)
    theirs = m.full_ov(5, 1).eigenvalues.to(torch.complex128)
    scale = float(theirs.abs().max())
    assert all(float((theirs - lam).abs().min()) < 1e-3 * scale for lam in ours)
    assert df.loc[(df["layer"] == 5) & (df["head"] == 1), "copying_score"].item() == pytest.approx(
        float(theirs.real.clamp_min(0).sum() / theirs.abs().sum()), abs=1e-3
    )


# ---------------------------------------------------------------------------- CLI
def test_cli_table_files_and_figures(planted_dir, tmp_path, capsys, saved_figures):
    from figcheck import assert_png, heatmap_values, panels

    out, png = tmp_path / "ov.csv", tmp_path / "copying.png"
    assert main(["ov", "--model", str(planted_dir), "--out", str(out), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "copying_score" in printed and "strongest copying heads: L1H0 (1.00)" in printed
    df = pd.read_csv(out)
    assert len(df) == 8 and {"rank", "rank90", "rank99", "erank", "copying_score"} <= set(df.columns)
    assert df.loc[(df["layer"] == 1) & (df["head"] == 0), "rank"].item() == 32
    heatmap, spectra = saved_figures
    (ax,) = panels(heatmap)
    assert ax.get_title() == "copying_score"
    assert np.allclose(heatmap_values(ax), df.sort_values(["layer", "head"])["copying_score"].to_numpy().reshape(2, 4),
                       atol=1e-6, equal_nan=True)
    sigma, energy = panels(spectra)
    assert (sigma.get_title(), energy.get_title()) == ("singular values of W_OV", "cumulative energy")
    # a curve per head that writes anything: L0H0 (rank 32 of 64: it copies 32 tokens) and L1H0 (rank 32)
    curves = [line for line in sigma.get_lines()]
    assert sorted(len(c.get_xdata()) for c in curves) == [32, 32] and sigma.get_yscale() == "log"
    assert len([c for c in energy.get_lines() if len(c.get_xdata()) > 2]) == 2
    assert_png(png)
    assert_png(tmp_path / "copying-spectra.png")


def test_cli_head_detail_and_rank_k(planted_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(" ".join("a b c d e f g h i j a b c d e f g h i j".split() * 4))
    out = tmp_path / "loss.json"
    argv = ["ov", "--model", str(planted_dir), "--layer", "1", "--head", "0", "--rank", "0,32",
            "--text", str(text), "--out", str(out), "--directions", "1", "--tokens", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "spectrum of L1H0" in printed and "numerical rank 32 of 64" in printed
    assert "reads " in printed and "writes " in printed
    rows = json.loads(out.read_text())
    assert [r["k"] for r in rows] == [0, 32]
    assert rows[0]["delta"] > 0.1 and abs(rows[1]["delta"]) < 1e-5


def test_cli_errors(planted_dir, capsys):
    assert main(["ov", "--model", str(planted_dir), "--head", "1"]) == 2
    assert "--head needs --layer" in capsys.readouterr().err
    assert main(["ov", "--model", str(planted_dir), "--out", "table.xlsx"]) == 2
    assert "--out table.xlsx: unknown table format" in capsys.readouterr().err
    assert main(["ov", "--model", str(planted_dir), "--layer", "1", "--head", "0", "--rank", "99"]) == 2
    assert "--rank 99: out of range" in capsys.readouterr().err
