"""Checks of saved figures that a wrong picture would fail: panels, titles, plotted values, pixels."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved during the test, in the order saved (closed, still readable)."""
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig

    def keep(self, *args, **kwargs):
        if not any(f is self for f in figures):
            figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def panels(fig):
    """The data axes of a figure (colour bars left out), in order."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def heatmap_values(ax) -> np.ndarray:
    """The array an ``imshow`` panel shows (NaN where masked)."""
    (image,) = ax.images
    return np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)


def assert_png(path, min_width: int = 200, min_height: int = 100) -> np.ndarray:
    """The PNG at ``path`` is an image of at least that size with more than a blank background."""
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    h, w = img.shape[:2]
    assert w >= min_width and h >= min_height, f"{path}: {w}×{h} pixels"
    rgb = img[..., :3]
    assert (np.abs(rgb - rgb[0, 0]).max(-1) > 0.1).mean() > 0.02, f"{path} is (nearly) blank"
    return img
