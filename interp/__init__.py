"""interp: open GPT-2 up — head detectors, logit lens, factored circuits, ablation, reports.

Importing ``interp`` imports nothing heavy: each name below is imported on first use
(PEP 562), so a command or a test pays only for what it touches.

>>> import interp
>>> sorted(interp.__all__)[:3]
['Batch', 'Cache', 'HookedGPT2']
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it.
_EXPORTS = {
    "load": ".loading",
    "HookedGPT2": ".model",
    "Cache": ".cache",
    "Batch": ".tokens",
    "InterpError": ".errors",
    "ablate": ".ablation",
    "patch": ".patching",
    "path_patch": ".path_patching",
    "attribute": ".attribution",
    "circuit": ".discovery",
    "show": ".report.notebook",
    "splice": ".features.splice",
}

__all__ = ["load", "HookedGPT2", "Cache", "Batch", "InterpError", "ablate", "patch", "path_patch", "attribute",
           "circuit", "show", "splice"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
