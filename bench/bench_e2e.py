"""DeepWalk end to end through the pipeline vs PecanPy + gensim, side by side in one run (issue 4).

BlogCatalog, walks 10 x 80, d=128, window 10, 5 negatives, 1 epoch, 2 cores. Our figure is the
walk + train stage wall times read from the embed_graph flow's summary (the flow runs in this
process; Prefect's and Ray's fixed start-up are reported apart, as `ray_start` and `startup_s`).
The peers (PecanPy walks + gensim Word2Vec, their `deepwalk_e2e_s`) run first, in the peers venv.

Runs: numba 1 worker (twice: the second with numba caches warm), 2 Ray workers with partitioned
training, the torch kernel on the CPU device (one thread: STACK.md / docs/skipgram.md), and a
peak-memory check of block-partitioned training on a generated 1M-node graph in a child process
(VmHWM vs 1.5 x (tables + CSR) + 1 GB).

usage: python bench/bench_e2e.py [--dataset blogcatalog] [--skip peers,torch,w2,mem] [--mem-nodes 1000000]
Prints one JSON object (and a summary on stderr). The machine is shared: ratios from one run count.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer_venvs import add_peers_option, peer_python, run_grape  # noqa: E402  (bench/peer_venvs.py)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEERS_PY = None   # the peers venv's python: set in main() (bench/peer_venvs.py)

MEM_SCRIPT = r"""
import json, sys, time
import numpy as np
from embedlake.workers.graph.synthetic import planted_communities
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.walks import random_walks, walks_to_sentences
from embedlake.workers.train import blocks as sb
n, walks, length, dim, P, engine = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
s, d, lab = planted_communities(n, 50, 10.0, 0.3, 1)
g = build_csr(s, d, n)
del s, d, lab
csr_bytes = g.indptr.nbytes + g.indices.nbytes
W = random_walks(g.indptr, g.indices, None, np.arange(n), walks, length, 0, threads=2, symmetric=True)
tok, off = walks_to_sentences(W)
del W
h0 = hwm()
t = time.perf_counter()
if engine == "blocks":
    X, Xo, st = sb.train_blocks(tok, off, n, partitions=P, rounds=2, dim=dim, window=5, negatives=5, threads=2)
else:
    from embedlake.workers.train.skipgram import train_sgns
    X, Xo, st = train_sgns(tok, off, n, dim=dim, window=5, negatives=5, threads=2)
print("RESULT " + json.dumps({"engine": engine, "nodes": n, "tokens": int(len(tok)), "csr_bytes": int(csr_bytes),
    "table_bytes": int(2 * n * dim * 4), "stream_bytes": int(tok.nbytes + off.nbytes), "hwm_before_train": h0,
    "hwm": hwm(), "train_s": round(time.perf_counter() - t, 2), "tokens_per_s": round(st["tokens_per_s"])}))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_peers(ds: Path, threads: int) -> dict:
    t = time.perf_counter()
    out = subprocess.run([PEERS_PY, str(SHARED / "bench" / "peers.py"), str(ds), "--skip", "fastrp,pq",
                          "--threads", str(threads)], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = round(time.perf_counter() - t, 2)
    return res


def run_flow(ds: Path, lake: str, overrides: list[str]) -> dict:
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    ov = [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}", f"input.labels={ds / 'labels.tsv'}",
          "train.dim=128", "train.window=10", "train.negatives=5", "train.epochs=1", "walk.walks_per_node=10",
          "walk.length=80", "eval.reconstruction=false", "eval.align_to_previous=false", "eval.artifacts=false",
          "ray.num_cpus=2", *overrides]
    t = time.perf_counter()
    s = embed_graph(load_config(None, ov))
    st = s["stages"]
    walk = st.get("walk", {}).get("wall_s", 0.0)
    train = st.get("train", {}).get("wall_s", 0.0) + st.get("walk_train", {}).get("wall_s", 0.0)
    nc = s["metrics"]["node_classification"]
    from embedlake.lake import Lake
    info = Lake(lake).manifest(s["dataset"], s["method"], s["run_id"]).extra.get("train", {})
    return {"overrides": overrides, "walk_s": walk, "train_s": train, "walk_train_s": round(walk + train, 3),
            "ray_start_s": st.get("ray_start", {}).get("wall_s"), "stages": st,
            "micro_f1": {k: round(v, 4) for k, v in nc["micro_f1"].items()},
            "macro_f1": {k: round(v, 4) for k, v in nc["macro_f1"].items()},
            "tokens_per_s": round(info.get("tokens_per_s", float("nan"))),
            "pairs_per_s": round(info.get("pairs_per_s", float("nan"))), "engine": info.get("engine"),
            "train_info": {k: info.get(k) for k in ("workers", "threads", "partitions", "rounds", "episodes",
                                                    "seconds", "loss_first", "loss_last", "checkpoints")},
            "flow_wall_s": round(time.perf_counter() - t, 2)}


def warm_steps_per_s(ds: Path, run: dict) -> float:
    """Walk steps per second of a pipeline run (10 x 80 walks from every node of the dataset)."""
    n = json.loads((ds / "stats.json").read_text())["num_nodes"]
    return n * 10 * 80 / max(run["walk_s"], 1e-9)


def run_mem(nodes: int, walks: int, length: int, engine: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEM_SCRIPT, str(nodes), str(walks), str(length), "128", "4", engine],
                         capture_output=True, text=True, timeout=3600, cwd=str(ROOT))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    r = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    limit = 1.5 * (r["table_bytes"] + r["csr_bytes"]) + 2 ** 30
    r["limit_bytes"] = int(limit)
    r["hwm_over_limit"] = round(r["hwm"] / limit, 3)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="blogcatalog")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of: peers, grape, torch, w2, mem")
    ap.add_argument("--mem-nodes", type=int, default=1_000_000)
    ap.add_argument("--mem-walks", type=int, default=1)
    ap.add_argument("--mem-length", type=int, default=20)
    add_peers_option(ap)
    a = ap.parse_args()
    global PEERS_PY
    PEERS_PY = peer_python("peers", a.peers, required="peers" not in set(filter(None, a.skip.split(','))))
    skip = set(filter(None, a.skip.split(",")))
    ds = SHARED / "datasets" / a.dataset
    res: dict = {"dataset": a.dataset, "threads": a.threads, "load_average": os.getloadavg()}
    if "peers" not in skip:
        log("peers: PecanPy + gensim ...")
        res["peers"] = run_peers(ds, a.threads)
        log(f"  peers: {json.dumps({k: res['peers'].get(k) for k in ('pecanpy', 'gensim_sgns', 'deepwalk_e2e_s', 'deepwalk_f1')})}")
    if "grape" not in skip:
        log("grape: walks + SkipGram end to end ...")
        res["grape"] = run_grape(ds, a.peers)
        log(f"  grape: {json.dumps(res['grape'])}")

    from embedlake.tasks.runtime import configure_env
    os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / "embedlake-bench-prefect"))
    # a private Ray temp dir: ray.init() would otherwise attach to another session's `ray start` head
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="elb", dir="/tmp"))
    configure_env()
    from prefect.testing.utilities import prefect_test_harness
    t = time.perf_counter()
    lake = tempfile.mkdtemp(prefix="bench-e2e-lake-")
    runs = {}
    with prefect_test_harness(server_startup_timeout=180):
        res["startup_s"] = {"prefect": round(time.perf_counter() - t, 2)}
        plan = [("numba_1w_cold", []), ("numba_1w_warm", [])]
        if "w2" not in skip:
            plan.append(("numba_2w_partitioned", ["train.workers=2"]))
        if "torch" not in skip:
            plan.append(("torch_cpu_1w", ["train.engine=torch", "train.device=cpu",
                                          "ray.stages={train: {num_cpus: 1}}"]))
        for name, ov in plan:
            log(f"pipeline: {name} ...")
            runs[name] = run_flow(ds, lake, ov)
            r = runs[name]
            log(f"  {name}: walk {r['walk_s']}s + train {r['train_s']}s = {r['walk_train_s']}s, "
                f"{r['tokens_per_s']:,} tokens/s, {r['pairs_per_s']:,} pairs/s, F1 {r['micro_f1']}")
    res["startup_s"]["ray"] = runs["numba_1w_cold"]["ray_start_s"]
    res["runs"] = runs
    # ratios, all from this one run
    warm = runs["numba_1w_warm"]
    ratios: dict = {}
    if "peers" in res:
        p = res["peers"]
        ratios["e2e_ours_over_peers_warm"] = round(warm["walk_train_s"] / p["deepwalk_e2e_s"], 3)
        ratios["e2e_ours_over_peers_cold"] = round(runs["numba_1w_cold"]["walk_train_s"] / p["deepwalk_e2e_s"], 3)
        ratios["walk_ours_over_pecanpy"] = round(warm["walk_s"] / p["pecanpy"]["walk_s"], 3)
        ratios["train_ours_over_gensim"] = round(warm["train_s"] / p["gensim_sgns"]["train_s"], 3)
        ratios["f1_minus_gensim"] = {k: round(warm["micro_f1"][k] - p["deepwalk_f1"][k][0], 4)
                                     for k in warm["micro_f1"] if k in p["deepwalk_f1"]}
    g = res.get("grape") or {}
    if g.get("skipgram_e2e_s"):     # GRAPE: its own walks + SkipGram (d=128, window 10, 5 negatives, 1 epoch)
        ratios["e2e_ours_over_grape_warm"] = round(warm["walk_train_s"] / g["skipgram_e2e_s"], 3)
    if g.get("deepwalk"):           # walk stage of the pipeline (Ray tasks) against GRAPE's walk call
        ratios["walk_steps_per_s_ours_over_grape"] = round(
            warm_steps_per_s(ds, warm) / g["deepwalk"]["steps_per_s"], 3)
    if "numba_2w_partitioned" in runs:
        w2 = runs["numba_2w_partitioned"]
        ratios["w2_train_speed_over_w1"] = round(warm["train_s"] / w2["train_s"], 3)
        ratios["w2_f1_minus_w1"] = {k: round(w2["micro_f1"][k] - warm["micro_f1"][k], 4) for k in warm["micro_f1"]}
    if "torch_cpu_1w" in runs:
        tr = runs["torch_cpu_1w"]
        ratios["torch_f1_minus_numba"] = {k: round(tr["micro_f1"][k] - warm["micro_f1"][k], 4) for k in warm["micro_f1"]}
        ratios["torch_pairs_per_s_over_numba"] = round(tr["pairs_per_s"] / max(1, warm["pairs_per_s"]), 3)
    res["ratios"] = ratios
    log(f"ratios: {json.dumps(ratios)}")
    if "mem" not in skip:
        log("memory: block-partitioned training on a generated graph in a child process ...")
        res["memory"] = run_mem(a.mem_nodes, a.mem_walks, a.mem_length, "blocks")
        log(f"  memory: {json.dumps(res['memory'])}")
    res["load_average_end"] = os.getloadavg()
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
