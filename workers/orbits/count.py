"""Exact counts of the 28 orbit-adjacency matrices (pairs.py), row range by row range.

No graphlet is enumerated. For a node u, one pass over its 2-step and 3-step walks gives, for
every node v within 3 hops, a handful of sums over their common neighbours CN(u, v):

    c   = |CN(u, v)|                       tu = sum_{b in CN} |CN(u, b)|      ds = sum_{b in CN} d_b
    a3  = walks u-x-y-v (A^3[u, v])        tw = sum_{b in CN} |CN(v, b)|      e  = edges inside CN(u, v)

and every matrix entry M[u, v] is a closed formula in those sums, the degrees, each node's
triangle-arc sum (tri2[x] = 2 x triangles at x) and neighbour-degree sum (nsum[x]) (inclusion-
exclusion over which of the graphlet's nodes coincide or are adjacent; the derivations are in
docs/orbits.md). The cost is the number of 3-step walks, sum over arcs (b, y) of d_b * d_y,
whatever the number of graphlets (claws around hubs cost nothing): `work_estimate`.

A row range is independent of every other (each row reads only the shared CSR and the per-arc
triangle counts), so ranges run in parallel threads (nogil) or Ray tasks and concatenate."""
from __future__ import annotations

import numpy as np
from numba import njit

from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.orbits.pairs import NUM_PAIRS, PAIR_CLASSES, PAIR_INDEX


def simple_graph(indptr: np.ndarray, indices: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """The undirected simple graph of a CSR (arcs made symmetric, self-loops and repeats dropped):
    graphlets are defined on it whatever the input's direction, weights or multi-edges."""
    deg = np.diff(indptr)
    src = np.repeat(np.arange(num_nodes, dtype=np.int64), deg)
    dst = indices.astype(np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    key = np.unique(np.concatenate([src * num_nodes + dst, dst * num_nodes + src]))
    rows, cols = key // num_nodes, key % num_nodes
    out_ptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_nodes), out=out_ptr[1:])
    return out_ptr, cols.astype(np.int32)


@njit(nogil=True, cache=True)
def arc_triangles(indptr, indices):
    """(tri, tri2, nsum): tri[p] = common neighbours of arc p's two ends; tri2[x] = sum of tri
    over x's arcs; nsum[x] = sum of x's neighbours' degrees."""
    n = len(indptr) - 1
    tri = np.zeros(len(indices), dtype=np.int64)
    tri2 = np.zeros(n, dtype=np.int64)
    nsum = np.zeros(n, dtype=np.int64)
    mark = np.full(n, -1, dtype=np.int64)
    for u in range(n):
        for p in range(indptr[u], indptr[u + 1]):
            mark[indices[p]] = u
        for p in range(indptr[u], indptr[u + 1]):
            v = indices[p]
            nsum[u] += indptr[v + 1] - indptr[v]
            t = 0
            for q in range(indptr[v], indptr[v + 1]):
                if mark[indices[q]] == u:
                    t += 1
            tri[p] = t
            tri2[u] += t
    return tri, tri2, nsum


@njit(nogil=True, cache=True)
def work_estimate(indptr, indices):
    """(3-step walks = sum over arcs (b, y) of d_b * d_y: the counting cost and a bound on the
    non-zeros of the 4-4 matrix; 4-node graphlet bound = sum over edges of (d_u-1)(d_v-1) (paths
    on 4 nodes, triangles counted thrice) + sum of C(d, 3) (claws): every connected 4-node
    graphlet has a spanning path or claw)."""
    n = len(indptr) - 1
    walks3 = 0.0
    paths = 0.0
    claws = 0.0
    for b in range(n):
        db = indptr[b + 1] - indptr[b]
        claws += db * (db - 1.0) * (db - 2.0) / 6.0
        for p in range(indptr[b], indptr[b + 1]):
            y = indices[p]
            dy = indptr[y + 1] - indptr[y]
            walks3 += db * float(dy)
            if y > b:
                paths += (db - 1.0) * (dy - 1.0)
    return walks3, paths + claws


@njit(nogil=True, cache=True)
def adjacent_entries(vals, du, dv, c, e, tu, tw, ds, a3, tri2u, tri2v, nsumu, nsumv):
    """The 19 classes of adjacent (u, v) (pairs.PAIR_CLASSES order), from the walk sums."""
    nu = du - 1 - c
    nv = dv - 1 - c
    cross = a3 - du - dv + 1 - (tw - c) - (tu - c) + 2 * e     # edges N(u)\N[v] -- N(v)\N[u]
    eu = tri2u // 2 - tu + e                                    # edges inside N(u)\N[v]
    ev = tri2v // 2 - tw + e
    vals[0] = 1
    vals[2] = nv
    vals[3] = nu
    vals[4] = c
    vals[6] = nsumv - ds - a3 + tu - tri2v + 2 * tw - 2 * e
    vals[8] = nsumu - ds - a3 + tw - tri2u + 2 * tu - 2 * e
    vals[10] = nu * nv - cross
    vals[12] = nv * (nv - 1) // 2 - ev
    vals[13] = nu * (nu - 1) // 2 - eu
    vals[14] = cross
    vals[17] = ev
    vals[19] = ds - tu - tw + 2 * e
    vals[20] = c * (dv - c) - tw + 2 * e
    vals[21] = eu
    vals[22] = c * (du - c) - tu + 2 * e
    vals[24] = tw - c - 2 * e
    vals[25] = tu - c - 2 * e
    vals[26] = c * (c - 1) // 2 - e
    vals[27] = e


@njit(nogil=True, cache=True)
def distant_entries(vals, du, dv, c, e, tu, tw, ds, a3):
    """The 9 classes of non-adjacent (u, v) (pairs.PAIR_CLASSES order)."""
    vals[1] = c
    vals[5] = a3 - tu - tw + 2 * e
    vals[7] = c * (dv - c) - tw + 2 * e
    vals[9] = c * (du - c) - tu + 2 * e
    vals[11] = ds - tu - tw - 2 * c + 2 * e
    vals[15] = c * (c - 1) // 2 - e
    vals[16] = tw - 2 * e
    vals[18] = tu - 2 * e
    vals[23] = e


ADJACENT_CLASSES = np.array([i for i, c in enumerate(PAIR_CLASSES) if c[2]], dtype=np.int64)
FOUR_FOUR = PAIR_INDEX[(4, 4, False)]
DISTANT_CLASSES = np.array([i for i, c in enumerate(PAIR_CLASSES) if not c[2]], dtype=np.int64)


def count_rows(indptr: np.ndarray, indices: np.ndarray, tri: np.ndarray, tri2: np.ndarray, nsum: np.ndarray,
               lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows [lo, hi) of all 28 matrices as COO (rows int32, cols int32, pair int8, counts int64),
    row-major, columns in first-reached order within a row. indptr/indices: a simple undirected
    graph (simple_graph); tri, tri2, nsum: arc_triangles of it. Two passes of the same kernel:
    the first sizes each row (the walk sums are cheap; writing is what costs), the second fills."""
    row_nnz = np.zeros(max(0, hi - lo), dtype=np.int64)
    # read-only whether they came from Ray's object store or not: one compile of the kernel (kernel_inputs)
    indptr, indices, tri, tri2, nsum = read_only(indptr, indices, tri, tri2, nsum)
    empty32, empty8, empty64 = np.empty(0, np.int32), np.empty(0, np.int8), np.empty(0, np.int64)
    walk_rows(indptr, indices, tri, tri2, nsum, lo, hi, False, empty32, empty32, empty8, empty64, row_nnz)
    total = int(row_nnz.sum())
    rows, cols = np.empty(total + NUM_PAIRS, np.int32), np.empty(total + NUM_PAIRS, np.int32)
    kinds, counts = np.empty(total + NUM_PAIRS, np.int8), np.empty(total + NUM_PAIRS, np.int64)
    walk_rows(indptr, indices, tri, tri2, nsum, lo, hi, True, rows, cols, kinds, counts, row_nnz)
    return rows[:total], cols[:total], kinds[:total], counts[:total]


@njit(nogil=True, cache=True)
def walk_rows(indptr, indices, tri, tri2, nsum, lo, hi, fill, rows, cols, kinds, counts, row_nnz):
    """The kernel of count_rows: fill=False stores each row's non-zeros in row_nnz; fill=True
    writes them into rows/cols/kinds/counts (sized sum(row_nnz) + 28: writes are branch-free,
    a zero is written and then overwritten)."""
    n = len(indptr) - 1
    c2 = np.zeros(n, dtype=np.int64)
    tu = np.zeros(n, dtype=np.int64)
    tw = np.zeros(n, dtype=np.int64)
    ds = np.zeros(n, dtype=np.int64)
    ee = np.zeros(n, dtype=np.int64)
    a3 = np.zeros(n, dtype=np.int64)
    seen = np.full(n, -1, dtype=np.int64)
    in_u = np.full(n, -1, dtype=np.int64)
    in_w = np.full(n, -1, dtype=np.int64)
    touched = np.empty(n, dtype=np.int64)
    vals = np.zeros(NUM_PAIRS, dtype=np.int64)
    nnz = 0
    stamp = 0
    for u in range(lo, hi):
        du = indptr[u + 1] - indptr[u]
        nt = 0
        for p in range(indptr[u], indptr[u + 1]):
            in_u[indices[p]] = u
        for p in range(indptr[u], indptr[u + 1]):            # 2-step walks u-b-y
            b = indices[p]
            db = indptr[b + 1] - indptr[b]
            for q in range(indptr[b], indptr[b + 1]):
                y = indices[q]
                if seen[y] != u:
                    seen[y] = u
                    touched[nt] = y
                    nt += 1
                    c2[y] = 0
                    tu[y] = 0
                    tw[y] = 0
                    ds[y] = 0
                    ee[y] = 0
                    a3[y] = 0
                c2[y] += 1
                tu[y] += tri[p]
                tw[y] += tri[q]
                ds[y] += db
        for p in range(indptr[u], indptr[u + 1]):            # edges w1-w2 inside N(u), then v ~ both
            if tri[p] == 0:
                continue
            w1 = indices[p]
            stamp += 1
            for q in range(indptr[w1], indptr[w1 + 1]):
                in_w[indices[q]] = stamp
            for q in range(indptr[w1], indptr[w1 + 1]):
                w2 = indices[q]
                if w2 <= w1 or in_u[w2] != u:
                    continue
                for r in range(indptr[w2], indptr[w2 + 1]):
                    v = indices[r]
                    if in_w[v] == stamp and v != u:
                        ee[v] += 1
        n2 = nt
        for i in range(n2):                                   # 3-step walks: A^3 row = A^2 row . A
            y = touched[i]
            cy = c2[y]
            for q in range(indptr[y], indptr[y + 1]):
                v = indices[q]
                if seen[v] != u:
                    seen[v] = u
                    touched[nt] = v
                    nt += 1
                    c2[v] = 0
                    tu[v] = 0
                    tw[v] = 0
                    ds[v] = 0
                    ee[v] = 0
                    a3[v] = 0
                a3[v] += cy
        start = nnz
        for i in range(nt):
            v = touched[i]
            if v == u:
                continue
            if c2[v] == 0 and in_u[v] != u:                    # 3 hops away: only the 4-4 path ends
                if fill:
                    rows[nnz] = u
                    cols[nnz] = v
                    kinds[nnz] = FOUR_FOUR
                    counts[nnz] = a3[v]
                nnz += 1
                continue
            dv = indptr[v + 1] - indptr[v]
            if in_u[v] == u:
                adjacent_entries(vals, du, dv, c2[v], ee[v], tu[v], tw[v], ds[v], a3[v], tri2[u], tri2[v],
                                 nsum[u], nsum[v])
                classes = ADJACENT_CLASSES
            else:
                distant_entries(vals, du, dv, c2[v], ee[v], tu[v], tw[v], ds[v], a3[v])
                classes = DISTANT_CLASSES
            for t in classes:
                x = vals[t]
                if fill:
                    rows[nnz] = u
                    cols[nnz] = v
                    kinds[nnz] = t
                    counts[nnz] = x
                nnz += x != 0
        if not fill:
            row_nnz[u - lo] = nnz - start
