"""circuit-tracer's frontend JSON for an :class:`~interp.features.graph.AttributionGraph`, written and read back.

The format is what ``circuit_tracer.utils.create_graph_files`` writes (``frontend/graph_models.py``):
``metadata`` (``slug``, ``scan``, ``transcoder_list``, ``prompt_tokens``, ``prompt``,
``node_threshold``, ``schema_version``), ``qParams``, ``nodes`` (the kept nodes that a kept link
touches, and every token and logit) and ``links`` (the kept edges, ordered by target then source
node index, as ``edge_mask.nonzero()`` orders them). circuit-tracer's viewer and Neuronpedia
open it. Node ids: features ``"{layer}_{feature}_{pos}"``, errors ``"0_{layer}_{pos}"`` (which can
coincide with layer 0's feature ids: read back by ``feature_type``), tokens ``"E_{id}_{pos}"``,
logits ``"{n_layers + 1}_{id}_{pos}"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import InterpError

__all__ = ["graph_to_json", "graph_from_json", "process_token"]

FEATURE, ERROR, TOKEN, LOGIT = "cross layer transcoder", "mlp reconstruction error", "embedding", "logit"


def process_token(token: str) -> str:
    """circuit-tracer's display of a token (``frontend/utils.py``): newlines, tabs and returns made visible."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(node_id: str, feature: int, layer: str, ctx_idx: int, feature_type: str, js: str, *, token_prob: float = 0.0,
          is_target_logit: bool = False, clerp: str = "", influence=None, activation=None) -> dict:
    # circuit-tracer's Node, field by field, in its order.
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx_idx, "feature_type": feature_type,
            "token_prob": token_prob, "is_target_logit": is_target_logit, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js, "clerp": clerp, "influence": influence, "activation": activation}


def graph_to_json(g, slug: Optional[str] = None, scan: Optional[str] = None) -> dict:
    """The JSON document (a dict) of graph ``g``; see the module docs."""
    nf, L, P = g.n_features, g.n_layers, g.n_pos
    cum = g.cumulative
    nodes: dict[int, dict] = {}
    for i in g.node_mask.nonzero().squeeze(1).tolist():
        inf = None if cum is None else float(cum[i])
        if i < nf:
            layer, pos, fid = (int(v) for v in g.features[i])
            nodes[i] = _node(f"{layer}_{fid}_{pos}", _cantor(layer, fid), str(layer), pos, FEATURE, f"{layer}_{fid}-0",
                             influence=inf, activation=float(g.activations[i]))
        elif i < nf + L * P:
            layer, pos = divmod(i - nf, P)
            nodes[i] = _node(f"0_{layer}_{pos}", -1, str(layer), pos, ERROR, f"{layer}_{pos}-0", influence=inf)
        elif i < nf + L * P + P:
            pos = i - nf - L * P
            vocab = int(g.tokens[pos])
            nodes[i] = _node(f"E_{vocab}_{pos}", pos, "E", pos, TOKEN, f"E_{vocab}-{pos}", influence=inf)
        else:
            j = i - nf - L * P - P
            vocab, p = int(g.logit_ids[j]), float(g.logit_probs[j])
            nodes[i] = _node(f"{L + 1}_{vocab}_{P - 1}", vocab, str(L + 1), P - 1, LOGIT, f"L_{vocab}-{P - 1}",
                             token_prob=p, is_target_logit=j == 0, clerp=f'Output "{g.logit_tokens[j]}" (p={p:.3f})')
    order = torch.argsort(g.edge_targets * g.n_nodes + g.edge_sources)
    links, connected = [], set()
    for k in order.tolist():
        s, t = int(g.edge_sources[k]), int(g.edge_targets[k])
        if s in nodes and t in nodes:
            links.append({"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(g.edge_weights[k])})
            connected.update((s, t))
    used = [n for i, n in nodes.items() if i in connected or n["feature_type"] in (TOKEN, LOGIT)]
    scan = scan or g.info.get("scan") or f"interp-{g.info.get('model', 'model')}"
    return {
        "metadata": {"slug": slug or "graph", "scan": scan, "transcoder_list": [],
                     "prompt_tokens": list(g.str_tokens), "prompt": g.prompt,
                     "node_threshold": g.node_threshold, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": used,
        "links": links,
        "interp": {
            "n_layers": L, "edge_threshold": g.edge_threshold, "replacement_score": g.replacement_score,
            "completeness_score": g.completeness_score, "pruned_replacement_score": g.pruned_replacement_score,
            "pruned_completeness_score": g.pruned_completeness_score, "n_features": nf,
            **{k: v for k, v in g.info.items() if isinstance(v, (str, int, float, bool, type(None)))},
        },
    }


def graph_from_json(cls, source: Union[str, os.PathLike, dict]):
    """An :class:`AttributionGraph` of the nodes and links in a frontend JSON document (circuit-tracer's or ours)."""
    if isinstance(source, dict):
        data, where = source, "the graph"
    else:
        where = str(source)
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InterpError(f"{where}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InterpError(f"{where}: not JSON ({e})") from None
    try:
        meta, nodes, links = data["metadata"], data["nodes"], data["links"]
        by_type: dict[str, list] = {FEATURE: [], ERROR: [], TOKEN: [], LOGIT: []}
        for n in nodes:
            if n["feature_type"] not in by_type:
                raise InterpError(f"{where}: unknown feature_type {n['feature_type']!r}")
            by_type[n["feature_type"]].append(n)
        logits = sorted(by_type[LOGIT], key=lambda n: not n["is_target_logit"])
        if not logits:
            raise InterpError(f"{where}: no logit node")
        L = int(logits[0]["layer"]) - 1
        tokens = sorted(by_type[TOKEN], key=lambda n: n["ctx_idx"])
        P = len(meta["prompt_tokens"])
        if [n["ctx_idx"] for n in tokens] != list(range(P)):
            raise InterpError(f"{where}: token nodes do not cover positions 0..{P - 1}")
        feats = sorted(by_type[FEATURE], key=lambda n: (int(n["layer"]), n["ctx_idx"], int(n["node_id"].split("_")[1])))
        features = torch.tensor([[int(n["layer"]), n["ctx_idx"], int(n["node_id"].split("_")[1])] for n in feats],
                                dtype=torch.long).reshape(-1, 3)
        nf = len(feats)
        index = {}  # (feature_type, node_id) -> node index
        for i, n in enumerate(feats):
            index[(FEATURE, n["node_id"])] = i
        for n in by_type[ERROR]:
            index[(ERROR, n["node_id"])] = nf + int(n["layer"]) * P + n["ctx_idx"]
        for n in tokens:
            index[(TOKEN, n["node_id"])] = nf + L * P + n["ctx_idx"]
        # logits keep circuit-tracer's order: the target logit first, then by probability
        logits = sorted(logits, key=lambda n: -float(n["token_prob"]))
        for j, n in enumerate(logits):
            index[(LOGIT, n["node_id"])] = nf + L * P + P + j
        n_nodes = nf + L * P + P + len(logits)
        types = {}
        for n in nodes:
            types.setdefault(n["node_id"], []).append(n["feature_type"])
        node_mask = torch.zeros(n_nodes, dtype=torch.bool)
        cumulative = torch.full((n_nodes,), float("nan"), dtype=torch.float64)
        for n in nodes:
            i = index[(n["feature_type"], n["node_id"])]
            node_mask[i] = True
            if n.get("influence") is not None:
                cumulative[i] = float(n["influence"])
        src, dst, wts = [], [], []
        for link in links:
            src.append(_resolve(index, types, link["source"], where))
            dst.append(_resolve(index, types, link["target"], where))
            wts.append(float(link["weight"]))
        extra = data.get("interp") or {}
        return cls(
            prompt=meta["prompt"], tokens=torch.tensor([int(n["node_id"].split("_")[1]) for n in tokens]),
            str_tokens=list(meta["prompt_tokens"]), n_layers=L, features=features,
            activations=torch.tensor([float(n["activation"] or 0.0) for n in feats], dtype=torch.float64),
            logit_ids=torch.tensor([int(n["feature"]) for n in logits]),
            logit_probs=torch.tensor([float(n["token_prob"]) for n in logits], dtype=torch.float64),
            logit_tokens=[_logit_token(n) for n in logits], node_mask=node_mask,
            edge_targets=torch.tensor(dst, dtype=torch.long), edge_sources=torch.tensor(src, dtype=torch.long),
            edge_weights=torch.tensor(wts, dtype=torch.float64), cumulative=cumulative,
            node_threshold=float(meta.get("node_threshold") or 0.8),
            edge_threshold=float(extra.get("edge_threshold", 0.98)),
            replacement_score=extra.get("replacement_score"), completeness_score=extra.get("completeness_score"),
            pruned_replacement_score=extra.get("pruned_replacement_score"),
            pruned_completeness_score=extra.get("pruned_completeness_score"),
            info={"slug": meta.get("slug"), "scan": meta.get("scan"),
                  **{k: v for k, v in extra.items() if k in ("model", "fold_ln", "transcoders")}},
        )
    except KeyError as e:
        raise InterpError(f"{where}: not circuit-tracer's graph JSON (no {e.args[0]!r})") from None


def _resolve(index: dict, types: dict, node_id: str, where: str) -> int:
    kinds = types.get(node_id)
    if not kinds:
        raise InterpError(f"{where}: a link names node {node_id!r}, which is not among the nodes")
    if len(kinds) > 1:
        # circuit-tracer's error ids ("0_{layer}_{pos}") can equal a layer-0 feature id: prefer the feature,
        # as its viewer (which keys nodes by id) does.
        kind = FEATURE if FEATURE in kinds else kinds[0]
    else:
        kind = kinds[0]
    return index[(kind, node_id)]


def _logit_token(n: dict) -> str:
    clerp = n.get("clerp") or ""
    if clerp.startswith('Output "') and '" (p=' in clerp:
        return clerp[len('Output "'): clerp.rindex('" (p=')]
    return str(n["feature"])
