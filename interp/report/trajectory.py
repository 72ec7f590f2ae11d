"""The prediction trajectory as SVG and as a self-contained HTML page (no script, no request).

One panel per lens (logit, pseudo-inverse, tuned), side by side: rows are layer boundaries (the
embeddings at the bottom, the model's output at the top), columns the prompt's positions; each cell
names the lens's top next token and is coloured by the distribution's entropy, the probability of
the token that actually comes next, or the KL divergence from the model's final distribution.
Hovering a cell shows all of its numbers (an SVG ``<title>``).

The SVG uses presentation attributes only (no stylesheet, no script, no external reference), so
it renders the same inline in the attention report, in an ``<img>`` or in a README; the page's
Content-Security-Policy allows only its own inline style and forbids any request; every text is
escaped. The table is :func:`analyses.lens_compare.prediction_trajectory`'s.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..errors import InterpError
from .html import page_head, show_token

__all__ = ["trajectory_svg", "trajectory_html", "trajectory_layout", "TrajectoryLayout", "COLORS"]

#: colour -> (legend, anchors of a linear colour map from 0 to vmax, fixed vmax or None for the data's max).
COLORS = {
    "entropy": ("entropy (nats): dark = sure", ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"], None),
    "target_prob": ("probability of the next token", ["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"], 1.0),
    "kl": ("KL(final ‖ lens) (nats): dark = close to the output",
           ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"], None),
}
TITLES = {"logit": "logit lens", "pinv": "pseudo-inverse lens", "tuned": "tuned lens"}
CELL_W, CELL_H, LEFT, TOP, GAP = 56, 22, 64, 58, 24


def _rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def _colour(anchors: list[str], t: float) -> str:
    """Linear interpolation between the anchors at ``t`` in [0, 1]."""
    if not math.isfinite(t):
        return "#eeeeee"
    t = min(1.0, max(0.0, t)) * (len(anchors) - 1)
    i = min(int(t), len(anchors) - 2)
    a, b = _rgb(anchors[i]), _rgb(anchors[i + 1])
    f = t - i
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def _ink(fill: str) -> str:
    """Black or white text on a fill (WCAG relative luminance, as :func:`interp.plotting.label_color`)."""
    def lin(byte: int) -> float:
        c = byte / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in _rgb(fill))
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "#ffffff"


def _short(token: str, n: int = 7) -> str:
    token = show_token(token)
    return token if len(token) <= n else token[: n - 1] + "…"


@dataclass(frozen=True)
class TrajectoryLayout:
    """What a drawing of one prompt's trajectory needs: its rows, the lenses, positions, labels, colour scale."""

    rows: pd.DataFrame  # the prompt's rows of the table
    lenses: list
    positions: list
    labels: list  # boundary labels, embeddings first
    inputs: pd.Series  # position -> input token
    vmax: float  # the colour scale's top (its bottom is 0), shared by every lens

    @property
    def n_boundaries(self) -> int:
        return len(self.labels)


def trajectory_layout(df: Any, color: str, prompt: int = 0) -> TrajectoryLayout:
    """Check :func:`analyses.lens_compare.prediction_trajectory`'s table and lay out one prompt of it."""
    if color not in COLORS:
        raise InterpError(f"color must be one of {', '.join(COLORS)}, not {color!r}")
    need = ("prompt", "lens", "boundary", "label", "position", "input_token", "token", "prob", "entropy", "kl",
            "target", "target_prob")
    if not isinstance(df, pd.DataFrame) or any(c not in df.columns for c in need):
        raise InterpError("pass analyses.lens_compare.prediction_trajectory's table")
    sub = df[df["prompt"] == prompt]
    if sub.empty:
        raise InterpError(f"prompt {prompt} not in the table (it has prompts {sorted(df['prompt'].unique())})")
    vmax = COLORS[color][2]
    if vmax is None:
        finite = [float(v) for v in sub[color] if math.isfinite(v)]
        vmax = max(finite) if finite and max(finite) > 0 else 1.0
    return TrajectoryLayout(
        rows=sub, lenses=list(dict.fromkeys(sub["lens"])), positions=sorted(sub["position"].unique()),
        labels=sub.drop_duplicates("boundary").sort_values("boundary")["label"].tolist(),
        inputs=sub.drop_duplicates("position").set_index("position")["input_token"], vmax=float(vmax),
    )


def trajectory_svg(df: pd.DataFrame, *, color: str = "entropy", prompt: int = 0) -> str:
    """The trajectory of one prompt as one SVG document (see the module docs)."""
    lay = trajectory_layout(df, color, prompt)
    sub, lenses, positions, labels, inputs, vmax = lay.rows, lay.lenses, lay.positions, lay.labels, lay.inputs, lay.vmax
    n_b = lay.n_boundaries
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    legend, anchors, _ = COLORS[color]
    panel_w = CELL_W * len(positions)
    width = LEFT + len(lenses) * (panel_w + GAP) + 20
    height = TOP + n_b * CELL_H + 40 + 34
    model = df.attrs.get("model", "the model")
    heading = f"{model} · each cell: the lens’s top next token, coloured by {color.replace('_', ' ')}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="Helvetica, Arial, sans-serif" role="img">',
           f'<title>{esc(f"Prediction trajectory of {model}, coloured by {color}")}</title>',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold" fill="#111">{esc(heading)}</text>']
    col = {p: j for j, p in enumerate(positions)}
    for k, lens in enumerate(lenses):
        x0 = LEFT + k * (panel_w + GAP)
        out.append(f'<text x="{x0 + panel_w / 2}" y="{TOP - 10}" font-size="12" text-anchor="middle" '
                   f'font-weight="bold" fill="#111">{esc(TITLES.get(lens, lens))}</text>')
        for r in sub[sub["lens"] == lens].itertuples():
            x, y = x0 + col[r.position] * CELL_W, TOP + (n_b - 1 - r.boundary) * CELL_H  # embeddings at the bottom
            value = float(getattr(r, color))
            fill = _colour(anchors, value / vmax if math.isfinite(value) else float("nan"))
            nxt = "" if r.target is None or (isinstance(r.target, float) and math.isnan(r.target)) else \
                f"; next {show_token(r.target)!r} p={r.target_prob:.3f}"
            tip = (f"{TITLES.get(lens, lens)} · {r.label} · position {r.position} ({show_token(r.input_token)!r}): "
                   f"top {show_token(r.token)!r} p={r.prob:.3f}; entropy {r.entropy:.3f}; KL {r.kl:.3f}{nxt}")
            out.append(f'<g><title>{esc(tip)}</title><rect x="{x}" y="{y}" width="{CELL_W - 1}" height="{CELL_H - 1}" '
                       f'fill="{fill}"/><text x="{x + CELL_W / 2}" y="{y + CELL_H / 2 + 4}" font-size="10" '
                       f'font-family="monospace" text-anchor="middle" fill="{_ink(fill)}">{esc(_short(r.token))}</text></g>')
        for p in positions:
            x = x0 + col[p] * CELL_W + CELL_W / 2
            out.append(f'<text x="{x}" y="{TOP + n_b * CELL_H + 13}" font-size="9" font-family="monospace" '
                       f'text-anchor="middle" fill="#333">{esc(_short(inputs[p]))}</text>'
                       f'<text x="{x}" y="{TOP + n_b * CELL_H + 25}" font-size="8" text-anchor="middle" '
                       f'fill="#777">{p}</text>')
    for b, label in enumerate(labels):
        out.append(f'<text x="{LEFT - 6}" y="{TOP + (n_b - 1 - b) * CELL_H + CELL_H / 2 + 4}" font-size="10" '
                   f'text-anchor="end" fill="#333">{esc(label)}</text>')
    ly = height - 16
    for i in range(40):  # the colour scale
        out.append(f'<rect x="{LEFT + 4 * i}" y="{ly - 9}" width="4" height="9" fill="{_colour(anchors, i / 39)}"/>')
    out.append(f'<text x="{LEFT - 4}" y="{ly}" font-size="9" text-anchor="end" fill="#333">0</text>'
               f'<text x="{LEFT + 164}" y="{ly}" font-size="9" fill="#333">{vmax:.3g} · {esc(legend)}</text>')
    out.append("</svg>")
    return "\n".join(out)


_PAGE = """{head}<h1>{title}</h1>
<p class="meta">{meta}</p>
{sections}
</body>
</html>
"""

_CSS = """body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111}
.meta{color:#444;font-size:13px;max-width:60em}.picture{overflow-x:auto;border:1px solid #ddd;margin-bottom:18px}"""

_ABOUT = {
    "entropy": ("By entropy", "The entropy of each lens's distribution: dark cells are sure of their token."),
    "target_prob": ("By the next token's probability",
                    "The probability each lens gives the token that actually comes next (dark: high)."),
    "kl": ("By KL to the output", "The KL divergence from the model's final distribution to the lens's: dark cells "
           "already say what the model will say."),
}


def trajectory_html(df: pd.DataFrame, *, prompt: int = 0, colors: Any = None) -> str:
    """The trajectory as one page: one picture per colouring (default all three), nothing else needed."""
    colors = list(COLORS) if colors is None else ([colors] if isinstance(colors, str) else list(colors))
    for c in colors:
        trajectory_layout(df, c, prompt)
    esc = html.escape
    sections = "\n".join(f'<h2>{esc(_ABOUT[c][0])}</h2>\n<p class="meta">{esc(_ABOUT[c][1])}</p>\n'
                         f'<div class="picture">{trajectory_svg(df, color=c, prompt=prompt)}</div>' for c in colors)
    digest = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; base-uri 'none'; form-action 'none'"
    a = df.attrs
    meta = (f"{a.get('model', '')} (fold_ln={a.get('fold_ln')}) · lenses: {', '.join(dict.fromkeys(df['lens']))}"
            + (f" · tuned lens {a['tuned_lens']}" if a.get("tuned_lens") else "")
            + " · rows: the residual stream entering each block (embed) and after each block; the top row is the "
              "model's own output · hover a cell for its numbers")
    title = esc(f"Prediction trajectory · {a.get('model', '')}")
    return _PAGE.format(head=page_head(csp, title, _CSS), title=title,
                        meta=esc(meta), sections=sections)


def trajectory_section(r) -> str:
    """The prediction trajectory, drawn here as static SVG (no script needed; presentation attributes only)."""
    if getattr(r, "trajectory", None) is None:
        return ""
    about = ("What each lens predicts at every layer boundary: rows are the residual stream entering each block "
             "(embed) and after each block (the top row is the model's output), each cell the lens's top next "
             "token, coloured by its distribution's entropy (dark: sure). Hover a cell for its numbers.")
    return (f'<h2>Prediction trajectory</h2>\n<p class="meta">{html.escape(about)}</p>\n'
            f'<div class="trajectory">{trajectory_svg(r.trajectory, color="entropy")}</div>')
