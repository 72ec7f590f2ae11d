"""Feature pages in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

It skips only where Chromium cannot exist (not installed: ``apt-get install chromium``, see
``.ci/apt-packages``) or Playwright is missing (``pip install -e ".[test]"``). Screenshots go to
``test-artifacts/`` at the repository root.
"""

import shutil
from pathlib import Path

import pytest
import torch

import interp
from interp.features import SAE, SAEConfig, dashboard
from interp.testing import word_tokenizer

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[test]'")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine: apt-get install chromium (listed in .ci/apt-packages)"
)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
EVIL = ["<script>alert(1)</script>", '"><img/src=x/onerror=alert(1)>', "</script><script>alert(2)</script>",
        "<!--", "&lt;b&gt;", "{{7*7}}", "plain", "words", "here"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def evil_pages():
    """A random GPT-2 over markup-shaped words; an SAE at hook_embed whose feature 1 fires on EVIL[1] only,
    feature 2 never, the others at random; a hook_z SAE over the same model for the DFA view."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(EVIL) + 1, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0)).eval()
    model = interp.load(hf, tokenizer=word_tokenizer(EVIL))
    g = torch.Generator().manual_seed(1)
    words = torch.randint(0, len(EVIL), (299,), generator=g)
    text = " ".join(EVIL[i] for i in words.tolist())
    with torch.no_grad():
        sae = SAE(SAEConfig("standard", d_in=32, d_sae=6, hook_name="hook_embed", fold_ln=True), seed=2)
        E = model.W_E
        score = E @ E[2]
        sae.W_enc[:, 1], sae.b_enc[1] = E[2], -float(score[2] + torch.cat([score[:2], score[3:]]).max()) / 2
        sae.W_enc[:, 2], sae.b_enc[2] = 0.0, -1.0
        sae.b_dec.zero_()
        zsae = SAE(SAEConfig("standard", d_in=32, d_sae=4, hook_name="blocks.1.attn.hook_z", fold_ln=True), seed=3)
    pages = dashboard(model, sae, [text], n_ctx=16, n_examples=5, progress=False)
    zpages = dashboard(model, zsae, [text], n_ctx=16, n_examples=3, progress=False)
    return pages, zpages


class Page:
    """A page that records console errors, page errors, dialogs and every request."""

    def __init__(self, browser, path: Path):
        self.errors, self.dialogs, self.requests = [], [], []
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.errors.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()

    def open(self, fragment: str = ""):
        self.page.goto(self.url + fragment)
        self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        return self

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def check_clean(self):
        assert self.errors == [] and self.dialogs == []
        assert all(r.split("#")[0] == self.url for r in self.requests)  # the file itself, nothing else


def test_pages_render_every_feature_and_navigate(browser, evil_pages, tmp_path):
    pages, _ = evil_pages
    path = tmp_path / "features.html"
    path.write_text(pages.html(), encoding="utf-8")
    p = Page(browser, path).open("#f1")
    assert p.count("#list tbody tr.frow") == len(pages) == 6  # every feature computed is listed
    assert p.count("#list tbody tr.frow.dead") == sum(f["dead"] for f in pages.features) >= 1
    f = pages.feature(1)
    sec = p.page.locator("section#f1")  # the stable anchor the attribution-graph page links to
    assert sec.count() == 1
    assert sec.locator(".exs.top .ex").count() == sum(a["binMin"] == -1 for a in f["activations"])
    assert sec.locator(".ex").count() == len(f["activations"])
    outlined = sec.locator(".exs.top .ex .tok.q")
    assert {outlined.nth(i).text_content() for i in range(outlined.count())} == {EVIL[1]}  # markup shown as text
    assert p.count("img") == 0 and p.page.evaluate("document.scripts.length") == 2
    assert sec.locator("svg.hist rect.b:not(.l)").count() == len(f["freq_hist_data_bar_heights"])
    assert sec.locator("table.lg").first.locator("tr").count() == 1 + len(f["pos_str"])
    # The list: sorting, filtering, clicking; the dead feature's page says so and shows no examples.
    p.page.select_option("#sort", "index")
    rows = p.page.locator("#list tbody tr.frow")
    assert [rows.nth(i).get_attribute("data-index") for i in range(rows.count())] == [str(i) for i in range(6)]
    p.page.locator("#list tr.frow[data-index='2']").click()
    assert p.count("section#f2") == 1 and p.count("section#f2 .ex") == 0 and p.count("section#f2 .badge.dead") == 1
    assert p.page.evaluate("location.hash") == "#f2"
    p.page.uncheck("#show-dead")
    assert p.page.locator("#list tr.frow.dead").is_hidden()
    p.page.fill("#filter", "zzz-no-such-token")
    assert p.page.locator("#list tbody tr.frow:visible").count() == 0
    p.page.fill("#filter", "")
    p.page.evaluate("location.hash = '#f1'")  # a link from another page: the fragment opens the feature
    p.page.wait_for_selector("section#f1")
    p.page.locator("section#f1 .exs.top .ex .tok.q").first.hover()
    assert EVIL[1] in p.page.locator("#status").text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    p.page.screenshot(path=str(ARTIFACTS / "feature-pages.png"))
    p.check_clean()


def test_hook_z_pages_show_heads_and_dfa(browser, evil_pages, tmp_path):
    _, zpages = evil_pages
    path = tmp_path / "z.html"
    path.write_text(zpages.html(), encoding="utf-8")
    live = next(f for f in zpages.features if not f["dead"])
    p = Page(browser, path).open(f"#f{live['index']}")
    sec = p.page.locator(f"section#f{live['index']}")
    assert sec.locator(".heads .hb").count() == 4
    before = sec.locator(".exs.top .ex .tok").first.get_attribute("style")
    sec.locator("#dfa").check()
    after = sec.locator(".exs.top .ex .tok").first.get_attribute("style")
    assert before != after and "DFA" in sec.locator(".exs.top .ex .tok").first.get_attribute("title")
    p.check_clean()


def test_pages_inline_in_a_notebook(browser, evil_pages, tmp_path):
    """pages._repr_html_(): a sandboxed srcdoc iframe that draws, navigates and keeps its CSP."""
    pages, _ = evil_pages
    output = pages._repr_html_()
    assert output.startswith('<iframe srcdoc="&lt;!DOCTYPE html&gt;') and "<script" not in output
    path = tmp_path / "notebook.html"
    path.write_text(f"<!DOCTYPE html><html><body><div id='nb'>notebook</div>{output}</body></html>", encoding="utf-8")
    errors, requests = [], []
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri())
    frame = page.frame_locator("iframe")
    frame.locator("body[data-ready='1']").wait_for(timeout=30_000)
    assert frame.locator("#list tbody tr.frow").count() == len(pages)
    frame.locator("#list tr.frow[data-index='1']").click()
    assert frame.locator("section#f1 .ex").count() == len(pages.feature(1)["activations"])
    assert page.locator("#nb").text_content() == "notebook" and errors == [] and requests == [path.resolve().as_uri()]
    page.close()
