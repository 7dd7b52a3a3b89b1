"""Sharded skip-gram quality (issue 17): BlogCatalog, the same walks split into S graph shards,
node-classification Micro-F1 of the sharded engine (workers/train/sharded.py, the in-process
schedule of exactly the tasks tasks/train.py runs) against the one-table engine (train_sgns) and
the block engine on one stream (blocks.train_blocks, balanced partitions), at 10 / 50 / 90 %.

    .venv/bin/python bench/bench_sharded_train.py --shards 4 --walks 10 --length 40 --seeds 0 1

Prints one JSON line per seed and a summary (mean differences to the one-table engine).
--ray W: instead, time the Ray drivers on a local Ray of W CPUs with train.workers = W: the
sharded engine (tasks/train.py train_sharded, S walk-shard objects) against the block engine
(train_partitioned, one walks object, balanced partitions), same walks, same P; wall seconds
of the train stage and Micro-F1 of both.
--streamed G: instead, the sharded engine with its walks streamed in rounds of G walk numbers
(sh.train_rounds_local, the in-process schedule of tasks/train.py train_sharded_streamed) against
the unstreamed sharded engine (train.rounds = --rounds), same walks, same shards and partitions:

    .venv/bin/python bench/bench_sharded_train.py --shards 4 --streamed 1 --seeds 0 1 --threads 2

--geometry ENGINE...: 2-hop reconstruction mAP (500 sampled queries), |mean unit row| and Micro-F1
of each engine on the same walks: one (train_sgns), range / stride (the sharded engine on range or
id mod P partitions), balanced (train_blocks); docs/training.md "Partitions of a sharded graph":

    .venv/bin/python bench/bench_sharded_train.py --geometry one range stride balanced --walks 10 \
        --length 80 --dim 64 --repeats 1 --seeds 0

--negative-mass P...: where each node's negatives fall per partition (id mod P) in main's block
engine against the noise shares (docs/training.md, "Negatives from the global noise: measured, tried, not kept"):

    .venv/bin/python bench/bench_sharded_train.py --negative-mass 2 4 8 --walks 10 --length 80 --seeds 0

--traffic: bytes each task of the sharded trainer takes and returns, per training token, with the
object-size recorder (tasks/object_sizes.py) on a local Ray, on the planted graph and settings of
docs/scaling.md section 5 (20,000 nodes, S = 4, 2 x 10 walks per node, d = 16, window 2,
train.workers = 2, rounds 1: P = 4). Runs with whichever checkout's package is installed, so the
same command measures main before a change and a branch after it:

    .venv/bin/python bench/bench_sharded_train.py --traffic [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numba as nb
import numpy as np

from embedlake.config import TrainConfig
from embedlake.workers.evaluate.classify import node_classification
from embedlake.workers.evaluate.geometry import reconstruction_map
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.shards import shard_bounds
from embedlake.workers.graph.walks import random_walks, walks_to_sentences
from embedlake.workers.train import blocks as sb
from embedlake.workers.train import sharded as sh
from embedlake.workers.train.blocks import stream_seed
from embedlake.workers.train.sgns_parts import S32, draw_negatives, hogbatch, noise_alias, sigmoid_tables
from embedlake.workers.train.skipgram import train_sgns

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "blogcatalog"
RATIOS = (0.1, 0.5, 0.9)


def load():
    e = np.loadtxt(DATA / "edges.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    lab = np.loadtxt(DATA / "labels.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    n = int(json.loads((DATA / "stats.json").read_text())["num_nodes"])
    return build_csr(e[:, 0], e[:, 1], n), lab, n


def micro(X, lab, repeats):
    r = node_classification(X, lab[:, 0], lab[:, 1], ratios=RATIOS, repeats=repeats)
    return {k: round(v, 4) for k, v in r["micro_f1"].items()}


def one_seed(g, lab, n, args, seed):
    W = random_walks(g.indptr, g.indices, None, np.arange(n), args.walks, args.length, seed, threads=args.threads,
                     symmetric=True)
    tok, off = walks_to_sentences(W)
    kw = dict(dim=args.dim, window=args.window, negatives=5, seed=seed, threads=args.threads)
    out = {"seed": seed, "tokens": int(len(tok))}
    t0 = time.perf_counter()
    X1, _, _ = train_sgns(tok, off, n, **kw)
    out["one_table_s"] = round(time.perf_counter() - t0, 1)
    out["one_table"] = micro(X1, lab, args.repeats)
    cube = W.reshape(args.walks, n, args.length)
    shards = [(np.ascontiguousarray(cube[:, lo:hi].reshape(-1, args.length)),) for lo, hi in shard_bounds(n, args.shards)]
    P = args.shards * args.per_shard
    tr = TrainConfig(dim=args.dim, window=args.window, negatives=5, seed=seed, rounds=args.rounds, threads=args.threads)
    t0 = time.perf_counter()
    Win, _, _ = sh.train_streams_local(shards, args.walks, sh.VocabSplit("range", n, P), tr, threads=args.threads)
    out["sharded_s"] = round(time.perf_counter() - t0, 1)
    out["sharded"] = micro(np.concatenate(Win), lab, args.repeats)
    if args.blocks:
        Xb, _, _ = sb.train_blocks(tok, off, n, partitions=P, rounds=args.rounds, **kw)
        out["blocks"] = micro(Xb, lab, args.repeats)
    return out


def streamed_vs_not(g, lab, n, args, seed):
    """Micro-F1 of the sharded engine with and without streamed walks, same walks and partitions."""
    W = random_walks(g.indptr, g.indices, None, np.arange(n), args.walks, args.length, seed, threads=args.threads,
                     symmetric=True)
    cube = W.reshape(args.walks, n, args.length)

    def shards_of(k0, k1):
        return [(np.ascontiguousarray(cube[k0:k1, lo:hi].reshape(-1, args.length)),)
                for lo, hi in shard_bounds(n, args.shards)]
    split = sh.VocabSplit("range", n, args.shards * args.per_shard)
    tr = TrainConfig(dim=args.dim, window=args.window, negatives=5, seed=seed, rounds=args.rounds, threads=args.threads)
    rounds = sh.walk_rounds(args.walks, args.streamed)
    out = {"seed": seed, "shards": args.shards, "partitions": split.parts, "walk_rounds": len(rounds)}
    t0 = time.perf_counter()
    Win, _, _ = sh.train_streams_local(shards_of(0, args.walks), args.walks, split, tr, threads=args.threads)
    out["sharded_s"] = round(time.perf_counter() - t0, 1)
    out["sharded"] = micro(np.concatenate(Win), lab, args.repeats)
    t0 = time.perf_counter()
    Win, _, _ = sh.train_rounds_local(lambda w: shards_of(*rounds[w]), rounds, args.length, split, tr,
                                      threads=args.threads)
    out["streamed_s"] = round(time.perf_counter() - t0, 1)
    out["streamed"] = micro(np.concatenate(Win), lab, args.repeats)
    out["diff"] = {r: round(out["streamed"][r] - out["sharded"][r], 4) for r in out["sharded"]}
    return out


def table_quality(X, g, lab, args) -> dict:
    """2-hop reconstruction mAP (500 sampled queries, cosine) and Micro-F1 of one table."""
    r = reconstruction_map(X, g.indptr, g.indices, hops=(1, 2), sample=500, seed=0, threads=args.threads)
    out = {"map1": round(r["map"]["1"], 4), "map2": round(r["map"]["2"], 4), "random2": round(r["random_baseline"]["2"], 4)}
    U = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    out["mean_unit_norm"] = round(float(np.linalg.norm(U.mean(0))), 3)
    out["micro"] = micro(X, lab, args.repeats)
    return out


def blocks_module(path: str | None):
    """blocks.py of this checkout, or the one at `path` (another checkout's, or a commit's:
    `git show 3612f0f:workers/train/blocks.py > /tmp/b.py`), loaded under another module name."""
    if path is None:
        return sb
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("other_blocks", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["other_blocks"] = mod                       # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@nb.njit(cache=True)
def order_round(tok, part, offsets, lo_pos, hi_pos, pi, pj, W_in, W_out, thr, idx, sig, lsig, window, negatives,
                lr0, min_lr, total, seed):
    """The `order` engine's block (pi, pj) over stream positions [lo_pos, hi_pos): the block
    engine's pairs (context in pi, centre in pj), windows, lr and per-(centre, pi) negative draws,
    but on one full table with negatives from the global noise (thr, idx over all ids). pi = -1:
    every context of the centre in one window (the window kept whole)."""
    K1 = negatives + 1
    dim = W_in.shape[1]
    ctx, outs = np.empty(2 * window, np.int32), np.empty(K1, np.int32)
    g, dIn = np.empty((2 * window, K1), np.float32), np.empty((2 * window, dim), np.float32)
    Cb, Ob = np.empty((2 * window, dim), np.float32), np.empty((K1, dim), np.float32)
    s = np.searchsorted(offsets, lo_pos, side="right") - 1
    loss = 0.0
    for p in range(lo_pos, hi_pos):
        while offsets[s + 1] <= p:
            s += 1
        if part[tok[p]] != pj:
            continue
        z = stream_seed(seed, 0, p, 0)
        bw = 1 + np.int64(((z >> S32) * np.uint64(window)) >> S32)
        B = 0
        for q in range(max(offsets[s], p - bw), min(offsets[s + 1], p + bw + 1)):
            if q != p and (pi < 0 or part[tok[q]] == pi):
                ctx[B] = tok[q]
                B += 1
        if B == 0:
            continue
        lr = max(min_lr, lr0 - (lr0 - min_lr) * p / total)
        state, nout = draw_negatives(stream_seed(seed, 0, p, max(pi, 0) + 1), outs, tok[p], negatives, thr, idx)
        loss += hogbatch(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig, lsig)
    return loss


def train_block_order(tok, off, n, P: int, rounds: int, dim: int, window: int, seed: int,
                      whole: bool = False) -> np.ndarray:
    """The block engine's order of updates (rounds x P episodes of blocks (i, i + e), id mod P)
    with the one-table engine's noise: isolates what the block schedule costs from what the
    per-partition negatives cost (docs/training.md, "Negatives from the global noise"). whole:
    episode e trains the centres of partition e with all their contexts (windows kept whole)."""
    tok, off = sb.compact_stream(tok, off)
    thr, idx = noise_alias(np.bincount(tok, minlength=n), 0.75)
    sig, lsig = sigmoid_tables()
    part = (np.arange(n) % P).astype(np.int32)
    rng = np.random.default_rng(seed)
    W_in = ((rng.random((n, dim), dtype=np.float32) - np.float32(0.5)) / np.float32(dim)).astype(np.float32)
    W_out = np.zeros((n, dim), np.float32)
    N = len(tok)
    for r in range(rounds):
        for e in range(P):
            for i in ([-1] if whole else range(P)):
                order_round(tok, part, off, N * r // rounds, N * (r + 1) // rounds, i, (i + e) % P if i >= 0 else e,
                            W_in, W_out, thr, idx, sig, lsig, window, 5, 0.025, 1e-4, float(N), seed)
    return W_in


def geometry(g, lab, n, args, seed):
    """Reconstruction mAP and Micro-F1 of the one-table engine against the block engines on the
    same walks, one partitioning at a time (--engines): the sharded engine on range partitions
    (what the flow runs), on stride partitions (id mod P), and the one-stream block engine on
    balanced partitions (from --blocks-from's blocks.py when given), and `order`: the block order
    with the global noise on one table (train_block_order)."""
    W = random_walks(g.indptr, g.indices, None, np.arange(n), args.walks, args.length, seed, threads=args.threads,
                     symmetric=True)
    tok, off = walks_to_sentences(W)
    cube = W.reshape(args.walks, n, args.length)
    shards = [(np.ascontiguousarray(cube[:, lo:hi].reshape(-1, args.length)),) for lo, hi in shard_bounds(n, args.shards)]
    P = args.shards * args.per_shard
    kw = dict(dim=args.dim, window=args.window, negatives=5, seed=seed, threads=args.threads)
    tr = TrainConfig(dim=args.dim, window=args.window, negatives=5, seed=seed, rounds=args.rounds, threads=args.threads)
    out = {"seed": seed, "tokens": int(len(tok)), "partitions": P, "rounds": args.rounds}
    for name in args.engines:
        t0 = time.perf_counter()
        if name == "one":
            X = train_sgns(tok, off, n, **kw)[0]
        elif name in ("range", "stride"):
            split = sh.VocabSplit(name, n, P)
            Win, _, _ = sh.train_streams_local(shards, args.walks, split, tr, threads=args.threads)
            X = sh.assemble_split_stage(split, None, *Win)
        elif name == "balanced":
            X = blocks_module(args.blocks_from).train_blocks(tok, off, n, partitions=P, rounds=args.rounds, **kw)[0]
        elif name in ("order", "order-whole"):
            X = train_block_order(tok, off, n, P, args.rounds, args.dim, args.window, seed, whole=name == "order-whole")
        else:
            raise SystemExit(f"unknown engine {name!r}: one, range, stride, balanced, order, order-whole")
        out[name] = {"s": round(time.perf_counter() - t0, 1), **table_quality(X, g, lab, args)}
        print(json.dumps({name: out[name]}), flush=True)
    return out


def ray_timing(g, lab, n, args, seed):
    """Wall time and Micro-F1 of train_sharded vs train_partitioned through Ray, same walks."""
    import ray

    from embedlake.config import WalkConfig
    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.tasks.runtime import ensure_ray
    from embedlake.tasks.train import train_partitioned, train_sharded
    from embedlake.workers.graph.shards import split_csr
    ensure_ray(num_cpus=args.ray)
    W = random_walks(g.indptr, g.indices, None, np.arange(n), args.walks, args.length, seed, threads=args.threads,
                     symmetric=True)
    cube = W.reshape(args.walks, n, args.length)
    ids = np.arange(n, dtype=np.int64)
    shards = [ShardRef(sd.lo, sd.hi, sd.num_arcs, ray.put(sd.as_tuple()), ray.put(ids[sd.lo:sd.hi]))
              for sd in split_csr(g, shard_bounds(n, args.shards))]
    graph = GraphHandle({"nodes": n, "version": "bench"}, None, ray.put(ids), None, shards)
    walk_refs = [ray.put(np.ascontiguousarray(cube[:, s.lo:s.hi].reshape(-1, args.length))) for s in shards]
    wcfg = WalkConfig(walks_per_node=args.walks, length=args.length)
    P = args.shards * args.per_shard
    tr = TrainConfig(dim=args.dim, window=args.window, negatives=5, seed=seed, rounds=args.rounds,
                     workers=args.ray, partitions=P, checkpoint="never")
    out = {"seed": seed, "workers": args.ray, "shards": args.shards, "partitions": P}
    for name, fn, refs in (("sharded", train_sharded, walk_refs), ("partitioned", train_partitioned, [ray.put(W)])):
        t0 = time.perf_counter()
        res = fn.fn(graph, refs, wcfg, tr, run=None)
        X = np.concatenate(ray.get(res.ref)) if isinstance(res.ref, list) else ray.get(res.ref)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        out[name] = micro(X, lab, args.repeats)
    return out


def negative_mass(g, n, args, seed) -> dict:
    """Where each node's negatives fall, per partition (id mod P), against the noise share of each
    partition: the block engine gives a context node c, for each pair (c, centre w in
    partition j), k negatives from partition j only, so c's negative mass in j follows the share
    of ITS pairs whose centre lies in j; word2vec (and the one-table engine) draws every pair's
    negatives from the whole noise, so c's expected share in j is j's noise share q_j whatever its
    contexts. Pairs are weighted by the dynamic window (a pair at distance d exists with
    probability (window - d + 1) / window). Reports, per P, the pair-weighted mean over nodes of
    the total variation between c's negative shares and q, and the same for word2vec's draws
    (k x pairs multinomial draws from q, the sampling noise alone)."""
    W = random_walks(g.indptr, g.indices, None, np.arange(n), args.walks, args.length, seed, threads=args.threads,
                     symmetric=True)
    tok, off = walks_to_sentences(W)
    sent = np.repeat(np.arange(len(off) - 1), np.diff(off))
    counts = np.bincount(tok, minlength=n).astype(np.float64)
    rng = np.random.default_rng(seed)
    out = {"seed": seed, "tokens": int(len(tok))}
    for P in args.mass_partitions:
        part = np.arange(n) % P
        mass = np.zeros(n * P)
        for d in range(1, args.window + 1):
            w = (args.window - d + 1) / args.window
            same = sent[d:] == sent[:-d]
            ctx, cen = tok[d:][same], tok[:-d][same]                # both directions: (ctx, cen) and (cen, ctx)
            mass += w * np.bincount(ctx.astype(np.int64) * P + part[cen], minlength=n * P)
            mass += w * np.bincount(cen.astype(np.int64) * P + part[ctx], minlength=n * P)
        mass = mass.reshape(n, P)
        pairs = mass.sum(1)
        noise = np.bincount(part, weights=counts ** 0.75, minlength=P)
        q = noise / noise.sum()
        block_tv = 0.5 * np.abs(mass / np.maximum(pairs, 1e-12)[:, None] - q).sum(1)
        draws = rng.multinomial(np.round(5 * pairs).astype(np.int64), q)
        w2v_tv = 0.5 * np.abs(draws / np.maximum(draws.sum(1), 1)[:, None] - q).sum(1)
        wt = pairs / pairs.sum()
        out[f"P={P}"] = {"block_tv": round(float(wt @ block_tv), 4), "word2vec_tv": round(float(wt @ w2v_tv), 4),
                         "block_tv_median": round(float(np.median(block_tv)), 4),
                         "word2vec_tv_median": round(float(np.median(w2v_tv)), 4)}
    return out


def traffic(args) -> dict:
    """Recorded bytes of the train stage of train_sharded per training token: all its tasks, and
    the stream (or bucket piece) argument of its links alone."""
    import tempfile

    import ray

    from embedlake.config import WalkConfig
    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.tasks.object_sizes import read_calls, recording
    from embedlake.tasks.runtime import ensure_ray
    from embedlake.tasks.train import train_sharded
    from embedlake.workers.graph.shards import split_csr
    from embedlake.workers.graph.synthetic import planted_communities
    s, d, _ = planted_communities(20_000, 10, 10.0, 0.3, 11)
    g = build_csr(s, d, 20_000)
    n, S = g.num_nodes, 4
    ensure_ray(num_cpus=2)
    ids = np.arange(n, dtype=np.int64)
    shards = [ShardRef(sd.lo, sd.hi, sd.num_arcs, ray.put(sd.as_tuple()), ray.put(ids[sd.lo:sd.hi]))
              for sd in split_csr(g, shard_bounds(n, S))]
    graph = GraphHandle({"nodes": n, "version": "traffic"}, None, None, None, shards)
    W = random_walks(g.indptr, g.indices, None, np.arange(n), 2, 10, 3, threads=1, symmetric=True)
    cube = W.reshape(2, n, 10)
    walk_refs = [ray.put(np.ascontiguousarray(cube[:, sd.lo:sd.hi].reshape(-1, 10))) for sd in shards]
    tr = TrainConfig(dim=16, window=2, threads=1, rounds=args.rounds, workers=2, checkpoint="never")
    with tempfile.TemporaryDirectory() as tmp:
        with recording(tmp):
            res = train_sharded.fn(graph, walk_refs, WalkConfig(walks_per_node=2, length=10, seed=3), tr, run=None)
            ray.get(res.ref)
        calls = [c for c in read_calls(tmp) if c.stage == "train"]
    tokens = res.info["tokens"]
    per_fn: dict = {}
    for c in calls:
        f = per_fn.setdefault(c.fn, {"calls": 0, "arg_bytes": 0, "result_bytes": 0})
        f["calls"] += 1
        f["arg_bytes"] += sum(c.args) + sum(c.kwargs.values())
        f["result_bytes"] += sum(c.results)
    links = [c for c in calls if c.fn == "link_stage"]
    total = sum(f["arg_bytes"] + f["result_bytes"] for f in per_fn.values())
    return {"tokens": tokens, "partitions": res.info["partitions"], "rounds": args.rounds, "per_fn": per_fn,
            "train_bytes_per_token": round(total / tokens, 1),
            "link_stream_bytes_per_token": round(sum(c.args[0] for c in links) / tokens, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--per-shard", type=int, default=1, help="partitions per graph shard (m)")
    ap.add_argument("--walks", type=int, default=10)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks", action="store_true", help="also the one-stream block engine (balanced partitions)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ray", type=int, default=0, help="time the Ray drivers on this many workers instead")
    ap.add_argument("--traffic", action="store_true", help="recorded bytes per training token of the sharded trainer")
    ap.add_argument("--streamed", type=int, default=0, help="walk numbers per streamed round: streamed vs not")
    ap.add_argument("--geometry", nargs="+", dest="engines", default=None,
                    help="2-hop reconstruction mAP + Micro-F1 of these engines: one range stride balanced order "
                         "order-whole")
    ap.add_argument("--blocks-from", default=None, help="--geometry balanced: train_blocks of this blocks.py")
    ap.add_argument("--negative-mass", nargs="+", type=int, dest="mass_partitions", default=None,
                    help="per-node negative shares per partition (id mod P) of the block engine vs the noise, these P")
    args = ap.parse_args()
    if args.traffic:
        print(json.dumps(traffic(args)))
        return
    g, lab, n = load()
    if args.mass_partitions:
        for seed in args.seeds:
            print(json.dumps(negative_mass(g, n, args, seed)), flush=True)
        return
    if args.streamed:
        rows = [streamed_vs_not(g, lab, n, args, seed) for seed in args.seeds]
        for r in rows:
            print(json.dumps(r), flush=True)
        print(json.dumps({"summary": "mean Micro-F1 streamed - not streamed (sharded engine)", "seeds": args.seeds,
                          "diff": {k: round(float(np.mean([r["diff"][k] for r in rows])), 4) for k in rows[0]["diff"]}}))
        return
    if args.engines:
        for seed in args.seeds:
            print(json.dumps(geometry(g, lab, n, args, seed)), flush=True)
        return
    if args.ray:
        for seed in args.seeds:
            print(json.dumps(ray_timing(g, lab, n, args, seed)), flush=True)
        return
    rows = []
    for seed in args.seeds:
        rows.append(one_seed(g, lab, n, args, seed))
        print(json.dumps(rows[-1]), flush=True)
    diff = {r: round(float(np.mean([x["sharded"][str(r)] - x["one_table"][str(r)] for x in rows])), 4)
            for r in RATIOS}
    print(json.dumps({"summary": "mean Micro-F1 sharded - one-table", "shards": args.shards,
                      "partitions": args.shards * args.per_shard, "seeds": args.seeds, "diff": diff}))


if __name__ == "__main__":
    main()
