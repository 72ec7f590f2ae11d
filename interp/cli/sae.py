"""``interp sae train|eval|info``: sparse autoencoders and transcoders from the command line.

A thin skin over :mod:`interp.features`: ``train`` is :func:`interp.features.train`, ``eval`` is
:func:`interp.features.evaluate`, ``info`` reads an SAE directory (SAELens's format). Every option
and path is checked before the model loads; a killed ``train`` leaves its last checkpoint
(``--resume`` continues it) and never a half-written SAE.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from ..errors import InterpError
from .common import DEFAULT_MODEL, Outputs, add_progress, count, print_table, progress

NAME = "sae"
ARCHS = ("topk", "batchtopk", "standard", "jumprelu")


def tokens_count(text: str) -> int:
    """``2M``, ``500k``, ``1.5M``, ``4096`` -> a whole number of tokens (argparse type)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (e.g. 4096, 500k, 2M)")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens ≥ 1")
    return int(value)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not a number ≥ 0")
    return value


def add(sub) -> None:
    p = sub.add_parser(NAME, help="sparse autoencoders and transcoders: train, evaluate, inspect (SAELens's format)",
                       description="Train SAEs and transcoders on the model's own activations, evaluate them on "
                       "held-out text, inspect their files. See docs/features.md.")
    cmds = p.add_subparsers(dest="sae_command", required=True, metavar="train|eval|info")

    t = cmds.add_parser("train", help="train an SAE (or several, or a transcoder) on a model's activations",
                        description="Train on the model's activations over text (default: the bundled model's "
                        "training text, its held-out split kept apart). Writes SAELens's format to --out.")
    t.add_argument("--hook", action="append", required=True, metavar="NAME",
                   help="hook point to train on, e.g. blocks.0.hook_resid_post (repeat for several SAEs, one forward pass)")
    t.add_argument("--hook-out", action="append", metavar="NAME",
                   help="makes a transcoder: the hook it predicts, e.g. blocks.0.hook_mlp_out for "
                   "--hook blocks.0.ln2.hook_normalized (one per --hook)")
    t.add_argument("--out", required=True, metavar="DIR", help="directory for the SAE (several: one sub-directory each)")
    t.add_argument("--arch", choices=ARCHS, default="topk", help="architecture (default topk)")
    t.add_argument("--k", type=count("a k"), default=32, help="active features per token for topk/batchtopk (default 32)")
    t.add_argument("--d-sae", type=count("a number of features"), help="features (default 8 × the hook's width)")
    t.add_argument("--tokens", type=tokens_count, default=2_000_000, help="activations to train on, e.g. 2M (default 2M)")
    t.add_argument("--batch-size", type=count("a batch size"), default=4096, help="activations per step (default 4096)")
    t.add_argument("--lr", type=positive_float, help="Adam's learning rate (default 4e-4·√(8192 / d_sae), at most 2e-3)")
    t.add_argument("--l1", type=positive_float, default=5.0, help="L1 coefficient of standard SAEs (default 5)")
    t.add_argument("--l0", type=positive_float, default=1.0, help="L0 coefficient of jumprelu SAEs (default 1)")
    t.add_argument("--skip", action="store_true", help="transcoders: add a linear skip connection (W_skip)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the shuffle (default 0)")
    t.add_argument("--text", metavar="PATH", help="text to train on: .txt, .jsonl, .json, .parquet or a saved datasets "
                   "directory (default: the bundled model's training text)")
    t.add_argument("--text-file", dest="text", metavar="PATH", help=argparse.SUPPRESS)
    t.add_argument("--column", help="the text column of --text (default: text, content or document)")
    t.add_argument("--n-ctx", type=count("a context length"), help="tokens per window (default: the model's context)")
    t.add_argument("--shuffle-buffer", type=count("a buffer size"), default=1 << 16,
                   help="activations shuffled together (default 65536)")
    t.add_argument("--cache", metavar="DIR", help="keep the activations on disk here (reused by later runs)")
    t.add_argument("--checkpoint-every", type=count("a number of steps"), help="steps between checkpoints (default: 20 per run)")
    t.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    _model_args(t, default_model=DEFAULT_MODEL)
    add_progress(t)

    e = cmds.add_parser("eval", help="evaluate SAEs on held-out text: explained variance, L0, CE loss recovered, KL",
                        description="One row per SAE: explained variance, MSE, L0, dead and dense fractions, CE loss "
                        "recovered, KL to the clean model, shrinkage; on the bundled model's held-out text by default.")
    e.add_argument("dirs", nargs="+", metavar="DIR", help="SAE directories (SAELens's format)")
    e.add_argument("--text", metavar="PATH", help="text to evaluate on (default: the bundled model's held-out split)")
    e.add_argument("--column", help="the text column of --text")
    e.add_argument("--windows", type=count("a number of windows"), default=256, help="context windows to run (default 256)")
    e.add_argument("--out", metavar="FILE", help="write the table to this file (.csv or .json)")
    e.add_argument("--format", choices=["csv", "json"], help="table format for --out (default: from its suffix)")
    _model_args(e, default_model=None)
    add_progress(e)

    i = cmds.add_parser("info", help="describe an SAE directory", description="Print an SAE's configuration, weights "
                        "and training summary.")
    i.add_argument("dir", metavar="DIR", help="an SAE directory (SAELens's format)")
    i.add_argument("--json", action="store_true", help="print the configuration as JSON")


def _model_args(p, default_model) -> None:
    p.add_argument("--model", default=default_model,
                   help="hub name, local Hugging Face directory or bundled model (default: "
                   + (f"{default_model})" if default_model else "the SAE's own model, else interp-tiny)"))
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fold-ln", dest="fold_ln", action="store_const", const=True, default=None,
                      help="fold LayerNorm (the default for train)" if default_model else "fold LayerNorm")
    mode.add_argument("--no-fold-ln", dest="fold_ln", action="store_const", const=False,
                      help="keep Hugging Face's raw weights" + ("" if default_model else " (default for eval: the SAEs' own mode)"))


def run(args: argparse.Namespace) -> int:
    return {"train": run_train, "eval": run_eval, "info": run_info}[args.sae_command](args)


# ---------------------------------------------------------------------------- train
def run_train(args: argparse.Namespace) -> int:
    from ..features.training import TrainConfig, _check_out

    hooks = list(args.hook)
    outs = args.hook_out or []
    if outs and len(outs) != len(hooks):
        raise InterpError(f"--hook-out: give one per --hook ({len(hooks)}), not {len(outs)}")
    if args.skip and not outs:
        raise InterpError("--skip is for transcoders: give --hook-out")
    if len(set(hooks)) != len(hooks):
        raise InterpError(f"--hook repeats: {hooks}")
    if args.text is not None and not os.path.exists(args.text):
        raise InterpError(f"--text {args.text}: no such file or directory")
    out = Path(args.out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InterpError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.is_dir() and not os.access(out, os.W_OK)):
        raise InterpError(f"--out {out}: not writable")
    _check_out(out, args.resume)
    if len(hooks) > 1 and out.is_dir() and any(out.iterdir()) and not args.resume:
        raise InterpError(f"--out {out} is not empty: several SAEs go to sub-directories of a new or empty directory")
    if args.cache is not None and Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise InterpError(f"--cache {args.cache}: it is a file, not a directory")
    try:
        cfg = TrainConfig(architecture=args.arch, d_sae=args.d_sae, k=args.k, tokens=args.tokens, batch_size=args.batch_size,
                          lr=args.lr, l1_coefficient=args.l1, l0_coefficient=args.l0, skip=args.skip, seed=args.seed)
    except InterpError as err:
        raise InterpError(f"{err} (--k, --d-sae, --tokens …)") from None
    model = _load(args.model, args.device, True if args.fold_ln is None else args.fold_ln)
    from ..features.training import train

    specs = [(h, o) for h, o in zip(hooks, outs)] if outs else hooks
    t0 = time.perf_counter()
    saes = train(model, specs, texts=args.text, column=args.column, n_ctx=args.n_ctx, shuffle_buffer=args.shuffle_buffer,
                 cache_dir=args.cache, out=out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                 progress=progress(args), config=cfg)
    seconds = time.perf_counter() - t0
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # data-parallel (torchrun): the first process reports
    for sae in saes:
        where = out if len(saes) == 1 else out / sae.hook_name
        last = json.loads((Path(where) / "training.json").read_text())["history"][-1]
        print(f"{sae.hook_name}{' -> ' + sae.hook_name_out if sae.hook_name_out else ''}: {sae.architecture} "
              f"d_sae={sae.d_sae}, explained variance {last['explained_variance']:.3f}, L0 {last['l0']:.1f}, "
              f"dead {last['dead_fraction']:.3f} (last batch) -> {where}")
    print(f"trained on {cfg.steps * cfg.batch_size:,} activations in {seconds:.0f}s; evaluate: interp sae eval {out}")
    return 0


def _load(name, device, fold_ln):
    from ..loading import load

    try:
        return load(name, device=device, fold_ln=fold_ln)
    except InterpError as e:
        raise InterpError(f"--model {name}: {e}") from None


# ---------------------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> int:
    from ..features.sae import SAE

    if args.text is not None and not os.path.exists(args.text):
        raise InterpError(f"--text {args.text}: no such file or directory")
    outputs = Outputs(args, image=False)
    saes = []
    for d in args.dirs:
        try:
            saes.append(SAE.load(d))
        except InterpError as e:
            raise InterpError(f"{d}: {e}") from None
    names = {s.cfg.model_name for s in saes}
    model_name = args.model or (names.pop() if len(names) == 1 and None not in names else DEFAULT_MODEL)
    modes = {s.cfg.fold_ln for s in saes} - {None}
    if args.fold_ln is not None:
        fold_ln = args.fold_ln
    elif len(modes) > 1:
        raise InterpError("the SAEs were trained in different weight modes: evaluate them separately, or give "
                          "--fold-ln / --no-fold-ln")
    else:
        fold_ln = modes.pop() if modes else True
    model = _load(model_name, args.device, fold_ln)
    from ..features.evaluation import evaluate

    df = evaluate(model, saes, args.text, column=args.column, max_windows=args.windows, progress=progress(args))
    df.insert(0, "sae", list(args.dirs))
    shown = df.drop(columns=["hook_name_out"]) if df["hook_name_out"].isna().all() else df
    print_table(shown.set_index("sae").T.reset_index().rename(columns={"index": "metric"}))
    outputs.add_table(df)
    outputs.commit()
    return 0


# ---------------------------------------------------------------------------- info
def run_info(args: argparse.Namespace) -> int:
    from ..features.sae import SAE

    sae = SAE.load(args.dir)
    c = sae.cfg
    if args.json:
        print(json.dumps(c.to_dict(), indent=1, default=str))
        return 0
    kind = f"transcoder {c.hook_name} -> {c.hook_name_out}" if c.is_transcoder else f"SAE at {c.hook_name}"
    print(f"{args.dir}: {kind}")
    print(f"  architecture   {c.architecture}" + (f" (k={c.k})" if c.k is not None else "")
          + f", saved as SAELens {c.saelens_architecture()!r}")
    print(f"  sizes          d_in {c.d_in}, d_sae {c.d_sae}, d_out {c.d_out}{', skip connection' if c.skip else ''}")
    print(f"  model          {c.model_name or 'unknown'}, weight mode fold_ln={c.fold_ln}")
    print(f"  input          apply_b_dec_to_input={c.apply_b_dec_to_input}, normalize_activations={c.normalize_activations!r}")
    norms = sae.W_dec.detach().norm(dim=-1)
    print(f"  decoder rows   norm {float(norms.min()):.3f}–{float(norms.max()):.3f}, dtype {c.dtype}")
    if sae.threshold is not None:
        print(f"  threshold      mean {float(sae.threshold.mean()):.4f}")
    tr = c.metadata.get("training")
    if isinstance(tr, dict):
        print(f"  trained        {tr.get('tokens', 0):,} activations, {tr.get('steps')} steps, dead fraction "
              f"{tr.get('dead_fraction', float('nan')):.3f}, lr {tr.get('lr', tr.get('config', {}).get('lr'))}")
    log = Path(args.dir) / "training.json"
    if log.exists():
        try:
            hist = json.loads(log.read_text()).get("history") or []
        except (OSError, json.JSONDecodeError):
            hist = []
        if hist:
            h = hist[-1]
            print(f"  last batch     explained variance {h['explained_variance']:.3f}, L0 {h['l0']:.1f}, mse {h['mse']:.4g}, "
                  f"{h.get('seconds', float('nan')):.0f}s")
    return 0
