"""Train ``interp-tiny``, the small GPT-2 bundled with ``interp`` (a tool of the repository, not shipped).

The model is a plain ``transformers.GPT2LMHeadModel`` trained from scratch on text
that every Python installation has offline (the pydoc topics and the standard
library's docstrings) mixed with synthetic copying sequences, so that every
``interp`` command can run without a network and the head detectors meet heads that
were *learned*. The card, ``interp/bundled/interp-tiny/MODEL_CARD.md``, gives the
recipe and the curves.

One concept per module:

* :mod:`.recipe` -- :class:`~.recipe.Recipe`, every hyperparameter of a run;
* :mod:`.corpus` -- the documents, their train/held-out split, the BPE tokenizer;
* :mod:`.rows` -- the synthetic rows and :func:`~.rows.make_batch`, a pure function
  of ``(seed, step)``;
* :mod:`.model` -- the GPT-2 of a recipe, its optimizer, schedule and one training step;
* :mod:`.monitor` -- the fixed probes and the curves' numbers (head scores from
  :func:`analyses.heads.classify`, losses from :func:`interp.metrics.token_loss`);
* :mod:`.train` -- checkpoints, the training loop, the exported model directory, the CLI.

Run it from the repository root (it is not in the wheel)::

    python -m tools.train_tiny --out /tmp/interp-tiny-stage1 --ckpt-dir /tmp/interp-tiny-ckpt1 --seed 0

Importing any of these modules has no side effect: the thread settings for the
tokenizer trainer are made by :func:`~.train.main` when a run starts.
"""
