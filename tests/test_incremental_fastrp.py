"""Incremental FastRP (issue 18): the table of an incremental run equals a full FastRP of the new
graph bit for bit, the carried state equals the full run's state, and only the rows whose k-hop
neighbourhood changed are recomputed."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.config import FastRPConfig
from embedlake.workers.fastrp import incremental as inc
from embedlake.workers.fastrp import kernels as F
from embedlake.workers.graph.csr import build_csr


def versioned_graph(edges: np.ndarray, weights: np.ndarray | None, directed: bool):
    """(node ids, csr tuple) of edges given by ORIGINAL ids: dense ids in sorted id order, as ingest
    numbers them, so a node inserted in a later version shifts the dense ids of the nodes after it."""
    ids = np.unique(edges)
    src, dst = np.searchsorted(ids, edges[:, 0]), np.searchsorted(ids, edges[:, 1])
    g = build_csr(src, dst, len(ids), weights=weights, directed=directed)
    return ids, (g.indptr, g.indices, g.weights)


def two_versions(n=400, m=2400, keep=0.97, new_nodes=6, directed=False, weighted=False, seed=0):
    """Version 1: a random `keep` share of version 2's edges, minus the edges of `new_nodes` nodes."""
    rng = np.random.default_rng(seed)
    orig = rng.choice(10**6, size=n, replace=False)                # sparse, unordered original ids
    edges = orig[rng.integers(0, n, size=(m, 2))]
    edges = edges[edges[:, 0] != edges[:, 1]]
    w = rng.uniform(0.5, 2.0, len(edges)).astype(np.float32) if weighted else None
    fresh = orig[:new_nodes]
    old_mask = (rng.random(len(edges)) < keep) & ~np.isin(edges, fresh).any(axis=1)
    v1 = versioned_graph(edges[old_mask], None if w is None else w[old_mask], directed)
    v2 = versioned_graph(edges, w, directed)
    return v1, v2


def old_index_of(old_ids, new_ids):
    pos = np.minimum(np.searchsorted(old_ids, new_ids), len(old_ids) - 1)
    return np.where(old_ids[pos] == new_ids, pos, -1).astype(np.int64)


CFG = FastRPConfig(dim=32, weights=[0.5, 1.0, 2.0, 4.0], density=0.2, projection="node_id", seed=7)


@pytest.mark.parametrize("directed,weighted,normalization,standardize", [
    (False, False, "row", True), (True, True, "sym", True), (True, False, "none", False)])
def test_incremental_equals_full_recompute(directed, weighted, normalization, standardize, monkeypatch):
    monkeypatch.setattr(inc, "FULL_SHARE", 1.0)        # the ball path even where the balls cover most rows
    cfg = CFG.model_copy(update={"normalization": normalization, "standardize": standardize})
    (ids1, g1), (ids2, g2) = two_versions(directed=directed, weighted=weighted)
    _, state1 = inc.fastrp_with_state(*g1, F.node_keys(ids1), cfg)
    up = inc.fastrp_incremental(g2, F.node_keys(ids2), g1, old_index_of(ids1, ids2), state1, cfg, directed=directed)
    full, state2 = inc.fastrp_with_state(*g2, F.node_keys(ids2), cfg)
    reference = F.fastrp(*g2, dim=cfg.dim, iteration_weights=cfg.weights, beta=cfg.beta, density=cfg.density,
                         normalization=normalization, standardize=standardize, seed=cfg.seed,
                         row_keys=F.node_keys(ids2), partitions=3)
    assert np.array_equal(full, reference)            # the state-keeping full run is kernels.fastrp
    assert np.array_equal(up.table, full)             # incremental == full recompute, bit for bit
    assert np.array_equal(up.state.raw, state2.raw)
    assert all(np.array_equal(a, b) for a, b in zip(up.state.levels, state2.levels))
    assert up.rows_per_level == sorted(up.rows_per_level)          # nested balls A_1 in A_2 ...
    assert 0 < up.changed_rows <= up.rows_per_level[0] and not up.recomputed_all


def test_large_balls_recompute_everything_with_the_same_bits():
    """Balls over FULL_SHARE of the rows: the whole graph is recomputed (cheaper), same result and state."""
    (ids1, g1), (ids2, g2) = two_versions(keep=0.8)
    _, state1 = inc.fastrp_with_state(*g1, F.node_keys(ids1), CFG)
    up = inc.fastrp_incremental(g2, F.node_keys(ids2), g1, old_index_of(ids1, ids2), state1, CFG)
    full, state2 = inc.fastrp_with_state(*g2, F.node_keys(ids2), CFG)
    assert up.recomputed_all and up.info()["rows_recomputed"] == len(ids2) > 0.5 * len(ids2) < up.rows_per_level[-1]
    assert np.array_equal(up.table, full) and np.array_equal(up.state.raw, state2.raw)


def test_a_small_change_recomputes_only_its_ball():
    """A path-like sparse graph: one added edge touches a few rows, the rest are carried unchanged."""
    n = 3000
    chain = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1) * 7 + 11      # original ids 11, 18, ...
    extra = np.array([[11 + 7 * 1500, 11 + 7 * 1510]])
    ids1, g1 = versioned_graph(chain, None, directed=False)
    ids2, g2 = versioned_graph(np.concatenate([chain, extra]), None, directed=False)
    _, state1 = inc.fastrp_with_state(*g1, F.node_keys(ids1), CFG)
    up = inc.fastrp_incremental(g2, F.node_keys(ids2), g1, old_index_of(ids1, ids2), state1, CFG)
    full, _ = inc.fastrp_with_state(*g2, F.node_keys(ids2), CFG)
    assert np.array_equal(up.table, full)
    # 2 changed rows; each level adds their predecessors (chain neighbours and the shortcut): 2 + 2 per side
    assert up.changed_rows == 2
    assert up.rows_per_level == [6, 10, 14, 18]
    assert up.info()["rows_recomputed"] == 18


def test_chained_updates_and_no_change(monkeypatch):
    monkeypatch.setattr(inc, "FULL_SHARE", 1.0)
    """Two successive incremental runs stay equal to full runs; an unchanged graph recomputes nothing."""
    (ids1, g1), (ids3, g3) = two_versions(keep=0.9, new_nodes=10, seed=3)
    (ids2, g2), _ = two_versions(keep=0.95, new_nodes=5, seed=3)
    _, s1 = inc.fastrp_with_state(*g1, F.node_keys(ids1), CFG)
    up2 = inc.fastrp_incremental(g2, F.node_keys(ids2), g1, old_index_of(ids1, ids2), s1, CFG)
    up3 = inc.fastrp_incremental(g3, F.node_keys(ids3), g2, old_index_of(ids2, ids3), up2.state, CFG)
    assert np.array_equal(up3.table, inc.fastrp_with_state(*g3, F.node_keys(ids3), CFG)[0])
    same = inc.fastrp_incremental(g3, F.node_keys(ids3), g3, np.arange(len(ids3)), up3.state, CFG)
    assert same.rows_per_level == [0, 0, 0, 0] and np.array_equal(same.table, up3.table)


def test_renumbered_neighbours_count_as_changed():
    """A row whose neighbours keep their ids but change CSR order (renumbered) is recomputed: the
    same sum in another order can differ in the last bit. changed_rows compares arc sequences."""
    indptr = np.array([0, 2, 3, 4], dtype=np.int64)
    old = (indptr, np.array([1, 2, 0, 0], dtype=np.int32), None)
    new = (indptr, np.array([1, 2, 0, 0], dtype=np.int32), None)
    assert not inc.changed_rows(old, new, np.arange(3)).any()
    # rows 1 and 2 swap dense ids: row 0 now lists old node 2 first
    assert inc.changed_rows(old, new, np.array([0, 2, 1])).tolist() == [True, False, False]


def test_keyed_projection_follows_the_node_not_the_row():
    ids_old = np.array([5, 9, 12, 40])
    ids_new = np.array([5, 7, 9, 12, 40, 41])          # 7 inserted before 9: 9, 12, 40 move down a row
    R_old = F.random_projection(4, 64, density=0.1, seed=3, row_keys=F.node_keys(ids_old))
    R_new = F.random_projection(6, 64, density=0.1, seed=3, row_keys=F.node_keys(ids_new))
    assert np.array_equal(R_new[[0, 2, 3, 4]], R_old)
    strs = np.array(["a", "bb", "c"], dtype=object)
    assert np.array_equal(F.node_keys(strs), F.node_keys(np.array(["a", "bb", "c"])))
    assert len(set(F.node_keys(strs).tolist())) == 3
    # the default (row-keyed) projection is unchanged: keys equal to the row ids give the same R
    assert np.array_equal(F.random_projection(6, 64, seed=3),
                          F.random_projection(6, 64, seed=3, row_keys=np.arange(6, dtype=np.uint64)))


def test_keyed_projection_needs_a_pinned_density():
    with pytest.raises(ValueError, match="fastrp.density"):
        FastRPConfig(projection="node_id")


# ----------------------------------------------------------------------------- through Prefect + Ray
def _edges_file(path, edges):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("src\tdst\n" + "".join(f"{a}\t{b}\n" for a, b in edges))
    return path


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_pipeline_full_then_incremental(tmp_path, shared):
    """A committed node_id-keyed FastRP run saves its state; the next version's incremental task
    (tasks/fastrp.fastrp_incremental) gives the full recompute's table and refuses what it must."""
    import ray

    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.lake import Lake
    from embedlake.lake import Manifest
    from embedlake.tasks.fastrp import fastrp_incremental, incremental_refusal, publish_partial
    from embedlake.tasks.graph import graph_for_run
    from embedlake.tasks.run import Run
    from embedlake.workers.graph.store import read_graph
    edges = np.loadtxt(shared("datasets", "cora") / "edges.tsv", dtype=np.int64, skiprows=1)
    rng = np.random.default_rng(0)
    v1 = _edges_file(tmp_path / "v1" / "cora" / "edges.tsv", edges[rng.random(len(edges)) < 0.97])
    v2 = _edges_file(tmp_path / "v2" / "cora" / "edges.tsv", edges)
    lake = Lake(str(tmp_path / "lake"))
    over = [f"lake.uri={lake.uri}", "method=fastrp", "fastrp.dim=32", "fastrp.density=0.1", "lake.dataset=cora",
            "fastrp.projection=node_id", "eval.reconstruction=false", "eval.train_ratios=[0.5]", "eval.repeats=1"]
    embed_graph(load_config(None, over + [f"input.edges={v1}", "lake.run_id=v1"]))
    previous = lake.manifest("cora", "fastrp", "v1")
    assert [e["path"].rsplit("/", 1)[-1] for e in previous.files["fastrp_state"]] == \
        ["level-1.npy", "level-2.npy", "level-3.npy", "raw.npy"]
    cfg = load_config(None, over + [f"input.edges={v2}", "lake.run_id=v2"])
    assert incremental_refusal(previous, cfg.fastrp) is None
    assert "fastrp.dim" in incremental_refusal(previous, cfg.fastrp.model_copy(update={"dim": 16}))
    assert "projection" in incremental_refusal(previous, cfg.fastrp.model_copy(update={"projection": "row"}))
    old_csr, old_ids, _, _ = read_graph(lake, "cora", previous.extra["graph"]["version"])
    run = Run.open(cfg, "cora", "fastrp")
    with run:
        graph, _ = graph_for_run(run, cfg.input, cfg.synthetic, cfg.eval, cfg.graph)
        new_ids = ray.get(graph.node_ids_ref)
        old_ref = ray.put((old_csr.indptr, old_csr.indices, old_csr.weights, old_csr.directed))
        got = fastrp_incremental(run, graph, cfg.fastrp, previous, old_ref, old_index_of(old_ids, new_ids))
        table = ray.get(got.ref)
        new_csr = ray.get(graph.csr_ref)
        # the hashed publish: v1 used row-range files, so every partition is written; the same table
        # published again over those files writes none
        entries, stats = publish_partial(run, graph, got.ref, previous, row_bytes=4 * 32 + 16)
        assert stats["files_kept"] == 0 and sum(e["rows"] for e in entries) == len(new_ids)
        again = Manifest("cora", "fastrp", "v2", files={"embeddings": entries})
        _, stats2 = publish_partial(run, graph, got.ref, again, row_bytes=4 * 32 + 16)
        assert stats2["files_written"] == 0 and stats2["files_kept"] == stats["files_written"] >= 1
    full, _ = inc.fastrp_with_state(*new_csr[:3], F.node_keys(new_ids), cfg.fastrp)
    assert np.array_equal(table, full)
    assert 0 < got.info["rows_recomputed"] <= len(new_ids) and got.info["changed_rows"] > 0
    state = inc.load_state(lake, got.files["fastrp_state"], 4, len(new_ids), 32)
    assert np.array_equal(inc.standardized(state.raw, True), full)


def test_affected_levels_match_their_definition():
    """A_k = C u pred(A_{k-1}) by brute force (every arc, every level) on a directed graph."""
    (_, (indptr, indices, _)), _ = two_versions(n=300, m=700, directed=True)
    n = len(indptr) - 1
    changed = np.zeros(n, dtype=bool)
    changed[[3, 50, 51]] = True
    src = np.repeat(np.arange(n), np.diff(indptr))
    want, prev = [], changed
    for _ in range(4):
        cur = changed.copy()
        cur[src[prev[indices]]] = True
        want.append(cur)
        prev = cur
    got = inc.affected_levels(indptr, indices, changed, 4, directed=True)
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and want[0].sum() < want[-1].sum()
