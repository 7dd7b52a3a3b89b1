"""Link prediction: hold out edges before embedding, sample non-edges, score pairs.

Protocol (node2vec / OGB style): ``split_edges`` removes a share of edges from the graph, the
embedding is trained on the rest, and ``link_prediction`` scores the held-out edges against an
equal number of ``sample_non_edges`` pairs drawn from the FULL graph (so a held-out edge is
never used as a negative). Scores come from a direct similarity (``dot``, ``cosine``) or from a
logistic regression on an edge feature (``hadamard``, ``average``, ``l1``, ``l2``), cross-fitted
over two folds so every pair gets an out-of-fold score and all operators are judged on the same
pairs.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy.stats import rankdata

from embedlake.workers.evaluate.classify import blas_threads, decision_scores, fit_logreg_ovr

EDGE_OPERATORS = ("hadamard", "average", "l1", "l2")
DIRECT_SCORES = ("dot", "cosine")


def _edge_list(indptr, indices, directed):
    """Arcs of the CSR as (src, dst); undirected graphs give each edge once (src < dst)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    src = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
    keep = src != indices
    if not directed:
        keep &= src < indices
    return src[keep], indices[keep]


@numba.njit(cache=True)
def _pick_test_edges(src, dst, order, deg, count):
    """Walk the edges in random order and hold one out only while both endpoints keep at least
    one other edge; returns a boolean mask and how many were taken."""
    take = np.zeros(src.size, dtype=np.bool_)
    got = 0
    for i in range(order.size):
        if got >= count:
            break
        e = order[i]
        u = src[e]
        v = dst[e]
        if deg[u] > 1 and deg[v] > 1:
            deg[u] -= 1
            deg[v] -= 1
            take[e] = True
            got += 1
    return take, got


def split_edges(indptr, indices, test_share, seed, directed=False):
    """Hold out ``round(test_share * edges)`` edges for link prediction.

    Returns (train_src, train_dst, test_src, test_dst) as int64 arrays; undirected edges appear
    once (src < dst), self-loops are dropped. Edges are drawn in a seeded random order and an
    edge is held out only if both endpoints keep another edge (degree counted over in- and
    out-arcs for directed graphs), so no node is cut off when that can be avoided; only if that
    leaves too few candidates are the remaining ones drawn from the skipped edges.
    """
    if not 0 < test_share < 1:
        raise ValueError(f"test_share {test_share} is not in (0, 1)")
    src, dst = _edge_list(indptr, indices, directed)
    m = src.size
    n = int(np.asarray(indptr).size - 1)
    count = int(round(test_share * m))
    rng = np.random.default_rng(seed)
    order = rng.permutation(m)
    deg = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
    take, got = _pick_test_edges(src, dst, order, deg.astype(np.int64), count)
    if got < count:                         # unavoidable: fill up in the same random order
        rest = order[~take[order]][: count - got]
        take[rest] = True
    return src[~take], dst[~take], src[take], dst[take]


def sample_non_edges(indptr, indices, count, seed, directed=False):
    """``count`` distinct node pairs (u != v) that are not arcs of the graph, uniformly at random.

    Pass the FULL graph (before ``split_edges``) so held-out edges are never drawn. Undirected
    pairs are returned with src < dst and are distinct as unordered pairs.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    n = indptr.size - 1
    src, dst = _edge_list(indptr, indices, True)
    key_edges = np.sort(src * n + dst)
    possible = n * (n - 1) // (1 if directed else 2) - (key_edges.size if directed else key_edges.size // 2)
    if count > possible:
        raise ValueError(f"asked for {count} non-edges but only {possible} exist")
    rng = np.random.default_rng(seed)
    got = np.empty(0, dtype=np.int64)
    while got.size < count:
        need = count - got.size
        draw = int(need * 1.2) + 16
        u = rng.integers(0, n, draw)
        v = rng.integers(0, n, draw)
        if not directed:
            u, v = np.minimum(u, v), np.maximum(u, v)
        ok = u != v
        key = u[ok] * n + v[ok]
        pos = np.searchsorted(key_edges, key)
        pos[pos == key_edges.size] = 0
        key = key[key_edges[pos] != key] if key_edges.size else key
        # keep first occurrences in draw order (np.unique would sort and bias nothing, but
        # draw order keeps the result a prefix-stable function of the seed)
        allk = np.concatenate([got, key])
        _, first = np.unique(allk, return_index=True)
        got = allk[np.sort(first)][:count]
    return got // n, got % n


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

def edge_features(X, src, dst, operator):
    """Edge features of node2vec (Grover & Leskovec 2016, table 1)."""
    a = X[src].astype(np.float64)
    b = X[dst].astype(np.float64)
    if operator == "hadamard":
        return a * b
    if operator == "average":
        return 0.5 * (a + b)
    if operator == "l1":
        return np.abs(a - b)
    if operator == "l2":
        return (a - b) ** 2
    raise ValueError(f"unknown edge operator {operator!r} (known: {EDGE_OPERATORS + DIRECT_SCORES})")


def direct_scores(X, src, dst, operator):
    a = X[src].astype(np.float64)
    b = X[dst].astype(np.float64)
    s = np.einsum("ij,ij->i", a, b)
    if operator == "cosine":
        s /= np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return s


def roc_auc(y_true, scores) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count one half)."""
    y = np.asarray(y_true, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both positive and negative pairs")
    r = rankdata(scores)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranking_metrics(pos_scores, neg_scores, ks=(10, 50, 100)) -> dict:
    """Rank each positive against the whole pool of negatives (OGB's shared-negatives setting):
    rank = 1 + #negatives scoring higher + half the ties. Returns MRR and Hits@K."""
    neg = np.sort(np.asarray(neg_scores, dtype=np.float64))
    pos = np.asarray(pos_scores, dtype=np.float64)
    higher = neg.size - np.searchsorted(neg, pos, side="right")
    ties = np.searchsorted(neg, pos, side="right") - np.searchsorted(neg, pos, side="left")
    rank = 1.0 + higher + 0.5 * ties
    out = {"mrr": float(np.mean(1.0 / rank))}
    for k in ks:
        out[f"hits@{k}"] = float(np.mean(rank <= k))
    return out


def _standardise(F, mean=None, std=None):
    if mean is None:
        mean, std = F.mean(0), F.std(0)
        std = np.where(std > 0, std, 1.0)
    return (F - mean) / std, mean, std


def link_prediction(X, pos_src, pos_dst, neg_src, neg_dst, *,
                    operators=("hadamard", "average", "l1", "l2", "dot"), seed=0,
                    hits_k=(10, 50, 100), C: float = 1.0, threads: int | None = 1) -> dict:
    """Score held-out edges against non-edges with each operator.

    ``dot``/``cosine`` score a pair directly. The edge-feature operators train an L2 logistic
    regression (C = 1 on standardised features) on one half of the pairs and score the other,
    then swap (2-fold cross-fitting), so every operator is judged on all pairs.
    Returns {"roc_auc": {op: auc}, "mrr": {op: ...}, "hits@K": {op: ...}, "num_pos", "num_neg"}.
    """
    X = np.asarray(X)
    pos_src, pos_dst = np.asarray(pos_src, np.int64), np.asarray(pos_dst, np.int64)
    neg_src, neg_dst = np.asarray(neg_src, np.int64), np.asarray(neg_dst, np.int64)
    src = np.concatenate([pos_src, neg_src])
    dst = np.concatenate([pos_dst, neg_dst])
    y = np.concatenate([np.ones(pos_src.size, bool), np.zeros(neg_src.size, bool)])
    rng = np.random.default_rng(seed)
    fold = np.zeros(y.size, dtype=bool)                  # stratified halves
    for cls in (True, False):
        idx = np.flatnonzero(y == cls)
        fold[rng.permutation(idx)[: idx.size // 2]] = True
    out = {"roc_auc": {}, "mrr": {}, **{f"hits@{k}": {} for k in hits_k},
           "num_pos": int(pos_src.size), "num_neg": int(neg_src.size)}
    for op in operators:
        if op in DIRECT_SCORES:
            s = direct_scores(X, src, dst, op)
        else:
            F = edge_features(X, src, dst, op)
            s = np.empty(y.size)
            for train in (fold, ~fold):
                Ftr, mu, sd = _standardise(F[train])
                with blas_threads(threads):
                    W = fit_logreg_ovr(Ftr, y[train, None], C=C)
                s[~train] = decision_scores(_standardise(F[~train], mu, sd)[0], W)[:, 0]
        out["roc_auc"][op] = roc_auc(y, s)
        rk = ranking_metrics(s[y], s[~y], hits_k)
        out["mrr"][op] = rk["mrr"]
        for k in hits_k:
            out[f"hits@{k}"][op] = rk[f"hits@{k}"]
    return out
