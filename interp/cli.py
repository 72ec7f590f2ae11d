"""The ``interp`` command: argument parsing and printing over the Python API, nothing more.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and
``_cmd_<name>(args)`` calls one Python function and prints or writes its result.
Bad input is an :class:`~interp.errors.InterpError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from .errors import InterpError

DEFAULT_MODEL = "interp-tiny"


# ---------------------------------------------------------------------------- shared pieces
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"hub name (gpt2, gpt2-medium, …), local Hugging Face directory, or bundled model (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--no-fold-ln", dest="fold_ln", action="store_false",
        help="keep Hugging Face's raw weights (default: fold LayerNorm, as TransformerLens does)",
    )


def load_model(args: argparse.Namespace):
    from .loading import load

    return load(args.model, device=args.device, fold_ln=args.fold_ln)


def add_output_args(p: argparse.ArgumentParser, png: bool = True) -> None:
    p.add_argument("--out", help="write the table to this file (.csv or .json)")
    p.add_argument("--format", choices=["csv", "json"], help="table format for --out (default: from its suffix)")
    if png:
        p.add_argument("--png", help="write a heatmap to this file (.png, .svg or .pdf)")


def write_outputs(df, args: argparse.Namespace) -> None:
    from .export import write_table

    if getattr(args, "out", None):
        write_table(df, args.out, args.format)
        print(f"wrote {args.out}", file=sys.stderr)


def print_table(df, max_rows: int = 40) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", max_rows, "display.width", 160, "display.max_columns", 30):
        print(df.to_string(index=False, max_rows=max_rows, float_format=lambda v: f"{v:.3f}"))


def read_text_arg(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    if path == "-":
        return sys.stdin.read()
    if not os.path.isfile(path):
        raise InterpError(f"text file {path} does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


# ---------------------------------------------------------------------------- interp info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="load a model and print its shape and hook points")
    add_model_args(p)


def _cmd_info(args) -> int:
    model = load_model(args)
    print(model)
    print(f"{len(model.hook_names)} hook points, e.g. {', '.join(model.hook_names[:4])}, …")
    return 0


# ---------------------------------------------------------------------------- interp bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory ratios, measured side by side on a random GPT-2 small")
    p.add_argument("--only", help="comma-separated sections (default: all)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per batch (default 16)")
    p.add_argument("--pos", type=int, default=256, help="tokens per prompt (default 256)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")


def _cmd_bench(args) -> int:
    from . import bench

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    bench.run(only, n_prompts=args.prompts, n_pos=args.pos, threads=args.threads)
    return 0


# ---------------------------------------------------------------------------- interp lens
def _positions_arg(text: str):
    """'all', '-1', '3,5,-1' or a slice '2:6' -> what analyses.logit_lens takes."""
    text = text.strip()
    try:
        if text == "all":
            return "all"
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return slice(*parts)
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid positions {text!r}: use 'all', an index (-1 = last), a list '0,3,-1' or a slice '2:6'"
        ) from None


def _add_lens(sub) -> None:
    p = sub.add_parser(
        "lens", help="logit lens: unembed the residual stream after each layer; direct logit attribution",
        description="Read the residual stream at every layer boundary (embeddings, after each attention "
        "layer, after each MLP) through the final LayerNorm and the unembedding.",
    )
    p.add_argument("prompt", help="the prompt (BOS is prepended)")
    p.add_argument("--target", help="a token to follow (exactly one token, e.g. ' floor' with its space)")
    p.add_argument("--k", type=int, default=5, help="top tokens per boundary (default 5)")
    p.add_argument(
        "--positions", type=_positions_arg, default=None,
        help="positions to read: 'all', an index, '0,3,-1' or a slice '2:6' (default: the last token; "
        "write negative ones as --positions=-2,-1)",
    )
    p.add_argument("--resid-post-only", action="store_true", help="only the embeddings and after each block")
    p.add_argument("--no-final-ln", dest="final_ln", action="store_false",
                   help="raw resid @ W_U, without the final LayerNorm")
    p.add_argument("--unembed", choices=["wu", "pinv"], default="wu",
                   help="wu: the model's unembedding (default); pinv: the embedding's pseudo-inverse, compared with W_U")
    p.add_argument("--dla", action="store_true",
                   help="direct logit attribution of --target to every head, MLP, embedding and bias instead")
    p.add_argument("--contrast", help="with --dla: attribute the logit difference target - contrast")
    add_model_args(p)
    add_output_args(p)


def _cmd_lens(args) -> int:
    from analyses import logit_lens as ll

    if args.dla:
        return _cmd_dla(args, ll)
    if args.contrast is not None:
        raise InterpError("--contrast needs --dla (the lens follows one target token)")
    model = load_model(args)
    df = ll.logit_lens(
        model, args.prompt, positions=args.positions, k=args.k, target=args.target,
        resid_post_only=args.resid_post_only, final_ln=args.final_ln, unembed=args.unembed,
    )
    lens = {"wu": "W_U", "pinv": "pinv(W_E), compared with W_U"}[args.unembed]
    ln = "raw resid @ unembedding, no final LayerNorm"
    if args.final_ln:
        ln = "final LayerNorm (parameter-free: its gain and bias are folded into W_U)" if model.cfg.fold_ln else \
            "final LayerNorm (GPT-2's ln_f, with gain and bias)"
    reads = "probabilities of the next token" if args.unembed == "wu" else \
        "softmax of least-squares token coefficients (which input tokens the stream resembles)"
    print(f"logit lens of {model.cfg.name}: {lens}; {ln}; {reads}")
    print_table(ll.lens_summary(df), max_rows=200)
    if args.unembed == "pinv":
        cells = df[df["rank"] == 1]
        print(f"pinv vs W_U: top-1 agrees in {cells['wu_top1_agrees'].mean():.0%} of {len(cells)} cells, "
              f"mean score correlation {cells['wu_corr'].mean():.3f}")
    write_outputs(df, args)
    if args.png:
        from .plotting import plot_logit_lens

        plot_logit_lens(df, args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _cmd_dla(args, ll) -> int:
    if args.target is None:
        raise InterpError("--dla needs --target TOKEN (and optionally --contrast TOKEN)")
    model = load_model(args)
    from analyses.dla import direct_logit_attribution

    df = direct_logit_attribution(model, args.prompt, args.target, contrast=args.contrast, positions=args.positions)
    what = f"logit({df['target'].iloc[0]!r})" + (f" - logit({df['contrast'].iloc[0]!r})" if args.contrast else "")
    for pos, cell in df.groupby("position", sort=True):
        print(f"direct logit attribution of {what} at position {pos} ({cell['input_token'].iloc[0]!r}): "
              f"total {cell['total'].iloc[0]:.3f} = sum of {len(cell)} terms ({cell['contribution'].sum():.3f})")
        top = cell.reindex(cell["contribution"].abs().sort_values(ascending=False).index).head(max(args.k, 10))
        print_table(top[["component", "kind", "layer", "head", "contribution"]])
    write_outputs(df, args)
    if args.png:
        from .plotting import heads_heatmap

        pos = int(df["position"].max())
        label = f"direct contribution to {what}\nat position {pos}"  # the panel's title
        heads = df[(df["position"] == pos) & (df["kind"] == "head")].astype({"layer": int, "head": int})
        heads = heads.rename(columns={"contribution": label})
        lim = float(heads[label].abs().max()) or 1.0
        heads_heatmap(heads, [label], args.png, cmap="RdBu_r", vmin=-lim, vmax=lim, n_layers=model.cfg.n_layers,
                      n_heads=model.cfg.n_heads, annotate=lambda v: f"{v:.1f}")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- interp report
def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="attention patterns of chosen heads as one self-contained HTML file (+ PNG/SVG/CSV)",
        description="Write an attention report: for each chosen head its pattern as a heatmap and as lines "
                    "between tokens (interactive), its classifier scores and label, and a layers × heads summary. "
                    "The HTML opens offline in any browser.",
    )
    p.add_argument("prompt", nargs="?", help="the prompt (BOS is prepended); or use --file")
    p.add_argument("--file", help="read the prompt from this text file ('-' for stdin; a final newline is dropped)")
    p.add_argument("--out", help="write the HTML report here (e.g. report.html)")
    choose = p.add_argument_group("which heads (default: the strongest head labelled as each kind)")
    choose.add_argument("--heads", help="comma-separated LAYER.HEAD, e.g. 4.11,0.5")
    choose.add_argument("--top", type=int, help="the N heads with the highest --kind score (default kind: each head's own label)")
    choose.add_argument("--kind", help="head kind for --top: previous_token, self, duplicate_token, induction, bos, spread")
    choose.add_argument(
        "--classify-on", choices=["probe", "prompt"], default="probe",
        help="score heads on the classifier's repeated random tokens (probe, default) or on this prompt",
    )
    choose.add_argument("--no-scores", action="store_true", help="skip the head classifier (needs --heads)")
    p.add_argument("--png", metavar="DIR", help="also write each head's heatmap and line view as PNG files into DIR")
    p.add_argument("--svg", metavar="DIR", help="the same as SVG files")
    p.add_argument("--csv", metavar="FILE", help="write the raw patterns (one row per head, query, key) as CSV")
    p.add_argument("--line-top-k", type=int, default=8, help="lines per query in the line view (default 8)")
    p.add_argument("--line-min-weight", type=float, default=0.01, help="no line below this weight (default 0.01)")
    add_model_args(p)


def _cmd_report(args) -> int:
    from .report import check_outputs, write_report

    if args.prompt is not None and args.file is not None:
        raise InterpError("give the prompt either as an argument or with --file, not both")
    prompt = args.prompt if args.prompt is not None else read_text_arg(args.file)
    if args.file is not None and prompt is not None and prompt.endswith("\n"):
        prompt = prompt[:-1]  # the newline an editor adds at the end of a file is not part of the prompt
    if prompt is None:
        raise InterpError("no prompt: give it as an argument or with --file")
    if not (args.out or args.png or args.svg or args.csv):
        raise InterpError("nothing to write: give --out report.html (and/or --png DIR, --svg DIR, --csv FILE)")
    if not prompt.strip():
        raise InterpError("prompt is empty: give the text to report on")
    check_outputs(args.out, png=args.png, svg=args.svg, csv=args.csv)  # fail before loading the model
    model = load_model(args)
    report = write_report(
        model, prompt, args.out, png=args.png, svg=args.svg, csv=args.csv, heads=args.heads, top=args.top,
        kind=args.kind, classify_on=args.classify_on, scores=False if args.no_scores else None,
        line_top_k=args.line_top_k, line_min_weight=args.line_min_weight,
    )
    print_table(report.summary_table())
    for what, path in (("report", args.out), ("CSV", args.csv), ("PNG files into", args.png), ("SVG files into", args.svg)):
        if path:
            print(f"wrote {what} {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- interp heads
def _heads_ints(text: str) -> list[int]:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid list {text!r}: use indices and ranges such as '0,3,5-7'") from None
    return out


def _heads_positions(text: str):
    """'1:' / '-10:' (a slice) or '5,6,-1' (indices) -> what analyses.heads.classify takes."""
    if text.strip() == "all":
        raise argparse.ArgumentTypeError("invalid positions 'all': omit --positions to score every position")
    return _positions_arg(text)


def _add_heads(sub) -> None:
    p = sub.add_parser(
        "heads", help="classify every attention head: previous-token, self, duplicate-token, induction, BOS, spread",
        description="Score every attention head on six kinds in one batched forward pass and label it with the "
        "best kind above its threshold. With no input options the inputs are 16 repeated random-token "
        "sequences [BOS] + r + r (the standard induction / duplicate-token probe).",
    )
    add_model_args(p)
    g = p.add_argument_group("inputs (default: 16 repeated random-token sequences)")
    g.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat the option for more)")
    g.add_argument("--prompts-file", metavar="FILE", help="text file, one prompt per line ('-' = stdin)")
    g.add_argument("--document", metavar="FILE", help="text file read as one document, cut to the context window ('-' = stdin)")
    g.add_argument("--repeated", type=int, metavar="N",
                   help="add N repeated random-token sequences (default: 16 if no other input is given, else 0)")
    g.add_argument("--half", type=int, help="length of r in [BOS] + r + r (default: min(50, (n_ctx - 1) // 2))")
    g.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    m = p.add_argument_group("what to measure")
    m.add_argument("--kinds", help="comma-separated kinds (default: all of previous_token,self,duplicate_token,"
                   "induction,bos,spread)")
    m.add_argument("--layers", help="layers to score, every head of each, e.g. '0-5' or '1,4' (default: all)")
    m.add_argument("--heads", help="instead of --layers, the heads to score, e.g. '0.1,4.11' or '4.*'")
    m.add_argument("--measure", choices=["defined", "all"], default="defined",
                   help="defined: average over positions where each kind is defined (default); "
                   "all: TransformerLens detect_head's average over every position")
    m.add_argument("--exclude-bos", action="store_true", help="drop attention to BOS and renormalise")
    m.add_argument("--exclude-current-token", action="store_true", help="drop attention to the query itself and renormalise")
    m.add_argument("--positions", type=_heads_positions,
                   help="query positions to score in each prompt: a slice '16:' or indices '5,6,-1' "
                   "(negative ones count from each prompt's end; write --positions=-10:)")
    m.add_argument("--threshold", type=float,
                   help="label threshold for the five attention kinds (default 0.5; spread keeps 0.8)")
    m.add_argument("--batch-size", type=int, help="prompts per forward pass (default: from a memory budget)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--top", type=int, help="print only the N highest-ranked heads")
    p.add_argument("--std", action="store_true", help="also print each score's standard deviation over prompts")
    add_output_args(p)


def _heads_inputs(args, model) -> list:
    from . import probes

    inputs: list = list(args.prompt)
    if args.prompts_file:
        if args.prompts_file == "-":
            inputs += [line for line in sys.stdin.read().splitlines() if line.strip()]
        else:
            inputs += probes.read_prompts(args.prompts_file)
    if args.document:
        inputs += probes.rows(probes.text_windows(model, read_text_arg(args.document)))
    n_repeated = args.repeated if args.repeated is not None else (0 if inputs else probes.DEFAULT_N_PROMPTS)
    if n_repeated < 0:
        raise InterpError(f"--repeated {n_repeated}: give a number of sequences >= 0")
    if n_repeated:
        inputs += list(probes.repeated_tokens(model, n_repeated, args.half, seed=args.seed))
    elif args.half is not None:
        raise InterpError("--half sets the length of repeated random tokens, but none are used (--repeated 0)")
    if not inputs:
        raise InterpError("no inputs: give --prompt, --prompts-file, --document or --repeated N (N > 0)")
    return inputs


def _cmd_heads(args) -> int:
    from analyses import heads as hd

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds is not None else hd.KINDS
    model = load_model(args)
    df = hd.classify(
        model, _heads_inputs(args, model), kinds=kinds, layers=args.layers, heads=args.heads, measure=args.measure,
        exclude_bos=args.exclude_bos, exclude_current_token=args.exclude_current_token, positions=args.positions,
        threshold=args.threshold, batch_size=args.batch_size, progress=False if args.no_progress else None,
    )
    kinds, a = list(df.attrs["thresholds"]), df.attrs
    excluded = [w for w, on in (("BOS", a["exclude_bos"]), ("current token", a["exclude_current_token"])) if on]
    print(f"heads of {model.cfg.name} (fold_ln={model.cfg.fold_ln}): {a['n_prompts']} prompts, {a['n_tokens']} tokens; "
          f"measure={a['measure']}" + (f"; excluding {' and '.join(excluded)}" if excluded else ""))
    print("query positions behind each score: " + ", ".join(f"{k} {df[f'n_{k}'].iloc[0]}" for k in kinds))
    attn = {v for k, v in a["thresholds"].items() if k != "spread"}
    rule = [f"the attention kind scoring highest, if >= {' / '.join(f'{v:g}' for v in sorted(attn))}"] if attn else []
    rule += [f"else spread if >= {a['thresholds']['spread']:g}"] if "spread" in kinds else []
    print("label: " + "; ".join([*rule, "else none"]))
    strength = [row[row["label"]] if row["label"] != "none" else -1.0 for _, row in df.iterrows()]
    ranked = df.assign(_s=strength).sort_values(["_s", "layer", "head"], ascending=[False, True, True], kind="stable")
    columns = ["layer", "head", "label", *kinds, *([f"{k}_std" for k in kinds] if args.std else [])]
    ranked = ranked[columns].head(args.top) if args.top else ranked[columns]
    print_table(ranked, max_rows=len(ranked) + 1)
    counts = df["label"].value_counts()
    print("labels: " + ", ".join(f"{k} {counts[k]}" for k in [*kinds, "none"] if k in counts))
    write_outputs(df, args)
    if args.png:
        from .plotting import heads_heatmap

        # No suptitle: on a short figure (few layers) it would sit on the panels' own titles (the kind names).
        heads_heatmap(df, kinds, args.png, vmin=0.0, vmax=1.0, n_layers=model.cfg.n_layers,
                      n_heads=model.cfg.n_heads, annotate=lambda v: f"{v:.2f}")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- interp ov
def _ov_ranks(text: str) -> list[int]:
    """'8' or '0,1,4,64' -> [8] / [0, 1, 4, 64]."""
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ranks {text!r}: use an integer or a list such as '0,1,4,16'") from None


def _add_ov(sub) -> None:
    p = sub.add_parser(
        "ov", help="OV circuits: rank of every head's W_OV, copying scores, rank-k replacement",
        description="Factorise every head's OV circuit W_OV = W_V W_O through d_head (never materialising "
        "W_OV or the d_vocab × d_vocab full circuit W_E·W_OV·W_U): singular values, effective ranks and the "
        "copying score (share of positive eigenvalue mass of the full circuit). With --layer and --head: that "
        "head's spectrum and the tokens its top singular directions read and write. With --rank: the loss "
        "with W_OV cut to rank k.",
    )
    add_model_args(p)
    p.add_argument("--layer", type=int, help="one layer (alone: its heads' rows of the table)")
    p.add_argument("--head", type=int, help="with --layer: one head's detail")
    p.add_argument("--rank", type=_ov_ranks, metavar="K[,K…]",
                   help="replace W_OV by its rank-k approximation and report the loss change, per head and k "
                   "(heads: --layer/--head, else all)")
    p.add_argument("--text", metavar="FILE",
                   help="with --rank: text to score, cut to the context window ('-' = stdin; default: 8 repeated "
                   "random-token sequences [BOS] + r + r)")
    p.add_argument("--max-prompts", type=int, default=16, help="with --text: at most this many windows (default 16)")
    p.add_argument("--directions", type=int, default=3, help="singular directions whose tokens to show (default 3)")
    p.add_argument("--top", type=int, default=8, help="tokens per direction (default 8)")
    p.add_argument("--out", help="write the table to this file (.csv or .json): all heads' summary; with "
                   "--layer/--head the head's spectrum; with --rank the loss table")
    p.add_argument("--format", choices=["csv", "json"], help="table format for --out (default: from its suffix)")
    p.add_argument("--png", help="copying scores as a layers × heads heatmap here (.png, .svg or .pdf), and "
                   "every head's spectrum beside it as NAME-spectra.png")


def _cmd_ov(args) -> int:
    from pathlib import Path

    from analyses import ov

    if args.head is not None and args.layer is None:
        raise InterpError("--head needs --layer")
    if args.text is not None and args.rank is None:
        raise InterpError("--text is the text --rank scores the loss on: give --rank K too")
    if args.out:  # fail on a bad output name before loading the model
        from .export import table_format

        table_format(args.out, args.format)
    if args.png and Path(args.png).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InterpError(f"unknown image format for {args.png}: use .png, .svg or .pdf")
    model = load_model(args)
    cfg = model.cfg
    if args.head is not None:
        model.check_head(args.layer, args.head)
    elif args.layer is not None:
        model.check_layer(args.layer)
    summary = ov.ov_summary(model)
    print(f"OV circuits of {cfg.name} (fold_ln={cfg.fold_ln}): W_OV = W_V W_O, rank ≤ d_head = {cfg.d_head}; "
          "rank90/rank99 = singular values holding 90/99 % of Σσ²; erank = exp(entropy of σ/Σσ); "
          "copying_score = Σ max(Re λ, 0) / Σ|λ| over eigenvalues of W_E·W_OV·W_U")
    table, rows = summary, summary
    if args.layer is not None:
        rows = summary[summary["layer"] == args.layer]
        if args.head is not None:
            rows = rows[rows["head"] == args.head]
    print_table(rows, max_rows=len(rows) + 1)
    if args.layer is None:
        top = summary.dropna(subset=["copying_score"]).nlargest(5, "copying_score")
        print("strongest copying heads: " + ", ".join(
            f"L{r.layer}H{r.head} ({r.copying_score:.2f})" for r in top.itertuples()))
    elif args.head is None:
        table = rows
    else:
        table = ov.ov_spectrum(model, args.layer, args.head)
        print(f"\nspectrum of L{args.layer}H{args.head} (rel_error: ‖W_OV − rank-k approximation‖_F / ‖W_OV‖_F)")
        rank = int(rows["rank"].iloc[0])
        shown = table[table["k"] <= max(rank, 1)]
        print_table(shown[["k", "sigma", "energy", "cum_energy", "rel_error"]], max_rows=cfg.d_head + 1)
        if len(shown) < len(table):
            print(f"(σ_k ≈ 0 for k > {max(rank, 1)}: numerical rank {rank} of {cfg.d_head})")
        tokens = ov.ov_tokens(model, args.layer, args.head, n_directions=args.directions, top=args.top)
        print("\ntop singular directions through the embeddings: attending to a token on the left raises "
              "the logits of the tokens on the right")
        for (d, end), g in tokens.groupby(["direction", "end"], sort=True):
            reads = " ".join(repr(t) for t in g["read_token"])
            writes = " ".join(repr(t) for t in g["write_token"])
            prefix = f"  σ{d} = {g['sigma'].iloc[0]:.3g} {end}  "
            print(f"{prefix}reads  {reads}\n{'':{len(prefix)}}writes {writes}")
    if args.rank is not None:
        heads = [(args.layer, args.head)] if args.head is not None else (
            [(args.layer, h) for h in range(cfg.n_heads)] if args.layer is not None else None)
        if args.text is not None:
            from .probes import text_windows

            inputs = text_windows(model, read_text_arg(args.text), max_windows=args.max_prompts)
            what = f"text {args.text}"
        else:
            from .probes import repeated_tokens

            inputs, what = repeated_tokens(model, 8), "8 repeated random-token sequences"
        table = ov.rank_k_loss(model, inputs, heads=heads, ks=args.rank)
        print(f"\nloss on {what} with W_OV cut to rank k (clean loss {table['clean_loss'].iloc[0]:.4f}; "
              "the value bias b_V W_O is kept)")
        print_table(table[["layer", "head", "k", "loss", "delta"]], max_rows=len(table) + 1)
    write_outputs(table, args)
    if args.png:
        from .plotting import heads_heatmap

        heads_heatmap(summary, ["copying_score"], args.png, vmin=0.0, vmax=1.0, cmap="RdBu_r",
                      n_layers=cfg.n_layers, n_heads=cfg.n_heads, annotate=lambda v: f"{v:.2f}")
        png = Path(args.png)
        spectra = png.with_name(f"{png.stem}-spectra{png.suffix}")
        from .plotting import save_spectra_figure

        save_spectra_figure(ov.ov_spectrum(model), spectra, title=f"W_OV spectra of {cfg.name}")
        print(f"wrote {args.png} and {spectra}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- interp ablate
def _add_ablate(sub) -> None:
    p = sub.add_parser(
        "ablate", help="ablate attention heads and measure what breaks: chosen heads, or a scan of every head",
        description="Ablate heads and report a metric's change (clean, ablated, delta = ablated - clean). "
        "--heads 4.11,0.5 ablates each listed head alone, then all of them together; --scan ablates every head "
        "in turn (--by layer: every layer). With no --text or --prompt the inputs are 8 repeated random-token "
        "sequences [BOS] + r + r, where induction circuits show.",
    )
    add_model_args(p)
    what = p.add_argument_group("what to ablate")
    what.add_argument("--heads", help="heads as layer.head, comma-separated: '4.11,0.5'; 'L.*' is a whole layer")
    what.add_argument("--scan", action="store_true", help="ablate every head in turn")
    what.add_argument("--by", choices=["head", "layer"], default="head", help="with --scan: each head (default) or each layer")
    what.add_argument("--method", default="zero",
                      help="zero (default): output set to 0; mean: mean over --reference per position; mean_pos: "
                      "mean over --reference's tokens; resample: value on another input (--reference, else another "
                      "prompt of the batch); pattern: attention to --keys removed")
    what.add_argument("--reference", metavar="FILE",
                      help="text for mean / mean_pos / resample, cut into windows ('-' = stdin; may be the --text file)")
    what.add_argument("--keys", help="with --method pattern: previous, self, bos, or key positions '0,3'")
    what.add_argument("--renormalize", action="store_true",
                      help="with --method pattern: rescale the remaining attention to sum to 1")
    what.add_argument("--seed", type=int, default=0, help="with --method resample: seed of the pairing (default 0)")
    data = p.add_argument_group("inputs (default: 8 repeated random-token sequences)")
    data.add_argument("--text", metavar="FILE", help="text to run, cut into windows of --window tokens ('-' = stdin)")
    data.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat for more)")
    data.add_argument("--window", type=int, help="tokens per window of --text / --reference (default min(128, n_ctx))")
    data.add_argument("--max-windows", type=int, default=16, help="at most this many windows of --text (default 16)")
    m = p.add_argument_group("metric")
    m.add_argument("--metric", choices=["loss", "logit_diff", "prob"], default="loss",
                   help="loss: mean next-token loss over the text (default); logit_diff: logit(--correct) - "
                   "logit(--wrong); prob: probability of --target; both at --position")
    m.add_argument("--correct", help="token for logit_diff (a one-token string such as ' Paris', or an id)")
    m.add_argument("--wrong", help="token for logit_diff")
    m.add_argument("--target", help="token for prob")
    m.add_argument("--position", type=int, default=-1,
                   help="position logit_diff / prob read (default -1: each prompt's last real token; "
                   "write negative ones as --position=-2)")
    p.add_argument("--top", type=int, default=40, help="print at most N rows, largest |delta| first for scans (default 40)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_output_args(p)


def _token_arg(text: str):
    return int(text) if text.isdigit() else text


def _cmd_ablate(args) -> int:
    from . import ablation, metrics, probes, select
    from .scan import scan

    if args.scan == (args.heads is not None):
        raise InterpError("give --heads L.H[,L.H…] (those heads) or --scan (every head), one of the two")
    if args.by == "layer" and not args.scan:
        raise InterpError("--by layer goes with --scan (with --heads, write a whole layer as 'L.*')")
    if args.png and args.by == "layer":
        raise InterpError("--png draws a layers × heads heatmap: use it with a per-head scan or --heads")
    if args.text is not None and args.prompt:
        raise InterpError("give --text FILE or --prompt TEXT, not both")
    if args.metric == "logit_diff" and (args.correct is None or args.wrong is None):
        raise InterpError("--metric logit_diff needs --correct and --wrong tokens")
    if args.metric == "prob" and args.target is None:
        raise InterpError("--metric prob needs --target TOKEN")
    if args.method in ("mean", "mean_pos") and args.reference is None:
        raise InterpError(f"--method {args.method} needs --reference FILE: the text whose mean activations replace "
                          "the head's (it may be the --text file itself)")
    model = load_model(args)
    window = args.window or min(128, model.cfg.n_ctx)
    if args.text is not None:
        inputs, what = probes.text_windows(model, read_text_arg(args.text), window, max_windows=args.max_windows), args.text
    elif args.prompt:
        inputs, what = args.prompt, f"{len(args.prompt)} prompt(s)"
    else:
        half = min(32, (model.cfg.n_ctx - 1) // 2)
        inputs = probes.repeated_tokens(model, 8, half)
        what = f"8 repeated random-token sequences [BOS] + r + r (|r| = {half})"
    reference = None if args.reference is None else probes.text_windows(model, read_text_arg(args.reference), window)
    keys = args.keys
    if keys is not None and keys not in ablation.KEY_NAMES:
        try:
            keys = [int(k) for k in keys.split(",")]
        except ValueError:
            raise InterpError(f"--keys {args.keys!r}: use {', '.join(ablation.KEY_NAMES)} or positions such as '0,3'") from None
    metric = {"loss": lambda: "loss",
              "logit_diff": lambda: metrics.LogitDiff(_token_arg(args.correct), _token_arg(args.wrong), args.position),
              "prob": lambda: metrics.Prob(_token_arg(args.target), args.position)}[args.metric]()
    options = dict(method=args.method, reference=reference, keys=keys, renormalize=args.renormalize,
                   seed=args.seed, progress=False if args.no_progress else None)
    if args.scan:
        df = scan(model, inputs, metric, by=args.by, **options)
    else:  # each listed head (or 'L.*' layer) alone, then all of them together
        df = scan(model, inputs, metric, heads=args.heads, by="item", together=True, **options)
    print(f"ablating heads of {model.cfg.name} (fold_ln={model.cfg.fold_ln}), method {args.method}, on {what}; "
          f"metric {df['metric'].iloc[0]}, clean {df['clean'].iloc[0]:.4f}")
    shown = df[["variant", "layer", "head", "clean", "ablated", "delta"]]
    if args.scan:
        shown = shown.reindex(shown["delta"].abs().sort_values(ascending=False, kind="stable").index)
    print_table(shown.head(args.top), max_rows=args.top + 1)
    if len(shown) > args.top:
        print(f"({len(shown) - args.top} more rows: --top N, or --out FILE for all)")
    write_outputs(df, args)
    if args.png:
        from .plotting import heads_heatmap

        single = df[df["n_heads"] == 1].astype({"layer": int, "head": int})
        label = f"Δ {df['metric'].iloc[0]} ({args.method} ablation)"
        lim = float(single["delta"].abs().max()) or 1.0
        heads_heatmap(single.rename(columns={"delta": label}), [label], args.png, cmap="RdBu_r", vmin=-lim, vmax=lim,
                      n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, annotate=lambda v: f"{v:.2f}")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- subcommand table
# name -> (add_parser, run). Subcommands of the analyses register here.
COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "info": (_add_info, _cmd_info),
    "bench": (_add_bench, _cmd_bench),
    "heads": (_add_heads, _cmd_heads),
    "lens": (_add_lens, _cmd_lens),
    "report": (_add_report, _cmd_report),
    "ov": (_add_ov, _cmd_ov),
    "ablate": (_add_ablate, _cmd_ablate),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp", description="Mechanistic interpretability for GPT-2: heads, lens, circuits, ablation, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args) or 0
    except InterpError as e:
        print(f"interp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
