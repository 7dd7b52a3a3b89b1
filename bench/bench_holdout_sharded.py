"""CPU seconds of the link-prediction hold-out on one graph: `holdout_stage` (split_edges,
build_csr, sample_non_edges: one task) against the sharded hold-out (workers/evaluate/links_sharded.py)
with every shard's function run in this process, at each S; best of --repeats.

    .venv/bin/python bench/bench_holdout_sharded.py --edges ../shared/datasets/blogcatalog/edges.tsv --shards 1,4
"""
from __future__ import annotations

import argparse
import time

from embedlake.workers.evaluate.links_sharded import in_process_caller, sharded_holdout
from embedlake.workers.evaluate.stages import holdout_stage
from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", required=True)
    ap.add_argument("--directed", action="store_true")
    ap.add_argument("--shards", default="1,4")
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    g = ingest_graph(args.edges, EdgeSpec(directed=args.directed)).csr
    whole = (g.indptr, g.indices, g.weights, g.directed)
    holdout_stage(whole, args.share, 0)                     # numba kernels compiled / loaded
    print(f"{g.num_nodes:,} nodes, {g.num_arcs:,} arcs")
    print(f"holdout_stage (split_edges): {best(lambda: holdout_stage(whole, args.share, 0), args.repeats):.3f} CPU s")
    for S in (int(x) for x in args.shards.split(",")):
        call, get, bounds = in_process_caller(g, S)
        split = sharded_holdout(call, get, bounds, g.directed, args.share, 0)
        secs = best(lambda: sharded_holdout(call, get, bounds, g.directed, args.share, 0), args.repeats)
        print(f"sharded S={S}: {secs:.3f} CPU s, {split.count:,} held out ({split.info['candidates']:,} drawn)")


if __name__ == "__main__":
    main()
