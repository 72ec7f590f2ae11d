"""Training: checkpoints, the loop, the exported model directory, and the command line.

The shipped model is trained in three stages (the flags' defaults are stage 1):

1. from scratch, synthetic sequences only at first (a curriculum: induction forms
   without text competing for capacity; the phase change shows as a sudden drop of
   the loss on the repeated half of the probe), then half text;
2. ``--init-from`` stage 1's output: half text, half synthetic with more *reverse*
   rows, the random-token range ramped up again;
3. ``--init-from`` stage 2's output with one layer-0 head redrawn (``--reinit-heads``):
   *where* rows and an early exit at block 0 (``--exit-weight``), meant to grow a
   duplicate-token head (it grew a token-matching head that also attends to itself).

Checkpoints hold only tensors and plain Python values and load with
``torch.load(weights_only=True)``; resuming from one gives the same weights as not
stopping. See ``interp/bundled/interp-tiny/MODEL_CARD.md`` for the exact commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from .corpus import (
    BOS,
    collect_corpus,
    encode_stream,
    marker_ids,
    split_corpus,
    train_tokenizer,
    unigram_losses,
    wrap_tokenizer,
)
from .model import build_model, lr_at, make_optimizer, reinit_heads, train_step
from interp.corpus import write_bundled_text

from .monitor import evaluate, heldout_windows, mark_probe, monitor_batch, where_probe
from .recipe import RECIPE_HELP, Recipe
from .rows import synthetic_frac

CSV_COLUMNS = (
    "step",
    "lr",
    "synthetic_frac",
    "train_loss",
    "heldout_loss",
    "rep_first_loss",
    "rep_second_loss",
    "prev_best",
    "prev_head",
    "dup_best",
    "dup_head",
    "ind_best",
    "ind_head",
    "prev_text_best",
    "mark_loss",
    "elapsed_s",
    "self_best",
    "self_head",
    "exit_mark_loss",
    "where_loss",
    "exit_where_loss",
)


def save_checkpoint(
    path: Path, model, opt, step: int, r: Recipe, elapsed: float, loss_sum: float, loss_n: int
) -> None:
    """Atomically write model + optimizer + step + RNG state (tensors and plain values only).

    ``loss_sum``/``loss_n`` are the running train-loss average since the last log row,
    saved so that a resumed run logs exactly the same curve as an uninterrupted one.
    """
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "recipe": dataclasses.asdict(r),
            "torch_rng": torch.get_rng_state(),
            "elapsed_s": elapsed,
            "loss_sum": loss_sum,
            "loss_n": loss_n,
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, opt, r: Recipe) -> dict:
    """Restore model, optimizer and RNG from ``path``; refuse a checkpoint of another recipe.

    Returns:
        The checkpoint's plain values (``step``, ``elapsed_s``, ``loss_sum``, ``loss_n``).
    """
    ck = torch.load(path, weights_only=True)
    saved = Recipe.from_dict(ck["recipe"])
    if saved != r:
        diff = {k: (v, getattr(r, k)) for k, v in dataclasses.asdict(saved).items() if v != getattr(r, k)}
        raise SystemExit(f"--resume: recipe differs from checkpoint (saved, given): {diff}")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["torch_rng"])
    return {k: ck[k] for k in ("step", "elapsed_s", "loss_sum", "loss_n")}


def read_csv_rows(path: Path, upto_step: int) -> list[str]:
    """Rows of an existing curve CSV with ``step <= upto_step`` (so a resumed log has no duplicates)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= upto_step]


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.train_tiny",
        description=(
            "Train the bundled tiny GPT-2 (interp-tiny) from scratch on CPU, offline: a "
            "byte-level BPE tokenizer and a small GPT2LMHeadModel trained on the Python "
            "docs + stdlib docstrings mixed with repeated/reversed random-token sequences. "
            "Writes a Hugging Face model directory (config.json, model.safetensors, "
            "tokenizer.json, tokenizer_config.json) plus curves.csv and training.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output model directory")
    p.add_argument(
        "--ckpt-dir",
        type=Path,
        default=None,
        help="where resumable checkpoints go (default: OUT/checkpoints; do not ship it)",
    )
    p.add_argument("--resume", action="store_true", help="continue from CKPT_DIR/last.pt")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="exit after this many steps of this invocation (checkpointing first); for testing resume",
    )
    defaults = Recipe()
    for f in dataclasses.fields(Recipe):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=_parse_bool if isinstance(getattr(defaults, f.name), bool) else type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help=RECIPE_HELP[f.name],
        )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The tokenizers library trains BPE on a rayon thread pool, created at its first use
    # (below): one thread keeps the second core free and the merges reproducible.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    recipe = Recipe.from_dict({f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    ckpt_dir: Path = args.ckpt_dir or out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "last.pt"
    csv_path = out / "curves.csv"

    t0 = time.time()
    docs = collect_corpus()
    train_docs, held_docs = split_corpus(docs, recipe.heldout_frac_mod)
    tok_path = ckpt_dir / "tokenizer.json"
    if recipe.init_from:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(recipe.init_from) / "tokenizer.json"))
        tok.save(str(tok_path))
    elif args.resume and tok_path.exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = train_tokenizer(train_docs, recipe.vocab_size)
        tok.save(str(tok_path))
    if tok.get_vocab_size() != recipe.vocab_size or tok.token_to_id(BOS) != 0:
        raise RuntimeError(
            f"tokenizer has {tok.get_vocab_size()} tokens and {BOS} id {tok.token_to_id(BOS)}; "
            f"expected {recipe.vocab_size} and 0"
        )
    train_stream = encode_stream(tok, train_docs, 0)
    held_stream = encode_stream(tok, held_docs, 0)
    print(
        f"corpus: {len(docs)} docs ({len(train_docs)} train, {len(held_docs)} held out), "
        f"{len(train_stream)} train / {len(held_stream)} held-out tokens, "
        f"{time.time() - t0:.1f}s",
        flush=True,
    )
    # Fixed evaluation sets: the held-out stream cut into consecutive windows.
    heldout = heldout_windows(held_stream, recipe.n_ctx)
    hf_tok = wrap_tokenizer(tok, recipe.n_ctx)
    probe = monitor_batch(recipe)
    markers = marker_ids(tok)
    marks = mark_probe(recipe, markers)
    wheres = where_probe(recipe, markers)

    model = build_model(recipe)
    if recipe.init_from:
        from safetensors.torch import load_file

        # Tied embeddings: the file holds wte once; lm_head.weight is the same tensor.
        missing, unexpected = model.load_state_dict(
            load_file(str(Path(recipe.init_from) / "model.safetensors")), strict=False
        )
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise SystemExit(f"--init-from {recipe.init_from}: missing {missing}, unexpected {unexpected}")
    reinit_heads(model, recipe)
    opt = make_optimizer(model, recipe)
    start_step, prev_elapsed = 0, 0.0
    resumed_loss = (0.0, 0)
    rows: list[str] = []
    if args.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, model, opt, recipe)
        start_step, prev_elapsed = ck["step"], ck["elapsed_s"]
        resumed_loss = (ck["loss_sum"], ck["loss_n"])
        rows = read_csv_rows(csv_path, start_step)
        print(f"resumed at step {start_step}", flush=True)
    elif args.resume:
        print(f"--resume: no checkpoint at {ckpt_path}; starting from scratch", flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters; recipe: {dataclasses.asdict(recipe)}", flush=True)
    model.train()
    t_start = time.time()
    loss_acc, loss_n = resumed_loss
    last_eval: dict = {}

    def log(step: int) -> None:
        nonlocal last_eval, loss_acc, loss_n
        ev = evaluate(model, hf_tok, recipe, heldout, probe, marks, wheres, markers)
        last_eval = ev
        row = {
            "step": step,
            "lr": lr_at(recipe, max(step - 1, 0)),
            "synthetic_frac": synthetic_frac(recipe, max(step - 1, 0)),
            "train_loss": loss_acc / loss_n if loss_n else float("nan"),
            "elapsed_s": prev_elapsed + time.time() - t_start,
            **{k: v for k, v in ev.items() if not k.startswith("_")},
        }
        rows.append(",".join(
            f"{row[c]:.5g}" if isinstance(row[c], float) else str(row[c]) for c in CSV_COLUMNS
        ))
        csv_path.write_text(",".join(CSV_COLUMNS) + "\n" + "\n".join(rows) + "\n")
        print(
            f"step {step:5d} train {row['train_loss']:.3f} held {ev['heldout_loss']:.3f} "
            f"rep {ev['rep_first_loss']:.2f}/{ev['rep_second_loss']:.2f} "
            f"prev {ev['prev_best']:.2f}@{ev['prev_head']} dup {ev['dup_best']:.2f}@{ev['dup_head']} "
            f"ind {ev['ind_best']:.2f}@{ev['ind_head']} self {ev['self_best']:.2f}@{ev['self_head']} prevtext {ev['prev_text_best']:.2f} "
            f"mark {ev['mark_loss']:.2f}/{ev['exit_mark_loss']:.2f} where {ev['where_loss']:.2f}/{ev['exit_where_loss']:.2f} "
            f"t {row['elapsed_s']:.0f}s",
            flush=True,
        )
        loss_acc, loss_n = 0.0, 0

    if start_step == 0:
        log(0)
    step = start_step
    stop_at = recipe.steps if args.stop_after is None else min(recipe.steps, start_step + args.stop_after)
    while step < stop_at:
        loss_acc += train_step(model, opt, recipe, step, train_stream, markers)
        loss_n += 1
        step += 1
        if step % recipe.eval_every == 0 or step == recipe.steps:
            log(step)
        if step % recipe.ckpt_every == 0 or step == stop_at:
            save_checkpoint(
                ckpt_path, model, opt, step, recipe, prev_elapsed + time.time() - t_start, loss_acc, loss_n
            )
    if step < recipe.steps:
        print(f"stopped at step {step} of {recipe.steps} (--stop-after); resume with --resume")
        return

    wall = prev_elapsed + time.time() - t_start
    if not last_eval:
        last_eval = evaluate(model, hf_tok, recipe, heldout, probe, marks, wheres, markers)
    export(model, tok, recipe, out, wall, last_eval, train_stream, held_stream, len(train_docs), len(held_docs))


def export(model, tok, r: Recipe, out: Path, wall: float, ev: dict, train_stream, held_stream, n_train_docs, n_held_docs) -> None:
    """Write the Hugging Face model directory and ``training.json``."""
    import numpy
    import safetensors
    import tokenizers
    import transformers

    model.save_pretrained(out, safe_serialization=True)
    wrap_tokenizer(tok, r.n_ctx).save_pretrained(out)
    # The text itself ships beside the model (interp.corpus.documents reads it), split as trained.
    write_bundled_text(collect_corpus(), out / "text", r.heldout_frac_mod)
    uni = unigram_losses(train_stream, held_stream, r.vocab_size)
    info = {
        "model": "interp-tiny",
        "recipe": dataclasses.asdict(r),
        "n_params": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "command": "python -m tools.train_tiny " + " ".join(sys.argv[1:]),
        "corpus": {
            "sources": [
                "pydoc_data.topics.topics",
                "docstrings of sysconfig.get_paths()['stdlib'] **/*.py (ast, sorted, site-packages excluded)",
            ],
            "train_docs": n_train_docs,
            "heldout_docs": n_held_docs,
            "train_tokens": len(train_stream),
            "heldout_tokens": len(held_stream),
        },
        "final": {
            **{k: v for k, v in ev.items() if not k.startswith("_")},
            **uni,
            "head_scores_repeat_probe": ev["_scores"],
            "prev_scores_heldout_text": ev["_prev_text"],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": numpy.__version__,
            "platform": platform.platform(),
        },
    }
    if r.init_from:
        # Keep the earlier stages' records beside this one: together they are the recipe. The
        # stages the earlier run kept itself come first; its own record is the stage after them.
        prev = Path(r.init_from)
        if prev.resolve() != out.resolve():
            earlier = sorted(prev.glob("training-stage*.json"))
            for src in [*earlier, *prev.glob("curves-stage*.csv")]:
                (out / src.name).write_bytes(src.read_bytes())
            for src in (prev / "training.json", prev / "curves.csv"):
                if src.exists():
                    (out / f"{src.stem}-stage{len(earlier) + 1}{src.suffix}").write_bytes(src.read_bytes())
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} (wall {wall:.0f}s); final: {json.dumps(info['final'] | {'head_scores_repeat_probe': '...', 'prev_scores_heldout_text': '...'})}")
