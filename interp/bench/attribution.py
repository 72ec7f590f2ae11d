"""Benchmarks of attribution patching (interp.attribution): cost against one forward + backward, ranking quality."""

from __future__ import annotations

import torch

from . import Context, Row, section, timed


@section("attribute")
def bench_attribute(ctx: Context) -> list[Row]:
    """Edge attribution for every edge, EAP and EAP-IG (5 steps), against one forward + backward pass.

    The issue's size: 8 prompt pairs × 64 tokens (corrupted: the first half of each prompt
    replaced). The baseline is one forward + backward of the same batch through our model: the
    metric's gradient read at the embeddings (:func:`interp.gradients.read_gradients`), so it
    differentiates through every block. Runs are interleaved (baseline, EAP, EAP-IG, twice) and the
    best of each is kept. Ranking quality: the Spearman correlation, over every head, between its
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
    best = {"fb": float("inf"), "eap": float("inf"), "ig": float("inf")}
    out = {}
    for _ in range(2):
        _, s = timed(lambda: read_gradients(model, corrupted, ["resid_pre.0"], metric))
        best["fb"] = min(best["fb"], s)
        out["eap"], s = timed(lambda: attribute(model, clean, corrupted, metric, method="eap", progress=False))
        best["eap"] = min(best["eap"], s)
        out["ig"], s = timed(lambda: attribute(model, clean, corrupted, metric, method="eap-ig", steps=5, progress=False))
        best["ig"] = min(best["ig"], s)
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
    fb = best["fb"]
    return [
        Row("attribute", f"EAP, every edge / one forward+backward ({size})", best["eap"] / fb, target="≤ 4",
            ok=best["eap"] / fb <= 4, detail=f"{best['eap']:.2f}s vs {fb:.2f}s"),
        Row("attribute", f"EAP-IG 5 steps, every edge / one forward+backward ({size})", best["ig"] / fb,
            target="≤ 12", ok=best["ig"] / fb <= 12, detail=f"{best['ig']:.2f}s vs {fb:.2f}s"),
        Row("attribute", "exact patching scan of every head / one forward+backward", exact_s / fb,
            detail=f"{exact_s:.2f}s: what the {model.cfg.n_layers * model.cfg.n_heads} head estimates replace"),
        Row("attribute", "Spearman(EAP head scores, exact head effects)", rho["eap"], unit="",
            detail="patching scan, site z, all positions"),
        Row("attribute", "Spearman(EAP-IG head scores, exact head effects)", rho["ig"], unit=""),
    ]
