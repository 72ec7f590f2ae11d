"""The wrapper's forward pass: parity with Hugging Face, padding, hooks, partial runs."""

import pytest
import torch

import interp
from interp import InterpError

PROMPTS = ["The cat sat on the mat.", "def f(x):\n    return x", "A much longer prompt than the others, padded."]


def hf_logits(hf_model, tokens):
    return hf_model(tokens).logits


def test_parity_single_prompt_raw(small_hf, small_raw):
    hf_model, _ = small_hf
    batch = small_raw.tokenize(PROMPTS[0])
    ours, _ = small_raw.run(batch)
    assert torch.allclose(ours, hf_logits(hf_model, batch.tokens), atol=1e-4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_parity_batched_padded_raw(small_hf, small_raw, padding_side):
    """Each prompt of a padded batch gives, at its real tokens, the logits it gets alone."""
    hf_model, _ = small_hf
    batch = small_raw.tokenize(PROMPTS, padding_side=padding_side)
    assert batch.padded
    ours, _ = small_raw.run(batch)
    for i, prompt in enumerate(PROMPTS):
        alone = small_raw.tokenize(prompt).tokens
        ref = hf_logits(hf_model, alone)[0]
        got = ours[i][batch.attention_mask[i]]
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-4), (padding_side, i, (got - ref).abs().max())


def test_parity_gpt2_small_shape_padded(gpt2_small_hf):
    """GPT-2 small's exact shape, batched with left padding, against HF eager per prompt."""
    hf_model, tok = gpt2_small_hf
    model = interp.load(hf_model, tokenizer=tok, fold_ln=False)
    batch = model.tokenize(PROMPTS[:2], padding_side="left")
    ours, _ = model.run(batch)
    for i, prompt in enumerate(PROMPTS[:2]):
        ref = hf_logits(hf_model, model.tokenize(prompt).tokens)[0]
        assert torch.allclose(ours[i][batch.attention_mask[i]], ref, atol=1e-4)


def test_hf_own_padding_path_agrees(small_hf, small_raw):
    """HF given the same mask and position ids agrees with us on the padded batch itself."""
    hf_model, _ = small_hf
    batch = small_raw.tokenize(PROMPTS, padding_side="left")
    ref = hf_model(batch.tokens, attention_mask=batch.attention_mask.long(), position_ids=batch.position_ids).logits
    ours, _ = small_raw.run(batch)
    m = batch.attention_mask
    assert torch.allclose(ours[m], ref[m], atol=1e-4)


def test_folded_logprobs_equal_hf_and_logits_shift_by_a_constant(small_hf, small_folded):
    hf_model, _ = small_hf
    batch = small_folded.tokenize(PROMPTS[1])
    ours, _ = small_folded.run(batch)
    ref = hf_logits(hf_model, batch.tokens)
    assert torch.allclose(ours.log_softmax(-1), ref.log_softmax(-1), atol=1e-4)
    shift = ours - ref
    assert torch.allclose(shift, shift.mean(-1, keepdim=True).expand_as(shift), atol=1e-4)
    assert not torch.allclose(ours, ref, atol=1e-3), "folding should centre the unembedding"


def test_folded_weights_really_are_folded(small_folded, small_raw):
    assert torch.allclose(small_folded.ln1_w, torch.ones_like(small_folded.ln1_w))
    assert not torch.allclose(small_raw.ln1_w, torch.ones_like(small_raw.ln1_w))
    assert small_folded.W_E.mean(-1).abs().max() < 1e-5  # writing weights centred


def test_hook_names_mean_what_transformerlens_means(small_raw):
    """Our pattern / resid hooks equal the TransformerBridge's own on the same input."""
    tokens = small_raw.tokenize(PROMPTS[0]).tokens
    names = ["blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    _, ours = small_raw.run(tokens, names=names)
    _, theirs = small_raw.bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    for n in names:
        assert torch.allclose(ours[n], theirs[n].reshape(ours[n].shape), atol=1e-5), n


def test_run_caches_only_what_is_asked(small_raw):
    logits, cache = small_raw.run("hello", names=["pattern.1", ("resid_pre", 0)])
    assert set(cache) == {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"}
    _, nothing = small_raw.run("hello")
    assert len(nothing) == 0
    with pytest.raises(InterpError, match="not cached"):
        cache["resid_post", 0]


def test_stop_and_start_at_layer(small_raw):
    tokens = small_raw.tokenize(PROMPTS[0]).tokens
    full, cache = small_raw.run(tokens, names=["resid_pre.1"])
    early = small_raw.forward(tokens, stop_at_layer=1)
    assert torch.allclose(early, cache["resid_pre", 1], atol=1e-6)
    resumed = small_raw.forward(early, start_at_layer=1)
    assert torch.allclose(resumed, full, atol=1e-5)


def test_partial_run_does_not_run_later_layers(small_raw):
    fired = []
    hooks = [(("resid_pre", layer), lambda x, n: fired.append(n)) for layer in range(2)]
    logits, cache = small_raw.run("hello there", names=["pattern.0"], hooks=hooks, logits=False)
    assert logits is None and fired == ["blocks.0.hook_resid_pre"]
    assert cache["pattern", 0].shape[1] == small_raw.cfg.n_heads


def test_logits_false_skips_the_unembedding(small_raw, monkeypatch):
    calls = []
    original = type(small_raw).unembed
    monkeypatch.setattr(type(small_raw), "unembed", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    logits, cache = small_raw.run("hello there", names=["resid_post.1"], logits=False)
    assert logits is None and calls == [] and "blocks.1.hook_resid_post" in cache
    final = small_raw.forward(small_raw.tokenize("hello there").tokens, stop_at_layer=small_raw.cfg.n_layers)
    assert torch.allclose(final, cache["resid_post", 1])


def test_hooks_can_edit_and_are_removed_after_an_exception(small_raw):
    tokens = small_raw.tokenize("some text").tokens
    clean = small_raw(tokens)

    def zero(x, name):
        return torch.zeros_like(x)

    with small_raw.hooks([("attn_out.0", zero)]):
        edited = small_raw(tokens)
    assert not torch.allclose(edited, clean)
    with pytest.raises(RuntimeError, match="boom"):
        with small_raw.hooks([("attn_out.0", zero)]):
            raise RuntimeError("boom")
    assert not small_raw.has_hooks
    assert torch.equal(small_raw(tokens), clean)


def test_nested_hooks_compose(small_raw):
    calls = []
    with small_raw.hooks([("resid_pre.0", lambda x, n: calls.append("outer"))]):
        with small_raw.hooks([("resid_pre.0", lambda x, n: calls.append("inner"))]):
            small_raw("x")
        small_raw("x")
    assert calls == ["outer", "inner", "outer"] and not small_raw.has_hooks


def test_hook_returning_wrong_shape_is_an_error_and_leaves_no_hook(small_raw):
    with pytest.raises(InterpError, match="returned shape"):
        small_raw.run("abc", hooks=[("resid_pre.0", lambda x, n: x[:, :1])])
    assert not small_raw.has_hooks


@pytest.mark.parametrize(
    "inputs, message",
    [
        ("", "prompt 0 is empty"),
        ([], "no prompts"),
        (["ok", ""], "prompt 1 is empty"),
        ("word " * 400, "context window is 128"),
        (torch.tensor([[1.5, 2.0]]), "integer token ids"),
        (torch.tensor([[1, 99999]]), "token id 99999 out of range"),
        (torch.zeros(1, 0, dtype=torch.long), "empty"),
        ([3], "prompt 0 is a int"),
    ],
)
def test_bad_inputs(small_raw, inputs, message):
    with pytest.raises(InterpError, match=message):
        small_raw.run(inputs)


@pytest.mark.parametrize("names, message", [(["nope"], "no hook point matches"), (["pattern.7"], "layer 7 out of range")])
def test_bad_hook_names(small_raw, names, message):
    with pytest.raises(InterpError, match=message):
        small_raw.run("hi", names=names)


def test_layer_and_head_range_errors(small_raw):
    with pytest.raises(InterpError, match=r"head 4 out of range: model has 4 heads per layer \(0–3\)"):
        small_raw.ov(0, 4)
    with pytest.raises(InterpError, match=r"layer -1 out of range: model has 2 layers"):
        small_raw.qk(-1, 0)
    with pytest.raises(InterpError, match="stop_at_layer 5"):
        small_raw.run("hi", stop_at_layer=5)


def test_the_core_never_imports_the_analyses():
    """interp's core (model, loading, hooks, interventions, metrics) stands below analyses: no import cycle."""
    import subprocess
    import sys

    core = ["interp.model", "interp.loading", "interp.hooks", "interp.tokens", "interp.engine", "interp.residual",
            "interp.ablation", "interp.scan", "interp.patching", "interp.path_patching", "interp.metrics",
            "interp.select", "interp.prompts", "interp.export", "interp.plotting"]
    code = ("import sys, importlib\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k == 'analyses' or k.startswith('analyses.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
