"""``interp check-gpt2``: compare interp's numbers on the real GPT-2 small with published ones."""

from __future__ import annotations

import argparse

from .common import add_progress, progress

NAME = "check-gpt2"


def add(sub) -> None:
    p = sub.add_parser(
        NAME, help="self-check on the real GPT-2 small: loss, next tokens, logits, a pattern, known heads",
        description="Load GPT-2 small with Hugging Face's raw weights and print interp's numbers beside "
        "published ones (TransformerLens's acceptance loss, a course's next-token and attention examples, "
        "head classes from Wang et al. 2022). Exits 1 if one is off.",
    )
    p.add_argument("--model", default="gpt2",
                   help="GPT-2 small: a local Hugging Face directory, or 'gpt2' with a network (default: gpt2)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    from .. import selfcheck
    from .common import load_model

    args.fold_ln = False  # some published values are raw logits
    model = load_model(args)
    checks = selfcheck.check_gpt2(model, selfcheck.GPT2_SMALL, progress=progress(args))
    print(f"self-check of {model.cfg.name} (Hugging Face's weights, fold_ln=False)")
    print(selfcheck.format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1
