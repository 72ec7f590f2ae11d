"""Attention reports: the data they show, the files they write, and what they refuse."""

import base64
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import interp
from interp import report as rp
from interp.report.html import json_for_script, show_token
from interp.cli import main
from interp.errors import InterpError
from interp.testing import PLANTED_HEADS, random_gpt2_hf, word_tokenizer

PROMPT = "a b c d e f a b c d e f"  # repeated, so duplicate/induction heads have something to do
EVIL = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</script><script>alert(2)</script>",
    "<!--",
    "&lt;b&gt;",
    "\u2028",
    "$x^2$",
    "plain",
]


def evil_model():
    """A small random GPT-2 whose tokenizer has tokens that look like markup."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(EVIL) + 1, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
    )).eval()
    return interp.load(hf, tokenizer=word_tokenizer(words=EVIL))


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<u2")


@pytest.fixture(scope="module")
def planted_report(planted):
    return rp.build_report(planted, PROMPT, progress=False)


# ---------------------------------------------------------------------------- what the report holds
def test_default_report_shows_each_planted_head(planted_report):
    # With no choice given, the strongest head labelled as each kind: exactly the planted heads.
    assert dict(zip(planted_report.heads, planted_report.summary_table()["label"])) == PLANTED_HEADS
    for (layer, head), reason in zip(planted_report.heads, planted_report.reasons):
        assert PLANTED_HEADS[layer, head] in reason


def test_patterns_are_the_models(planted, planted_report):
    _, cache = planted.run(PROMPT, names=["pattern"])
    for (layer, head), pattern in zip(planted_report.heads, planted_report.patterns):
        torch.testing.assert_close(pattern, cache["pattern", layer][0, head])
    prev = planted_report.patterns[planted_report.heads.index((0, 0))]
    assert torch.all(prev.diagonal(-1) > 0.99)  # the previous-token head, planted: key = query - 1


@pytest.mark.parametrize("kind,head", [(k, lh) for lh, k in PLANTED_HEADS.items()])
def test_top_of_a_kind_is_the_planted_head(planted, planted_report, kind, head):
    r = rp.build_report(planted, PROMPT, top=2, kind=kind, scores=planted_report.scores)
    assert r.heads[0] == head
    assert len(r.heads) == 2 and r.heads[1] != head
    assert r.reasons[0].startswith(f"#1 of 8 heads by {kind} score")


def test_given_scores_drive_the_choice(planted, planted_report):
    scores = planted_report.scores.copy()
    scores.loc[(scores["layer"] == 1) & (scores["head"] == 3), "induction"] = 5.0
    r = rp.build_report(planted, PROMPT, top=1, kind="induction", scores=scores)
    assert r.heads == [(1, 3)] and "5.000" in r.reasons[0]
    assert r.scores_source == "a table given by the caller"


def test_scores_on_the_prompt(planted):
    r = rp.build_report(planted, "a b c d", heads="0.0", classify_on="prompt", progress=False)
    assert r.scores.attrs["n_prompts"] == 1 and r.scores.attrs["n_tokens"] == 5
    assert r.scores["n_induction"].sum() == 0  # nothing repeats in "a b c d"
    with pytest.raises(InterpError, match="no head could be scored for induction"):
        rp.build_report(planted, "a b c d", top=2, kind="induction", classify_on="prompt", progress=False)


def test_table_is_tidy_and_leaves_out_the_masked_future(planted, planted_report):
    df = planted_report.table()
    p = len(planted_report.tokens)
    assert list(df.columns) == ["layer", "head", "query_pos", "key_pos", "query_token", "key_token", "weight"]
    assert len(df) == len(planted_report.heads) * p * (p + 1) // 2
    assert (df["key_pos"] <= df["query_pos"]).all()
    sums = df.groupby(["layer", "head", "query_pos"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)  # nothing with weight was dropped
    toks = planted.to_str_tokens(PROMPT)
    assert (df["query_token"] == [toks[i] for i in df["query_pos"]]).all()
    assert (df["key_token"] == [toks[i] for i in df["key_pos"]]).all()
    row = df[(df["layer"] == 0) & (df["head"] == 0) & (df["query_pos"] == 5) & (df["key_pos"] == 4)]
    assert row["weight"].item() > 0.99


def test_html_carries_patterns_scores_and_summary(planted_report):
    html = planted_report.html()
    data = page_data(html)
    p = len(planted_report.tokens)
    q, k = torch.tril_indices(p, p)
    assert data["tokens"] == planted_report.tokens
    assert [(h["layer"], h["head"]) for h in data["heads"]] == planted_report.heads
    scores = planted_report.scores.set_index(["layer", "head"])
    for h, pattern in zip(data["heads"], planted_report.patterns):
        stored = decode(h["pattern"])
        assert stored.shape == (p * (p + 1) // 2,)
        np.testing.assert_allclose(stored / 1000, pattern[q, k].numpy(), atol=5e-4 + 1e-6)
        assert h["label"] == scores.loc[(h["layer"], h["head"]), "label"]
        for kind in data["kinds"]:
            assert h["scores"][kind] == pytest.approx(scores.loc[(h["layer"], h["head"]), kind], abs=1e-4)
    summary = data["summary"]
    assert summary["kinds"] == list(planted_report.kinds)
    for (layer, head), kind in PLANTED_HEADS.items():
        assert summary["scores"][kind][layer][head] > 0.9
        assert summary["labels"][layer][head] == kind
    # Self-contained: nothing is loaded from anywhere, and the CSP forbids trying.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "default-src 'none'" in html


def test_json_for_script_cannot_close_the_script():
    text = json_for_script(EVIL)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == EVIL


# ---------------------------------------------------------------------------- hostile tokens
def test_markup_tokens_stay_data(tmp_path):
    model = evil_model()
    ids = torch.arange(len(EVIL) + 1)  # BOS then every hostile token once, as given
    r = rp.write_report(model, ids, tmp_path / "r.html", svg=tmp_path / "svg", heads="1.3", progress=False)
    assert r.tokens[1:] == EVIL
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.count("<script") == 2  # the JSON block and the page's own script
    assert "<img" not in html and "alert(" not in html.split('id="report-data">')[0]
    assert page_data(html)["tokens"][1:] == [show_token(t) for t in EVIL]
    for svg in (tmp_path / "svg").glob("*.svg"):
        root = ET.parse(svg).getroot()  # well-formed XML: the tokens were escaped
        assert not [e for e in root.iter() if e.tag.split("}")[-1] in ("script", "img", "foreignObject")]


def test_show_token_makes_whitespace_visible():
    assert show_token(" a\n\tb\x07") == " a\\n\\tb\\x07"
    assert show_token("\u2028x\u202e") == "\\u2028x\\u202e"  # line separator, right-to-left override
    assert show_token("<script>") == "<script>"  # made safe by how it is written, not by mangling it


# ---------------------------------------------------------------------------- files
def test_write_all_outputs(planted, tmp_path):
    r = rp.write_report(planted, PROMPT, tmp_path / "r.html", png=tmp_path / "png", svg=tmp_path / "svg",
                        csv=tmp_path / "p.csv", heads="1.0", progress=False)
    for d, fmt in ((tmp_path / "png", "png"), (tmp_path / "svg", "svg")):
        names = sorted(f.name for f in d.iterdir())
        assert names == [f"L1H0.lines.{fmt}", f"L1H0.pattern.{fmt}", f"summary.{fmt}"]
    assert (tmp_path / "png" / "L1H0.pattern.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    table = r.table()
    assert len(csv) == len(table)
    np.testing.assert_allclose(csv["weight"].to_numpy(), table["weight"].to_numpy(), rtol=1e-6)
    assert (csv["query_token"] == table["query_token"]).all()
    assert not [f for f in tmp_path.rglob("*.part")]


def test_a_failed_write_leaves_the_good_file(planted, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("good report")
    real = Path.write_text

    def half_then_fail(self, text, *a, **kw):  # the disk fills up half way through the page
        real(self, text[: len(text) // 2], *a, **kw)
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(InterpError, match=f"cannot write {out}: No space left on device"):
        rp.write_report(planted, PROMPT, out, heads="0.0", progress=False)
    monkeypatch.undo()
    assert out.read_text() == "good report"
    assert os.listdir(tmp_path) == ["r.html"]  # no temp file left beside it
    assert not planted.has_hooks


@pytest.mark.parametrize("kwargs,match", [
    (dict(heads="foo"), "cannot read head 'foo'"),
    (dict(heads="2.0"), "layer 2 out of range: model has 2 layers"),
    (dict(heads="0.4"), "head 4 out of range: model has 4 heads per layer"),
    (dict(heads="0.0", top=2), "either heads or top/kind"),
    (dict(kind="sideways"), "unknown head kind 'sideways'"),
    (dict(top=0), "top 0 out of range"),
    (dict(top=2, scores=False), "heads must be given explicitly"),
    (dict(heads="0.0", line_top_k=0), "line_top_k must be a positive integer"),
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(planted, tmp_path, kwargs, match):
    prompt = kwargs.pop("prompt", PROMPT)
    out = tmp_path / "r.html"
    with pytest.raises(InterpError, match=match):
        rp.write_report(planted, prompt, out, progress=False, **kwargs)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert not planted.has_hooks


def test_unwritable_outputs_fail_before_any_work(planted, tmp_path, monkeypatch):
    def no_model_run(*a, **kw):
        raise AssertionError("the model ran although the output cannot be written")

    monkeypatch.setattr(rp, "build_report", no_model_run)
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (dict(path=tmp_path / "missing" / "r.html"), "directory .*missing does not exist"),
        (dict(path=tmp_path / "a_dir"), "it is a directory"),
        (dict(path=None, csv=tmp_path / "missing" / "p.csv"), "does not exist"),
        (dict(path=None, png=tmp_path / "a_file"), "it is a file, not a directory"),
        (dict(path=None, svg=tmp_path / "missing" / "svg"), "does not exist"),
        (dict(path=None), "nothing to write"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InterpError, match=match):
            rp.write_report(planted, PROMPT, kwargs.pop("path"), heads="0.0", **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["a_dir", "a_file"]


def test_oversized_reports_are_refused(planted, monkeypatch):
    monkeypatch.setattr(rp, "MAX_REPORT_BYTES", 100_000)
    with pytest.raises(InterpError, match="choose fewer heads or a shorter prompt"):
        rp.build_report(planted, PROMPT, heads="0.0", scores=False)


def test_report_heads_keep_the_order_given(planted):
    assert rp.build_report(planted, PROMPT, heads="1.0, L0H1,0:2", scores=False).heads == [(1, 0), (0, 1), (0, 2)]
    with pytest.raises(InterpError, match="no heads given"):
        rp.build_report(planted, PROMPT, heads=" , ", scores=False)
    with pytest.raises(InterpError, match="head 1.0 given twice"):
        rp.build_report(planted, PROMPT, heads="1.0,L1H0", scores=False)


# ---------------------------------------------------------------------------- scale
def big_model():
    """12 heads and room for 256 tokens: the report size the issue bounds."""
    hf, tok = random_gpt2_hf(n_layer=2, n_head=6, n_embd=96, n_positions=260)
    return interp.load(hf, tokenizer=tok)


def big_prompt(n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.tensor([0]), torch.randint(1, 2000, (n - 1,), generator=g)])


def test_twelve_heads_of_256_tokens_stay_under_5_mb(tmp_path):
    model = big_model()
    out = tmp_path / "big.html"
    r = rp.write_report(model, big_prompt(), out, top=12, progress=False)
    assert len(r.heads) == 12 and len(r.tokens) == 256
    size = out.stat().st_size
    assert size <= 5_000_000, f"{size / 1e6:.2f} MB"
    assert size <= rp._estimate_bytes(12, 256)  # the refusal limit is computed from an upper bound
    data = page_data(out.read_text(encoding="utf-8"))
    assert all(len(decode(h["pattern"])) == 256 * 257 // 2 for h in data["heads"])


# ---------------------------------------------------------------------------- CLI
def test_cli_report(planted_dir, tmp_path, capsys):
    out, csv = tmp_path / "r.html", tmp_path / "p.csv"
    code = main(["report", PROMPT, "--out", str(out), "--top", "1", "--kind", "induction", "--csv", str(csv),
                 "--model", planted_dir])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [(h["layer"], h["head"]) for h in page_data(out.read_text())["heads"]] == [(1, 0)]
    assert "induction" in captured.out.splitlines()[1]
    assert f"wrote report {out}" in captured.err
    assert pd.read_csv(csv)[["layer", "head"]].drop_duplicates().values.tolist() == [[1, 0]]


def test_cli_prompt_from_a_file(planted_dir, tmp_path, capsys):
    (tmp_path / "prompt.txt").write_text("a b a b\n")
    out = tmp_path / "r.html"
    code = main(["report", "--file", str(tmp_path / "prompt.txt"), "--out", str(out), "--heads", "0.0",
                 "--no-scores", "--model", planted_dir])
    assert code == 0, capsys.readouterr().err
    assert page_data(out.read_text())["tokens"] == ["<|endoftext|>", "a", "b", "a", "b"]


@pytest.mark.parametrize("argv,message", [
    (["report", "a b", "--out", "{tmp}/r.html", "--heads", "7.0"], "layer 7 out of range"),
    (["report", "", "--out", "{tmp}/r.html"], "prompt is empty"),
    (["report", "a b", "--out", "{tmp}/no/r.html"], "does not exist"),
    (["report", "a b"], "nothing to write"),
    (["report", "--out", "{tmp}/r.html"], "no prompt"),
])
def test_cli_bad_input(planted_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--model", planted_dir]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "interp report: error: " in err and message in err
    assert not list(tmp_path.iterdir())


def test_report_summary_figure_is_on_a_0_1_scale(planted, tmp_path, saved_figures):
    """A duplicate-token maximum of 0.02 must not look bright: every panel of the summary is on 0–1."""
    from figcheck import panels

    rp.write_report(planted, PROMPT, png=tmp_path / "figs", heads="0.0", progress=False)
    summary = saved_figures[-1]
    axes = panels(summary)
    from analyses.heads import KINDS

    assert [ax.get_title() for ax in axes] == list(KINDS)
    assert all(ax.images[0].get_clim() == (0.0, 1.0) for ax in axes)
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["L0H0.lines.png", "L0H0.pattern.png", "summary.png"]
