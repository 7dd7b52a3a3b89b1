"""Walk-engine throughput vs PecanPy, measured side by side in one script. Prints one JSON object.

    .venv/bin/python bench/bench_walks.py [--dataset ../shared/datasets/blogcatalog] [--threads 2]
    .venv/bin/python bench/bench_walks.py --scale [--scale-edges 2e6,2e7]

Default: our DeepWalk and node2vec (p=0.25, q=4) steps/s (after compile; `--repeats` runs, best
and median) against PecanPy FirstOrderUnweighted / SparseOTF with the same thread count, run with
the peers venv (PecanPy pins numpy<2, so it cannot live in the project venv). A step is a token of
the output (PecanPy counts the same way: sum of walk lengths).

--scale: R-MAT power-law graphs (generated here, ids shuffled) with about 2M and 20M undirected
edges; node2vec steps/s and peak RSS above (interpreter + CSR) measured in a child process, so
graph generation does not pollute the peak. The walk output itself is reported separately.
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

import numpy as np

from procmem import peak_rss  # noqa: E402  (bench/procmem.py)

from embedlake.workers.graph.synthetic import rmat_edges  # noqa: E402  (one R-MAT generator for every bench)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEERS_PY = None   # the peers venv's python: set in main() (bench/peer_venvs.py)

PECANPY_SNIPPET = r"""
import json, sys, time, numpy as np
from pecanpy import pecanpy as pp
edg, directed, p, q, walks, length, threads, mode = sys.argv[1:9]
p, q = float(p), float(q)
t0 = time.perf_counter()
g = getattr(pp, mode)(p=p, q=q, workers=int(threads), verbose=False, extend=False)
g.read_edg(edg, weighted=False, directed=directed == "1")
g.simulate_walks(num_walks=1, walk_length=3)  # compiles PecanPy's kernels (as peers.py does)
t1 = time.perf_counter()
w = g.simulate_walks(num_walks=int(walks), walk_length=int(length))
t2 = time.perf_counter()
steps = sum(len(x) for x in w)
print(json.dumps({"mode": mode, "load_compile_s": round(t1 - t0, 3), "walk_s": round(t2 - t1, 3),
                  "steps": steps, "steps_per_s": round(steps / (t2 - t1))}))
"""


def load_dataset(ds: Path):
    from embedlake.workers.graph.csr import build_csr
    st = json.loads((ds / "stats.json").read_text())
    e = np.loadtxt(ds / "edges.tsv", skiprows=1, dtype=np.int64)
    return build_csr(e[:, 0], e[:, 1], st["num_nodes"], directed=st.get("directed", False)), e, st


def pecanpy(edges: np.ndarray, directed: bool, p, q, walks, length, threads, mode, tmp):
    edg = os.path.join(tmp, "g.edg")
    if not os.path.exists(edg):
        np.savetxt(edg, edges, fmt="%d", delimiter="\t")
    r = subprocess.run([str(PEERS_PY), "-c", PECANPY_SNIPPET, edg, "1" if directed else "0", str(p), str(q),
                        str(walks), str(length), str(threads), mode], capture_output=True, text=True)
    if r.returncode != 0:
        return {"mode": mode, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def ours(g, walks, length, threads, p, q, mode, repeats):
    """Our walks on every node; the weighted alias tables are built once (as the walk stage does
    for all partitions) and their build time is reported apart."""
    from embedlake.workers.graph.walks import build_alias, random_walks, walk_steps
    sym = not g.directed
    starts = np.arange(g.num_nodes, dtype=np.int64)
    t0 = time.perf_counter()
    random_walks(g.indptr, g.indices, g.weights, starts[:8], 1, 3, 0, p=p, q=q, mode=mode, threads=threads)
    compile_s = time.perf_counter() - t0
    alias, alias_s = None, None
    if g.weights is not None:
        t0 = time.perf_counter()
        alias = build_alias(g.indptr, g.indices, g.weights)
        alias_s = round(time.perf_counter() - t0, 3)
    rates, steps = [], 0
    for r in range(repeats):
        t0 = time.perf_counter()
        w = random_walks(g.indptr, g.indices, g.weights, starts, walks, length, r, p=p, q=q, mode=mode,
                         threads=threads, symmetric=sym, alias=alias)
        dt = time.perf_counter() - t0
        steps = walk_steps(w)
        rates.append(steps / dt)
        del w
    return {"mode": mode, "p": p, "q": q, "first_call_s": round(compile_s, 3), "alias_build_s": alias_s, "steps": steps,
            "steps_per_s_best": round(max(rates)), "steps_per_s_median": round(float(np.median(rates)))}


def scale_child(npz: str, walks: int, length: int, threads: int, p: float, q: float, n_starts: int) -> dict:
    """Runs in a fresh process: RSS baseline after compile, load CSR, walk, report the peak."""
    import psutil
    from embedlake.workers.graph.walks import random_walks, walk_steps
    proc = psutil.Process()
    tiny_ptr = np.array([0, 1, 2], np.int64)
    tiny_idx = np.array([1, 0], np.int32)
    for mode in ("deepwalk", "node2vec"):
        random_walks(tiny_ptr, tiny_idx, None, np.array([0]), 1, 3, 0, p=p, q=q, mode=mode, threads=threads)
    rss0 = proc.memory_info().rss
    z = np.load(npz)
    indptr, indices = z["indptr"], z["indices"]
    csr_bytes = indptr.nbytes + indices.nbytes
    rss_loaded = proc.memory_info().rss
    n = indptr.size - 1
    starts = np.random.default_rng(0).choice(n, size=min(n, n_starts), replace=False).astype(np.int64)
    res = {"nodes": int(n), "arcs": int(indices.size), "csr_mb": round(csr_bytes / 2**20, 1),
           "starts": int(starts.size), "walks": walks, "length": length}
    for mode, pp, qq in (("deepwalk", 1.0, 1.0), ("node2vec", p, q)):
        t0 = time.perf_counter()
        w = random_walks(indptr, indices, None, starts, walks, length, 1, p=pp, q=qq, mode=mode, threads=threads,
                         symmetric=True)   # R-MAT graphs are built undirected
        dt = time.perf_counter() - t0
        steps = walk_steps(w)
        res[mode] = {"p": pp, "q": qq, "steps": steps, "steps_per_s": round(steps / dt),
                     "output_mb": round(w.nbytes / 2**20, 1)}
        out_bytes = max(res.get("_out", 0), w.nbytes)
        res["_out"] = out_bytes
        del w
    peak = peak_rss()
    out_bytes = res.pop("_out")
    res["rss_before_load_mb"] = round(rss0 / 2**20, 1)
    res["rss_after_load_mb"] = round(rss_loaded / 2**20, 1)
    res["peak_rss_mb"] = round(peak / 2**20, 1)
    res["peak_above_csr_mb"] = round((peak - rss_loaded) / 2**20, 1)
    res["peak_above_csr_and_output_mb"] = round((peak - rss_loaded - out_bytes) / 2**20, 1)
    return res


def run_scale(args) -> list:
    from embedlake.workers.graph.csr import build_csr
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in [int(float(x)) for x in args.scale_edges.split(",")]:
            scale = max(10, int(np.ceil(np.log2(m / 16))))   # ~16 edges per node before dedup
            t0 = time.perf_counter()
            s, d = rmat_edges(scale, m, seed=1)
            g = build_csr(s, d, 1 << scale)
            del s, d
            gen_s = time.perf_counter() - t0
            npz = os.path.join(tmp, f"rmat{m}.npz")
            np.savez(npz, indptr=g.indptr, indices=g.indices)
            deg = g.degrees()
            info = {"rmat_edges_drawn": m, "scale": scale, "undirected_edges": int(g.num_arcs // 2),
                    "max_degree": int(deg.max()), "isolated": int((deg == 0).sum()), "gen_s": round(gen_s, 1)}
            del g, deg
            r = subprocess.run([sys.executable, __file__, "--child", npz, "--walks", str(args.scale_walks),
                                "--length", str(args.length), "--threads", str(args.threads), "--p", str(args.p),
                                "--q", str(args.q), "--scale-starts", str(args.scale_starts)],
                               capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                info["error"] = r.stderr.strip().splitlines()[-3:]
            else:
                info.update(json.loads(r.stdout.strip().splitlines()[-1]))
            out.append(info)
            os.remove(npz)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(SHARED / "datasets" / "blogcatalog"))
    ap.add_argument("--walks", type=int, default=10)
    ap.add_argument("--length", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--p", type=float, default=0.25)
    ap.add_argument("--q", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip PecanPy")
    ap.add_argument("--no-grape", action="store_true", help="skip GRAPE (ensmallen), the fastest walk peer")
    ap.add_argument("--no-weighted", action="store_true", help="skip our weighted-graph runs")
    ap.add_argument("--peer-n2v-walks", type=int, default=None,
                    help="walks per node for PecanPy SparseOTF (default --walks; it is slow, steps/s is a rate)")
    ap.add_argument("--scale", action="store_true", help="R-MAT scaling run instead of the dataset run")
    ap.add_argument("--scale-edges", default="2e6,2e7")
    ap.add_argument("--scale-walks", type=int, default=1)
    ap.add_argument("--scale-starts", type=int, default=250_000, help="start nodes sampled per scale graph")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_peers_option(ap)
    args = ap.parse_args()
    global PEERS_PY
    PEERS_PY = peer_python("peers", args.peers, required=not args.no_peer)
    sys.path.insert(0, str(ROOT))

    if args.child:
        print(json.dumps(scale_child(args.child, args.scale_walks, args.length, args.threads, args.p, args.q,
                                     args.scale_starts)))
        return
    if args.scale:
        print(json.dumps({"threads": args.threads, "scale": run_scale(args)}))
        return

    ds = Path(args.dataset)
    g, edges, st = load_dataset(ds)
    res = {"dataset": ds.name, "nodes": g.num_nodes, "arcs": g.num_arcs, "threads": args.threads,
           "walks": args.walks, "length": args.length}
    res["ours_deepwalk"] = ours(g, args.walks, args.length, args.threads, 1.0, 1.0, "deepwalk", args.repeats)
    res["ours_node2vec"] = ours(g, args.walks, args.length, args.threads, args.p, args.q, "node2vec", args.repeats)
    if not args.no_weighted:   # same graph, a random weight per undirected edge (no peer run)
        from embedlake.workers.graph.csr import build_csr
        wg = build_csr(edges[:, 0], edges[:, 1], g.num_nodes, directed=g.directed,
                       weights=np.random.default_rng(0).uniform(0.1, 2.0, len(edges)))
        res["ours_weighted_deepwalk"] = ours(wg, args.walks, args.length, args.threads, 1.0, 1.0, "deepwalk",
                                             args.repeats)
        res["ours_weighted_node2vec"] = ours(wg, args.walks, args.length, args.threads, args.p, args.q,
                                             "node2vec", args.repeats)
    if not args.no_peer:
        with tempfile.TemporaryDirectory() as tmp:
            d = st.get("directed", False)
            res["pecanpy_deepwalk"] = pecanpy(edges, d, 1, 1, args.walks, args.length, args.threads,
                                              "FirstOrderUnweighted", tmp)
            res["pecanpy_node2vec"] = pecanpy(edges, d, args.p, args.q, args.peer_n2v_walks or args.walks,
                                              args.length, args.threads,
                                              "SparseOTF", tmp)
        for k in ("deepwalk", "node2vec"):
            peer = res[f"pecanpy_{k}"].get("steps_per_s")
            if peer:
                res[f"ratio_{k}_best"] = round(res[f"ours_{k}"]["steps_per_s_best"] / peer, 1)
                res[f"ratio_{k}_median"] = round(res[f"ours_{k}"]["steps_per_s_median"] / peer, 1)
        res["targets"] = {"deepwalk": ">= 10x FirstOrderUnweighted", "node2vec": ">= 25x SparseOTF"}
    if not args.no_grape:      # grape_peer.py walks 10 x 80 from every node, p=0.25 q=4, on all cores
        res["grape"] = run_grape(ds, args.peers, skip="train")
        for k, gk in (("deepwalk", "deepwalk"), ("node2vec", "node2vec_p0.25_q4")):
            peer = (res["grape"].get(gk) or {}).get("steps_per_s")
            if peer:
                res[f"ratio_{k}_vs_grape_best"] = round(res[f"ours_{k}"]["steps_per_s_best"] / peer, 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
