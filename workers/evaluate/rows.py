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

from embedlake.workers.kernel_inputs import read_only

BLOCK_BYTES = 1 << 19              # a block's widest temporary: under the workers' 1 MiB mmap threshold


def block_rows(d: int, itemsize: int = 8) -> int:
    """Rows per block of `RowNormaliser`: BLOCK_BYTES of temporaries of ``itemsize`` bytes (float64
    unless told: whatever the dtype)."""
    return max(1, BLOCK_BYTES // (itemsize * max(1, d)))


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
        val, nrm = self.val[:m], self.nrm[:m]
        same = self.X.dtype == val.dtype
        if isinstance(rows, slice):
            if same:
                val = self.X[rows]                                              # read in place
            else:
                val[...] = self.X[rows]
        else:
            take_rows(self.X, rows, val if same else self.raw[:m])
            if not same:
                val[...] = self.raw[:m]
        self.norms_of(val, nrm)
        return np.divide(val, nrm[:, None], out=out)

    def norms_of(self, val: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out`` = the norms of rows ``val`` (in ``dtype``; at most ``step`` rows) as `into` divides
        by them: a zero row's norm is 1."""
        sq = np.multiply(val, val, out=self.sq[:val.shape[0]])
        np.add.reduce(sq, axis=1, out=out)
        np.sqrt(out, out=out)
        out[~(out > 0)] = 1.0                                                   # np.where(n > 0, n, 1)
        return out


def take_rows(X: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = X[rows]`` (rows along axis 0, each index in range or IndexError), unbuffered.
    Why not ``np.take(X, rows, axis=0, out=out)``: with its default mode ("raise") numpy fills a
    temporary as large as ``out`` and copies it over; at 1 MiB or more that temporary is a fresh
    mapping in a Ray worker (tasks/runtime.py's MALLOC_MMAP_THRESHOLD_), faulted in page by page
    on every call (the spectrum sample's Gram blocks: 1,800 page faults and 5 ms per call on
    deezer_europe, against 1 ms; issue 22, twelfth round). With the indices checked first, "wrap"
    takes the same rows without the temporary."""
    n = X.shape[0]
    if len(rows) and (np.min(rows) < -n or np.max(rows) >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.take(X, rows, axis=0, out=out, mode="wrap")


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


def row_norms(X, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """The norms `unit_rows` divides the rows ``X[rows]`` by (in ``dtype``; a zero row's is 1), bit
    for bit, a block at a time: what `TableRows` needs to read a table's unit rows in place."""
    X = np.asarray(X)
    whole = 2 * len(rows) >= X.shape[0]            # most of the table: every row's norm, read in order
    count = X.shape[0] if whole else len(rows)
    step = block_rows(X.shape[1], max(np.dtype(dtype).itemsize, X.dtype.itemsize))   # float32: 256 rows of 512
    norm = RowNormaliser(X, dtype, min(step, max(count, 1)))
    out = np.empty(count, dtype=dtype)
    for lo in range(0, count, norm.step):
        hi = min(count, lo + norm.step)
        val = norm.val[:hi - lo]
        if whole and X.dtype == val.dtype:
            val = X[lo:hi]                                                      # read in place
        elif X.dtype == val.dtype:
            take_rows(X, rows[lo:hi], val)
        else:
            val[...] = X[lo:hi] if whole else X[rows[lo:hi]]
        norm.norms_of(val, out[lo:hi])
    return out[rows] if whole else out


FORWARD, TRANSPOSED, HESSIAN = 0, 1, 2          # row_kernels.design_pass's modes
DENSE_SHARE = 0.25                 # from this share of the table's rows, `TableRows` streams the whole table


class TableRows:
    """The float32 design rows ``[table[r] / norm_r, 1]`` of table rows ``rows`` (norms None: the rows
    as they are), read from the table in place: ``A @ B``, ``A.T @ V``, `hessian` and ``A[lo:hi]`` as
    for the design array `array()` would build, in float32.

    Why (issue 22, ninth round): node classification's base design was a normalised float32 copy
    of every labelled row, 58 MB on deezer_europe (28,281 x 513), and a fresh worker faulted it in
    page by page besides the table it was copied from (about a third of node classification's
    cost there).

    How (issue 22, tenth round): numba kernels (`row_kernels`) read each design row from the table
    once per product, every column of the operand while the row is in cache, and a Newton-CG
    step's two products in one pass (`hessian`). From `DENSE_SHARE` of the table's rows they read
    the whole table in order and give the other rows weight 0: skipping them, in table order too,
    cost 1.6-1.9 times as much (deezer_europe, 0.5 and 0.9 of the rows: 4.3-5.0 ms against 2.6-3.0
    per fused step; the prefetcher streams an unbroken read). Below it they read only their rows,
    in table order. The values differ from the gathered array's BLAS products by float32 rounding
    (the quotient is taken after the dot product, not before; the transposed sums go into float64
    every 256 rows)."""

    dtype = np.dtype(np.float32)

    def __init__(self, table: np.ndarray, rows: np.ndarray, norms: np.ndarray | None):
        self.table, self.rows, self.norms = table, rows, norms
        self.shape = (int(rows.size), int(table.shape[1]) + 1)
        self._plan = None

    def __getitem__(self, key) -> TableRows:
        """The design rows ``key`` (a slice or an index array of positions) as a `TableRows`."""
        return TableRows(self.table, self.rows[key], None if self.norms is None else self.norms[key])

    def __matmul__(self, B: np.ndarray) -> np.ndarray:
        return self.product(B)

    @property
    def T(self) -> TransposedRows:
        return TransposedRows(self)

    @property
    def dense(self) -> bool:
        """Whether the kernels stream the whole table (else they read this design's rows only)."""
        return self.rows.size >= DENSE_SHARE * self.table.shape[0]

    def plan(self) -> tuple:
        """The kernels' read-only arguments (table, table rows read in order, the design position of
        each or -1, each design row's norm), built on first use."""
        if self._plan is None:
            table = np.ascontiguousarray(self.table, dtype=np.float32)
            n = self.rows.size
            if self.dense:
                trows = np.arange(table.shape[0], dtype=np.int64)
                tpos = np.full(table.shape[0], -1, dtype=np.int64)
                tpos[self.rows] = np.arange(n)
            else:
                tpos = np.argsort(self.rows, kind="stable").astype(np.int64, copy=False)
                trows = np.asarray(self.rows, dtype=np.int64)[tpos]
            norms = np.ones(n, dtype=np.float32) if self.norms is None else self.norms
            self._plan = read_only(table, trows, tpos, np.ascontiguousarray(norms, dtype=np.float32))
        return self._plan

    def product(self, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """This design times B ((d + 1) x c or d + 1, rounded to float32), float32, into ``out`` when given."""
        B = np.asarray(B)
        Bt = np.ascontiguousarray(B.reshape(B.shape[0], -1).T, dtype=np.float32)
        res = out if out is not None and out.flags.c_contiguous else np.empty((self.rows.size, Bt.shape[0]), np.float32)
        self.run(FORWARD, Bt, Bt, res, np.empty((0, 0)))
        if out is not None and res is not out:
            out[...] = res
            res = out
        return res.reshape(-1) if B.ndim == 1 and out is None else res

    def hessian(self, D: np.ndarray, P: np.ndarray, xp: np.ndarray) -> np.ndarray:
        """A Newton-CG step's products in one pass: ``xp`` (n x c, float32) = this design times P
        ((d + 1) x c, rounded to float32), and the result ((d + 1) x c, float64) = the design's
        transpose times ``D * xp`` (D: n x c float32 weights)."""
        Pt = np.ascontiguousarray(P.T, dtype=np.float32)
        res = xp if xp.flags.c_contiguous else np.empty(xp.shape, np.float32)
        out = np.empty((Pt.shape[0], self.shape[1]))
        self.run(HESSIAN, np.ascontiguousarray(D, dtype=np.float32), Pt, res, out)
        if res is not xp:
            xp[...] = res
        return out.T

    def run(self, mode: int, A: np.ndarray, B: np.ndarray, xp: np.ndarray, out: np.ndarray) -> None:
        """`row_kernels.design_pass` over this design (imported here: see row_kernels)."""
        from embedlake.workers.evaluate.row_kernels import design_pass
        design_pass(*self.plan(), *read_only(A, B), xp, out, mode)

    def gram(self) -> np.ndarray:
        """The Gram matrix X.T @ X of these design rows (float32, (d + 1) x (d + 1)), a block of rows
        at a time: the blocks' products summed, each block gathered into one buffer under the
        workers' 1 MiB mmap threshold (`array()` of a 4,096-row spectrum sample was 8.4 MB, faulted in
        page by page in a worker; issue 22, tenth round)."""
        d = self.table.shape[1]
        step = max(1, ((1 << 20) - (1 << 12)) // (4 * (d + 1)))
        buf = np.empty((min(step, max(self.rows.size, 1)), d + 1), dtype=np.float32)
        raw = np.empty((buf.shape[0], d), dtype=np.float32)          # contiguous: `take_rows` unbuffered
        G, part = np.zeros((d + 1, d + 1), dtype=np.float32), np.empty((d + 1, d + 1), dtype=np.float32)
        for lo in range(0, self.rows.size, step):
            hi = min(self.rows.size, lo + step)
            block = buf[:hi - lo]
            rows = take_rows(self.table, self.rows[lo:hi], raw[:hi - lo])
            if self.norms is not None:
                np.divide(rows, self.norms[lo:hi, None], out=block[:, :d])
            else:
                block[:, :d] = rows
            block[:, d] = 1.0
            G += np.matmul(block.T, block, out=part)
        return G

    def array(self) -> np.ndarray:
        """The design rows as one float32 array (each row as `unit_rows` computes it when normalised)."""
        out = np.empty(self.shape, dtype=np.float32)
        step = block_rows(self.table.shape[1])
        for lo in range(0, self.rows.size, step):
            hi = min(self.rows.size, lo + step)
            take_rows(self.table, self.rows[lo:hi], out[lo:hi, :-1])
            if self.norms is not None:
                np.divide(out[lo:hi, :-1], self.norms[lo:hi, None], out=out[lo:hi, :-1])
        out[:, -1] = 1.0
        return out


class TransposedRows:
    """``TableRows.T``: its products ``A.T @ V`` without a transposed copy."""

    def __init__(self, rows: TableRows):
        self.of = rows
        self.shape = rows.shape[::-1]

    def __matmul__(self, V: np.ndarray) -> np.ndarray:
        return self.product(V)

    def product(self, V: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The design's transpose times V (n x c or n; each value rounded to float32 as a float32
        operand's would be): (d + 1) x c, float64, into ``out`` when given."""
        V = np.asarray(V)
        V2 = np.ascontiguousarray(V.reshape(V.shape[0], -1), dtype=np.float32)
        res = np.empty((V2.shape[1], self.shape[0]))
        self.of.run(TRANSPOSED, V2, V2, np.empty((0, 0), np.float32), res)
        if out is not None:
            out[...] = res.T
            return out
        return res[0] if V.ndim == 1 else res.T
