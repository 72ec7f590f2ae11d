"""Attribution graphs through transcoders: which features, on this prompt, caused this output.

:func:`attribution_graph` replaces each MLP of the model by its transcoder, freezes attention
patterns and LayerNorm scales at their values on the prompt (:mod:`interp.features.replacement`)
and computes the graph of circuit-tracer (Ameisen et al. 2025; ``circuit-tracer`` 0.5):

* **nodes**, in circuit-tracer's order: the active transcoder features (layer, position, feature;
  none at the first position, BOS), one *error node* per layer × position (what the transcoder
  misses: with them the replacement reproduces the model's logits exactly), the token
  embeddings, and the output logits at the last position — the most likely ones, up to
  ``max_n_logits`` until ``desired_logit_prob`` of the probability;
* **edges**: the direct effect of a source's activation on a target's pre-activation (a feature's
  ``encode_pre``; a logit minus the mean logit) through the frozen linear paths (residual stream,
  frozen LayerNorms, attention heads' OV circuits under their frozen patterns); an edge from a
  feature includes its activation, so a target is the sum of its incoming edges plus constants;
* **pruning** by influence on the logits (``node_threshold``, ``edge_threshold``) and the
  **replacement and completeness scores**, as circuit-tracer computes them
  (:mod:`interp.features.influence`).

Memory grows with what is kept, not with nodes²: rows of the adjacency matrix are computed
in batches (one backward pass each), folded into the node influence as they come and dropped;
the rows of the nodes that survive node pruning are kept (or recomputed) to prune edges, and the
graph holds only the kept edges (``keep_all=True`` keeps the whole matrix, for small graphs).

The graph is the same in both weight modes (folded LayerNorm or not): its edges are read
through LayerNorms, which remove the means that folding centres away.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InterpError
from .influence import (NodeKinds, StreamingInfluence, _layer_runs, cumulative_scores, find_threshold, graph_scores,
                        prune, sparse_graph_scores)

__all__ = ["AttributionGraph", "attribution_graph", "verify_edges"]

Number = Union[int, float]


@dataclass
class AttributionGraph:
    """An attribution graph of one prompt (see the module docs). Node ``i`` is, in order:

    ``i < n_features``: feature ``features[i]`` = (layer, position, feature id); then the error
    node of (layer, position), layer-major; then the token at each position; then the logits.
    ``edges`` are the kept ones: ``(target, source, weight)`` node indices; ``node_mask`` the kept
    nodes. ``influence`` is each node's influence on the logits, ``cumulative`` its place in the
    cumulative influence (circuit-tracer's JSON calls it ``influence``). Scores:
    ``replacement_score``/``completeness_score`` of the whole graph, ``pruned_*`` of the kept edges.
    """

    prompt: str
    tokens: Int[Tensor, " pos"]
    str_tokens: list[str]
    n_layers: int
    features: Int[Tensor, "n_features 3"]
    activations: Float[Tensor, " n_features"]
    logit_ids: Int[Tensor, " n_logits"]
    logit_probs: Float[Tensor, " n_logits"]
    logit_tokens: list[str]
    node_mask: Tensor
    edge_targets: Tensor
    edge_sources: Tensor
    edge_weights: Tensor
    influence: Optional[Tensor] = None
    cumulative: Optional[Tensor] = None
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    replacement_score: Optional[float] = None
    completeness_score: Optional[float] = None
    pruned_replacement_score: Optional[float] = None
    pruned_completeness_score: Optional[float] = None
    adjacency: Optional[Tensor] = None  # the full matrix [n_nodes, n_nodes] with keep_all=True
    info: dict = field(default_factory=dict)  # model, weight mode, transcoders, timings

    # ------------------------------------------------------------------ shape
    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_logits(self) -> int:
        return len(self.logit_ids)

    @property
    def kinds(self) -> NodeKinds:
        return NodeKinds(self.n_features, self.n_layers, self.n_pos, self.n_logits, self.features[:, 0])

    @property
    def n_nodes(self) -> int:
        return self.kinds.n_nodes

    @property
    def n_edges(self) -> int:
        return len(self.edge_weights)

    def node(self, i: int) -> dict:
        """Node ``i`` as a dict: kind (feature, error, token, logit), layer, position, feature, token, label."""
        nf, L, P = self.n_features, self.n_layers, self.n_pos
        if i < nf:
            layer, pos, fid = (int(v) for v in self.features[i])
            return {"kind": "feature", "layer": layer, "pos": pos, "feature": fid, "token": self.str_tokens[pos],
                    "label": f"L{layer} F{fid}"}
        if i < nf + L * P:
            layer, pos = divmod(i - nf, P)
            return {"kind": "error", "layer": layer, "pos": pos, "feature": None, "token": self.str_tokens[pos],
                    "label": f"L{layer} error"}
        if i < nf + L * P + P:
            pos = i - nf - L * P
            return {"kind": "token", "layer": None, "pos": pos, "feature": None, "token": self.str_tokens[pos],
                    "label": self.str_tokens[pos]}
        j = i - nf - L * P - P
        if not 0 <= j < self.n_logits:
            raise InterpError(f"node {i} out of range: the graph has {self.n_nodes} nodes")
        return {"kind": "logit", "layer": L, "pos": P - 1, "feature": int(self.logit_ids[j]),
                "token": self.logit_tokens[j], "label": f"{self.logit_tokens[j]!r} p={float(self.logit_probs[j]):.3f}"}

    def nodes(self, kept: bool = True):
        """A tidy DataFrame of the nodes (the kept ones by default): node, kind, layer, pos, feature, token,
        activation, influence, cumulative, label."""
        import pandas as pd

        idx = self.node_mask.nonzero().squeeze(1).tolist() if kept else range(self.n_nodes)
        rows = []
        for i in idx:
            d = {"node": i, **self.node(i)}
            d["activation"] = float(self.activations[i]) if i < self.n_features else None
            d["influence"] = float(self.influence[i]) if self.influence is not None else None
            d["cumulative"] = float(self.cumulative[i]) if self.cumulative is not None else None
            rows.append(d)
        cols = ["node", "kind", "layer", "pos", "feature", "token", "activation", "influence", "cumulative", "label"]
        # layer and feature are None for some kinds of node: integers with gaps, not floats
        return pd.DataFrame(rows, columns=cols).astype({"layer": "Int64", "pos": "Int64", "feature": "Int64"})

    def edges(self):
        """A tidy DataFrame of the kept edges: source, target (node indices), weight, source_pos, target_pos, and
        labels that say where each node is (``L0 F770 @4``, ``token ' queue' @3``, ``logit ' number'``)."""
        import pandas as pd

        s, t, w = self.edge_sources.tolist(), self.edge_targets.tolist(), self.edge_weights.tolist()
        where = {i: self._placed(i) for i in set(s) | set(t)}
        return pd.DataFrame({"source": s, "target": t, "weight": w,
                             "source_pos": pd.array([where[i][0] for i in s], dtype="Int64"),
                             "target_pos": pd.array([where[i][0] for i in t], dtype="Int64"),
                             "source_label": [where[i][1] for i in s], "target_label": [where[i][1] for i in t]})

    def _placed(self, i: int) -> tuple[Optional[int], str]:
        """Node ``i``'s position (None for a logit) and a label that names the position."""
        d = self.node(i)
        if d["kind"] == "logit":
            return None, f"logit {d['token']!r}"
        if d["kind"] == "token":
            return d["pos"], f"token {d['token']!r} @{d['pos']}"
        return d["pos"], f"{d['label']} @{d['pos']}"

    def __repr__(self) -> str:
        kept = int(self.node_mask[: self.n_features].sum())
        scores = ""
        if self.replacement_score is not None:
            scores = f", replacement {self.replacement_score:.3f}, completeness {self.completeness_score:.3f}"
        return (f"AttributionGraph({self.prompt!r}: {self.n_features} features ({kept} kept), {self.n_logits} logits, "
                f"{self.n_edges} edges kept{scores})")

    # ------------------------------------------------------------------ circuit-tracer's frontend JSON
    def to_json(self, slug: Optional[str] = None, scan: Optional[str] = None) -> dict:
        """circuit-tracer's frontend JSON (``create_graph_files``): their viewer and Neuronpedia open it.

        Feature ids are ``"{layer}_{feature}_{pos}"``, errors ``"0_{layer}_{pos}"``, tokens
        ``"E_{token_id}_{pos}"``, logits ``"{n_layers + 1}_{token_id}_{pos}"``; a node's ``influence``
        is its cumulative influence; a link's ``weight`` its adjacency entry. interp's own numbers
        (scores, thresholds, the model) ride along under the top-level key ``"interp"``.
        """
        from .graph_json import graph_to_json

        return graph_to_json(self, slug=slug, scan=scan)

    def save_json(self, path: Union[str, os.PathLike], slug: Optional[str] = None, scan: Optional[str] = None) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        import json

        from ..export import atomic_path

        data = self.to_json(slug or Path(path).stem, scan)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        return Path(path)

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike, dict]) -> "AttributionGraph":
        """Read circuit-tracer's frontend JSON (a file or the parsed dict): the kept nodes and edges."""
        from .graph_json import graph_from_json

        return graph_from_json(cls, source)


# ============================================================================ building one
def attribution_graph(
    model,
    transcoders: Union[str, os.PathLike, Sequence[Any]],
    prompt: Union[str, Tensor, Sequence[int]],
    *,
    max_n_logits: int = 10,
    desired_logit_prob: Number = 0.95,
    node_threshold: Number = 0.8,
    edge_threshold: Number = 0.98,
    batch_size: int = 64,
    keep_all: bool = False,
    cache_mb: Number = 512,
    progress: Optional[bool] = None,
) -> AttributionGraph:
    """The attribution graph of ``prompt`` through ``transcoders`` (one per layer), pruned.

    Args:
        model: a :class:`~interp.model.HookedGPT2` (either weight mode).
        transcoders: a list of :class:`~interp.features.SAE` transcoders, one per layer (reading
            the MLP's input, writing ``hook_mlp_out``), or a directory in circuit-tracer's or
            SAELens's format (:func:`~interp.features.transcoders.load_transcoders`).
        prompt: text (BOS prepended) or token ids (used as they are; BOS should come first).
        max_n_logits, desired_logit_prob: the logit nodes: the most likely tokens at the last
            position, until their probability reaches ``desired_logit_prob``, at most ``max_n_logits``.
        node_threshold, edge_threshold: circuit-tracer's pruning (fractions of the influence kept).
        batch_size: targets per backward pass (each pass is vectorised over its targets; fewer on long
            prompts, to keep a pass's gradients within about 1 GB).
        keep_all: keep the whole adjacency matrix (``graph.adjacency``): small graphs only.
        cache_mb: memory for adjacency rows kept from the first pass, so that edge pruning does not
            recompute them (the most influential rows are kept).
        progress: a progress bar on stderr (None: only on a terminal).

    >>> import interp
    >>> from interp.features import SAE, SAEConfig
    >>> model = interp.load("interp-tiny")
    >>> tcs = [SAE(SAEConfig("standard", d_in=128, d_sae=256, hook_name=f"blocks.{l}.ln2.hook_normalized",
    ...        hook_name_out=f"blocks.{l}.hook_mlp_out", apply_b_dec_to_input=False, fold_ln=True), seed=l)
    ...        for l in range(2)]
    >>> g = attribution_graph(model, tcs, "a b a", progress=False)
    >>> g.n_layers, g.str_tokens[1:], bool(g.node_mask[-g.n_logits:].all())
    (2, ['a', ' b', ' a'], True)
    """
    import time

    from tqdm.auto import tqdm

    from .replacement import Replacement
    from .transcoders import load_transcoders

    _check_fraction("node_threshold", node_threshold)
    _check_fraction("edge_threshold", edge_threshold, upper_open=True)
    _check_fraction("desired_logit_prob", desired_logit_prob)
    for name, v in (("max_n_logits", max_n_logits), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InterpError(f"{name} must be a whole number ≥ 1, not {v!r}")
    if isinstance(transcoders, (str, os.PathLike)):
        transcoders = load_transcoders(transcoders, device=str(model.cfg.device))
    tokens = _tokens(model, prompt)
    t0 = time.perf_counter()
    rep = Replacement(model, transcoders, tokens)
    L, P, nf = rep.n_layers, rep.n_pos, rep.n_features
    # Logit nodes: circuit-tracer's salient logits (its _from_salient).
    probs = torch.softmax(rep.logits, -1)
    top_p, top_i = torch.topk(probs, min(max_n_logits, len(probs)))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor([desired_logit_prob], dtype=top_p.dtype))) + 1
    logit_ids, logit_probs = top_i[:cutoff], top_p[:cutoff]
    W_U = model.W_U
    logit_vecs = (W_U[:, logit_ids] - W_U.mean(1, keepdim=True)).T  # d(logit - mean logit) / d(final LayerNorm output)
    kinds = NodeKinds(nf, L, P, len(logit_ids), rep.features[:, 0])
    N, S = kinds.n_nodes, kinds.n_sources
    w = torch.zeros(N, dtype=torch.float64)
    w[kinds.logit_slice] = logit_probs.to(torch.float64)
    feat_order = torch.argsort(-rep.features[:, 0], stable=True)  # last layer first: a row's influence is then final
    order = torch.cat([torch.arange(S, N), feat_order])

    def target(node: int):
        if node >= S:
            return ("lnf", None), (0,), logit_vecs[node - S]
        layer, pos, _ = rep.features[node].tolist()
        return ("x", layer), (pos,), encoders[node]

    encoders = {int(i): v for i, v in zip(feat_order, rep.encoder(feat_order))} if nf else {}
    bar = tqdm(total=len(order), desc="attribution rows", unit="row", disable=_disabled(progress), leave=False)
    B = _batch(model, P, batch_size, len(order))
    # Runs of the prompt's first eighth, quarter, …, too: a target at position p needs the first p + 1
    # tokens only, and each layer's targets are taken in position order.
    rep.build(B, prefixes=[-(-P * i // 8) for i in range(1, 8)] if P >= 8 else ())
    stream = StreamingInfluence(w, S, kinds.error_slice)
    dense = torch.zeros(N, S, dtype=rep.dtype) if keep_all else None
    cache, heap, budget, used = {}, [], cache_mb * 2**20, 0
    row_bytes = S * rep.dtype.itemsize
    layers = kinds.layer
    for chunk in _chunks(order, layers[order], B):  # one layer's targets (or the logits), in position order
        rows = rep.rows([target(int(n)) for n in chunk])
        coef = stream.coefficient(chunk)
        stream.add(chunk, rows)
        if dense is not None:
            dense[chunk] = rows
        else:
            for j, c in enumerate(coef.tolist()):  # keep the most influential rows within the budget
                node = int(chunk[j])
                heapq.heappush(heap, (c, node))
                cache[node] = rows[j].clone()
                used += row_bytes
                while used > budget and heap:
                    _, drop = heapq.heappop(heap)
                    del cache[drop]
                    used -= row_bytes
        bar.update(len(chunk))
    influence = stream.influence
    t_node = find_threshold(influence, node_threshold)
    node_mask = influence >= t_node
    node_mask[kinds.token_slice] = True
    node_mask[kinds.logit_slice] = True
    sub_t = order[node_mask[order]]
    recomputed = [0]
    bar.reset(total=2 * len(sub_t))
    bar.set_description("kept rows (twice)")

    def kept_rows(js: Tensor) -> Tensor:
        """The rows of targets sub_t[js] (one layer's): from the cache, else recomputed."""
        out = torch.empty(len(js), S, dtype=rep.dtype)
        need = []
        for i, j in enumerate(js.tolist()):
            node = int(sub_t[j])
            row = dense[node] if dense is not None else cache.get(node)
            if row is None:
                need.append(i)
            else:
                out[i] = row
        for start in range(0, len(need), B):
            part = need[start:start + B]
            out[part] = rep.rows([target(int(sub_t[js[i]])) for i in part])
        recomputed[0] += len(need)
        bar.update(len(js))
        return out

    chunk = max(1, min(256, 2**26 // (8 * S)))  # 64 MB of float64 rows at a time
    pr = prune(kept_rows, sub_t, node_mask[:S], w, kinds, node_mask.clone(), t_node, edge_threshold, chunk=chunk)
    bar.close()
    rep.release()
    cache.clear()
    replacement, completeness = graph_scores(influence, stream.error_share, w, kinds)
    p_rep, p_comp = sparse_graph_scores(pr.targets, pr.sources, pr.weights.to(torch.float64), w, kinds)
    adjacency = None
    if dense is not None:
        adjacency = torch.zeros(N, N, dtype=rep.dtype)
        adjacency[:, :S] = dense
    tok = model.tokenizer
    str_tokens = [tok.decode([int(t)]) for t in tokens]
    info = {"model": model.cfg.name, "fold_ln": bool(model.cfg.fold_ln), "dtype": str(rep.dtype).replace("torch.", ""),
            "transcoders": _describe(rep.saes), "seconds": time.perf_counter() - t0, "rows_recomputed": recomputed[0],
            "node_threshold_value": t_node, "edge_threshold_value": pr.edge_threshold_value,
            "scan": next((s.cfg.metadata.get("scan") for s in rep.saes if s.cfg.metadata.get("scan")), None)}
    return AttributionGraph(
        prompt=tok.decode(tokens.tolist()), tokens=tokens.cpu(), str_tokens=str_tokens, n_layers=L,
        features=rep.features.cpu(), activations=rep.activations.cpu(), logit_ids=logit_ids.cpu(),
        logit_probs=logit_probs.cpu(), logit_tokens=[tok.decode([int(i)]) for i in logit_ids],
        node_mask=pr.node_mask, edge_targets=pr.targets, edge_sources=pr.sources, edge_weights=pr.weights,
        influence=influence, cumulative=cumulative_scores(influence), node_threshold=node_threshold,
        edge_threshold=edge_threshold, replacement_score=replacement, completeness_score=completeness,
        pruned_replacement_score=p_rep, pruned_completeness_score=p_comp, adjacency=adjacency, info=info,
    )


def _batch(model, n_pos: int, batch_size: int, n_rows: int, budget_mb: float = 1024) -> int:
    """Targets per backward pass: ``batch_size``, fewer where one pass's gradients would exceed ``budget_mb``
    (each target carries, per layer, a few ``[pos, d_model]`` gradients and one ``[n_heads, pos, pos]``)."""
    c = model.cfg
    per_target = ((c.n_layers + 8) * n_pos * c.d_model + 2 * c.n_heads * n_pos**2) * model.W_E.dtype.itemsize
    fits = int(budget_mb * 2**20 // per_target)
    return max(1, min(batch_size, n_rows, fits))


def _chunks(nodes: Tensor, layers: Tensor, size: int):
    """``nodes`` in consecutive pieces of at most ``size`` that never span two layers."""
    for a, b in _layer_runs(layers):
        for start in range(a, b, size):
            yield nodes[start:min(start + size, b)]


def _describe(saes) -> str:
    from .transcoders import describe

    return describe(saes)


def _disabled(progress: Optional[bool]) -> Optional[bool]:
    return None if progress is None else not progress


def _check_fraction(name: str, value: Any, upper_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1 or (upper_open and value == 1):
        allowed = "[0, 1)" if upper_open else "[0, 1]"
        raise InterpError(f"{name} {value!r} out of range: give a fraction in {allowed}")


def _tokens(model, prompt) -> Tensor:
    if isinstance(prompt, str):
        if not prompt:
            raise InterpError("the prompt is empty")
        return model.to_batch(prompt).tokens[0]
    if isinstance(prompt, (list, tuple)):
        prompt = torch.tensor(prompt)
    if isinstance(prompt, Tensor):
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1:
            raise InterpError(f"one prompt at a time: token ids of shape [pos], not {tuple(prompt.shape)}")
        return model.to_batch(prompt[None].to(model.cfg.device)).tokens[0]
    raise InterpError(f"prompt must be text or token ids, not {type(prompt).__name__}")


def verify_edges(model, transcoders, graph: AttributionGraph, *, sources: Optional[Sequence[int]] = None,
                 batch: int = 32):
    """Every kept edge of ``graph`` against the freeze-and-intervene oracle: a tidy DataFrame.

    For each source node, the frozen replacement model (attention patterns, LayerNorm scales and
    MLP outputs set to their values on the prompt; see
    :meth:`~interp.features.replacement.Replacement.frozen`) is run with that node's contribution
    added once more; the change of each target's pre-activation (a logit's: minus the mean logit)
    is the edge's oracle value. Columns: source, target, weight, oracle, abs_error, rel_error
    (``|weight - oracle| / max(|oracle|, 1e-12)``). ``sources`` restricts the sources checked.
    """
    import pandas as pd

    from .replacement import Replacement
    from .transcoders import load_transcoders

    if isinstance(transcoders, (str, os.PathLike)):
        transcoders = load_transcoders(transcoders, device=str(model.cfg.device))
    rep = Replacement(model, transcoders, graph.tokens.to(model.cfg.device))
    if not torch.equal(rep.features, graph.features):
        raise InterpError("these transcoders give other active features than the graph's: not the graph's transcoders")
    src = graph.edge_sources if sources is None else torch.as_tensor(list(sources), dtype=torch.long)
    src = torch.unique(src)
    nf, n_src = graph.n_features, graph.kinds.n_sources
    base = rep.frozen([[]], logit_ids=graph.logit_ids)
    rows = []
    for start in range(0, len(src), batch):
        chunk = src[start:start + batch].tolist()
        got = rep.frozen([[(s, 1.0)] for s in chunk], logit_ids=graph.logit_ids)
        d_pre = got["pre"] - base["pre"]
        d_logit = got["logits"] - base["logits"]
        for e, s in enumerate(chunk):
            sel = (graph.edge_sources == s).nonzero().squeeze(1)
            for k in sel.tolist():
                t = int(graph.edge_targets[k])
                oracle = float(d_pre[e, t]) if t < nf else float(d_logit[e, t - n_src])
                rows.append((s, t, float(graph.edge_weights[k]), oracle))
    df = pd.DataFrame(rows, columns=["source", "target", "weight", "oracle"])
    df["abs_error"] = (df["weight"] - df["oracle"]).abs()
    df["rel_error"] = df["abs_error"] / df["oracle"].abs().clip(lower=1e-12)
    return df
