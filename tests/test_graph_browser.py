"""The attribution graph's page in a real browser (headless Chromium, as tests/test_report_browser.py drives it)."""

from pathlib import Path

import pytest
import torch

import interp
from interp.features.graph import attribution_graph
from interp.features.qk import qk_attribution
from interp.features.transcoders import load_transcoders
from interp.report.graph import graph_html

from test_report_browser import ARTIFACTS, CHROMIUM, EVIL, FLAGS, Page

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: apt-get install chromium")
FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_graph_page_renders_links_highlights_and_escapes(browser, tmp_path):
    model = interp.load(str(FIXTURES / "model"), fold_ln=False)
    tcs = load_transcoders(FIXTURES / "transcoders-skip")
    prompt = torch.tensor([0, 5, 9, 3, 5, 9, 12, 7])
    g = attribution_graph(model, tcs, prompt, progress=False)
    qk = qk_attribution(model, tcs, prompt, "L2H1", -1, 2)
    # markup-shaped tokens must show as text and run nothing
    g.str_tokens = [EVIL[i % len(EVIL)] for i in range(g.n_pos)]
    g.logit_tokens = [EVIL[(i + 2) % len(EVIL)] for i in range(g.n_logits)]
    qk.labels = [EVIL[i % len(EVIL)] for i in range(len(qk.labels))]
    (tmp_path / "graph.html").write_text(graph_html(g, qk=[qk]), encoding="utf-8")
    p = Page(browser, tmp_path / "graph.html")
    kept = g.node_mask.nonzero().squeeze(1).tolist()
    feats = [i for i in kept if i < g.n_features]
    assert p.count(".node.feature") == len(feats) > 5
    assert p.count(".node.token") == g.n_pos and p.count(".node.logit") == g.n_logits
    assert p.count(".node.error") == sum(1 for i in kept if g.n_features <= i < g.n_features + g.n_layers * g.n_pos)
    assert p.count("svg .edge") == min(g.n_edges, 400)
    assert p.count("table.nodes tbody tr") == len(feats) and p.count("table.qk-pairs tbody tr") == 15
    # a feature links to its page by a stable anchor
    first = g.node(feats[0])
    link = p.page.locator(f'.node.feature[data-node="{feats[0]}"] a')
    assert link.get_attribute("href") == f"L{first['layer']}.html#f{first['feature']}"
    # hovering a node lights exactly its edges
    node = feats[0]
    p.page.locator(f'.node.feature[data-node="{node}"] circle').hover()
    lit = p.page.locator("svg .edge.hl")
    mine = sum(1 for s, t in zip(g.edge_sources.tolist(), g.edge_targets.tolist()) if node in (s, t))
    assert lit.count() == mine > 0
    assert p.count("svg .edge.dim") == min(g.n_edges, 400) - mine
    p.page.mouse.move(0, 0)
    assert p.count("svg .edge.hl") == 0
    # hostile tokens: shown as text, no element made of them
    assert p.count("img") == 0 and p.page.evaluate("document.scripts.length") == 1
    assert EVIL[0] in p.page.locator(".node.token").first.text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    p.page.screenshot(path=str(ARTIFACTS / "graph.png"), full_page=True)
    p.check_clean()
