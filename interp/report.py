"""Attention-pattern reports: one self-contained HTML file, plus PNG/SVG figures and a CSV.

A report shows, for a prompt and a few chosen heads, each head's attention pattern
as a heatmap (query rows × key columns, the causally masked future greyed out) and
as two columns of tokens joined by lines (queries left, keys right, line opacity =
weight; hovering a token highlights its lines and shows the weights), with the head
classifier's scores and label that say why the head is there, and a summary of
every head: one layers × heads heatmap per head kind.

The HTML needs nothing at view time: CSS and JavaScript are inline, the figures are
drawn in the browser from a JSON block, and a Content-Security-Policy forbids any
network access. Token text is data, never markup: the JSON block escapes ``<``,
``>``, ``&`` and U+2028/2029, and the page only writes text with ``textContent``.

How it scales: the page stores each head's lower triangle as 2-byte integers
(weights rounded to 3 decimals), so its size is about ``1.33 · heads · pos²``
bytes (12 heads × 256 tokens ≈ 1.1 MB); the line view draws at most
``line_top_k`` lines per query (weights ≥ ``line_min_weight``), so the page holds
``pos · line_top_k`` lines per head rather than ``pos²``; reports over
:data:`MAX_REPORT_BYTES` are refused with advice (fewer heads, a shorter prompt).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .errors import InterpError
from .export import save_figure, write_table, write_text

__all__ = [
    "Report", "build_report", "report_html", "write_report", "parse_heads", "write_figures",
    "pattern_figure", "lines_figure", "check_outputs", "show_token", "json_for_script", "MAX_REPORT_BYTES",
]

#: Weights are stored in the page as integers ``round(weight · SCALE)`` (3 decimals).
SCALE = 1000
#: Refuse to write an HTML report larger than this (about 150 heads × 512 tokens).
MAX_REPORT_BYTES = 50_000_000
#: Heads shown when neither ``heads`` nor ``top`` is given and ``kind`` is: the top few of that kind.
DEFAULT_TOP = 4

HeadSpec = Any  # "4.11,0.5", ["4.11", "L0H5"], [(4, 11)]: checked by parse_heads with clear messages
Prompt = Any  # a string or 1-D token ids: checked by _tokens


# ---------------------------------------------------------------------------- the report's data
@dataclass(frozen=True)
class Report:
    """Everything a report shows; :meth:`html`, :meth:`table` and the figures are drawn from it.

    Attributes:
        model_name: the model's name (``model.cfg.name``).
        fold_ln: whether LayerNorm was folded (``model.cfg.fold_ln``).
        tokens: the prompt's tokens as text (BOS first), exactly as the tokenizer decodes them.
        heads: the chosen ``(layer, head)`` pairs, in display order.
        reasons: why each head was chosen, one line each.
        patterns: the chosen heads' attention patterns (masked future entries are 0).
        scores: the head classifier's table for every head (``layer, head, <kind>…,
            n_<kind>…, label``), or None when it was not run.
        scores_source: what the scores were measured on, in words.
        kinds: the head kinds of the classifier.
        n_layers, n_heads: the model's shape (for the summary heatmaps).
        line_top_k: lines drawn per query in the line view (the strongest keys).
        line_min_weight: weights below this get no line (they still show on hover).
    """

    model_name: str
    fold_ln: bool
    tokens: list
    heads: list
    reasons: list
    patterns: Float[Tensor, "selected query_pos key_pos"]
    scores: Optional[pd.DataFrame]
    scores_source: str
    kinds: tuple
    n_layers: int
    n_heads: int
    line_top_k: int = 8
    line_min_weight: float = 0.01

    def head_scores(self, layer: int, head: int) -> Optional[dict]:
        """The classifier's row for one head as a dict, or None without scores."""
        if self.scores is None:
            return None
        rows = self.scores[(self.scores["layer"] == layer) & (self.scores["head"] == head)]
        return None if rows.empty else rows.iloc[0].to_dict()

    def summary_table(self) -> pd.DataFrame:
        """One row per chosen head: ``layer, head, label, <kind>…, reason``."""
        rows = []
        for (layer, head), reason in zip(self.heads, self.reasons):
            row = self.head_scores(layer, head) or {}
            rows.append({"layer": layer, "head": head, "label": row.get("label", ""),
                         **{k: row.get(k, np.nan) for k in self.kinds}, "reason": reason})
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """The raw patterns, tidy: ``layer, head, query_pos, key_pos, query_token, key_token, weight``.

        Masked (future, ``key_pos > query_pos``) entries are left out; weights are full precision.
        """
        p = len(self.tokens)
        q, k = torch.tril_indices(p, p)
        toks = np.asarray(self.tokens, dtype=object)
        frames = []
        for (layer, head), pattern in zip(self.heads, self.patterns):
            frames.append(pd.DataFrame({
                "layer": layer, "head": head, "query_pos": q.numpy(), "key_pos": k.numpy(),
                "query_token": toks[q.numpy()], "key_token": toks[k.numpy()],
                "weight": pattern[q, k].float().cpu().numpy(),
            }))
        return pd.concat(frames, ignore_index=True)

    def html(self) -> str:
        """The report as one self-contained HTML page (see the module docs)."""
        return _render_html(self)


# ---------------------------------------------------------------------------- choosing heads
_HEAD_RE = re.compile(r"^\s*(?:L?(\d+)\s*[.:/]\s*H?(\d+)|L(\d+)\s*H(\d+))\s*$", re.IGNORECASE)


def parse_heads(spec: HeadSpec, n_layers: int, n_heads: int) -> list:
    """Parse a head list such as ``"4.11,0.5"`` into ``[(4, 11), (0, 5)]`` (duplicates dropped).

    Each head is ``LAYER.HEAD`` (also ``L4H11``, ``4:11``) or a ``(layer, head)`` pair.

    >>> parse_heads("4.11, L0H5", n_layers=12, n_heads=12)
    [(4, 11), (0, 5)]
    """
    items = [s for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not items or all(isinstance(s, str) and not s.strip() for s in items):
        raise InterpError("no heads given: use LAYER.HEAD pairs such as 4.11,0.5")
    out: list = []
    for item in items:
        if isinstance(item, str):
            m = _HEAD_RE.match(item)
            if not m:
                raise InterpError(f"head {item.strip()!r} not understood: use LAYER.HEAD, e.g. 4.11 (or L4H11)")
            a, b, c, d = m.groups()
            layer, head = (int(a), int(b)) if a is not None else (int(c), int(d))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(_is_int(x) for x in item):
            layer, head = int(item[0]), int(item[1])
        else:
            raise InterpError(f"head {item!r} not understood: give 'LAYER.HEAD' strings or (layer, head) pairs")
        if not 0 <= layer < n_layers:
            raise InterpError(
                f"head {layer}.{head}: layer {layer} out of range: model has {n_layers} layers (0–{n_layers - 1})"
            )
        if not 0 <= head < n_heads:
            raise InterpError(
                f"head {layer}.{head}: head {head} out of range: "
                f"model has {n_heads} heads per layer (0–{n_heads - 1})"
            )
        if (layer, head) not in out:
            out.append((layer, head))
    return out


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _kinds() -> tuple:
    from analyses.heads import KINDS

    return tuple(KINDS)


#: Where the head classifier's scores come from by default (see :func:`build_report`).
CLASSIFY_ON = ("probe", "prompt")


def _classify(model, tokens: Tensor, classify_on: Any, progress: Optional[bool]) -> tuple:
    """``(scores, where)``: the classifier's table and a phrase saying what it was measured on."""
    from analyses.heads import classify

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


def _check_choice(kinds: tuple, heads, top, kind, n_layers: int, n_heads: int) -> None:
    if heads is not None:
        if top is not None or kind is not None:
            raise InterpError("give either heads or top/kind, not both")
        parse_heads(heads, n_layers, n_heads)
    if top is not None and (not _is_int(top) or not 1 <= top <= n_layers * n_heads):
        raise InterpError(f"top {top!r} out of range: choose 1–{n_layers * n_heads} heads (the model has that many)")
    if kind is not None and kind not in kinds:
        raise InterpError(f"unknown head kind {kind!r}: choose one of {', '.join(kinds)}")


def _choose(scores: Optional[pd.DataFrame], kinds: tuple, heads, top, kind, n_layers: int, n_heads: int):
    """``(heads, reasons)`` from an explicit list, the top N of a kind, or the top head of each kind."""
    _check_choice(kinds, heads, top, kind, n_layers, n_heads)
    if heads is not None:
        chosen = parse_heads(heads, n_layers, n_heads)
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


# ---------------------------------------------------------------------------- building
def _tokens(model, prompt: Prompt) -> Tensor:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InterpError("prompt is empty: give the text to report on")
        tokens = model.to_batch(prompt).tokens
        if tokens.shape[1] < 2:  # BOS alone: the tokenizer found nothing in the text
            raise InterpError(f"prompt {prompt!r} has no tokens")
        return tokens
    if isinstance(prompt, Tensor) and prompt.ndim == 1:
        return model.to_batch(prompt).tokens
    raise InterpError(f"prompt must be a string or 1-D token ids, not {type(prompt).__name__}")


def build_report(
    model,
    prompt: Prompt,
    *,
    heads: HeadSpec = None,
    top: Optional[int] = None,
    kind: Optional[str] = None,
    classify_on: Any = "probe",
    scores: Any = None,
    line_top_k: int = 8,
    line_min_weight: float = 0.01,
    progress: Optional[bool] = None,
) -> Report:
    """Compute a report's data: choose heads, classify every head, read the chosen patterns.

    Args:
        model: a :class:`~interp.HookedGPT2`.
        prompt: the text (BOS is prepended) or 1-D token ids.
        heads: heads to show, e.g. ``"4.11,0.5"`` or ``[(4, 11)]``.
        top: show the ``top`` heads with the highest ``kind`` score (or, without a
            kind, the highest score on their own label).
        kind: a head kind of :data:`analyses.heads.KINDS`; alone it means the top
            :data:`DEFAULT_TOP` heads of that kind. With neither ``heads`` nor
            ``top``/``kind`` the report shows the top head of each kind.
        classify_on: what the head classifier scores the heads on: ``"probe"`` (its
            default, 16 sequences of repeated random tokens: a model-wide verdict
            that finds induction heads whatever the prompt), ``"prompt"`` (this
            prompt: duplicate/induction scores need repeated tokens in it) or any
            inputs :func:`analyses.heads.classify` accepts (e.g. a list of prompts).
        scores: a classifier table (``analyses.heads.classify(...)``) to use instead
            of running the classifier; ``False`` for no scores (then ``heads`` is
            required and the summary section is left out).
        line_top_k: lines per query in the line view (its strongest keys).
        line_min_weight: no line for weights below this (hovering still shows them).
        progress: passed to the classifier's progress bar (None: only on a terminal).

    >>> from interp.testing import planted_model
    >>> report = build_report(planted_model(), "a b c d a b c d", heads="0.0,1.0")
    >>> report.heads, len(report.tokens)
    ([(0, 0), (1, 0)], 9)
    >>> round(float(report.patterns[0, 5, 4]), 3)   # the previous-token head at position 5 looks at 4
    1.0
    """
    if not _is_int(line_top_k) or line_top_k < 1:
        raise InterpError(f"line_top_k must be a positive integer, not {line_top_k!r}")
    w = line_min_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise InterpError(f"line_min_weight must be a number in [0, 1], not {line_min_weight!r}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    kinds = _kinds()
    _check_choice(kinds, heads, top, kind, L, H)  # the cheap checks, before anything runs
    tokens = _tokens(model, prompt)
    if scores is None:
        scores, source = _classify(model, tokens, classify_on, progress)
    elif scores is False:
        if heads is None:
            raise InterpError("without scores (scores=False) the heads must be given explicitly")
        scores, source = None, ""
    elif isinstance(scores, pd.DataFrame):
        missing = [c for c in ("layer", "head", *kinds, "label") if c not in scores.columns]
        if missing:
            raise InterpError(
                f"scores table lacks column(s) {', '.join(missing)}: pass analyses.heads.classify's table"
            )
        source = "a table given by the caller"
    else:
        raise InterpError(
            f"scores must be a DataFrame from analyses.heads.classify, None or False, not {type(scores).__name__}"
        )
    chosen, reasons = _choose(scores, kinds, heads, top, kind, L, H)
    p = tokens.shape[1]
    est = _estimate_bytes(len(chosen), p)
    if est > MAX_REPORT_BYTES:
        raise InterpError(
            f"a report of {len(chosen)} heads × {p} tokens would be ~{est / 1e6:.0f} MB "
            f"(limit {MAX_REPORT_BYTES / 1e6:.0f} MB): choose fewer heads or a shorter prompt"
        )
    return Report(
        model_name=str(model.cfg.name), fold_ln=bool(model.cfg.fold_ln), tokens=model.to_str_tokens(tokens[0]),
        heads=chosen, reasons=reasons, patterns=_patterns(model, tokens, chosen), scores=scores,
        scores_source=source, kinds=kinds, n_layers=L, n_heads=H, line_top_k=int(line_top_k),
        line_min_weight=float(line_min_weight),
    )


def _patterns(model, tokens: Tensor, chosen: list) -> Tensor:
    """The chosen heads' patterns ``[selected, pos, pos]``, keeping only those heads inside the hooks."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in chosen:
        by_layer.setdefault(layer, []).append(head)
    kept: dict[int, Tensor] = {}

    def keeper(layer: int):
        def keep(pattern: Tensor, name: str) -> None:
            kept[layer] = pattern[0, by_layer[layer]].detach().float().cpu()
        return keep

    with torch.no_grad():
        model.run(tokens, hooks=[(f"pattern.{layer}", keeper(layer)) for layer in by_layer],
                  stop_at_layer=max(by_layer) + 1, logits=False)
    return torch.stack([kept[layer][by_layer[layer].index(head)] for layer, head in chosen])


def _estimate_bytes(n_heads: int, p: int) -> int:
    return int(n_heads * p * (p + 1) / 2 * 2 * 4 / 3) + 200_000  # base64 of uint16, plus the page itself


# ---------------------------------------------------------------------------- HTML
def show_token(tok: str) -> str:
    """A token as shown on screen: newlines, tabs and other control characters made visible."""
    tok = tok.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates in the page
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    # Control, format (e.g. right-to-left overrides, which would reorder the text around them)
    # and line/paragraph separators are shown as escapes.
    return "".join(
        named.get(c) or (_escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c) for c in tok
    )


def _escape(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def _asset(name: str) -> str:
    return (resources.files("interp") / "report_assets" / name).read_text(encoding="utf-8")


def json_for_script(data) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, ``<!--`` or line separators.

    >>> json_for_script(["</script><b>&"])
    '["\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e\\\\u0026"]'
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # These characters occur only inside JSON strings, where \\uXXXX means the same thing.
    for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, esc)
    return text


def _num(v) -> Optional[float]:
    return None if v is None or pd.isna(v) else round(float(v), 4)


def _page_data(r: Report) -> dict:
    p = len(r.tokens)
    q, k = torch.tril_indices(p, p)
    heads = []
    for (layer, head), reason, pattern in zip(r.heads, r.reasons, r.patterns):
        milli = torch.round(pattern[q, k].clamp(0, 1) * SCALE).to(torch.int32).numpy().astype("<u2")
        row = r.head_scores(layer, head)
        label = row.get("label") if row else None
        heads.append({
            "layer": layer, "head": head, "reason": reason,
            "label": label if isinstance(label, str) and label else None,
            "scores": {kd: _num(row.get(kd)) for kd in r.kinds} if row else None,
            "counts": {kd: (None if pd.isna(row.get(f"n_{kd}", np.nan)) else int(row[f"n_{kd}"])) for kd in r.kinds}
            if row else None,
            "pattern": base64.b64encode(milli.tobytes()).decode("ascii"),
        })
    summary = None
    if r.scores is not None:
        grids = {}
        for kd in r.kinds:
            g = [[None] * r.n_heads for _ in range(r.n_layers)]
            for layer, head, v in zip(r.scores["layer"], r.scores["head"], r.scores[kd]):
                g[int(layer)][int(head)] = _num(v)
            grids[kd] = g
        labels = [[""] * r.n_heads for _ in range(r.n_layers)]
        for layer, head, lab in zip(r.scores["layer"], r.scores["head"], r.scores["label"]):
            labels[int(layer)][int(head)] = lab if isinstance(lab, str) and lab else "none"
        values = [v for g in grids.values() for row_ in g for v in row_ if v is not None]
        summary = {
            "kinds": list(r.kinds), "n_layers": r.n_layers, "n_heads": r.n_heads, "scores": grids, "labels": labels,
            "vmin": min([0.0, *values]), "vmax": max([1.0, *values]),
        }
    from . import __version__

    notes = [
        f"Weights are stored rounded to 3 decimals. The line view draws at most {r.line_top_k} lines per query "
        f"(its strongest keys with weight ≥ {r.line_min_weight:g}); hovering a token shows every weight.",
        f"Scores: analyses.heads.classify on {r.scores_source}; a head's label is the kind it was classified as "
        "(most of its attention goes there), 'none' if no kind fits." if r.scores is not None
        else "No head classifier scores were computed.",
    ]
    return {
        "title": f"Attention report · {r.model_name}",
        "meta": f"{r.model_name} · {r.n_layers} layers × {r.n_heads} heads · fold_ln={r.fold_ln} · "
                f"{len(r.heads)} heads shown · interp {__version__}",
        "notes": notes, "tokens": [show_token(t) for t in r.tokens], "kinds": list(r.kinds), "scale": SCALE,
        "heads": heads, "summary": summary, "line_top_k": r.line_top_k, "line_min_weight": r.line_min_weight,
        "heatmap_px": 520, "label_max_tokens": 40,
    }


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="interp {version}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header><h1 id="title"></h1><div class="meta" id="meta"></div><div id="notes"></div></header>
<noscript><p>This report draws itself with JavaScript; its data is in the JSON block of this file.</p></noscript>
<h2>Prompt <span class="meta" id="n-tokens"></span></h2>
<div id="tokens"></div>
<h2>Head kinds: layers × heads</h2>
<div class="summary" id="summary"></div>
<div class="status" id="summary-status"></div>
<h2>Heads</h2>
<div id="heads"></div>
<script type="application/json" id="report-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _render_html(r: Report) -> str:
    from . import __version__

    css, js = _asset("report.css"), _asset("report.js")
    # Only the inline style and script written here may run; nothing may be fetched.
    csp = (f"default-src 'none'; script-src '{_sha256(js)}'; style-src '{_sha256(css)}'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return _PAGE.format(
        csp=csp, version=__version__, title=html.escape(f"Attention report · {r.model_name}"), css=css,
        data=json_for_script(_page_data(r)), js=js,
    )


def report_html(model, prompt: Prompt, **kwargs) -> str:
    """The report for ``prompt`` as an HTML string; keyword arguments as :func:`build_report`."""
    return build_report(model, prompt, **kwargs).html()


# ---------------------------------------------------------------------------- figures (matplotlib)
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _title(r: Report, i: int) -> str:
    layer, head = r.heads[i]
    row = r.head_scores(layer, head)
    label = row.get("label") if row else None
    return f"L{layer}H{head}" + (f" · {label}" if isinstance(label, str) and label else "")


def pattern_figure(r: Report, i: int):
    """Head ``i`` of the report as a heatmap (query rows × key columns, the masked future hatched grey)."""
    plt = _plt()
    from matplotlib.patches import Polygon

    pattern = r.patterns[i].float().numpy()
    p = pattern.shape[0]
    masked = np.ma.masked_array(pattern, mask=np.triu(np.ones((p, p), bool), 1))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e4e6ea")
    side = min(12.0, 2.5 + 0.22 * p)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(masked, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    if p <= 64:
        # The staircase above the diagonal: the future keys a causal head cannot see.
        corners = [(0.5, -0.5)]
        for q in range(p - 1):
            corners += [(q + 0.5, q + 0.5), (q + 1.5, q + 0.5)]
        corners.append((p - 0.5, -0.5))
        ax.add_patch(Polygon(corners, closed=True, fill=False, hatch="///", edgecolor="#9aa0a8", linewidth=0))
        labels = [show_token(t) for t in r.tokens]
        ax.set_xticks(range(p))
        ax.set_yticks(range(p))
        # parse_math=False: a token such as "$x$" is text, not mathtext.
        ax.set_xticklabels(labels, rotation=90, fontsize=7, parse_math=False, fontfamily="monospace")
        ax.set_yticklabels(labels, fontsize=7, parse_math=False, fontfamily="monospace")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(_title(r, i), parse_math=False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    return fig


def lines_figure(r: Report, i: int):
    """Head ``i`` as two columns of tokens joined by lines (queries left, keys right, opacity = weight)."""
    plt = _plt()
    from matplotlib.collections import LineCollection

    pattern = r.patterns[i].float().numpy()
    p = pattern.shape[0]
    fig, ax = plt.subplots(figsize=(5.5, max(2.5, 0.2 * p + 0.8)))
    segments, colors = [], []
    for q in range(p):
        row = pattern[q, : q + 1]
        keys = [k for k in np.argsort(-row, kind="stable")[: r.line_top_k] if row[k] >= r.line_min_weight]
        for k in keys:
            segments.append([(0.0, -q), (1.0, -k)])
            colors.append((0.184, 0.373, 0.702, float(min(1.0, max(0.02, row[k])))))
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.5))
    for pos, tok in enumerate(r.tokens):
        text = show_token(tok)
        ax.text(-0.04, -pos, text, ha="right", va="center", fontsize=8, fontfamily="monospace", parse_math=False)
        ax.text(1.04, -pos, text, ha="left", va="center", fontsize=8, fontfamily="monospace", parse_math=False)
    ax.set_xlim(-0.9, 1.9)
    ax.set_ylim(-p + 0.5, 0.5)
    ax.axis("off")
    ax.set_title(f"{_title(r, i)}   query → key", parse_math=False)
    return fig


def write_figures(r: Report, directory, fmt: str = "png", progress: Optional[bool] = None) -> list:
    """Write each head's heatmap and line view (and the summary heatmaps) into ``directory``.

    Files: ``L{layer}H{head}.pattern.{fmt}``, ``L{layer}H{head}.lines.{fmt}``, ``summary.{fmt}``;
    each is written atomically. Returns the paths written.
    """
    from tqdm.auto import tqdm

    from .export import heads_heatmap

    if fmt not in ("png", "svg", "pdf"):
        raise InterpError(f"unknown image format {fmt!r}: use png, svg or pdf")
    directory = _image_dir(directory)
    written = []
    for i in tqdm(range(len(r.heads)), desc=f"report {fmt}", disable=None if progress is None else not progress,
                  leave=False):
        layer, head = r.heads[i]
        written.append(save_figure(pattern_figure(r, i), directory / f"L{layer}H{head}.pattern.{fmt}", dpi=150))
        written.append(save_figure(lines_figure(r, i), directory / f"L{layer}H{head}.lines.{fmt}", dpi=120))
    if r.scores is not None:
        written.append(heads_heatmap(r.scores, list(r.kinds), directory / f"summary.{fmt}", title="head scores",
                                     n_layers=r.n_layers, n_heads=r.n_heads))
    return written


# ---------------------------------------------------------------------------- writing
def _check_file_target(path, what: str) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InterpError(f"cannot write the {what} to {path}: it is a directory")
    if not parent.is_dir():
        raise InterpError(f"cannot write the {what} to {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InterpError(f"cannot write the {what} to {path}: directory {parent} is not writable")
    return path


def _image_dir(directory) -> Path:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InterpError(f"cannot write figures into {directory}: it is a file, not a directory")
    parent = directory.parent if str(directory.parent) else Path(".")
    if not directory.exists() and not parent.is_dir():
        raise InterpError(f"cannot write figures into {directory}: directory {parent} does not exist")
    try:
        directory.mkdir(exist_ok=True)
    except OSError as e:
        raise InterpError(f"cannot create the figure directory {directory}: {e.strerror}") from None
    return directory


def check_outputs(path: Any = None, *, png: Any = None, svg: Any = None, csv: Any = None) -> None:
    """Raise :class:`InterpError` if an output cannot be written (before any work is done)."""
    if path is None and png is None and svg is None and csv is None:
        raise InterpError("nothing to write: give an HTML path, or png/svg directories or a csv path")
    if path is not None:
        _check_file_target(path, "report")
    if csv is not None:
        _check_file_target(csv, "CSV")
    for d in (png, svg):
        if d is None:
            continue
        d = Path(d)
        parent = d.parent if str(d.parent) else Path(".")
        if d.exists() and not d.is_dir():
            raise InterpError(f"cannot write figures into {d}: it is a file, not a directory")
        if not d.exists() and not parent.is_dir():
            raise InterpError(f"cannot write figures into {d}: directory {parent} does not exist")


def write_report(
    model,
    prompt: Prompt,
    path: Any = None,
    *,
    png: Any = None,
    svg: Any = None,
    csv: Any = None,
    progress: Optional[bool] = None,
    **kwargs,
) -> Report:
    """Build a report and write it: the HTML to ``path``, figures into ``png``/``svg`` directories, the CSV to ``csv``.

    Every output is checked before the model runs and written atomically (temp file +
    rename): on any error no partial file is left and an existing file is untouched.
    Keyword arguments (``heads``, ``top``, ``kind``, ``scores``, ``line_top_k``, …)
    as :func:`build_report`. Returns the :class:`Report`.

    >>> import tempfile, os
    >>> from interp.testing import planted_model
    >>> out = os.path.join(tempfile.mkdtemp(), "report.html")
    >>> report = write_report(planted_model(), "a b c a b c", out, top=2, kind="previous_token")
    >>> report.heads[0], open(out).read(15)
    ((0, 0), '<!DOCTYPE html>')
    """
    check_outputs(path, png=png, svg=svg, csv=csv)
    report = build_report(model, prompt, progress=progress, **kwargs)
    jobs = [
        (path, lambda: write_text(path, report.html())),
        (csv, lambda: write_table(report.table(), csv, "csv")),
        (png, lambda: write_figures(report, png, "png", progress)),
        (svg, lambda: write_figures(report, svg, "svg", progress)),
    ]
    for target, job in jobs:
        if target is None:
            continue
        try:
            job()
        except OSError as e:  # e.g. a full disk or a read-only file system: atomic_path has cleaned up
            raise InterpError(f"cannot write {target}: {e.strerror or e}") from None
    return report
