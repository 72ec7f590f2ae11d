"""interp: open GPT-2 up — head detectors, logit lens, factored circuits, ablation, reports.

>>> import interp
>>> sorted(interp.__all__)[:3]
['Batch', 'Cache', 'HookedGPT2']
"""

from .ablation import ablate
from .attribution import attribute
from .circuit import circuit
from .cache import Cache
from .errors import InterpError
from .loading import load
from .model import HookedGPT2
from .tokens import Batch

__all__ = ["load", "HookedGPT2", "Cache", "Batch", "InterpError", "ablate", "attribute", "circuit"]
__version__ = "0.1.0"
