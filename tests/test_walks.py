"""Random-walk engine: exact outputs at a fixed seed, determinism across threads / partitions,
second-order transition probabilities (chi-square against the exact node2vec law), weighted
first order, dead ends and isolated nodes."""
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.walks import (build_alias, random_walks, walk_steps, walks_to_sentences)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PVAL = 1e-3


def tiny():
    """8 nodes: a weighted undirected graph with a pendant path 4-5-6 and isolated node 7."""
    src = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5])
    dst = np.array([1, 2, 3, 2, 4, 3, 4, 5, 6])
    w = np.array([1, 2, 3, 1, 5, 1, 2, 1, 4], np.float32)
    return build_csr(src, dst, 8, weights=w)


def assert_valid(g, walks, n_starts=None):
    """Every consecutive pair of tokens is an arc; padding only after the walk ended."""
    adj = set()
    for v in range(g.num_nodes):
        for x in g.indices[g.indptr[v]:g.indptr[v + 1]]:
            adj.add((v, int(x)))
    for row in walks:
        ended = False
        for a, b in zip(row[:-1], row[1:]):
            if b < 0:
                ended = True
                continue
            assert not ended and a >= 0, f"token after padding in {row}"
            assert (int(a), int(b)) in adj, f"{a}->{b} is not an edge ({row})"


# walks_per_node=2, length=6, seed=42, starts=arange(8), threads=1 (obtained once, then frozen)
EXPECTED = {
    ("deepwalk", False): [[0, 3, 4, 1, 0, 2], [1, 0, 1, 2, 3, 0], [2, 3, 2, 3, 0, 3], [3, 2, 3, 0, 1, 0], [4, 3, 4, 5, 4, 3], [5, 6, 5, 4, 5, 6], [6, 5, 6, 5, 4, 3], [7, -1, -1, -1, -1, -1], [0, 2, 1, 2, 1, 4], [1, 2, 0, 2, 3, 0], [2, 3, 4, 3, 0, 3], [3, 0, 2, 1, 0, 2], [4, 1, 4, 5, 6, 5], [5, 6, 5, 6, 5, 6], [6, 5, 4, 1, 2, 0], [7, -1, -1, -1, -1, -1]],
    ("deepwalk", True): [[0, 3, 0, 1, 0, 2], [1, 0, 3, 2, 3, 0], [2, 3, 4, 1, 4, 1], [3, 2, 3, 0, 3, 0], [4, 1, 4, 1, 0, 2], [5, 6, 5, 6, 5, 6], [6, 5, 6, 5, 4, 3], [7, -1, -1, -1, -1, -1], [0, 2, 1, 4, 3, 0], [1, 4, 1, 2, 3, 0], [2, 3, 0, 2, 0, 3], [3, 0, 2, 1, 4, 3], [4, 1, 4, 5, 6, 5], [5, 6, 5, 6, 5, 6], [6, 5, 6, 5, 6, 5], [7, -1, -1, -1, -1, -1]],
    ("node2vec", False): [[0, 3, 0, 3, 4, 1], [1, 0, 1, 4, 1, 4], [2, 3, 4, 3, 4, 3], [3, 2, 0, 2, 0, 3], [4, 3, 4, 3, 4, 3], [5, 6, 5, 6, 5, 6], [6, 5, 4, 1, 4, 1], [7, -1, -1, -1, -1, -1], [0, 2, 1, 0, 1, 0], [1, 2, 1, 4, 5, 4], [2, 3, 2, 1, 0, 1], [3, 0, 2, 1, 2, 1], [4, 1, 4, 1, 4, 5], [5, 6, 5, 6, 5, 6], [6, 5, 6, 5, 4, 3], [7, -1, -1, -1, -1, -1]],
    ("node2vec", True): [[0, 3, 0, 3, 0, 3], [1, 0, 2, 0, 1, 4], [2, 3, 0, 3, 2, 0], [3, 2, 0, 2, 0, 3], [4, 1, 4, 1, 4, 1], [5, 6, 5, 6, 5, 6], [6, 5, 6, 5, 6, 5], [7, -1, -1, -1, -1, -1], [0, 2, 0, 3, 0, 3], [1, 4, 1, 4, 1, 4], [2, 3, 4, 3, 0, 3], [3, 0, 2, 1, 4, 1], [4, 1, 4, 1, 4, 1], [5, 6, 5, 6, 5, 6], [6, 5, 6, 5, 6, 5], [7, -1, -1, -1, -1, -1]],
}


@pytest.mark.parametrize("mode,weighted", list(EXPECTED))
def test_exact_output_fixed_seed(mode, weighted):
    g = tiny()
    out = random_walks(g.indptr, g.indices, g.weights if weighted else None, np.arange(8), 2, 6, 42,
                       p=0.5, q=2.0, mode=mode, threads=1)
    assert out.dtype == np.int32 and out.shape == (16, 6)
    np.testing.assert_array_equal(out, np.array(EXPECTED[(mode, weighted)], dtype=np.int32))
    assert_valid(g, out)
    # k-major rows: row k * len(starts) + i starts at starts[i]
    np.testing.assert_array_equal(out[:, 0], np.tile(np.arange(8), 2))


def karate(weighted=False):
    """Zachary's karate club; weighted: a random weight per undirected edge (symmetric arcs)."""
    path = SHARED / "datasets" / "karate" / "edges.tsv"
    if not path.exists():
        pytest.skip(f"shared dataset absent: {path}")
    e = np.loadtxt(path, skiprows=1, dtype=np.int64)
    w = np.random.default_rng(1).uniform(0.1, 3, len(e)) if weighted else None
    return build_csr(e[:, 0], e[:, 1], 34, weights=w)


@pytest.mark.parametrize("mode,p,q,weighted", [("deepwalk", 1, 1, False), ("deepwalk", 1, 1, True),
                                               ("node2vec", 0.25, 4, False), ("node2vec", 4, 0.25, True),
                                               ("node2vec", 0.25, 4, True), ("node2vec", 0.5, 0.25, True)])
def test_threads_and_partitions_do_not_change_walks(mode, p, q, weighted):
    g = karate(weighted)
    w = g.weights
    starts = np.arange(g.num_nodes)
    kw = dict(p=p, q=q, mode=mode)
    one = random_walks(g.indptr, g.indices, w, starts, 5, 20, 7, threads=1, **kw)
    two = random_walks(g.indptr, g.indices, w, starts, 5, 20, 7, threads=2, **kw)
    np.testing.assert_array_equal(one, two)
    assert_valid(g, one)
    # split the start nodes into uneven, shuffled partitions; reassemble k-major rows
    perm = np.random.default_rng(3).permutation(g.num_nodes)
    parts = np.split(perm, [5, 6, 20])
    alias = build_alias(g.indptr, g.indices, w) if weighted else None
    rebuilt = np.empty_like(one)
    for part in parts:
        sub = random_walks(g.indptr, g.indices, w, part, 5, 20, 7, threads=2, alias=alias, **kw)
        for k in range(5):
            rebuilt[k * g.num_nodes + part] = sub[k * len(part):(k + 1) * len(part)]
    np.testing.assert_array_equal(one, rebuilt)
    # walks of one node split over calls with walk_offset
    tail = random_walks(g.indptr, g.indices, w, starts, 3, 20, 7, walk_offset=2, **kw)
    np.testing.assert_array_equal(one[2 * g.num_nodes:], tail)
    # lockstep group size and the symmetric hint (undirected graph) are output-neutral
    for extra in (dict(group=1), dict(group=7), dict(symmetric=True)):
        np.testing.assert_array_equal(one, random_walks(g.indptr, g.indices, w, starts, 5, 20, 7, **extra, **kw))
    # another seed gives other walks
    other = random_walks(g.indptr, g.indices, w, starts, 5, 20, 8, **kw)
    assert (other != one).mean() > 0.5


def node2vec_law(g, w, t, v, p, q):
    """Exact P(x | t -> v) of node2vec for x in N(v), in row order."""
    lo, hi = g.indptr[v], g.indptr[v + 1]
    nbr = g.indices[lo:hi]
    nt = set(g.indices[g.indptr[t]:g.indptr[t + 1]].tolist())
    wt = w[lo:hi].astype(np.float64) if w is not None else np.ones(hi - lo)
    a = np.array([1 / p if x == t else (1.0 if x in nt else 1 / q) for x in nbr])
    pr = wt * a
    return nbr, pr / pr.sum()


def star_bridge():
    """t = 0 has the single neighbour v = 1; N(1) = {0 (return), 2, 3 (adjacent to 0), 4, 5, 6
    (distance 2)}, with distinct weights; 5-6 and 2-4 edges add structure beyond the test."""
    src = np.array([0, 1, 1, 1, 1, 1, 0, 0, 5, 2])
    dst = np.array([1, 2, 3, 4, 5, 6, 2, 3, 6, 4])
    w = np.array([3.0, 1.0, 2.5, 0.5, 4.0, 1.5, 1.0, 2.0, 1.0, 1.0], np.float32)
    return build_csr(src, dst, 7, weights=w)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("p", [0.25, 1.0, 4.0])
@pytest.mark.parametrize("q", [0.25, 1.0, 4.0])
def test_node2vec_second_step_matches_exact_law(p, q, weighted):
    g = star_bridge()
    w = g.weights if weighted else None
    # start at 0 (neighbours 1, 2, 3) and keep the walks that went 0 -> 1
    walks = random_walks(g.indptr, g.indices, w, np.array([0]), 60_000, 3, 11, p=p, q=q, mode="node2vec")
    sel = walks[walks[:, 1] == 1, 2]
    nbr, law = node2vec_law(g, w, 0, 1, p, q)
    assert sel.size > 8000
    counts = np.array([(sel == x).sum() for x in nbr])
    assert counts.sum() == sel.size
    res = stats.chisquare(counts, law * sel.size)
    assert res.pvalue > PVAL, (p, q, weighted, counts, law * sel.size)


@pytest.mark.parametrize("p,q", [(0.25, 4.0), (4.0, 0.25), (0.25, 0.25)])
def test_node2vec_directed_random_graph_pooled(p, q):
    """Every (t, v) pair of a random weighted directed graph: pooled chi-square over all groups
    (covers return arcs that do not exist, t~x tests on out-lists, dead ends)."""
    rng = np.random.default_rng(5)
    n = 15
    src = rng.integers(0, n, 90)
    dst = rng.integers(0, n, 90)
    g = build_csr(src, dst, n, weights=rng.uniform(0.2, 3.0, 90), directed=True)
    walks = random_walks(g.indptr, g.indices, g.weights, np.arange(n), 6000, 3, 3, p=p, q=q, mode="node2vec")
    walks = walks[walks[:, 2] >= 0]
    stat, dof = 0.0, 0
    key = walks[:, 0].astype(np.int64) * n + walks[:, 1]
    for kv in np.unique(key):
        t, v = divmod(int(kv), n)
        sel = walks[key == kv, 2]
        nbr, law = node2vec_law(g, g.weights, t, v, p, q)
        if sel.size < 200 or nbr.size < 2:
            continue
        counts = np.array([(sel == x).sum() for x in nbr])
        assert counts.sum() == sel.size
        exp = law * sel.size
        stat += float(((counts - exp) ** 2 / exp).sum())
        dof += nbr.size - 1
    assert dof > 30
    assert stats.chi2.sf(stat, dof) > PVAL, (stat, dof)


def test_weighted_first_order_matches_weights():
    w = np.array([1, 2, 3, 4, 10, 0.5], np.float32)
    g = build_csr(np.zeros(6, np.int64), np.arange(1, 7), 7, weights=w)
    walks = random_walks(g.indptr, g.indices, g.weights, np.array([0]), 50_000, 2, 5)
    counts = np.bincount(walks[:, 1], minlength=7)[1:]
    res = stats.chisquare(counts, w / w.sum() * counts.sum())
    assert res.pvalue > PVAL, counts
    # uniform when unweighted
    walks = random_walks(g.indptr, g.indices, None, np.array([0]), 30_000, 2, 5)
    counts = np.bincount(walks[:, 1], minlength=7)[1:]
    assert stats.chisquare(counts).pvalue > PVAL


def test_alias_tables_reproduce_row_distribution():
    rng = np.random.default_rng(0)
    g = build_csr(rng.integers(0, 40, 400), rng.integers(0, 40, 400), 40, weights=rng.uniform(0.01, 5, 400))
    table, rowsum = build_alias(g.indptr, g.indices, g.weights)
    assert table.dtype == np.uint64 and table.shape == g.indices.shape
    keep = (table >> np.uint64(32)).astype(np.float64) / 2.0 ** 32
    alias_node = (table & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for v in range(40):
        lo, hi = g.indptr[v], g.indptr[v + 1]
        d = hi - lo
        if d == 0:
            continue
        nbr = g.indices[lo:hi]
        assert np.isin(alias_node[lo:hi], nbr).all()
        # mass of each neighbour: kept share of its own slot + alias share of the slots aliasing it
        mass = keep[lo:hi].copy()
        np.add.at(mass, np.searchsorted(nbr, alias_node[lo:hi]), 1.0 - keep[lo:hi])
        np.testing.assert_allclose(mass / d, g.weights[lo:hi] / g.weights[lo:hi].sum(), atol=1e-6)
        assert rowsum[v] == pytest.approx(g.weights[lo:hi].sum(), rel=1e-6)


@pytest.mark.parametrize("mode", ["deepwalk", "node2vec"])
def test_directed_dead_end_pads_with_minus_one(mode):
    g = build_csr(np.array([0, 1, 3]), np.array([1, 2, 0]), 4, directed=True)
    out = random_walks(g.indptr, g.indices, None, np.array([3, 0, 2]), 2, 6, 0, p=0.5, q=2, mode=mode)
    np.testing.assert_array_equal(out[0], [3, 0, 1, 2, -1, -1])
    np.testing.assert_array_equal(out[1], [0, 1, 2, -1, -1, -1])
    np.testing.assert_array_equal(out[2], [2, -1, -1, -1, -1, -1])
    assert walk_steps(out) == 2 * (4 + 3 + 1)


def test_isolated_nodes_give_length_one_walks():
    g = build_csr(np.array([0]), np.array([1]), 4)   # nodes 2, 3 isolated
    for mode in ("deepwalk", "node2vec"):
        out = random_walks(g.indptr, g.indices, None, np.arange(4), 3, 5, 1, p=2, q=0.5, mode=mode)
        tok, off = walks_to_sentences(out)
        lens = np.diff(off).reshape(3, 4)
        assert (lens[:, 2:] == 1).all() and (lens[:, :2] == 5).all()
        np.testing.assert_array_equal(out[2, 1:], -1)


def test_walks_to_sentences_and_steps():
    walks = np.array([[1, 2, 3], [4, -1, -1], [5, 6, -1]], np.int32)
    tok, off = walks_to_sentences(walks)
    assert tok.dtype == np.int32 and off.dtype == np.int64
    np.testing.assert_array_equal(tok, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(off, [0, 3, 4, 6])
    assert walk_steps(walks) == 6
    tok, off = walks_to_sentences(walks, min_length=2)
    np.testing.assert_array_equal(tok, [1, 2, 3, 5, 6])
    np.testing.assert_array_equal(off, [0, 3, 5])
    tok, off = walks_to_sentences(np.zeros((0, 4), np.int32))
    assert tok.size == 0 and off.tolist() == [0]


def test_input_validation():
    g = tiny()
    with pytest.raises(ValueError):
        random_walks(g.indptr, g.indices, None, np.array([8]), 1, 3, 0)
    with pytest.raises(ValueError):
        random_walks(g.indptr, g.indices, None, np.array([0]), 1, 3, 0, mode="line")
    with pytest.raises(ValueError):
        random_walks(g.indptr, g.indices, None, np.array([0]), 1, 3, 0, p=0, mode="node2vec")
    with pytest.raises(ValueError):
        build_alias(g.indptr, g.indices, -g.weights)


def test_node2vec_p_q_one_is_first_order_and_threads_restored():
    import numba
    g = karate()
    before = numba.get_num_threads()
    a = random_walks(g.indptr, g.indices, None, np.arange(34), 2, 10, 3, mode="node2vec", threads=1)
    b = random_walks(g.indptr, g.indices, None, np.arange(34), 2, 10, 3, mode="deepwalk")
    np.testing.assert_array_equal(a, b)
    assert numba.get_num_threads() == before
