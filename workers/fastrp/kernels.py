"""FastRP (Chen et al. 2019): embeddings as a weighted sum of S^k R, with S a normalised transition
matrix and R a very sparse random projection.

Built for row-partitioned distributed execution. Every function is pure, works on flat CSR arrays,
and every output row depends only on its inputs and its global row id, never on how rows are split
or on how many threads run:

* ``random_projection`` draws entry (i, j) from a counter-based hash of (seed, i, j), so any row
  range is generated independently and identically (integer arithmetic only: portable bits).
* ``propagate_rows`` computes rows [row_start, row_stop) of S @ U_prev; each output row is summed
  over its neighbours in CSR order by one thread (no atomics, no fastmath reassociation).
* ``column_moments`` sums columns *exactly* (integer bins over the float's exponent), so moments of
  partitions merge with ``merge_moments`` to the same bits in any grouping; the standardised output
  is therefore identical for 1 or many workers too.

Distributed recipe (what ``fastrp`` does with ``partitions`` > 1, in one process; docs/fastrp.md):
    deg = node_degrees(indptr, weights)                        # once, shared
    bounds = partition_bounds(indptr, P)                       # rows [a_p, b_p) per task
    R = concat_sparse_rows(fastrp_init_sparse(..., rows=(a_p, b_p), degrees=deg) for p)  # U_0, sparse
    U_1[p] = propagate_sparse_rows(..., R, a_p, b_p, degrees=deg)
    out[p] = accumulate_rows(zeros, U_1[p], iteration_weights[0])
    for k >= 2:                                                # one round per iteration
        U_k[p] = propagate_rows(..., U_{k-1} (full, shared), a_p, b_p, degrees=deg)
        accumulate_rows(out[p], U_k[p], iteration_weights[k - 1])
    m = merge_moments(column_moments(out[p]) for p)            # tiny, exact
    apply_standardize(out[p], *finalize_moments(m))

Over graph shards, where no task may hold the whole CSR or the whole U_{k-1}, workers/fastrp/sharded.py
runs the same recipe as blocked products: ``propagate_block`` adds one block of U_{k-1} at a time to a
shard's row sums, and ``projection_rows_sparse`` draws a shard's rows of U_0 from its own degrees.

Edge weights (``weights``, float32 per arc, None = unweighted) and iteration weights
(``iteration_weights``, one per power of S) are different things; the names keep them apart.
Directed graphs use out-neighbours (row i of A); degrees are weighted out-degrees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

import numba
import numpy as np
from numba import njit, prange

from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.prefetch import prefetch

__all__ = [
    "random_projection", "fastrp_init", "propagate_rows", "accumulate_rows", "fastrp",
    "node_degrees", "partition_bounds", "standardize_columns", "column_moments",
    "merge_moments", "finalize_moments", "apply_standardize", "ColumnMoments", "NORMALIZATIONS",
    "SparseRows", "fastrp_init_sparse", "propagate_sparse_rows", "concat_sparse_rows", "densify",
    "normalization_scales", "propagate_block", "projection_rows_sparse", "node_keys", "PROJECTIONS",
]

NORMALIZATIONS = ("row", "sym", "none")
PROJECTIONS = ("row", "node_id")       # what keys a row of R: its dense row id, or its original node id

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROWMUL = np.uint64(0xD1B54A32D192ED03)


# ----------------------------------------------------------------------------- random projection
@njit(cache=True, inline="always")
def _mix64(z):
    """SplitMix64 finaliser (bijective avalanche on uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(parallel=True, cache=True)
def _projection_kernel(rows, seed_key, threshold, all_nonzero, scale, out):
    dim = out.shape[1]
    for r in prange(rows.shape[0]):
        # per-row SplitMix64 stream keyed by (seed, global row id): independent of the row range
        key = _mix64(seed_key ^ (np.uint64(rows[r]) * _ROWMUL + _GOLDEN))
        for j in range(dim):
            z = _mix64(key + np.uint64(j + 1) * _GOLDEN)
            if all_nonzero or z < threshold:
                # the low bit is independent of the (high-bit dominated) threshold test
                out[r, j] = scale if (z & np.uint64(1)) == np.uint64(0) else -scale
            else:
                out[r, j] = 0


@njit(parallel=True, cache=True)
def _projection_count_kernel(rows, seed_key, threshold, all_nonzero, dim, counts):
    for r in prange(rows.shape[0]):
        key = _mix64(seed_key ^ (np.uint64(rows[r]) * _ROWMUL + _GOLDEN))
        c = 0
        for j in range(dim):
            z = _mix64(key + np.uint64(j + 1) * _GOLDEN)
            if all_nonzero or z < threshold:
                c += 1
        counts[r] = c


@njit(parallel=True, cache=True)
def _projection_fill_kernel(rows, seed_key, threshold, all_nonzero, dim, row_factor, ptr, cols, vals):
    """Same entries as _projection_kernel, stored as CSR (ascending columns), times row_factor."""
    for r in prange(rows.shape[0]):
        key = _mix64(seed_key ^ (np.uint64(rows[r]) * _ROWMUL + _GOLDEN))
        q = ptr[r]
        f = row_factor[r]
        for j in range(dim):
            z = _mix64(key + np.uint64(j + 1) * _GOLDEN)
            if all_nonzero or z < threshold:
                cols[q] = j
                vals[q] = f if (z & np.uint64(1)) == np.uint64(0) else -f
                q += 1


def _rows_array(num_nodes: int, rows) -> np.ndarray:
    """rows: None (all), range, (start, stop) tuple, or an integer array of global row ids."""
    if rows is None:
        return np.arange(num_nodes, dtype=np.int64)
    if isinstance(rows, range):
        if rows.step != 1:
            return np.asarray(rows, dtype=np.int64)
        rows = (rows.start, rows.stop)
    if isinstance(rows, tuple) and len(rows) == 2:
        start, stop = int(rows[0]), int(rows[1])
        if not 0 <= start <= stop <= num_nodes:
            raise ValueError(f"row range [{start}, {stop}) outside [0, {num_nodes})")
        return np.arange(start, stop, dtype=np.int64)
    arr = np.ascontiguousarray(rows, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() >= num_nodes)):
        raise ValueError(f"rows must be 1-d ids in [0, {num_nodes})")
    return arr


def default_density(num_nodes: int) -> float:
    """The paper's (and Li et al.'s very sparse projection) choice s = sqrt(n): density 1/sqrt(n)."""
    return 1.0 / math.sqrt(max(num_nodes, 1))


def random_projection(num_nodes: int, dim: int, *, density: float | None = None, seed: int = 0,
                      dtype=np.float32, rows=None, threads: int = 0, row_keys: np.ndarray | None = None) -> np.ndarray:
    """Very sparse random projection (Li et al. 2006), dense [n or len(rows), dim].

    Each entry is +-sqrt(1/density) with probability density/2 each, else 0, so E[x] = 0 and
    E[x^2] = 1 (norms are preserved in expectation). Entry (i, j) is a pure function of
    (seed, i, j): ``random_projection(n, d, rows=range(a, b)) == random_projection(n, d)[a:b]``.
    ``row_keys`` (uint64 [num_nodes], ``node_keys``): row i is drawn from key row_keys[i] instead of
    i, so a node keeps its row of R when other nodes are inserted or removed (incremental runs).
    """
    ids = _rows_array(num_nodes, rows)
    out = np.empty((ids.shape[0], dim), dtype=dtype)
    seed_key, threshold, all_nonzero, scale = _projection_params(num_nodes, dim, density, seed)
    with _threads(threads):
        _projection_kernel(_keys_of(ids, row_keys, num_nodes), seed_key, threshold, all_nonzero,
                           out.dtype.type(scale), out)
    return out


def _keys_of(ids: np.ndarray, row_keys: np.ndarray | None, num_nodes: int) -> np.ndarray:
    """What the projection kernels hash per row: the row ids themselves, or their keys."""
    if row_keys is None:
        return ids
    keys = np.asarray(row_keys)
    if keys.dtype != np.uint64 or keys.shape != (num_nodes,):
        raise ValueError(f"row_keys must be uint64 [{num_nodes}] (node_keys of the node ids), got "
                         f"{keys.dtype} {keys.shape}")
    return keys[ids]


def node_keys(node_ids: np.ndarray) -> np.ndarray:
    """uint64 projection keys of original node ids, the same in every graph version.

    Integer ids are their own key (the kernels mix it with the seed); string ids are a 64-bit
    BLAKE2b of their UTF-8 bytes (stable across processes, unlike Python's salted ``hash``).
    """
    ids = np.asarray(node_ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64).view(np.uint64).copy()
    import hashlib
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(x).encode(), digest_size=8).digest(), "little")
                        for x in ids), dtype=np.uint64, count=ids.shape[0])


def _projection_params(num_nodes: int, dim: int, density: float | None, seed: int):
    if dim < 1:
        raise ValueError("dim must be >= 1")
    density = default_density(num_nodes) if density is None else float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    all_nonzero = density >= 1.0
    threshold = np.uint64(0 if all_nonzero else min(int(math.ldexp(density, 64)), 2**64 - 1))
    seed_key = np.uint64(int(seed) & (2**64 - 1))
    return seed_key, threshold, all_nonzero, math.sqrt(1.0 / density)


# ----------------------------------------------------------------------------- degrees, partitions
@njit(parallel=True, cache=True)
def _degree_kernel(indptr, weights, has_weights, rows, out):
    for r in prange(rows.shape[0]):
        i = rows[r]
        if has_weights:
            s = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                s += weights[p]
            out[r] = s
        else:
            out[r] = indptr[i + 1] - indptr[i]


def node_degrees(indptr: np.ndarray, weights: np.ndarray | None = None, rows=None) -> np.ndarray:
    """Weighted out-degree (row sums of A) in float64, summed in CSR order; for ``rows`` only if given.

    Computed once by the driver and shared, so that every partition normalises with the same bits.
    """
    n = int(indptr.shape[0] - 1)
    ids = _rows_array(n, rows)
    out = np.empty(ids.shape[0], dtype=np.float64)
    w = _as_weights(weights)
    _degree_kernel(*read_only(np.asarray(indptr, dtype=np.int64), w), weights is not None, ids, out)
    return out


def _as_weights(weights) -> np.ndarray:
    if weights is None:
        return np.empty(0, dtype=np.float32)
    return np.ascontiguousarray(weights)


def partition_bounds(indptr: np.ndarray, partitions: int, *, row_cost: float = 1.0) -> np.ndarray:
    """P+1 contiguous row boundaries with about equal work (arcs + row_cost per row) per partition.

    Any bounds give the same output; balanced ones just finish together on power-law graphs.
    """
    n = int(indptr.shape[0] - 1)
    partitions = max(1, min(int(partitions), max(n, 1)))
    indptr = np.asarray(indptr, dtype=np.int64)
    cost = (indptr - indptr[0]).astype(np.float64) + row_cost * np.arange(n + 1, dtype=np.float64)
    targets = np.linspace(0.0, cost[-1], partitions + 1)
    bounds = np.searchsorted(cost, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, n
    return np.maximum.accumulate(bounds)


def _threads_for(threads: int) -> int:
    return numba.config.NUMBA_NUM_THREADS if threads <= 0 else min(int(threads), numba.config.NUMBA_NUM_THREADS)


class _threads:
    """Context manager: numba thread count for the calling thread, restored afterwards."""

    def __init__(self, threads: int):
        self.n = _threads_for(threads)

    def __enter__(self):
        self.prev = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.prev)


# ----------------------------------------------------------------------------- init and propagation
def fastrp_init(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None, dim: int, *,
                beta: float = -0.64, density: float | None = None, seed: int = 0, rows=None,
                dtype=np.float32, degrees: np.ndarray | None = None, threads: int = 0,
                row_keys: np.ndarray | None = None) -> np.ndarray:
    """U_0 = diag(deg^beta) R for the given rows (all by default); deg = weighted out-degree.

    beta < 0 damps hubs (the paper's normalisation L^beta). Zero-degree rows use deg = 1, as the
    scipy reference does. ``degrees`` (full, from ``node_degrees``) saves recomputing them.
    """
    n = int(indptr.shape[0] - 1)
    ids = _rows_array(n, rows)
    R = random_projection(n, dim, density=density, seed=seed, dtype=dtype, rows=ids, threads=threads,
                          row_keys=row_keys)
    deg = node_degrees(indptr, weights, rows=ids) if degrees is None else np.asarray(degrees, np.float64)[ids]
    deg = np.where(deg > 0, deg, 1.0)
    scale = (deg ** float(beta)).astype(R.dtype)
    _scale_rows(R, scale)
    return R


@njit(parallel=True, cache=True)
def _scale_rows(X, s):
    for i in prange(X.shape[0]):
        f = s[i]
        for k in range(X.shape[1]):
            X[i, k] = X[i, k] * f


@dataclass(frozen=True)
class SparseRows:
    """CSR rows of U_0 = diag(deg^beta) R: about n * dim * density non-zeros instead of n * dim.

    The first propagation step S @ U_0 reads these (``propagate_sparse_rows``), which costs
    arcs * dim * density instead of arcs * dim, and shares a few MB instead of a dense [n, dim].
    """
    indptr: np.ndarray      # int64 [rows + 1]
    cols: np.ndarray        # int32 [nnz], ascending within a row
    vals: np.ndarray        # dtype [nnz]
    dim: int

    @property
    def num_rows(self) -> int:
        return int(self.indptr.shape[0] - 1)


def fastrp_init_sparse(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None, dim: int, *,
                       beta: float = -0.64, density: float | None = None, seed: int = 0, rows=None,
                       dtype=np.float32, degrees: np.ndarray | None = None, threads: int = 0,
                       row_keys: np.ndarray | None = None) -> SparseRows:
    """``fastrp_init`` as CSR: the same entries, bit for bit (``densify`` gives ``fastrp_init``'s array).

    Partial results for row ranges concatenate with ``concat_sparse_rows`` into the full U_0.
    """
    n = int(indptr.shape[0] - 1)
    ids = _rows_array(n, rows)
    deg = node_degrees(indptr, weights, rows=ids) if degrees is None else np.asarray(degrees, np.float64)[ids]
    return projection_rows_sparse(n, ids, deg, dim, beta=beta, density=density, seed=seed, dtype=dtype,
                                  threads=threads, row_keys=None if row_keys is None else _keys_of(ids, row_keys, n))


def projection_rows_sparse(num_nodes: int, rows, row_degrees: np.ndarray, dim: int, *, beta: float = -0.64,
                           density: float | None = None, seed: int = 0, dtype=np.float32,
                           threads: int = 0, row_keys: np.ndarray | None = None) -> SparseRows:
    """Rows ``rows`` of U_0 = diag(deg^beta) R as CSR, from those rows' degrees only.

    What a graph shard computes for its own node range: it needs neither the other rows' degrees
    nor the whole graph, only ``num_nodes`` (the default density is 1/sqrt(num_nodes)). Equal to
    ``fastrp_init_sparse(..., rows=rows)`` bit for bit. ``row_keys``: uint64 keys of THESE rows
    (one per row, ``node_keys`` of their node ids), drawn from instead of the row ids.
    """
    ids = _rows_array(int(num_nodes), rows)
    if row_keys is not None:
        row_keys = np.asarray(row_keys)
        if row_keys.dtype != np.uint64 or row_keys.shape != ids.shape:
            raise ValueError(f"row_keys must be uint64, one per row ({ids.shape[0]}), got {row_keys.dtype} "
                             f"{row_keys.shape}")
        ids = row_keys
    deg = np.asarray(row_degrees, dtype=np.float64)
    if deg.shape != ids.shape:
        raise ValueError(f"row_degrees must have one value per row ({ids.shape[0]}), has {deg.shape}")
    seed_key, threshold, all_nonzero, scale = _projection_params(int(num_nodes), dim, density, seed)
    deg = np.where(deg > 0, deg, 1.0)
    dt = np.dtype(dtype)
    # entry = (+-scale in dtype) * (deg^beta in dtype), the product fastrp_init's _scale_rows forms
    factor = (dt.type(scale) * (deg ** float(beta)).astype(dt)).astype(dt)
    counts = np.empty(ids.shape[0], dtype=np.int64)
    with _threads(threads):
        _projection_count_kernel(ids, seed_key, threshold, all_nonzero, dim, counts)
        ptr = np.zeros(ids.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        cols = np.empty(int(ptr[-1]), dtype=np.int32)
        vals = np.empty(int(ptr[-1]), dtype=dt)
        _projection_fill_kernel(ids, seed_key, threshold, all_nonzero, dim, factor, ptr, cols, vals)
    return SparseRows(ptr, cols, vals, int(dim))


def concat_sparse_rows(parts: Sequence[SparseRows]) -> SparseRows:
    """Stack CSR row blocks (e.g. U_0 of consecutive partitions) into one."""
    if not parts:
        raise ValueError("nothing to concatenate")
    offsets = np.cumsum([0] + [p.indptr[-1] for p in parts[:-1]])
    ptr = np.concatenate([parts[0].indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    return SparseRows(ptr.astype(np.int64), np.concatenate([p.cols for p in parts]),
                      np.concatenate([p.vals for p in parts]), parts[0].dim)


def densify(R: SparseRows) -> np.ndarray:
    out = np.zeros((R.num_rows, R.dim), dtype=R.vals.dtype)
    out[np.repeat(np.arange(R.num_rows), np.diff(R.indptr)), R.cols] = R.vals
    return out


def normalization_scales(normalization: str, degrees: np.ndarray | None, dtype):
    """(row_scale, col_scale) so that S[i, j] = row_scale[i] * w_ij * col_scale[j]; None = ones.

    Element-wise in the degrees: the scales of a shard's rows, from that shard's degrees, are the
    same bits as the rows of the scales of all degrees."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization == "none":
        return None, None
    if degrees is None:
        raise ValueError("degrees are needed for row/sym normalisation")
    deg = np.where(degrees > 0, degrees, 1.0)
    if normalization == "row":
        return (1.0 / deg).astype(dtype), None
    s = (1.0 / np.sqrt(deg)).astype(dtype)
    return s, s


@njit(cache=True, inline="always")
def _prefetch_row(indices, q, Uflat, dim, col_lo, col_hi):
    """Prefetch the U row of arc q when its neighbour lies in the column block [col_lo, col_hi)."""
    if q < indices.shape[0]:
        j = np.int64(indices[q])
        if col_lo <= j < col_hi:
            base = (j - col_lo) * dim
            for l in range(0, dim, 16):         # one hint per 64-byte line of float32 (two of float64)
                prefetch(Uflat, base + l)


@njit(cache=True, inline="always")
def _lower_bound(indices, a, b, v):
    """First position in [a, b) whose (ascending) neighbour id is >= v."""
    while a < b:
        m = (a + b) >> 1
        if indices[m] < v:
            a = m + 1
        else:
            b = m
    return a


@njit(cache=True, inline="always")
def _row_segment(indptr, indices, i, blocked, col_lo, col_hi):
    """Arcs [p, end) of row i whose neighbours lie in [col_lo, col_hi) (all arcs when not blocked)."""
    p = indptr[i]
    end = indptr[i + 1]
    if blocked:
        p = _lower_bound(indices, p, end, col_lo)
        end = _lower_bound(indices, p, end, col_hi)
    return p, end


@njit(cache=True, inline="always")
def _finish_row(o, i, row_start, row_scale, has_row, acc, has_acc, acc_w):
    """After a row's last arc: scale it by row_scale[i], then acc += acc_w * row (fused accumulate)."""
    dim = o.shape[0]
    if has_row:
        f = row_scale[i]
        for k in range(dim):
            o[k] = o[k] * f
    if has_acc:                                  # fused accumulate_rows while the row is in cache
        a = acc[i - row_start]
        for k in range(dim):
            a[k] += acc_w * o[k]


_PREFETCH_ARCS = 8                             # prefetch the row of the arc this far ahead


@njit(parallel=True, cache=True)
def _spmm_rows_kernel(indptr, indices, weights, has_weights, col_scale, has_col, row_scale, has_row,
                      U, Uflat, one, row_start, chunks, out, acc, has_acc, acc_w, col_lo, col_hi, blocked,
                      fresh, finish):
    """Four arcs per pass over the row (o = (((o + c0 u0) + c1 u1) + c2 u2) + c3 u3: the same
    additions in the same order as one arc at a time, so the same bits) with the rows of arcs
    _PREFETCH_ARCS ahead prefetched: the gathers of U rows are latency bound once U leaves cache.

    U holds rows [col_lo, col_hi) of U_prev (col_scale likewise). With ``blocked``, only the arcs
    into that block are added: a row's arcs are sorted by neighbour, so running the blocks of a
    row in ascending order, the first with ``fresh`` (zero the row) and the last with ``finish``
    (row scale, accumulate), adds the same products in the same order as one pass over all of U."""
    dim = U.shape[1]
    plain = not has_weights and not has_col
    for c in prange(chunks.shape[0] - 1):
        for i in range(chunks[c], chunks[c + 1]):
            o = out[i - row_start]
            if fresh:
                for k in range(dim):
                    o[k] = 0
            p, end = _row_segment(indptr, indices, i, blocked, col_lo, col_hi)
            while p + 4 <= end:
                for t in range(4):
                    _prefetch_row(indices, p + _PREFETCH_ARCS + t, Uflat, dim, col_lo, col_hi)
                j0 = indices[p] - col_lo
                j1 = indices[p + 1] - col_lo
                j2 = indices[p + 2] - col_lo
                j3 = indices[p + 3] - col_lo
                u0 = U[j0]
                u1 = U[j1]
                u2 = U[j2]
                u3 = U[j3]
                if plain:
                    for k in range(dim):
                        o[k] = (((o[k] + u0[k]) + u1[k]) + u2[k]) + u3[k]
                else:
                    c0 = one
                    c1 = one
                    c2 = one
                    c3 = one
                    if has_weights:
                        c0 = weights[p]
                        c1 = weights[p + 1]
                        c2 = weights[p + 2]
                        c3 = weights[p + 3]
                    if has_col:
                        c0 = c0 * col_scale[j0]
                        c1 = c1 * col_scale[j1]
                        c2 = c2 * col_scale[j2]
                        c3 = c3 * col_scale[j3]
                    for k in range(dim):
                        o[k] = (((o[k] + c0 * u0[k]) + c1 * u1[k]) + c2 * u2[k]) + c3 * u3[k]
                p += 4
            while p < end:
                _prefetch_row(indices, p + _PREFETCH_ARCS, Uflat, dim, col_lo, col_hi)
                j = indices[p] - col_lo
                u = U[j]
                if plain:
                    for k in range(dim):
                        o[k] += u[k]
                else:
                    coef = one
                    if has_weights:
                        coef = weights[p]
                    if has_col:
                        coef = coef * col_scale[j]
                    for k in range(dim):
                        o[k] += coef * u[k]
                p += 1
            if finish:
                _finish_row(o, i, row_start, row_scale, has_row, acc, has_acc, acc_w)


@njit(parallel=True, cache=True)
def _spmm_sparse_rows_kernel(indptr, indices, weights, has_weights, col_scale, has_col, row_scale, has_row,
                             r_ptr, r_cols, r_vals, one, row_start, chunks, out, acc, has_acc, acc_w,
                             col_lo, col_hi, blocked, fresh, finish):
    """_spmm_rows_kernel with a CSR right-hand side (rows [col_lo, col_hi) of U_0): per output
    entry, the same products added in the same (arc) order, only the exact zeros are skipped, so
    the result has the same bits. ``blocked``, ``fresh`` and ``finish`` as there."""
    dim = out.shape[1]
    plain = not has_weights and not has_col
    for c in prange(chunks.shape[0] - 1):
        for i in range(chunks[c], chunks[c + 1]):
            o = out[i - row_start]
            if fresh:
                for k in range(dim):
                    o[k] = 0
            p0, end = _row_segment(indptr, indices, i, blocked, col_lo, col_hi)
            for p in range(p0, end):
                j = indices[p] - col_lo
                if plain:
                    for q in range(r_ptr[j], r_ptr[j + 1]):
                        o[r_cols[q]] += r_vals[q]
                else:
                    coef = one
                    if has_weights:
                        coef = weights[p]
                    if has_col:
                        coef = coef * col_scale[j]
                    for q in range(r_ptr[j], r_ptr[j + 1]):
                        o[r_cols[q]] += coef * r_vals[q]
            if finish:
                _finish_row(o, i, row_start, row_scale, has_row, acc, has_acc, acc_w)


def _chunks(indptr: np.ndarray, row_start: int, row_stop: int, threads: int) -> np.ndarray:
    """Row chunks of about equal arcs for the prange (load balance on power-law degrees)."""
    nrows = row_stop - row_start
    nchunks = max(1, min(nrows, 16 * threads))
    cost = (indptr[row_start:row_stop + 1] - indptr[row_start]).astype(np.float64) \
        + 8.0 * np.arange(nrows + 1, dtype=np.float64)
    b = np.searchsorted(cost, np.linspace(0.0, cost[-1], nchunks + 1)).astype(np.int64) + row_start
    b[0], b[-1] = row_start, row_stop
    return np.maximum.accumulate(b)


def propagate_rows(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None, U_prev: np.ndarray,
                   row_start: int, row_stop: int, *, normalization: str = "row",
                   degrees: np.ndarray | None = None, threads: int = 0,
                   out: np.ndarray | None = None, accumulate_into: np.ndarray | None = None,
                   accumulate_weight: float = 0.0) -> np.ndarray:
    """Rows [row_start, row_stop) of S @ U_prev; S = D^-1 A (row), D^-1/2 A D^-1/2 (sym) or A (none).

    U_prev is the full previous matrix [n, dim] (shared read-only, e.g. through Ray's object store);
    the result has U_prev's dtype. Row i = row_scale[i] * sum_p w_p col_scale[j_p] U_prev[j_p] over
    its arcs in CSR order, by one thread: the bits do not depend on the row range or thread count.
    ``degrees`` are the full weighted out-degrees (``node_degrees``); pass them to avoid an O(m)
    recomputation per call. ``out`` ([row_stop - row_start, dim], C-contiguous rows) is filled in place.
    ``accumulate_into`` (same shape) gets ``+= accumulate_weight * result`` row by row, fused: the
    same bits as a separate ``accumulate_rows`` without another pass over memory.
    """
    n = int(indptr.shape[0] - 1)
    if U_prev.ndim != 2 or U_prev.shape[0] != n:
        raise ValueError(f"U_prev must be [{n}, dim], got {U_prev.shape}")
    U_prev = np.ascontiguousarray(U_prev)
    return _propagate(indptr, indices, weights, n, U_prev.dtype, U_prev.shape[1], row_start, row_stop,
                      normalization, degrees, threads, out, accumulate_into, accumulate_weight, U=U_prev)


def propagate_sparse_rows(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None, R: SparseRows,
                          row_start: int, row_stop: int, *, normalization: str = "row",
                          degrees: np.ndarray | None = None, threads: int = 0,
                          out: np.ndarray | None = None, accumulate_into: np.ndarray | None = None,
                          accumulate_weight: float = 0.0) -> np.ndarray:
    """``propagate_rows`` with U_prev given as CSR rows (all n of them, from ``fastrp_init_sparse``):
    equal to ``propagate_rows(..., densify(R), ...)`` bit for bit, about 1/density times cheaper."""
    n = int(indptr.shape[0] - 1)
    if R.num_rows != n:
        raise ValueError(f"R must hold all {n} rows, has {R.num_rows}")
    return _propagate(indptr, indices, weights, n, R.vals.dtype, R.dim, row_start, row_stop,
                      normalization, degrees, threads, out, accumulate_into, accumulate_weight, R=R)


def _propagate(indptr, indices, weights, n, dtype, dim, row_start, row_stop, normalization, degrees,
               threads, out, acc, acc_weight, U=None, R=None):
    if not 0 <= row_start <= row_stop <= n:
        raise ValueError(f"row range [{row_start}, {row_stop}) outside [0, {n})")
    indptr = np.asarray(indptr, dtype=np.int64)
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty((row_stop - row_start, dim), dtype=dtype)
    if normalization != "none" and degrees is None:
        degrees = node_degrees(indptr, weights)
    row_scale, col_scale = normalization_scales(normalization, degrees, dtype)
    return _spmm(indptr, indices, weights, U, R, dtype, dim, row_start, row_stop, row_scale, col_scale, out, acc,
                 acc_weight, threads, col_lo=0, col_hi=n, blocked=False, fresh=True, finish=True)


def _spmm(indptr, indices, weights, U, R, dtype, dim, row_start, row_stop, row_scale, col_scale, out, acc,
          acc_weight, threads, *, col_lo, col_hi, blocked, fresh, finish):
    """Checks the output arrays, then runs the dense (U) or sparse (R) kernel over rows [row_start, row_stop)."""
    shape = (row_stop - row_start, dim)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {dtype} {shape}")
    has_acc = acc is not None and acc_weight != 0
    if acc is None:
        acc = np.empty((0, dim), dtype=dtype)
    elif acc.shape != shape or acc.dtype != dtype or not acc.flags.c_contiguous:
        raise ValueError(f"accumulate_into must be C-contiguous {dtype} {shape}")
    acc_w = dtype.type(acc_weight)
    empty = np.empty(0, dtype=dtype)
    # edge weights in U's dtype so the kernel's products stay in one precision
    w = empty if weights is None else np.ascontiguousarray(weights, dtype=dtype)
    cs = empty if col_scale is None else np.ascontiguousarray(col_scale, dtype=dtype)
    rs = empty if row_scale is None else np.ascontiguousarray(row_scale, dtype=dtype)
    nthreads = _threads_for(threads)
    chunks = _chunks(indptr, row_start, row_stop, nthreads)
    flags = (np.int64(col_lo), np.int64(col_hi), bool(blocked), bool(fresh), bool(finish))
    # read-only whether they came from Ray's object store or not: one compile of each kernel (kernel_inputs)
    indptr, indices, w, cs, rs = read_only(indptr, indices, w, cs, rs)
    with _threads(nthreads):
        if R is None:
            [U] = read_only(U)
            _spmm_rows_kernel(indptr, indices, w, weights is not None, cs, col_scale is not None,
                              rs, row_scale is not None, U, U.reshape(-1), dtype.type(1), int(row_start), chunks, out,
                              acc, has_acc, acc_w, *flags)
        else:
            _spmm_sparse_rows_kernel(indptr, indices, w, weights is not None, cs, col_scale is not None,
                                     rs, row_scale is not None, *read_only(R.indptr, R.cols, R.vals),
                                     dtype.type(1), int(row_start), chunks, out, acc, has_acc,
                                     acc_w, *flags)
    return out


def propagate_block(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None, block, col_lo: int,
                    partial: np.ndarray, *, fresh: bool, finish: bool, row_scale: np.ndarray | None = None,
                    col_scale: np.ndarray | None = None, accumulate_into: np.ndarray | None = None,
                    accumulate_weight: float = 0.0, threads: int = 0) -> np.ndarray:
    """One block of a blocked product S @ U_prev over the rows of one graph shard, in place in ``partial``.

    indptr / indices / weights are a shard's CSR rows (local indptr, global neighbour ids sorted
    within each row); ``block`` holds rows [col_lo, col_lo + len) of U_prev, dense [len, dim] or
    ``SparseRows`` (U_0). Each row of ``partial`` gets the products of its arcs into that block,
    added in arc order to what earlier blocks left (``fresh``: start from zero). Calling it for the
    blocks of U_prev in ascending order, the last with ``finish`` (multiply by ``row_scale``, then
    ``accumulate_into += accumulate_weight * row``), gives ``propagate_rows``' bits for these rows:
    the same additions in the same order. ``row_scale`` covers the shard's rows and ``col_scale``
    the block's (``normalization_scales``); None means ones.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = int(indptr.shape[0] - 1)
    U, R = (None, block) if isinstance(block, SparseRows) else (np.ascontiguousarray(block), None)
    dtype, dim = (R.vals.dtype, R.dim) if R is not None else (U.dtype, U.shape[1])
    length = R.num_rows if R is not None else U.shape[0]
    if col_scale is not None and len(col_scale) != length:
        raise ValueError(f"col_scale must have one value per block row ({length}), has {len(col_scale)}")
    if finish and row_scale is not None and len(row_scale) != rows:
        raise ValueError(f"row_scale must have one value per shard row ({rows}), has {len(row_scale)}")
    return _spmm(indptr, indices, weights, U, R, np.dtype(dtype), dim, 0, rows, row_scale, col_scale, partial,
                 accumulate_into, accumulate_weight, threads, col_lo=int(col_lo), col_hi=int(col_lo) + length,
                 blocked=True, fresh=fresh, finish=finish)


@njit(parallel=True, cache=True)
def _axpy_kernel(out, U, w):
    for i in prange(out.shape[0]):
        for k in range(out.shape[1]):
            out[i, k] += w * U[i, k]


def accumulate_rows(out_rows: np.ndarray, U_rows: np.ndarray, weight: float, *, threads: int = 0) -> np.ndarray:
    """out_rows += weight * U_rows in place (the iteration-weighted sum), element-wise: no temporaries."""
    if weight != 0:
        with _threads(threads):
            _axpy_kernel(out_rows, U_rows, out_rows.dtype.type(weight))
    return out_rows


# ----------------------------------------------------------------------------- exact column moments
# A finite float is x = +-M * 2^E with an integer mantissa M. Mantissas (and, split into limbs,
# their squares) are added into int64 bins indexed by exponent, so sum(x) and sum(x^2) are kept
# exactly. Integer addition is associative: partial moments from any partition merge to the same
# numbers, hence bit-identical standardisation for 1 or many workers. Bins are [exponent, column]
# so that one row's updates land on few cache lines (a row's values share a few exponents).
#
# float32 (the default; read as raw bits): E = biased_exp - 150, M < 2^24 summed whole into bin
# biased_exp; M = a1 * 2^12 + a0, M^2 = a0^2 + 2 a0 a1 2^12 + a1^2 2^24 into bins 2 biased_exp + {0,12,24}.
# Each update is < 2^26, so an int64 bin takes 2^37 rows before a carry pass is due.
# float64 (math.frexp): M < 2^53 in three 18-bit limbs; square limb products < 2^38, carry pass
# every 2^20 rows. Both units are 2^EMIN for sums and 2^(2 EMIN) for squares.
_EMIN32 = -150
_NS32 = 256 + 96
_NQ32 = 2 * 255 + 24 + 96
_EMIN64 = -1126                    # smallest E (subnormal 2^-1074 = 2^52 * 2^-1126)
_NS64 = 2098 + 36 + 128            # bins E - EMIN + {0, 18, 36}, plus carry headroom
_NQ64 = 2 * 2098 + 72 + 128        # bins 2(E - EMIN) + {0, 18, 36, 54, 72}, plus headroom
_LIMB = 18
_LMASK = (1 << _LIMB) - 1
_BLOCK_ROWS = 1 << 20              # float64: carry pass at least this often (int64 headroom)
_PAD = 24                          # bin rows of dim + 24 int64: a 4 KiB stride would alias cache sets


@njit(cache=True)
def _normalize_bins(b):
    """Carry every bin into [0, 2^32) (value-preserving: 2^32 units of bin k = 1 unit of bin k+32)."""
    for k in range(b.shape[0] - 32):
        for c in range(b.shape[1]):
            v = b[k, c]
            if v < 0 or v >= 4294967296:
                carry = v >> 32
                b[k, c] = v - (carry << 32)
                b[k + 32, c] += carry


@njit(parallel=True, cache=True)
def _moments32_kernel(bits, nblocks, S, Q, bad):
    n, dim = bits.shape
    per = (n + nblocks - 1) // nblocks
    for blk in prange(nblocks):
        s = S[blk]
        q = Q[blk]
        for i in range(blk * per, min(n, (blk + 1) * per)):
            for c in range(dim):
                b = bits[i, c]
                ex = (b >> 23) & 0xFF
                M = np.int64(b & 0x7FFFFF)
                if ex == 0xFF:
                    bad[blk] += 1
                    continue
                if ex == 0:
                    if M == 0:
                        continue
                    ex = 1                      # subnormal: M * 2^(1 - 150), no implicit bit
                else:
                    M |= 0x800000
                if b < 0:
                    s[ex, c] -= M
                else:
                    s[ex, c] += M
                a0 = M & 0xFFF
                a1 = M >> 12
                k2 = 2 * ex
                q[k2, c] += a0 * a0
                q[k2 + 12, c] += 2 * a0 * a1
                q[k2 + 24, c] += a1 * a1
        _normalize_bins(s)
        _normalize_bins(q)


@njit(parallel=True, cache=True)
def _moments64_kernel(X, nblocks, S, Q, bad):
    n, dim = X.shape
    per = (n + nblocks - 1) // nblocks
    for blk in prange(nblocks):
        s = S[blk]
        q = Q[blk]
        done = 0
        for i in range(blk * per, min(n, (blk + 1) * per)):
            for c in range(dim):
                x = np.float64(X[i, c])
                if x == 0.0:
                    continue
                if not math.isfinite(x):
                    bad[blk] += 1
                    continue
                m, e = math.frexp(x)
                M = np.int64(abs(m) * 9007199254740992.0)   # exact: |m| in [0.5, 1), 53 bits
                k = e - 53 - _EMIN64
                a0 = M & _LMASK
                a1 = (M >> _LIMB) & _LMASK
                a2 = M >> (2 * _LIMB)
                if m < 0:
                    s[k, c] -= a0
                    s[k + 18, c] -= a1
                    s[k + 36, c] -= a2
                else:
                    s[k, c] += a0
                    s[k + 18, c] += a1
                    s[k + 36, c] += a2
                k2 = 2 * k
                q[k2, c] += a0 * a0
                q[k2 + 18, c] += 2 * a0 * a1
                q[k2 + 36, c] += a1 * a1 + 2 * a0 * a2
                q[k2 + 54, c] += 2 * a1 * a2
                q[k2 + 72, c] += a2 * a2
            done += 1
            if done == _BLOCK_ROWS:
                _normalize_bins(s)
                _normalize_bins(q)
                done = 0
        _normalize_bins(s)
        _normalize_bins(q)


@njit(cache=True)
def _binary_digits(B, bits, top):
    """Carry bins [exponent, column] (summed over blocks) into one binary digit per exponent.

    Afterwards column c is sum_k bits[c, k] 2^k + top[c] 2^K exactly (K = number of digit bins),
    which Python turns into one int with int.from_bytes instead of a loop over bins.
    """
    K = bits.shape[1]
    for c in range(bits.shape[0]):
        carry = np.int64(0)
        for k in range(K):
            v = carry
            for blk in range(B.shape[0]):
                v += B[blk, k, c]
            bits[c, k] = v & 1
            carry = v >> 1                  # floor division: exact for negative values too
        v = carry
        for k in range(K, B.shape[1]):      # the top bins (never carried from) fold into `top`
            w = np.int64(0)
            for blk in range(B.shape[0]):
                w += B[blk, k, c]
            v += w << (k - K)
        top[c] = v


def _bins_to_ints(B: np.ndarray, dim: int, shift: int) -> list[int]:
    """Per-column exact integers of bins [blocks, exponent, column]; bin k is worth 2^(k + shift)."""
    K = B.shape[1] - 4                      # the last 4 bins are only carry targets: small values
    bits = np.zeros((dim, K), dtype=np.uint8)
    top = np.zeros(dim, dtype=np.int64)
    _binary_digits(B, bits, top)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return [(int.from_bytes(packed[c].tobytes(), "little") + (int(top[c]) << K)) << shift
            for c in range(dim)]


@dataclass(frozen=True)
class ColumnMoments:
    """Exact per-column sums: sum_c = sums[c] * 2^EMIN, sum of squares_c = sumsqs[c] * 2^(2 EMIN).

    Small (two Python ints per column): cheap to return from a Ray task and to merge in any order.
    """
    count: int
    sums: tuple[int, ...]
    sumsqs: tuple[int, ...]


def column_moments(X: np.ndarray, *, threads: int = 0) -> ColumnMoments:
    """Exact column sums and sums of squares of X (float32 or float64) for later merging."""
    X = np.ascontiguousarray(X)
    if X.ndim != 2:
        raise ValueError("X must be 2-d")
    n, dim = X.shape
    nthreads = _threads_for(threads)
    nblocks = max(1, min(nthreads, n // 1024))
    bad = np.zeros(nblocks, dtype=np.int64)
    if X.dtype == np.float32:
        S = np.zeros((nblocks, _NS32, dim + _PAD), dtype=np.int64)
        Q = np.zeros((nblocks, _NQ32, dim + _PAD), dtype=np.int64)
        with _threads(nthreads):
            _moments32_kernel(*read_only(X.view(np.int32)), nblocks, S, Q, bad)
        shift = _EMIN32 - _EMIN64      # express in the common float64 unit 2^_EMIN64
    else:
        S = np.zeros((nblocks, _NS64, dim + _PAD), dtype=np.int64)
        Q = np.zeros((nblocks, _NQ64, dim + _PAD), dtype=np.int64)
        with _threads(nthreads):
            _moments64_kernel(X, nblocks, S, Q, bad)
        shift = 0
    if bad.sum():
        raise ValueError(f"column_moments: {int(bad.sum())} non-finite values")
    return ColumnMoments(n, tuple(_bins_to_ints(S, dim, shift)), tuple(_bins_to_ints(Q, dim, 2 * shift)))


def merge_moments(parts: Iterable[ColumnMoments]) -> ColumnMoments:
    """Sum partial moments (exact integer addition: order and grouping do not change the result)."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_moments needs at least one part")
    dim = len(parts[0].sums)
    sums, sumsqs, count = [0] * dim, [0] * dim, 0
    for p in parts:
        if len(p.sums) != dim:
            raise ValueError("moments with different column counts")
        count += p.count
        sums = [a + b for a, b in zip(sums, p.sums)]
        sumsqs = [a + b for a, b in zip(sumsqs, p.sumsqs)]
    return ColumnMoments(count, tuple(sums), tuple(sumsqs))


def finalize_moments(m: ColumnMoments) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) in float64, population std (ddof=0) as sklearn's StandardScaler; std 0 -> 1.

    Computed from the exact integers with Fractions, so each is the correctly rounded value.
    """
    n = m.count
    if n <= 0:
        raise ValueError("no rows")
    mean = np.empty(len(m.sums))
    std = np.empty(len(m.sums))
    unit = Fraction(2) ** _EMIN64
    for c, (s, q) in enumerate(zip(m.sums, m.sumsqs)):
        mu = Fraction(s, n) * unit
        var = Fraction(n * q - s * s, n * n) * unit * unit
        mean[c] = float(mu)
        sd = math.sqrt(float(var)) if var > 0 else 0.0
        std[c] = sd if sd > 0 else 1.0
    return mean, std


@njit(parallel=True, cache=True)
def _standardize_kernel(X, mean, inv_std):
    for i in prange(X.shape[0]):
        for c in range(X.shape[1]):
            X[i, c] = (np.float64(X[i, c]) - mean[c]) * inv_std[c]


def apply_standardize(X: np.ndarray, mean: np.ndarray, std: np.ndarray, *, threads: int = 0) -> np.ndarray:
    """X = (X - mean) * (1 / std) in place, element-wise in float64, then rounded to X's dtype."""
    with _threads(threads):
        _standardize_kernel(X, *read_only(np.asarray(mean, np.float64)), 1.0 / np.asarray(std, np.float64))
    return X


def standardize_columns(X: np.ndarray, *, threads: int = 0) -> np.ndarray:
    """Zero mean, unit (population) variance per column, in place; returns X."""
    return apply_standardize(X, *finalize_moments(column_moments(X, threads=threads)), threads=threads)


# ----------------------------------------------------------------------------- reference driver
def fastrp(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray | None = None, *, dim: int = 512,
           iteration_weights: Sequence[float] = (0.0, 0.0, 1.0, 6.67), beta: float = -0.64,
           density: float | None = None, normalization: str = "row", standardize: bool = True,
           seed: int = 0, threads: int = 0, partitions: int = 1, dtype=np.float32,
           weights_iter: Sequence[float] | None = None, row_keys: np.ndarray | None = None) -> np.ndarray:
    """FastRP embeddings [n, dim]: sum_k iteration_weights[k] * S^(k+1) diag(deg^beta) R.

    ``weights`` are the graph's edge weights (None = unweighted); ``iteration_weights`` (alias
    ``weights_iter``) weight the powers of S. Rows are processed in ``partitions`` contiguous
    ranges exactly as Ray tasks would process them; the output is bit-identical for any
    ``partitions`` and ``threads``. Peak memory: three [n, dim] arrays of ``dtype``.
    ``row_keys`` (``node_keys`` of the node ids): R keyed by original node id (``random_projection``).
    """
    if weights_iter is not None:
        iteration_weights = weights_iter
    iteration_weights = [float(w) for w in iteration_weights]
    if not iteration_weights:
        raise ValueError("iteration_weights must not be empty")
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices)
    n = int(indptr.shape[0] - 1)
    if weights is not None:
        weights = np.ascontiguousarray(weights)
        if weights.shape != indices.shape:
            raise ValueError("edge weights must have one value per arc")
    deg = node_degrees(indptr, weights)
    bounds = partition_bounds(indptr, partitions)
    parts = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    # U_0 stays sparse (n * dim * density entries); iteration 1 reads it as CSR
    R = concat_sparse_rows([fastrp_init_sparse(indptr, indices, weights, dim, beta=beta, density=density,
                                               seed=seed, rows=(a, b), dtype=dtype, degrees=deg,
                                               threads=threads, row_keys=row_keys) for a, b in parts])
    U = np.empty((n, dim), dtype=dtype)
    out = np.zeros((n, dim), dtype=dtype)
    for a, b in parts:
        propagate_sparse_rows(indptr, indices, weights, R, a, b, normalization=normalization, degrees=deg,
                              threads=threads, out=U[a:b], accumulate_into=out[a:b],
                              accumulate_weight=iteration_weights[0])
    del R
    U_next = np.empty_like(U) if len(iteration_weights) > 1 else None
    for w in iteration_weights[1:]:
        for a, b in parts:
            propagate_rows(indptr, indices, weights, U, a, b, normalization=normalization, degrees=deg,
                           threads=threads, out=U_next[a:b], accumulate_into=out[a:b], accumulate_weight=w)
        U, U_next = U_next, U
    del U, U_next
    if standardize:
        m = merge_moments(column_moments(out[a:b], threads=threads) for a, b in parts)
        mean, std = finalize_moments(m)
        for a, b in parts:
            apply_standardize(out[a:b], mean, std, threads=threads)
    return out
