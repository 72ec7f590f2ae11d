"""``interp compose``: Q-, K- and V-composition scores between heads, against the random-matrix baseline."""

from __future__ import annotations

import argparse

from .common import Outputs, add_model_args, add_output_args, add_progress, count, load_model, print_table, progress

NAME = "compose"


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="composition scores: how much each head's output feeds a later head's query, key or value",
        description="Q-, K- and V-composition scores ‖W_OV·W_B‖_F / (‖W_OV‖_F ‖W_B‖_F) (Elhage et al., 2021) of "
        "every (earlier sender head, later receiver head) pair, W_B being the receiver's W_Q W_Kᵀ (q), W_K W_Qᵀ "
        "(k) or W_OV (v) — TransformerLens's all_composition_scores, computed through the d_head-sized factors. "
        "baseline: what random matrices of the same shapes score (1/√d_model, root mean square). NaN: the "
        "sender writes, or the receiver reads, nothing.",
    )
    add_model_args(p)
    p.add_argument("--kind", type=str.lower, choices=["q", "k", "v", "all"], default="all",
                   help="which composition (default: all three, stacked)")
    p.add_argument("--top", type=count("a number of rows"), default=10,
                   help="pairs to print per kind, highest score first (default 10; --out writes every pair)")
    add_progress(p)
    add_output_args(p, png=None)


def run(args: argparse.Namespace) -> int:
    out = Outputs(args, image=False)
    model = load_model(args)
    from analyses.composition import composition_scores

    df = composition_scores(model, args.kind, progress=progress(args))
    cfg = model.cfg
    print(f"composition scores of {cfg.name} (fold_ln={cfg.fold_ln}): ‖W_OV(sender)·W_B(receiver)‖_F / "
          "(‖W_OV‖_F ‖W_B‖_F); baseline = the score of random matrices of the same shapes")
    for kind, rows in df.groupby("kind", sort=False):
        print(f"\n{kind.upper()}-composition: the {min(args.top, len(rows))} strongest of {len(rows)} pairs")
        print_table(rows.nlargest(args.top, "score"))
    out.add_table(df)
    out.commit()
    return 0
