"""Learned tables on S graph shards (issue 17): BlogCatalog node-classification Micro-F1 of a
train.table = hash | qr | unified table trained by the one-task path (workers/compress/store.
fit_graph_table, what embed_graph runs at graph.shards = 1) against the same table passed from
shard to shard over S graph shards (workers/compress/sharded_table.py: exactly the functions
tasks/learned.py's train_table_sharded runs as Ray tasks, here in one process), each shard's
walks laid out as the sharded walk engine gives them (random_walks of its start nodes).

    .venv/bin/python bench/bench_learned_sharded.py --codecs hash qr unified --shards 4 --threads 2 [--ratio 8]

Prints one JSON line per (codec, S) and the differences of S against 1 at 10 / 50 / 90 %.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from embedlake.config import CompressConfig, TrainConfig, WalkConfig
from embedlake.tasks.learned import table_params
from embedlake.workers.compress import sharded_table as st
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress.store import fit_graph_table
from embedlake.workers.evaluate.classify import node_classification
from embedlake.workers.graph.shards import shard_bounds
from embedlake.workers.graph.walks import random_walks

from bench_sharded_train import RATIOS, load



def decoded(codec: str, params: dict, state: dict, n: int, dim: int) -> np.ndarray:
    """Every node's vector from its codes (computed from the id) and the trained table."""
    cols = st.shard_code_columns(codec, params, 0, n)
    return cz.decode(codec, cols, {"table": state["table"]}, params, dim)


def shard_steps_table(g, n: int, S: int, codec: str, params: dict, walk: WalkConfig, train: TrainConfig,
                   threads: int) -> dict:
    bounds = [b for b in shard_bounds(n, S) if b[1] > b[0]]
    preps = [st.prepare_shard(random_walks(g.indptr, g.indices, None, np.arange(lo, hi), walk.walks_per_node,
                                           walk.length, walk.seed, threads=threads), codec, params)
             for lo, hi in bounds]
    tables = st.start_tables(codec, params, train)
    rounds, L = walk.walks_per_node * train.epochs, len(bounds)
    for r in range(rounds):
        for i, (p, (lo, hi)) in enumerate(zip(preps, bounds)):
            tables, _ = st.train_step(p, tables, r, r * L + i, rounds * L, hi - lo, walk.walks_per_node, codec,
                                      params, train, i, threads)
    return st.final_state(tables)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--codecs", nargs="+", default=["hash", "qr", "unified"])
    ap.add_argument("--shards", type=int, nargs="+", default=[4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=8.0, help="compress.compose_ratio; hash: n / ratio buckets")
    args = ap.parse_args()
    g, lab, n = load()
    walk, train = WalkConfig(), TrainConfig(dim=args.dim)
    for codec in args.codecs:
        params = table_params(codec, CompressConfig(compose_ratio=args.ratio, hash_buckets=int(n // args.ratio)), n,
                              args.dim)
        got = {}
        for S in [1, *args.shards]:
            t0 = time.perf_counter()
            if S == 1:
                state, _ = fit_graph_table((g.indptr, g.indices, None, False), codec, params, walk, train,
                                           threads=args.threads)
            else:
                state = shard_steps_table(g, n, S, codec, params, walk, train, args.threads)
            secs = time.perf_counter() - t0
            X = decoded(codec, params, state, n, args.dim)
            r = node_classification(X, lab[:, 0], lab[:, 1], ratios=RATIOS, repeats=args.repeats)
            got[S] = {k: round(v, 4) for k, v in r["micro_f1"].items()}
            print(json.dumps({"codec": codec, "shards": S, "micro_f1": got[S], "train_s": round(secs, 1),
                              "table_rows": params.get("table_rows", params.get("buckets"))}), flush=True)
        for S in args.shards:
            print(json.dumps({"codec": codec, "shards": S, "minus_one_shard": {
                k: round(got[S][k] - got[1][k], 4) for k in got[1]}}), flush=True)


if __name__ == "__main__":
    main()
