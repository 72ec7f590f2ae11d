"""Checks of saved figures that a wrong picture would fail: panels, titles, plotted values, pixels."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved during the test (through ``save_figure`` or a command's outputs; closed, still readable)."""
    from interp import export, plotting

    figures = []
    original = export.save_figure

    def keep(fig, path, **kwargs):
        figures.append(fig)
        return original(fig, path, **kwargs)

    monkeypatch.setattr(export, "save_figure", keep)
    monkeypatch.setattr(plotting, "save_figure", keep)
    from interp.cli.common import Outputs

    queue = Outputs.add_figure

    def keep_queued(self, fig, path=None):  # the command line writes its figures together with its tables
        figures.append(fig)
        return queue(self, fig, path)

    monkeypatch.setattr(Outputs, "add_figure", keep_queued)
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
