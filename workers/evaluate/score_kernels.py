"""The numba kernel of the reconstruction's scores (`geometry.ChunkScores`): float64 sums of float32
rows' products, rounded to float32, for a block of query rows against a chunk of table rows.

Why not BLAS (issue 22, fifteenth round): the scores were the float64 BLAS product of the query rows
(widened float32) with the chunk's rows widened into a float64 buffer, rounded to float32. On
deezer_europe (50 queries, 28,281 x 512) that cost 51-58 ms a call: the widening and normalising of
every row into a 4 MB buffer, then OpenBLAS packing that buffer again for only 50 query rows (36-39
GFLOP/s against 52 on large square products). This kernel reads the float32 rows in place (dividing
by the row norms when given), widens four at a time into a small buffer that stays in L1, and sums
4 x 4 (query, row) products per pass over d: 36-38 ms, the same float32 scores on that table (every
one of its 1,414,050).

The products of two float32 numbers are exact in float64, so a score's only rounding is its float64
sum (in an order numba may vectorise: ``fastmath`` allows reassociation and fused multiply-adds, no
assumption about NaN or infinities), then the float32 rounding: the float32 scores differ from any
other float64 summation order's only where a float32 rounding boundary falls within the sums'
few-ulp spread. Every (query, row) pair is summed by the same instructions whatever its position in
the chunk or the block, so identical rows get identical scores (FastRP tables have thousands), which
the BLAS product did not guarantee.
"""
from __future__ import annotations

import numba
import numpy as np

FAST = {"reassoc", "contract"}
QUERY_STEP = 4                     # query rows per pass over d (`chunk_scores`): pad Uq to a multiple


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def chunk_scores(Uq, X, first, a, b, norms, S, rb):
    """S[i, j] = the float32 rounding of sum_k Uq[i, k] * r_j[k], summed in float64, for every query
    row i of Uq (float64, rows a multiple of QUERY_STEP) and chunk position j < S.shape[1] (a multiple
    of 4): r_j = X[first + j - a] (float32; divided by norms[first + j - a] in float32 when ``norms``
    is not empty) for a <= j < b, zero elsewhere. ``rb``: a 4 x d float64 buffer."""
    nq, d = Uq.shape
    for j0 in range(0, S.shape[1], 4):
        for t in range(4):
            j = j0 + t
            if j < a or j >= b:
                for k in range(d):
                    rb[t, k] = 0.0
                continue
            x = X[first + j - a]
            if norms.size:
                nrm = norms[first + j - a]
                for k in range(d):
                    rb[t, k] = np.float64(x[k] / nrm)
            else:
                for k in range(d):
                    rb[t, k] = np.float64(x[k])
        r0, r1, r2, r3 = rb[0], rb[1], rb[2], rb[3]
        for i in range(0, nq, 4):
            q0, q1, q2, q3 = Uq[i], Uq[i + 1], Uq[i + 2], Uq[i + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = 0.0
            for k in range(d):
                u0, u1, u2, u3 = q0[k], q1[k], q2[k], q3[k]
                v0, v1, v2, v3 = r0[k], r1[k], r2[k], r3[k]
                s00 += u0 * v0
                s01 += u0 * v1
                s02 += u0 * v2
                s03 += u0 * v3
                s10 += u1 * v0
                s11 += u1 * v1
                s12 += u1 * v2
                s13 += u1 * v3
                s20 += u2 * v0
                s21 += u2 * v1
                s22 += u2 * v2
                s23 += u2 * v3
                s30 += u3 * v0
                s31 += u3 * v1
                s32 += u3 * v2
                s33 += u3 * v3
            S[i, j0], S[i, j0 + 1], S[i, j0 + 2], S[i, j0 + 3] = s00, s01, s02, s03
            S[i + 1, j0], S[i + 1, j0 + 1], S[i + 1, j0 + 2], S[i + 1, j0 + 3] = s10, s11, s12, s13
            S[i + 2, j0], S[i + 2, j0 + 1], S[i + 2, j0 + 2], S[i + 2, j0 + 3] = s20, s21, s22, s23
            S[i + 3, j0], S[i + 3, j0 + 1], S[i + 3, j0 + 2], S[i + 3, j0 + 3] = s30, s31, s32, s33
