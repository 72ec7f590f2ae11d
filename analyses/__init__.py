"""Analyses built on interp: each a pure function from a model (and inputs) to a pandas DataFrame.

* :mod:`analyses.heads` — what kind of head is each head (``classify``);
* :mod:`analyses.logit_lens` — the residual stream read through the unembedding, layer by layer;
* :mod:`analyses.tuned_lens` — the tuned lens: a translator per layer, in tuned-lens's format;
* :mod:`analyses.lens_training` — training it with tuned-lens's recipe;
* :mod:`analyses.lens_compare` — the logit, pseudo-inverse and tuned lenses side by side;
* :mod:`analyses.dla` — each component's direct contribution to a logit;
* :mod:`analyses.ov` and :mod:`analyses.ov_rank` — OV spectra, copying scores, rank-k cuts;
* :mod:`analyses.composition` — Q/K/V composition between heads;
* :mod:`analyses.choose` — which heads a report shows.

Submodules load on first use (``analyses.heads`` imports only what classification needs).
"""

import importlib

__all__ = ["heads", "logit_lens", "tuned_lens", "lens_training", "lens_compare", "dla", "ov", "ov_rank", "composition", "choose",
           "selfcheck"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'analyses' has no attribute {name!r}")
