"""``interp attribute`` and ``interp circuit``: rank every edge by attribution, find and draw the circuit."""

from __future__ import annotations

import argparse
import json

from ..errors import InterpError
from .patching import _add_pair, _check_pair, _pair_and_metric
from .common import (Outputs, add_model_args, add_progress, count, load_model, print_table,
                     progress)


def _add_common(p: argparse.ArgumentParser, methods: list[str], default: str) -> None:
    _add_pair(p)
    p.add_argument("--method", choices=methods, default=default, help=f"how edges are scored (default {default})")
    p.add_argument("--steps", type=count("a number of steps"), default=5, help="EAP-IG interpolation steps (default 5)")
    add_model_args(p)
    add_progress(p)


# ---------------------------------------------------------------------------- interp attribute
def add_attribute(sub) -> None:
    p = sub.add_parser("attribute", help="attribution patching: every node's or edge's effect from gradients",
                       description="Estimate the effect of every node (head, MLP, embeddings) or every edge "
                       "(sender -> receiver q/k/v, MLP input or logits) on the metric from one corrupted forward + "
                       "backward pass (EAP) or a few (EAP-IG), and print them ranked. attribution = score / (clean - "
                       "corrupted), the scale of patching's normalised effect.")
    _add_common(p, ["atp", "eap", "eap-ig"], "eap")
    p.add_argument("--level", choices=["node", "edge"], default="edge", help="score nodes or edges (default edge)")
    p.add_argument("--top", type=count("a number of rows"), default=20, help="print the N largest |score| (default 20)")
    p.add_argument("--out", metavar="FILE", help="write the whole ranked table (.csv or .json)")
    p.add_argument("--format", choices=["csv", "json"], help="table format for --out (default: from its suffix)")


def run_attribute(args: argparse.Namespace) -> int:
    from ..attribution import attribute

    _check_pair(args)
    out = Outputs(args, image=False)
    model = load_model(args)
    cb, kb, metric, note = _pair_and_metric(model, args)
    df = attribute(model, cb, kb, metric, level=args.level, method=args.method, steps=args.steps,
                   progress=progress(args))
    a = df.attrs
    how = f"{args.method}" + (f", {args.steps} steps" if args.method == "eap-ig" else "")
    print(f"attribution of every {args.level} of {model.cfg.name} (fold_ln={model.cfg.fold_ln}) by {how}; {note}: "
          f"clean {a['clean']:.4f}, corrupted {a['corrupted']:.4f}; attribution = score / (clean - corrupted)")
    cols = (["node", "layer", "head", "score", "attribution"] if args.level == "node"
            else ["edge", "input", "score", "attribution"])
    print_table(df[cols], max_rows=args.top)
    out.add_table(df)
    out.commit()
    return 0


# ---------------------------------------------------------------------------- interp circuit
def add_circuit(sub) -> None:
    p = sub.add_parser("circuit", help="find the circuit: rank edges by attribution, verify and prune by exact patching",
                       description="Rank every edge by attribution (EAP-IG by default), keep the top N (or those with "
                       "|attribution| >= T), measure each one's exact effect, prune by exact patching with everything "
                       "outside the circuit ablated, and report the circuit's faithfulness: (circuit - corrupted) / "
                       "(clean - corrupted).")
    _add_common(p, ["eap", "eap-ig"], "eap-ig")
    p.add_argument("--edges", type=count("a number of edges"), help="verify the top N edges (default 50)")
    p.add_argument("--threshold", type=float, help="verify the edges with |attribution| >= T")
    p.add_argument("--ablation", choices=["corrupted", "mean"], default="corrupted",
                   help="what a removed edge carries: the paired corrupted prompt's value (default) or the mean "
                   "over the corrupted prompts, per token position")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="drop an edge if the circuit stays within this much more of the full model (default 0.01)")
    p.add_argument("--no-prune", dest="prune", action="store_false",
                   help="keep every verified edge on a path from the embeddings to the logits")
    p.add_argument("--out", metavar="FILE", required=True, help="write the circuit as JSON")
    p.add_argument("--svg", metavar="FILE", help="draw the circuit as SVG")
    p.add_argument("--html", metavar="FILE", help="the picture and the edge table as one self-contained page")


def run_circuit(args: argparse.Namespace) -> int:
    from ..discovery import circuit
    from ..export import check_target

    _check_pair(args)
    if args.edges is not None and args.threshold is not None:
        raise InterpError("give --edges N (the top N) or --threshold T (|attribution| >= T), not both")
    if args.threshold is not None and args.threshold < 0:
        raise InterpError(f"--threshold {args.threshold}: give a number >= 0")
    if args.tolerance < 0:
        raise InterpError(f"--tolerance {args.tolerance}: give a number >= 0")
    for path, option, suffix in ((args.out, "--out", ".json"), (args.svg, "--svg", ".svg"), (args.html, "--html", ".html")):
        if path is not None:
            check_target(path, option)
            if not path.lower().endswith(suffix):
                raise InterpError(f"{option} {path}: give a {suffix} file name")
    out = Outputs(args, table=False, image=False,
                  others=(("--out", args.out), ("--svg", args.svg), ("--html", args.html)))
    model = load_model(args)
    cb, kb, metric, note = _pair_and_metric(model, args)
    c = circuit(model, cb, kb, metric, method=args.method, steps=args.steps, edges=args.edges,
                threshold=args.threshold, ablation=args.ablation, prune=args.prune, tolerance=args.tolerance,
                progress=progress(args))
    print(f"circuit of {model.cfg.name} (fold_ln={model.cfg.fold_ln}); {note}: clean {c.clean:.4f}, corrupted "
          f"{c.corrupted:.4f}, circuit {c.value:.4f}")
    print(f"faithfulness {c.faithfulness:.3f} with {c.n_edges} edges and {c.n_nodes} nodes (of {len(c.candidates)} "
          f"verified candidates: {c.faithfulness_candidates:.3f}; {c.attrs['total_edges']} edges in the graph); "
          f"ranked by {c.method}, {c.ablation} ablation")
    print_table(c.edges[["edge", "attribution", "effect"]], max_rows=None)
    data = c.to_json()
    out.add(args.out, lambda tmp: tmp.write_text(json.dumps(data, indent=1), encoding="utf-8"), "--out")
    if args.svg or args.html:
        from ..report.circuit import circuit_html, circuit_svg
    if args.svg:
        svg = circuit_svg(c)
        out.add(args.svg, lambda tmp: tmp.write_text(svg, encoding="utf-8"), "--svg")
    if args.html:
        page = circuit_html(c)
        out.add(args.html, lambda tmp: tmp.write_text(page, encoding="utf-8"), "--html")
    out.commit()
    return 0
