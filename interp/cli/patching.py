"""``interp patch``, ``interp path-patch`` and ``interp compose``: how heads work together."""

from __future__ import annotations

import argparse

from ..errors import InterpError
from .common import (Outputs, add_model_args, add_output_args, add_progress, check_file, count, load_model,
                     print_table, progress, read_lines)


def _add_pair(p: argparse.ArgumentParser) -> None:
    """The inputs of patch, path-patch, attribute and circuit: prompt pairs, or a standard task."""
    from ..tasks import TASKS

    g = p.add_argument_group("inputs: clean and corrupted prompts of equal token lengths, paired")
    g.add_argument("--clean", action="append", default=[], metavar="TEXT", help="a clean prompt (repeat for more)")
    g.add_argument("--corrupted", action="append", default=[], metavar="TEXT", help="its corrupted partner")
    g.add_argument("--clean-file", metavar="FILE", help="clean prompts, one per line ('-' = stdin)")
    g.add_argument("--corrupted-file", metavar="FILE", help="corrupted prompts, one per line, paired by line "
                   "('-' = stdin)")
    # A group of its own, not nested in the one above: argparse's --help leaves nested groups out.
    t = p.add_argument_group("or a standard task (interp.tasks: prompts and metric made for you)")
    t.add_argument("--task", choices=list(TASKS),
                   help="induction: [BOS] r r[:-1], corrupted = another first half; induction-key: only the earlier "
                   "copy of the query token replaced (interp.prompts.induction_pair); ioi (Wang et al. 2022); "
                   "greater-than (Hanna et al. 2023)")
    t.add_argument("--n-prompts", type=count("a number of prompts"), default=8, help="with --task: pairs (default 8)")
    t.add_argument("--half", type=count("a length"), help="with an induction task: length of r (default 20, or what "
                   "the context window allows)")
    t.add_argument("--seed", type=int, default=0, help="with --task: its random seed (default 0)")
    m = p.add_argument_group("metric of prompt pairs (default: logit of the clean run's top token minus the "
                             "corrupted run's; a --task brings its own)")
    m.add_argument("--target", help="token the clean run should predict (text of one token, or id:N)")
    m.add_argument("--contrast", help="token to compare it with (default: the corrupted run's top token)")
    m.add_argument("--position", type=int, default=-1,
                   help="position the metric reads (default -1: the last token; write --position=-2)")


def _check_pair(args) -> None:
    given = [bool(args.clean or args.corrupted), bool(args.clean_file or args.corrupted_file), args.task is not None]
    if sum(given) > 1:
        raise InterpError("give --task or prompts (--clean/--corrupted, --clean-file/--corrupted-file), not both")
    if args.task is None and args.half is not None:
        raise InterpError("--half goes with --task induction or induction-key")
    if args.task is not None:
        if args.half is not None and not args.task.startswith("induction"):
            raise InterpError(f"--half goes with --task induction or induction-key, not {args.task}")
        if args.target is not None or args.contrast is not None or args.position != -1:
            raise InterpError("--task brings its own metric: leave out --target/--contrast/--position")
        return
    if bool(args.clean) != bool(args.corrupted) or bool(args.clean_file) != bool(args.corrupted_file):
        raise InterpError("give clean and corrupted prompts together: --clean with --corrupted, "
                          "--clean-file with --corrupted-file")
    if not (args.clean or args.clean_file):
        raise InterpError("no prompts: give --clean TEXT --corrupted TEXT, --clean-file and --corrupted-file, or --task")
    if args.contrast is not None and args.target is None:
        raise InterpError("--contrast needs --target")
    check_file(args.clean_file, "--clean-file")
    check_file(args.corrupted_file, "--corrupted-file")
    if args.clean_file == "-" and args.corrupted_file == "-":
        raise InterpError("--clean-file and --corrupted-file cannot both be '-' (stdin): give one of them a file")
    if args.clean_file:  # read now: an empty file is refused before the model loads
        args.clean_lines = read_lines(args.clean_file, "--clean-file")
        args.corrupted_lines = read_lines(args.corrupted_file, "--corrupted-file")
        if len(args.clean_lines) != len(args.corrupted_lines):
            raise InterpError(f"--clean-file has {len(args.clean_lines)} prompts but --corrupted-file has "
                              f"{len(args.corrupted_lines)}: they pair by line")


def _pair_and_metric(model, args):
    """(clean, corrupted, metric, a sentence saying what the metric is)."""
    from .. import metrics, select
    from ..engine import paired_batches

    if args.task is not None:
        from ..tasks import TASKS

        extra = {"half": args.half} if args.half is not None else {}
        task = TASKS[args.task](model, n_prompts=args.n_prompts, seed=args.seed, **extra)
        cb, kb = paired_batches(model, task.clean, task.corrupted)
        metric = metrics.resolve_metric(model, task.metric)
        return cb, kb, metric, f"task {task.name} ({len(task)} pairs), metric {metric.name}"
    if args.clean_file:
        clean, corrupted = args.clean_lines, args.corrupted_lines
    else:
        clean, corrupted = args.clean, args.corrupted
    cb, kb = paired_batches(model, clean, corrupted)
    if args.target is None:
        metric = metrics.contrast(model, cb, kb, args.position)
    elif args.contrast is None:
        metric = metrics.Prob(select.cli_token(args.target), args.position).bind(model)
    else:
        metric = metrics.LogitDiff(select.cli_token(args.target), select.cli_token(args.contrast), args.position).bind(model)
    if isinstance(metric, metrics.Prob) and args.target is None:
        note = "the clean and corrupted runs predict the same top token, so the metric is its probability"
    else:
        note = f"metric {metric.name}"
    return cb, kb, metric, note


# ---------------------------------------------------------------------------- interp patch
def add_patch(sub) -> None:
    from ..patching import SITES

    p = sub.add_parser("patch", help="activation patching: paste each clean activation into the corrupted run",
                       description="Run the corrupted prompt with one activation at a time taken from the clean "
                       "run and report the metric and its normalised effect (0 = corrupted, 1 = clean).")
    _add_pair(p)
    p.add_argument("--site", choices=list(SITES), default="z", help="what to patch (default z: each head's output)")
    p.add_argument("--by", choices=["head", "head_pos", "layer", "layer_pos"],
                   help="each head / head and position (head sites), each layer / layer and position (the others)")
    p.add_argument("--heads", help="which heads (default: all), e.g. '1.*,0.4'")
    p.add_argument("--layers", help="which layers (default: all), e.g. '0-3'")
    p.add_argument("--top", type=count("a number of rows"), default=20, help="print the N largest |effect| (default 20)")
    add_model_args(p)
    add_progress(p)
    add_output_args(p, png="write the effects as a layers × heads (or layers × positions) heatmap")


def run_patch(args: argparse.Namespace) -> int:
    from ..patching import HEAD_SITES, by_strength, patch

    _check_pair(args)
    by = args.by or ("head" if args.site in HEAD_SITES else "layer")
    if (by in ("head", "head_pos")) != (args.site in HEAD_SITES):
        raise InterpError(f"--by {by} does not fit --site {args.site}: "
                          + ("use head or head_pos" if args.site in HEAD_SITES else "use layer or layer_pos"))
    if args.png and by not in ("head", "layer_pos"):
        raise InterpError("--png draws layers × heads (--by head) or layers × positions (--by layer_pos)")
    out = Outputs(args)
    model = load_model(args)
    cb, kb, metric, note = _pair_and_metric(model, args)
    df = patch(model, cb, kb, metric, site=args.site, by=by, heads=args.heads, layers=args.layers,
               progress=progress(args))
    a = df.attrs
    print(f"activation patching of {model.cfg.name} (fold_ln={model.cfg.fold_ln}), site {args.site} by {by}; "
          f"{note}: clean {a['clean']:.4f}, corrupted {a['corrupted']:.4f}; effect = (patched - corrupted) / "
          "(clean - corrupted)")
    shown = by_strength(df)
    print_table(shown[["layer", "head", "position", "site", "value", "effect"]], max_rows=args.top)
    out.add_table(df)
    if out.image:
        from ..plotting import heads_figure

        # One scale for every effect (1 = the whole clean-corrupted gap), never fitted to the largest.
        effect = dict(signed=True, limit=1.0, n_layers=model.cfg.n_layers,
                      colorbar_label="effect (0 = corrupted run, 1 = clean run)")
        if by == "head":
            fig = heads_figure(df.astype({"layer": int, "head": int}), ["effect"], n_heads=model.cfg.n_heads,
                               annotate=lambda v: f"{v:.2f}", title=f"activation patching of {args.site}, by head",
                               **effect)
        else:  # layers × positions, drawn with the same helper (positions in the head column)
            grid = df.assign(head=df["position"]).astype({"layer": int, "head": int})
            fig = heads_figure(grid, ["effect"], xlabel="position", title=f"activation patching of {args.site}, "
                               "by layer and position", **effect)
        out.add_figure(fig)
    out.commit()
    return 0


# ---------------------------------------------------------------------------- interp path-patch
def add_path_patch(sub) -> None:
    p = sub.add_parser("path-patch", help="path patching: each sender head's clean output into chosen receivers only",
                       description="For each sender head (default: every head before the receivers), deliver its "
                       "clean output only to the receivers' chosen inputs (layer.head.q|k|v) or to the logits, "
                       "every other head reading the corrupted run (Wang et al. 2022).")
    _add_pair(p)
    p.add_argument("--receivers", required=True, help="e.g. '1.0.k,1.2.k' (layer.head.input, input q, k or v) or 'logits'")
    p.add_argument("--senders", help="which sender heads (default: every head before the receivers)")
    p.add_argument("--mlps", choices=["recomputed", "frozen"], default="recomputed",
                   help="recomputed: MLPs in between rerun on the sender's output (Wang et al., default); "
                   "frozen: the direct path only (TransformerLens's get_act_patch_direct_path)")
    p.add_argument("--top", type=count("a number of rows"), default=20, help="print the N largest |effect| (default 20)")
    add_model_args(p)
    add_progress(p)
    add_output_args(p, png="write the effects as a layers × heads heatmap of the senders")


def run_path_patch(args: argparse.Namespace) -> int:
    from .. import select
    from ..patching import by_strength
    from ..path_patching import path_patch_senders

    _check_pair(args)
    out = Outputs(args)
    model = load_model(args)
    receivers = select.receivers(model, args.receivers)
    cb, kb, metric, note = _pair_and_metric(model, args)
    df = path_patch_senders(model, cb, kb, receivers, metric, senders=args.senders, mlps=args.mlps,
                         progress=progress(args))
    a = df.attrs
    print(f"path patching of {model.cfg.name} into {df['receiver'].iloc[0]} (MLPs {args.mlps}); {note}: "
          f"clean {a['clean']:.4f}, corrupted {a['corrupted']:.4f}")
    shown = by_strength(df)
    print_table(shown[["sender_layer", "sender_head", "receiver", "effect"]], max_rows=args.top)
    out.add_table(df)
    if out.image:
        from ..plotting import heads_figure

        grid = df.rename(columns={"sender_layer": "layer", "sender_head": "head"})
        out.add_figure(heads_figure(grid, ["effect"], signed=True, limit=1.0, n_layers=model.cfg.n_layers,
                                    n_heads=model.cfg.n_heads, annotate=lambda v: f"{v:.2f}",
                                    title=f"path patching into {df['receiver'].iloc[0]}", xlabel="sender head",
                                    colorbar_label="effect (0 = corrupted run, 1 = clean run)"))
    out.commit()
    return 0
