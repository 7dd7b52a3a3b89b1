"""Giving a worker process's freed heap back to the system.

Why: a Ray worker process runs many tasks, one after another. glibc keeps the memory a task freed
inside its arenas when it was many allocations under the 1 MiB mmap threshold (tasks/runtime.py
WORKER_ALLOCATOR_ENV), and every later task on that worker then starts with it in its RSS: 180-300
MB after one task that cut a round of bucket pieces at S = 8 (docs/scaling.md section 9), where
gc.collect freed none of it and malloc_trim(0) returned it all (116 -> 423 -> 144 MB).

`task_heap`: the other side, within one task that allocates and frees many mid-sized arrays: glibc
keeps and reuses their pages until the task ends, then hands them back.
"""
from __future__ import annotations

import ctypes
import functools
import os
from contextlib import contextmanager


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    """The C library's functions, through the symbols the process has loaded (dlopen(NULL)).

    Why not ``ctypes.util.find_library("c")`` (issue 22, fifteenth round): on Linux it runs
    ``ldconfig -p`` in a child process, a fork of the whole worker (250 MB in the figures task:
    4.2 ms of the worker's CPU at import, and the child's)."""
    return ctypes.CDLL(None)


def release_heap() -> None:
    """glibc's malloc_trim(0): hand the free pages of every arena back to the system. Costs
    milliseconds; a no-op where the C library has no malloc_trim (musl, macOS)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # glibc's mallopt parameters
TASK_MMAP_THRESHOLD = 32 << 20                        # `task_heap`: arrays below this come from the heap


@contextmanager
def task_heap():
    """Within: glibc serves arrays under 32 MiB from its heap and keeps the pages a freed one leaves
    for the next; after: the worker's own thresholds again (MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_, tasks/runtime.py) and the free heap handed back (`release_heap`). A
    no-op where those variables are not set (not a worker this project started) or the C library
    has no mallopt.

    Why (issue 22, twelfth round): with the workers' 1 MiB thresholds every array of 1 MiB or more
    gets a mapping of its own, unmapped when freed, and a heap top over 1 MiB is trimmed, so one
    task's temporaries (node classification's Gram blocks and norms, the reconstruction's score
    chunks, bucket tables, numba's arrays) are faulted in page by page again and again: the
    evaluation's figures task on deezer_europe took 9,300-10,100 page faults, 4,660 inside this,
    at about 2.2 µs each on the development machine, with the same peak and final resident size
    (282-283 and 262-264 MB). The thresholds are for what stays between tasks; this keeps them
    there."""
    try:
        mmap_at, trim_at = (int(os.environ[k]) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
        mallopt = _libc().mallopt
    except (KeyError, ValueError, OSError, AttributeError, TypeError):
        mallopt = None
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, max(mmap_at, TASK_MMAP_THRESHOLD))
    mallopt(M_TRIM_THRESHOLD, max(trim_at, 1 << 30))
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, mmap_at)
        mallopt(M_TRIM_THRESHOLD, trim_at)
        release_heap()
