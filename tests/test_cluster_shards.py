"""Issue 17's test bed: no task of a sharded engine takes or returns much more than one shard.

Two parts.
- The object-size recorder itself (tasks/object_sizes.py), on the session's local Ray: every task made
  by tasks/remote.py:remote records the bytes of its resolved arguments and of its results, exactly.
- A 4-node `ray.cluster_utils.Cluster` (a 0-CPU head plus 4 nodes of 1 CPU and a 100 MB object store
  each), in a subprocess so the session's Ray is untouched, runs the pipeline on a planted graph
  with the recorder on. With graph.shards=4, no argument or result of a task of the ingest, walk,
  train, fastrp or publish stage may exceed 1.5x one shard's bytes (computed from the data: the
  largest shard's CSR rows, walks or table rows, whichever that stage handles). The graph is sized
  so that every whole object (the full CSR, all walks, the full table) is over 2.5x one shard, so a
  task holding one is caught (`test_recorder_sees_the_whole_csr_of_the_one_shard_engine` shows it
  on the one-shard engine, where the whole CSR IS one walk argument). Then a node is removed while
  the walks run: the run gives the fault-free output or fails cleanly (nothing committed).
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ---- the recorder, on the session's Ray ------------------------------------------------------------
def _test_worker_code():
    """A worker function with two results and an actor class, made here so that Ray pickles them by
    value (the workers cannot import this test module)."""
    def _pair(a, b):
        return a[::2].copy(), {"n": int(a.size), "b": b}

    class _Counter:
        def __init__(self, start):
            self.total = int(start.sum())

        def add(self, x):
            self.total += int(x.sum())
            return np.zeros(3, dtype=np.int64), np.zeros(2, dtype=np.int8)

        def _hidden(self):
            return self.total
    return _pair, _Counter


def test_object_bytes_counts_arrays_containers_and_pickles():
    import ray

    from embedlake.tasks.object_sizes import object_bytes
    from embedlake.workers.graph.shards import CSRShard
    a = np.zeros(1000, dtype=np.float32)
    assert object_bytes(a) == 4000
    assert object_bytes((a, a[:10], None, True)) == 4040 + object_bytes(True)
    assert object_bytes({"k": a}) == 4000 + object_bytes("k")
    assert object_bytes(None) == 0 and object_bytes(b"xyz") == 3
    # a dataclass holding arrays: pickled with the arrays out of band, so at least their bytes, plus a header
    shard = CSRShard(0, 2, 2, np.array([0, 1, 2], dtype=np.int64), np.array([1, 0], dtype=np.int32), None)
    assert shard.nbytes <= object_bytes(shard) < shard.nbytes + 1000
    big = CSRShard(0, 1, 1, np.zeros(2, dtype=np.int64), np.zeros(10**6, dtype=np.int32), None)
    assert big.nbytes <= object_bytes(big) < big.nbytes + 1000
    ref_free = object_bytes([ray.ObjectRef.nil()])          # a nested ref is not resolved: counts 0
    assert ref_free == 0


@pytest.mark.usefixtures("ray_session")
def test_recorder_records_every_task_and_actor_call(tmp_path):
    import ray

    from embedlake.tasks.object_sizes import largest_by_stage, oversized, read_calls, recording
    from embedlake.tasks.remote import remote
    _pair, _Counter = _test_worker_code()
    x = np.arange(10_000, dtype=np.int64)
    with recording(tmp_path / "rec") as rec:
        ref = ray.put(x)
        fn = remote(_pair, "walk", num_returns=2, num_cpus=1)
        half, info = fn.remote(ref, b=np.ones(5, dtype=np.float64))
        assert np.array_equal(ray.get(half), x[::2]) and ray.get(info)["n"] == 10_000
        counter = remote(_Counter, "train", num_cpus=0).remote(np.ones(7, dtype=np.int32))
        a3, b2 = counter.add.options(num_returns=2).remote(ref)
        assert ray.get(a3).shape == (3,) and ray.get(b2).shape == (2,)
        ray.get(counter._hidden.remote())
    calls = read_calls(rec)
    by_fn = {c.fn: c for c in calls}
    assert sorted(by_fn) == ["_Counter.__init__", "_Counter.add", "_pair"], calls    # private methods: not wrapped
    assert by_fn["_Counter.__init__"].args == (28,) and by_fn["_Counter.__init__"].results == (0,)
    pair = by_fn["_pair"]
    assert pair.stage == "walk" and pair.args == (80_000,) and pair.kwargs == {"b": 40}
    assert pair.results[0] == 40_000 and pair.results[1] < 200          # two results, each sized
    add = by_fn["_Counter.add"]
    assert add.stage == "train" and add.args == (80_000,) and add.results == (24, 2)   # per call returns
    assert add.node and pair.node and pair.pid > 0
    table = largest_by_stage(calls)
    assert table["walk"]["arg"] == 80_000 and table["walk"]["result_fn"] == "_pair"
    assert sorted(oversized(calls, 50_000)) == ["train/_Counter.add: argument of 80,000 bytes > 50,000",
                                                "walk/_pair: argument of 80,000 bytes > 50,000"]
    assert oversized(calls, 50_000, stages={"walk"}) == ["walk/_pair: argument of 80,000 bytes > 50,000"]


def test_recorder_off_never_wraps(monkeypatch):
    """Without EMBEDLAKE_RECORD_OBJECTS, remote() never calls into the recorder (zero overhead)."""
    import embedlake.tasks.remote as tr
    from embedlake.tasks.object_sizes import RECORD_ENV

    def boom(*a, **k):
        raise AssertionError("the recorder was called while off")
    monkeypatch.delenv(RECORD_ENV, raising=False)
    monkeypatch.setattr(tr, "recorded", boom)
    assert tr.remote(_test_worker_code()[0], "walk", num_returns=2) is not None


def test_shard_rows_read_tells_local_from_moved_bytes():
    """shard_rows_read: a shard is known by its CSR tuple's size (shard_stage's first result); a
    task reading it on the node that built it reads locally, elsewhere it pulls it; shards of equal
    size are ambiguous; calls of other stages and other arguments are not counted."""
    from embedlake.tasks.object_sizes import Call, shard_rows_read

    def call(stage, fn, args=(), results=(), node="a"):
        return Call(stage, fn, tuple(args), {}, tuple(results), node, 1, 0.1)
    calls = [call("ingest", "shard_stage", results=(1000, 80, 50), node="a"),
             call("ingest", "shard_stage", results=(2000, 80, 50), node="b"),
             call("ingest", "shard_stage", results=(3000, 80, 50), node="a"),
             call("ingest", "shard_stage", results=(3000, 80, 50), node="c"),
             call("fastrp", "shard_setup", args=(1000, 8), node="a"),
             call("fastrp", "block_step", args=(2000, 400), node="a"),
             call("fastrp", "block_step", args=(2000, 400), node="b"),
             call("fastrp", "block_step", args=(3000, 400), node="a"),
             call("fastrp", "block_step", args=(400, 2000), node="a"),       # the shard is not its first argument
             call("walk", "walk_stage", args=(1000,), node="c")]
    assert shard_rows_read(calls, "fastrp") == {"local": 3000, "moved": 2000, "ambiguous": 3000, "calls": 4,
                                                "moved_calls": 1, "shards": 3}


# ---- the 4-node cluster, in a subprocess -----------------------------------------------------------
NODES, NODE_CPUS, NODE_STORE_MB, SHARDS, LIMIT = 4, 1, 100, 4, 1.5
GRAPH = {"nodes": 20_000, "communities": 10, "avg_degree": 10.0, "mixing": 0.3, "seed": 11}
WALKS_PER_NODE, WALK_LENGTH, DIM = 2, 10, 16
BASE_CFG = ["lake.dataset=bed", "walk.walks_per_node=2", "walk.length=10", "walk.seed=3", "train.dim=16",
            "train.window=2", "train.threads=1", "train.rounds=1", "fastrp.dim=16", "eval.repeats=1", "eval.reconstruction=false",
            "eval.align_to_previous=false", "eval.artifacts=false",
            # today's partitioned trainer asks cluster CPUs / train.workers per block task (4 here), more than one
            # node has: pin it to what a node has
            f"ray.stages={{train: {{num_cpus: {NODE_CPUS}}}}}"]
# run name -> (overrides, record object sizes, remove the node of a walk task once it runs)
RUNS = {
    "one": (["method=deepwalk", "graph.shards=1"], True, False),
    "four": (["method=deepwalk", f"graph.shards={SHARDS}", "train.workers=2"], True, False),
    "fastrp4": (["method=fastrp", f"graph.shards={SHARDS}"], True, False),
    "noded": (["method=deepwalk", f"graph.shards={SHARDS}", "train.workers=2"], False, True),
}

# The GCS marks a removed node dead after 3 failed health checks 1 s apart (Ray's default: 5, 3 s apart:
# 15 s of every node-loss run spent waiting). A removed raylet refuses the check at once; a slow but
# alive one still has the default 10 s per check to answer, so a loaded machine is not taken for a loss.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}

CLUSTER_SCRIPT = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[3])
from test_cluster_shards import run_on_cluster
print("RESULT " + json.dumps(run_on_cluster(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
"""


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def remove_node_when_walking(cluster, workers: list, out: dict, timeout_s: float = 300) -> None:
    """Remove (ungracefully: the raylet and its workers die) the first node whose worker runs a walk
    task or actor (a process titled `ray::...walk...`). The worker is frozen (SIGSTOP) the moment it
    is seen, so it cannot finish its walks before its node is gone, however short they are."""
    import psutil
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not out.get("done"):
        for node in list(workers):
            try:
                kids = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
            except psutil.Error:
                continue
            hit = [(k, _title(k.pid)) for k in kids]
            hit = [(k, t) for k, t in hit if t.startswith("ray::") and "walk" in t.lower()]
            if hit:
                try:
                    hit[0][0].suspend()
                except psutil.Error:
                    continue                  # it finished in between: wait for the next one
                cluster.remove_node(node, allow_graceful=False)
                try:                          # a stopped worker cannot see its raylet go: it dies as its node would
                    hit[0][0].kill()
                except psutil.Error:
                    pass
                out["removed"] = hit[0][1]
                return
        time.sleep(0.005)


def run_on_cluster(workdir: str, runs: dict) -> dict:
    """In a fresh process: a 0-CPU head and NODES nodes of NODE_CPUS CPUs and NODE_STORE_MB of object store
    each; every run of `runs` on it in turn (its lake and recorder folder under workdir)."""
    import ray
    from ray.cluster_utils import Cluster

    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.tasks.object_sizes import recording
    mb = 2**20
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": NODE_STORE_MB * mb,
                                                            "_system_config": FAST_NODE_DEATH})
    results = {}
    try:
        workers = [cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=NODE_STORE_MB * mb, memory=1024 * mb)
                   for _ in range(NODES)]
        cluster.wait_for_nodes()
        for name, (overrides, record, remove) in runs.items():
            if remove:                     # before a node goes: the sharded engines on all nodes
                ray.init(address=cluster.address) if not ray.is_initialized() else None
                results["engines"] = run_engines(workdir)
            cfg = load_config(None, [f"ray.address={cluster.address}", f"lake.uri={workdir}/lake-{name}",
                                     f"lake.run_id={name}", f"input.edges={workdir}/edges", *BASE_CFG, *overrides])
            out = results[name] = {}
            killer = threading.Thread(target=remove_node_when_walking, args=(cluster, workers, out), daemon=True)
            if remove:
                killer.start()
            try:
                if record:
                    with recording(f"{workdir}/objects-{name}"):
                        s = embed_graph(cfg)
                else:
                    s = embed_graph(cfg)
                out.update(status="completed", graph=s["graph"], stages=s["stages"])
            except Exception as e:
                out.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
            out["done"] = True
            if remove:
                killer.join(5)
            out["alive_nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()
        cluster.shutdown()
    return results

def sharded_handle(edges_dir: str):
    """A GraphHandle of SHARDS shards of the edge files, built without the sharded ingest (common to
    every engine test: split the one-task CSR, one object per shard's rows and per shard's ids)."""
    import ray

    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    from embedlake.workers.graph.shards import shard_bounds, split_csr
    g = ingest_graph(edges_dir, EdgeSpec())
    n = g.csr.num_nodes
    shards = [ShardRef(s.lo, s.hi, s.num_arcs, ray.put(s.as_tuple()), ray.put(g.node_ids[s.lo:s.hi]))
              for s in split_csr(g.csr, shard_bounds(n, SHARDS))]
    meta = {"nodes": n, "arcs": g.csr.num_arcs, "version": "bed-engines", "stats": {"weighted": False}}
    return GraphHandle(meta, None, None, None, shards), g


def shard_walks_put(g, handle, walk_cfg) -> list:
    """Each shard's walks as the sharded walk engine lays them out (for training while that engine
    is not on main): random_walks from starts arange(lo, hi), put by the driver."""
    import ray

    from embedlake.workers.graph.walks import random_walks
    return [ray.put(random_walks(g.csr.indptr, g.csr.indices, None, np.arange(s.lo, s.hi, dtype=np.int64),
                                 walk_cfg.walks_per_node, walk_cfg.length, walk_cfg.seed, symmetric=True))
            for s in handle.shards]


# the sharded engine of each stage: (module under embedlake.tasks, function)
ENGINES = {"walk": ("graph", "walk_sharded"), "train": ("train", "train_sharded"),
           "fastrp": ("fastrp", "fastrp_sharded"), "publish": ("graph", "publish_shards")}


def run_engines(workdir: str) -> dict:
    """The sharded engines called directly (no flow, no sharded ingest needed) on a hand-built
    sharded handle, with the recorder on: which ran, and their errors."""
    import importlib

    from embedlake.config import FastRPConfig, TrainConfig, WalkConfig
    from embedlake.lake import Lake
    from embedlake.tasks.object_sizes import recording
    fns = {k: getattr(importlib.import_module(f"embedlake.tasks.{m}"), f) for k, (m, f) in ENGINES.items()}
    out = {"ran": [], "errors": {}}

    def step(name, call):
        out["ran"].append(name)
        try:
            return call(fns[name].fn)
        except Exception as e:
            out["errors"][name] = f"{type(e).__name__}: {e}"[:1500]
            return None
    handle, g = sharded_handle(f"{workdir}/edges")
    walk_cfg = WalkConfig(walks_per_node=WALKS_PER_NODE, length=WALK_LENGTH, seed=3)
    train_cfg = TrainConfig(dim=DIM, window=2, threads=1, rounds=1, workers=2)
    with recording(f"{workdir}/objects-engines"):
        walks = step("walk", lambda f: f(handle, walk_cfg, "deepwalk").ref) or shard_walks_put(g, handle, walk_cfg)
        tables = step("train", lambda f: f(handle, walks, walk_cfg, train_cfg).ref)
        frp = step("fastrp", lambda f: f(handle, FastRPConfig(dim=DIM))[0])
        step("publish", lambda f: f(Lake(f"{workdir}/lake-engines"), "bed", "engines", "e1", handle, tables or frp))
    return out


def write_edge_files(folder: Path, parts: int = 4) -> None:
    """The planted graph GRAPH as `parts` TSV edge files (ingest reads the folder)."""
    from embedlake.workers.graph.synthetic import planted_communities
    s, d, _ = planted_communities(**GRAPH)
    folder.mkdir(parents=True)
    for i, idx in enumerate(np.array_split(np.arange(s.size), parts)):
        np.savetxt(folder / f"part-{i}.tsv", np.stack([s[idx], d[idx]], 1), fmt="%d", delimiter="\t")


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory, prefect_session):
    """Every run of RUNS on one 4-node cluster (one subprocess); the runs' results and their folder.
    The subprocess's flows report to the session's Prefect server (prefect_session, started once for
    the suite) instead of starting an ephemeral one of their own (~10 s)."""
    from prefect.settings import PREFECT_API_URL
    work = tmp_path_factory.mktemp("cluster")
    write_edge_files(work / "edges")
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "RAY_USAGE_STATS_ENABLED": "0",
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("EMBEDLAKE_RECORD_OBJECTS", None)
    try:
        out = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, str(work), json.dumps(RUNS), str(REPO / "tests")],
                             capture_output=True, text=True, env=env, timeout=900, cwd=str(work))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the cluster runs took over {e.timeout}s: {str(e.stderr)[-3000:]}")
    assert "RESULT " in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    print(json.dumps(res)[:4000])
    return work, res


def shard_bytes(work: Path) -> dict:
    """One shard's bytes of each kind, for the largest shard of the S = SHARDS node ranges, computed
    from the graph (read by today's one-task ingest) and the run settings; and the whole objects."""
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    from embedlake.workers.graph.shards import shard_bounds, split_csr
    g = ingest_graph(str(work / "edges"), EdgeSpec())
    shards = split_csr(g.csr, shard_bounds(g.csr.num_nodes, SHARDS))
    rows = max(s.rows for s in shards)
    return {"csr": max(s.nbytes for s in shards), "ids": rows * g.node_ids.itemsize,
            "walks": WALKS_PER_NODE * rows * WALK_LENGTH * 4, "table": rows * DIM * 4,
            "whole_csr": int(g.csr.indptr.nbytes + g.csr.indices.nbytes), "nodes": g.csr.num_nodes}


def prepared_share(calls) -> float:
    """One S-th of all the prepared walk streams of the train stage (the first result of each of its
    prep tasks: one walk shard's tokens bucketed by partition, a few bytes per token more than the
    walks). A task holding more than about that much holds more than one walk shard's stream."""
    preps = [c.results[0] for c in calls if c.stage == "train" and c.fn.startswith("prep") and c.results]
    return sum(preps) / SHARDS


def stage_limits(b: dict, calls=()) -> dict[str, float]:
    """LIMIT x one shard of what each stage handles."""
    unit = {"ingest": b["csr"] + b["ids"], "walk": max(b["csr"], b["walks"]),
            "train": max(b["walks"], b["table"], prepared_share(calls)),
            "fastrp": max(b["csr"], b["table"]), "publish": max(b["table"], b["ids"])}
    return {stage: LIMIT * u for stage, u in unit.items()}


def test_recorder_sees_the_whole_csr_of_the_one_shard_engine(cluster_runs):
    """graph.shards=1 (today's engines): every walk task takes the whole CSR as one argument, and the
    recorder says so, to the byte (plus the pickled `directed` flag)."""
    from embedlake.tasks.object_sizes import largest_by_stage, read_calls
    work, res = cluster_runs
    assert res["one"]["status"] == "completed", res["one"]
    b = shard_bytes(work)
    walk = largest_by_stage(read_calls(work / "objects-one"))["walk"]
    assert b["whole_csr"] <= walk["arg"] < b["whole_csr"] + 100, (walk, b)
    assert walk["arg"] > max(stage_limits(b).values()) * 1.5        # the graph is sized so that it shows


@pytest.mark.parametrize("stage, run", [("ingest", "four"), ("walk", "four"), ("train", "four"), ("publish", "four"),
                                        ("ingest", "fastrp4"), ("fastrp", "fastrp4"), ("publish", "fastrp4")])
def test_no_sharded_task_takes_or_returns_more_than_one_shard(cluster_runs, stage, run):
    from embedlake.tasks.object_sizes import largest_by_stage, oversized, read_calls
    work, res = cluster_runs
    assert res[run]["status"] == "completed", res[run]
    b = shard_bytes(work)
    # the whole CSR, all walks and the full table are each over every stage's limit: a task holding one is caught
    assert min(b["whole_csr"], b["walks"] * SHARDS * 0.9, b["table"] * SHARDS * 0.9) > max(stage_limits(b).values())
    calls = read_calls(work / f"objects-{run}")
    limits = stage_limits(b, calls)
    assert sum(1 for c in calls if c.stage == stage) >= 1, largest_by_stage(calls)
    assert oversized(calls, limits[stage], {stage}) == [], (limits[stage], largest_by_stage(calls)[stage])


def test_fastrp_tasks_read_their_shard_on_the_node_that_built_it(cluster_runs):
    """graph.shards=4, FastRP through the flow: every task that reads a shard's CSR rows (its setup,
    its chain of block steps) runs on the node where ingest built that shard
    (tasks/placement.shard_placements), so no shard's rows cross the network."""
    from embedlake.config import FastRPConfig
    from embedlake.tasks.object_sizes import read_calls, shard_rows_read
    work, res = cluster_runs
    assert res["fastrp4"]["status"] == "completed", res["fastrp4"]
    calls = read_calls(work / "objects-fastrp4")
    read = shard_rows_read(calls, "fastrp")
    iterations = len(FastRPConfig().weights)
    assert read["shards"] == SHARDS and read["ambiguous"] == 0, read      # shards told apart by their sizes
    assert read["calls"] >= SHARDS * (1 + iterations), read               # setup + a step per iteration, per shard
    assert read["moved"] == 0 and read["moved_calls"] == 0 and read["local"] > 0, read


def test_node_removed_mid_walk_gives_the_same_output_or_fails_cleanly(cluster_runs):
    """A node running walk work is removed: the run completes with the output of the fault-free run of
    the same settings, or fails with an error and commits nothing."""
    import embedlake
    from embedlake.lake import Lake
    work, res = cluster_runs
    noded, clean = res["noded"], res["four"]
    assert noded.get("removed"), noded
    assert noded["alive_nodes"] == NODES                  # the head and the surviving nodes
    lake = Lake(str(work / "lake-noded"))
    if noded["status"] == "completed":
        ids0, X0 = embedlake.load_matrix(str(work / "lake-four"), "bed", "deepwalk")
        ids1, X1 = embedlake.load_matrix(str(work / "lake-noded"), "bed", "deepwalk")
        o0, o1 = np.argsort(ids0), np.argsort(ids1)
        assert clean["status"] == "completed"
        assert np.array_equal(ids0[o0], ids1[o1]) and np.array_equal(X0[o0], X1[o1])
    else:
        assert noded["error"].strip(), noded
        assert not lake.is_committed("bed", "deepwalk", "noded")


@pytest.mark.parametrize("stage", list(ENGINES))
def test_sharded_engine_takes_and_returns_one_shard_at_most(cluster_runs, stage):
    """Each sharded engine, on the cluster with S = SHARDS shards, called directly (walks ->
    training -> publish, and FastRP): no task of its stage takes or returns more than LIMIT x one shard."""
    from embedlake.tasks.object_sizes import largest_by_stage, oversized, read_calls
    work, res = cluster_runs
    engines = res["engines"]
    assert stage not in engines["errors"], engines["errors"][stage]
    calls = [c for c in read_calls(work / "objects-engines") if c.stage == stage]
    limit = stage_limits(shard_bytes(work), calls)[stage]
    assert len(calls) >= SHARDS, largest_by_stage(calls)            # one task (or more) per shard at least
    assert oversized(calls, limit) == [], (limit, largest_by_stage(calls))
