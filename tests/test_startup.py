"""Start-up: what ``import interp`` and the everyday commands import, Ctrl-C during start-up, the startup bench."""

import signal
import subprocess
import sys
import time

import pytest

from interp import bench
from interp.bench import startup

HEAVY = ("torch", "transformers", "transformer_lens", "pandas", "matplotlib")


def run_python(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=startup._env(),
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


def imported_after(call: str) -> list[str]:
    code = f"import sys\n{call}\nprint('IMPORTED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    line = [x for x in run_python(code).stdout.splitlines() if x.startswith("IMPORTED")][0]
    return eval(line.removeprefix("IMPORTED "))


def test_import_interp_imports_nothing_heavy():
    assert imported_after("import interp") == []
    # Public names still resolve, lazily (PEP 562), and are what they were.
    assert imported_after("import interp; interp.InterpError; interp.Batch") == ["torch"]


def test_interp_names_are_the_same_objects():
    import interp
    from interp.loading import load
    from interp.model import HookedGPT2

    assert interp.load is load and interp.HookedGPT2 is HookedGPT2
    assert set(interp.__all__) <= set(dir(interp))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        interp.nope


@pytest.mark.parametrize("argv", [["heads", "--repeated", "2"], ["lens", "some text"]])
def test_everyday_commands_import_only_what_they_use(argv):
    """transformers, TransformerLens and matplotlib cost seconds: `interp heads` and `interp lens` need none of them."""
    assert imported_after(f"from interp.cli import main; assert main({argv!r}) == 0") == ["pandas", "torch"]


def test_ctrl_c_during_start_up_prints_one_line():
    """SIGINT while torch is still being imported: `interp: interrupted`, exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "interp.cli", "heads"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=startup._env(), text=True)
    try:
        deadline = time.time() + 120
        maps = f"/proc/{proc.pid}/maps"
        while time.time() < deadline:  # wait until torch's library is being loaded: start-up is under way
            with open(maps) as f:
                if "libtorch" in f.read():
                    break
            time.sleep(0.005)
        else:
            pytest.fail("the command never started importing torch")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err, out) == (130, "interp: interrupted\n", "")


def test_startup_section_reports_ratios_to_import_torch(monkeypatch):
    """The section's arithmetic: medians of interleaved runs over `import torch`'s median, with the issue's targets."""
    walls = {"import torch": [9, 1.0, 1.2, 1.1], "import interp": [9, 1.2, 1.0, 1.1],
             "heads": [9, 2.0, 2.4, 2.2], "lens": [9, 1.5, 2.5, 2.1]}
    seen = []

    def fake_wall(cmd, env):
        key = cmd[-1] if cmd[1] == "-c" else cmd[3]
        key = {"import torch": "import torch", "import interp": "import interp"}.get(key, key)
        seen.append(key)
        return walls[key].pop(0)

    monkeypatch.setattr(startup, "REPEATS", 3)
    monkeypatch.setattr(startup, "_wall", fake_wall)
    load_row = bench.Row("startup", "load", 1.0)
    monkeypatch.setattr(startup, "_load_row", lambda: load_row)
    rows = startup.bench_startup(bench.Context())
    assert seen[:4] == ["import torch", "import interp", "heads", "lens"] and seen[4:8] == seen[:4]  # interleaved
    assert [round(r.value, 3) for r in rows[:3]] == [1.0, 2.0, 1.909]
    assert [r.ok for r in rows[:3]] == [True, False, False] and rows[3] is load_row
    assert rows[1].line().startswith("startup  interp heads / python -c 'import torch'")
    assert "(target ≤ 1.8)  MISSED" in rows[1].line()


def test_load_row_times_a_real_directory(monkeypatch):
    from interp import testing

    monkeypatch.setattr(startup, "REPEATS", 1)
    monkeypatch.setitem(testing.GPT2_FAMILY, "gpt2", dict(n_layer=2, n_head=4, n_embd=64))
    row = startup._load_row()
    assert row.what == "load GPT-2-small-shaped dir / read its safetensors" and row.value > 0
    assert "folded" in row.detail and "raw" in row.detail
