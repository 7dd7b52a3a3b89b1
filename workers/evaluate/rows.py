"""Unit-length rows of an embedding table, built a block of rows at a time.

Why blocks: ``X / np.linalg.norm(X, axis=1, keepdims=True)`` on a whole table allocates three
table-sized temporaries (the norm's conjugate copy and squares, then the quotient) besides the
result. Ray workers give every array of 1 MiB or more its own mapping, returned on free
(tasks/runtime.py's MALLOC_MMAP_THRESHOLD_), so each temporary is paid again in page faults:
on deezer_europe (28,281 x 512) node classification's labelled set spent 0.47 s of system time
against 0.03 s of user time (docs/evaluation.md, sixth round). Each row's norm is the same
computation, so the result is bit for bit the whole-table one.

Why buffers allocated once per call (`RowNormaliser`): a block's temporaries, allocated and freed
block after block, left a free heap top over the workers' MALLOC_TRIM_THRESHOLD_ (1 MiB), which
glibc gave back after every block, so each block faulted its pages in again (scoring 25,000 test
rows of deezer_europe a block at a time: 45,000 page faults, 0.05-0.08 s of system time).
"""
from __future__ import annotations

import numpy as np

BLOCK_BYTES = 1 << 19              # a block's widest temporary: under the workers' 1 MiB mmap threshold


def block_rows(d: int) -> int:
    """Rows per block of `RowNormaliser`: BLOCK_BYTES of float64 temporaries whatever the dtype."""
    return max(1, BLOCK_BYTES // (8 * max(1, d)))


class RowNormaliser:
    """Normalises up to ``step`` rows of ``X`` at a time through buffers allocated once: the values
    of ``Y / np.where(n > 0, n, 1)`` with ``Y = X[rows].astype(dtype)`` and
    ``n = np.linalg.norm(Y, axis=1, keepdims=True)`` (the norm's own steps: squares, a row sum,
    a square root), computed in ``dtype`` and written into any float array."""

    def __init__(self, X, dtype=np.float32, step: int | None = None):
        self.X = np.asarray(X)
        d = self.X.shape[1]
        self.step = step or block_rows(d)
        self.raw = np.empty((self.step if self.X.dtype != dtype else 0, d), dtype=self.X.dtype)
        self.val, self.sq = (np.empty((self.step, d), dtype=dtype) for _ in range(2))
        self.nrm = np.empty(self.step, dtype=dtype)

    def into(self, rows: np.ndarray | slice, out: np.ndarray) -> np.ndarray:
        """``out`` (at most ``step`` rows; a view of a wider or narrower-typed array is fine) = the
        unit rows of ``X[rows]`` (an index array or a slice); a float32 ``out`` of float64 rows gets
        them rounded, as ``astype`` would."""
        m = out.shape[0]
        val, sq, nrm = self.val[:m], self.sq[:m], self.nrm[:m]
        same = self.X.dtype == val.dtype
        if isinstance(rows, slice):
            if same:
                val = self.X[rows]                                              # read in place
            else:
                val[...] = self.X[rows]
        else:
            if m and (np.min(rows) < -self.X.shape[0] or np.max(rows) >= self.X.shape[0]):
                raise IndexError(f"row index out of range for {self.X.shape[0]} rows")
            np.take(self.X, rows, axis=0, out=val if same else self.raw[:m], mode="wrap")   # in range: unbuffered
            if not same:
                val[...] = self.raw[:m]
        np.multiply(val, val, out=sq)
        np.add.reduce(sq, axis=1, out=nrm)
        np.sqrt(nrm, out=nrm)
        nrm[~(nrm > 0)] = 1.0                                                   # np.where(n > 0, n, 1)
        return np.divide(val, nrm[:, None], out=out)


def unit_rows(X, rows: np.ndarray | None = None, dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """``X[rows]`` (every row when None) as ``dtype``, each row divided by its Euclidean norm (a
    zero row stays zero; see `RowNormaliser`), in one C-contiguous array, or written into ``out``
    (count x d, e.g. the first d columns of a wider design, or float32 rows computed in float64)."""
    X = np.asarray(X)
    count = X.shape[0] if rows is None else len(rows)
    out = np.empty((count, X.shape[1]), dtype=dtype) if out is None else out
    norm = RowNormaliser(X, dtype, min(block_rows(X.shape[1]), max(count, 1)))
    for lo in range(0, count, norm.step):
        hi = min(count, lo + norm.step)
        norm.into(slice(lo, hi) if rows is None else rows[lo:hi], out[lo:hi])
    return out
