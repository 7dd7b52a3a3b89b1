"""Incremental runs (issue 18): the graph diff, and incremental runs through the flow."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.diff import affected_nodes, graph_diff


def edge_set(ids, src, dst, directed, weights=None):
    """{(id_a, id_b): summed weight} by original id: the brute-force reference of graph_diff."""
    out: dict = {}
    for k, (s, d) in enumerate(zip(src, dst)):
        if s == d:
            continue
        a, b = ids[s], ids[d]
        key = (a, b) if directed else undirected_key(a, b)
        out[key] = 1.0 if weights is None else out.get(key, 0.0) + float(weights[k])   # unweighted: a set
    return out


def undirected_key(a, b):
    """An undirected pair in one order: ids sorted as strings, a removed endpoint (None) second."""
    if a is None or b is None:
        return (a if b is None else b, None)
    return tuple(sorted((a, b), key=str))


def random_version(rng, ids, m, directed, weighted):
    src, dst = rng.integers(0, len(ids), m), rng.integers(0, len(ids), m)
    w = rng.integers(1, 4, m).astype(np.float32) if weighted else None
    return src, dst, w


def as_id_pairs(pairs, ids, directed):
    out = set()
    for s, d in pairs:
        a, b = (ids[s] if s >= 0 else None), (ids[d] if d >= 0 else None)
        out.add(undirected_key(a, b) if not directed else (a, b))
    return out


@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["int", "str"])
def test_diff_matches_brute_force(directed, weighted, kind):
    """Random old/new versions sharing most ids, shuffled dense order: every array of the diff equals
    the set difference computed by original id in plain Python."""
    rng = np.random.default_rng(7 + directed + 2 * weighted)
    pool = np.arange(1000, 1090)
    old_raw = rng.permutation(pool[:80])
    new_raw = rng.permutation(np.concatenate([pool[5:80], pool[80:90]]))   # 5 removed, 10 added
    old_ids = old_raw.astype(str).astype(object) if kind == "str" else old_raw
    new_ids = new_raw.astype(str).astype(object) if kind == "str" else new_raw
    os_, od, ow = random_version(rng, old_ids, 300, directed, weighted)
    old_e = edge_set(old_ids, os_, od, directed, ow)
    # the new version: the old edges mapped to the new ids (dropped where an endpoint left), 10 % of them
    # dropped, 40 fresh ones, a few reweighted
    new_pos = {v: i for i, v in enumerate(new_ids)}
    kept = [(new_pos[a], new_pos[b], w) for (a, b), w in old_e.items() if a in new_pos and b in new_pos
            and rng.random() > 0.1]
    ns, nd, nw = random_version(rng, new_ids, 40, directed, weighted)
    src = np.array([k[0] for k in kept] + list(ns))
    dst = np.array([k[1] for k in kept] + list(nd))
    w = np.array([k[2] if rng.random() > 0.05 else k[2] + 1 for k in kept] + list(nw if weighted else np.ones(40)),
                 dtype=np.float32) if weighted else None
    old = build_csr(os_, od, len(old_ids), ow, directed, duplicates="sum")
    new = build_csr(src, dst, len(new_ids), w, directed, duplicates="sum")
    new_e = edge_set(new_ids, src, dst, directed, w)
    d = graph_diff(old_ids, old, new_ids, new)

    assert set(d.nodes_added) == set(new_ids) - set(old_ids)
    assert set(d.nodes_removed) == set(old_ids) - set(new_ids)
    assert [old_ids[i] if i >= 0 else None for i in d.old_index] == [
        v if v in set(old_ids) else None for v in new_ids]
    assert as_id_pairs(d.edges_added, new_ids, directed) == set(new_e) - set(old_e)
    removed = {(a if a in new_pos else None, b if b in new_pos else None) for a, b in set(old_e) - set(new_e)}
    removed = {k if directed else undirected_key(*k) for k in removed}
    assert as_id_pairs(d.edges_removed, new_ids, directed) == removed
    assert len(d.edges_removed) == len(set(old_e) - set(new_e))
    rew = {k for k in set(old_e) & set(new_e) if old_e[k] != new_e[k]}
    assert as_id_pairs(d.edges_reweighted, new_ids, directed) == rew
    assert (len(rew) > 0) == weighted
    ends = {x for pairs in (set(new_e) - set(old_e), set(old_e) - set(new_e), rew) for e in pairs for x in e}
    assert [bool(c) for c in d.changed] == [v in ends or v not in set(old_ids) for v in new_ids]
    assert d.num_old_edges == len(old_e) and d.num_new_edges == len(new_e)
    assert d.change_fraction == pytest.approx(d.num_changed_edges / len(old_e))


def test_diff_of_identical_versions_is_empty():
    ids = np.array(["a", "b", "c"], dtype=object)
    g = build_csr(np.array([0, 1]), np.array([1, 2]), 3)
    d = graph_diff(ids, g, ids[[2, 0, 1]], build_csr(np.array([1, 2]), np.array([2, 0]), 3))
    assert d.num_changed_edges == 0 and not d.changed.any() and d.change_fraction == 0.0
    assert d.old_index.tolist() == [2, 0, 1]


def test_affected_nodes_by_radius():
    """A path 0-1-2-3-4-5: changed {0} reaches 1 at r=1, 2 at r=2; directed arcs count both ways."""
    g = build_csr(np.arange(5), np.arange(1, 6), 6)
    seed = np.zeros(6, dtype=bool)
    seed[2] = True
    assert np.flatnonzero(affected_nodes(g, seed, 0)).tolist() == [2]
    assert np.flatnonzero(affected_nodes(g, seed, 1)).tolist() == [1, 2, 3]
    assert np.flatnonzero(affected_nodes(g, seed, 2)).tolist() == [0, 1, 2, 3, 4]
    gd = build_csr(np.arange(5), np.arange(1, 6), 6, directed=True)
    assert np.flatnonzero(affected_nodes(gd, seed, 1)).tolist() == [1, 2, 3]


# ---- incremental runs through the flow -------------------------------------------------------------
KARATE_SETTINGS = ["train.dim=16", "walk.walks_per_node=10", "walk.length=20", "train.window=5", "eval.repeats=1",
                   "lake.dataset=karate", "train.threads=1", "eval.reconstruction=false", "input.id_type=str"]


def karate_version(tmp_path, name, drop=(), add=()):
    """A version of karate as its own edge file: `drop` edge rows removed, `add` (src, dst) appended."""
    from pathlib import Path
    src = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "karate" / "edges.tsv"
    lines = src.read_text().splitlines()
    rows = [r for i, r in enumerate(lines[1:]) if i not in set(drop)] + [f"{a}\t{b}" for a, b in add]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "edges.tsv").write_text("\n".join([lines[0], *rows]) + "\n")
    return folder / "edges.tsv"


def run_flow(lake, edges, overrides=()):
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    return embed_graph(load_config(None, [f"lake.uri={lake}", f"input.edges={edges}", *KARATE_SETTINGS,
                                          *overrides]))


def table_of_run(lake, run_id):
    from embedlake.lake import Lake
    from embedlake.workers.train.incremental import read_table
    man = Lake(str(lake)).manifest("karate", "deepwalk", run_id)
    ids, X = read_table(Lake(str(lake)), man.files["embeddings"])
    return man, dict(zip(ids.tolist(), X))


@pytest.mark.usefixtures("ray_session", "prefect_session", "shared")
def test_incremental_run_through_the_flow(tmp_path):
    """v1 = karate less 3 edges and node 33's edge to 32 ... v2 = karate with the 3 edges back, node
    11 gone (its only edge dropped) and a new node 34: unaffected rows keep their bytes, 11 is gone, 34
    is present, and the record says incremental with its counts."""
    lake = tmp_path / "lake"
    v1 = karate_version(tmp_path, "v1", drop=(5, 40, 60))
    s1 = run_flow(lake, v1)
    assert s1["run_kind"]["kind"] == "full" and "no committed run" in s1["run_kind"]["reason"]
    edges = karate_version(tmp_path, "v0").read_text().splitlines()
    eleven = [i for i, r in enumerate(edges[1:]) if "11" in r.split("\t")]
    v2 = karate_version(tmp_path, "v2", drop=tuple(eleven), add=((34, 0), (34, 33)))
    s2 = run_flow(lake, v2, ["train.incremental_radius=0"])      # karate is small: r=1 reaches most nodes
    kind = s2["run_kind"]
    assert kind["kind"] == "incremental" and kind["previous_run"] == s1["run_id"], kind
    assert kind["edges_added"] == 3 + 2 and kind["edges_removed"] == 1 and kind["nodes_added"] == 1
    assert kind["nodes_removed"] == 1 and 0 < kind["affected_nodes"] < kind["nodes"] == 34
    assert kind["walks"] > 0 and kind["tokens"] > 0
    _, before = table_of_run(lake, s1["run_id"])
    man, after = table_of_run(lake, s2["run_id"])
    assert man.extra["run_kind"]["kind"] == "incremental" and "stability" not in (man.metrics or {})
    assert "11" not in after and "34" in after and set(after) == set(before) - {"11"} | {"34"}
    from embedlake.lake import Lake
    from embedlake.workers.graph.store import read_graph
    new_csr, new_ids, _, _ = read_graph(Lake(str(lake)), "karate", s2["graph"]["version"])
    old_csr, old_ids, _, _ = read_graph(Lake(str(lake)), "karate", s1["graph"]["version"])
    d = graph_diff(old_ids, old_csr, new_ids, new_csr)
    frozen = ~affected_nodes(new_csr, d.changed, 0)
    assert frozen.sum() > 0 and kind["affected_nodes"] == int((~frozen).sum())
    for v in new_ids[frozen].tolist():
        assert after[v].tobytes() == before[v].tobytes(), v
    from embedlake.tasks.incremental import context_file
    from embedlake.workers.train.incremental import read_table
    # the update pairs run 1's W_in rows (its table, read back in file order) with run 1's W_out rows
    # (the context .npy, in its graph's dense order): both must be in the same row order
    ids1, table1 = read_table(Lake(str(lake)), Lake(str(lake)).manifest("karate", "deepwalk", s1["run_id"]).files["embeddings"])
    assert ids1.tolist() == old_ids.tolist()
    w_out1 = Lake(str(lake)).read_npy(context_file(Lake(str(lake)).manifest("karate", "deepwalk", s1["run_id"])))
    assert w_out1.shape == table1.shape and np.abs(w_out1).max() > 0
    moved = [v for v in new_ids[~frozen].tolist() if v in before and after[v].tobytes() != before[v].tobytes()]
    assert moved, "the affected rows were trained"
    # ls says incremental with the counts
    from embedlake.flows.cli import main as cli
    import io, contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(["ls", "--lake", str(lake)]) == 0
    assert f"incr {kind['affected_nodes']}/34" in buf.getvalue() and "full" in buf.getvalue()


@pytest.mark.usefixtures("ray_session", "prefect_session", "shared")
def test_full_retrain_when_change_too_large_or_settings_differ(tmp_path):
    lake = tmp_path / "lake"
    v1 = karate_version(tmp_path, "v1", drop=(5,))
    run_flow(lake, v1)
    v2 = karate_version(tmp_path, "v2", drop=tuple(range(10)))     # 9 more removed of 77: 12 %
    s2 = run_flow(lake, v2)
    assert s2["run_kind"]["kind"] == "full" and "train.incremental_max_change=0.1" in s2["run_kind"]["reason"]
    assert s2["run_kind"]["edges_removed"] == 9 and s2["run_kind"]["edges_added"] == 0
    s3 = run_flow(lake, v1, ["train.dim=8"])
    assert s3["run_kind"]["kind"] == "full" and "train.dim changed (16" in s3["run_kind"]["reason"]
    s4 = run_flow(lake, v1, ["train.dim=8", "train.incremental=off"])
    assert s4["run_kind"]["kind"] == "full" and s4["run_kind"]["reason"] == "train.incremental=off"
    assert s4["run_kind"]["previous_run"] is None and s4["run_kind"]["tokens"] == 34 * 10 * 20
    from embedlake.lake import Lake
    man = Lake(str(lake)).manifest("karate", "deepwalk", s3["run_id"])
    assert man.extra["run_kind"]["reason"] == s3["run_kind"]["reason"]
    s5 = run_flow(lake, v1, ["train.dim=8"])           # s4 ran with incremental=off: it kept no context table
    assert s5["run_kind"]["kind"] == "full" and "kept no context table" in s5["run_kind"]["reason"]
    s6 = run_flow(lake, v1, ["train.dim=8"])           # same graph as the previous run: nothing changed
    assert s6["run_kind"]["kind"] == "incremental" and s6["run_kind"]["walks"] == 0
    assert s6["run_kind"]["affected_nodes"] == 0 and s6["run_kind"]["change_fraction"] == 0
    _, before = table_of_run(lake, s5["run_id"])
    _, after = table_of_run(lake, s6["run_id"])
    assert all(after[v].tobytes() == before[v].tobytes() for v in before)


def test_frozen_training_never_writes_frozen_rows():
    """train_frozen on walks over every node: rows outside the mask keep their bytes, the others move."""
    from embedlake.config import TrainConfig
    from embedlake.workers.graph.walks import random_walks, walks_to_sentences
    from embedlake.workers.train.incremental import noise_counts, train_frozen
    rng = np.random.default_rng(3)
    g = build_csr(rng.integers(0, 60, 400), rng.integers(0, 60, 400), 60)
    tokens, offsets = walks_to_sentences(random_walks(g.indptr, g.indices, None, np.arange(60), 4, 20, 1))
    W_in = rng.random((60, 8), dtype=np.float32) - 0.5
    W_out = rng.random((60, 8), dtype=np.float32) - 0.5
    before, trainable = W_in.copy(), np.arange(60) % 3 == 0
    stats = train_frozen(tokens, offsets, W_in, W_out, trainable, noise_counts(g), TrainConfig(dim=8, window=3), 2)
    assert stats["tokens"] == len(tokens) and stats["pairs"] > 0
    assert W_in[~trainable].tobytes() == before[~trainable].tobytes()
    assert (np.abs(W_in[trainable] - before[trainable]).max(axis=1) > 0).all()


def test_edge_walks_cross_their_edge():
    """A centred edge walk holds u then v side by side, u's side reversed; no padding inside."""
    from embedlake.config import WalkConfig
    from embedlake.workers.train.incremental import edge_walks, join_reversed
    assert join_reversed(np.array([[1, 2, 3, -1]]), np.array([[9, 8, -1]])).tolist() == [[3, 2, 1, 9, 8, -1, -1]]
    g = build_csr(np.arange(9), np.arange(1, 10), 10)          # a path
    edges = np.array([[4, 5], [0, 1]])
    w = edge_walks((g.indptr, g.indices, None, False), edges, 3, WalkConfig(), side=2, mode="deepwalk")
    assert w.shape == (6, 6)
    for row, (u, v) in zip(w, np.tile(edges, (3, 1))):
        valid = row[row >= 0].tolist()
        assert (row >= 0).sum() == len(valid) and row[: len(valid)].tolist() == valid
        i = valid.index(u)
        assert valid[i + 1] == v and all(abs(a - b) == 1 for a, b in zip(valid, valid[1:]))


@pytest.mark.usefixtures("ray_session", "prefect_session", "shared")
def test_fastrp_incremental_through_the_flow(tmp_path):
    """method fastrp with the node-id keyed projection: the second version is an incremental run
    (tasks/fastrp.fastrp_incremental) whose table equals a full run's of the same version."""
    fr = ["method=fastrp", "fastrp.dim=16", "fastrp.density=0.2", "fastrp.projection=node_id"]
    v1 = karate_version(tmp_path, "v1", drop=(5, 40))
    v2 = karate_version(tmp_path, "v2", drop=(40,), add=((34, 0),))
    run_flow(tmp_path / "lake", v1, fr)
    inc = run_flow(tmp_path / "lake", v2, fr)
    full = run_flow(tmp_path / "other", v2, fr)
    assert inc["run_kind"]["kind"] == "incremental" and full["run_kind"]["kind"] == "full", inc["run_kind"]
    assert 0 < inc["run_kind"]["affected_nodes"] <= inc["run_kind"]["nodes"] == 35
    assert "publish" in inc["run_kind"] and "stability" not in inc["metrics"]
    from embedlake.lake import Lake
    from embedlake.workers.train.incremental import read_table
    a = read_table(Lake(str(tmp_path / "lake")), Lake(str(tmp_path / "lake")).manifest("karate", "fastrp").files["embeddings"])
    b = read_table(Lake(str(tmp_path / "other")), Lake(str(tmp_path / "other")).manifest("karate", "fastrp").files["embeddings"])
    rows_a = dict(zip(a[0].tolist(), a[1]))
    assert set(rows_a) == set(b[0].tolist())
    assert all(rows_a[k].tobytes() == v.tobytes() for k, v in zip(b[0].tolist(), b[1]))


def test_edge_walks_per_edge_follow_a_retrains_crossings():
    """Default edge walks: a quarter of c = walks_per_node x (length - 1) x nodes / edges, between 1
    and 8, or a fifteenth of c where that is more (sparse graphs); a set count wins. Edge walks reach
    half the window out."""
    from embedlake.workers.train.incremental import edge_walk_side, edge_walks_per_edge
    g = build_csr(np.arange(9), np.arange(1, 10), 10)          # a path: 10 nodes, 9 edges
    assert edge_walks_per_edge(g, 10, 80, None) == round(10 * 79 * 10 / 9 / 15) == 59   # a fifteenth of 878
    assert edge_walks_per_edge(g, 1, 100, None) == 8           # c = 110: the cap of 8 (a fifteenth is 7)
    assert edge_walks_per_edge(g, 2, 60, None) == 9            # c = 131: a fifteenth (8.7) passes the cap
    assert edge_walks_per_edge(g, 1, 4, None) == round(3 * 10 / 9 / 4) == 1
    assert edge_walks_per_edge(g, 2, 10, None) == round(2 * 9 * 10 / 9 / 4) == 5
    assert edge_walks_per_edge(g, 1, 2, None) == 1 and edge_walks_per_edge(g, 10, 80, 3) == 3
    assert edge_walks_per_edge(build_csr(np.arange(9), np.arange(1, 10), 10, directed=True), 2, 10, None) == 5
    assert edge_walk_side(10) == 5 and edge_walk_side(1) == 1


def test_update_rate_rises_as_the_change_thins():
    """The update's rate: incremental_lr_scale where 2 x changed edges >= nodes, x (nodes / (2 x
    changed edges)) ** rise below, never above train.lr; rise 0 keeps one rate at every change."""
    from embedlake.config import TrainConfig
    from embedlake.workers.train.incremental import update_lr_scale
    n = 64
    ring = np.arange(n)
    g1 = build_csr(ring, (ring + 1) % n, n)

    def diff_adding(k):            # k chords (i, i + 32) added to the ring
        src = np.concatenate([ring, np.arange(k)])
        return graph_diff(np.arange(n), g1, np.arange(n), build_csr(src, np.concatenate([(ring + 1) % n,
                                                                                        np.arange(k) + 32]), n))
    t = TrainConfig(incremental_lr_scale=0.4, incremental_lr_rise=0.5)
    assert update_lr_scale(t, diff_adding(32)) == pytest.approx(0.4)     # 64 changed ends on 64 nodes
    assert update_lr_scale(t, diff_adding(8)) == pytest.approx(0.8)      # 16 on 64: 0.4 x 4 ** 0.5
    assert update_lr_scale(t, diff_adding(1)) == 1.0                     # 0.4 x 32 ** 0.5, capped at train.lr
    flat = TrainConfig(incremental_lr_scale=0.4, incremental_lr_rise=0.0)
    assert update_lr_scale(flat, diff_adding(1)) == pytest.approx(0.4)
    assert TrainConfig().incremental_lr_rise == 0.2


@pytest.mark.usefixtures("ray_session", "prefect_session", "shared")
def test_walk_update_publishes_only_changed_partitions(tmp_path):
    """A walk update publishes hashed partitions (tasks/fastrp.publish_partial): the first update
    after a full run writes every partition (the full run's files are row ranges); an update that
    changed no row writes none and its manifest keeps the previous update's file, same path."""
    lake = tmp_path / "lake"
    run_flow(lake, karate_version(tmp_path, "v1", drop=(5, 40)))
    v2 = karate_version(tmp_path, "v2")
    s2 = run_flow(lake, v2, ["train.incremental_radius=0"])
    s3 = run_flow(lake, v2, ["train.incremental_radius=0"])
    assert s2["run_kind"]["kind"] == s3["run_kind"]["kind"] == "incremental"
    p2, p3 = s2["run_kind"]["publish"], s3["run_kind"]["publish"]
    assert p2["files_kept"] == 0 and p2["files_written"] >= 1 and p2["bytes_written"] > 0
    assert p3["files_written"] == 0 and p3["bytes_written"] == 0 and p3["files_kept"] == p2["files_written"]
    m2, t2 = table_of_run(lake, s2["run_id"])
    m3, t3 = table_of_run(lake, s3["run_id"])
    assert [e["path"] for e in m3.files["embeddings"]] == [e["path"] for e in m2.files["embeddings"]]
    assert set(t3) == set(t2) and all(t3[v].tobytes() == t2[v].tobytes() for v in t2)


def test_previous_rows_follow_the_dense_order():
    """An update's previous table may be in hashed partitions (rows grouped by id hash): its rows are
    put back in the previous graph's dense order (W_out's) before the update; a missing node raises."""
    from embedlake.workers.train.incremental import rows_in_dense_order
    dense = np.array([30, 10, 20, 40])
    read_ids = np.array([20, 40, 30, 10])                      # e.g. partition 0 = {20, 40}, 1 = {30, 10}
    table = np.arange(8, dtype=np.float32).reshape(4, 2)       # row r belongs to read_ids[r]
    out = rows_in_dense_order(read_ids, table, dense)
    assert out.tolist() == [table[2].tolist(), table[3].tolist(), table[0].tolist(), table[1].tolist()]
    strs = rows_in_dense_order(read_ids.astype(str).astype(object), table, dense.astype(str).astype(object))
    assert strs.tobytes() == out.tobytes()
    with pytest.raises(ValueError, match="lacks 1 of its graph's 5 nodes"):
        rows_in_dense_order(read_ids, table, np.r_[dense, 50])
