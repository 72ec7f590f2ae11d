"""Writing results: atomic files, tables that round-trip, figures and their formats."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from figcheck import assert_png, heatmap_values, panels
from interp import InterpError
from interp.export import atomic_path, save_figure, table_format, write_table, write_text
from interp.plotting import heads_heatmap


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text("good old results\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(path) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("interrupted")
    assert path.read_text() == "good old results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]


def test_a_new_file_gets_the_usual_mode_and_an_old_file_keeps_its_own(tmp_path):
    new = write_text(tmp_path / "new.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    old = tmp_path / "old.txt"
    old.write_text("y")
    old.chmod(0o640)
    write_text(old, "z")
    assert stat.S_IMODE(old.stat().st_mode) == 0o640 and old.read_text() == "z"


@pytest.mark.parametrize("target, message", [("missing/x.csv", "directory .*missing does not exist"), (".", "is a directory")])
def test_bad_targets_are_refused_before_anything_is_written(tmp_path, target, message):
    with pytest.raises(InterpError, match=message):
        write_text(tmp_path / target, "x")


def test_tables_round_trip_in_both_formats(tmp_path):
    df = pd.DataFrame({"layer": [0, 1], "head": [3, 2], "score": [0.125, 0.7071067811865476], "label": ["a", "b"]})
    for name, read in [("t.csv", pd.read_csv), ("t.json", pd.read_json)]:
        write_table(df, tmp_path / name)
        pd.testing.assert_frame_equal(read(tmp_path / name), df)
    write_table(df, tmp_path / "t.data", fmt="json")
    pd.testing.assert_frame_equal(pd.read_json(tmp_path / "t.data"), df)
    assert table_format("x.CSV") == "csv"
    with pytest.raises(InterpError, match="unknown table format 'xlsx'"):
        table_format("x.xlsx")


def test_figures_follow_the_suffix_and_unknown_ones_are_refused(tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "f.svg")
    assert (tmp_path / "f.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    fig, _ = plt.subplots()
    with pytest.raises(InterpError, match="unknown image format 'jpg'"):
        save_figure(fig, tmp_path / "f.jpg")
    assert not plt.fignum_exists(fig.number)  # closed even when refused
    assert not (tmp_path / "f.jpg").exists()


def test_heads_heatmap_draws_the_table(tmp_path, saved_figures):
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "a": [0.1, 0.9, 0.5, 0.0], "b": [1.0, 0.0, 0.2, 0.3]})
    heads_heatmap(df, ["a", "b"], tmp_path / "h.png", vmin=0.0, vmax=1.0, title="scores", annotate=lambda v: f"{v:.1f}")
    (fig,) = saved_figures
    a, b = panels(fig)
    assert (a.get_title(), b.get_title(), fig._suptitle.get_text()) == ("a", "b", "scores")
    assert np.array_equal(heatmap_values(a), [[0.1, 0.9], [0.5, 0.0]])
    assert np.array_equal(heatmap_values(b), [[1.0, 0.0], [0.2, 0.3]])
    assert sorted(t.get_text() for t in a.texts) == ["0.0", "0.1", "0.5", "0.9"]
    assert_png(tmp_path / "h.png", min_width=300, min_height=150)
    with pytest.raises(InterpError, match="column 'c' missing"):
        heads_heatmap(df, ["c"], tmp_path / "h2.png")


def test_cell_labels_take_the_colour_that_reads_on_their_cell(tmp_path, saved_figures):
    """Dark cells get white labels and light cells black ones, whatever the colour map (WCAG contrast ≥ 4.5)."""
    from interp.plotting import label_color

    df = pd.DataFrame({"layer": [0, 0, 0, 0], "head": [0, 1, 2, 3], "score": [0.0, 0.35, 0.65, 1.0],
                       "delta": [-2.0, -0.2, 0.2, 2.0]})
    heads_heatmap(df, ["score"], tmp_path / "a.png", vmin=0.0, vmax=1.0, annotate=lambda v: f"{v:.2f}")
    heads_heatmap(df, ["delta"], tmp_path / "b.png", signed=True, annotate=lambda v: f"{v:.2f}")

    def luminance(rgb):
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    import matplotlib.colors as mc

    for fig in saved_figures:
        (ax,) = panels(fig)
        image = ax.images[0]
        assert len(ax.texts) == 4
        for text, v in zip(ax.texts, image.get_array().ravel()):
            cell, ink = luminance(image.cmap(image.norm(v))), luminance(mc.to_rgb(text.get_color()))
            contrast = (max(cell, ink) + 0.05) / (min(cell, ink) + 0.05)
            assert contrast >= 4.5, (text.get_text(), text.get_color(), contrast)
    # the signed map is symmetric around 0, so ±2 are equally saturated
    assert saved_figures[1].axes[0].images[0].get_clim() == (-2.0, 2.0)
    assert label_color((0.0, 0.0, 0.0)) == "white" and label_color((1.0, 1.0, 0.8)) == "black"


def test_an_all_nan_panel_says_why_instead_of_staying_blank(tmp_path, saved_figures):
    df = pd.DataFrame({"layer": [0, 1], "head": [0, 0], "self": [np.nan, np.nan], "bos": [0.5, 0.2]})
    heads_heatmap(df, ["self", "bos"], tmp_path / "n.png", vmin=0.0, vmax=1.0,
                  notes={"self": "not defined when its target is excluded"})
    first, second = panels(saved_figures[0])
    assert [t.get_text() for t in first.texts] == ["not defined when its target is excluded"]
    assert second.texts == [] or all(t.get_text() != "not defined" for t in second.texts)


def test_many_panels_wrap_into_a_grid(tmp_path, saved_figures):
    kinds = ["a", "b", "c", "d", "e", "f"]
    df = pd.DataFrame({"layer": [0, 1], "head": [0, 0], **{k: [0.1, 0.9] for k in kinds}})
    heads_heatmap(df, kinds, tmp_path / "g.png", vmin=0.0, vmax=1.0)
    axes = panels(saved_figures[0])
    rows = sorted({round(ax.get_position().y0, 3) for ax in axes})
    assert [ax.get_title() for ax in axes] == kinds and len(rows) == 2  # 3 × 2, not one long row
    img = assert_png(tmp_path / "g.png")
    assert img.shape[1] / img.shape[0] < 4  # readable proportions (six panels in a row were ~10:1)


# ---------------------------------------------------------------------------- several files: all or nothing
def test_several_outputs_are_written_together_or_rolled_back(tmp_path, monkeypatch):
    from interp.export import Outputs

    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "c.txt").write_text("old c")

    def queue():
        out = Outputs()
        out.add(tmp_path / "a.txt", lambda tmp: tmp.write_text("new a"), "--out")
        out.add(tmp_path / "new" / "b.txt", lambda tmp: tmp.write_text("new b"), "--png-dir")  # a new directory
        out.add(tmp_path / "c.txt", lambda tmp: tmp.write_text("new c"), "--csv")
        return out

    real = os.replace
    moves = []

    def fail_on_c(src, dst):
        if str(dst).endswith("c.txt") and str(src).endswith(".part"):
            raise OSError(28, "No space left on device")
        moves.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_c)
    with pytest.raises(InterpError, match=r"cannot write .*c\.txt: No space left on device"):
        queue().commit()
    assert any(str(m).endswith("b.txt") for m in moves)  # a and b had been moved in: they were put back
    assert (tmp_path / "a.txt").read_text() == "old a" and (tmp_path / "c.txt").read_text() == "old c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt"]  # no new directory, no temporary
    monkeypatch.setattr(os, "replace", real)
    written = queue().commit()
    assert [p.read_text() for p in written] == ["new a", "new b", "new c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt", "new"]


def test_a_failed_render_moves_nothing(tmp_path):
    from interp.export import Outputs

    (tmp_path / "a.txt").write_text("old a")
    out = Outputs()
    out.add(tmp_path / "a.txt", lambda tmp: tmp.write_text("new a"))
    out.add(tmp_path / "b.txt", lambda tmp: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        out.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"


@pytest.mark.parametrize("files, dirs, message", [
    ([("--out", "r.html"), ("--csv", "r.html")], [], "--csv and --out name the same file r.html"),
    ([("--out", "figs")], [("--png-dir", "figs")], "--out and --png-dir name the same file figs"),
    ([("--out", "figs")], [("--png-dir", "figs/sub")], "one would be the other's directory"),
    ([("--out", "./x/r.html"), ("--csv", "x/r.html")], [], "name the same file"),
])
def test_two_outputs_naming_one_file_are_refused(tmp_path, monkeypatch, files, dirs, message):
    from interp.export import check_distinct

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InterpError, match=message):
        check_distinct(files, dirs)
    check_distinct([("--out", "r.html"), ("--csv", "p.csv")], [("--png-dir", "figs"), ("--svg-dir", "figs")])  # fine
