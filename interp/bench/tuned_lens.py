"""Benchmarks of the tuned lens (analyses.tuned_lens): a training step against one forward + backward, and
the default training of the bundled model."""

from __future__ import annotations

from .core import Context, Row, compare, section, timed

PAIRS = 3


@section("tuned-lens")
def bench_tuned_lens(ctx: Context) -> list[Row]:
    """One tuned-lens training step, and the default training on interp-tiny, against forward + backward passes.

    A step runs the model once without gradients, then for each of the L translators the translated
    stream through the final LayerNorm and the unembedding, forward and backward (tuned-lens's loop):
    L vocabulary-sized products where the model's own forward + backward has one, so on GPT-2 small's
    shape (12 layers, 50,257 tokens) expect several forward + backward passes' worth. The baseline is
    one forward + backward of the same batch through our model (the LM loss's gradient read at the
    embeddings, :func:`interp.gradients.read_gradients`, so it differentiates through every block).
    Interleaved pairs (baseline, step; :func:`interp.bench.compare`), the median ratio of 3.
    interp-tiny: ``train_tuned_lens``'s defaults (250 steps × 2,048 tokens on its training text),
    once, wall time including cutting the text into windows; its per-step time against a forward +
    backward of one step's batch (median of 3).
    """
    from analyses.lens_training import train_tuned_lens, training_windows

    from ..gradients import read_gradients
    from ..loading import load

    model = ctx.model
    n, P = 2, min(ctx.n_pos, 256)
    toks = ctx.tokens(n, P, seed=3)
    ratio, _ = compare(lambda: train_tuned_lens(model, toks, steps=1, tokens_per_step=n * P, progress=False),
                       lambda: read_gradients(model, toks, ["resid_pre.0"], "loss"), pairs=PAIRS, warmup=False)

    tiny = load("interp-tiny")
    lens, total_s = timed(lambda: train_tuned_lens(tiny, progress=False))
    r = lens.record
    batch = training_windows(tiny, None, r["tokens_per_step"] // r["n_ctx"])
    tiny_fb = sorted(timed(lambda: read_gradients(tiny, batch, ["resid_pre.0"], "loss"))[1] for _ in range(3))[1]
    per_step = r["seconds"] / r["steps"]
    L = model.cfg.n_layers
    return [
        Row("tuned-lens", f"training step / one forward+backward (GPT-2 small shape, {L} translators, {n}×{P})",
            ratio.median, detail=ratio.detail()),
        Row("tuned-lens", f"interp-tiny default training ({r['steps']} steps × {r['tokens_per_step']} tokens)", total_s,
            unit="s", detail=f"{r['seconds']:.1f}s in the steps, the rest cutting the text into windows"),
        Row("tuned-lens", "interp-tiny training step / one forward+backward of its batch", per_step / tiny_fb,
            detail=f"{per_step:.3f}s per step vs {tiny_fb:.3f}s"),
    ]
