"""Ingest: the one-task reader (workers/graph/ingest.py:ingest_graph + write_graph, what the ingest
stage ran before shards) vs the parallel, sharded ingest (tasks/graph.py:ingest_sharded) on an R-MAT
edge list (TSV, written once by bench_scale.edge_file).

Each variant runs in its own child process. The one-task child reports its wall time and peak RSS
(VmHWM). The parallel child starts a local Ray with --cpus CPUs, then samples the RSS of every Ray
worker process (psutil, every 20 ms) while the ingest runs: it reports the wall time, the largest
peak RSS of one worker, that worker's RSS before the ingest (an idle worker's baseline) and the
driver's peak. Warm-up runs first compile the numba kernels (cached on disk) and let every worker
load them; then REPEAT timed runs (each writes a fresh lake; the last run is the one reported for
shard sizes). The machine's other load shows in the spread of the timed runs.

    .venv/bin/python bench/bench_ingest_parallel.py [--edges 2e6] [--shards 1,4] [--range-mib 4] [--cpus 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from procmem import reset_peak, status_bytes  # noqa: E402  (bench/procmem.py)

REPEAT = 3          # timed runs of each variant (wall_s lists them, sorted)
WARMUP = 2


def one_task(path: str, lake: str) -> dict:
    from embedlake.lake import Lake
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    from embedlake.workers.graph.store import write_graph
    ingest_graph(path, EdgeSpec())                       # warm-up: numba kernels
    reset_peak()
    base = status_bytes("VmRSS")
    walls = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        g = ingest_graph(path, EdgeSpec())
        write_graph(Lake(lake), "rmat", "v-one", g.csr, g.node_ids, {"stats": g.stats})
        walls.append(time.perf_counter() - t0)
        del g.csr
    return {"variant": "one-task", "wall_s": sorted(round(w, 2) for w in walls),
            "peak_rss_mib": round(status_bytes("VmHWM") / 2**20),
            "base_rss_mib": round(base / 2**20), "arcs": g.stats["arcs"]}


class WorkerRss(threading.Thread):
    """Peak and first-seen RSS of every Ray worker process, sampled until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.first, self.running = {}, {}, True

    def run(self):
        import psutil
        me = psutil.Process(os.getpid())
        while self.running:
            for p in me.children(recursive=True):      # this Ray only (its raylet's workers)
                try:
                    cmd = " ".join(p.cmdline())
                    if not (cmd.startswith("ray::") or "default_worker.py" in cmd):
                        continue
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.first.setdefault(p.pid, rss)
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            time.sleep(0.02)


def parallel(path: str, lake: str, shards: int, range_bytes: int, cpus: int) -> dict:
    from embedlake.config import GraphConfig, InputConfig, SyntheticConfig
    from embedlake.tasks.graph import ingest_sharded
    from embedlake.tasks.runtime import ensure_ray
    ensure_ray(num_cpus=cpus)
    args = (InputConfig(edges=path), SyntheticConfig(), GraphConfig(shards=shards))
    for i in range(WARMUP):             # every worker loads the numba kernels (disk cache) once
        ingest_sharded(f"{lake}-warm{i}", "rmat", *args, max_retries=0, range_bytes=range_bytes)
    sampler = WorkerRss()
    sampler.start()
    time.sleep(0.5)
    reset_peak()
    walls = []
    for i in range(REPEAT):
        shutil.rmtree(lake, ignore_errors=True)
        t0 = time.perf_counter()
        h = ingest_sharded(lake, "rmat", *args, max_retries=0, range_bytes=range_bytes)
        walls.append(time.perf_counter() - t0)
        del h
    time.sleep(0.1)
    sampler.running = False
    sampler.join()
    pid = max(sampler.peak, key=sampler.peak.get)
    h = ingest_sharded(lake, "rmat", *args, max_retries=0, range_bytes=range_bytes)
    return {"variant": f"parallel S={shards}", "wall_s": sorted(round(w, 2) for w in walls), "ranges": h.meta["ranges"],
            "worker_peak_rss_mib": round(sampler.peak[pid] / 2**20),
            "that_worker_before_mib": round(sampler.first[pid] / 2**20),
            "workers": len(sampler.peak), "driver_peak_rss_mib": round(status_bytes("VmHWM") / 2**20),
            "arcs": h.meta["arcs"], "shard_arcs": [s.arcs for s in h.shards]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", type=float, default=2e6)
    ap.add_argument("--shards", default="1,4")
    ap.add_argument("--range-mib", type=float, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default="/tmp/embedlake-ingest-parallel")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.child:
        kind, path, lake, shards = a.child.split("|")
        shutil.rmtree(lake, ignore_errors=True)
        for i in range(WARMUP):
            shutil.rmtree(f"{lake}-warm{i}", ignore_errors=True)
        res = one_task(path, lake) if kind == "one" else parallel(path, lake, int(shards),
                                                                   int(a.range_mib * 2**20), a.cpus)
        print(json.dumps(res))
        return
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_scale import edge_file
    path, _ = edge_file(int(a.edges), a.out)
    runs = [("one", 1)] + [("par", int(s)) for s in a.shards.split(",")]
    out = []
    for kind, s in runs:
        child = f"{kind}|{path}|{a.out}/lake-{kind}-{s}|{s}"
        p = subprocess.run([sys.executable, __file__, "--child", child, "--range-mib", str(a.range_mib),
                            "--cpus", str(a.cpus)], capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr[-3000:])
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"edges": int(a.edges), "file_mib": round(os.path.getsize(path) / 2**20, 1), "runs": out}))


if __name__ == "__main__":
    main()
