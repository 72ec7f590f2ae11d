"""Benchmarks of feature pages: every feature of a 1,024-latent SAE on interp-tiny over 1M tokens.

The pages cost what their pass over the text costs — tokenizing, the forward passes up to the SAE's
hook point, the SAE's encoder — plus the statistics (:class:`~interp.features.stats.FeatureStats`)
and the page building. The baseline is that pass without the statistics ("harvest": the same
windows, batches, forward passes and encoder, the activations dropped) and the forward passes alone,
timed in interleaved triples; the median of the per-triple ratios and their spread. Peak memory
(resident set above the start) at 100k and at 1M tokens shows that it does not grow with the text.

``INTERP_BENCH_PAGES_TOKENS`` (e.g. ``200k``) runs a shorter text.
"""

from __future__ import annotations

import math
import os
import statistics

import torch

from .core import Context, Ratio, Row, peak_memory, section, timed

HOOK = "blocks.0.hook_resid_post"


def _setup():
    from ..corpus import documents
    from ..features import SAE, SAEConfig
    from ..loading import load

    model = load("interp-tiny")
    # A TopK SAE (k = 32 active latents per token, as trained SAEs of this size have) with random weights:
    # the statistics' cost depends on the number of firings, not on what the features mean.
    sae = SAE(SAEConfig("topk", d_in=model.cfg.d_model, d_sae=1024, k=32, hook_name=HOOK, fold_ln=True), seed=0)
    docs = documents(split="train")
    return model, sae, docs


def _harvest(model, sae, docs, tokens: int, encode: bool = True) -> int:
    """The pages' pass over the text without the statistics: the same windows, batches and forward passes."""
    from ..corpus import token_windows

    n_ctx = min(model.cfg.n_ctx, 128)
    batch_size = max(1, min(256, (1 << 24) // (n_ctx * sae.d_sae)))
    windows = token_windows(model.tokenizer, docs, n_ctx, limit=math.ceil(tokens / n_ctx))
    binding = sae.bind(model)
    seen = 0
    while True:
        batch = [w for _, w in zip(range(batch_size), windows)]
        if not batch:
            return seen
        toks = torch.stack(batch)
        with torch.no_grad():
            _, cache = model.run(toks, names=[HOOK], logits=False)
            if encode:
                sae.encode(binding.input(cache[HOOK]))
        seen += toks.numel()


@section("pages")
def bench_pages(ctx: Context) -> list[Row]:
    """Pages for every feature over 1M tokens / the same pass without statistics; peak memory 100k vs 1M tokens."""
    from ..cli.features import token_count
    from ..report.feature_pages import dashboard

    model, sae, docs = _setup()
    n = token_count(os.environ.get("INTERP_BENCH_PAGES_TOKENS", "1M"))
    small = max(1, n // 10)
    text_tokens = 711_000  # the train split, cycled for longer runs
    docs = docs * math.ceil(n / text_tokens)
    pages = lambda k: dashboard(model, sae, docs, tokens=k, progress=False)  # noqa: E731
    _harvest(model, sae, docs, 20_000)  # warm up
    pages(20_000)
    # Interleaved triples (forward, forward + encoder, pages): adjacent runs see the same load, and each
    # triple's ratios cancel most of the drift; medians over the triples, with their spread.
    times: dict[str, list[float]] = {"forward": [], "harvest": [], "pages": []}
    mb_big = 0.0
    for _ in range(3):
        times["forward"].append(timed(lambda: _harvest(model, sae, docs, n, encode=False))[1])
        times["harvest"].append(timed(lambda: _harvest(model, sae, docs, n))[1])
        (result, mb), t = timed(lambda: peak_memory(lambda: pages(n)))
        times["pages"].append(t)
        mb_big = max(mb_big, mb)
    small_result, mb_small = peak_memory(lambda: pages(small))

    def ratio(base: str) -> Ratio:
        r = [p / b for p, b in zip(times["pages"], times[base])]
        return Ratio(statistics.median(r), min(r), max(r), statistics.median(times["pages"]),
                     statistics.median(times[base]), len(r))

    vs_pass, vs_forward = ratio("harvest"), ratio("forward")
    size = f"{result.meta['n_tokens'] / 1e6:.2f}M tokens, {len(result)} features"
    return [
        Row("pages", f"pages, every feature / forward + encoder pass ({size})", vs_pass.median, target="≤ 1.5",
            ok=vs_pass.median <= 1.5, detail=vs_pass.detail()),
        Row("pages", f"pages, every feature / forward passes alone ({size})", vs_forward.median,
            detail=vs_forward.detail()),
        Row("pages", f"peak memory: pages over {result.meta['n_tokens'] / 1e6:.2f}M / "
                     f"{small_result.meta['n_tokens'] / 1e6:.2f}M tokens", mb_big / max(mb_small, 1.0),
            target="≤ 1.2", ok=mb_big <= 1.2 * max(mb_small, 1.0), detail=f"{mb_big:.0f} MB vs {mb_small:.0f} MB"),
    ]
