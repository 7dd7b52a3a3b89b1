"""Sharded graphs on a simulated cluster (issue 17): memory per worker, sharded vs replicated
throughput, cost vs shard count, and the per-unit costs docs/scaling.md projects from.

    .venv/bin/python bench/bench_shards.py [--edges 2e7] [--shards 1,2,4,8] [--methods deepwalk,node2vec,fastrp]
                                           [--nodes 4] [--node-cpus 1] [--store-mb 1200] [--out /tmp/embedlake-shards]
    .venv/bin/python bench/bench_shards.py --units [--units-edges 2e6]        (writes <out>/units-<edges>.json)
    .venv/bin/python bench/bench_shards.py --project <out>/units-<edges>.json [--machines 16,64,256]

Graph: the R-MAT generator of workers/graph/synthetic.py (seed 1, ~10 edges per node, ids shuffled),
written once as Parquet edge files (<out>/rmat-<edges>/part-*.parquet, 8 files, so a parallel
ingest has one task per file), read by the pipeline's own ingest.

Cluster: `ray.cluster_utils.Cluster`, a 0-CPU head plus --nodes nodes of --node-cpus CPUs and
--store-mb of object store each, all on this machine. For every S of --shards (S = 1 is today's
replicated engines: every walk / FastRP task reads the whole CSR) each method of --methods runs
the whole `embed_graph` flow (graph.shards=S) into a lake of that S (the first method of an S
ingests, the others reuse the ingested graph, as a re-run would). Each S gets a fresh cluster, and
before any timing each method runs once on a 100k-edge R-MAT graph, so that no timed run pays for
starting workers or loading numba caches, and no worker carries pages from another S. Per stage: the flow's own wall
times (run.stages). Settings that keep 20M edges within minutes on 2 cores: 1 walk x 20 steps per
node, skip-gram dim 32, window 5, 1 epoch; node2vec p=0.5 q=2; FastRP dim 32.

Memory per worker, two ways. (1) Per task, from the object-size recorder (on for every run;
tasks/object_sizes.py): each task resets its process's RSS high-water mark before it runs and
reads it after, with the anonymous (heap), file and shared (object-store) parts. The issue's bound,
(CSR / S) + (embedding shard) + 300 MB (CSR = indptr + indices + node ids:
workers/graph/shards.csr_bytes), is checked for S = 4 and 8 against each stage's largest "own
peak": the task's peak RSS less the library pages and object-store pages its process had mapped
before it started, i.e. its heap plus the store pages it touched itself. Store pages are the
store's memory, counted once per node, and a worker keeps the ones it once touched mapped (in its
RSS) after the task; counting them again for every later task would bill the node's store to
each worker. Each task's peak RSS and sampled heap peak are reported beside it. (2) Per process,
psutil: every Ray worker process of every node sampled every 0.2 s, RSS and USS, kept per process
title (`ray::<function>` while it runs a task) and so per stage; a process keeps the pages it
touched in earlier tasks, so these are upper bounds. Evaluation, which gathers the graph by
design, is only reported.

Ratios printed: walk throughput S=4 vs S=1 (DeepWalk, node2vec: same walks, so the ratio of wall
times), FastRP S=4 vs S=1. Writes <out>/shards.json, shards.md (table) and shards.png (cost vs S).

--units: the per-unit costs of today's kernels, in this process, one thread, on an R-MAT graph of
--units-edges (ns per ingested arc, per walk step DeepWalk / node2vec, per arc x dim of a FastRP
propagation, per skip-gram pair), printed as JSON (docs/scaling.md cites them).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

MB = 2**20
WALKS_PER_NODE, WALK_LENGTH, DIM = 1, 20, 32
PIPELINE_CFG = [f"walk.walks_per_node={WALKS_PER_NODE}", f"walk.length={WALK_LENGTH}", "walk.seed=0",
                f"train.dim={DIM}", "train.window=5", "train.negatives=5", "train.epochs=1", "train.rounds=1",
                f"fastrp.dim={DIM}", "eval.reconstruction=false", "eval.align_to_previous=false",
                "eval.artifacts=false"]
METHOD_CFG = {"deepwalk": ["method=deepwalk"], "node2vec": ["method=node2vec", "walk.p=0.5", "walk.q=2.0"],
              "fastrp": ["method=fastrp"]}
RSS_ALLOWANCE = 300 * MB
# what the sharded walk stage says of itself (tasks/graph.py walk_sharded): how its owners were
# started (here, or during ingest) and how long they took to be ready, the rounds' seconds
WALK_INFO = ("owners", "owner_wait_seconds", "owner_start_seconds", "walk_seconds", "walk_rounds", "walker_moves")
WARMUP_EDGES = 100_000


def edge_files(edges: int, out: Path, parts: int = 8) -> Path:
    """The R-MAT graph of `edges` edges as `parts` Parquet files (written once, reused)."""
    import polars as pl

    from embedlake.workers.graph.synthetic import rmat_edges
    folder = out / f"rmat-{edges}"
    if (folder / "_done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    scale = max(10, round(math.log2(edges / 10)))
    s, d = rmat_edges(scale, edges, seed=1)
    for i, idx in enumerate(np.array_split(np.arange(edges), parts)):
        pl.DataFrame({"src": s[idx].astype(np.int64), "dst": d[idx].astype(np.int64)}).write_parquet(
            folder / f"part-{i:02d}.parquet")
    (folder / "_done").write_text(json.dumps({"edges": edges, "scale": scale}))
    return folder


# ---- peak RSS of every Ray worker ------------------------------------------------------------------
def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


class WorkerRSS(threading.Thread):
    """Samples the RSS of every process under the given raylets (Ray's workers) until stopped;
    `peaks` maps a process title (`ray::<function>` while it runs a task) to the largest RSS seen
    while a process had that title."""

    def __init__(self, raylet_pids: list[int], every_s: float = 0.2):
        super().__init__(daemon=True)
        self.raylets, self.every_s = raylet_pids, every_s
        self.peaks: dict[str, int] = {}
        self.uss: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil
        while not self.stop.is_set():
            for r in self.raylets:
                try:
                    kids = psutil.Process(r).children(recursive=True)
                except psutil.Error:
                    continue
                for k in kids:
                    try:
                        mem = k.memory_full_info()          # rss, and uss: pages no other process shares
                    except psutil.Error:
                        continue
                    title = _title(k.pid)
                    self.peaks[title] = max(mem.rss, self.peaks.get(title, 0))
                    self.uss[title] = max(mem.uss, self.uss.get(title, 0))
            self.stop.wait(self.every_s)

    def by_stage(self, fn_stage: dict[str, str], uss: bool = False) -> dict[str, int]:
        """The largest RSS (or USS) per pipeline stage, from the titles of the functions the recorder saw."""
        out: dict[str, int] = {}
        for title, rss in (self.uss if uss else self.peaks).items():
            fn = title[5:] if title.startswith("ray::") else ""
            stage = fn_stage.get(fn) or fn_stage.get(fn.split(".")[0]) or ("idle" if fn == "IDLE" else None)
            if stage:
                out[stage] = max(rss, out.get(stage, 0))
        return out


# ---- the runs -----------------------------------------------------------------------------------
def start_cluster(nodes: int, cpus: int, store_mb: int):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": 200 * MB})
    workers = [cluster.add_node(num_cpus=cpus, object_store_memory=store_mb * MB) for _ in range(nodes)]
    cluster.wait_for_nodes()
    return cluster, [w.all_processes["raylet"][0].process.pid for w in workers]


def one_run(cluster, raylets: list[int], edges_dir: Path, lake: Path, shards: int, method: str, cpus: int) -> dict:
    """embed_graph with graph.shards=shards and the object-size recorder on: its stage times, the
    largest task argument / result per stage, and the peak worker RSS per stage."""
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.lake import Lake
    from embedlake.tasks.object_sizes import largest_by_stage, memory_by_stage, read_calls, recording
    cfg = load_config(None, [f"ray.address={cluster.address}", f"lake.uri={lake}", f"lake.run_id={method}-s{shards}",
                             "lake.dataset=rmat", f"input.edges={edges_dir}", f"graph.shards={shards}",
                             f"ray.stages={{train: {{num_cpus: {cpus}}}}}", *PIPELINE_CFG, *METHOD_CFG[method]])
    sampler = WorkerRSS(raylets)
    sampler.start()
    t0 = time.perf_counter()
    rec = lake.parent / f"objects-{lake.name}-{method}"
    shutil.rmtree(rec, ignore_errors=True)          # this run's records only (not a warm-up's, not an older run's)
    try:
        with recording(rec):
            s = embed_graph(cfg)
    finally:
        sampler.stop.set()
        sampler.join(5)
    calls = read_calls(rec)
    fn_stage = {c.fn: c.stage for c in calls}
    walked = Lake(str(lake)).manifest("rmat", method, f"{method}-s{shards}").extra.get("train", {}).get("resumed", {})
    stages = {k: v["wall_s"] for k, v in s["stages"].items() if isinstance(v, dict) and "wall_s" in v}
    return {"shards": shards, "method": method, "wall_s": round(time.perf_counter() - t0, 2), "stages": stages,
            "nodes": s["graph"]["nodes"], "arcs": s["graph"]["arcs"], "shards_reported": s["graph"].get("shards"),
            "walk_info": {k: walked[k] for k in WALK_INFO if k in walked},
            "peak_worker_rss_mib": round(max(sampler.peaks.values(), default=0) / MB, 1),
            "peak_rss_mib_by_stage": {k: round(v / MB, 1) for k, v in sampler.by_stage(fn_stage).items()},
            "peak_uss_mib_by_stage": {k: round(v / MB, 1) for k, v in sampler.by_stage(fn_stage, uss=True).items()},
            "largest_object_mib_by_stage": {k: round(max(v["arg"], v["result"]) / MB, 2)
                                            for k, v in largest_by_stage(calls).items()},
            "task_memory_by_stage": task_memory_table(memory_by_stage(calls))}


def task_memory_table(by_stage: dict[str, dict]) -> dict[str, dict]:
    """The recorder's per-task peaks (tasks/object_sizes.py), per stage, in MiB: the largest peak RSS,
    own peak (heap + object-store pages the task newly touched) and sampled heap peak, which task made
    each, and the kinds of memory of the task with the largest own peak at its end."""
    out = {}
    for stage, s in by_stage.items():
        m = s["own_mem"]
        out[stage] = {"calls": s["calls"], "rss": round(s["rss"] / MB, 1), "rss_fn": s["rss_fn"],
                      "own": round(s["own"] / MB, 1), "own_fn": s["own_fn"],
                      "anon": round(s["anon"] / MB, 1), "anon_fn": s["anon_fn"],
                      "own_task": {k: round(m.get(k, 0) / MB, 1) for k in
                                   ("rss_before", "anon_before", "anon_peak", "shmem_before", "shmem", "file")}}
    return out


def walk_tokens(edges_dir: Path) -> int:
    """Tokens of the walks (undirected: a walk stops early only on an isolated start node), computed
    from the degrees, so steps/s need no walk output."""
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    g = ingest_graph(str(edges_dir), EdgeSpec())
    deg = np.diff(g.csr.indptr)
    return int(WALKS_PER_NODE * (np.count_nonzero(deg) * WALK_LENGTH + np.count_nonzero(deg == 0)))


def memory_bound(run: dict, dim: int = DIM) -> int:
    """(CSR / S) + (embedding shard) + 300 MB, in bytes."""
    from embedlake.workers.graph.shards import csr_bytes
    S = run["shards"]
    return int(csr_bytes(run["nodes"], run["arcs"], False) / S + run["nodes"] / S * dim * 4 + RSS_ALLOWANCE)


def run_all(a, edges_dir: Path) -> list[dict]:
    """Every S on a cluster of its own (fresh workers: a worker's RSS keeps the pages it touched in
    earlier runs), each method warmed up first on a 100k-edge graph (worker start, numba caches)."""
    for old in Path(a.out).glob("lake-*"):      # this bench's own lakes: every run ingests and commits afresh
        shutil.rmtree(old)
    warm = edge_files(WARMUP_EDGES, Path(a.out))
    runs = []
    for S in a.shards:
        runs.extend(runs_of_one_cluster(a, edges_dir, warm, S))
    return runs


def runs_of_one_cluster(a, edges_dir: Path, warm: Path, S: int) -> list[dict]:
    import ray
    cluster, raylets = start_cluster(a.nodes, a.node_cpus, a.store_mb)
    runs = []
    try:
        for method in a.methods:
            one_run(cluster, raylets, warm, Path(a.out) / f"lake-warmup-s{S}", S, method, a.node_cpus)
        for method in a.methods:
            try:
                r = one_run(cluster, raylets, edges_dir, Path(a.out) / f"lake-s{S}", S, method, a.node_cpus)
            except Exception as e:      # a failed run is a figure too: say which and go on
                r = {"shards": S, "method": method, "error": f"{type(e).__name__}: {e}"[:500]}
            print(json.dumps(r), file=sys.stderr, flush=True)
            runs.append(r)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return runs


# ---- figures ------------------------------------------------------------------------------------
def ratios(runs: list[dict], tokens: int, sharded: int = 4) -> dict:
    """Throughput of S=`sharded` over S=1 per method (walk stage; FastRP: fastrp stage)."""
    by = {(r["method"], r["shards"]): r for r in runs if "error" not in r}
    out = {}
    for method, stage in (("deepwalk", "walk"), ("node2vec", "walk"), ("fastrp", "fastrp")):
        one, many = by.get((method, 1)), by.get((method, sharded))
        if one and many and stage in one["stages"] and stage in many["stages"]:
            out[f"{method}_{stage}_ratio_s{sharded}_vs_s1"] = round(one["stages"][stage] / many["stages"][stage], 3)
            if stage == "walk":
                out[f"{method}_steps_per_s"] = {S: round(tokens / by[(method, S)]["stages"]["walk"])
                                                for m, S in by if m == method and "walk" in by[(m, S)]["stages"]}
    return out


def memory_checks(runs: list[dict]) -> list[dict]:
    """Each stage's peak (checked for S >= 4, as the issue asks; reported for every S) against (CSR / S) + (embedding shard) + 300 MB. Checked against the
    recorder's own peak of the stage's largest task (heap + object-store pages that task newly
    touched: tasks/object_sizes.py); whole-process RSS (psutil, shared pages and pages kept from
    earlier tasks included), the task's peak RSS and its sampled heap peak are reported beside it.
    Evaluation gathers the graph and table by design (docs/DESIGN.md) and is reported, not checked."""
    out = []
    for r in runs:
        if "error" in r:
            continue
        bound = memory_bound(r)
        tasks = r.get("task_memory_by_stage", {})
        for stage in sorted(set(tasks) | set(r["peak_rss_mib_by_stage"])):
            t = tasks.get(stage, {})
            out.append({"method": r["method"], "shards": r["shards"], "stage": stage, "bound_mib": round(bound / MB, 1),
                        "task_own_peak_mib": t.get("own"), "task": t.get("own_fn"),
                        "task_heap_peak_mib": t.get("anon"), "task_rss_peak_mib": t.get("rss"),
                        "process_rss_mib": r["peak_rss_mib_by_stage"].get(stage),
                        "process_uss_mib": r["peak_uss_mib_by_stage"].get(stage),
                        "ok": None if stage in ("evaluate", "idle") or "own" not in t or r["shards"] < 4
                        else t["own"] * MB <= bound})
    return out


def memory_table(checks: list[dict]) -> str:
    """Markdown: memory_checks, one row per (method, S, stage)."""
    lines = ["| method | S | stage | bound MiB | own peak MiB (task) | heap peak MiB | task RSS peak MiB | "
             "process RSS / USS MiB | within |", "|---|---:|---|---:|---|---:|---:|---|---|"]
    for c in checks:
        ok = {True: "yes", False: "**no**", None: "(not checked)"}[c["ok"]]
        lines.append(f"| {c['method']} | {c['shards']} | {c['stage']} | {c['bound_mib']} | {c['task_own_peak_mib']} "
                     f"({c['task']}) | {c['task_heap_peak_mib']} | {c['task_rss_peak_mib']} | "
                     f"{c['process_rss_mib']} / {c['process_uss_mib']} | {ok} |")
    return "\n".join(lines)


def cost_table(runs: list[dict]) -> str:
    """Markdown: one row per (method, S), one column per stage (seconds)."""
    stages = [s for s in ("ingest", "walk", "train", "fastrp", "publish", "evaluate")
              if any(s in r.get("stages", {}) for r in runs)]
    lines = ["| method | S | " + " | ".join(f"{s} s" for s in stages) + " | peak worker RSS MiB |",
             "|---|---:|" + "---:|" * (len(stages) + 1)]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['shards']} | failed: {r['error'][:80]} |")
            continue
        cells = [f"{r['stages'][s]:.2f}" if s in r["stages"] else "" for s in stages]
        lines.append(f"| {r['method']} | {r['shards']} | " + " | ".join(cells) + f" | {r['peak_worker_rss_mib']} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path, edges: int | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = runs[0]["method"] if runs else None         # the method of an S that ingests; the others reuse its graph
    for method in sorted({r["method"] for r in runs}):
        ok = [r for r in runs if r["method"] == method and "error" not in r]
        for stage in ("ingest", "walk", "train", "fastrp", "publish"):
            pts = [(r["shards"], r["stages"][stage]) for r in ok if stage in r["stages"]]
            name = "ingest (reads the stored graph)" if stage == "ingest" and method != first else stage
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{method}: {name}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("graph shards S")
    ax.set_ylabel("stage wall time (s)")
    ax.set_title("cost vs S, 4-node simulated cluster" + (f", R-MAT {edges / 1e6:g}M edges" if edges else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- per-unit costs of today's kernels ---------------------------------------------------------------
def _best(fn, repeats: int = 2) -> tuple[float, float]:
    """(wall s, CPU s of this process) of the fastest of `repeats` calls. On a shared, loaded machine
    the CPU time of a one-thread kernel is its own cost; the wall time also has the waits."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0), key=lambda x: x[1])
    return best


def _ns(seconds: tuple[float, float], units: int) -> dict:
    return {"cpu": round(seconds[1] / units * 1e9, 3), "wall": round(seconds[0] / units * 1e9, 3)}


def unit_costs(edges: int, out: Path) -> dict:
    """ns per unit of each kernel, one thread, after a warm-up call (numba compile / cache load)."""
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    folder = edge_files(edges, out)
    ingest_graph(str(folder), EdgeSpec())
    t_ingest = _best(lambda: ingest_graph(str(folder), EdgeSpec()))
    csr = ingest_graph(str(folder), EdgeSpec()).csr
    res = {"edges": edges, "nodes": csr.num_nodes, "arcs": csr.num_arcs,
           "ingest_ns_per_arc": _ns(t_ingest, csr.num_arcs),
           "ingest_note": "ingest_graph of the Parquet files (polars reads with its own threads: CPU time summed)"}
    res.update(walk_units(csr))
    res.update(fastrp_units(csr))
    res.update(skipgram_units(csr))
    return res


def walk_units(csr, shards: int = 4) -> dict:
    """ns per step of the replicated kernel; where the sharded engine is on main, its in-process rounds
    over `shards` shards too, and what each walker move between shards costs on top."""
    from embedlake.workers.graph.walks import random_walks
    starts = np.arange(csr.num_nodes, dtype=np.int64)
    out = {}
    for mode, p, q in (("deepwalk", 1.0, 1.0), ("node2vec", 0.5, 2.0)):
        def walk():
            return random_walks(csr.indptr, csr.indices, None, starts, 1, WALK_LENGTH, 0, p=p, q=q, mode=mode,
                                threads=1, symmetric=True)
        steps = int(np.count_nonzero(walk() >= 0))
        t_one = _best(walk)
        out[f"walk_{mode}_ns_per_step"] = _ns(t_one, steps)
        out.update(sharded_walk_units(csr, shards, mode, p, q, steps, t_one))
    return out


def sharded_walk_units(csr, shards: int, mode: str, p: float, q: float, steps: int, t_one) -> dict:
    try:
        from embedlake.workers.graph.sharded_walks import sharded_random_walks
    except ImportError:
        return {"sharded_walks": "not on main yet"}
    from embedlake.workers.graph.shards import shard_bounds, split_csr
    parts = split_csr(csr, shard_bounds(csr.num_nodes, shards))
    info = {}
    t = _best(lambda: info.update(sharded_random_walks(parts, 1, WALK_LENGTH, 0, p=p, q=q, mode=mode)[1]))
    moves = next((int(v) for k, v in info.items() if "move" in k), 0)
    out = {f"walk_{mode}_sharded_s{shards}_ns_per_step": _ns(t, steps), f"walk_{mode}_sharded_info": info}
    if moves:
        out[f"walk_{mode}_sharded_ns_per_move_over_replicated"] = {
            k: round((t[i] - t_one[i]) / moves * 1e9, 2) for i, k in ((1, "cpu"), (0, "wall"))}
    return out


def fastrp_units(csr) -> dict:
    """One propagation S U (row-normalised) over the whole graph: ns per arc x dim."""
    from embedlake.workers.fastrp.kernels import fastrp
    kw = dict(dim=DIM, iteration_weights=(0.0, 0.0, 1.0, 6.67), threads=1)
    fastrp(csr.indptr, csr.indices, None, **kw)
    t = _best(lambda: fastrp(csr.indptr, csr.indices, None, **kw))
    return {"fastrp_ns_per_arc_dim": _ns(t, 4 * csr.num_arcs * DIM),
            "fastrp_note": "whole fastrp() (4 propagations + projection + standardise) / (4 x arcs x dim)"}


def skipgram_units(csr) -> dict:
    from embedlake.workers.graph.walks import random_walks, walks_to_sentences
    from embedlake.workers.train.skipgram import train_sgns
    starts = np.arange(csr.num_nodes, dtype=np.int64)
    walks = random_walks(csr.indptr, csr.indices, None, starts, 1, WALK_LENGTH, 0, threads=1, symmetric=True)
    tokens, offsets = walks_to_sentences(walks)
    kw = dict(dim=DIM, window=5, negatives=5, epochs=1, seed=0, threads=1)
    train_sgns(tokens[:offsets[min(1000, len(offsets) - 1)]], offsets[:min(1001, len(offsets))], csr.num_nodes, **kw)
    out = {}
    for dim in (DIM, 128):
        st = {}
        t = _best(lambda: st.update(train_sgns(tokens, offsets, csr.num_nodes, **{**kw, "dim": dim})[2]), repeats=1)
        out.update({f"skipgram_d{dim}_ns_per_pair": _ns(t, st["pairs"]),
                    f"skipgram_d{dim}_ns_per_token": _ns(t, st["tokens"])})
    out.update(skipgram_pairs_per_token=round(st["pairs"] / st["tokens"], 3),
               skipgram_note="window 5, 5 negatives; a pair is one (centre, context) positive with its negatives")
    return out


# ---- projection to 1B nodes / 20B edges (docs/scaling.md) ------------------------------------------
# The run projected: undirected, unweighted; DeepWalk 10 walks x 80 steps per node; skip-gram d = 128,
# window 5, 5 negatives, 1 epoch; FastRP d = 128, 4 powers. A machine: 32 cores, 25 Gb/s.
TARGET = {"nodes": 1e9, "edges": 20e9, "walks": 10, "length": 80, "dim": 128, "fastrp_powers": 4,
          "cores": 32, "net_bytes_per_s": 25e9 / 8}
WALKER_BYTES, SEGMENT_HEADER_BYTES, ROUTED_ARC_BYTES = 48, 24, 8


def project(units: dict, machines: int, t: dict = TARGET) -> dict:
    """Bytes per shard, network and seconds per stage on `machines` machines, one shard per machine,
    from the measured per-unit CPU costs (`--units` output). CPU seconds are spread over every core;
    network seconds over every machine's link; a stage takes at least the larger of the two."""
    from embedlake.workers.graph.shards import csr_bytes
    n, arcs, S = t["nodes"], 2 * t["edges"], machines
    cores, link = machines * t["cores"], machines * t["net_bytes_per_s"]
    cross = (S - 1) / S                                     # share of steps / arcs that land on another shard
    steps = n * t["walks"] * t["length"]
    moves = steps * cross
    ns = {k: units[k]["cpu"] for k in ("ingest_ns_per_arc", "walk_deepwalk_ns_per_step", "fastrp_ns_per_arc_dim",
                                       "skipgram_d128_ns_per_token")}
    move_ns = units.get("walk_deepwalk_sharded_ns_per_move_over_replicated", {}).get("cpu", 0.0)
    stages = {
        "ingest": (arcs * ns["ingest_ns_per_arc"], arcs * ROUTED_ARC_BYTES * cross),
        "walk": (steps * ns["walk_deepwalk_ns_per_step"] + moves * move_ns,
                 moves * (WALKER_BYTES + SEGMENT_HEADER_BYTES) + steps * 4 * cross),
        "train": (steps * ns["skipgram_d128_ns_per_token"], None),
        "fastrp": (t["fastrp_powers"] * arcs * t["dim"] * ns["fastrp_ns_per_arc_dim"],
                   t["fastrp_powers"] * (S - 1) * n * t["dim"] * 4),
    }
    out = {"machines": machines, "shard_csr_gb": csr_bytes(n, arcs, False) / S / 1e9,
           "shard_walks_gb": steps * 4 / S / 1e9, "shard_table_gb": n * t["dim"] * 4 / S / 1e9,
           "walk_round_net_gb_per_machine": n * t["walks"] * cross * WALKER_BYTES / S / 1e9}
    for name, (cpu_ns, net) in stages.items():
        cpu_s = cpu_ns / 1e9 / cores
        net_s = None if net is None else net / link
        out[name] = {"cpu_s": cpu_s, "net_gb": None if net is None else net / 1e9, "net_s": net_s,
                     "s": max(cpu_s, net_s or 0.0)}
    return out


def projection_table(units: dict, machines: list[int]) -> str:
    rows = [project(units, N) for N in machines]
    head = ("| machines | CSR / shard GB | walks / shard GB | table / shard GB | ingest s (net GB) | "
            "walk s (net GB) | walk round GB / machine | train CPU s | FastRP s (net GB) |")
    lines = [head, "|" + "---:|" * 9]
    for r in rows:
        def st(k):
            return f"{r[k]['s']:,.0f} ({r[k]['net_gb']:,.0f})"
        lines.append(f"| {r['machines']} | {r['shard_csr_gb']:.2f} | {r['shard_walks_gb']:.1f} | "
                     f"{r['shard_table_gb']:.2f} | {st('ingest')} | {st('walk')} | "
                     f"{r['walk_round_net_gb_per_machine']:.2f} | {r['train']['cpu_s']:,.0f} | {st('fastrp')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", type=float, default=2e7)
    ap.add_argument("--shards", default="1,2,4,8")
    ap.add_argument("--methods", default="deepwalk,node2vec,fastrp")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--node-cpus", type=int, default=1)
    ap.add_argument("--store-mb", type=int, default=1200)
    ap.add_argument("--train-rounds", type=int, default=1,
                    help="train.rounds (1 keeps earlier figures comparable; the config's default is 8, and a "
                         "sharded bucket_stage task cuts 1/rounds of one bucket of a shard's stream)")
    ap.add_argument("--out", default="/tmp/embedlake-shards")
    ap.add_argument("--units", action="store_true", help="measure the per-unit kernel costs instead")
    ap.add_argument("--units-edges", type=float, default=2e6)
    ap.add_argument("--project", help="a --units JSON file: print the 1B-node projection table of docs/scaling.md")
    ap.add_argument("--machines", default="16,64,256")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(out / "prefect"))
    from embedlake.tasks.runtime import configure_env
    configure_env()         # before the cluster starts: its nodes inherit the workers' allocator settings
    if a.project:
        units = json.loads(Path(a.project).read_text())
        print(projection_table(units, [int(m) for m in a.machines.split(",")]))
        return 0
    if a.units:
        res = unit_costs(int(a.units_edges), out)
        (out / f"units-{int(a.units_edges)}.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return 0
    PIPELINE_CFG[PIPELINE_CFG.index("train.rounds=1")] = f"train.rounds={a.train_rounds}"
    a.shards = [int(s) for s in a.shards.split(",")]
    a.methods = [m for m in a.methods.split(",") if m]
    edges_dir = edge_files(int(a.edges), out)
    runs = run_all(a, edges_dir)
    res = {"edges": int(a.edges), "cluster": {"nodes": a.nodes, "cpus_per_node": a.node_cpus, "store_mb": a.store_mb},
           "runs": runs, "ratios": ratios(runs, walk_tokens(edges_dir)), "memory": memory_checks(runs)}
    (out / "shards.json").write_text(json.dumps(res, indent=1))
    (out / "shards.md").write_text(cost_table(runs) + "\n\n" + memory_table(res["memory"]) + "\n")
    plot(runs, out / "shards.png", int(a.edges))
    print(cost_table(runs) + "\n\n" + memory_table(res["memory"]), file=sys.stderr)
    print(json.dumps({"ratios": res["ratios"], "memory": res["memory"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
