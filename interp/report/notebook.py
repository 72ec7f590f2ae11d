"""Reports inline in Jupyter: the page in a sandboxed iframe, and :func:`show` for a quick look at a head.

A notebook inserts an output's HTML into its own page, where the report's
Content-Security-Policy (a ``<meta>`` of the page's ``<head>``) would not apply and its script
would meet the notebook's DOM, styles and element ids. So the notebook gets an ``<iframe>``
whose ``srcdoc`` is the whole page, escaped: the page is its own document, with its own CSP,
and ``sandbox="allow-scripts"`` (no ``allow-same-origin``) runs its script in an opaque origin
that cannot reach the notebook, its cookies or storage. The frame has a fixed height (the
page scrolls inside it) and can be resized by dragging its corner.
"""

from __future__ import annotations

from typing import Any

from ..errors import InterpError
from .html import HEIGHT, iframe  # noqa: F401  (re-exported: the notebook's names)


def show(model: Any, prompt: Any = None, head: Any = None, **kwargs: Any):
    """A quick look at heads' attention on a prompt: a :class:`~interp.report.Report` that a notebook shows inline;
    or ``show(circuit)``: a discovered :class:`~interp.discovery.Circuit`, drawn.

    ``head`` is what :func:`~interp.report.build_report`'s ``heads=`` takes (``"4.11"``,
    ``(4, 11)``, ``"4.11,0.5"``); no head classifier runs unless ``scores=None`` (or ``top=``/
    ``kind=``) is passed. Other keyword arguments go to :func:`~interp.report.build_report`.

    >>> from interp.testing import planted_model
    >>> r = show(planted_model(), "a b c a b c", (0, 0))
    >>> r.heads, r._repr_html_().startswith('<iframe srcdoc="&lt;!DOCTYPE html&gt;')
    ([(0, 0)], True)
    """
    from ..discovery import Circuit
    from . import build_report

    if isinstance(model, Circuit):
        from .circuit import CircuitPicture

        return CircuitPicture(model)
    if prompt is None:
        raise InterpError("show(model, prompt, head): give a prompt (or show(circuit) for a discovered circuit)")
    if head is not None and isinstance(head, tuple) and len(head) == 2 and all(isinstance(x, int) for x in head):
        head = [head]
    if head is not None:
        kwargs.setdefault("scores", False)
    return build_report(model, prompt, heads=head, **kwargs)


__all__ = ["show", "iframe"]
