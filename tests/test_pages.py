"""Feature pages (interp.report.feature_pages, interp.features.stats): planted features, streaming against a one-shot reference,
logit effects against Hugging Face's weights, direct feature attribution against the model's own z, the CLI."""

import json

import pytest
import torch

import interp
from interp.corpus import token_windows
from interp.errors import InterpError
from interp.features import SAE, SAEConfig, dashboard
from interp.features.stats import HIST_BINS, FeatureStats, hash_keys
from interp.testing import word_tokenizer

WORDS = [f"w{i}" for i in range(40)]


# ---------------------------------------------------------------------------- streaming statistics
def _random_acts(N=40, P=16, F=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 100, (N, P), generator=g)
    tokens[:, 0] = 0
    acts = torch.relu(torch.randn(N, P, F, generator=g) - 0.8) * torch.rand(F, generator=g) * 3
    acts[:, :, 3] = 0  # a dead feature
    acts[5, 3, 4] = acts[9, 7, 4] = acts.max() + 1  # a tie for the top: the earlier window wins
    acts[:, 0, 5] = 50.0  # huge on every BOS: must count for nothing
    acts[:, :, 7] = 0
    acts[:, 2, 7] = acts[:, 9, 7] = 2.5  # every window ties, twice: the first windows, at their first position
    return tokens, acts


def _fed(tokens, acts, splits, **kw):
    s = FeatureStats(acts.shape[-1], n_examples=4, bin_examples=3, left=3, right=2, **kw)
    i = 0
    for n in splits:
        s.update(tokens[i:i + n], acts[i:i + n])
        i += n
    assert i == len(tokens)
    return s


def test_streaming_equals_one_shot_reference_for_any_chunking():
    tokens, acts = _random_acts()
    N, P, F = acts.shape
    runs = [_fed(tokens, acts, s) for s in ([N], [1] * N, [3, 7, 1, 13, 16])]
    a = runs[0]
    for s in runs[1:]:  # exactly the same state, whatever the batches
        assert torch.equal(a.nonzero, s.nonzero) and torch.equal(a.hist, s.hist) and torch.equal(a.max, s.max)
        for f in range(F):
            assert a.top(f) == s.top(f) and a.intervals(f) == s.intervals(f) and a.histogram(f) == s.histogram(f)
    assert a.n_tokens == N * (P - 1)
    for f in range(F):  # against a direct computation on the whole tensor
        x = acts[:, 1:, f]
        assert int(a.nonzero[f]) == int((x > 0).sum())
        if not (x > 0).any():
            assert f == 3 and a.top(f)["value"] == [] and a.intervals(f) == [] and a.histogram(f) == ([], [])
            continue
        assert float(a.max[f]) == float(x.max())
        mx, am = x.max(1)
        best = sorted((-float(mx[w]), w) for w in range(N) if mx[w] > 0)[:4]
        t = a.top(f)
        assert t["window"] == [w for _, w in best] and t["value"] == [-v for v, _ in best]
        assert t["pos"] == [int(am[w]) + 1 for _, w in best]
        for j, w in enumerate(t["window"]):
            for o in range(-3, 3):
                q = t["pos"][j] + o
                inside = 0 <= q < P
                assert t["tokens"][j][o + 3] == (int(tokens[w, q]) if inside else -1)
                assert t["values"][j][o + 3] == (float(acts[w, q, f]) if inside else 0.0)
        width = 2.0 ** int(a.exp[f])
        assert float(x.max()) < HIST_BINS * width  # the narrowest bins that hold the max
        assert float(x.max()) >= HIST_BINS * width / 2 or int(a.exp[f]) == -30
        assert torch.equal(a.hist[f], torch.bincount(torch.floor(x[x > 0].double() / width).long(), minlength=HIST_BINS))
        for iv in a.intervals(f):  # each interval's sample: the 3 smallest hash keys among its tokens
            top_iv = iv["hi"] == float(x.max())
            w, p = torch.nonzero((x > 0) & (x >= iv["lo"]) & ((x < iv["hi"]) | top_iv)).T
            keys = hash_keys(w, p + 1, 0)
            want = sorted(zip(keys.tolist(), w.tolist(), (p + 1).tolist()))[:3]
            assert sorted((e["window"], e["pos"]) for e in iv["examples"]) == sorted((w_, p_) for _, w_, p_ in want)
            assert iv["share"] == pytest.approx(len(w) / int((x > 0).sum()))
            assert all(iv["lo"] <= e["value"] and (e["value"] < iv["hi"] or top_iv) for e in iv["examples"])
    assert a.top(4)["window"][:2] == [5, 9] and a.top(5)["value"][0] < 50
    assert a.top(7)["window"] == [0, 1, 2, 3] and a.top(7)["pos"] == [2, 2, 2, 2]


def test_stats_memory_is_bounded():
    s = FeatureStats(16, n_examples=5, bin_examples=2, left=2, right=2)
    g = torch.Generator().manual_seed(1)
    sizes = []
    for _ in range(3):
        s.update(torch.randint(0, 50, (8, 12), generator=g), torch.relu(torch.randn(8, 12, 16, generator=g)))
        sizes.append(sum(t.numel() for d in (s._top, s._smp) for t in d.values()))
    assert sizes[0] == sizes[-1]


# ---------------------------------------------------------------------------- a planted feature
@pytest.fixture(scope="module")
def word_hf():
    """A small random GPT-2 over whole words, LayerNorm gains and biases random (so folding matters)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=len(WORDS) + 1,
                                    bos_token_id=0, eos_token_id=0, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.add_(0.2 * torch.randn(p.shape))
    return hf, word_tokenizer(WORDS)


def _text(n_words=599, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in ids.tolist()), ids


@torch.no_grad()
def _token_sae(model, t: int, dead: int, d_sae: int = 4) -> SAE:
    """Feature 1 fires exactly on token t (its encoder column is t's embedding, the threshold halfway to the
    next-best token); feature ``dead`` never fires; the decoder rows are random directions."""
    E = model.W_E.double()
    score = E @ E[t]
    other = torch.cat([score[:t], score[t + 1:]]).max()
    assert score[t] > other + 1e-3
    sae = SAE(SAEConfig("standard", d_in=model.cfg.d_model, d_sae=d_sae, hook_name="hook_embed",
                        fold_ln=model.cfg.fold_ln))
    g = torch.Generator().manual_seed(5)
    sae.W_enc.copy_(0.05 * torch.randn(sae.W_enc.shape, generator=g))
    sae.b_enc.fill_(-10.0)
    sae.b_dec.zero_()
    sae.W_enc[:, 1] = E[t].float()
    sae.b_enc[1] = -float(score[t] + other) / 2
    sae.W_enc[:, dead] = 0.0
    sae.b_enc[dead] = -1.0
    sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g))
    return sae


@pytest.mark.parametrize("fold_ln", [True, False])
def test_planted_token_feature(word_hf, fold_ln):
    hf, tok = word_hf
    model = interp.load(hf, tokenizer=tok, fold_ln=fold_ln)
    text, ids = _text()  # 599 words + the EOS that ends the document = 30 windows of 20
    t = 7
    sae = _token_sae(model, t + 1, dead=3)  # word t has token id t + 1
    pages = dashboard(model, sae, [text], n_ctx=21, n_examples=6, left=4, right=2, progress=False)
    assert pages.meta["n_tokens"] == 600 and pages.meta["n_prompts_total"] == 30
    f = pages.feature(1)
    assert f["frac_nonzero"] == pytest.approx(int((ids == t).sum()) / 600, rel=1e-4)
    assert f["n_nonzero"] == int((ids == t).sum())
    score = model.W_E.double() @ model.W_E[t + 1].double()
    peak = float(score[t + 1] - (score[t + 1] + torch.cat([score[:t + 1], score[t + 2:]]).max()) / 2)
    assert f["maxActApprox"] == pytest.approx(peak, rel=1e-4)
    tops = [a for a in f["activations"] if a["binMin"] == -1]
    assert len(tops) == 6
    for a in tops:  # the token at every top example's max is t, and t is the only token with an activation
        assert a["tokens"][a["maxValueTokenIndex"]] == WORDS[t]
        assert all((v > 0) == (s == WORDS[t]) for s, v in zip(a["tokens"], a["values"]))
    # The logit rows: W_dec[1] through the final LayerNorm (centred, gain) and the unembedding, per Hugging Face.
    d = sae.W_dec[1].double()
    d = d - d.mean()
    direct = (d * hf.transformer.ln_f.weight.double()) @ hf.lm_head.weight.double().T
    direct = direct - direct.mean()
    top10 = direct.topk(10)
    assert f["pos_ids"] == top10.indices.tolist()
    assert f["pos_values"] == pytest.approx(top10.values.tolist(), abs=1e-4)
    assert f["neg_values"] == pytest.approx(direct.topk(10, largest=False).values.tolist(), abs=1e-4)
    assert f["pos_str"] == [tok.decode([i]) for i in top10.indices.tolist()]
    dead = pages.feature(3)
    assert dead["dead"] and dead["activations"] == [] and dead["maxActApprox"] == 0.0 and dead["frac_nonzero"] == 0.0
    assert dead["freq_hist_data_bar_heights"] == [] and pages.meta["n_dead_computed"] == 3  # 0 and 2 too
    assert sum(f["freq_hist_data_bar_heights"]) == f["n_nonzero"]


def test_top_sort_and_feature_choice(word_hf):
    hf, tok = word_hf
    model = interp.load(hf, tokenizer=tok)
    text, ids = _text()
    sae = _token_sae(model, 8, dead=3, d_sae=6)
    with torch.no_grad():  # feature 4 fires everywhere, feature 5 on 8 too but weaker: by density 4, then 1 = 5
        sae.W_enc[:, 4] = 0
        sae.b_enc[4] = 1e-3
        sae.W_enc[:, 5] = sae.W_enc[:, 1] / 2
        sae.b_enc[5] = sae.b_enc[1] / 2
    pages = dashboard(model, sae, [text], n_ctx=21, top=2, progress=False)
    assert pages.indices() == [1, 4] and pages.feature(4)["frac_nonzero"] == 1.0  # ties go to the lower index
    assert dashboard(model, sae, [text], n_ctx=21, top=1, sort="max", progress=False).indices() == [1]
    chosen = dashboard(model, sae, [text], n_ctx=21, features="1,3:5", progress=False)
    assert chosen.indices() == [1, 3, 4] and chosen.meta["n_features_computed"] == 3
    assert chosen.feature(1)["frac_nonzero"] == pages.feature(1)["frac_nonzero"]
    for bad, what in ((dict(sort="loud"), "sort"), (dict(n_bins=9), "n_bins"), (dict(features="7"), "feature 7"),
                      (dict(top=0), "top"), (dict(n_ctx=500), "n_ctx")):
        with pytest.raises(InterpError, match=what):
            dashboard(model, sae, [text], progress=False, **bad)


def test_batching_does_not_change_the_pages(word_hf):
    hf, tok = word_hf
    model = interp.load(hf, tokenizer=tok)
    sae = SAE(SAEConfig("topk", d_in=model.cfg.d_model, d_sae=32, k=4, hook_name="blocks.0.hook_resid_post",
                        fold_ln=True))
    text, _ = _text(399)
    a = dashboard(model, sae, [text], n_ctx=21, batch_size=1, progress=False).to_dict()
    b = dashboard(model, sae, [text], n_ctx=21, batch_size=7, progress=False).to_dict()
    assert a == b


# ---------------------------------------------------------------------------- hook_z: heads and DFA
def test_hook_z_dfa_adds_up_to_the_preactivation(small_folded, small_hf):
    model = small_folded
    H, D = model.cfg.n_heads, model.cfg.d_head
    sae = SAE(SAEConfig("standard", d_in=H * D, d_sae=8, hook_name="blocks.1.attn.hook_z", fold_ln=True), seed=3)
    with torch.no_grad():
        sae.W_dec[2] = 0
        sae.W_dec[2, D:2 * D] = 1.0  # all of feature 2's decoder row in head 1
    text = " ".join(["the cat sat on the mat and then it ran away"] * 8)
    n_ctx = 12
    pages = dashboard(model, sae, [text], n_ctx=n_ctx, left=n_ctx, right=0, n_examples=3, progress=False)
    assert pages.feature(2)["decoder_weights_dist"] == pytest.approx([0, 1, 0, 0])
    # Its logit effects: head 1's rows of Hugging Face's c_proj, then ln_f (centred, gain) and the unembedding.
    hf = small_hf[0]
    resid = torch.ones(D, dtype=torch.float64) @ hf.transformer.h[1].attn.c_proj.weight.double()[D:2 * D]
    direct = ((resid - resid.mean()) * hf.transformer.ln_f.weight.double()) @ hf.lm_head.weight.double().T
    direct = direct - direct.mean()
    assert pages.feature(2)["pos_values"] == pytest.approx(direct.topk(10).values.tolist(), abs=1e-4)
    assert pages.feature(2)["pos_ids"] == direct.topk(10).indices.tolist()
    w = sae.W_dec[5].view(H, D).norm(dim=-1)
    assert pages.feature(5)["decoder_weights_dist"] == pytest.approx((w / w.sum()).tolist(), rel=1e-4)
    windows = torch.stack(list(token_windows(model.tokenizer, [text], n_ctx)))
    _, cache = model.run(windows, names=["blocks.1.attn.hook_z"])
    pre = sae.encode_pre(cache["blocks.1.attn.hook_z"].flatten(-2)) - sae.encode_pre(torch.zeros(1, H * D))
    checked = 0
    for f in pages.features:
        for a in f["activations"]:
            if a["binMin"] != -1:
                assert "dfaValues" not in a
                continue
            # the window holds every source the query reads (left = n_ctx): the DFA adds up to the pre-activation
            q = a["position"]
            assert a["dfaTargetIndex"] == a["maxValueTokenIndex"] == len(a["tokens"]) - 1
            assert sum(a["dfaValues"]) == pytest.approx(float(pre[int(a["dataIndex"]), q, f["index"]]), abs=2e-4)
            checked += 1
    assert checked >= 10


# ---------------------------------------------------------------------------- the JSON
def test_json_follows_neuronpedias_feature_schema(word_hf):
    hf, tok = word_hf
    model = interp.load(hf, tokenizer=tok)
    text, _ = _text()
    sae = _token_sae(model, 8, dead=3)
    doc = json.loads(dashboard(model, sae, [text], n_ctx=21, progress=False).to_json())
    assert {"model_id", "layer", "hook_name", "features", "n_tokens"} <= set(doc)
    f = doc["features"][1]
    neuronpedia = {"modelId": str, "layer": str, "index": int, "hookName": str, "maxActApprox": float,
                   "frac_nonzero": float, "pos_str": list, "pos_values": list, "neg_str": list, "neg_values": list,
                   "freq_hist_data_bar_values": list, "freq_hist_data_bar_heights": list,
                   "logits_hist_data_bar_values": list, "logits_hist_data_bar_heights": list,
                   "decoder_weights_dist": list, "activations": list}
    for key, kind in neuronpedia.items():
        assert isinstance(f[key], kind), key
    assert f["layer"] == "embed" and f["index"] == 1 and len(f["pos_str"]) == 10
    act = {"tokens": list, "values": list, "maxValue": float, "maxValueTokenIndex": int, "minValue": float,
           "binMin": float, "binMax": float, "binContains": float, "dataIndex": str}
    for a in f["activations"]:
        for key, kind in act.items():
            assert isinstance(a[key], kind), key
        assert len(a["tokens"]) == len(a["values"]) and a["maxValue"] == max(a["values"])
    bins = [a for a in f["activations"] if a["binMin"] != -1]
    assert bins and all(0 <= a["binMin"] < a["binMax"] <= f["maxActApprox"] and 0 < a["binContains"] <= 1 for a in bins)


# ---------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, word_hf):
    d = tmp_path_factory.mktemp("cli")
    hf, tok = word_hf
    hf.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    model = interp.load(str(d / "model"))
    _token_sae(model, 8, dead=3).save(d / "sae")
    text, _ = _text()
    (d / "text.txt").write_text(text)
    return d


def test_cli_writes_both_files_or_none(cli_setup, monkeypatch, capsys):
    from interp.cli import features as cli_features
    from interp.cli import main

    d = cli_setup
    base = ["features", str(d / "sae"), "--model", str(d / "model"), "--text-file", str(d / "text.txt"),
            "--n-ctx", "21", "--quiet"]
    assert main([*base, "--features", "0:3", "--html", str(d / "f.html"), "--json", str(d / "f.json")]) == 0
    out = capsys.readouterr()
    doc = json.loads((d / "f.json").read_text())
    assert [f["index"] for f in doc["features"]] == [0, 1, 2] and doc["text"] == str(d / "text.txt")
    assert (d / "f.html").read_text().startswith("<!DOCTYPE html>") and "3 features over 600 tokens" in out.out
    (d / "f.json").write_text("old")

    def no_model(args, sae):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(cli_features, "_load_model", no_model)
    for bad, msg in ((["--features", "9"], "--features 9: feature 9 out of range"), (["--top", "0"], "--top"),
                     (["--json", str(d / "nodir" / "x.json")], "does not exist"), (["--json", str(d)], "directory"),
                     (["--tokens", "lots"], "--tokens"), (["--bins", "9"], "--bins 9"),
                     (["--text-file", str(d / "none.txt")], "none.txt: no such file")):
        assert main([*base, "--html", str(d / "g.html"), *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, (bad, err)
        assert not (d / "g.html").exists()
    assert main(["features", str(d / "nosae"), "--html", str(d / "g.html")]) == 2
    assert "nosae" in capsys.readouterr().err
    assert (d / "f.json").read_text() == "old"
    monkeypatch.undo()
    # Rendering the second file fails: neither is written (each is rendered beside its target, then renamed).
    from interp.report.feature_pages import FeaturePages

    def broken(self, indent=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FeaturePages, "to_json", broken)
    assert main([*base, "--features", "1", "--html", str(d / "h.html"), "--json", str(d / "h.json")]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not (d / "h.html").exists() and not (d / "h.json").exists() and sorted(p.name for p in d.glob(".*")) == []
