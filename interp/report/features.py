"""Feature pages as one self-contained HTML page: data in an escaped JSON block, CSS and JavaScript inline.

The page has a list of every feature computed (sortable by density, max or mean activation, or
index; dead features marked) and, beside it, one feature's page: its numbers, activation
histogram with the sampled intervals, promoted and suppressed tokens, per-head weights
(``hook_z``), its top examples and the interval samples, each token's background coloured by the
feature's activation there (hover: the token and its value); for ``hook_z`` features the top
examples can be coloured by direct feature attribution instead. Each feature's section has the
stable id ``f{index}`` and the page opens it from the address's fragment: ``features.html#f12``
(the attribution-graph page links there).

As in the attention report (:mod:`interp.report.html`): token text is data, never markup (the
JSON block escapes ``<``, ``>``, ``&`` and U+2028/2029; the script writes text with
``textContent`` only), and a Content-Security-Policy allows only the page's own inline style and
script and forbids every request.
"""

from __future__ import annotations

import html

from .html import _asset, _sha256, json_for_script, page_head, show_token

__all__ = ["render", "display_token"]

_PAGE = """{head}<header><h1 id="title"></h1><div class="meta" id="meta"></div><div id="notes"></div></header>
<noscript><p>This page draws itself with JavaScript; its data is in the JSON block of this file.</p></noscript>
<div id="layout">
<nav id="side">
<div id="controls"></div>
<div id="list-scroll"><table id="list"><thead></thead><tbody></tbody></table></div>
</nav>
<main id="page"></main>
</div>
<div id="status" class="status"></div>
<script type="application/json" id="pages-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def display_token(tok: str) -> str:
    """A token as the page shows it: newline ``↵``, tab ``⇥``, carriage return ``␍``; other controls escaped.

    >>> display_token("\\n    def"), display_token("a\\tb")
    ('↵    def', 'a⇥b')
    """
    return show_token(tok.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍"))


def _page_data(p) -> dict:
    """The pages in the compact form the script reads: token ids index a table of the strings shown."""
    vocab: dict[str, int] = {}

    def tid(s: str) -> int:
        return vocab.setdefault(s, len(vocab))

    def example(a: dict) -> dict:
        out = {"t": [tid(s) for s in a["tokens"]], "v": a["values"], "q": a["qualifyingTokenIndex"],
               "m": a["maxValueTokenIndex"], "w": a["dataIndex"], "p": a["position"]}
        if "dfaValues" in a:
            out["d"] = a["dfaValues"]
        return out

    feats = []
    for f in p.features:
        tops = [example(a) for a in f["activations"] if a["binMin"] == -1]
        bins: list[dict] = []
        for a in f["activations"]:
            if a["binMin"] == -1:
                continue
            if not bins or bins[-1]["lo"] != a["binMin"]:
                bins.append({"lo": a["binMin"], "hi": a["binMax"], "share": a["binContains"], "ex": []})
            bins[-1]["ex"].append(example(a))
        feats.append({
            "i": f["index"], "dead": f["dead"], "density": f["frac_nonzero"], "max": f["maxActApprox"],
            "mean": f["mean_act"], "n": f["n_nonzero"],
            "hx": f["freq_hist_data_bar_values"], "hy": f["freq_hist_data_bar_heights"],
            "pos": [[tid(s), v] for s, v in zip(f["pos_str"], f["pos_values"])],
            "neg": [[tid(s), v] for s, v in zip(f["neg_str"], f["neg_values"])],
            "lx": f["logits_hist_data_bar_values"], "ly": f["logits_hist_data_bar_heights"],
            "heads": f["decoder_weights_dist"], "top": tops, "bins": bins[::-1],  # highest interval first
        })
    m = p.meta
    sae = m["sae"]
    what = f"{m['hook_name']} → {m['hook_name_out']}" if m.get("hook_name_out") else m["hook_name"]
    k = f", k={sae['k']}" if sae.get("k") else ""
    notes = [
        f"{m['n_tokens']:,} tokens of {m['text']} in {m['n_prompts_total']:,} windows of {m['n_tokens_in_prompt']} "
        "(the BOS that starts each window is not counted). Density: the fraction of those tokens where the feature "
        "is > 0. Top examples: one per window (its largest activation), the example's token outlined.",
        "Intervals: equal-width activation ranges from 0 to the max; examples drawn uniformly from the tokens "
        "in each; 'share' is the fraction of the feature's firings in the range.",
        "Logit effects: the decoder row written into the residual stream, through the final LayerNorm "
        "(scale taken as 1) and the unembedding, centred over the vocabulary: logit change per unit of activation.",
    ]
    if sae.get("architecture") and m["hook_name"].endswith("hook_z"):
        notes.append("Head weights: the share of each head in the decoder row's norm. DFA: the feature's "
                     "pre-activation at the example's token split over the source tokens attention reads.")
    return {
        "title": m["title"],
        "meta": f"{m['model_id']} · fold_ln={m['fold_ln']} · {sae['architecture']}{k} SAE, d_sae={sae['d_sae']} "
                f"at {what} · {len(p.features)} features shown of {m['n_features_computed']} computed "
                f"({m['n_dead_computed']} dead) · interp {m['interp_version']}",
        "notes": notes, "vocab": [display_token(s) for s in vocab], "features": feats, "sort": p.sort,
        "left": m["settings"]["left"],
    }


def render(p) -> str:
    """The :class:`~interp.features.FeaturePages` as one self-contained HTML page."""

    css, js = _asset("features.css"), _asset("features.js")
    csp = (f"default-src 'none'; script-src '{_sha256(js)}'; style-src '{_sha256(css)}'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return _PAGE.format(head=page_head(csp, html.escape(p.meta["title"]), css),
                        data=json_for_script(_page_data(p)), js=js)
