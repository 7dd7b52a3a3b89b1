"""numba kernels of the design products `TableRows` runs on a table in place (node classification).

A design row is ``x_i = [table[r] / norm_i, 1]`` for table row r of the design's rows. Each kernel
reads the table rows ``trows`` (ascending, so the reads stream) once per call, design row
``tpos[o]`` from ``trows[o]`` (-1: not a design row, weight 0; `TableRows.plan` says when the
whole table is read), and handles every column of its operand while a row is in cache:

``X @ B`` (float32 scores), ``X.T @ V`` (float64), and both products of a Newton-CG step,
``xp = X @ P`` and ``X.T @ (D * xp)``, in one pass: each row is read once where two separate
products read it twice (`design_pass`).

Why (issue 22, tenth round): the products over the table in place (`TableRows` before) read the
whole table (28,281 x 512 float32, 58 MB on deezer_europe) for every matrix-vector product,
whatever share of it the fit trains on, and a Newton-CG step made two of them: the 0.5 and 0.9
fits' 30 passes were about half of node classification's CPU. Sums run in float32 (the
products were float32 before too) in an order that numba may vectorise (``fastmath`` allows
reassociation and fused multiply-adds only: no assumption about NaN or infinities); the
transposed sums are added into float64 every `FLUSH_ROWS` rows. Deterministic for a given
machine and build, and within float32 rounding of the BLAS products they replace.

Imported by `TableRows` when it first multiplies, never at module import: classify.py is imported
by the pipeline's driver, which has no other use for numba (its import is 0.12-0.17 CPU-s).
"""
from __future__ import annotations

import numba
import numpy as np

FAST = {"reassoc", "contract"}
FLUSH_ROWS = 256                   # transposed sums: float32 over this many rows, then into float64


FORWARD, TRANSPOSED, HESSIAN = 0, 1, 2          # `design_pass` modes


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def design_pass(table, trows, tpos, norms, A, B, xp, out, mode):
    """One pass over the table rows ``trows`` (design row tpos[o] of trows[o]; tpos < 0: read and
    weighted 0), by ``mode`` (one kernel, so a fresh worker loads one from numba's cache, not three:
    3-8 ms each):

    * FORWARD: xp[i, j] = x_i . A[j] (float32; A = B transposed, c x (d + 1));
    * TRANSPOSED: out[j] = X.T @ A[:, j] (A: n x c float32; out float64, c x (d + 1), overwritten);
    * HESSIAN: a Newton-CG step's two products, xp[i, j] = x_i . B[j] (B = P transposed) and
      out[j] = X.T @ (A[:, j] * xp[:, j]) (A = the weights D, n x c float32).

    Transposed sums run in float32 per `FLUSH_ROWS` rows, then go into float64."""
    d = table.shape[1]
    c = out.shape[0] if mode != FORWARD else A.shape[0]
    acc = np.zeros((c, d), dtype=np.float32)
    if mode != FORWARD:
        out[...] = 0.0
    for o in range(trows.size):
        i = tpos[o]
        x = table[trows[o]]
        nrm = norms[i] if i >= 0 else np.float32(1.0)
        for j in range(c):
            y = np.float32(0.0)
            if mode == TRANSPOSED:
                if i >= 0:
                    y = A[i, j]
                    out[j, d] += y
                    y = y / nrm
            else:
                p = A[j] if mode == FORWARD else B[j]
                s = np.float32(0.0)
                for k in range(d):
                    s += x[k] * p[k]
                if i >= 0:
                    v = s / nrm + p[d]
                    xp[i, j] = v
                    if mode == HESSIAN:
                        y = A[i, j] * v
                        out[j, d] += y
                        y = y / nrm
            if mode != FORWARD:
                a = acc[j]
                for k in range(d):
                    a[k] += x[k] * y
        if mode != FORWARD and ((o + 1) % FLUSH_ROWS == 0 or o + 1 == trows.size):
            for j in range(c):
                for k in range(d):
                    out[j, k] += acc[j, k]
                    acc[j, k] = 0.0
