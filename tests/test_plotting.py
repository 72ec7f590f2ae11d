"""Figures say what they show: axis and colour-bar labels, one fixed scale for effects, readable tokens, values in
the report's summary and its heads marked (issue 27's figures, each drawn through the command or call that makes it)."""

import numpy as np
import pandas as pd
import pytest

from figcheck import heatmap_values, panels
from interp.cli import main
from interp.plotting import figure_text, heads_figure, spectra_figure


def _colorbar_label(fig, panel=0):
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    return bars[panel].get_ylabel()


def test_a_small_effect_stays_small_on_the_effect_scale():
    df = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "effect": [0.03, -0.01]})
    fitted = heads_figure(df, ["effect"], signed=True)
    fixed = heads_figure(df, ["effect"], signed=True, limit=1.0)
    assert panels(fitted)[0].images[0].get_clim() == pytest.approx((-0.03, 0.03))  # 0.03 drawn as the darkest red
    assert panels(fixed)[0].images[0].get_clim() == (-1.0, 1.0)
    big = heads_figure(df.assign(effect=[1.7, 0.0]), ["effect"], signed=True, limit=1.0)
    assert panels(big)[0].images[0].get_clim() == (-1.7, 1.7)  # beyond the gap: widened, never clipped


def test_one_panel_says_its_title_once():
    df = pd.DataFrame({"layer": [0], "head": [0], "effect": [0.5]})
    fig = heads_figure(df, ["effect"], title="activation patching of z, by head", colorbar_label="effect")
    texts = [ax.get_title() for ax in panels(fig)] + [fig._suptitle.get_text() if fig._suptitle else ""]
    assert texts == ["activation patching of z, by head", ""]


def test_patch_by_layer_and_position_labels_positions(planted_dir, tmp_path, monkeypatch, saved_figures):
    monkeypatch.chdir(tmp_path)
    args = ["--model", planted_dir, "--clean", "a b c d a b c", "--corrupted", "a b c e a b c", "--quiet"]
    assert main(["patch", *args, "--site", "resid_pre", "--by", "layer_pos", "--png", "p.png"]) == 0
    (ax,) = panels(saved_figures[-1])
    assert ax.get_xlabel() == "position" and ax.get_ylabel() == "layer"
    assert heatmap_values(ax).shape == (2, 8)  # 2 layers × 8 positions (BOS + 7 tokens)
    assert _colorbar_label(saved_figures[-1]) == "effect (0 = corrupted run, 1 = clean run)"
    assert ax.images[0].get_clim()[1] >= 1.0
    assert main(["path-patch", *args, "--receivers", "1.0.k", "--png", "pp.png"]) == 0
    (ax,) = panels(saved_figures[-1])
    assert ax.images[0].get_clim() == (-1.0, 1.0) and ax.get_title() == "path patching into L1H0.k"
    assert main(["lens", "a b c d a b c", "--model", planted_dir, "--target", "d", "--dla", "--png", "dla.png"]) == 0
    assert _colorbar_label(saved_figures[-1]) == "contribution (logits)"


def test_spectra_name_their_energy_levels():
    from analyses.ov import ENERGY_LEVELS

    spectrum = pd.DataFrame({"layer": 0, "head": 0, "k": [1, 2, 3], "sigma": [3.0, 1.0, 0.1],
                             "cum_energy": [0.9, 0.999, 1.0]})
    _, energy = panels(spectra_figure(spectrum))
    labels = [t.get_text() for t in energy.texts]
    assert labels == [f"{q:g} of Σσ² (rank{round(q * 100)})" for q in ENERGY_LEVELS]


def test_tokens_a_font_cannot_draw_are_escaped():
    assert figure_text("a\x01b") == "a\\x01b"  # a control character
    assert figure_text(" café") == " café"  # Latin-1 is in the font
    assert figure_text("日🙂") == "\\u65e5\\U0001f642"  # no glyph in DejaVu Sans Mono: not an empty box


def test_byte_tokens_show_their_bytes_not_a_replacement_character(gpt2_vocab):
    from interp.report import build_report
    from interp.tokenizer import display_token

    text = " 日本 🙂 naïve"
    ids = gpt2_vocab.tokenizer.encode(text, add_special_tokens=False)
    shown = [display_token(gpt2_vocab.tokenizer, i) for i in ids]
    assert "\ufffd" not in "".join(shown) and "\\xe6" in shown[0]
    # Every shown token is the bytes of its piece of the text: together they are the text's UTF-8.
    decoded = b"".join(s.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")
                       if "\\x" in s else s.encode() for s in shown)
    assert decoded == text.encode()
    report = build_report(gpt2_vocab, text, heads="0.0", scores=False)
    assert report.tokens[1:] == shown


def test_the_report_summary_shows_values_and_marks_its_heads(planted, tmp_path, saved_figures):
    from interp.report import write_report

    write_report(planted, "a b c d a b c d", png=tmp_path / "figs", heads="0.0,1.0", progress=False)
    summary = saved_figures[-1]
    for ax in panels(summary):
        values = heatmap_values(ax)
        written = [t.get_text() for t in ax.texts]
        assert len(written) == values.size  # every cell says its score
        assert written[0] == f"{values[0, 0]:.2f}".removeprefix("0") or written[0] == f"{values[0, 0]:.1f}"
        boxes = sorted((p.get_y() + 0.5, p.get_x() + 0.5) for p in ax.patches)
        assert boxes == [(0.0, 0.0), (1.0, 0.0)]  # L0H0 and L1H0 outlined, nothing else
    assert "outlined: the heads in the report" in summary._suptitle.get_text()
    assert np.isfinite(heatmap_values(panels(summary)[0])).all()
