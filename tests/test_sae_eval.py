"""interp.features.evaluate against Hugging Face GPT-2 with torch hooks, and the metric helpers."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import interp
from interp.corpus import documents, token_windows
from interp.errors import InterpError
from interp.features.evaluation import evaluate, mean_correlation_coefficient
from interp.features.sae import SAE, SAEConfig

TINY = Path(interp.__file__).parent / "bundled" / "interp-tiny"


@pytest.fixture(scope="module")
def hf():
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(TINY, attn_implementation="eager").eval()


def random_sae(arch, hook, fold_ln, hook_out=None, seed=0):
    sae = SAE(SAEConfig(arch, d_in=128, d_sae=384, hook_name=hook, hook_name_out=hook_out, k=16 if arch == "topk" else None,
                        apply_b_dec_to_input=hook_out is None, fold_ln=fold_ln), seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(0.2 * torch.randn(128, generator=torch.Generator().manual_seed(seed)))
    return sae


def reference(hf, tokens, layer, replace_out, read_ln2=False):
    """(clean, spliced, zeroed) next-token losses, KLs and the (x, x̂) pairs, from Hugging Face with hooks at h[layer]."""
    block = hf.transformer.h[layer]
    pairs = []

    def run(edit):
        handles = []
        if edit is not None:
            if read_ln2:
                stash = {}
                handles.append(block.ln_2.register_forward_pre_hook(lambda m, a: stash.__setitem__("x", a[0])))
                handles.append(block.mlp.register_forward_hook(lambda m, a, out: edit(out, stash["x"])))
            else:
                handles.append(block.register_forward_hook(
                    lambda m, a, out: (edit(out[0], None),) + tuple(out[1:]) if isinstance(out, tuple) else edit(out, None)))
        try:
            return hf(tokens).logits[:, :-1].log_softmax(-1)
        finally:
            for h in handles:
                h.remove()

    def spliced(out, x_in):
        x_hat = replace_out(out, x_in)
        pairs.append((out, x_hat))
        return x_hat

    lp = {name: run(edit) for name, edit in (("clean", None), ("spliced", spliced),
                                               ("zero", lambda out, x_in: torch.zeros_like(out)))}
    nll = {k: -v.gather(-1, tokens[:, 1:, None]).mean() for k, v in lp.items()}
    kl = {k: (lp["clean"].exp() * (lp["clean"] - lp[k])).sum(-1).mean() for k in ("spliced", "zero")}
    x, x_hat = (torch.cat([p[i].reshape(-1, p[i].shape[-1]) for p in pairs]) for i in (0, 1))
    return nll, kl, x, x_hat


def check(row, nll, kl, x, x_hat, sae_f):
    ev = 1 - ((x - x_hat) ** 2).sum(-1).mean() / ((x - x.mean(0)) ** 2).sum(-1).mean()
    assert row["ce_loss_clean"] == pytest.approx(float(nll["clean"]), abs=1e-4)
    assert row["ce_loss_spliced"] == pytest.approx(float(nll["spliced"]), abs=1e-4)
    assert row["ce_loss_zero_ablated"] == pytest.approx(float(nll["zero"]), abs=1e-4)
    rec = (nll["zero"] - nll["spliced"]) / (nll["zero"] - nll["clean"])
    assert row["ce_loss_recovered"] == pytest.approx(float(rec), abs=1e-4)
    assert row["kl_div"] == pytest.approx(float(kl["spliced"]), abs=1e-4)
    assert row["kl_div_zero_ablated"] == pytest.approx(float(kl["zero"]), abs=1e-4)
    assert row["explained_variance"] == pytest.approx(float(ev), abs=1e-4)
    assert row["mse"] == pytest.approx(float(((x - x_hat) ** 2).sum(-1).mean()), rel=1e-4)
    assert row["l2_ratio"] == pytest.approx(float((x_hat.norm(dim=-1) / x.norm(dim=-1)).mean()), rel=1e-4)
    assert row["relative_reconstruction_bias"] == pytest.approx(
        float((x_hat ** 2).sum(-1).mean() / (x * x_hat).sum(-1).mean()), rel=1e-4)
    active = sae_f != 0
    assert row["l0"] == pytest.approx(float(active.sum(-1).float().mean()), abs=1e-6)
    assert row["dead_fraction"] == pytest.approx(float((active.sum(0) == 0).double().mean()), abs=1e-9)
    assert row["dense_fraction"] == pytest.approx(float((active.double().mean(0) > 0.1).double().mean()), abs=1e-9)


def test_sae_metrics_equal_hugging_face(hf):
    """Raw weights; an SAE at blocks.0.hook_resid_post (Hugging Face: h[0]'s output)."""
    model = interp.load("interp-tiny", fold_ln=False)
    sae = random_sae("topk", "blocks.0.hook_resid_post", fold_ln=False)
    row = evaluate(model, sae, max_windows=6, batch_size=4, progress=False).iloc[0]
    tokens = torch.stack(list(token_windows(model.tokenizer, documents(split="heldout"), 64, limit=6)))
    nll, kl, x, x_hat = reference(hf, tokens, 0, lambda out, _: sae(out))
    check(row, nll, kl, x, x_hat, sae.encode(x))
    assert 0 < row["ce_loss_recovered"] < 1 and row["tokens"] == 6 * 64


def test_transcoder_metrics_equal_hugging_face(hf):
    """Folded weights and a transcoder trained folded (ln2 without gain/bias -> mlp_out), against raw Hugging Face."""
    model = interp.load("interp-tiny")
    tc = random_sae("jumprelu", "blocks.1.ln2.hook_normalized", fold_ln=True, hook_out="blocks.1.hook_mlp_out")
    with torch.no_grad():
        tc.threshold.fill_(0.05)
    row = evaluate(model, tc, max_windows=6, batch_size=3, progress=False).iloc[0]
    tokens = torch.stack(list(token_windows(model.tokenizer, documents(split="heldout"), 64, limit=6)))
    eps = hf.transformer.h[1].ln_2.eps

    def predict(out, resid):
        n = F.layer_norm(resid, resid.shape[-1:], eps=eps)
        return tc(n) + out.mean(-1, keepdim=True)  # folded mlp_out is centred; the mean is the raw one's

    nll, kl, x, x_hat = reference(hf, tokens, 1, predict, read_ln2=True)
    # the folded model's mlp_out is the raw one centred: compare in that space
    x, x_hat = x - x.mean(-1, keepdim=True), x_hat - x.mean(-1, keepdim=True)
    ev_row = row["explained_variance"]
    ev = 1 - ((x - x_hat) ** 2).sum(-1).mean() / ((x - x.mean(0)) ** 2).sum(-1).mean()
    assert ev_row == pytest.approx(float(ev), abs=1e-4)
    for key, want in (("ce_loss_clean", nll["clean"]), ("ce_loss_spliced", nll["spliced"]), ("ce_loss_zero_ablated", nll["zero"]),
                      ("kl_div", kl["spliced"])):
        assert row[key] == pytest.approx(float(want), abs=1e-4), key


def test_matching_is_the_best_one_to_one():
    """MCC's matching against brute force over every assignment of a few rows."""
    import itertools

    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        truth, learned = torch.randn(4, 6, generator=g), torch.randn(6, 6, generator=g)
        sim = (F.normalize(truth, dim=-1) @ F.normalize(learned, dim=-1).T).abs()
        best = max(sum(float(sim[i, p[i]]) for i in range(4)) for p in itertools.permutations(range(6), 4)) / 4
        assert mean_correlation_coefficient(learned, truth) == pytest.approx(best, abs=1e-9)
    with pytest.raises(InterpError, match="cannot match"):
        mean_correlation_coefficient(torch.randn(2, 3), torch.randn(3, 3))


def test_bad_arguments():
    model = interp.load("interp-tiny")
    with pytest.raises(InterpError, match="trained with fold_ln=False"):
        evaluate(model, random_sae("topk", "blocks.0.hook_resid_post", fold_ln=False), max_windows=2)
    with pytest.raises(InterpError, match="needs an SAE"):
        evaluate(model, [], max_windows=2)
