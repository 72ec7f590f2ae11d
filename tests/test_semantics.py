"""One meaning per intervention: every head-level number against plain Hugging Face, in both weight modes.

The reference (``tests/hf_reference.py``) edits Hugging Face GPT-2 with torch hooks on the input
of ``c_proj``; nothing of interp's forward pass is used there. The model is the noisy one of
conftest (random LayerNorm gains and biases, every bias random, float64), where folding
changes every weight, so a convention that differs between modes cannot hide.
"""

import pytest
import torch

from interp.ablation import ablate
from interp.scan import scan
from interp.metrics import LogitDiff, Loss
import hf_reference as ref

MODES = [True, False]  # fold_ln
TEXTS = ["the cat sat on the mat and the cat sat", "def f(x): return x + 1", "a b c d e f", "numbers 1 2 3 4 5 6 7 8"]


@pytest.fixture(scope="module")
def models(noisy, noisy_raw):
    return {True: noisy, False: noisy_raw}


@pytest.fixture(scope="module")
def hf(noisy_hf):
    return noisy_hf[0]


def inputs(model, kind: str):
    if kind == "single":
        return model.tokenize(TEXTS[0])
    if kind == "batched":  # equal lengths, no padding
        return model.to_batch(torch.randint(1, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(1)))
    if kind == "padded":
        return model.tokenize(TEXTS)
    return model.tokenize(TEXTS, padding_side="left")


def logprobs(logits, mask):
    """Log-probabilities at real positions: equal in both modes (folding shifts logits by a constant)."""
    return logits.log_softmax(-1)[mask]


def tol(fold: bool) -> float:
    """TransformerLens folds float64 weights with float32-sized errors (~2e-7); raw weights are exact."""
    return 1e-6 if fold else 1e-9


def assert_same(ours, theirs, mask, tol):
    diff = (logprobs(ours, mask) - logprobs(theirs, mask)).abs().max().item()
    assert diff <= tol, f"max |Δ log-prob| = {diff:.2e}"


def test_folding_changes_every_weight_of_the_test_model(models):
    """Otherwise a folding convention could not show in these tests."""
    folded, raw = models[True], models[False]
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U", "b_Q", "b_K", "b_V", "b_in", "b_O"):
        assert not torch.allclose(getattr(folded, name), getattr(raw, name), atol=1e-3), name
    assert (raw.ln1_w - 1).abs().min() > 0 or (raw.ln1_b.abs() > 0.01).all()


@pytest.mark.parametrize("fold", MODES)
def test_z_includes_the_value_bias_in_both_modes(models, hf, fold):
    m = models[fold]
    batch = inputs(m, "padded")
    _, cache = m.run(batch, names="z")
    theirs = ref.z_of(hf, batch.tokens, batch.attention_mask, range(3))
    real = batch.attention_mask
    for layer in range(3):
        assert torch.allclose(cache["z", layer][real], theirs[layer][real], atol=tol(fold), rtol=0), layer


# ---------------------------------------------------------------------------- each method
def _reference_edit(method, heads, hf, batch, kw):
    mask = batch.attention_mask
    layer = 1
    if method == "zero":
        return {layer: ref.zero(heads)}
    if method in ("mean", "mean_pos"):
        r = kw["reference"]
        value = ref.mean_z(hf, r.tokens, r.attention_mask, layer, per_position=method == "mean")
        return {layer: ref.replace(heads, value)}
    if method == "resample":
        r = kw.get("reference")
        if r is not None:  # row i takes reference row perm[i mod n_ref], perm seeded (the documented rule)
            z = ref.z_of(hf, r.tokens, r.attention_mask, [layer])[layer]
            perm = torch.randperm(len(r), generator=torch.Generator().manual_seed(kw["seed"]))
            rows = perm[torch.arange(len(batch)) % len(r)]
        else:  # a derangement: one n-cycle through a random order
            z = ref.z_of(hf, batch.tokens, mask, [layer])[layer]
            order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(kw["seed"]))
            rows = torch.empty(len(batch), dtype=torch.long)
            rows[order] = order.roll(-1)
        return {layer: ref.replace(heads, z[rows])}
    P = batch.tokens.shape[1]
    q, k = torch.arange(P)[:, None], torch.arange(P)[None, :]
    remove = {"previous": k == q - 1, "self": k == q, "bos": (k == 0).expand(P, P)}[kw["keys"]]
    return {layer: ref.pattern(heads, remove, kw.get("renormalize", False))}


CASES = [
    ("zero", {}),
    ("mean", {"reference": True}),
    ("mean_pos", {"reference": True}),
    ("resample", {"seed": 4}),
    ("resample", {"reference": True, "seed": 4}),
    ("pattern", {"keys": "previous"}),
    ("pattern", {"keys": "bos"}),
    ("pattern", {"keys": "self", "renormalize": True}),
]


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
@pytest.mark.parametrize("kind", ["single", "batched", "padded"])
@pytest.mark.parametrize("method, kw", CASES, ids=[f"{m}-{'-'.join(map(str, k.values()))}" for m, k in CASES])
def test_every_method_equals_hugging_face_with_hooks(models, hf, fold, kind, method, kw):
    m = models[fold]
    batch = inputs(m, kind)
    if method == "resample" and "reference" not in kw and kind != "batched":
        # One prompt cannot resample from another; with padding, a row would take another row's
        # padding positions, whose values are a convention of each implementation.
        pytest.skip("in-batch resampling is defined on equal-length prompts")
    kw = dict(kw)
    if kw.get("reference"):
        kw["reference"] = m.tokenize([t + " and a few more words" for t in TEXTS[:3]])
    heads = [0, 2]
    with ablate(m, heads=[(1, h) for h in heads], method=method, **kw):
        ours = m(batch.tokens, attention_mask=batch.attention_mask)
    theirs = ref.logits(hf, batch.tokens, batch.attention_mask, _reference_edit(method, heads, hf, batch, kw))
    clean = ref.logits(hf, batch.tokens, batch.attention_mask)
    assert_same(ours, theirs, batch.attention_mask, tol(fold))
    # The ablation matters far beyond the tolerance, so the comparison can fail.
    assert (logprobs(theirs, batch.attention_mask) - logprobs(clean, batch.attention_mask)).abs().max() > 1e-3


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
def test_zero_ablation_with_left_padding(models, hf, fold):
    m = models[fold]
    batch = inputs(m, "left")
    with ablate(m, heads=[(0, 1), (2, 3)]):
        ours = m(batch.tokens, attention_mask=batch.attention_mask)
    theirs = ref.logits(hf, batch.tokens, batch.attention_mask, {0: ref.zero([1]), 2: ref.zero([3])})
    assert_same(ours, theirs, batch.attention_mask, tol(fold))


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "naive"])
@pytest.mark.parametrize("method, kw", [("zero", {}), ("pattern", {"keys": "previous"})])
def test_scan_equals_hugging_face_with_hooks(models, hf, fold, fast, method, kw):
    m = models[fold]
    batch = inputs(m, "padded")
    mask = batch.attention_mask
    loss, diff = Loss(), LogitDiff(5, 9)
    for metric in (loss, diff):
        df = scan(m, batch, metric, method=method, fast=fast, progress=False, **kw)
        for row in df.itertuples():
            layer, head = int(row.layer), int(row.head)
            P = batch.tokens.shape[1]
            q, k = torch.arange(P)[:, None], torch.arange(P)[None, :]
            edit = ref.zero([head]) if method == "zero" else ref.pattern([head], k == q - 1)
            theirs = ref.logits(hf, batch.tokens, mask, {layer: edit})
            expected = float(metric.bind(m).from_logits(m, theirs, batch))
            assert abs(row.ablated - expected) < tol(fold), (row.variant, row.ablated, expected)


def test_scan_ranks_heads_the_same_in_both_modes(models):
    batch = inputs(models[True], "padded")
    folded, raw = (scan(models[f], batch, progress=False) for f in MODES)
    assert torch.allclose(torch.tensor(folded["delta"].to_list()), torch.tensor(raw["delta"].to_list()), atol=1e-6)
    assert folded.sort_values("delta")["variant"].tolist() == raw.sort_values("delta")["variant"].tolist()


# ---------------------------------------------------------------------------- the residual stream, taken apart
def centred(x):
    """Folded weights centre what writes to the residual stream: compare vectors without their mean."""
    return x - x.mean(-1, keepdim=True)


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
def test_decomposition_parts_equal_hugging_faces(models, hf, fold):
    m = models[fold]
    batch = inputs(m, "padded")
    labels, parts, final = ref.components(hf, batch.tokens, batch.attention_mask)
    d = m.decompose_resid(batch, 2, "post")
    assert d.labels == labels
    real = batch.attention_mask
    for i, label in enumerate(labels):
        assert torch.allclose(centred(d.components[i])[real], centred(parts[i])[real], atol=tol(fold), rtol=0), label
    assert torch.allclose(centred(d.resid)[real], centred(final)[real], atol=tol(fold), rtol=0)


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
def test_head_output_equals_hugging_faces(models, hf, fold):
    from analyses.ov import head_output

    m = models[fold]
    batch = inputs(m, "padded")
    _, cache = m.run(batch, names=["ln1.1", "pattern.1"])
    theirs = ref.head_outputs(hf, batch.tokens, batch.attention_mask, 1)
    real = batch.attention_mask
    for h in range(4):
        ours = head_output(m, 1, h, cache["pattern", 1][:, h], cache["ln1", 1])
        assert torch.allclose(centred(ours)[real], centred(theirs[h])[real], atol=tol(fold), rtol=0), h


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
def test_direct_logit_attribution_per_head_equals_hugging_faces(models, hf, fold):
    from analyses.dla import direct_logit_attribution

    m = models[fold]
    batch = inputs(m, "padded")
    df = direct_logit_attribution(m, batch, 5, contrast=9, progress=False)
    labels, contrib, total = ref.direct_logit_attribution(hf, batch.tokens, batch.attention_mask, 5, 9)
    for i, label in enumerate(labels):
        ours = df[df["component"] == label].sort_values("prompt")["contribution"].to_numpy()
        assert torch.allclose(torch.tensor(ours), contrib[i], atol=tol(fold), rtol=0), label
    assert torch.allclose(torch.tensor(df.groupby("prompt")["total"].first().to_numpy()), total, atol=tol(fold), rtol=0)
    heads = df[df["kind"] == "head"]["contribution"].abs()
    assert heads.max() > 1e-2  # heads matter here: the comparison can fail


@pytest.mark.parametrize("fold", MODES, ids=["folded", "raw"])
@pytest.mark.parametrize("k", [0, 2, 5])
def test_rank_k_ov_replacement_equals_hugging_faces(models, hf, fold, k):
    from analyses.ov_rank import low_rank_ov

    m = models[fold]
    batch = inputs(m, "padded")
    with low_rank_ov(m, [(1, 0), (1, 3)], k):
        ours = m(batch.tokens, attention_mask=batch.attention_mask)
    theirs = ref.logits(hf, batch.tokens, batch.attention_mask, out_edits={1: ref.rank_k(hf, 1, [0, 3], k)})
    assert_same(ours, theirs, batch.attention_mask, tol(fold))
    clean = ref.logits(hf, batch.tokens, batch.attention_mask)
    assert (logprobs(theirs, batch.attention_mask) - logprobs(clean, batch.attention_mask)).abs().max() > 1e-3


def test_rank_k_loss_is_the_same_in_both_modes(models):
    from analyses.ov_rank import rank_k_loss

    batch = inputs(models[True], "padded")
    folded, raw = (rank_k_loss(models[f], batch, heads=[(0, 1), (2, 2)], ks=[0, 3], progress=False) for f in MODES)
    assert torch.allclose(torch.tensor(folded["loss"].to_list()), torch.tensor(raw["loss"].to_list()), atol=1e-6)
    assert (folded["delta"].abs() > 1e-3).any()


def test_cli_scan_ranks_interp_tiny_identically_with_and_without_folding(tmp_path, capsys):
    import pandas as pd

    from interp.cli import main

    tables = []
    for flags in ([], ["--no-fold-ln"]):
        out = tmp_path / f"scan{len(flags)}.csv"
        assert main(["ablate", "--scan", "--no-progress", "--out", str(out), *flags]) == 0
        tables.append(pd.read_csv(out))
    capsys.readouterr()
    folded, raw = tables
    assert folded.sort_values("delta")["variant"].tolist() == raw.sort_values("delta")["variant"].tolist()
    assert torch.allclose(torch.tensor(folded["delta"].to_list()), torch.tensor(raw["delta"].to_list()), atol=1e-4)
    assert folded["delta"].max() > 1  # ablating a head matters on this model (the previous-token head L0H4)
