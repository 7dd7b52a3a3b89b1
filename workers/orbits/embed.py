"""An embedding from the 28 orbit-adjacency matrices (docs/orbits.md has the measurements behind
the choice). With f = log1p (orbits.transform) and rownorm making each row a distribution:

    combine=sum     X_1 = (sum_t rownorm(f(M_t))) R      R: [n, dim]
    combine=concat  X_1 = [ rownorm(f(M_t)) R ]_t        R: [n, dim_per_matrix], 28 blocks
    X = sum_j w_j P^j X_1       P = D^-1 A (FastRP's row normalisation), j = 0..len(weights)-1

R is FastRP's very sparse random projection (entry (i, j) a pure function of (seed, i, j)). Each
matrix row is the distribution over the nodes that share that orbit pair with u; the propagation
mixes in the neighbours' projections, as FastRP's powers do. Rows are independent (each row's
sums run in its own COO order), so row ranges project separately and concatenate to the same bits."""
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


@njit(nogil=True, cache=True)
def project_sum_kernel(rows, cols, kinds, counts, lo, hi, r_ptr, r_cols, r_vals, use_log, out):
    """out[u - lo] = sum_t sum_v (f(M_t[u, v]) / sum_v' f(M_t[u, v'])) R[v], R as CSR rows."""
    sums = np.zeros((hi - lo, NUM_PAIRS))
    for i in range(len(rows)):
        sums[rows[i] - lo, kinds[i]] += np.log1p(np.float64(counts[i])) if use_log else np.float64(counts[i])
    acc = np.zeros((hi - lo, out.shape[1]))
    for i in range(len(rows)):
        r = rows[i] - lo
        x = np.log1p(np.float64(counts[i])) if use_log else np.float64(counts[i])
        x /= sums[r, kinds[i]]
        c = cols[i]
        for p in range(r_ptr[c], r_ptr[c + 1]):
            acc[r, r_cols[p]] += x * r_vals[p]
    for r in range(hi - lo):
        for j in range(out.shape[1]):
            out[r, j] = acc[r, j]


def project_rows(coo: tuple, lo: int, hi: int, R: np.ndarray, transform: str, combine: str) -> np.ndarray:
    """Rows [lo, hi) of X_1 (float32) from those rows' COO (count.count_rows): [hi - lo, dim] for
    combine=sum, [hi - lo, 28 * dim_per_matrix] for concat. R: the dense projection [n, k]."""
    rows, cols, kinds, counts = coo
    use_log = transform == "log1p"
    if combine == "sum":
        out = np.zeros((hi - lo, R.shape[1]), dtype=np.float32)
        nz_rows, nz_cols = np.nonzero(R)
        r_ptr = np.zeros(R.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(nz_rows, minlength=R.shape[0]), out=r_ptr[1:])
        project_sum_kernel(rows, cols, kinds, counts, lo, hi, r_ptr, nz_cols.astype(np.int64),
                           R[nz_rows, nz_cols].astype(np.float64), use_log, out)
        return out
    out = np.zeros((hi - lo, NUM_PAIRS * R.shape[1]), dtype=np.float32)
    project_kernel(rows, cols, kinds, counts, lo, hi, np.ascontiguousarray(R, dtype=np.float64), use_log, out)
    return out
