"""Every shell command shown in README.md and docs/*.md runs as written, and prints what the page shows.

How the commands are found (a new page is picked up by its name, nothing to register):

- fenced blocks marked ``bash``, ``sh``, ``shell`` or ``console``, and unmarked blocks whose lines
  start with ``$ ``;
- in a ``bash`` block every line is a command (a trailing ``\\`` continues it, ``#`` starts a
  comment); in a ``console`` block (or one of ``$ `` lines) a command is the text after ``$ `` and
  the lines after it, up to the next ``$ ``, are what it prints on standard output: they are
  compared with what it prints, line by line, spaces collapsed (a line ``...`` or ``…`` stands for
  any lines, and a decimal number may differ by one unit of its last printed digit);
- in the text, inline code that is an ``interp`` command with arguments (``interp lens "text"``,
  not a bare name such as ``interp patch`` or ``interp sae train``, nor a synopsis with placeholders
  such as ``interp lens train --out DIR [--steps N]`` or ``…``), except ``interp bench …``: its
  sections take minutes and print this machine's ratios (``tests/test_bench.py`` runs each on
  small inputs).

A directive, an HTML comment just before the block (or just after the inline command), says what
else to expect:

- ``<!-- docs-test: fails "MESSAGE" -->``: every command of the block fails, with MESSAGE on stderr
  (``interp``: in its one line, exit code 2): for the few that need GPT-2's real weights
  (``--model ./gpt2-local``) or a network;
- ``<!-- docs-test: skip "REASON" -->``: the block is not run (it installs packages, or is the test
  suite itself); the reason is required.

Each page runs in a fresh directory holding the inputs the pages name: ``essay.txt`` (a few
paragraphs), ``prompts.txt`` (a few prompts, one per line), ``prompt.txt`` (one prompt), ``clean.txt``
and ``corrupted.txt`` (paired prompts that tokenize alike on interp-tiny) and ``planted/`` (the planted
model of ``interp.testing``, saved). ``interp`` commands run in this process (``interp.cli.main``;
models are loaded once per test session), anything else (pipes, redirections, other programs) in
``bash``. Keep a page's commands small: this test runs all of them.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from interp.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
DIRECTIVE = re.compile(r'<!--\s*docs-test:\s*(fails|skip)\s*"([^"]+)"[^>]*-->\s*$', re.S)
INLINE = re.compile(r"`(interp [^`\n]+)`(\s*<!--\s*docs-test:[^>]*-->)?")
NUMBER = re.compile(r"-?\d+\.\d+")
WILDCARD = {"...", "…"}
#: Commands whose first argument names a mode: `interp sae train` alone is a name, not a command to run.
MODES = {"sae": [["train"], ["eval"], ["info"]], "lens": [["train"], ["eval"]]}
#: Placeholder words of a synopsis in the text (never run).
SYNOPSIS = {"…", "...", "DIR", "FILE", "TEXT", "N", "NAME", "VENV", "HOOK"}


# ---------------------------------------------------------------------------- reading the pages
def blocks(page: Path) -> list[dict]:
    """The page's command blocks: ``{"line", "commands": [(command, shown output or None)], "directive"}``."""
    text = page.read_text(encoding="utf-8")
    found = []
    prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # the text outside fenced blocks
    for m in INLINE.finditer(prose):
        words = shlex.split(m.group(1))
        if len(words) < 3 or words[1] == "bench" or words[1] not in COMMANDS or words[2:] in MODES.get(words[1], []):
            continue  # a name (`interp patch`, `interp sae train`), the bench, or not a command (`interp heads: error: …`)
        if any(w in SYNOPSIS or w.startswith("[") for w in words[2:]):
            continue  # a synopsis: `interp lens train --out DIR [--steps N]`, `interp lens TEXT --tuned DIR`
        d = DIRECTIVE.match(m.group(2).strip()) if m.group(2) else None
        assert d or not m.group(2), f"{page.name}: the comment after `{m.group(1)}` is not a docs-test directive"
        found.append({"line": text[: m.start()].count("\n") + 1, "directive": d and (d.group(1), d.group(2)),
                      "commands": [(m.group(1), None)]})
    for m in FENCE.finditer(text):
        lang, body = m.group(1).lower(), m.group(2)
        lines = body.splitlines()
        console = lang == "console" or (lang == "" and any(line.startswith("$ ") for line in lines))
        if lang not in SHELLS and not console:
            continue
        before = text[: m.start()].rstrip()
        directive = None
        comment = before[before.rfind("<!--"):] if before.endswith("-->") else ""
        if "docs-test:" in comment:  # other comments are the page's own business
            d = DIRECTIVE.search(comment)
            assert d, f"{page.name}: the docs-test directive before the block at line " \
                      f"{text[:m.start()].count(chr(10)) + 1} is neither fails \"MESSAGE\" nor skip \"REASON\""
            directive = (d.group(1), d.group(2))
        found.append({"line": text[: m.start()].count("\n") + 1, "directive": directive,
                      "commands": _console(lines) if console else [(c, None) for c in _commands(lines)]})
    return found


def _commands(lines: list[str]) -> list[str]:
    commands, current = [], ""
    for line in lines:
        current = f"{current} {line.strip()}" if current else line.rstrip()
        if current.endswith("\\"):  # continued on the next line
            current = current[:-1].rstrip()
            continue
        if shlex.split(current, comments=True):
            commands.append(current)
        current = ""
    return commands


def _console(lines: list[str]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        command = lines[i][2:]
        while command.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command.rstrip()[:-1] + " " + lines[i].strip()
        shown = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        out.append((command, shown))
    return out


# ---------------------------------------------------------------------------- comparing outputs
def _same_line(want: str, got: str) -> bool:
    want, got = " ".join(want.split()), " ".join(got.split())
    if want == got:
        return True
    if NUMBER.sub("#", want) != NUMBER.sub("#", got):
        return False
    for a, b in zip(NUMBER.findall(want), NUMBER.findall(got)):
        digits = len(a.split(".")[1])
        if len(b.split(".")[1]) != digits or abs(float(a) - float(b)) > 1.01 * 10 ** -digits:
            return False
    return True


def matches(shown: list[str], printed: list[str]) -> bool:
    """Whether ``printed`` is what ``shown`` shows (``...`` lines match any lines, including none)."""
    shown = [line for line in shown if line.strip()] or []
    printed = [line for line in printed if line.strip()]
    chunks, chunk = [], []
    for line in shown:
        if line.strip() in WILDCARD:
            chunks.append(chunk)
            chunk = []
        else:
            chunk.append(line)
    chunks.append(chunk)
    if len(chunks) == 1:
        return len(chunk) == len(printed) and all(map(_same_line, chunk, printed))
    first, *middle, last = chunks
    if len(first) + len(last) > len(printed) or not all(map(_same_line, first, printed)):
        return False
    if last and not all(map(_same_line, last, printed[len(printed) - len(last):])):
        return False
    at, end = len(first), len(printed) - len(last)
    for c in middle:  # each in order, anywhere after the last
        while at + len(c) <= end and not all(map(_same_line, c, printed[at:at + len(c)])):
            at += 1
        if at + len(c) > end:
            return False
        at += len(c)
    return True


def test_reading_a_page(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("""Run `interp lens "a b" --top 2` or just `interp patch`; `interp bench --only ov` takes minutes.

<!-- a note for writers -->
```bash
interp heads --top 3   # a comment
interp ablate --scan \\
    --by layer
```

<!-- docs-test: fails "does not exist" (GPT-2) -->
```console
$ interp heads --model ./gpt2-local
```

```
$ interp compose --top 1
K-composition
...
```

```python
interp.load("gpt2")
```
""")
    found = sorted(blocks(page), key=lambda b: b["line"])
    assert [(b["directive"], b["commands"]) for b in found] == [
        (None, [('interp lens "a b" --top 2', None)]),
        (None, [("interp heads --top 3   # a comment", None), ("interp ablate --scan --by layer", None)]),
        (("fails", "does not exist"), [("interp heads --model ./gpt2-local", [])]),
        (None, [("interp compose --top 1", ["K-composition", "..."])]),
    ]


def test_matching_rules():
    assert matches(["a  1.234", "...", "z"], ["a 1.235", "b", "c", "z"])
    assert not matches(["a 1.234"], ["a 1.236"]) and not matches(["a 12"], ["a 13"])
    assert matches(["a", "...", "c", "...", "e"], ["a", "c", "e"]) and not matches(["a", "...", "c"], ["a", "b"])
    assert not matches(["a", "b"], ["a", "b", "c"])


# ---------------------------------------------------------------------------- running them
def run(command: str, cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command, in this process when it is a plain ``interp …``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    if words and words[0] == "interp" and not any(set(w) <= set("|&;<>()") for w in words):
        from interp.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(words[1:])
            except SystemExit as e:  # --help
                code = e.code or 0
        return code, out.getvalue(), err.getvalue()
    bin_dir = str(Path(sys.executable).parent)
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PATH": bin_dir + ":" + __import__("os").environ["PATH"]})
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def cached_models(request):
    """Each model is loaded once for all pages, and a circuit computed twice (README, discovery.md) once."""
    import interp.cli
    import interp.discovery

    mp = pytest.MonkeyPatch()
    models: dict = {}
    from interp.cli.common import load_model

    def cached(args):
        key = (args.model, getattr(args, "device", "cpu"), args.fold_ln)
        if key not in models:
            models[key] = load_model(args)
        return models[key]

    for name, module in list(sys.modules.items()):
        if name.startswith("interp.cli") and getattr(module, "load_model", None) is load_model:
            mp.setattr(module, "load_model", cached)
    circuits: dict = {}
    compute = interp.discovery.circuit

    def circuit(model, clean, corrupted, metric=None, **kw):
        key = (id(model), str(clean.tokens.tolist()), str(corrupted.tokens.tolist()), getattr(metric, "name", metric),
               tuple(sorted((k, v) for k, v in kw.items() if k != "progress")))
        if key not in circuits:
            circuits[key] = compute(model, clean, corrupted, metric, **kw)
        return circuits[key]

    mp.setattr(interp.discovery, "circuit", circuit)
    yield
    mp.undo()


INPUTS = {
    "prompts.txt": "The cat sat on the mat. The cat sat on the mat.\nimport os\nimport sys\nimport os\n"
                   "def f(x):\n",
    "prompt.txt": "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n",
    "clean.txt": "self.name = name; self.\nimport os; os.\n",
    "corrupted.txt": "self.size = size; self.\nimport re; re.\n",
}


@pytest.fixture(scope="module")
def inputs(planted_dir):
    from interp.corpus import documents

    essay = documents(split="heldout")[0][:3000]
    return {**INPUTS, "essay.txt": essay}, planted_dir


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_command_runs_as_written(page, inputs, cached_models, tmp_path, monkeypatch):
    files, planted = inputs
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "planted").symlink_to(planted, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    found = blocks(page)
    if not found:
        pytest.skip(f"{page.name} shows no shell commands")
    for block in sorted(found, key=lambda b: b["line"]):
        where = f"{page.name}:{block['line']}"
        kind, note = block["directive"] or (None, None)
        if kind == "skip":
            continue
        for command, shown in block["commands"]:
            code, out, err = run(command, tmp_path)
            if kind == "fails":
                lines = err.strip().splitlines()
                assert code != 0 and note in err, f"{where}: `{command}` should fail with {note!r}: {err}"
                if command.startswith("interp "):
                    assert code == 2 and len(lines) == 1, f"{where}: `{command}` should fail in one line: {err}"
                continue
            assert code == 0, f"{where}: `{command}` exited {code}: {err.strip()[-2000:]}"
            if shown:
                assert matches(shown, out.splitlines()), f"{where}: `{command}` printed\n{out}\nthe page shows\n" + \
                    "\n".join(shown)
