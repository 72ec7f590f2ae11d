"""What every benchmark section shares: a row of the printout, timing, interleaved comparison, peak memory,
the benchmark's model and inputs (:class:`Context`), and the registry of sections (:data:`SECTIONS`)."""

from __future__ import annotations

import functools
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class Row:
    """One printed figure: a ratio (or a value) with its target."""

    section: str
    what: str
    value: float
    unit: str = "×"
    target: Optional[str] = None
    ok: Optional[bool] = None
    detail: str = ""

    def line(self) -> str:
        verdict = "" if self.ok is None else ("  ok" if self.ok else "  MISSED")
        target = f"  (target {self.target})" if self.target else ""
        detail = f"   [{self.detail}]" if self.detail else ""
        return f"{self.section:<8} {self.what:<58} {self.value:8.3f}{self.unit}{target}{verdict}{detail}"


def timed(fn: Callable, repeat: int = 1):
    """(result, best wall-clock seconds over ``repeat`` runs)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


@dataclass
class Ratio:
    """Subject over baseline, timed alternately: the median of the per-pair ratios and their spread.

    Adjacent runs see the same machine load, so each pair's ratio cancels most of the drift that makes
    one timing against one noise; the median of several pairs then holds still from run to run.
    """

    median: float
    low: float
    high: float
    subject_s: float
    baseline_s: float
    pairs: int

    def detail(self) -> str:
        return (f"median of {self.pairs} interleaved pairs, spread {self.low:.2f}–{self.high:.2f}; "
                f"{self.subject_s:.2f}s vs {self.baseline_s:.2f}s")


def compare(subject: Callable, baseline: Callable, pairs: int = 5, warmup: bool = True):
    """``(Ratio, subject's last result)``: ``subject`` and ``baseline`` run alternately ``pairs`` times
    (after one untimed run of each when ``warmup``), starting with the baseline."""
    if warmup:
        baseline()
        result = subject()
    ratios, sub, base = [], [], []
    for _ in range(pairs):
        _, b = timed(baseline)
        result, s = timed(subject)
        ratios.append(s / b)
        sub.append(s)
        base.append(b)
    return Ratio(statistics.median(ratios), min(ratios), max(ratios), statistics.median(sub), statistics.median(base),
                 pairs), result


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory(fn: Callable):
    """(result, peak resident memory in MB above what the process held when ``fn`` started).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so it works for
    successive measurements in one process on Linux.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _vm_hwm_mb()
    result = fn()
    return result, _vm_hwm_mb() - base


class Context:
    """What the sections share: one random GPT-2 small (HF and ours) and its inputs, built lazily."""

    def __init__(self, n_prompts: int = 16, n_pos: int = 256, seed: int = 0):
        self.n_prompts, self.n_pos, self.seed = n_prompts, n_pos, seed

    @functools.cached_property
    def hf_and_tokenizer(self):
        from ..testing import random_gpt2_small_hf

        return random_gpt2_small_hf(self.seed)

    @property
    def hf_model(self):
        return self.hf_and_tokenizer[0]

    @functools.cached_property
    def model(self):
        from ..loading import load

        hf_model, tok = self.hf_and_tokenizer
        # Built outside inference mode even when first asked for inside it: inference
        # tensors as weights would break analyses that track tensor versions.
        with torch.inference_mode(False):
            return load(hf_model, tokenizer=tok, fold_ln=True)

    def tokens(self, n_prompts: Optional[int] = None, n_pos: Optional[int] = None, seed: int = 0) -> torch.Tensor:
        """Random token ids ``[n_prompts, n_pos]`` with BOS first."""
        g = torch.Generator().manual_seed(seed)
        n, p = n_prompts or self.n_prompts, n_pos or self.n_pos
        toks = torch.randint(1, 50257, (n, p), generator=g)
        toks[:, 0] = 50256
        return toks

    @functools.lru_cache(maxsize=4)
    def hf_forward_seconds(self, n_prompts: int, n_pos: int) -> float:
        """Hugging Face eager forward (logits) of the batch: the 'plain forward pass' baseline."""
        toks = self.tokens(n_prompts, n_pos)
        with torch.inference_mode():
            return timed(lambda: self.hf_model(toks).logits)[1]


#: The benchmark model's context window (GPT-2 small's): the longest prompt a section can run.
N_CTX = 1024

#: section name -> function(ctx) -> list[Row]. Sections of the analyses register here.
SECTIONS: dict[str, Callable[[Context], list[Row]]] = {}


def section(name: str):
    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register
