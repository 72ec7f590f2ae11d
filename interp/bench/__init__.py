"""``interp bench``: speed and memory measured side by side, printed as ratios.

Machines are noisy and absolute times drift, so every figure is a ratio of two
things measured in the same run on the same random-weight GPT-2-small-shaped
model (same compute as the real GPT-2 small). Each section is a function
``(ctx) -> list[Row]`` registered in :data:`SECTIONS`: the analyses' in
:mod:`interp.bench.analyses`, the forward pass and interventions' in
:mod:`interp.bench.interventions`, start-up and loading in :mod:`interp.bench.startup`, feature
pages in :mod:`interp.bench.pages`. Benchmarks sit above both the core and the
analyses (they import both); nothing imports them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .core import N_CTX, SECTIONS, Context, Ratio, Row, compare, peak_memory, section, timed

__all__ = ["run", "Context", "N_CTX", "Ratio", "Row", "SECTIONS", "compare", "peak_memory", "section", "timed"]


def run(only: Optional[list[str]] = None, n_prompts: int = 16, n_pos: int = 256, threads: Optional[int] = None,
        progress: Optional[bool] = None, against: Optional[str] = None) -> list[Row]:
    """Run the chosen sections (all by default) and print each row as it comes.

    ``progress``: a bar over the sections on stderr (None: only on a terminal; False: never).
    """
    from tqdm.auto import tqdm

    from ..errors import InterpError

    if not 3 <= n_pos <= N_CTX:
        raise InterpError(f"n_pos {n_pos}: give 3 to {N_CTX} tokens per prompt (BOS + r + r; GPT-2 small's context window)")
    if threads:
        torch.set_num_threads(threads)
    from . import (analyses, attribution, features, graph, interventions, pages, startup,  # noqa: F401  (their
                   tuned_lens)  # sections register in SECTIONS)

    names = only or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise InterpError(f"unknown benchmark section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    ctx = Context(n_prompts, n_pos)
    ctx.against = against  # a venv of a peer to measure against (features: sae-lens; graph: circuit-tracer)
    rows: list[Row] = []
    print(f"interp bench: random GPT-2 small shape, torch {torch.__version__}, {torch.get_num_threads()} threads")
    bar = tqdm(names, desc="bench", unit="section", disable=None if progress is None else not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        for row in SECTIONS[name](ctx):
            if bar.disable:
                print(row.line(), flush=True)
            else:
                bar.write(row.line())  # above the bar, which is redrawn below it
            rows.append(row)
    bar.close()
    return rows
