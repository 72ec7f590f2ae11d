"""Sparse features: SAEs and transcoders, their pages and attribution graphs (see /work/notes/features-api.md).

Names are imported on first use (PEP 562), as in :mod:`interp`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SAE": ".sae",
    "SAEConfig": ".sae",
    "ActivationStore": ".store",
    "train": ".training",
    "evaluate": ".evaluation",
    "splice": ".splice",
    "dashboard": ".pages",
    "FeaturePages": ".pages",
    "attribution_graph": ".graph",
    "AttributionGraph": ".graph",
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
