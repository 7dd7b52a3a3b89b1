"""FastRP (issue 6): partition/thread invariance, projection statistics, exactness against a dense
float64 evaluation of the same formula, exact moments, and quality on BlogCatalog."""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from embedlake.workers.fastrp import kernels as F
from embedlake.workers.graph.csr import build_csr

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BLOG = SHARED / "datasets" / "blogcatalog"


def _power_law_graph(n=1500, m=9000, seed=1, directed=True, weighted=True):
    """Skewed degrees (hubs), weights, a dangling node and an isolated node."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n + 1) ** 0.9
    p /= p.sum()
    src = rng.choice(n - 2, size=m, p=p[:-2] / p[:-2].sum())
    dst = rng.choice(n - 1, size=m, p=p[:-1] / p[:-1].sum())        # node n-2 can only be a target
    w = rng.uniform(0.1, 3.0, size=m).astype(np.float32) if weighted else None
    return build_csr(src, dst, n, weights=w, directed=directed)     # node n-1: isolated


def _dense_fastrp(g, dim, iteration_weights, beta, normalization, standardize, seed, density=None):
    """The formula in float64 with dense matrices, from the same projection R."""
    n = g.num_nodes
    A = np.zeros((n, n))
    rows = np.repeat(np.arange(n), np.diff(g.indptr))
    A[rows, g.indices] = 1.0 if g.weights is None else g.weights.astype(np.float64)
    deg = A.sum(1)
    deg[deg == 0] = 1.0
    if normalization == "row":
        S = A / deg[:, None]
    elif normalization == "sym":
        S = A / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    else:
        S = A
    R = F.random_projection(n, dim, density=density, seed=seed, dtype=np.float64)
    U = (deg ** beta)[:, None] * R
    out = np.zeros((n, dim))
    for w in iteration_weights:
        U = S @ U
        out += w * U
    if standardize:
        sd = out.std(0)
        sd[sd == 0] = 1.0
        out = (out - out.mean(0)) / sd
    return out


# ----------------------------------------------------------------------------- random projection
def test_projection_density_scale_and_signs():
    n, dim, density = 4096, 256, 0.05
    R = F.random_projection(n, dim, density=density, seed=3)
    assert R.dtype == np.float32 and R.shape == (n, dim)
    nz = R != 0
    total = n * dim
    k = int(nz.sum())
    sigma = math.sqrt(total * density * (1 - density))
    assert abs(k - total * density) < 5 * sigma                           # binomial count
    scale = np.float32(math.sqrt(1 / density))
    assert np.all(np.abs(R[nz]) == scale)                                  # +-sqrt(1/density) exactly
    pos = int((R > 0).sum())
    assert abs(pos - k / 2) < 5 * math.sqrt(k / 4)                         # fair signs
    assert abs(float((R.astype(np.float64) ** 2).mean()) - 1.0) < 0.03     # E[x^2] = 1
    # no structure along rows or columns: per-column and per-row counts are binomial too
    col = nz.sum(0)
    assert abs(col.mean() - n * density) < 5 * math.sqrt(n * density / dim)
    chi2 = float(((col - n * density) ** 2 / (n * density * (1 - density))).sum())
    assert chi2 < dim + 6 * math.sqrt(2 * dim)
    # column pairs are uncorrelated
    C = np.corrcoef(R[:, :32].T.astype(np.float64))
    off = C[~np.eye(32, dtype=bool)]
    assert np.abs(off).max() < 6 / math.sqrt(n)


def test_projection_default_density_rows_and_seed():
    n, dim = 10_000, 128
    R = F.random_projection(n, dim, seed=7)
    frac = float((R != 0).mean())
    assert abs(frac - 1 / math.sqrt(n)) < 5 * math.sqrt(0.01 / (n * dim))
    assert np.all(np.abs(R[R != 0]) == np.float32(math.sqrt(math.sqrt(n))))
    # any row range or id list is generated independently and identically
    assert np.array_equal(F.random_projection(n, dim, seed=7, rows=range(1234, 5678)), R[1234:5678])
    ids = np.array([9999, 0, 42, 42])
    assert np.array_equal(F.random_projection(n, dim, seed=7, rows=ids), R[ids])
    assert np.array_equal(F.random_projection(n, dim, seed=7, threads=1), R)
    assert np.array_equal(F.random_projection(n, dim, seed=7, dtype=np.float64), R.astype(np.float64))
    assert not np.array_equal(F.random_projection(n, dim, seed=8), R)
    D = F.random_projection(50, 16, density=1.0, seed=1)
    assert np.all(np.abs(D) == 1.0)


def test_projection_matches_pure_python_spec():
    """Entry (i, j) = SplitMix64 stream keyed by (seed, i): recomputed here with Python ints."""
    M = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    n, dim, density, seed = 1000, 24, 0.3, 12345
    thr = int(math.ldexp(density, 64))
    R = F.random_projection(n, dim, density=density, seed=seed, threads=1)
    for i in (0, 1, 2, 517, 999):
        key = mix(seed ^ ((i * 0xD1B54A32D192ED03 + 0x9E3779B97F4A7C15) & M))
        for j in range(dim):
            z = mix((key + (j + 1) * 0x9E3779B97F4A7C15) & M)
            want = 0.0 if z >= thr else (1.0 if z & 1 == 0 else -1.0) * math.sqrt(1 / density)
            assert R[i, j] == np.float32(want), (i, j)


# ----------------------------------------------------------------------------- distributed invariance
@pytest.mark.parametrize("normalization", ["row", "sym", "none"])
def test_partitions_bit_identical(normalization):
    g = _power_law_graph()
    kw = dict(dim=48, iteration_weights=(0.5, 1.0, 2.0), normalization=normalization, seed=5)
    if normalization == "none":
        kw["beta"] = -1.0
    ref = F.fastrp(g.indptr, g.indices, g.weights, partitions=1, **kw)
    assert ref.dtype == np.float32 and np.isfinite(ref).all()
    for p in (3, 7):
        assert np.array_equal(F.fastrp(g.indptr, g.indices, g.weights, partitions=p, **kw), ref), p


def test_threads_bit_identical():
    g = _power_law_graph(directed=False, weighted=False)
    one = F.fastrp(g.indptr, g.indices, g.weights, dim=64, threads=1)
    two = F.fastrp(g.indptr, g.indices, g.weights, dim=64, threads=2, partitions=5)
    assert np.array_equal(one, two)
    U = F.fastrp_init(g.indptr, g.indices, g.weights, 64)
    deg = F.node_degrees(g.indptr, g.weights)
    full = F.propagate_rows(g.indptr, g.indices, g.weights, U, 0, g.num_nodes, degrees=deg, threads=1)
    assert np.array_equal(F.propagate_rows(g.indptr, g.indices, g.weights, U, 0, g.num_nodes, threads=2), full)
    # a row range, written into a caller's buffer, equals the slice of the full product
    buf = np.empty((400, 64), np.float32)
    part = F.propagate_rows(g.indptr, g.indices, g.weights, U, 100, 500, degrees=deg, out=buf)
    assert part is buf and np.array_equal(buf, full[100:500])
    # fused accumulation == separate accumulate_rows
    acc = np.ones((400, 64), np.float32)
    F.propagate_rows(g.indptr, g.indices, g.weights, U, 100, 500, degrees=deg, accumulate_into=acc,
                     accumulate_weight=6.67)
    assert np.array_equal(acc, F.accumulate_rows(np.ones((400, 64), np.float32), full[100:500], 6.67))


@pytest.mark.parametrize("normalization,weighted", [("row", False), ("sym", True), ("none", True)])
def test_sparse_first_step_equals_dense(normalization, weighted):
    g = _power_law_graph(directed=True, weighted=weighted)
    deg = F.node_degrees(g.indptr, g.weights)
    kw = dict(beta=-0.5, density=0.1, seed=11, degrees=deg)
    U0 = F.fastrp_init(g.indptr, g.indices, g.weights, 40, **kw)
    parts = [F.fastrp_init_sparse(g.indptr, g.indices, g.weights, 40, rows=(a, b), **kw)
             for a, b in ((0, 10), (10, 900), (900, g.num_nodes))]
    R = F.concat_sparse_rows(parts)
    assert np.array_equal(F.densify(R), U0)
    assert R.cols.size == int((U0 != 0).sum())
    dense = F.propagate_rows(g.indptr, g.indices, g.weights, U0, 0, g.num_nodes,
                             normalization=normalization, degrees=deg)
    sparse = F.propagate_sparse_rows(g.indptr, g.indices, g.weights, R, 0, g.num_nodes,
                                     normalization=normalization, degrees=deg)
    assert np.array_equal(sparse, dense)
    np.testing.assert_array_equal(
        F.propagate_sparse_rows(g.indptr, g.indices, g.weights, R, 333, 777, normalization=normalization,
                                degrees=deg, threads=1), dense[333:777])


def test_partition_bounds_cover_and_balance():
    g = _power_law_graph(n=5000, m=60000)
    b = F.partition_bounds(g.indptr, 4)
    assert b[0] == 0 and b[-1] == g.num_nodes and np.all(np.diff(b) >= 0) and len(b) == 5
    work = np.diff(g.indptr[b]) + np.diff(b)
    assert work.max() < 1.5 * work.mean()


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("normalization,directed,weighted,standardize", [
    ("row", True, True, True), ("sym", True, True, False), ("none", False, True, False),
    ("row", False, False, False), ("sym", False, False, True),
])
def test_matches_dense_formula(normalization, directed, weighted, standardize):
    g = _power_law_graph(n=300, m=2000, seed=2, directed=directed, weighted=weighted)
    iw = (0.0, 1.0, 6.67) if normalization != "none" else (1.0, 0.1)
    beta = -0.64 if normalization != "none" else -1.0
    got = F.fastrp(g.indptr, g.indices, g.weights, dim=32, iteration_weights=iw, beta=beta,
                   normalization=normalization, standardize=standardize, seed=4, density=0.2, partitions=2)
    want = _dense_fastrp(g, 32, iw, beta, normalization, standardize, seed=4, density=0.2)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * np.abs(want).max())


def test_float64_option_and_iteration_weight_alias():
    g = _power_law_graph(n=300, m=2000, seed=3)
    a = F.fastrp(g.indptr, g.indices, g.weights, dim=16, iteration_weights=(1, 2), dtype=np.float64)
    b = F.fastrp(g.indptr, g.indices, g.weights, dim=16, weights_iter=(1, 2), dtype=np.float64, partitions=3)
    assert a.dtype == np.float64 and np.array_equal(a, b)
    want = _dense_fastrp(g, 16, (1, 2), -0.64, "row", True, seed=0)
    np.testing.assert_allclose(a, want, rtol=1e-10, atol=1e-10)


def test_column_moments_exact_and_merge_order():
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        X = (rng.standard_normal((2500, 4)) * np.exp(rng.uniform(-40, 40, (2500, 4)))).astype(dt)
        X[0, 0] = np.finfo(dt).smallest_subnormal
        X[1, 1] = -np.finfo(dt).tiny
        X[2, 2] = 0.0
        m = F.column_moments(X)
        unit = Fraction(2) ** F._EMIN64
        for c in range(4):
            col = [Fraction(float(v)) for v in X[:, c]]
            assert m.sums[c] * unit == sum(col)
            assert m.sumsqs[c] * unit * unit == sum(v * v for v in col)
        parts = [F.column_moments(X[a:b]) for a, b in ((1700, 2500), (0, 3), (3, 1700))]
        assert F.merge_moments(parts) == m
    with pytest.raises(ValueError):
        F.column_moments(np.array([[1.0, np.nan]], np.float32))


def test_standardize_columns():
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((3000, 6)) * [1, 10, 1e-3, 5, 1, 0] + [0, 100, -3, 7, 1e4, 2]).astype(np.float32)
    ref = X.astype(np.float64)
    sd = ref.std(0)
    sd[sd == 0] = 1
    want = (ref - ref.mean(0)) / sd
    got = F.standardize_columns(X.copy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.all(got[:, 5] == 0)


# ----------------------------------------------------------------------------- quality
@pytest.mark.skipif(not BLOG.exists(), reason=f"shared dataset missing: {BLOG}")
def test_blogcatalog_node_classification():
    """peers.py's protocol: one-vs-rest liblinear LR on L2-normalised rows, top-k labels, 50 % train,
    mean of the splits from default_rng(0), (1), (2). Reference scipy FastRP: Micro .409, Macro .248.
    (Single splits vary by about +-0.01, hence the three.)"""
    import polars as pl
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import normalize

    n = 10312
    e = pl.read_csv(BLOG / "edges.tsv", separator="\t").to_numpy()
    g = build_csr(e[:, 0], e[:, 1], n)
    X = F.fastrp(g.indptr, g.indices, g.weights, dim=512, iteration_weights=(0, 0, 1, 6.67), beta=-0.64)
    lab = pl.read_csv(BLOG / "labels.tsv", separator="\t").to_numpy()
    Y = np.zeros((n, int(lab[:, 1].max()) + 1), dtype=int)
    Y[lab[:, 0], lab[:, 1]] = 1
    keep = Y.sum(1) > 0
    X, Y = normalize(X[keep]), Y[keep]
    micro, macro = [], []
    for split in range(3):
        idx = np.random.default_rng(split).permutation(len(X))
        tr, te = idx[: len(X) // 2], idx[len(X) // 2:]
        cols = Y[tr].sum(0) > 0
        clf = OneVsRestClassifier(LogisticRegression(solver="liblinear"), n_jobs=1).fit(X[tr], Y[tr][:, cols])
        P = clf.predict_proba(X[te])
        pred = np.zeros_like(Y[te])
        cidx = np.flatnonzero(cols)
        for i, k in enumerate(Y[te].sum(1)):
            pred[i, cidx[np.argsort(-P[i])[:k]]] = 1
        micro.append(f1_score(Y[te], pred, average="micro", zero_division=0))
        macro.append(f1_score(Y[te], pred, average="macro", zero_division=0))
    assert np.mean(micro) >= 0.40 and np.mean(macro) >= 0.24, (micro, macro)
