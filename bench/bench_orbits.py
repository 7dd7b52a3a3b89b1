"""Orbit adjacencies (issue 21): counting time and peak memory of the 28 matrices, and node
classification with `--method orbits` beside DeepWalk and FastRP at their defaults.

1. Counting (one subprocess per graph, so each peak is its own): the simple graph and per-arc
   triangles (`prepare`), then every row of the 28 matrices (workers/orbits/count.py) over
   row ranges balanced by arcs, run in `--threads` threads (the kernel releases the GIL). Peak
   memory is the process's VmHWM (bench/procmem.py) and includes the matrices (17 bytes per
   non-zero: row, col, pair, count). Graphs whose estimate exceeds orbits.budget are reported as
   refused, as the pipeline would refuse them.
2. Quality: the embed_graph flow (Prefect + Ray, defaults, eval.reconstruction off) with method
   orbits, deepwalk and fastrp; Micro-F1 at 10/50/90 % (eval defaults: 3 seeded splits,
   workers/evaluate/classify.py); and orbits + FastRP as one table by concatenating the two
   committed tables, scored by the same node_classification call.

usage: .venv/bin/python bench/bench_orbits.py [--count facebook_page_page,ppi,cora,lastfm_asia,github_social]
       [--quality ppi,cora,citeseer,lastfm_asia,facebook_page_page,deezer_europe] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
RATIOS = ("0.1", "0.5", "0.9")


def load_csr(ds: Path) -> tuple[np.ndarray, np.ndarray, int]:
    n = json.loads((ds / "stats.json").read_text())["num_nodes"]
    e = np.loadtxt(ds / "edges.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    order = np.argsort(e[:, 0], kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(e[:, 0], minlength=n), out=indptr[1:])
    return indptr, e[order, 1].astype(np.int32), n


def count_one(name: str, threads: int) -> dict:
    """Counting figures of one graph (run in its own process by `counting`)."""
    from procmem import peak_rss, reset_peak

    from embedlake.config import OrbitsConfig
    from embedlake.workers.fastrp.kernels import partition_bounds
    from embedlake.workers.orbits import count as oc
    from embedlake.workers.orbits import stages as ost
    indptr, indices, n = load_csr(DATASETS / name)
    tiny, _ = ost.prepare((np.array([0, 2, 4, 6]), np.array([1, 2, 0, 2, 0, 1], dtype=np.int32), None, False))
    oc.count_rows(*tiny[:5], 0, 3)                                   # compiled (or loaded) before the clock
    reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    prep, info = ost.prepare((indptr, indices, None, False))
    t1 = time.perf_counter()
    out = {"dataset": name, **info, "prepare_s": round(t1 - t0, 3), "threads": threads}
    ip, ix, tri, tri2, nsum, _ = prep
    bounds = partition_bounds(ip, threads * 8)
    if info["walks3"] > OrbitsConfig().budget:
        return {**out, **sizing_pass(prep, bounds, threads, n),
                "refused": f"estimate {info['walks3']:.3g} over orbits.budget {OrbitsConfig().budget:.3g}"}
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda b: oc.count_rows(ip, ix, tri, tri2, nsum, int(b[0]), int(b[1])),
                              zip(bounds[:-1], bounds[1:])))
    t2 = time.perf_counter()
    nnz = sum(len(p[0]) for p in parts)
    return {**out, "count_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3), "nnz": nnz,
            "cpu_s": round(time.process_time() - c0, 3), "load_avg_1min": round(os.getloadavg()[0], 1),
            "peak_rss_mb": round(peak_rss() / 2**20, 1), "matrices_mb": round(17 * nnz / 2**20, 1)}


def sizing_pass(prep: tuple, bounds, threads: int, n: int) -> dict:
    """A refused graph: the kernel's first pass only (every walk sum and formula, each row's
    non-zeros counted, nothing stored): its time, and the size the matrices would have."""
    from embedlake.workers.orbits import count as oc
    ip, ix, tri, tri2, nsum, _ = prep
    row_nnz = np.zeros(n, dtype=np.int64)
    e32, e8, e64 = np.empty(0, np.int32), np.empty(0, np.int8), np.empty(0, np.int64)
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: oc.walk_rows(ip, ix, tri, tri2, nsum, int(b[0]), int(b[1]), False, e32, e32, e8, e64,
                                             row_nnz[int(b[0]):int(b[1])]), zip(bounds[:-1], bounds[1:])))
    return {"sizing_s": round(time.perf_counter() - t0, 3), "sizing_cpu_s": round(time.process_time() - c0, 3),
            "nnz_unstored": int(row_nnz.sum()), "load_avg_1min": round(os.getloadavg()[0], 1)}


def counting(names: list[str], threads: int) -> list[dict]:
    rows = []
    for name in names:
        if not (DATASETS / name).exists():
            print(f"skip {name}: {DATASETS / name} is absent", file=sys.stderr)
            continue
        res = subprocess.run([sys.executable, __file__, "--count-one", name, "--threads", str(threads)],
                             capture_output=True, text=True, cwd=REPO)
        if res.returncode:
            print(f"{name}: counting failed: {res.stderr[-800:]}", file=sys.stderr)
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def run_flow(lake: str, ds: Path, method: str) -> dict:
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    ov = [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}", f"input.labels={ds / 'labels.tsv'}",
          f"lake.dataset={ds.name}", f"method={method}", "eval.align_to_previous=false", "eval.artifacts=false",
          "eval.reconstruction=false"]
    t0 = time.perf_counter()
    s = embed_graph(load_config(None, ov))
    s["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    return s


def concat_f1(lake: str, ds: Path) -> dict:
    """Micro-F1 of [orbits | fastrp] (both committed tables of `ds`), the flow's protocol."""
    import embedlake
    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate.classify import node_classification
    from embedlake.workers.evaluate.stages import classify_options
    ids, Xo = embedlake.load_matrix(lake, ds.name, "orbits")
    ids_f, Xf = embedlake.load_matrix(lake, ds.name, "fastrp")
    assert np.array_equal(ids, ids_f)
    row_of = {int(v): i for i, v in enumerate(ids)}
    lab = np.loadtxt(ds / "labels.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    keep = np.array([int(v) in row_of for v in lab[:, 0]])
    nodes = np.array([row_of[int(v)] for v in lab[keep, 0]], dtype=np.int64)
    _, labels = np.unique(lab[keep, 1], return_inverse=True)
    res = node_classification(np.hstack([Xo, Xf]), nodes, labels, **classify_options(EvalConfig()))
    return res["micro_f1"]


def quality(names: list[str]) -> list[dict]:
    from embedlake.tasks.runtime import configure_env, ensure_ray
    configure_env()
    ensure_ray()
    lake = tempfile.mkdtemp(prefix="bench-orbits-")
    rows = []
    for name in names:
        ds = DATASETS / name
        if not (ds / "labels.tsv").exists():
            print(f"skip {name}: {ds} has no labels.tsv", file=sys.stderr)
            continue
        row = {"dataset": name}
        for method in ("orbits", "deepwalk", "fastrp"):
            s = run_flow(lake, ds, method)
            row[method] = s["metrics"]["node_classification"]["micro_f1"]
            row[f"{method}_s"] = s["bench_wall_s"]
            row[f"{method}_dim"] = s["dim"]
        row["orbits+fastrp"] = concat_f1(lake, ds)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def print_tables(counts: list[dict], quals: list[dict]) -> None:
    if counts:
        print("\n| graph | nodes | edges | 3-step walks (estimate) | 4-node graphlets <= | prepare s | count s "
              "(wall) | CPU s (prepare + count, all threads) | load avg | non-zeros (28 matrices) | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in counts:
            tail = (f"refused ({r['refused']}); sizing pass alone: {r['sizing_s']:.2f} | {r['sizing_cpu_s']:.2f} | "
                    f"{r['load_avg_1min']} | {r['nnz_unstored']:,} (not stored) | |" if "refused" in r else
                    f"{r['count_s']:.2f} | {r['cpu_s']:.2f} | {r['load_avg_1min']} | {r['nnz']:,} | "
                    f"{r['peak_rss_mb']:,.0f} |")
            print(f"| {r['dataset']} | {r['nodes']:,} | {r['edges']:,} | {r['walks3']:.3g} | "
                  f"{r['graphlets4_bound']:.3g} | {r['prepare_s']:.2f} | {tail}")
    if quals:
        print("\n| graph | orbits | DeepWalk | FastRP | orbits + FastRP | orbits beats both at 50 % |")
        print("|---|---|---|---|---|---|")
        for r in quals:
            cell = {m: " / ".join(f"{r[m][k]:.3f}" for k in RATIOS)
                    for m in ("orbits", "deepwalk", "fastrp", "orbits+fastrp")}
            win = r["orbits"]["0.5"] > max(r["deepwalk"]["0.5"], r["fastrp"]["0.5"])
            print(f"| {r['dataset']} | {cell['orbits']} | {cell['deepwalk']} | {cell['fastrp']} | "
                  f"{cell['orbits+fastrp']} | {'yes' if win else 'no'} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", default="facebook_page_page,ppi,cora,lastfm_asia,github_social")
    ap.add_argument("--quality", default="ppi,cora,citeseer,lastfm_asia,facebook_page_page,deezer_europe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--count-one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.count_one:
        print(json.dumps(count_one(a.count_one, a.threads)))
        return 0
    counts = counting([x for x in a.count.split(",") if x], a.threads)
    quals = quality([x for x in a.quality.split(",") if x])
    print_tables(counts, quals)
    if a.json:
        Path(a.json).write_text(json.dumps({"counting": counts, "quality": quals}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
