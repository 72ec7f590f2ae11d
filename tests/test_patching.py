"""Activation and path patching: the fast paths against the obvious loop, TransformerLens, Hugging Face, planted truth."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import hf_reference as ref
import interp
from interp import InterpError, prompts
from interp.cli import main
from interp.metrics import LogitDiff, Loss
from interp.patching import HEAD_SITES, SITES, patch
from interp.path_patching import path_patch, path_patch_senders

MODES = [True, False]


@pytest.fixture(scope="module")
def models(noisy, noisy_raw):
    return {True: noisy, False: noisy_raw}


def pair(model, n=3, P=8, seed=0):
    """Random clean prompts and corrupted ones with positions 2–4 changed (the noisy model's vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.cfg.d_vocab, (n, P), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(1, model.cfg.d_vocab, (n, 3), generator=g)
    return clean, corrupted


def induction_pair(model, n=8, half=12, seed=1):
    """``[BOS] r r[:-1]`` and the same with the first copy of the query token replaced (interp.prompts)."""
    return prompts.induction_pair(model, n, half, seed=seed)


def one(df, column="value") -> float:
    """The one row of a path_patch table."""
    assert len(df) == 1
    return float(df[column].iloc[0])


def values(df) -> torch.Tensor:
    return torch.tensor(df["value"].to_list(), dtype=torch.float64)


# ---------------------------------------------------------------------------- the fast path is the obvious loop
SITE_BY = [(s, b) for s in SITES for b in (("head", "head_pos") if s in HEAD_SITES else ("layer", "layer_pos"))]


@pytest.mark.parametrize("site, by", SITE_BY)
def test_fast_patching_equals_the_obvious_loop(noisy, site, by):
    clean, corrupted = pair(noisy)
    metric = LogitDiff(5, 9)
    fast = patch(noisy, clean, corrupted, metric, site=site, by=by, chunk_tokens=50, progress=False)
    slow = patch(noisy, clean, corrupted, metric, site=site, by=by, fast=False, progress=False)
    assert len(fast) == len(slow) == {"head": 12, "head_pos": 96, "layer": 3, "layer_pos": 24}[by]
    assert torch.allclose(values(fast), values(slow), atol=1e-9, rtol=0)
    assert (fast["effect"] - slow["effect"]).abs().max() < 1e-8
    moved = values(fast) - fast.attrs["corrupted"]
    assert moved.abs().max() > 1e-3  # some patch matters: the comparison can fail


def test_loss_metric_padding_and_chosen_heads(noisy):
    from interp.tokens import Batch

    c, k = pair(noisy, n=2, P=8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False  # the second pair is 5 tokens long, right-padded
    clean, corrupted = Batch(c, mask), Batch(k, mask)
    for kw in ({"heads": "1.*,2.0"}, {"layers": [0, 2]}):
        fast = patch(noisy, clean, corrupted, Loss(), progress=False, **kw)
        slow = patch(noisy, clean, corrupted, Loss(), fast=False, progress=False, **kw)
        assert torch.allclose(values(fast), values(slow), atol=1e-9, rtol=0)
    assert fast[["layer", "head"]].values.tolist() == [[0, h] for h in range(4)] + [[2, h] for h in range(4)]


# ---------------------------------------------------------------------------- TransformerLens's functions
TL_FUNCTIONS = [  # (TransformerLens function, our site and by, how to lay our rows out as its tensor)
    ("get_act_patch_resid_pre", "resid_pre", "layer_pos", lambda v, L, H, P: v.view(L, P)),
    ("get_act_patch_resid_mid", "resid_mid", "layer_pos", lambda v, L, H, P: v.view(L, P)),
    ("get_act_patch_attn_out", "attn_out", "layer_pos", lambda v, L, H, P: v.view(L, P)),
    ("get_act_patch_mlp_out", "mlp_out", "layer_pos", lambda v, L, H, P: v.view(L, P)),
    ("get_act_patch_attn_head_out_all_pos", "z", "head", lambda v, L, H, P: v.view(L, H)),
    ("get_act_patch_attn_head_q_all_pos", "q", "head", lambda v, L, H, P: v.view(L, H)),
    ("get_act_patch_attn_head_k_all_pos", "k", "head", lambda v, L, H, P: v.view(L, H)),
    ("get_act_patch_attn_head_v_all_pos", "v", "head", lambda v, L, H, P: v.view(L, H)),
    ("get_act_patch_attn_head_pattern_all_pos", "pattern", "head", lambda v, L, H, P: v.view(L, H)),
    ("get_act_patch_attn_head_out_by_pos", "z", "head_pos", lambda v, L, H, P: v.view(L, H, P).permute(0, 2, 1)),
    ("get_act_patch_attn_head_v_by_pos", "v", "head_pos", lambda v, L, H, P: v.view(L, H, P).permute(0, 2, 1)),
    ("get_act_patch_attn_head_pattern_by_pos", "pattern", "head_pos", lambda v, L, H, P: v.view(L, H, P)),
]


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
@pytest.mark.parametrize("name, site, by, layout", TL_FUNCTIONS, ids=[t[0] for t in TL_FUNCTIONS])
def test_equal_to_transformer_lens(models, fold, name, site, by, layout):
    from transformer_lens import patching

    m = models[fold]
    clean, corrupted = pair(m, n=2, P=6)
    metric = LogitDiff(5, 9).bind(m)
    kb = m.to_batch(corrupted)
    _, clean_cache = m.bridge.run_with_cache(clean)
    theirs = getattr(patching, name)(m.bridge, corrupted, clean_cache, lambda logits: metric.from_logits(m, logits, kb))
    ours = patch(m, clean, corrupted, metric, site=site, by=by, progress=False)
    L, H, P = m.cfg.n_layers, m.cfg.n_heads, 6
    assert torch.allclose(layout(values(ours), L, H, P), theirs.double().cpu(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- planted truth
def test_patching_the_planted_induction_circuit(planted):
    clean, corrupted = induction_pair(planted)
    df = patch(planted, clean, corrupted, progress=False).set_index(["layer", "head"])
    assert df.attrs["clean"] - df.attrs["corrupted"] > 5  # the corruption breaks induction
    assert df.loc[(1, 0), "effect"] > 0.95  # the induction head's output alone restores it
    assert df.loc[(0, 0), "effect"] > 0.95  # ... and so does the previous-token head that feeds its keys
    others = df.drop([(1, 0), (0, 0)])["effect"]
    assert others.abs().max() < 0.05
    by_pos = patch(planted, clean, corrupted, site="z", by="head_pos", heads="1.0", progress=False)
    last = by_pos["position"].max()
    assert by_pos.set_index("position").loc[last, "effect"] > 0.95  # at the position that predicts
    assert by_pos[by_pos["position"] < last]["effect"].abs().max() < 0.05


def test_path_patching_the_planted_induction_circuit(planted):
    clean, corrupted = induction_pair(planted)
    effect = {x: one(path_patch(planted, clean, corrupted, "0.0", f"1.0.{x}"), "effect") for x in "qkv"}
    assert effect["k"] > 0.95 and abs(effect["q"]) < 0.05 and abs(effect["v"]) < 0.05
    scan = path_patch_senders(planted, clean, corrupted, "1.0.k", progress=False).set_index(["sender_layer", "sender_head"])
    assert scan.loc[(0, 0), "effect"] == pytest.approx(effect["k"], abs=1e-5)
    assert scan.drop((0, 0))["effect"].abs().max() < 0.05
    logits = path_patch_senders(planted, clean, corrupted, "logits", progress=False).set_index(["sender_layer", "sender_head"])
    assert logits["effect"].idxmax() == (1, 0)  # into the logits directly, only the induction head's output matters


# ---------------------------------------------------------------------------- path patching vs references
@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_direct_path_equals_transformer_lens(models, fold, component):
    from transformer_lens import patching

    m = models[fold]
    clean, corrupted = pair(m, n=2, P=6)
    metric = LogitDiff(5, 9).bind(m)
    kb = m.to_batch(corrupted)
    _, cc = m.bridge.run_with_cache(clean)
    _, kc = m.bridge.run_with_cache(corrupted)
    theirs = patching.get_act_patch_direct_path(m.bridge, corrupted, cc, kc, lambda lg: metric.from_logits(m, lg, kb),
                                                0, 2, component=component, verbose=False)
    for layer in (1, 2):
        receivers = ",".join(f"{layer}.{h}.{component}" for h in range(4))
        for h in range(4):
            ours = one(path_patch(m, clean, corrupted, "0.2", f"{layer}.{h}.{component}", metric, mlps="frozen"))
            assert ours == pytest.approx(float(theirs[layer, h]), abs=1e-6)
        scan = path_patch_senders(m, clean, corrupted, receivers, metric, senders="0.2", mlps="frozen", progress=False)
        assert len(scan) == 1


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
@pytest.mark.parametrize("mlps", ["recomputed", "frozen"])
@pytest.mark.parametrize("cascade", [False, True], ids=["wang", "cascade"])
def test_path_patching_equals_hugging_face_written_out(models, noisy_hf, fold, mlps, cascade):
    hf = noisy_hf[0]
    m = models[fold]
    clean, corrupted = pair(m, n=2, P=7)
    mask = torch.ones_like(clean, dtype=torch.bool)
    metric = LogitDiff(5, 9).bind(m)
    kb = m.to_batch(corrupted)
    cases = [([(0, 1)], [(2, 3, "k")]), ([(0, 1), (1, 2)], [(2, 0, "q"), (2, 3, "v")]), ([(0, 3)], [(1, 1, "k"), (2, 1, "k")]),
             ([(1, 0)], "logits")]
    for senders, receivers in cases:
        ours = one(path_patch(m, clean, corrupted, senders, receivers, metric, mlps=mlps, cascade=cascade))
        theirs = float(metric.from_logits(m, ref.path_patched_logits(hf, clean, corrupted, mask, senders, receivers, mlps,
                                                                     cascade=cascade), kb))
        assert ours == pytest.approx(theirs, abs=1e-6), (senders, receivers)
        scan = path_patch_senders(m, clean, corrupted, receivers, metric, senders=senders, mlps=mlps, cascade=cascade,
                               progress=False)
        if len(senders) == 1:
            assert scan["value"].iloc[0] == pytest.approx(theirs, abs=1e-6)
    frozen_or_not = {x: one(path_patch(m, clean, corrupted, [(0, 1)], [(2, 3, "k")], metric, mlps=x))
                     for x in ("recomputed", "frozen")}
    assert abs(frozen_or_not["recomputed"] - frozen_or_not["frozen"]) > 1e-5  # the MLPs in between matter (≫ 1e-9)
    # Receivers in two layers: Wang's caching (the later receiver sees the senders' path only) is not the cascade.
    two_layers = {c: one(path_patch(m, clean, corrupted, [(0, 3)], [(1, 1, "k"), (2, 1, "k")], metric, mlps=mlps,
                                    cascade=c)) for c in (False, True)}
    assert abs(two_layers[False] - two_layers[True]) > 1e-6


# ---------------------------------------------------------------------------- interp-tiny
@pytest.fixture(scope="module")
def tiny():
    return interp.load("interp-tiny")


def test_interp_tiny_induction_circuit(tiny):
    clean, corrupted = induction_pair(tiny, n=8, half=20)
    z = patch(tiny, clean, corrupted, progress=False).set_index(["layer", "head"])
    assert z.loc[(0, 4), "effect"] > 0.9  # the previous-token head
    induction = [(1, h) for h in (0, 1, 2, 4, 5, 6, 7)]
    receivers = ",".join(f"1.{h}.k" for _, h in induction)
    paths = path_patch_senders(tiny, clean, corrupted, receivers, progress=False).set_index(["sender_layer", "sender_head"])
    assert paths["effect"].idxmax() == (0, 4) and paths.loc[(0, 4), "effect"] > 0.8
    assert paths.drop((0, 4))["effect"].abs().max() < 0.05
    for x in "qv":
        assert abs(one(path_patch(tiny, clean, corrupted, "0.4", receivers.replace(".k", f".{x}")), "effect")) < 0.05


# ---------------------------------------------------------------------------- bad input
def test_what_cannot_be_patched_is_refused_in_one_line(planted):
    """Issue 27's cases that belong to the library: no corrupted input, no model, nothing that differs, a metric
    that cannot tell the two runs apart — one InterpError each, for patch, path patching and attribution."""
    from interp.attribution import attribute

    same = "a b c d e a b c d"
    calls = {
        "patch": lambda *a, **k: patch(*a, progress=False, **k),
        "path_patch": lambda m, c, k, *r, **kw: path_patch(m, c, k, "0.0", "1.0.k", *r, **kw),
        "senders": lambda m, c, k, *r, **kw: path_patch_senders(m, c, k, "1.0.k", *r, progress=False, **kw),
        "attribute": lambda *a, **k: attribute(*a, progress=False, **k),
    }
    for name, call in calls.items():
        with pytest.raises(InterpError, match="no corrupted input given"):
            call(planted, same, None)
        with pytest.raises(InterpError, match="model must be a HookedGPT2"):
            call(None, same, "a b c x e a b c d")
        with pytest.raises(InterpError, match="same tokens: nothing differs"):
            call(planted, same, same)
        with pytest.raises(InterpError, match=r"give the same logit_diff\('a' - 'a'\)"):
            call(planted, same, "a b c x e a b c d", LogitDiff("a", "a"))
    assert not planted.has_hooks


@pytest.mark.parametrize("kwargs, message", [
    (dict(site="resid"), "unknown site 'resid'"),
    (dict(site="z", by="layer"), "by='layer' does not fit site 'z'"),
    (dict(site="resid_pre", heads="0.1"), "site 'resid_pre' is per layer"),
    (dict(by="pos"), "unknown by='pos'"),
    (dict(positions=[1]), "positions= goes with by='layer_pos' or 'head_pos'"),
    (dict(heads="0.9"), "head 9 out of range"),
    (dict(chunk_tokens=0), "chunk_tokens must be a positive int"),
])
def test_bad_patching_arguments(planted, kwargs, message):
    with pytest.raises(InterpError, match=message):
        patch(planted, "a b c", "a b d", LogitDiff("a", "b"), progress=False, **kwargs)
    assert not planted.has_hooks


def test_unequal_lengths_say_where_the_pair_differs(planted):
    with pytest.raises(InterpError, match=r"prompt 1 differ in length \(4 vs 5 tokens, first different token at position 3\)"):
        patch(planted, ["a b c", "a b c"], ["a b d", "a b d e"], LogitDiff("a", "b"), progress=False)
    with pytest.raises(InterpError, match="2 clean prompt"):
        patch(planted, ["a b", "c d"], ["a b"], LogitDiff("a", "b"), progress=False)
    with pytest.raises(InterpError, match=r"sender 1.1 is not before every receiver \(L1H0.k\)"):
        path_patch(planted, "a b c", "a b d", "1.1", "1.0.k", LogitDiff("a", "b"))
    with pytest.raises(InterpError, match="cannot read receiver '1.0.x'"):
        path_patch(planted, "a b c", "a b d", "0.1", "1.0.x", LogitDiff("a", "b"))
    with pytest.raises(InterpError, match="mlps must be"):
        path_patch(planted, "a b c", "a b d", "0.1", "1.0.k", LogitDiff("a", "b"), mlps="some")


# ---------------------------------------------------------------------------- CLI
def test_cli_patch_and_path_patch(planted_dir, tmp_path, capsys, saved_figures):
    from figcheck import heatmap_values, panels

    out, png = tmp_path / "patch.csv", tmp_path / "patch.png"
    args = ["--model", planted_dir, "--task", "induction-key", "--half", "12", "--no-progress"]
    assert main(["patch", *args, "--out", str(out), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out)
    assert list(df.columns) == ["layer", "head", "position", "site", "value", "effect"]
    assert df.set_index(["layer", "head"]).loc[(1, 0), "effect"] > 0.95 and "effect = (patched - corrupted)" in printed
    (fig,) = saved_figures
    assert np.allclose(heatmap_values(panels(fig)[0]), df["effect"].to_numpy().reshape(2, 4), atol=1e-6)
    js = tmp_path / "path.json"
    assert main(["path-patch", *args, "--receivers", "1.0.k", "--out", str(js)]) == 0
    rows = json.loads(js.read_text())
    assert [r["receiver"] for r in rows] == ["L1H0.k"] * 4 and max(rows, key=lambda r: r["effect"])["sender_head"] == 0
    assert {"sender_layer", "sender_head", "receiver", "effect"} <= set(rows[0])


@pytest.mark.parametrize("argv, message", [
    (["patch", "--clean", "a b c", "--corrupted", "a b c d"], "differ in length"),
    (["patch", "--clean", "a b c", "--corrupted", "a b d", "--target", "a b"], "is 2 tokens"),
    (["patch", "--clean", "a b c", "--corrupted", "a b d", "--site", "z", "--by", "layer"], "--by layer does not fit --site z"),
    (["path-patch", "--clean", "a b c", "--corrupted", "a b d", "--receivers", "0.1.k", "--senders", "1.0"], "not before every receiver"),
    (["patch", "--clean", "a b c"], "give clean and corrupted prompts together"),
    (["patch", "--clean", "a b c", "--corrupted", "a b d", "--out", "nodir/x.csv"], "directory nodir does not exist"),
])
def test_cli_patching_errors_write_nothing(planted_dir, tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "never.csv"
    extra = [] if "--out" in argv else ["--out", str(out)]
    assert main([*argv, "--model", planted_dir, "--no-progress", *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert not out.exists()
