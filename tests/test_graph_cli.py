"""``interp graph``: end to end on interp-tiny with its bundled transcoders, and the command-line contract."""

import json

import pytest

from interp.cli import main
from interp.features.graph import AttributionGraph

PROMPT = " table stack queue number table stack queue"  # interp-tiny continues it with " number"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    paths = {"out": d / "g.json", "html": d / "g.html", "svg": d / "g.svg"}
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["graph", PROMPT, "--out", str(paths["out"]), "--html", str(paths["html"]), "--svg",
                     str(paths["svg"]), "--qk", "L1H4@-1,4", "--quiet"])
    return code, out.getvalue(), err.getvalue(), paths


def test_graph_of_interp_tiny_end_to_end(outputs):
    code, out, err, paths = outputs
    assert code == 0
    assert "logit nodes (last position): ' number'" in out
    assert "L1H4 from position 7 to 4" in out
    assert err.count("wrote") == 3
    g = AttributionGraph.from_json(paths["out"])
    assert g.str_tokens[-1] == " queue" and g.logit_tokens[0] == " number"
    data = json.loads(paths["out"].read_text())
    assert data["interp"]["qk"][0]["head"] == "L1H4"
    assert abs(data["interp"]["qk"][0]["score"] - data["interp"]["qk"][0]["sum_of_terms"]) < 1e-3
    # the answer comes from its earlier copy: the token " number" at position 4 feeds the logit directly
    top = max(data["links"], key=lambda x: x["weight"] if x["target"].startswith("3_") else -1)
    assert top["source"] == f"E_{int(g.tokens[4])}_4"
    svg = paths["svg"].read_text()
    assert svg.startswith("<svg") and svg.count('class="node feature"') == int(g.node_mask[: g.n_features].sum())


@pytest.mark.parametrize("argv, message", [
    (["graph", "a b", "--transcoders", "/nonexistent"], "--transcoders /nonexistent: no such directory"),
    (["graph", "a b", "--out", "g.csv"], "--out g.csv: give a .json name"),
    (["graph", "a b", "--html", "/nonexistent/g.html"], "directory /nonexistent does not exist"),
    (["graph", "a b", "--qk", "L1H4"], "write HEAD@QUERY,KEY"),
    (["graph", "a b", "--node-threshold", "2"], "not a fraction"),
    (["graph", "a b", "--edge-threshold", "1"], "keeps every entry"),
    (["graph", "a b", "--feature-link", "x{y}"], "only {layer} and {feature}"),
    (["graph", " "], "the prompt is empty"),
    (["graph", "a b", "--model", "gpt2-local-nonexistent"], "give a directory of transcoders"),
])
def test_bad_input_exits_2_with_one_line_before_the_model_loads(argv, message, capsys, monkeypatch):
    import interp.cli.graph as cli_graph

    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_graph, "load_model", no_model)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
