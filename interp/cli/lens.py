"""``interp lens``: the logit lens, or direct logit attribution with ``--dla``."""

from __future__ import annotations

import argparse

from ..errors import InterpError
from .common import Outputs, add_model_args, add_output_args, add_progress, count, load_model, print_table, progress

NAME = "lens"


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="logit lens: unembed the residual stream after each layer; direct logit attribution",
        description="Read the residual stream at every layer boundary (embeddings, after each attention "
        "layer, after each MLP) through the final LayerNorm and the unembedding.",
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
    p.add_argument("--dla", action="store_true",
                   help="direct logit attribution of --target to every head, MLP, embedding and bias instead")
    p.add_argument("--contrast", help="with --dla: attribute the logit difference target - contrast (a token)")
    add_model_args(p)
    add_progress(p)
    add_output_args(p, png="write the lens grid (or, with --dla, the heads' contributions) to this file")


def run(args: argparse.Namespace) -> int:
    from .. import select

    positions = select.parse_positions(args.positions) if args.positions is not None else None
    target = select.cli_token(args.target) if args.target is not None else None
    contrast = select.cli_token(args.contrast) if args.contrast is not None else None
    if args.dla and target is None:
        raise InterpError("--dla needs --target TOKEN (and optionally --contrast TOKEN)")
    if contrast is not None and not args.dla:
        raise InterpError("--contrast needs --dla (the lens follows one target token)")
    if not args.prompt.strip():
        raise InterpError("the prompt is empty")
    out = Outputs(args)
    model = load_model(args)
    return (_dla if args.dla else _lens)(model, args, positions, target, contrast, out)


def _lens(model, args, positions, target, contrast, out: Outputs) -> int:
    from analyses import logit_lens as ll

    df = ll.logit_lens(
        model, args.prompt, positions=positions, k=args.k, target=target,
        resid_post_only=args.resid_post_only, final_ln=args.final_ln, unembed=args.unembed, progress=progress(args),
    )
    print(ll.describe(df))
    print_table(ll.lens_summary(df))
    if args.unembed == "pinv":
        cells = df[df["rank"] == 1]
        print(f"pinv vs W_U: top-1 agrees in {cells['wu_top1_agrees'].mean():.0%} of {len(cells)} cells, "
              f"mean score correlation {cells['wu_corr'].mean():.3f}")
    out.add_table(df)
    if out.image:
        from ..plotting import logit_lens_figure

        out.add_figure(logit_lens_figure(df))
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
