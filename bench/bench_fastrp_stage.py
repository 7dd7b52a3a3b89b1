"""FastRP as the pipeline runs it (Ray tasks, object store, partitions) vs the scipy reference of
peers.py, side by side in one script. Prints one JSON object.

    .venv/bin/python bench/bench_fastrp_stage.py [--dataset ../shared/datasets/blogcatalog] [--partitions 4]

Ray starts once (its start-up is reported apart); the CSR is put in the object store as the ingest
stage would leave it; the stage (tasks/fastrp.py's task body, i.e. every Ray task it launches and the
final join) is timed after one warm-up run (numba cache load in the workers). The reference is
peers.py's own `fastrp` on the same graph in this process. Runs alternate; medians are compared.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(SHARED / "datasets" / "blogcatalog"))
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dim", type=int, default=512)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("peers", SHARED / "bench" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)

    from embedlake.config import FastRPConfig
    from embedlake.tasks.fastrp import fastrp as fastrp_task
    from embedlake.tasks.graph import GraphHandle
    from embedlake.tasks.runtime import ensure_ray
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph, stats_json_num_nodes
    from embedlake.workers.graph.stages import partition_bounds

    edges = str(Path(a.dataset) / "edges.tsv")
    g = ingest_graph(edges, EdgeSpec(num_nodes=stats_json_num_nodes(edges)))
    n = g.csr.num_nodes
    A = sp.csr_matrix((np.ones(g.csr.num_arcs), g.csr.indices, g.csr.indptr), shape=(n, n))
    t0 = time.perf_counter()
    ray = ensure_ray()
    ray_start = time.perf_counter() - t0
    handle = GraphHandle({"nodes": n}, ray.put((g.csr.indptr, g.csr.indices, g.csr.weights, g.csr.directed)),
                         ray.put(g.node_ids), ray.put(None))
    cfg = FastRPConfig(dim=a.dim)
    bounds = partition_bounds(n, a.partitions)
    fn = fastrp_task.fn
    ref = fn(handle, cfg, bounds)[0]          # warm-up: workers load the numba cache
    ray.get(ref)
    ours, theirs = [], []
    for _ in range(a.repeats):
        t = time.perf_counter()
        peers.fastrp(A, a.dim, list(cfg.weights), cfg.beta)
        theirs.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref, _ = fn(handle, cfg, bounds)
        X = ray.get(ref)
        ours.append(time.perf_counter() - t)
    print(json.dumps({"dataset": Path(a.dataset).name, "nodes": n, "arcs": g.csr.num_arcs, "dim": a.dim,
                      "partitions": len(bounds), "ray_start_s": round(ray_start, 2),
                      "stage_s": [round(x, 3) for x in ours], "scipy_ref_s": [round(x, 3) for x in theirs],
                      "ratio_stage_over_ref": round(statistics.median(ours) / statistics.median(theirs), 3),
                      "shape": list(X.shape)}))


if __name__ == "__main__":
    main()
