"""``interp ablate``: remove heads (each, then together) or scan every head; a metric's change."""

from __future__ import annotations

import argparse

from ..errors import InterpError
from .common import (Outputs, add_model_args, add_output_args, add_progress, check_file, count, load_model,
                     print_table, progress, read_text)

NAME = "ablate"


#: What the library's refusals (interp.ablation.check_method) call its arguments here.
CLI_NAMES = {"method": "--method", "reference": "--reference", "keys": "--keys", "renormalize": "--renormalize",
             "seed": "--seed", "reference_is": "a text FILE whose mean activations replace the head's (it may be the "
             "--text file itself)", "keys_are": "previous, self, bos or positions such as '0,3'"}


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="ablate heads (zero, mean, resample, pattern) and report how a metric changes",
        description="Ablate the given heads one at a time and then all together, or (--scan) every head in turn, "
        "and print how the metric moves. Default inputs: 8 repeated random-token sequences [BOS] + r + r.",
    )
    add_model_args(p)
    what = p.add_argument_group("what to ablate")
    what.add_argument("--heads", help="heads as layer.head, comma-separated: '4.11,0.5'; 'L.*' is a whole layer")
    what.add_argument("--scan", action="store_true", help="ablate every head in turn")
    what.add_argument("--by", choices=["head", "layer"], default="head", help="with --scan: each head (default) or each layer")
    what.add_argument("--method", default="zero", choices=["zero", "mean", "mean_pos", "resample", "pattern"],
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
    data.add_argument("--window", type=count("a window length"),
                      help="tokens per window of --text / --reference (default min(128, n_ctx))")
    data.add_argument("--max-windows", type=count("a number of windows"), default=16,
                      help="at most this many windows of --text (default 16)")
    m = p.add_argument_group("metric")
    m.add_argument("--metric", choices=["loss", "logit_diff", "prob"], default="loss",
                   help="loss: mean next-token loss over the text (default); logit_diff: logit(--target) - "
                   "logit(--contrast); prob: probability of --target; both at --position")
    m.add_argument("--target", "--correct", dest="target",
                   help="token for logit_diff / prob: its text (exactly one token) or id:N")
    m.add_argument("--contrast", "--wrong", dest="contrast", help="the other token for logit_diff")
    m.add_argument("--position", type=int, default=-1,
                   help="position logit_diff / prob read (default -1: each prompt's last token; "
                   "write negative ones as --position=-2)")
    p.add_argument("--top", type=count("a number of rows"), default=40,
                   help="print at most N rows, largest |delta| first for scans (default 40)")
    add_progress(p)
    add_output_args(p, png="write a layers × heads heatmap of the change to this file (.png, .svg or .pdf)")


def run(args: argparse.Namespace) -> int:
    from .. import metrics, prompts, select
    from ..ablation import KEY_NAMES, check_method
    from ..patching import by_strength
    from ..scan import scan

    if args.scan == (args.heads is not None):
        raise InterpError("give --heads L.H[,L.H…] (those heads) or --scan (every head), one of the two")
    if args.by == "layer" and not args.scan:
        raise InterpError("--by layer goes with --scan (with --heads, write a whole layer as 'L.*')")
    if args.png and args.by == "layer":
        raise InterpError("--png draws a layers × heads heatmap: use it with a per-head scan or --heads")
    if args.text is not None and args.prompt:
        raise InterpError("give --text FILE or --prompt TEXT, not both")
    if args.metric == "logit_diff" and (args.target is None or args.contrast is None):
        raise InterpError("--metric logit_diff needs --target and --contrast tokens")
    if args.metric == "prob" and args.target is None:
        raise InterpError("--metric prob needs --target TOKEN")
    if args.metric == "loss" and (args.target is not None or args.contrast is not None):
        raise InterpError("--target/--contrast go with --metric logit_diff or prob")
    keys = args.keys
    if keys is not None and keys not in KEY_NAMES and args.method == "pattern":
        try:
            keys = [int(k) for k in keys.split(",")]
        except ValueError:
            raise InterpError(f"unknown --keys {args.keys!r}: use {CLI_NAMES['keys_are']}") from None
    check_method(args.method, reference=args.reference is not None, keys=keys, renormalize=args.renormalize,
                 seed=args.seed, names=CLI_NAMES)
    if args.window is not None and args.text is None and args.reference is None:
        raise InterpError("--window sets the windows of --text / --reference: give one of them")
    check_file(args.text, "--text")
    check_file(args.reference, "--reference")
    out = Outputs(args)
    text, reference_text = read_text(args.text, "--text"), read_text(args.reference, "--reference")
    model = load_model(args)
    if args.heads is not None:
        select.heads(model, args.heads)  # a bad head is reported before any work
    if args.window is not None and args.window > model.cfg.n_ctx:
        raise InterpError(f"--window {args.window}: out of range; the model's context window is {model.cfg.n_ctx} tokens")
    window = args.window or min(128, model.cfg.n_ctx)
    if text is not None:
        inputs, what = prompts.text_windows(model, text, window, max_windows=args.max_windows), args.text
    elif args.prompt:
        inputs, what = args.prompt, f"{len(args.prompt)} prompt(s)"
    else:
        half = min(32, (model.cfg.n_ctx - 1) // 2)
        inputs, what = prompts.repeated_tokens(model, 8, half), f"8 repeated random-token sequences [BOS] + r + r (|r| = {half})"
    reference = None if reference_text is None else prompts.text_windows(model, reference_text, window)
    target = None if args.target is None else select.cli_token(args.target)
    contrast = None if args.contrast is None else select.cli_token(args.contrast)
    metric = {"loss": lambda: "loss",
              "logit_diff": lambda: metrics.LogitDiff(target, contrast, args.position),
              "prob": lambda: metrics.Prob(target, args.position)}[args.metric]()
    options = dict(method=args.method, reference=reference, keys=keys, renormalize=args.renormalize,
                   seed=args.seed, progress=progress(args))
    if args.scan:
        df = scan(model, inputs, metric, by=args.by, **options)
    else:  # each listed head (or 'L.*' layer) alone, then all of them together
        df = scan(model, inputs, metric, heads=args.heads, by="item", together=True, **options)
    print(f"ablating heads of {model.cfg.name} (fold_ln={model.cfg.fold_ln}), method {args.method}, on {what}; "
          f"metric {df['metric'].iloc[0]}, clean {df['clean'].iloc[0]:.4f}")
    shown = df[["variant", "layer", "head", "clean", "ablated", "delta"]]
    if args.scan:
        shown = by_strength(shown, "delta")
    print_table(shown, max_rows=args.top)
    out.add_table(df)
    if out.image:
        from ..plotting import heads_figure

        single = df[df["n_heads"] == 1].astype({"layer": int, "head": int})
        label = f"Δ {df['metric'].iloc[0]} ({args.method} ablation)"
        out.add_figure(heads_figure(single.rename(columns={"delta": label}), [label], signed=True,
                                    n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
                                    annotate=lambda v: f"{v:.2f}", colorbar_label=f"ablated − clean {df['metric'].iloc[0]}"))
    out.commit()
    return 0
