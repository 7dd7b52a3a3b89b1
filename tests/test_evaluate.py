"""Evaluation metrics: agreement with scikit-learn and exact properties on real data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedlake.workers.evaluate import classify, geometry, links
from embedlake.workers.evaluate.classify import f1_scores, label_matrix, predict_top_k, split_permutation
from embedlake.workers.graph.csr import build_csr

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


def _sklearn_reference(X, node_idx, label_idx, ratios, repeats, seed=0):
    """The DeepWalk scoring script (as in shared/bench/peers.py) on the same splits."""
    import warnings
    warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
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
    ours = classify.node_classification(X, lab[:, 0], lab[:, 1], repeats=5)
    assert ours["multilabel"] is False and ours["num_nodes"] == 34
    _check_agreement(ours, _sklearn_reference(X, lab[:, 0], lab[:, 1], (0.1, 0.5, 0.9), 5))
    assert ours["micro_f1"]["0.5"] > 0.8       # the two clubs separate in the spectral embedding
    assert ours == classify.node_classification(X, lab[:, 0], lab[:, 1], repeats=5)   # deterministic


@pytest.fixture(scope="module")
def blogcatalog():
    """(CSR graph, labels, 64-d truncated-SVD embedding): a cheap but informative embedding."""
    e, lab = _load("blogcatalog")
    g = build_csr(e[:, 0], e[:, 1], 10312)
    return g, lab, _svd_embedding(g.to_scipy().astype(np.float64), 64)


def test_node_classification_matches_sklearn_blogcatalog(blogcatalog):
    pytest.importorskip("sklearn")
    _, lab, X = blogcatalog
    ours = classify.node_classification(X, lab[:, 0], lab[:, 1], ratios=(0.1, 0.5), repeats=1)
    assert ours["multilabel"] is True and ours["num_labels"] == 39
    _check_agreement(ours, _sklearn_reference(X, lab[:, 0], lab[:, 1], (0.1, 0.5), 1))
    assert ours["micro_f1"]["0.5"] > 0.25      # well above the ~0.17 of a majority guess


# ---------------------------------------------------------------------------------------------
# classifier internals
# ---------------------------------------------------------------------------------------------

def test_logreg_matches_liblinear_coefficients():
    """Same objective as liblinear (C = 1, regularised intercept): same minimiser."""
    sk = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 12))
    Y = np.stack([(X @ rng.standard_normal(12) + rng.standard_normal(400)) > t for t in (-1.0, 0.0, 1.5)], 1)
    W = classify.fit_logreg_ovr(X, Y, C=1.0)
    for j in range(Y.shape[1]):
        ref = sk.LogisticRegression(solver="liblinear", C=1.0, tol=1e-10, max_iter=10_000).fit(X, Y[:, j])
        np.testing.assert_allclose(W[:-1, j], ref.coef_[0], atol=2e-4)
        np.testing.assert_allclose(W[-1, j], ref.intercept_[0], atol=2e-4)


def test_f1_and_top_k_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    Y = rng.random((60, 7)) < 0.25
    Y[:, 6] = False                                    # a label nobody has: counts 0 in macro
    S = rng.standard_normal((60, 7))
    k = np.maximum(Y.sum(1), 1)
    P = predict_top_k(S, k)
    assert (P.sum(1) == k).all()
    assert all(set(np.flatnonzero(P[i])) == set(np.argsort(-S[i])[:k[i]]) for i in range(60))
    mi, ma = f1_scores(Y, P)
    assert mi == pytest.approx(metrics.f1_score(Y, P, average="micro", zero_division=0), abs=1e-12)
    assert ma == pytest.approx(metrics.f1_score(Y, P, average="macro", zero_division=0), abs=1e-12)


def test_node_classification_output_format_and_single_label_argmax():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 3
    y = np.repeat(np.arange(3), 40)
    X = (centres[y] + rng.standard_normal((120, 8))).astype(np.float32)
    X = np.vstack([X, np.zeros((5, 8), np.float32)])      # 5 unlabelled rows are ignored
    out = classify.node_classification(X, np.arange(120), y, ratios=(0.2, 0.8), repeats=2, seed=7)
    json.dumps(out)
    assert out["ratios"] == [0.2, 0.8] and out["repeats"] == 2 and out["multilabel"] is False
    assert set(out["micro_f1"]) == set(out["macro_f1_std"]) == {"0.2", "0.8"}
    assert out["micro_f1"]["0.8"] > 0.9
    with pytest.raises(ValueError):
        classify.node_classification(X, np.array([0, 500]), np.array([0, 1]))


def test_two_class_single_label_fits_one_column_and_negates_it():
    """A two-class single-label problem is fitted once (label 1's solution is label 0's negated):
    the weights equal the joint fit of both columns within the solver's tolerance, and the F1
    are the joint fit's."""
    rng = np.random.default_rng(3)
    y = (rng.random(600) < 0.35).astype(np.int64)
    X = rng.standard_normal((600, 12)) + 0.8 * y[:, None] * rng.standard_normal(12)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    _, _, Y = label_matrix(np.arange(600), y)
    assert Y.shape[1] == 2
    mi, ma, W = classify.classify_split(X[:400], Y[:400], X[400:], Y[400:], multilabel=False, tol=1e-10,
                                        return_weights=True)
    joint = classify.fit_logreg_ovr(X[:400], Y[:400], tol=1e-10)
    np.testing.assert_allclose(W, joint, atol=1e-7)
    np.testing.assert_array_equal(W[:, 1], -W[:, 0])
    scores = classify.decision_scores(X[400:], joint)
    want = f1_scores(Y[400:], predict_top_k(scores, np.ones(200, dtype=np.int64)))
    assert (mi, ma) == want


# ---------------------------------------------------------------------------------------------
# link prediction
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gnutella():
    e, _ = _load("p2p-gnutella08")
    g = build_csr(e[:, 0], e[:, 1], 6301, directed=True)
    split = links.split_edges(g.indptr, g.indices, 0.1, seed=0, directed=True)
    neg = links.sample_non_edges(g.indptr, g.indices, split[2].size, seed=1, directed=True)
    return g, split, neg


def test_split_edges_partitions_and_keeps_every_node(gnutella):
    g, (trs, trd, tes, ted), _ = gnutella
    m = g.num_arcs
    assert tes.size == round(0.1 * m) and trs.size + tes.size == m
    key = lambda s, d: s * 6301 + d
    all_keys = np.sort(key(np.repeat(np.arange(6301), np.diff(g.indptr)), g.indices.astype(np.int64)))
    np.testing.assert_array_equal(np.sort(np.concatenate([key(trs, trd), key(tes, ted)])), all_keys)
    touched = lambda s, d: np.bincount(np.concatenate([s, d]), minlength=6301) > 0
    assert (touched(trs, trd) == (np.diff(g.indptr) + np.bincount(g.indices, minlength=6301) > 0)).all()
    again = links.split_edges(g.indptr, g.indices, 0.1, seed=0, directed=True)
    assert all((a == b).all() for a, b in zip(again, (trs, trd, tes, ted)))


def test_split_edges_undirected_lists_edges_once():
    e, _ = _load("karate")
    g = build_csr(e[:, 0], e[:, 1], 34)
    trs, trd, tes, ted = links.split_edges(g.indptr, g.indices, 0.2, seed=3)
    assert (trs < trd).all() and (tes < ted).all()
    assert trs.size + tes.size == 78 and tes.size == round(0.2 * 78)
    assert (np.bincount(np.concatenate([trs, trd]), minlength=34) > 0).all()


def test_sample_non_edges_are_distinct_non_edges(gnutella):
    g, _, (ns, nd) = gnutella
    A = g.to_scipy()
    assert ns.size == 2078 and (ns != nd).all()
    assert np.asarray(A[ns, nd]).ravel().sum() == 0
    assert np.unique(ns * 6301 + nd).size == ns.size
    e, _ = _load("karate")
    k = build_csr(e[:, 0], e[:, 1], 34)
    s, d = links.sample_non_edges(k.indptr, k.indices, 400, seed=0)
    assert (s < d).all() and np.unique(s * 34 + d).size == 400
    assert np.asarray(k.to_scipy()[s, d]).ravel().sum() == 0
    with pytest.raises(ValueError):
        links.sample_non_edges(k.indptr, k.indices, 34 * 33 // 2 - 78 + 1, seed=0)


def test_roc_auc_and_ranking_metrics():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = np.round(rng.standard_normal(300) + y, 1)        # rounded: plenty of ties
    assert links.roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    r = links.ranking_metrics([5.0, 2.5, 0.0], [4, 3, 2, 1], ks=(1, 3))
    # ranks: 1, 3, 5
    assert r["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 5) / 3)
    assert r["hits@1"] == pytest.approx(1 / 3) and r["hits@3"] == pytest.approx(2 / 3)


def test_link_prediction_random_vs_svd(gnutella):
    g, (trs, trd, tes, ted), (ns, nd) = gnutella
    ops = ("hadamard", "average", "l1", "l2", "dot", "cosine")
    Xr = np.random.default_rng(0).standard_normal((6301, 64)).astype(np.float32)
    rand = links.link_prediction(Xr, tes, ted, ns, nd, operators=ops)
    json.dumps(rand)
    for op in ("hadamard", "l1", "l2", "dot", "cosine"):
        assert abs(rand["roc_auc"][op] - 0.5) <= 0.03, (op, rand["roc_auc"][op])
    # "average" can memorise high-degree nodes' random vectors (degree bias of uniform negatives)
    assert abs(rand["roc_auc"]["average"] - 0.5) <= 0.06
    import scipy.sparse as sp
    A = sp.coo_matrix((np.ones(trs.size), (trs, trd)), shape=(6301, 6301)).tocsr()
    X = _svd_embedding(((A + A.T) > 0).astype(np.float64), 32)   # embedding of the TRAIN graph only
    svd = links.link_prediction(X, tes, ted, ns, nd, operators=ops)
    assert svd["roc_auc"]["hadamard"] > 0.65 and svd["roc_auc"]["dot"] > 0.55
    assert svd["hits@100"]["hadamard"] > 5 * rand["hits@100"]["hadamard"]
    assert svd == links.link_prediction(X, tes, ted, ns, nd, operators=ops)


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------

def test_reconstruction_map_exact_scores_and_ap():
    metrics = pytest.importorskip("sklearn.metrics")
    e, _ = _load("karate")
    g = build_csr(e[:, 0], e[:, 1], 34)
    A = g.to_scipy().astype(np.float64)
    r = geometry.reconstruction_map(A, g.indptr, g.indices, similarity="precomputed")
    assert r["map"]["1"] == 1.0 and r["queries"] == 34
    two = ((A + A @ A) > 0).astype(np.float64)
    assert geometry.reconstruction_map(two, g.indptr, g.indices, similarity="precomputed")["map"]["2"] == 1.0
    ring = geometry.reconstruction_map(two - A, g.indptr, g.indices, hops=(2,), similarity="precomputed", mode="ring")
    assert ring["map"]["2"] == 1.0            # (A + A^2 > 0) - A marks exactly the 2-hop ring
    rng = np.random.default_rng(0)
    S, R = rng.standard_normal((6, 40)), rng.random((6, 40)) < 0.3
    ours = geometry.average_precision_rows(S, R)
    ref = [metrics.average_precision_score(R[i], S[i]) for i in range(6)]
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_reconstruction_map_embedding_beats_random(blogcatalog):
    g, _, X = blogcatalog
    Xr = np.random.default_rng(0).standard_normal(X.shape).astype(np.float32)
    good = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=300)
    rand = geometry.reconstruction_map(Xr, g.indptr, g.indices, hops=(1, 2), sample=300)
    json.dumps(good)
    assert good["queries"] == 300
    assert abs(rand["map"]["1"] - rand["random_baseline"]["1"]) < 0.01
    assert good["map"]["1"] > 2 * rand["map"]["1"] and good["map"]["2"] > rand["map"]["2"] + 0.1


def test_reconstruction_kernels_see_read_only_arrays_whoever_calls(monkeypatch):
    """Ray hands a task read-only arrays (zero-copy from the object store), in-process callers
    writable ones, and numba types the two apart: a kernel fed both compiles (and caches) twice,
    and a cache warmed in-process made a fresh Ray worker compile again. Every kernel of the
    reconstruction sees read-only arrays only, and the figures do not depend on the caller's kind,
    nor on whether a block's scores are held (`held_block_figures`) or scored twice."""
    import numba
    rng = np.random.default_rng(0)
    g = build_csr(rng.integers(0, 300, 1500), rng.integers(0, 300, 1500), 300)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    writable = geometry.reconstruction_map(X, g.indptr, g.indices, sample=50)
    frozen = [a.copy() for a in (X, g.indptr, g.indices)]
    for a in frozen:
        a.setflags(write=False)
    assert geometry.reconstruction_map(*frozen, sample=50) == writable
    monkeypatch.setattr(geometry, "HOLD_BYTES", 0)         # the blocks scored twice, as on a large graph
    assert geometry.reconstruction_map(*frozen, sample=50) == writable
    kernels = (geometry._candidates_kernel, geometry._held_block_kernel, geometry._sort_segments_kernel,
               geometry._bucket_tables, geometry._place_scores, geometry._reverse_arcs, geometry._other_neighbour,
               geometry.walk_hops)
    for k in kernels:
        inputs = [t for sig in k.signatures for t in sig[:6] if isinstance(t, numba.types.Array)]
        assert inputs and not any(t.mutable for t in inputs), (k.__name__, k.signatures)


def test_unit_rows_by_blocks_equal_the_whole_table_formula():
    """``rows.unit_rows`` normalises a block of rows at a time (no table-sized temporaries in the
    workers) and equals the whole-table expression bit for bit: every row, a selection of rows,
    float32 and float64, zero rows, more rows than a block."""
    from embedlake.workers.evaluate.rows import BLOCK_BYTES, unit_rows
    rng = np.random.default_rng(3)
    for n, d in ((BLOCK_BYTES // (8 * 96) * 3 + 5, 96), (7, 5)):
        X = (rng.standard_normal((n, d)) * rng.random((n, 1)) * 50).astype(np.float32)
        X[1] = 0.0
        for rows in (None, np.sort(rng.choice(n, n // 2 + 1, replace=False))):
            for dtype in (np.float32, np.float64):
                Y = (X if rows is None else X[rows]).astype(dtype)
                norm = np.linalg.norm(Y, axis=1, keepdims=True)
                got = unit_rows(X, rows, dtype)
                assert got.dtype == dtype and got.flags.c_contiguous
                assert np.array_equal(got, Y / np.where(norm > 0, norm, 1.0))


def test_unit_rows_into_a_float32_design_and_the_base_design_read_the_table_in_place():
    """``unit_rows`` writes float64 unit rows into a float32 view (a design's first d columns) as
    ``astype`` would round them; node classification keeps the table, not a float64 copy of the
    labelled rows, and its base design holds every labelled row once, in repeat 0's split order,
    as unit rows computed in the table's precision (float32 here; issue 22, eighth round) with the
    constant column. The compact set (what split tasks get) holds those rows and rebuilds the same
    base design bit for bit; its spectrum is the design rows' Gram spectrum."""
    from embedlake.workers.evaluate.rows import TableRows, unit_rows
    rng = np.random.default_rng(5)
    X = (rng.standard_normal((700, 24)) * 3).astype(np.float32)
    X[4] = 0.0
    X.setflags(write=False)                                   # as the object store hands it
    rows = rng.permutation(700)[:450]
    want = unit_rows(X, rows, np.float64)
    design = np.zeros((450, 25), dtype=np.float32)
    unit_rows(X, rows, np.float64, out=design[:, :24])
    assert np.array_equal(design[:, :24], want.astype(np.float32)) and not design[:, 24].any()
    nodes = np.sort(rng.choice(700, 500, replace=False))
    ls = classify.labelled_set(X, nodes, rng.integers(0, 3, 500), seed=2)
    assert ls.source is X and np.array_equal(ls.index, nodes)
    rows, place = ls.base_design(2)                            # 500 of 700 rows labelled: read in place
    assert isinstance(rows, TableRows) and rows.table is X
    base = rows.array()
    perm = classify.split_permutation(500, 2)
    assert np.array_equal(base[:, :24], unit_rows(X, nodes[perm], np.float32))
    assert np.abs(base[:, :24] - unit_rows(X, nodes[perm], np.float64)).max() < 1e-6
    assert (base[:, 24] == 1).all() and np.array_equal(place[perm], np.arange(500))
    small = ls.compact()
    assert small.index is None and small.source.dtype == np.float32 and not small.normalize
    assert np.array_equal(small.base_design(2)[0].array(), base)
    lam, Q = np.linalg.eigh((base.T @ base).astype(np.float64))
    assert np.array_equal(ls.spectrum[0], np.maximum(lam, 0.0)) and np.array_equal(ls.spectrum[1], Q)
    few = classify.labelled_set(X, nodes[:300], rng.integers(0, 3, 300), seed=2)   # under half the table: a copy
    assert isinstance(few.base_design(2)[0], np.ndarray)
    assert np.array_equal(few.base_design(2)[0][:, :24],
                          unit_rows(X, nodes[:300][classify.split_permutation(300, 2)], np.float32))
    X64 = X.astype(np.float64)                                # a float64 table: unit rows in float64, rounded
    ls64 = classify.labelled_set(X64, nodes, rng.integers(0, 3, 500), seed=2)
    assert np.array_equal(ls64.base_design(2)[0][:, :24], unit_rows(X64, nodes[perm], np.float64).astype(np.float32))


@pytest.mark.parametrize("share", [0.9, 0.5, 0.1])
def test_table_rows_products_equal_the_design_arrays(share):
    """`TableRows` reads design rows [T[r] / |T[r]|, 1] from the table in place (issue 22, ninth
    and tenth rounds): its products (numba kernels streaming the whole table for most rows, reading
    only its rows for a small share; a Newton-CG step's two products in one pass) equal the
    gathered design array's to float32 rounding; ``array()`` is `unit_rows`' bit for bit, ``gram()``
    the array's Gram matrix; slices and index arrays select design rows; without norms the rows
    are read as they are."""
    from embedlake.workers.evaluate.rows import TableRows, row_norms, unit_rows
    rng = np.random.default_rng(11)
    T = rng.standard_normal((400, 16)).astype(np.float32)
    T[7] = 0.0
    T.setflags(write=False)
    rows = rng.permutation(400)[:int(share * 400)]
    A = TableRows(T, rows, row_norms(T, rows))
    X = A.array()
    assert X.shape == A.shape and np.array_equal(X[:, :16], unit_rows(T, rows, np.float32)) and (X[:, 16] == 1).all()
    assert A.dense == (share >= 0.25)
    B = rng.standard_normal((17, 3)).astype(np.float32)
    V = rng.standard_normal((rows.size, 3)).astype(np.float32)
    assert np.allclose(A @ B, X @ B, atol=1e-5) and np.allclose(A @ B[:, 0], X @ B[:, 0], atol=1e-5)
    assert np.allclose(A.T @ V, X.T @ V, rtol=1e-5, atol=1e-4) and (A.T @ V).dtype == np.float64
    assert np.allclose(A.T @ V[:, 0], X.T @ V[:, 0], rtol=1e-5, atol=1e-4)
    D = rng.random((rows.size, 3)).astype(np.float32)
    xp = np.empty((rows.size, 3), dtype=np.float32)
    H = A.hessian(D, B, xp)
    X64 = X.astype(np.float64)
    assert np.allclose(xp, X @ B, atol=1e-5)
    assert np.allclose(H, X64.T @ (D * (X64 @ B)), rtol=1e-4, atol=1e-4) and H.dtype == np.float64
    assert np.allclose(A.gram(), X64.T @ X64, rtol=1e-5, atol=1e-3)
    from embedlake.workers.evaluate.row_kernels import design_pass
    assert len(design_pass.signatures) == 1            # one compiled (and cached) version, whoever calls
    out = np.empty((rows.size, 2), dtype=np.float32)
    assert classify.skinny_product(A, B[:, :2], out=out) is out and np.allclose(out, X @ B[:, :2], atol=1e-5)
    assert np.array_equal(A[5:].array(), X[5:]) and np.array_equal(A[np.array([3, 1])].array(), X[[3, 1]])
    raw = TableRows(T, rows, None)
    assert np.array_equal(raw.array()[:, :16], T[rows]) and np.allclose(raw @ B, raw.array() @ B, atol=1e-5)


def test_knn_recall():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 32)).astype(np.float32)
    assert geometry.knn_recall(X, X, k=10, queries=200) == 1.0
    assert geometry.knn_recall(X, 3.0 * X, k=10, queries=200) == 1.0      # cosine: scale-free
    noisy = geometry.knn_recall(X, X + 0.3 * rng.standard_normal(X.shape).astype(np.float32), k=10, queries=200)
    assert 0.2 < noisy < 0.95
    assert geometry.knn_recall(X, rng.standard_normal(X.shape), k=10, queries=200) < 0.05
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert geometry.knn_recall(X, lambda ids: U[ids] @ U.T, k=10, queries=200) == 1.0   # score callable


def test_procrustes_and_neighbourhood_overlap():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 16))
    Q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    Y = X @ Q
    Z, R = geometry.procrustes_align(Y, X, return_rotation=True)
    np.testing.assert_allclose(Z, X, atol=1e-10)
    np.testing.assert_allclose(R, Q.T, atol=1e-10)
    # shared rows only: align a permuted subset, then every row (incl. unshared ones) is recovered
    perm = rng.permutation(500)
    Z2 = geometry.procrustes_align(Y, X[perm], shared=(perm[:100], np.arange(100)))
    np.testing.assert_allclose(Z2, X, atol=1e-10)
    assert geometry.neighbourhood_overlap(X, Y, k=10, sample=200) == 1.0
    assert geometry.neighbourhood_overlap(X, rng.standard_normal(X.shape), k=10, sample=200) < 0.1


def test_node_classification_label_ids_and_duplicates():
    """Arbitrary label values and repeated (node, label) rows give the same figures."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((90, 6)).astype(np.float32)
    nodes = np.repeat(np.arange(90), 2)
    labels = rng.integers(0, 4, nodes.size)
    base = classify.node_classification(X, nodes, labels, ratios=(0.5,), repeats=2)
    renamed = classify.node_classification(X, nodes, labels * 10 + 7, ratios=(0.5,), repeats=2)
    dup = classify.node_classification(X, np.r_[nodes, nodes[:30]], np.r_[labels, labels[:30]], ratios=(0.5,), repeats=2)
    assert base == renamed == dup
    assert classify.node_classification(X, nodes, labels, ratios=(0.5,), repeats=2, threads=None) == base


def test_split_edges_fills_up_when_unavoidable():
    """A star: every edge is a leaf's last one, so the share can only be met by cutting leaves."""
    g = build_csr(np.zeros(10, np.int64), np.arange(1, 11), 11)
    trs, trd, tes, ted = links.split_edges(g.indptr, g.indices, 0.3, seed=0)
    assert tes.size == 3 and trs.size == 7


def test_bootstrap_sd_of_micro_f1_is_the_binomial_one_for_single_labels():
    """Single label, one prediction per node: micro-F1 is the accuracy, whose sampling sd over
    the test nodes is sqrt(p (1 - p) / n); the bootstrap behind eval.mode=sampled's ci95 finds it."""
    rng = np.random.default_rng(3)
    n, L = 4000, 5
    truth = rng.integers(0, L, n)
    guess = np.where(rng.random(n) < 0.7, truth, (truth + 1) % L)
    Y, P = np.eye(L, dtype=bool)[truth], np.eye(L, dtype=bool)[guess]
    micro, _ = classify.f1_scores(Y, P)
    sd_micro, sd_macro = classify.f1_bootstrap_sd(Y, P, 400, 0)
    want = np.sqrt(micro * (1 - micro) / n)
    assert abs(micro - np.mean(truth == guess)) < 1e-12
    assert 0.85 * want < sd_micro < 1.15 * want and sd_macro > 0
    assert classify.f1_bootstrap_sd(Y, Y, 100, 0) == (0.0, 0.0)           # a perfect split does not vary
    assert classify.f1_bootstrap_sd(Y, P, 100, 1) == classify.f1_bootstrap_sd(Y, P, 100, 1)


def test_argmax_codes_and_skinny_products_equal_what_they_replace():
    """Issue 22, eighth round: single-label predictions by argmax equal the stable sort's top-1
    (ties: the lower column), bootstrap categories by integer codes come in the order of the
    packed byte rows (so the same draws give the same ci95), and 2-4 column products run as
    matrix-vector products into a given buffer, equal to the whole product."""
    rng = np.random.default_rng(8)
    scores = rng.integers(0, 3, (500, 4)).astype(np.float32)              # many ties
    scores[:5, 1] = np.inf
    ones = np.ones(500, dtype=np.int64)
    order = np.argsort(-scores, axis=1, kind="stable")
    want = np.zeros(scores.shape, dtype=bool)
    want[np.arange(500), order[:, 0]] = True
    assert np.array_equal(classify.predict_top_k(scores, ones), want)
    assert classify.predict_top_k(scores, np.full(500, 2)).sum() == 1000  # k > 1: the sorting path
    for labels in (2, 3, 21, 40):                                          # 6 to 120 hit columns
        hits = rng.random((300, 3 * labels)) < 0.2
        packed = np.packbits(hits, axis=1)
        _, first, counts = np.unique(packed, axis=0, return_index=True, return_counts=True)
        _, first2, counts2 = np.unique(classify.hit_codes(hits), axis=0, return_index=True, return_counts=True)
        assert np.array_equal(first, first2) and np.array_equal(counts, counts2)
    A = rng.standard_normal((700, 33)).astype(np.float32)
    for cols in (1, 2, 3, 4, 5):
        B = rng.standard_normal((33, cols)).astype(np.float32)
        np.testing.assert_allclose(classify.skinny_product(A, B), A @ B, rtol=1e-5, atol=1e-5)
        out = np.full((700, 6), np.nan, dtype=np.float32)
        classify.skinny_product(A, B, out=out[:, :cols])
        np.testing.assert_allclose(out[:, :cols], A @ B, rtol=1e-5, atol=1e-5)
        assert np.isnan(out[:, cols:]).all()


def test_split_chain_by_levels_equals_the_splits_one_at_a_time():
    """``split_chain_f1`` fits level by level and takes each warm start's margins and the test
    scores from one product of the base design per level; the figures equal scoring each split
    on its own (``split_scores``, warm-started from the repeat's previous W), on a single-label
    (two-class) and a multi-label set, with a repeat laid out only up to its small ratio."""
    rng = np.random.default_rng(11)
    X = (rng.standard_normal((900, 24)) + rng.integers(0, 3, (900, 1))).astype(np.float32)
    cases = [(np.arange(900), (X[:, 0] > 0.5).astype(np.int64)),
             (np.r_[np.arange(900), np.arange(0, 900, 3)], np.r_[rng.integers(0, 4, 900), rng.integers(0, 4, 300)])]
    splits = [(0.1, 0), (0.5, 0), (0.9, 0), (0.1, 1), (0.2, 1), (0.1, 2)]
    for nodes, labels in cases:
        ls = classify.labelled_set(X, nodes, labels, seed=3, spectrum_rows=400, spectrum_rank=8)
        got = classify.split_chain_f1(ls, splits, seed=3, bootstrap=50, full_ratios={0.1})
        prev = {}
        for (r, rep), row in zip(splits, got):
            mi, ma, sd, W = classify.split_scores(ls, r, rep, seed=3, start=prev.get(rep),
                                                  bootstrap=0 if r == 0.1 else 50)
            prev[rep] = W
            assert row[:2] == (r, rep)
            assert abs(row[2] - mi) < 1e-12 and abs(row[3] - ma) < 1e-12, (r, rep, row, mi, ma)
            assert (row[4], row[5]) == pytest.approx(sd, abs=1e-12)


def test_node_classification_on_the_table_in_place_equals_the_design_copys(monkeypatch):
    """Labelled rows that are most of a float32 table and few labels: the splits read the design
    rows from the table in place (`TableRows`, issue 22 ninth round); their figures equal those of
    the base design copy (forced by raising ``IN_PLACE_SHARE``) to float32 rounding of the products
    (exactly here), sampled and exact protocol; sets of more labels than ``SKINNY_COLUMNS`` keep the copy."""
    from embedlake.workers.evaluate.rows import TableRows
    rng = np.random.default_rng(4)
    X = (rng.standard_normal((1200, 32)) + rng.integers(0, 3, (1200, 1))).astype(np.float32)
    nodes, labels = np.arange(1100), (X[:1100, 0] > 0.5).astype(np.int64)
    opts = dict(ratios=(0.1, 0.5, 0.9), seed=2, spectrum_rows=500, spectrum_rank=8, bootstrap=40,
                small_ratio=0.1, small_repeats=3, repeats=1)
    assert isinstance(classify.labelled_set(X, nodes, labels).base_design(0)[0], TableRows)
    for kw in (opts, dict(ratios=(0.1, 0.5, 0.9), seed=2, repeats=3)):
        got = classify.node_classification(X, nodes, labels, **kw)
        monkeypatch.setattr(classify, "IN_PLACE_SHARE", 2.0)
        want = classify.node_classification(X, nodes, labels, **kw)
        monkeypatch.undo()
        for key in ("micro_f1", "macro_f1"):
            assert got[key] == pytest.approx(want[key], abs=1e-12)
    many = classify.labelled_set(X, np.arange(1200), rng.integers(0, 6, 1200))
    assert isinstance(many.base_design(0)[0], np.ndarray)


def test_figures_task_shares_the_tables_norms_and_its_figures_equal_each_stages():
    """`figures_stage` computes the table's row norms once and hands them to node classification
    (its in-place design reads them) and reconstruction (issue 22, eleventh round): its figures
    equal those of `classify_stage` and `reconstruct_stage` computing their own, exactly."""
    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate import stages as es
    from embedlake.workers.evaluate.rows import TableRows, row_norms
    rng = np.random.default_rng(6)
    n = 900
    X = (rng.standard_normal((n, 24)) + rng.integers(0, 3, (n, 1))).astype(np.float32)
    X[7] = X[3]
    nodes, labels = np.arange(0, n, 1), (X[:, 0] > 0.5).astype(np.int64)
    src = rng.integers(0, n, 4 * n)
    dst = (src + rng.integers(1, 40, src.size)) % n
    g = build_csr(src, dst, n, directed=False)
    csr = (g.indptr, g.indices, None, False)
    cfg = EvalConfig()
    ls = classify.labelled_set(X, nodes, labels, norms=row_norms(X, np.arange(n)))
    design = ls.base_design(0)[0]
    assert isinstance(design, TableRows)
    assert np.array_equal(design.norms, row_norms(X, design.rows))
    both = es.figures_stage(X, (nodes, labels), csr, cfg)
    nc, rc = es.classify_stage(X, (nodes, labels), cfg), es.reconstruct_stage(X, csr, cfg)
    for key in ("micro_f1", "macro_f1", "micro_f1_ci95", "macro_f1_ci95"):
        assert both["node_classification"][key] == nc[key]
    assert both["reconstruction"]["map"] == rc["map"] and both["reconstruction"]["ci95"] == rc["ci95"]
    # the timeline's per-component usage (issue 22, thirteenth round), as the evaluate task logs it
    from embedlake.tasks.evaluate import timeline_line
    parts = both["timeline"]["parts"]
    assert set(parts) == {"node_classification", "reconstruction"}
    assert all(cpu >= 0 and faults >= 0 and switches >= 0 for cpu, faults, switches in parts.values())
    line = timeline_line({"worker": both["timeline"], "figures": 1.0, "report": 1.1}, both["timeline"]["started"])
    assert f"node classification {parts['node_classification'][0]:.3f} CPU-s" in line and "reconstruction" in line


@pytest.mark.parametrize("width", [1, 5, 8, 15, 17])
def test_hit_categories_equal_numpys_unique_rows(width):
    """`hit_categories` finds the distinct hit rows (packed bytes, or integers up to 8 bytes) in
    ``np.unique(axis=0)``'s order, with its first occurrences and counts: the bootstrap's draws
    and intervals stay what they were (issue 22, ninth round)."""
    rng = np.random.default_rng(width)
    hits = rng.random((3000, width * 8)) < 0.02
    hits[::7] = hits[0]
    codes = classify.hit_codes(hits)
    _, first, counts = np.unique(codes, axis=0, return_index=True, return_counts=True)
    got_first, got_counts = classify.hit_categories(codes)
    assert np.array_equal(got_first, first) and np.array_equal(got_counts, counts)
    empty = classify.hit_categories(classify.hit_codes(hits[:0]))
    assert empty[0].size == 0 and empty[1].size == 0


def test_blas_threads_trusts_an_environment_that_already_limits_blas(monkeypatch):
    """``blas_threads`` skips threadpoolctl (its first call scans every loaded library) when the
    environment OpenBLAS read holds it to the threads asked for, as in a Ray worker; otherwise it
    limits through the one controller of the process."""
    import contextlib
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert classify.environment_blas_threads() == 1
    assert isinstance(classify.blas_threads(1), contextlib.nullcontext)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")                      # OpenBLAS's own variable first
    assert classify.environment_blas_threads() == 4
    pytest.importorskip("threadpoolctl")
    with classify.blas_threads(1):
        # the controller's libraries (those loaded when it was built: numpy's, which runs the
        # products, always among them) run one thread; a BLAS loaded later in the process (torch's,
        # by another test) is not the solver's and is not in it
        known = [i for i in classify.blas_controller().info() if i["user_api"] == "blas"]
        assert any("numpy" in i["filepath"] for i in known)
        assert all(i["num_threads"] == 1 for i in known)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "many")
    assert classify.environment_blas_threads() > 1000
    assert isinstance(classify.blas_threads(None), contextlib.nullcontext)
