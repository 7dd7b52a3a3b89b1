"""Issue 22: eval.mode=sampled (the default) against eval.mode=exact on the same tables, in one
process: CPU seconds per component, and whether each sampled figure lies within its reported 95 %
interval of the exact one, over a few seeds.

    NUMBA_CACHE_DIR=/tmp/nc .venv/bin/python bench/bench_eval_modes.py --lake LAKE \\
        --cases blogcatalog,deezer_europe [--seeds 0,1,2] [--before /work/main] [--reference-queries 2000]

LAKE holds each case's latest table (e.g. a lake of bench/bench_eval_cost.py). Per case and seed:
- node classification, exact (every repeat and labelled node) and sampled (eval defaults); the
  sampled Micro/Macro-F1 against the exact ones of the same seed, with the sampled ci95;
- with ``--before``: that checkout's classify.py (loaded standalone) at its own defaults, so exact
  mode can be checked against it (the issue's 0.003);
- reconstruction, sampled (eval defaults) against a reference: every query node (``exact``) when
  ``--reference-queries 0``, else that many seeded queries (the exact figure costs n queries x n
  scores; on a loaded machine a 2,000-query reference stands in, its own ci95 printed beside).
One JSON line per case and seed; ``inside`` says whether |sampled - reference| <= sampled ci95.

``--worker-cache`` (no lake): the reconstruction kernels' numba signatures and cache hits / misses
in this process (writable arrays) and then in a fresh Ray worker (read-only arrays from the object
store): with one cache warmed by either, the worker compiles nothing (docs/evaluation.md, sixth round).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def cpu_call(fn, *args, **kwargs):
    """(result, CPU seconds) of one call in this process."""
    c0 = time.process_time()
    out = fn(*args, **kwargs)
    return out, round(time.process_time() - c0, 3)


def before_classify(checkout: str):
    """A checkout's workers/evaluate/classify.py as a standalone module (numpy/scipy only)."""
    path = Path(checkout).resolve() / "workers" / "evaluate" / "classify.py"
    spec = importlib.util.spec_from_file_location("eval_before_classify", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                    # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def within(sampled: dict, reference: dict, ci: dict, slack: float = 0.0) -> dict:
    """Per key: [sampled - reference, ci95, inside]; inside = the difference is at most the ci95,
    or ``slack`` where the ci95 is 0 (every repeat scored: the same splits, within the solver's
    tolerance)."""
    return {k: [round(sampled[k] - reference[k], 5), ci.get(k), bool(abs(sampled[k] - reference[k]) <= max(ci.get(k, 0), slack))]
            for k in reference}


def classification_case(X, labels, seed: int, before) -> dict:
    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate import stages as es
    exact, exact_s = cpu_call(es.classify_stage, X, labels, EvalConfig(mode="exact", seed=seed))
    sampled, sampled_s = cpu_call(es.classify_stage, X, labels, EvalConfig(seed=seed))
    out = {"exact_cpu_s": exact_s, "sampled_cpu_s": sampled_s,
           "micro": within(sampled["micro_f1"], exact["micro_f1"], sampled["micro_f1_ci95"], 0.001),
           "macro": within(sampled["macro_f1"], exact["macro_f1"], sampled["macro_f1_ci95"], 0.001),
           "exact_micro": exact["micro_f1"], "exact_macro": exact["macro_f1"]}
    if before is not None:
        old, old_s = cpu_call(before.node_classification, X, labels[0], labels[1], seed=seed, max_nodes=100_000)
        out["before_cpu_s"] = old_s
        out["exact_minus_before"] = {w: {k: round(exact[w][k] - old[w][k], 5) for k in old[w]}
                                     for w in ("micro_f1", "macro_f1")}
    return out


def reconstruction_case(X, g, seed: int, reference_queries: int) -> dict:
    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate import stages as es
    csr = (g.csr.indptr, g.csr.indices, g.csr.weights, g.csr.directed)
    ref_cfg = (EvalConfig(mode="exact", seed=seed) if not reference_queries else
               EvalConfig(seed=seed + 1000, reconstruction_sample=reference_queries, reconstruction_work=0))
    ref, ref_s = cpu_call(es.reconstruct_stage, X, csr, ref_cfg)
    rc, rc_s = cpu_call(es.reconstruct_stage, X, csr, EvalConfig(seed=seed))
    return {"sampled_cpu_s": rc_s, "reference_cpu_s": ref_s, "queries": rc["queries"],
            "reference_queries": ref["queries"], "reference_ci95": ref["ci95"],
            "map": within(rc["map"], ref["map"], rc["ci95"])}


def stage_cpu(case: str) -> dict:
    """CPU seconds of the run's other stages' compute for a FastRP case, one thread, in this
    process: ingest (read + CSR) and FastRP d=512 (the denominator of the CPU ratio; the
    pipeline adds Ray, the object store and the Parquet publish on top)."""
    from bench_eval_cost import SHARED

    from embedlake.workers.fastrp.kernels import fastrp
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    g, ingest_s = cpu_call(ingest_graph, str(SHARED / case / "edges.tsv"), EdgeSpec())
    cpu_call(fastrp, g.csr.indptr, g.csr.indices, g.csr.weights, dim=512, seed=0, threads=1)     # numba load
    _, fastrp_s = cpu_call(fastrp, g.csr.indptr, g.csr.indices, g.csr.weights, dim=512, seed=0, threads=1)
    return {"case": case, "ingest_cpu_s": ingest_s, "fastrp512_cpu_s": fastrp_s}


RECONSTRUCTION_KERNELS = ("_candidates_kernel", "_held_block_kernel", "_sort_segments_kernel", "_bucket_tables",
                          "_place_scores", "walk_hops")


def kernel_stats() -> dict:
    """Per reconstruction kernel of this process: its compiled signatures and numba's cache hits /
    misses (a miss = compiled here)."""
    from embedlake.workers.evaluate import geometry as G
    return {k: {"signatures": len(getattr(G, k).signatures), "read_only": all(
                not t.mutable for sig in getattr(G, k).signatures for t in sig[:6] if hasattr(t, "mutable")),
                "cache_hits": sum(getattr(G, k).stats.cache_hits.values()),
                "cache_misses": sum(getattr(G, k).stats.cache_misses.values())} for k in RECONSTRUCTION_KERNELS}


def reconstruction_in_worker(X, indptr, indices) -> dict:
    """reconstruct_stage in a Ray worker (the arrays arrive read-only), its CPU seconds and kernel stats."""
    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate import stages as es
    c0 = time.process_time()
    es.reconstruct_stage(X, (indptr, indices, None, False), EvalConfig())
    return {"worker_cpu_s": round(time.process_time() - c0, 3), "table_writeable": bool(X.flags.writeable),
            "kernels": kernel_stats()}


def worker_cache() -> list[dict]:
    """Step 1 of the sixth round: reconstruction in this process on writable arrays (compiling into,
    or loading from, NUMBA_CACHE_DIR), then in a fresh Ray worker on the same arrays through the
    object store (read-only): the worker should load every kernel from the cache, compile none."""
    import numpy as np
    import ray

    from embedlake.config import EvalConfig
    from embedlake.workers.evaluate import stages as es
    from embedlake.workers.graph.csr import build_csr
    rng = np.random.default_rng(0)
    g = build_csr(rng.integers(0, 3000, 20000), rng.integers(0, 3000, 20000), 3000)
    X = rng.standard_normal((3000, 32)).astype(np.float32)
    _, driver_s = cpu_call(es.reconstruct_stage, X, (g.indptr, g.indices, None, False), EvalConfig())
    out = [{"where": "driver, writable arrays", "cpu_s": driver_s, "kernels": kernel_stats()}]
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        res = ray.get(ray.remote(reconstruction_in_worker).remote(ray.put(X), ray.put(g.indptr), ray.put(g.indices)))
    finally:
        ray.shutdown()
    return out + [{"where": "fresh Ray worker, object-store arrays", **res}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", help="a lake of bench/bench_eval_cost.py (every mode but --worker-cache)")
    ap.add_argument("--cases", default="blogcatalog,deezer_europe")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--before", default=None, help="a checkout whose classify.py gives today's figures")
    ap.add_argument("--reference-queries", type=int, default=2000, help="0 = every query node (exact)")
    ap.add_argument("--skip", default="", help="comma-separated: classification, reconstruction")
    ap.add_argument("--stage-cpu", action="store_true", help="only: ingest + FastRP d=512 CPU seconds per case")
    ap.add_argument("--worker-cache", action="store_true",
                    help="only: does a Ray worker load the reconstruction kernels from numba's cache (no --lake needed)")
    a = ap.parse_args()
    if a.worker_cache:
        for row in worker_cache():
            print(json.dumps(row), flush=True)
        return 0
    if not a.lake:
        ap.error("--lake is required (except with --worker-cache)")
    from bench_eval_cost import case_args, case_table
    if a.stage_cpu:
        for case in a.cases.split(","):
            print(json.dumps(stage_cpu(case)), flush=True)
        return 0
    before = before_classify(a.before) if a.before else None
    skip = set(a.skip.split(","))
    for case in a.cases.split(","):
        X, g, labels = case_table(a.lake, case_args(case, "/tmp", 0))
        for seed in (int(s) for s in a.seeds.split(",")):
            out = {"case": case, "seed": seed, "rows": int(X.shape[0]), "dim": int(X.shape[1])}
            if labels is not None and "classification" not in skip:
                out["classification"] = classification_case(X, labels, seed, before if seed == 0 else None)
            if "reconstruction" not in skip:
                out["reconstruction"] = reconstruction_case(X, g, seed, a.reference_queries)
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
