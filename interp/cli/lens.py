"""``interp lens``: the logit lens (or the tuned lens, ``--tuned DIR``), direct logit attribution with ``--dla``;
``interp lens train`` and ``interp lens eval`` for the tuned lens.

The word right after ``lens`` chooses the mode when it is ``train`` or ``eval``; anything else is the
prompt. To read the text "train" itself, put ``--`` first: ``interp lens -- train``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InterpError
from .common import (Outputs, add_model_args, add_output_args, add_progress, count, load_model, print_table, progress)

NAME = "lens"
MODES = ("train", "eval")
COLORS = ("entropy", "target_prob", "kl")


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="logit lens and tuned lens: the residual stream after each layer, unembedded; `lens train`, `lens eval`",
        description="Read the residual stream at every layer boundary (embeddings, after each attention "
        "layer, after each MLP) through the final LayerNorm and the unembedding; with --tuned, through a tuned "
        "lens's translators first. Modes: `interp lens train --out DIR` trains a tuned lens, `interp lens eval` "
        "compares the lenses on held-out text. The word right after `lens` is a mode only if it is `train` or "
        "`eval`; to read the text 'train', write `interp lens -- train`.",
    )
    p.add_argument("prompt", help="the prompt (BOS is prepended)")
    p.add_argument("--target", help="a token to follow: its text, exactly one token (' floor', with its space), "
                   "or id:N")
    p.add_argument("--top", "--k", dest="k", type=count("a number of tokens"), default=5,
                   help="top tokens per boundary (default 5)")
    p.add_argument("--positions", default=None,
                   help="positions to read: 'all', an index, '0,3,-1' or a slice '2:6' (default: the last token; "
                   "write negative ones as --positions=-2,-1)")
    p.add_argument("--resid-post-only", action="store_true", help="only the embeddings and after each block")
    p.add_argument("--no-final-ln", dest="final_ln", action="store_false",
                   help="raw resid @ W_U, without the final LayerNorm")
    p.add_argument("--unembed", choices=["wu", "pinv"], default="wu",
                   help="wu: the model's unembedding (default); pinv: the embedding's pseudo-inverse, compared with W_U")
    p.add_argument("--tuned", metavar="DIR",
                   help="read through this tuned lens (a tuned-lens directory, or a bundled model's name: interp-tiny); "
                   "--png then draws the prediction trajectory of the logit, pinv and tuned lenses side by side")
    p.add_argument("--html", metavar="FILE", help="write the prediction trajectory as a self-contained HTML page")
    p.add_argument("--color", choices=COLORS, default="entropy",
                   help="the trajectory figure's colour: entropy (default), target_prob (the next token's probability) "
                   "or kl (to the model's output)")
    p.add_argument("--dla", action="store_true",
                   help="direct logit attribution of --target to every head, MLP, embedding and bias instead")
    p.add_argument("--contrast", help="with --dla: attribute the logit difference target - contrast (a token)")
    add_model_args(p)
    add_progress(p)
    add_output_args(p, png="write the lens grid (with --tuned: the prediction trajectory; with --dla: the heads' "
                    "contributions) to this file")
    modes = {"train": _train_parser(type(p)), "eval": _eval_parser(type(p))}
    plain = p.parse_known_args

    # A positional prompt and subcommands cannot share one argparse parser: the lens parser hands the
    # rest of the line to a mode's own parser when its first word names a mode (argparse's subparser
    # action calls exactly this method of the parser it chose).
    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in modes:
            ns = modes[args[0]].parse_args(args[1:], namespace)
            ns.lens_mode = args[0]
            return ns, []
        ns, extra = plain(args, namespace)
        ns.lens_mode = None
        return ns, extra

    p.parse_known_args = parse_known_args


def _train_parser(cls) -> argparse.ArgumentParser:
    p = cls(prog="interp lens train",
            description="Train a tuned lens (one affine translator per layer, tuned-lens's recipe: SGD with Nesterov "
            "momentum, KL to the model's final distribution) on the model's own text, and save it in tuned-lens's "
            "format (config.json, params.pt, params.safetensors, training.json).")
    p.add_argument("--out", required=True, metavar="DIR", help="the lens directory to write (created if needed)")
    p.add_argument("--steps", type=count("a number of steps"), default=250, help="optimizer steps (default 250)")
    p.add_argument("--tokens-per-step", type=count("a number of tokens"), default=2**11,
                   help="tokens per step, a multiple of the window (default 2048)")
    p.add_argument("--batch-size", type=count("a number of windows"), help="windows per forward pass")
    p.add_argument("--text", metavar="FILE", help="text to train on (.txt, .jsonl, .json, .parquet or a datasets "
                   "directory; default: the bundled model's training text)")
    p.add_argument("--seed", type=int, default=0, help="shuffles the text (default 0)")
    add_model_args(p)
    add_progress(p)
    return p


def _eval_parser(cls) -> argparse.ArgumentParser:
    p = cls(prog="interp lens eval",
            description="Per layer boundary, each lens's KL divergence from the model's final distribution and its "
            "cross-entropy on the next token, over held-out text: the logit lens, the pseudo-inverse lens and "
            "(with --tuned) the tuned lens.")
    p.add_argument("--tuned", metavar="DIR", help="a tuned lens directory, or a bundled model's name (interp-tiny)")
    p.add_argument("--text", metavar="FILE", help="text to evaluate on (default: the bundled corpus's held-out split)")
    p.add_argument("--max-windows", type=count("a number of windows"), help="read at most this many windows")
    add_model_args(p)
    add_progress(p)
    add_output_args(p, png="plot KL and cross-entropy per boundary to this file")
    return p


def run(args: argparse.Namespace) -> int:
    if args.lens_mode == "train":
        return _train(args)
    if args.lens_mode == "eval":
        return _eval(args)
    from .. import select

    positions = select.parse_positions(args.positions) if args.positions is not None else None
    target = select.cli_token(args.target) if args.target is not None else None
    contrast = select.cli_token(args.contrast) if args.contrast is not None else None
    if args.dla and target is None:
        raise InterpError("--dla needs --target TOKEN (and optionally --contrast TOKEN)")
    if contrast is not None and not args.dla:
        raise InterpError("--contrast needs --dla (the lens follows one target token)")
    if args.tuned is not None:
        if args.dla or args.unembed != "wu" or not args.final_ln:
            raise InterpError("--tuned reads through the final LayerNorm and W_U: drop --dla, --unembed pinv and "
                              "--no-final-ln")
    if not args.prompt.strip():
        raise InterpError("the prompt is empty")
    if args.html is not None:
        from ..export import check_target

        check_target(args.html, "--html")
    tuned = _read_lens(args.tuned, args.fold_ln, "--tuned")
    out = Outputs(args)
    model = load_model(args)
    return _dla(model, args, positions, target, contrast, out) if args.dla else \
        _lens(model, args, positions, target, tuned, out)


def _read_lens(path, fold_ln: bool, option: str):
    """The tuned lens, read (and checked against the weight mode) before the model loads."""
    if path is None:
        return None
    from analyses.tuned_lens import TunedLens

    try:
        lens = TunedLens.load(path)
    except InterpError as e:
        raise InterpError(f"{option} {path}: {e}") from None
    if fold_ln and not lens.mean_blind():
        raise InterpError(f"{option} {path}: this lens reads the residual stream's mean, which folded weights do not "
                          "have; add --no-fold-ln")
    return lens


def _check_lens(lens, model, option: str, path) -> None:
    try:
        lens.check(model)
    except InterpError as e:
        raise InterpError(f"{option} {path}: {e}") from None


def _lens(model, args, positions, target, tuned, out: Outputs) -> int:
    from analyses import logit_lens as ll

    if tuned is not None:
        _check_lens(tuned, model, "--tuned", args.tuned)
    df = ll.logit_lens(
        model, args.prompt, positions=positions, k=args.k, target=target,
        resid_post_only=True if tuned is not None else args.resid_post_only, final_ln=args.final_ln,
        unembed=args.unembed, lens=tuned, progress=progress(args),
    )
    print(ll.describe(df))
    print_table(ll.lens_summary(df))
    if args.unembed == "pinv":
        cells = df[df["rank"] == 1]
        print(f"pinv vs W_U: top-1 agrees in {cells['wu_top1_agrees'].mean():.0%} of {len(cells)} cells, "
              f"mean score correlation {cells['wu_corr'].mean():.3f}")
    out.add_table(df)
    trajectory = None
    if args.html or (out.image and tuned is not None):
        from analyses.lens_compare import prediction_trajectory

        trajectory = prediction_trajectory(model, args.prompt, tuned=tuned)
    if out.image:
        from .. import plotting

        out.add_figure(plotting.logit_lens_figure(df) if tuned is None else
                       plotting.trajectory_figure(trajectory, color=args.color))
    if args.html:
        from ..report.trajectory import trajectory_html

        page = trajectory_html(trajectory)
        out.add(args.html, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    out.commit()
    return 0


def _dla(model, args, positions, target, contrast, out: Outputs) -> int:
    from analyses.dla import direct_logit_attribution

    df = direct_logit_attribution(model, args.prompt, target, contrast=contrast, positions=positions,
                                  progress=progress(args))
    what = f"logit({df['target'].iloc[0]!r})" + (f" - logit({df['contrast'].iloc[0]!r})" if contrast is not None else "")
    for pos, cell in df.groupby("position", sort=True):
        print(f"direct logit attribution of {what} at position {pos} ({cell['input_token'].iloc[0]!r}): "
              f"total {cell['total'].iloc[0]:.3f} = sum of {len(cell)} terms ({cell['contribution'].sum():.3f})")
        top = cell.reindex(cell["contribution"].abs().sort_values(ascending=False).index).head(max(args.k, 10))
        print_table(top[["component", "kind", "layer", "head", "contribution"]])
    out.add_table(df)
    if out.image:
        from ..plotting import heads_figure

        pos = int(df["position"].max())
        label = f"direct contribution to {what}\nat position {pos}"  # the panel's title
        heads = df[(df["position"] == pos) & (df["kind"] == "head")].astype({"layer": int, "head": int})
        out.add_figure(heads_figure(heads.rename(columns={"contribution": label}), [label], signed=True,
                                    n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
                                    annotate=lambda v: f"{v:.1f}", colorbar_label="contribution (logits)"))
    out.commit()
    return 0


# ---------------------------------------------------------------------------- train and eval
def _check_text(path, option: str) -> None:
    """--text is read once before the model loads, so that a missing or empty file fails first."""
    if path is None:
        return
    import os

    from ..corpus import documents
    from .common import check_file

    if not os.path.isdir(path):
        check_file(path, option)
    try:
        documents(path)
    except InterpError as e:
        raise InterpError(f"{option} {path}: {e}") from None


def _train(args: argparse.Namespace) -> int:
    from analyses.lens_training import train_tuned_lens
    from analyses.tuned_lens import check_lens_target

    try:
        check_lens_target(args.out)
    except InterpError as e:
        raise InterpError(f"--out {args.out}: {e}") from None
    _check_text(args.text, "--text")
    model = load_model(args)
    lens = train_tuned_lens(model, args.text, steps=args.steps, tokens_per_step=args.tokens_per_step,
                            batch_size=args.batch_size, seed=args.seed, progress=progress(args))
    lens.save(args.out)
    r = lens.record
    print(f"tuned lens of {model.cfg.name} (fold_ln={model.cfg.fold_ln}): {r['steps']} steps × {r['tokens_per_step']} "
          f"tokens in {r['seconds']:.1f} s")
    labels = ["embed", *[f"mlp {i}" for i in range(model.cfg.n_layers - 1)]]
    import pandas as pd

    print_table(pd.DataFrame({"translator": range(len(labels)), "boundary": labels,
                              "KL first step": r["kl_first_step"], "KL last tenth": r["kl_last_tenth"]}))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from analyses.lens_compare import evaluate_lenses

    tuned = _read_lens(args.tuned, args.fold_ln, "--tuned")
    _check_text(args.text, "--text")
    out = Outputs(args)
    model = load_model(args)
    if tuned is not None:
        _check_lens(tuned, model, "--tuned", args.tuned)
    df = evaluate_lenses(model, tuned, args.text, max_windows=args.max_windows, progress=progress(args))
    a = df.attrs
    print(f"lenses of {model.cfg.name} (fold_ln={model.cfg.fold_ln}) on {df['tokens'].iloc[0]:,} tokens "
          f"({a['windows']} windows of {a['n_ctx']}; {a['text']}): KL(final ‖ lens) and next-token cross-entropy, nats")
    wide = df.pivot(index=["boundary", "label"], columns="lens", values=["kl", "ce"])
    wide.columns = [f"{what.upper()} {lens}" for what, lens in wide.columns]
    print_table(wide.reset_index().drop(columns="boundary"))
    out.add_table(df)
    if out.image:
        from ..plotting import lens_quality_figure

        out.add_figure(lens_quality_figure(df))
    out.commit()
    return 0
