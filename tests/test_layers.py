"""The house's floors, held by the import graph: every import statement of interp and analyses, lazy ones inside
functions included, read from the source (nothing is imported to find them).

core (interp, interp.features)  <-  analyses  <-  presentation (plotting, report, cli, bench)

The core never imports the analyses or the presentation, the analyses never import the presentation, and no
module imports itself round a cycle, at any depth. The package facades (``interp/__init__.py``,
``analyses/__init__.py``, ``interp/features/__init__.py``), which map public names to modules for lazy import,
sit on top.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESENTATION = ("interp.plotting", "interp.report", "interp.cli", "interp.bench")
FACADES = ("interp", "analyses", "interp.features")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in ("interp", "analyses") for p in (ROOT / pkg).rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours ``name`` imports, anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports pkg.mod when that is a module, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a.b.c where only a.b is ours
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def floor(name: str) -> int:
    if name in FACADES:
        return 3
    if name.startswith(PRESENTATION):
        return 2
    if name.startswith("analyses"):
        return 1
    return 0


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_floor_imports_one_above_it(graph):
    names = {0: "the core", 1: "the analyses", 2: "the presentation", 3: "a facade"}
    bad = [f"{a} ({names[floor(a)]}) imports {b} ({names[floor(b)]})"
           for a, deps in sorted(graph.items()) for b in sorted(deps) if floor(b) > floor(a) and floor(b) < 3]
    assert not bad, "\n".join(bad)


def test_no_cycle_at_any_depth(graph):
    """Tarjan's strongly connected components over every import edge (facades aside): each is one module."""
    edges = {a: {b for b in deps if b not in FACADES} for a, deps in graph.items() if a not in FACADES}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_is_read_from_the_source(graph):
    """The reader sees lazy imports inside functions (otherwise the tests above prove little)."""
    assert "interp.bridge" in graph["interp.model"]  # imported inside HookedGPT2.bridge
    assert "interp.report.circuit" in graph["interp.cli.discovery"]
    assert "interp.engine" in graph["interp.patching"]
