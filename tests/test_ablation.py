"""Head ablation: identities, the planted circuit, the fast scan against the obvious loop, metrics, bad input, CLI."""

import contextlib
import json

import numpy as np
import pytest
import torch

import interp
from interp import InterpError
from interp import select
from interp.ablation import ablate, ablation_hooks
from interp.prompts import repeated_tokens, text_windows
from interp.scan import scan
from interp.metrics import Custom, LogitDiff, Loss, Prob, resolve_metric, token_loss

HALF = 12  # planted prompts are [BOS] + r + r with len(r) = HALF


@pytest.fixture(scope="module")
def exact(noisy):
    """The noisy float64 model of conftest: every bias random (b_O ≠ 0, so 'zero' and 'no attention' differ)."""
    return noisy


@pytest.fixture(scope="module")
def texts():
    return ["the cat sat on the mat and the cat sat", "def f(x): return x + 1", "a b c d e f", "numbers 1 2 3 4 5 6 7 8"]


def repeated(model, n=6, seed=0):
    return repeated_tokens(model, n, HALF, seed=seed)


def induction_score(cache) -> float:
    """L1H0's attention from each repeated token to the token after its earlier copy."""
    q = torch.arange(HALF + 1, 2 * HALF + 1)
    return cache["pattern", 1][:, 0][:, q, q - HALF + 1].mean().item()


# ---------------------------------------------------------------------------- identities
def test_ablating_nothing_changes_nothing_bit_for_bit(planted):
    tokens = repeated(planted, n=1)
    clean = planted(tokens)
    with pytest.raises(InterpError, match="no heads given"):  # an empty selection is a mistake, not a no-op
        with ablate(planted, heads=[]):
            pass
    # Mean-ablating every head with the run itself as reference replaces each z by itself.
    every = [(l, h) for l in range(2) for h in range(4)]
    with ablate(planted, heads=every, method="mean", reference=tokens):
        assert torch.equal(planted(tokens), clean)
    df = scan(planted, tokens, variants=[[]], progress=False)
    assert df.loc[0, "delta"] == 0.0 and df.loc[0, "clean"] == df.loc[0, "ablated"]
    assert not planted.has_hooks


def test_zero_ablating_a_whole_layer_leaves_only_the_attention_bias(exact, texts):
    """Zeroing every head's z leaves hook_attn_out = b_O[L]: the identity is with that, not with 0."""
    batch = exact.tokenize(texts)
    layer = 1
    with ablate(exact, heads=f"{layer}.*"):
        ablated, cache = exact.run(batch, names=[("attn_out", layer)])
    real = batch.attention_mask
    assert torch.allclose(cache["attn_out", layer][real], exact.b_O[layer].expand(int(real.sum()), -1), atol=1e-12)
    bias_only = [(("attn_out", layer), lambda x, name: exact.b_O[layer].expand_as(x))]
    reference, _ = exact.run(batch, hooks=bias_only)
    assert torch.allclose(ablated[real], reference[real], atol=1e-10)
    nothing, _ = exact.run(batch, hooks=[(("attn_out", layer), lambda x, name: torch.zeros_like(x))])
    assert not torch.allclose(ablated[real], nothing[real], atol=1e-3)  # b_O matters here: it is not a head's


def test_head_ablation_changes_exactly_that_heads_output(exact, texts):
    batch = exact.tokenize(texts)
    _, clean = exact.run(batch, names=["result.1", "resid_pre.1"])
    with ablate(exact, heads=[(1, 2)]):
        _, hit = exact.run(batch, names=["result.1", "resid_pre.1"])
    assert torch.equal(hit["resid_pre", 1], clean["resid_pre", 1])  # nothing before layer 1 moves
    others = [0, 1, 3]
    assert torch.allclose(hit["result", 1][:, :, others], clean["result", 1][:, :, others], atol=1e-12)
    assert hit["result", 1][:, :, 2].abs().max() == 0
    assert clean["result", 1][:, :, 2].abs().max() > 0.1


# ---------------------------------------------------------------------------- the planted circuit
def test_ablating_the_previous_token_head_breaks_induction(planted):
    tokens = repeated(planted, n=8)
    batch = planted.to_batch(tokens)
    first, second = Loss(positions=slice(1, HALF + 1)), Loss(positions=slice(HALF + 2, None))
    results = {}
    for heads in ([], [(0, 0)], [(0, 3)]):
        with ablate(planted, heads=heads) if heads else contextlib.nullcontext():
            logits, cache = planted.run(tokens, names=["pattern.1"])
        results[tuple(heads)] = (first.from_logits(planted, logits, batch).item(),
                                 second.from_logits(planted, logits, batch).item(), induction_score(cache))
    clean_first, clean_second, clean_score = results[()]
    assert clean_second < 1.0 < 4.0 < clean_first and clean_score > 0.8
    _, broken_second, broken_score = results[((0, 0),)]
    assert broken_score < 0.1  # the induction head lost its keys
    assert broken_second - clean_second > 0.5 * (clean_first - clean_second)  # repeated half ~ unpredicted again
    _, other_second, other_score = results[((0, 3),)]
    assert abs(other_second - clean_second) < 1e-4 and abs(other_score - clean_score) < 1e-4


def test_scan_finds_the_circuit_and_nothing_else(planted):
    tokens = repeated(planted, n=8)
    df = scan(planted, tokens, Loss(positions=slice(HALF + 2, None)), progress=False)
    assert list(df.columns) == ["variant", "layer", "head", "n_heads", "method", "metric", "clean", "ablated", "delta"]
    assert len(df) == 8 and df["variant"].tolist()[:2] == ["L0H0", "L0H1"]
    top = df.sort_values("delta", ascending=False)
    assert set(top["variant"][:2]) == {"L0H0", "L1H0"} and (top["delta"][:2] > 1.5).all()
    assert (top["delta"][2:].abs() < 1e-4).all()


def test_pattern_ablation_of_the_previous_token_edge(planted):
    tokens = repeated(planted, n=4)
    _, clean = planted.run(tokens, names=["pattern.0", "pattern.1"])
    q = torch.arange(1, tokens.shape[1])
    for renormalize in (False, True):
        with ablate(planted, heads=[(0, 0)], method="pattern", keys="previous", renormalize=renormalize):
            _, cache = planted.run(tokens, names=["pattern.0", "pattern.1"])
        got, ref = cache["pattern", 0], clean["pattern", 0]
        assert torch.all(got[:, 0, q, q - 1] == 0)
        assert torch.equal(got[:, 1:], ref[:, 1:])  # other heads untouched, bit for bit
        if renormalize:
            assert torch.allclose(got[:, 0].sum(-1), torch.ones(4, tokens.shape[1]), atol=1e-5)
        else:
            keep = torch.ones_like(ref[:, 0], dtype=torch.bool)
            keep[:, q, q - 1] = False
            assert torch.equal(got[:, 0][keep], ref[:, 0][keep])
            assert got[:, 0, 1:].sum(-1).max() < 1e-3  # L0H0 put all its attention on the previous token
        assert induction_score(cache) < 0.1


def test_pattern_keys_mask_and_positions(exact, texts):
    batch = exact.tokenize(texts[:2])
    P = batch.tokens.shape[1]
    as_list = ablation_hooks(exact, "2.1", "pattern", keys=[0])
    as_mask = ablation_hooks(exact, "2.1", "pattern", keys=torch.zeros(P, P, dtype=torch.bool).index_fill_(1, torch.tensor([0]), True))
    as_name = ablation_hooks(exact, "2.1", "pattern", keys="bos")
    outs = [exact.run(batch, hooks=h)[0] for h in (as_list, as_mask, as_name)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ---------------------------------------------------------------------------- scoping
def test_hooks_are_removed_after_an_exception(planted):
    tokens = repeated(planted, n=2)
    clean = planted(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(planted, heads=[(0, 0), (1, 0)]):
            assert planted.has_hooks
            raise RuntimeError("boom")
    assert not planted.has_hooks and torch.equal(planted(tokens), clean)
    # An error raised inside the forward pass by the ablation itself leaves the model clean too.
    short = repeated(planted, n=2)[:, :5]
    with pytest.raises(InterpError, match="reference covers positions 0–4"):
        with ablate(planted, heads=[(0, 0)], method="mean", reference=short):
            planted(tokens)
    assert not planted.has_hooks


def test_nested_ablations_compose(exact, texts):
    batch = exact.tokenize(texts)
    # Reference statistics describe the clean model, so nesting equals ablating both at once.
    with ablate(exact, heads=[(0, 1), (2, 3)], method="mean_pos", reference=texts):
        together = exact.run(batch)[0]
    with ablate(exact, heads=[(0, 1)], method="mean_pos", reference=texts) as m:
        outer = m.run(batch)[0]
        with ablate(exact, heads="2.3", method="mean_pos", reference=texts):
            assert torch.equal(exact.run(batch)[0], together)
        assert torch.equal(exact.run(batch)[0], outer)
    assert not exact.has_hooks


def test_hook_list_works_with_run(exact, texts):
    batch = exact.tokenize(texts)
    with ablate(exact, heads=["L1H0", "2.2"]):
        via_context = exact.run(batch)[0]
    via_run = exact.run(batch, hooks=ablation_hooks(exact, ["L1H0", "2.2"]))[0]
    assert torch.equal(via_context, via_run) and not exact.has_hooks


# ---------------------------------------------------------------------------- methods' values
def test_mean_is_per_position_over_real_tokens_and_mean_pos_pools_them(exact, texts):
    ref = exact.tokenize(texts)  # right-padded, lengths differ
    _, ref_cache = exact.run(ref, names=["z.1"])
    z, real = ref_cache["z", 1][:, :, 2], ref.attention_mask
    run = exact.tokenize(texts[:2])
    P = run.tokens.shape[1]
    with ablate(exact, heads=[(1, 2)], method="mean", reference=texts):
        _, cache = exact.run(run, names=["z.1"])
    for p in range(P):
        expected = z[real[:, p], p].mean(0)
        assert torch.allclose(cache["z", 1][:, p, 2], expected.expand(2, -1), atol=1e-12)
    with ablate(exact, heads=[(1, 2)], method="mean_pos", reference=texts):
        _, cache = exact.run(run, names=["z.1"])
    assert torch.allclose(cache["z", 1][:, :, 2], z[real].mean(0).expand(2, P, -1), atol=1e-12)


def test_resample_pairs_rows_as_documented(exact, texts):
    """Within the batch: row i takes row d[i] at the same token positions, d a seeded derangement (the prompts
    must be as long as each other there: a shorter source is refused, since its positions do not exist)."""
    equal = exact.tokenize(texts).tokens[:, :6]  # four prompts of 6 tokens each
    _, clean = exact.run(equal, names=["z.0"])
    z = clean["z", 0][:, :, 1]
    with ablate(exact, heads=[(0, 1)], method="resample", seed=5):
        _, cache = exact.run(equal, names=["z.0"])
    got = cache["z", 0][:, :, 1]
    source = [next(j for j in range(4) if torch.equal(got[i], z[j])) for i in range(4)]
    assert sorted(source) == [0, 1, 2, 3] and all(source[i] != i for i in range(4))  # a derangement
    with ablate(exact, heads=[(0, 1)], method="resample", seed=5):
        with pytest.raises(InterpError, match="beyond its source prompt"):
            exact.run(exact.tokenize(texts), names=["z.0"])
    # With a reference: row i takes reference row perm[i mod n_ref] at its own token positions, perm seeded.
    batch = exact.tokenize(texts)
    reference = exact.tokenize([t + " and more words here" * 3 for t in texts[:3]])
    _, ref_cache = exact.run(reference, names=["z.0"])
    perm = torch.randperm(3, generator=torch.Generator().manual_seed(5))
    with ablate(exact, heads=[(0, 1)], method="resample", reference=reference, seed=5):
        _, cache = exact.run(batch, names=["z.0"])
    for i in range(4):
        n = int(batch.lengths[i])
        assert torch.equal(cache["z", 0][i, :n, 1], ref_cache["z", 0][perm[i % 3], :n, 1])


# ---------------------------------------------------------------------------- the fast scan
def naive_loop(model, tokens, runs, metrics, **kw):
    """The obvious loop, written out: one full ablated forward per variant, full logits, then each metric."""
    batch = model.to_batch(tokens)
    metrics = [resolve_metric(model, m) for m in metrics]
    values = []
    for heads in runs:
        with ablate(model, heads=heads, **kw) if heads else contextlib.nullcontext():
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
        values.append([float(m.from_logits(model, logits, batch)) for m in metrics])
    return torch.tensor(values).T  # [metric, variant]


METHODS = [
    ("zero", {}),
    ("mean", {"reference": "texts"}),
    ("mean_pos", {"reference": "texts"}),
    ("resample", {}),
    ("resample", {"reference": "texts", "seed": 3}),
    ("pattern", {"keys": "previous"}),
    ("pattern", {"keys": "self", "renormalize": True}),
]


@pytest.mark.parametrize("method, kw", METHODS, ids=[f"{m}-{'-'.join(k)}" for m, k in METHODS])
def test_fast_scan_equals_the_naive_loop(exact, texts, method, kw):
    kw = {k: (texts if v == "texts" else v) for k, v in kw.items()}
    batch = exact.tokenize(texts[:3])  # right-padded: padding must be excluded the same way by both
    if method == "resample":  # resampling pairs token positions: prompts as long as their sources
        batch = batch.tokens[:, :6]
    every = [[(l, h)] for l in range(3) for h in range(4)]
    metrics = ["loss", LogitDiff(5, 9), Prob(7, position=-2), Custom(lambda logits: logits[:, 1:4].logsumexp(-1).mean(-1))]
    expected = naive_loop(exact, batch, every, metrics, method=method, **kw)
    for metric, naive in zip(metrics, expected):
        df = scan(exact, batch, metric, method=method, chunk_tokens=40, progress=False, **kw)
        # float64: the bar is 1e-5; the two paths agree to rounding, far tighter.
        assert torch.allclose(torch.tensor(df["ablated"].to_list()), naive, atol=1e-9, rtol=0), metric
        assert df["delta"].abs().max() > 1e-6  # the ablations move the metric far beyond the tolerance


def test_fast_scan_of_layers_and_multi_layer_sets_equals_the_naive_loop(exact, texts):
    sets = {"clean": [], "two layers": ["0.1", "2.3"], "three": ["0.0", "1.*", "2.0"], "late": ["2.1"]}
    for method, kw in [("zero", {}), ("resample", {}), ("mean", {"reference": texts})]:
        batch = exact.tokenize(texts) if method != "resample" else exact.tokenize(texts).tokens[:, :6]
        df = scan(exact, batch, variants=sets, method=method, chunk_tokens=10_000, progress=False, **kw)
        assert df["variant"].tolist() == list(sets)
        expected = naive_loop(exact, batch, list(sets.values()), ["loss"], method=method, **kw)[0]
        assert torch.allclose(torch.tensor(df["ablated"].to_list()), expected, atol=1e-9, rtol=0)
        by_layer = scan(exact, batch, by="layer", method=method, progress=False, **kw)
        assert by_layer["variant"].tolist() == ["L0", "L1", "L2"] and by_layer["n_heads"].tolist() == [4, 4, 4]
        expected = naive_loop(exact, batch, [f"{l}.*" for l in range(3)], ["loss"], method=method, **kw)[0]
        assert torch.allclose(torch.tensor(by_layer["ablated"].to_list()), expected, atol=1e-9, rtol=0)


def test_scan_of_chosen_heads_and_slow_path(exact, texts):
    df = scan(exact, texts, heads=["2.1", (0, 3)], progress=False)
    assert df["variant"].tolist() == ["L0H3", "L2H1"] and df["layer"].tolist() == [0, 2] and df["head"].tolist() == [3, 1]
    slow = scan(exact, texts, heads=["2.1", (0, 3)], fast=False, progress=False)
    assert torch.allclose(torch.tensor(df["ablated"].to_list()), torch.tensor(slow["ablated"].to_list()), atol=1e-10)
    # Inside another ablation the scan takes the slow path and sees the outer ablation.
    with ablate(exact, heads=[(1, 1)]):
        nested = scan(exact, texts, heads=["2.1"], progress=False)
    batch = exact.tokenize(texts)
    with ablate(exact, heads=[(1, 1)]):
        outer_loss = float(Loss().from_logits(exact, exact(batch), batch))
        with ablate(exact, heads=[(2, 1)]):
            both_loss = float(Loss().from_logits(exact, exact(batch), batch))
    assert nested.loc[0, "clean"] == pytest.approx(outer_loss, abs=1e-10)  # the outer ablation is its baseline
    assert nested.loc[0, "ablated"] == pytest.approx(both_loss, abs=1e-10)
    assert abs(outer_loss - df.loc[1, "clean"]) > 1e-3 and not exact.has_hooks


# ---------------------------------------------------------------------------- metrics
def test_loss_metrics_agree_and_exclude_padding(exact, texts, monkeypatch):
    batch = exact.tokenize(texts, padding_side="left")
    logits = exact(batch.tokens, attention_mask=batch.attention_mask)
    per_token = token_loss(logits, batch.tokens, batch.attention_mask)
    assert per_token.shape == (4, batch.tokens.shape[1] - 1)
    assert per_token.isnan().sum() == (~(batch.attention_mask[:, 1:] & batch.attention_mask[:, :-1])).sum()
    alone = [token_loss(exact(exact.tokenize(t).tokens), exact.tokenize(t).tokens)[0] for t in texts]
    assert torch.allclose(per_token.nanmean(), torch.cat(alone).mean(), atol=1e-10)  # padding changes nothing
    monkeypatch.setattr("interp.metrics.LOSS_CHUNK_ROWS", 7)  # several chunks
    final = []
    exact.forward(batch.tokens, attention_mask=batch.attention_mask, hooks=[("resid_post.2", lambda x, n: final.append(x))])
    for loss in (Loss(), Loss(positions=slice(3, 9)), Loss(positions=[4, 5, 11])):
        assert torch.allclose(loss.from_resid(exact, final[0], batch), loss.from_logits(exact, logits, batch), atol=1e-10)


def test_logit_diff_and_prob_read_each_prompts_last_real_token(exact, texts):
    batch = exact.tokenize(texts)
    logits = exact(batch.tokens, attention_mask=batch.attention_mask)
    last = logits[torch.arange(4), batch.last_positions]
    ld = LogitDiff(5, [9, 8, 7, 6]).bind(exact)
    assert torch.allclose(ld.from_logits(exact, logits, batch), (last[:, 5] - last[torch.arange(4), torch.tensor([9, 8, 7, 6])]).mean())
    word = exact.to_str_tokens(torch.tensor([42]))[0]
    prob = Prob(word).bind(exact)
    assert torch.allclose(prob.from_logits(exact, logits, batch), last.softmax(-1)[:, 42].mean())


@pytest.mark.parametrize(
    "metric, message",
    [
        (Custom(lambda logits: logits[:, :, 0]), r"returned shape \(4, \d+\).*expected a scalar \(shape \(\)\) or one value per prompt \(shape \(4,\)\)"),
        (lambda logits: "high", "returned a str"),
        ("logit_diff", "needs tokens"),
        ("perplexity", "unknown metric"),
        (LogitDiff("the cat", 3), r"correct token 'the cat' is \d+ tokens: .*; give a single token"),
        (LogitDiff(1, 3, position=-40), r"position -40 out of range for prompt 0: it has \d+ tokens"),
        (Prob(99999), r"target token id 99999 out of range: vocabulary has 300 tokens"),
        (LogitDiff(1, [1, 2]), "2 tokens but the batch has 4 prompts"),
    ],
)
def test_bad_metrics(exact, texts, metric, message):
    with pytest.raises(InterpError, match=message):
        scan(exact, texts, metric, heads=["0.0"], progress=False)
    assert not exact.has_hooks


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"heads": [(0, 0)], "method": "shuffle"}, "unknown ablation method 'shuffle': use one of zero, mean"),
        ({"heads": [(0, 4)]}, r"head 4 out of range: model has 4 heads per layer \(0–3\)"),
        ({"heads": [(3, 0)]}, r"layer 3 out of range: model has 3 layers"),
        ({"heads": "4-11"}, "cannot read head '4-11'"),
        ({"heads": [(0, 0)], "method": "mean"}, "needs reference="),
        ({"heads": [(0, 0)], "method": "zero", "reference": "a b"}, "uses no reference data"),
        ({"heads": [(0, 0)], "method": "pattern"}, "needs keys="),
        ({"heads": [(0, 0)], "method": "pattern", "keys": "next"}, "unknown keys= 'next'"),
        ({"heads": [(0, 0)], "method": "pattern", "keys": [500]}, r"key positions \[500\] out of range"),
        ({"heads": [(0, 0)], "keys": "previous"}, "belongs to method pattern"),
    ],
)
def test_bad_ablations(exact, kwargs, message):
    with pytest.raises(InterpError, match=message):
        with ablate(exact, **kwargs):
            pass
    assert not exact.has_hooks


def test_bad_scans(exact, texts):
    for kwargs, message in [
        ({"variants": [["0.0"]], "by": "layer"}, "not both"),
        ({"by": "block"}, "by must be 'head'"),
        ({"method": "resample", "heads": ["0.0"], "inputs": texts[:1]}, "at least 2 prompts"),
        ({"method": "mean", "reference": "a b", "heads": ["0.0"]}, "reference covers positions 0–2"),
        ({"chunk_tokens": 0}, "chunk_tokens must be a positive int"),
    ]:
        inputs = kwargs.pop("inputs", texts)
        with pytest.raises(InterpError, match=message):
            scan(exact, inputs, progress=False, **kwargs)
        assert not exact.has_hooks


def test_parse_heads_and_text_batch(planted):
    assert select.heads(planted, (1, 2)) == [(1, 2)]
    assert select.heads(planted, "0.*") == [(0, 0), (0, 1), (0, 2), (0, 3)]
    batch = text_windows(planted, "a b c d e f g h", window=4)
    assert batch.tokens[:, 0].tolist() == [0, 0, 0] and batch.lengths.tolist() == [4, 4, 3]
    with pytest.raises(InterpError, match="window 99 out of range"):
        text_windows(planted, "a b", window=99)


# ---------------------------------------------------------------------------- CLI
def _printed_rows(out: str) -> dict[str, list[str]]:
    """The printed table's rows, keyed by the variant in the first column."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["variant"])
    return {line.split()[0]: line.split()[1:] for line in lines[start + 1 :] if line.strip() and not line.startswith("(")}


def test_cli_ablate_heads_prints_each_and_together(planted_dir, capsys):
    from interp.cli import main

    assert main(["ablate", "--model", planted_dir, "--heads", "0.0,1.3", "--no-progress"]) == 0
    rows = _printed_rows(capsys.readouterr().out)
    assert list(rows) == ["L0H0", "L1H3", "L0H0+L1H3"]
    # on the default probe (repeated random tokens) L0H0 feeds the induction head: its loss rises; L1H3 writes nothing
    delta = {name: float(r[-1]) for name, r in rows.items()}
    assert delta["L0H0"] > 0.2 and abs(delta["L1H3"]) < 1e-3 and delta["L0H0+L1H3"] == pytest.approx(delta["L0H0"], abs=1e-3)


def test_cli_ablate_scan_exports(planted_dir, tmp_path, capsys, saved_figures):
    import pandas as pd
    from figcheck import assert_png, heatmap_values, panels

    from interp.cli import main

    text = tmp_path / "text.txt"
    text.write_text(" ".join("a b c d e f g h i j".split() * 3))
    csv, js, png = tmp_path / "scan.csv", tmp_path / "scan.json", tmp_path / "scan.png"
    args = ["ablate", "--model", planted_dir, "--scan", "--text", str(text), "--no-progress"]
    assert main([*args, "--out", str(csv), "--png", str(png)]) == 0
    assert main([*args, "--method", "mean", "--reference", str(text), "--out", str(js)]) == 0
    capsys.readouterr()
    model = interp.load(planted_dir)
    windows = text_windows(model, text.read_text(), window=min(128, model.cfg.n_ctx))
    df = pd.read_csv(csv)
    want = scan(model, windows, progress=False)
    assert df["variant"].tolist() == want["variant"].tolist()
    assert torch.allclose(torch.tensor(df["delta"].to_list()), torch.tensor(want["delta"].to_list()), atol=1e-5)
    rows = json.loads(js.read_text())
    want = scan(model, windows, method="mean", reference=windows, progress=False)
    assert [r["method"] for r in rows] == ["mean"] * 8
    assert torch.allclose(torch.tensor([r["delta"] for r in rows]), torch.tensor(want["delta"].to_list()), atol=1e-5)
    # the heatmap: one layers × heads panel of exactly the scan's deltas, with a title naming the metric
    (fig,) = saved_figures
    (ax,) = panels(fig)
    assert ax.get_title() == "Δ loss (zero ablation)"
    assert np.allclose(heatmap_values(ax), df["delta"].to_numpy().reshape(2, 4), atol=1e-5)
    assert_png(png)
    assert main(["ablate", "--model", planted_dir, "--scan", "--by", "layer", "--metric", "logit_diff",
                 "--correct", "a", "--wrong", "b", "--no-progress"]) == 0
    rows = _printed_rows(capsys.readouterr().out)
    assert rows.keys() == {"L0", "L1"}  # one row per layer, not per head
    assert rows["L0"][:2] == ["0", "<NA>"] and rows["L1"][:2] == ["1", "<NA>"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--heads", "0.0", "--method", "mean"], "needs --reference"),
        (["--heads", "0.9"], "head 9 out of range"),
        (["--scan", "--by", "layer", "--png", "x.png"], "--png draws a layers × heads heatmap"),
        (["--heads", "0.0", "--metric", "logit_diff"], "--target and --contrast"),
        ([], "give --heads"),
    ],
)
def test_cli_ablate_errors(planted_dir, capsys, extra, message):
    from interp.cli import main

    assert main(["ablate", "--model", planted_dir, "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err
