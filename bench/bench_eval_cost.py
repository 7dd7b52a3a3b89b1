"""What the default evaluation costs against the rest of a run (issue 22), for one or more checkouts.

Each case runs `embedlake embed-graph --json` of each checkout (its own .venv) on the same input,
and prints the run's stage times, the evaluation's seconds per component (from the metrics the
run commits) and the ratio evaluation / other stages (Ray's start-up left out), with the quality
figures beside them so a cheaper evaluation can be checked against the figures it replaced.

Cases (``--cases``):
  blogcatalog  DeepWalk, labels (39, multi-label), defaults
  deezer_ro    FastRP d=512 on deezer_ro (84 labels, 41,773 nodes), when ../shared/datasets/deezer_ro
               exists; else the case stops with a message (github and ppi stand in for it)
  ppi          FastRP d=512, labels (50, multi-label): many labels and dimensions
  github       FastRP d=512 on github_social, labels (2, 37,700 nodes): a large labelled set
  rmat         R-MAT graph, no labels, 1 walk x 40 steps, d=64 (``--rmat-edges``, ~10 edges per node;
               the default 19.2 M edges gives the issue's 2.1 M nodes)

    .venv/bin/python bench/bench_eval_cost.py [--checkouts /path/before,/path/after] [--cases ...]
                                              [--rmat-edges 19200000] [--out /tmp/embedlake-evalcost]
                                              [-p eval.key=value ...]

``--eval-only LAKE``: no pipeline run; evaluate the table each case last committed in LAKE (a lake of an
earlier run of this script, e.g. /tmp/embedlake-evalcost/lake-0) with this checkout's stage functions
in this process (no Ray), timing each component: for iterating on the evaluation of a large graph
without training it again.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def case_args(case: str, out: str, rmat_edges: int) -> list[str]:
    if case == "blogcatalog":
        d = SHARED / "blogcatalog"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv")]
    if case == "deezer_ro":
        d = SHARED / "deezer_ro"
        if not (d / "edges.tsv").exists():
            raise SystemExit(f"deezer_ro: {d}/edges.tsv not found (github and ppi are the stand-ins)")
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv"), "--method", "fastrp",
                "-p", "fastrp.dim=512"]
    if case == "ppi":
        d = SHARED / "ppi"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv"), "--method", "fastrp",
                "-p", "fastrp.dim=512"]
    if case == "github":
        d = SHARED / "github_social"
        return ["--edges", str(d / "edges.tsv"), "--labels", str(d / "labels.tsv"), "--method", "fastrp",
                "-p", "fastrp.dim=512"]
    if case == "rmat":
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_scale import edge_file
        path, _ = edge_file(rmat_edges, out)
        return ["--edges", path, "--dataset", f"rmat{rmat_edges}", "-p", "walk.walks_per_node=1",
                "-p", "walk.length=40", "-p", "train.dim=64"]
    raise SystemExit(f"unknown case {case!r}")


def run_case(checkout: Path, case: str, args: list[str], lake: str, overrides: list[str] = ()) -> dict:
    exe = checkout / ".venv" / "bin" / "embedlake"
    cmd = [str(exe), "embed-graph", "--lake", lake, "--json", "-p", "eval.align_to_previous=false",
           "-p", "eval.artifacts=false", *args, *[x for o in overrides for x in ("-p", o)]]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{checkout} {case}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    s = json.loads(p.stdout.strip().splitlines()[-1])
    stages = {k: v["wall_s"] for k, v in s["stages"].items()}
    other = sum(v for k, v in stages.items() if k not in ("evaluate", "ray_start"))
    m = s.get("metrics", {})
    comp = {k: m[k].get("seconds") for k in ("node_classification", "reconstruction", "link_prediction")
            if isinstance(m.get(k), dict) and "seconds" in m[k]}
    nc, rc = m.get("node_classification") or {}, m.get("reconstruction") or {}
    return {"checkout": str(checkout), "case": case, "rows": s["rows"], "stages": stages,
            "other_s": round(other, 2), "evaluate_s": stages.get("evaluate"),
            "ratio": round(stages.get("evaluate", 0) / other, 3) if other else None, "components_s": comp,
            "micro_f1": nc.get("micro_f1"), "macro_f1": nc.get("macro_f1"), "map": rc.get("map"),
            "map_ci95": rc.get("ci95"), "map_sampled": rc.get("sampled"), "map_truncated": rc.get("truncated"),
            "bench_wall_s": round(time.perf_counter() - t0, 1)}


def case_dataset(args: list[str]) -> tuple[str, str]:
    """(dataset, method) of a case's run, as the CLI names them."""
    method = args[args.index("--method") + 1] if "--method" in args else "deepwalk"
    if "--dataset" in args:
        return args[args.index("--dataset") + 1], method
    return Path(args[args.index("--edges") + 1]).parent.name, method


def eval_only(lake_uri: str, case: str, args: list[str], overrides: list[str]) -> dict:
    """Each evaluation component of the case's latest committed table in ``lake_uri``, timed in this
    process with this checkout's stage functions (eval.* from ``overrides``)."""
    import numpy as np

    from embedlake.config import load_config
    from embedlake.lake import Lake
    from embedlake.reader import read_table
    from embedlake.workers.evaluate import stages as es
    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    dataset, method = case_dataset(args)
    cfg = load_config(None, [f"eval.{o.split('eval.', 1)[1]}" if o.startswith("eval.") else o
                             for o in overrides if o.startswith("eval.")]).eval
    table, _ = read_table(lake_uri, dataset, method)
    t0 = time.perf_counter()
    g = ingest_graph(args[args.index("--edges") + 1], EdgeSpec())
    read_s = time.perf_counter() - t0
    ids = np.asarray(table.column("node").to_numpy(zero_copy_only=False))
    vec = table.column("vector").combine_chunks()
    X = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, vec.type.list_size)
    sorter = np.argsort(ids)                          # the table's rows in the graph's dense order
    X = X[sorter[np.searchsorted(ids[sorter], np.asarray(g.node_ids))]]
    out = {"case": case, "rows": int(X.shape[0]), "graph_read_s": round(read_s, 2), "components_s": {}}
    csr = (g.csr.indptr, g.csr.indices, g.csr.weights, g.csr.directed)
    if cfg.reconstruction:
        rc = es.reconstruct_stage(X, csr, cfg)
        out["components_s"]["reconstruction"] = rc["seconds"]
        out.update(map=rc["map"], map_ci95=rc["ci95"], queries=rc["queries"])
    if "--labels" in args:
        from embedlake.workers.graph.ingest import read_labels
        labels = read_labels(args[args.index("--labels") + 1], g.node_ids, "int")
        nc = es.classify_stage(X, labels, cfg)
        out["components_s"]["node_classification"] = nc["seconds"]
        out.update(micro_f1=nc["micro_f1"], macro_f1=nc["macro_f1"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkouts", default=str(ROOT), help="comma-separated repo roots, each with its .venv")
    ap.add_argument("--cases", default="blogcatalog,ppi,rmat")
    ap.add_argument("--rmat-edges", type=int, default=19_200_000)
    ap.add_argument("--out", default="/tmp/embedlake-evalcost")
    ap.add_argument("-p", dest="overrides", action="append", default=[], help="eval.key=value for every run")
    ap.add_argument("--eval-only", metavar="LAKE", help="time the evaluation of each case's table in LAKE")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.eval_only:
        for case in a.cases.split(","):
            print(json.dumps(eval_only(a.eval_only, case, case_args(case, a.out, a.rmat_edges), a.overrides)),
                  flush=True)
        return 0
    results = []
    for case in a.cases.split(","):
        args = case_args(case, a.out, a.rmat_edges)
        for i, co in enumerate(a.checkouts.split(",")):
            r = run_case(Path(co), case, args, os.path.join(a.out, f"lake-{i}"), a.overrides)
            results.append(r)
            print(f"{case:<12} {Path(co).name:<12} rows {r['rows']:>9,}  other stages {r['other_s']:>7.1f}s  "
                  f"evaluate {r['evaluate_s']:>7.1f}s  ratio {r['ratio']:.3f}  components {r['components_s']}  "
                  f"mAP {r['map']}  Micro-F1 {r['micro_f1']}", flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
