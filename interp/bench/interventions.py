"""Benchmarks of the forward pass and the interventions: ablation scans, patching."""

from __future__ import annotations

import contextlib
import io
import time

import torch

from .core import Context, Row, compare, section, timed


@section("forward")
def bench_forward(ctx: Context) -> list[Row]:
    """Our forward pass vs Hugging Face's eager forward on the same batch, in interleaved pairs."""
    toks = ctx.tokens()
    with torch.inference_mode():
        ratio, _ = compare(lambda: ctx.model(toks), lambda: ctx.hf_model(toks).logits, pairs=3)
    return [Row("forward", f"our forward / HF eager forward ({ctx.n_prompts}×{ctx.n_pos})", ratio.median,
                detail=ratio.detail())]


# ---- ablate (interp.ablation): scanning every head, fast path vs the naive loop
@section("ablate")
def bench_ablate(ctx: Context) -> list[Row]:
    """A full scan of every head with the fast path vs the naive loop, for a whole-text and a last-position metric.

    The naive loop: for each head, one full forward of the batch with a zero-ablation
    hook, full logits, then the metric. Every head costs it the same (one full forward),
    so it is timed on two heads per layer and scaled to all heads; the fast scan runs
    on every head. The sampled heads also check that both give the same numbers.
    """
    import os

    from ..ablation import ablate
    from ..metrics import LogitDiff, Loss
    from ..scan import scan

    model = ctx.model
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n_pos = min(ctx.n_pos, 128)  # the size: 16 prompts × 128 tokens
    toks = ctx.tokens(ctx.n_prompts, n_pos)
    batch = model.to_batch(toks)
    metrics = {"loss": Loss().bind(model), "logit_diff": LogitDiff(11, 13).bind(model)}
    every = [(l, h) for l in range(L) for h in range(H)]
    # INTERP_BENCH_ABLATE_NAIVE=all times the naive loop on every head (~8 min more).
    full_naive = os.environ.get("INTERP_BENCH_ABLATE_NAIVE") == "all"
    sample = every if full_naive else [(l, h) for l in range(L) for h in (0, H - 1)]
    naive = {"forward": 0.0, "loss": 0.0, "logit_diff": 0.0}
    naive_values: dict = {name: {} for name in metrics}

    def naive_loop(heads):
        for head in heads:
            t0 = time.perf_counter()
            with ablate(model, [head]):
                logits = model(toks)
            naive["forward"] += time.perf_counter() - t0
            for name, metric in metrics.items():
                t0 = time.perf_counter()
                naive_values[name][head] = float(metric.from_logits(model, logits, batch))
                naive[name] += time.perf_counter() - t0
            del logits

    fast: dict = {}
    with torch.inference_mode():
        # Interleaved (naive, fast, naive, fast) so drifting machine load hits both alike.
        half = len(sample) // 2
        naive_loop(sample[:half])
        fast["loss"] = timed(lambda: scan(model, toks, metrics["loss"], progress=False))
        naive_loop(sample[half:])
        fast["logit_diff"] = timed(lambda: scan(model, toks, metrics["logit_diff"], progress=False))
    scale = len(every) / len(sample)
    rows, worst = [], 0.0
    for name, target in (("loss", 0.75), ("logit_diff", 0.5)):
        df, fast_s = fast[name]
        naive_s = (naive["forward"] + naive[name]) * scale
        got = df.set_index(["layer", "head"])["ablated"]
        worst = max(worst, max(abs(got[head] - v) for head, v in naive_values[name].items()))
        how = "every head" if full_naive else f"{len(sample)} heads × {scale:.0f}"
        what = "whole-text loss" if name == "loss" else "last-position logit diff"
        rows.append(Row("ablate", f"scan {len(every)} heads, {what}: fast / naive loop", fast_s / naive_s,
                        target=f"≤ {target}", ok=fast_s / naive_s <= target,
                        detail=f"{fast_s:.1f}s vs {naive_s:.1f}s ({how}); {ctx.n_prompts}×{n_pos}"))
    rows.append(Row("ablate", "max |fast − naive| over the naive loop's heads", worst, unit="",
                    target="≤ 1e-4 (float32)", ok=worst <= 1e-4, detail=f"{worst:.1e}, loss and logit diff"))
    return rows


# ---- patch (interp.patching): every head × every position, fast path vs the naive loop vs TransformerLens
@section("patch")
def bench_patch(ctx: Context) -> list[Row]:
    """Activation patching of each head's output at each position (the issue's size: 8 prompts × 64 tokens).

    The whole job is ``n_layers · n_heads · pos`` sites (9216 for GPT-2 small): about an hour of the
    fast path on two cores, and several for the others. So each side is timed on sites spread evenly
    over the job and scaled to all of it: the fast path on every head at every eighth position (a
    site's cost depends on its layer, not on which head), the naive loop (one full patched forward
    per site, full logits, then the metric) on two heads per layer, TransformerLens's
    ``generic_activation_patch`` with its head-and-position setter (what
    ``get_act_patch_attn_head_out_by_pos`` runs per site) on six sites; every naive and
    TransformerLens site is also checked against the fast path's number.
    """
    import pandas as pd
    from transformer_lens import patching

    from ..metrics import LogitDiff
    from ..patching import patch

    model = ctx.model
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n, P = 8, min(ctx.n_pos, 64)
    clean = ctx.tokens(n, P, seed=1)
    corrupted = clean.clone()
    corrupted[:, 1 : P // 2] = ctx.tokens(n, P, seed=2)[:, 1 : P // 2]
    metric = LogitDiff(11, 13).bind(model)
    kb = model.to_batch(corrupted)
    positions = list(range(P - 1, -1, -8))[::-1]  # every eighth position, the last one included
    sample = [(l, h, p) for l in range(L) for h, p in ((l % H, P - 1), ((l + 5) % H, positions[0]))]
    with torch.inference_mode():
        _, clean_z = model.run(clean, names="z", logits=False)
        # Interleaved halves (naive, fast, naive, fast): each pair's per-site ratio sees the same machine load.
        fast_s, naive_s, worst, got, ratios = 0.0, 0.0, 0.0, {}, []
        for half in (0, 1):
            n_s = 0.0
            for l, h, p in sample[half::2]:
                def put(z, name, l=l, h=h, p=p):
                    z = z.clone()
                    z[:, p, h] = clean_z["z", l][:, p, h]
                    return z

                value, s = timed(lambda: float(metric.from_logits(model, model(corrupted, hooks=[(("z", l), put)]), kb)))
                n_s += s
                got[("naive", l, h, p)] = value
            df, f_s = timed(lambda: patch(model, clean, corrupted, metric, site="z", by="head_pos",
                                          positions=positions[half::2], progress=False))
            got.update({(l, h, p): v for (l, h, p), v in df.set_index(["layer", "head", "position"])["value"].items()})
            ratios.append((f_s / (L * H * len(positions[half::2]))) / (n_s / len(sample[half::2])))
            fast_s, naive_s = fast_s + f_s, naive_s + n_s
        for l, h, p in sample:
            worst = max(worst, abs(got[("naive", l, h, p)] - float(got[(l, h, p)])))
        _, clean_cache = model.bridge.run_with_cache(clean)
        tl_s, tl_sample = 0.0, sample[::4]
        for l, h, p in tl_sample:
            index = pd.DataFrame({"layer": [l], "pos": [p], "head_index": [h]})
            with contextlib.redirect_stderr(io.StringIO()):  # its own progress bar, one per site
                out, s = timed(lambda: patching.generic_activation_patch(
                    model.bridge, corrupted, clean_cache, lambda lg: metric.from_logits(model, lg, kb),
                    patching.layer_pos_head_vector_patch_setter, "z", index_df=index))
            tl_s += s
            worst = max(worst, abs(float(out[0]) - float(got[(l, h, p)])))
    sites, timed_sites = L * H * P, L * H * len(positions)
    fast_all = fast_s * sites / timed_sites
    naive_all = naive_s * sites / len(sample)
    tl_all = tl_s * sites / len(tl_sample)
    size = f"{n}×{P}, {sites} sites"
    ratio = sum(ratios) / len(ratios)
    return [
        Row("patch", f"every head × position: fast / naive loop ({size})", ratio, target="≤ 0.5",
            ok=ratio <= 0.5,
            detail=f"mean of 2 interleaved halves, spread {min(ratios):.3f}–{max(ratios):.3f}; {fast_all:.0f}s "
                   f"({timed_sites} sites timed) vs {naive_all:.0f}s ({len(sample)} sites timed)"),
        Row("patch", f"every head × position: TransformerLens / fast ({size})", tl_all / fast_all, target="≥ 3",
            ok=tl_all / fast_all >= 3, detail=f"{tl_all:.0f}s ({len(tl_sample)} sites timed) vs {fast_all:.0f}s"),
        Row("patch", "max |fast − naive|, |fast − TransformerLens| over the sampled sites", worst, unit="",
            target="≤ 1e-4 (float32)", ok=worst <= 1e-4, detail=f"{worst:.1e}"),
    ]
