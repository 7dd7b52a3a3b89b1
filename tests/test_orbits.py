"""Orbit adjacencies (issue 21): the 28 matrices of workers/orbits against a brute-force enumerator
of every connected induced subgraph on 2-4 nodes, the row-sum identity with per-node orbit counts,
the cost guard, the embedding, and `embed-graph --method orbits` end to end."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedlake.workers.orbits import count as oc
from embedlake.workers.orbits import pairs as op


# ----------------------------------------------------------------- brute force (the reference)

def graphlet_orbits(nodes: tuple, adj: list[set]) -> dict | None:
    """Przulj orbit of each node of the induced subgraph on `nodes`, or None if it is not connected."""
    deg = {x: sum(1 for y in nodes if y in adj[x]) for x in nodes}
    edges = sum(deg.values()) // 2
    k = len(nodes)
    if k == 2:
        return {x: 0 for x in nodes} if edges == 1 else None
    if k == 3:
        if edges == 3:
            return {x: 3 for x in nodes}
        return {x: 1 if deg[x] == 1 else 2 for x in nodes} if edges == 2 else None
    if edges < 3 or (edges == 3 and min(deg.values()) == 0):
        return None                                  # a triangle + isolated node, or disconnected
    degs = sorted(deg.values())
    table = {(1, 1, 2, 2): {1: 4, 2: 5}, (1, 1, 1, 3): {1: 6, 3: 7}, (2, 2, 2, 2): {2: 8},
             (1, 2, 2, 3): {1: 9, 2: 10, 3: 11}, (2, 2, 3, 3): {2: 12, 3: 13}, (3, 3, 3, 3): {3: 14}}
    if tuple(degs) not in table:
        return None
    return {x: table[tuple(degs)][deg[x]] for x in nodes}


def brute_force(n: int, edges) -> tuple[dict, np.ndarray]:
    """({(pair, u, v): count}, orbit counts [n, 15]) by enumerating every node set of size 2-4."""
    adj = [set() for _ in range(n)]
    for a, b in edges:
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    mats: dict = {}
    orbits = np.zeros((n, 15), dtype=np.int64)
    for k in (2, 3, 4):
        for nodes in itertools.combinations(range(n), k):
            orb = graphlet_orbits(nodes, adj)
            if orb is None:
                continue
            for x in nodes:
                orbits[x, orb[x]] += 1
            for u, v in itertools.permutations(nodes, 2):
                t = op.PAIR_INDEX[(orb[u], orb[v], v in adj[u])]
                mats[(t, u, v)] = mats.get((t, u, v), 0) + 1
    return mats, orbits


def csr_of(n: int, edges) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(list(edges), dtype=np.int64).reshape(-1, 2)
    order = np.argsort(e[:, 0], kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(e[:, 0], minlength=n), out=indptr[1:])
    return oc.simple_graph(indptr, e[order, 1].astype(np.int32), n)


def kernel_counts(n: int, edges, ranges=None) -> dict:
    indptr, indices = csr_of(n, edges)
    tri, tri2, nsum = oc.arc_triangles(indptr, indices)
    out = {}
    for lo, hi in ranges or [(0, n)]:
        rows, cols, kinds, counts = oc.count_rows(indptr, indices, tri, tri2, nsum, lo, hi)
        for r, c, t, x in zip(rows.tolist(), cols.tolist(), kinds.tolist(), counts.tolist()):
            assert (t, r, c) not in out
            out[(t, r, c)] = x
    return out


def random_graph(n: int, p: float, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(a, b) for a in range(n) for b in range(a + 1, n) if rng.random() < p]


def karate_edges(shared) -> tuple[int, list]:
    e = np.loadtxt(shared("datasets", "karate", "edges.tsv"), skiprows=1, dtype=np.int64)
    return 34, [tuple(x) for x in e.tolist()]


# ----------------------------------------------------------------- exact counts

def test_pair_classes_are_gradcos_28():
    assert op.NUM_PAIRS == 28 and len(set(op.PAIR_NAMES)) == 28
    assert sorted({c[0] for c in op.PAIR_CLASSES}) == list(range(15))
    assert np.array_equal(op.TRANSPOSE[op.TRANSPOSE], np.arange(28))
    assert int((op.TRANSPOSE != np.arange(28)).sum()) == 16      # 8 pairs of transposes


def test_karate_matches_brute_force(shared):
    n, edges = karate_edges(shared)
    want, _ = brute_force(n, edges)
    got = kernel_counts(n, edges)
    assert got == want
    assert all(x > 0 for x in got.values())
    assert len({t for t, _, _ in got}) == 28          # karate has every graphlet, so every matrix


@pytest.mark.parametrize("n,p,seed", [(12, 0.25, 0), (14, 0.4, 1), (10, 0.7, 2), (16, 0.15, 3), (9, 0.9, 4)])
def test_random_graphs_match_brute_force(n, p, seed):
    edges = random_graph(n, p, seed)
    want, _ = brute_force(n, edges)
    assert kernel_counts(n, edges) == want


def test_tiny_graphs_isolated_nodes_and_no_edges():
    assert kernel_counts(5, [(0, 1)]) == {(0, 0, 1): 1, (0, 1, 0): 1}
    assert kernel_counts(4, []) == {}
    star = [(0, 1), (0, 2), (0, 3)]
    assert kernel_counts(6, star) == brute_force(6, star)[0]


def test_row_ranges_concatenate_to_the_whole():
    edges = random_graph(20, 0.3, 5)
    assert kernel_counts(20, edges, [(0, 3), (3, 3), (3, 11), (11, 20)]) == kernel_counts(20, edges)


def test_direction_loops_and_repeats_do_not_change_the_graphlets():
    edges = random_graph(13, 0.35, 6)
    noisy = [(b, a) for a, b in edges[::2]] + edges[1::2] + edges[:5] + [(3, 3), (7, 7)]
    assert kernel_counts(13, noisy) == kernel_counts(13, edges)


def test_row_sums_equal_orbit_counts_times_class_size(shared):
    """sum_v M_(a,b,rel)[u, v] = k * orbit_a(u), k the other nodes of that class in the graphlet,
    with orbit counts from the brute-force enumerator; and pairs.orbit_counts recovers them."""
    for n, edges in [karate_edges(shared), (15, random_graph(15, 0.45, 7))]:
        _, orbits = brute_force(n, edges)
        sums = np.zeros((n, 28), dtype=np.int64)
        for (t, u, _), x in kernel_counts(n, edges).items():
            sums[u, t] += x
        for t in range(28):
            assert np.array_equal(sums[:, t], op.ROW_SUM_FACTOR[t] * orbits[:, op.ROW_ORBIT[t]]), op.PAIR_NAMES[t]
        assert np.array_equal(op.orbit_counts(sums), orbits)


def test_transposes_are_transposes(shared):
    n, edges = karate_edges(shared)
    got = kernel_counts(n, edges)
    assert {(int(op.TRANSPOSE[t]), v, u): x for (t, u, v), x in got.items()} == got


# ----------------------------------------------------------------- cost guard

def test_work_estimate_is_the_three_step_walks_and_bounds_the_graphlets(shared):
    n, edges = karate_edges(shared)
    indptr, indices = csr_of(n, edges)
    walks3, graphlets4 = oc.work_estimate(indptr, indices)
    import scipy.sparse as sp
    A = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n, n))
    assert walks3 == (A @ A @ A).sum()
    _, orbits = brute_force(n, edges)
    four_node = sum(int(orbits[:, o].sum()) // size for o, size in
                    [(4, 2), (7, 1), (8, 4), (11, 1), (13, 2), (14, 4)])   # one orbit per graphlet, its nodes there
    assert four_node <= graphlets4


def test_budget_refuses_with_the_estimate():
    from embedlake.config import OrbitsConfig
    from embedlake.errors import ConfigError
    from embedlake.tasks.orbits import check_budget
    info = {"nodes": 10, "edges": 20, "triangles": 3, "walks3": 5e9, "graphlets4_bound": 1e9}
    assert "5e+09 3-step walks" in check_budget(info, OrbitsConfig(budget=6e9))
    with pytest.raises(ConfigError, match=r"5e\+09 3-step walks.*over orbits.budget, nothing counted"):
        check_budget(info, OrbitsConfig(budget=1e9))


# ----------------------------------------------------------------- embedding and the flow

def reference_embedding(csr: tuple, cfg) -> np.ndarray:
    """The orbits table in one process: all rows counted, projected, propagated, standardised."""
    from embedlake.workers.fastrp import kernels as frp
    from embedlake.workers.orbits import stages as ost
    prep, _ = ost.prepare(csr)
    n = prep[0].shape[0] - 1
    R = ost.projection(n, cfg)
    X1, _, _ = ost.count_partition(prep, R, 0, n, cfg, None)
    out, U = ost.first_output(X1, cfg.weights[0]), X1
    for w in cfg.weights[1:]:
        U, out = ost.propagate_step(prep, 0, n, w, out, U)
    return frp.standardize_columns(out, threads=1)


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_projection_is_row_range_free_and_matches_scipy(shared, combine):
    """X_1 rows from the kernel = (sum_t or [..]_t) rownorm(log1p M_t) R with the brute-force M_t."""
    import scipy.sparse as sp

    from embedlake.config import OrbitsConfig
    from embedlake.workers.orbits import stages as ost
    n, edges = karate_edges(shared)
    indptr, indices = csr_of(n, edges)
    prep, _ = ost.prepare((indptr, indices, None, False))
    cfg = OrbitsConfig(combine=combine, dim=24, dim_per_matrix=4)
    R = ost.projection(n, cfg)
    whole = ost.count_partition(prep, R, 0, n, cfg, None)[0]
    parts = [ost.count_partition(prep, R, lo, hi, cfg, None)[0] for lo, hi in [(0, 5), (5, 20), (20, n)]]
    assert whole.shape == (n, cfg.table_dim) and np.array_equal(np.concatenate(parts), whole)
    mats = brute_force(n, edges)[0]
    blocks = []
    for t in range(28):
        keys = [(u, v, x) for (tt, u, v), x in mats.items() if tt == t]
        M = sp.csr_matrix(([np.log1p(x) for _, _, x in keys], ([u for u, _, _ in keys], [v for _, v, _ in keys])),
                          shape=(n, n))
        rs = np.asarray(M.sum(1)).ravel()
        blocks.append(sp.diags(1 / np.where(rs > 0, rs, 1)) @ M @ R.astype(np.float64))
    want = sum(blocks) if combine == "sum" else np.hstack(blocks)
    np.testing.assert_allclose(whole, want, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_embed_graph_orbits_writes_exact_matrices_and_a_partition_free_table(tmp_path, shared):
    import pyarrow.parquet as pq

    import embedlake
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.lake import Lake
    from embedlake.workers.graph.store import read_graph
    ds = shared("datasets", "karate")
    lake = str(tmp_path / "lake")
    tables = []
    for parts in (1, 3):
        s = embed_graph(load_config(None, [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}",
                                           f"input.labels={ds / 'labels.tsv'}", "method=orbits",
                                           "orbits.dim=32", f"shard.partitions={parts}",
                                           f"lake.run_id=p{parts}", "eval.reconstruction=false"]))
        assert s["dim"] == 32 and s["rows"] == 34 and "micro_f1" in s["metrics"]["node_classification"]
        tables.append(embedlake.load_matrix(lake, "karate", "orbits", run=f"p{parts}")[1])
    assert np.array_equal(tables[0], tables[1])
    man = Lake(lake).manifest("karate", "orbits", "p3")
    files = man.files["orbit_adjacency"]
    assert len(files) == 28 * 3
    got = {}
    for f in files:
        pair = op.PAIR_NAMES.index(f["path"].split("pair=")[1].split("/")[0])
        t = pq.read_table(tmp_path / "lake" / f["path"]).to_pydict()
        for r, c, x in zip(t["row"], t["col"], t["count"]):
            got[(pair, r, c)] = x
    n, edges = karate_edges(shared)
    assert got == brute_force(n, edges)[0]
    csr, _, _, _ = read_graph(Lake(lake), "karate", man.extra["graph"]["version"])
    from embedlake.config import OrbitsConfig
    ref = reference_embedding((csr.indptr, csr.indices, csr.weights, False), OrbitsConfig(dim=32))
    assert np.array_equal(tables[0], ref)


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_over_budget_run_stops_before_counting_and_commits_nothing(tmp_path, shared):
    from embedlake.config import load_config
    from embedlake.errors import ConfigError
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.lake import Lake
    ds = shared("datasets", "karate")
    lake = tmp_path / "lake"
    with pytest.raises(ConfigError, match=r"7\.28e\+03 3-step walks.*over orbits.budget, nothing counted"):
        embed_graph(load_config(None, [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}", "method=orbits",
                                       "orbits.budget=1000", "lake.run_id=r1"]))
    assert not Lake(str(lake)).is_committed("karate", "orbits", "r1")
    assert not (lake / "tables").exists() and not (lake / "embeddings").exists()


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_a_sharded_graph_is_refused_with_the_setting_to_change(tmp_path, shared):
    from embedlake.config import load_config
    from embedlake.errors import ConfigError
    from embedlake.flows.embed_graph import embed_graph
    ds = shared("datasets", "karate")
    with pytest.raises(ConfigError, match=r"the graph has 2 shards: set graph.shards=1"):
        embed_graph(load_config(None, [f"lake.uri={tmp_path / 'lake'}", f"input.edges={ds / 'edges.tsv'}",
                                       "method=orbits", "graph.shards=2"]))
