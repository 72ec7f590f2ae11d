"""``interp bench``: speed and memory measured side by side, printed as ratios.

Machines are noisy and absolute times drift, so every figure is a ratio of two
things measured in the same run on the same random-weight GPT-2-small-shaped
model (same compute as the real GPT-2 small). Each section is a function
``(ctx) -> list[Row]`` registered in :data:`SECTIONS`.
"""

from __future__ import annotations

import functools
import gc
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class Row:
    """One printed figure: a ratio (or a value) with its target."""

    section: str
    what: str
    value: float
    unit: str = "×"
    target: Optional[str] = None
    ok: Optional[bool] = None
    detail: str = ""

    def line(self) -> str:
        verdict = "" if self.ok is None else ("  ok" if self.ok else "  MISSED")
        target = f"  (target {self.target})" if self.target else ""
        detail = f"   [{self.detail}]" if self.detail else ""
        return f"{self.section:<8} {self.what:<58} {self.value:8.3f}{self.unit}{target}{verdict}{detail}"


def timed(fn: Callable, repeat: int = 1):
    """(result, best wall-clock seconds over ``repeat`` runs)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory(fn: Callable):
    """(result, peak resident memory in MB above what the process held when ``fn`` started).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so it works for
    successive measurements in one process on Linux.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _vm_hwm_mb()
    result = fn()
    return result, _vm_hwm_mb() - base


class Context:
    """What the sections share: one random GPT-2 small (HF and ours) and its inputs, built lazily."""

    def __init__(self, n_prompts: int = 16, n_pos: int = 256, seed: int = 0):
        self.n_prompts, self.n_pos, self.seed = n_prompts, n_pos, seed

    @functools.cached_property
    def hf_and_tokenizer(self):
        from .testing import random_gpt2_small_hf

        return random_gpt2_small_hf(self.seed)

    @property
    def hf_model(self):
        return self.hf_and_tokenizer[0]

    @functools.cached_property
    def model(self):
        from .loading import load

        hf_model, tok = self.hf_and_tokenizer
        # Built outside inference mode even when first asked for inside it: inference
        # tensors as weights would break analyses that track tensor versions.
        with torch.inference_mode(False):
            return load(hf_model, tokenizer=tok, fold_ln=True)

    def tokens(self, n_prompts: Optional[int] = None, n_pos: Optional[int] = None, seed: int = 0) -> torch.Tensor:
        """Random token ids ``[n_prompts, n_pos]`` with BOS first."""
        g = torch.Generator().manual_seed(seed)
        n, p = n_prompts or self.n_prompts, n_pos or self.n_pos
        toks = torch.randint(1, 50257, (n, p), generator=g)
        toks[:, 0] = 50256
        return toks

    @functools.lru_cache(maxsize=4)
    def hf_forward_seconds(self, n_prompts: int, n_pos: int) -> float:
        """Hugging Face eager forward (logits) of the batch: the 'plain forward pass' baseline."""
        toks = self.tokens(n_prompts, n_pos)
        with torch.inference_mode():
            return timed(lambda: self.hf_model(toks).logits)[1]


#: section name -> function(ctx) -> list[Row]. Sections of the analyses register here.
SECTIONS: dict[str, Callable[[Context], list[Row]]] = {}


def section(name: str):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


@section("forward")
def bench_forward(ctx: Context) -> list[Row]:
    """Our forward pass vs Hugging Face's eager forward on the same batch."""
    toks = ctx.tokens()
    with torch.inference_mode():
        hf_s = ctx.hf_forward_seconds(ctx.n_prompts, ctx.n_pos)
        _, ours_s = timed(lambda: ctx.model(toks))
    return [Row("forward", f"our forward / HF eager forward ({ctx.n_prompts}×{ctx.n_pos})", ours_s / hf_s,
                detail=f"{ours_s:.2f}s vs {hf_s:.2f}s")]


@section("lens")
def bench_lens(ctx: Context) -> list[Row]:
    """Logit lens at the last position (L+1 and 2L+1 boundaries) vs a plain forward pass (logits)."""
    from analyses.logit_lens import direct_logit_attribution, logit_lens, pinv_unembedding

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
    """Strings that tokenize to exactly ``n_pos`` tokens (with BOS): ``r + r`` of whole-word tokens.

    ``detect_head`` takes strings only and re-tokenizes them; prompts made of
    space-prefixed word tokens that survive decode → encode give it and us the
    very same tokens (checked below), so both sides score identical inputs.
    """
    tok = model.tokenizer
    words = [i for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
             if t.startswith("Ġ") and t[1:].isalpha() and i < model.cfg.d_vocab
             and tok(tok.decode([i]), add_special_tokens=False)["input_ids"] == [i]]
    g = torch.Generator().manual_seed(seed)
    body = n_pos - 1
    half = (body + 1) // 2
    prompts = []
    for _ in range(n_prompts):
        r = [words[j] for j in torch.randperm(len(words), generator=g)[:half].tolist()]
        prompts.append(tok.decode((r + r)[:body]))
    ours = model.tokenize(prompts).tokens
    theirs = model.bridge.to_tokens(prompts)
    if ours.shape != (n_prompts, n_pos) or not torch.equal(ours, theirs.to(ours.device)):
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

    from .ablation import ablate, scan
    from .metrics import LogitDiff, Loss

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


def run(only: Optional[list[str]] = None, n_prompts: int = 16, n_pos: int = 256, threads: Optional[int] = None) -> list[Row]:
    """Run the chosen sections (all by default) and print each row as it comes."""
    from .errors import InterpError

    if threads:
        torch.set_num_threads(threads)
    names = only or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise InterpError(f"unknown benchmark section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    ctx = Context(n_prompts, n_pos)
    rows: list[Row] = []
    print(f"interp bench: random GPT-2 small shape, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in names:
        for row in SECTIONS[name](ctx):
            print(row.line(), flush=True)
            rows.append(row)
    return rows
