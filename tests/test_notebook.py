"""What a notebook receives: the report's HTML as one escaped srcdoc attribute, interp.show's head forms, figures."""

import html
import re
import sys

import pytest

import interp
from interp.report import build_report


def test_repr_html_is_the_whole_page_escaped_in_one_attribute(planted):
    r = build_report(planted, "a b c a b c", heads="0.0", scores=False)
    out = r._repr_html_()
    m = re.fullmatch(r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts" title="([^"]*)" style="[^"]*" '
                     r'loading="eager"></iframe>', out)
    assert m, out[:300]
    assert html.unescape(m.group(1)) == r.html()  # the page, byte for byte, once unescaped by the browser
    assert "<" not in m.group(1) and '"' not in m.group(1)  # nothing in it can close the attribute or the tag
    assert 'style="width: 100%; height: 900px;' in out and m.group(2) == "Attention report · the model object"


@pytest.mark.parametrize("head, expected", [((1, 0), [(1, 0)]), ("1.0", [(1, 0)]), ("0.0,1.1", [(0, 0), (1, 1)]),
                                            ([(0, 2)], [(0, 2)])])
def test_show_takes_one_head_in_any_form(planted, head, expected):
    r = interp.show(planted, "a b c a b c", head)
    assert r.heads == expected and r.scores is None


def test_show_without_a_head_classifies(planted):
    r = interp.show(planted, "a b c a b c", kind="previous_token", top=1, progress=False)
    assert r.heads == [(0, 0)] and r.scores is not None


def test_figures_keep_a_notebooks_backend(monkeypatch):
    """In a Jupyter kernel the plotting module must not switch matplotlib to Agg (figures would not show)."""
    import matplotlib

    from interp import plotting

    calls = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: calls.append(a))
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    plotting._plt()
    assert calls == []
    monkeypatch.delitem(sys.modules, "ipykernel")
    plotting._plt()
    assert calls == [("Agg",)]
