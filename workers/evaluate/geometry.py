"""Label-free checks of an embedding's geometry: graph reconstruction (mAP of k-hop
neighbourhoods), k-NN recall of an approximation (compression), neighbourhood overlap and
orthogonal Procrustes alignment between two runs (stability).

All similarity searches are exact brute force in float32 blocks, sized so a block of scores
stays around 64 MB whatever the graph size; queries are sampled with a seeded generator.
"""
from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

from embedlake.workers.evaluate.rows import RowNormaliser, unit_rows
from embedlake.workers.evaluate.score_kernels import QUERY_STEP, chunk_scores
from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.kernel_threads import run_on_threads

_BLOCK_ELEMS = 8_000_000           # scores per block (32 MB float32; argsort/cumsum temporaries ~4x)
LAST_RING_CHUNK = 1024             # last-ring draws made at a time (`draw_nodes`)
QUERY_BLOCK = 256                  # queries scored per pass over the rows (reconstruction)


def sample_nodes(n: int, count: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    pool = np.arange(n) if pool is None else pool
    if count is None or count >= pool.size:
        return pool.copy()
    return np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))


def _blocks(q: np.ndarray, n: int):
    step = max(1, _BLOCK_ELEMS // max(n, 1))
    for i in range(0, q.size, step):
        yield q[i:i + step]


def _scorer(X, similarity: str) -> Callable[[np.ndarray], np.ndarray]:
    """Function query ids -> (len(ids), n) float32 scores, higher = closer."""
    if callable(X):
        return X
    if similarity == "precomputed":
        import scipy.sparse as sp      # here only: the figures task's default path needs no scipy (0.05 CPU-s)
        M = X.tocsr() if sp.issparse(X) else np.asarray(X)
        if sp.issparse(M):
            return lambda ids: M[ids].toarray().astype(np.float32)
        return lambda ids: np.asarray(M[ids], dtype=np.float32)
    if similarity == "cosine":
        U = unit_rows(X)
    elif similarity == "dot":
        U = np.asarray(X, dtype=np.float32)
    else:
        raise ValueError(f"unknown similarity {similarity!r} (cosine, dot, precomputed)")
    return lambda ids: U[ids] @ U.T


def top_k_neighbours(X, queries, k, *, similarity="cosine", exclude_self=True) -> np.ndarray:
    """(len(queries), k) ids of the k highest-scoring nodes per query, best first."""
    score = _scorer(X, similarity)
    queries = np.asarray(queries, dtype=np.int64)
    n = None
    out = []
    for q in _blocks(queries, _n_rows(X)):
        S = np.array(score(q), dtype=np.float32, copy=True)
        n = S.shape[1]
        if exclude_self:
            S[np.arange(q.size), q] = -np.inf
        kk = min(k, n - 1 if exclude_self else n)
        part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(S, part, 1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out) if out else np.empty((0, k), dtype=np.int64)


def _n_rows(X) -> int:
    if callable(X):
        return 1_000_000                # unknown width: assume large, keep blocks small
    return X.shape[0]


def knn_recall(X_full, X_approx_or_scores, k=10, queries=1000, seed=0, *, similarity="cosine") -> float:
    """Recall@k of the exact cosine k-NN of ``X_full`` when searched in the approximation.

    ``X_approx_or_scores`` is either the approximate vectors (n x d', e.g. decoded codes;
    compared with ``similarity``) or a function ids -> (len(ids), n) scores (higher = closer,
    e.g. negated asymmetric PQ distances). The query itself is excluded from both lists.
    """
    n = X_full.shape[0]
    q = sample_nodes(n, queries, seed)
    exact = top_k_neighbours(X_full, q, k, similarity="cosine")
    approx = top_k_neighbours(X_approx_or_scores, q, k, similarity=similarity)
    hit = (exact[:, :, None] == approx[:, None, :]).any(2).sum(1)
    return float(np.mean(hit / exact.shape[1]))


def neighbourhood_overlap(X_a, X_b, k=10, sample=1000, seed=0) -> float:
    """Mean Jaccard similarity of each sampled node's top-k cosine neighbours in two embeddings
    of the same nodes (run-to-run stability; invariant to rotations, unlike row distances)."""
    if X_a.shape[0] != X_b.shape[0]:
        raise ValueError("both embeddings must have the same rows")
    q = sample_nodes(X_a.shape[0], sample, seed)
    A = top_k_neighbours(X_a, q, k)
    B = top_k_neighbours(X_b, q, k)
    inter = (A[:, :, None] == B[:, None, :]).any(2).sum(1)
    return float(np.mean(inter / (A.shape[1] + B.shape[1] - inter)))


def procrustes_align(X_new, X_ref, *, shared=None, return_rotation=False):
    """Rotate ``X_new`` onto ``X_ref``: the orthogonal R minimising |X_new[s] R - X_ref[s]|_F
    over the shared rows (Schoenemann 1966: R = U V^T from the SVD of X_new[s]^T X_ref[s]).

    ``shared`` is None (same rows in both, row i = row i) or a pair (rows_new, rows_ref).
    Returns all rows of X_new rotated (and R when ``return_rotation``). Rotations leave cosine
    neighbourhoods unchanged; aligning lets two runs or versions be compared row by row.
    """
    X_new = np.asarray(X_new)
    X_ref = np.asarray(X_ref)
    if X_new.shape[1] != X_ref.shape[1]:
        raise ValueError(f"dimensions differ: {X_new.shape[1]} vs {X_ref.shape[1]}")
    if shared is None:
        if X_new.shape[0] != X_ref.shape[0]:
            raise ValueError("row counts differ: pass shared=(rows_new, rows_ref)")
        A, B = X_new, X_ref
    else:
        A, B = X_new[np.asarray(shared[0])], X_ref[np.asarray(shared[1])]
    U, _, Vt = np.linalg.svd(A.astype(np.float64).T @ B.astype(np.float64))
    R = U @ Vt
    out = (X_new.astype(np.float64) @ R).astype(X_new.dtype if X_new.dtype.kind == "f" else np.float64)
    return (out, R) if return_rotation else out


# ---------------------------------------------------------------------------------------------
# reconstruction
# ---------------------------------------------------------------------------------------------

def average_precision_rows(S: np.ndarray, R: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """AP per row of scores S (higher first) against boolean relevance R; rows without relevant
    items give NaN. ``order`` (the rows' argsort of -S) can be passed to reuse one sort for
    several relevance sets. Ties are broken deterministically but arbitrarily (numpy's sort)."""
    if order is None:
        order = np.argsort(-S, axis=1)
    rel = np.take_along_axis(R, order, 1)
    hits = np.cumsum(rel, axis=1, dtype=np.int32)
    ranks = np.arange(1, S.shape[1] + 1, dtype=np.float32)
    n_rel = hits[:, -1].astype(np.float64)
    ap = np.where(rel, hits / ranks, np.float32(0)).sum(1, dtype=np.float64)
    return np.divide(ap, n_rel, out=np.full(S.shape[0], np.nan), where=n_rel > 0)


def reconstruction_map(X, indptr, indices, *, hops=(1, 2, 3), sample=2000, seed=0,
                       similarity="cosine", mode="ball", ball_cap=1_000_000, relevant_cap=0,
                       threads=0, symmetric: bool | None = None, norms: np.ndarray | None = None) -> dict:
    """Graph reconstruction (RESTORE-style): for each sampled node, rank every other node by
    similarity and compute the average precision of its neighbourhood within h hops (distance
    1..h along the CSR's arcs; ``mode="ring"``: exactly h hops); report the mean over nodes per
    hop. ``random_baseline`` (the mean share of relevant nodes, about a random ranking's mAP) is the
    comparison: on small-world graphs the 3-hop ball covers nearly every node. Queries: a seeded
    sample of ``sample`` nodes with a neighbour (all when fewer). ``similarity``: cosine | dot |
    precomputed (X an n x n score matrix, dense or sparse). ``symmetric``: every arc has its reverse
    (None checks). ``norms``: every row's `row_norms`, if known.

    No ranking is sorted: a relevant node's precision is (relevant nodes scoring at least as
    high) / (nodes scoring at least as high), counted in one pass over the query's scores
    (`scored_candidates`: float64 sums in a fixed layout rounded to float32, `ChunkScores`,
    the candidates' scores read from the same products). Ties therefore count against the ranking, as in
    scikit-learn's average_precision_score; without ties this is the AP of the sorted ranking.

    Bounds for large graphs, reported in the result: a query's search stops once its ball would
    exceed ``ball_cap`` nodes, the hops beyond left out (``truncated``); with ``relevant_cap`` > 0
    a larger hop ball is sampled (seeded per query and hop), its counts scaled: unbiased
    (``sampled``). ``ci95``: each mean's 95 % half-width (0 when every eligible node is a query).
    """
    if mode not in ("ball", "ring"):
        raise ValueError(f"mode must be 'ball' or 'ring', not {mode!r}")
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    n = indptr.size - 1
    hops = sorted(int(h) for h in hops)
    hop_arr = np.asarray(hops, dtype=np.int64)
    table = not callable(X) and similarity != "precomputed"
    X, score = (np.asarray(X), None) if table else (X, _scorer(X, similarity))
    pool = _nodes_with_neighbours(indptr, indices)
    q_all = sample_nodes(n, sample, seed, pool)
    symmetric = _is_symmetric(indptr, indices) if symmetric is None else bool(symmetric)
    ap = np.full((q_all.size, len(hops)), np.nan)
    base = np.full((q_all.size, len(hops)), np.nan)
    flags = np.zeros((q_all.size, len(hops)), dtype=np.int8)
    maxc = max_candidates(n, hops, ball_cap, relevant_cap)
    step = query_block(maxc, 0 if table else n)
    with _numba_threads(threads):
        nthreads = numba.get_num_threads()
        for i in range(0, q_all.size, step):
            q = np.ascontiguousarray(q_all[i:i + step], dtype=np.int64)
            cb = candidates_block(indptr, indices, q, hop_arr, int(ball_cap), int(relevant_cap), int(seed), symmetric,
                                  maxc, nthreads)
            qrow, nodes, lv, offsets = flat_candidates(cb)
            if table and q.size * X.shape[0] * 4 <= HOLD_BYTES:       # the block's scores held: one kernel
                held_block_figures(block_scores(X, compared_rows(X[q], similarity), similarity, norms), cb, q, qrow,
                                   nodes, lv, offsets, hop_arr, mode == "ring", n, ap[i:i + step], base[i:i + step],
                                   flags[i:i + step])
                continue
            if table:
                t, lv, ge = scored_candidates(X, compared_rows(X[q], similarity), q, qrow, nodes, lv, offsets,
                                              similarity, nthreads, norms)
            else:
                t, lv, ge = precomputed_candidates(score(q), q, qrow, nodes, lv, offsets)
            finish_block(cb, t, lv, ge, offsets, hop_arr, mode == "ring", n, ap[i:i + step], base[i:i + step],
                         flags[i:i + step])
    return reconstruction_summary(hops, ap, base, flags, q_all.size, pool.size)


def compared_rows(X, similarity: str) -> np.ndarray:
    """The rows the scorer compares (contiguous float32): unit rows for cosine, as is for dot."""
    if similarity == "cosine":
        return np.ascontiguousarray(unit_rows(X))
    if similarity == "dot":
        return np.ascontiguousarray(X, dtype=np.float32)
    raise ValueError(f"unknown similarity {similarity!r} (cosine, dot, precomputed)")


def max_candidates(n: int, hops, ball_cap: int, relevant_cap: int) -> int:
    """The most relevant candidates a query can keep: every ring sampled to relevant_cap, or its
    whole ball."""
    most = min(int(ball_cap), n - 1)
    return max(1, min(most, max(hops) * int(relevant_cap)) if relevant_cap > 0 else most)


def query_block(maxc: int, score_width: int = 0) -> int:
    """Queries per block: their candidates (and, for precomputed scores, their score rows) stay
    around _BLOCK_ELEMS / 4 elements; at most QUERY_BLOCK (one pass over the rows per block)."""
    return max(1, min(QUERY_BLOCK, (_BLOCK_ELEMS // 4) // max(maxc, score_width, 1)))


def precomputed_candidates(scores, q, qrow, nodes, level, offsets):
    """`scored_candidates` for a given score matrix of the block (similarity="precomputed")."""
    S = np.ascontiguousarray(scores, dtype=np.float32)
    t, lv = sort_segments(S[qrow, nodes], level, offsets)
    ge = np.zeros(int(offsets[-1]) + q.size, dtype=np.int64)
    for i in range(q.size):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if b > a:
            ge[a + i:b + i + 1] = nodes_scoring_at_least(S[i], int(q[i]), t[a:b])
    return t, lv, ge


class CandidateBlock:
    """Per query of a block: its relevant candidates (node, ring), its rings' sizes (an estimate
    for a sampled last ring), the kept count per ring, and its last complete hop (`top`)."""

    def __init__(self, nodes, level, count, ring_size, kept, top):
        self.nodes, self.level, self.count = nodes, level, count
        self.ring_size, self.kept, self.top = ring_size, kept, top


def candidates_block(indptr, indices, q, hop_arr, ball_cap, relevant_cap, seed, symmetric, maxc, threads):
    """`_candidates_kernel` on min(threads, queries) threads (at least one), as a CandidateBlock."""
    nq, max_hop = q.size, int(hop_arr[-1])
    out = (np.empty((nq, maxc), dtype=np.int64),          # only each row's first count[i] are set and read
           np.empty((nq, maxc), dtype=np.int64), np.zeros(nq, dtype=np.int64), np.zeros((nq, max_hop)),
           np.zeros((nq, max_hop), dtype=np.int64), np.zeros(nq, dtype=np.int64))
    nthreads = max(1, min(threads, nq))
    args = read_only(indptr, indices, q, hop_arr)
    run_on_threads(lambda t: _candidates_kernel(*args, ball_cap, relevant_cap, seed, symmetric, *out, t, nthreads),
                   nthreads)
    return CandidateBlock(*out)


def flat_candidates(cb: CandidateBlock):
    """(query row, node, ring) of every candidate of the block, query by query, and the offsets
    of each query's candidates."""
    offsets = np.concatenate(([0], np.cumsum(cb.count))).astype(np.int64)
    keep = np.arange(cb.nodes.shape[1])[None, :] < cb.count[:, None]
    qrow = np.repeat(np.arange(cb.count.size, dtype=np.int64), cb.count)
    return qrow, cb.nodes[keep], cb.level[keep], offsets


def finish_block(cb: CandidateBlock, t, lv, ge, offsets, hop_arr, ring: bool, n: int, ap, base, flags) -> None:
    """Each query's AP per hop from its sorted candidates and their counts (`walk_hops`)."""
    for i in range(cb.count.size):
        top = int(cb.top[i])
        if top == 0:
            flags[i] = 1
            continue
        a, b = int(offsets[i]), int(offsets[i + 1])
        walk_hops(*read_only(t[a:b], lv[a:b], ge[a + i:b + i + 1], np.ascontiguousarray(cb.ring_size[i, :top]),
                             np.ascontiguousarray(cb.kept[i, :top]), hop_arr), ring, top, n, ap[i], base[i], flags[i])


def _is_symmetric(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Whether every arc u -> v has its reverse v -> u (an undirected graph's CSR). Rows sorted by
    neighbour without repeats (build_csr's): one pass, no table-sized allocation (`_reverse_arcs`);
    otherwise the sorted arc keys u * n + v against the sorted reversed keys. Why not scipy.sparse's
    A != A.T or the keys always: on deezer_europe (185,000 arcs) the keys' temporaries cost 0.05
    CPU-s in a worker (4,000-5,000 page faults), scipy.sparse's import 0.05 more; on the R-MAT graph
    (37 M arcs) scipy took 1.25 CPU-s, the keys' sorts more. The pipeline skips the check for an
    undirected graph (`reconstruction_map(symmetric=True)`)."""
    verdict = _reverse_arcs(*read_only(indptr, indices))
    if verdict >= 0:
        return bool(verdict)
    n = indptr.size - 1
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    arcs = np.unique(rows * n + indices)
    return bool(np.array_equal(arcs, np.unique(indices * n + rows)))


@numba.njit(cache=True, nogil=True)
def _reverse_arcs(indptr, indices):
    """1 when every arc u -> v has its reverse, 0 when one has not, -1 when a row is not strictly
    ascending. Reverse arcs into v arrive in ascending u as the rows are walked in order, so row v
    must list exactly them, in that order: each arc is checked against its slot of row v."""
    n = indptr.size - 1
    for u in range(n):
        for e in range(indptr[u] + 1, indptr[u + 1]):
            if indices[e - 1] >= indices[e]:
                return -1
    filled = np.zeros(n, dtype=np.int64)          # reverse arcs into v met so far
    for u in range(n):
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            k = indptr[v] + filled[v]
            if k >= indptr[v + 1] or indices[k] != u:
                return 0
            filled[v] += 1
    for v in range(n):
        if filled[v] != indptr[v + 1] - indptr[v]:
            return 0
    return 1


def _nodes_with_neighbours(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Nodes with at least one arc to another node (self loops do not count), ascending. One pass
    in numba (`_other_neighbour`): numpy's repeat and unique of every arc cost 2.6-3.0 CPU-s on the
    37 M-arc R-MAT graph (and four arc-sized temporaries)."""
    has = _other_neighbour(*read_only(np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)))
    return np.flatnonzero(has)


@numba.njit(cache=True, nogil=True)
def _other_neighbour(indptr, indices):
    """Per node: whether one of its arcs leads to another node."""
    n = indptr.size - 1
    has = np.zeros(n, dtype=np.bool_)
    for u in range(n):
        for e in range(indptr[u], indptr[u + 1]):
            if indices[e] != u:
                has[u] = True
                break
    return has


def reconstruction_summary(hops, ap, base, flags, queries: int, eligible: int) -> dict:
    """Per-hop means over the queries that have a figure, their 95 % half-widths and counts."""
    out = {"map": {}, "random_baseline": {}, "queries": int(queries), "eligible": int(eligible), "ci95": {},
           "truncated": {}, "sampled": {}}
    for i, h in enumerate(hops):
        a = ap[:, i][~np.isnan(ap[:, i])]
        b = base[:, i][~np.isnan(base[:, i])]
        out["map"][str(h)] = float(np.mean(a)) if a.size else float("nan")
        out["random_baseline"][str(h)] = float(np.mean(b)) if b.size else float("nan")
        fpc = max(0.0, 1.0 - queries / eligible) if eligible else 0.0        # finite-population correction
        sd = float(np.std(a, ddof=1)) if a.size > 1 else 0.0
        out["ci95"][str(h)] = round(float(1.96 * sd * np.sqrt(fpc / a.size)), 6) if a.size else float("nan")
        out["truncated"][str(h)] = int(np.sum(flags[:, i] == 1))
        out["sampled"][str(h)] = int(np.sum(flags[:, i] == 2))
    return out


class _numba_threads:
    """Numba thread count for the calling thread (0 = all), restored afterwards."""

    def __init__(self, threads: int):
        self.n = numba.config.NUMBA_NUM_THREADS if threads <= 0 else min(threads, numba.config.NUMBA_NUM_THREADS)

    def __enter__(self):
        self.prev = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.prev)


@numba.njit(cache=True, nogil=True)
def _candidates_kernel(indptr, indices, q, hops, ball_cap, relevant_cap, seed, symmetric, nodes, level, count,
                       ring_size, kept, top, t, nthreads):
    """Thread t's queries (t, t + nthreads, ...; `candidates_block` runs the threads): each one's hop
    rings by BFS (`_hop_ball`) and its candidates, each ring sampled down to relevant_cap
    (`stratified_candidates`), into row i of the outputs; work arrays sized n, reused by the
    thread's queries (stamped marks instead of clearing). A plain kernel run on threads, not a
    prange: numba's parallel compile of this one took 13-22 s (kernel_threads)."""
    nq = q.size
    n = indptr.size - 1
    max_hop = hops[hops.size - 1]
    mark = np.full(n, -1, dtype=np.int64)
    lev = np.zeros(n, dtype=np.int32)
    ball = np.empty(min(ball_cap, n) + 1, dtype=np.int64)
    for i in range(t, nq, nthreads):
        hop_end = np.zeros(max_hop + 1, dtype=np.int64)
        ring_est = np.zeros(max_hop + 1)
        complete = _hop_ball(indptr, indices, q[i], i, max_hop, ball_cap, symmetric, relevant_cap, seed, mark, lev,
                             ball, hop_end, ring_est)
        tp = min(complete, max_hop)
        top[i] = tp
        if tp == 0:
            continue
        c, lv, k = stratified_candidates(ball, hop_end, tp, relevant_cap, seed, q[i])
        count[i] = c.size
        nodes[i, :c.size] = c
        level[i, :c.size] = lv
        ring_size[i, :tp] = ring_est[1:tp + 1]
        kept[i, :tp] = k


SCORE_ROWS = 1024                  # nodes per product of `ChunkScores` (chunk c: nodes c * SCORE_ROWS ...)
HOLD_BYTES = 64 << 20              # reconstruction_map keeps a block's whole score matrix up to this size
WINDOW_BYTES = 16 << 20            # count_at_least places the scores of this many bytes of chunks at a time


class ChunkScores:
    """Scores of a block of query rows ``Uq`` against table rows ``X`` (nodes lo .. lo + m - 1), a
    chunk of nodes at a time: chunk c holds nodes c * SCORE_ROWS .. (c + 1) * SCORE_ROWS - 1, the
    nodes that ``X`` does not hold (another shard's, or past the table's end) as zero rows.

    A score is the float32 rounding of a float64 sum of the float32 rows' (exact) products, every
    pair summed by the same instructions (`score_kernels.chunk_scores`). Why float64: a BLAS float32
    product rounds an entry according to its position in the product and to the product's shapes
    (OpenBLAS, measured: in one float32 product 960 of 1,024 copies of the same row scored
    differently from the first copy; 2,100 of 131,072 entries differ between ``Q @ U.T`` and
    ``Q @ U[:1024].T``), which broke the exact ties of duplicate rows (FastRP tables have thousands)
    that the mAP counts against the ranking; float64 sums rounded to float32 give the same scores
    whatever the summation order (unless a float32 rounding boundary falls within the sums' few-ulp
    spread). These were float64 BLAS products until issue 22's fifteenth round; the kernel gives the
    same float32 scores at two thirds of the cost (see its module). And with every chunk at the same
    node offsets and of the same shape, a (query, node) pair gets the same score whichever shard
    holds the node and whether it is scored as a candidate (`pair_scores`) or counted
    (`count_at_least`): the thresholds and the scores counted against them are the same numbers, so
    the mAP is exact for those scores.

    ``similarity="cosine"`` divides each row by its norm in float32 (the values of `unit_rows`), so no
    unit copy of the table is made; "dot" takes the rows as float32. ``norms`` (cosine): row i's norm
    as `rows.row_norms` gives it; the rows are then divided by them, their norms not computed again
    (the same float32 quotients). A float32 table with the norms (or "dot") is read in place by the
    kernel; otherwise a chunk's float32 rows are made in a buffer first (`chunk_rows`)."""

    def __init__(self, X, lo: int, Uq, similarity: str = "dot", norms: np.ndarray | None = None):
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"unknown similarity {similarity!r} (cosine, dot, precomputed)")
        self.X, self.lo = np.asarray(X), int(lo)
        Uq = np.asarray(Uq, dtype=np.float32)
        self.queries = Uq.shape[0]
        self.Uq = np.zeros((-(-self.queries // QUERY_STEP) * QUERY_STEP, Uq.shape[1]), dtype=np.float64)
        self.Uq[:self.queries] = Uq
        self.norm = RowNormaliser(self.X) if similarity == "cosine" else None
        self.norms = None if self.norm is None or norms is None else np.asarray(norms, dtype=np.float32)
        if self.norms is not None and self.norms.shape != (self.X.shape[0],):
            raise ValueError(f"norms: {self.norms.shape} for {self.X.shape[0]} rows")
        self.in_place = self.X.dtype == np.float32 and self.X.flags.c_contiguous and \
            (self.norm is None or self.norms is not None)               # the kernel reads X itself
        d = self.X.shape[1]
        self.unit = np.empty((0 if self.in_place or self.norm is None else self.norm.step, d), dtype=np.float32)
        self.rows = np.empty((0 if self.in_place else SCORE_ROWS, d), dtype=np.float32)
        self.S = np.empty((self.Uq.shape[0], SCORE_ROWS), dtype=np.float32)
        self.args = read_only(self.Uq, self.X if self.in_place else self.rows,
                              self.norms if self.in_place and self.norms is not None else np.empty(0, np.float32))
        self.rb = np.empty((4, d), dtype=np.float64)

    def chunks(self) -> range:
        """The chunks holding the table's rows."""
        m = self.X.shape[0]
        return range(self.lo // SCORE_ROWS, (self.lo + m - 1) // SCORE_ROWS + 1) if m else range(0)

    def scores(self, c: int) -> tuple[np.ndarray, int, int]:
        """(S, a, b): S[i, j] = the score of query row i and node c * SCORE_ROWS + j (a buffer reused
        by the next call), for the table's nodes j in a .. b - 1."""
        g0 = c * SCORE_ROWS
        a = max(self.lo, g0) - g0
        b = min(self.lo + self.X.shape[0], g0 + SCORE_ROWS) - g0
        Uq, X, norms = self.args
        if self.in_place:
            chunk_scores(Uq, X, g0 + a - self.lo, a, b, norms, self.S, self.rb)
        else:
            self.chunk_rows(g0, a, b)
            chunk_scores(Uq, X, 0, 0, SCORE_ROWS, norms, self.S, self.rb)
        return self.S[:self.queries], a, b

    def chunk_rows(self, g0: int, a: int, b: int) -> np.ndarray:
        """The SCORE_ROWS float32 rows of the chunk from node g0 as compared (zero outside a .. b - 1),
        for a table the kernel does not read in place."""
        first = g0 + a - self.lo
        rows = self.rows
        rows[:a] = 0
        rows[b:] = 0
        if self.norm is None:
            rows[a:b] = self.X[first:first + b - a]                           # rounded to float32
            return rows
        for s in range(a, b, self.norm.step):
            e = min(b, s + self.norm.step)
            r0, r1 = first + s - a, first + e - a
            if self.norms is None:
                rows[s:e] = self.norm.into(slice(r0, r1), self.unit[:e - s])
                continue
            val = self.X[r0:r1]
            if val.dtype != np.float32:
                val = self.norm.val[:e - s]
                val[...] = self.X[r0:r1]                                        # rounded as `into` does
            np.divide(val, self.norms[r0:r1, None], out=rows[s:e])
        return rows


def pair_scores(U, lo, Uq, qrow, nodes, similarity: str = "dot", norms: np.ndarray | None = None) -> np.ndarray:
    """Scores of pairs (query row qrow[j] of Uq, node nodes[j] = row nodes[j] - lo of U), float32:
    each its entry in its chunk's product (`ChunkScores`), the number `count_at_least` counts."""
    nodes, qrow = np.asarray(nodes, dtype=np.int64), np.asarray(qrow, dtype=np.int64)
    out = np.empty(nodes.size, dtype=np.float32)
    chunk = nodes // SCORE_ROWS
    order = np.argsort(chunk, kind="stable")
    scorer = ChunkScores(U, lo, Uq, similarity, norms)
    for sel in np.split(order, np.flatnonzero(np.diff(chunk[order])) + 1) if nodes.size else ():
        c = int(chunk[sel[0]])
        S, _, _ = scorer.scores(c)
        out[sel] = S[qrow[sel], nodes[sel] - c * SCORE_ROWS]
    return out


def block_scores(X, Uq, similarity: str, norms: np.ndarray | None = None) -> np.ndarray:
    """Every score of the query rows against the whole table (queries x n), `ChunkScores`' numbers."""
    scorer = ChunkScores(X, 0, Uq, similarity, norms)
    S = np.empty((scorer.queries, scorer.X.shape[0]), dtype=np.float32)
    for c in scorer.chunks():
        part, a, b = scorer.scores(c)
        S[:, c * SCORE_ROWS + a:c * SCORE_ROWS + b] = part[:, a:b]
    return S


def scored_candidates(X, Uq, q, qrow, nodes, level, offsets, similarity: str, threads: int,
                      norms: np.ndarray | None = None):
    """(thresholds t, their rings, counts ge) of one block of queries on the whole table: each
    query's candidate scores ascending and, per candidate, the nodes scoring at least as high (see
    `count_at_least`), the table scored twice (candidates, then the counts), as a shard is. For a
    block whose score matrix fits HOLD_BYTES, `reconstruction_map` scores it once instead
    (`held_block_figures`)."""
    t, lv = sort_segments(pair_scores(X, 0, Uq, qrow, nodes, similarity, norms), level, offsets)
    return t, lv, count_at_least(X, 0, Uq, q, t, offsets, threads, similarity, norms)


def held_block_figures(S, cb: CandidateBlock, q, qrow, nodes, level, offsets, hop_arr, ring: bool, n: int, ap, base,
                       flags) -> None:
    """Each query's AP per hop from the block's whole score matrix S (queries x n, `block_scores`):
    what `sort_segments`, `ScoreCounts` and `finish_block` compute, in one kernel
    (`_held_block_kernel`), the same numbers. Why one: a fresh worker loads each numba function
    from the cache on its own, 4-5 ms each for these four (their modules parsed and scanned one by
    one), about 10 ms together; issue 22, twelfth round. Its placing runs on one thread
    (`_place_scores` is parallel over queries): the figures task's worker has one CPU."""
    _held_block_kernel(*read_only(S, qrow, nodes, level, offsets, q, cb.ring_size, cb.kept, cb.top, hop_arr),
                       BUCKETS_PER_THRESHOLD, ring, n, ap, base, flags)


@numba.njit(cache=True, nogil=True)
def _held_block_kernel(S, qrow, nodes, level, offsets, srcs, ring_size, kept, top, hops, per, ring, n, ap, base,
                       flags):
    """`held_block_figures`: the candidates' scores S[qrow, nodes] sorted per query
    (`_sort_segments_kernel`), every score of S placed among its query's thresholds (`_bucket_tables`,
    `_place`, as `_place_scores` places them), the counts' tail sums (`tail_sums`) and each query's
    AP per hop (`walk_hops`; a query without a complete hop flagged 1, as `finish_block` does)."""
    scores = np.empty(nodes.size, dtype=S.dtype)
    for k in range(nodes.size):
        scores[k] = S[qrow[k], nodes[k]]
    t, lv = _sort_segments_impl(scores, level, offsets)
    width = S.shape[1]
    nb, boff, first, lo_t, inv = _bucket_tables_impl(t, offsets, per, width)
    nq = offsets.size - 1
    cnt = np.zeros(offsets[nq] + nq, dtype=np.int64)
    for i in range(nq):
        x, y = offsets[i], offsets[i + 1]
        if y > x:
            _place_query(S[i], 0, width, srcs[i], t[x:y], first[boff[i]:boff[i + 1]], nb[i] - 1, lo_t[i], inv[i],
                         cnt[x + i:y + i + 1])
    ge = np.zeros(cnt.size, dtype=np.int64)
    for i in range(nq):
        for k in range(offsets[i + 1] + i - 1, offsets[i] + i - 1, -1):
            ge[k] = ge[k + 1] + cnt[k + 1]
    for i in range(nq):
        tp = top[i]
        if tp == 0:
            flags[i, :] = 1
            continue
        a, b = offsets[i], offsets[i + 1]
        _walk_hops_impl(t[a:b], lv[a:b], ge[a + i:b + i + 1], ring_size[i, :tp], kept[i, :tp], hops, ring, tp, n, ap[i],
                  base[i], flags[i])


def sort_segments(scores, level, offsets):
    """Each query's candidate scores ascending (stable) and their rings in that order."""
    return _sort_segments_kernel(*read_only(scores, level, offsets))


@numba.njit(cache=True, nogil=True)
def _sort_segments_kernel(scores, level, offsets):
    """`sort_segments`' entry, fed read-only arrays only. Kernels call `_sort_segments_impl` with
    arrays they made (writable): compiled fresh, a call of this dispatcher from a kernel would add
    a writable signature to it, and a second compile for Python's read-only call."""
    return _sort_segments_impl(scores, level, offsets)


@numba.njit(cache=True, nogil=True)
def _sort_segments_impl(scores, level, offsets):
    """Each query's candidate scores ascending (stable) and their rings in that order."""
    t = np.empty_like(scores)
    lv = np.empty_like(level)
    for i in range(offsets.size - 1):
        a, b = offsets[i], offsets[i + 1]
        order = _stable_order(scores[a:b])
        for k in range(b - a):
            t[a + k] = scores[a + order[k]]
            lv[a + k] = level[a + order[k]]
    return t, lv


@numba.njit(cache=True, nogil=True)
def _stable_order(x):
    """``np.argsort(x, kind="stable")``, the same permutation (ties keep their order, NaN last, as
    numpy orders floats): insertion sorts of runs of 16, then bottom-up merges. Why not numba's
    own: its merge sort is recursive, and compiling it took 16 s per signature (of 18 s for the
    kernels that use it; issue 22's sort of each query's candidates), paid by every new kernel
    cache, the test suite's included."""
    n = x.size
    idx = np.arange(n)
    run = 16
    for s in range(0, n, run):
        for i in range(s + 1, min(s + run, n)):
            v = idx[i]
            j = i - 1
            while j >= s and _after(x[idx[j]], x[v]):
                idx[j + 1] = idx[j]
                j -= 1
            idx[j + 1] = v
    src, dst = idx, np.empty_like(idx)
    width = run
    while width < n:
        for lo in range(0, n, 2 * width):
            mid, hi = min(lo + width, n), min(lo + 2 * width, n)
            i, j = lo, mid
            for k in range(lo, hi):
                if j >= hi or (i < mid and not _after(x[src[i]], x[src[j]])):
                    dst[k] = src[i]
                    i += 1
                else:
                    dst[k] = src[j]
                    j += 1
        src, dst = dst, src
        width *= 2
    return src


@numba.njit(inline="always")
def _after(a, b):
    """a sorts after b: a > b, NaN after every number (numpy's order of floats)."""
    return a > b or (a != a and b == b)


class ScoreCounts:
    """Per query i with ascending thresholds t[offsets[i]:offsets[i + 1]] (u of them), how many of
    the scores added so far lie at or above each threshold, the query's own node srcs[i] left out.

    Each score is placed by a bucket table (`_bucket_tables`): BUCKETS_PER_THRESHOLD x u buckets
    over [t[0], t[-1]], a score's bucket `_bucket` (monotone in the score), and per bucket the
    thresholds whose own bucket lies below it. A score then passes every threshold of a lower
    bucket and none of a higher one, so it is compared only with the thresholds of its own bucket
    (none in most buckets): exact whatever the rounding of the bucket arithmetic."""

    def __init__(self, t, offsets, srcs, width: int = 0):
        """``width``: how many scores per query will be added (0: unknown), which bounds the buckets
        (`_bucket_tables`)."""
        self.t, self.offsets, self.srcs = read_only(t, offsets, srcs)
        self.tables = read_only(*_bucket_tables(self.t, self.offsets, BUCKETS_PER_THRESHOLD, int(width)))
        self.cnt = np.zeros(int(self.offsets[-1]) + self.offsets.size - 1, dtype=np.int64)

    def add(self, S, a: int, b: int, node0: int) -> None:
        """Count the scores S[i, a:b] of nodes node0 + a .. node0 + b - 1."""
        _place_scores(*read_only(S), a, b, node0, self.srcs, self.t, self.offsets, *self.tables, self.cnt)

    def at_least(self) -> np.ndarray:
        """ge: per query, u + 1 counts from offsets[i] + i on, ge[k] = scores >= t[k] (the last 0)."""
        return tail_sums(self.cnt, self.offsets)


def tail_sums(cnt: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per query segment (offsets[i] + i .. offsets[i + 1] + i): ge[k] = cnt[k + 1] + ... to its
    end (integers: exact in any order)."""
    ends = np.asarray(offsets[1:], dtype=np.int64) + np.arange(1, offsets.size, dtype=np.int64)
    suffix = np.cumsum(cnt[::-1])[::-1]                           # cnt[k] + ... + cnt[-1]
    after = np.append(suffix, 0)                                  # after[k] = cnt[k] + ... (after[-1] = 0)
    seg_end = np.repeat(ends, np.diff(np.concatenate(([0], ends))))
    return after[np.arange(1, cnt.size + 1)] - after[seg_end]


def count_at_least(U, lo, Uq, srcs, t, offsets, threads, similarity: str = "dot",
                   norms: np.ndarray | None = None) -> np.ndarray:
    """For query row i of Uq with its ascending thresholds t[offsets[i]:offsets[i + 1]] (u of
    them), ge[k] = the rows of U (nodes lo, lo + 1, ..., the query itself left out) scoring >=
    t[k]; returned per query as u + 1 counts from offsets[i] + i on (the last is 0), so the
    counts of several row ranges (shards) add up. One pass over U for the whole block of queries,
    a chunk of `ChunkScores` at a time, each score placed among its query's thresholds a window of
    chunks (WINDOW_BYTES of scores) at a time. Why windows: placing reads the query's bucket table
    (32 KB at 1,000 thresholds then, 128 KB now); chunk by chunk, 100 queries' tables left the cache between chunks
    (the R-MAT graph's 109 M scores: 3.0 CPU-s of placing chunk by chunk, 2.4 by windows)."""
    scorer = ChunkScores(U, lo, Uq, similarity, norms)
    counts = ScoreCounts(t, offsets, srcs, scorer.X.shape[0])
    chunks = scorer.chunks()
    per_window = max(1, min(len(chunks), WINDOW_BYTES // (4 * SCORE_ROWS * max(1, scorer.queries))))
    S = np.empty((scorer.queries, per_window * SCORE_ROWS), dtype=np.float32)
    with _numba_threads(threads):
        for w in range(0, len(chunks), per_window):
            window = chunks[w:w + per_window]
            for k, c in enumerate(window):
                part, a, b = scorer.scores(c)
                S[:, k * SCORE_ROWS + a:k * SCORE_ROWS + b] = part[:, a:b]
                first = a if k == 0 else first
            counts.add(S, first, (len(window) - 1) * SCORE_ROWS + b, window[0] * SCORE_ROWS)
    return counts.at_least()


BUCKETS_PER_THRESHOLD = 32        # `ScoreCounts`' buckets per threshold (at most 1 << 18 per query)


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket(v, lo, inv, top):
    """The bucket of a score v >= lo: min((v - lo) * inv, top), truncated. Every step rounds
    monotonically, so a higher score never gets a lower bucket: all the placing relies on. A NaN
    product (infinite scores: inf - inf, inf x 0) goes to the top bucket, which keeps it monotone."""
    x = (v - lo) * inv
    return np.int64(x) if x < top else top


@numba.njit(cache=True, nogil=True)
def _bucket_tables(t, offsets, per, width):
    """`ScoreCounts`' entry, fed read-only arrays only; kernels call `_bucket_tables_impl` (why:
    `_sort_segments_kernel`)."""
    return _bucket_tables_impl(t, offsets, per, width)


@numba.njit(cache=True, nogil=True)
def _bucket_tables_impl(t, offsets, per, width):
    """Per query i (u thresholds): nb[i] = min(per * u, 1 << 18) buckets over [t[0], t[-1]], and
    with width > 0 (scores per query to place) at most max(4 u, width / 2): more buckets than
    scores cost more to build and hold than they save (BlogCatalog, 1,500 thresholds against
    10,312 scores per query: 19 MB of tables at 32 per threshold); `_bucket` with lo_t[i], inv[i],
    and first[boff[i] + B] = #{thresholds with bucket < B}, B = 0 .. nb[i] (so first[boff[i] +
    nb[i]] = u)."""
    nq = offsets.size - 1
    nb = np.zeros(nq, dtype=np.int64)
    boff = np.zeros(nq + 1, dtype=np.int64)
    for i in range(nq):
        u = offsets[i + 1] - offsets[i]
        nb[i] = min(per * u, 1 << 18) if u > 0 else 0
        if width > 0 and u > 0:
            nb[i] = min(nb[i], max(4 * u, width // 2))
        boff[i + 1] = boff[i] + nb[i] + 1
    first = np.zeros(boff[nq], dtype=np.int32)
    lo_t = np.zeros(nq, dtype=t.dtype)
    inv = np.zeros(nq, dtype=np.float64)
    for i in range(nq):
        a, b = offsets[i], offsets[i + 1]
        if b == a:
            continue
        lo_t[i], hi = t[a], t[b - 1]
        inv[i] = nb[i] / (np.float64(hi) - np.float64(lo_t[i])) if hi > lo_t[i] else 0.0
        for k in range(a, b):
            first[boff[i] + _bucket(t[k], lo_t[i], inv[i], nb[i] - 1) + 1] += 1
        for bk in range(1, nb[i] + 1):
            first[boff[i] + bk] += first[boff[i] + bk - 1]
    return nb, boff, first, lo_t, inv


@numba.njit(parallel=True, cache=True, nogil=True)
def _place_scores(S, a, b, node0, srcs, t, offsets, nb, boff, first, lo_t, inv, cnt):
    """cnt[offsets[i] + i + p] += 1 for each score S[i, j], j in a .. b - 1 (node node0 + j; the
    query's own node srcs[i] left out), p = #{thresholds of query i <= the score}."""
    for i in numba.prange(offsets.size - 1):
        x, y = offsets[i], offsets[i + 1]
        if y > x:
            _place_query(S[i], a, b, srcs[i] - node0, t[x:y], first[boff[i]:boff[i + 1]], nb[i] - 1, lo_t[i],
                         inv[i], cnt[x + i:y + i + 1])


@numba.njit(cache=True, nogil=True)
def _place_query(s, a, b, own, t, first, top, lo, inv, cnt):
    """One query's scores s[a:b] placed (`_place`), its own column `own` left out: the step of
    `_place_scores` and `_held_block_kernel`."""
    _place(s, a, min(max(own, a), b), t, first, top, lo, inv, cnt)
    _place(s, max(min(own + 1, b), a), b, t, first, top, lo, inv, cnt)


@numba.njit(cache=True, nogil=True)
def _place(s, j0, j1, t, first, top, lo, inv, cnt):
    """cnt[p] += 1 for each score s[j], j in j0 .. j1 - 1, p = #{t <= s[j]} (scores below t[0] and
    NaN, which no threshold counts, are skipped): the thresholds of lower buckets, plus those of
    its own bucket at or below it."""
    for j in range(j0, j1):
        v = s[j]
        if not v >= lo:
            continue
        bk = _bucket(v, lo, inv, top)
        p = first[bk]
        e = first[bk + 1]
        while p < e and t[p] <= v:
            p += 1
        cnt[p] += 1


@numba.njit(cache=True, nogil=True)
def _hop_ball(indptr, indices, src, stamp, max_hop, ball_cap, symmetric, relevant_cap, seed, mark, level, ball,
              hop_end, ring_est):
    """Breadth-first search from src: ball[:hop_end[h]] are the nodes within h hops (src
    excluded), level[v] their distance, mark[v] == stamp for visited nodes. Returns the last hop
    whose ball is complete (a hop that would exceed ball_cap nodes is not expanded).

    A hop whose frontier holds many arcs is expanded bottom-up on a symmetric graph (every
    unvisited node looks for one neighbour in the frontier and stops there; Beamer et al.'s
    direction-optimising BFS): on small-world graphs the 2nd and 3rd hops cover much of the graph
    and pushing along every frontier arc would touch most arcs once per query.

    With relevant_cap > 0 the last hop, when it would be expanded bottom-up over many nodes, is
    sampled instead (`_sample_last_ring`): ring_est[h] is then an estimate of the ring's size and
    ball holds a uniform sample of it; otherwise ring_est[h] is the ring's exact size."""
    n = indptr.size - 1
    mark[src] = stamp
    level[src] = 0
    hop_end[0] = 0
    count = 0
    for h in range(1, max_hop + 1):
        start = count
        lo = hop_end[h - 2] if h > 1 else 0
        frontier_arcs = indptr[src + 1] - indptr[src]
        if h > 1:
            frontier_arcs = 0
            for f in range(lo, start):
                frontier_arcs += indptr[ball[f] + 1] - indptr[ball[f]]
        if (symmetric and h > 1 and h == max_hop and relevant_cap > 0 and frontier_arcs * 14 > indices.size
                and n - 1 - start > 4 * relevant_cap):
            count, est = _sample_last_ring(indptr, indices, src, stamp, h, count, ball_cap, relevant_cap, seed,
                                           mark, level, ball)
            if count < 0:
                return _unmark(ball, start, -count, mark, h)
            hop_end[h] = count
            ring_est[h] = est
            return max_hop
        if symmetric and h > 1 and frontier_arcs * 14 > indices.size:
            for v in range(n):
                if mark[v] == stamp:
                    continue
                for e in range(indptr[v], indptr[v + 1]):
                    u = indices[e]
                    if mark[u] == stamp and level[u] == h - 1:
                        if count >= ball_cap:
                            return _unmark(ball, start, count, mark, h)
                        mark[v] = stamp
                        level[v] = h
                        ball[count] = v
                        count += 1
                        break
        else:
            for f in range(lo, start) if h > 1 else range(1):
                u = ball[f] if h > 1 else src
                for e in range(indptr[u], indptr[u + 1]):
                    v = indices[e]
                    if mark[v] == stamp:
                        continue
                    if count >= ball_cap:
                        return _unmark(ball, start, count, mark, h)
                    mark[v] = stamp
                    level[v] = h
                    ball[count] = v
                    count += 1
        hop_end[h] = count
        ring_est[h] = count - start
    return max_hop


@numba.njit(cache=True, nogil=True)
def mix64(z):
    """splitmix64's finaliser: a uint64 -> a well-mixed uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def draw_nodes(seed, src, h, start, count, n):
    """Draws start .. start + count - 1 of query src's ring-h sample: uniform node ids in [0, n).

    Why a counter-based hash and not a seeded generator: draw i is a function of (seed, src, h, i)
    alone, so a sharded evaluation (workers/evaluate/sharded.py) that asks the shard owners about
    its draws a chunk at a time makes exactly the one-CSR kernel's draws."""
    key = mix64(np.uint64(seed * 1_000_003 + src * 64 + 32 + h))
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        out[i] = np.int64(mix64(key + np.uint64(start + i) * np.uint64(0x9E3779B97F4A7C15)) % np.uint64(n))
    return out


@numba.njit(cache=True, nogil=True)
def _sample_last_ring(indptr, indices, src, stamp, h, count, ball_cap, relevant_cap, seed, mark, level, ball):
    """A uniform sample of ring h (up to relevant_cap nodes) without enumerating it: nodes outside
    the (h-1)-ball are drawn at random (`draw_nodes`; a node drawn again is skipped) and kept when a
    neighbour sits in ring h - 1; the ring's size is estimated as (kept / tested) x (nodes outside).
    Returns (count after the kept nodes, estimate), or (-count, 0) when ball_cap is reached (the
    hop is incomplete)."""
    n = indptr.size - 1
    outside = n - 1 - count
    tried_mark = -(stamp + 2)            # this query's "drawn, not in the ring" (marks start at -1)
    tested = 0
    members = 0
    draws = 0
    chunk = draw_nodes(seed, src, h, 0, 0, n)
    while members < relevant_cap and tested < 64 * relevant_cap and tested < outside and draws < 4 * n:
        if draws % LAST_RING_CHUNK == 0:
            chunk = draw_nodes(seed, src, h, draws, LAST_RING_CHUNK, n)
        v = chunk[draws % LAST_RING_CHUNK]
        draws += 1
        if mark[v] == stamp or mark[v] == tried_mark:
            continue
        tested += 1
        mark[v] = tried_mark
        for e in range(indptr[v], indptr[v + 1]):
            u = indices[e]
            if mark[u] == stamp and level[u] == h - 1:
                if count >= ball_cap:
                    return -count, 0.0
                mark[v] = stamp
                level[v] = h
                ball[count] = v
                count += 1
                members += 1
                break
    return count, (members * outside / tested if tested > 0 else 0.0)


@numba.njit(cache=True, nogil=True)
def _unmark(ball, start, count, mark, h):
    """Forget the nodes of an incomplete hop h; the last complete hop is h - 1."""
    for k in range(start, count):
        mark[ball[k]] = -1
    return h - 1


@numba.njit(cache=True, nogil=True)
def stratified_candidates(ball, hop_end, top, relevant_cap, seed, src):
    """The nodes of rings 1..top, each ring a uniform sample of at most relevant_cap nodes
    (0 = all), seeded by (seed, src, ring); with their ring and the kept count per ring."""
    kept = np.empty(top, dtype=np.int64)
    for l in range(1, top + 1):
        r = hop_end[l] - hop_end[l - 1]
        kept[l - 1] = r if relevant_cap <= 0 or r <= relevant_cap else relevant_cap
    cand = np.empty(kept.sum(), dtype=np.int64)
    cand_level = np.empty(kept.sum(), dtype=np.int64)
    pos = 0
    for l in range(1, top + 1):
        ring_nodes = np.sort(ball[hop_end[l - 1]:hop_end[l]])   # BFS order differs between engines; ids do not
        r, k = ring_nodes.size, kept[l - 1]
        if k < r:
            np.random.seed(seed * 1_000_003 + src * 64 + l)
            for j in range(k):                   # partial Fisher-Yates: a uniform subset
                x = j + np.random.randint(0, r - j)
                ring_nodes[j], ring_nodes[x] = ring_nodes[x], ring_nodes[j]
        cand[pos:pos + k] = ring_nodes[:k]
        cand_level[pos:pos + k] = l
        pos += k
    return cand, cand_level, kept


@numba.njit(cache=True, nogil=True)
def nodes_scoring_at_least(s, src, t):
    """ge[k] = number of nodes other than src whose score is >= t[k] (t ascending): one pass,
    each score placed among t by a bucket guess over [t[0], t[-1]] and a short local search."""
    u = t.size
    lo, hi = t[0], t[u - 1]
    nb = min(4 * u, 1 << 16)
    width = (hi - lo) / nb if hi > lo else 1.0
    first = np.empty(nb + 1, dtype=np.int64)     # first[b] = #{t < lo + b * width}: one merge pass
    k = 0
    for b in range(nb + 1):
        edge = lo + b * width
        while k < u and t[k] < edge:
            k += 1
        first[b] = k
    cnt = np.zeros(u + 1, dtype=np.int64)
    for j in range(s.size):
        v = s[j]
        if j == src or not v >= lo:
            continue
        b = min(int((v - lo) / width), nb - 1)
        p = first[b]
        while p < u and t[p] <= v:
            p += 1
        while p > 0 and t[p - 1] > v:
            p -= 1
        cnt[p] += 1                               # p = #{t <= v}
    ge = np.zeros(u + 1, dtype=np.int64)
    for k in range(u - 1, -1, -1):
        ge[k] = ge[k + 1] + cnt[k + 1]
    return ge


@numba.njit(cache=True, nogil=True)
def walk_hops(t, lv, ge, ring_size, kept, hops, ring, top, n, ap, base, flags):
    """`finish_block`'s entry, fed read-only inputs only; kernels call `_walk_hops_impl` (why:
    `_sort_segments_kernel`)."""
    _walk_hops_impl(t, lv, ge, ring_size, kept, hops, ring, top, n, ap, base, flags)


@numba.njit(cache=True, nogil=True)
def _walk_hops_impl(t, lv, ge, ring_size, kept, hops, ring, top, n, ap, base, flags):
    """Walk the candidates from the highest score down, tie group by tie group; each relevant
    candidate adds (relevant scoring >= it) / (nodes scoring >= it) to its hops' AP. Counts of a
    sampled ring stand for the whole ring: r itself once, the other kept ones scaled by
    (R_l - 1) / (k_l - 1) in r's ring and R_l / k_l in the others (exact when nothing is sampled)."""
    nh = hops.size
    total = np.zeros(nh)
    above = np.zeros(top + 1, dtype=np.int64)     # kept candidates per ring scoring >= current
    k1 = t.size - 1
    while k1 >= 0:
        k0 = k1
        while k0 > 0 and t[k0 - 1] == t[k1]:
            k0 -= 1
        for i in range(k0, k1 + 1):
            above[lv[i]] += 1
        for i in range(k0, k1 + 1):
            lr = lv[i]
            for kk in range(nh):
                h = hops[kk]
                if h > top or (ring and lr != h) or (not ring and lr > h):
                    continue
                hits = 1.0
                for l in range(h if ring else 1, h + 1):
                    own = 1 if l == lr else 0
                    den = kept[l - 1] - own
                    if den > 0:
                        hits += (above[l] - own) * (ring_size[l - 1] - own) / den
                total[kk] += hits / ge[k0]
        k1 = k0 - 1
    for kk in range(nh):
        h = hops[kk]
        if h > top:
            flags[kk] = 1
            continue
        m = 0.0
        used = 0
        for l in range(h if ring else 1, h + 1):
            m += ring_size[l - 1]
            used += kept[l - 1]
            if kept[l - 1] < ring_size[l - 1]:
                flags[kk] = 2
        base[kk] = m / (n - 1)
        if used > 0:
            ap[kk] = total[kk] / used
