"""Walk steps/s of the sharded walk engine (tasks/graph.walk_sharded: one actor per graph shard,
bulk-synchronous rounds) against the replicated one (tasks/graph.walk: one task per start-node
partition, each reading the whole CSR) in the same script, on the same graph and the same cluster.
Prints one JSON object; per mode and per S, "ratio*" is replicated / sharded of the median wall
seconds and "ratio*_cpu" of the median CPU seconds (the same walks either way).

    .venv/bin/python bench/bench_walks_sharded.py [--scale 17] [--edges 1e6] [--shards 4,8] [--modes deepwalk]
        [--walks 10] [--length 80] [--ways auto,early,kept] [--nodes 4] [--node-cpus 1] [--store-mb 1200]
    # issue 17's figure: R-MAT 2^21 with 20M edges drawn, 4 nodes of 1 CPU, S = 4 and 8 in one run
    .venv/bin/python bench/bench_walks_sharded.py --scale 21 --edges 2e7 --walks 1 --length 20 --repeats 2 \
        --shards 4,8 --ways early --modes deepwalk,node2vec

Cluster: `ray.cluster_utils.Cluster` as bench/bench_shards.py builds it (a 0-CPU head that holds
the driver's objects, --nodes nodes of --node-cpus CPUs and --store-mb of object store); --nodes 0
runs a plain local Ray instead. The graph is built once and kept in --graph-cache (/tmp).
Both engines after a warm-up (workers started, numba caches loaded); times are whole stage calls.
Each repeat times, for each S in turn, the replicated stage and then the sharded ones (so the
sides alternate: replicated, S = 4, replicated, S = 8, ...; load changes hit both alike).
Every timed stage reports its wall seconds, the CPU seconds of the whole simulated cluster (this
process and every process it started: raylets with their object stores, GCS, Ray workers; printed
per process name on stderr with the stage's clock times, to match against Ray's log) and the load
average after it. The sharded engine is timed up to three ways (--ways): starting its shard owners
(new processes that fetch their CSR rows and build alias tables) inside the stage ("auto": the stage
with graph.shards=auto); with owners started before the stage, as a flow with graph.shards = S
starts them while ingest runs, so the timed stage hands them their shards and walks ("early":
tasks/graph.py ShardOwners, the in-pipeline figure); and with owners kept from the warm-up, that
already hold their shards ("kept": `start_shard_owners`, like the replicated engine's warm task
workers). --in-process also times the rounds without Ray (sharded_random_walks, one thread) against
random_walks (one thread): the engine's own overhead, without the cluster.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np


def rmat_graph(scale: int, edges: int, weighted: bool, cache_dir: str | None = None):
    """The R-MAT graph, built once per (scale, edges, weighted) and kept as an .npz in cache_dir
    (building 20M edges takes a minute on this machine)."""
    from embedlake.workers.graph.csr import CSRGraph, build_csr
    from embedlake.workers.graph.synthetic import rmat_edges
    path = os.path.join(cache_dir, f"rmat-{scale}-{edges}-{int(weighted)}.npz") if cache_dir else None
    if path and os.path.exists(path):
        z = np.load(path)
        return CSRGraph(z["indptr"], z["indices"], z["weights"] if weighted else None, False)
    src, dst = rmat_edges(scale, edges, seed=1)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    w = np.random.default_rng(2).uniform(0.1, 3.0, src.size) if weighted else None
    g = build_csr(src, dst, 1 << scale, weights=w)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(path, indptr=g.indptr, indices=g.indices, weights=g.weights if weighted else np.zeros(0))
    return g


def start_cluster(nodes: int, cpus: int, store_mb: int, head_store_mb: int):
    """The simulated cluster of bench/bench_shards.py: a 0-CPU head (the driver's objects: the whole
    CSR for the replicated engine, the shards) plus `nodes` nodes of `cpus` CPUs each."""
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": head_store_mb * 2**20})
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, object_store_memory=store_mb * 2**20)
    cluster.wait_for_nodes()
    return cluster


def handles(ray, g, shards: int):
    """(one-CSR GraphHandle, S-shard GraphHandle) of the same graph."""
    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.workers.graph.shards import shard_bounds, split_csr
    ids = np.arange(g.num_nodes, dtype=np.int64)
    meta = {"nodes": g.num_nodes, "arcs": g.num_arcs, "version": "bench", "stats": {"weighted": g.weights is not None}}
    one = GraphHandle(meta, ray.put((g.indptr, g.indices, g.weights, g.directed)), ray.put(ids), None)
    refs = [ShardRef(s.lo, s.hi, s.num_arcs, ray.put(s.as_tuple()), ray.put(ids[s.lo:s.hi]))
            for s in split_csr(g, shard_bounds(g.num_nodes, shards))]
    return one, GraphHandle(meta, None, ray.put(ids), None, refs)


def early_owners_walk(ray, sharded, cfg, mode: str, info: dict) -> tuple[float, float, float]:
    """The walk stage as a flow runs it with graph.shards = S (tasks/graph.py ShardOwners): owners
    started before the graph exists (the flow starts them when ingest starts; here they are waited
    for, untimed, as a long enough ingest hides them), then the timed stage: hand each its shard
    (fetch CSR rows, build walkers), the rounds, collect. Fresh owners every call, so every timed
    stage pays the shard hand-over. Returns `measured`'s (wall, CPU s, load); the stage's info
    goes into `info`."""
    from embedlake.tasks.graph import ShardOwners, walk_sharded
    owners = ShardOwners.start(sharded.num_shards, mode)
    try:
        owners.wait_started()
        graph = owners.attach(dataclasses.replace(sharded, owners=None))

        def run():
            res = walk_sharded.fn(graph, cfg, mode)
            ray.wait(res.ref, num_returns=len(res.ref), fetch_local=False)
            info.setdefault("owner_cpu_runs", []).append(res.info.get("owner_cpu_s"))
            info.update(res.info)
        return measured(run)
    finally:
        owners.close()
        owners_exited()


def owners_exited(timeout_s: float = 60.0) -> None:
    """Wait until no shard owner process is left: a killed owner's process may take seconds to exit
    (Python's final garbage collection, 0.2-0.4 CPU s each under load, seen with py-spy), and its CPU
    then fell into the next timed stage (a replicated one: 1.5-2.3 CPU s of owners exiting)."""
    import psutil
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.name().startswith("ray::ShardWalk"):
                    alive.append(p)
            except psutil.Error:
                pass
        if not alive:
            return
        time.sleep(0.2)


def in_process(g, shards: int, cfg, mode: str) -> dict:
    from embedlake.workers.graph.shards import shard_bounds, split_csr
    from embedlake.workers.graph.sharded_walks import sharded_random_walks
    from embedlake.workers.graph.walks import random_walks
    parts = split_csr(g, shard_bounds(g.num_nodes, shards))
    kw = dict(p=cfg.p, q=cfg.q, mode=mode)
    t = time.perf_counter()
    W = random_walks(g.indptr, g.indices, g.weights, np.arange(g.num_nodes), cfg.walks_per_node, cfg.length,
                     cfg.seed, threads=1, symmetric=True, **kw)
    rep = time.perf_counter() - t
    steps = int(np.count_nonzero(W >= 0))
    del W
    t = time.perf_counter()
    sharded_random_walks(parts, cfg.walks_per_node, cfg.length, cfg.seed, threads=1, **kw)
    sh = time.perf_counter() - t
    return {"replicated_steps_per_s": round(steps / rep), "sharded_steps_per_s": round(steps / sh),
            "ratio": round(rep / sh, 3)}


def cluster_cpu_seconds() -> dict[int, tuple[str, float]]:
    """(process name, user + system CPU seconds) of this process and every process it started (the
    simulated cluster's GCS, raylets, object stores and Ray workers are all its descendants), by pid."""
    import psutil
    me = psutil.Process()
    seen = {}
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            seen[p.pid] = ("driver" if p.pid == me.pid else p.name(), t.user + t.system)
        except psutil.Error:
            pass
    return seen


def cpu_by_name(c0: dict, c1: dict) -> dict[str, float]:
    """CPU seconds spent between two `cluster_cpu_seconds`, per process name (raylet, gcs_server,
    ray::ShardWalker, ...)."""
    spent: dict[str, float] = {}
    for pid, (name, v) in c1.items():
        spent[name] = spent.get(name, 0.0) + v - (c0[pid][1] if pid in c0 else 0.0)
    return {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def measured(fn) -> tuple[float, float, float]:
    """(wall s, CPU s of the whole cluster, 1-min load average after) of fn(). The CPU seconds are
    summed over the processes alive at the end (a process that starts and exits inside fn is
    missed: none does in a timed stage, owners are stopped after it)."""
    c0 = cluster_cpu_seconds()
    start = time.strftime("%H:%M:%S")
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    c1 = cluster_cpu_seconds()
    spent, load = cpu_by_name(c0, c1), os.getloadavg()[0]
    cpu = sum(spent.values())
    # when each stage ran (to match against worker crashes in Ray's log) and where its CPU went
    print(f"stage {start}-{time.strftime('%H:%M:%S')}: {wall:.2f} s wall, {cpu:.2f} CPU s, load {load:.1f}, "
          f"CPU s by process: {spent}", file=sys.stderr, flush=True)
    return wall, cpu, load


def time_mode(ray, a, g, one, sharded: dict, bounds, mode: str, cfg) -> dict:
    """The figures of one walk mode: per repeat and per S, the replicated stage then the sharded
    stages asked for (--ways), alternated so that load changes hit both sides alike."""
    from embedlake.tasks.graph import start_shard_owners, walk, walk_sharded
    ways = a.ways.split(",")
    warm = cfg.model_copy(update={"walks_per_node": 1, "length": 3})
    ray.get(walk.fn(one, warm, mode, bounds).ref)
    for h in sharded.values():
        ray.get(walk_sharded.fn(h, warm, mode).ref)
    owners_exited()
    rows = {S: {"replicated": [], **{w: [] for w in ways}} for S in sharded}
    info = {S: {} for S in sharded}

    def stage(fn, into):
        def run():
            res = fn()
            ray.wait(res.ref, num_returns=len(res.ref), fetch_local=False)
            into.update(res.info)
        return run

    # one untimed full-size walk each: the first one after the short warm-up ran 1.4-3.6x longer
    # (the replicated tasks' first pass over the whole CSR in the nodes' object stores; the owners'
    # first fetch of their shards)
    measured(stage(lambda: walk.fn(one, cfg, mode, bounds), {}))
    for h in sharded.values():
        if "early" in ways:
            early_owners_walk(ray, h, cfg, mode, {})
    for _ in range(a.repeats):     # interleaved, so load changes hit both
        for S, h in sharded.items():
            rows[S]["replicated"].append(measured(stage(lambda: walk.fn(one, cfg, mode, bounds), {})))
            if "auto" in ways:
                rows[S]["auto"].append(measured(stage(lambda: walk_sharded.fn(h, cfg, mode), info[S])))
                owners_exited()
            if "early" in ways:
                rows[S]["early"].append(early_owners_walk(ray, h, cfg, mode, info[S]))
    if "kept" in ways:     # kept owners hold their CPUs while alive: nothing else fits the cluster, so they come last
        for S, h in sharded.items():
            owners = start_shard_owners(h, warm, mode)
            ray.get(walk_sharded.fn(h, warm, mode, owners=owners).ref)
            for _ in range(a.repeats):
                rows[S]["kept"].append(measured(stage(lambda: walk_sharded.fn(h, cfg, mode, owners=owners), info[S])))
            for o in owners:
                ray.kill(o)
            owners_exited()
    return {f"S={S}": summary(r, ways, info[S]) for S, r in rows.items()}


def summary(rows: dict, ways: list[str], info: dict) -> dict:
    """Ratios replicated / sharded of the median wall and median CPU seconds, and every measurement."""
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in rows.items()}
    out = {"replicated_wall_s": [round(x[0], 3) for x in rows["replicated"]],
           "replicated_cpu_s": [round(x[1], 3) for x in rows["replicated"]]}
    name = {"auto": "", "early": "_early_owners", "kept": "_kept_owners"}
    for w in ways:
        out[f"ratio{name[w]}"] = round(med["replicated"][0] / med[w][0], 3)
        out[f"ratio{name[w]}_cpu"] = round(med["replicated"][1] / med[w][1], 3)
        out[f"sharded{name[w]}_wall_s"] = [round(x[0], 3) for x in rows[w]]
        out[f"sharded{name[w]}_cpu_s"] = [round(x[1], 3) for x in rows[w]]
    out["loadavg_1min"] = [round(x[2], 1) for v in rows.values() for x in v]
    out.update({k: info[k] for k in ("walk_steps", "walk_rounds", "walker_moves", "adjacency_queries", "walk_seconds", "owner_start_seconds",
                                     "advance_critical_s", "owner_cpu_runs") if k in info})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=17)
    ap.add_argument("--edges", type=float, default=1_000_000)
    ap.add_argument("--shards", default="4", help="numbers of shards, e.g. 4,8 (each against the replicated walk)")
    ap.add_argument("--walks", type=int, default=10)
    ap.add_argument("--length", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weighted", action="store_true")
    ap.add_argument("--in-process", action="store_true")
    ap.add_argument("--modes", default="deepwalk,node2vec", help="which of deepwalk,node2vec to time")
    ap.add_argument("--ways", default="auto,early,kept",
                    help="sharded stages to time: auto (owners started in the stage), early (owners started "
                         "before it, as a flow with graph.shards = S does), kept (owners kept from the warm-up)")
    ap.add_argument("--nodes", type=int, default=4, help="simulated cluster nodes (0: a plain local Ray)")
    ap.add_argument("--node-cpus", type=int, default=1)
    ap.add_argument("--store-mb", type=int, default=1200)
    ap.add_argument("--head-store-mb", type=int, default=1000)
    ap.add_argument("--graph-cache", default="/tmp/embedlake-bench-graphs")
    a = ap.parse_args()
    a.edges = int(a.edges)
    from embedlake.config import WalkConfig
    from embedlake.tasks.runtime import ensure_ray
    from embedlake.workers.graph.stages import partition_bounds
    g = rmat_graph(a.scale, a.edges, a.weighted, a.graph_cache)
    cluster = start_cluster(a.nodes, a.node_cpus, a.store_mb, a.head_store_mb) if a.nodes else None
    ray = ensure_ray(cluster.address if cluster else None)
    shard_counts = [int(s) for s in a.shards.split(",")]
    one = handles(ray, g, 1)[0]
    sharded = {S: handles(ray, g, S)[1] for S in shard_counts}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    bounds = partition_bounds(g.num_nodes, cpus)
    res = {"nodes": g.num_nodes, "arcs": g.num_arcs, "shards": shard_counts, "cluster_cpus": cpus,
           "machine_cpus": os.cpu_count(), "walks_per_node": a.walks, "length": a.length, "weighted": a.weighted}
    for mode, p, q in (("deepwalk", 1.0, 1.0), ("node2vec", 0.25, 4.0)):
        if mode not in a.modes.split(","):
            continue
        cfg = WalkConfig(walks_per_node=a.walks, length=a.length, seed=0, p=p, q=q)
        res[mode] = time_mode(ray, a, g, one, sharded, bounds, mode, cfg)
        if a.in_process:
            for S in shard_counts:
                res[mode][f"S={S}"]["in_process_one_thread"] = in_process(g, S, cfg, mode)
        print(json.dumps({mode: res[mode], "loadavg": os.getloadavg()}), file=sys.stderr, flush=True)  # progress
    res["loadavg_1_5_15"] = os.getloadavg()    # the machine is shared: read the figures with it
    print(json.dumps(res))


if __name__ == "__main__":
    main()
