"""Unit-length rows of an embedding table, built a block of rows at a time.

Why blocks: ``X / np.linalg.norm(X, axis=1, keepdims=True)`` on a whole table allocates three
table-sized temporaries (the norm's conjugate copy and squares, then the quotient) besides the
result. Ray workers give every array of 1 MiB or more its own mapping, returned on free
(tasks/runtime.py's MALLOC_MMAP_THRESHOLD_), so each temporary is paid again in page faults:
on deezer_europe (28,281 x 512) node classification's labelled set spent 0.47 s of system time
against 0.03 s of user time (docs/evaluation.md, sixth round). Each row's norm is the same
computation, so the result is bit for bit the whole-table one.

Why buffers allocated once per call (``unit_blocks``): a block's temporaries, allocated and freed
block after block, left a free heap top over the workers' MALLOC_TRIM_THRESHOLD_ (1 MiB), which
glibc gave back after every block, so each block faulted its pages in again (scoring 25,000 test
rows of deezer_europe a block at a time: 45,000 page faults, 0.05-0.08 s of system time).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BLOCK_BYTES = 1 << 19              # a block's widest temporary: under the workers' 1 MiB mmap threshold


def block_rows(d: int) -> int:
    """Rows per block of ``unit_blocks``: BLOCK_BYTES of float64 temporaries whatever the dtype."""
    return max(1, BLOCK_BYTES // (8 * max(1, d)))


def unit_blocks(X, rows: np.ndarray | None = None, dtype=np.float32,
                step: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, hi, block) for consecutive blocks of ``X[rows]`` (every row when None): ``block`` holds
    rows lo..hi - 1 as ``dtype``, each divided by its Euclidean norm (a zero row stays zero). The
    block is a buffer reused by the next step: copy what you keep. ``step``: rows per block
    (default ``block_rows``). The values are those of
    ``Y / np.where(n > 0, n, 1)`` with ``Y = X[rows].astype(dtype)`` and
    ``n = np.linalg.norm(Y, axis=1, keepdims=True)`` (the norm's own steps: squares, a row sum,
    a square root)."""
    X = np.asarray(X)
    count = X.shape[0] if rows is None else len(rows)
    d = X.shape[1]
    step = min(step or block_rows(d), max(count, 1))
    if rows is not None and count and (np.min(rows) < -X.shape[0] or np.max(rows) >= X.shape[0]):
        raise IndexError(f"row index out of range for {X.shape[0]} rows")
    raw = np.empty((step, d), dtype=X.dtype)
    val, sq, out = (np.empty((step, d), dtype=dtype) for _ in range(3))
    nrm = np.empty(step, dtype=dtype)
    for lo in range(0, count, step):
        hi = min(count, lo + step)
        m = hi - lo
        if rows is None:
            val[:m] = X[lo:hi]
        else:
            np.take(X, rows[lo:hi], axis=0, out=raw[:m], mode="wrap")      # in range (checked): unbuffered
            val[:m] = raw[:m]
        np.multiply(val[:m], val[:m], out=sq[:m])
        np.add.reduce(sq[:m], axis=1, out=nrm[:m])
        np.sqrt(nrm[:m], out=nrm[:m])
        nrm[:m][~(nrm[:m] > 0)] = 1.0                                  # np.where(n > 0, n, 1)
        np.divide(val[:m], nrm[:m, None], out=out[:m])
        yield lo, hi, out[:m]


def unit_rows(X, rows: np.ndarray | None = None, dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """``X[rows]`` (every row when None) as ``dtype``, each row divided by its Euclidean norm (see
    ``unit_blocks``), in one C-contiguous array, or written into ``out`` (count x d of ``dtype``,
    e.g. the first d columns of a wider design: no copy)."""
    X = np.asarray(X)
    count = X.shape[0] if rows is None else len(rows)
    out = np.empty((count, X.shape[1]), dtype=dtype) if out is None else out
    for lo, hi, block in unit_blocks(X, rows, dtype):
        out[lo:hi] = block
    return out
