"""The tuned lens: tuned-lens 0.2.0's own files and outputs both ways, identities, a planted map, training, CLI.

The fixtures under ``tests/fixtures/tuned_lens`` were written by ``tools/tuned_lens_fixtures.py`` in a
venv with tuned-lens 0.2.0 (its docstring says how to rebuild them): a random GPT-2 with random
LayerNorms and biases, lenses saved by ``TunedLens.save`` and tuned-lens's logits on fixed inputs,
and tuned-lens's logits from a lens interp wrote.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import interp
from analyses.lens_compare import evaluate_lenses, prediction_trajectory
from analyses.logit_lens import lens_logits, logit_lens
from analyses.lens_training import train_tuned_lens
from analyses.tuned_lens import TunedLens, TunedLensConfig, unembed_hash
from interp import InterpError, testing
from interp.cli import main

FIX = Path(__file__).parent / "fixtures" / "tuned_lens"
L = 3  # the fixture model's layers


@pytest.fixture(scope="module")
def outputs():
    return {**load_file(FIX / "outputs.safetensors"), **load_file(FIX / "outputs_interp_written.safetensors")}


@pytest.fixture(scope="module", params=[False, True], ids=["raw", "folded"])
def fixture_model(request):
    return interp.load(str(FIX / "model"), fold_ln=request.param)


@pytest.fixture(scope="module")
def raw_model():
    return interp.load(str(FIX / "model"), fold_ln=False)


def _all_layers(model, lens, ids):
    """interp's lens logits at every boundary for every position: [n_layers + 1, batch, pos, d_vocab]."""
    got = lens_logits(model, ids, positions="all", lens=lens)
    assert got.labels == ["embed", *[f"mlp {i}" for i in range(L)]] and bool(got.valid.all())
    return got.logits


# ---------------------------------------------------------------------------- tuned-lens -> interp
@pytest.mark.parametrize("name", ["lens_hf", "lens_centred", "interp_written"])
def test_interp_reads_tuned_lens_files_and_gives_its_logits(fixture_model, outputs, name):
    lens = TunedLens.load(FIX / name)
    want = outputs[name]  # tuned-lens's logits, the model's own at the last layer
    if fixture_model.cfg.fold_ln and name == "lens_hf":
        # tuned-lens trained on Hugging Face's raw stream: its translators read the stream's mean,
        # which folded weights centre away. Refused, with the way out, rather than silently wrong.
        assert not lens.mean_blind()
        with pytest.raises(InterpError, match=r"reads the residual stream's mean .* load the model with fold_ln=False"):
            logit_lens(fixture_model, outputs["input_ids"], lens=lens)
        return
    got = _all_layers(fixture_model, lens, outputs["input_ids"])
    if fixture_model.cfg.fold_ln:  # folded logits differ by a constant per position: compare log-probabilities
        got, want = got.log_softmax(-1), want.log_softmax(-1)
    assert (got - want).abs().max() < 1e-5
    # and the translators are tuned-lens's tensors, read with weights_only=True
    state = torch.load(FIX / name / "params.pt", weights_only=True)
    assert torch.equal(lens.weight[1], state["1.weight"]) and torch.equal(lens.bias[2], state["2.bias"])


def test_zero_translators_are_tuned_lens_s_logit_lens_and_interp_s_exactly(fixture_model, outputs):
    zero = TunedLens.zeros(fixture_model)
    got = _all_layers(fixture_model, zero, outputs["input_ids"])
    want = outputs["logit_lens"]
    if fixture_model.cfg.fold_ln:
        got, want = got.log_softmax(-1), want.log_softmax(-1)
    assert (got - want).abs().max() < 1e-5
    plain = lens_logits(fixture_model, outputs["input_ids"], positions="all", resid_post_only=True)
    assert torch.equal(got if not fixture_model.cfg.fold_ln else _all_layers(fixture_model, zero, outputs["input_ids"]),
                       plain.logits)  # bit for bit: h + h @ 0 + 0 is h


def test_the_last_boundary_is_the_model_s_logits_exactly(fixture_model, outputs):
    lens = TunedLens.load(FIX / "lens_centred")
    ids = outputs["input_ids"]
    assert torch.equal(_all_layers(fixture_model, lens, ids)[-1], fixture_model(ids))


def test_unembed_hash_is_tuned_lens_s(raw_model, fixture_model):
    config = json.loads((FIX / "lens_hf" / "config.json").read_text())
    assert unembed_hash(raw_model) == config["unembed_hash"]
    assert unembed_hash(interp.load("interp-tiny", fold_ln=False)) != config["unembed_hash"]
    other = TunedLens.load(FIX / "lens_hf")
    other.config = TunedLensConfig(**{**config, "unembed_hash": "0" * 64})
    with pytest.raises(InterpError, match="was tuned for another unembedding"):
        other.check(raw_model)


# ---------------------------------------------------------------------------- interp -> tuned-lens
def test_interp_writes_what_tuned_lens_reads(tmp_path, outputs, raw_model):
    """interp_written/ was saved by interp; tuned-lens read it (outputs_interp_written). What interp
    writes today has the same config and tensors, in both files."""
    lens = TunedLens.load(FIX / "interp_written")
    assert lens.mean_blind() and lens.record["fold_ln"] is True  # trained on the folded model
    out = lens.save(tmp_path / "again")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params.pt", "params.safetensors", "training.json"]
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((FIX / "interp_written" / "config.json").read_text())
    assert list(config) == ["base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
                            "unembed_hash", "lens_type"]  # tuned-lens's TunedLensConfig, in its order
    for params in (torch.load(out / "params.pt", weights_only=True), load_file(out / "params.safetensors")):
        want = torch.load(FIX / "interp_written" / "params.pt", weights_only=True)
        assert sorted(params) == sorted(want) == sorted(f"{i}.{k}" for i in range(L) for k in ("weight", "bias"))
        assert all(torch.equal(params[k], want[k]) for k in want)
    # a lens trained on folded weights reads the raw model exactly as tuned-lens does
    got = _all_layers(raw_model, TunedLens.load(out), outputs["input_ids"])
    assert (got - outputs["interp_written"]).abs().max() < 1e-5


def test_files_are_checked(tmp_path, raw_model):
    import shutil

    d = tmp_path / "lens"
    shutil.copytree(FIX / "lens_centred", d)
    (d / "params.pt").unlink()
    with pytest.raises(InterpError, match="no params.pt or params.safetensors"):
        TunedLens.load(d)
    TunedLens.load(FIX / "lens_centred").save(tmp_path / "full")
    (tmp_path / "full" / "params.pt").unlink()  # the safetensors copy alone is enough
    assert torch.equal(TunedLens.load(tmp_path / "full").weight, TunedLens.load(FIX / "lens_centred").weight)

    class Payload:  # pickled code in params.pt is never run
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"0.weight": Payload()}, d / "params.pt")
    with pytest.raises(InterpError, match=r"params.pt: not a state dict of tensors \(read with weights_only=True\)"):
        TunedLens.load(d)
    state = torch.load(FIX / "lens_centred" / "params.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "2.bias"}, d / "params.pt")
    with pytest.raises(InterpError, match=r"keys do not match its config \(3 layers, bias=True\): missing \['2.bias'\]"):
        TunedLens.load(d)
    torch.save({**state, "0.weight": torch.zeros(16, 8)}, d / "params.pt")
    with pytest.raises(InterpError, match=r"0.weight should be a float tensor of shape \(16, 16\), not \(16, 8\)"):
        TunedLens.load(d)
    config = json.loads((FIX / "lens_centred" / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "future_key": 1}))
    torch.save(state, d / "params.pt")
    with pytest.warns(UserWarning, match=r"ignoring unknown tuned-lens config keys \['future_key'\]"):
        TunedLens.load(d)
    (d / "config.json").write_text(json.dumps({**config, "lens_type": "nonlinear"}))
    with pytest.raises(InterpError, match="lens_type 'nonlinear' is not supported"):
        TunedLens.load(d)
    with pytest.raises(InterpError, match="no such directory"):
        TunedLens.load(tmp_path / "missing")
    small = interp.load("interp-tiny")
    with pytest.raises(InterpError, match="is for 3 layers × d_model 16 .*interp-tiny has 2 layers × d_model 128"):
        logit_lens(small, "a", lens=TunedLens.load(FIX / "lens_centred"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InterpError, match="it is a file, not a directory"):
        TunedLens.load(FIX / "lens_centred").save(tmp_path / "file")


# ---------------------------------------------------------------------------- training
def test_a_planted_linear_map_is_recovered():
    """A 1-layer model whose block is replaced (by hooks) with a known affine map of the stream entering
    it: h -> h + A* C h + b*. Translator 0 must learn A* and b*, up to the one thing the final
    LayerNorm cannot see (a positive scale of the whole map) and the stream's mean."""
    hf, tok = testing.random_gpt2_hf(seed=0, n_layer=1, n_embd=16, n_head=2, vocab_size=200, n_positions=32)
    with torch.no_grad():  # a stream of norm ~√d and logits of std ~2: GPT-2's scales, not a random init's
        hf.transformer.wte.weight.mul_(40)
        hf.transformer.wpe.weight.mul_(40)
    model = interp.load(hf, tokenizer=tok, fold_ln=False)
    d, g = 16, torch.Generator().manual_seed(5)
    C = torch.eye(d) - 1 / d
    A = 0.8 * torch.randn(d, d, generator=g) / d**0.5 @ C
    b = 0.5 * torch.randn(d, generator=g)
    seen = {}

    def keep(x, name):
        seen["h"] = x

    def plant(x, name):
        h = seen["h"]
        return h + (h - h.mean(-1, keepdim=True)) @ A.T + b

    windows = torch.randint(1, 200, (60 * 4, 32), generator=g)
    windows[:, 0] = 0
    with model.hooks([("blocks.0.hook_resid_pre", keep), ("blocks.0.hook_resid_post", plant)]):
        lens = train_tuned_lens(model, windows, steps=60, tokens_per_step=4 * 32, progress=False)
    want, got = C @ (torch.eye(d) + A) @ C, C @ (torch.eye(d) + lens.weight[0]) @ C
    scale = float((got * want).sum() / (want * want).sum())
    assert 0.8 < scale < 1.25
    assert (got - scale * want).norm() / (scale * want).norm() < 0.12
    assert (C @ lens.bias[0] - scale * C @ b).norm() / (scale * C @ b).norm() < 0.3
    assert (C - want).norm() / want.norm() > 0.4  # what the zero translator would score: the test can fail
    assert lens.record["kl_last_tenth"][0] < 0.05 * lens.record["kl_first_step"][0]


def _windows(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(1, 64, (n, 16), generator=g)
    w[:, 0] = 0
    return w


def test_training_is_deterministic_with_a_seed_and_mode_independent(raw_model):
    folded = interp.load(str(FIX / "model"), fold_ln=True)
    docs = [" ".join(f"w{(7 * i + j) % 63 + 1}" for j in range(5 + i % 7)) for i in range(40)]
    a = train_tuned_lens(folded, docs, steps=3, tokens_per_step=64, seed=1, progress=False)
    b = train_tuned_lens(folded, docs, steps=3, tokens_per_step=64, seed=1, progress=False)
    c = train_tuned_lens(folded, docs, steps=3, tokens_per_step=64, seed=2, progress=False)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.allclose(a.weight, c.weight)  # the seed shuffles the text
    assert a.mean_blind() and a.record["text"] == "documents given in Python"
    # the same lens from Hugging Face's raw weights: the translators read the centred stream in both modes
    raw = train_tuned_lens(raw_model, docs, steps=3, tokens_per_step=64, seed=1, progress=False)
    assert torch.allclose(a.weight, raw.weight, atol=1e-5) and torch.allclose(a.bias, raw.bias, atol=1e-5)
    assert a.config.unembed_hash is None and raw.config.unembed_hash == unembed_hash(raw_model)


def test_training_refuses_text_that_runs_out_before_the_steps(raw_model, tmp_path):
    """tuned-lens #113: its loop stops silently when the data ends. Here: an error, before any step."""
    with pytest.raises(InterpError, match=r"the training text runs out: it gives 3 windows of 16 tokens, and 8 "
                                          r"are needed; give more text, fewer steps or fewer tokens per step"):
        train_tuned_lens(raw_model, _windows(3), steps=4, tokens_per_step=32, progress=False)
    with pytest.raises(InterpError, match=r"the training text runs out: it gives 1 windows of 16 tokens, and 50 "):
        train_tuned_lens(raw_model, ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17"], steps=50,
                         tokens_per_step=16, progress=False)
    with pytest.raises(InterpError, match="tokens_per_step 20 is not a multiple of the window length 16"):
        train_tuned_lens(raw_model, _windows(8), steps=1, tokens_per_step=20, progress=False)
    (tmp_path / "small.txt").write_text("w1 w2 w3 " * 10)
    assert main(["lens", "train", "--out", str(tmp_path / "lens"), "--model", str(FIX / "model"),
                 "--text", str(tmp_path / "small.txt"), "--steps", "100", "--tokens-per-step", "16"]) == 2
    assert not (tmp_path / "lens").exists()


# ---------------------------------------------------------------------------- quality and the trajectory
def test_evaluation_matches_tuned_lens_s_logits(raw_model, outputs):
    ids = outputs["input_ids"]
    lens = TunedLens.load(FIX / "lens_hf")
    df = evaluate_lenses(raw_model, lens, ids, progress=False).set_index(["lens", "boundary"])
    final = outputs["lens_hf"][-1].log_softmax(-1)
    for name, logits in (("tuned", outputs["lens_hf"]), ("logit", outputs["logit_lens"])):
        for b in range(L + 1):
            logq = logits[b].log_softmax(-1)
            kl = (final.exp() * (final - logq)).sum(-1).mean()
            ce = -logq[:, :-1].gather(-1, ids[:, 1:, None]).mean()
            assert df.loc[(name, b), "kl"] == pytest.approx(float(kl), abs=1e-5)
            assert df.loc[(name, b), "ce"] == pytest.approx(float(ce), abs=1e-5)
    assert df.loc[("tuned", L), "kl"] == 0.0 and df.loc[("logit", L), "kl"] == 0.0
    assert (df["tokens"] == ids.numel()).all() and (df["predictions"] == ids[:, 1:].numel()).all()


def test_the_bundled_tuned_lens_beats_the_logit_lens_on_held_out_text():
    model = interp.load("interp-tiny")
    df = evaluate_lenses(model, TunedLens.load("interp-tiny"), lenses=["logit", "tuned"], max_windows=24, progress=False)
    kl = df.pivot(index="boundary", columns="lens", values="kl")
    n = model.cfg.n_layers
    assert (kl.loc[:n - 1, "tuned"] < kl.loc[:n - 1, "logit"]).all()
    assert kl.loc[n, "tuned"] == kl.loc[n, "logit"] == 0.0
    assert df.attrs["text"] == "interp.corpus: the bundled corpus, held-out split"


def test_trajectory_against_tuned_lens_s_logits(raw_model, outputs):
    ids = outputs["input_ids"]
    lens = TunedLens.load(FIX / "lens_hf")
    df = prediction_trajectory(raw_model, ids, tuned=lens)
    assert list(dict.fromkeys(df["lens"])) == ["logit", "pinv", "tuned"]
    assert len(df) == 3 * (L + 1) * ids.numel()
    final = outputs["lens_hf"][-1].log_softmax(-1)
    tuned = df[df["lens"] == "tuned"].set_index(["prompt", "boundary", "position"])
    for b in range(L + 1):
        logq = outputs["lens_hf"][b].log_softmax(-1)
        for p in range(len(ids)):
            for pos in (0, 5, ids.shape[1] - 1):
                row = tuned.loc[(p, b, pos)]
                q = logq[p, pos]
                assert row["token_id"] == int(q.argmax()) and row["prob"] == pytest.approx(float(q.exp().max()), abs=1e-5)
                assert row["entropy"] == pytest.approx(float(-(q.exp() * q).sum()), abs=1e-4)
                assert row["kl"] == pytest.approx(float((final[p, pos].exp() * (final[p, pos] - q)).sum()), abs=1e-4)
                if pos < ids.shape[1] - 1:
                    t = int(ids[p, pos + 1])
                    assert row["target"] == raw_model.tokenizer.decode([t])
                    assert row["target_prob"] == pytest.approx(float(q[t].exp()), abs=1e-5)
                    assert row["target_rank"] == 1 + int((q > q[t]).sum())
                else:
                    assert pd.isna(row["target"]) and np.isnan(row["target_prob"])


def test_trajectory_positions_are_per_prompt_whatever_the_padding(raw_model):
    lens = TunedLens.load(FIX / "lens_centred")
    prompts = ["w1 w2 w3 w4 w5 w6", "w9 w8"]
    both = prediction_trajectory(raw_model, raw_model.tokenize(prompts, padding_side="left"), tuned=lens)
    for i, text in enumerate(prompts):
        alone = prediction_trajectory(raw_model, text, tuned=lens).drop(columns="prompt").reset_index(drop=True)
        mine = both[both["prompt"] == i].drop(columns="prompt").reset_index(drop=True)
        assert mine[["lens", "boundary", "position", "token", "target"]].equals(
            alone[["lens", "boundary", "position", "token", "target"]])
        assert np.allclose(mine[["prob", "entropy", "kl"]], alone[["prob", "entropy", "kl"]], atol=1e-5)


def test_logit_lens_table_with_a_tuned_lens(raw_model, outputs):
    ids = outputs["input_ids"][:1]
    lens = TunedLens.load(FIX / "lens_hf")
    df = logit_lens(raw_model, ids, lens=lens, k=2, target=5, progress=False)
    assert df["lens"].eq("tuned").all() and df.attrs["lens"] == "tuned"
    assert df["label"].unique().tolist() == ["embed", "mlp 0", "mlp 1", "mlp 2"]
    want = outputs["lens_hf"][:, 0, -1].log_softmax(-1)  # [boundary, d_vocab] at the last position
    top = df[df["rank"] == 1].sort_values("boundary")
    assert top["token_id"].tolist() == want.argmax(-1).tolist()
    assert np.allclose(top["target_prob"], want[:, 5].exp().numpy(), atol=1e-5)
    assert top["target_rank"].tolist() == (1 + (want > want[:, 5:6]).sum(-1)).tolist()
    with pytest.raises(InterpError, match="resid_post_only=False .* is not available"):
        logit_lens(raw_model, ids, lens=lens, resid_post_only=False)
    with pytest.raises(InterpError, match="leave unembed='wu', final_ln=True"):
        logit_lens(raw_model, ids, lens=lens, unembed="pinv")


# ---------------------------------------------------------------------------- figures, page, command line
def test_trajectory_figure_svg_and_page(raw_model, outputs, saved_figures, tmp_path):
    from interp.plotting import trajectory_figure
    from interp.report.trajectory import trajectory_html, trajectory_svg
    from figcheck import heatmap_values, panels

    df = prediction_trajectory(raw_model, outputs["input_ids"][:1], tuned=TunedLens.load(FIX / "lens_hf"))
    fig = trajectory_figure(df, color="kl")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["logit lens", "pseudo-inverse lens (pinv W_E)", "tuned lens"]
    tuned = df[df["lens"] == "tuned"]
    grid = heatmap_values(axes[2])
    assert grid.shape == (L + 1, outputs["input_ids"].shape[1])
    assert np.allclose(grid[tuned["boundary"], tuned["position"]], tuned["kl"])
    assert np.allclose(grid[-1], 0)  # the tuned lens's last boundary is the model
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axes[2].texts}
    for r in tuned.itertuples():  # each cell names the lens's top token (shortened past 7 characters)
        assert cells[(r.boundary, r.position)] == (r.token if len(r.token) <= 7 else r.token[:6] + "…")
    svg = trajectory_svg(df, color="target_prob")
    assert svg.count("<rect x=") >= 3 * (L + 1) * outputs["input_ids"].shape[1]
    assert "<script" not in svg and "href" not in svg
    evil = df.copy()
    evil.loc[0, "token"] = "<script>alert(1)</script>"
    page = trajectory_html(evil)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    body = page.split("<body>")[1]
    assert not any(ref in body for ref in ("src=", "href", "url(", "<script", "<link"))  # nothing to fetch or run
    assert page.count("<svg") == 3  # entropy, next-token probability, KL


def test_command_line(tmp_path, capsys, saved_figures):
    model = str(FIX / "model")
    lens_dir = str(FIX / "lens_hf")
    assert main(["lens", "w1 w2 w3 w4", "--model", model, "--no-fold-ln", "--tuned", lens_dir,
                 "--png", str(tmp_path / "t.png"), "--html", str(tmp_path / "t.html"), "--color", "target_prob"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"tuned lens of {model}: each boundary's translator from {lens_dir}")
    assert (tmp_path / "t.html").read_text().startswith("<!DOCTYPE html>")
    assert [ax.get_title() for ax in saved_figures[0].axes[:3]] == ["logit lens", "pseudo-inverse lens (pinv W_E)",
                                                                    "tuned lens"]
    # refused before the model loads: a mean-reading lens with folded weights, a missing lens, bad options
    for argv, message in (
        (["lens", "a", "--tuned", lens_dir], "this lens reads the residual stream's mean, which folded weights do "
                                              "not have; add --no-fold-ln"),
        (["lens", "a", "--tuned", str(tmp_path / "none")], "no such directory (bundled lenses: interp-tiny)"),
        (["lens", "a", "--tuned", "interp-tiny", "--unembed", "pinv"], "--tuned reads through the final LayerNorm"),
        (["lens", "train", "--out", str(tmp_path / "no" / "dir")], "directory " + str(tmp_path / "no") + " does not"),
        (["lens", "eval", "--max-windows", "0"], "argument --max-windows: 0 is not a number of windows"),
        (["lens", "eval", "--text", str(tmp_path / "none.txt")], "none.txt: no such file"),
    ):
        assert main(argv + ["--model", str(tmp_path / "not-a-model")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "not-a-model" not in err, (argv, err)
    # `train` right after `lens` is the mode; after `--` it is the text
    assert main(["lens", "--model", model, "--top", "1", "--", "train"]) == 0
    assert "input boundary" in capsys.readouterr().out
    # train then read, end to end
    d = tmp_path / "trained"
    assert main(["lens", "train", "--out", str(d), "--model", model, "--steps", "2", "--tokens-per-step", "32",
                 "--text", str(_text_file(tmp_path))]) == 0
    assert "tuned lens of" in capsys.readouterr().out and TunedLens.load(d).record["steps"] == 2
    assert main(["lens", "eval", "--model", model, "--tuned", str(d), "--text", str(_text_file(tmp_path)),
                 "--out", str(tmp_path / "q.csv"), "--png", str(tmp_path / "q.png")]) == 0
    out = capsys.readouterr().out
    assert "KL logit  KL pinv  KL tuned" in out
    import pandas as pd

    table = pd.read_csv(tmp_path / "q.csv")
    assert set(table["lens"]) == {"logit", "pinv", "tuned"} and len(table) == 3 * (L + 1)


def _text_file(tmp_path):
    path = tmp_path / "text.txt"
    if not path.exists():
        path.write_text(" ".join(f"w{(5 * i) % 63 + 1}" for i in range(400)))
    return path


def test_the_attention_report_shows_the_trajectory(tmp_path):
    from interp.report import build_report, write_report

    model = interp.load(str(FIX / "model"), fold_ln=False)
    lens = TunedLens.load(FIX / "lens_hf")
    plain = build_report(model, "w1 w2 w3 w4 w1", heads="0.0", scores=False)
    assert plain.trajectory is None and "Prediction trajectory" not in plain.html()
    report = write_report(model, "w1 w2 w3 w4 w1", tmp_path / "r.html", png=tmp_path / "png", heads="0.0",
                          scores=False, trajectory=lens)
    want = prediction_trajectory(model, "w1 w2 w3 w4 w1", tuned=lens)
    assert report.trajectory[["lens", "boundary", "position", "token"]].equals(want[["lens", "boundary", "position", "token"]])
    page = (tmp_path / "r.html").read_text()
    section = page.split("<h2>Prediction trajectory</h2>")[1]
    assert section.count("<rect x=") >= 3 * (L + 1) * 6  # three lenses × boundaries × (BOS + 5 tokens)
    assert page.count('http-equiv="Content-Security-Policy"') == 1 and "<script src" not in page
    assert (tmp_path / "png" / "trajectory.png").is_file()
    with pytest.raises(InterpError, match="reads the residual stream's mean"):
        build_report(interp.load(str(FIX / "model")), "w1 w2", heads="0.0", scores=False, trajectory=lens)


def test_the_trajectory_page_in_a_browser(tmp_path, raw_model, outputs):
    """Chromium opens the page offline: no request, no console error, the three pictures drawn."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    from interp.report.trajectory import trajectory_html

    df = prediction_trajectory(raw_model, outputs["input_ids"][:1], tuned=TunedLens.load(FIX / "lens_hf"))
    (tmp_path / "t.html").write_text(trajectory_html(df))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((tmp_path / "t.html").as_uri())
            boxes = [page.locator("svg").nth(i).bounding_box() for i in range(3)]
        finally:
            browser.close()
    assert errors == [] and requests == [(tmp_path / "t.html").as_uri()]
    assert all(b is not None and b["width"] > 1000 and b["height"] > 150 for b in boxes)
