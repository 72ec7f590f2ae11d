"""The attention side of an attribution graph: which feature pairs make a head attend from one position to another.

An attribution graph freezes attention patterns, so it says what a head *moved* but not why it
looked there. The pre-softmax score of head ``h`` (layer ``L``) from query position ``q`` to key
position ``k`` is ``q·k/√d_head``, and in the frozen replacement model (LayerNorm scales and the
earlier layers' patterns frozen) both ``q`` and ``k`` are affine in the graph's nodes: every
feature, error node and token embedding before layer ``L`` contributes a vector to each, and
everything else (biases, position embeddings, the BOS position's MLP outputs) is a constant,
the *bias* node of each side. So the score is exactly

    score = Σ_(a, b) (q_a · k_b) / √d_head,    a over query-side nodes and bias, b over key-side ones,

a sum of query-node × key-node terms. :func:`qk_attribution` computes each node's contribution
to ``q`` and to ``k`` (``d_head`` backward passes per side, batched into one, through the model's
own forward pass) and lists the largest terms; the bias nodes are what is left of ``q`` and ``k``
(the tests check them against the frozen model run with every node removed).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch import Tensor

from .. import hooks as hk
from ..errors import InterpError

__all__ = ["QKAttribution", "qk_attribution", "parse_qk"]


@dataclass
class QKAttribution:
    """The decomposition of one attention score (see the module docs).

    ``query``/``key`` ``[n_sources + 1, d_head]``: each source node's contribution to the head's
    query at ``q_pos`` / key at ``k_pos`` (rows in the graph's node order: features, errors, tokens;
    the last row is the bias). ``score`` is the model's own pre-softmax score (``hook_attn_scores``).
    """

    layer: int
    head: int
    q_pos: int
    k_pos: int
    score: float
    query: Tensor
    key: Tensor
    labels: list[str]  # one per row of query/key
    d_head: int

    @property
    def head_label(self) -> str:
        return f"L{self.layer}H{self.head}"

    def terms(self) -> Tensor:
        """All pair terms ``[n_sources + 1, n_sources + 1]``: ``term[a, b] = q_a · k_b / √d_head``."""
        return self.query @ self.key.T / math.sqrt(self.d_head)

    def total(self) -> float:
        """The sum of all terms: equals :attr:`score` (the decomposition is exact)."""
        return float(self.query.sum(0) @ self.key.sum(0) / math.sqrt(self.d_head))

    def query_side(self):
        """Each query-side node's share of the score, ``q_a · k / √d_head`` (a DataFrame, largest |share| first)."""
        return self._side(self.query @ self.key.sum(0) / math.sqrt(self.d_head), "query")

    def key_side(self):
        """Each key-side node's share of the score, ``q · k_b / √d_head``."""
        return self._side(self.key @ self.query.sum(0) / math.sqrt(self.d_head), "key")

    def _side(self, share: Tensor, side: str):
        import pandas as pd

        df = pd.DataFrame({"node": range(len(share)), "label": self.labels, "share": share.tolist()})
        df = df[df["share"] != 0]
        return df.reindex(df["share"].abs().sort_values(ascending=False, kind="stable").index).reset_index(drop=True)

    def top_pairs(self, n: int = 20):
        """The ``n`` largest terms by magnitude: query_node, query_label, key_node, key_label, term (a DataFrame)."""
        import pandas as pd

        t = self.terms()
        flat = t.reshape(-1)
        k = min(n, int((flat != 0).sum()))
        idx = torch.topk(flat.abs(), k).indices if k else torch.zeros(0, dtype=torch.long)
        a, b = (idx // t.shape[1]).tolist(), (idx % t.shape[1]).tolist()
        return pd.DataFrame({"query_node": a, "query_label": [self.labels[i] for i in a], "key_node": b,
                             "key_label": [self.labels[i] for i in b], "term": flat[idx].tolist()})

    def to_dict(self, n: int = 20) -> dict:
        """Plain data for JSON: the score, its check, the top pairs and the top nodes of each side."""
        return {"head": self.head_label, "query_pos": self.q_pos, "key_pos": self.k_pos, "score": self.score,
                "sum_of_terms": self.total(), "top_pairs": self.top_pairs(n).to_dict("records"),
                "query_side": self.query_side().head(n).to_dict("records"),
                "key_side": self.key_side().head(n).to_dict("records")}

    def __repr__(self) -> str:
        return (f"QKAttribution({self.head_label}, query {self.q_pos} -> key {self.k_pos}: score {self.score:.4f} = "
                f"sum of {self.query.shape[0]}² terms {self.total():.4f})")


def parse_qk(model, spec: str) -> tuple[int, int, int, int]:
    """``"L1H4@12,5"`` (head, then query and key positions) -> ``(layer, head, q_pos, k_pos)``; positions may be negative."""
    from ..select import heads

    if not isinstance(spec, str) or "@" not in spec:
        raise InterpError(f"--qk {spec!r}: write HEAD@QUERY,KEY, e.g. L1H4@12,5")
    head_text, _, pos_text = spec.partition("@")
    hs = heads(model, head_text)
    if len(hs) != 1:
        raise InterpError(f"--qk {spec!r}: name one head, not {len(hs)}")
    parts = pos_text.split(",")
    try:
        q, k = (int(p) for p in parts)
    except ValueError:
        raise InterpError(f"--qk {spec!r}: the positions must be two whole numbers, QUERY,KEY") from None
    return (*hs[0], q, k)


def qk_attribution(
    model,
    transcoders: Union[str, os.PathLike, Sequence[Any]],
    prompt: Any,
    head: Any,
    q_pos: int,
    k_pos: int,
) -> QKAttribution:
    """Decompose head ``head``'s pre-softmax score from ``q_pos`` to ``k_pos`` on ``prompt`` into node pairs.

    ``head``: ``(layer, head)`` or ``"L1H4"``; positions within the prompt (BOS = 0; negative
    from the end); ``k_pos ≤ q_pos``. Nodes are the attribution graph's (features, errors,
    tokens) through ``transcoders``, plus one bias node per side.

    >>> import interp
    >>> from interp.features import SAE, SAEConfig
    >>> model = interp.load("interp-tiny")
    >>> tcs = [SAE(SAEConfig("standard", d_in=128, d_sae=256, hook_name=f"blocks.{l}.ln2.hook_normalized",
    ...        hook_name_out=f"blocks.{l}.hook_mlp_out", apply_b_dec_to_input=False, fold_ln=True), seed=l)
    ...        for l in range(2)]
    >>> qk = qk_attribution(model, tcs, "a b c a b", "L1H3", -1, 2)
    >>> abs(qk.total() - qk.score) < 1e-3 * max(1.0, abs(qk.score))
    True
    """
    from ..select import heads
    from .graph import _tokens
    from .replacement import Replacement
    from .transcoders import load_transcoders

    if isinstance(transcoders, (str, os.PathLike)):
        transcoders = load_transcoders(transcoders, device=str(model.cfg.device))
    hs = heads(model, head)
    if len(hs) != 1:
        raise InterpError(f"head {head!r}: name one head, not {len(hs)}")
    layer, h = hs[0]
    tokens = _tokens(model, prompt)
    P = len(tokens)
    qp, kp = (p + P if isinstance(p, int) and not isinstance(p, bool) and p < 0 else p for p in (q_pos, k_pos))
    for name, p, given in (("query", qp, q_pos), ("key", kp, k_pos)):
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < P:
            raise InterpError(f"{name} position {given!r} out of range: the prompt has {P} tokens (0–{P - 1}, or negative)")
    if kp > qp:
        raise InterpError(f"key position {kp} is after query position {qp}: attention is causal")
    rep = Replacement(model, transcoders, tokens)
    names = [hk.name("q", layer), hk.name("k", layer), hk.name("attn_scores", layer)]
    with torch.no_grad():
        _, cache = model.run(tokens[None], names=names)
    q_total, k_total = cache[names[0]][0, qp, h], cache[names[1]][0, kp, h]
    score = float(cache[names[2]][0, h, qp, kp])
    dh = model.cfg.d_head
    eye = torch.eye(dh, dtype=rep.dtype)
    rep.build(2 * dh, sites=[("q", layer), ("k", layer)])
    rows = rep.rows([(("q", layer), (qp, h), eye[d]) for d in range(dh)] +
                    [(("k", layer), (kp, h), eye[d]) for d in range(dh)])
    rep.release()
    query = torch.cat([rows[:dh].T, (q_total - rows[:dh].sum(1))[None]])
    key = torch.cat([rows[dh:].T, (k_total - rows[dh:].sum(1))[None]])
    labels = _labels(rep, model) + ["bias"]
    return QKAttribution(layer, h, qp, kp, score, query, key, labels, dh)


def _labels(rep, model) -> list[str]:
    """Readable labels of the source nodes, in the graph's order."""
    toks = [model.tokenizer.decode([int(t)]) for t in rep.tokens]
    out = [f"L{l} F{f} @{p} {toks[p]!r}" for l, p, f in rep.features.tolist()]
    out += [f"L{l} error @{p} {toks[p]!r}" for l in range(rep.n_layers) for p in range(rep.n_pos)]
    out += [f"token @{p} {toks[p]!r}" for p in range(rep.n_pos)]
    return out
