"""The README's tour runs as written, offline, on the bundled model."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_tour_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = readme.split("## A tour", 1)[1]
    code = re.search(r"```python\n(.*?)```", tour, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (tour)", "exec"), {})
    printed = capsys.readouterr().out
    assert "previous_token" in printed and "induction" in printed and "L0H4" in printed
    assert " x " not in printed and "..." not in printed, printed  # no table cut by pandas ("[5 rows x 10 columns]")
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_every_docs_link_resolves():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+?\.md)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"
