"""Logit lens, direct logit attribution and the pseudo-inverse lens: identities and planted answers."""

import numpy as np
import pandas as pd
import pytest
import torch

import interp.cli
from analyses.dla import direct_logit_attribution
from analyses.logit_lens import lens_logits, logit_lens, pinv_unembedding
from interp import InterpError

PROMPTS = ["The cat sat on the", "def f(x):\n    return x + 1", "A much longer prompt than the others, padded."]


def _abs_cols(batch, rel):
    """Absolute column of position ``rel`` (counted over real tokens) in each padded row."""
    return rel + batch.attention_mask.int().argmax(-1)[:, None]


@pytest.mark.parametrize("fixture", ["small_raw", "small_folded"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_every_boundary_is_the_unembedded_residual_and_the_last_is_the_model(request, fixture, padding_side):
    m = request.getfixturevalue(fixture)
    batch = m.tokenize(PROMPTS, padding_side=padding_side)
    lens = lens_logits(m, batch, positions="all")
    assert not m.has_hooks
    assert lens.labels[:3] == ["embed", "attn 0", "mlp 0"] and len(lens.labels) == 2 * m.cfg.n_layers + 1
    assert lens.valid.sum(-1).tolist() == batch.lengths.tolist()
    logits, cache = m.run(batch, names=["resid_pre.0", "resid_mid", "resid_post"])
    cols = _abs_cols(batch, lens.positions)
    rows = torch.arange(len(batch))[:, None].expand_as(cols)
    v = lens.valid
    # the identity: the last boundary is the model's own output, at every real token
    assert torch.allclose(lens.logits[-1][v], logits[rows[v], cols[v]], atol=1e-4)
    for b, hook in enumerate(lens.hooks):
        resid = cache[hook][rows[v], cols[v]]
        assert torch.allclose(lens.logits[b][v], m.unembed(resid), atol=1e-4), hook


def test_no_final_ln_is_the_raw_projection(small_raw):
    m = small_raw
    lens = lens_logits(m, PROMPTS[0], final_ln=False, positions=[0, -1])
    assert lens.final_ln is False
    _, cache = m.run(PROMPTS[0], names=["resid_post.1", "resid_mid.0"])
    raw = cache["resid_post", 1][0, [0, -1]] @ m.W_U
    assert torch.allclose(lens.logits[-1, 0], raw, atol=1e-4)
    assert torch.allclose(lens.logits[1, 0], cache["resid_mid", 0][0, [0, -1]] @ m.W_U, atol=1e-4)
    assert not torch.allclose(lens.logits[-1, 0], m.unembed(cache["resid_post", 1][0, [0, -1]]), atol=1e-2)


def test_table_ranks_probs_and_target_match_the_model(small_folded):
    m = small_folded
    batch = m.tokenize(PROMPTS[:2])
    target = m.tokenizer.decode([42])
    df = logit_lens(m, batch, k=4, target=42, positions=[1, -1], progress=False)
    assert df["unembed"].eq("wu").all() and df["final_ln"].all() and df.attrs["fold_ln"] is True
    assert len(df) == 2 * 2 * (2 * m.cfg.n_layers + 1) * 4  # prompts × positions × boundaries × k
    logits = m(batch)  # the model's own logits
    last = df[df["label"] == f"mlp {m.cfg.n_layers - 1}"]
    for (p, pos), cell in last.groupby(["prompt", "position"]):
        col = int(_abs_cols(batch, torch.tensor([[pos]]))[p, 0])  # positions are resolved (≥ 0) in the table
        row = logits[p, col]
        assert cell["input_token"].iloc[0] == m.tokenizer.decode([int(batch.tokens[p, col])])
        assert cell["rank"].tolist() == [1, 2, 3, 4]
        assert cell["token_id"].tolist() == row.topk(4).indices.tolist()
        assert torch.allclose(torch.tensor(cell["prob"].to_numpy()), row.softmax(-1).topk(4).values, atol=1e-5)
        assert (cell["target"] == target).all()
        assert int(cell["target_rank"].iloc[0]) == 1 + int((row > row[42]).sum())
        assert cell["target_prob"].iloc[0] == pytest.approx(float(row.softmax(-1)[42]), rel=1e-4)
        assert cell["target_logprob"].iloc[0] == pytest.approx(float(row.log_softmax(-1)[42]), abs=1e-4)
    # resid_post only: the same numbers at the embeddings and after each block
    post = logit_lens(m, batch, k=4, target=42, positions=[1, -1], resid_post_only=True, progress=False)
    assert post["label"].unique().tolist() == ["embed", *[f"mlp {i}" for i in range(m.cfg.n_layers)]]
    both = post.merge(df, on=["prompt", "label", "position", "rank"], suffixes=("", "_full"))
    assert len(both) == len(post)
    assert (both["token_id"] == both["token_id_full"]).all()
    assert torch.allclose(torch.tensor(both["prob"].to_numpy()), torch.tensor(both["prob_full"].to_numpy()))


def test_planted_answer_appears_at_the_induction_layer(planted):
    """The planted induction head (L1H0) writes the repeat: the lens sees it only from attn 1 on."""
    df = logit_lens(planted, "a b c d a b c", target="d", k=1, progress=False)
    p = df.set_index("label")["target_prob"]
    assert p[["embed", "attn 0", "mlp 0"]].between(0.02, 0.04).all()  # ≈ uniform over 32 tokens
    assert (p[["attn 1", "mlp 1"]] > 0.99).all()
    assert df.set_index("label").loc["attn 1", "token"] == "d"


def test_only_the_requested_positions_are_unembedded(planted, monkeypatch):
    rows = []
    unembed = planted.unembed
    monkeypatch.setattr(planted, "unembed", lambda x, *a: (rows.append(x[..., 0].numel()), unembed(x, *a))[1])
    logit_lens(planted, ["a b c d a b c", "e f"], k=2, progress=False)  # 2 prompts × last position
    assert sum(rows) == 5 * 2  # 5 boundaries × 2 vectors: never the model's unembedding of all positions


@pytest.mark.parametrize("fixture", ["small_raw", "small_folded"])
def test_direct_logit_attribution_sums_to_the_logit(request, fixture):
    m = request.getfixturevalue(fixture)
    batch = m.tokenize(PROMPTS, padding_side="left")
    logits = m(batch)
    for contrast in (None, 7):
        df = direct_logit_attribution(m, batch, 42, contrast=contrast, positions="all", progress=False)
        n_comp = 2 + m.cfg.n_layers * (m.cfg.n_heads + 2) + 1
        assert len(df) == n_comp * int(batch.lengths.sum())
        sums = df.groupby(["prompt", "position"])["contribution"].sum()
        totals = df.groupby(["prompt", "position"])["total"].first()
        assert (sums - totals).abs().max() < 2e-5  # float32 sums of ~20 terms; the real error is ~1e-7
        for (p, pos), total in totals.items():
            row = logits[p, int(_abs_cols(batch, torch.tensor([[pos]]))[p, 0])]
            want = row[42] - (0 if contrast is None else row[contrast])
            assert total == pytest.approx(float(want), abs=1e-4)
    # one head and one MLP, recomputed from the cache: the labels point at the right components
    _, cache = m.run(batch, names=["result.1", "mlp_out.0", "resid_post.1"])
    resid = cache["resid_post", 1]
    sigma = (resid.var(-1, unbiased=False, keepdim=True) + m.cfg.eps).sqrt()
    u = m.lnf_w * (m.W_U[:, 42] - m.W_U[:, 7])
    for label, x in [("L1H2", cache["result", 1][:, :, 2]), ("L0 mlp", cache["mlp_out", 0])]:
        want = (((x - x.mean(-1, keepdim=True)) / sigma) @ u)[0, -1]
        got = df[(df["prompt"] == 0) & (df["position"] == batch.lengths[0].item() - 1) & (df["component"] == label)]
        assert got["contribution"].item() == pytest.approx(float(want), abs=1e-4)


def test_direct_logit_attribution_finds_the_planted_head(planted):
    df = direct_logit_attribution(planted, "a b c d a b c", "d", contrast="c", progress=False)
    by = df.set_index("component")["contribution"]
    assert by["L1H0"] == pytest.approx(df["total"].iloc[0], abs=1e-3) and by["L1H0"] > 5
    assert by.drop("L1H0").abs().max() < 1e-3
    heads = df[df["kind"] == "head"]
    assert heads["layer"].notna().all() and df[df["kind"] == "mlp"]["head"].isna().all()


@pytest.mark.parametrize("fixture", ["small_raw", "small_folded"])
def test_pinv_unembedding_is_the_pseudo_inverse_of_the_embedding(request, fixture):
    m = request.getfixturevalue(fixture)
    B = pinv_unembedding(m)
    assert B.shape == (m.cfg.d_model, m.cfg.d_vocab)
    assert torch.allclose(B, torch.linalg.pinv(m.W_E), atol=1e-5, rtol=1e-3)
    d = m.cfg.d_model
    # c = x @ B solves c @ W_E = x in least squares: B @ W_E projects onto W_E's row space
    want = torch.eye(d) - (torch.ones(d, d) / d if m.cfg.fold_ln else 0)  # folding centres W_E
    assert torch.allclose(B @ m.W_E, want, atol=1e-4)
    assert torch.allclose(m.W_E @ (B @ m.W_E), m.W_E, atol=1e-4)  # Penrose: W_E B W_E = W_E
    assert pinv_unembedding(m) is B  # cached per model


def test_pinv_lens_reads_the_input_token_and_compares_with_wu(planted):
    """Planted embeddings are orthonormal token codes plus positional codes orthogonal to them, so
    the min-norm inverse of the embedding recovers the input token with coefficient exactly 1."""
    df = logit_lens(planted, "a b c d a b c", unembed="pinv", final_ln=False, positions="all", k=2, progress=False)
    emb = df[(df["label"] == "embed") & (df["rank"] == 1)]
    assert (emb["token"] == emb["input_token"]).all()
    assert torch.allclose(torch.tensor(emb["logit"].to_numpy()), torch.ones(len(emb)), atol=1e-4)
    assert {"wu_token", "wu_top1_agrees", "wu_corr"} <= set(df.columns) and df["unembed"].eq("pinv").all()
    # wu_corr is the Pearson correlation, over the vocabulary, of the two lenses' scores in that cell
    pinv = lens_logits(planted, "a b c d a b c", unembed="pinv", final_ln=False, positions="all")
    wu_l = lens_logits(planted, "a b c d a b c", final_ln=False, positions="all")
    cells = df[df["rank"] == 1]
    for r in cells.itertuples():
        a, b = pinv.logits[r.boundary, 0, r.position].numpy(), wu_l.logits[r.boundary, 0, r.position].numpy()
        want = np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else np.nan
        assert (np.isnan(want) and np.isnan(r.wu_corr)) or r.wu_corr == pytest.approx(want, abs=1e-4)
    assert cells["wu_corr"].notna().any() and cells["wu_corr"].abs().min() < 0.99  # not a trivial ±1
    # W_U reads the induction head's output codes, pinv(W_E) the token codes: they disagree
    wu = logit_lens(planted, "a b c d a b c", final_ln=False, positions="all", k=2, progress=False)
    top = df[df["rank"] == 1].merge(wu[wu["rank"] == 1], on=["label", "position"], suffixes=("", "_wu"))
    assert (top["wu_token"] == top["token_wu"]).all()
    assert (top["wu_top1_agrees"] == (top["token"] == top["token_wu"])).all()


def test_bad_input_is_one_clear_error(small_raw, planted):
    m = small_raw
    pieces = [m.tokenizer.decode([i]) for i in m.tokenizer(" Paris!", add_special_tokens=False)["input_ids"]]
    assert len(pieces) > 1
    with pytest.raises(InterpError, match=rf"target ' Paris!' is {len(pieces)} tokens: \[' P"):
        logit_lens(m, PROMPTS[0], target=" Paris!")
    with pytest.raises(InterpError, match="not in the vocabulary"):
        logit_lens(planted, "a b", target="zz")
    with pytest.raises(InterpError, match="target id 5000 out of range"):
        direct_logit_attribution(m, PROMPTS[0], 5000)
    with pytest.raises(InterpError, match=r"position 9 out of range for prompt 0: it has 3 tokens"):
        logit_lens(planted, "a b", positions=[0, 9])
    with pytest.raises(InterpError, match="prompt 0 is empty"):
        logit_lens(m, "")
    with pytest.raises(InterpError, match="unembed must be one of"):
        logit_lens(m, PROMPTS[0], unembed="wt")
    with pytest.raises(InterpError, match="k must be an integer"):
        logit_lens(m, PROMPTS[0], k=0)
    with pytest.raises(InterpError, match="got 3 contrasts for 1 prompts"):
        direct_logit_attribution(m, PROMPTS[0], 1, contrast=[1, 2, 3])
    with pytest.raises(InterpError, match="positions must be"):
        logit_lens(m, PROMPTS[0], positions=["last"])
    assert not m.has_hooks and not planted.has_hooks


def test_cli_lens_table_files_pinv_and_dla(planted_dir, tmp_path, capsys, saved_figures):
    from figcheck import assert_png, heatmap_values, panels

    out, png = tmp_path / "lens.csv", tmp_path / "lens.png"
    args = ["lens", "a b c d a b c", "--model", planted_dir, "--target", "d", "--k", "3"]
    assert interp.cli.main([*args, "--positions", "all", "--out", str(out), "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "final LayerNorm (parameter-free" in text and "attn 1" in text and "'d' 99.9%" in text
    df = pd.read_csv(out)
    assert {"label", "position", "rank", "token", "prob", "target_prob", "target_rank"} <= set(df.columns)
    assert df["position"].nunique() == 8
    # the figure: a boundaries × positions grid of the top-1 probability, and the target's curves
    (fig,) = saved_figures
    grid, curves = panels(fig)
    top1 = df[df["rank"] == 1].pivot(index="boundary", columns="position", values="prob").to_numpy()
    assert np.allclose(heatmap_values(grid), top1, atol=1e-6)
    assert [t.get_text() for t in grid.get_yticklabels()] == ["embed", "attn 0", "mlp 0", "attn 1", "mlp 1"]
    assert curves.get_title() == "P('d')" and len(curves.get_lines()) == 8
    assert_png(png)

    assert interp.cli.main([*args, "--unembed", "pinv", "--no-final-ln", "--resid-post-only"]) == 0
    text = capsys.readouterr().out
    assert "pinv vs W_U: top-1 agrees in" in text and "no final LayerNorm" in text and "attn 1" not in text

    assert interp.cli.main([*args, "--dla", "--contrast", "c", "--format", "json", "--out", str(tmp_path / "d.x")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "logit('d') - logit('c')" in lines[0] and lines[2].split()[0] == "L1H0"
    assert pd.read_json(tmp_path / "d.x")["component"].iloc[-1] == "unembed bias"


def test_cli_lens_bad_input_exits_2(planted_dir, capsys):
    assert interp.cli.main(["lens", "a b c", "--model", planted_dir, "--target", "a b"]) == 2
    assert "target 'a b' is 2 tokens: ['a', 'b']" in capsys.readouterr().err
    assert interp.cli.main(["lens", "a b c", "--model", planted_dir, "--positions", "7"]) == 2
    assert "position 7 out of range" in capsys.readouterr().err
    assert interp.cli.main(["lens", "a b c", "--model", planted_dir, "--dla"]) == 2
    assert "--dla needs --target" in capsys.readouterr().err
