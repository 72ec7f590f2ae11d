"""What a feature means: its pages — top examples, activation intervals, histogram, logit effects.

:func:`dashboard` runs the model over text once (windows of ``n_ctx`` tokens, each starting with
BOS), encodes the activation at the SAE's hook point and feeds every feature's activations to
:class:`~interp.features.stats.FeatureStats` (bounded memory, the same result for any batching).
Then, per feature:

* density (the fraction of tokens where it is > 0; the BOS that starts each window is not
  counted), max and mean activation; a feature that never fired is *dead* and has no examples;
* the top examples (one per window: its largest activation) with ``left``/``right`` tokens of
  context and the feature's activation on each;
* examples sampled uniformly from ``n_bins`` equal-width activation intervals between 0 and the
  max (SAEDashboard's and Neuronpedia's "quantile" groups), with each interval's share of firings;
* the activation histogram;
* the output tokens it promotes and suppresses most by its direct effect on the logits
  (:func:`interp.features.effects.logit_effects` of its decoder row written into the residual
  stream; a transcoder writes into its output hook), with the effect's histogram over the vocabulary;
* for ``hook_z`` features, the weight of each head in the decoder row, and for each top example
  the direct feature attribution of every source token: the feature's pre-activation at the example's
  token decomposed over the positions attention reads, ``Σ_h pattern[h, q, s] · (v[s, h] ·
  W_enc[h, f])``, with ``pattern`` and ``v`` taken from the model's hooks in the same pass.

The result is a :class:`FeaturePages`: ``.to_json()`` (Neuronpedia's feature schema where it has
one, see docs/features.md), ``.html()`` (one self-contained page, :mod:`interp.report.features`),
``.table()``, and a notebook shows it inline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import hooks as hk
from ..errors import InterpError
from ..threads import one_thread
from ..features.effects import dfa_encoder, dfa_fn, logit_tables, resid_directions
from ..features.stats import FeatureStats

__all__ = ["dashboard", "FeaturePages", "SORTS"]

#: Metrics the feature list can be sorted by (largest first; ``index`` ascending).
SORTS = ("density", "max", "mean", "index")


# ---------------------------------------------------------------------------- the pages
@dataclass
class FeaturePages:
    """Feature pages of one SAE over some text (see the module docs); :meth:`to_dict` is the JSON.

    Attributes:
        meta: the model, the SAE, the text and the settings (the JSON's top level).
        features: one dict per feature shown, in index order, with Neuronpedia's field names.
        sort: the metric the page's list is sorted by at first.
    """

    meta: dict
    features: list = field(default_factory=list)
    sort: str = "density"

    def __len__(self) -> int:
        return len(self.features)

    def indices(self) -> list[int]:
        """The feature indices shown, in order."""
        return [f["index"] for f in self.features]

    def feature(self, index: int) -> dict:
        """The page of feature ``index`` (as in the JSON)."""
        for f in self.features:
            if f["index"] == index:
                return f
        raise InterpError(f"feature {index} is not in these pages (they show {len(self)} features)")

    def table(self) -> pd.DataFrame:
        """One row per feature: ``index, dead, density, max_act, mean_act, n_nonzero, top_token, promotes``."""
        rows = []
        for f in self.features:
            top = f["activations"][0] if f["activations"] and f["activations"][0]["binMin"] == -1 else None
            rows.append({
                "index": f["index"], "dead": f["dead"], "density": f["frac_nonzero"], "max_act": f["maxActApprox"],
                "mean_act": f["mean_act"], "n_nonzero": f["n_nonzero"],
                "top_token": top["tokens"][top["maxValueTokenIndex"]] if top else None,
                "promotes": " ".join(repr(t) for t in f["pos_str"][:3]),
            })
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """The pages as plain data: ``meta``'s fields, then ``features``."""
        return {**self.meta, "features": self.features}

    def to_json(self, indent: Optional[int] = None) -> str:
        """The pages as JSON (documented field by field in docs/features.md)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent, allow_nan=False)

    def html(self) -> str:
        """One self-contained HTML page (see :mod:`interp.report.features`)."""
        from .features import render

        return render(self)

    def _repr_html_(self) -> str:
        """Jupyter's inline display: the page in a sandboxed iframe (see :func:`interp.report.html.iframe`)."""
        from .html import iframe

        return iframe(self.html(), title=self.meta.get("title", "feature pages"))


# ---------------------------------------------------------------------------- computing
def _count(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InterpError(f"{name} must be a whole number ≥ {low}, not {value!r}")
    return int(value)


def dashboard(
    model,
    sae,
    texts: Any = None,
    *,
    features: Any = None,
    top: Optional[int] = None,
    sort: str = "density",
    tokens: int = 1_000_000,
    n_ctx: Optional[int] = None,
    batch_size: Optional[int] = None,
    n_examples: int = 20,
    n_bins: int = 5,
    bin_examples: int = 5,
    left: int = 24,
    right: int = 8,
    n_logits: int = 10,
    split: str = "heldout",
    column: Optional[str] = None,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> FeaturePages:
    """Feature pages for an SAE (or transcoder) on ``model``: one pass over ``tokens`` tokens of text.

    Args:
        model: a :class:`~interp.HookedGPT2`.
        sae: an :class:`~interp.features.SAE` whose ``hook_name`` is a hook point of ``model``
            (its weight mode is converted or refused by ``sae.bind(model)``).
        texts: what :func:`interp.corpus.documents` reads (a path, a list of strings); None: the
            bundled corpus's ``split`` (default ``"heldout"``: text the bundled SAEs were not trained on).
        features: which features to compute (:func:`interp.select.features`: ``"0:50"``, a list…;
            default all).
        top: keep only the ``top`` live features with the largest ``sort`` metric.
        sort: ``density``, ``max``, ``mean`` (activation when firing) or ``index``: the list's first order.
        tokens: stop after about this many tokens (whole windows); fewer if the text ends first.
        n_ctx: tokens per window (default: the model's context, at most 128).
        batch_size: windows per forward pass (default: about 16M activations per batch).
        n_examples: top examples per feature.
        n_bins, bin_examples: activation intervals (1–8) and examples sampled in each.
        left, right: tokens of context shown before and after an example's token.
        n_logits: promoted and suppressed tokens listed.
        split, column: passed to :func:`interp.corpus.documents`.
        seed: which tokens the intervals sample.
        progress: a progress bar (None: only on a terminal).

    >>> import torch
    >>> from interp.testing import planted_model
    >>> from interp.features import SAE, SAEConfig
    >>> model = planted_model()
    >>> sae = SAE(SAEConfig("standard", d_in=model.cfg.d_model, d_sae=4, hook_name="hook_embed", fold_ln=True))
    >>> with torch.no_grad():
    ...     _ = sae.W_enc.zero_(), sae.b_enc.fill_(-0.5), sae.b_dec.zero_()
    ...     c = model.to_batch("c").tokens[0, 1]
    ...     sae.W_enc[:, 1] = model.W_E[c] - model.W_E.mean(0)   # along "c"'s embedding: fires on "c" only
    >>> pages = dashboard(model, sae, ["a b c d " * 8], n_ctx=17, progress=False)
    >>> f = pages.feature(1)
    >>> f["frac_nonzero"], f["activations"][0]["tokens"][f["activations"][0]["maxValueTokenIndex"]]
    (0.25, 'c')
    >>> pages.feature(0)["dead"]
    True
    """
    from tqdm.auto import tqdm

    from ..corpus import documents, token_windows
    from ..select import features as select_features

    if sort not in SORTS:
        raise InterpError(f"sort {sort!r} unknown: choose from {', '.join(SORTS)}")
    chosen = select_features(features, sae.d_sae)
    if top is not None:
        top = _count(top, "top")
    tokens = _count(tokens, "tokens")
    n_ctx = _count(min(model.cfg.n_ctx, 128) if n_ctx is None else n_ctx, "n_ctx", 2)
    if n_ctx > model.cfg.n_ctx:
        raise InterpError(f"n_ctx {n_ctx} is longer than the model's context ({model.cfg.n_ctx})")
    n_logits = _count(n_logits, "n_logits")
    binding = sae.bind(model)  # checks the hook points and the weight modes, before any work
    hook = sae.cfg.hook_name
    is_z = hook.endswith("attn.hook_z")
    w_eff = dfa_encoder(sae) if is_z else None
    layer = hk.layer_of(hook)
    stats = FeatureStats(len(chosen), n_examples=n_examples, n_bins=n_bins, bin_examples=bin_examples,
                         left=left, right=right, seed=seed, dfa=w_eff is not None)
    docs = documents(texts, split=split, column=column)
    if batch_size is None:
        batch_size = max(1, min(256, (1 << 24) // (n_ctx * sae.d_sae)))
    batch_size = _count(batch_size, "batch_size")
    n_windows = math.ceil(tokens / n_ctx)
    windows = token_windows(model.tokenizer, docs, n_ctx, limit=n_windows)
    names = [hook] + ([hk.name("pattern", layer), hk.name("v", layer)] if w_eff is not None else [])
    idx = torch.tensor(chosen, dtype=torch.long)
    every = len(chosen) == sae.d_sae
    bar = tqdm(total=n_windows * n_ctx, unit="tok", unit_scale=True, desc="feature pages", leave=False,
               disable=None if progress is None else not progress)
    try:
        while True:
            batch = [w for _, w in zip(range(batch_size), windows)]
            if not batch:
                break
            toks = torch.stack(batch).to(model.cfg.device)
            with torch.no_grad():
                _, cache = model.run(toks, names=names, logits=False)
                acts = sae.encode(binding.input(cache[hook]).to(sae.W_enc.dtype))
                acts = acts if every else acts[..., idx]
            dfa = None
            if w_eff is not None:
                dfa = dfa_fn(cache[names[1]].float().cpu(), cache[names[2]].float().cpu(), w_eff[:, idx],
                              model.cfg.n_heads)
            stats.update(toks, acts, dfa)
            bar.update(toks.numel())
    finally:
        bar.close()
    if stats.n_windows == 0:
        raise InterpError(f"the text is shorter than one window of {n_ctx} tokens")
    return _pages(model, sae, chosen, stats, top=top, sort=sort, n_logits=n_logits, texts=texts, split=split,
                  n_ctx=n_ctx)


def _metric(stats: FeatureStats, sort: str) -> Tensor:
    if sort == "density":
        return stats.density()
    if sort == "max":
        return stats.max.double()
    if sort == "mean":
        return stats.mean_nonzero()
    return -torch.arange(stats.n_features, dtype=torch.float64)


def _source_id(sae) -> str:
    """Neuronpedia's source id for the SAE's hook: ``"{layer}-{short hook name}"`` (``"embed"`` for embeddings)."""
    name = sae.cfg.hook_name
    layer = hk.layer_of(name)
    short = next((s for s, t in hk.LAYER_HOOKS.items() if t.format(layer) == name), name.split(".")[-1])
    short = next((s for s, t in hk.GLOBAL_HOOKS.items() if t == name), short)
    base = short if layer < 0 or layer >= (1 << 30) else f"{layer}-{short}"
    return base + ("-transcoder" if sae.is_transcoder else "")


def _pages(model, sae, chosen: list[int], stats: FeatureStats, *, top, sort, n_logits, texts, split, n_ctx) -> FeaturePages:
    """The pages of the features kept (all computed, or the ``top`` live ones by ``sort``)."""
    live = stats.nonzero > 0
    keep = list(range(len(chosen)))
    if top is not None:
        metric = _metric(stats, sort).masked_fill(~live, float("-inf"))
        order = torch.sort(-metric, stable=True).indices[: min(top, int(live.sum()))]
        keep = sorted(order.tolist())
    keep_t = torch.tensor(keep, dtype=torch.long)
    dirs = resid_directions(model, sae, [chosen[j] for j in keep])
    logits = logit_tables(model, dirs, n_logits) if dirs is not None else None  # big products: every thread
    with one_thread():  # then small operations per feature (see interp.threads)
        return _assemble(model, sae, chosen, stats, keep, keep_t, logits, top=top, sort=sort, n_logits=n_logits,
                         texts=texts, split=split, n_ctx=n_ctx)


def _assemble(model, sae, chosen, stats, keep, keep_t, logits, *, top, sort, n_logits, texts, split, n_ctx) -> FeaturePages:
    """Each kept feature's page as plain data (Neuronpedia's fields), and the top level."""
    from .. import __version__

    live = stats.nonzero > 0
    ex = stats.examples(keep_t)
    lo, hi, share, _ = stats.interval_edges(keep_t)
    used = sorted(set(ex["tokens"].unique().tolist()) - {-1} | {i for lg in logits or () for i in lg["pos_ids"] + lg["neg_ids"]})
    strings = {i: model.tokenizer.decode([i]) for i in used}
    # Everything a record needs, as plain lists once (per-element tensor access is slow).
    tok_rows = ex["tokens"].tolist()
    val_rows = _round(ex["acts"]).tolist()
    dfa_rows = _round(ex["dfa"]).tolist() if "dfa" in ex else None
    feat_of, group_of = ex["feature"].tolist(), ex["group"].tolist()
    windows, positions = ex["window"].tolist(), ex["pos"].tolist()
    lo, hi, share = _round(lo).tolist(), _round(hi).tolist(), _round(share).tolist()
    by_feature: dict[int, list] = {}
    for e, n in enumerate(feat_of):
        by_feature.setdefault(n, []).append(e)
    is_z = sae.cfg.hook_name.endswith("attn.hook_z")
    density, mean, mx = _round(stats.density()).tolist(), _round(stats.mean_nonzero()).tolist(), _round(stats.max).tolist()
    out = []
    for n, j in enumerate(keep):
        f = chosen[j]
        dead = not bool(live[j])
        page = {
            "modelId": str(model.cfg.name), "layer": _source_id(sae), "index": f, "hookName": sae.cfg.hook_name,
            "dead": dead, "frac_nonzero": density[j], "n_nonzero": int(stats.nonzero[j]), "maxActApprox": mx[j],
            "mean_act": mean[j],
        }
        centres, heights = stats.histogram(j)
        page["freq_hist_data_bar_values"] = _round(torch.tensor(centres, dtype=torch.float64)).tolist()
        page["freq_hist_data_bar_heights"] = heights
        lg = logits[n] if logits is not None else None
        page.update({
            "pos_str": [strings[i] for i in lg["pos_ids"]] if lg else [], "pos_values": _round(lg["pos_values"]) if lg else [],
            "neg_str": [strings[i] for i in lg["neg_ids"]] if lg else [], "neg_values": _round(lg["neg_values"]) if lg else [],
            "pos_ids": lg["pos_ids"] if lg else [], "neg_ids": lg["neg_ids"] if lg else [],
            "logits_hist_data_bar_values": _round(lg["logits_hist_data_bar_values"]) if lg else [],
            "logits_hist_data_bar_heights": lg["logits_hist_data_bar_heights"] if lg else [],
        })
        if is_z:
            norms = sae.W_dec[f].detach().float().cpu().view(model.cfg.n_heads, -1).norm(dim=-1)
            page["decoder_weights_dist"] = _round(norms / norms.sum().clamp(min=1e-30)).tolist()
        else:
            page["decoder_weights_dist"] = []
        acts = []
        for e in by_feature.get(n, ()):
            g = group_of[e]
            rec = _record(tok_rows[e], val_rows[e], stats.left, strings, top=g == -1)
            rec.update({
                "binMin": -1.0 if g == -1 else lo[n][g], "binMax": mx[j] if g == -1 else hi[n][g],
                "binContains": -1.0 if g == -1 else share[n][g], "dataIndex": str(windows[e]), "position": positions[e],
            })
            if g == -1 and dfa_rows is not None:
                d = [x for x, tok in zip(dfa_rows[e], tok_rows[e]) if tok >= 0]
                rec.update({"dfaValues": d, "dfaTargetIndex": rec["qualifyingTokenIndex"], "dfaMaxValue": max(d)})
            acts.append(rec)
        page["activations"] = acts
        out.append(page)
    source = "the bundled model's corpus" + f" ({split} split)" if texts is None else (
        str(texts) if not isinstance(texts, (list, tuple)) else f"{len(texts)} documents given by the caller")
    meta = {
        "format": "interp-feature-pages/1", "interp_version": __version__, "title": f"Feature pages · {_source_id(sae)}",
        "model_id": str(model.cfg.name), "layer": _source_id(sae), "hook_name": sae.cfg.hook_name,
        "hook_name_out": sae.cfg.hook_name_out, "fold_ln": bool(model.cfg.fold_ln),
        "sae": {"architecture": sae.cfg.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.cfg.k,
                "transcoder": bool(sae.is_transcoder), "fold_ln": sae.cfg.fold_ln},
        "text": source, "n_tokens": stats.n_tokens, "n_prompts_total": stats.n_windows, "n_tokens_in_prompt": n_ctx,
        "n_features_computed": len(chosen), "n_dead_computed": int((~live).sum()),
        "settings": {"n_examples": stats.n_examples, "n_bins": stats.n_bins, "bin_examples": stats.bin_examples,
                     "left": stats.left, "right": stats.right, "n_logits": n_logits, "top": top, "sort": sort},
    }
    return FeaturePages(meta=meta, features=out, sort=sort)


def _round(x: Any):
    """Floats for the JSON: 5 significant digits (activations and logits are not known better than that).

    >>> _round([123.456789, -0.000123456, 0.0, float("inf")])
    [123.46, -0.00012346, 0.0, 0.0]
    """
    listed = not isinstance(x, Tensor)
    a = np.asarray(x.detach().cpu().double().numpy() if not listed else x, dtype=np.float64)
    finite = np.isfinite(a) & (a != 0)
    digits = np.where(finite, 4 - np.floor(np.log10(np.abs(np.where(finite, a, 1.0)))), 0).astype(np.int64)
    # np.round(a, d) for per-element d: scale, round, unscale (in float64: exact enough for 5 digits).
    scale = 10.0 ** digits.astype(np.float64)
    out = np.where(finite, np.round(a * scale) / scale, 0.0)
    return out.tolist() if listed else torch.from_numpy(out)


def _record(toks: list, vals: list, left: int, strings: dict, *, top: bool) -> dict:
    """One example as Neuronpedia's activation record: the window's real tokens and the feature's values.

    A top example's own token is its window's max (the first, on ties); an interval example's max
    may be another token of its window (``qualifyingTokenIndex`` is its own).
    """
    real = [i for i, tok in enumerate(toks) if tok >= 0]
    values = [vals[i] for i in real]
    at = real.index(left)  # the example's own token
    best = at if top else max(range(len(values)), key=lambda i: (values[i], -i))
    return {
        "tokens": [strings[toks[i]] for i in real], "values": values,
        "maxValue": values[best], "maxValueTokenIndex": best, "minValue": min(values), "qualifyingTokenIndex": at,
    }
