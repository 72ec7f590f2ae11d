"""``interp ov``: OV circuits — ranks, copying scores, one head's directions, rank-k replacement."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InterpError
from .common import (Outputs, add_model_args, add_output_args, add_progress, check_file, count, load_model,
                     print_table, progress, read_text)

NAME = "ov"


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="OV circuits: rank of every head's W_OV, copying scores, rank-k replacement",
        description="Factorise every head's OV circuit W_OV = W_V W_O through d_head (never materialising "
        "W_OV or the d_vocab × d_vocab full circuit W_E·W_OV·W_U): singular values, effective ranks and the "
        "copying score (share of positive eigenvalue mass of the full circuit). With --layer and --head: that "
        "head's spectrum and the tokens its top singular directions read and write. With --rank: the loss "
        "with W_OV cut to rank k.",
    )
    add_model_args(p)
    p.add_argument("--layer", type=int, help="one layer (alone: its heads' rows of the table)")
    p.add_argument("--head", type=int, help="with --layer: one head's detail")
    p.add_argument("--rank", metavar="K[,K…]",
                   help="replace W_OV by its rank-k approximation and report the loss change, per head and k "
                   "(heads: --layer/--head, else all)")
    p.add_argument("--text", metavar="FILE",
                   help="with --rank: text to score, cut to the context window ('-' = stdin; default: 8 repeated "
                   "random-token sequences [BOS] + r + r)")
    p.add_argument("--max-windows", type=count("a number of windows"), default=16,
                   help="with --text: at most this many windows (default 16)")
    p.add_argument("--directions", type=count("a number of directions"), default=3,
                   help="singular directions whose tokens to show (default 3)")
    p.add_argument("--tokens", type=count("a number of tokens"), default=8, help="tokens per direction (default 8)")
    add_progress(p)
    add_output_args(p, png="copying scores as a layers × heads heatmap here (.png, .svg or .pdf), and every "
                    "head's spectrum beside it as NAME-spectra.png")


def run(args: argparse.Namespace) -> int:
    from .. import select

    if args.head is not None and args.layer is None:
        raise InterpError("--head needs --layer")
    if args.text is not None and args.rank is None:
        raise InterpError("--text is the text --rank scores the loss on: give --rank K too")
    ranks = select.counts(args.rank, "ranks") if args.rank is not None else None
    check_file(args.text, "--text")
    out = Outputs(args)
    spectra_path = None
    if out.image:
        png = Path(out.image)
        spectra_path = png.with_name(f"{png.stem}-spectra{png.suffix}")
    text = read_text(args.text, "--text")
    model = load_model(args)
    cfg = model.cfg
    _check(model, args, ranks)
    from analyses import ov, ov_rank

    from ..prompts import text_windows

    inputs = None if text is None else text_windows(model, text, max_windows=args.max_windows)
    view = ov_rank.ov_view(model, args.layer, args.head, ks=ranks, inputs=inputs, n_directions=args.directions,
                      top=args.tokens, progress=progress(args))
    print(f"OV circuits of {cfg.name} (fold_ln={cfg.fold_ln}): W_OV = W_V W_O, rank ≤ d_head = {cfg.d_head}; "
          "rank90/rank99 = singular values holding 90/99 % of Σσ²; erank = exp(entropy of σ/Σσ); "
          "copying_score = Σ max(Re λ, 0) / Σ|λ| over eigenvalues of W_E·W_OV·W_U")
    print_table(view["rows"])
    if args.layer is None:
        top = view["summary"].dropna(subset=["copying_score"]).nlargest(5, "copying_score")
        print("strongest copying heads: " + ", ".join(f"L{r.layer}H{r.head} ({r.copying_score:.2f})" for r in top.itertuples()))
    if "spectrum" in view:
        _print_head(view, args, int(view["rows"]["rank"].iloc[0]), cfg.d_head)
    if "rank_k" in view:
        table = view["rank_k"]
        what = f"text {args.text}" if text is not None else "8 repeated random-token sequences"
        print(f"\nloss on {what} with W_OV cut to rank k (clean loss {table['clean_loss'].iloc[0]:.4f}; "
              "the value bias b_V W_O is kept)")
        print_table(table[["layer", "head", "k", "loss", "delta"]])
    out.add_table(view["table"])
    if out.image:
        from ..plotting import heads_figure, spectra_figure

        out.add_figure(heads_figure(view["summary"], ["copying_score"], vmin=0.0, vmax=1.0, cmap="RdBu_r",
                                    n_layers=cfg.n_layers, n_heads=cfg.n_heads, annotate=lambda v: f"{v:.2f}",
                                    colorbar_label="copying score (positive eigenvalues' share)"))
        out.add_figure(spectra_figure(ov.ov_spectrum(model), title=f"W_OV spectra of {cfg.name}"), spectra_path)
    out.commit()
    return 0


def _check(model, args, ranks) -> None:
    """What needs the model's shape, checked before any work."""
    cfg = model.cfg
    if args.head is not None:
        model.check_head(args.layer, args.head)
    elif args.layer is not None:
        model.check_layer(args.layer)
    if ranks is not None:
        bad = [k for k in ranks if not 0 <= k <= cfg.d_head]
        if bad:
            raise InterpError(f"--rank {bad[0]}: out of range; a head's W_OV has rank at most d_head = {cfg.d_head}")
    if args.directions > cfg.d_head:
        raise InterpError(f"--directions {args.directions}: a head has only d_head = {cfg.d_head} directions")


def _print_head(view: dict, args, rank: int, d_head: int) -> None:
    table = view["spectrum"]
    print(f"\nspectrum of L{args.layer}H{args.head} (rel_error: ‖W_OV − rank-k approximation‖_F / ‖W_OV‖_F)")
    shown = table[table["k"] <= max(rank, 1)]
    print_table(shown[["k", "sigma", "energy", "cum_energy", "rel_error"]])
    if len(shown) < len(table):
        print(f"(σ_k ≈ 0 for k > {max(rank, 1)}: numerical rank {rank} of {d_head})")
    print("\ntop singular directions through the embeddings: attending to a token on the left raises "
          "the logits of the tokens on the right")
    for (d, end), g in view["tokens"].groupby(["direction", "end"], sort=True):
        reads = " ".join(repr(t) for t in g["read_token"])
        writes = " ".join(repr(t) for t in g["write_token"])
        prefix = f"  σ{d} = {g['sigma'].iloc[0]:.3g} {end}  "
        print(f"{prefix}reads  {reads}\n{'':{len(prefix)}}writes {writes}")
