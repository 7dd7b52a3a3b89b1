"""Incremental FastRP and partial publish vs a full recompute (issue 18, docs/incremental_fastrp.md).

Version 1 holds a random share (95 % or 99 %) of a graph's edges, version 2 all of them. For each:
full FastRP of version 2 (node_id-keyed, the state-keeping driver) vs the incremental update from
version 1's state (checked bit-identical), rows recomputed, and the bytes a hashed publish writes
for version 2 after version 1's, vs a full publish. Best of --repeats, in this process.

    .venv/bin/python bench/bench_incremental_fastrp.py [--dataset blogcatalog] [--dim 512]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from embedlake.config import FastRPConfig
from embedlake.lake import Lake, hash_partition_count, hash_partitions, previous_layout, publish_hashed_partition, \
    publish_summary
from embedlake.workers.fastrp import incremental as inc
from embedlake.workers.fastrp import kernels as F
from embedlake.workers.graph.csr import build_csr

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def version(edges: np.ndarray, ids: np.ndarray):
    """The graph of `edges` over the node set `ids` (both versions hold every node, as ingest with
    input.num_nodes does): only edges change, every node keeps its dense id."""
    g = build_csr(np.searchsorted(ids, edges[:, 0]), np.searchsorted(ids, edges[:, 1]), len(ids))
    return ids, (g.indptr, g.indices, g.weights)


def best_of_fresh(fn, make_input, repeats: int):
    """(best wall s, best CPU s, output) of fn(input), each run on a fresh input (made untimed: the
    update mutates its state). One numba thread: CPU time is the work, whatever the machine's load."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        arg = make_input()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(arg)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def grid_edges(side: int) -> np.ndarray:
    """A side x side lattice (a sparse, high-diameter graph: where k-hop balls stay small)."""
    ids = np.arange(side * side).reshape(side, side)
    return np.concatenate([np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1),
                           np.stack([ids[:-1, :].ravel(), ids[1:, :].ravel()], 1)])


def publish(lake: Lake, run_id: str, ids, X, previous: list[dict], partitions: int):
    old = previous_layout(previous)
    assign = hash_partitions(ids, partitions)
    return publish_summary([publish_hashed_partition(lake, "bench", "fastrp", run_id, p, partitions, assign, ids, X,
                                                     old.get(p)) for p in range(partitions)])


def one_case(edges, keep: float, cfg: FastRPConfig, repeats: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    nodes = np.unique(edges)
    (ids1, g1), (ids2, g2) = version(edges[rng.random(len(edges)) < keep], nodes), version(edges, nodes)
    pos = np.minimum(np.searchsorted(ids1, ids2), len(ids1) - 1)
    old_index = np.where(ids1[pos] == ids2, pos, -1).astype(np.int64)
    keys1, keys2 = F.node_keys(ids1), F.node_keys(ids2)
    X1, state1 = inc.fastrp_with_state(*g1, keys1, cfg, threads=1)
    w_full, c_full, (full, _) = best_of_fresh(lambda _: inc.fastrp_with_state(*g2, keys2, cfg, threads=1),
                                              lambda: None, repeats)
    fresh = lambda: inc.FastRPState([U.copy() for U in state1.levels], state1.raw.copy())   # noqa: E731 (updated in place)
    w_inc, c_inc, up = best_of_fresh(lambda s: inc.fastrp_incremental(g2, keys2, g1, old_index, s, cfg, threads=1,
                                                                       directed=False), fresh, repeats)
    assert np.array_equal(up.table, full), "incremental != full recompute"
    P = hash_partition_count(len(ids2), 4 * cfg.dim + 16)
    with tempfile.TemporaryDirectory() as d:
        lake = Lake(d)
        first, _ = publish(lake, "v1", ids1, X1, [], P)
        _, partial = publish(lake, "v2", ids2, up.table, first, P)
        _, whole = publish(lake, "v2full", ids2, full, [], P)
    return {"keep": keep, "nodes": len(ids2), "edges": len(edges),
            "full_cpu_s": round(c_full, 3), "incremental_cpu_s": round(c_inc, 3), "cpu_ratio": round(c_inc / c_full, 4),
            "full_wall_s": round(w_full, 3), "incremental_wall_s": round(w_inc, 3),
            **up.info(), "partitions": P, "bytes_written": partial["bytes_written"],
            "bytes_full_publish": whole["bytes_written"], "files_written": partial["files_written"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="blogcatalog", help="a shared dataset, or grid:<side> (a lattice)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=float, nargs="+", default=[0.95, 0.99])
    ap.add_argument("--standardize", choices=["true", "false", "both"], default="both")
    args = ap.parse_args()
    edges = grid_edges(int(args.dataset.split(":")[1])) if args.dataset.startswith("grid:") else \
        np.loadtxt(SHARED / args.dataset / "edges.tsv", dtype=np.int64, skiprows=1)
    flags = {"true": [True], "false": [False], "both": [True, False]}[args.standardize]
    for std in flags:
        cfg = FastRPConfig(dim=args.dim, density=args.density, projection="node_id", standardize=std)
        for keep in args.keep:
            row = one_case(edges, keep, cfg, args.repeats)
            print(json.dumps({"dataset": args.dataset, "dim": args.dim, "standardize": std, **row}), flush=True)


if __name__ == "__main__":
    main()
