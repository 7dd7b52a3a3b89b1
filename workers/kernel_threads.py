"""Run one nogil numba kernel on several Python threads at once, instead of a `prange` loop.

Why: a kernel whose only parallel part is ``for t in prange(nthreads)`` around one thread's whole
work gains nothing from numba's parallel compiler, and its parfor lowering can cost most of the
kernel's compile: the reconstruction's `_candidates_kernel` compiled in 10.5 s as a plain kernel
and 22.5 s with the prange. Every fresh kernel cache pays that: a new node, a new version of the
kernels, the test suite's CI run. The same body compiled without ``parallel=True`` and run by
``nthreads`` threads (the kernel declared ``nogil=True``, so they run at once) does the same work.
Measure the speed before converting a kernel: skipgram's per-pair kernel ran ~20 % slower on Brown
as a plain function (docs/skipgram.md, "Compile time, second part"), so it keeps its prange.
"""
from __future__ import annotations

import threading
from collections.abc import Callable


def run_on_threads(work: Callable[[int], object], nthreads: int) -> None:
    """``work(t)`` for t in 0..nthreads-1, each on its own thread (t = 0 on this one), all at once;
    returns when every one has returned and re-raises the first exception any of them raised."""
    if nthreads <= 1:
        work(0)
        return
    errors: list[BaseException] = []

    def one(t: int) -> None:
        try:
            work(t)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors.append(e)

    others = [threading.Thread(target=one, args=(t,), name=f"kernel-{t}", daemon=True) for t in range(1, nthreads)]
    for th in others:
        th.start()
    one(0)
    for th in others:
        th.join()
    if errors:
        raise errors[0]
