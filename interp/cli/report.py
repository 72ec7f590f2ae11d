"""``interp report``: attention patterns of chosen heads as one self-contained HTML file (+ figures, CSV)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InterpError
from .common import add_model_args, add_progress, check_file, count, load_model, print_table, progress, read_text

NAME = "report"


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="attention patterns of chosen heads as one self-contained HTML file (+ PNG/SVG/CSV)",
        description="Write an attention report: for each chosen head its pattern as a heatmap and as lines "
                    "between tokens (interactive), its classifier scores and label, and a layers × heads summary. "
                    "The HTML opens offline in any browser.",
    )
    p.add_argument("prompt", nargs="?", help="the prompt (BOS is prepended); or use --file")
    p.add_argument("--file", help="read the prompt from this text file ('-' for stdin; a final newline is dropped)")
    p.add_argument("--out", help="write the HTML report here (e.g. report.html)")
    choose = p.add_argument_group("which heads (default: the strongest head labelled as each kind)")
    choose.add_argument("--heads", help="comma-separated LAYER.HEAD, e.g. 4.11,0.5")
    choose.add_argument("--top", type=count("a number of heads"),
                        help="the N heads with the highest --kind score (default kind: each head's own label)")
    choose.add_argument("--kind", "--kinds", dest="kind", help="one head kind for --top: previous_token, self, duplicate_token, induction, bos, spread")
    choose.add_argument(
        "--classify-on", choices=["probe", "prompt"], default="probe",
        help="score heads on the classifier's repeated random tokens (probe, default) or on this prompt",
    )
    choose.add_argument("--no-scores", action="store_true", help="skip the head classifier (needs --heads)")
    p.add_argument("--png-dir", dest="png", metavar="DIR",
                   help="also write each head's heatmap and line view (and the summary) as PNG files into DIR "
                   "(created if missing; its parent must exist)")
    p.add_argument("--svg-dir", dest="svg", metavar="DIR", help="the same as SVG files")
    p.add_argument("--csv", metavar="FILE", help="write the raw patterns (one row per head, query, key) as CSV")
    p.add_argument("--line-top-k", type=count("a number of lines"), default=8,
                   help="lines per query in the line view (default 8)")
    p.add_argument("--line-min-weight", type=float, default=0.01, help="no line below this weight (default 0.01)")
    p.add_argument("--trajectory", action="store_true",
                   help="add the prompt's prediction trajectory (logit and pseudo-inverse lenses; with --tuned also the tuned lens)")
    p.add_argument("--tuned", metavar="DIR", help="a tuned lens for the trajectory (a directory, or interp-tiny); implies --trajectory")
    add_model_args(p)
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report, check_outputs

    if args.prompt is not None and args.file is not None:
        raise InterpError("give the prompt either as an argument or with --file, not both")
    if args.no_scores and args.heads is None:
        raise InterpError("--no-scores needs --heads: without scores the heads cannot be chosen by score")
    if not 0 <= args.line_min_weight <= 1:
        raise InterpError(f"--line-min-weight {args.line_min_weight}: give a weight between 0 and 1")
    check_file(args.file, "--file")
    if not (args.out or args.png or args.svg or args.csv):
        raise InterpError("nothing to write: give --out report.html (and/or --png-dir DIR, --svg-dir DIR, --csv FILE)")
    check_outputs(args.out, png=args.png, svg=args.svg, csv=args.csv,  # fail before loading the model
                  names={"path": "--out", "png": "--png-dir", "svg": "--svg-dir", "csv": "--csv"})
    from .lens import _read_lens

    tuned = _read_lens(args.tuned, args.fold_ln, "--tuned")
    prompt = args.prompt if args.prompt is not None else read_text(args.file, "--file")
    if args.file is not None and prompt.endswith("\n"):
        prompt = prompt[:-1]  # the newline an editor adds at the end of a file is not part of the prompt
    if prompt is None:
        raise InterpError("no prompt: give it as an argument or with --file")
    if not prompt.strip():
        raise InterpError("the prompt is empty: give the text to report on")
    model = load_model(args)
    report = build_report(
        model, prompt, heads=args.heads, top=args.top, kind=args.kind, classify_on=args.classify_on,
        scores=False if args.no_scores else None, line_top_k=args.line_top_k, line_min_weight=args.line_min_weight,
        progress=progress(args), trajectory=tuned if tuned is not None else (True if args.trajectory else None),
    )
    print_table(report.summary_table())
    sys.stdout.flush()  # standard output first: if it fails (a full disk), no file is written
    report.save(args.out, png=args.png, svg=args.svg, csv=args.csv, progress=progress(args))
    for what, path in (("report", args.out), ("CSV", args.csv), ("PNG files into", args.png), ("SVG files into", args.svg)):
        if path:
            print(f"wrote {what} {path}", file=sys.stderr)
    return 0
