"""Head classification: what kind of head is each attention head?

Six kinds, each a score in [0, 1] measured on the attention pattern ``A[query, key]``:

=================  ==============================================================
``previous_token`` attention to ``key = query - 1``
``self``           attention to ``key = query`` (current-token heads)
``duplicate_token`` attention to earlier copies of the query's token
``induction``      attention to the token right *after* an earlier copy of the query's token
``bos``            attention to position 0 (BOS, the usual attention sink)
``spread``         normalised entropy of the attention row: 1 = uniform over the prefix
=================  ==============================================================

A score is the fraction of the head's attention that lands where its kind looks,
averaged over the query positions where the kind is *defined* (``measure="defined"``,
the default): positions with at least two keys to choose from (position 0 has only
BOS, where every head scores 1 on ``self`` and ``bos``) and a non-empty target
(``previous_token`` from position 1 on, ``duplicate_token`` and ``induction`` only
where the token occurred earlier). ``n_<kind>`` says how many query positions stand
behind each score. ``measure="all"`` is TransformerLens ``detect_head``'s "mul" score
instead: every query position counts (positions without a target score 0, so on a
sequence repeated once the duplicate/induction ceiling is about 0.5), averaged per
prompt and then over prompts; it equals ``detect_head`` to float precision.

``spread`` at a position is ``H(row) / log(n_keys)`` over the keys the position may
attend to, defined from two keys on.

Excluding BOS or the current token (``exclude_bos``, ``exclude_current_token``)
removes those keys and renormalises by the attention left: a score is
``Σ_q attention-to-targets / Σ_q attention-left``, summed over the averaged
positions — each position weighted by the attention it has left, so a position
that put 99.9 % of its attention on BOS does not count as a full vote for whatever
its last 0.1 % hit (``spread`` is the same weighted mean of the renormalised rows'
normalised entropies). This is ``detect_head``'s own renormalisation. Kinds whose
target is excluded (``self`` with the current token, ``bos`` with BOS) are NaN.

Labels: a head gets the attention kind (``previous_token``, ``self``,
``duplicate_token``, ``induction``, ``bos``) with the highest score at or above its
threshold (:data:`THRESHOLDS`, 0.5: most of the head's attention goes there);
failing that ``spread`` if that is at or above 0.8 (roughly: attention over most of
the prefix); else ``none``. ``spread`` comes last because it is on another scale
(an entropy, not a fraction of attention) and because a head that puts most of its
attention somewhere specific is that kind whatever it does with the rest.

Everything comes from one batched forward pass: a hook on each needed layer's
``hook_pattern`` reduces the pattern to per-prompt sums straight away (nothing of
size ``pos²`` is kept), and the pass stops right after the last needed pattern.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from interp import prompts, select
from interp.errors import InterpError
from interp.model import HookedGPT2

from .head_patterns import Options, pattern_sums

KINDS = ("previous_token", "self", "duplicate_token", "induction", "bos", "spread")
#: Kinds that are a fraction of attention on chosen keys (``spread`` is an entropy).
ATTENTION_KINDS = KINDS[:5]
#: Default label thresholds (see the module docs for the rule).
THRESHOLDS: dict[str, float] = {**{k: 0.5 for k in ATTENTION_KINDS}, "spread": 0.8}
MEASURES = ("defined", "all")


def classify(
    model: HookedGPT2,
    inputs: Any = None,
    *,
    kinds: Any = KINDS,
    layers: Any = None,
    heads: Any = None,
    measure: Any = "defined",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    positions: Any = None,
    threshold: Any = None,
    prepend_bos: bool = True,
    batch_size: Any = None,
    progress: Optional[bool] = None,
) -> pd.DataFrame:
    """Score every attention head on each kind and label it.

    Args:
        model: the model.
        inputs: a prompt, a list of prompts (and/or 1-D token tensors), token ids
            ``[batch, pos]``, or a :class:`~interp.tokens.Batch` (e.g.
            :func:`interp.prompts.text_windows`). Default: 16 repeated random-token
            sequences (:func:`interp.prompts.repeated_tokens`, seed 0).
        kinds: which of :data:`KINDS` to score (default: all six).
        layers: the layers to score, every head of each (default: all), in
            :mod:`interp.select`'s grammar (``1``, ``[0, 3]``, ``"0-5"``). The forward
            pass stops after the last of them.
        heads: instead of ``layers``, the heads to score (``"4.11"``, ``[(0, 1)]``, ``"4.*"``).
        measure: ``"defined"`` (average over the positions where each kind is
            defined) or ``"all"`` (TransformerLens ``detect_head``'s "mul" score).
        exclude_bos: drop attention to position 0 and renormalise.
        exclude_current_token: drop attention to the query's own position and renormalise.
        positions: which query positions to score, in every prompt (:mod:`interp.select`:
            a slice, a list of ints, ``"2:6"``; negative ones count from each prompt's end;
            positions a prompt does not have are skipped for it). Default: all.
        threshold: label threshold: a float for the five attention kinds, or a
            dict ``{kind: threshold}`` (others keep :data:`THRESHOLDS`).
        prepend_bos: prepend BOS to string prompts (token ids are used as given).
        batch_size: prompts per forward pass (default: as many as keep one layer's
            pattern under :data:`PATTERN_BUDGET` floats).
        progress: show a progress bar over batches (default: only on a terminal).

    Returns:
        One row per head: ``layer``, ``head``, a score column per kind, ``label``,
        ``n_<kind>`` (query positions behind each score, pooled over prompts) and
        ``<kind>_std`` (standard deviation of the per-prompt scores: a solid head
        varies little from prompt to prompt; NaN with fewer than two prompts).
        ``df.attrs`` records the measure, exclusions, thresholds and inputs.

    >>> from interp.testing import planted_model
    >>> df = classify(planted_model())       # default inputs: 16 × [BOS] + r + r, r random
    >>> print(df[["layer", "head", "label"]].to_string(index=False))
     layer  head           label
         0     0  previous_token
         0     1            self
         0     2 duplicate_token
         0     3            none
         1     0       induction
         1     1             bos
         1     2            none
         1     3            none
    >>> df.loc[4, ["induction", "n_induction", "previous_token"]].astype(float).round(3).to_dict()
    {'induction': 1.0, 'n_induction': 240.0, 'previous_token': 0.079}
    """
    kinds = check_kinds(kinds)
    if heads is not None and layers is not None:
        raise InterpError("give layers (every head of each) or heads (those heads), not both")
    chosen = None if heads is None else select.heads(model, heads)
    layers = sorted({l for l, _ in chosen}) if chosen is not None else select.layers(model, layers)
    head_idx = list(range(model.cfg.n_heads))
    if measure not in MEASURES:
        raise InterpError(f"unknown measure {measure!r}: use one of {', '.join(MEASURES)}")
    thresholds = _thresholds(threshold)
    seqs = prompts.sequences(model, inputs, prepend_bos=prepend_bos)
    opts = Options(kinds, head_idx, bool(exclude_bos), bool(exclude_current_token), measure, positions)
    num, den, count = pattern_sums(model, seqs, layers, opts, batch_size, progress)
    df = _table(num, den, count, layers, head_idx, opts, thresholds)
    if chosen is not None:
        df = df[[(l, h) in chosen for l, h in zip(df["layer"], df["head"])]].reset_index(drop=True)
    df = select.tidy(df)
    df.attrs.update(
        measure=measure, exclude_bos=bool(exclude_bos), exclude_current_token=bool(exclude_current_token),
        thresholds={k: thresholds[k] for k in kinds}, n_prompts=len(seqs), n_tokens=int(sum(len(s) for s in seqs)),
        model=model.cfg.name, fold_ln=model.cfg.fold_ln,
    )
    return df


def label_heads(scores: pd.DataFrame, threshold: Any = None) -> pd.Series:
    """Labels for a table of scores (e.g. to try another threshold without re-running the model).

    The rule is in the module docs: the best attention kind at or above its
    threshold, else ``spread`` at or above its own, else ``none``.
    """
    thresholds = _thresholds(threshold)
    attn = [k for k in ATTENTION_KINDS if k in scores.columns]
    labels = np.full(len(scores), "none", dtype=object)
    if "spread" in scores.columns:
        labels[(scores["spread"] >= thresholds["spread"]).to_numpy()] = "spread"
    if attn:
        vals = scores[attn].to_numpy(float)
        passing = np.where(vals >= np.array([thresholds[k] for k in attn]), vals, -np.inf)  # NaN compares False
        best = passing.argmax(1)  # ties go to the kind listed first in KINDS
        hit = np.isfinite(passing.max(1))
        labels[hit] = np.array(attn, dtype=object)[best[hit]]
    return pd.Series(labels, index=scores.index, name="label")


def ranked(scores: pd.DataFrame) -> pd.DataFrame:
    """The table with labelled heads first, strongest on their own label first; unlabelled heads last.

    >>> from interp.testing import planted_model
    >>> ranked(classify(planted_model(), progress=False))["label"].tolist()[:2]
    ['previous_token', 'self']
    """
    strength = [row[row["label"]] if row["label"] not in ("none", None) else -1.0 for _, row in scores.iterrows()]
    order = scores.assign(_s=strength).sort_values(["_s", "layer", "head"], ascending=[False, True, True], kind="stable")
    return order.drop(columns="_s")


def label_rule(thresholds: Mapping[str, float]) -> str:
    """The labelling rule in words, for the thresholds a table was labelled with."""
    attn = {v for k, v in thresholds.items() if k != "spread"}
    rule = [f"the attention kind scoring highest, if >= {' / '.join(f'{v:g}' for v in sorted(attn))}"] if attn else []
    rule += [f"else spread if >= {thresholds['spread']:g}"] if "spread" in thresholds else []
    return "; ".join([*rule, "else none"])


# ---------------------------------------------------------------------------- checks
def check_kinds(kinds: Any) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = [kinds]
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InterpError(f"unknown head kind(s) {unknown or kinds}: choose from {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in kinds)  # canonical order, no duplicates


def _thresholds(threshold: Any) -> dict[str, float]:
    out = dict(THRESHOLDS)
    if threshold is None:
        return out
    if isinstance(threshold, Mapping):
        unknown = [k for k in threshold if k not in KINDS]
        if unknown:
            raise InterpError(f"threshold for unknown kind(s) {unknown}: choose from {', '.join(KINDS)}")
        out.update(threshold)
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        out.update({k: threshold for k in ATTENTION_KINDS})
    else:
        raise InterpError(f"threshold must be a number or a dict {{kind: number}}, not {threshold!r}")
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise InterpError(f"threshold {v!r} for {k} out of range: need 0 < threshold <= 1")
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------- the table
def _table(num, den, count, layers, heads, opts: Options, thresholds) -> pd.DataFrame:
    with np.errstate(invalid="ignore", divide="ignore"):
        per_prompt = np.where(count[:, None, None, :] > 0, num / den, np.nan)  # [prompt, layer, head, kind]
        if opts.measure == "defined":
            score = num.sum(0) / den.sum(0)  # pooled over every scored position of every prompt
            score[:, :, count.sum(0) == 0] = np.nan
        else:
            score = _nanmean(per_prompt)  # detect_head: mean over prompts of each prompt's score
        std = _nanstd(per_prompt)
    score = np.clip(score, 0.0, 1.0)
    L, H = np.meshgrid(layers, heads, indexing="ij")
    df = pd.DataFrame({"layer": L.ravel(), "head": H.ravel()})
    for i, kind in enumerate(opts.kinds):
        df[kind] = score[..., i].ravel()
    df["label"] = label_heads(df, thresholds)
    for i, kind in enumerate(opts.kinds):
        df[f"n_{kind}"] = int(count[:, i].sum())
    for i, kind in enumerate(opts.kinds):
        df[f"{kind}_std"] = std[..., i].ravel()
    return df


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(0)
    return np.where(n > 0, np.nansum(x, 0) / np.maximum(n, 1), np.nan)


def _nanstd(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(0)
    mean = _nanmean(x)
    var = np.nansum((x - mean) ** 2, 0) / np.maximum(n - 1, 1)
    return np.where(n > 1, np.sqrt(var), np.nan)


__all__ = ["KINDS", "ATTENTION_KINDS", "THRESHOLDS", "MEASURES", "classify", "label_heads", "ranked", "label_rule"]
