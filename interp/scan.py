"""Scanning ablations: each head (or each layer, or your own sets of heads) removed in turn.

:func:`scan` tabulates how a metric changes when each variant is ablated, with any method
of :mod:`interp.ablation`.

Why the scan is fast and still exact
------------------------------------
Ablating a head of layer L changes nothing before layer L, and for the ``zero``,
``mean`` and ``resample`` methods layer L's attention output changes by a known
term: ``resid_mid' = resid_mid − z_h W_O[h] + z'_h W_O[h]``. So :func:`scan` runs the
clean model once, keeping each needed layer's ``resid_mid`` and the change in each
head's ``z``; each ablated variant then resumes at layer L's MLP with that change written
in (:class:`interp.engine.Engine` stacks the variants along the batch in chunks that bound
memory), and only the positions the metric reads are unembedded. The result equals the obvious loop (one full ablated forward per
head) to float rounding; ``fast=False`` runs that loop.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from . import hooks as hk
from . import select
from .ablation import Head, Ablator
from .engine import Engine, Stacked, Start, check_model
from .errors import InterpError
from .metrics import Metric, resolve_metric
from .model import HookedGPT2
from .tokens import Batch

__all__ = ["scan", "variant_label"]


def variant_label(model: HookedGPT2, heads: list[Head]) -> str:
    """'L4H11', 'L5' (every head of layer 5), 'L0H5+L5', or 'none'."""
    parts = []
    for layer in sorted({l for l, _ in heads}):
        mine = [h for l, h in heads if l == layer]
        parts += [f"L{layer}"] if len(mine) == model.cfg.n_heads else [f"L{layer}H{h}" for h in mine]
    return "+".join(parts) or "none"


def _variants(model: HookedGPT2, heads: Any, by: Any, variants: Any, together: bool) -> list[tuple[str, list[Head]]]:
    if variants is not None:
        if isinstance(variants, (str, tuple)) or not hasattr(variants, "__iter__"):
            raise InterpError(f"variants is a list of head sets (or a dict name -> heads), not {variants!r}")
        if heads is not None or by != "head" or together:
            raise InterpError("give either variants= (sets of heads ablated together) or heads=/by=/together=, not both")
        items = variants.items() if isinstance(variants, dict) else [(None, v) for v in variants]
        out = [(name, select.heads(model, v) if v else []) for name, v in items]
        return [(name if name is not None else variant_label(model, hs), hs) for name, hs in out]
    chosen = select.heads(model, heads) if heads is not None else [
        (l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    if by == "item":
        if heads is None:
            raise InterpError("by='item' ablates each item of heads= (e.g. '4.11,5.*') in turn: give heads")
        runs = [(variant_label(model, g), g) for g in select.head_groups(model, heads)]
    elif by == "head":
        runs = [(variant_label(model, [head]), [head]) for head in chosen]
    elif by == "layer":
        layers = sorted({l for l, _ in chosen})
        runs = [(variant_label(model, hs), hs) for hs in ([x for x in chosen if x[0] == l] for l in layers)]
    else:
        raise InterpError(f"by must be 'head' (each head alone), 'layer' (each layer's heads together) or 'item' "
                          f"(each item of heads=), not {by!r}")
    if together and len(runs) > 1:
        runs.append((variant_label(model, sorted(chosen)), sorted(chosen)))
    return runs


def scan(
    model: Any,
    inputs: Any,
    metric: Any = "loss",
    *,
    heads: Any = None,
    by: Any = "head",
    together: bool = False,
    variants: Any = None,
    method: Any = "zero",
    reference: Any = None,
    keys: Any = None,
    renormalize: bool = False,
    seed: int = 0,
    fast: bool = True,
    chunk_tokens: int = 8192,
    progress: Optional[bool] = None,
):
    """Ablate each head (or each layer, or each set of heads) in turn; tabulate the metric's change.

    Args:
        model: the model.
        inputs: prompts, token ids or a Batch to run.
        metric: ``"loss"`` (mean next-token loss over the text), a :class:`~interp.metrics.Metric`
            (``Loss(positions=…)``, ``LogitDiff(correct, wrong)``, ``Prob(target)``) or a function
            of the logits returning a scalar or one value per prompt.
        heads: the heads to scan (default: every head), in :mod:`interp.select`'s grammar.
        by: ``"head"``: each head alone; ``"layer"``: each layer's heads together; ``"item"``: each
            item of ``heads`` as written (``"4.11,5.*"``: L4H11, then layer 5's heads together).
        together: also ablate all the chosen heads at once (a last row), e.g. to compare a circuit
            with its parts.
        variants: instead of heads/by, your own sets of heads, each ablated together: a list of
            head lists, or a dict ``name -> heads``. An empty set is the clean run.
        method, reference, keys, renormalize, seed: as :func:`ablate`.
        fast: reuse the clean run up to each ablated layer (exact; see the module docs).
            ``False`` runs one full ablated forward per variant. A model with hooks attached
            is always scanned the slow way, since its hooks may act anywhere.
        chunk_tokens: how many tokens (variants × prompts × positions) one stacked pass may hold.
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        One row per variant: ``variant`` (``L4H11``, ``L4``, ``L0H5+L4H11`` or your name), ``layer``
        and ``head`` (where the variant has one), ``n_heads``, ``method``, ``metric``, ``clean``,
        ``ablated`` and ``delta = ablated − clean``.

    >>> from interp.testing import planted_model
    >>> from interp.prompts import repeated_tokens
    >>> from interp.metrics import Loss
    >>> model = planted_model()
    >>> tokens = repeated_tokens(model, n_prompts=4, half=10)   # [BOS] + r + r
    >>> df = scan(model, tokens, Loss(positions=slice(12, None)), progress=False)   # loss on the repeated half
    >>> print(df.nlargest(3, "delta")[["variant", "clean", "ablated", "delta"]].round(2).to_string(index=False))
    variant  clean  ablated  delta
       L1H0    0.0     3.47   3.46
       L0H0    0.0     3.26   3.26
       L0H1    0.0     0.00   0.00
    """
    import pandas as pd
    from tqdm.auto import tqdm

    check_model(model)
    runs = _variants(model, heads, by, variants, together)
    batch = model.to_batch(inputs)
    metric = resolve_metric(model, metric)
    layers = sorted({l for _, hs in runs for l, _ in hs})
    ablator = Ablator(model, method, layers, reference=reference, keys=keys, renormalize=renormalize, seed=seed)
    ablator.check_run(len(batch))
    engine = Engine(model, chunk_tokens)
    bar = tqdm(total=len(runs), desc=f"ablate ({method})", unit="variant", disable=None if progress is None else not progress)
    with torch.no_grad(), bar:
        if fast and not model.has_hooks:
            clean, values = _scan_fast(engine, batch, metric, ablator, [hs for _, hs in runs], bar)
        else:
            clean, values = _scan_naive(model, batch, metric, ablator, [hs for _, hs in runs], bar)
    rows = []
    for (name, hs), value in zip(runs, values):
        one_layer = len({l for l, _ in hs}) == 1
        rows.append({
            "variant": name, "layer": hs[0][0] if one_layer else pd.NA, "head": hs[0][1] if len(hs) == 1 else pd.NA,
            "n_heads": len(hs), "method": method, "metric": metric.name,
            "clean": clean, "ablated": value, "delta": value - clean,
        })
    df = pd.DataFrame(rows, columns=["variant", "layer", "head", "n_heads", "method", "metric", "clean", "ablated", "delta"])
    return select.tidy(df)


def _scan_naive(model, batch: Batch, metric: Metric, ablator: Ablator, runs: list, bar) -> tuple[float, list[float]]:
    """The obvious loop: one full forward per variant, every position unembedded."""
    clean = float(metric.from_logits(model, model(batch.tokens, attention_mask=batch.attention_mask), batch))
    values = []
    for hs in runs:
        with model.hooks(ablator.hooks(hs)):
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
        values.append(float(metric.from_logits(model, logits, batch)) if hs else clean)
        bar.update()
    return clean, values


def _scan_fast(engine: Engine, batch: Batch, metric: Metric, ablator: Ablator, runs: list, bar) -> tuple[float, list[float]]:
    """Clean run once; each variant resumes at its first ablated layer's MLP; stacked; few positions unembedded."""
    model, cfg = engine.model, engine.cfg
    B = len(batch)
    starts = sorted({hs[0][0] for hs in runs if hs})
    everyone = torch.ones(1, cfg.n_heads, dtype=torch.bool, device=cfg.device)
    dz: dict[int, Tensor] = {}  # per start layer: (ablated z − clean z) of every head, had it been ablated
    pattern_z: dict[int, Tensor] = {}
    v_stash: dict[int, Tensor] = {}

    def keep_dz(z: Tensor, name: str) -> None:
        layer = hk.layer_of(name)
        ablated = pattern_z.pop(layer) if ablator.point == "pattern" else ablator.replace(layer, z, everyone, B)
        dz[layer] = ablated - z

    def keep_v(v: Tensor, name: str) -> None:
        v_stash[hk.layer_of(name)] = v

    def ablated_pattern_z(pattern: Tensor, name: str) -> None:
        # Reduced inside the hook: keep each head's z under the ablated pattern, not the pattern itself.
        layer = hk.layer_of(name)
        edited = ablator.replace(layer, pattern, everyone, B)
        pattern_z[layer] = torch.einsum("bhqk,bkhd->bqhd", edited, v_stash.pop(layer))

    record = []
    for layer in starts:
        if ablator.point == "pattern":
            record += [(hk.name("v", layer), keep_v), (hk.name("pattern", layer), ablated_pattern_z)]
        record.append((hk.name("z", layer), keep_dz))
    base = engine.record(batch, [n for l in starts for n in Start(l, mid=True).names(cfg.n_layers)], record)
    clean = float(metric.from_resid(model, base.final, batch))

    def build(chunk: list[list[Head]], start: Start) -> Stacked:
        # How ablating each variant's heads of its first layer changes resid_mid: Σ_h (z'_h − z_h) W_O[h].
        delta = torch.stack([model.head_write(start.layer, dz[start.layer][:, :, hs], hs, sum_heads=True)
                             for hs in ([h for l, h in heads if l == start.layer] for heads in chunk)])
        return Stacked(delta, _later_hooks(model, ablator, chunk, start.layer, B))

    todo = [i for i, hs in enumerate(runs) if hs]
    got = engine.sweep(base, [runs[i] for i in todo], lambda hs: Start(hs[0][0], mid=True), build, metric, bar)
    values = {i: clean for i, hs in enumerate(runs) if not hs} | dict(zip(todo, got))
    bar.update(sum(1 for hs in runs if not hs))
    return clean, [values[i] for i in range(len(runs))]


def _later_hooks(model: HookedGPT2, ablator: Ablator, runs: list, start: int, group: int) -> list:
    """Hooks for variants whose heads span several layers: their heads after ``start``, row block by row block."""
    cfg, out = model.cfg, []
    for layer in sorted({l for hs in runs for l, _ in hs if l > start}):
        mask = torch.zeros(len(runs), cfg.n_heads, dtype=torch.bool, device=cfg.device)
        for k, hs in enumerate(runs):
            mask[k, [h for l, h in hs if l == layer]] = True
        rows = mask.repeat_interleave(group, 0)

        def fn(act: Tensor, name: str, layer: int = layer, rows: Tensor = rows) -> Tensor:
            return ablator.replace(layer, act, rows, group)

        out.append((hk.name(ablator.point, layer), fn))
    return out
