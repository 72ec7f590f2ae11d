"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

It skips only where Chromium cannot exist (not installed: ``apt-get install chromium``,
see ``.ci/apt-packages``) or Playwright is missing (``pip install -e ".[test]"``).
Screenshots go to ``test-artifacts/`` at the repository root.
"""

import shutil
from pathlib import Path

import pytest
import torch

import interp
from interp import report as rp
from interp.testing import random_gpt2_hf, word_tokenizer

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[test]'")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine: apt-get install chromium (listed in .ci/apt-packages)"
)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
PROMPT = "a b c d e f a b c d e f"
EVIL = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</script><script>alert(2)</script>",
        "<!--", "&lt;b&gt;", "plain"]


@pytest.fixture(scope="module")
def browser():
    # Playwright runs Chromium headless with a fresh temporary profile of its own (its user-data-dir).
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


class Page:
    """A page that records console errors, page errors, dialogs and every request."""

    def __init__(self, browser, path: Path):
        self.errors, self.dialogs, self.requests = [], [], []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def check_clean(self):
        assert self.errors == []
        assert self.dialogs == []
        assert self.requests == [self.url]  # the file itself, nothing else


def test_report_renders_and_hovering_highlights_lines(browser, planted, tmp_path):
    r = rp.write_report(planted, PROMPT, tmp_path / "report.html", progress=False)
    p = Page(browser, tmp_path / "report.html")
    n, P = len(r.heads), len(r.tokens)
    assert p.count(".head-card") == n
    assert p.count("#tokens .tok") == P
    assert p.count(".lineview .col.q .row") == n * P and p.count(".lineview .col.k .row") == n * P
    assert p.count("canvas.heatmap") == n
    assert p.count("table.grid") == len(r.kinds) + 1  # one layers × heads grid per kind, and the labels
    assert p.count("table.grid td.chosen") == n * (len(r.kinds) + 1)

    # The previous-token head: hovering query 5 lights exactly its line to key 4, weight ~1.
    card = p.page.locator(f"#head-{r.heads.index((0, 0))}")
    assert card.locator("line.hl").count() == 0
    card.locator(".col.q .row").nth(5).hover()
    assert card.locator(".lineview.focus").count() == 1
    lit = card.locator("line.hl")
    assert lit.count() == 1 and lit.get_attribute("data-q") == "5" and lit.get_attribute("data-k") == "4"
    assert card.locator(".col.k .row").nth(4).locator(".w").text_content() == "1.000"
    assert card.locator(".col.k .row").nth(6).locator(".w").text_content() == ""  # a future key: no weight
    # Hovering a key lights the lines of every query that looks at it: key 4 is seen from query 5 only.
    card.locator(".col.k .row").nth(4).hover()
    assert [lit.nth(i).get_attribute("data-q") for i in range(lit.count())] == ["5"]
    assert card.locator(".col.q .row").nth(5).locator(".w").text_content() == "1.000"
    # The BOS head: key 0 is where every query looks.
    bos = p.page.locator(f"#head-{r.heads.index((1, 1))}")
    bos.locator(".col.k .row").nth(0).hover()
    assert bos.locator("line.hl").count() == P
    p.page.mouse.move(0, 0)
    assert p.count("line.hl") == 0 and p.count(".lineview.focus") == 0

    ARTIFACTS.mkdir(exist_ok=True)
    card.locator(".col.q .row").nth(5).hover()
    p.page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    p.check_clean()


def test_markup_in_tokens_runs_nothing(browser, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(EVIL) + 1, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0)).eval()
    model = interp.load(hf, tokenizer=word_tokenizer(words=EVIL))
    ids = torch.tensor([0, *range(1, len(EVIL) + 1), 1, 2])
    rp.write_report(model, ids, tmp_path / "evil.html", heads="0.0,1.2", progress=False)
    p = Page(browser, tmp_path / "evil.html")
    assert p.count("img") == 0
    assert p.page.evaluate("document.scripts.length") == 2  # the data block and the page's own script
    strip = p.page.locator("#tokens .tok")
    shown = [strip.nth(i).text_content() for i in range(strip.count())]
    assert shown == [f"{i}{t}" for i, t in enumerate(["<|endoftext|>", *EVIL, EVIL[0], EVIL[1]])]  # index + text
    rows = p.page.locator("#head-0 .col.k .row .tok")
    assert rows.nth(1).text_content() == EVIL[0] and rows.nth(2).text_content() == EVIL[1]
    p.page.locator("#head-0 .col.q .row").nth(2).hover()  # hover handlers write token text too
    assert p.count("img") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    p.page.screenshot(path=str(ARTIFACTS / "report-hostile-tokens.png"), full_page=True)
    p.check_clean()


def test_twelve_heads_of_256_tokens_render(browser, tmp_path):
    hf, tok = random_gpt2_hf(n_layer=2, n_head=6, n_embd=96, n_positions=260)
    model = interp.load(hf, tokenizer=tok)
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.tensor([0]), torch.randint(1, 2000, (255,), generator=g)])
    r = rp.write_report(model, ids, tmp_path / "big.html", top=12, progress=False)
    p = Page(browser, tmp_path / "big.html")
    assert p.count(".head-card") == 12 and p.count("#tokens .tok") == 256
    lines = p.count("line")
    assert lines <= 12 * 256 * r.line_top_k  # the line view is truncated to the top keys per query
    card = p.page.locator("#head-11")
    card.locator(".col.q .row").nth(3).hover()  # 4 keys, each ≥ 0.01 in a random model: 4 lines
    assert card.locator("line.hl").count() == 4
    card.locator(".col.q .row").nth(200).hover()  # 201 keys: at most line_top_k lines, every weight on hover
    assert card.locator("line.hl").count() <= r.line_top_k
    weights = card.locator(".col.k .row .w").all_text_contents()
    assert all(w for w in weights[:201]) and not any(weights[201:])
    print(f"\n256 tokens × 12 heads: {(tmp_path / 'big.html').stat().st_size / 1e6:.2f} MB, {lines} lines, "
          f"rendered in {p.page.evaluate('document.body.dataset.renderMs')} ms")
    p.page.screenshot(path=str(ARTIFACTS / "report-256-tokens.png"))
    p.check_clean()


# ---------------------------------------------------------------------------- in a notebook
NOTEBOOK = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>notebook</title>
<style>.jp-OutputArea-output {{ width: 1100px }} body {{ font-family: serif }}</style></head>
<body><div id="notebook-marker">a notebook page</div>
<div class="jp-OutputArea-output" data-mime-type="text/html">{output}</div>
</body></html>
"""


def notebook_page(browser, tmp_path, output_html: str):
    """What Jupyter does with a ``text/html`` output: its markup inside the notebook's own page."""
    path = tmp_path / "notebook.html"
    path.write_text(NOTEBOOK.format(output=output_html), encoding="utf-8")
    errors, requests = [], []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda m: m.type in ("error", "warning") and errors.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    # Chromium reports a request the CSP blocked as a request that failed with "csp": not sent.
    page.on("requestfailed", lambda r: requests.remove(r.url) if r.failure == "csp" else None)
    page.goto(path.resolve().as_uri())
    frame = page.frame_locator("iframe")
    frame.locator("body[data-ready='1']").wait_for(timeout=30_000)
    return page, frame, errors, requests, path.resolve().as_uri()


def test_report_displays_inline_in_a_notebook(browser, planted, tmp_path):
    """report._repr_html_(): the page in a sandboxed srcdoc iframe: it draws, hovers, keeps its CSP, cannot reach out."""
    r = rp.build_report(planted, PROMPT, heads="0.0,1.1", progress=False)
    output = r._repr_html_()
    assert output.startswith('<iframe srcdoc="&lt;!DOCTYPE html&gt;') and 'sandbox="allow-scripts"' in output
    assert "allow-same-origin" not in output and "<script" not in output  # all of the page is inside srcdoc
    page, frame, errors, requests, url = notebook_page(browser, tmp_path, output)
    assert frame.locator(".head-card").count() == 2 and frame.locator("#tokens .tok").count() == len(r.tokens)
    assert frame.locator("table.grid").count() == len(r.kinds) + 1
    card = frame.locator("#head-0")  # L0H0, the previous-token head: query 5 lights its line to key 4
    card.locator(".col.q .row").nth(5).hover()
    lit = card.locator("line.hl")
    assert lit.count() == 1 and lit.get_attribute("data-k") == "4"
    assert page.locator("#notebook-marker").text_content() == "a notebook page"  # the notebook is untouched
    inner = page.frames[1]
    # Sandboxed without allow-same-origin: the report's script cannot reach the notebook page.
    assert inner.evaluate("() => { try { return parent.document.title } catch (e) { return 'blocked' } }") == "blocked"
    assert inner.evaluate("() => { try { localStorage.length; return 'open' } catch (e) { return 'blocked' } }") == "blocked"
    # The report's own CSP holds inside the frame: an image from the network is never requested.
    assert inner.evaluate("document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]') !== null")
    inner.evaluate("() => { const i = document.createElement('img'); i.src = 'http://127.0.0.1:9/x.png'; "
                   "document.body.appendChild(i); }")
    page.wait_for_timeout(300)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-in-notebook.png"))
    assert requests == [url]  # the image was blocked by the frame's CSP, never sent
    assert len(errors) == 1 and "violates the following Content Security Policy directive" in errors[0]
    page.close()


def test_interp_show_one_head(browser, planted, tmp_path):
    """interp.show(model, prompt, head): one head's pattern, no classifier run, inline."""
    r = interp.show(planted, PROMPT, "1.1")
    assert r.heads == [(1, 1)] and r.scores is None
    page, frame, errors, requests, url = notebook_page(browser, tmp_path, r._repr_html_())
    assert frame.locator(".head-card").count() == 1 and frame.locator("table.grid").count() == 0
    bos = frame.locator("#head-0")
    bos.locator(".col.k .row").nth(0).hover()  # the BOS head: every query looks at key 0
    assert bos.locator("line.hl").count() == len(r.tokens)
    assert requests == [url] and errors == []
    page.close()
