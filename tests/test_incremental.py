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
