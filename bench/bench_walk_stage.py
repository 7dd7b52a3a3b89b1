"""Walk steps/s of the pipeline's walk stage (Ray tasks, CSR from the object store, walks back into
it) against the bare kernel in the same script. Prints one JSON object.

    .venv/bin/python bench/bench_walk_stage.py [--dataset ../shared/datasets/blogcatalog] [--partitions 4]

Both after a warm-up (numba cache load in every worker). The issue asks the stage to stay within
2x of the kernel's steps/s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "blogcatalog"))
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--walks", type=int, default=10)
    ap.add_argument("--length", type=int, default=80)
    a = ap.parse_args()
    import os

    from embedlake.config import WalkConfig
    from embedlake.tasks.graph import GraphHandle, walk
    from embedlake.tasks.runtime import ensure_ray
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph, stats_json_num_nodes
    from embedlake.workers.graph.stages import partition_bounds
    from embedlake.workers.graph.walks import random_walks
    edges = str(Path(a.dataset) / "edges.tsv")
    g = ingest_graph(edges, EdgeSpec(num_nodes=stats_json_num_nodes(edges)))
    n = g.csr.num_nodes
    ray = ensure_ray()
    handle = GraphHandle({"nodes": n, "stats": g.stats}, ray.put((g.csr.indptr, g.csr.indices, None, False)),
                         ray.put(g.node_ids), ray.put(None))
    bounds = partition_bounds(n, a.partitions)
    res = {"dataset": Path(a.dataset).name, "nodes": n, "partitions": len(bounds), "cpus": os.cpu_count()}
    for mode, p, q in (("deepwalk", 1.0, 1.0), ("node2vec", 0.25, 4.0)):
        cfg = WalkConfig(walks_per_node=a.walks, length=a.length, seed=0, p=p, q=q)
        starts = np.arange(n, dtype=np.int64)
        random_walks(g.csr.indptr, g.csr.indices, None, starts[:10], 1, 5, 0, p=p, q=q, mode=mode)   # compile
        ray.get(walk.fn(handle, cfg.model_copy(update={"walks_per_node": 1}), mode, bounds).ref)     # warm workers
        k_t, s_t = [], []
        steps = 0
        for _ in range(a.repeats):
            t = time.perf_counter()
            W = random_walks(g.csr.indptr, g.csr.indices, None, starts, a.walks, a.length, 0, p=p, q=q, mode=mode,
                             threads=0)
            k_t.append(time.perf_counter() - t)
            steps = int(np.count_nonzero(W >= 0))
            del W
            t = time.perf_counter()
            refs = walk.fn(handle, cfg, mode, bounds).ref
            ray.wait(refs, num_returns=len(refs), fetch_local=False)
            s_t.append(time.perf_counter() - t)
            del refs
        ks, ss = steps / statistics.median(k_t), steps / statistics.median(s_t)
        res[mode] = {"steps": steps, "kernel_steps_per_s": round(ks), "stage_steps_per_s": round(ss),
                     "stage_over_kernel": round(ss / ks, 3), "kernel_s": [round(x, 3) for x in k_t],
                     "stage_s": [round(x, 3) for x in s_t]}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
