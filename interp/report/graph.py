"""An attribution graph as a picture: one SVG, and one offline HTML page holding it with its tables.

The picture (:func:`graph_svg`) has a row per layer — the token embeddings at the bottom, then
layer 0, 1, …, the logits at the top — and a column per token position, the prompt's tokens
written under the columns. In each (layer, position) cell stand the kept nodes: features as
circles, error nodes as grey squares; tokens and logits as labelled boxes. A node's area grows
with its influence on the logits (a logit's with its probability). An edge is a line from source
to target, blue where the source pushes the target up, orange where it pushes it down, its width
growing with ``√|weight|``; only the ``max_edges`` strongest kept edges are drawn (the page's
table lists every kept edge). Hovering shows a node's or edge's numbers (an SVG ``<title>``).

Clicking a feature opens its feature page (issue 24's dashboards): the link is
``feature_link.format(layer=…, feature=…)``, by default ``L{layer}.html#f{feature}`` (the page ``interp features`` writes for layer L's transcoder, opened at the feature) —
a page named ``features.html`` beside the graph with one anchor per feature. Pass another
template (e.g. ``"pages/L{layer}.html#f{feature}"``) where the pages live elsewhere.

The SVG uses presentation attributes only (no stylesheet, no script, no external reference). The
HTML page adds a node table, an edge table and the attention-side decompositions (``qk``): its
Content-Security-Policy allows only its own inline style and script (by hash) and forbids any
request; every text is escaped. Its script highlights a node's edges on hover.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from typing import Optional, Sequence

from .html import page_head

__all__ = ["graph_svg", "graph_html", "FEATURE_LINK"]

FEATURE_LINK = "L{layer}.html#f{feature}"
#: At most this many nodes are drawn in one (layer, position) cell, the most influential (the tables list all).
MAX_PER_CELL = 40
POSITIVE, NEGATIVE = "#1d4ed8", "#c2410c"
COL_MIN, ROW_H, MARGIN_L, MARGIN_T, R_MIN, R_MAX, LOGIT_STEP = 96, 92, 78, 84, 4.0, 15.0, 84


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _show(tok: str) -> str:
    from .html import show_token

    return show_token(tok)


def _model_name(g) -> str:
    import os

    return os.path.basename(str(g.info.get("model", "")).rstrip("/")) or "model"


def _layout(g, max_per_cell: int = MAX_PER_CELL):
    """Kept node -> (x, y, radius); the picture's width and height; each column's left edge and width.

    A column is as wide as its most crowded cell needs (positions where little happens stay narrow);
    the logits stand side by side in the top row, the likeliest above the last position.
    """
    kept = g.node_mask.nonzero().squeeze(1).tolist()
    L, P = g.n_layers, g.n_pos
    cells: dict[tuple, list[int]] = {}
    for i in kept:
        n = g.node(i)
        row = {"token": 0, "logit": L + 1}.get(n["kind"], (n["layer"] or 0) + 1)
        cells.setdefault((row, n["pos"]), []).append(i)

    def strength(i):
        if i >= g.n_nodes - g.n_logits:
            return float(g.logit_probs[i - (g.n_nodes - g.n_logits)])
        v = float(g.influence[i]) if g.influence is not None else 0.0
        return 0.0 if math.isnan(v) else v

    need = [max([min(len(v), max_per_cell) for (r, q), v in cells.items() if 0 < r <= L and q == p] + [0]) for p in range(P)]
    widths = [max(COL_MIN, n * (2 * R_MAX + 6) + 16) for n in need]
    room = (g.n_logits - 1) * LOGIT_STEP + 60  # the logits' row, leftwards from the last column's centre
    spare = room - (sum(widths) - widths[-1] / 2)
    if spare > 0:
        widths = [w + spare / P for w in widths]
    left = [MARGIN_L + sum(widths[:p]) for p in range(P)]
    top = max([strength(i) for i in kept if g.node(i)["kind"] in ("feature", "error")] + [1e-12])
    rows = L + 2
    height = MARGIN_T + rows * ROW_H + 60
    width = int(MARGIN_L + sum(widths) + 30)
    pos = {}
    for (row, p), nodes in cells.items():
        nodes = sorted(nodes, key=strength, reverse=True)
        y = MARGIN_T + (rows - 1 - row) * ROW_H + ROW_H / 2
        centre = left[p] + widths[p] / 2
        if row == 0:  # tokens: a box under each column
            pos[nodes[0]] = (centre, y, 0.0)
            continue
        if row == L + 1:  # logits: side by side, the most likely above the last position, the others to its left
            for j, i in enumerate(nodes):
                pos[i] = (centre - j * LOGIT_STEP, y, 0.0)
            continue
        shown = nodes[:max_per_cell]
        step = (widths[p] - 16) / max(len(shown), 1)
        for j, i in enumerate(shown):
            r = R_MIN + (R_MAX - R_MIN) * math.sqrt(max(strength(i), 0.0) / top)
            pos[i] = (left[p] + 8 + step * (j + 0.5), y, r)
    return pos, width, height, (left, widths)


def graph_svg(g, *, max_edges: int = 400, feature_link: Optional[str] = FEATURE_LINK, title: Optional[str] = None) -> str:
    """The graph as one SVG document (see the module docs)."""
    pos, width, height, (left, widths) = _layout(g)
    L, P = g.n_layers, g.n_pos
    idx = [k for k in range(g.n_edges) if int(g.edge_sources[k]) in pos and int(g.edge_targets[k]) in pos]
    idx.sort(key=lambda k: -abs(float(g.edge_weights[k])))
    drawn = idx[:max_edges]
    biggest = max([abs(float(g.edge_weights[k])) for k in drawn] + [1e-12])
    n_feat_kept = int(g.node_mask[: g.n_features].sum())
    n_feat_drawn = sum(1 for i in pos if i < g.n_features)
    scores = ""
    if g.replacement_score is not None:
        scores = (f" · replacement {g.replacement_score:.3f}, completeness {g.completeness_score:.3f}"
                  f" (pruned: {g.pruned_replacement_score:.3f}, {g.pruned_completeness_score:.3f})")
    head = title or f"Attribution graph · {_model_name(g)}"
    drawn_note = f" ({n_feat_drawn} drawn)" if n_feat_drawn < n_feat_kept else ""
    summary = (f"{n_feat_kept} of {g.n_features} features kept{drawn_note} · {len(idx)} edges kept"
               + (f" ({len(drawn)} strongest drawn)" if len(drawn) < len(idx) else "") + scores)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="Helvetica, Arial, sans-serif" role="img">',
           f'<title>{_esc(head)}</title>',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="16" y="26" font-size="15" font-weight="bold" fill="#111">{_esc(head)}</text>',
           f'<text x="16" y="46" font-size="12" fill="#333" class="summary">{_esc(summary)}</text>',
           f'<text x="16" y="64" font-size="11" fill="#555">rows: layers (tokens at the bottom, logits on top) · '
           f'columns: positions · node area: influence on the logits · edge width: √|direct effect| · '
           f'<tspan fill="{POSITIVE}">blue: raises the target</tspan> · '
           f'<tspan fill="{NEGATIVE}">orange: lowers it</tspan> · ○ feature, ■ error node</text>']
    rows = L + 2
    for row in range(rows):
        y = MARGIN_T + (rows - 1 - row) * ROW_H
        name = "tokens" if row == 0 else "logits" if row == L + 1 else f"L{row - 1}"
        fill = "#f9fafb" if row % 2 else "#ffffff"
        out.append(f'<rect x="{MARGIN_L - 6}" y="{y}" width="{sum(widths) + 12:.0f}" height="{ROW_H}" fill="{fill}"/>')
        out.append(f'<text x="{MARGIN_L - 14}" y="{y + ROW_H / 2 + 4}" font-size="12" text-anchor="end" '
                   f'fill="#374151">{name}</text>')
    for p in range(P):
        x = left[p] + widths[p] / 2
        out.append(f'<text x="{x:.1f}" y="{MARGIN_T + rows * ROW_H + 18}" font-size="11" text-anchor="middle" '
                   f'fill="#6b7280">{p}</text>')
    for k in sorted(drawn, key=lambda k: abs(float(g.edge_weights[k]))):  # strongest on top
        s, t, wt = int(g.edge_sources[k]), int(g.edge_targets[k]), float(g.edge_weights[k])
        (x1, y1, _), (x2, y2, _) = pos[s], pos[t]
        width_px = 0.6 + 5.4 * math.sqrt(abs(wt) / biggest)
        colour = POSITIVE if wt >= 0 else NEGATIVE
        label = f"{g.node(s)['label']} @{g.node(s)['pos']} → {g.node(t)['label']} @{g.node(t)['pos']}: {wt:+.4f}"
        out.append(f'<g class="edge" data-s="{s}" data-t="{t}"><title>{_esc(label)}</title>'
                   f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                   f'stroke-width="{width_px:.2f}" stroke-opacity="0.55" stroke-linecap="round"/></g>')
    for i, (x, y, r) in pos.items():
        n = g.node(i)
        inf = "" if g.influence is None else f", influence {float(g.influence[i]):.4f}"
        if n["kind"] == "token":
            text = _show(n["token"])
            w = max(30, 7 * len(text) + 12)
            tip = f"token {text!r} @{n['pos']}{inf}"
            out.append(f'<g class="node token" data-node="{i}"><title>{_esc(tip)}</title>'
                       f'<rect x="{x - w / 2:.1f}" y="{y - 11:.1f}" width="{w}" height="22" rx="4" fill="#f3f4f6" '
                       f'stroke="#374151" stroke-width="1"/><text x="{x:.1f}" y="{y + 4:.1f}" font-size="12" '
                       f'text-anchor="middle" fill="#111">{_esc(text)}</text></g>')
        elif n["kind"] == "logit":
            j = i - (g.n_nodes - g.n_logits)
            text = f"{_show(n['token'])} {float(g.logit_probs[j]):.2f}"
            w = min(LOGIT_STEP - 6, max(44, 7 * len(text) + 12))
            out.append(f'<g class="node logit" data-node="{i}"><title>{_esc("logit " + n["label"])}</title>'
                       f'<rect x="{x - w / 2:.1f}" y="{y - 11:.1f}" width="{w}" height="22" rx="4" fill="#ecfdf5" '
                       f'stroke="#065f46" stroke-width="1"/><text x="{x:.1f}" y="{y + 4:.1f}" font-size="12" '
                       f'text-anchor="middle" fill="#111">{_esc(text)}</text></g>')
        elif n["kind"] == "error":
            tip = f"{n['label']} @{n['pos']}{inf}"
            out.append(f'<g class="node error" data-node="{i}"><title>{_esc(tip)}</title>'
                       f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" fill="#9ca3af" '
                       f'stroke="#374151" stroke-width="0.8"/></g>')
        else:
            act = float(g.activations[i])
            tip = f"{n['label']} @{n['pos']} ({_show(n['token'])!r}): activation {act:.3f}{inf}"
            circle = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#fde68a" stroke="#92400e" '
                      f'stroke-width="1"/><text x="{x:.1f}" y="{y + r + 11:.1f}" font-size="9" text-anchor="middle" '
                      f'fill="#374151" stroke="#fff" stroke-width="3" paint-order="stroke">{n["feature"]}</text>')  # a halo over the edges
            if feature_link:
                href = feature_link.format(layer=n["layer"], feature=n["feature"])
                circle = f'<a href="{_esc(href)}">{circle}</a>'
            out.append(f'<g class="node feature" data-node="{i}"><title>{_esc(tip)}</title>{circle}</g>')
    out.append("</svg>")
    return "\n".join(out)


_CSS = """body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111}
.meta{color:#444;font-size:13px;max-width:1100px}.picture{overflow-x:auto;border:1px solid #ddd;display:inline-block}
.edge.hl line{stroke-opacity:1}.edge.dim line{stroke-opacity:.08}
table{border-collapse:collapse;font-size:13px;margin-top:8px}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:right}
td.l,th.l{text-align:left;font-family:monospace}td.pos{color:#1d4ed8}td.neg{color:#c2410c}"""

# Hovering a node highlights its edges and dims the others; the page marks itself ready for tests.
_JS = """(function(){var edges=document.querySelectorAll('.edge');
function mark(id){for(var i=0;i<edges.length;i++){var e=edges[i];var on=e.getAttribute('data-s')===id||e.getAttribute('data-t')===id;
e.classList.toggle('hl',on);e.classList.toggle('dim',!on);}}
function clear(){for(var i=0;i<edges.length;i++){edges[i].classList.remove('hl','dim');}}
var nodes=document.querySelectorAll('.node');for(var i=0;i<nodes.length;i++){(function(n){
n.addEventListener('mouseenter',function(){mark(n.getAttribute('data-node'));});n.addEventListener('mouseleave',clear);})(nodes[i]);}
document.body.setAttribute('data-ready','1');})();"""

_PAGE = """{head}<h1>{title}</h1>
<p class="meta">{meta}</p>
<div class="picture">{svg}</div>
<h2>Features kept</h2>
<p class="meta">Most influential first. Click a feature for its page ({link_note}).</p>
<table class="nodes"><thead><tr><th class="l">feature</th><th>position</th><th class="l">token</th><th>activation</th>
<th>influence</th></tr></thead><tbody>{node_rows}</tbody></table>
<h2>Edges kept</h2>
<p class="meta">weight: the direct effect of the source (its activation included) on the target's pre-activation
(a logit: minus the mean logit), in the frozen replacement model.</p>
<table class="edges"><thead><tr><th class="l">source</th><th class="l">target</th><th>weight</th></tr></thead>
<tbody>{edge_rows}</tbody></table>
{qk}
<script>{js}</script>
</body>
</html>
"""


def graph_html(g, *, qk: Sequence = (), feature_link: Optional[str] = FEATURE_LINK, max_edges: int = 400,
               top_pairs: int = 15, table_edges: int = 2000) -> str:
    """The picture, a table of the kept features and edges, and any QK decompositions, as one page needing nothing else.

    The edge table lists the ``table_edges`` strongest kept edges (the JSON holds them all).
    """
    n_feat = g.n_features
    feats = [i for i in g.node_mask.nonzero().squeeze(1).tolist() if i < n_feat]
    if g.influence is not None:
        feats.sort(key=lambda i: -float(g.influence[i]))
    node_rows = []
    for i in feats:
        n = g.node(i)
        name = _esc(n["label"])
        if feature_link:
            name = f'<a href="{_esc(feature_link.format(layer=n["layer"], feature=n["feature"]))}">{name}</a>'
        inf = "" if g.influence is None else f"{float(g.influence[i]):.4f}"
        node_rows.append(f'<tr><td class="l">{name}</td><td>{n["pos"]}</td><td class="l">{_esc(_show(n["token"]))}</td>'
                         f'<td>{float(g.activations[i]):.3f}</td><td>{inf}</td></tr>')
    order = sorted(range(g.n_edges), key=lambda k: -abs(float(g.edge_weights[k])))
    more = len(order) - table_edges
    order = order[:table_edges]
    edge_rows = []
    for k in order:
        s, t, wt = int(g.edge_sources[k]), int(g.edge_targets[k]), float(g.edge_weights[k])
        ns, nt = g.node(s), g.node(t)
        edge_rows.append(f'<tr><td class="l">{_esc(ns["label"])} @{ns["pos"]}</td><td class="l">{_esc(nt["label"])} '
                         f'@{nt["pos"]}</td><td class="{"pos" if wt >= 0 else "neg"}">{wt:+.4f}</td></tr>')
    if more > 0:
        edge_rows.append(f'<tr><td class="l" colspan="3">… and {more} weaker edges (all are in the graph\'s JSON)</td></tr>')
    qk_html = "".join(_qk_section(d, top_pairs) for d in qk)
    digest = lambda text: base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()  # noqa: E731
    csp = (f"default-src 'none'; style-src 'sha256-{digest(_CSS)}'; script-src 'sha256-{digest(_JS)}'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    meta = (f"prompt {g.prompt!r} · model {g.info.get('model', '?')} (fold_ln={g.info.get('fold_ln', '?')}) · "
            f"{g.info.get('transcoders', '')} · node threshold {g.node_threshold}, edge threshold {g.edge_threshold}")
    if g.replacement_score is not None:
        meta += (f" · replacement score {g.replacement_score:.3f}, completeness {g.completeness_score:.3f} "
                 f"(of the pruned graph: {g.pruned_replacement_score:.3f}, {g.pruned_completeness_score:.3f})")
    link_note = _esc(feature_link) if feature_link else "no feature pages linked"
    title = _esc(f"Attribution graph · {_model_name(g)}")
    return _PAGE.format(head=page_head(csp, title, _CSS), title=title, meta=_esc(meta),
                        svg=graph_svg(g, max_edges=max_edges, feature_link=feature_link), node_rows="".join(node_rows),
                        edge_rows="".join(edge_rows), qk=qk_html, js=_JS, link_note=link_note)


def _qk_section(d, top: int) -> str:
    """One QK decomposition (an :class:`~interp.features.qk.QKAttribution`) as tables."""
    pairs = d.top_pairs(top)
    rows = "".join(f'<tr><td class="l">{_esc(r.query_label)}</td><td class="l">{_esc(r.key_label)}</td>'
                   f'<td class="{"pos" if r.term >= 0 else "neg"}">{r.term:+.4f}</td></tr>' for r in pairs.itertuples())

    def side(df):
        return "".join(f'<tr><td class="l">{_esc(r.label)}</td><td class="{"pos" if r.share >= 0 else "neg"}">'
                       f'{r.share:+.4f}</td></tr>' for r in df.head(top).itertuples())

    return (f'<h2 class="qk">Why {d.head_label} attends from position {d.q_pos} to {d.k_pos}</h2>'
            f'<p class="meta">pre-softmax score {d.score:.4f} = the sum of all query-node × key-node terms '
            f'({d.total():.4f}); "bias" is everything that is not a node (biases, position embeddings, the BOS '
            f'position\'s MLP outputs).</p>'
            f'<table class="qk-pairs"><thead><tr><th class="l">query side</th><th class="l">key side</th><th>term</th>'
            f'</tr></thead><tbody>{rows}</tbody></table>'
            f'<table class="qk-side"><thead><tr><th class="l">key-side node</th><th>share of the score</th></tr></thead>'
            f'<tbody>{side(d.key_side())}</tbody></table>'
            f'<table class="qk-side"><thead><tr><th class="l">query-side node</th><th>share of the score</th></tr></thead>'
            f'<tbody>{side(d.query_side())}</tbody></table>')
