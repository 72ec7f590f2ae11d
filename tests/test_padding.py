"""Positions are token positions within each prompt: left- and right-padded batches give the same numbers for
every intervention (issue 22; TransformerLens #1609 is this class of silent bug)."""

import warnings

import pandas as pd
import pytest
import torch

import interp
from interp import InterpError
from interp.ablation import ablate
from interp.attribution import attribute
from interp.discovery import circuit, faithfulness
from interp.errors import InterpWarning
from interp.metrics import Loss, LogitDiff, contrast
from interp.patching import patch
from interp.path_patching import path_patch, path_patch_scan
from interp.scan import scan

LENGTHS = (5, 8, 6)  # prompts of different lengths, so the padding sits in different columns


def prompts(model, seed=0, change=(1, 3)):
    """Clean token rows of LENGTHS (BOS first) and corrupted partners with positions 1 and 3 changed."""
    g = torch.Generator().manual_seed(seed)
    clean = [torch.cat([torch.tensor([0]), torch.randint(1, model.cfg.d_vocab, (n - 1,), generator=g)]) for n in LENGTHS]
    corrupted = []
    for row in clean:
        row = row.clone()
        row[list(change)] = torch.randint(1, model.cfg.d_vocab, (len(change),), generator=g)
        corrupted.append(row)
    return clean, corrupted


def batch(rows, side):
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        tokens[i, cols], mask[i, cols] = r, True
    return interp.Batch(tokens, mask)


@pytest.fixture(scope="module")
def m(noisy):
    return noisy


def both(fn):
    """fn(side) for both sides."""
    return fn("right"), fn("left")


def real_log_probs(model, b):
    return model(b).log_softmax(-1)[b.attention_mask]  # [real tokens, vocab], in prompt order either way


@pytest.mark.parametrize("method, kwargs", [
    ("zero", {}),
    ("mean", {"reference": "long"}),
    ("mean_pos", {"reference": "long"}),
    ("resample", {"reference": "long"}),
    ("pattern", {"keys": "bos"}),
    ("pattern", {"keys": "previous", "renormalize": True}),
    ("pattern", {"keys": [0, 2]}),
    ("pattern", {"keys": torch.eye(10, dtype=torch.bool)}),
])
def test_ablation(m, method, kwargs):
    clean, _ = prompts(m)
    if kwargs.get("reference") == "long":  # reference prompts at least as long as the run's, padded the other way
        g = torch.Generator().manual_seed(5)
        kwargs = {**kwargs, "reference": batch([torch.randint(1, 300, (n,), generator=g) for n in (8, 9, 8, 10)], "left")}
    plain = real_log_probs(m, batch(clean, "right"))

    def run(side):
        b = batch(clean, side)
        with ablate(m, "1.2,0.1", method, **kwargs):
            return real_log_probs(m, b)

    right, left = both(run)
    assert torch.allclose(right, left, atol=1e-10)
    assert (right - plain).abs().max() > 1e-3  # the ablation did something (at the real tokens)


def test_pattern_bos_removes_each_prompts_first_token_not_a_padding_column(m):
    """Before the fix, keys='bos' removed column 0: the padding of a left-padded batch."""
    clean, _ = prompts(m)
    b = batch(clean, "left")
    seen = {}
    with ablate(m, "0.0", "pattern", keys="bos"):
        with m.hooks([("pattern.0", lambda a, name: seen.__setitem__("A", a))]):
            m(b)
    first = b.attention_mask.int().argmax(-1)
    A = seen["A"][:, 0]
    assert torch.all(A[torch.arange(3), :, first][b.attention_mask] == 0)


def test_resampling_within_the_batch_refuses_shorter_sources(m):
    clean, _ = prompts(m)
    with ablate(m, "0.1", "resample"):
        with pytest.raises(InterpError, match="beyond its source prompt"):
            m(batch(clean, "left"))
    equal = [r[:5] for r in clean]  # equal lengths: fine, and the same on both sides
    out = []
    for side in ("right", "left"):
        with ablate(m, "0.1", "resample", seed=3):
            out.append(real_log_probs(m, batch(equal, side)))
    assert torch.allclose(*out, atol=1e-10)


@pytest.mark.parametrize("method", ["zero", "mean", "pattern"])
@pytest.mark.parametrize("fast", [True, False])
def test_scan(m, method, fast):
    clean, _ = prompts(m)
    extra = {"reference": batch(clean, "right")} if method == "mean" else {"keys": "bos"} if method == "pattern" else {}

    def run(side):
        return scan(m, batch(clean, side), Loss(positions=slice(2, None)), method=method, fast=fast, progress=False,
                    **extra)[["variant", "ablated"]]

    right, left = both(run)
    pd.testing.assert_frame_equal(right, left, atol=1e-10, rtol=0)


@pytest.mark.parametrize("site, by, positions", [
    ("z", "head", None), ("z", "head_pos", None), ("z", "head_pos", [-1, 1]), ("resid_pre", "layer_pos", None),
    ("k", "head_pos", [-2, 0]), ("pattern", "head_pos", [-1]), ("mlp_out", "layer_pos", [3]),
])
@pytest.mark.parametrize("fast", [True, False])
def test_patching(m, site, by, positions, fast):
    clean, corrupted = prompts(m)
    metric = LogitDiff(5, 9)

    def run(side):
        return patch(m, batch(clean, side), batch(corrupted, side), metric, site=site, by=by, positions=positions,
                     fast=fast, progress=False)[["layer", "head", "position", "value"]]

    right, left = both(run)
    pd.testing.assert_frame_equal(right, left, atol=1e-10, rtol=0)
    if by.endswith("_pos") and positions is None:  # every token position of the longest prompt, labelled as such
        assert sorted(right["position"].unique()) == list(range(max(LENGTHS)))


def test_path_patching_and_attribution_and_circuits(m):
    clean, corrupted = prompts(m)
    metric = LogitDiff(5, 9)
    sides = {}
    for side in ("right", "left"):
        cb, kb = batch(clean, side), batch(corrupted, side)
        sides[side] = {
            "path": path_patch(m, cb, kb, "0.1,1.3", "2.0.k,2.2.q", metric)["value"].iloc[0],
            "senders": path_patch_scan(m, cb, kb, "logits", metric, progress=False)["value"].tolist(),
            "eap": attribute(m, cb, kb, metric, progress=False).set_index("edge")["score"],
            "eap-ig": attribute(m, cb, kb, metric, method="eap-ig", level="node", progress=False).set_index("node")["score"],
            "faith": [faithfulness(m, cb, kb, ["embed->L0H1.v", "L0H1->L2H0.k", "L2H0->logits"], metric, ablation=a)
                      for a in ("corrupted", "mean")],
            "circuit": circuit(m, cb, kb, metric, edges=15, progress=False).to_json()["faithfulness"],
        }
    right, left = sides["right"], sides["left"]
    assert right["path"] == pytest.approx(left["path"], abs=1e-10)
    assert right["senders"] == pytest.approx(left["senders"], abs=1e-10)
    pd.testing.assert_series_equal(right["eap"].sort_index(), left["eap"].sort_index(), atol=1e-9, rtol=0)
    pd.testing.assert_series_equal(right["eap-ig"].sort_index(), left["eap-ig"].sort_index(), atol=1e-9, rtol=0)
    assert right["faith"] == pytest.approx(left["faith"], abs=1e-10)
    assert right["circuit"] == pytest.approx(left["circuit"], abs=1e-10)


def test_the_default_metric_says_when_it_is_a_probability(planted):
    """Issue 22: the default metric switched to a probability silently when the two runs' top tokens agreed."""
    clean, corrupted = "a b c d e a b c d", "f b c d e a b c d"  # the induction target is untouched: both say 'e'
    with pytest.warns(InterpWarning, match="predict the same top token"):
        metric = contrast(planted, clean, corrupted)
    assert metric.name.startswith("prob(")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InterpWarning)  # a pair that disagrees: a logit difference, no warning
        assert contrast(planted, clean, "a b c x e a b c d").name.startswith("logit_diff(")


def test_cli_prints_the_metric_warning_on_one_line(planted_dir, capsys):
    from interp.cli import main

    assert main(["patch", "--model", planted_dir, "--clean", "a b c d e a b c d", "--corrupted", "f b c d e a b c d",
                 "--no-progress"]) in (0, 2)
    err = capsys.readouterr().err
    assert "interp patch: warning: the clean and corrupted runs predict the same top token" in err
    assert "Traceback" not in err and err.count("warning") == 1
