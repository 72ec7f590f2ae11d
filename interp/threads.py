"""One thread for small, many, memory-bound operations on a machine whose cores are shared."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread (the previous count is restored on exit, error or not).

    Small batched LAPACK calls (thin QRs, ``d_head``-sized SVDs and eigensolves) and the head
    classifier's reductions (a few dozen small operations per layer) are too small to gain from
    threads. On a machine whose cores are shared (a laptop, a CI runner), every multi-threaded
    operation waits at a barrier for a thread the OS may have descheduled: measured here with 2
    threads under load, GPT-2 small's 144 OV spectra took 4-30 s instead of 0.2 s, and the spread
    reduction 250 ms per layer instead of 28 ms. On an idle machine one thread costs at most these
    operations' own parallel speed-up; the forward pass itself (the matmuls) keeps every thread.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
