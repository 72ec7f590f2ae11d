"""A circuit as a picture a person reads: SVG and a self-contained HTML page (its JSON is :meth:`Circuit.to_json`).

Columns are layers (the embeddings on the left, the logits on the right); in each layer the heads
that kept an edge stand in one column and the MLP just right of them. An edge runs from its
sender's right side to its receiver's left side; a head receives on three ports, ``q`` (top),
``k`` (middle) and ``v`` (bottom), labelled. Edge width grows with ``√|effect|`` (the edge's
exact effect; square root so that small effects stay visible), colour gives its sign (blue: the clean value pushes the metric up; red: down), and
hovering an edge or a node shows its numbers (an SVG ``<title>``).

The SVG uses presentation attributes only (no stylesheet, no script, no external reference), so
it renders the same in a browser, an ``<img>`` or a README. The HTML page holds the SVG and the
edge table; its Content-Security-Policy allows only its own inline style and forbids any
request; every text is escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from typing import Any, Optional

from .html import page_head

__all__ = ["circuit_svg", "circuit_html", "CircuitPicture"]

POSITIVE, NEGATIVE = "#1d4ed8", "#c2410c"
COL, ROW, NODE_W, NODE_H, MARGIN, TOP = 150, 44, 64, 30, 40, 86


def _num(v: Any) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _layout(c) -> tuple[dict, int, int]:
    """Node name -> (x, y) of its box's top-left corner; the picture's width and height.

    Heads (and the embeddings and logits) are centred in the upper rows; MLPs stand in a row of
    their own below, so that edges between heads do not run through them.
    """
    from ..graph import Graph

    L = c.n_layers
    graph = Graph(c.n_layers, c.n_heads)
    cols: dict[int, list[str]] = {}
    for n in c.nodes:
        layer, head = graph.layer_head(n)
        col = 0 if n == "embed" else 2 * L + 1 if n == "logits" else 1 + 2 * layer + (head is None)
        cols.setdefault(col, []).append(n)
    step = NODE_H + ROW
    rows = max([len(v) for v in cols.values() if not v[0].startswith("MLP")] + [1])
    mlps = any(n.startswith("MLP") for n in c.nodes)
    height = TOP + (rows + mlps) * step - ROW + MARGIN
    pos = {}
    used = sorted(cols)  # columns with a node: empty layers take no room
    for i, col in enumerate(used):
        names, x = cols[col], MARGIN + i * COL
        if names[0].startswith("MLP"):
            pos[names[0]] = (x, TOP + rows * step)
            continue
        y0 = TOP + (rows - len(names)) * step / 2
        for j, n in enumerate(names):
            pos[n] = (x, y0 + j * step)
    width = 2 * MARGIN + (len(used) - 1) * COL + NODE_W + 40
    return pos, max(width, 560), int(height)


def circuit_svg(c) -> str:
    """The circuit as one SVG document (see the module docs)."""
    pos, width, height = _layout(c)
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    biggest = max([abs(float(e)) for e in c.edges["effect"]] + [1e-12])
    steps = f" ({c.steps} steps)" if c.method == "eap-ig" else ""
    summary = (f"faithfulness {c.faithfulness:.3f} · {c.n_edges} edges · {c.n_nodes} nodes · {c.method}{steps} · "
               f"{c.ablation} ablation")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="Helvetica, Arial, sans-serif" role="img">',
           f'<title>{esc(f"Circuit of {c.model}: {c.n_edges} edges, faithfulness {c.faithfulness:.3f}")}</title>',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{MARGIN}" y="26" font-size="15" font-weight="bold" fill="#111">'
           f'{esc(f"{c.model} · {c.metric}")}</text>',
           f'<text x="{MARGIN}" y="46" font-size="12" fill="#333" class="summary">{esc(summary)}</text>',
           f'<text x="{MARGIN}" y="64" font-size="11" fill="#555">edge width: √|exact effect| · '
           f'<tspan fill="{POSITIVE}">blue: raises the metric</tspan> · '
           f'<tspan fill="{NEGATIVE}">orange: lowers it</tspan> · ports q, k, v on the left of a head</text>']
    port_y = {"q": 0.2, "k": 0.5, "v": 0.8, "in": 0.5}
    for r in c.edges.itertuples():
        (sx, sy), (rx, ry) = pos[r.sender], pos[r.receiver]
        x1, y1 = sx + NODE_W, sy + NODE_H / 2
        x2, y2 = rx, ry + NODE_H * port_y[r.input]
        bend = max(30.0, (x2 - x1) / 2)
        if x2 <= x1 + 20:  # a head into its own layer's MLP, drawn from below
            x1, y1, bend = sx + NODE_W / 2, sy + NODE_H, 30.0
        effect = float(r.effect)
        w = 0.8 + 7.2 * math.sqrt(abs(effect) / biggest)  # by area: small effects stay visible
        colour = POSITIVE if effect >= 0 else NEGATIVE
        name = f"{r.sender} → {r.receiver}" + (f".{r.input}" if r.input != "in" else "")
        out.append(f'<g class="edge" data-edge="{esc(r.edge)}"><title>{esc(name)}: effect {effect:.3f}, '
                   f'attribution {float(r.attribution):.3f}</title>'
                   f'<path d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" '
                   f'fill="none" stroke="{colour}" stroke-width="{w:.2f}" stroke-opacity="0.75" stroke-linecap="round"/></g>')
    inputs: dict[str, set] = {}
    for r in c.edges.itertuples():
        inputs.setdefault(r.receiver, set()).add(r.input)
    for n, (x, y) in pos.items():
        kind = "io" if n in ("embed", "logits") else "mlp" if n.startswith("MLP") else "head"
        fill = {"io": "#f3f4f6", "mlp": "#fef3c7", "head": "#e0e7ff"}[kind]
        out.append(f'<g class="node" data-node="{esc(n)}"><title>{esc(n)}</title>'
                   f'<rect x="{x}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" '
                   f'stroke="#374151" stroke-width="1"/>'
                   f'<text x="{x + NODE_W / 2}" y="{y + NODE_H / 2 + 4:.1f}" font-size="12" text-anchor="middle" '
                   f'fill="#111">{esc(n)}</text>')
        for p in sorted(inputs.get(n, set()) - {"in"}):
            out.append(f'<text class="port" x="{x - 4}" y="{y + NODE_H * port_y[p] + 3:.1f}" font-size="9" '
                       f'text-anchor="end" fill="#374151">{p}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


_PAGE = """{head}<h1>{title}</h1>
<p class="meta">{meta}</p>
<div class="picture">{svg}</div>
<h2>Edges</h2>
<p class="meta">effect: exact (the corrupted run with only this receiver given the sender's clean output),
attribution: the same estimated from gradients; both as a fraction of clean − corrupted.</p>
<table class="edges"><thead><tr><th>edge</th><th>input</th><th>attribution</th><th>effect</th></tr></thead>
<tbody>{rows}</tbody></table>
</body>
</html>
"""

_CSS = """body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111}
.meta{color:#444;font-size:13px}.picture{overflow-x:auto;border:1px solid #ddd;display:inline-block}
.edge:hover path{stroke-opacity:1}.edge path{transition:stroke-opacity .1s}
table.edges{border-collapse:collapse;font-size:13px;margin-top:8px}
table.edges td,table.edges th{border-bottom:1px solid #eee;padding:3px 10px;text-align:right}
table.edges td:first-child,table.edges th:first-child{text-align:left;font-family:monospace}
td.pos{color:#1d4ed8}td.neg{color:#c2410c}"""


def circuit_html(c) -> str:
    """The circuit's picture and its edge table as one page that needs nothing else."""
    esc = html.escape
    rows = "".join(
        f'<tr><td>{esc(r.edge)}</td><td>{esc("" if r.input == "in" else r.input)}</td>'
        f'<td>{float(r.attribution):.3f}</td><td class="{"pos" if r.effect >= 0 else "neg"}">{float(r.effect):.3f}</td></tr>'
        for r in c.edges.itertuples())
    digest = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; base-uri 'none'; form-action 'none'"
    meta = (f"metric {c.metric}: clean {c.clean:.4f}, corrupted {c.corrupted:.4f}, circuit {c.value:.4f} · "
            f"faithfulness {c.faithfulness:.3f} ({c.n_edges} of {len(c.candidates)} verified candidates, "
            f"{c.attrs.get('total_edges')} edges in the graph; all candidates: {c.faithfulness_candidates:.3f}) · "
            f"ranked by {c.method}, {c.ablation} ablation")
    title = esc(f"Circuit · {c.model}")
    return _PAGE.format(head=page_head(csp, title, _CSS), title=title, meta=esc(meta), svg=circuit_svg(c),
                        rows=rows)


class CircuitPicture:
    """A circuit as a notebook shows it (``interp.show(circuit)``): its SVG inline."""

    def __init__(self, circuit):
        self.circuit = circuit

    def _repr_svg_(self) -> str:
        return circuit_svg(self.circuit)

    def svg(self) -> str:
        return circuit_svg(self.circuit)

    def html(self) -> str:
        return circuit_html(self.circuit)
