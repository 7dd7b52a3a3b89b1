"""Reconstruction mAP without sorting (issue 22): the counting kernel against the previous
full-sort implementation, kept verbatim below as the reference, on real graphs; and the bounds
(ball cap, relevant-set sampling) that keep it cheap on large graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from embedlake.workers.evaluate import geometry
from embedlake.workers.graph.csr import build_csr

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _graph(name, directed=False):
    d = DATA / name
    if not (d / "edges.tsv").exists():
        pytest.skip(f"{d} is absent (the shared datasets folder ../shared is needed)")
    e = np.loadtxt(d / "edges.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    n = int(e[:, :2].max()) + 1
    return build_csr(e[:, 0], e[:, 1], n, directed=directed) if directed else build_csr(e[:, 0], e[:, 1], n)


# ---- the previous implementation (full argsort per query, dense masks per hop), verbatim ----

def _adjacency(indptr, indices) -> sp.csr_matrix:
    indptr = np.asarray(indptr, dtype=np.int64)
    n = indptr.size - 1
    A = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), np.asarray(indices), indptr), shape=(n, n))
    A.setdiag(0)
    A.eliminate_zeros()
    return A



def reference_reconstruction_map(X, indptr, indices, *, hops=(1, 2, 3), sample=2000, seed=0,
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
    score = geometry._scorer(X, similarity)
    pool = np.flatnonzero(np.diff(A.indptr) > 0)
    q_all = geometry.sample_nodes(n, sample, seed, pool)
    aps = {h: [] for h in hops}
    base = {h: [] for h in hops}
    for q in geometry._blocks(q_all, n):
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
                aps[h].append(geometry.average_precision_rows(S, R, order))
                base[h].append(R.sum(1) / (n - 1))
    out = {"map": {}, "random_baseline": {}, "queries": int(q_all.size)}
    for h in hops:
        a = np.concatenate(aps[h]) if aps[h] else np.empty(0)
        out["map"][str(h)] = float(np.nanmean(a)) if a.size else float("nan")
        out["random_baseline"][str(h)] = float(np.mean(np.concatenate(base[h]))) if base[h] else float("nan")
    return out


# ---- tests ----

@pytest.mark.parametrize("name,mode,sample", [("karate", "ball", None), ("karate", "ring", None),
                                              ("cora", "ball", 400), ("cora", "ring", 400)])
def test_counting_equals_full_sort(name, mode, sample):
    g = _graph(name)
    X = np.random.default_rng(3).standard_normal((g.num_nodes, 16)).astype(np.float32)
    ours = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2, 3), sample=sample, mode=mode)
    ref = reference_reconstruction_map(X, g.indptr, g.indices, hops=(1, 2, 3), sample=sample, mode=mode)
    assert ours["queries"] == ref["queries"]
    for h in ("1", "2", "3"):
        np.testing.assert_allclose(ours["map"][h], ref["map"][h], rtol=1e-6)
        np.testing.assert_allclose(ours["random_baseline"][h], ref["random_baseline"][h], rtol=1e-12)
        assert ours["truncated"][h] == 0 and ours["sampled"][h] == 0


def test_counting_equals_full_sort_directed_dot():
    g = _graph("p2p-gnutella08", directed=True)
    X = np.random.default_rng(4).standard_normal((g.num_nodes, 8)).astype(np.float32)
    ours = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=300, similarity="dot")
    ref = reference_reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=300, similarity="dot")
    for h in ("1", "2"):
        np.testing.assert_allclose(ours["map"][h], ref["map"][h], rtol=1e-6)


def test_ties_count_against_the_ranking_as_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    # a path 0-1-2-3-4 with scores that tie: AP of node 2's 1-hop ball {1, 3} equals sklearn's
    g = build_csr(np.array([0, 1, 2, 3]), np.array([1, 2, 3, 4]), 5)
    S = np.array([[0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0.5, 0.9, 0, 0.9, 0.5], [0, 0, 1, 0, 1], [0, 0, 0, 1, 0]],
                 dtype=np.float64)
    r = geometry.reconstruction_map(S, g.indptr, g.indices, hops=(1,), sample=None, similarity="precomputed")
    want = []
    for q in range(5):
        keep = np.arange(5) != q
        rel = np.zeros(5, bool)
        rel[g.indices[g.indptr[q]:g.indptr[q + 1]]] = True
        want.append(metrics.average_precision_score(rel[keep], S[q][keep]))
    np.testing.assert_allclose(r["map"]["1"], np.mean(want), rtol=1e-12)


def test_ball_cap_leaves_out_incomplete_hops():
    g = _graph("cora")
    X = np.random.default_rng(5).standard_normal((g.num_nodes, 16)).astype(np.float32)
    full = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2, 3), sample=300)
    capped = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2, 3), sample=300, ball_cap=40)
    pool = geometry._nodes_with_neighbours(g.indptr, g.indices)
    q = geometry.sample_nodes(g.num_nodes, 300, 0, pool)
    A = sp.csr_matrix((np.ones(g.indices.size), g.indices, g.indptr), shape=(g.num_nodes,) * 2)
    ball2 = ((A + A @ A) > 0).astype(np.int8)
    ball2.setdiag(0)
    ball2.eliminate_zeros()
    deg = np.diff(g.indptr)[q]
    size2 = np.diff(ball2.tocsr().indptr)[q]
    assert capped["truncated"]["1"] == int(np.sum(deg > 40))
    assert capped["truncated"]["2"] == int(np.sum(size2 > 40)) > capped["truncated"]["1"]
    assert capped["truncated"]["3"] >= capped["truncated"]["2"]
    assert full["truncated"] == {"1": 0, "2": 0, "3": 0}
    # every query whose 1-hop ball fits keeps its exact figure: the mean moves only by the hubs left out
    if capped["truncated"]["1"] == 0:
        assert capped["map"]["1"] == full["map"]["1"]


def test_relevant_sampling_is_unbiased_within_its_interval():
    g = _graph("blogcatalog")
    rng = np.random.default_rng(6)
    # an embedding with real structure: a few propagation steps of a random projection
    A = sp.csr_matrix((np.ones(g.indices.size, np.float32), g.indices, g.indptr), shape=(g.num_nodes,) * 2)
    X = rng.standard_normal((g.num_nodes, 32)).astype(np.float32)
    for _ in range(2):
        X = A @ X
        X /= np.linalg.norm(X, axis=1, keepdims=True) + 1e-9
    exact = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=200)
    est = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=200, relevant_cap=64)
    assert est["sampled"]["2"] > 150 and exact["sampled"]["2"] == 0
    for h in ("1", "2"):
        assert abs(est["map"][h] - exact["map"][h]) < max(3 * exact["ci95"][h], 0.01)
    assert exact["map"]["1"] > 2 * exact["random_baseline"]["1"]


def test_threads_do_not_change_the_figures():
    g = _graph("cora")
    X = np.random.default_rng(7).standard_normal((g.num_nodes, 16)).astype(np.float32)
    a = geometry.reconstruction_map(X, g.indptr, g.indices, sample=200, relevant_cap=50, threads=1)
    b = geometry.reconstruction_map(X, g.indptr, g.indices, sample=200, relevant_cap=50, threads=2)
    assert a == b


def test_eval_modes_exact_queries_every_node_and_sampled_says_so():
    """eval.mode=exact: every eligible node is a query and no ring is sampled or cut (ci95 = 0);
    the sampled default draws eval.reconstruction_sample queries, the same ones the kernel draws
    for that sample, and says so (mode, queries of eligible, ci95 > 0)."""
    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate import stages as es
    g = _graph("cora")
    X = np.random.default_rng(2).standard_normal((g.num_nodes, 16)).astype(np.float32)
    csr = (g.indptr, g.indices, None, False)
    exact = es.reconstruct_stage(X, csr, EvalConfig(mode="exact", reconstruction_hops=[1, 2]))
    want = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=None, relevant_cap=0,
                                       ball_cap=g.num_nodes + 1)
    assert exact["mode"] == "exact" and exact["queries"] == exact["eligible"] == want["queries"]
    assert exact["map"] == want["map"] and set(exact["ci95"].values()) == {0.0} and not exact["work_limited"]
    assert sum(exact["sampled"].values()) == sum(exact["truncated"].values()) == 0
    sampled = es.reconstruct_stage(X, csr, EvalConfig(reconstruction_hops=[1, 2]))
    again = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=100, relevant_cap=512)
    assert sampled["mode"] == "sampled" and sampled["queries"] == 100 < sampled["eligible"]
    assert sampled["map"] == again["map"] and min(sampled["ci95"].values()) > 0


# figures of the previous kernel (ordered float32 sums, main at 5845b54) on these inputs, to the last digit
TODAYS_MAP = {
    ("karate", "ball"): {"1": 0.22326970496035883, "2": 0.6358167096623977, "3": 0.8702851080726285},
    ("karate", "ring"): {"1": 0.22326970496035883, "2": 0.5026269264475718, "3": 0.3454622239156684},
    ("cora", "ball"): {"1": 0.003923630111661295, "2": 0.015214931968573504, "3": 0.04769672899952071},
    ("cora", "ring"): {"1": 0.003923630111661295, "2": 0.014586256622312796, "3": 0.03785545661521408},
}


@pytest.mark.parametrize("name,mode", sorted(TODAYS_MAP))
def test_blas_scores_give_todays_figures_exactly(name, mode):
    """The float64 BLAS products (`ChunkScores`) rank these tables' nodes as the previous ordered
    float32 sums did: with no sampling the mAP is today's, bit for bit."""
    g = _graph(name)
    X = np.random.default_rng(3).standard_normal((g.num_nodes, 16)).astype(np.float32)
    got = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2, 3), mode=mode,
                                      sample=None if name == "karate" else 400)
    assert got["map"] == TODAYS_MAP[(name, mode)]


def _brute_force_map(S, indptr, indices, q, hop):
    """Mean over the queries of the AP of the nodes within `hop` hops, ranked by S (a query's row of
    scores), ties counted against the ranking; straight from the definition."""
    A = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(indptr.size - 1,) * 2)
    reach = sp.identity(A.shape[0], format="csr")
    ball = reach.copy()
    for _ in range(hop):
        reach = reach @ A
        ball = ball + reach
    aps = []
    for i, src in enumerate(q):
        rel = np.flatnonzero(ball[src].toarray()[0] > 0)
        rel = rel[rel != src]
        s = np.delete(S[i], src)
        rel_s = S[i, rel]
        aps.append(np.mean([(rel_s >= x).sum() / (s >= x).sum() for x in rel_s]))
    return float(np.mean(aps))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_map_is_exact_for_its_scores_and_duplicate_rows_tie(similarity):
    """The thresholds and the scores counted against them are the same numbers (`block_scores`),
    so the mAP is the exact figure of those scores; duplicate rows (FastRP tables have thousands)
    get identical scores, so their ties count against the ranking, as before."""
    g = _graph("cora")
    X = np.random.default_rng(7).standard_normal((g.num_nodes, 24)).astype(np.float32)
    X[1::2] = X[0:-1:2][:X[1::2].shape[0]]                  # every odd row repeats the row before
    got = geometry.reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=60, similarity=similarity)
    q = geometry.sample_nodes(g.num_nodes, 60, 0, geometry._nodes_with_neighbours(g.indptr, g.indices))
    S = geometry.block_scores(X, geometry.compared_rows(X[q], similarity), similarity)
    assert np.array_equal(S[:, 1::2], S[:, 0:-1:2][:, :S[:, 1::2].shape[1]])
    for h in (1, 2):
        np.testing.assert_allclose(got["map"][str(h)], _brute_force_map(S, g.indptr, g.indices, q, h), rtol=1e-12)


def test_scoring_once_or_twice_gives_the_same_figures(monkeypatch):
    """A block whose score matrix exceeds HOLD_BYTES is scored twice (candidates, then counts, as
    a shard is) instead of once: the same scores, the same figures."""
    g = _graph("cora")
    X = np.random.default_rng(8).standard_normal((g.num_nodes, 16)).astype(np.float64)
    kw = dict(hops=(1, 2, 3), sample=300, relevant_cap=40)
    once = geometry.reconstruction_map(X, g.indptr, g.indices, **kw)
    monkeypatch.setattr(geometry, "HOLD_BYTES", 0)
    assert geometry.reconstruction_map(X, g.indptr, g.indices, **kw) == once


def test_symmetry_check_with_sorted_and_unsorted_rows():
    """`_is_symmetric`: the binary-search kernel on sorted rows and the key comparison on unsorted
    ones agree with the definition (every arc has its reverse; self loops and duplicates allowed)."""
    g = _graph("cora")
    assert geometry._is_symmetric(g.indptr, g.indices.astype(np.int64))
    d = _graph("p2p-gnutella08", directed=True)
    assert not geometry._is_symmetric(d.indptr, d.indices.astype(np.int64))
    indptr = np.array([0, 3, 4, 6, 7], dtype=np.int64)
    indices = np.array([2, 1, 0, 0, 0, 2, 3], dtype=np.int64)     # row 0 unsorted, a self loop, 3 -> 3
    assert geometry._is_symmetric(indptr, indices)
    assert not geometry._is_symmetric(indptr, np.array([2, 1, 0, 0, 0, 2, 1], dtype=np.int64))
    assert not geometry._is_symmetric(np.array([0, 1, 2, 2], dtype=np.int64), np.array([1, 2], dtype=np.int64))


def test_score_counts_equal_counting_by_comparison():
    """`ScoreCounts` (bucket tables, a score compared only with its own bucket's thresholds) counts
    exactly what comparing every score with every threshold counts: scores equal to thresholds,
    thresholds crowded into one bucket or all equal, scores below every threshold, NaN and
    infinite ones, the query's own node left out, and the counts of row ranges added window by
    window."""
    rng = np.random.default_rng(11)
    nq, n = 7, 3000
    S = rng.standard_normal((nq, n)).astype(np.float32)
    S[:, ::5] = np.round(S[:, ::5], 1)                         # many exact ties
    S[3, 10:20] = np.nan
    S[5, :4] = [np.inf, -np.inf, np.inf, 3.0]
    S[2, :2] = [-np.inf, np.inf]
    srcs = rng.integers(0, n, nq)
    pools = [S[0, :40], S[1, ::3], np.full(9, S[2, 5]), np.array([], np.float32), S[4, 100:101],
             np.concatenate([np.linspace(0, 1e-6, 50, dtype=np.float32), [3.0, np.inf]]), S[6, :600]]
    t = np.concatenate([np.sort(p.astype(np.float32), kind="stable") for p in pools])
    offsets = np.concatenate(([0], np.cumsum([p.size for p in pools]))).astype(np.int64)
    want = np.zeros(int(offsets[-1]) + nq, dtype=np.int64)
    for i in range(nq):
        a, b = offsets[i], offsets[i + 1]
        s = np.delete(S[i], srcs[i])
        for k in range(a, b):
            want[k + i] = np.sum(s >= t[k])
    counts = geometry.ScoreCounts(t, offsets, srcs)
    counts.add(S, 0, n, 0)
    assert np.array_equal(counts.at_least(), want)
    windows = geometry.ScoreCounts(t, offsets, srcs)
    for lo in range(0, n, 700):
        windows.add(S[:, lo:lo + 700], 0, min(700, n - lo), lo)
    assert np.array_equal(windows.at_least(), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_from_the_tables_norms_equal_the_normalised_rows(dtype, monkeypatch):
    """Handed the table's row norms (`row_norms`, as the figures task computes them once for both
    figures, issue 22 eleventh round), the cosine scores divide the rows by them instead of
    computing them again: the same float32 scores bit for bit (duplicate rows still tie, a zero
    row still scores 0), held or scored twice, and the same figures."""
    from embedlake.workers.evaluate.rows import row_norms
    g = _graph("cora")
    X = np.random.default_rng(9).standard_normal((g.num_nodes, 40)).astype(dtype) * 3
    X[1::2] = X[0:-1:2][:X[1::2].shape[0]]
    X[4:6] = 0.0
    norms = row_norms(X, np.arange(g.num_nodes))
    q = np.arange(0, g.num_nodes, 17)
    Uq = geometry.compared_rows(X[q], "cosine")
    want = geometry.block_scores(X, Uq, "cosine")
    got = geometry.block_scores(X, Uq, "cosine", norms)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(got[:, 1::2], got[:, 0:-1:2][:, :got[:, 1::2].shape[1]]) and not got[:, 5].any()
    nodes = np.arange(q.size * 7) % g.num_nodes
    qrow = np.repeat(np.arange(q.size), 7)
    assert np.array_equal(geometry.pair_scores(X, 0, Uq, qrow, nodes, "cosine", norms).view(np.uint32),
                          want[qrow, nodes].view(np.uint32))
    with pytest.raises(ValueError, match="norms"):
        geometry.block_scores(X, Uq, "cosine", norms[:-1])
    kw = dict(hops=(1, 2, 3), sample=200, relevant_cap=30)
    base = geometry.reconstruction_map(X, g.indptr, g.indices, **kw)
    assert geometry.reconstruction_map(X, g.indptr, g.indices, norms=norms, **kw) == base
    monkeypatch.setattr(geometry, "HOLD_BYTES", 0)                 # candidates, then the counts
    assert geometry.reconstruction_map(X, g.indptr, g.indices, norms=norms, **kw) == base


@pytest.mark.parametrize("similarity,dtype", [("cosine", np.float32), ("dot", np.float32), ("cosine", np.float64)])
def test_chunk_kernel_scores_are_float64_sums_rounded_and_independent_of_position(similarity, dtype):
    """The scores (`score_kernels.chunk_scores`, issue 22 fifteenth round) are the float32 roundings of
    the float64 products of the compared rows, as the float64 BLAS products before them were: equal
    to numpy's float64 product rounded to float32 on this table, whatever the query count (not a
    multiple of the kernel's four), the chunk (the last one partial) or a shard's offset; a row
    repeated anywhere in the table, and a query repeated in the block, score bit for bit alike."""
    from embedlake.workers.evaluate.rows import row_norms
    rng = np.random.default_rng(12)
    n, d = 2 * geometry.SCORE_ROWS + 301, 24
    X = rng.standard_normal((n, d)).astype(dtype) * 2
    X[[5, 1023, 1024, 2100, n - 1]] = X[77]                        # in and across chunks, the last row
    norms = row_norms(X, np.arange(n)) if similarity == "cosine" else None
    q = np.array([77, 3, 1500, 77, 2047, 9, 600])                   # 7 queries, one twice
    Uq = geometry.compared_rows(X[q], similarity)
    U = geometry.compared_rows(X, similarity)
    want = (np.asarray(Uq, np.float32).astype(np.float64) @ np.asarray(U, np.float32).astype(np.float64).T
            ).astype(np.float32)
    got = geometry.block_scores(X, Uq, similarity, norms)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert (got[:, [5, 1023, 1024, 2100, n - 1]] == got[:, [77]]).all() and np.array_equal(got[0], got[3])
    lo = 700                                                        # a shard holding rows 700 ..
    nodes = np.arange(lo, n, 13)
    qrow = np.arange(nodes.size) % q.size
    part = geometry.pair_scores(X[lo:], lo, Uq, qrow, nodes, similarity,
                                None if norms is None else norms[lo:])
    assert np.array_equal(part.view(np.uint32), want[qrow, nodes].view(np.uint32))
