"""Link prediction on a sharded graph (workers/evaluate/links_sharded.py, tasks/evaluate.py): the
hold-out and the non-edges are the same for any S, keep to their rules, and the pipeline scores
them per shard without a task holding more than about one shard."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.workers.evaluate.links_sharded import (EDGE_SALT, in_process_caller, link_pairs, pair_endpoints, sharded_holdout,
                                                      sharded_link_stage, shard_pair_rows, split_dict, unit_draw)
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.shards import shard_bounds, split_csr
from walk_steps import csr_arcs, walk_steps


def _graph(n: int, directed: bool, seed: int = 3):
    """A random graph with hubs, leaves (degree 1) and degree-2 nodes, so the degree rule bites."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n // 2, 6 * n)
    dst = rng.integers(0, n // 2, 6 * n)
    leaves = np.arange(n // 2, n)
    src = np.concatenate([src, leaves, [0, 1]])
    dst = np.concatenate([dst, rng.integers(0, n // 2, leaves.size), [0, 1]])          # + two self-loops
    w = rng.random(src.size).astype(np.float32)
    return build_csr(src, dst, n, weights=w, directed=directed, self_loops="keep")


def _edges(csr):
    src = np.repeat(np.arange(csr.num_nodes), np.diff(csr.indptr))
    dst = csr.indices.astype(np.int64)
    keep = src != dst if csr.directed else src < dst
    return src[keep], dst[keep]


def _split(csr, S, share=0.3, seed=5):
    call, get, bounds = in_process_caller(csr, S)
    return sharded_holdout(call, get, bounds, csr.directed, share, seed), bounds


def _gathered_train(train: list[tuple], bounds, n):
    """The whole train CSR from the shards' train CSR tuples."""
    from embedlake.workers.graph.shards import CSRShard, gather_csr
    return gather_csr([CSRShard.from_tuple(t, lo, hi, n) for t, (lo, hi) in zip(train, bounds)])


def _reference_holdout(csr, share, seed):
    """The rule computed over the whole graph at once: candidates by the edge hash, a node blocked
    when every edge of it is a candidate, held out = candidates with no blocked endpoint."""
    src, dst = _edges(csr)
    cand = np.array([unit_draw(seed, u, v, EDGE_SALT) < share for u, v in zip(src, dst)], dtype=bool)
    n = csr.num_nodes
    deg = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
    nc = np.bincount(src[cand], minlength=n) + np.bincount(dst[cand], minlength=n)
    blocked = (nc > 0) & (deg - nc < 1)
    out = cand & ~blocked[src] & ~blocked[dst]
    return src, dst, out


@pytest.mark.parametrize("directed", [False, True])
def test_holdout_is_the_same_for_any_number_of_shards_and_keeps_its_rule(directed):
    csr = _graph(300, directed)
    one, b1 = _split(csr, 1)
    src, dst, out = _reference_holdout(csr, 0.3, 5)
    test1 = np.concatenate(one.tests)
    ref = np.stack([src[out], dst[out]], 1)
    np.testing.assert_array_equal(test1[np.lexsort((test1[:, 1], test1[:, 0]))], ref)
    assert 0.2 * src.size < len(ref) < 0.3 * src.size and one.info["candidates"] > len(ref)
    train1 = _gathered_train(one.train, b1, csr.num_nodes)
    whole = build_csr(src[~out], dst[~out], csr.num_nodes, weights=None, directed=directed)
    np.testing.assert_array_equal(train1.indptr, whole.indptr)
    np.testing.assert_array_equal(train1.indices, whole.indices)
    deg_before = np.bincount(np.concatenate([src, dst]), minlength=csr.num_nodes)
    s2, d2 = _edges(train1)
    deg_after = np.bincount(np.concatenate([s2, d2]), minlength=csr.num_nodes)
    assert np.all(deg_after[deg_before > 0] > 0)          # nobody cut off
    for S in (2, 3, 4, 301):                               # 301 > n: an empty shard
        other, bS = _split(csr, S)
        assert other.info == dict(one.info, shards=S)
        ps, pd, ns, nd = link_pairs(other.tests, other.times, other.pairs, other.count)
        ps1, pd1, ns1, nd1 = link_pairs(one.tests, one.times, one.pairs, one.count)
        for a, b in ((ps, ps1), (pd, pd1), (ns, ns1), (nd, nd1)):
            np.testing.assert_array_equal(a, b)
        train = _gathered_train(other.train, bS, csr.num_nodes)
        np.testing.assert_array_equal(train.indptr, train1.indptr)
        np.testing.assert_array_equal(train.indices, train1.indices)
        np.testing.assert_array_equal(train.weights, train1.weights)


@pytest.mark.parametrize("directed", [False, True])
def test_non_edges_are_distinct_non_arcs_of_the_full_graph(directed):
    csr = _graph(200, directed, seed=8)
    split, _ = _split(csr, 3, share=0.2, seed=11)
    _, _, ns, nd = link_pairs(split.tests, split.times, split.pairs, split.count)
    assert ns.size == split.count == split.info["test_edges"] > 0
    arcs = set(zip(np.repeat(np.arange(csr.num_nodes), np.diff(csr.indptr)).tolist(), csr.indices.tolist()))
    pairs = list(zip(ns.tolist(), nd.tolist()))
    assert not any(p in arcs for p in pairs) and all(u != v for u, v in pairs)
    assert len(set(pairs)) == len(pairs)
    if not directed:
        assert np.all(ns < nd)


def test_non_edges_are_uniform_over_the_pairs():
    """On an empty-ish graph the draws' first endpoints follow the pairs each node heads
    (undirected: n - 1 - u pairs (u, v > u)): a chi-square test over 10 node bins."""
    from scipy.stats import chisquare
    n = 1000
    csr = build_csr(np.array([0]), np.array([1]), n)
    call, get, bounds = in_process_caller(csr, 4)
    from embedlake.workers.evaluate.links_sharded import sharded_non_edges
    times, pairs, cut, _ = sharded_non_edges(call, get, bounds, False, 1, 20000, seed=2)
    _, _, ns, _ = link_pairs([np.empty((0, 2), np.int32)], times, pairs, 20000)
    bins = np.arange(0, n + 1, 100)
    observed = np.histogram(ns, bins)[0]
    heads = np.array([sum(n - 1 - u for u in range(a, b)) for a, b in zip(bins[:-1], bins[1:])], dtype=float)
    assert chisquare(observed, heads / heads.sum() * observed.sum()).pvalue > 1e-3


def test_sharded_link_stage_equals_the_whole_table():
    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate.stages import link_stage
    csr = _graph(240, False, seed=4)
    X = np.random.default_rng(0).standard_normal((csr.num_nodes, 8)).astype(np.float32)
    split, bounds = _split(csr, 3, share=0.2)
    cfg = EvalConfig(link_prediction=True, lp_operators=["hadamard", "dot"])
    whole = link_stage(X, split_dict(0.2, split.count, 3, *split.tests, *split.times, *split.pairs), cfg)
    ends = [pair_endpoints(bounds, split.cut, t, tm, p) for t, tm, p in zip(split.tests, split.times, split.pairs)]
    rows = [shard_pair_rows(None, X[lo:hi], lo, *[e[t] for e in ends]) for t, (lo, hi) in enumerate(bounds)]
    assert sum(r.shape[0] for r in rows) < csr.num_nodes
    got = sharded_link_stage(cfg, ["hadamard", "dot"], 0.2, split.count, split.cut, 3, *split.tests,
                             *split.times, *split.pairs, *rows)
    whole.pop("seconds"), got.pop("seconds")
    assert got == whole and got["num_pos"] == got["num_neg"] == split.count


def _ray_handle(csr, S: int):
    """A GraphHandle of S shards of `csr` (one object per shard's rows and ids), no ingest needed."""
    import ray

    from embedlake.tasks.graph import GraphHandle, ShardRef
    shards = [ShardRef(s.lo, s.hi, s.num_arcs, ray.put(s.as_tuple()), ray.put(np.arange(s.lo, s.hi)))
              for s in split_csr(csr, shard_bounds(csr.num_nodes, S))]
    meta = {"nodes": csr.num_nodes, "arcs": csr.num_arcs, "version": "lp-shards",
            "stats": {"weighted": csr.weights is not None, "directed": csr.directed}}
    return GraphHandle(meta, None, None, None, shards)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("directed", [False, True])
def test_holdout_and_link_tasks_on_ray_take_one_shard_at_most(tmp_path, directed):
    """The tasks layer on S = 4 shards: the same split and figures as the in-process S = 1 run and
    the whole table, and (object sizes recorded) no hold-out or link-prediction task takes or returns
    an object larger than 1.5 x one shard's CSR rows or table rows."""
    import ray

    from embedlake.config import EvalConfig
    from embedlake.tasks.evaluate import holdout, link_refs
    from embedlake.tasks.object_sizes import oversized, read_calls, recording
    from embedlake.workers.evaluate.stages import link_stage, merge_link_results
    csr = _graph(2000, directed, seed=6)
    X = np.random.default_rng(1).standard_normal((csr.num_nodes, 16)).astype(np.float32)
    X[:, 0] = np.diff(csr.indptr)                       # a signal for the scorers: node degree
    cfg = EvalConfig(link_prediction=True, test_edge_share=0.1, seed=4, lp_operators=["hadamard", "dot"])
    handle = _ray_handle(csr, 4)
    with recording(tmp_path / "objects") as folder:
        train, split = holdout.fn(handle, cfg, max_retries=0)
        tables = [ray.put(X[s.lo:s.hi]) for s in train.shards]
        opts = dict(num_cpus=1, max_retries=0)
        got = merge_link_results(ray.get(link_refs(train, tables, split, cfg, opts, True)))
    one, b1 = _split(csr, 1, share=0.1, seed=4)
    assert split.info["split"] == "sharded" and train.meta["holdout"] == split.info
    assert {k: v for k, v in split.info.items() if k != "seconds"} == dict(one.info, shards=4)
    gathered = _gathered_train(ray.get([s.csr_ref for s in train.shards]), train.shard_bounds, csr.num_nodes)
    np.testing.assert_array_equal(gathered.indices, _gathered_train(one.train, b1, csr.num_nodes).indices)
    whole = link_stage(X, split_dict(0.1, one.count, 1, *one.tests, *one.times, *one.pairs), cfg)
    got.pop("seconds"), whole.pop("seconds")
    assert got == whole and got["roc_auc"]["dot"] > 0.6
    calls = read_calls(folder)
    shards = split_csr(csr, shard_bounds(csr.num_nodes, 4))
    one_shard = max(max(s.nbytes for s in shards), max(s.rows for s in shards) * X.shape[1] * 4)
    fns = {c.fn for c in calls}
    assert {"shard_blocked", "shard_apply_holdout", "shard_non_edge_draws", "pair_endpoints", "shard_pair_rows",
            "sharded_link_stage"} <= fns, fns
    assert not oversized(calls, 1.5 * one_shard, {"holdout", "evaluate"})
    assert max(c.largest for c in calls if c.stage in ("holdout", "evaluate")) > 0.2 * one_shard


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_flow_with_two_shards_embeds_the_sharded_train_graph(tmp_path, shared):
    """embed_graph with graph.shards=2 and eval.link_prediction (FastRP, Gnutella as undirected):
    the split is the sharded one (the same as the in-process split of the lake's full graph at
    S = 1), the published table is FastRP of that train graph, and the figures are those of the
    one-task link stage on that table and split."""
    from embedlake.config import EvalConfig, load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.reader import load_matrix
    from embedlake.workers.fastrp.kernels import fastrp
    from embedlake.workers.evaluate.stages import link_stage
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    ds = shared("datasets", "p2p-gnutella08")
    lake = str(tmp_path / "lake")
    s = embed_graph(load_config(None, [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}", "graph.shards=2",
                                       "eval.link_prediction=true", "method=fastrp", "fastrp.dim=32",
                                       "eval.reconstruction=false", "eval.lp_operators=[hadamard, dot]"]))
    lp = s["metrics"]["link_prediction"]
    assert lp["holdout"]["split"] == "sharded" and s["graph"]["holdout"]["shards"] == 2
    assert lp["num_pos"] == lp["num_neg"] == lp["holdout"]["test_edges"] > 0
    full = ingest_graph(str(ds / "edges.tsv"), EdgeSpec()).csr       # = the gathered shards (tests/test_ingest_sharded.py)
    one, b1 = _split(full, 1, share=0.1, seed=0)
    assert one.count == lp["num_pos"]
    train = _gathered_train(one.train, b1, full.num_nodes)
    _, X = load_matrix(lake, "p2p-gnutella08", "fastrp")
    assert np.allclose(X, fastrp(train.indptr, train.indices, None, dim=32, seed=0), atol=1e-4)
    # the figures are link_stage's on the published table and that split (FastRP scores Gnutella read
    # as undirected near chance, 0.50-0.55, with split_edges' split too: no AUC floor here)
    cfg = EvalConfig(link_prediction=True, lp_operators=["hadamard", "dot"])
    whole = link_stage(X, split_dict(0.1, one.count, 1, *one.tests, *one.times, *one.pairs), cfg)
    assert lp["roc_auc"] == pytest.approx(whole["roc_auc"], abs=1e-9) and lp["mrr"] == pytest.approx(whole["mrr"])


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_sharded_deepwalk_never_walks_a_held_out_edge(tmp_path, shared):
    """DeepWalk with graph.shards=2 and eval.link_prediction: the sharded walks (written to the
    lake) never step along an edge of the sharded split in either direction, the figures come from
    the sharded table, and the held-out edges are the in-process S = 1 split's."""
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    ds = shared("datasets", "p2p-gnutella08")
    lake = str(tmp_path / "lake")
    s = embed_graph(load_config(None, [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}", "graph.shards=2",
                                       "eval.link_prediction=true", "walk.write_walks=true", "walk.walks_per_node=2",
                                       "walk.length=10", "train.dim=16", "train.window=3", "eval.reconstruction=false",
                                       "eval.lp_operators=[dot]"]))
    lp = s["metrics"]["link_prediction"]
    assert lp["holdout"]["split"] == "sharded" and set(lp["roc_auc"]) == {"dot"}
    full = ingest_graph(str(ds / "edges.tsv"), EdgeSpec()).csr
    one, _ = _split(full, 1, share=0.1, seed=0)
    ps, pd, _, _ = link_pairs(one.tests, one.times, one.pairs, one.count)
    assert ps.size == lp["num_pos"] and (ps < pd).all()
    held = set(zip(ps.tolist(), pd.tolist()))
    held |= {(v, u) for u, v in held}
    steps = walk_steps(lake, "p2p-gnutella08", "deepwalk")
    assert steps <= csr_arcs(full.indptr, full.indices) and len(steps) > 10_000
    assert not steps & held
