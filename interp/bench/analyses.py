"""Benchmarks of the analyses: the logit lens, head classification, OV circuits."""

from __future__ import annotations

import torch

from .core import Context, Row, peak_memory, section, timed


@section("lens")
def bench_lens(ctx: Context) -> list[Row]:
    """Logit lens at the last position (L+1 and 2L+1 boundaries) vs a plain forward pass (logits)."""
    from analyses.dla import direct_logit_attribution
    from analyses.logit_lens import logit_lens, pinv_unembedding

    toks, n, p = ctx.tokens(), ctx.n_prompts, ctx.n_pos
    n_b = 2 * ctx.model.cfg.n_layers + 1
    with torch.inference_mode():
        hf_s = ctx.hf_forward_seconds(n, p)
        ctx.model(toks[:2, :16])  # warm up
        # logit_lens runs its own forward (the blocks, without unembedding every position), then
        # unembeds only the boundaries × n_prompts vectors it kept: this is "forward + lens".
        # Interleaved, best of two, so load from other processes hits both sides alike.
        fwd_s = post_s = lens_s = float("inf")
        for _ in range(2):
            fwd_s = min(fwd_s, timed(lambda: ctx.model(toks))[1])
            post_s = min(post_s, timed(lambda: logit_lens(
                ctx.model, toks, k=5, target=11, resid_post_only=True, progress=False))[1])
            lens_s = min(lens_s, timed(lambda: logit_lens(ctx.model, toks, k=5, target=11, progress=False))[1])
        _, pinv_first_s = timed(lambda: pinv_unembedding(ctx.model))
        _, pinv_s = timed(lambda: logit_lens(ctx.model, toks, k=5, unembed="pinv", progress=False))
        _, fwd_mb = peak_memory(lambda: ctx.model(toks))
        _, lens_mb = peak_memory(lambda: logit_lens(ctx.model, toks, k=5, progress=False))
        _, dla_s = timed(lambda: direct_logit_attribution(ctx.model, toks, 11, contrast=12, progress=False))
    size = f"{n}×{p}"
    n_post = ctx.model.cfg.n_layers + 1
    return [
        Row("lens", f"forward + lens ({n_post} boundaries, last pos) / our forward ({size})", post_s / fwd_s,
            target="≤ 1.2", ok=post_s / fwd_s <= 1.2, detail=f"{post_s:.2f}s vs {fwd_s:.2f}s"),
        Row("lens", f"forward + lens ({n_b} boundaries, last pos) / our forward ({size})", lens_s / fwd_s,
            target="≤ 1.2", ok=lens_s / fwd_s <= 1.2, detail=f"{lens_s:.2f}s vs {fwd_s:.2f}s"),
        Row("lens", f"forward + lens ({n_b} boundaries) / HF eager forward ({size})", lens_s / hf_s,
            detail=f"{lens_s:.2f}s vs {hf_s:.2f}s"),
        Row("lens", f"pinv lens (with W_U comparison) / our forward ({size})", pinv_s / fwd_s,
            detail=f"{pinv_s:.2f}s; pinv(W_E) once per model {pinv_first_s:.2f}s"),
        Row("lens", f"peak memory: lens / our forward ({size})", lens_mb / max(fwd_mb, 1.0),
            detail=f"{lens_mb:.0f} MB vs {fwd_mb:.0f} MB"),
        Row("lens", f"direct logit attribution (logit diff, last pos) / our forward ({size})", dla_s / fwd_s,
            detail=f"{dla_s:.2f}s"),
    ]


# ---- heads (analyses.heads): classification vs a forward pass, vs detect_head, peak memory
def _heads_word_prompts(model, n_prompts: int, n_pos: int, seed: int = 0) -> list[str]:
    """``[BOS] + r + r`` as whole-word text (:func:`interp.prompts.repeated_words`), ``n_pos`` tokens or one fewer.

    ``detect_head`` takes strings only and re-tokenizes them; these give it and us the very same
    tokens (checked below), so both sides score identical inputs.
    """
    from ..prompts import repeated_words

    prompts = repeated_words(model, n_prompts, (n_pos - 1) // 2, seed=seed)
    ours = model.tokenize(prompts).tokens
    theirs = model.bridge.to_tokens(prompts)
    if not torch.equal(ours, theirs.to(ours.device)):
        raise RuntimeError("bench heads: word prompts do not tokenize to the same tokens for us and TransformerLens")
    return prompts


@section("heads")
def bench_heads(ctx: Context) -> list[Row]:
    """Head classification (all six kinds, one pass) vs a plain forward, vs detect_head's three kinds, memory."""
    from transformer_lens.head_detector import detect_head

    from analyses.heads import classify

    toks, n, p = ctx.tokens(), ctx.n_prompts, ctx.n_pos
    size = f"{n}×{p}"
    model = ctx.model
    tl_kinds = ("previous_token_head", "duplicate_token_head", "induction_head")

    def drop(fn):  # measure fn without keeping its (possibly large) result alive
        return lambda: (fn(), None)[1]

    with torch.inference_mode():
        hf_s = ctx.hf_forward_seconds(n, p)
        classify(model, toks[:2, :16], progress=False)  # warm up
        # Interleaved, best of two (HF: best of those and the shared baseline), so load from other
        # processes hits every side alike.
        own_s = ours_s = float("inf")
        for _ in range(2):
            hf_s = min(hf_s, timed(drop(lambda: ctx.hf_model(toks).logits))[1])
            own_s = min(own_s, timed(drop(lambda: model(toks)))[1])
            ours_s = min(ours_s, timed(drop(lambda: classify(model, toks, progress=False)))[1])
        prompts = _heads_word_prompts(model, n, p)
        _, ours_words_s = timed(drop(lambda: classify(model, prompts, progress=False)))
        _, tl_s = timed(drop(lambda: [detect_head(model.bridge, prompts, k) for k in tl_kinds]))
        _, ours_mb = peak_memory(drop(lambda: classify(model, toks, progress=False)))
        _, hf_mb = peak_memory(drop(lambda: ctx.hf_model(toks).logits))
        _, own_mb = peak_memory(drop(lambda: model(toks)))
    return [
        Row("heads", f"classify (6 kinds) / HF eager forward, logits ({size})", ours_s / hf_s,
            target="≤ 0.75", ok=ours_s / hf_s <= 0.75, detail=f"{ours_s:.2f}s vs {hf_s:.2f}s"),
        Row("heads", f"classify (6 kinds) / our forward, logits ({size})", ours_s / own_s,
            detail=f"{ours_s:.2f}s vs {own_s:.2f}s"),
        Row("heads", f"detect_head (3 kinds) / classify (6 kinds), same prompts ({size})", tl_s / ours_words_s,
            target="≥ 4", ok=tl_s / ours_words_s >= 4, detail=f"{tl_s:.2f}s vs {ours_words_s:.2f}s"),
        Row("heads", f"peak memory: classify / HF eager forward ({size})", ours_mb / max(hf_mb, 1.0),
            target="≤ 1.25", ok=ours_mb / max(hf_mb, 1.0) <= 1.25, detail=f"{ours_mb:.0f} MB vs {hf_mb:.0f} MB"),
        Row("heads", f"peak memory: classify / our forward ({size})", ours_mb / max(own_mb, 1.0),
            detail=f"{ours_mb:.0f} MB vs {own_mb:.0f} MB"),
    ]


# ---- ov (analyses.ov): all heads' W_OV spectra + copying scores, absolute time and memory targets
@section("ov")
def bench_ov(ctx: Context) -> list[Row]:
    """Spectra + copying scores of every head: seconds and MB (absolute targets), and vs TransformerLens's loop."""
    from analyses.ov import ov_summary

    model = ctx.model
    n = model.cfg.n_layers * model.cfg.n_heads
    with torch.inference_mode():
        _, ours_s = timed(lambda: ov_summary(model), repeat=2)
        _, ours_mb = peak_memory(lambda: ov_summary(model))
        # The obvious loop: per head, FactoredMatrix.svd() of W_OV and .eigenvalues of the full OV
        # circuit (which multiplies W_E W_V and W_O W_U, d_vocab × d_head each, for every head).
        # Timed on a few heads and scaled to all of them: the full loop takes minutes.
        sample = [(0, h) for h in range(4)]

        def tl_loop():
            for layer, head in sample:
                model.ov(layer, head).svd()
                model.full_ov(layer, head).eigenvalues

        _, tl_s = timed(tl_loop)
    tl_all = tl_s * n / len(sample)
    return [
        Row("ov", f"all {n} heads: W_OV spectra + copying scores, seconds", ours_s, unit=" s",
            target="< 10 s", ok=ours_s < 10),
        Row("ov", f"all {n} heads: peak memory above the loaded model, MB", ours_mb, unit=" MB",
            target="< 2048 MB", ok=ours_mb < 2048),
        Row("ov", f"TransformerLens per-head loop / ours ({n} heads)", tl_all / ours_s,
            detail=f"{tl_all:.1f}s (from {len(sample)} heads × {n // len(sample)}) vs {ours_s:.2f}s"),
    ]


