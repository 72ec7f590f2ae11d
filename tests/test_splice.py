"""interp.splice against plain Hugging Face GPT-2 with the reconstruction written in by torch hooks, both weight modes."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import interp
from interp.errors import InterpError
from interp.features.sae import SAE, SAEConfig

TINY = Path(interp.__file__).parent / "bundled" / "interp-tiny"
TEXT = ["def f(x):\n    return x + 1\n", "The list is sorted in place."]


@pytest.fixture(scope="module")
def hf():
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(TINY, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def models():
    return {True: interp.load("interp-tiny"), False: interp.load("interp-tiny", fold_ln=False)}


def make(arch, hook, fold_ln, *, hook_out=None, d_in=128, d_out=None, seed=0, skip=False):
    cfg = SAEConfig(arch, d_in=d_in, d_sae=256, d_out=d_out, hook_name=hook, hook_name_out=hook_out, fold_ln=fold_ln,
                    k=12 if arch == "topk" else None, apply_b_dec_to_input=hook_out is None, skip=skip)
    sae = SAE(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_enc.mul_(0.5)
        sae.b_enc.copy_(0.1 * torch.randn(sae.d_sae, generator=g))
        sae.b_dec.copy_(0.3 * torch.randn(sae.d_out, generator=g))
        if sae.W_skip is not None:
            sae.W_skip.copy_(0.05 * torch.randn(sae.W_skip.shape, generator=g))
        if sae.threshold is not None:
            sae.threshold.fill_(0.2)
    return sae


def tokens(model):
    return model.tokenize(TEXT)


def hf_logits(hf, batch, resid=None, transcoder=None, z=None):
    """HF's logits with replacements written in by torch hooks (raw weights: Hugging Face's own numbers).

    resid: (layer, fn) replacing the residual stream entering block ``layer``; transcoder: (layer, fn)
    replacing the MLP's output by fn(LayerNorm output without gain and bias); z: (layer, fn) on c_proj's input.
    """
    handles, stash = [], {}
    try:
        if resid is not None:
            layer, fn = resid
            handles.append(hf.transformer.h[layer].register_forward_pre_hook(
                lambda m, args, kwargs: ((fn(args[0]),) + args[1:], kwargs) if args else (args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}),
                with_kwargs=True))
        if transcoder is not None:
            layer, fn = transcoder
            block = hf.transformer.h[layer]
            handles.append(block.ln_2.register_forward_pre_hook(lambda m, args: stash.__setitem__("x", args[0])))
            handles.append(block.mlp.register_forward_hook(
                lambda m, args, out: fn(F.layer_norm(stash["x"], stash["x"].shape[-1:], eps=block.ln_2.eps))))
        if z is not None:
            layer, fn = z
            handles.append(hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(lambda m, args: (fn(args[0]),)))
        return hf(batch.tokens, attention_mask=batch.attention_mask.long()).logits
    finally:
        for h in handles:
            h.remove()


def centred(x):
    return x - x.mean(-1, keepdim=True)


@pytest.mark.parametrize("fold_ln", [True, False])
def test_spliced_forward_equals_hugging_face_with_hooks(models, hf, fold_ln):
    """SAE at the residual stream, a skip transcoder on ln2 -> mlp_out and an SAE on hook_z, spliced one at a time."""
    model = models[fold_ln]
    batch = tokens(model)
    mask = batch.attention_mask
    sae = make("topk", "blocks.1.hook_resid_pre", fold_ln=True)
    tc = make("jumprelu", "blocks.0.ln2.hook_normalized", fold_ln=True, hook_out="blocks.0.hook_mlp_out", skip=True)
    zs = make("standard", "blocks.1.attn.hook_z", fold_ln=fold_ln)
    ln2 = model.ln2_w[0], model.ln2_b[0]
    cases = [
        # the SAE was trained folded: it reads the centred residual stream (the mean is restored on the way out)
        (sae, dict(resid=(1, lambda h: sae(centred(h)) + h.mean(-1, keepdim=True)))),
        # the transcoder reads LayerNorm without its gain and bias (fold_ln=True's ln2.hook_normalized)
        (tc, dict(transcoder=(0, lambda n: tc(n)))),
        (zs, dict(z=(1, lambda z: zs(z)))),
    ]
    for s, ref in cases:
        with torch.no_grad():
            with interp.splice(model, s):
                ours = model(batch)
            want = hf_logits(hf, batch, **ref)
        got, want = ours.log_softmax(-1)[mask], want.log_softmax(-1)[mask]
        assert (got - want).abs().max() < 1e-4, (s.hook_name, fold_ln)
        clean = model(batch).log_softmax(-1)[mask]
        assert (got - clean).abs().max() > 1e-2  # the splice did something
    assert ln2[0].shape == (128,)


@pytest.mark.parametrize("fold_ln", [True, False])
def test_error_term_leaves_logits_unchanged_and_edits_propagate(models, hf, fold_ln):
    model = models[fold_ln]
    batch = tokens(model)
    saes = [make("topk", "blocks.0.hook_resid_post", fold_ln=True),
            make("standard", "blocks.1.ln2.hook_normalized", fold_ln=True, hook_out="blocks.1.hook_mlp_out"),
            make("jumprelu", "blocks.1.attn.hook_z", fold_ln=fold_ln),
            make("topk", "blocks.1.hook_attn_out", fold_ln=fold_ln)]
    with torch.no_grad():
        clean = model(batch)
        with interp.splice(model, saes, error_term=True) as spliced:
            same = model(batch)
        assert (same - clean).abs().max() < 1e-5
        f = spliced.features[0]
        feature = int((f != 0).float().sum((0, 1)).argmax())  # the feature most often active
        with interp.splice(model, saes, error_term=True, ablate=[(0, feature)]):
            ablated = model(batch)
        # Hugging Face: the clean run plus decode(f with the feature zeroed) - decode(f), at blocks.0's output
        s = saes[0]

        def edit(h):
            x = centred(h)
            f = s.encode(x)
            f2 = f.clone()
            f2[..., feature] = 0
            return h + s.decode(f2) - s.decode(f)

        want = hf_logits(hf, batch, resid=(1, edit))
    mask = batch.attention_mask
    assert (ablated.log_softmax(-1) - want.log_softmax(-1))[mask].abs().max() < 1e-4
    assert (ablated - clean)[mask].abs().max() > 1e-3


def test_gradients_flow_and_hooks_are_scoped(models):
    model = models[True]
    batch = tokens(model)
    sae = make("topk", "blocks.0.hook_resid_post", fold_ln=True)
    with torch.enable_grad():
        with interp.splice(model, sae, error_term=True, steer={3: 2.0}) as spliced:
            logits = model(batch)
            spliced.features[0].retain_grad()
        logits[0, -1].logsumexp(-1).backward()
    assert sae.W_dec.grad is not None and sae.W_dec.grad.abs().sum() > 0
    assert spliced.features[0].grad.abs().sum() > 0
    with pytest.raises(RuntimeError):
        with interp.splice(model, sae):
            raise RuntimeError("boom")
    assert not model.has_hooks


def test_refusals(models):
    raw_trained = make("topk", "blocks.0.hook_resid_post", fold_ln=False)
    with pytest.raises(InterpError, match="trained with fold_ln=False; this model has fold_ln=True"):
        with interp.splice(models[True], raw_trained):
            pass
    ln_raw = make("topk", "blocks.0.ln2.hook_normalized", fold_ln=False)
    with pytest.raises(InterpError, match="LayerNorm's gain and bias"):
        with interp.splice(models[True], ln_raw):
            pass
    unknown = make("topk", "blocks.0.hook_resid_post", fold_ln=None)
    with pytest.raises(InterpError, match="weight mode this SAE was trained in is unknown"):
        with interp.splice(models[False], unknown):
            pass
    with interp.splice(models[False], make("topk", "blocks.0.attn.hook_z", fold_ln=None)):
        pass  # hook_z is the same in both modes: no mode needed
    sae = make("topk", "blocks.0.hook_resid_post", fold_ln=True)
    with pytest.raises(InterpError, match="feature 999 out of range"):
        with interp.splice(models[True], sae, ablate=[999]):
            pass
    with pytest.raises(InterpError, match="name the SAE too"):
        with interp.splice(models[True], [sae, make("topk", "blocks.1.hook_resid_post", fold_ln=True)], ablate=[3]):
            pass
    assert not models[True].has_hooks
