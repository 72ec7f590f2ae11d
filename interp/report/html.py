"""A report as one self-contained HTML page: data in an escaped JSON block, CSS and JavaScript inline.

Token text is data, never markup: the JSON block escapes ``<``, ``>``, ``&`` and U+2028/2029,
and the page writes text only with ``textContent``; a Content-Security-Policy allows only the
page's own inline style and script and forbids any request.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import unicodedata
from importlib import resources
from typing import Optional

import numpy as np
import pandas as pd
import torch

__all__ = ["render", "show_token", "json_for_script", "SCALE"]

#: Weights are stored in the page as integers ``round(weight · SCALE)`` (3 decimals).
SCALE = 1000


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


def _page_data(r) -> dict:
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
    from interp import __version__

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


_PAGE = """{head}<header><h1 id="title"></h1><div class="meta" id="meta"></div><div id="notes"></div></header>
<noscript><p>This report draws itself with JavaScript; its data is in the JSON block of this file.</p></noscript>
<h2>Prompt <span class="meta" id="n-tokens"></span></h2>
<div id="tokens"></div>
<h2>Head kinds: layers × heads</h2>
<div class="summary" id="summary"></div>
<div class="status" id="summary-status"></div>
<h2>Heads</h2>
<div id="heads"></div>
{trajectory}
<script type="application/json" id="report-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def page_head(csp: str, title: str, css: str) -> str:
    """The start of every interp page up to ``<body>``: its Content-Security-Policy, ``title`` (already
    escaped) and inline ``css``."""
    from interp import __version__

    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="interp {__version__}">\n'
            f"<title>{title}</title>\n<style>{css}</style>\n</head>\n<body>\n")


def render(r, trajectory: str = "") -> str:
    """The :class:`~interp.report.Report` as one self-contained HTML page."""

    css, js = _asset("report.css"), _asset("report.js")
    # Only the inline style and script written here may run; nothing may be fetched.
    csp = (f"default-src 'none'; script-src '{_sha256(js)}'; style-src '{_sha256(css)}'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return _PAGE.format(head=page_head(csp, html.escape(f"Attention report · {r.model_name}"), css),
        data=json_for_script(_page_data(r)), js=js, trajectory=trajectory,
    )


#: A notebook frame's height: the header and a head's heatmap; the page scrolls inside it.
HEIGHT = 900


def iframe(page: str, height: int = HEIGHT, title: str = "interp report") -> str:
    """An HTML page as a sandboxed ``<iframe srcdoc=…>`` element, for a notebook output.

    A notebook inserts an output's HTML into its own page, where the page's Content-Security-Policy
    (a ``<meta>`` of its ``<head>``) would not apply and its script would meet the notebook's DOM.
    In an ``<iframe>`` whose ``srcdoc`` is the whole page, escaped, the page is its own document with
    its own CSP, and ``sandbox="allow-scripts"`` (no ``allow-same-origin``) runs its script in an
    opaque origin that cannot reach the notebook, its cookies or storage.

    >>> iframe("<p>a & b</p>", 100)[:70]
    '<iframe srcdoc="&lt;p&gt;a &amp; b&lt;/p&gt;" sandbox="allow-scripts" '
    """
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" title="{html.escape(title)}" '
        f'style="width: 100%; height: {int(height)}px; border: 1px solid #ddd; resize: vertical; overflow: auto" '
        'loading="eager"></iframe>'
    )
