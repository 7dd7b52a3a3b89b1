"""An embedding from the 28 orbit-adjacency matrices (docs/orbits.md has the measurements behind
the choice):

    X_1 = [ rownorm(f(M_t)) R ]  for t = 0..27, concatenated      f = log1p (or identity)
    X   = sum_j w_j P^j X_1       P = D^-1 A (FastRP's row normalisation), j = 0..len(weights)-1

R is FastRP's very sparse random projection [n, dim_per_matrix] (entry (i, j) a pure function of
(seed, i, j)), shared by all 28 matrices. Each matrix becomes a distribution over the nodes that
share that orbit pair with u, projected to a few dimensions; the propagation mixes in the
neighbours' projections, as FastRP's powers do. Rows are independent, so row ranges project
separately and concatenate to the same bits."""
from __future__ import annotations

import numpy as np
from numba import njit

from embedlake.workers.orbits.pairs import NUM_PAIRS


@njit(nogil=True, cache=True)
def project_kernel(rows, cols, kinds, counts, lo, hi, R, use_log, out):
    """out[u - lo, t * k:(t + 1) * k] = sum_v f(M_t[u, v]) R[v] / sum_v f(M_t[u, v]), in float64."""
    k = R.shape[1]
    sums = np.zeros((hi - lo, NUM_PAIRS))
    acc = np.zeros((hi - lo, NUM_PAIRS * k))
    for i in range(len(rows)):
        r = rows[i] - lo
        t = kinds[i]
        x = np.log1p(np.float64(counts[i])) if use_log else np.float64(counts[i])
        sums[r, t] += x
        base = t * k
        c = cols[i]
        for j in range(k):
            acc[r, base + j] += x * R[c, j]
    for r in range(hi - lo):
        for t in range(NUM_PAIRS):
            if sums[r, t] > 0:
                inv = 1.0 / sums[r, t]
                for j in range(k):
                    out[r, t * k + j] = acc[r, t * k + j] * inv


def project_rows(coo: tuple, lo: int, hi: int, R: np.ndarray, transform: str) -> np.ndarray:
    """Rows [lo, hi) of X_1 (float32 [hi - lo, 28 * k]) from those rows' COO (count.count_rows)."""
    rows, cols, kinds, counts = coo
    out = np.zeros((hi - lo, NUM_PAIRS * R.shape[1]), dtype=np.float32)
    project_kernel(rows, cols, kinds, counts, lo, hi, np.ascontiguousarray(R, dtype=np.float64),
                   transform == "log1p", out)
    return out
