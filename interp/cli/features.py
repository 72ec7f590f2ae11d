"""``interp features``: an SAE's feature pages as one self-contained HTML file and Neuronpedia-style JSON."""

from __future__ import annotations

import argparse
import re

from ..errors import InterpError
from .common import DEFAULT_MODEL, Outputs, add_model_args, add_progress, check_file, count, print_table, progress

NAME = "features"
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def token_count(text: str) -> int:
    """``"1M"``, ``"100k"``, ``"2.5m"``, ``"50000"`` -> a whole number of tokens ≥ 1."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgKMG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (e.g. 100k, 1M, 50000)")
    value = int(float(m.group(1)) * _SUFFIX[m.group(2).lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is less than one token")
    return value


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="an SAE's feature pages: top examples, intervals, histograms, logit effects (HTML + JSON)",
        description="Run the model over text once and write each feature's page: density, max activation, top "
                    "examples with their context, examples from each activation interval, the histogram, the tokens "
                    "it promotes and suppresses (and for hook_z SAEs, head weights and source attribution). "
                    "The HTML opens offline in any browser; the JSON follows Neuronpedia's feature schema. "
                    "The model is the one the SAE names (its cfg's model_name) unless --model is given, in the "
                    "weight mode the SAE was trained in unless --fold-ln/--no-fold-ln is.",
    )
    p.add_argument("sae", metavar="DIR", help="the SAE's directory (cfg.json + sae_weights.safetensors, SAELens's format)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text-file", metavar="FILE",
                      help="text to read: .txt (one document), .jsonl/.json (a text field per record)")
    text.add_argument("--dataset", metavar="PATH", help="a .parquet file or a saved Hugging Face datasets directory")
    p.add_argument("--column", help="the text field of --text-file/--dataset records (default: text, content or document)")
    p.add_argument("--split", choices=["heldout", "train"], default="heldout",
                   help="without a text: which split of the bundled model's corpus (default heldout)")
    p.add_argument("--tokens", type=token_count, default=1_000_000,
                   help="read about this many tokens (e.g. 100k, 1M; default 1M, or all of a shorter text)")
    p.add_argument("--features", metavar="SPEC", help="which features: '0:50', '3,7,100:120' (default all)")
    p.add_argument("--top", type=count("a number of features"), help="keep the N live features with the largest --sort metric")
    p.add_argument("--sort", choices=["density", "max", "mean", "index"], default="density",
                   help="the metric of --top and the page's first order (default density)")
    p.add_argument("--html", metavar="FILE", help="write the pages here (one self-contained HTML file)")
    p.add_argument("--json", metavar="FILE", help="write the pages here as JSON (Neuronpedia's feature fields)")
    p.add_argument("--n-ctx", type=count("a window length"), help="tokens per window (default: the model's, at most 128)")
    p.add_argument("--examples", type=count("a number of examples"), default=20, help="top examples per feature (default 20)")
    p.add_argument("--bins", type=count("a number of intervals"), default=5,
                   help="activation intervals sampled per feature, 1-8 (default 5)")
    p.add_argument("--bin-examples", type=count("a number of examples"), default=5, help="examples per interval (default 5)")
    p.add_argument("--context", type=count("a number of tokens"), nargs=2, metavar=("LEFT", "RIGHT"), default=[24, 8],
                   help="tokens shown before and after an example's token (default 24 8)")
    p.add_argument("--batch-size", type=count("a batch size"), help="windows per forward pass")
    p.add_argument("--seed", type=int, default=0, help="which tokens the intervals sample (default 0)")
    add_model_args(p)
    p.set_defaults(model=None, fold_ln=None)
    p.add_argument("--fold-ln", dest="fold_ln", action="store_const", const=True,
                   help="fold LayerNorm (default: the weight mode the SAE was trained in, else folded)")
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    import os

    from ..export import check_target

    if args.html is None and args.json is None:
        raise InterpError("nothing to write: give --html features.html and/or --json features.json")
    for path, option in ((args.html, "--html"), (args.json, "--json")):
        if path is not None:
            check_target(path, option)
    if args.html is not None and args.json is not None and os.path.abspath(args.html) == os.path.abspath(args.json):
        raise InterpError(f"--html and --json are the same file {args.html}")
    if not 1 <= args.bins <= 8:
        raise InterpError(f"--bins {args.bins}: give 1 to 8 intervals")
    source = args.text_file or args.dataset
    check_file(args.text_file, "--text-file")
    if args.dataset is not None and not os.path.exists(args.dataset):
        raise InterpError(f"--dataset {args.dataset}: no such file or directory")
    from ..corpus import documents
    from ..features.sae import SAE
    from ..select import features as select_features

    if not os.path.isdir(args.sae):
        raise InterpError(f"SAE directory {args.sae}: no such directory")
    sae = SAE.load(args.sae, device=args.device)
    try:
        select_features(args.features, sae.d_sae)
    except InterpError as e:
        raise InterpError(f"--features {args.features}: {e}") from None
    option = "--text-file" if args.text_file else "--dataset"
    try:
        docs = documents(source, split=args.split, column=args.column)
    except InterpError as e:
        raise InterpError(f"{option} {source}: {e}" if source else str(e)) from None
    outputs = Outputs(args, table=False, image=False)
    model = _load_model(args, sae)
    from ..report.feature_pages import dashboard

    pages = dashboard(
        model, sae, docs, features=args.features, top=args.top, sort=args.sort, tokens=args.tokens, n_ctx=args.n_ctx,
        batch_size=args.batch_size, n_examples=args.examples, n_bins=args.bins, bin_examples=args.bin_examples,
        left=args.context[0], right=args.context[1], seed=args.seed, progress=progress(args),
    )
    pages.meta["text"] = str(source) if source else f"the bundled model's corpus ({args.split} split)"
    if args.html is not None:
        outputs.add(args.html, lambda tmp: tmp.write_text(pages.html(), encoding="utf-8"))
    if args.json is not None:
        outputs.add(args.json, lambda tmp: tmp.write_text(pages.to_json(), encoding="utf-8"))
    outputs.commit()
    table = pages.table()
    if args.sort != "index":
        key = {"density": "density", "max": "max_act", "mean": "mean_act"}[args.sort]
        table = table.sort_values(key, ascending=False, kind="stable")
    print(f"{len(pages)} features over {pages.meta['n_tokens']:,} tokens ({pages.meta['n_dead_computed']} of "
          f"{pages.meta['n_features_computed']} computed never fired)")
    print_table(table.head(20))
    if len(table) > 20:
        where = args.html or args.json
        print(f"({len(table) - 20} more features in {where})")
    return 0


def _load_model(args: argparse.Namespace, sae):
    from ..loading import load

    name = args.model or sae.cfg.model_name or DEFAULT_MODEL
    fold_ln = args.fold_ln if args.fold_ln is not None else (sae.cfg.fold_ln if sae.cfg.fold_ln is not None else True)
    try:
        return load(name, device=args.device, fold_ln=fold_ln)
    except InterpError as e:
        raise InterpError(f"--model {name}: {e}") from None
