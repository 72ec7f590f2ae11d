"""``interp graph``: the attribution graph of one prompt through transcoders, and why a head attends (``--qk``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InterpError
from .common import Outputs, add_model_args, add_progress, count, load_model, print_table, progress


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v} is not a fraction in [0, 1]")
    return v


def add(sub) -> None:
    p = sub.add_parser(
        "graph", help="attribution graph of a prompt through transcoders (circuit-tracer's), and QK attribution",
        description="Replace each MLP by its transcoder, freeze attention patterns and LayerNorm scales on the prompt, "
        "and compute which features, error nodes and tokens directly cause which features and output logits; prune "
        "by influence on the logits (circuit-tracer's method and JSON). --qk decomposes a head's attention score "
        "into query-side × key-side node pairs.")
    p.add_argument("prompt", help="the prompt (BOS is prepended)")
    p.add_argument("--transcoders", metavar="DIR",
                   help="transcoders, one per layer: circuit-tracer's format (config.yaml + layer_*.safetensors) or "
                   "SAE directories (cfg.json + sae_weights.safetensors); default: the bundled model's own")
    p.add_argument("--out", metavar="FILE", help="write the graph as circuit-tracer's frontend JSON (.json)")
    p.add_argument("--html", metavar="FILE", help="write the graph as one offline HTML page")
    p.add_argument("--svg", metavar="FILE", help="write the graph's picture as SVG")
    p.add_argument("--qk", action="append", default=[], metavar="HEAD@Q,K",
                   help="decompose head HEAD's attention score from position Q to key position K into node pairs, "
                   "e.g. L1H4@12,5 (repeat for more; negative positions count from the end)")
    p.add_argument("--node-threshold", type=_fraction, default=0.8, help="keep nodes with this much influence (0.8)")
    p.add_argument("--edge-threshold", type=_fraction, default=0.98, help="keep edges with this much influence (0.98)")
    p.add_argument("--max-logits", type=count("a number of logits"), default=10, help="at most this many logit nodes (10)")
    p.add_argument("--logit-prob", type=_fraction, default=0.95,
                   help="logit nodes until their probability reaches this (0.95)")
    p.add_argument("--batch-size", type=count("a batch size"), default=64, help="targets per backward pass (64)")
    p.add_argument("--feature-link", default="L{layer}.html#f{feature}",
                   help="where a feature's page is, {layer} and {feature} filled in "
                   "(default L{layer}.html#f{feature}: the pages of interp features --out DIR)")
    p.add_argument("--slug", help="the graph's name in the JSON (default: the --out file's stem)")
    p.add_argument("--top", type=count("a number of rows"), default=15,
                   help="rows of each printed table: the N most influential features, and each --qk's N largest pairs (15)")
    add_model_args(p)
    add_progress(p)


def _default_transcoders(model_spec: str) -> str:
    from ..features.transcoders import bundled_transcoders

    path = bundled_transcoders(model_spec)
    if path is None:
        raise InterpError(f"--transcoders: give a directory of transcoders for {model_spec} (only interp-tiny ships its own)")
    return str(path)


def run(args: argparse.Namespace) -> int:
    from ..export import check_target
    from ..features.graph import attribution_graph
    from ..features.qk import parse_qk, qk_attribution
    from ..features.transcoders import load_transcoders

    if not args.prompt.strip():
        raise InterpError("the prompt is empty")
    if args.edge_threshold == 1:
        raise InterpError("--edge-threshold 1 keeps every entry of the matrix, zeros included: give less than 1")
    tc_dir = args.transcoders or _default_transcoders(args.model)
    if not os.path.isdir(tc_dir):
        raise InterpError(f"--transcoders {tc_dir}: no such directory")
    out = Outputs(args, table=False, image=False)
    for option, path, suffixes in (("--out", args.out, (".json",)), ("--html", args.html, (".html", ".htm")),
                                   ("--svg", args.svg, (".svg",))):
        if path is not None:
            check_target(path, option)
            if Path(path).suffix.lower() not in suffixes:
                raise InterpError(f"{option} {path}: give a {' or '.join(suffixes)} name")
    if args.feature_link:
        try:
            args.feature_link.format(layer=0, feature=0)
        except (KeyError, IndexError, ValueError) as e:
            raise InterpError(f"--feature-link {args.feature_link!r}: only {{layer}} and {{feature}} are filled in ({e})") from None
    for spec in args.qk:
        if "@" not in spec:
            raise InterpError(f"--qk {spec!r}: write HEAD@QUERY,KEY, e.g. L1H4@12,5")
    try:
        transcoders = load_transcoders(tc_dir, device=args.device)
    except InterpError as e:
        raise InterpError(f"--transcoders {tc_dir}: {e}") from None
    model = load_model(args)
    qks = [parse_qk(model, spec) for spec in args.qk]
    g = attribution_graph(model, transcoders, args.prompt, max_n_logits=args.max_logits,
                          desired_logit_prob=args.logit_prob, node_threshold=args.node_threshold,
                          edge_threshold=args.edge_threshold, batch_size=args.batch_size, progress=progress(args))
    kept = int(g.node_mask[: g.n_features].sum())
    print(f"attribution graph of {model.cfg.name} (fold_ln={model.cfg.fold_ln}) through {g.info['transcoders']}")
    print(f"prompt {g.prompt!r}: {g.n_features} active features, {kept} kept; {g.n_edges} edges kept; replacement score "
          f"{g.replacement_score:.3f}, completeness {g.completeness_score:.3f} (pruned graph: "
          f"{g.pruned_replacement_score:.3f}, {g.pruned_completeness_score:.3f})")
    logits = ", ".join(f"{t!r} {float(p):.3f}" for t, p in zip(g.logit_tokens, g.logit_probs))
    print(f"logit nodes (last position): {logits}")
    nodes = g.nodes()
    feats = nodes[nodes["kind"] == "feature"].sort_values("influence", ascending=False, kind="stable")
    if len(feats):
        print_table(feats[["label", "pos", "token", "activation", "influence"]], max_rows=args.top)
    decomps = []
    for layer, head, q, k in qks:
        d = qk_attribution(model, transcoders, args.prompt, (layer, head), q, k)
        decomps.append(d)
        print(f"\n{d.head_label} from position {d.q_pos} to {d.k_pos}: score {d.score:.4f} = sum of the terms "
              f"{d.total():.4f}; the largest query-node × key-node terms:")
        print_table(d.top_pairs(args.top)[["query_label", "key_label", "term"]])
    if args.out:
        import json

        slug = args.slug or Path(args.out).stem
        data = g.to_json(slug=slug)
        if decomps:
            data["interp"]["qk"] = [d.to_dict(args.top) for d in decomps]
        out.add(args.out, lambda tmp: tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8"))
    if args.html or args.svg:
        from ..report.graph import graph_html, graph_svg

        link = args.feature_link or None
        if args.html:
            page = graph_html(g, qk=decomps, feature_link=link)
            out.add(args.html, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        if args.svg:
            svg = graph_svg(g, feature_link=link)
            out.add(args.svg, lambda tmp: tmp.write_text(svg, encoding="utf-8"))
    out.commit()
    return 0
