"""Benchmarks of attribution patching (interp.attribution): cost against one forward + backward, ranking quality."""

from __future__ import annotations

import torch

from .core import Context, Row, compare, section, timed


@section("attribute")
def bench_attribute(ctx: Context) -> list[Row]:
    """Edge attribution for every edge, EAP and EAP-IG (5 steps), against one forward + backward pass.

    The issue's size: 8 prompt pairs × 64 tokens (corrupted: the first half of each prompt
    replaced). The baseline is one forward + backward of the same batch through our model: the
    metric's gradient read at the embeddings (:func:`interp.gradients.read_gradients`), so it
    differentiates through every block. Each method is timed against the baseline in interleaved pairs
    (baseline, method, baseline, method, …), and the median of the pairs' ratios is printed with their
    spread: one timing against one is noise on a shared machine. Ranking quality: the Spearman correlation, over every head, between its
    node attribution and its exact effect from the fast patching scan (each head's output patched
    in, all positions); on random weights the effects are small and unstructured, so read it as a
    check that the estimate tracks the truth, not as a figure for GPT-2.
    """
    from ..attribution import attribute
    from ..gradients import read_gradients
    from ..graph import Graph
    from ..metrics import LogitDiff
    from ..patching import patch

    model = ctx.model
    n, P = 8, min(ctx.n_pos, 64)
    clean = ctx.tokens(n, P, seed=1)
    corrupted = clean.clone()
    corrupted[:, 1 : P // 2] = ctx.tokens(n, P, seed=2)[:, 1 : P // 2]
    metric = LogitDiff(11, 13).bind(model)
    def fb():
        return read_gradients(model, corrupted, ["resid_pre.0"], metric)

    eap, _ = compare(lambda: attribute(model, clean, corrupted, metric, method="eap", progress=False), fb)
    ig, _ = compare(lambda: attribute(model, clean, corrupted, metric, method="eap-ig", steps=5, progress=False), fb)
    with torch.inference_mode():
        exact, exact_s = timed(lambda: patch(model, clean, corrupted, metric, site="z", by="head", progress=False))
    exact = exact.assign(node=[f"L{l}H{h}" for l, h in zip(exact["layer"], exact["head"])]).set_index("node")["value"]
    rho = {}
    for name, method in (("eap", "eap"), ("ig", "eap-ig")):
        nodes = attribute(model, clean, corrupted, metric, level="node", method=method, progress=False)
        heads = nodes[nodes["kind"] == "head"].set_index("node")["score"]
        # Spearman: Pearson of the ranks (pandas' method="spearman" wants scipy)
        rho[name] = float(heads.rank().corr(exact.reindex(heads.index).rank()))
    n_edges = int(Graph(model.cfg.n_layers, model.cfg.n_heads).valid.sum())
    size = f"{n}×{P}, {n_edges} edges"
    fb_s = eap.baseline_s
    return [
        Row("attribute", f"EAP, every edge / one forward+backward ({size})", eap.median, target="≤ 4",
            ok=eap.median <= 4, detail=eap.detail()),
        Row("attribute", f"EAP-IG 5 steps, every edge / one forward+backward ({size})", ig.median,
            target="≤ 12", ok=ig.median <= 12, detail=ig.detail()),
        Row("attribute", "exact patching scan of every head / one forward+backward", exact_s / fb_s,
            detail=f"{exact_s:.2f}s: what the {model.cfg.n_layers * model.cfg.n_heads} head estimates replace"),
        Row("attribute", "Spearman(EAP head scores, exact head effects)", rho["eap"], unit="",
            detail="patching scan, site z, all positions"),
        Row("attribute", "Spearman(EAP-IG head scores, exact head effects)", rho["ig"], unit=""),
    ]
