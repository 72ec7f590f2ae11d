"""``interp heads``: classify every attention head."""

from __future__ import annotations

import argparse

from ..errors import InterpError
from .common import (Outputs, add_model_args, add_output_args, add_progress, check_file, count, load_model,
                     non_negative, print_table, progress, read_lines, read_text)

NAME = "heads"


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="classify every attention head: previous-token, self, duplicate-token, induction, BOS, spread",
        description="Score every attention head on six kinds in one batched forward pass and label it with the "
        "best kind above its threshold. With no input options the inputs are 16 repeated random-token "
        "sequences [BOS] + r + r (the standard induction / duplicate-token input).",
    )
    add_model_args(p)
    g = p.add_argument_group("inputs (default: 16 repeated random-token sequences)")
    g.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat the option for more)")
    g.add_argument("--prompts-file", metavar="FILE", help="text file, one prompt per line ('-' = stdin)")
    g.add_argument("--document", metavar="FILE", help="text file read as one document, cut to the context window ('-' = stdin)")
    g.add_argument("--repeated", type=non_negative, metavar="N",
                   help="add N repeated random-token sequences (default: 16 if no other input is given, else 0)")
    g.add_argument("--half", type=count("a length"), help="length of r in [BOS] + r + r (default: min(50, (n_ctx - 1) // 2))")
    g.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    m = p.add_argument_group("what to measure")
    m.add_argument("--kinds", "--kind", dest="kinds", help="comma-separated kinds (default: all of previous_token,self,duplicate_token,"
                   "induction,bos,spread)")
    m.add_argument("--layers", help="layers to score, every head of each, e.g. '0-5' or '1,4' (default: all)")
    m.add_argument("--heads", help="instead of --layers, the heads to score, e.g. '0.1,4.11' or '4.*'")
    m.add_argument("--measure", choices=["defined", "all"], default="defined",
                   help="defined: average over positions where each kind is defined (default); "
                   "all: TransformerLens detect_head's average over every position")
    m.add_argument("--exclude-bos", action="store_true", help="drop attention to BOS and renormalise")
    m.add_argument("--exclude-current-token", action="store_true", help="drop attention to the query itself and renormalise")
    m.add_argument("--positions", help="query positions to score in each prompt: a slice '16:' or indices '5,6,-1' "
                   "(negative ones count from each prompt's end; write --positions=-10:)")
    m.add_argument("--threshold", type=float,
                   help="label threshold for the five attention kinds (default 0.5; spread keeps 0.8)")
    m.add_argument("--batch-size", type=count("a batch size"), help="prompts per forward pass (default: from a memory budget)")
    add_progress(m)
    p.add_argument("--top", type=count("a number of rows"), help="print only the N highest-ranked heads")
    p.add_argument("--std", action="store_true", help="also print each score's standard deviation over prompts")
    add_output_args(p, png="write one layers × heads heatmap per kind to this file (.png, .svg or .pdf)")


def run(args: argparse.Namespace) -> int:
    from analyses import heads as hd
    from .. import select

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds is not None else list(hd.KINDS)
    hd.check_kinds(kinds)
    positions = select.parse_positions(args.positions) if args.positions is not None else None
    if positions == "all":
        raise InterpError("--positions all: omit --positions to score every position")
    if args.half is not None and args.repeated == 0:
        raise InterpError("--half sets the length of repeated random tokens, but --repeated 0 uses none")
    for path, option in ((args.prompts_file, "--prompts-file"), (args.document, "--document")):
        check_file(path, option)
    out = Outputs(args)
    prompts = list(args.prompt) + (read_lines(args.prompts_file, "--prompts-file") if args.prompts_file else [])
    document = read_text(args.document, "--document")
    model = load_model(args)
    df = hd.classify(
        model, _inputs(model, args, prompts, document), kinds=kinds, layers=args.layers, heads=args.heads,
        measure=args.measure, exclude_bos=args.exclude_bos, exclude_current_token=args.exclude_current_token,
        positions=positions, threshold=args.threshold, batch_size=args.batch_size, progress=progress(args),
    )
    kinds, a = list(df.attrs["thresholds"]), df.attrs
    excluded = [w for w, on in (("BOS", a["exclude_bos"]), ("current token", a["exclude_current_token"])) if on]
    print(f"heads of {model.cfg.name} (fold_ln={model.cfg.fold_ln}): {a['n_prompts']} prompts, {a['n_tokens']} tokens; "
          f"measure={a['measure']}" + (f"; excluding {' and '.join(excluded)}" if excluded else ""))
    print("query positions behind each score: " + ", ".join(f"{k} {df[f'n_{k}'].iloc[0]}" for k in kinds))
    print("label: " + hd.label_rule(a["thresholds"]))
    columns = ["layer", "head", "label", *kinds, *([f"{k}_std" for k in kinds] if args.std else [])]
    print_table(hd.ranked(df)[columns], max_rows=args.top)
    counts = df["label"].value_counts()
    print("labels: " + ", ".join(f"{k} {counts[k]}" for k in [*kinds, "none"] if k in counts))
    out.add_table(df)
    if out.image:
        from ..plotting import heads_figure

        notes = {k: "not defined when its target is excluded" for k in ("self", "bos")}
        out.add_figure(heads_figure(df, kinds, vmin=0.0, vmax=1.0, n_layers=model.cfg.n_layers,
                                    n_heads=model.cfg.n_heads, annotate=lambda v: f"{v:.2f}", notes=notes,
                                    colorbar_label="score"))
    out.commit()
    return 0


def _inputs(model, args, given: list, document) -> list:
    from .. import prompts

    inputs: list = list(given)
    if document is not None:
        inputs += prompts.rows(prompts.text_windows(model, document))
    n_repeated = args.repeated if args.repeated is not None else (0 if inputs else prompts.DEFAULT_N_PROMPTS)
    if n_repeated:
        inputs += list(prompts.repeated_tokens(model, n_repeated, args.half, seed=args.seed))
    elif args.half is not None:
        raise InterpError("--half sets the length of repeated random tokens, but none are used (--repeated 0)")
    if not inputs:
        raise InterpError("no inputs: give --prompt, --prompts-file, --document or --repeated N (N > 0)")
    return inputs
