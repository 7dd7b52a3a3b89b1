"""Evaluation metrics: agreement with scikit-learn and exact properties on real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedlake.workers import evaluate as ev
from embedlake.workers.eval_classify import label_matrix, split_permutation

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "datasets"


def _need(name):
    d = DATA / name
    if not (d / "edges.tsv").exists():
        pytest.skip(f"{d} is absent (shared datasets not mounted)")
    return d


def _load(name):
    d = _need(name)
    e = np.loadtxt(d / "edges.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    lab = np.loadtxt(d / "labels.tsv", skiprows=1, dtype=np.int64, ndmin=2) if (d / "labels.tsv").exists() else None
    return e, lab


def _adjacency(e, n):
    import scipy.sparse as sp
    A = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    return ((A + A.T) > 0).astype(np.float64).tocsr()


def _svd_embedding(A, d):
    from scipy.sparse.linalg import svds
    U, s, _ = svds(A, k=d, random_state=0)
    return (U * np.sqrt(s)).astype(np.float32)


@pytest.mark.filterwarnings("ignore::UserWarning")
def _sklearn_reference(X, node_idx, label_idx, ratios, repeats, seed=0):
    """The DeepWalk scoring script (as in shared/bench/peers.py) on the same splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    nodes, _, Y = label_matrix(node_idx, label_idx)
    Y = Y.astype(int)
    Xl = X[nodes].astype(np.float64)
    Xl /= np.linalg.norm(Xl, axis=1, keepdims=True)
    out = {}
    for r in ratios:
        mi, ma = [], []
        for rep in range(repeats):
            perm = split_permutation(len(Xl), seed + rep)
            k = int(r * len(Xl))
            tr, te = perm[:k], perm[k:]
            cols = Y[tr].sum(0) > 0
            clf = OneVsRestClassifier(LogisticRegression(solver="liblinear")).fit(Xl[tr], Y[tr][:, cols])
            P = clf.predict_proba(Xl[te])
            pred = np.zeros_like(Y[te])
            cidx = np.flatnonzero(cols)
            for i, kk in enumerate(Y[te].sum(1)):
                pred[i, cidx[np.argsort(-P[i])[:kk]]] = 1
            mi.append(f1_score(Y[te], pred, average="micro", zero_division=0))
            ma.append(f1_score(Y[te], pred, average="macro", zero_division=0))
        out[str(r)] = (np.mean(mi), np.mean(ma))
    return out


def _check_agreement(ours, ref, tol=0.01):
    for key, (mi, ma) in ref.items():
        assert abs(ours["micro_f1"][key] - mi) <= tol, (key, ours["micro_f1"][key], mi)
        assert abs(ours["macro_f1"][key] - ma) <= tol, (key, ours["macro_f1"][key], ma)


def test_node_classification_matches_sklearn_karate():
    pytest.importorskip("sklearn")
    e, lab = _load("karate")
    X = _svd_embedding(_adjacency(e, 34), 4)
    ours = ev.node_classification(X, lab[:, 0], lab[:, 1], repeats=5)
    assert ours["multilabel"] is False and ours["num_nodes"] == 34
    _check_agreement(ours, _sklearn_reference(X, lab[:, 0], lab[:, 1], (0.1, 0.5, 0.9), 5))
    assert ours["micro_f1"]["0.5"] > 0.8       # the two clubs separate in the spectral embedding
    assert ours == ev.node_classification(X, lab[:, 0], lab[:, 1], repeats=5)   # deterministic


def test_node_classification_matches_sklearn_blogcatalog():
    pytest.importorskip("sklearn")
    e, lab = _load("blogcatalog")
    X = _svd_embedding(_adjacency(e, 10312), 64)
    ours = ev.node_classification(X, lab[:, 0], lab[:, 1], ratios=(0.1, 0.5), repeats=1)
    assert ours["multilabel"] is True and ours["num_labels"] == 39
    _check_agreement(ours, _sklearn_reference(X, lab[:, 0], lab[:, 1], (0.1, 0.5), 1))
    assert ours["micro_f1"]["0.5"] > 0.25      # well above the ~0.17 of a majority guess
