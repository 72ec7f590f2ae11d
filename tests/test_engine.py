"""The model's primitives (split q/k/v inputs, the MLP's input, LayerNorm scales, a head's write, q/k/v from a
stream) and the engine (resuming, stacking, reusing keys and values), against Hugging Face with torch hooks and
TransformerLens 4.3's own split-input hooks."""

import pytest
import torch

import interp
from interp import InterpError
from interp import hooks as hk
from interp.engine import Engine, Stacked, Start

TEXTS = ["the cat sat on the mat and the cat sat", "def f(x): return x + 1", "a b c d e f"]


@pytest.fixture(scope="module", params=["folded", "raw"])
def model(request, noisy, noisy_raw):
    return noisy if request.param == "folded" else noisy_raw


def test_split_inputs_untouched_change_nothing(model):
    """Hooking every split input, the MLP's input and every LayerNorm scale (returning them as they are)
    leaves the logits as they were: the per-head path computes the same q/k/v."""
    batch = model.tokenize(TEXTS, padding_side="left")
    plain = model(batch)
    names = [hk.name(s, l) for l in range(model.cfg.n_layers)
             for s in ("q_input", "k_input", "v_input", "mlp_in", "ln1_scale", "ln2_scale")] + ["ln_final.hook_scale"]
    seen = {}
    with model.hooks([(n, lambda x, name: seen.__setitem__(name, x.shape)) for n in names]):
        hooked = model(batch)
    assert torch.allclose(hooked, plain, atol=1e-10)
    B, P = batch.tokens.shape
    H, M = model.cfg.n_heads, model.cfg.d_model
    assert seen["blocks.0.hook_q_input"] == (B, P, H, M)
    assert seen["blocks.1.hook_mlp_in"] == (B, P, M)
    assert seen["blocks.0.ln2.hook_scale"] == (B, P, 1)


def test_editing_one_heads_key_input_equals_hugging_face(model, noisy_hf):
    """Adding a vector to head (1, 2)'s key input only: the same as Hugging Face with that head's slice of
    c_attn's key output recomputed from the edited stream (ln_1 applied by hand to the copy)."""
    hf, _ = noisy_hf
    from hf_reference import input_edited_logits

    batch = model.tokenize(TEXTS)
    g = torch.Generator().manual_seed(0)
    push = torch.randn(model.cfg.d_model, generator=g, dtype=torch.float64)

    def edit(x, name):
        x = x.clone()
        x[:, :, 2] += push
        return x

    with model.hooks([("blocks.1.hook_k_input", edit)]):
        ours = model(batch).log_softmax(-1)
    theirs = input_edited_logits(hf, batch.tokens, batch.attention_mask, 1, 2, "k", push).log_softmax(-1)
    real = batch.attention_mask
    assert torch.allclose(ours[real], theirs[real], atol=1e-9)
    assert not torch.allclose(ours, model(batch).log_softmax(-1), atol=1e-4)  # the edit mattered


def test_split_inputs_match_transformerlens(small_raw):
    """TransformerLens 4.3's bridge with use_split_qkv_input: the same edit at blocks.1.hook_v_input gives the
    same logits (both on Hugging Face's raw weights)."""
    bridge = small_raw.bridge
    bridge.set_use_split_qkv_input(True)
    try:
        tokens = small_raw.tokenize("the quick brown fox jumps").tokens
        push = torch.linspace(-1, 1, small_raw.cfg.d_model)

        def edit(x, hook=None, name=None):
            x = x.clone()
            x[:, :, 3] += push
            return x

        theirs = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_v_input", lambda x, hook: edit(x))])
        with small_raw.hooks([("blocks.1.hook_v_input", lambda x, name: edit(x))]):
            ours = small_raw(tokens)
        assert torch.allclose(ours, theirs, atol=1e-4)
        assert not torch.allclose(ours, small_raw(tokens), atol=1e-3)
    finally:
        bridge.set_use_split_qkv_input(False)


def test_frozen_layer_norm_scale_is_detached(model):
    """Returning a detached scale at every hook_scale freezes LayerNorm: the forward is unchanged and the
    gradient then no longer flows through the scale (circuit tracing's linearisation)."""
    batch = model.tokenize(TEXTS[:1])
    names = [hk.name(s, l) for l in range(model.cfg.n_layers) for s in ("ln1_scale", "ln2_scale")]
    with torch.enable_grad():
        resid = model(batch, stop_at_layer=1).detach().requires_grad_(True)
        with model.hooks([(n, lambda s, name: s.detach()) for n in names]):
            out = model(resid, start_at_layer=1)
        assert torch.allclose(out, model(resid, start_at_layer=1), atol=1e-10)
        g_frozen, = torch.autograd.grad(out[0, -1, 5], resid)
        g_live, = torch.autograd.grad(model(resid, start_at_layer=1)[0, -1, 5], resid)
    assert not torch.allclose(g_frozen, g_live, atol=1e-6)


def test_head_write_and_project_are_the_forward_pass(model):
    """head_write sums to hook_attn_out less b_O; project(resid_pre) equals hook_q/k/v."""
    batch = model.tokenize(TEXTS)
    _, cache = model.run(batch, names=["z.1", "attn_out.1", "resid_pre.1", "q.1", "k.1", "v.1"])
    writes = model.head_write(1, cache["z", 1])
    assert torch.allclose(writes.sum(-2) + model.b_O[1], cache["attn_out", 1], atol=1e-10)
    summed = model.head_write(1, cache["z", 1][:, :, [0, 2]], heads=[0, 2], sum_heads=True)
    assert torch.allclose(summed, writes[:, :, [0, 2]].sum(-2), atol=1e-10)
    x = cache["resid_pre", 1][:, :, None].expand(-1, -1, model.cfg.n_heads, -1)
    for w in "qkv":
        assert torch.allclose(model.project(1, w, x), cache[w, 1], atol=1e-10)
    assert torch.allclose(model.project(1, "k", x[:, :, :1], heads=[3])[:, :, 0], cache["k", 1][:, :, 3], atol=1e-10)


def test_receiver_grads_equal_autograd_through_the_split_inputs(model):
    """The engine's closed-form gradient at every receiver's own copy of the stream equals autograd's through the
    model's split q/k/v inputs and hook_mlp_in (the definition), for one run and for three stacked ones."""
    from interp.gradients import read_gradients
    from interp.metrics import Loss

    batch = model.tokenize(TEXTS, padding_side="left")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    engine = Engine(model)
    fast = [n for l in range(L) for n in (hk.name("resid_pre", l), *(hk.name(x, l) for x in "qkv"), hk.name("mlp_in", l))]
    split = [hk.name(f"{x}_input", l) for l in range(L) for x in "qkv"]
    for steps in (1, 3):
        stacked = type(batch)(batch.tokens.repeat(steps, 1), batch.attention_mask.repeat(steps, 1))
        got = read_gradients(model, stacked, fast + [hk.name("resid_post", L - 1)], Loss())
        want = read_gradients(model, stacked, split + [hk.name("mlp_in", l) for l in range(L)], Loss())
        for layer in range(L):
            ours = engine.receiver_grads(got.activations, got.gradients, layer, steps)
            for i, x in enumerate("qkv"):
                g = want.gradients[hk.name(f"{x}_input", layer)]  # [rows, pos, head, d_model]
                ref = g.reshape(steps, -1, *g.shape[1:]).sum(0).permute(2, 0, 1, 3)
                assert torch.allclose(ours[i * H : (i + 1) * H], ref, atol=1e-10)
            g = want.gradients[hk.name("mlp_in", layer)]
            assert torch.allclose(ours[3 * H], g.reshape(steps, -1, *g.shape[1:]).sum(0), atol=1e-10)
    with pytest.raises(InterpError, match="unknown LayerNorm 'ln3'"):
        model.ln_weights("ln3", 0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_resume_from_the_middle_of_a_block(model, side):
    """Start(L, mid=True): the stream is blocks.L.hook_resid_mid; the run starts at L's MLP."""
    engine = Engine(model)
    batch = model.tokenize(TEXTS, padding_side=side)
    run = engine.record(batch, names=["resid_mid.1"])
    fired = []
    spy = [(n, lambda x, name: fired.append(name)) for n in ("resid_pre.1", "z.1", "resid_mid.1", "mlp_out.1", "z.2")]
    resumed = engine.resume(run["resid_mid", 1], Start(1, mid=True), batch.attention_mask, spy)
    assert torch.equal(resumed, run.final)  # the same operations on the same numbers
    assert fired == ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.2.attn.hook_z"]
    assert torch.equal(engine.resume(run.final, Start(model.cfg.n_layers), batch.attention_mask), run.final)


@pytest.mark.parametrize("side", ["right", "left"])
def test_resuming_later_columns_reuses_keys_and_values(model, side):
    """Start(L, col=c): rerunning only columns c… over the recorded keys and values before c equals the full run."""
    engine = Engine(model)
    batch = model.tokenize(TEXTS, padding_side=side)
    start = Start(1, col=4)
    run = engine.record(batch, names=start.names(model.cfg.n_layers))
    past = {l: (run["k", l][:, :4], run["v", l][:, :4]) for l in range(1, model.cfg.n_layers)}
    tail = engine.resume(run["resid_pre", 1][:, 4:], start, batch.attention_mask, past=past)
    real = batch.attention_mask[:, 4:]
    assert torch.allclose(tail[real], run.final[:, 4:][real], atol=1e-10)


def test_sweep_equals_one_run_per_variant(model):
    """A sweep of variants (each adds its own vector to resid_mid of layer 1, some also ablate a later head),
    chunked two at a time, equals running each variant alone."""
    from interp.metrics import Loss

    batch = model.tokenize(TEXTS, padding_side="left")
    engine = Engine(model, chunk_tokens=2 * batch.tokens.numel())
    start = Start(1, mid=True)
    base = engine.record(batch, start.names(model.cfg.n_layers))
    g = torch.Generator().manual_seed(1)
    pushes = [torch.randn(model.cfg.d_model, generator=g, dtype=torch.float64) for _ in range(5)]
    metric = Loss()

    def build(chunk, start):
        delta = torch.stack([p.expand(*batch.tokens.shape, -1) for p in chunk])
        return Stacked(delta)

    got = engine.sweep(base, pushes, lambda p: start, build, metric)
    for p, value in zip(pushes, got):
        with model.hooks([("resid_mid.1", lambda x, name, p=p: x + p)]):
            want = float(metric.from_logits(model, model(batch), batch))
        assert value == pytest.approx(want, abs=1e-10)


def test_run_positions_are_token_positions_on_either_side(model):
    seen = {}
    for side in ("right", "left"):
        batch = model.tokenize(TEXTS, padding_side=side)
        with model.hooks([("z.0", lambda x, name, side=side: seen.__setitem__(side, model.run_positions()))]):
            model(batch)
        pos, real, first = seen[side]
        assert [p[r].tolist() for p, r in zip(pos, real)] == [list(range(n)) for n in batch.lengths.tolist()]
    with pytest.raises(InterpError, match="only defined inside a hook"):
        model.run_positions()


def test_engine_refuses_what_is_not_a_model():
    with pytest.raises(InterpError, match="model must be a HookedGPT2"):
        Engine(None)
    with pytest.raises(InterpError, match="chunk_tokens must be a positive int"):
        Engine(interp.testing.planted_model(), chunk_tokens=0)
