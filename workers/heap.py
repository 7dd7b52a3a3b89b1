"""Giving a worker process's freed heap back to the system.

Why: a Ray worker process runs many tasks, one after another. glibc keeps the memory a task freed
inside its arenas when it was many allocations under the 1 MiB mmap threshold (tasks/runtime.py
WORKER_ALLOCATOR_ENV), and every later task on that worker then starts with it in its RSS: 180-300
MB after one task that cut a round of bucket pieces at S = 8 (docs/scaling.md section 9), where
gc.collect freed none of it and malloc_trim(0) returned it all (116 -> 423 -> 144 MB).
"""
from __future__ import annotations

import ctypes
import ctypes.util

_LIBC = ctypes.util.find_library("c")


def release_heap() -> None:
    """glibc's malloc_trim(0): hand the free pages of every arena back to the system. Costs
    milliseconds; a no-op where the C library has no malloc_trim (musl, macOS)."""
    try:
        ctypes.CDLL(_LIBC).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
