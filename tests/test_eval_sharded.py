"""Evaluation of a sharded graph (issue 22): the same figures as the one-CSR evaluation at the same
seed, computed by per-shard work only.

- workers/evaluate/sharded.py without Ray: shard calls made in process, against
  ``reconstruction_map`` on the whole graph, for exact, sampled (stratified rings and the sampled
  last ring), capped, ring-mode and dot-product settings, with empty shards too.
- tasks/evaluate.py on the session's Ray, with the object-size recorder (tasks/object_sizes.py):
  reconstruction and node classification of a 4-shard handle equal those of the one-shard handle,
  and no evaluate task takes or returns more than twice one shard's CSR or table bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedlake.workers.evaluate import geometry
from embedlake.workers.evaluate import sharded as sh
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.shards import shard_bounds, split_csr

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _graph(name: str):
    d = DATA / name
    if not (d / "edges.tsv").exists():
        pytest.skip(f"{d} is absent (the shared datasets folder ../shared is needed)")
    e = np.loadtxt(d / "edges.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    n = json.loads((d / "stats.json").read_text())["num_nodes"] if (d / "stats.json").exists() else int(e.max()) + 1
    return build_csr(e[:, 0], e[:, 1], n)


def _embedding(g, d: int, seed: int) -> np.ndarray:
    """Vectors with graph structure (two propagation steps of a random projection), so the
    rankings have real ties to break and real neighbourhoods to find."""
    import scipy.sparse as sp
    A = sp.csr_matrix((np.ones(g.indices.size, np.float32), g.indices, g.indptr), shape=(g.num_nodes,) * 2)
    X = np.random.default_rng(seed).standard_normal((g.num_nodes, d)).astype(np.float32)
    for _ in range(2):
        X = (A @ X + X).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True) + 1e-9
    return X


def in_process(g, X, shards: int):
    """call / get / ShardedGraph running each shard's work in this process on its own slices."""
    bounds = shard_bounds(g.num_nodes, shards)
    parts = split_csr(g, bounds)

    def call(s, fn, *args):
        p = parts[s]
        return fn(p.as_tuple(), X[p.lo:p.hi], p.lo, *args)
    return call, list, sh.ShardedGraph(bounds, g.num_arcs, True)


SETTINGS = [dict(sample=120), dict(sample=120, relevant_cap=40), dict(sample=80, ball_cap=150),
            dict(sample=60, relevant_cap=16, mode="ring", hops=(1, 2)),
            dict(sample=80, relevant_cap=8, similarity="dot", hops=(2, 3))]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sharded_reconstruction_equals_the_one_csr_kernel(kw):
    g = _graph("cora")
    X = _embedding(g, 16, seed=1)
    want = geometry.reconstruction_map(X, g.indptr, g.indices, **kw)
    for shards in (1, 3, 5):
        call, get, graph = in_process(g, X, shards)
        got = sh.sharded_reconstruction(call, get, graph, **kw)
        assert json.dumps(got) == json.dumps(want), (shards, got, want)      # NaN-aware, bit for bit
    if kw.get("relevant_cap"):
        assert sum(want["sampled"].values()) > 0                             # the sampled paths ran


def test_sampled_last_ring_and_empty_shards_on_blogcatalog():
    """BlogCatalog's 2-hop frontier covers most arcs, so its 3rd ring is drawn, not enumerated
    (the counter-hash draws replayed a chunk at a time); 40 shards of karate leave 6 empty."""
    g = _graph("blogcatalog")
    X = _embedding(g, 16, seed=2)
    kw = dict(sample=40, relevant_cap=32)
    want = geometry.reconstruction_map(X, g.indptr, g.indices, **kw)
    call, get, graph = in_process(g, X, 4)
    assert json.dumps(sh.sharded_reconstruction(call, get, graph, **kw)) == json.dumps(want)
    assert want["sampled"]["3"] == 40
    k = _graph("karate")
    Xk = _embedding(k, 4, seed=3)
    call, get, graph = in_process(k, Xk, 40)
    assert json.dumps(sh.sharded_reconstruction(call, get, graph, relevant_cap=3)) == json.dumps(
        geometry.reconstruction_map(Xk, k.indptr, k.indices, relevant_cap=3))


def test_scores_do_not_depend_on_the_row_split():
    """pair_scores (one candidate) and count_at_least (a pass over rows) compute the same float32
    numbers for a row whichever block of rows holds it: BLAS products do not (their rounding
    depends on the matrix shapes), which is why the kernel computes its own."""
    rng = np.random.default_rng(4)
    U = geometry.compared_rows(rng.standard_normal((3000, 24)).astype(np.float32), "cosine")
    q = np.array([5, 1700], dtype=np.int64)
    nodes = np.arange(3000, dtype=np.int64)
    qrow = np.zeros(3000, dtype=np.int64)
    whole = geometry.pair_scores(U, 0, U[q], qrow, nodes)
    split = np.concatenate([geometry.pair_scores(U[lo:hi], lo, U[q], qrow[lo:hi], nodes[lo:hi])
                            for lo, hi in [(0, 1111), (1111, 2900), (2900, 3000)]])
    assert np.array_equal(whole, split)
    t = np.sort(whole[rng.choice(3000, 50, replace=False)])
    offsets = np.array([0, 50, 50], dtype=np.int64)                 # the second query has no thresholds
    ge = geometry.count_at_least(U, 0, U[q], q, t, offsets, 2)
    parts = sum(geometry.count_at_least(U[lo:hi], lo, U[q], q, t, offsets, 1) for lo, hi in [(0, 1700), (1700, 3000)])
    assert np.array_equal(ge, parts)
    assert np.array_equal(ge[:51], [(np.delete(whole, 5) >= x).sum() for x in t] + [0])


# ---- on Ray: the evaluate task's figures, sharded vs one shard, with the object-size recorder ----

def _handles(g, X, labels, shards: int):
    """A one-shard and an S-shard GraphHandle of g with the same labels, and their table refs."""
    import ray

    from embedlake.tasks.graph import GraphHandle, ShardRef
    n = g.num_nodes
    ids = np.arange(n, dtype=np.int64)
    meta = {"nodes": n, "arcs": g.num_arcs, "version": "eval-sharded", "labelled": True,
            "stats": {"directed": False, "weighted": False}}
    labels_ref = ray.put(labels)
    whole = (g.indptr, g.indices, g.weights, g.directed)
    one = GraphHandle(meta, ray.put(whole), ray.put(ids), labels_ref, [])
    parts = split_csr(g, shard_bounds(n, shards))
    many = GraphHandle(meta, None, None, labels_ref,
                       [ShardRef(p.lo, p.hi, p.num_arcs, ray.put(p.as_tuple()), ray.put(ids[p.lo:p.hi])) for p in parts])
    return one, ray.put(X), many, [ray.put(np.ascontiguousarray(X[p.lo:p.hi])) for p in parts], parts


def _comparable(results: dict) -> dict:
    """The figures without their costs (and without the one-shard figures task's timeline, which
    the evaluate task logs and drops)."""
    drop = {"seconds", "shards", "tasks"}
    return {k: {m: v for m, v in fig.items() if m not in drop} for k, fig in results.items() if k != "timeline"}


@pytest.mark.usefixtures("ray_session")
def test_sharded_evaluate_task_equals_one_shard_and_stays_within_a_shard(tmp_path):
    from embedlake.config import EvalConfig
    from embedlake.tasks import evaluate as et
    from embedlake.tasks.object_sizes import largest_by_stage, oversized, read_calls, recording
    g = _graph("cora")
    X = _embedding(g, 8, seed=5)
    lab = np.loadtxt(DATA / "cora" / "labels.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    labels = (lab[:, 0].astype(np.int32), lab[:, 1].astype(np.int32), None)
    cfg = EvalConfig(train_ratios=[0.5], sampled_repeats=2, classify_max_nodes=300, reconstruction_sample=150,
                     reconstruction_relevant_cap=24, align_to_previous=False, artifacts=False)
    one, one_table, many, tables, parts = _handles(g, X, labels, shards=4)
    want = et._figures(str(tmp_path / "lake"), "cora", "m", "r1", one, one_table, cfg, None, None, 0)
    with recording(tmp_path / "rec") as rec:
        got = et._figures(str(tmp_path / "lake"), "cora", "m", "r2", many, tables, cfg, None, None, 0)
    assert got["reconstruction"]["shards"] == 4 and got["node_classification"]["sampled"]
    assert _comparable(got) == _comparable(want)
    calls = [c for c in read_calls(rec) if c.stage == "evaluate"]
    shard = max(max(p.indptr.nbytes + p.indices.nbytes for p in parts), max(p.rows for p in parts) * X.shape[1] * 4)
    whole = min(g.indptr.nbytes + g.indices.nbytes, X.nbytes)
    assert 2 * shard < whole                       # the bound below does tell a shard from the whole
    assert {c.fn for c in calls} >= {"shard_eligible", "shard_adjacency", "shard_scores", "shard_counts",
                                     "shard_rows", "labelled_rows_stage"}, largest_by_stage(calls)
    assert oversized(calls, 2 * shard) == [], largest_by_stage(calls)
