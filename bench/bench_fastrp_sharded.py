"""Sharded FastRP (blocked products over S graph shards, tasks/fastrp.py `fastrp_sharded`) vs
today's replicated stage (every partition task reads the whole CSR and the whole previous matrix,
tasks/fastrp.py `fastrp`), on the same R-MAT graph in the same Ray. Prints one JSON object.

    .venv/bin/python bench/bench_fastrp_sharded.py [--scale 17] [--edges 2000000] [--shards 4] [--dim 128]

The replicated stage runs with as many row partitions as there are shards (the same parallelism).
Both are timed after one warm-up run each (numba cache load in the workers), alternating; the
ratio is replicated wall time / sharded wall time (throughput of sharded relative to replicated)
from the medians. The outputs are checked to be bit-identical.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=17)
    ap.add_argument("--edges", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-cpus", type=int, default=None)
    a = ap.parse_args()

    from embedlake.config import FastRPConfig
    from embedlake.tasks.fastrp import fastrp, fastrp_sharded
    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.tasks.runtime import ensure_ray
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.shards import shard_bounds, split_csr

    src, dst = rmat(a.scale, a.edges)
    g = build_csr(src, dst, 1 << a.scale, directed=False)
    n = g.num_nodes
    ray = ensure_ray(num_cpus=a.num_cpus)
    ids = np.arange(n, dtype=np.int64)
    one = GraphHandle({"nodes": n}, ray.put((g.indptr, g.indices, g.weights, g.directed)), ray.put(ids), ray.put(None))
    bounds = shard_bounds(n, a.shards)
    sharded = GraphHandle({"nodes": n, "arcs": g.num_arcs}, None, None, ray.put(None),
                          shards=[ShardRef(s.lo, s.hi, s.num_arcs, ray.put(s.as_tuple()), ray.put(ids[s.lo:s.hi]))
                                  for s in split_csr(g, bounds)])
    cfg = FastRPConfig(dim=a.dim)

    def run_replicated():
        return [ray.get(fastrp.fn(one, cfg, bounds)[0])]

    def run_sharded():
        return ray.get(fastrp_sharded.fn(sharded, cfg)[0])

    same = np.concatenate(run_sharded()).tobytes() == np.concatenate(run_replicated()).tobytes()   # warm-up
    times = {"replicated": [], "sharded": []}
    for _ in range(a.repeats):
        for name, fn in (("replicated", run_replicated), ("sharded", run_sharded)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"nodes": n, "arcs": g.num_arcs, "edges_generated": a.edges, "dim": a.dim, "shards": a.shards,
                      "ray_cpus": ray.cluster_resources().get("CPU"), "bit_identical": same,
                      **{f"{k}_s": [round(x, 3) for x in v] for k, v in times.items()},
                      "ratio_sharded_throughput": round(med["replicated"] / med["sharded"], 3)}))


def rmat(scale: int, edges: int):
    from embedlake.workers.graph.synthetic import rmat_edges
    return rmat_edges(scale, edges, seed=0)


if __name__ == "__main__":
    main()
