"""Sparse features: SAEs and transcoders trained on the model's own activations, in SAELens's format.

Each name is imported on first use (PEP 562), like :mod:`interp`'s own:

* :class:`SAE`, :class:`SAEConfig` (:mod:`interp.features.sae`) — sparse autoencoders and
  transcoders, SAELens's arithmetic and files;
* :class:`ActivationStore` (:mod:`interp.features.store`) — activations at one or several hook
  points from one forward pass, shuffled in a bounded buffer, optionally cached on disk;
* :func:`train` (:mod:`interp.features.training`), :func:`evaluate`
  (:mod:`interp.features.evaluation`), :func:`splice` (:mod:`interp.features.splice`);
* :func:`attribution_graph`, :class:`AttributionGraph` (:mod:`interp.features.graph`) — which features
  caused an output, through transcoders (circuit-tracer's graphs); :func:`qk_attribution`
  (:mod:`interp.features.qk`) — why a head attends; :func:`load_transcoders` — transcoder sets on disk;
* :func:`dashboard`, :class:`FeaturePages` (:mod:`interp.report.feature_pages`, presentation: this
  package's facade reaches up to it) — what each feature responds to, as one HTML page and
  Neuronpedia-shaped JSON.

>>> import interp.features as features
>>> features.SAEConfig("standard", d_in=4, d_sae=8).d_out
4
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it.
_EXPORTS = {
    "SAE": ".sae",
    "SAEConfig": ".sae",
    "ActivationStore": ".store",
    "train": ".training",
    "evaluate": ".evaluation",
    "splice": ".splice",
    "dashboard": "interp.report.feature_pages",
    "FeaturePages": "interp.report.feature_pages",
    "attribution_graph": ".graph",
    "AttributionGraph": ".graph",
    "qk_attribution": ".qk",
    "load_transcoders": ".transcoders",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
