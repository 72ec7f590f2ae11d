"""Head classification: planted heads are found, scores match their definitions and detect_head, bad input fails."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens.head_detector import detect_head

from interp import prompts
from analyses.heads import KINDS, THRESHOLDS, classify, label_heads
from interp import InterpError, testing
from interp.cli import main

PROMPTS = [  # different lengths (so batches are padded) and plenty of repeated tokens
    "The cat sat on the mat. The cat sat on the mat.",
    "def f(x): return x + f(x) + f(x)",
    "a a a b b a b a b c",
    "one two three one two three four",
]


# ---------------------------------------------------------------------------- planted ground truth
@pytest.mark.parametrize("seed", [0, 3])
def test_planted_heads_are_labelled_with_their_kind_and_nothing_else_is(planted, seed):
    tokens = prompts.repeated_tokens(planted, 16, 15, seed=seed)
    df = classify(planted, tokens).set_index(["layer", "head"])
    planted_kinds = set(testing.PLANTED_HEADS.values())
    for (layer, head), kind in testing.PLANTED_HEADS.items():
        assert df.loc[(layer, head), "label"] == kind, (layer, head, df.loc[(layer, head)].to_dict())
        assert df.loc[(layer, head), kind] >= 0.9
        # ... and the planted head is clearly *not* the other attention kinds
        others = [k for k in KINDS[:5] if k != kind]
        assert (df.loc[(layer, head), others] < THRESHOLDS["bos"]).all(), df.loc[(layer, head)].to_dict()
    for key in set(df.index) - set(testing.PLANTED_HEADS):
        assert df.loc[key, "label"] not in planted_kinds, (key, df.loc[key].to_dict())


# ---------------------------------------------------------------------------- definitions
def reference_scores(model, prompts, exclude_bos, exclude_current, positions=None):
    """Straight from the definitions: one prompt and one query position at a time (slow, plainly right)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    num, den = np.zeros((L, H, len(KINDS))), np.zeros((L, H, len(KINDS)))
    n = np.zeros(len(KINDS), dtype=int)
    for prompt in prompts:
        _, cache = model.run(prompt, names="pattern", logits=False)
        toks = cache.tokens[0].tolist()
        P = len(toks)
        chosen = range(P) if positions is None else \
            {p % P for p in (range(P)[positions] if isinstance(positions, slice) else positions)}
        for q in sorted(chosen):
            keys = [k for k in range(q + 1) if not (exclude_bos and k == 0) and not (exclude_current and k == q)]
            if len(keys) < 2:
                continue
            targets = [
                [q - 1] if q - 1 in keys else [],
                [q] if q in keys else [],
                [k for k in keys if k < q and toks[k] == toks[q]],
                [k for k in keys if k >= 1 and toks[k - 1] == toks[q]],
                [0] if 0 in keys else [],
            ]
            for layer in range(L):
                A = cache["pattern", layer][0, :, q].double().numpy()  # [head, key]
                mass = A[:, keys].sum(-1)
                for i, t in enumerate(targets):
                    if t:
                        num[layer, :, i] += A[:, t].sum(-1)
                        den[layer, :, i] += mass
                p = A[:, keys] / mass[:, None]
                entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(-1)
                num[layer, :, 5] += mass * entropy / math.log(len(keys))
                den[layer, :, 5] += mass
            n += [bool(t) for t in targets] + [True]
    with np.errstate(invalid="ignore"):  # 0 / 0 for a kind whose target is excluded
        return num / den, n


@pytest.mark.parametrize("exclude_bos, exclude_current, positions", [
    (False, False, None), (True, False, None), (False, True, None), (True, True, slice(3, None)), (False, False, [2, -2, -1]),
])
def test_scores_follow_their_definitions(small_folded, exclude_bos, exclude_current, positions):
    """Batched, padded, sorted, gathered, renormalised in the hook == the definitions one position at a time."""
    ref, n = reference_scores(small_folded, PROMPTS, exclude_bos, exclude_current, positions)
    df = classify(small_folded, PROMPTS, exclude_bos=exclude_bos, exclude_current_token=exclude_current,
                  positions=positions, batch_size=3)
    for i, kind in enumerate(KINDS):
        got = df[kind].to_numpy().reshape(ref.shape[:2])
        if n[i] == 0:  # the kind's own target is excluded
            assert np.isnan(got).all() and (df[f"n_{kind}"] == 0).all(), kind
            continue
        assert np.allclose(got, ref[..., i], atol=1e-5), (kind, np.abs(got - ref[..., i]).max())
        assert (df[f"n_{kind}"] == n[i]).all(), kind


def test_padding_side_and_batch_size_do_not_change_scores(small_folded):
    base = classify(small_folded, PROMPTS)
    left = classify(small_folded, small_folded.tokenize(PROMPTS, padding_side="left"), batch_size=1)
    pd.testing.assert_frame_equal(base, left, atol=1e-6, check_exact=False)


def test_counts_on_a_single_prompt(planted):
    df = classify(planted, "a b c d e a b c d e")  # BOS + 10 tokens; the last five repeat the first five
    assert len(df) == 8
    row = df.iloc[0]
    assert [row[f"n_{k}"] for k in KINDS] == [10, 10, 5, 5, 10, 10]
    assert np.isnan(df[[f"{k}_std" for k in KINDS]].to_numpy()).all()  # one prompt: no spread across prompts
    no_bos = classify(planted, "a b c d e a b c d e", exclude_bos=True).iloc[0]
    assert [no_bos[f"n_{k}"] for k in KINDS] == [9, 9, 5, 5, 0, 9]
    assert np.isnan(no_bos["bos"]) and no_bos["label"] != "bos"


def test_uniform_and_one_hot_patterns_score_as_expected(planted):
    """Replace layer 0's pattern: uniform over the prefix -> spread 1 and prev = mean 1/(q+1); one-hot on BOS -> bos 1."""
    prompt = "a b c d e f g h"  # 9 tokens with BOS, no repeats

    def uniform(pattern, name):
        P = pattern.shape[-1]
        tri = torch.ones(P, P).tril()
        return (tri / tri.sum(-1, keepdim=True)).expand_as(pattern).clone()

    def on_bos(pattern, name):
        out = torch.zeros_like(pattern)
        out[..., 0] = 1
        return out

    with planted.hooks([("pattern.0", uniform)]):
        df = classify(planted, prompt, layers=0)
        df_x = classify(planted, prompt, layers=0, exclude_bos=True, exclude_current_token=True)
    assert np.allclose(df["spread"], 1, atol=1e-6) and np.allclose(df_x["spread"], 1, atol=1e-6)
    assert np.allclose(df["previous_token"], np.mean([1 / (q + 1) for q in range(1, 9)]), atol=1e-6)
    # excluding BOS and self leaves q - 1 keys, scored from q = 3 on, each position weighted by the mass left
    left = [(q - 1) / (q + 1) for q in range(3, 9)]
    assert np.allclose(df_x["previous_token"], sum(1 / (q + 1) for q in range(3, 9)) / sum(left), atol=1e-6)
    assert (df["label"] == "spread").all()
    with planted.hooks([("pattern.0", on_bos)]):
        df = classify(planted, prompt, layers=0)
    assert np.allclose(df["bos"], 1) and np.allclose(df["spread"], 0, atol=1e-6) and (df["label"] == "bos").all()
    assert not planted.has_hooks


def test_stops_after_the_last_needed_layer_and_leaves_no_hooks(planted):
    fired = []
    with planted.hooks([("z.1", lambda x, name: fired.append(name)),
                        ("ln_final", lambda x, name: fired.append(name))]):
        df = classify(planted, "a b c a b c", heads="0.1,0.2")
        assert fired == []  # layer 1 and the unembedding never ran
        assert df[["layer", "head"]].values.tolist() == [[0, 1], [0, 2]]
        classify(planted, "a b c a b c")
        assert fired == ["blocks.1.attn.hook_z"]  # layer 1's block was the last thing computed
    assert not planted.has_hooks


def test_std_is_zero_for_identical_prompts_and_positive_otherwise(planted):
    same = classify(planted, ["a b c d a b c d"] * 3)
    assert np.allclose(same[[f"{k}_std" for k in KINDS]].to_numpy(), 0, atol=1e-7)
    mixed = classify(planted, prompts.repeated_tokens(planted, 6, 15))
    unplanted = mixed.loc[mixed["label"] == "none", "bos_std"]
    assert len(unplanted) == 3 and (unplanted > 0).all()  # the planted model's three unplanted heads


# ---------------------------------------------------------------------------- parity with TransformerLens
@pytest.mark.parametrize("fixture, exclude_bos, exclude_current", [
    ("small_raw", False, False), ("small_raw", True, False), ("small_raw", True, True), ("small_folded", False, False),
    # the planted BOS and self heads leave ~1e-4 of their attention after exclusion: a test of the renormalisation
    ("planted", True, False), ("planted", False, True),
])
def test_measure_all_equals_detect_head(request, fixture, exclude_bos, exclude_current):
    model = request.getfixturevalue(fixture)
    prompts = PROMPTS if fixture != "planted" else ["a b c d a b c d", "x y z x y z x y", "a a b b a a b b c"]
    df = classify(model, prompts, measure="all", exclude_bos=exclude_bos, exclude_current_token=exclude_current)
    for ours, theirs in [("previous_token", "previous_token_head"), ("duplicate_token", "duplicate_token_head"),
                         ("induction", "induction_head")]:
        # detect_head's list path scores each prompt alone (re-tokenizing it, BOS prepended) and averages.
        ref = detect_head(model.bridge, prompts, theirs, exclude_bos=exclude_bos, exclude_current_token=exclude_current)
        got = torch.tensor(df[ours].to_numpy()).view(ref.shape)
        assert torch.allclose(got, ref.double(), atol=1e-5), (ours, (got - ref).abs().max())
    # every position with a key left counts: all of them, all but BOS's, all but BOS's and position 1's
    dropped = {(False, False): 0, (True, False): 1, (False, True): 1, (True, True): 2}[exclude_bos, exclude_current]
    n_tokens = sum(len(model.tokenize(p).tokens[0]) for p in prompts)
    assert (df["n_previous_token"] == n_tokens - dropped * len(prompts)).all()


# ---------------------------------------------------------------------------- labels
def test_label_rule():
    scores = pd.DataFrame({
        "previous_token": [0.7, 0.2, 0.2, np.nan, 0.5, 0.1],
        "self": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "bos": [0.6, 0.3, 0.55, np.nan, 0.5, 0.45],
        "spread": [0.1, 0.9, 0.9, 0.95, 0.0, 0.5],
    })
    assert label_heads(scores).tolist() == ["previous_token", "spread", "bos", "spread", "previous_token", "none"]
    assert label_heads(scores, 0.4).tolist()[-1] == "bos"
    assert label_heads(scores, {"spread": 0.96}).tolist()[1:4] == ["none", "bos", "none"]
    with pytest.raises(InterpError, match="threshold"):
        label_heads(scores, 1.5)
    with pytest.raises(InterpError, match="unknown kind"):
        label_heads(scores, {"induction_head": 0.5})


# ---------------------------------------------------------------------------- inputs
def test_repeated_tokens_are_reproducible_real_and_repeated(small_folded):
    a = prompts.repeated_tokens(small_folded, 4, 20, seed=7)
    assert torch.equal(a, prompts.repeated_tokens(small_folded, 4, 20, seed=7))
    assert not torch.equal(a, prompts.repeated_tokens(small_folded, 4, 20, seed=8))
    bos = small_folded.tokenizer.bos_token_id
    assert (a[:, 0] == bos).all() and torch.equal(a[:, 1:21], a[:, 21:])
    body = a[:, 1:]
    assert not torch.isin(body, torch.tensor(small_folded.tokenizer.all_special_ids)).any()
    assert torch.isin(body, prompts.vocabulary(small_folded)).all()
    assert all(len(set(r.tolist())) == 20 for r in a[:, 1:21])  # distinct within a half: one earlier copy each


def test_document_is_tokenized_once_and_chunked(planted):
    text = " ".join("abcdefghij"[i % 7] for i in range(70))
    chunks = prompts.rows(prompts.text_windows(planted, text))
    assert all(len(c) <= planted.cfg.n_ctx and c[0] == 0 for c in chunks)
    whole = planted.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert torch.cat([c[1:] for c in chunks]).tolist() == whole
    df = classify(planted, chunks)
    assert df.attrs["n_prompts"] == len(chunks) == 3


def test_prompts_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a b c a b c\n\n  \nd e f d e f\n")
    assert prompts.read_prompts(path) == ["a b c a b c", "d e f d e f"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(inputs=[]), "no prompts"),
    (dict(inputs="a"), "1 token"),
    (dict(inputs=["a b c", "d"]), "prompt 1 has 1 token"),
    (dict(inputs=" ".join(["a"] * 40)), "the context window is 32"),
    (dict(inputs=torch.zeros(1, 40, dtype=torch.long)), "longer than the context window"),
    (dict(kinds=["induction", "copying"]), "unknown head kind"),
    (dict(layers=[0, 2]), "layer 2 out of range: model has 2 layers"),
    (dict(heads=(0, 4)), "head 4 out of range: model has 4 heads per layer"),
    (dict(heads=[]), "no heads given"),
    (dict(heads="0.1", layers=[0]), "not both"),
    (dict(measure="mean"), "unknown measure"),
    (dict(threshold=0), "threshold"),
    (dict(positions=[40]), "select no scorable query position"),
    (dict(positions="last"), "positions"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_input_is_one_clear_error(planted, kwargs, message):
    kwargs = {"inputs": "a b c a b c", **kwargs}
    with pytest.raises(InterpError, match=message):
        classify(planted, **kwargs)
    assert not planted.has_hooks


def test_bad_probe_sizes(planted):
    with pytest.raises(InterpError, match="largest half: 15"):
        prompts.repeated_tokens(planted, 2, 16)
    with pytest.raises(InterpError, match="n_prompts"):
        prompts.repeated_tokens(planted, 0)
    with pytest.raises(InterpError, match="fewer than 2|at least 2"):
        prompts.text_windows(planted, "a")


# ---------------------------------------------------------------------------- the command
def test_cli_default_probe_ranked_table_and_files(planted_dir, tmp_path, capsys, saved_figures):
    from figcheck import assert_png, heatmap_values, panels

    csv, png = tmp_path / "heads.csv", tmp_path / "heads.png"
    assert main(["heads", "--model", planted_dir, "--out", str(csv), "--png", str(png), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "16 prompts" in out and "labels: previous_token 1, self 1, duplicate_token 1, induction 1, bos 1, none 3" in out
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert [r[2] for r in table][-3:] == ["none"] * 3  # labelled heads first, the unlabelled last
    df = pd.read_csv(csv)
    assert len(df) == 8 and {"layer", "head", "label", *KINDS, *(f"n_{k}" for k in KINDS)} <= set(df.columns)
    # one layers × heads panel per kind, titled by the kind, showing exactly the table's scores on 0–1
    (fig,) = saved_figures
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == list(KINDS)
    for ax, kind in zip(axes, KINDS):
        assert np.allclose(heatmap_values(ax), df.sort_values(["layer", "head"])[kind].to_numpy().reshape(2, 4), atol=1e-6)
        assert ax.images[0].get_clim() == (0.0, 1.0)
    assert_png(png)


def test_cli_prompts_json_and_errors(planted_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a b c d a b c d\nx y z x y z\n")
    out = tmp_path / "h.json"
    assert main(["heads", "--model", planted_dir, "--prompts-file", str(prompts), "--prompt", "p q p q",
                 "--repeated", "2", "--kinds", "induction,bos", "--format", "json", "--out", str(out),
                 "--top", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "5 prompts" in text and "query positions behind each score: induction 39, bos 78" in text
    df = pd.read_json(out)
    assert list(df.columns[:5]) == ["layer", "head", "induction", "bos", "label"]
    for argv, message in [(["--kinds", "copying"], "unknown head kind"), (["--layers", "0-2"], "layer 2 out of range"),
                          (["--repeated", "0"], "no inputs"), (["--prompt", "a"], "1 token")]:
        assert main(["heads", "--model", planted_dir, "--no-progress", *argv]) == 2
        assert message in capsys.readouterr().err
