"""Start-up and loading: what a command costs before it does anything, and what loading costs in memory.

* ``startup`` — whole-process wall times (median of 5, the commands interleaved so load from
  other processes hits them alike) of ``import interp``, ``interp heads`` and ``interp lens`` on
  the bundled model, as ratios to ``python -c "import torch"`` (the floor: every command needs
  torch); and, in this process, loading a GPT-2-small-shaped directory as a ratio to reading its
  safetensors into tensors with ``safetensors.torch.load_file``.
* ``family`` — peak resident memory of loading GPT-2-medium's shape (every member of the family
  with ``INTERP_BENCH_FAMILY=all``), each in a fresh process, against the size of its weights:
  loading must never hold two full copies.

The subprocesses import this checkout of interp (``PYTHONPATH``), offline.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .core import Context, Row, section

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 5


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"bench startup: {' '.join(cmd[1:])} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return seconds


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=None)  # a bar on a terminal only


@section("startup")
def bench_startup(ctx: Context) -> list[Row]:
    """Whole-process start-up of the everyday commands vs ``import torch``; loading vs reading the file."""
    py, env = sys.executable, _env()
    commands = {
        "python -c 'import torch'": [py, "-c", "import torch"],
        "python -c 'import interp'": [py, "-c", "import interp"],
        "interp heads": [py, "-m", "interp.cli", "heads"],                 # on interp-tiny, the default model
        "interp lens 'some text'": [py, "-m", "interp.cli", "lens", "some text"],
    }
    targets = {"python -c 'import interp'": 1.3, "interp heads": 1.8, "interp lens 'some text'": 1.8}
    times: dict[str, list[float]] = {k: [] for k in commands}
    with _progress(len(commands) * (REPEATS + 1), "startup") as bar:
        for k, cmd in commands.items():  # once first: the page cache, compiled bytecode
            _wall(cmd, env)
            bar.update()
        for _ in range(REPEATS):
            for k, cmd in commands.items():
                times[k].append(_wall(cmd, env))
                bar.update()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["python -c 'import torch'"]
    rows = [Row("startup", f"{k} / python -c 'import torch'", med[k] / base, target=f"≤ {t}",
                ok=med[k] / base <= t, detail=f"median of {REPEATS}: {med[k]:.2f}s vs {base:.2f}s")
            for k, t in targets.items()]
    rows.append(_load_row())
    return rows


def _load_row() -> Row:
    """interp.load of a GPT-2-small-shaped directory vs reading its safetensors into tensors, in-process.

    ``safetensors.torch.load_file`` maps the file lazily (it returns in milliseconds having read
    nothing); the baseline forces the read by copying each tensor into memory, as any use would.
    """
    import torch
    from safetensors.torch import load_file

    from ..loading import load
    from ..testing import GPT2_FAMILY, write_random_gpt2_dir

    with tempfile.TemporaryDirectory() as d:
        write_random_gpt2_dir(d, **GPT2_FAMILY["gpt2"])
        weights = Path(d) / "model.safetensors"

        def read():
            return {k: v.clone() for k, v in load_file(weights).items()}

        with torch.inference_mode(False):
            load(d), load(d, fold_ln=False), read()  # warm: imports, page cache
            times: dict[str, list[float]] = {"read": [], "folded": [], "raw": [], "mapped": []}
            for _ in range(REPEATS):  # interleaved
                for key, fn in (("read", read), ("folded", lambda: load(d)), ("raw", lambda: load(d, fold_ln=False)),
                                ("mapped", lambda: load_file(weights))):
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
    r, f, w, m = (statistics.median(times[k]) for k in ("read", "folded", "raw", "mapped"))
    return Row("startup", "load GPT-2-small-shaped dir / read its safetensors", f / r, target="≤ 2",
               ok=f / r <= 2, detail=f"median of {REPEATS}: {f:.3f}s folded, {w:.3f}s raw, vs {r:.3f}s "
                                     f"load_file + copy ({m:.3f}s load_file alone, lazily mapped)")


# ---------------------------------------------------------------------------- memory
_MEASURE = """
import gc, sys, time
import interp, interp.loading, interp.folding, interp.tokenizer, torch
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
gc.collect()
before = rss('VmRSS:')
t0 = time.perf_counter()
model = interp.load(sys.argv[1], fold_ln=sys.argv[2] == '1')
seconds = time.perf_counter() - t0
print(before, rss('VmHWM:'), rss('VmRSS:'), seconds)
"""


@section("family")
def bench_family(ctx: Context) -> list[Row]:
    """Peak RSS of loading GPT-2-medium's shape (the whole family with INTERP_BENCH_FAMILY=all) vs its weights' size."""
    from ..testing import GPT2_FAMILY, write_random_gpt2_dir

    names = list(GPT2_FAMILY) if os.environ.get("INTERP_BENCH_FAMILY") == "all" else ["gpt2-medium"]
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            write_random_gpt2_dir(d, **GPT2_FAMILY[name])
            size_mb = (Path(d) / "model.safetensors").stat().st_size / 2**20
            for fold in (True, False):
                out = subprocess.run([sys.executable, "-c", _MEASURE, d, "1" if fold else "0"], capture_output=True,
                                     text=True, env=_env(), cwd=tempfile.gettempdir())
                if out.returncode != 0:
                    raise RuntimeError(f"bench family: loading {name} failed: {out.stderr[-500:]}")
                before, peak, after, seconds = map(float, out.stdout.split())
                ratio = (peak - before) / size_mb
                rows.append(Row(
                    "family", f"{name}: peak RSS of loading (fold_ln={fold}) / weights' size", ratio,
                    target="< 2 (never two copies)", ok=ratio < 2,
                    detail=f"peak {peak - before:.0f} MB above the {before:.0f} MB before loading, kept "
                           f"{after - before:.0f} MB; weights {size_mb:.0f} MB; {seconds:.1f}s",
                ))
    return rows
