"""Sharded walks (workers/graph/sharded_walks.py, tasks/graph.py `walk_sharded`): every shard's walk
matrix is bit-identical to the replicated engine's (`random_walks` from arange(lo, hi) on the whole
CSR) for DeepWalk (uniform, weighted, directed with dead ends) and node2vec, for 1, 2, 3, 5 shards
and an empty shard, in-process and through Ray actors; node2vec's second-step law (chi-square) with
every adjacency test answered by another shard."""
import numpy as np
import pytest
from scipy import stats
from test_walks import PVAL, assert_valid, karate, node2vec_law, star_bridge, tiny

from embedlake.config import WalkConfig
from embedlake.workers.graph.csr import CSRGraph, build_csr
from embedlake.workers.graph.shards import shard_bounds, split_csr
from embedlake.workers.graph.sharded_walks import sharded_random_walks
from embedlake.workers.graph.walks import random_walks


def dead_ends(weighted: bool):
    """40 nodes, directed, random arcs; nodes 30..37 have no out-arcs (dead ends), 38 and 39 no arcs at all."""
    rng = np.random.default_rng(11)
    src = rng.integers(0, 30, 200)
    dst = rng.integers(0, 38, 200)
    w = rng.uniform(0.2, 3.0, 200) if weighted else None
    return build_csr(src, dst, 40, weights=w, directed=True)


def undirected(weighted: bool):
    rng = np.random.default_rng(4)
    src, dst = rng.integers(0, 50, 160), rng.integers(0, 50, 160)
    return build_csr(src, dst, 50, weights=rng.uniform(0.1, 3.0, 160) if weighted else None)


def replicated_by_shard(g, bounds, wpn, length, seed, **kw):
    """The replicated engine's walks from every shard's start nodes (contract of the sharded engine)."""
    return [random_walks(g.indptr, g.indices, g.weights, np.arange(lo, hi), wpn, length, seed,
                         symmetric=not g.directed, **kw) for lo, hi in bounds]


def assert_same_walks(g, shards_out, bounds, wpn, length, seed, **kw):
    assert len(shards_out) == len(bounds)
    for (lo, hi), got, exp in zip(bounds, shards_out, replicated_by_shard(g, bounds, wpn, length, seed, **kw)):
        assert got.dtype == np.int32 and got.shape == (wpn * (hi - lo), length)
        np.testing.assert_array_equal(got, exp)
    assert_valid(g, np.concatenate(shards_out))


GRAPHS = {"undirected": undirected, "dead_ends": dead_ends}
WALKS = [("deepwalk", 1.0, 1.0), ("node2vec", 0.25, 4.0), ("node2vec", 4.0, 0.25), ("node2vec", 0.5, 2.0)]


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("mode,p,q", WALKS)
def test_in_process_bit_identical_to_replicated(graph, weighted, mode, p, q):
    g = GRAPHS[graph](weighted)
    for S in (1, 2, 3, 5):
        bounds = shard_bounds(g.num_nodes, S)
        out, info = sharded_random_walks(split_csr(g, bounds), 3, 12, 7, p=p, q=q, mode=mode)
        assert_same_walks(g, out, bounds, 3, 12, 7, p=p, q=q, mode=mode)
        assert info["walk_steps"] == sum(int((w >= 0).sum()) for w in out)
        if S > 1:
            assert info["walker_moves"] > 0 and info["walk_rounds"] > 1
        if S > 1 and mode == "node2vec":
            assert info["adjacency_queries"] > 0          # some t's lists were on another shard


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("mode,p,q", WALKS[:2])
def test_messages_in_any_order_give_the_same_walks(graph, mode, p, q):
    """Shard owners play the rounds among themselves (ShardWalker.begin / deliver): Ray orders the
    messages of one sender to one owner, not those of different senders, so a round's walkers,
    queries and answers come in any order, and some before the receiver has begun. Messages
    delivered in random orders (an empty shard among them): the same walks, rounds and moves."""
    g = GRAPHS[graph](True)
    for S in (8, 5, 3):
        bounds = shard_bounds(g.num_nodes, S) if S < 8 else [(0, 0)] + shard_bounds(g.num_nodes, 7)
        ref, ref_info = sharded_random_walks(split_csr(g, bounds), 3, 12, 7, p=p, q=q, mode=mode)
        assert_same_walks(g, ref, bounds, 3, 12, 7, p=p, q=q, mode=mode)
        for seed in range(3):
            out, info = sharded_random_walks(split_csr(g, bounds), 3, 12, 7, p=p, q=q, mode=mode,
                                             shuffle=np.random.default_rng(seed))
            for got, exp in zip(out, ref):
                np.testing.assert_array_equal(got, exp)
            assert {k: v for k, v in info.items() if k != "advance_critical_s"} == \
                {k: v for k, v in ref_info.items() if k != "advance_critical_s"}


def test_messages_before_begin_wait_in_the_mailbox():
    """A shard owner may get another's round-1 walkers and node2vec queries before its own `begin`
    (different callers): they wait, the queries are answered at `begin`, and the walks are the same."""
    from embedlake.workers.graph.sharded_walks import (WALKERS, ShardWalker, WalkParams, collect_walks,
                                                       unpack_message)
    g = GRAPHS["undirected"](False)
    bounds = shard_bounds(g.num_nodes, 3)
    params = WalkParams(2, 10, 3, 0.5, 2.0, "node2vec")
    owners = [ShardWalker(s.as_tuple(), i, bounds, params) for i, s in enumerate(split_csr(g, bounds))]
    queue: list = []

    def mail(shard, message):
        queue.append((shard, message))

    owners[0].begin(mail)
    heads = [unpack_message(message) for _, message in queue]
    assert all(h[0] == WALKERS and h[2] == 0 and len(h[4]) == 4 for h in heads)   # walkers, two segment arrays, queries
    for shard, message in list(queue):                                # delivered before shards 1 and 2 begin
        owners[shard].deliver(message)
    queue.clear()
    for o in owners[1:]:
        o.begin(mail)
    while queue:
        shard, message = queue.pop(0)
        owners[shard].deliver(message)
    stats = [o.finished() for o in owners]
    assert len({len(s) for s in stats}) == 1 and sum(int(s[:, 1].sum()) for s in stats) > 0

    def call(shard, method, *args, returns):
        res = getattr(owners[shard], method)(*args)
        return res if isinstance(res, list) else [res]

    walks, _ = collect_walks(call, list, 3, {"written": sum(int(s[:, 2].sum()) for s in stats)})
    assert_same_walks(g, walks, bounds, 2, 10, 3, p=0.5, q=2.0, mode="node2vec")


def test_messages_round_trip_as_one_buffer():
    """pack_message / unpack_message: head fields and arrays of any dtype and size come back equal and
    aligned for numba, from the buffer and from its bytes (what a connection delivers)."""
    from embedlake.workers.graph.sharded_walks import QUERY, WALKER, pack_message, unpack_message
    rng = np.random.default_rng(3)
    walkers = np.zeros(9001, WALKER)
    walkers["g"], walkers["state"] = rng.integers(0, 2**40, 9001), rng.integers(0, 2**63, 9001, dtype=np.uint64)
    queries = np.zeros(5, QUERY)
    queries["t"] = np.arange(5)
    wire = rng.integers(0, 2**32, (7, 3), dtype=np.uint32)
    arrays = [wire, np.arange(3, dtype=np.uint32), np.arange(5, dtype=np.int32), walkers, np.zeros(0, np.uint8),
              queries, np.array([1, 0, 1], np.uint8)]
    message = pack_message(1, 17, 6, 123456789012, *arrays)
    for form in (message, message.tobytes()):
        kind, rnd, sender, in_flight, got = unpack_message(form)
        assert (kind, rnd, sender, in_flight) == (1, 17, 6, 123456789012) and len(got) == len(arrays)
        for a, b in zip(arrays, got):
            assert b.dtype == np.uint8 and b.ctypes.data % 8 == 0
            np.testing.assert_array_equal(b.view(a.dtype).reshape(a.shape), a)
    assert unpack_message(pack_message(0, 1, 2, 0))[4] == []


@pytest.mark.parametrize("mode", ["deepwalk", "node2vec"])
@pytest.mark.parametrize("weighted", [False, True])
def test_empty_shards_and_isolated_start_nodes(mode, weighted):
    """8 nodes over 9 shards (shard 0 empty, one node per other shard): node 7 is isolated and
    gives length-1 walks; a 3-node graph over 5 shards has two empty shards."""
    g = tiny() if weighted else unweighted(tiny())
    bounds = shard_bounds(8, 9)
    assert bounds[0] == (0, 0)
    out, _ = sharded_random_walks(split_csr(g, bounds), 2, 6, 42, p=0.5, q=2.0, mode=mode)
    assert out[0].shape == (0, 6)
    assert_same_walks(g, out, bounds, 2, 6, 42, p=0.5, q=2.0, mode=mode)
    np.testing.assert_array_equal(out[8], [[7, -1, -1, -1, -1, -1]] * 2)
    small = build_csr(np.array([0, 1]), np.array([1, 2]), 3)
    bounds = shard_bounds(3, 5)
    assert sum(hi == lo for lo, hi in bounds) == 2
    out, _ = sharded_random_walks(split_csr(small, bounds), 4, 5, 3, p=0.5, q=2.0, mode=mode)
    assert_same_walks(small, out, bounds, 4, 5, 3, p=0.5, q=2.0, mode=mode)


def unweighted(g):
    return CSRGraph(g.indptr, g.indices, None, g.directed)


def test_node2vec_karate_bit_identical():
    g = karate(weighted=True)
    for S in (2, 5):
        bounds = shard_bounds(g.num_nodes, S)
        out, info = sharded_random_walks(split_csr(g, bounds), 5, 20, 7, p=0.25, q=4.0, mode="node2vec", threads=2)
        assert_same_walks(g, out, bounds, 5, 20, 7, p=0.25, q=4.0, mode="node2vec")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("p,q", [(0.25, 4.0), (4.0, 0.25), (1.0, 4.0), (0.25, 0.25)])
def test_node2vec_second_step_law_with_remote_adjacency(p, q, weighted):
    """star_bridge over 7 shards (one node each): every adjacency test of t = 0 is a query to shard 0."""
    g = star_bridge() if weighted else unweighted(star_bridge())
    w = g.weights if weighted else None
    bounds = shard_bounds(7, 7)
    out, info = sharded_random_walks(split_csr(g, bounds), 60_000, 3, 11, p=p, q=q, mode="node2vec")
    walks = out[0]                                   # the walks from node 0
    sel = walks[walks[:, 1] == 1, 2]
    nbr, law = node2vec_law(g, w, 0, 1, p, q)
    assert sel.size > 8000
    counts = np.array([(sel == x).sum() for x in nbr])
    assert counts.sum() == sel.size
    assert stats.chisquare(counts, law * sel.size).pvalue > PVAL, (p, q, weighted, counts, law * sel.size)
    if q != 1.0:
        assert info["adjacency_queries"] > 0


@pytest.mark.parametrize("p,q", [(0.25, 4.0), (4.0, 0.25)])
def test_node2vec_directed_pooled_chi_square_sharded(p, q):
    """Every (t, v) pair of a random weighted directed graph over 4 shards (pooled chi-square)."""
    rng = np.random.default_rng(5)
    n = 15
    src, dst = rng.integers(0, n, 90), rng.integers(0, n, 90)
    g = build_csr(src, dst, n, weights=rng.uniform(0.2, 3.0, 90), directed=True)
    bounds = shard_bounds(n, 4)
    out, _ = sharded_random_walks(split_csr(g, bounds), 6000, 3, 3, p=p, q=q, mode="node2vec")
    walks = np.concatenate(out)
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
        exp = law * sel.size
        stat += float(((counts - exp) ** 2 / exp).sum())
        dof += nbr.size - 1
    assert dof > 30
    assert stats.chi2.sf(stat, dof) > PVAL, (stat, dof)


# ---------------------------------------------------------------------------------------------
# through Ray: one actor per shard
# ---------------------------------------------------------------------------------------------
def sharded_handle(ray, g, S):
    """A GraphHandle of S shards in the object store (what sharded ingest hands the walk stage)."""
    from embedlake.tasks.graph import GraphHandle, ShardRef
    bounds = shard_bounds(g.num_nodes, S)
    ids = np.arange(g.num_nodes, dtype=np.int64)
    shards = [ShardRef(sh.lo, sh.hi, sh.num_arcs, ray.put(sh.as_tuple()), ray.put(ids[sh.lo:sh.hi]))
              for sh in split_csr(g, bounds)]
    meta = {"nodes": g.num_nodes, "arcs": g.num_arcs, "version": "test", "stats": {"weighted": g.weights is not None}}
    whole = (g.indptr, g.indices, g.weights, g.directed)
    return GraphHandle(meta, ray.put(whole) if S == 1 else None, ray.put(ids), None, shards if S > 1 else [])


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("graph,weighted,method,p,q", [("dead_ends", True, "deepwalk", 1.0, 1.0),
                                                        ("undirected", True, "node2vec", 0.25, 4.0)])
def test_ray_actors_bit_identical(ray_session, graph, weighted, method, p, q):
    from embedlake.tasks.graph import walk_sharded
    ray = ray_session
    g = GRAPHS[graph](weighted)
    cfg = WalkConfig(walks_per_node=2, length=10, seed=5, p=p, q=q)
    for S in ((1, 2, 3, 5) if method == "deepwalk" else (3,)):
        res = walk_sharded.fn(sharded_handle(ray, g, S), cfg, method)
        bounds = shard_bounds(g.num_nodes, S)
        assert len(res.ref) == S and res.info["walk_shards"] == S
        out = ray.get(res.ref)
        assert_same_walks(g, out, bounds, 2, 10, 5, p=p, q=q, mode=method)
        assert res.info["walk_steps"] == sum(int((w >= 0).sum()) for w in out)


@pytest.mark.parametrize("mode,p,q", [("deepwalk", 1.0, 1.0), ("node2vec", 0.5, 2.0)])
def test_walker_that_fills_its_room_goes_on_next_round(monkeypatch, mode, p, q):
    """A walker of another shard writes at most SEGMENT_ROOM nodes per round on a shard; with a room
    of 2 on two dense halves, walkers stay longer than that and must go on in later rounds."""
    from embedlake.workers.graph import sharded_walks
    rng = np.random.default_rng(8)
    src, dst = rng.integers(0, 20, 200), rng.integers(0, 20, 200)
    halves = (src < 10) == (dst < 10)
    keep = halves | (rng.random(200) < 0.1)           # few arcs between the halves
    g = build_csr(src[keep], dst[keep], 20)
    bounds = shard_bounds(20, 2)
    big, big_info = sharded_random_walks(split_csr(g, bounds), 3, 30, 2, p=p, q=q, mode=mode)
    monkeypatch.setattr(sharded_walks, "SEGMENT_ROOM", 2)
    small, small_info = sharded_random_walks(split_csr(g, bounds), 3, 30, 2, p=p, q=q, mode=mode)
    assert_same_walks(g, small, bounds, 3, 30, 2, p=p, q=q, mode=mode)
    assert small_info["walk_rounds"] > big_info["walk_rounds"]
    assert small_info["walker_moves"] > big_info["walker_moves"]     # moves to itself count as moves


# A shard owner killed mid-walk: its own Ray in a subprocess, so the owners inherit EMBEDLAKE_FAULT.
KILLED_OWNER_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[2])
import numpy as np
from embedlake.config import WalkConfig
from embedlake.tasks.graph import walk_sharded
from embedlake.tasks.runtime import ensure_ray
from test_walks_sharded import GRAPHS, sharded_handle
ray = ensure_ray(num_cpus=2)
g = GRAPHS["undirected"](True)
res = walk_sharded.fn(sharded_handle(ray, g, 3), WalkConfig(walks_per_node=2, length=10, seed=5, p=0.5, q=2.0),
                      "node2vec", max_retries=1)
np.save(sys.argv[1], np.concatenate(ray.get(res.ref)))
"""


def test_owner_killed_mid_walk_walks_again_to_identical_walks(tmp_path):
    """The first shard owner to reach round 3 is SIGKILLed; the stage walks again from the start and
    returns exactly the walks of a run without the fault."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from embedlake.workers.run.faults import FAULT, kill_worker_once
    marker, out = tmp_path / "owner-kill.marker", tmp_path / "walks.npy"
    env = {**os.environ, FAULT: kill_worker_once("walk_sharded_round:3", marker), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", KILLED_OWNER_SCRIPT, str(out), str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [line.split()[0] for line in marker.read_text().splitlines()]
    # one owner died; the second attempt's 3 owners (and maybe first-attempt owners still running) went on
    assert events[0] == "killed" and set(events[1:]) == {"ran"} and len(events) - 1 >= 3, events
    g = GRAPHS["undirected"](True)
    bounds = shard_bounds(g.num_nodes, 3)
    expected = np.concatenate(replicated_by_shard(g, bounds, 2, 10, 5, p=0.5, q=2.0, mode="node2vec"))
    np.testing.assert_array_equal(np.load(out), expected)


@pytest.mark.usefixtures("ray_session")
def test_checkpointed_shards_are_reused_by_a_rerun(ray_session, tmp_path):
    """With the run's `walk` stage, every shard owner writes its walks as part <shard>; a re-run of
    the same run id finds all of them and loads them instead of walking (identical walks)."""
    from embedlake.lake import Lake
    from embedlake.tasks.graph import walk_sharded, walk_spec
    from embedlake.tasks.run import Run
    ray = ray_session
    g = GRAPHS["dead_ends"](False)
    handle = sharded_handle(ray, g, 2)
    cfg = WalkConfig(walks_per_node=2, length=8, seed=3)
    spec = walk_spec(handle, cfg, "deepwalk", handle.shard_bounds)
    first = walk_sharded.fn(handle, cfg, "deepwalk", stage=Run(Lake(str(tmp_path)), "ds", "deepwalk", "r1").stage(
        "walk", spec))
    assert first.info["walk_shards_reused"] == 0
    again = walk_sharded.fn(handle, cfg, "deepwalk", stage=Run(Lake(str(tmp_path)), "ds", "deepwalk", "r1").stage(
        "walk", spec))
    assert again.info["walk_shards_reused"] == 2
    for a, b in zip(ray.get(first.ref), ray.get(again.ref)):
        np.testing.assert_array_equal(a, b)
    assert_same_walks(g, ray.get(again.ref), handle.shard_bounds, 2, 8, 3, mode="deepwalk")


@pytest.mark.usefixtures("ray_session")
def test_kept_owners_walk_again_with_other_settings(ray_session):
    """Owners from start_shard_owners walk twice (DeepWalk, then node2vec with other lengths): the
    second walk needs no new process and both match the replicated engine."""
    from embedlake.tasks.graph import start_shard_owners, walk_sharded
    ray = ray_session
    g = GRAPHS["undirected"](True)
    handle = sharded_handle(ray, g, 3)
    first_cfg = WalkConfig(walks_per_node=2, length=6, seed=1)
    owners = start_shard_owners(handle, first_cfg, "deepwalk")
    try:
        for cfg, method in ((first_cfg, "deepwalk"), (WalkConfig(walks_per_node=3, length=9, seed=4, p=0.5, q=2.0),
                                                      "node2vec")):
            res = walk_sharded.fn(handle, cfg, method, owners=owners)
            assert_same_walks(g, ray.get(res.ref), handle.shard_bounds, cfg.walks_per_node, cfg.length, cfg.seed,
                              p=cfg.p, q=cfg.q, mode=method)
    finally:
        for o in owners:
            ray.kill(o)


@pytest.mark.parametrize("cpus,shards", [([2], 4), ([2], 2), ([1, 1, 1], 4), ([1, 1, 1, 1], 4), ([4, 4], 3),
                                         ([16], 4), ([2], 5), ([0, 1, 1, 1, 1], 4)])
def test_shard_owners_all_fit_the_alive_nodes_at_once(cpus, shards):
    """All S owners must be placed together (one waiting for room would wait for ever): after a node
    of a 4 x 1-CPU cluster is lost, 4 owners of 3/4 CPU each would not fit 3 nodes."""
    from embedlake.tasks.graph import owner_share
    c = owner_share(cpus, shards)
    assert sum(int(x // c) for x in cpus) >= shards
    if c >= 1:                  # the largest whole share that fits
        assert sum(int(x // (c + 1)) for x in cpus) < shards
    else:                       # 1/k with the smallest k that fits
        k = round(1 / (c + 0.0001))
        assert sum(int(x * (k - 1)) for x in cpus) < shards


def cpus_all_free(ray, wait_s: float = 60.0) -> bool:
    """Every CPU of the cluster free, within wait_s (actors killed by earlier tests free theirs
    asynchronously)."""
    import time
    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0) != ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.usefixtures("ray_session")
def test_owners_started_before_the_graph_walk_it_bit_identically(ray_session):
    """ShardOwners started before the graph exists (as the flow starts them while ingest runs) hold
    no CPUs, take their shards on the first walk and only begin a new walk on later ones (streamed
    rounds: walk_offset; another mode): every walk equals the replicated engine's. A graph of
    another shard count closes them."""
    from embedlake.tasks.graph import ShardOwners, walk_sharded
    ray = ray_session
    g = GRAPHS["undirected"](True)
    owners = ShardOwners.start(3, "deepwalk")
    try:
        ray.get([o.__ray_ready__.remote() for o in owners.actors])
        assert cpus_all_free(ray)           # the owners hold none
        handle = owners.attach(sharded_handle(ray, g, 3))
        assert handle.owners is owners
        actors = list(owners.actors)
        walks = [(WalkConfig(walks_per_node=2, length=7, seed=2), "deepwalk", 0),
                 (WalkConfig(walks_per_node=1, length=7, seed=2), "deepwalk", 2),
                 (WalkConfig(walks_per_node=2, length=9, seed=4, p=0.5, q=2.0), "node2vec", 0)]
        for cfg, method, offset in walks:
            res = walk_sharded.fn(handle, cfg, method, walk_offset=offset)
            assert res.info["owners"] == "started during ingest" and owners.actors == actors
            expected = replicated_by_shard(g, handle.shard_bounds, cfg.walks_per_node, cfg.length, cfg.seed,
                                           p=cfg.p, q=cfg.q, mode=method, walk_offset=offset)
            for got, exp in zip(ray.get(res.ref), expected):
                np.testing.assert_array_equal(got, exp)
        assert owners.holds is not None
    finally:
        owners.close()
    assert not owners.alive and handle.owners is owners      # closed: walk_sharded starts its own owners
    res = walk_sharded.fn(handle, WalkConfig(walks_per_node=1, length=5, seed=1), "deepwalk")
    assert res.info["owners"] == "started here"
    other = ShardOwners.start(2, "deepwalk")
    assert other.attach(sharded_handle(ray, g, 3)).owners is None and not other.alive
