"""FastRP vs the scipy FastRP of peers.py, side by side in one process. Prints one JSON object.

    .venv/bin/python bench/bench_fastrp.py [--dataset ../shared/datasets/blogcatalog] [--repeats 3]
    .venv/bin/python bench/bench_fastrp.py --scale [--scale-edges 2e6,2e7] [--scale-dim 128]

Default: BlogCatalog, d=512, iteration weights [0, 0, 1, 6.67], beta -0.64. The reference is
peers.py's own ``fastrp`` function, imported from /work/shared/bench/peers.py and timed in this
process with this venv's scipy (float64 sparse @ dense, one thread) exactly as peers.py times it
(graph already loaded, StandardScaler not counted). Ours is ``embedlake.workers.fastrp.fastrp``
including its column standardisation, after a warm-up call (numba compile / cache load). Runs
alternate (ref, ours, ref, ours, ...) so machine noise hits both; best and median are reported
and ``ratio`` = our median / reference median (target <= 1.5). Micro/Macro-F1 at 50 % come from
peers.py's ``node_classification`` (liblinear one-vs-rest, 3 splits) on both embeddings;
``--no-f1`` skips them. ``--peer-subprocess`` also runs peers.py itself with the peers venv
(``peers.py DATASET --skip walk,pq``: its own timing, numpy and scipy, plus its F1 at 0.1/0.5/0.9).

--scale: R-MAT power-law graphs (generated here, ids shuffled, undirected) with about 2M and 20M
edges; each size runs in a child process that loads the CSR, warms up, then times ``fastrp`` and
reports the process's peak RSS (VmHWM) and the RSS before the call, so the growth with edges is
visible. ``--scale-peer`` also times the scipy reference there (float64: about 2.5x our memory).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer_venvs import add_peers_option, peer_python  # noqa: E402  (bench/peer_venvs.py)

import numpy as np

from procmem import peak_rss, reset_peak, rss  # noqa: E402  (bench/procmem.py)

from embedlake.workers.graph.synthetic import rmat_edges  # noqa: E402  (one R-MAT generator for every bench)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEERS_FILE = SHARED / "bench" / "peers.py"
PEERS_PY = None   # the peers venv's python: set in main() (bench/peer_venvs.py)
ITER_WEIGHTS = (0.0, 0.0, 1.0, 6.67)
BETA = -0.64


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", PEERS_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_dataset(args) -> dict:
    import polars as pl
    import scipy.sparse as sp

    from embedlake.workers.fastrp import kernels as F
    from embedlake.workers.graph.csr import build_csr

    peers = load_peers()
    ds = Path(args.dataset)
    st = json.loads((ds / "stats.json").read_text())
    n = int(st["num_nodes"])
    directed = bool(st.get("directed", False))
    e = pl.read_csv(ds / "edges.tsv", separator="\t").to_numpy().astype(np.int64)
    # the reference's graph exactly as peers.py main() builds it
    A = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    if not directed:
        A = A + A.T
    A.data[:] = 1.0
    g = build_csr(e[:, 0], e[:, 1], n, directed=directed)
    kw = dict(dim=args.dim, iteration_weights=ITER_WEIGHTS, beta=BETA, threads=args.threads)

    t0 = time.perf_counter()
    X = F.fastrp(g.indptr, g.indices, g.weights, **kw)
    first = time.perf_counter() - t0
    ref_t, our_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        Fref = peers.fastrp(A, args.dim, list(ITER_WEIGHTS), BETA)
        ref_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        X = F.fastrp(g.indptr, g.indices, g.weights, **kw)
        our_t.append(time.perf_counter() - t0)
    res = {
        "dataset": ds.name, "nodes": n, "arcs": g.num_arcs, "dim": args.dim, "threads": args.threads or os.cpu_count(),
        "scipy_ref_s": {"best": round(min(ref_t), 3), "median": round(statistics.median(ref_t), 3)},
        "ours_s": {"best": round(min(our_t), 3), "median": round(statistics.median(our_t), 3),
                   "first_call_incl_compile_or_cache_load": round(first, 3)},
        "ratio_median": round(statistics.median(our_t) / statistics.median(ref_t), 3),
        "ratio_best": round(min(our_t) / min(ref_t), 3),
        "target_ratio": 1.5,
    }
    # single-thread and partitioned runs: same bits, time of the split driver
    t0 = time.perf_counter()
    X1 = F.fastrp(g.indptr, g.indices, g.weights, **{**kw, "threads": 1})
    res["ours_1thread_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    X7 = F.fastrp(g.indptr, g.indices, g.weights, **kw, partitions=7)
    res["ours_7partitions_s"] = round(time.perf_counter() - t0, 3)
    res["bit_identical_1thread_7partitions"] = bool(np.array_equal(X, X1) and np.array_equal(X, X7))
    if not args.no_f1 and (ds / "labels.tsv").exists():
        from sklearn.preprocessing import StandardScaler
        _, _, Y, _ = peers.load(str(ds))
        ratios = tuple(float(r) for r in args.ratios.split(","))
        res["f1_ours"] = peers.node_classification(X, Y, ratios=ratios)
        res["f1_scipy_ref"] = peers.node_classification(StandardScaler().fit_transform(Fref), Y, ratios=ratios)
        res["f1_targets_at_0.5"] = [0.40, 0.24]
    if args.peer_subprocess:
        r = subprocess.run([str(PEERS_PY), str(PEERS_FILE), str(ds), "--skip", "walk,pq"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            peer = json.loads(r.stdout.strip().splitlines()[-1])
            res["peers_py"] = {k: peer[k] for k in ("fastrp_ref", "fastrp_f1") if k in peer}
            res["ratio_vs_peers_py"] = round(statistics.median(our_t) / peer["fastrp_ref"]["s"], 3)
        else:
            res["peers_py_error"] = r.stderr.strip().splitlines()[-3:]
    return res


def scale_child(args) -> dict:
    """Runs in a fresh process: CSR from npz, warm-up, then one timed fastrp and peak RSS."""
    from embedlake.workers.fastrp import kernels as F

    z = np.load(args.child)
    indptr, indices = z["indptr"], z["indices"]
    n = indptr.shape[0] - 1
    # warm-up on a tiny graph: numba compile / cache load out of the timing and the peak
    F.fastrp(np.array([0, 1, 2], np.int64), np.array([1, 0], np.int32), None, dim=args.scale_dim, threads=args.threads)
    reset_peak()
    base = rss()
    t0 = time.perf_counter()
    X = F.fastrp(indptr, indices, None, dim=args.scale_dim, iteration_weights=ITER_WEIGHTS, beta=BETA,
                 threads=args.threads)
    dt = time.perf_counter() - t0
    out = {"ours_s": round(dt, 2), "rss_before_gb": round(base / 2**30, 3), "peak_rss_gb": round(peak_rss() / 2**30, 3),
           "output_gb": round(X.nbytes / 2**30, 3),
           "arcs_x_dim_per_s": round(indices.shape[0] * args.scale_dim * len(ITER_WEIGHTS) / dt / 1e9, 3)}
    del X
    if args.scale_peer:
        import scipy.sparse as sp
        peers = load_peers()
        A = sp.csr_matrix((np.ones(indices.shape[0]), indices, indptr), shape=(n, n))
        reset_peak()
        base = rss()
        t0 = time.perf_counter()
        Fref = peers.fastrp(A, args.scale_dim, list(ITER_WEIGHTS), BETA)
        out["scipy_ref_s"] = round(time.perf_counter() - t0, 2)
        out["scipy_ref_peak_rss_gb"] = round(peak_rss() / 2**30, 3)
        out["scipy_ref_rss_before_gb"] = round(base / 2**30, 3)
        out["ratio"] = round(out["ours_s"] / out["scipy_ref_s"], 3)
        del Fref
    return out


def bench_scale(args) -> list[dict]:
    from embedlake.workers.graph.csr import build_csr

    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (int(float(x)) for x in args.scale_edges.split(",")):
            scale = max(10, int(round(np.log2(m / 10))))    # about 10 edges drawn per node
            t0 = time.perf_counter()
            s, d = rmat_edges(scale, m, seed=1)
            g = build_csr(s, d, 1 << scale)
            del s, d
            deg = g.degrees()
            info = {"rmat_edges_drawn": m, "nodes": g.num_nodes, "undirected_edges": g.num_arcs // 2,
                    "arcs": g.num_arcs, "max_degree": int(deg.max()), "isolated": int((deg == 0).sum()),
                    "csr_gb": round(g.nbytes / 2**30, 3), "dim": args.scale_dim, "gen_s": round(time.perf_counter() - t0, 1)}
            npz = os.path.join(tmp, f"rmat{m}.npz")
            np.savez(npz, indptr=g.indptr, indices=g.indices)
            del g, deg
            cmd = [sys.executable, __file__, "--child", npz, "--scale-dim", str(args.scale_dim),
                   "--threads", str(args.threads)] + (["--scale-peer"] if args.scale_peer else [])
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                info["error"] = r.stderr.strip().splitlines()[-3:]
            else:
                info.update(json.loads(r.stdout.strip().splitlines()[-1]))
            os.remove(npz)
            res.append(info)
    if len(res) >= 2 and all("ours_s" in r for r in res):
        a, b = res[0], res[-1]
        res.append({"growth": {"arcs_x": round(b["arcs"] / a["arcs"], 2), "time_x": round(b["ours_s"] / a["ours_s"], 2),
                               "peak_rss_x": round(b["peak_rss_gb"] / a["peak_rss_gb"], 2)}})
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(SHARED / "datasets" / "blogcatalog"))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--ratios", default="0.5")
    ap.add_argument("--no-f1", action="store_true")
    ap.add_argument("--peer-subprocess", action="store_true", help="also run peers.py in the peers venv")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--scale-edges", default="2e6,2e7")
    ap.add_argument("--scale-dim", type=int, default=128)
    ap.add_argument("--scale-peer", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    add_peers_option(ap)
    args = ap.parse_args()
    global PEERS_PY
    PEERS_PY = peer_python("peers", args.peers, required=args.peer_subprocess or args.scale_peer)
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(scale_child(args)))
        return
    out = {"bench": "fastrp"}
    if args.scale:
        out["scale"] = bench_scale(args)
    else:
        out.update(bench_dataset(args))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
