"""``interp check-gpt2``: compare interp's numbers on the real GPT-2 small with published ones."""

from __future__ import annotations

import argparse

from .common import add_progress, progress

NAME = "check-gpt2"


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="self-check on the real GPT-2 small: tokenization, loss, next tokens, logits, a pattern, known heads",
        description="Load GPT-2 small with Hugging Face's raw weights and print interp's numbers beside "
        "published ones: first its tokenization (token ids; GPT-2's tokenizer files alone decide these rows), "
        "then its numbers (TransformerLens's acceptance loss, a course's next-token and attention examples, "
        "head classes from Wang et al. 2022). Exits 1 if one is off. How to get GPT-2 small offline: "
        "docs/models.md.",
    )
    p.add_argument("--model", default="gpt2",
                   help="GPT-2 small: a local Hugging Face directory, or 'gpt2' with a network (default: gpt2)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    from analyses import selfcheck
    from ..errors import InterpError
    from .common import load_model

    args.fold_ln = False  # some published values are raw logits
    shape = _shape_on_disk(args.model)
    try:
        if shape is not None:  # refused before reading the weights
            selfcheck.check_shape(shape, selfcheck.GPT2_SMALL)
        model = load_model(args)
        selfcheck.check_shape(model.cfg, selfcheck.GPT2_SMALL)
    except InterpError as e:
        message = str(e)
        raise InterpError(message if message.startswith("--model") else f"--model {args.model}: {message}") from None
    checks = selfcheck.check_gpt2(model, selfcheck.GPT2_SMALL, progress=progress(args))
    print(f"self-check of --model {args.model} (Hugging Face's weights, fold_ln=False)")
    print(selfcheck.format_checks(checks))
    if any(c.group == "tokenizer" for c in checks) and not all(c.ok for c in checks):
        tokenizer_ok = all(c.ok for c in checks if c.group == "tokenizer")
        print(("the tokenizer is GPT-2's; the numbers are not GPT-2 small's: are these its own weights?"
               if tokenizer_ok else "the tokenizer is not GPT-2's")
              + f" (--model {args.model}; docs/models.md, 'Self-check on real GPT-2')")
    return 0 if all(c.ok for c in checks) else 1


def _shape_on_disk(spec: str):
    """The shape in a bundled model's or a local directory's config.json, without loading it; None for hub names."""
    from pathlib import Path

    from ..checkpoint import read_config
    from ..errors import InterpError
    from ..loading import BUNDLED_DIR, bundled_models

    path = BUNDLED_DIR / spec if spec in bundled_models() else Path(spec).expanduser()
    if not (path / "config.json").is_file():
        return None
    try:
        return read_config(path)
    except InterpError:
        return None  # loading says what is wrong with it
