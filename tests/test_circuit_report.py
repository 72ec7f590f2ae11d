"""The circuit's picture (SVG, HTML, JSON), `interp circuit` and `interp attribute`, and the page in a real browser."""

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

import interp
from interp import InterpError, circuit
from interp.cli import main
from interp.discovery import Circuit, faithfulness
from interp.report.circuit import circuit_html, circuit_svg
from test_patching import induction_pair

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def files(planted_dir, tmp_path_factory):
    """The planted induction pairs as prompt files (one prompt per line), and the model they were made for."""
    model = interp.load(planted_dir)
    clean, corrupted = induction_pair(model, n=4)
    d = tmp_path_factory.mktemp("prompts")
    for name, toks in (("clean.txt", clean), ("corrupted.txt", corrupted)):
        (d / name).write_text("\n".join(" ".join(model.to_str_tokens(t[1:])) for t in toks) + "\n")
    return model, d / "clean.txt", d / "corrupted.txt", clean, corrupted


@pytest.fixture(scope="module")
def found(files):
    model, _, _, clean, corrupted = files
    return circuit(model, clean, corrupted, edges=12, progress=False)


def test_svg_draws_each_edge_by_its_effect_and_each_input(found):
    assert interp.show(found)._repr_svg_() == circuit_svg(found)  # what a notebook shows
    root = ET.fromstring(circuit_svg(found))
    edges = root.findall(f"{SVG}g[@class='edge']")
    assert sorted(e.get("data-edge") for e in edges) == sorted(found.edges["edge"])
    nodes = root.findall(f"{SVG}g[@class='node']")
    assert sorted(n.get("data-node") for n in nodes) == sorted(found.nodes) == ["L0H0", "L1H0", "embed", "logits"]
    effect = found.edges.set_index("edge")["effect"]
    width = {e.get("data-edge"): float(e.find(f"{SVG}path").get("stroke-width")) for e in edges}
    order = sorted(width, key=lambda k: abs(effect[k]))
    assert [width[k] for k in order] == sorted(width.values())  # wider = larger |effect|
    colour = {e.get("data-edge"): e.find(f"{SVG}path").get("stroke") for e in edges}
    assert all(colour[k] == ("#1d4ed8" if effect[k] >= 0 else "#c2410c") for k in effect.index)
    ports = {n.get("data-node"): [t.text for t in n.findall(f"{SVG}text[@class='port']")] for n in nodes}
    assert ports["L1H0"] == ["k"] and ports["L0H0"] == ["v"] and ports["logits"] == []  # receiver inputs shown
    # columns are layers: embed, then layer 0, then layer 1, then the logits, left to right
    x = {n.get("data-node"): float(n.find(f"{SVG}rect").get("x")) for n in nodes}
    assert x["embed"] < x["L0H0"] < x["L1H0"] < x["logits"]


def test_json_round_trips_and_eap_ig_json_reverifies(files, found):
    """Circuit.from_json(to_json) is the same circuit; EAP-IG's graph JSON names every edge of the graph, flags
    the kept ones, and read back gives edges whose faithfulness equals the circuit's."""
    again = Circuit.from_json(json.loads(json.dumps(found.to_json())))
    assert again.to_json() == found.to_json()
    assert list(again.edges.dtypes) == list(found.edges.dtypes) and again.edges["effect"].dtype == "float64"
    eap = json.loads(json.dumps(found.to_eap_ig()))
    model, _, _, clean, corrupted = files
    assert len(eap["edges"]) == found.attrs["total_edges"]
    assert {k for k, v in eap["edges"].items() if v["in_graph"]} == {"input->a0.h0<v>", "a0.h0->a1.h0<k>", "a1.h0->logits"}
    assert eap["nodes"]["logits"]["in_graph"] and not eap["nodes"]["m0"]["in_graph"]
    edges = Circuit.from_eap_ig(eap)
    assert sorted(edges) == sorted(found.edges["edge"])
    assert faithfulness(model, clean, corrupted, edges) == pytest.approx(found.faithfulness, abs=1e-9)
    assert faithfulness(model, clean, corrupted, again) == pytest.approx(found.faithfulness, abs=1e-9)
    with pytest.raises(InterpError, match="not a circuit written by interp"):
        Circuit.from_json(eap)
    with pytest.raises(InterpError, match="not an EAP-IG graph JSON"):
        Circuit.from_eap_ig({"edges": [1]})


def test_json_holds_nodes_edges_and_faithfulness(found):
    data = json.loads(json.dumps(found.to_json()))
    assert data["faithfulness"] == pytest.approx(found.faithfulness) and data["nodes"] == found.nodes
    by_edge = {(e["sender"], e["receiver"], e["input"]): e for e in data["edges"]}
    assert set(by_edge) == {("embed", "L0H0", "v"), ("L0H0", "L1H0", "k"), ("L1H0", "logits", None)}
    k = by_edge[("L0H0", "L1H0", "k")]
    assert k["effect"] == pytest.approx(found.edges.set_index("edge").loc["L0H0->L1H0.k", "effect"])
    assert k["attribution"] > 0.5 and data["n_edges"] == 3 and data["n_nodes"] == 4


def test_cli_circuit_writes_what_the_api_finds(files, found, planted_dir, tmp_path, capsys):
    _, clean, corrupted, _, _ = files
    out, svg, page = tmp_path / "c.json", tmp_path / "c.svg", tmp_path / "c.html"
    assert main(["circuit", "--model", planted_dir, "--clean-file", str(clean), "--corrupted-file", str(corrupted),
                 "--edges", "12", "--out", str(out), "--svg", str(svg), "--html", str(page), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(found.to_json()))  # the CLI is a skin over circuit()
    assert f"faithfulness {found.faithfulness:.3f} with 3 edges and 4 nodes" in printed
    assert svg.read_text() == circuit_svg(found) and "Content-Security-Policy" in page.read_text()


def test_cli_attribute_prints_the_ranked_table(files, planted_dir, tmp_path, capsys):
    model, clean, corrupted, c, k = files
    out = tmp_path / "a.csv"
    assert main(["attribute", "--model", planted_dir, "--clean-file", str(clean), "--corrupted-file", str(corrupted),
                 "--top", "3", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "by eap" in lines[0] and lines[1].split() == ["edge", "input", "score", "attribution"]
    assert {line.split()[0] for line in lines[2:5]} == {"embed->L0H0.v", "L0H0->L1H0.k", "L1H0->logits"}
    df = pd.read_csv(out)
    ours = interp.attribute(model, c, k, progress=False)
    assert df["edge"].tolist() == ours["edge"].tolist() and (df["score"] - ours["score"]).abs().max() < 1e-5


@pytest.mark.parametrize("argv, message", [
    (["circuit", "--task", "induction", "--clean", "a b", "--corrupted", "a c"], "give --task or prompts"),
    (["circuit", "--task", "ioi"], "needs first names that are one token"),
    (["circuit", "--task", "induction", "--svg", "c.png"], "--svg c.png: give a .svg file name"),
    (["circuit", "--task", "induction", "--out", "nodir/c.json"], "directory nodir does not exist"),
    (["circuit", "--task", "induction", "--threshold", "-1"], "--threshold -1.0: give a number >= 0"),
    (["circuit", "--task", "induction", "--edges", "5", "--threshold", "1"], "give --edges N (the top N) or --threshold T"),
    (["attribute", "--task", "induction", "--target", "a"], "brings its own metric"),
    (["attribute", "--clean", "a b c", "--corrupted", "a b c d"], "differ in length"),
])
def test_cli_errors_write_nothing(planted_dir, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    extra = [] if "--out" in argv or argv[0] == "attribute" else ["--out", "c.json"]
    code = main([*argv, "--model", planted_dir, "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- in a browser
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: apt-get install chromium")
def test_the_page_in_a_browser(found, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    path = tmp_path / "circuit.html"
    path.write_text(circuit_html(found), encoding="utf-8")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors, requests = [], []
            page.on("console", lambda m: m.type in ("error", "warning") and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.resolve().as_uri())
            assert page.locator("svg g.edge").count() == found.n_edges
            assert page.locator("svg g.node").count() == found.n_nodes
            assert page.locator("table.edges tbody tr").count() == found.n_edges
            edge = page.locator("svg g.edge path").first
            assert edge.evaluate("e => getComputedStyle(e).strokeOpacity") == "0.75"
            box = page.locator("svg g.node[data-node='L1H0'] rect").bounding_box()
            assert box["width"] > 40 and box["height"] > 20  # drawn, at its size
            # the middle of the first edge's stroke, in page coordinates (an edge may be a flat line: no box)
            x, y = edge.evaluate("e => { const p = e.getPointAtLength(e.getTotalLength() / 2), m = e.getScreenCTM();"
                                 " return [p.x * m.a + m.e, p.y * m.d + m.f]; }")
            page.mouse.move(x, y)
            page.wait_for_timeout(200)
            assert edge.evaluate("e => getComputedStyle(e).strokeOpacity") == "1"  # the page's own style applies
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "circuit.png"), full_page=True)
            assert errors == [] and requests == [path.resolve().as_uri()]  # nothing fetched, nothing refused
        finally:
            browser.close()
