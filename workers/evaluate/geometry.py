"""Label-free checks of an embedding's geometry: graph reconstruction (mAP of k-hop
neighbourhoods), k-NN recall of an approximation (compression), neighbourhood overlap and
orthogonal Procrustes alignment between two runs (stability).

All similarity searches are exact brute force in float32 blocks, sized so a block of scores
stays around 64 MB whatever the graph size; queries are sampled with a seeded generator.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

_BLOCK_ELEMS = 8_000_000           # scores per block (32 MB float32; argsort/cumsum temporaries ~4x)


def _unit_rows(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(nrm > 0, nrm, 1.0)


def _sample(n: int, count: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
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
        M = X.tocsr() if sp.issparse(X) else np.asarray(X)
        if sp.issparse(M):
            return lambda ids: M[ids].toarray().astype(np.float32)
        return lambda ids: np.asarray(M[ids], dtype=np.float32)
    if similarity == "cosine":
        U = _unit_rows(X)
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
    q = _sample(n, queries, seed)
    exact = top_k_neighbours(X_full, q, k, similarity="cosine")
    approx = top_k_neighbours(X_approx_or_scores, q, k, similarity=similarity)
    hit = (exact[:, :, None] == approx[:, None, :]).any(2).sum(1)
    return float(np.mean(hit / exact.shape[1]))


def neighbourhood_overlap(X_a, X_b, k=10, sample=1000, seed=0) -> float:
    """Mean Jaccard similarity of each sampled node's top-k cosine neighbours in two embeddings
    of the same nodes (run-to-run stability; invariant to rotations, unlike row distances)."""
    if X_a.shape[0] != X_b.shape[0]:
        raise ValueError("both embeddings must have the same rows")
    q = _sample(X_a.shape[0], sample, seed)
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

def _adjacency(indptr, indices) -> sp.csr_matrix:
    indptr = np.asarray(indptr, dtype=np.int64)
    n = indptr.size - 1
    A = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), np.asarray(indices), indptr), shape=(n, n))
    A.setdiag(0)
    A.eliminate_zeros()
    return A


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
                       similarity="cosine", mode="ball") -> dict:
    """Graph reconstruction (RESTORE-style): for each sampled node, rank every other node by
    similarity and compute the average precision of its neighbourhood within h hops (distance
    1..h along the CSR's arcs; ``mode="ring"``: exactly h hops); report the mean over nodes per
    hop. On small-world graphs the 3-hop ball covers nearly every node: compare with
    ``random_baseline``.

    Queries are a seeded sample of ``sample`` nodes with at least one neighbour (all of them when
    the graph is smaller). ``similarity``: cosine | dot | precomputed (X is then an n x n score
    matrix, dense or sparse, e.g. the adjacency itself). ``random_baseline`` is the mean share
    of relevant nodes, about the mAP of a random ranking.
    """
    if mode not in ("ball", "ring"):
        raise ValueError(f"mode must be 'ball' or 'ring', not {mode!r}")
    A = _adjacency(indptr, indices)
    AT = A.T.tocsr()
    n = A.shape[0]
    hops = sorted(int(h) for h in hops)
    score = _scorer(X, similarity)
    pool = np.flatnonzero(np.diff(A.indptr) > 0)
    q_all = _sample(n, sample, seed, pool)
    aps = {h: [] for h in hops}
    base = {h: [] for h in hops}
    for q in _blocks(q_all, n):
        S = np.array(score(q), dtype=np.float32, copy=True)
        rows = np.arange(q.size)
        S[rows, q] = -np.inf                         # the node itself is neither ranked first nor relevant
        order = np.argsort(-S, axis=1)               # one sort serves every hop
        # breadth-first search for the whole block at once, dense (b x n) boolean masks:
        # one sparse-times-dense product per hop, cheaper than sparse products once the
        # frontier fills up (hop 2 already reaches most of a social graph).
        seen = np.zeros((q.size, n), dtype=bool)
        seen[rows, q] = True
        frontier = seen.copy()
        for h in range(1, hops[-1] + 1):
            if h == 1:
                nxt = A[q].toarray() > 0
            else:
                nxt = (AT @ frontier.T.astype(np.float32)).T > 0
            frontier = nxt & ~seen
            seen |= frontier
            if h in aps:
                R = (seen if mode == "ball" else frontier).copy()
                R[rows, q] = False
                aps[h].append(average_precision_rows(S, R, order))
                base[h].append(R.sum(1) / (n - 1))
    out = {"map": {}, "random_baseline": {}, "queries": int(q_all.size)}
    for h in hops:
        a = np.concatenate(aps[h]) if aps[h] else np.empty(0)
        out["map"][str(h)] = float(np.nanmean(a)) if a.size else float("nan")
        out["random_baseline"][str(h)] = float(np.mean(np.concatenate(base[h]))) if base[h] else float("nan")
    return out
