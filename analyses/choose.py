"""Which heads a report (or any view of a few heads) shows: given, the top N of a kind, or one of each kind.

The choice reads :func:`analyses.heads.classify`'s table; every choice comes with a reason a
reader can check ("#1 of 144 heads by previous_token score (0.998)").
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
from torch import Tensor

from interp import select
from interp.errors import InterpError

from .heads import KINDS, classify

__all__ = ["choose_heads", "check_choice", "scores_on", "CLASSIFY_ON", "DEFAULT_TOP"]

#: Heads shown when ``kind`` is given without ``top`` or ``heads``: the top few of that kind.
DEFAULT_TOP = 4


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


#: Where the head classifier's scores come from by default (see :func:`build_report`).
CLASSIFY_ON = ("probe", "prompt")


def scores_on(model, tokens: Tensor, classify_on: Any, progress: Optional[bool] = None) -> tuple:
    """``(scores, where)``: the head classifier's table and a phrase saying what it was measured on.

    ``classify_on``: ``"probe"`` (the classifier's default probe), ``"prompt"`` (``tokens``) or any
    inputs :func:`analyses.heads.classify` accepts.
    """
    if isinstance(classify_on, str) and classify_on not in CLASSIFY_ON:
        raise InterpError(f"unknown classify_on {classify_on!r}: use one of {', '.join(CLASSIFY_ON)}, or inputs")
    if classify_on == "probe":
        df = classify(model, progress=progress)  # the classifier's default: repeated random tokens
        where = f"its default probe ({df.attrs.get('n_prompts', '?')} repeated random-token sequences)"
    elif isinstance(classify_on, str):  # "prompt"
        df = classify(model, tokens, progress=progress)
        where = "this report's prompt"
    else:
        df = classify(model, classify_on, progress=progress)
        where = f"the given inputs ({df.attrs.get('n_prompts', '?')} sequences)"
    return df, where


def _ranked(scores: pd.DataFrame, column) -> pd.DataFrame:
    """Heads by descending score (NaN last, ties by layer then head), with the score as ``_s``."""
    s = scores.assign(_s=column).sort_values(["layer", "head"])
    return s.sort_values("_s", ascending=False, kind="stable", na_position="last")


def _own_score(scores: pd.DataFrame, kinds: tuple) -> pd.Series:
    """Each head's score on its own label (NaN when it has none)."""
    out = pd.Series(np.nan, index=scores.index)
    for kind in kinds:
        out = out.where(scores["label"] != kind, scores[kind])
    return out


def check_choice(model, heads, top, kind, kinds: tuple = KINDS) -> None:
    """Raise :class:`InterpError` for a choice of heads that cannot be made (before anything runs)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is not None:
        if top is not None or kind is not None:
            raise InterpError("give either heads or top/kind, not both")
        select.heads(model, heads, sort=False)
    if top is not None and (not _is_int(top) or not 1 <= top <= n_layers * n_heads):
        raise InterpError(f"top {top!r} out of range: choose 1–{n_layers * n_heads} heads (the model has that many)")
    if kind is not None and kind not in kinds:
        raise InterpError(f"unknown head kind {kind!r}: choose one of {', '.join(kinds)}")


def choose_heads(model, scores: Optional[pd.DataFrame], *, heads: Any = None, top: Any = None, kind: Any = None,
                 kinds: tuple = KINDS) -> tuple[list, list]:
    """``(heads, reasons)``: the heads given, the top N of a kind, or the strongest head of each kind.

    Args:
        scores: :func:`analyses.heads.classify`'s table (needed unless ``heads`` is given).
        heads: heads to show, in :mod:`interp.select`'s grammar, in the order given.
        top: the ``top`` heads with the highest ``kind`` score (without a kind: the highest score
            on their own label).
        kind: a head kind; alone it means the top :data:`DEFAULT_TOP` heads of that kind.

    With none of these: the strongest head labelled as each kind (the model's whole cast).
    """
    check_choice(model, heads, top, kind, kinds)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is not None:
        chosen = select.heads(model, heads, sort=False)
        return chosen, ["requested"] * len(chosen)
    if scores is None:
        raise InterpError("choosing heads by score needs the head classifier's scores")
    total = n_layers * n_heads
    if kind is not None or top is not None:
        column = scores[kind] if kind is not None else _own_score(scores, kinds)
        ranked = _ranked(scores, column).head(top or DEFAULT_TOP)
        ranked = ranked[ranked["_s"].notna()]
        what = f"{kind} score" if kind is not None else "score of its own label"  # "by …" in the reasons
        if ranked.empty:
            raise InterpError(f"no head could be scored for {kind or 'its own label'} on these inputs "
                              "(duplicate_token and induction need repeated tokens)")
        chosen = list(zip(ranked["layer"].astype(int), ranked["head"].astype(int)))
        reasons = [f"#{i + 1} of {total} heads by {what} ({s:.3f})" for i, s in enumerate(ranked["_s"])]
        return chosen, reasons
    # Neither: the best head labelled as each kind, so one report shows the model's whole cast;
    # if no head has a label, the best-scoring head of each kind.
    for labelled_only in (True, False):
        chosen, reasons = [], []
        for k in kinds:
            pool = scores[scores["label"] == k] if labelled_only else scores
            best = _ranked(pool, pool[k]).head(1)
            if best.empty or pd.isna(best["_s"].iloc[0]):
                continue
            lh = (int(best["layer"].iloc[0]), int(best["head"].iloc[0]))
            why = (f"the strongest of the heads labelled {k} ({k} score {best['_s'].iloc[0]:.3f})" if labelled_only
                   else f"highest {k} score of {total} heads ({best['_s'].iloc[0]:.3f}); no head is labelled")
            if lh in chosen:
                reasons[chosen.index(lh)] += "; " + why
            else:
                chosen.append(lh)
                reasons.append(why)
        if chosen:
            return chosen, reasons
    raise InterpError("the head classifier scored no head on this prompt: give heads explicitly")


